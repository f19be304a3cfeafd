"""Entries from real vLLM 0.32 answers (tests/fixtures), and the JSON bodies and SSE streams rendered
from them: what a client gets from the cache has the content the worker sent, in vLLM's framing, and
parses with the official `openai` SDK's types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.cache import entry as entry_mod
from gateway.cache.entry import (
    Entry,
    StreamCollector,
    decode_entry,
    encode_entry,
    entry_from_body,
    render_json,
    render_sse,
)
from gateway.inference.relay import read_usage
from gateway.inference.usage import Usage

pytestmark = pytest.mark.pure

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events_of(raw: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e]


def datas(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for e in events_of(raw):
        assert e.startswith(b"data: ")
        if e != b"data: [DONE]\n\n":
            out.append(json.loads(e[6:]))
    assert raw.endswith(b"data: [DONE]\n\n")
    return out


def collect(raw: bytes, kind: str = "chat", pieces: int = 1, max_bytes: int = 1_000_000) -> Entry | None:
    c = StreamCollector(kind, max_bytes)  # type: ignore[arg-type]
    evs = events_of(raw)
    step = max(1, len(evs) // pieces)
    for i in range(0, len(evs), step):
        c.feed(b"".join(evs[i : i + step]))
    usage = None
    for d in datas(raw):
        if d.get("usage"):
            usage = read_usage(json.dumps(d).encode())
    return c.entry(usage)


def streamed_text(raw: bytes, kind: str = "chat") -> str:
    key = "text" if kind == "completion" else None
    parts = []
    for d in datas(raw):
        for c in d["choices"]:
            parts.append(c[key] if key else (c["delta"].get("content") or ""))
    return "".join(parts)


def test_a_json_chat_answer_round_trips() -> None:
    body = fixture("chat.json")
    entry = entry_from_body("chat", body)
    assert entry is not None
    assert decode_entry(encode_entry(entry)) == entry
    assert render_json(entry) == body  # a JSON request gets the worker's own body back
    assert entry.usage.completion_tokens == 12 and entry.choices[0].finish_reason == "length"
    for include_usage in (False, True):
        sse = render_sse(entry, include_usage)
        chunks = [ChatCompletionChunk.model_validate(d) for d in datas(sse)]
        assert streamed_text(sse) == json.loads(body)["choices"][0]["message"]["content"]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert all(c.id == entry.id and c.model == "tiny" for c in chunks)
        if include_usage:
            assert chunks[-1].choices == [] and chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens == 12
            assert chunks[-1].system_fingerprint == "vllm-0.32.0-6e839a82"
        else:
            assert all(c.usage is None for c in chunks)
            assert chunks[-1].system_fingerprint == "vllm-0.32.0-6e839a82"


@pytest.mark.parametrize("pieces", [1, 3, 100])
def test_a_chat_stream_becomes_an_entry_served_as_json_or_stream(pieces: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry_mod, "SSE_BATCH_BYTES", 300)  # parse in several batches, as a long stream would
    raw = fixture("chat_stream_usage.sse")
    entry = collect(raw, pieces=pieces)
    assert entry is not None
    assert entry.id == "chatcmpl-8d5d796d5c36c7eb" and entry.model == "tiny" and entry.created == 1795818555
    assert entry.system_fingerprint == "vllm-0.32.0-6e839a82"
    assert entry.usage == Usage(prompt_tokens=13, completion_tokens=6, total_tokens=19)
    completion = ChatCompletion.model_validate_json(render_json(entry))
    assert completion.choices[0].message.content == streamed_text(raw) == "qTrainedTokenizerFa" * 3
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.total_tokens == 19
    assert streamed_text(render_sse(entry, True)) == streamed_text(raw)
    # vLLM's framing: the same events, the tokens merged into the finishing chunk
    ours = datas(render_sse(entry, True))
    theirs = datas(raw)
    assert ours[0] == theirs[0]  # the role chunk
    assert {k: v for k, v in ours[-1].items() if k != "usage"} == {k: v for k, v in theirs[-1].items() if k != "usage"}
    assert ours[-1]["usage"] | {"prompt_tokens_details": None} == theirs[-1]["usage"] | {"prompt_tokens_details": None}


def test_a_completion_stream_becomes_an_entry() -> None:
    raw = fixture("completion_stream_usage.sse")
    entry = collect(raw, "completion", pieces=2)
    assert entry is not None
    completion = Completion.model_validate_json(render_json(entry))
    assert completion.choices[0].text == streamed_text(raw, "completion") == "hab):hab):"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    sse = render_sse(entry, False)
    assert [Completion.model_validate(d).choices[0].text for d in datas(sse)] == ["hab):hab):"]
    assert datas(render_sse(entry, True))[-1]["usage"]["total_tokens"] == 11


def test_a_json_completion_answer_round_trips() -> None:
    body = fixture("completion.json")
    entry = entry_from_body("completion", body)
    assert entry is not None and render_json(entry) == body
    assert streamed_text(render_sse(entry, False), "completion") == "hab):hab):hab):hab):"


def test_a_stream_without_a_finish_is_not_cached() -> None:
    evs = events_of(fixture("chat_stream_usage.sse"))
    cut = b"".join(evs[:4])  # the worker died, or the client left, mid-answer
    c = StreamCollector("chat", 1_000_000)
    c.feed(cut)
    assert c.entry(Usage(1, 2, 3)) is None
    no_usage = StreamCollector("chat", 1_000_000)
    no_usage.feed(fixture("chat_stream_nousage.sse"))
    assert no_usage.entry(None) is None  # no usage: the hit could not be accounted for


def test_an_error_event_or_a_foreign_finish_reason_is_not_cached() -> None:
    raw = fixture("chat_stream_usage.sse")
    broken = raw.replace(b"data: [DONE]", b'data: {"error": {"message": "boom"}}\n\ndata: [DONE]')
    assert collect(broken) is None
    tools = raw.replace(b'"finish_reason":"length"', b'"finish_reason":"tool_calls"')
    assert collect(tools) is None
    body = fixture("chat.json").replace(b'"finish_reason":"length"', b'"finish_reason":"abort"')
    assert entry_from_body("chat", body) is None
    assert entry_from_body("chat", b'{"error": {"message": "x"}}') is None
    assert entry_from_body("chat", b"not json") is None


def test_what_the_entry_cannot_carry_is_not_cached() -> None:
    with_logprobs = fixture("chat.json").replace(b'"logprobs":null', b'"logprobs":{"content":[]}')
    assert entry_from_body("chat", with_logprobs) is None
    refusal = fixture("chat.json").replace(b'"refusal":null', b'"refusal":"no"')
    assert entry_from_body("chat", refusal) is None
    raw = fixture("chat_stream_usage.sse").replace(b'"logprobs":null', b'"logprobs":{"content":[]}', 1)
    assert collect(raw) is None


def test_an_answer_over_the_size_limit_is_not_collected() -> None:
    assert collect(fixture("chat_stream_usage.sse"), max_bytes=20) is None
    assert collect(fixture("chat_stream_usage.sse"), max_bytes=200) is not None


def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
    d = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(d).encode() + b"\n\n"


def test_n_choices_interleaved_and_tool_calls_merged() -> None:
    c = StreamCollector("chat", 1_000_000)
    c.feed(chunk(0, {"role": "assistant", "content": ""}) + chunk(1, {"role": "assistant", "content": ""}))
    c.feed(chunk(1, {"content": "B1"}) + chunk(0, {"content": "A1"}))
    c.feed(chunk(0, {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]}))
    c.feed(chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}))
    c.feed(chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}))
    c.feed(chunk(1, {"content": "B2", "reasoning": "because"}, "stop") + chunk(0, {"content": "A2"}, "stop"))
    c.feed(b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
           b'"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\ndata: [DONE]\n\n')
    entry = c.entry(None)
    assert entry is not None
    assert [(ch.index, ch.text, ch.finish_reason, ch.reasoning) for ch in entry.choices] == [
        (0, "A1A2", "stop", None), (1, "B1B2", "stop", "because")]
    assert entry.choices[0].tool_calls is not None
    call = entry.choices[0].tool_calls[0]
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", '{"city": "Paris"}')
    completion = ChatCompletion.model_validate_json(render_json(entry))
    assert completion.choices[0].message.tool_calls is not None
    assert completion.choices[0].message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert completion.choices[1].message.reasoning == "because"  # type: ignore[attr-defined]
    # streamed back: the SDK's accumulation gives the same message
    chunks = [ChatCompletionChunk.model_validate(d) for d in datas(render_sse(entry, True))]
    text = {0: "", 1: ""}
    args = ""
    for ch in chunks:
        for choice in ch.choices:
            text[choice.index] += choice.delta.content or ""
            for t in choice.delta.tool_calls or ():
                args += t.function.arguments if t.function and t.function.arguments else ""
    assert text == {0: "A1A2", 1: "B1B2"} and args == '{"city": "Paris"}'
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7


def shape(raw: bytes) -> list[tuple[Any, ...]]:
    """What a stream says beyond its text: per event, its choice, finish reason, usage and fingerprint."""
    out = []
    for d in datas(raw):
        choice = d["choices"][0] if d["choices"] else {}
        out.append((choice.get("index"), choice.get("finish_reason"), d.get("usage"), d.get("system_fingerprint")))
    return out


def ends(raw: bytes) -> list[tuple[Any, ...]]:
    """`shape` of the events that end something: each choice's last chunk, and the usage event."""
    return [s for s in shape(raw) if s[1] is not None or s[0] is None]


