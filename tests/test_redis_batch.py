"""Auto-pipelining (`gateway/redis_batch.py`) against the real Redis: concurrent commands share round
trips, each caller gets its own answer or error, lost scripts are reloaded, a dead Redis fails every
caller promptly, a cancelled caller leaves the others alone.

When the batcher is idle a command goes out alone at once; the commands issued meanwhile queue and go
out together. So N concurrent callers from idle take two round trips: the first alone, the rest batched."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.cache.backends import RedisBackend as CacheRedisBackend
from gateway.limits.backend import OK, RateCheck
from gateway.limits.redis_backend import RedisBackend as LimitsRedisBackend
from gateway.redis_batch import LuaScript, RedisBatcher
from gateway.redis_client import redis_client
from tests.fault_proxy import FaultProxy
from tests.limits_support import delete_prefix, unique_prefix
from tests.services import redis_url
from workers.launcher import free_port


def fresh_script(body: str) -> LuaScript:
    """A script Redis has never seen (its text is unique), so its first EVALSHA meets NOSCRIPT."""
    return LuaScript.of(f"-- {uuid.uuid4().hex}\n{body}")


ECHO = "return ARGV[1]"


@pytest.fixture
def prefix() -> Iterator[str]:
    p = unique_prefix()
    yield p
    delete_prefix(p)


async def test_one_caller_at_a_time_goes_alone(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis)
    for i in range(5):
        assert await batcher.execute("INCR", f"{prefix}n") == i + 1
    assert batcher.round_trips == batcher.commands == 5


async def test_concurrent_calls_share_round_trips_and_get_their_own_answers(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis)
    echo = fresh_script(ECHO)
    await batcher.evalsha(echo, (), ("warm",))  # loads it (NOSCRIPT, then SCRIPT LOAD + the call)
    before = batcher.round_trips
    sets = [batcher.execute("SET", f"{prefix}{i}", f"v{i}") for i in range(20)]
    echoes = [batcher.evalsha(echo, (f"{prefix}x",), (f"e{i}",)) for i in range(20)]
    assert await asyncio.gather(*sets, *echoes) == [True] * 20 + [f"e{i}".encode() for i in range(20)]
    assert batcher.round_trips == before + 2  # the first alone, the 39 others in one pipeline
    gets = await asyncio.gather(*(batcher.execute("GET", f"{prefix}{i}") for i in range(20)))
    assert gets == [f"v{i}".encode() for i in range(20)]
    assert batcher.round_trips == before + 4


async def test_batches_grow_while_the_flushes_are_in_flight(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis, max_flushes=1)
    slow = asyncio.ensure_future(batcher.execute("BLPOP", f"{prefix}empty", 0.1))  # the only round trip, 100 ms
    await asyncio.sleep(0.02)
    assert batcher.round_trips == 1
    rest = [asyncio.ensure_future(batcher.execute("INCR", f"{prefix}n")) for _ in range(30)]
    await asyncio.sleep(0.02)
    assert batcher.round_trips == 1  # they wait for the round trip in flight ...
    assert await slow is None
    assert sorted(await asyncio.gather(*rest)) == list(range(1, 31))
    assert batcher.round_trips == 2  # ... then go out together


async def test_a_failing_command_fails_only_its_caller(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis)
    boom = fresh_script("return redis.error_reply('boom')")
    echo = fresh_script(ECHO)
    await aredis.set(f"{prefix}str", "x")
    results = await asyncio.gather(
        batcher.execute("PING"),  # alone; the others share a pipeline
        batcher.execute("SET", f"{prefix}a", "1"),
        batcher.execute("LPUSH", f"{prefix}str", "y"),  # WRONGTYPE
        batcher.evalsha(boom, (), ()),
        batcher.evalsha(echo, (), ("ok",)),
        batcher.execute("GET", f"{prefix}a"),
        return_exceptions=True,
    )
    assert results[0] is True and results[1] is True and results[4] == b"ok" and results[5] == b"1"
    assert isinstance(results[2], ResponseError) and "WRONGTYPE" in str(results[2])
    assert isinstance(results[3], ResponseError) and "boom" in str(results[3])
    with pytest.raises(ResponseError, match="WRONGTYPE"):  # and alone
        await batcher.execute("LPUSH", f"{prefix}str", "y")


async def test_scripts_lost_by_redis_are_loaded_again(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis, max_flushes=1)
    echo = fresh_script(ECHO)
    incr = fresh_script("return redis.call('incr', KEYS[1])")
    assert await batcher.evalsha(echo, (), ("first",)) == b"first"
    assert batcher.round_trips == 2  # NOSCRIPT, then SCRIPT LOAD + the call again
    assert await batcher.evalsha(echo, (), ("second",)) == b"second"
    assert batcher.round_trips == 3
    await aredis.script_flush()  # as after a Redis restart
    before = batcher.round_trips
    results = await asyncio.gather(
        batcher.execute("BLPOP", f"{prefix}empty", 0.05),  # alone: the others queue behind it, in one batch
        *(batcher.evalsha(echo, (), (f"e{i}",)) for i in range(5)),
        *(batcher.evalsha(incr, (f"{prefix}n",), ()) for _ in range(5)),
        batcher.execute("PING"),
    )
    assert results[1:6] == [f"e{i}".encode() for i in range(5)]
    assert sorted(results[6:11]) == [1, 2, 3, 4, 5]  # each call ran exactly once
    assert results[11] is True
    assert batcher.round_trips == before + 3  # BLPOP; the batch; both scripts loaded and the ten re-sent
    assert (await aredis.script_exists(echo.sha, incr.sha)) == [True, True]


async def test_an_unreachable_redis_fails_every_caller_promptly() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    batcher = RedisBatcher(dead)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(batcher.execute("GET", f"k{i}") for i in range(10)),
                                       batcher.evalsha(fresh_script(ECHO), (), ("x",)), return_exceptions=True)
        assert time.monotonic() - started < 0.5
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        assert batcher.round_trips == 2  # the first alone, the ten others together
        with pytest.raises(RedisConnectionError):  # and the next call tries again
            await batcher.execute("PING")
    finally:
        await dead.aclose()


async def test_a_cancelled_caller_does_not_break_its_batch(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis)

    async def call(*args: str | float) -> Any:  # a request awaiting its command
        return await batcher.execute(*args)

    alone = asyncio.create_task(call("BLPOP", f"{prefix}empty", 0.1))
    slow = asyncio.create_task(call("BLPOP", f"{prefix}empty", 0.1))  # holds up its batch for 100 ms
    calls = [asyncio.create_task(call("INCR", f"{prefix}n")) for _ in range(5)]
    await asyncio.sleep(0.02)
    assert batcher.round_trips == 2  # the batch is in flight
    slow.cancel()
    calls[2].cancel()
    results: list[Any] = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert sorted(r for i, r in enumerate(results) if i != 2) == [1, 2, 4, 5]  # its INCR ran all the same
    assert await alone is None
    assert await batcher.execute("INCR", f"{prefix}n") == 6  # the batcher goes on

    # A caller cancelled before its batch goes out: its command is not sent at all.
    first = asyncio.create_task(call("INCR", f"{prefix}n"))  # alone
    skipped = asyncio.create_task(call("INCR", f"{prefix}n"))
    kept = asyncio.create_task(call("INCR", f"{prefix}n"))
    sent = batcher.commands
    await asyncio.sleep(0)  # the three are issued; the first is in flight, the others queued
    skipped.cancel()
    assert await first == 7 and await kept == 8
    assert batcher.commands == sent + 2
    assert await aredis.get(f"{prefix}n") == b"8"


async def test_the_cache_and_the_limits_share_round_trips(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis)
    cache = CacheRedisBackend(aredis, batcher)
    limits = LimitsRedisBackend(aredis, prefix + "limits:", batcher)
    await cache.lookup(f"{prefix}warm", f"{prefix}warm:lock", "t", 1)  # the scripts loaded
    await limits.seed("warm", 0, 1000)
    before = batcher.round_trips
    rate = RateCheck("r:key", "key", "requests", 1000, 1)
    looked, admitted = await asyncio.gather(
        asyncio.gather(*(cache.lookup(f"{prefix}k{i}", f"{prefix}k{i}:lock", "t", 5) for i in range(16))),
        asyncio.gather(*(limits.admit([rate], [], f"m{i}", 60_000) for i in range(16))),
    )
    assert looked == [(None, True)] * 16  # each took its own lock
    assert [a.status for a in admitted] == [OK] * 16
    assert batcher.round_trips == before + 2  # the first alone, the 31 others in one pipeline


async def test_a_lookup_issued_before_an_admission_shares_its_round_trip(aredis: Redis, prefix: str) -> None:
    """What the request path does: the cache's lookup is issued, the limits' admission awaited, then the
    lookup: one round trip for both."""
    batcher = RedisBatcher(aredis)
    cache = CacheRedisBackend(aredis, batcher)
    limits = LimitsRedisBackend(aredis, prefix + "limits:", batcher)
    await cache.lookup(f"{prefix}warm", f"{prefix}warm:lock", "t", 1)  # the scripts loaded
    await limits.seed("warm", 0, 1000)
    rate = RateCheck("r:key", "key", "requests", 1000, 1)
    for i in range(3):
        before = batcher.round_trips
        lookup = cache.lookup(f"{prefix}k{i}", f"{prefix}k{i}:lock", "t", 5)
        admitted = await limits.admit([rate], [], f"m{i}", 60_000)
        assert admitted.status == OK and await lookup == (None, True)
        assert batcher.round_trips == before + 1


async def test_later_writes_ride_along_with_the_next_round_trip(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis, later_s=5.0)  # no timer within this test: only company sends them
    incr = fresh_script("return redis.call('incr', KEYS[1])")
    await batcher.evalsha(incr, (f"{prefix}warm",), ())
    before = batcher.round_trips
    later = [batcher.submit(incr, (f"{prefix}n",), (), later=True) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert batcher.round_trips == before and await aredis.get(f"{prefix}n") is None  # waiting for company
    assert await batcher.execute("GET", f"{prefix}n") is None  # goes first, the writes after it
    assert sorted(await asyncio.gather(*later)) == [1, 2, 3]
    assert batcher.round_trips == before + 1


async def test_later_writes_go_alone_after_later_s(aredis: Redis, prefix: str) -> None:
    batcher = RedisBatcher(aredis, later_s=0.02)
    incr = fresh_script("return redis.call('incr', KEYS[1])")
    await batcher.evalsha(incr, (f"{prefix}warm",), ())
    before = batcher.round_trips
    started = time.monotonic()
    assert await batcher.submit(incr, (f"{prefix}n",), (), later=True) == 1
    assert 0.015 < time.monotonic() - started < 0.5
    assert batcher.round_trips == before + 1


async def test_a_round_trip_past_the_timeout_fails_its_callers_and_the_next_one_works(prefix: str) -> None:
    """One timeout per round trip (the client's socket timeout); the connection it left half-read is
    dropped, never reused, and scripts are not retried behind the caller's back."""
    client = Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=0.1)
    batcher = RedisBatcher(client)
    try:
        with pytest.raises(RedisTimeoutError):
            await batcher.execute("BLPOP", f"{prefix}empty", 1)  # Redis answers after 1 s
        assert await batcher.execute("INCR", f"{prefix}n") == 1
        assert batcher.round_trips == 2
    finally:
        await batcher.aclose()
        await client.aclose()


