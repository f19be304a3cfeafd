"""The feature stash: what feedback on a call needs, kept for `feedback_window_s` after the call.

A call routed with the quality predictor that a worker answered (HTTP 200, not a cache hit) leaves one
entry under its tenant and the request id its client saw (`x-request-id`): the model that answered,
the caller, the predictor and the encoded feature vector (~1.1 KB). Feedback within the window finds it
there; later, or from another tenant, it finds nothing. Never any text.

- With Redis: one `SET key value EX window` per call, `<prefix><tenant>:<request id>` (tenants hold no
  `:`), sent through the app's batcher as a `later` write: it rides along with the next round trip,
  off the client's path.
- Without: an in-process map of at most `feedback_stash_entries` entries (the oldest go first), each
  expiring with the window.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from gateway.outcome import Outcome
from gateway.redis_batch import LuaScript, RedisBatcher
from gateway.settings import Settings
from router import features

log = logging.getLogger("gateway.learning")


class StashEntry(msgspec.Struct, array_like=True, frozen=True):
    record_id: str  # the id the call is recorded under in usage_records
    model: str  # the model that answered
    tenant: str
    team: str | None
    key_id: str | None
    predictor: str | None  # sha256 of the predictor that routed it
    layout: str  # router.features.FEATURES
    features: bytes  # router.features.encode_vector


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(StashEntry).decode


class FeatureStash(Protocol):
    window_s: int

    def put(self, tenant: str, request_id: str, entry: StashEntry) -> None:
        """Keep `entry` for the window; never blocks, never raises."""

    async def get(self, tenant: str, request_id: str) -> StashEntry | None:
        """The entry, if kept and not expired; raises when the store cannot be reached."""


class MemoryStash:
    """One process's stash: insertion-ordered, so the oldest entries (first to expire) are at the front."""

    def __init__(self, window_s: int, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.max_entries = max(1, max_entries)
        self.clock = clock
        self._entries: collections.OrderedDict[tuple[str, str], tuple[float, StashEntry]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tenant: str, request_id: str, entry: StashEntry) -> None:
        now = self.clock()
        entries = self._entries
        key = (tenant, request_id)
        entries.pop(key, None)  # a client re-using its id: the latest call is the one kept
        entries[key] = (now + self.window_s, entry)
        while entries and (len(entries) > self.max_entries or next(iter(entries.values()))[0] <= now):
            entries.popitem(last=False)

    async def get(self, tenant: str, request_id: str) -> StashEntry | None:
        found = self._entries.get((tenant, request_id))
        if found is None or found[0] <= self.clock():
            return None
        return found[1]


_SET = LuaScript.of("return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])")


class RedisStash:
    """The stash of every gateway process sharing a Redis."""

    def __init__(self, batcher: RedisBatcher, prefix: str, window_s: int) -> None:
        self.batcher = batcher
        self.prefix = prefix
        self.window_s = window_s
        # Writes not yet acknowledged, and what they write: the batcher sends a read before the `later`
        # writes it takes along, so feedback arriving within those milliseconds is answered from here.
        self._pending: dict[str, tuple[asyncio.Future[Any], StashEntry]] = {}

    def key(self, tenant: str, request_id: str) -> str:
        return f"{self.prefix}{tenant}:{request_id}"

    def put(self, tenant: str, request_id: str, entry: StashEntry) -> None:
        key = self.key(tenant, request_id)
        try:
            done = self.batcher.submit(_SET, (key,), (_encode(entry), self.window_s), later=True)
        except Exception:  # e.g. no running loop: the call is unaffected, its feedback will find nothing
            log.exception("request %s: keeping its features for feedback failed", request_id)
            return
        self._pending[key] = (done, entry)
        done.add_done_callback(lambda f: self._written(f, key, request_id))

    def _written(self, done: asyncio.Future[Any], key: str, request_id: str) -> None:
        if (pending := self._pending.get(key)) is not None and pending[0] is done:
            del self._pending[key]
        if not done.cancelled() and (error := done.exception()) is not None:
            log.warning("request %s: keeping its features for feedback failed: %s", request_id,
                        type(error).__name__)

    async def get(self, tenant: str, request_id: str) -> StashEntry | None:
        key = self.key(tenant, request_id)
        if (pending := self._pending.get(key)) is not None:
            return pending[1]
        raw = await self.batcher.execute("GET", key)
        if raw is None:
            return None
        try:
            return _decode(raw)
        except msgspec.DecodeError:  # not ours (another version's layout): as if absent
            log.warning("request %s: its feedback stash entry is unreadable", request_id)
            return None


def build_stash(settings: Settings, batcher: RedisBatcher | None) -> FeatureStash | None:
    """Redis when the gateway has it, else this process; None when feedback is off (a zero window)."""
    if settings.feedback_window_s <= 0:
        return None
    if batcher is not None:
        return RedisStash(batcher, settings.feedback_key_prefix, settings.feedback_window_s)
    return MemoryStash(settings.feedback_window_s, settings.feedback_stash_entries)


def keep_features(stash: FeatureStash, o: Outcome) -> None:
    """The step after the call (from `finish`, bound to the app's stash): a call the predictor routed that a
    worker answered in full leaves its features for feedback."""
    probe = o.quality
    if probe is not None and probe.vector is not None and o.answered_in_full():
        stash.put(o.tenant, o.request_id, StashEntry(
            o.record_id or o.request_id, o.model, o.tenant, o.team, o.key_id, probe.predictor.hash,
            features.FEATURES, features.encode_vector(probe.vector)))
