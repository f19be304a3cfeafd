"""Where entries live: Redis (shared by every gateway process) or this process's memory (the embedded
default). Both behind one small interface; both keep entries with a TTL and have a lock for single
flight: `acquire` (set if absent, with a TTL, so a holder that dies cannot block anyone past it),
`release` (only by the token that acquired it), `wait` (for the entry, or for the lock to go away).
The request path uses the combined forms, one Redis round trip each: `lookup` (the entry, or else
the lock) before the call and `conclude` (store, then release) after it.

Backends raise on failure (RedisError, OSError, TimeoutError); `ResponseCache` turns that into a
bypass, counts it and reports it. The Redis scripts may run twice (a round trip lost to a connection
error is sent again, gateway/redis_batch.py) and leave Redis as one run would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, Protocol

from redis.asyncio import Redis

from gateway.cache.keys import lock_key
from gateway.redis_batch import LuaScript, RedisBatcher

# Compare-and-delete: only the holder's token releases a lock (a lock that expired and was taken by
# someone else is left alone).
RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


# The entry, or else the lock: returns the entry, 1 (the lock is ours) or 0 (someone else holds it). The
# lock already holding our token is ours: the same lookup, sent again.
LOOKUP_LUA = """
local value = redis.call('get', KEYS[1])
if value then
  return value
end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('get', KEYS[2]) == ARGV[1] then
  return 1
end
return 0
"""

# Store the entry (when there is one), then release the lock (when the token is still its holder).
CONCLUDE_LUA = """
if ARGV[1] ~= '' then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if ARGV[3] ~= '' and redis.call('get', KEYS[2]) == ARGV[3] then
  redis.call('del', KEYS[2])
end
return 0
"""
RELEASE, LOOKUP, CONCLUDE = (LuaScript.of(text, repeatable=True) for text in (RELEASE_LUA, LOOKUP_LUA, CONCLUDE_LUA))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class CacheBackend(Protocol):
    name: str

    def lookup(self, key: str, lock: str, token: str, lock_ttl_s: float) -> Awaitable[tuple[bytes | None, bool]]:
        """(the entry, False) when there is one; else (None, whether the lock was taken with `token`).
        The answer must be awaited; Redis sends the lookup when called, with the commands issued before."""
        ...

    async def conclude(self, key: str, value: bytes | None, ttl_s: float, lock: str, token: str | None) -> None:
        """Store `value` (when given), then release the lock (when `token` is given and still holds it)."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def acquire(self, lock: str, token: str, ttl_s: float) -> bool: ...

    async def release(self, lock: str, token: str) -> None: ...

    async def wait(self, key: str, lock: str, timeout_s: float) -> bytes | None:
        """The entry once it is there; None when the lock is released or expires without one, or after
        `timeout_s`."""
        ...

    async def ping(self) -> None: ...

    def answers(self) -> int:
        """How many times the backend has answered so far (Redis: the round trips of the connection it
        shares with the limits); it moving on after an error says the backend is back."""
        ...

    def stats(self) -> dict[str, int]: ...


