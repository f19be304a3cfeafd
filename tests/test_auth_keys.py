"""Keys in the database (PostgreSQL and SQLite) and `Auth`, the lookup with its cache: only keyed hashes
are stored, revoked and expired keys stop, the cache is shared by concurrent misses and dropped at once
by a revocation published in Redis; the server secret and the development key files."""

from __future__ import annotations

import asyncio
import hmac
import os
import stat
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth import keys, service, store
from gateway.auth.principal import Limits
from gateway.auth.service import REVOKED_CHANNEL, Auth, presented_key
from gateway.settings import load_settings
from router.errors import AuthUnavailable, Unauthenticated
from tests.fault_proxy import FaultProxy
from tests.limits_support import require_redis
from tests.pg_support import migrated_engine
from tests.services import redis_url

SECRET = b"test-secret"


@pytest.fixture
async def engine(any_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine(any_url) as e:
        yield e


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_the_database_keeps_a_keyed_hash_never_the_key(engine: AsyncEngine) -> None:
    key, info = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app", name="ci",
                                       limits=Limits(rpm=60, budget=Decimal("12.5")))
    assert key.startswith("sk-gw-") and len(key) == 49
    assert info.prefix == key[:12] and info.id.startswith("key_")
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM api_keys"))).mappings().one()
    assert row["key_hash"] == hmac.new(SECRET, key.encode(), "sha256").hexdigest()
    assert key not in " ".join(str(v) for v in row.values())
    listed = (await store.list_keys(engine))[0].as_dict()
    assert listed["prefix"] == key[:12] and listed["state"] == "active"
    assert listed["rpm"] == 60 and listed["budget"] == "12.5000000000" and listed["budget_period"] == "month"
    assert key not in str(listed) and row["key_hash"] not in str(listed)


async def test_lookup_says_unknown_revoked_or_expired(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    key, info = await store.create_key(engine, SECRET, tenant="acme", team="red", role="finance")
    h = keys.digest(SECRET, key).hex()
    found = await store.lookup(engine, h, now)
    assert found.principal is not None and found.principal.role == "finance"
    assert (found.principal.tenant, found.principal.team, found.principal.key_id) == ("acme", "red", info.id)
    assert (await store.lookup(engine, keys.digest(SECRET, key + "x").hex(), now)).problem == "unknown"
    assert (await store.lookup(engine, keys.digest(b"other", key).hex(), now)).problem == "unknown"
    await store.expire_key(engine, info.id, now - timedelta(seconds=1))
    assert (await store.lookup(engine, h, now)).problem == "expired"
    await store.expire_key(engine, info.id, now + timedelta(days=1))
    assert (await store.lookup(engine, h, now)).principal is not None
    await store.revoke_key(engine, key)  # by the key itself (its prefix), or by id
    assert (await store.lookup(engine, h, now)).problem == "revoked"
    with pytest.raises(store.KeyProblem, match="no key"):
        await store.revoke_key(engine, "key_nope")


async def test_team_limits_come_with_the_key(engine: AsyncEngine) -> None:
    key, _ = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app",
                                    limits=Limits(tpm=1000))
    await store.set_team_limits(engine, "acme", "red", Limits(rpm=5, budget=Decimal(3), budget_period="day"))
    await store.set_team_limits(engine, "other", "red", Limits(rpm=1))  # another tenant's team `red`
    p = (await store.lookup(engine, keys.digest(SECRET, key).hex(), datetime.now(UTC))).principal
    assert p is not None
    assert p.key_limits == Limits(tpm=1000)
    assert p.team_limits == Limits(rpm=5, budget=Decimal("3.0000000000"), budget_period="day")
    await store.set_team_limits(engine, "acme", "red", None)
    p = (await store.lookup(engine, keys.digest(SECRET, key).hex(), datetime.now(UTC))).principal
    assert p is not None and not p.team_limits.any


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"role": "root"}, "role `root`"),
    ({"tenant": "a:b"}, "tenant must be"),
    ({"team": ""}, "team must be"),
])
async def test_bad_keys_are_refused(engine: AsyncEngine, kwargs: dict[str, str], needle: str) -> None:
    args = {"tenant": "acme", "team": "red", "role": "app", **kwargs}
    with pytest.raises(store.KeyProblem, match=needle):
        await store.create_key(engine, SECRET, **args)  # type: ignore[arg-type]
    with pytest.raises(store.KeyProblem, match="budget"):
        store.check_limits(None, None, Decimal("-1"), None)
    with pytest.raises(store.KeyProblem, match="period"):
        store.check_limits(None, None, Decimal("1"), "fortnight")


