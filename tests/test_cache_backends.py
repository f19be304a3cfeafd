"""The cache backends and `ResponseCache` on both: Redis (real, 127.0.0.1:6379) and this process's
memory. The same tests run against each: entries and their TTL, the single-flight lock (token,
compare-and-delete, TTL so a dead holder blocks no one), waiting, lookup -> store -> hit, tenants apart,
concurrent identical misses going upstream once, and fail-open when Redis is not there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from gateway.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from gateway.cache.keys import lock_key
from gateway.cache.service import CacheConfig, ResponseCache
from gateway.cache.ticket import Ticket
from gateway.inference.openai_request import ChatFields, parse_body
from gateway.outcome import Outcome, Step, finish
from gateway.redis_batch import RedisBatcher
from gateway.redis_client import redis_client
from gateway.routing import Route
from router.decision import CachePolicy, RouteDecision
from tests.cache_support import delete_prefix, require_redis, unique_prefix
from tests.fault_proxy import FaultProxy
from tests.services import redis_url
from workers.launcher import free_port

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32"
BODY = (FIXTURES / "chat.json").read_bytes()


@pytest.fixture(scope="module")
def redis_sync() -> Iterator[sync_redis.Redis]:
    client = require_redis()
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis"])
async def backend(
    request: pytest.FixtureRequest, redis_sync: sync_redis.Redis
) -> AsyncIterator[tuple[CacheBackend, str]]:
    prefix = unique_prefix("backend")
    if request.param == "memory":
        yield MemoryBackend(max_entries=100, max_bytes=1_000_000), prefix
        return
    client = Redis.from_url(redis_url(), socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        yield RedisBackend(client), prefix
    finally:
        await client.aclose()
        delete_prefix(redis_sync, prefix)


async def test_entries_expire(backend: tuple[CacheBackend, str]) -> None:
    b, p = backend
    assert await b.get(p + "k") is None
    await b.set(p + "k", b"v1", 0.2)
    assert await b.get(p + "k") == b"v1"
    await b.set(p + "k", b"v2", 0.2)  # overwrites
    assert await b.get(p + "k") == b"v2"
    await asyncio.sleep(0.3)
    assert await b.get(p + "k") is None


async def test_the_lock_is_released_only_by_its_holder(backend: tuple[CacheBackend, str]) -> None:
    b, p = backend
    lock = p + "k:lock"
    assert await b.acquire(lock, "mine", 5)
    assert not await b.acquire(lock, "yours", 5)
    await b.release(lock, "yours")  # not theirs to release
    assert not await b.acquire(lock, "yours", 5)
    await b.release(lock, "mine")
    assert await b.acquire(lock, "yours", 5)


async def test_a_dead_holder_blocks_no_one_past_the_lock_ttl(backend: tuple[CacheBackend, str]) -> None:
    b, p = backend
    lock = p + "k:lock"
    assert await b.acquire(lock, "dies", 0.3)  # and never releases
    started = time.monotonic()
    assert await b.wait(p + "k", lock, 5) is None  # the lock expired: wait no more
    assert 0.2 < time.monotonic() - started < 1.5
    assert await b.acquire(lock, "next", 5)
    await b.release(lock, "dies")  # a late release by the dead holder's token changes nothing
    assert not await b.acquire(lock, "third", 5)


async def test_waiters_get_the_entry_or_the_release_or_time_out(backend: tuple[CacheBackend, str]) -> None:
    b, p = backend
    key, lock = p + "k", p + "k:lock"
    assert await b.acquire(lock, "holder", 5)

    async def holder() -> None:
        await asyncio.sleep(0.1)
        await b.set(key, b"answer", 5)
        await b.release(lock, "holder")

    waiters = [asyncio.create_task(b.wait(key, lock, 3)) for _ in range(5)]
    await holder()
    assert await asyncio.gather(*waiters) == [b"answer"] * 5

    key2, lock2 = p + "k2", p + "k2:lock"
    assert await b.acquire(lock2, "holder", 5)
    waiter = asyncio.create_task(b.wait(key2, lock2, 3))
    await asyncio.sleep(0.05)
    await b.release(lock2, "holder")  # released without storing (an answer that may not be cached)
    assert await asyncio.wait_for(waiter, 1) is None

    assert await b.acquire(p + "k3:lock", "holder", 5)
    started = time.monotonic()
    assert await b.wait(p + "k3", p + "k3:lock", 0.2) is None  # bounded
    assert 0.15 < time.monotonic() - started < 1.0


async def test_lookup_gives_the_entry_or_else_the_lock_in_one_step(backend: tuple[CacheBackend, str]) -> None:
    b, p = backend
    key, lock = p + "k", p + "k:lock"
    assert await b.lookup(key, lock, "first", 5) == (None, True)  # a miss: the lock is ours
    assert await b.lookup(key, lock, "second", 5) == (None, False)  # held by someone else
    await b.conclude(key, b"answer", 5, lock, "first")  # stored, then released
    assert await b.get(key) == b"answer"
    assert await b.acquire(lock, "x", 5)  # the lock went with the store
    await b.release(lock, "x")
    assert await b.lookup(key, lock, "third", 5) == (b"answer", False)  # a hit takes no lock
    assert await b.acquire(lock, "fourth", 5)  # ...so it is free


async def test_a_lookup_run_twice_still_holds_its_lock(backend: tuple[CacheBackend, str]) -> None:
    """Its round trip sent again after a lost connection, when Redis had run it: the lock it took is its own,
    not someone else's to wait for."""
    b, p = backend
    key, lock = p + "k", p + "k:lock"
    assert await b.lookup(key, lock, "token", 5) == (None, True)
    assert await b.lookup(key, lock, "token", 5) == (None, True)
    assert await b.lookup(key, lock, "another", 5) == (None, False)


