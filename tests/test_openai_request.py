from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.inference.openai_request import ChatFields, CompletionFields, parse_body, upstream_body
from router.errors import InvalidRequest

pytestmark = pytest.mark.pure


def test_unknown_fields_pass_through_untouched() -> None:
    body = b'{"model":"demo-small","messages":[],"top_k":3,"guided_json":{"a":1},"vendor_x":[1,2]}'
    parsed = parse_body(body, ChatFields)
    out, strip = upstream_body(parsed, "demo-small", body)
    assert out is body and not strip  # nothing to change: the original bytes go out


def test_model_rewritten_and_usage_requested_for_streams() -> None:
    body = b'{"model":"auto","messages":[],"stream":true,"top_k":3}'
    parsed = parse_body(body, ChatFields)
    out, strip = upstream_body(parsed, "demo-small", body)
    assert strip
    assert msgspec.json.decode(out) == {
        "model": "demo-small", "messages": [], "stream": True, "top_k": 3,
        "stream_options": {"include_usage": True},
    }


def test_client_asking_for_usage_keeps_its_options() -> None:
    body = b'{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":true,"extra":1}}'
    out, strip = upstream_body(parse_body(body, CompletionFields), "m", body)
    assert out is body and not strip


def upstream(body: dict[str, Any], model: str = "m", max_tokens: int | None = None,
             kind: type[ChatFields] | type[CompletionFields] = ChatFields) -> tuple[dict[str, Any], bool, bool]:
    """What the worker is sent for `body`, whether the usage event is to be dropped, and whether the client's
    bytes went out as they were."""
    raw = msgspec.json.encode(body)
    out, strip = upstream_body(parse_body(raw, kind), model, raw, max_tokens)
    return msgspec.json.decode(out), strip, out is raw


def test_a_stream_asked_as_vllm_reads_it_is_a_stream() -> None:
    """`"stream": "yes"` is a stream for vLLM (pydantic's lax booleans): for the gateway too. The worker is sent
    the client's own spelling of every field but those the gateway sets."""
    sent, strip, _ = upstream({"model": "auto", "messages": [], "stream": "yes", "n": "2"}, "m")
    assert strip and sent == {"model": "m", "messages": [], "stream": "yes", "n": "2",
                              "stream_options": {"include_usage": True}}
    parsed = parse_body(b'{"messages":[],"stream":"on","n":"2","max_tokens":5.0}', ChatFields)
    assert parsed.fields.stream is True and parsed.data["n"] == 2 and parsed.data["max_tokens"] == 5
    assert parsed.raw == {"stream": "on", "n": "2", "max_tokens": 5.0}
    # A policy's cap replaces the client's value, whatever its spelling.
    sent, _, _ = upstream({"model": "m", "messages": [], "max_tokens": "900", "max_completion_tokens": 900.0}, "m", 64)
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (64, 64)


def test_what_vllm_judges_on_the_raw_values_reaches_it_raw() -> None:
    """vLLM refuses `stream_options` when the raw `stream` is falsy, and reads `"stream": "false"` (a truthy
    string) past that check as no stream: the gateway neither streams it nor rewrites it."""
    body = {"model": "m", "messages": [], "stream": "false", "stream_options": {"include_usage": True}}
    sent, strip, unchanged = upstream(body)
    assert unchanged and not strip
    assert not parse_body(msgspec.json.encode(body), ChatFields).fields.stream
    sent, _, _ = upstream({**body, "model": "auto"})
    assert sent == {**body, "model": "m"}


@pytest.mark.parametrize(("options", "sent_options", "strip"), [
    (None, {"include_usage": True}, True),
    ({}, {"include_usage": True}, True),
    ({"include_usage": False, "x": 1}, {"include_usage": True, "x": 1}, True),
    ({"include_usage": "no"}, {"include_usage": True}, True),
    # vLLM sends per-chunk usage only with include_usage: the client did not ask for it
    ({"continuous_usage_stats": True}, {"include_usage": True, "continuous_usage_stats": False}, True),
    ({"include_usage": "1"}, None, False),  # asked (lax): the client's body as it was
    ({"include_usage": True, "continuous_usage_stats": "yes"}, None, False),
])
def test_usage_is_asked_of_the_worker_and_nothing_the_client_did_not_ask(
        options: dict[str, Any] | None, sent_options: dict[str, Any] | None, strip: bool) -> None:
    body: dict[str, Any] = {"model": "m", "prompt": "x", "stream": True}
    if options is not None:
        body["stream_options"] = options
    sent, stripped, unchanged = upstream(body, kind=CompletionFields)
    assert stripped == strip
    assert sent.get("stream_options") == (sent_options if sent_options is not None else options)
    assert unchanged == (sent_options is None)


