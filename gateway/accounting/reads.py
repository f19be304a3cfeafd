"""The database as the request path reads it (key lookups, a budget counter's first value), never
waiting on it longer than `database_request_timeout_s`.

- These reads have an engine of their own: a small pool that the recorder's writes and the reports never
  use, so a write stuck in a hung database cannot hold the connections a key lookup needs. Its connect,
  pool checkout and statement timeouts are the same bound.
- Each read is bounded as a whole (checkout, pre-ping, connect, query): when it has not answered in
  time, the caller gets `DatabaseUnavailable` at once and the read is cancelled in the background
  (its connection is dropped there, never handed to a later read).
- After a failure the database is `degraded`: reads fail at once for `database_retry_s`, then one read
  tries it again while the others keep failing at once. A hung database costs the request path one
  bounded wait per `database_retry_s`, not one per call. The first read that answers makes it `ok`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import db
from gateway.settings import Settings

log = logging.getLogger("gateway.accounting")

T = TypeVar("T")
State = Literal["ok", "degraded"]
POOL_SIZE = 2  # lookups are single-flight per key and take a millisecond: a few connections serve many calls
MAX_OVERFLOW = 4


class DatabaseUnavailable(ConnectionError):
    """The database did not answer in time, or failed within the last `database_retry_s`."""


def describe(error: BaseException) -> str:
    """An error as /readyz and the logs show it: its type and first line (no statement, no parameters)."""
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class BoundedReads:
    def __init__(self, engine: AsyncEngine, timeout_s: float = 0.5, retry_s: float = 1.0) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.state: State = "ok"
        self.last_error: str | None = None  # the failure that made it degraded (kept after it recovers)
        self.degraded_since: float | None = None  # epoch seconds
        self.failures = 0  # reads that failed or timed out (metrics, tests)
        self._next_try = 0.0  # monotonic: while degraded, reads before this fail at once
        self._last_ok = 0.0  # monotonic

    async def read(self, fn: Callable[[AsyncEngine], Awaitable[T]], timeout_s: float | None = None) -> T:
        """`fn(engine)`, bounded by `timeout_s` (default: the request path's bound); DatabaseUnavailable
        when it did not answer in time, or at once while the database is degraded."""
        if self.state == "degraded":
            now = time.monotonic()
            if now < self._next_try:
                raise DatabaseUnavailable(self.last_error or "the database is unreachable")
            self._next_try = now + self.retry_s  # this read tries it; the others fail at once meanwhile
        limit = self.timeout_s if timeout_s is None else timeout_s
        task = asyncio.ensure_future(fn(self.engine))
        try:
            done, _ = await asyncio.wait((task,), timeout=limit)
        except asyncio.CancelledError:  # the caller left: the read is not needed any more
            _abandon(task)
            raise
        if not done:
            _abandon(task)
            self.failed(f"no answer within {limit:g} s")
            raise DatabaseUnavailable(self.last_error)
        try:
            result = task.result()
        except Exception as exc:
            if db.is_unreachable(exc):
                self.failed(describe(exc))
            raise
        self.succeeded()
        return result

    async def check(self) -> State:
        """The database's state, for /readyz: a bounded `SELECT 1` unless a read answered within
        `database_retry_s` (while degraded, it is tried at most once per `database_retry_s`)."""
        if self.state == "ok" and time.monotonic() - self._last_ok < self.retry_s:
            return self.state
        try:
            await self.read(_ping)
        except Exception as exc:
            if not db.is_unreachable(exc):
                self.failed(describe(exc))
        return self.state

    def failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self._next_try = time.monotonic() + self.retry_s
        if self.state != "degraded":
            self.state = "degraded"
            self.degraded_since = time.time()
            log.warning("database: %s; the request path uses the last known keys and tries it again every %g s",
                        error, self.retry_s)

    def succeeded(self) -> None:
        self._last_ok = time.monotonic()
        if self.state != "ok":
            log.info("database: answers again (degraded for %.1f s)", time.time() - (self.degraded_since or 0))
            self.state = "ok"
            self.degraded_since = None

    async def close(self) -> None:
        await self.engine.dispose()


async def _ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await db.ping(conn)


async def within(read: Awaitable[T], timeout_s: float) -> T:
    """A report's reads as a whole, bounded by `timeout_s` (`report_timeout_s`): past it, DatabaseUnavailable
    (the API's 503 `database_unavailable`, as for a database that cannot be reached)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await read
    except TimeoutError:
        raise DatabaseUnavailable(f"no answer within {timeout_s:g} s") from None


def _abandon(task: asyncio.Future[T]) -> None:
    """Cancel a read nobody waits for; its outcome is retrieved so that it is never logged as lost."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


def bounded_reads(settings: Settings, url: str) -> BoundedReads:
    """The request path's reads of the database at `url` (an engine of their own), from the settings."""
    t = settings.database_request_timeout_s
    engine = db.create_engine(url, connect_timeout_s=t, command_timeout_s=t, pool_timeout_s=t,
                              pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
    return BoundedReads(engine, t, settings.database_retry_s)


def as_bounded(source: AsyncEngine | BoundedReads | None) -> BoundedReads | None:
    """What a service reads through: the app's `BoundedReads`, or an engine alone with the default bounds."""
    return source if isinstance(source, BoundedReads) or source is None else BoundedReads(source)
