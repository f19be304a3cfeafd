"""`Limits` (gateway/limits/service.py) without a running gateway: the estimate, the reservation settled
to exactly the recorded cost, the headers, the 429s, budgets started from what accounting recorded,
the soft threshold, and a client leaving mid-admission. On the in-process backend and on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from gateway.accounting import store as accounting_store
from gateway.accounting.prices import DEFAULT_PRICES_FILE, PriceCatalogue, current_token_rates, load_prices
from gateway.accounting.records import build_record
from gateway.auth.principal import Limits as PrincipalLimits
from gateway.auth.principal import Principal
from gateway.inference.usage import Usage
from gateway.limits.backend import Backend, MemoryBackend
from gateway.limits.periods import window
from gateway.limits.redis_backend import RedisBackend
from gateway.limits.service import Limits, duration, from_units, to_units
from gateway.outcome import Outcome, Step, finish
from gateway.routing import ActivePolicy, Route, route
from router.errors import BudgetExceeded, LimitsUnavailable, RateLimited
from router.policy import default_policy_dir, load_policy_set
from tests.pg_support import migrated_engine, record
from workers.pool import Pool, Pools, Replica

CATALOGUE = load_prices(DEFAULT_PRICES_FILE)
HELLO = [{"role": "user", "content": "Say hello."}]
SMALL = Pool("small", "demo-small", [Replica("http://127.0.0.1:1", "small", healthy=True)])
LARGE = Pool("large", "demo-large", [Replica("http://127.0.0.1:2", "large", healthy=True)])


async def started(backend: Backend, engine: Any = None, catalogue: PriceCatalogue = CATALOGUE,
                  **kwargs: Any) -> Limits:
    limits = Limits(backend, catalogue, engine, **kwargs)
    await limits.start()
    return limits


def principal(key: PrincipalLimits | None = None, team: PrincipalLimits | None = None) -> Principal:
    return Principal(tenant="acme", team="red", key_id="key_a", role="app",
                     key_limits=key or PrincipalLimits(), team_limits=team or PrincipalLimits())


def direct(model: str = "demo-small", pool: Pool = SMALL) -> Route:
    """A call routing did not classify (a model no catalogue lists): the gateway estimates it itself."""
    return Route(((model, pool),), "direct", None, None)


def routed(body: dict[str, Any]) -> Route:
    active = ActivePolicy(load_policy_set(default_policy_dir()), Pools([SMALL, LARGE]), time.time())
    return route(active, body, "chat", body.get("model", "auto"), {}, principal().caller,
                 current_token_rates(CATALOGUE, datetime.now(UTC)))


def outcome(model: str = "demo-small", limits: Limits | None = None,
            record: Callable[[Outcome], None] | None = None) -> Outcome:
    """A call; `finish` runs the app's steps that matter here, in the app's order: `record` (the recorder's
    place), then the budget settlement of `limits`."""
    steps = [Step("record", record)] if record is not None else []
    if limits is not None:
        steps.append(Step("budget settlement", limits.settle))
    return Outcome(request_id=f"r{time.perf_counter_ns()}", model=model, started=time.perf_counter(),
                   steps=tuple(steps))


def priced_at(reserved: int, model: str, prompt: int, output: int) -> bool:
    """Whether `reserved` (units) is what `prompt` and `output` tokens cost at `model`'s price (`Price.cost`),
    as the reservation's integer rates round it: never below, at most two units (10^-10 each) above."""
    price = CATALOGUE.price_at(model, time.time())
    assert price is not None
    exact = to_units(price.cost(prompt, 0, output))
    return exact <= reserved <= exact + 2


def size(body: dict[str, Any]) -> int:
    """The bytes of `body` as a client sends it (the gateway hands `Limits` the raw body's length)."""
    return len(msgspec.json.encode(body))


async def admit(limits: Limits, who: Principal, chosen: Route, body: dict[str, Any], o: Outcome) -> dict[str, str]:
    return await limits.admit(who, chosen, body, size(body), o)


