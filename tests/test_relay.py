"""The stream relay on real vLLM 0.32 bytes (tests/fixtures), cut into every kind of network chunk.

Every way the worker's bytes can be cut into network chunks must give the client the same events.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from gateway.inference.relay import DONE_EVENT, relay_stream
from gateway.outcome import Outcome
from workers.pool import Replica
from workers.upstream import UpstreamCall

pytestmark = pytest.mark.pure

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32"


@dataclass
class ChunkedResponse:
    """A stand-in for a worker's streamed answer (a `WorkerResponse`), fed from memory: the relay gets
    exactly these chunks, which a socket would not promise. The same relay runs over real sockets against
    real vLLM (test_real_vllm*.py) and the simulator (test_gateway*.py, test_accounting_gateway.py)."""

    chunks: list[bytes]
    fail: Exception | None = None  # raised after the chunks, as aiohttp raises a connection cut mid-body
    status_code: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    closed: bool = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail is not None:
            raise self.fail

    async def aread(self) -> bytes:
        return b"".join(self.chunks)

    async def aclose(self) -> None:
        self.closed = True


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events(raw: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e]


async def relay(raw: bytes, chunk_size: int, strip: bool) -> tuple[bytes, Outcome]:
    response = ChunkedResponse([raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size)])
    replica = Replica("http://worker", "p", healthy=True, in_flight=1)
    outcome = Outcome("rid", "tiny", time.perf_counter())
    out = b"".join([c async for c in relay_stream(UpstreamCall(replica, response), strip, outcome)])
    assert replica.in_flight == 0 and response.closed
    return out, outcome


@pytest.mark.parametrize("name", ["chat_stream_usage.sse", "completion_stream_usage.sse"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 100_000])
async def test_usage_chunk_kept_when_asked_and_read(name: str, chunk_size: int) -> None:
    raw = fixture_bytes(name)
    out, outcome = await relay(raw, chunk_size, strip=False)
    assert out == raw
    assert outcome.completed
    assert outcome.usage is not None and outcome.usage.completion_tokens in (6, 4)
    assert outcome.usage.total_tokens == outcome.usage.prompt_tokens + outcome.usage.completion_tokens


def same_but_ids(raw: bytes) -> bytes:
    """`raw` with its ids blanked: two requests' streams differ only there (vLLM makes them at random)."""
    return re.sub(rb'"id":"[^"]*"', b'"id":""', raw)


# The same request asked of vLLM twice: with `stream_options.include_usage` (as the gateway asks it) and
# without (as the client did). Seeded, so both carry the same text in the same chunks.
PAIRS = [("chat_stream_usage.sse", "chat_stream_nousage.sse"),
         ("chat_stream_n3_stop_usage.sse", "chat_stream_n3_stop_nousage.sse"),  # a choice finishes first
         ("completion_stream_2prompts_usage.sse", "completion_stream_2prompts_nousage.sse")]


@pytest.mark.parametrize(("asked", "unasked"), PAIRS)
@pytest.mark.parametrize("chunk_size", [1, 13, 100_000])
async def test_without_usage_asked_the_client_gets_what_vllm_sends_then(asked: str, unasked: str,
                                                                         chunk_size: int) -> None:
    """The usage event is dropped and its `system_fingerprint` moves onto each choice's last chunk: byte for
    byte the stream vLLM sends a client that did not ask for usage, with several choices too."""
    out, outcome = await relay(fixture_bytes(asked), chunk_size, strip=True)
    expected = fixture_bytes(unasked)
    assert same_but_ids(out) == same_but_ids(expected)
    assert out.count(b'"system_fingerprint":"vllm-0.32.0-') == expected.count(b'"finish_reason":"') > 0
    assert outcome.usage is not None and outcome.completed  # still read for accounting


async def test_the_completion_fixture_loses_only_its_usage_event() -> None:
    raw = fixture_bytes("completion_stream_usage.sse")
    out, _ = await relay(raw, 9, strip=True)
    kept = [e for e in events(raw) if b'"choices":[],"usage"' not in e]
    assert len(kept) == len(events(raw)) - 1
    finished = [e for e in kept if b'"finish_reason":"' in e]
    assert len(finished) == 1
    assert out == b"".join(kept).replace(finished[0], finished[0][:-3] + b',"system_fingerprint":"vllm-0.32.0-'
                                         b'6e839a82"}\n\n')