async def test_conclude_stores_and_releases_only_its_own_lock(backend: tuple[CacheBackend, str]) -> None:
    b, p = backend
    key, lock = p + "k", p + "k:lock"
    assert await b.acquire(lock, "theirs", 5)
    await b.conclude(key, None, 5, lock, "mine")  # nothing to store, and not our lock
    assert await b.get(key) is None and not await b.acquire(lock, "other", 5)
    await b.conclude(key, b"v", 0.2, lock, "theirs")
    assert await b.get(key) == b"v" and await b.acquire(lock, "other", 5)
    await asyncio.sleep(0.3)
    assert await b.get(key) is None  # with its TTL


async def test_memory_backend_is_an_lru_bounded_by_entries_and_bytes() -> None:
    b = MemoryBackend(max_entries=3, max_bytes=100)
    for k in "abc":
        await b.set(k, b"x" * 10, 60)
    assert await b.get("a") == b"x" * 10  # a is now the most recent
    await b.set("d", b"x" * 10, 60)
    assert await b.get("b") is None and await b.get("a") is not None
    await b.set("e", b"y" * 90, 60)  # 100 bytes allowed: the oldest go
    assert b.stats()["bytes"] <= 100
    assert await b.get("e") == b"y" * 90
    await b.set("huge", b"z" * 101, 60)  # larger than the whole cache: not kept
    assert await b.get("huge") is None
    assert b.stats()["evictions"] >= 3


# --- ResponseCache on both backends --------------------------------------------------------------


def decision(ttl_s: int = 60, namespace: str | None = None, store: bool = True) -> Route:
    d = RouteDecision(
        model="demo-small", pool="small", rule="default", requested_model="auto", fallbacks=(), max_tokens_cap=None,
        max_tokens=None, cache=CachePolicy(store=store, ttl_s=ttl_s, namespace=namespace), reference_model=None,
        expected_cost=None, reference_cost=None, currency=None, policy_hash="h", trace=(),
    )
    return Route((), "default", d)


REQUEST = parse_body(b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}',
                     ChatFields)


def outcome(tenant: str = "default") -> Outcome:
    o = Outcome("rid", "demo-small", time.perf_counter())
    o.tenant = tenant
    return o


async def begin(cache: ResponseCache, o: Outcome, route: Route | None = None,
                headers: dict[str, str] | None = None) -> Ticket:
    o.steps = (Step("cache store", cache.store),)  # what `finish` runs: the cache's step alone
    return await cache.begin(headers or {}, route or decision(), REQUEST.data, REQUEST.fields, "chat", o)