def served(o: Outcome, prompt: int, completion: int) -> None:
    o.replica, o.status, o.completed = "http://127.0.0.1:1", 200, True
    o.usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    finish(o)


def test_budget_periods_are_utc_days_and_months() -> None:
    ts = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert window("day", ts).id == "d2026-12-31" and window("day", ts + 1).id == "d2027-01-01"
    m = window("month", ts)
    assert (m.id, m.start, m.end) == ("m2026-12", date(2026, 12, 1), date(2027, 1, 1))
    assert window("month", ts + 1).id == "m2027-01"
    assert m.ttl_ms(ts) == (1 + 7 * 86400) * 1000  # the counters outlive their period by a week
    assert window("total", ts).id == "total" and window("total", ts).ttl_ms(ts) == 0


def test_durations_are_written_as_openai_does() -> None:
    assert [duration(ms) for ms in (0, 20, 999, 1000, 1500, 12_345, 59_999, 60_000, 360_000, 3_661_000)] == [
        "0ms", "20ms", "999ms", "1s", "1.5s", "12.345s", "59.999s", "1m0s", "6m0s", "61m1s"]


async def test_no_limits_costs_nothing_and_adds_no_headers(backend: Backend) -> None:
    limits = await started(backend)
    try:
        o = outcome(limits=limits)
        assert await admit(limits, principal(), direct(), {"messages": HELLO}, o) == {}
        assert o.admission is None  # nothing to settle
    finally:
        await limits.close()


async def test_headers_then_429_with_retry_after(backend: Backend) -> None:
    limits = await started(backend)
    p = principal(key=PrincipalLimits(rpm=2, tpm=1000), team=PrincipalLimits(rpm=10))
    body = {"messages": HELLO, "max_tokens": 10}
    try:
        h = await admit(limits, p, direct(), body, outcome())
        assert h["x-ratelimit-limit-requests"] == "2" and h["x-ratelimit-remaining-requests"] == "1"
        assert h["x-ratelimit-limit-tokens"] == "1000"
        expected, _ = limits.estimate(direct(), body, size(body), "chat", time.time())
        assert int(h["x-ratelimit-remaining-tokens"]) == 1000 - expected
        assert h["x-ratelimit-reset-requests"] == "30s"  # one request back every 30 s
        await admit(limits, p, direct(), body, outcome())
        with pytest.raises(RateLimited) as info:
            await admit(limits, p, direct(), body, outcome())
        err = info.value
        assert (err.status, err.type, err.code) == (429, "requests", "rate_limit_exceeded")
        assert 29 <= int(err.headers["retry-after"]) <= 30
        assert err.headers["x-ratelimit-remaining-requests"] == "0"
        assert "Limit 2" in err.message and "RPM" in err.message
        with pytest.raises(RateLimited) as info:
            await admit(limits, principal(key=PrincipalLimits(tpm=15)), direct(), body, outcome())
        assert info.value.type == "tokens" and info.value.headers["x-should-retry"] == "false"  # can never fit
        assert limits.stats.rate_limited == 2
    finally:
        await limits.close()


async def test_the_reservation_settles_to_exactly_the_recorded_cost(backend: Backend) -> None:
    limits = await started(backend)
    p = principal(key=PrincipalLimits(budget=Decimal("1.00")), team=PrincipalLimits(budget=Decimal("2.00")))
    body = {"model": "demo-large", "messages": HELLO, "max_tokens": 64}
    try:
        chosen = routed(body)
        assert chosen.targets[0][0] == "demo-large"
        tokens, reserved = limits.estimate(chosen, body, size(body), "chat", time.time())
        assert chosen.features is not None and tokens == chosen.features.prompt_tokens + 64  # token limits: expected
        # The most the call can cost: as many prompt tokens as the body has bytes, plus the template's (256 per
        # request, 8 per message), every token uncached, all 64 tokens written.
        assert priced_at(reserved, "demo-large", size(body) + 256 + 8, 64)
        recorded: list[Outcome] = []
        o = outcome("demo-large", limits, recorded.append)
        await admit(limits, p, chosen, body, o)
        w = window("month", time.time())
        counters = [f"b:k:key_a:{w.id}", f"b:t:acme:red:{w.id}"]
        assert await backend.read(counters) == [(0, reserved)] * 2
        served(o, prompt=21, completion=64)
        assert recorded == [o]  # the recorder still gets the call
        await limits.drain()
        cost = build_record(o, CATALOGUE).cost
        assert await backend.read(counters) == [(to_units(cost), to_units(cost))] * 2
        assert from_units(to_units(cost)) == cost > 0
    finally:
        await limits.close()


