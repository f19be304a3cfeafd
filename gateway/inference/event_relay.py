"""Relaying a stream of named events (`event: <name>` then `data: <json>`, as the Responses API and Anthropic's
Messages API frame them) from a worker to the client, unchanged.

As for chat streams (gateway/inference/relay.py), events go out as the worker framed them, as they arrive, and only
the few that carry usage are parsed (found by a byte search on their name): the Responses API's final event
(`response.completed`, `.incomplete`, `.failed`) carries the response with its usage; Anthropic's
`message_start` carries the prompt's and `message_delta` the output's. There is no `[DONE]`: the answer is
complete on its API's final event. A worker that breaks mid-stream ends the client's stream with an
`error` event in the API's own shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass

from gateway.inference.relay import RelayStream, broke_midstream, whole_events
from gateway.inference.sse import EVENT_END
from gateway.inference.usage import Usage
from gateway.outcome import Outcome
from workers.upstream import UPSTREAM_ERRORS, UpstreamCall

EVENT = b"event: "
DATA = b"\ndata:"


@dataclass(frozen=True, slots=True)
class EventDialect:
    """How one API frames its stream, for the relay."""

    usage_events: tuple[bytes, ...]  # `event: <name>` of the events whose data carries usage
    partial: tuple[bytes, ...]  # those of them whose usage is not final (Anthropic's message_start: the prompt's)
    read_usage: Callable[[bytes, Usage | None], Usage | None]  # one such event's data, and the usage so far
    ends: Mapping[bytes, bool]  # `event: <name>` of the events that end the answer: whether it is complete
    content: bytes  # `event: <name>` of an event carrying text (counted: an estimate when usage never comes)
    error: Callable[[str, str, str, int], bytes]  # the error event (message, type, code, events so far)


def _data(event: bytes) -> bytes:
    at = event.find(DATA)
    return event[at + len(DATA):].strip() if at >= 0 else b""


def _read(ready: bytes, dialect: EventDialect, outcome: Outcome, partial: Usage | None) -> Usage | None:
    """The usage and the end of the answer, from the events in `ready` that carry them; the partial usage read
    so far (only a final usage is the call's: a stream cut before it is estimated, as a chat stream is)."""
    for event in ready.split(EVENT_END):
        if not event.startswith(EVENT):
            continue
        name = event.split(b"\n", 1)[0]
        complete = dialect.ends.get(name)
        if complete is not None:
            if complete:
                outcome.completed = True
            else:
                outcome.error = "ResponseFailed"
        if name in dialect.usage_events:
            usage = dialect.read_usage(_data(event), partial)
            if name in dialect.partial:
                partial = usage
            else:
                outcome.usage = usage
    return partial


async def relay_events(
    call: UpstreamCall, outcome: Outcome, dialect: EventDialect, tap: Callable[[bytes], None] | None,
    done: Callable[[Outcome], None],
) -> AsyncGenerator[bytes, None]:
    """The worker's events, batches of whole ones as they arrive. `done` closes the call's books (`finish`,
    or, for a background response, following it to its end): at the final event, before the client has it,
    or however the stream ends; it may be called more than once."""
    pending = b""
    sent = 0  # events relayed: the next one's sequence number in the Responses API
    marks = (*dialect.usage_events, *dialect.ends)
    partial: Usage | None = None
    try:
        async for chunk in call.response.aiter_raw():
            if outcome.first_byte is None:
                outcome.first_byte = time.perf_counter()
            ready, pending = whole_events(pending, chunk)
            if not ready:
                continue
            sent += ready.count(EVENT)
            outcome.content_events += ready.count(dialect.content)
            if tap is not None:
                tap(ready)
            if any(mark in ready for mark in marks):
                partial = _read(ready, dialect, outcome, partial)
                if outcome.completed or outcome.error is not None:
                    done(outcome)  # the books are closed before the client has the last event, not after
            yield ready
        if pending:
            yield pending
    except UPSTREAM_ERRORS as exc:
        yield dialect.error(*broke_midstream(call, outcome, exc), sent)
    except (GeneratorExit, asyncio.CancelledError):
        outcome.cancelled = not outcome.completed  # the client went away
        raise
    finally:
        await call.aclose()
        done(outcome)


@dataclass(eq=False)
class EventStream(RelayStream):
    """A streamed answer of named events, sent as a chat stream is (gateway/inference/relay.py's `RelayStream`)."""

    dialect: EventDialect
    close: Callable[[Outcome], None]  # closes the call's books: `finish`, or a background response's follow

    def events(self) -> AsyncGenerator[bytes, None]:
        return relay_events(self.call, self.outcome, self.dialect, self.tap, self.close)

    def done(self) -> None:
        self.close(self.outcome)
