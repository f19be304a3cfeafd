"""The stream relay on real vLLM 0.32 bytes (shared/fixtures), through httpx.MockTransport.

Every way the worker's bytes can be cut into network chunks must give the client the same events.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.relay import DONE_EVENT, Outcome, relay_stream
from workers.pool import Replica
from workers.upstream import UpstreamCall

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vllm-0.32"


@dataclass(slots=True)
class HttpxResponse:
    """httpx's streamed response as a `WorkerResponse` (the workers here are httpx.MockTransport): its close
    may wait, so it is shielded from the caller's cancellation, as the protocol asks."""

    raw: httpx.Response

    @property
    def status_code(self) -> int:
        return self.raw.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self.raw.headers

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self.raw.aiter_raw()

    async def aread(self) -> bytes:
        return await self.raw.aread()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.raw.aclose()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events(raw: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e]


async def relay(raw: bytes, chunk_size: int, strip: bool) -> tuple[bytes, Outcome]:
    def handler(request: httpx.Request) -> httpx.Response:
        chunks = [raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size)]
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=ChunkStream(chunks))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await client.send(client.build_request("POST", "http://worker/v1/x"), stream=True)
        replica = Replica("http://worker", "p", healthy=True, in_flight=1)
        outcome = Outcome("rid", "tiny", time.perf_counter())
        call = UpstreamCall(replica, HttpxResponse(response))
        out = b"".join([c async for c in relay_stream(call, strip, outcome)])
        assert replica.in_flight == 0
        return out, outcome


class ChunkStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self):  # type: ignore[override]
        for c in self.chunks:
            yield c


@pytest.mark.parametrize("name", ["chat_stream_usage.sse", "completion_stream_usage.sse"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 100_000])
async def test_usage_chunk_kept_when_asked_and_read(name: str, chunk_size: int) -> None:
    raw = fixture_bytes(name)
    out, outcome = await relay(raw, chunk_size, strip=False)
    assert out == raw
    assert outcome.completed
    assert outcome.usage is not None and outcome.usage.completion_tokens in (6, 4)
    assert outcome.usage.total_tokens == outcome.usage.prompt_tokens + outcome.usage.completion_tokens


@pytest.mark.parametrize("name", ["chat_stream_usage.sse", "completion_stream_usage.sse"])
@pytest.mark.parametrize("chunk_size", [1, 13, 100_000])
async def test_usage_chunk_removed_when_not_asked(name: str, chunk_size: int) -> None:
    raw = fixture_bytes(name)
    out, outcome = await relay(raw, chunk_size, strip=True)
    expected = [e for e in events(raw) if b'"choices":[],"usage"' not in e]
    assert len(expected) == len(events(raw)) - 1
    assert out == b"".join(expected)
    assert out.endswith(DONE_EVENT)
    assert outcome.usage is not None  # still read for accounting


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

    class Breaking(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[override]
            yield first_two
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Breaking())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await client.send(client.build_request("POST", "http://worker/v1/x"), stream=True)
        outcome = Outcome("rid", "tiny", time.perf_counter())
        call = UpstreamCall(Replica("http://worker", "p", in_flight=1), HttpxResponse(response))
        out = b"".join([c async for c in relay_stream(call, True, outcome)])
    assert out.startswith(first_two)
    tail = out[len(first_two) :]
    assert tail.startswith(b'data: {"error":{"message":"The worker failed mid-stream.","type":"upstream_error"')
    assert tail.endswith(DONE_EVENT)
    assert not outcome.completed and outcome.error == "RemoteProtocolError"
