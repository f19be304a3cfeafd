"""Bytes from a worker back to the client.

Streams are passthrough: events go out as the worker framed them. The only event the gateway looks
inside is the one carrying `usage` (found by a byte search, so ordinary chunks are never parsed),
which it reads for accounting and drops when the client did not ask for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import msgspec

from workers.upstream import UpstreamCall

log = logging.getLogger("gateway.access")

EVENT_END = b"\n\n"
USAGE_MARK = b'"usage":'
DONE_EVENT = b"data: [DONE]\n\n"


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _UsageCarrier(msgspec.Struct):
    usage: Usage | None = None
    choices: list[msgspec.Raw] | None = None


_decode_carrier = msgspec.json.Decoder(_UsageCarrier).decode


@dataclass
class Outcome:
    """What became of one call, for the access log and (later) accounting."""

    request_id: str
    model: str
    started: float
    replica: str | None = None
    status: int = 0
    usage: Usage | None = None
    first_byte: float | None = None
    finished: float | None = None
    completed: bool = False  # the worker finished the answer ([DONE], or a whole JSON body)
    error: str | None = None


def read_usage(body: bytes) -> Usage | None:
    try:
        return _decode_carrier(body).usage
    except msgspec.DecodeError:
        return None


def _take_usage(events: bytes, strip: bool, outcome: Outcome) -> bytes:
    kept: list[bytes] = []
    for event in events.split(EVENT_END):
        if not event:
            continue
        if USAGE_MARK in event and event.startswith(b"data: {"):
            try:
                carrier = _decode_carrier(event[6:])
            except msgspec.DecodeError:
                carrier = _UsageCarrier()
            if carrier.usage is not None:
                outcome.usage = carrier.usage
                if strip and carrier.choices == []:
                    continue
        kept.append(event + EVENT_END)
    return b"".join(kept)


def error_event(message: str, type_: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + msgspec.json.encode(body) + EVENT_END


async def relay_stream(call: UpstreamCall, strip_usage: bool, outcome: Outcome) -> AsyncIterator[bytes]:
    pending = b""
    try:
        async for chunk in call.response.aiter_raw():
            if outcome.first_byte is None:
                outcome.first_byte = time.perf_counter()
            data = pending + chunk if pending else chunk
            cut = data.rfind(EVENT_END)
            if cut < 0:
                pending = data
                continue
            cut += 2
            ready, pending = data[:cut], data[cut:]
            if USAGE_MARK in ready:
                ready = _take_usage(ready, strip_usage, outcome)
            if ready.endswith(DONE_EVENT):
                outcome.completed = True
            if ready:
                yield ready
        if pending:
            yield pending
    except httpx.HTTPError as exc:
        # The worker failed mid-stream: end the client's stream cleanly, in OpenAI's shape.
        outcome.error = type(exc).__name__
        call.broke(f"stream broke: {outcome.error}")
        log.warning("upstream stream from %s broke: %s", call.replica.url, outcome.error)
        is_timeout = isinstance(exc, httpx.TimeoutException)
        yield error_event(
            "The worker timed out mid-stream." if is_timeout else "The worker failed mid-stream.",
            "timeout_error" if is_timeout else "upstream_error",
            "upstream_timeout" if is_timeout else "upstream_stream_broken",
        ) + DONE_EVENT
    finally:
        await call.aclose()
        finish(outcome)


def finish(outcome: Outcome) -> None:
    """Closes the books on a call: one access line (ids, model, numbers; never content)."""
    outcome.finished = time.perf_counter()
    usage = outcome.usage
    log.info(
        "request_id=%s model=%s replica=%s status=%d completed=%s prompt_tokens=%s completion_tokens=%s "
        "duration_ms=%.1f error=%s",
        outcome.request_id, outcome.model, outcome.replica, outcome.status, outcome.completed,
        usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
        (outcome.finished - outcome.started) * 1000, outcome.error,
    )
