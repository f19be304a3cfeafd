"""The Responses API and Anthropic's Messages API as the gateway reads them (gateway/inference/:
translated.py, responses_api.py, messages_api.py): their fields checked under the policy's request limits,
their chat view (what routing, the limits and the estimates read), the body for the worker, and the usage
of vLLM 0.32's own answers (tests/fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Response

from gateway.errors import as_anthropic
from gateway.inference.messages_api import parse_messages, prepare_messages
from gateway.inference.messages_api import read_usage as messages_usage
from gateway.inference.responses_api import parse_responses, prepare_responses, read_response
from gateway.inference.responses_api import read_usage as responses_usage
from gateway.inference.translated import Translated
from gateway.limits.upper_bound import output_limit, text_bound
from router.classify import Features, classify
from router.errors import InvalidRequest
from router.policy import load_policy_set
from router.request_limits import RequestLimits

pytestmark = pytest.mark.pure

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32"
LIMITS = RequestLimits(max_messages=4, max_tools=2, max_tokens=100)
CLASSIFIER = load_policy_set().classifier  # the shipped policy's


def features(view: dict[str, Any]) -> Features:
    return classify(view, "chat", {}, CLASSIFIER)


def responses(body: dict[str, Any], limits: RequestLimits = LIMITS) -> Translated:
    parsed = parse_responses(msgspec.json.encode(body), limits)
    assert isinstance(parsed, Translated)
    return parsed


def messages(body: dict[str, Any], limits: RequestLimits = LIMITS) -> Translated:
    parsed = parse_messages(msgspec.json.encode(body), limits)
    assert isinstance(parsed, Translated)
    return parsed


def refused(parse: Any, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(msgspec.json.encode(body), LIMITS)
    return info.value


# --- the Responses API ---------------------------------------------------------------------------------


def test_responses_view_is_the_chat_the_worker_makes() -> None:
    parsed = responses({"model": "auto", "instructions": "Be brief.", "input": "Hello!", "max_output_tokens": "7",
                        "temperature": 0, "stream": "true"})
    assert parsed.data["messages"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hello!"}]
    # Numbers and flags read as vLLM reads them; the body itself is kept as sent.
    assert parsed.data["max_tokens"] == 7 and parsed.fields.max_tokens == 7 and parsed.fields.stream is True
    assert parsed.original["max_output_tokens"] == "7"
    assert output_limit(parsed.data, "responses") == 7
    assert text_bound(1000, parsed.data, 1, 256, 8) == 1000 + 256 + 2 * 8


def test_responses_items_as_messages() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "What is in it?"}]},
        {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{\"x\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "a cat"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
    ]
    parsed = responses({"input": items, "tools": [{"type": "function", "name": "look"}]})
    view = parsed.data["messages"]
    assert [m["role"] for m in view] == ["user", "assistant", "tool", "assistant"]
    assert view[0]["content"] == [{"type": "text", "text": "What is in it?"}]
    assert view[1]["tool_calls"][0]["function"] == {"name": "look", "arguments": "{\"x\":1}"}
    assert text_bound(500, parsed.data, 1, 256, 8) == 500 + 256 + 4 * 8  # all text: the body's bytes bound it
    found = features(parsed.data)
    assert "tools" in found.capabilities and found.messages == 4 and found.turns == 1


@pytest.mark.parametrize("extra", [
    {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]}]},
    {"input": [{"type": "item_reference", "id": "msg_1"}]},
    {"input": "And then?", "previous_response_id": "resp_1"},  # the conversation so far is the worker's
])
def test_what_the_body_does_not_bound_prices_at_the_window(extra: dict[str, Any]) -> None:
    assert text_bound(500, responses(extra).data, 1, 256, 8) is None


def test_responses_limits_name_the_apis_own_fields() -> None:
    assert refused(parse_responses, {"input": [{"role": "user", "content": "a"}] * 5}).param == "input"
    too_many = refused(parse_responses, {"input": "a", "max_output_tokens": 101})
    assert too_many.param == "max_output_tokens" and too_many.code == "integer_above_max_value"
    assert refused(parse_responses, {"input": "a", "max_output_tokens": 0}).param == "max_output_tokens"
    assert refused(parse_responses, {"input": "a", "tools": [{}, {}, {}]}).param == "tools"
    missing = refused(parse_responses, {"model": "auto"})
    assert missing.param == "input" and missing.code == "missing_required_parameter"
    assert refused(parse_responses, {"input": "a", "max_output_tokens": "many"}).param == "max_output_tokens"
    # The gateway names responses itself: a client's own id could name another tenant's response.
    assert refused(parse_responses, {"input": "a", "request_id": "resp_x"}).param == "request_id"


def test_responses_body_for_the_worker() -> None:
    parsed = responses({"model": "fast", "input": "Hi", "max_output_tokens": 50, "store": False, "vendor": [1]})
    parsed.original["request_id"] = "resp_abc"  # the gateway's id for the response (kept_responses.py)
    out, strip = prepare_responses(parsed, "demo-small", b"unused", 16)
    assert not strip
    assert msgspec.json.decode(out) == {"model": "demo-small", "input": "Hi", "max_output_tokens": 16,
                                        "store": False, "vendor": [1], "request_id": "resp_abc"}


def test_responses_usage_of_vllm_answers() -> None:
    status, usage = read_response((FIXTURES / "responses.json").read_bytes())
    assert status == "incomplete" and usage is not None  # max_output_tokens reached: complete, and billed
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (49, 6, 55)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert responses_usage(b"not json") is None
    queued = b'{"id":"resp_1","status":"queued","usage":null}'  # a background response, not made yet
    assert read_response(queued) == ("queued", None)


# --- Anthropic's Messages API --------------------------------------------------------------------------


def test_messages_view() -> None:
    parsed = messages({"model": "auto", "system": [{"type": "text", "text": "Be brief."}], "max_tokens": "9",
                       "messages": [{"role": "user", "content": "Hello!"},
                                    {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
                                    {"role": "user", "content": [{"type": "text", "text": "More?"}]}]})
    assert [m["role"] for m in parsed.data["messages"]] == ["system", "user", "assistant", "user"]
    assert parsed.data["max_tokens"] == 9 and parsed.original["max_tokens"] == "9"
    assert text_bound(300, parsed.data, 1, 256, 8) == 300 + 256 + 4 * 8


def test_messages_tools_and_what_is_not_bounded() -> None:
    tool_turns = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {"c": "é"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                                     {"type": "text", "text": "Thanks"}]},
    ]
    parsed = messages({"max_tokens": 5, "messages": tool_turns, "tools": [{"name": "weather", "input_schema": {}}]})
    roles = [m["role"] for m in parsed.data["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]  # a tool result is a message of its own, as vLLM makes it
    # vLLM writes the tool's input out again as spaced, ASCII-escaped JSON (longer than the body): no byte bound.
    assert text_bound(400, parsed.data, 1, 256, 8) is None
    assert "tools" in features(parsed.data).capabilities
    image = [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "AA"}}]}]
    assert features(messages({"max_tokens": 5, "messages": image}).data).images == 1


def test_messages_limits_name_the_apis_own_fields() -> None:
    missing = refused(parse_messages, {"messages": [{"role": "user", "content": "a"}]})
    assert missing.param == "max_tokens" and missing.code == "missing_required_parameter"
    assert refused(parse_messages, {"messages": [], "max_tokens": 101}).param == "max_tokens"
    assert refused(parse_messages, {"messages": [{"role": "user", "content": "a"}] * 5, "max_tokens": 1}).param \
        == "messages"


def test_messages_body_for_the_worker() -> None:
    body = b'{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"top_k":3}'
    parsed = parse_messages(body, LIMITS)
    assert prepare_messages(parsed, "tiny", body, None) == (body, False)  # nothing to change: the bytes as sent
    out, _ = prepare_messages(parsed, "demo-small", body, 4)
    assert msgspec.json.decode(out) == {"model": "demo-small", "messages": [{"role": "user", "content": "Hi"}],
                                        "max_tokens": 4, "top_k": 3}


def test_messages_usage_is_the_whole_prompt() -> None:
    usage = messages_usage((FIXTURES / "messages.json").read_bytes())
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (48, 6, 54)
    # Anthropic counts the prompt in parts: what was read from and written to the cache are part of it.
    cached = messages_usage(b'{"usage":{"input_tokens":10,"output_tokens":3,"cache_read_input_tokens":32,'
                            b'"cache_creation_input_tokens":4}}')
    assert cached is not None and (cached.prompt_tokens, cached.completion_tokens) == (46, 3)
    assert cached.prompt_tokens_details is not None and cached.prompt_tokens_details.cached_tokens == 32


def test_gateway_errors_in_anthropics_envelope() -> None:
    openai = Response(b'{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota",'
                      b'"param":null,"code":"insufficient_quota"}}', status_code=429,
                      headers={"x-request-id": "r1", "x-should-retry": "false"})
    rendered = as_anthropic(openai)
    assert rendered.status_code == 429 and rendered.headers["x-should-retry"] == "false"
    assert msgspec.json.decode(rendered.content) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "You exceeded your current quota.",
                  "details": {"error_code": "insufficient_quota"}},
        "request_id": "r1",
    }
