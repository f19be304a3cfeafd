"""The inference APIs as the gateway speaks them: each endpoint's table entry (`endpoints.py`), how its body is
read and bounded (`openai_request.py`, `translated.py` with `responses_api.py` and `messages_api.py`,
`pooling_request.py`), the route of a call by its model's name (`by_name.py`), the worker's answer back to the
client (`relay.py`, `event_relay.py`, `sse.py`), its usage (`usage.py`), and the responses a worker keeps
(`response_pins.py`, `kept_responses.py`). `gateway/api/openai.py` serves them all through one path."""