async def test_the_finished_choices_are_held_only_until_the_usage_event() -> None:
    """With several choices, the events from the first finished one on wait for the fingerprint; the ones
    before it go out as they come."""
    raw = fixture_bytes("chat_stream_n3_stop_usage.sse")
    first = raw.index(b'"finish_reason":"')
    before = raw[: raw.rindex(b"\n\n", 0, first) + 2]
    response = ChunkedResponse([before, raw[len(before):]])
    outcome = Outcome("rid", "tiny", time.perf_counter())
    sent = [c async for c in relay_stream(UpstreamCall(Replica("http://w", "p", in_flight=1), response), True,
                                          outcome)]
    assert sent[0] == before and len(sent) == 2 and sent[1].endswith(DONE_EVENT)


async def test_stream_without_usage_passes_unchanged() -> None:
    raw = fixture_bytes("chat_stream_nousage.sse")
    out, outcome = await relay(raw, 5, strip=True)
    assert out == raw
    assert outcome.usage is None and outcome.completed


async def test_usage_words_inside_content_do_not_confuse_the_relay() -> None:
    # Content that mentions "usage": JSON escapes its quotes, so it never looks like the usage key.
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"\\"usage\\": 3"}}]}\n\n'
    out, outcome = await relay(chunk + DONE_EVENT, 3, strip=True)
    assert out == chunk + DONE_EVENT
    assert outcome.usage is None


async def test_broken_stream_ends_with_error_event_and_done() -> None:
    raw = fixture_bytes("chat_stream_usage.sse")
    first_two = b"".join(events(raw)[:2])

    # What aiohttp raises when the worker's connection closes before the body's end.
    response = ChunkedResponse([first_two], fail=aiohttp.ClientPayloadError("Response payload is not completed"))
    outcome = Outcome("rid", "tiny", time.perf_counter())
    replica = Replica("http://worker", "p", in_flight=1)
    out = b"".join([c async for c in relay_stream(UpstreamCall(replica, response), True, outcome)])
    assert response.closed and replica.in_flight == 0
    assert replica.last_error == "stream broke: ClientPayloadError"  # counted against its breaker
    assert out.startswith(first_two)
    tail = out[len(first_two) :]
    assert tail.startswith(b'data: {"error":{"message":"The worker failed mid-stream.","type":"upstream_error"')
    assert tail.endswith(DONE_EVENT)
    assert not outcome.completed and outcome.error == "ClientPayloadError"


@pytest.mark.parametrize("chunk_size", [7, 100_000])
async def test_a_streams_books_are_closed_before_its_last_event_leaves(chunk_size: int) -> None:
    """The steps after the call (its record journaled among them) run before the client is given [DONE]: a
    gateway that dies once the client has the whole answer has already recorded it."""
    from gateway.outcome import Step

    raw = fixture_bytes("chat_stream_usage.sse")
    response = ChunkedResponse([raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size)])
    recorded: list[Outcome] = []
    outcome = Outcome("rid", "tiny", time.perf_counter(), steps=(Step("record", recorded.append),))
    call = UpstreamCall(Replica("http://worker", "p", healthy=True, in_flight=1), response)
    async for chunk in relay_stream(call, False, outcome):
        if chunk.endswith(DONE_EVENT):
            assert recorded == [outcome] and outcome.usage is not None  # recorded whole, usage and all
    assert recorded == [outcome]  # once


async def test_a_stream_broken_while_events_are_held_still_gives_them_then_the_error() -> None:
    raw = fixture_bytes("chat_stream_n3_stop_usage.sse")
    cut = raw.index(b"\n\n", raw.index(b'"finish_reason":"')) + 2  # just after the first finished choice
    response = ChunkedResponse([raw[:cut]], fail=aiohttp.ClientPayloadError("Response payload is not completed"))
    outcome = Outcome("rid", "tiny", time.perf_counter())
    out = b"".join([c async for c in relay_stream(UpstreamCall(Replica("http://w", "p", in_flight=1), response),
                                                  True, outcome)])
    assert out.startswith(raw[:cut])  # nothing lost; no fingerprint to add, the usage event never came
    assert out[cut:].startswith(b'data: {"error":') and out.endswith(DONE_EVENT)
    assert not outcome.completed
