"""OpenAI's Responses API (`POST /v1/responses`) as the gateway reads it: the fields it acts on, the chat view
routing and the limits read (gateway/inference/translated.py), the body for the worker, and the usage of an answer.

The worker keeps a response in the process that made it (vLLM, with `VLLM_ENABLE_RESPONSES_API_STORE=1`):
a later call naming it (`previous_response_id`, `GET /v1/responses/{id}`, a cancel) must reach that process.
So the gateway chooses each response's id itself, `resp_` and the call's own request id, sends it as vLLM's
`request_id` (which vLLM answers as the response's `id`) and keeps which replica holds it
(gateway/inference/response_pins.py). A client's own `request_id` is refused: it could name a response kept for
someone else.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.inference.event_relay import EventDialect
from gateway.inference.openai_request import ParsedRequest, RequestFields
from gateway.inference.sse import EVENT_END
from gateway.inference.translated import (
    Translated,
    check_count,
    check_output,
    check_tools,
    opaque,
    output_capped,
    read_fields,
    text,
    view_fields,
)
from gateway.inference.usage import PromptTokensDetails, Usage
from router.errors import InvalidRequest
from router.request_limits import RequestLimits

ID_PREFIX = "resp_"
# A response that reached one of these has its final usage; `queued` and `in_progress` have not.
FINAL_STATUSES = frozenset(("completed", "incomplete", "failed", "cancelled"))


class ResponsesFields(RequestFields, kw_only=True):
    """The fields of a Responses call the gateway reads; every other field reaches the worker untouched."""

    input: str | list[Any]
    instructions: str | None = None
    stream: bool | None = False
    max_output_tokens: int | None = None
    background: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = None
    tools: list[Any] | None = None
    temperature: float | None = None
    seed: int | None = None
    top_logprobs: int | None = None


_TEXT_PARTS = frozenset(("input_text", "output_text", "text", "summary_text", "reasoning_text"))


def _parts(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else (content,):
        kind = part.get("type") if isinstance(part, dict) else None
        field = "text" if kind in _TEXT_PARTS else "refusal" if kind == "refusal" else None
        if field is not None and isinstance(value := part.get(field), str):
            parts.append(text(value))
        else:  # an image, a file, audio, anything the worker turns into tokens its own way
            parts.append(opaque(kind if isinstance(kind, str) else "unknown"))
    return parts


def _message(item: Any) -> dict[str, Any]:
    """One input item as a chat message."""
    if not isinstance(item, dict):
        return {"role": "user", "content": [opaque("unknown")]}
    kind = item.get("type", "message")
    role = item.get("role")
    if kind == "message" and isinstance(role, str):
        return {"role": role, "content": _parts(item.get("content"))}
    if kind == "function_call":
        function = {"name": item.get("name"), "arguments": item.get("arguments")}
        return {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": function}]}
    if kind == "function_call_output":
        return {"role": "tool", "content": _parts(item.get("output"))}
    if kind == "reasoning":
        texts = [*(item.get("summary") or ()), *(item.get("content") or ())]
        return {"role": "assistant", "content": _parts(texts)}
    # An item the worker expands (a reference to a stored item, a built-in tool's call): not bounded here.
    return {"role": "user", "content": [opaque(kind if isinstance(kind, str) else "unknown")]}


def chat_view(own: ResponsesFields, data: dict[str, Any]) -> dict[str, Any]:
    """The call as a chat completion's body, for routing, the limits and the estimates."""
    messages: list[dict[str, Any]] = []
    if own.instructions:
        messages.append({"role": "system", "content": own.instructions})
    if isinstance(own.input, str):
        messages.append({"role": "user", "content": own.input})
    else:
        messages.extend(_message(item) for item in own.input)
    view: dict[str, Any] = {"messages": messages, "stream": bool(own.stream)}
    if own.max_output_tokens is not None:
        view["max_tokens"] = own.max_output_tokens
    if own.temperature is not None:
        view["temperature"] = own.temperature
    if own.seed is not None:
        view["seed"] = own.seed
    if own.tools:
        view["tools"] = own.tools
    if own.top_logprobs:
        view["logprobs"], view["top_logprobs"] = True, own.top_logprobs
    fmt = (data.get("text") or {}).get("format") if isinstance(data.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        view["response_format"] = {"type": fmt["type"]}
    if own.previous_response_id is not None:  # the conversation so far is the worker's: no byte count bounds it
        view["previous_response_id"] = own.previous_response_id
    return view


def parse_responses(body: bytes, limits: RequestLimits) -> ParsedRequest:
    """A Responses call read and checked (400s name the API's own fields)."""
    data, own = read_fields(body, ResponsesFields, limits, ("max_output_tokens", "seed", "top_logprobs"),
                            ("stream", "background", "store"))
    if "request_id" in data:
        raise InvalidRequest("`request_id` is not accepted: the gateway gives each response its id.",
                             param="request_id", code="unsupported_parameter")
    if isinstance(own.input, list):
        check_count("input", own.input, limits.max_messages)
    check_tools(own.tools, limits)
    check_output("max_output_tokens", own.max_output_tokens, 1, limits)
    view = chat_view(own, data)
    return Translated(view, view_fields(view, bool(own.stream), own.model), original=data, own=own)


def response_id(request_id: str) -> str:
    """The id of the response a call makes: the gateway's request id of the call."""
    return ID_PREFIX + request_id


def _with_id(parsed: Translated, data: dict[str, Any]) -> bool:
    return "request_id" in data  # set by the gateway (a client's own is refused): the body changed


prepare_responses = output_capped("max_output_tokens", _with_id)


# --- usage -------------------------------------------------------------------------------------------


class _InputDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: _InputDetails | None = None


class _Response(msgspec.Struct):
    id: str = ""
    status: str | None = None
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    response: _Response | None = None


_decode_response = msgspec.json.Decoder(_Response).decode
_decode_event = msgspec.json.Decoder(_Event).decode


def as_usage(usage: _Usage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.input_tokens_details
    total = usage.total_tokens or usage.input_tokens + usage.output_tokens
    return Usage(usage.input_tokens, usage.output_tokens, total,
                 PromptTokensDetails(details.cached_tokens) if details is not None else None)


def read_response(body: bytes) -> tuple[str | None, Usage | None]:
    """(status, usage) of a response object (a JSON answer, or `GET /v1/responses/{id}`'s)."""
    try:
        response = _decode_response(body)
    except msgspec.DecodeError:
        return None, None
    return response.status, as_usage(response.usage)


def read_usage(body: bytes) -> Usage | None:
    return read_response(body)[1]


def event_usage(data: bytes, _before: Usage | None) -> Usage | None:
    """The usage of a stream's final event (`response.completed`, `.incomplete`, `.failed`): its response's."""
    try:
        event = _decode_event(data)
    except msgspec.DecodeError:
        return None
    return as_usage(event.response.usage) if event.response is not None else None


def _error_event(message: str, _type: str, code: str, sequence: int) -> bytes:
    event = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": sequence}
    return b"event: error\ndata: " + msgspec.json.encode(event) + EVENT_END


EVENTS = EventDialect(
    usage_events=(b"event: response.completed", b"event: response.incomplete", b"event: response.failed"),
    partial=(),
    read_usage=event_usage,
    ends={b"event: response.completed": True, b"event: response.incomplete": True, b"event: response.failed": False},
    content=b"event: response.output_text.delta",
    error=_error_event,
)
