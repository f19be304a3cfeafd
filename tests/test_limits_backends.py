"""The rate-limit and budget counters, one suite for both backends: in process and in a real Redis
(gateway/limits/limits.lua). Same calls, same answers."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from gateway.limits.backend import (
    OK,
    OVER_BUDGET,
    RATE_LIMITED,
    SEED,
    TOO_LARGE,
    Backend,
    BudgetCheck,
    BudgetSettle,
    MemoryBackend,
    RateCheck,
    RateSettle,
)
from gateway.limits.redis_backend import RedisBackend
from tests.limits_support import delete_prefix, unique_prefix

HOUR_MS = 3_600_000


def rpm(limit: int, key: str = "r:k:a:req", cost: int = 1) -> RateCheck:
    return RateCheck(key, "key", "requests", limit, cost)


def tpm(limit: int, cost: int, key: str = "r:k:a:tok") -> RateCheck:
    return RateCheck(key, "key", "tokens", limit, cost)


def budget(limit: int, amount: int, key: str = "b:k:a:m2026-11") -> BudgetCheck:
    return BudgetCheck(key, "key", limit, amount, HOUR_MS)


async def test_requests_per_minute_allow_a_burst_then_refuse_with_the_wait(backend: Backend) -> None:
    remaining = []
    for _ in range(5):
        r = await backend.admit([rpm(5)], [], "m", HOUR_MS)
        assert r.status == OK
        remaining.append(r.rates[0].remaining)
    assert remaining == [4, 3, 2, 1, 0]
    assert 59_000 <= r.rates[0].reset_ms <= 60_000  # a full bucket again in a minute
    refused = await backend.admit([rpm(5)], [], "m", HOUR_MS)
    assert refused.status == RATE_LIMITED and refused.index == 0
    assert 11_000 <= refused.retry_ms <= 12_000  # one request refills every 60/5 = 12 s
    # Another key has its own counter.
    assert (await backend.admit([rpm(5, "r:k:b:req")], [], "m", HOUR_MS)).status == OK


async def test_the_bucket_refills_one_interval_at_a_time(backend: Backend) -> None:
    check = rpm(120)  # one request every 500 ms (the burst below takes far less)
    for _ in range(120):
        assert (await backend.admit([check], [], "m", HOUR_MS)).status == OK
    refused = await backend.admit([check], [], "m", HOUR_MS)
    assert refused.status == RATE_LIMITED and 0 < refused.retry_ms <= 500
    await asyncio.sleep(refused.retry_ms / 1000 + 0.01)
    assert (await backend.admit([check], [], "m", HOUR_MS)).status == OK
    assert (await backend.admit([check], [], "m", HOUR_MS)).status == RATE_LIMITED


async def test_tokens_take_the_estimate_and_settle_to_the_real_count(backend: Backend) -> None:
    ok = await backend.admit([tpm(100, 80)], [], "m", HOUR_MS)
    assert ok.status == OK and ok.rates[0].remaining == 20
    assert (await backend.admit([tpm(100, 30)], [], "m", HOUR_MS)).status == RATE_LIMITED
    await backend.settle([RateSettle("r:k:a:tok", 100, 20 - 80)], [])  # it used 20 tokens: 60 back
    again = await backend.admit([tpm(100, 30)], [], "m", HOUR_MS)
    assert again.status == OK and again.rates[0].remaining == 50
    await backend.settle([RateSettle("r:k:a:tok", 100, 45)], [])  # this one used 75: 45 more
    assert (await backend.admit([tpm(100, 10)], [], "m", HOUR_MS)).status == RATE_LIMITED


async def test_a_call_larger_than_the_limit_is_refused_for_good(backend: Backend) -> None:
    r = await backend.admit([rpm(10), tpm(100, 101)], [], "m", HOUR_MS)
    assert r.status == TOO_LARGE and r.index == 1


async def test_all_or_nothing_a_refusal_takes_nothing(backend: Backend) -> None:
    await backend.seed("b:k:a:m2026-11", 0, HOUR_MS)
    refused = await backend.admit([rpm(3)], [budget(100, 101)], "m1", HOUR_MS)
    assert refused.status == OVER_BUDGET
    for expected in (2, 1, 0):  # the refused call took no request
        r = await backend.admit([rpm(3)], [budget(100, 1)], f"m2-{expected}", HOUR_MS)  # a call's own id
        assert r.status == OK and r.rates[0].remaining == expected
    assert await backend.read(["b:k:a:m2026-11"]) == [(0, 3)]
    # A rate refusal takes no budget either.
    assert (await backend.admit([rpm(3)], [budget(100, 1)], "m3", HOUR_MS)).status == RATE_LIMITED
    assert await backend.read(["b:k:a:m2026-11"]) == [(0, 3)]


async def test_budget_seed_reserve_settle_exactly(backend: Backend) -> None:
    key = "b:t:acme:red:m2026-11"
    check = BudgetCheck(key, "team", 200, 50, HOUR_MS)
    assert (await backend.admit([], [check], "a", HOUR_MS)).status == SEED
    assert await backend.read([key]) == [None]
    await backend.seed(key, 100, HOUR_MS)
    await backend.seed(key, 999, HOUR_MS)  # a second seed (another process) changes nothing
    assert (await backend.admit([], [check], "a", HOUR_MS)).status == OK
    assert await backend.read([key]) == [(100, 150)]
    over = await backend.admit([], [BudgetCheck(key, "team", 200, 60, HOUR_MS)], "b", HOUR_MS)
    assert over.status == OVER_BUDGET and over.committed == 150
    assert await backend.settle([], [BudgetSettle(key, "a", 50, 30, HOUR_MS)]) == [130]
    assert await backend.read([key]) == [(130, 130)]
    assert (await backend.admit([], [BudgetCheck(key, "team", 200, 60, HOUR_MS)], "b", HOUR_MS)).status == OK
    assert (await backend.admit([], [BudgetCheck(key, "team", 200, 10, HOUR_MS)], "c", HOUR_MS)).status == OK
    assert (await backend.admit([], [BudgetCheck(key, "team", 200, 1, HOUR_MS)], "d", HOUR_MS)).status == OVER_BUDGET
    # A call that costs more than it reserved: the budget shows it (spent past the limit is visible).
    assert await backend.settle([], [BudgetSettle(key, "b", 60, 75, HOUR_MS)]) == [205]
    assert await backend.read([key]) == [(205, 215)]


async def test_a_reservation_never_settled_is_released_after_its_ttl(backend: Backend) -> None:
    key = "b:k:a:m2026-11"
    await backend.seed(key, 0, HOUR_MS)
    assert (await backend.admit([], [budget(100, 100, key)], "lost", 500)).status == OK  # e.g. a process died
    assert (await backend.admit([], [budget(100, 1, key)], "x", 500)).status == OVER_BUDGET
    await asyncio.sleep(0.7)
    assert (await backend.admit([], [budget(100, 1, key)], "y", HOUR_MS)).status == OK
    assert await backend.read([key]) == [(0, 1)]
    # The late settlement of the released reservation counts its cost once.
    assert await backend.settle([], [BudgetSettle(key, "lost", 100, 40, HOUR_MS)]) == [40]
    assert await backend.read([key]) == [(40, 41)]


async def test_an_admission_run_twice_takes_its_budget_once(backend: Backend) -> None:
    """Its round trip sent again after a lost connection, when Redis had run it: same call id, nothing
    taken twice, the same answer."""
    key = "b:k:a:m2026-11"
    await backend.seed(key, 0, HOUR_MS)
    first = await backend.admit([rpm(10)], [budget(100, 30, key)], "call", HOUR_MS)
    again = await backend.admit([rpm(10)], [budget(100, 30, key)], "call", HOUR_MS)
    assert first.status == again.status == OK
    assert first.rates[0].remaining == again.rates[0].remaining == 9
    assert await backend.read([key]) == [(0, 30)]
    other = await backend.admit([rpm(10)], [budget(100, 30, key)], "other", HOUR_MS)  # another call takes its own
    assert other.status == OK and other.rates[0].remaining == 8
    assert await backend.read([key]) == [(0, 60)]


async def test_a_settlement_run_twice_settles_once(backend: Backend) -> None:
    key = "b:k:a:m2026-11"
    await backend.seed(key, 0, HOUR_MS)
    assert (await backend.admit([], [budget(100, 50, key)], "a", HOUR_MS)).status == OK
    for _ in range(2):
        assert await backend.settle([], [BudgetSettle(key, "a", 50, 30, HOUR_MS)]) == [30]
    assert await backend.read([key]) == [(30, 30)]
    # A reservation released after its ttl: its late settlement, run twice, counts its cost once.
    assert (await backend.admit([], [budget(100, 60, key)], "late", 300)).status == OK
    await asyncio.sleep(0.5)
    assert (await backend.admit([], [budget(100, 1, key)], "next", HOUR_MS)).status == OK  # releases `late`
    assert await backend.read([key]) == [(30, 31)]
    for _ in range(2):
        assert await backend.settle([], [BudgetSettle(key, "late", 60, 20, HOUR_MS)]) == [50]
    assert await backend.read([key]) == [(50, 51)]


async def test_concurrent_calls_never_commit_past_the_budget(backend: Backend) -> None:
    key = "b:k:a:m2026-11"
    await backend.seed(key, 0, HOUR_MS)
    results = await asyncio.gather(*(backend.admit([], [budget(100, 7, key)], f"m{i}", HOUR_MS)
                                     for i in range(200)))
    assert sum(r.status == OK for r in results) == 14  # 14 x 7 = 98 <= 100 < 15 x 7
    assert await backend.read([key]) == [(0, 98)]


async def test_amounts_beyond_a_double_are_compared_exactly(backend: Backend) -> None:
    key = "b:t:big:spender:total"
    limit = 9_000_000_000_000_000_000  # 900 million currency units in 10^-10 units (> 2^53)
    await backend.seed(key, limit - 5, 0)
    assert (await backend.admit([], [BudgetCheck(key, "team", limit, 5, 0)], "a", HOUR_MS)).status == OK
    assert (await backend.admit([], [BudgetCheck(key, "team", limit, 1, 0)], "b", HOUR_MS)).status == OVER_BUDGET
    assert await backend.read([key]) == [(limit - 5, limit)]


async def test_counters_expire_with_their_period(backend: Backend) -> None:
    key = "b:k:a:d2026-11-27"
    await backend.seed(key, 10, 500)  # a period that ends (plus its grace) in 0.5 s
    assert await backend.read([key]) == [(10, 10)]
    await asyncio.sleep(0.7)
    if isinstance(backend, MemoryBackend):
        backend._sweep_at = 0  # the sweep runs every 10 s; reads already skip what has expired
    assert await backend.read([key]) == [None]
    assert (await backend.admit([], [BudgetCheck(key, "key", 100, 1, 200)], "a", HOUR_MS)).status == SEED


async def test_the_hot_path_is_one_round_trip(aredis: Redis) -> None:
    """Every limit of a call (two rate counters, two tokens counters, two budgets) in one EVALSHA."""
    prefix = unique_prefix()
    backend = RedisBackend(aredis, prefix)
    try:
        for b in ("b:k:a:m", "b:t:x:y:m"):
            await backend.seed(b, 0, HOUR_MS)
        checks = [rpm(100), tpm(10_000, 50), rpm(1000, "r:t:x:y:req"), tpm(100_000, 50, "r:t:x:y:tok")]
        budgets = [budget(10**9, 5, "b:k:a:m"), BudgetCheck("b:t:x:y:m", "team", 10**9, 5, HOUR_MS)]
        await backend.admit(checks, budgets, "warm", HOUR_MS)  # loads the script
        before = (await aredis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        started = time.perf_counter()
        result = await backend.admit(checks, budgets, "one", HOUR_MS)
        elapsed = time.perf_counter() - started
        after = (await aredis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        assert result.status == OK and len(result.rates) == 4
        assert after - before == 1
        assert elapsed < 0.05
    finally:
        delete_prefix(prefix)
