"""What one client connection may hold of the server: uvicorn's httptools protocol with four bounds.

- **headers**: a first request's line and headers must arrive within `client_header_timeout_s` of the
  accept; a kept-alive connection's next request, within `client_idle_timeout_s` + `client_header_timeout_s`
  of the previous answer. Past it the connection is closed, with 408 when part of a request had arrived.
  uvicorn has no such timer: a client trickling headers held its connection for ever.
- **body**: the whole body must arrive within `client_body_timeout_s` of the end of the headers; past it the
  client gets 408 in OpenAI's envelope, if its answer has not started, and the connection is closed. The
  call sees the client gone (gateway/replies.py `read_body`): it is neither billed nor recorded.
- **idle**: a kept-alive connection with no request is closed after `client_idle_timeout_s` (uvicorn's
  keep-alive timer, given this value).
- **per address**: a client address holding `client_max_connections_per_address` open connections gets 429
  `too_many_connections` on the next one, which is closed at once.

The hot path pays two clock reads per request and nothing per chunk: a connection keeps one deadline (a
float) for the phase it is in, set when a request's headers are complete and when its answer is; its one
timer is created when none is pending and, when it fires early, re-armed for the deadline then in force,
never more than the shortest timeout ahead (so a later, nearer deadline is never missed). The phase's
checks (is the body complete, has the answer started) run only when a deadline passes. Refusals and
timeouts are logged at most once a minute per kind (per address for refusals), with how many there were.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, NamedTuple

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import envelope
from gateway.settings import Settings
from router.errors import GatewayError, RequestTimeout, TooManyConnections

log = logging.getLogger("gateway.server")

REPORT_INTERVAL_S = 60.0
MAX_REPORTED_KEYS = 4096  # addresses remembered for the once-a-minute log lines, at most

# The phase a connection's deadline is for.
FIRST = 0  # from the accept to the first request's headers
BODY = 1  # from a request's headers to the end of its body (and, once whole, its answer: no deadline)
NEXT = 2  # from an answer to the next request's headers


class ServerLimits(NamedTuple):
    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    max_per_address: int  # 0: no cap


def server_limits(settings: Settings) -> ServerLimits:
    return ServerLimits(settings.client_header_timeout_s, settings.client_body_timeout_s,
                        settings.client_idle_timeout_s, settings.client_max_connections_per_address)


def raw_answer(error: GatewayError) -> bytes:
    """A whole HTTP answer carrying `error` in OpenAI's envelope, after which the connection closes (written by
    the protocol itself: no app is running for the connection, or it is no longer listened to)."""
    body = envelope(error.message, error.type, error.param, error.code)
    return b"".join((
        f"HTTP/1.1 {error.status} {_REASONS[error.status]}\r\n".encode(),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
        body,
    ))


_REASONS = {408: "Request Timeout", 429: "Too Many Requests"}


class Reports:
    """Log lines, at most one per key per interval, each counting the events it stands for (the message's first
    argument, `%d`)."""

    def __init__(self, interval_s: float = REPORT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.seen: dict[str, tuple[float, int]] = {}  # key -> (when its last line was logged, events since)

    def note(self, key: str, now: float, message: str, *args: Any) -> None:
        last, count = self.seen.get(key, (-self.interval_s, 0))
        count += 1
        if now - last < self.interval_s:
            self.seen[key] = (last, count)
            return
        if len(self.seen) >= MAX_REPORTED_KEYS:  # many addresses: forget those quiet for an interval
            self.seen = {k: v for k, v in self.seen.items() if now - v[0] < self.interval_s}
        self.seen[key] = (now, 0)
        log.warning(message + " (counted since the last such line; one a minute at most)", count, *args)


class Guard:
    """One server's bounds and its open connections per client address."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.open: dict[str, int] = {}
        self.reports = Reports()
        self.headers_late = raw_answer(RequestTimeout(
            f"The request's headers did not arrive within {limits.header_timeout_s:g} s."))
        self.body_late = raw_answer(RequestTimeout(
            f"The request's body did not arrive within {limits.body_timeout_s:g} s."))
        self.refused = raw_answer(TooManyConnections(
            f"Too many open connections from your address (at most {limits.max_per_address}); reuse connections "
            "or close idle ones."))


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a `Guard`'s bounds (a subclass per server: `protocol_class`). The
    overridden callbacks call uvicorn's directly, not through super(): they run for every request."""

    guard: ClassVar[Guard]
    header_s: ClassVar[float]
    body_s: ClassVar[float]
    next_s: ClassVar[float]  # idle + header
    tick_s: ClassVar[float]  # the shortest of the three: how far ahead a timer may be armed

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.guard.limits.idle_timeout_s  # type: ignore[assignment]  # uvicorn's: int
        self._deadline: float | None = None  # loop time past which the connection is closed, in `_phase`
        self._phase = FIRST
        self._timer: asyncio.TimerHandle | None = None
        self._address: str | None = None  # counted against the per-address cap under this address
        self._now = self.loop.time

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        cap = guard.limits.max_per_address
        if cap and self.client is not None:
            address = self.client[0]
            held = guard.open.get(address, 0)
            if held >= cap:
                guard.reports.note(address, self.loop.time(), "%d connection(s) from %s refused: it held %d, the "
                                   "limit (client_max_connections_per_address)", address, held)
                transport.write(guard.refused)
                transport.close()
                return
            guard.open[address] = held + 1
            self._address = address
        self._deadline = self.loop.time() + self.header_s
        self._timer = self.loop.call_at(self._deadline, self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if (address := self._address) is not None:
            self._address = None
            open_ = self.guard.open
            if (held := open_[address] - 1) > 0:
                open_[address] = held
            else:
                del open_[address]
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._deadline = self._now() + self.body_s
        self._phase = BODY
        if self._timer is None:
            self._timer = self.loop.call_at(self._now() + self.tick_s, self._expire)
        HttpToolsProtocol.on_headers_complete(self)

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)  # arms uvicorn's keep-alive timer (the idle timeout)
        if not self.cycle.more_body:  # (a body still arriving keeps its deadline)
            # Also a backstop to that timer, which any bytes cancel, a request or not (blank lines).
            self._deadline = self._now() + self.next_s
            self._phase = NEXT
            if self._timer is None:
                self._timer = self.loop.call_at(self._now() + self.tick_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if now < deadline:
            self._timer = self.loop.call_at(min(deadline, now + self.tick_s), self._expire)
            return
        guard, phase, cycle = self.guard, self._phase, self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._deadline = None  # the app has the whole request: its answer takes as long as it takes
            return
        if phase != FIRST and self.flow.read_paused:
            # We stopped reading (the app has not yet taken what arrived, or a pipelined request waits its
            # turn): the wait is ours, not the client's. Another period.
            self._deadline = now + self.body_s
            self._timer = self.loop.call_at(now + self.tick_s, self._expire)
            return
        self._deadline = None
        if phase == BODY and cycle.more_body:
            if not cycle.response_started:
                self.transport.write(guard.body_late)
            # The call waiting for its body sees the client gone (`http.disconnect`) and sends nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
            guard.reports.note("body", now, "%d connection(s) closed: the request body did not arrive within %g s "
                               "(client_body_timeout_s)", guard.limits.body_timeout_s)
        elif phase != BODY:  # (BODY: answered before its body was in, then idle since)
            if self.scope is not None:  # part of a request arrived (or blank lines): say why it is closed
                self.transport.write(guard.headers_late)
            guard.reports.note("headers", now, "%d connection(s) closed: the request headers did not arrive in "
                               "time (client_header_timeout_s)")
        self.transport.close()


def protocol_class(limits: ServerLimits) -> type[GuardedProtocol]:
    """The protocol for `uvicorn.Config(http=...)`: its own `Guard`, so each server counts its own connections."""

    class Protocol(GuardedProtocol):
        guard = Guard(limits)
        header_s, body_s = limits.header_timeout_s, limits.body_timeout_s
        next_s = limits.idle_timeout_s + limits.header_timeout_s
        tick_s = min(header_s, body_s, next_s)

    return Protocol
