"""Auto-pipelining: the Redis commands that concurrent requests issue go out together, in one pipeline
(one write, one read loop), instead of paying redis-py's per-command machinery once each.

When Redis is idle (nothing in flight, nothing queued) a command goes out at once, from its caller's
own task: alone, batching could only add a loop tick and a task (a third more CPU at concurrency 1).
Otherwise it is queued and a flush scheduled for the next tick (`loop.call_soon`), so the commands of
that tick coalesce. At most `max_flushes` round trips are in flight; while they are, commands keep
queueing and go out together when one returns, so batches grow with the load.

Writes nobody waits for on the request path (the cache's store, the limits' settlements) are sent
`later`: with the next round trip that goes out anyway, or after `later_s` at the latest. At one
connection that folds a request's follow-up writes into the next request's lookups.

Round trips use connections of the batcher's own (redis-py `Connection`s made like the client's pool
makes them: same address, credentials, TLS), at most one per round trip in flight, with one timeout per
round trip (the client's socket timeout, `redis_timeout_s`). A connection whose round trip failed is
dropped and the next opens anew; an idle one that Redis or the network closed meanwhile (Redis restarted,
a proxy dropped it) is dropped when it is taken, before anything is written to it, so the first call after
Redis comes back finds a live connection.

One retry, at once, on a new connection, for a round trip that failed on a connection error on a reused
connection before any answer (it died between the check and the write, or as Redis read it): of its
commands, those safe to run twice (`repeatable` scripts, reads) are sent again, the others get the error.
A script may have run when its answer was lost, so a repeatable script must leave Redis as one run would
when run twice (the limits' admission and settlement check their call's id; the cache's lookup knows its
own lock token). A timeout is not retried: a Redis that does not answer would hold its callers twice as
long. When a round trip times out, the commands still queued behind it fail with it rather than wait for
a round trip of their own: no caller waits much longer than the timeout.

Each caller gets its own result or its own error (a `ResponseError` stays with its command); an error
of the round trip itself (connection refused, timeout) reaches every caller of that batch. Scripts are
sent as EVALSHA of a locally computed SHA; those Redis lost (NOSCRIPT after SCRIPT FLUSH or a restart)
are loaded and re-sent in one more round trip. A caller cancelled while its batch is in flight just
drops its answer; one cancelled before the batch goes out is not sent.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

MAX_FLUSHES = 2  # round trips in flight at once: few, so that under load commands wait and batch
LATER_S = 0.002  # the longest a `later` write waits for a round trip to ride along with
TIMEOUT_S = 1.0  # a round trip's limit when the client's pool sets no socket timeout

Command = tuple[EncodableT, ...]


# Plain commands safe to send twice (reads; SCRIPT LOAD).
REPEATABLE_COMMANDS = frozenset({"GET", "MGET", "HMGET", "EXISTS", "PING", "SCRIPT"})
_repeatable_scripts: set[str] = set()  # the SHAs of the scripts declared `repeatable`


@dataclass(frozen=True, slots=True)
class LuaScript:
    text: str
    sha: str

    @classmethod
    def of(cls, text: str, repeatable: bool = False) -> LuaScript:
        """`repeatable`: running it twice leaves Redis as running it once does, so a round trip lost to a
        connection error may send it again."""
        script = cls(text, hashlib.sha1(text.encode()).hexdigest())
        if repeatable:
            _repeatable_scripts.add(script.sha)
        return script


@dataclass(slots=True)
class _Queued:
    command: Command
    future: asyncio.Future[Any]
    script: LuaScript | None
    parse: Callable[..., Any] | None = None  # redis-py's response callback, for plain commands


class RedisBatcher:
    """One per app (per Redis client): the cache's and the limits' commands share its batches."""

    def __init__(self, redis: Redis, max_flushes: int = MAX_FLUSHES, later_s: float = LATER_S) -> None:
        if max_flushes < 1:
            raise ValueError("max_flushes must be at least 1")
        self.redis = redis
        self.max_flushes = max_flushes
        self.later_s = later_s
        pool = redis.connection_pool
        kwargs = dict(pool.connection_kwargs)
        self.timeout_s: float = kwargs.get("socket_timeout") or TIMEOUT_S
        kwargs["socket_timeout"] = None  # one timeout per round trip instead (below), not one per read
        self._new_connection: Callable[[], AbstractConnection] = lambda: pool.connection_class(**kwargs)
        self._idle: list[AbstractConnection] = []
        self.round_trips = 0  # pipelines and lone commands sent (a retry counts again)
        self.commands = 0  # commands sent (a NOSCRIPT re-send counts again, with its SCRIPT LOAD)
        self.answered = 0  # round trips Redis answered: the cache sees by it that Redis is back
        self.retries = 0  # round trips sent again after a connection error
        self.dropped = 0  # idle connections found closed when taken
        self._queue: list[_Queued] = []
        self._later: list[_Queued] = []
        self._later_timer: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._in_flight = 0
        self._flushes: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones

    async def evalsha(self, script: LuaScript, keys: Sequence[EncodableT], args: Sequence[EncodableT]) -> Any:
        """The script's answer (the script is loaded if Redis does not have it)."""
        return await self._issue(("EVALSHA", script.sha, len(keys), *keys, *args), script, None)

    async def execute(self, *args: EncodableT) -> Any:
        """Any plain command, e.g. `await batcher.execute("GET", key)` (redis-py's response callbacks apply)."""
        return await self._issue(args, None, self.redis.response_callbacks.get(str(args[0])))

    def submit(self, script: LuaScript, keys: Sequence[EncodableT], args: Sequence[EncodableT],
               later: bool = False) -> asyncio.Future[Any]:
        """`evalsha`, issued now rather than when awaited: commands submitted one after the other, before
        either is awaited, share a round trip (it goes out on the next loop tick). `later`: a write that
        may wait up to `later_s` for a round trip to ride along with."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if not later:
            return self._submit(command, script)
        future = _queue_on(self._later, command, script)
        if self._later_timer is None:
            self._later_timer = asyncio.get_running_loop().call_later(self.later_s, self._later_due)
        return future

    def _issue(self, command: Command, script: LuaScript | None, parse: Callable[..., Any] | None) -> Any:
        if self._in_flight or self._queue:
            return self._submit(command, script, parse)
        if self._later:  # idle, but writes are waiting: they go along, now
            future = _queue_on(self._queue, command, script, parse)
            self._flush()
            return future
        return self._alone(command, script, parse)

    async def aclose(self) -> None:
        if self._flushes:
            await asyncio.wait(set(self._flushes), timeout=self.timeout_s)
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()

    async def _alone(self, command: Command, script: LuaScript | None, parse: Callable[..., Any] | None = None,
                     ) -> Any:
        self._in_flight += 1
        try:
            result = (await self._round_trip([command]))[0]
            if script is not None and isinstance(result, NoScriptError):
                result = (await self._round_trip([("SCRIPT", "LOAD", script.text), command]))[1]
        finally:
            self._in_flight -= 1
            self._next()
        if isinstance(result, Exception):
            raise result
        return parse(result) if parse is not None else result

    def _submit(self, command: Command, script: LuaScript | None,
                parse: Callable[..., Any] | None = None) -> asyncio.Future[Any]:
        future = _queue_on(self._queue, command, script, parse)
        if not self._scheduled and self._in_flight < self.max_flushes:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _later_due(self) -> None:
        self._later_timer = None
        if self._later and not self._scheduled:
            if self._in_flight < self.max_flushes:
                self._flush()
            else:  # they go out when a round trip returns (`_next`)
                self._queue.extend(self._later)
                self._later = []

    def _flush(self) -> None:
        self._scheduled = False
        batch = [q for q in self._queue if not q.future.done()]  # callers cancelled before the send: skipped
        self._queue = []
        if self._later:
            batch.extend(q for q in self._later if not q.future.done())
            self._later = []
            if self._later_timer is not None:
                self._later_timer.cancel()
                self._later_timer = None
        if batch:
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        self._in_flight -= 1
        self._next()

    def _next(self) -> None:
        """A round trip ended: send what queued behind it, unless a flush is already on its way."""
        if self._queue and not self._scheduled:
            self._flush()

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            lost = _resolve(batch, await self._round_trip([q.command for q in batch]))
            if lost:
                scripts = {q.script.sha: q.script for q in lost if q.script is not None}
                loads: list[Command] = [("SCRIPT", "LOAD", s.text) for s in scripts.values()]
                results = await self._round_trip(loads + [q.command for q in lost])
                _resolve(lost, results[len(loads):], retry=False)
        except BaseException as exc:
            for q in batch:
                if not q.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        q.future.cancel()
                    else:
                        q.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        """Each command's answer, or its `ResponseError`; raises when the round trip itself fails."""
        try:
            async with asyncio.timeout(self.timeout_s):
                conn, reused = await self._checkout()
                results: list[Any] = []
                try:
                    await self._exchange(conn, commands, results)
                except RedisConnectionError as exc:
                    if not reused or results:
                        raise
                    results = await self._retry(commands, exc)
        except (TimeoutError, RedisTimeoutError) as exc:  # ours, or a new connection's (its connect timeout)
            error = exc if isinstance(exc, RedisTimeoutError) else RedisTimeoutError(
                f"Redis did not answer within {self.timeout_s:g}s")
            if not self._scheduled:  # the commands queued behind it are not about to go out: they fail too
                waiting, self._queue = self._queue, []
                for q in waiting:
                    if not q.future.done():
                        q.future.set_exception(error)
            raise error from None
        self.answered += 1
        return results

    async def _checkout(self) -> tuple[AbstractConnection, bool]:
        """An idle connection that is still open (and whether it was reused), else a new one."""
        while self._idle:
            conn = self._idle.pop()
            try:
                if not await conn.can_read():  # True: Redis closed it (EOF) or left bytes unread
                    return conn, True
            except RedisConnectionError:  # already closed
                pass
            self.dropped += 1
            await conn.disconnect(nowait=True)
        return self._new_connection(), False

    async def _exchange(self, conn: AbstractConnection, commands: list[Command], results: list[Any]) -> None:
        """One write, then each command's answer into `results`; the connection goes back to the idle ones."""
        self.round_trips += 1
        self.commands += len(commands)
        try:
            # hiredis packs in C; redis-py's asyncio connection packs in Python, several times slower.
            packed = b"".join(map(pack_command, commands))  # type: ignore[arg-type]  # hiredis's stub: a 1-tuple
            await conn.send_packed_command(packed, check_health=False)
            for _ in commands:
                try:
                    results.append(await conn.read_response())
                except ResponseError as exc:
                    results.append(exc)
        except BaseException:
            await conn.disconnect(nowait=True)  # half-read or broken: never reused
            raise
        self._idle.append(conn)

    async def _retry(self, commands: list[Command], error: RedisConnectionError) -> list[Any]:
        """A reused connection failed before any answer: the commands safe to repeat, once more, on a new
        connection; the others get `error`."""
        again = [c for c in commands if _repeatable(c)]
        if not again:
            raise error
        self.retries += 1
        answers: list[Any] = []
        await self._exchange(self._new_connection(), again, answers)
        if len(again) == len(commands):
            return answers
        it = iter(answers)
        return [next(it) if _repeatable(c) else error for c in commands]


def _repeatable(command: Command) -> bool:
    name = command[0]
    if name == "EVALSHA":
        return command[1] in _repeatable_scripts
    return isinstance(name, str) and name.upper() in REPEATABLE_COMMANDS


def _queue_on(queue: list[_Queued], command: Command, script: LuaScript | None,
              parse: Callable[..., Any] | None = None) -> asyncio.Future[Any]:
    """Append the command to `queue`; the future its caller awaits."""
    future = asyncio.get_running_loop().create_future()
    queue.append(_Queued(command, future, script, parse))
    return future


def _resolve(batch: list[_Queued], results: list[Any], retry: bool = True) -> list[_Queued]:
    """Hand each caller its answer; return the script calls to send again (NOSCRIPT) when `retry`."""
    lost = []
    for q, result in zip(batch, results, strict=True):
        if q.future.done():  # its caller was cancelled meanwhile
            continue
        if retry and q.script is not None and isinstance(result, NoScriptError):
            lost.append(q)
        elif isinstance(result, Exception):
            q.future.set_exception(result)
        else:
            q.future.set_result(q.parse(result) if q.parse is not None else result)
    return lost