# --- Redis going away, hanging and coming back (through tests/fault_proxy.py) ---------------------------


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[FaultProxy, RedisBatcher]]:
    """A batcher whose Redis is behind a fault proxy, its client made as the gateway makes it (1 s bound)."""
    with FaultProxy.before(redis_url()) as proxy:
        client = redis_client(proxy.through(redis_url()), 1.0, 8)
        batcher = RedisBatcher(client)
        try:
            yield proxy, batcher
        finally:
            await batcher.aclose()
            await client.aclose()


async def test_idle_connections_closed_while_redis_was_away_are_not_used(
        proxied: tuple[FaultProxy, RedisBatcher], prefix: str) -> None:
    proxy, batcher = proxied
    await asyncio.gather(*(batcher.execute("PING") for _ in range(20)))  # two round trips at once
    assert proxy.accepted == 2  # two idle connections
    proxy.set_mode("refuse")  # Redis goes away: every open connection is dropped
    proxy.set_mode("pass")  # and comes back
    await asyncio.sleep(0.05)  # the event loop sees them closed
    incr = fresh_script("return redis.call('INCR', KEYS[1])")  # not safe to repeat: never retried
    assert await batcher.evalsha(incr, (f"{prefix}n",), ()) == 1  # the very next call: a new connection
    assert (batcher.dropped, batcher.retries, proxy.accepted) == (2, 0, 3)


