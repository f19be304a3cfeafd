"""`Auth`: from a request's key to its principal, in microseconds on a warm cache.

- The key is read from `Authorization: Bearer <key>`, else `api-key` (Azure OpenAI's header), else
  `x-api-key`.
- Its keyed hash (HMAC-SHA256 under the server secret) is looked up in an in-process cache; a miss
  asks the database once (concurrent misses for one key share that query). Entries, known and unknown
  keys alike, live `auth_cache_ttl_s` (2 s), so a revoked or expired key stops working within that on
  every process, database alone. With Redis, a revocation is also published on a channel every gateway
  listens to, and they drop the key at once.
- The development key is checked in memory (it is not in the database).
- When the database cannot be reached, a key seen before keeps working on its last known state
  (logged); an unknown one gets 503.
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

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth import store
from gateway.auth.keys import DEV_KEY_ID, DEV_ROLE, DEV_TEAM, DEV_TENANT, DevKey, dev_key, digest, server_secret
from gateway.auth.principal import ANONYMOUS, Principal
from gateway.settings import Settings
from router.errors import AuthUnavailable, Unauthenticated

log = logging.getLogger("gateway.auth")

REVOKED_CHANNEL = "gateway:auth:revoked"  # messages: a key id, or "*" (drop every cached key)
MAX_CACHED = 100_000  # keys found; past that their cache starts over
# Keys not found (unknown, revoked, expired), cached apart and fewer: someone trying random keys fills this
# small one only (a large one would hold megabytes of them), and never pushes out the keys in use.
MAX_UNKNOWN = 4096
BEARER = "bearer "


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
        engine: AsyncEngine | None,
        secret: bytes,
        dev: DevKey | None = None,
        ttl_s: float = 2.0,
        redis: Redis | None = None,
    ) -> None:
        self.required = required
        self.engine = engine
        self.secret = secret
        self.ttl_s = ttl_s
        self.redis = redis
        self._cache: dict[bytes, _Entry] = {}  # keys found
        self._unknown: dict[bytes, _Entry] = {}  # keys not found (their problem: unknown, revoked, expired)
        self._stale: dict[bytes, Principal] = {}  # last known principal per key, for a database outage
        self._inflight: dict[bytes, asyncio.Future[_Entry]] = {}
        self._dev: tuple[bytes, Principal] | None = None
        if dev is not None:
            self._dev = (digest(secret, dev.key),
                         Principal(tenant=DEV_TENANT, team=DEV_TEAM, key_id=DEV_KEY_ID, role=DEV_ROLE))
        self._listener: asyncio.Task[None] | None = None
        self._last_outage_log = 0.0
        self.lookups = 0  # database queries made (tests, metrics)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.redis is not None and self.required:
            self._listener = asyncio.create_task(self._listen(), name="auth-revocations")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    # --- the request path -----------------------------------------------------------------------

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller's principal; raises 401 (no key, bad key) or 503 (cannot check it now)."""
        if not self.required:
            return ANONYMOUS
        raw = headers.get("authorization")
        key = presented_key(headers)
        if key is None:
            raise unauthenticated("malformed" if raw else None)
        h = digest(self.secret, key)
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
        if self.engine is None:
            return _Entry(None, "unknown", time.monotonic() + self.ttl_s)
        try:
            self.lookups += 1
            found = await store.lookup(self.engine, h.hex(), datetime.now(UTC))
        except Exception as exc:
            stale = self._stale.get(h)
            now = time.monotonic()
            if now - self._last_outage_log > 10:
                self._last_outage_log = now
                log.warning("auth: cannot read keys from the database (%s); %s", type(exc).__name__,
                            "using the last known state of keys seen before" if self._stale else "refusing keys")
            if stale is not None:
                return _Entry(stale, None, now + self.ttl_s)
            raise AuthUnavailable("The gateway cannot check API keys right now.",
                                  headers={"retry-after": "1"}) from None
        entry = _Entry(found.principal, found.problem, time.monotonic() + self.ttl_s)
        if found.principal is not None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
                self._stale.clear()
            self._unknown.pop(h, None)
            self._cache[h] = entry
            self._stale[h] = found.principal
        else:
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()
            self._cache.pop(h, None)
            self._stale.pop(h, None)
            self._unknown[h] = entry
        return entry

    # --- revocation -----------------------------------------------------------------------------

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached lookups: of one key (by id), or all."""
        if key_id is None or key_id == "*":
            self._cache.clear()
            self._unknown.clear()
            return
        for h, entry in list(self._cache.items()):
            if entry.principal is not None and entry.principal.key_id == key_id:
                del self._cache[h]
        for h, p in list(self._stale.items()):
            if p.key_id == key_id:
                del self._stale[h]

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


async def start_auth(settings: Settings, engine: AsyncEngine | None, redis: Redis | None) -> Auth:
    """The app's `Auth` from the settings (the lifespan calls this)."""
    required = settings.auth == "required"
    if required and settings.database_url is not None and not settings.key_hash_secret:
        log.warning("auth: key_hash_secret is not set; using the one in %s/key-hash-secret. Every gateway "
                    "process and `gateway keys` sharing this database must use the same secret: set "
                    "key_hash_secret (GATEWAY_KEY_HASH_SECRET)", settings.state_dir)
    auth = Auth(required=required, engine=engine, secret=server_secret(settings) if required else b"",
                dev=dev_key(settings) if required else None, ttl_s=settings.auth_cache_ttl_s, redis=redis)
    if not required:
        log.warning("auth: off (settings `auth: off`): no API keys are checked; every call is tenant `default`'s")
    await auth.start()
    return auth