def test_a_null_model_is_auto_and_prompts_are_the_workers_to_require() -> None:
    parsed = parse_body(b'{"model":null,"messages":[]}', ChatFields)
    assert parsed.fields.model == "auto" and "model" not in parsed.data
    # An empty name, too: vLLM answers it with its served model.
    assert parse_body(b'{"model":"","messages":[]}', ChatFields).fields.model == "auto"
    sent, _, _ = upstream({"model": None, "messages": []}, "demo-small")
    assert sent["model"] == "demo-small"
    # vLLM takes `prompt_embeds` instead of `prompt`, and refuses neither with its own message
    assert parse_body(b'{"prompt_embeds":"AAAA"}', CompletionFields).fields.prompt is None


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b'{"messages": [', None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b"[1,2]", None, "invalid_json"),
        (b'{"model":"m","messages":[],"stream":"maybe"}', "stream", "invalid_type"),
        (b'{"model":"m","messages":[],"stream":2}', "stream", "invalid_type"),
        (b'{"model":"m","messages":[],"stream":true,"stream_options":"usage"}', "stream_options", "invalid_type"),
        (b'{"model":"m","messages":[],"stream":true,"stream_options":{"continuous_usage_stats":"always"}}',
         "stream_options.continuous_usage_stats", "invalid_type"),
        (b'{"model":7,"messages":[]}', "model", "invalid_type"),
        (b'{"model":"m","messages":"hi"}', "messages", "invalid_type"),
        (b'{"model":"m"}', "messages", "missing_required_parameter"),
        (b'{"model":"m","messages":[],"stream_options":{"include_usage":"x"}}',
         "stream_options.include_usage", "invalid_type"),
        (b'{"model":"m","messages":[],"max_tokens":1.5}', "max_tokens", "invalid_type"),
    ],
)
def test_bad_bodies_name_the_param(body: bytes, param: str | None, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(body, ChatFields)
    assert info.value.param == param
    assert info.value.code == code
    assert info.value.status == 400
    if param:
        assert param in info.value.message


def test_prompt_prefix_reads_message_text_in_order() -> None:
    from gateway.inference.openai_request import prompt_prefix

    data = {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {}}, {"type": "text", "text": "Hi there"}]},
    ]}
    assert prompt_prefix(data, 100) == b"You are terse.\x1eHi there"
    assert prompt_prefix(data, 8) == b"You are "
    assert prompt_prefix({"prompt": "Once upon a time"}, 4) == b"Once"
    assert prompt_prefix({"messages": "not a list"}, 10) == b""


HI = b'{"model":"m","messages":[{"role":"user","content":"hi"}]'  # a chat body without its closing brace


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (HI.replace(b"hi", b"h\xffi") + b"}", "invalid_json", "not valid UTF-8"),
        (HI + b',"caf\xc3\x28":1}', "invalid_json", "not valid UTF-8"),
        (HI.replace(b"hi", b"\\ud800") + b"}", "invalid_json", "not valid JSON"),
        (HI + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nesting_too_deep", "at most 64 levels"),
        (HI + b',"x":' + b'{"a":' * 64 + b"1" + b"}" * 64 + b"}", "nesting_too_deep", "at most 64 levels"),
        (HI.replace(b'"hi"', b"[" * 70 + b"]" * 70) + b"}", "nesting_too_deep", "nested too deeply"),
        (HI + b',"temperature":NaN}', "invalid_json", "not valid JSON"),
        (HI + b',"temperature":Infinity}', "invalid_json", "not valid JSON"),
        (HI + b',"temperature":1e999}', "invalid_json", "out of range"),
        (HI + b',"seed":' + b"9" * 5000 + b"}", "invalid_json", "out of range"),
        (b"42", "invalid_json", "must be a JSON object"),
        (b'"text"', "invalid_json", "must be a JSON object"),
        (b"null", "invalid_json", "must be a JSON object"),
        (b"\xef\xbb\xbf" + HI + b"}", "invalid_json", "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400s(body: bytes, code: str, words: str) -> None:
    """Each once answered 500 (invalid UTF-8 in a string, nesting deep enough for a RecursionError) or is
    refused before anything recurses into it."""
    for kind in (ChatFields, CompletionFields):
        with pytest.raises(InvalidRequest) as info:
            parse_body(body, kind)
        assert info.value.status == 400 and info.value.code == code and words in info.value.message


def test_deep_nesting_up_to_the_limit_and_big_numbers_are_read() -> None:
    deep = HI + b',"x":' + b'{"a":' * 63 + b"1" + b"}" * 63 + b"}"  # 64 levels, the body itself included
    assert parse_body(deep, ChatFields).data["x"]["a"]["a"]
    big = parse_body(HI + b',"vendor_x":' + b"9" * 40 + b"}", ChatFields)  # an unknown field: the worker judges it
    assert big.data["vendor_x"] == int("9" * 40)
    out, _ = upstream_body(big, "other", HI)
    assert msgspec.json.decode(out)["vendor_x"] == int("9" * 40)
