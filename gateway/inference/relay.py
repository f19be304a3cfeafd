"""Bytes from a worker back to the client.

Streams are passthrough: events go out as the worker framed them. The gateway asks the worker for the
usage event (for accounting); the only event it looks inside is that one (found by a byte search, so
ordinary chunks are never parsed), which it reads, and drops when the client did not ask for it.

vLLM puts `system_fingerprint` on the usage event when there is one, else on each choice's last chunk
(the one with its `finish_reason`). So when the usage event is to be dropped, the events from the first
finished choice on are held until it arrives, and go out with the fingerprint added as vLLM would have
written it. With one choice (the common call) the finished chunk is the last one anyway; with several,
what the others still send after the first one finishes reaches the client at the end of the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import msgspec
from litestar.types import Receive, Send

from gateway.inference.sse import DONE_EVENT, EVENT_END
from gateway.inference.usage import Usage
from gateway.outcome import Outcome, finish
from gateway.replies import header_list
from workers.upstream import UPSTREAM_ERRORS, UpstreamCall, failure_kind

log = logging.getLogger("gateway.access")

USAGE_MARK = b'"usage":'
USAGE_EVENT_MARK = b'"choices":[]'  # the usage event's: no event with a choice can hold it outside a string
FINISHED_MARK = b'"finish_reason":"'  # a choice's last chunk (a string, not null)
FINGERPRINT_KEY = b',"system_fingerprint":'
NULL = msgspec.Raw(b"null")


class _UsageCarrier(msgspec.Struct):
    usage: Usage | None = None
    choices: list[msgspec.Raw] | None = None
    system_fingerprint: msgspec.Raw = NULL  # as the worker wrote it, to be written again unchanged


_decode_carrier = msgspec.json.Decoder(_UsageCarrier).decode


def read_usage(body: bytes) -> Usage | None:
    try:
        return _decode_carrier(body).usage
    except msgspec.DecodeError:
        return None


def _usage_event(event: bytes) -> _UsageCarrier | None:
    """The usage event's content (`choices` empty), or None for any other event."""
    if USAGE_EVENT_MARK not in event or USAGE_MARK not in event or not event.startswith(b"data: {"):
        return None
    try:
        carrier = _decode_carrier(event[6:])
    except msgspec.DecodeError:
        return None
    return carrier if carrier.usage is not None and carrier.choices == [] else None


def _read_usage_events(events: bytes, outcome: Outcome) -> None:
    """The client asked for the usage event: it is only read."""
    for event in events.split(EVENT_END):
        if (carrier := _usage_event(event)) is not None:
            outcome.usage = carrier.usage


def _release(events: bytes, outcome: Outcome) -> bytes:
    """Held events: the usage event read and dropped, its fingerprint added to each choice's last chunk."""
    kept: list[bytes] = []
    fingerprint: bytes | None = None
    for event in events.split(EVENT_END):
        if not event:
            continue
        if (carrier := _usage_event(event)) is not None:
            outcome.usage = carrier.usage
            if carrier.system_fingerprint != NULL:
                fingerprint = bytes(carrier.system_fingerprint)
            continue
        kept.append(event)
    if fingerprint is not None:
        tail = FINGERPRINT_KEY + fingerprint + b"}"
        kept = [event[:-1] + tail if (FINISHED_MARK in event and event.endswith(b"}")
                                      and FINGERPRINT_KEY not in event) else event for event in kept]
    return b"".join(event + EVENT_END for event in kept)


def error_event(message: str, type_: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + msgspec.json.encode(body) + EVENT_END


def broke_midstream(call: UpstreamCall, outcome: Outcome, exc: BaseException) -> tuple[str, str, str]:
    """A worker that failed mid-stream, noted on its call and outcome; the (message, type, code) of the error
    event that ends the client's stream cleanly, in whichever API's shape."""
    is_timeout = failure_kind(exc) == "timeout"
    outcome.error = "UpstreamTimeout" if is_timeout else type(exc).__name__
    call.broke(f"stream broke: {outcome.error}")
    log.warning("upstream stream from %s broke: %s", call.replica.url, outcome.error)
    if is_timeout:
        return "The worker timed out mid-stream.", "timeout_error", "upstream_timeout"
    return "The worker failed mid-stream.", "upstream_error", "upstream_stream_broken"


def whole_events(pending: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """The whole events of what arrived so far (`pending`, then `chunk`), and the start of the next one, kept
    for the next chunk; b"" when no event is whole yet."""
    data = pending + chunk if pending else chunk
    cut = data.rfind(EVENT_END)
    if cut < 0:
        return b"", data
    cut += 2
    return data[:cut], data[cut:]


async def relay_stream(
    call: UpstreamCall, strip_usage: bool, outcome: Outcome, tap: Callable[[bytes], None] | None = None
) -> AsyncGenerator[bytes, None]:
    """`strip_usage`: the client did not ask for the usage event (module docstring). `tap`, when given,
    receives each batch of whole events as the worker sent them (the response cache collects a cacheable
    answer that way; other streams have no tap and are never parsed)."""
    pending = b""
    held: list[bytes] | None = None  # from the first finished choice on, until the usage event
    try:
        async for chunk in call.response.aiter_raw():
            if outcome.first_byte is None:
                outcome.first_byte = time.perf_counter()
            ready, pending = whole_events(pending, chunk)
            if not ready:
                continue
            # Two byte counts (no parsing): events relayed, less vLLM's empty role/finish chunks.
            outcome.content_events += ready.count(b"data: {") - ready.count(b'"content":""')
            if tap is not None:
                tap(ready)
            if strip_usage:
                if held is None and (at := ready.find(FINISHED_MARK)) >= 0:
                    before = ready.rfind(EVENT_END, 0, at)  # the end of the event before the finished one
                    start = before + 2 if before >= 0 else 0
                    held, ready = [ready[start:]], ready[:start]
                elif held is not None:
                    held.append(ready)
                    ready = b""
                if held is not None and held[-1].endswith(DONE_EVENT):
                    ready += _release(b"".join(held), outcome)
                    held = None
                elif held is None and USAGE_MARK in ready:  # a usage event with no finished choice before it
                    ready = _release(ready, outcome)
            elif USAGE_MARK in ready:
                _read_usage_events(ready, outcome)
            if ready.endswith(DONE_EVENT):
                outcome.completed = True
                # The books are closed (the call journaled) before the client has its last event, not after.
                finish(outcome)
            if ready:
                yield ready
        if held:
            yield _release(b"".join(held), outcome)
        if pending:
            yield pending
    except UPSTREAM_ERRORS as exc:
        released = _release(b"".join(held), outcome) if held else b""
        yield released + error_event(*broke_midstream(call, outcome, exc)) + DONE_EVENT
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

    def events(self) -> AsyncGenerator[bytes, None]:
        """The worker's events as relayed (gateway/inference/event_relay.py's `EventStream` relays named events)."""
        return relay_stream(self.call, self.strip_usage, self.outcome, self.tap)

    def done(self) -> None:
        """Closes the books of a call whose relay never started."""
        finish(self.outcome)

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
        relay = self.events()
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
                self.done()