def test_the_key_is_read_from_the_usual_headers() -> None:
    assert presented_key({"authorization": "Bearer sk-1"}) == "sk-1"
    assert presented_key({"authorization": "bearer  sk-1 "}) == "sk-1"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({"api-key": "sk-2"}) == "sk-2"
    assert presented_key({"x-api-key": "sk-3"}) == "sk-3"
    assert presented_key({}) is None


async def test_auth_caches_and_a_revoked_key_stops_within_the_ttl(engine: AsyncEngine) -> None:
    key, info = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app")
    auth = Auth(required=True, engine=engine, secret=SECRET, ttl_s=0.3)
    p = await auth.authenticate(bearer(key))
    assert p.key_id == info.id
    for _ in range(100):
        assert await auth.authenticate(bearer(key)) == p
    assert auth.lookups == 1
    await store.revoke_key(engine, info.id)
    assert await auth.authenticate(bearer(key)) == p  # still cached ...
    await asyncio.sleep(0.35)
    with pytest.raises(Unauthenticated, match="revoked"):  # ... for at most the TTL
        await auth.authenticate(bearer(key))


async def test_keys_not_found_are_cached_apart_and_never_push_out_keys_in_use(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_UNKNOWN", 8)
    key, info = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app")
    auth = Auth(required=True, engine=engine, secret=SECRET, ttl_s=60)
    assert (await auth.authenticate(bearer(key))).key_id == info.id
    for i in range(50):  # someone trying keys
        with pytest.raises(Unauthenticated):
            await auth.authenticate(bearer(f"sk-gw-guess-{i}"))
    assert auth.lookups == 51 and len(auth._unknown) <= 8  # bounded
    assert (await auth.authenticate(bearer(key))).key_id == info.id
    with pytest.raises(Unauthenticated):  # a bad key sent again (a misconfigured client) is remembered
        await auth.authenticate(bearer("sk-gw-guess-49"))
    assert auth.lookups == 51  # the key in use is still cached


async def test_concurrent_misses_share_one_query(engine: AsyncEngine) -> None:
    key, _ = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app")
    auth = Auth(required=True, engine=engine, secret=SECRET)
    results = await asyncio.gather(*(auth.authenticate(bearer(key)) for _ in range(50)),
                                   *(auth.authenticate(bearer("sk-gw-nope")) for _ in range(50)),
                                   return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results[:50])
    assert all(isinstance(r, Unauthenticated) for r in results[50:])
    assert auth.lookups == 2


async def test_an_expiring_key_stops_at_its_time_even_when_cached(engine: AsyncEngine) -> None:
    key, _ = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app",
                                    expires_at=datetime.now(UTC) + timedelta(seconds=0.5))
    auth = Auth(required=True, engine=engine, secret=SECRET, ttl_s=60)
    await auth.authenticate(bearer(key))
    await asyncio.sleep(0.6)
    with pytest.raises(Unauthenticated, match="expired"):
        await auth.authenticate(bearer(key))


async def test_errors_missing_malformed_unknown() -> None:
    auth = Auth(required=True, engine=None, secret=SECRET)
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate({})
    assert (info.value.status, info.value.type, info.value.code) == (401, "invalid_request_error", "missing_api_key")
    with pytest.raises(Unauthenticated, match="Bearer") as info:
        await auth.authenticate({"authorization": "Token abc"})
    assert info.value.code == "invalid_api_key"
    with pytest.raises(Unauthenticated, match="Incorrect API key"):
        await auth.authenticate(bearer("sk-gw-guess"))
    off = Auth(required=False, engine=None, secret=b"")
    assert (await off.authenticate({})).tenant == "default"


