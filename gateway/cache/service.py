"""The response cache on the request path: one `Ticket` per request (gateway/cache/ticket.py) says what the
cache did with it (`hit`, `miss`, `bypass`, sent back as `x-gateway-cache`); when the call is over, `store`
(one of the steps after the last byte, gateway/completion.py) stores its answer and releases the
single-flight lock.

Fail-open: any backend error makes the request a bypass, is counted and logged (never sent to the
client), and the backend is left alone for `cache_retry_s` so a dead Redis costs nothing meanwhile, or
until Redis answers another round trip (the limits' admissions share its connection): then at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from gateway.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from gateway.cache.entry import (
    ENTRY_KINDS,
    Entry,
    RawEntry,
    StreamCollector,
    decode_entry,
    decode_raw,
    encode_entry,
    entry_from_body,
    render_json,
    render_sse,
    replayable,
)
from gateway.cache.keys import cache_key, lock_key
from gateway.cache.ticket import BYPASS, Ticket
from gateway.inference.openai_request import RequestFields
from gateway.inference.usage import Usage
from gateway.outcome import Outcome, finish
from gateway.redis_batch import RedisBatcher
from gateway.replies import Reply
from gateway.request_id import new_id
from gateway.routing import Route
from gateway.settings import Settings
from router.errors import InvalidRequest

log = logging.getLogger("gateway.cache")

HEADER = "x-gateway-cache"
DIRECTIVES = ("no-store", "refresh")  # the request header's values: opt out, or skip the lookup and store anew
SSE = "text/event-stream; charset=utf-8"  # as vLLM sends it


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    key_prefix: str = "gateway:cache:"
    max_entry_bytes: int = 1_000_000
    lock_ttl_s: float = 30.0
    wait_s: float = 30.0
    retry_s: float = 1.0


def _continuous(fields: RequestFields) -> bool:
    """Whether a stream asked for usage on every chunk (vLLM's `continuous_usage_stats`, with `include_usage`)."""
    opts = fields.stream_options
    return bool(opts and opts.include_usage and opts.continuous_usage_stats)


@dataclass
class ResponseCache:
    backend: CacheBackend | None  # None: the cache is off
    config: CacheConfig = field(default_factory=CacheConfig)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("hits", "misses", "bypasses", "stores", "not_stored", "waits", "errors"), 0))
    ok: bool | None = None  # None: not used yet
    last_error: str | None = None
    last_error_at: float | None = None
    _down_until: float = 0.0  # after an error: the backend is left alone until then (0: not down) ...
    _answers_then: int = 0  # ... unless its answers count moves on from this (it answered since)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def backend_name(self) -> str:
        return self.backend.name if self.backend is not None and self.config.enabled else "off"

    # --- the request path ---------------------------------------------------------------------------

    async def begin(self, headers: Mapping[str, str], chosen: Route, body: dict[str, Any],
                    fields: RequestFields, kind: str, outcome: Outcome) -> Ticket:
        """`ask`, then `resolve`: the lookup in one step."""
        return await self.resolve(self.ask(headers, chosen, body, kind, outcome), fields, outcome)

    def ask(
        self,
        headers: Mapping[str, str],
        chosen: Route,
        body: dict[str, Any],
        kind: str,
        outcome: Outcome,
    ) -> Ticket:
        """Issue the request's lookup, without waiting for it (`resolve` does), so that it shares
        a round trip with the commands issued meanwhile (the rate limits' admission). Call before the body
        is changed for the worker (`upstream_body`). `kind`: the call's (gateway/outcome.py's CallKind); a call
        routed by name alone (no decision) follows its route's cache policy."""
        directive = headers.get(HEADER)
        if directive is not None:
            directive = directive.strip().lower()
            if directive not in DIRECTIVES:
                raise InvalidRequest(
                    f"Invalid {HEADER} header `{directive}`: use `no-store` or `refresh`.", param=HEADER,
                    code="invalid_cache_directive")
        decision = chosen.decision
        policy = decision.cache if decision is not None else chosen.cache
        backend = self.backend
        if (backend is None or not self.config.enabled or policy is None or not policy.store
                or directive == "no-store" or (self._down_until and self._left_alone(backend))):
            self.counts["bypasses"] += 1
            return BYPASS
        model, cap = (decision.model, decision.max_tokens) if decision is not None else (chosen.targets[0][0], None)
        key = cache_key(self.config.key_prefix, kind, body, model, cap, outcome.tenant, policy.namespace)
        ticket = Ticket("miss", kind, key, model, float(policy.ttl_s or 0), store=True)
        if directive != "refresh":
            token = new_id()
            # One atomic step: the entry, or else the lock (so no answer lands between the two).
            ticket.lookup = (token, backend.lookup(key, lock_key(key), token, self.config.lock_ttl_s))
        return ticket

    async def resolve(self, ticket: Ticket, fields: RequestFields, outcome: Outcome) -> Ticket:
        """The lookup's answer: a hit carries its entry; a miss may hold the single-flight lock (the ticket
        goes on the outcome, for `store` when the call is over). A bypass is its own answer."""
        backend, key = self.backend, ticket.key
        if backend is None or key is None:
            return ticket
        try:
            if ticket.lookup is not None:
                token, lookup = ticket.lookup
                ticket.lookup = None
                raw, locked = await lookup
                if locked:
                    ticket.token = token
                elif raw is None:  # someone else is asking the worker this very question: wait for their answer
                    self.counts["waits"] += 1
                    raw = await backend.wait(key, lock_key(key), self.config.wait_s)
                entry: Entry | RawEntry | None = None
                if raw is not None:
                    entry = decode_entry(raw) if ticket.kind in ENTRY_KINDS else decode_raw(raw)
                if isinstance(entry, Entry) and fields.stream and not replayable(entry, _continuous(fields)):
                    entry = None  # a stream it cannot render as the worker would: the worker's answer is stored
                if entry is not None:
                    self._ok()
                    self.counts["hits"] += 1
                    ticket.status, ticket.entry, ticket.store = "hit", entry, False
                    return ticket
            self._ok()
        except BaseException as exc:
            if ticket.token is not None:  # never keep a lock we will not release (the client left, Redis failed)
                self.spawn(self._release(key, ticket.token))
            if not isinstance(exc, Exception):
                raise
            self._failed(exc)  # fail-open: served uncached
            self.counts["bypasses"] += 1
            return BYPASS
        self.counts["misses"] += 1
        if fields.stream and (kind := ENTRY_KINDS.get(ticket.kind)) is not None:
            ticket.collector = StreamCollector(kind, self.config.max_entry_bytes)
        outcome.ticket = ticket
        return ticket

    def abandon(self, ticket: Ticket) -> None:
        """The request ends before `resolve` (refused by its limits, the client left): the lookup is
        still answered, and a lock it took is released."""
        if ticket.lookup is not None:
            token, lookup = ticket.lookup
            ticket.lookup = None
            self.spawn(self._abandoned(ticket.key or "", token, lookup))

    async def _abandoned(self, key: str, token: str, lookup: Awaitable[tuple[bytes | None, bool]]) -> None:
        with contextlib.suppress(Exception):
            if (await lookup)[1]:
                await self._release(key, token)

    def respond(self, ticket: Ticket, fields: RequestFields, outcome: Outcome,
                headers: dict[str, str]) -> Reply:
        """The answer to a hit, as JSON or as an SSE stream (whichever the request asked for), and its
        record: the cached answer's tokens, no worker cost, the cost it saved."""
        entry = ticket.entry
        assert entry is not None
        if isinstance(entry, RawEntry):  # a whole JSON answer, as the worker sent it
            content, media_type = entry.body, "application/json"
        elif fields.stream:
            opts = fields.stream_options
            content, media_type = render_sse(entry, bool(opts and opts.include_usage), _continuous(fields)), SSE
        else:
            content, media_type = render_json(entry), "application/json"
        outcome.cache_hit, outcome.usage, outcome.status, outcome.completed = True, entry.usage, 200, True
        outcome.first_byte = time.perf_counter()
        finish(outcome)
        headers["x-gateway-model"], headers[HEADER] = ticket.model or entry.model, "hit"
        return Reply(content, 200, media_type, headers)

    # --- after the call -----------------------------------------------------------------------------

    def store(self, outcome: Outcome) -> None:
        """The step after the call (from `finish`, synchronously): schedules the store of a complete answer
        that may be cached, and the lock's release, off the request path."""
        ticket = outcome.ticket
        if ticket is None or (not ticket.store and ticket.token is None):
            return
        storable = (ticket.store and outcome.completed and outcome.status == 200 and outcome.failure is None
                    and not outcome.cache_hit and outcome.model == ticket.model)
        collector, body = ticket.collector, ticket.body
        ticket.collector = ticket.body = None
        self.spawn(self.conclude(ticket, collector if storable else None, body if storable else None,
                                 outcome.usage))

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def conclude(self, ticket: Ticket, collector: StreamCollector | None, body: bytes | None,
                       usage: Usage | None) -> None:
        """Store a complete answer that may be cached, then release the lock (waiters then find it)."""
        backend, key = self.backend, ticket.key
        assert backend is not None and key is not None
        try:
            entry: Entry | RawEntry | None = None
            if collector is not None:
                entry = collector.entry(usage)
            elif body is not None:
                kind = ENTRY_KINDS.get(ticket.kind)
                if kind is not None:
                    entry = entry_from_body(kind, body)
                elif usage is not None and body[:1] == b"{":  # a whole JSON answer and its usage: kept as it is
                    entry = RawEntry(body, usage, ticket.model or "")
            data = encode_entry(entry) if entry is not None else None
            if data is None or len(data) > self.config.max_entry_bytes or ticket.ttl_s <= 0:
                data = None
            if data is not None or ticket.token is not None:
                await backend.conclude(key, data, ticket.ttl_s, lock_key(key), ticket.token)  # one round trip
            if data is not None:
                self.counts["stores"] += 1
            elif ticket.store:
                self.counts["not_stored"] += 1
            self._ok()
        except Exception as exc:
            self._failed(exc)

    async def _release(self, key: str, token: str) -> None:
        with contextlib.suppress(Exception):
            assert self.backend is not None
            await self.backend.release(lock_key(key), token)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let pending stores finish (at shutdown, before the Redis pool closes)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    # --- health -------------------------------------------------------------------------------------

    def _left_alone(self, backend: CacheBackend) -> bool:
        """Within `retry_s` of an error, and the backend has not answered since."""
        if time.monotonic() < self._down_until and backend.answers() == self._answers_then:
            return True
        self._down_until = 0.0
        return False

    def _ok(self) -> None:
        if self.ok is False:
            log.info("response cache: %s answers again", self.backend_name)
        self.ok = True

    def _failed(self, exc: BaseException) -> None:
        self.counts["errors"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.last_error_at = time.time()
        self._down_until = time.monotonic() + self.config.retry_s
        if self.backend is not None:
            self._answers_then = self.backend.answers()
        if self.ok is not False:
            log.warning("response cache: %s failed (%s); serving uncached, retrying every %.1fs",
                        self.backend_name, self.last_error, self.config.retry_s)
        else:
            log.debug("response cache: %s still failing (%s)", self.backend_name, self.last_error)
        self.ok = False

    async def check(self, timeout_s: float = 0.25) -> None:
        """For /readyz: when the backend was failing, see whether it is back (bounded, never raises)."""
        if self.backend is None or not self.config.enabled or self.ok is not False:
            return
        try:
            await asyncio.wait_for(self.backend.ping(), timeout_s)
        except Exception as exc:
            self._failed(exc)
        else:
            self._ok()
            self._down_until = 0.0

    def status(self) -> dict[str, Any]:
        """The `cache` section of /readyz (the cache never makes the gateway unready)."""
        stats = self.backend.stats() if self.backend is not None else {}
        return {
            "backend": self.backend_name,
            "ok": self.ok is not False,
            "errors": self.counts["errors"],
            "last_error": self.last_error,
            "last_error_at": datetime.fromtimestamp(self.last_error_at, UTC).isoformat()
            if self.last_error_at else None,
            **{k: v for k, v in self.counts.items() if k != "errors"},
            **stats,
        }


def build_cache(settings: Settings, redis: Redis | None, batcher: RedisBatcher | None = None) -> ResponseCache:
    """Redis when the gateway has one (`redis_url`), else this process's memory; off (every call a bypass)
    when `cache_enabled` is false. `batcher`: the app's auto-pipelining for `redis` (shared with the limits),
    else the backend makes its own."""
    config = CacheConfig(
        enabled=settings.cache_enabled,
        key_prefix=settings.cache_key_prefix,
        max_entry_bytes=settings.cache_max_entry_bytes,
        lock_ttl_s=settings.cache_lock_ttl_s,
        wait_s=settings.cache_wait_s,
        retry_s=settings.cache_retry_s,
    )
    backend: CacheBackend
    if redis is not None:
        backend = RedisBackend(redis, batcher)
    else:
        backend = MemoryBackend(settings.cache_memory_max_entries, settings.cache_memory_max_bytes)
    return ResponseCache(backend if settings.cache_enabled else None, config)
