"""The named-event relay (gateway/inference/event_relay.py) on vLLM 0.32's own Responses and Messages streams
(tests/fixtures), cut into every kind of network chunk: the client gets the worker's bytes unchanged, the
usage is read from the events that carry it, the answer is complete on its API's final event, and a worker
breaking mid-stream ends the stream with an error event in the API's shape."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
import msgspec
import pytest

from gateway.inference.event_relay import EventDialect, relay_events
from gateway.inference.messages_api import EVENTS as MESSAGES
from gateway.inference.responses_api import EVENTS as RESPONSES
from gateway.outcome import Outcome, finish
from tests.test_relay import ChunkedResponse, events, fixture_bytes
from workers.pool import Replica
from workers.upstream import UpstreamCall

pytestmark = pytest.mark.pure

STREAMS = [("responses_stream.sse", RESPONSES, (49, 6)), ("messages_stream.sse", MESSAGES, (48, 6))]


async def relay(raw: bytes, chunk_size: int, dialect: EventDialect, fail: Exception | None = None,
                done: Callable[[Outcome], None] = finish) -> tuple[bytes, Outcome, list[bool]]:
    """The client's bytes, the call's outcome, and whether the call was complete each time `done` was called."""
    response = ChunkedResponse([raw[i: i + chunk_size] for i in range(0, len(raw), chunk_size)], fail)
    replica = Replica("http://worker", "p", healthy=True, in_flight=1)
    outcome = Outcome("rid", "tiny", time.perf_counter(), kind="chat")
    seen: list[bool] = []

    def closing(o: Outcome) -> None:
        seen.append(o.completed)
        done(o)

    out = b"".join([c async for c in relay_events(UpstreamCall(replica, response), outcome, dialect, None, closing)])
    assert replica.in_flight == 0 and response.closed
    return out, outcome, seen


@pytest.mark.parametrize(("name", "dialect", "usage"), STREAMS)
@pytest.mark.parametrize("chunk_size", [1, 13, 100, 100_000])
async def test_stream_passes_unchanged_and_its_usage_is_read(name: str, dialect: EventDialect,
                                                             usage: tuple[int, int], chunk_size: int) -> None:
    raw = fixture_bytes(name)
    out, outcome, seen = await relay(raw, chunk_size, dialect)
    assert out == raw
    assert outcome.completed and outcome.error is None and not outcome.cancelled
    assert outcome.usage is not None
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == usage
    assert outcome.usage.total_tokens == sum(usage)
    assert seen[0] is True  # the books closed on the final event, before the client had it
    text_events = raw.count(dialect.content)
    assert outcome.content_events == text_events > 0


@pytest.mark.parametrize(("name", "dialect", "usage"), STREAMS)
async def test_message_delta_without_the_prompt_keeps_message_starts(name: str, dialect: EventDialect,
                                                                     usage: tuple[int, int]) -> None:
    if dialect is not MESSAGES:
        return
    # Anthropic's own API may send the output alone in `message_delta`: the prompt stays message_start's.
    raw = fixture_bytes(name).replace(b'"usage":{"input_tokens":48,"output_tokens":6}}',
                                      b'"usage":{"output_tokens":6}}')
    assert raw != fixture_bytes(name)
    _, outcome, _ = await relay(raw, 100_000, dialect)
    assert outcome.usage is not None and (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == usage


@pytest.mark.parametrize(("name", "dialect", "usage"), STREAMS)
async def test_worker_breaking_mid_stream_ends_with_the_apis_error_event(name: str, dialect: EventDialect,
                                                                        usage: tuple[int, int]) -> None:
    raw = fixture_bytes(name)
    head = b"".join(events(raw)[:4])
    out, outcome, _ = await relay(head, 50, dialect, aiohttp.ClientPayloadError("cut"))
    assert out.startswith(head)
    tail = out[len(head):]
    assert tail.startswith(b"event: error\ndata: ") and tail.endswith(b"\n\n")
    error = msgspec.json.decode(tail[len(b"event: error\ndata: "):])
    if dialect is RESPONSES:  # OpenAI's `error` event: the sequence number after the last one relayed
        assert error == {"type": "error", "code": "upstream_stream_broken", "message": "The worker failed mid-stream.",
                         "param": None, "sequence_number": 4}
    else:  # Anthropic's, which its SDK raises
        assert error == {"type": "error", "error": {"type": "api_error", "message": "The worker failed mid-stream."}}
    assert not outcome.completed and outcome.usage is None and outcome.error == "ClientPayloadError"


async def test_failed_response_is_not_complete() -> None:
    raw = fixture_bytes("responses_stream.sse").replace(b"event: response.completed", b"event: response.failed")
    _, outcome, _ = await relay(raw, 100_000, RESPONSES)
    assert not outcome.completed and outcome.error == "ResponseFailed"
    assert outcome.usage is not None  # still billed: the worker reported what it used
