"""Which replica holds each response the Responses API made: `response id -> (tenant, model, pool, replica)`.

A worker keeps a response in its own process (vLLM's store, in memory), so a call naming it
(`previous_response_id`, `GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`) has to reach that
replica; and only the tenant whose call made it may name it. The pin is written as the worker answers,
before the client has a byte of the response, and kept `responses_pin_ttl_s`.

- With Redis: one `SET key value EX ttl` per response, `<prefix><response id>`, sent through the app's
  batcher as a `later` write (it rides along with the next round trip); the pins of every gateway process.
- Without: an in-process map of at most `responses_pin_entries` pins (the oldest go first).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from gateway.redis_batch import LuaScript, RedisBatcher
from gateway.settings import Settings

log = logging.getLogger("gateway.responses")


class Pin(msgspec.Struct, array_like=True, frozen=True):
    tenant: str
    model: str
    pool: str
    replica: str  # the replica's URL


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Pin).decode


class ResponsePins(Protocol):
    def put(self, response_id: str, pin: Pin) -> None:
        """Keep `pin`; never blocks, never raises."""

    async def get(self, response_id: str) -> Pin | None:
        """The pin, if kept and not expired; raises when the store cannot be reached."""


class MemoryPins:
    """One process's pins: insertion-ordered, so the oldest (first to expire) are at the front."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max(1, max_entries)
        self.clock = clock
        self._pins: collections.OrderedDict[str, tuple[float, Pin]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    def put(self, response_id: str, pin: Pin) -> None:
        now = self.clock()
        pins = self._pins
        pins.pop(response_id, None)
        pins[response_id] = (now + self.ttl_s, pin)
        while pins and (len(pins) > self.max_entries or next(iter(pins.values()))[0] <= now):
            pins.popitem(last=False)

    async def get(self, response_id: str) -> Pin | None:
        found = self._pins.get(response_id)
        if found is None or found[0] <= self.clock():
            return None
        return found[1]


_SET = LuaScript.of("return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])")


class RedisPins:
    """The pins of every gateway process sharing a Redis."""

    def __init__(self, batcher: RedisBatcher, prefix: str, ttl_s: float) -> None:
        self.batcher = batcher
        self.prefix = prefix
        self.ttl_s = max(1, int(ttl_s))
        # Writes not yet acknowledged: a call naming the response meanwhile is answered from here.
        self._pending: dict[str, tuple[asyncio.Future[Any], Pin]] = {}

    def put(self, response_id: str, pin: Pin) -> None:
        key = self.prefix + response_id
        try:
            done = self.batcher.submit(_SET, (key,), (_encode(pin), self.ttl_s), later=True)
        except Exception:  # e.g. no running loop: the response is answered, later calls naming it get a 404
            log.exception("response %s: keeping its replica failed", response_id)
            return
        self._pending[key] = (done, pin)
        done.add_done_callback(lambda f: self._written(f, key, response_id))

    def _written(self, done: asyncio.Future[Any], key: str, response_id: str) -> None:
        if (pending := self._pending.get(key)) is not None and pending[0] is done:
            del self._pending[key]
        if not done.cancelled() and (error := done.exception()) is not None:
            log.warning("response %s: keeping its replica failed: %s", response_id, type(error).__name__)

    async def get(self, response_id: str) -> Pin | None:
        key = self.prefix + response_id
        if (pending := self._pending.get(key)) is not None:
            return pending[1]
        raw = await self.batcher.execute("GET", key)
        if raw is None:
            return None
        try:
            return _decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):  # not ours: as if absent
            log.warning("response %s: its pin is unreadable", response_id)
            return None


def build_pins(settings: Settings, batcher: RedisBatcher | None) -> ResponsePins:
    """Redis when the gateway has it, else this process."""
    if batcher is not None:
        return RedisPins(batcher, settings.responses_key_prefix, settings.responses_pin_ttl_s)
    return MemoryPins(settings.responses_pin_ttl_s, settings.responses_pin_entries)