class RedisBackend:
    """Entries as plain keys with PX expiry; a lock is `SET lock token NX PX ttl`, released by a Lua
    compare-and-delete; waiters poll the entry and the lock together (one MGET) with a growing interval.
    The scripts go through `batcher` (the app's, shared with the limits; else one of its own), so the
    lookups and stores of concurrent requests share round trips."""

    name = "redis"
    POLL_FIRST_S = 0.005
    POLL_MAX_S = 0.05

    def __init__(self, redis: Redis, batcher: RedisBatcher | None = None) -> None:
        self.redis = redis
        self.batcher = batcher if batcher is not None else RedisBatcher(redis)

    def lookup(self, key: str, lock: str, token: str, lock_ttl_s: float) -> Awaitable[tuple[bytes | None, bool]]:
        return _looked_up(self.batcher.submit(LOOKUP, (key, lock), (token, _ms(lock_ttl_s))))

    async def conclude(self, key: str, value: bytes | None, ttl_s: float, lock: str, token: str | None) -> None:
        # After the call, off the request path: it rides along with the next round trip (`later`).
        await self.batcher.submit(CONCLUDE, (key, lock), (value or b"", _ms(ttl_s), token or ""), later=True)

    async def get(self, key: str) -> bytes | None:
        value = await self.redis.get(key)
        return _as_bytes(value)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.redis.set(key, value, px=_ms(ttl_s))

    async def acquire(self, lock: str, token: str, ttl_s: float) -> bool:
        return bool(await self.redis.set(lock, token, nx=True, px=_ms(ttl_s)))

    async def release(self, lock: str, token: str) -> None:
        await self.batcher.submit(RELEASE, (lock,), (token,), later=True)

    async def wait(self, key: str, lock: str, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        pause = self.POLL_FIRST_S
        while True:
            value, holder = await self.redis.mget(key, lock)
            if value is not None:
                return _as_bytes(value)
            if holder is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 1.5, self.POLL_MAX_S)

    async def ping(self) -> None:
        await self.redis.ping()

    def answers(self) -> int:
        return self.batcher.answered

    def stats(self) -> dict[str, int]:
        return {}


async def _looked_up(answer: Awaitable[Any]) -> tuple[bytes | None, bool]:
    found = await answer
    if isinstance(found, int):
        return None, found == 1
    return _as_bytes(found), False


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value  # str only with decode_responses=True


class MemoryBackend:
    """One process's cache: LRU by entries and bytes, TTL per entry, locks and waiters in memory
    (single flight within the process)."""

    name = "memory"

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, expires at)
        self._bytes = 0
        self._locks: dict[str, tuple[str, float]] = {}  # lock -> (token, expires at)
        self._events: dict[str, asyncio.Event] = {}  # lock -> set when its entry lands or the lock goes
        self.evictions = 0

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(value)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[0]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if key in self._entries:
            self._drop(key)
        if len(value) > self.max_bytes or self.max_entries < 1:
            return
        self._entries[key] = (value, time.monotonic() + ttl_s)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        self._wake(lock_key(key))

    def _held(self, lock: str) -> tuple[str, float] | None:
        held = self._locks.get(lock)
        if held is not None and held[1] <= time.monotonic():
            del self._locks[lock]
            self._wake(lock)
            return None
        return held

    async def lookup(self, key: str, lock: str, token: str, lock_ttl_s: float) -> tuple[bytes | None, bool]:
        value = await self.get(key)
        if value is not None:
            return value, False
        held = self._held(lock)
        if held is not None and held[0] == token:  # ours already: as Redis's lookup, sent again, finds it
            return None, True
        return None, await self.acquire(lock, token, lock_ttl_s)

    async def conclude(self, key: str, value: bytes | None, ttl_s: float, lock: str, token: str | None) -> None:
        if value is not None:
            await self.set(key, value, ttl_s)
        if token is not None:
            await self.release(lock, token)

    async def acquire(self, lock: str, token: str, ttl_s: float) -> bool:
        if self._held(lock) is not None:
            return False
        self._locks[lock] = (token, time.monotonic() + ttl_s)
        return True

    async def release(self, lock: str, token: str) -> None:
        held = self._locks.get(lock)
        if held is not None and held[0] == token:
            del self._locks[lock]
            self._wake(lock)

    def _wake(self, lock: str) -> None:
        event = self._events.pop(lock, None)
        if event is not None:
            event.set()

    async def wait(self, key: str, lock: str, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.get(key)
            if value is not None:
                return value
            held = self._held(lock)
            now = time.monotonic()
            if held is None or now >= deadline:
                return None
            event = self._events.get(lock)
            if event is None:
                event = self._events[lock] = asyncio.Event()
            # Woken by the entry or the release; else at the lock's expiry or our deadline.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(deadline, held[1]) - now)

    async def ping(self) -> None:
        return None

    def answers(self) -> int:
        return 0  # never fails

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self._bytes, "evictions": self.evictions}