# A stream asked of vLLM with the usage event, as the gateway asks it (and collects it for the cache), and
# the same request as a client asked it without.
REPLAYS = [("chat", "chat_stream_usage.sse", "chat_stream_nousage.sse"),
           ("chat", "chat_stream_n3_stop_usage.sse", "chat_stream_n3_stop_nousage.sse"),
           ("completion", "completion_stream_2prompts_usage.sse", "completion_stream_2prompts_nousage.sse")]


@pytest.mark.parametrize(("kind", "asked", "unasked"), REPLAYS)
def test_a_replayed_stream_ends_as_vllms_own(kind: str, asked: str, unasked: str) -> None:
    """The fingerprint on each choice's last chunk without the usage event, on the usage event with it (which
    is byte for byte vLLM's, id aside), as vLLM writes them."""
    entry = collect(fixture(asked), kind)
    assert entry is not None and entry.system_fingerprint is not None
    replay = render_sse(entry, False)
    assert sorted(ends(replay), key=str) == sorted(ends(fixture(unasked)), key=str)
    assert b'"usage"' not in replay
    replay = render_sse(entry, True)
    assert sorted(ends(replay), key=str) == sorted(ends(fixture(asked)), key=str)
    assert events_of(replay)[-2] == events_of(fixture(asked))[-2].replace(
        json.loads(events_of(fixture(asked))[-2][6:])["id"].encode(), entry.id.encode())
    for data in datas(replay):
        (ChatCompletionChunk if kind == "chat" else Completion).model_validate(data)