async def answer(ticket: Ticket, o: Outcome, body: bytes = BODY, model: str = "demo-small") -> None:
    """What `_forward` does when the worker's whole answer is in."""
    o.model, o.status, o.completed = model, 200, True
    ticket.answer(body)
    finish(o)


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, redis_sync: sync_redis.Redis) -> AsyncIterator[ResponseCache]:
    prefix = unique_prefix("service")
    config = CacheConfig(key_prefix=prefix, lock_ttl_s=5, wait_s=3, max_entry_bytes=100_000)
    if request.param == "memory":
        c = ResponseCache(MemoryBackend(100, 1_000_000), config)
        yield c
        await c.aclose()
        return
    client = Redis.from_url(redis_url(), socket_timeout=1.0, socket_connect_timeout=1.0)
    c = ResponseCache(RedisBackend(client), config)
    try:
        yield c
    finally:
        await c.aclose()
        await client.aclose()
        delete_prefix(redis_sync, prefix)


async def test_miss_store_hit(cache: ResponseCache) -> None:
    o = outcome()
    t = await begin(cache, o)
    assert t.status == "miss" and t.token is not None and t.entry is None
    await answer(t, o)
    await cache.aclose()
    o2 = outcome()
    hit = await begin(cache, o2)
    assert hit.status == "hit" and hit.entry is not None and hit.entry.body == BODY
    response = cache.respond(hit, REQUEST.fields, o2, {"x-request-id": "rid"})
    assert response.content == BODY and response.headers["x-gateway-cache"] == "hit"
    assert o2.cache_hit and o2.usage is not None and o2.usage.completion_tokens == 12 and o2.replica is None
    assert cache.counts["hits"] == 1 and cache.counts["misses"] == 1 and cache.counts["stores"] == 1


async def test_tenants_never_see_each_others_entries(cache: ResponseCache) -> None:
    o = outcome("acme")
    t = await begin(cache, o)
    await answer(t, o)
    await cache.aclose()
    assert (await begin(cache, outcome("acme"))).status == "hit"
    other = outcome("globex")
    assert (await begin(cache, other)).status == "miss"
    # ... unless the policy shares a namespace
    shared = decision(namespace="support")
    o = outcome("acme")
    t = await begin(cache, o, shared)
    assert t.status == "miss"
    await answer(t, o)
    await cache.aclose()
    assert (await begin(cache, outcome("globex"), shared)).status == "hit"


async def test_concurrent_identical_misses_go_upstream_once(cache: ResponseCache) -> None:
    upstream = 0

    async def call() -> str:
        nonlocal upstream
        o = outcome()
        t = await begin(cache, o)
        if t.entry is None:
            upstream += 1
            await asyncio.sleep(0.2)  # the worker generating
            await answer(t, o)
        return t.status

    statuses = await asyncio.gather(*(call() for _ in range(10)))
    assert upstream == 1
    assert sorted(statuses) == ["hit"] * 9 + ["miss"]
    assert cache.counts["waits"] == 9


async def test_waiters_time_out_into_a_normal_call(cache: ResponseCache) -> None:
    cache.config = CacheConfig(key_prefix=cache.config.key_prefix, lock_ttl_s=5, wait_s=0.2)
    holder = await begin(cache, outcome())
    assert holder.token is not None  # and never answers
    started = time.monotonic()
    o = outcome()
    waiter = await begin(cache, o)
    assert waiter.status == "miss" and waiter.token is None and waiter.store
    assert 0.15 < time.monotonic() - started < 1.5
    await answer(waiter, o)  # it went upstream itself and stores what it got
    await cache.aclose()
    assert (await begin(cache, outcome())).status == "hit"


async def test_a_failed_call_stores_nothing_and_releases_the_lock(cache: ResponseCache) -> None:
    o = outcome()
    t = await begin(cache, o)
    assert t.token is not None
    o.failure, o.status = "timeout", 504
    finish(o)
    await cache.aclose()
    o2 = outcome()
    t2 = await begin(cache, o2)  # not waiting on a lock nobody holds
    assert t2.status == "miss" and t2.token is not None
    await answer(t2, o2, model="demo-large")  # a fallback model answered: not what the key is for
    await cache.aclose()
    assert (await begin(cache, outcome())).status == "miss"