async def test_a_failed_call_gives_its_reservation_back(backend: Backend) -> None:
    limits = await started(backend)
    p = principal(key=PrincipalLimits(budget=Decimal("1.00"), tpm=10_000))
    try:
        o = outcome(limits=limits)
        h = await admit(limits, p, direct(), {"messages": HELLO, "max_tokens": 50}, o)
        o.failure, o.status = "unavailable", 503  # no replica answered: no tokens, no cost
        finish(o)
        await limits.drain()
        w = window("month", time.time())
        assert await backend.read([f"b:k:key_a:{w.id}"]) == [(0, 0)]
        again = await admit(limits, p, direct(), {"messages": HELLO, "max_tokens": 50}, outcome())
        assert again["x-ratelimit-remaining-tokens"] == h["x-ratelimit-remaining-tokens"]  # the tokens came back
    finally:
        await limits.close()


async def test_over_budget_is_429_insufficient_quota(backend: Backend) -> None:
    limits = await started(backend)
    body = {"messages": HELLO, "max_tokens": 100}
    _, one = limits.estimate(direct(), body, size(body), "chat", time.time())
    p = principal(team=PrincipalLimits(budget=from_units(one * 3)))  # room for three reservations
    try:
        outcomes = [outcome(limits=limits) for _ in range(3)]
        for o in outcomes:
            await admit(limits, p, direct(), body, o)
        with pytest.raises(BudgetExceeded) as info:
            await admit(limits, p, direct(), body, outcome())
        err = info.value
        assert (err.status, err.type, err.code) == (429, "insufficient_quota", "insufficient_quota")
        assert err.headers == {"x-should-retry": "false"}
        assert "team acme/red budget" in err.message and "this month" in err.message
        for o in outcomes[:2]:
            served(o, prompt=10, completion=5)  # settling frees what the calls did not use
        await limits.drain()
        await admit(limits, p, direct(), body, outcome())
        # A call that could cost more than the whole budget is refused without asking the backend.
        with pytest.raises(BudgetExceeded):
            await admit(limits, p, direct(), {"messages": HELLO, "max_tokens": 100_000}, outcome())
    finally:
        await limits.close()


async def test_a_budget_starts_from_what_accounting_recorded(backend: Backend, tmp_path: Path) -> None:
    """A restart (in-process counters) or an emptied Redis does not reset a budget."""
    async with migrated_engine(f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}") as engine:
        now = time.time()
        mine = [record(i, received=now, tenant="acme", team="red", key_id="key_a", currency="USD",
                       cost=Decimal("0.25")) for i in range(3)]
        others = [record(10 + i, received=now, tenant="acme", team="blue", key_id="key_b", currency="USD",
                         cost=Decimal("5")) for i in range(2)]
        old = [record(20, received=now - 86400 * 40, tenant="acme", team="red", key_id="key_a", currency="USD",
                      cost=Decimal("9"))]  # last period: not counted
        await accounting_store.write_records(engine, mine + others + old)
        limits = await started(backend, engine)
        try:
            p = principal(key=PrincipalLimits(budget=Decimal("1.00")), team=PrincipalLimits(budget=Decimal("1.00")))
            await admit(limits, p, direct(), {"messages": HELLO, "max_tokens": 10}, outcome())
            w = window("month", now)
            (key_spent, _), (team_spent, _) = await backend.read([f"b:k:key_a:{w.id}", f"b:t:acme:red:{w.id}"])
            assert from_units(key_spent) == from_units(team_spent) == Decimal("0.75")
            assert limits.stats.seeded == 2
            with pytest.raises(BudgetExceeded):  # 0.75 spent, a reservation over 0.25 no longer fits
                await admit(limits, p, direct(), {"messages": HELLO, "max_tokens": 1_500_000}, outcome())
        finally:
            await limits.close()


