"""Replica choice (load, round-robin, prefix affinity, circuit breaker) and admission control."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from router.errors import PoolOverloaded
from workers.pool import Affinity, Gate, Pool, Replica

pytestmark = pytest.mark.pure


def pool(n: int, **kw: object) -> Pool:
    return Pool("p", "m", [Replica(f"http://r{i}", "p", healthy=True) for i in range(n)], **kw)  # type: ignore[arg-type]


def test_least_load_uses_engine_gauges_and_own_count() -> None:
    p = pool(3)
    a, b, c = p.replicas
    a.in_flight, b.running, b.waiting, c.kv_cache = 2, 0, 3, 0.9
    # loads: a = 2, b = 3 + 3 = 6, c = 1.8
    assert p.choose() is c
    c.in_flight = 3
    assert p.choose() is a


def test_equal_loads_spread_and_round_robin_rotates() -> None:
    p = pool(3)
    assert Counter(p.choose().url for _ in range(30)) == {"http://r0": 10, "http://r1": 10, "http://r2": 10}
    rr = pool(3, balance="round_robin")
    rr.replicas[0].waiting = 100  # round-robin ignores load
    assert [rr.choose().url for _ in range(3)] == ["http://r0", "http://r1", "http://r2"]


def test_unhealthy_and_excluded_replicas_are_skipped() -> None:
    p = pool(3)
    p.replicas[0].healthy = False
    assert {p.choose(exclude=[p.replicas[1]]).url for _ in range(5)} == {"http://r2"}
    assert p.choose(exclude=p.replicas[1:]) is None


def test_prefix_affinity_sticks_until_overloaded() -> None:
    p = pool(4, affinity=Affinity(prefix_chars=16, max_extra_load=2))
    prefix = b"You are a helpful assistant. Answer briefly."
    home = p.choose(prefix=prefix)
    assert all(p.choose(prefix=prefix) is home for _ in range(10))
    # Another prompt with the same first 16 bytes shares the home replica.
    assert p.choose(prefix=prefix[:16] + b" something else") is home
    others = {p.choose(prefix=f"prompt {i}".encode()).url for i in range(40)}
    assert len(others) > 1  # different prefixes spread
    home.in_flight = 3  # more than 2 above the least loaded: affinity yields to load
    assert p.choose(prefix=prefix) is not home
    home.in_flight = 2
    assert p.choose(prefix=prefix) is home


def test_open_circuit_takes_a_replica_out_then_one_probe() -> None:
    p = pool(2)
    bad, good = p.replicas
    now = time.monotonic()
    for _ in range(3):
        bad.breaker.failed(now)
    assert {p.choose().url for _ in range(6)} == {good.url}
    good.healthy = False
    assert p.choose() is None  # still in its time out
    bad.breaker.open_until = time.monotonic() - 0.01
    assert p.choose() is bad  # half-open: one probe
    assert p.choose() is None
    bad.breaker.succeeded()
    assert p.choose() is bad
    good.healthy = True
    for _ in range(3):
        bad.breaker.failed(now)
    bad.breaker.open_until = time.monotonic() - 0.01
    # The probe goes out even while another replica could serve, and only once.
    assert p.choose() is bad
    assert {p.choose().url for _ in range(4)} == {good.url}
    bad.breaker.abandoned()  # the probe's client left before a verdict: the next call probes
    assert p.choose() is bad


async def test_gate_bounds_in_flight_and_queue() -> None:
    gate = Gate("p", limit=2, max_queue=1, max_wait_s=0.2)
    await gate.enter()
    await gate.enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0.01)
    with pytest.raises(PoolOverloaded) as info:  # queue full: refused at once
        await gate.enter()
    assert info.value.status == 503 and info.value.headers["retry-after"] == "1"
    gate.leave()  # the slot passes to the waiter
    await asyncio.wait_for(waiter, 1)
    assert gate.active == 2
    started = time.monotonic()
    with pytest.raises(PoolOverloaded, match=r"waited 0\.2s"):
        await gate.enter()
    assert 0.15 < time.monotonic() - started < 1.0
    gate.leave()
    gate.leave()
    assert gate.active == 0
    await gate.enter()
    assert gate.active == 1


async def test_gate_waiter_that_goes_away_does_not_leak_a_slot() -> None:
    gate = Gate("p", limit=1, max_queue=5, max_wait_s=5)
    await gate.enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.leave()
    assert gate.active == 0