async def test_a_database_outage_keeps_known_keys_and_refuses_unknown_ones(pg_url: str) -> None:
    with FaultProxy.before(pg_url) as proxy:
        async with migrated_engine(proxy.through(pg_url)) as engine:
            key, _ = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app")
            revoked, info = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app")
            auth = Auth(required=True, engine=engine, secret=SECRET, ttl_s=0)
            known = await auth.authenticate(bearer(key))
            await auth.authenticate(bearer(revoked))
            await store.revoke_key(engine, info.id)
            with pytest.raises(Unauthenticated, match="revoked"):
                await auth.authenticate(bearer(revoked))
            proxy.set_mode("refuse")
            assert await auth.authenticate(bearer(key)) == known
            with pytest.raises(Unauthenticated, match="revoked"):  # seen revoked: stays revoked
                await auth.authenticate(bearer(revoked))
            with pytest.raises(AuthUnavailable):
                await auth.authenticate(bearer("sk-gw-someone-else"))


async def test_the_development_key_lives_in_memory() -> None:
    auth = Auth(required=True, engine=None, secret=SECRET, dev=keys.DevKey("sk-gw-dev", "setting"))
    p = await auth.authenticate(bearer("sk-gw-dev"))
    assert (p.tenant, p.team, p.key_id, p.role) == ("default", "dev", "dev", "admin")
    assert auth.lookups == 0


async def test_a_published_revocation_drops_the_key_on_every_gateway_at_once(engine: AsyncEngine) -> None:
    require_redis()
    redis = Redis.from_url(redis_url(), socket_timeout=3, socket_connect_timeout=3)
    key, info = await store.create_key(engine, SECRET, tenant="acme", team="red", role="app")
    gateways = [Auth(required=True, engine=engine, secret=SECRET, ttl_s=3600, redis=redis) for _ in range(2)]
    try:
        for auth in gateways:
            await auth.start()
            await auth.authenticate(bearer(key))
        for _ in range(100):  # both subscribed
            if (await redis.pubsub_numsub(REVOKED_CHANNEL))[0][1] >= 2:
                break
            await asyncio.sleep(0.02)
        await store.revoke_key(engine, info.id)
        started = time.monotonic()
        await redis.publish(REVOKED_CHANNEL, info.id)
        for auth in gateways:
            while True:
                try:
                    await auth.authenticate(bearer(key))
                except Unauthenticated:
                    break
                assert time.monotonic() - started < 2, "the revocation did not arrive"
                await asyncio.sleep(0.01)
    finally:
        for auth in gateways:
            await auth.close()
        await redis.aclose()


def test_secret_and_dev_key_files_are_made_once_private_and_shared(tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"state_dir": str(tmp_path / "state")})
    with ThreadPoolExecutor(8) as pool:  # processes starting together agree on one value
        secrets_ = set(pool.map(lambda _: keys.server_secret(settings), range(16)))
        devs = set(pool.map(lambda _: keys.dev_key(settings), range(16)))
    assert len(secrets_) == 1 and len(devs) == 1
    dev = devs.pop()
    assert dev is not None and dev.key.startswith("sk-gw-") and dev.source.endswith("dev-key")
    for name in ("key-hash-secret", "dev-key"):
        mode = stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode)
        assert mode == 0o600, oct(mode)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["dev-key", "key-hash-secret"]
    # Settings win; a configured database gets no development key unless one is given.
    given = load_settings(env={"GATEWAY_DEV_KEY": "sk-mine", "GATEWAY_KEY_HASH_SECRET": "s3"},
                          overrides={"state_dir": str(tmp_path / "other")})
    assert keys.dev_key(given) == keys.DevKey("sk-mine", "setting") and keys.server_secret(given) == b"s3"
    assert keys.dev_key(load_settings(env={"GATEWAY_DEV_KEY": ""}, overrides={"state_dir": str(tmp_path)})) is None
    assert keys.dev_key(load_settings(env={}, overrides={"state_dir": str(tmp_path),
                                                         "database_url": "postgresql://x/y"})) is None
    banner = keys.dev_key_banner(settings, terminal=True)
    assert dev.key in banner[0] and "role admin, tenant default, team dev" in banner[0]
    assert all(dev.key not in line for line in keys.dev_key_banner(settings, terminal=False))
