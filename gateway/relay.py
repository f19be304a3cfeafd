"""Bytes from a worker back to the client.

Streams are passthrough: events go out as the worker framed them. The only event the gateway looks
inside is the one carrying `usage` (found by a byte search, so ordinary chunks are never parsed),
which it reads for accounting and drops when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import msgspec
from litestar.types import Receive, Send

from gateway.outcome import Outcome, finish
from gateway.replies import header_list
from gateway.sse import DONE_EVENT, EVENT_END
from gateway.usage import Usage
from workers.upstream import UPSTREAM_ERRORS, UpstreamCall, failure_kind

log = logging.getLogger("gateway.access")

USAGE_MARK = b'"usage":'


class _UsageCarrier(msgspec.Struct):
    usage: Usage | None = None
    choices: list[msgspec.Raw] | None = None


_decode_carrier = msgspec.json.Decoder(_UsageCarrier).decode


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


async def relay_stream(
    call: UpstreamCall, strip_usage: bool, outcome: Outcome, tap: Callable[[bytes], None] | None = None
) -> AsyncGenerator[bytes, None]:
    """`tap`, when given, receives each batch of whole events as the worker sent them (the response cache
    collects a cacheable answer that way; other streams have no tap and are never parsed)."""
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
            # Two byte counts (no parsing): events relayed, less vLLM's empty role/finish chunks.
            outcome.content_events += ready.count(b"data: {") - ready.count(b'"content":""')
            if tap is not None:
                tap(ready)
            if USAGE_MARK in ready:
                ready = _take_usage(ready, strip_usage, outcome)
            if ready.endswith(DONE_EVENT):
                outcome.completed = True
                # The books are closed (the call journaled) before the client has its last event, not after.
                finish(outcome)
            if ready:
                yield ready
        if pending:
            yield pending
    except UPSTREAM_ERRORS as exc:
        # The worker failed mid-stream: end the client's stream cleanly, in OpenAI's shape.
        is_timeout = failure_kind(exc) == "timeout"
        outcome.error = "UpstreamTimeout" if is_timeout else type(exc).__name__
        call.broke(f"stream broke: {outcome.error}")
        log.warning("upstream stream from %s broke: %s", call.replica.url, outcome.error)
        yield error_event(
            "The worker timed out mid-stream." if is_timeout else "The worker failed mid-stream.",
            "timeout_error" if is_timeout else "upstream_error",
            "upstream_timeout" if is_timeout else "upstream_stream_broken",
        ) + DONE_EVENT
    except (GeneratorExit, asyncio.CancelledError):
        outcome.cancelled = not outcome.completed  # the client went away
        raise
    finally:
        await call.aclose()
        finish(outcome)


@dataclass(eq=False)
class RelayStream:
    """A streamed answer, sent over raw ASGI. However it ends (the worker finished, broke, or the client
    left, even before the first chunk) the call is closed and its books are closed once."""

    call: UpstreamCall
    strip_usage: bool
    outcome: Outcome
    tap: Callable[[bytes], None] | None
    media_type: str
    headers: dict[str, str]

    async def send(self, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        left = False

        async def watch() -> None:  # uvicorn drops what is sent to a client that left: ask it instead
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            left = True
            task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        relay = relay_stream(self.call, self.strip_usage, self.outcome, self.tap)
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": header_list(self.media_type, self.headers)})
            async for chunk in relay:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not left:
                raise
            task.uncancel()  # the client left: the end of this answer, not an error
        finally:
            # The watcher only runs while this task waits, and a cancel it sent was delivered there (in
            # the try), so none can interrupt the clean-up below.
            watcher.cancel()
            await relay.aclose()  # the relay's own clean-up, when it had started
            await self.call.aclose()
            if self.outcome.finished is None:  # it had not: the client left before the first chunk
                self.outcome.cancelled = not self.outcome.completed
                finish(self.outcome)
