"""Auto-pipelining: the Redis commands that concurrent requests issue go out together, in one pipeline
(one connection checkout, one write, one read loop), instead of paying redis-py's per-command machinery
(pool checkout, timeouts, retry wrapper) once each.

When Redis is idle (nothing in flight, nothing queued) a command goes out at once, from its caller's
own task: alone, batching could only add a loop tick and a task (a third more CPU at concurrency 1).
Otherwise it is queued and a flush scheduled for the next tick (`loop.call_soon`), so the commands of
that tick coalesce. At most `max_flushes` round trips are in flight; while they are, commands keep
queueing and go out together when one returns, so batches grow with the load.

Each caller gets its own result or its own error (a `ResponseError` stays with its command); an error
of the round trip itself (connection refused, timeout) reaches every caller of that batch. Scripts are
sent as EVALSHA of a locally computed SHA; those Redis lost (NOSCRIPT after SCRIPT FLUSH or a restart)
are loaded and re-sent in one more round trip. A caller cancelled while its batch is in flight just
drops its answer; one cancelled before the batch goes out is not sent.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT

MAX_FLUSHES = 2  # round trips in flight at once: few, so that under load commands wait and batch

Command = tuple[EncodableT, ...]


@dataclass(frozen=True, slots=True)
class LuaScript:
    text: str
    sha: str

    @classmethod
    def of(cls, text: str) -> LuaScript:
        return cls(text, hashlib.sha1(text.encode()).hexdigest())


@dataclass(slots=True)
class _Queued:
    command: Command
    future: asyncio.Future[Any]
    script: LuaScript | None


class RedisBatcher:
    """One per app (per Redis client): the cache's and the limits' commands share its batches."""

    def __init__(self, redis: Redis, max_flushes: int = MAX_FLUSHES) -> None:
        if max_flushes < 1:
            raise ValueError("max_flushes must be at least 1")
        self.redis = redis
        self.max_flushes = max_flushes
        self.round_trips = 0  # pipelines and lone commands sent
        self.commands = 0  # commands sent (a NOSCRIPT re-send counts again, with its SCRIPT LOAD)
        self._queue: list[_Queued] = []
        self._scheduled = False
        self._in_flight = 0
        self._flushes: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones

    async def evalsha(self, script: LuaScript, keys: Sequence[EncodableT], args: Sequence[EncodableT]) -> Any:
        """The script's answer (the script is loaded if Redis does not have it)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if self._in_flight or self._queue:
            return await self._submit(command, script)
        return await self._alone(command, script)

    async def execute(self, *args: EncodableT) -> Any:
        """Any plain command, e.g. `await batcher.execute("GET", key)` (redis-py's response callbacks apply)."""
        if self._in_flight or self._queue:
            return await self._submit(args, None)
        return await self._alone(args, None)

    async def _alone(self, command: Command, script: LuaScript | None) -> Any:
        self._in_flight += 1
        try:
            result = (await self._round_trip([command]))[0]
            if script is not None and isinstance(result, NoScriptError):
                result = (await self._round_trip([("SCRIPT LOAD", script.text), command]))[1]
        finally:
            self._in_flight -= 1
            self._next()
        if isinstance(result, Exception):
            raise result
        return result

    def _submit(self, command: Command, script: LuaScript | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(_Queued(command, future, script))
        if not self._scheduled and self._in_flight < self.max_flushes:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        batch = [q for q in self._queue if not q.future.done()]  # callers cancelled before the send: skipped
        self._queue = []
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
                loads: list[Command] = [("SCRIPT LOAD", s.text) for s in scripts.values()]
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
        self.round_trips += 1
        self.commands += len(commands)
        if len(commands) == 1:  # a pipeline of one costs a third more than the plain command
            try:
                return [await self.redis.execute_command(*commands[0])]
            except ResponseError as exc:
                return [exc]
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)


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
            q.future.set_result(result)
    return lost