async def test_a_round_trip_lost_with_its_connection_is_sent_again_once_if_safe(
        proxied: tuple[FaultProxy, RedisBatcher], prefix: str) -> None:
    """The connection dies with the commands written and no answer read (here the proxy held them, then
    dropped the connection): the repeatable ones go again on a new connection, the others fail."""
    proxy, batcher = proxied
    await batcher.execute("PING")  # one idle connection
    proxy.set_mode("hang")
    echo = LuaScript.of(f"-- {uuid.uuid4().hex}\n{ECHO}", repeatable=True)
    incr = fresh_script("return redis.call('INCR', KEYS[1])")
    calls = asyncio.gather(batcher.submit(echo, (), ("again",)), batcher.submit(incr, (f"{prefix}n",), ()),
                           return_exceptions=True)  # one round trip, on the idle connection
    await asyncio.sleep(0.2)  # written, held by the proxy
    assert batcher.round_trips == 2
    proxy.set_mode("refuse")  # the connection is dropped ...
    proxy.set_mode("pass")  # ... and Redis is there again
    answers = await calls
    assert answers[0] == b"again"
    assert isinstance(answers[1], RedisConnectionError)
    assert batcher.retries == 1
    assert await batcher.execute("GET", f"{prefix}n") is None  # the INCR never ran


async def test_a_hung_redis_holds_no_caller_much_past_the_timeout(proxied: tuple[FaultProxy, RedisBatcher]) -> None:
    """Redis accepts and never answers: each round trip ends at the 1 s bound, and the callers queued behind
    the round trips in flight fail with them rather than wait for a round trip of their own."""
    proxy, batcher = proxied
    await batcher.execute("PING")
    proxy.set_mode("hang")

    async def waited(*command: str) -> float:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await batcher.execute(*command)
        return time.monotonic() - started

    first = asyncio.ensure_future(waited("GET", "a"))  # alone
    await asyncio.sleep(0.2)
    second = asyncio.ensure_future(waited("GET", "b"))  # the second round trip in flight: as many as there may be
    await asyncio.sleep(0.2)
    queued = [asyncio.ensure_future(waited("GET", f"c{i}")) for i in range(5)]
    waits = await asyncio.gather(first, second, *queued)
    assert max(waits) < 1.5, waits  # a second round trip of their own would have taken them to 1.6 s
    proxy.set_mode("pass")
    assert await batcher.execute("PING") is True