@pytest.mark.parametrize(("kind", "name"), [("chat", "chat_stream_continuous.sse"),
                                            ("completion", "completion_stream_2prompts_continuous.sse")])
def test_usage_on_every_chunk_is_replayed_with_each_choices_counts(kind: str, name: str) -> None:
    """vLLM's `continuous_usage_stats`: every chunk carries its choice's usage so far. The replay's chunks are
    coarser than the worker's (a choice's text in one), so its first and last counts are the worker's."""
    real = fixture(name)
    entry = collect(real, kind)
    assert entry is not None
    replay = render_sse(entry, True, continuous_usage=True)
    assert all(d["usage"] is not None for d in datas(replay))
    assert sorted(ends(replay), key=str) == sorted(ends(real), key=str)
    if kind == "chat":  # the role chunk, before any token
        assert datas(replay)[0]["usage"] == datas(real)[0]["usage"]
    assert render_sse(entry, False, continuous_usage=True) == render_sse(entry, False)  # only with include_usage
    assert entry_mod.replayable(entry, True)


def test_several_choices_without_their_own_counts_are_not_replayed_with_usage_on_every_chunk() -> None:
    entry = collect(fixture("chat_stream_n3_stop_usage.sse"))
    assert entry is not None and len(entry.choices) == 3
    assert entry_mod.replayable(entry, False) and not entry_mod.replayable(entry, True)
    one = collect(fixture("chat_stream_usage.sse"))
    assert one is not None and entry_mod.replayable(one, True)  # one choice: the usage is its own
