"""`Auth`: from a request's key to its principal, in microseconds on a warm cache.

- The key is read from `Authorization: Bearer <key>`, else `api-key` (Azure OpenAI's header), else
  `x-api-key`.
- Its keyed hash (HMAC-SHA256 under the server secret) is looked up in an in-process cache; a miss
  asks the database once (concurrent misses for one key share that query), waiting at most
  `database_request_timeout_s` (gateway/accounting/reads.py). Entries, known and unknown keys alike, live
  `auth_cache_ttl_s` (2 s), so a revoked or expired key stops working within that on every process,
  database alone. With Redis, a revocation is also published on a channel every gateway listens to, and
  they drop the key at once.
- The development key is checked in memory (it is not in the database).
- The last known keys: every key the database holds, re-read whole every `key_reload_interval_s` and
  updated by each lookup, and kept on local disk (gateway/auth/snapshot.py) to start with. When the
  database does not answer in time, or is down, a key answers from its last known state (a revoked or
  expired one stays refused); a key never known gets 503 `auth_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.reads import BoundedReads, as_bounded, describe
from gateway.auth import snapshot, store
from gateway.auth.keys import (
    DEV_KEY_ID,
    DEV_ROLE,
    DEV_SCOPE,
    DEV_TEAM,
    DEV_TENANT,
    DevKey,
    dev_key,
    digest,
    server_secret,
)
from gateway.auth.principal import ANONYMOUS, Principal
from gateway.auth.snapshot import Known, entry_id, snapshot_key
from gateway.settings import Settings
from router.errors import AuthUnavailable, Unauthenticated

log = logging.getLogger("gateway.auth")

REVOKED_CHANNEL = "gateway:auth:revoked"  # messages: a key id, or "*" (drop every cached key)
MAX_CACHED = 100_000  # keys found; past that their cache starts over
# Keys not found (unknown, revoked, expired), cached apart and fewer: someone trying random keys fills this
# small one only (a large one would hold megabytes of them), and never pushes out the keys in use.
MAX_UNKNOWN = 4096
BEARER = "bearer "
RELOAD_TIMEOUT_S = 30.0  # reading every key (in the background, not on the request path)
Readiness = Literal["ok", "last_known", "unavailable"]


def presented_key(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is not None:
        if value[:7].lower() == BEARER:
            return value[7:].strip() or None
        return None
    return headers.get("api-key") or headers.get("x-api-key") or None


@dataclass(slots=True)
class _Entry:
    principal: Principal | None
    problem: str | None
    until: float  # monotonic


_MESSAGES = {
    None: "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
    "unknown": "Incorrect API key provided.",
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
    "malformed": "The Authorization header must be `Bearer <key>`.",
}


def unauthenticated(problem: str | None) -> Unauthenticated:
    code = "missing_api_key" if problem is None else "invalid_api_key"
    return Unauthenticated(_MESSAGES.get(problem, _MESSAGES["unknown"]), code=code)


class Auth:
    def __init__(
        self,
        *,
        required: bool,
        engine: AsyncEngine | BoundedReads | None,
        secret: bytes,
        dev: DevKey | None = None,
        ttl_s: float = 2.0,
        redis: Redis | None = None,
        snapshot_path: Path | None = None,
        reload_interval_s: float = 60.0,
    ) -> None:
        """`engine`: the app's bounded reads (an engine alone gets the default bounds); `snapshot_path`:
        the last known keys' file (None: none)."""
        self.required = required
        self.db = as_bounded(engine)
        self.secret = secret
        self.ttl_s = ttl_s
        self.redis = redis
        self.snapshot_path = snapshot_path
        self.reload_interval_s = reload_interval_s
        self._cache: dict[bytes, _Entry] = {}  # keys found
        self._unknown: dict[bytes, _Entry] = {}  # keys not found (their problem: unknown, revoked, expired)
        # The last known state of every key the database holds, by snapshot entry id: answers while it is away.
        self._known: dict[bytes, Known] = {}
        self._snapshot_key = snapshot_key(secret)
        self._written: bytes | None = None  # the entries the snapshot file holds (rewritten only when they change)
        self._reloader: asyncio.Task[None] | None = None
        self._reload_now: asyncio.Event | None = None
        self._inflight: dict[bytes, asyncio.Future[_Entry]] = {}
        self._dev: tuple[bytes, Principal] | None = None
        if dev is not None:
            self._dev = (digest(secret, dev.key),
                         Principal(tenant=DEV_TENANT, team=DEV_TEAM, key_id=DEV_KEY_ID, role=DEV_ROLE,
                                   scope=DEV_SCOPE))
        self._listener: asyncio.Task[None] | None = None
        self._last_outage_log = 0.0
        self.lookups = 0  # database queries made (tests, metrics)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.redis is not None and self.required:
            self._listener = asyncio.create_task(self._listen(), name="auth-revocations")
        if self.db is not None and self.required:
            if self.snapshot_path is not None:
                known = await asyncio.to_thread(snapshot.read, self.snapshot_path)
                self._known = known or {}
            self._reload_now = asyncio.Event()
            self._reloader = asyncio.create_task(self._reload_keys(), name="auth-key-reload")

    async def close(self) -> None:
        for task in (self._listener, self._reloader):
            if task is not None:
                # redis-py can swallow a cancellation that lands inside its own timeouts (redis/redis-py#2551),
                # leaving the listener in get_message(timeout=30): cancel until the task has ended.
                while not task.done():
                    task.cancel()
                    await asyncio.wait([task], timeout=0.2)
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def readiness(self) -> Readiness:
        """Whether calls can be authenticated: `ok` (against the database, or no keys are checked),
        `last_known` (the database is degraded: keys known before, and the development key), or
        `unavailable` (the database is degraded and no key is known: every call would get 503)."""
        if not self.required or self.db is None or self.db.state == "ok":
            return "ok"
        return "last_known" if self._known or self._dev is not None else "unavailable"

    @property
    def known_keys(self) -> int:
        return len(self._known)

    # --- the request path -----------------------------------------------------------------------

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller's principal; raises 401 (no key, bad key) or 503 (cannot check it now)."""
        if not self.required:
            return ANONYMOUS
        raw = headers.get("authorization")
        key = presented_key(headers)
        if key is None:
            raise unauthenticated("malformed" if raw else None)
        return await self.identify(self.key_hash(key))

    def key_hash(self, key: str) -> bytes:
        """The key's keyed hash: what the database and a console session keep instead of the key."""
        return digest(self.secret, key)

    async def identify(self, h: bytes) -> Principal:
        """The principal of the key whose keyed hash is `h` (the same checks, cache and outage rules as
        `authenticate`); raises 401 for a key unknown, revoked or expired."""
        if self._dev is not None and hmac.compare_digest(h, self._dev[0]):
            return self._dev[1]
        entry = self._cache.get(h)
        if entry is None:
            entry = self._unknown.get(h)
        if entry is None or entry.until <= time.monotonic():
            entry = await self._load(h)
        p = entry.principal
        if p is None:
            raise unauthenticated(entry.problem)
        if p.expires_at is not None and p.expires_at <= time.time():
            raise unauthenticated("expired")
        return p

    async def _load(self, h: bytes) -> _Entry:
        pending = self._inflight.get(h)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[h] = fut
        try:
            entry = await self._query(h)
            fut.set_result(entry)
            return entry
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            self._inflight.pop(h, None)

    async def _query(self, h: bytes) -> _Entry:
        if self.db is None:
            return _Entry(None, "unknown", time.monotonic() + self.ttl_s)
        try:
            found = await self.db.read(lambda engine: self._lookup(engine, h))
        except Exception as exc:
            return self._last_known(h, exc)
        entry = _Entry(found.principal, found.problem, time.monotonic() + self.ttl_s)
        eid = entry_id(self._snapshot_key, h)
        if found.principal is not None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._unknown.pop(h, None)
            self._cache[h] = entry
            self._known[eid] = Known(found.principal)
        else:
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()
            self._cache.pop(h, None)
            self._unknown[h] = entry
            if found.problem == "unknown":
                self._known.pop(eid, None)
            else:  # revoked or expired: refused while the database is away too
                self._known[eid] = Known(None, found.problem)
        return entry

    async def _lookup(self, engine: AsyncEngine, h: bytes) -> store.Found:
        self.lookups += 1
        return await store.lookup(engine, h.hex(), datetime.now(UTC))

    def _last_known(self, h: bytes, error: Exception) -> _Entry:
        """The key's last known state, when the database cannot answer; 503 for a key never known."""
        known = self._known.get(entry_id(self._snapshot_key, h))
        now = time.monotonic()
        if now - self._last_outage_log > 10:
            self._last_outage_log = now
            log.warning("auth: cannot read keys from the database (%s); %s", describe(error),
                        f"using the last known state of {len(self._known)} key(s)" if self._known
                        else "no key is known: refusing keys")
        if known is None:
            raise AuthUnavailable("The gateway cannot check API keys right now.",
                                  headers={"retry-after": "1"}) from None
        return _Entry(known.principal, known.problem, now + self.ttl_s)

    # --- the last known keys ------------------------------------------------------------------------

    async def _reload_keys(self) -> None:
        """Read every key now and every `reload_interval_s` (sooner after a revocation, or after a failure:
        every `database_retry_s`), until cancelled."""
        assert self.db is not None and self._reload_now is not None
        while True:
            wait = self.reload_interval_s
            try:
                rows = await self.db.read(store.all_keys, timeout_s=RELOAD_TIMEOUT_S)
                await self._replace_known(rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                wait = min(wait, self.db.retry_s)
                log.debug("auth: the keys were not reloaded (%s)", describe(exc))
            self._reload_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_now.wait(), wait)

    async def _replace_known(self, rows: list[Any]) -> None:
        now = datetime.now(UTC)

        def build() -> dict[bytes, Known]:  # in a thread: many keys take a while to hash, and writing waits on fsync
            known: dict[bytes, Known] = {}
            for row in rows:
                found = store.resolve(row, now)
                known[entry_id(self._snapshot_key, bytes.fromhex(row.key_hash))] = Known(found.principal,
                                                                                           found.problem)
            if self.snapshot_path is not None:
                entries = snapshot.encode_entries(known)
                if entries != self._written:
                    try:
                        snapshot.write(self.snapshot_path, entries)
                        self._written = entries
                    except OSError as exc:
                        log.warning("auth: cannot write the key snapshot %s (%s)", self.snapshot_path, exc)
            return known

        self._known = await asyncio.to_thread(build)

    # --- revocation -----------------------------------------------------------------------------

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached lookups: of one revoked key (by id: it is last known revoked, and the keys are
        reloaded), or all."""
        if key_id is None or key_id == "*":
            self._cache.clear()
            self._unknown.clear()
            return
        for h, entry in list(self._cache.items()):
            if entry.principal is not None and entry.principal.key_id == key_id:
                del self._cache[h]
        for eid, known in list(self._known.items()):
            if known.principal is not None and known.principal.key_id == key_id:
                self._known[eid] = Known(None, "revoked")
        if self._reload_now is not None:
            self._reload_now.set()

    async def _listen(self) -> None:
        """Follow revocations published by `gateway keys revoke` and other gateways (until cancelled)."""
        assert self.redis is not None
        backoff = 0.5
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(REVOKED_CHANNEL)
                self.forget()  # messages may have been missed while not subscribed
                backoff = 0.5
                while True:
                    msg = await pubsub.get_message(timeout=30.0)
                    if msg is not None and msg.get("type") == "message":
                        data = msg.get("data")
                        self.forget(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("auth: revocation channel lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def publish_revocation(redis: Redis, key_id: str) -> None:
    """Tell every gateway to drop a key now (best effort: the cache's TTL bounds it anyway)."""
    try:
        await redis.publish(REVOKED_CHANNEL, key_id)
    except Exception as exc:
        log.warning("auth: could not publish the revocation of %s (%s); gateways drop it within their cache TTL",
                    key_id, type(exc).__name__)


async def start_auth(settings: Settings, engine: AsyncEngine | BoundedReads | None, redis: Redis | None) -> Auth:
    """The app's `Auth` from the settings (the lifespan calls this, with the accounting's bounded reads)."""
    required = settings.auth == "required"
    if required and settings.database_url is not None and not settings.key_hash_secret:
        log.warning("auth: key_hash_secret is not set; using the one in %s/key-hash-secret. Every gateway "
                    "process and `gateway keys` sharing this database must use the same secret: set "
                    "key_hash_secret (GATEWAY_KEY_HASH_SECRET)", settings.state_dir)
    path = snapshot.path_of(settings.state_dir)
    if not settings.key_snapshot:
        await asyncio.to_thread(snapshot.remove, path)
    auth = Auth(required=required, engine=engine, secret=server_secret(settings) if required else b"",
                dev=dev_key(settings) if required else None, ttl_s=settings.auth_cache_ttl_s, redis=redis,
                snapshot_path=path if settings.key_snapshot and required else None,
                reload_interval_s=settings.key_reload_interval_s)
    if not required:
        log.warning("auth: off (settings `auth: off`): no API keys are checked; every call is tenant `default`'s")
    await auth.start()
    return auth