async def test_headers_policy_and_size_decide(cache: ResponseCache) -> None:
    assert (await begin(cache, outcome(), decision(store=False))).status == "bypass"
    assert (await begin(cache, outcome(), Route((), "direct", None))).status == "bypass"
    assert (await begin(cache, outcome(), headers={"x-gateway-cache": "no-store"})).status == "bypass"
    o = outcome()
    t = await begin(cache, o, headers={"x-gateway-cache": "REFRESH"})
    assert t.status == "miss" and t.token is None and t.store
    await answer(t, o)
    await cache.aclose()
    assert (await begin(cache, outcome())).status == "hit"
    assert (await begin(cache, outcome(), headers={"x-gateway-cache": "refresh"})).status == "miss"
    from router.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as info:
        await begin(cache, outcome(), headers={"x-gateway-cache": "please"})
    assert info.value.param == "x-gateway-cache"
    small = ResponseCache(cache.backend, CacheConfig(key_prefix=cache.config.key_prefix + "small:",
                                                     max_entry_bytes=200))
    o = outcome()
    t = await begin(small, o)
    await answer(t, o)
    await small.aclose()
    assert small.counts["not_stored"] == 1 and (await begin(small, outcome())).status == "miss"


async def test_redis_down_is_a_bypass_counted_and_reported() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    cache = ResponseCache(RedisBackend(dead), CacheConfig(key_prefix="gwtest:dead:", retry_s=0.3))
    try:
        started = time.monotonic()
        t = await begin(cache, outcome())
        assert t.status == "bypass" and time.monotonic() - started < 0.5
        status: dict[str, Any] = cache.status()
        assert status["backend"] == "redis" and status["ok"] is False and status["errors"] == 1
        assert "ConnectionError" in status["last_error"]
        assert (await begin(cache, outcome())).status == "bypass"
        assert cache.status()["errors"] == 1  # within retry_s the backend is not even asked
        await asyncio.sleep(0.35)
        assert (await begin(cache, outcome())).status == "bypass"
        assert cache.status()["errors"] == 2
        await cache.check()  # /readyz: still down
        assert cache.status()["ok"] is False
    finally:
        await dead.aclose()
    assert lock_key("k") == "k:lock"


async def test_the_cache_is_used_again_as_soon_as_redis_answers(redis_sync: sync_redis.Redis) -> None:
    """After an error the cache leaves Redis alone for `retry_s`, unless Redis answers meanwhile on the
    connection the limits share: their first admission once Redis is back puts the cache back to work."""
    prefix = unique_prefix("back")
    with FaultProxy.before(redis_url()) as proxy:
        client = redis_client(proxy.through(redis_url()), 1.0, 8)
        batcher = RedisBatcher(client)
        cache = ResponseCache(RedisBackend(client, batcher), CacheConfig(key_prefix=prefix, retry_s=60))
        try:
            proxy.set_mode("refuse")
            assert (await begin(cache, outcome())).status == "bypass"
            assert cache.status()["errors"] == 1
            proxy.set_mode("pass")
            assert (await begin(cache, outcome())).status == "bypass"  # left alone: nothing has answered since
            assert cache.status()["errors"] == 1
            await batcher.execute("PING")  # what a limited call's admission does
            o = outcome()
            t = await begin(cache, o)
            assert t.status == "miss"
            await answer(t, o)
            await cache.aclose()
            assert (await begin(cache, outcome())).status == "hit" and cache.status()["ok"] is True
        finally:
            await cache.aclose()
            await batcher.aclose()
            await client.aclose()
            delete_prefix(redis_sync, prefix)


async def test_a_lookup_abandoned_before_its_answer_leaves_no_lock(cache: ResponseCache) -> None:
    """The request path issues the lookup, then awaits the rate limits; refused there (429) or left by its
    client, it abandons the lookup: a lock the lookup took is released, so the same question asked next
    goes to the worker at once instead of waiting for the lock to expire."""
    t = cache.ask({}, decision(), REQUEST.data, "chat", outcome())
    assert t.lookup is not None
    cache.abandon(t)
    await cache.aclose()
    t2 = await begin(cache, outcome())
    assert t2.status == "miss" and t2.token is not None
    assert cache.counts["waits"] == 0