async def test_the_soft_threshold_warns_once(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    limits = await started(backend, soft_pct=50)
    body = {"messages": HELLO, "max_tokens": 5}
    _, one = limits.estimate(direct(), body, size(body), "chat", time.time())
    p = principal(key=PrincipalLimits(budget=from_units(one * 4)))
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.limits"):
            for _ in range(12):
                o = outcome(limits=limits)
                try:
                    await admit(limits, p, direct(), body, o)
                except BudgetExceeded:
                    break
                served(o, prompt=40, completion=5)
                await limits.drain()
        warnings = [r.getMessage() for r in caplog.records if "soft threshold 50%" in r.getMessage()]
        assert len(warnings) == 1 and "key key_a has spent" in warnings[0]
        assert limits.stats.soft_threshold_crossed == 1
    finally:
        await limits.close()


async def test_a_client_leaving_during_admission_takes_nothing(backend: Backend) -> None:
    limits = await started(backend)
    p = principal(key=PrincipalLimits(budget=Decimal("1.00")))
    try:
        o = outcome(limits=limits)
        task = asyncio.create_task(admit(limits, p, direct(), {"messages": HELLO, "max_tokens": 10}, o))
        await asyncio.sleep(0)  # the admission has started
        task.cancel()  # in Redis, the admission is waiting for its answer; in process, it is already done
        o.cancelled = True
        finish(o)  # what the handler does when it is cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(100):
            await asyncio.sleep(0.01)
            await limits.drain()
            w = window("month", time.time())
            if (await backend.read([f"b:k:key_a:{w.id}"]))[0] in (None, (0, 0)):  # not started, or given back
                break
        assert (await backend.read([f"b:k:key_a:{w.id}"]))[0] in (None, (0, 0))
    finally:
        await limits.close()


async def test_redis_down_is_503_for_limited_callers_only() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    limits = await started(RedisBackend(dead, "x:"))
    try:
        assert await admit(limits, principal(), direct(), {"messages": HELLO}, outcome()) == {}
        with pytest.raises(LimitsUnavailable) as info:
            await admit(limits, principal(key=PrincipalLimits(rpm=5)), direct(), {"messages": HELLO}, outcome())
        assert info.value.status == 503 and info.value.headers["retry-after"] == "1"
    finally:
        await limits.close()
        await dead.aclose()


def test_a_call_that_may_fall_back_reserves_at_the_dearest_model_it_may_end_on() -> None:
    limits = Limits(MemoryBackend(), CATALOGUE, None)
    body = {"model": "demo-small", "messages": HELLO, "max_tokens": 64}
    chosen = routed(body)
    assert [m for m, _ in chosen.targets] == ["demo-small", "demo-large"]  # demo-small falls back to demo-large
    assert chosen.features is not None
    now = time.time()
    tokens, reserved = limits.estimate(chosen, body, size(body), "chat", now)
    assert tokens == chosen.features.prompt_tokens + 64
    prompt = size(body) + 256 + 8
    assert priced_at(reserved, "demo-large", prompt, 64) and not priced_at(reserved, "demo-small", prompt, 64)
    # n choices: n times the output.
    body = {"model": "demo-large", "messages": HELLO, "max_tokens": 64, "n": 3}
    chosen = routed(body)
    assert chosen.features is not None
    tokens, reserved = limits.estimate(chosen, body, size(body), "chat", now)
    assert tokens == chosen.features.prompt_tokens + 3 * 64
    assert priced_at(reserved, "demo-large", size(body) + 256 + 8, 3 * 64)
