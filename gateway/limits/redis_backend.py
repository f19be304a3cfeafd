"""Rate limits and budgets in Redis, shared by every gateway process: `limits.lua` checks and takes all
the limits of a call in one round trip (EVALSHA; the script is loaded again if Redis lost it).

The calls go through a `RedisBatcher` (the app's, shared with the cache; else one of its own): the
admissions and settlements of concurrent requests share pipelines, and at most a few pipelines (so a few
pooled connections) are in flight at once, whatever the load."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from gateway.limits.backend import (
    OK,
    OVER_BUDGET,
    RATE_LIMITED,
    SEED,
    TOO_LARGE,
    AdmitResult,
    BudgetCheck,
    BudgetSettle,
    RateCheck,
    RateSettle,
    RateState,
)
from gateway.redis_batch import LuaScript, RedisBatcher

# Repeatable: a run sent twice takes and settles budgets once (limits.lua says how).
SCRIPT = LuaScript.of((Path(__file__).with_name("limits.lua")).read_text(), repeatable=True)


class RedisBackend:
    def __init__(self, redis: Redis, prefix: str, batcher: RedisBatcher | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.batcher = batcher if batcher is not None else RedisBatcher(redis)

    def _call(self, keys: list[str], args: list[Any], later: bool = False) -> Awaitable[Any]:
        """limits.lua; `later`: a write off the request path, riding along with the next round trip."""
        if later:
            return self.batcher.submit(SCRIPT, keys, args, later=True)
        return self.batcher.evalsha(SCRIPT, keys, args)

    def _budget_keys(self, key: str) -> list[str]:
        return [self.prefix + key, self.prefix + key + ":r"]

    async def admit(self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], member: str,
                    reservation_ttl_ms: int) -> AdmitResult:
        keys = [self.prefix + r.key for r in rates]
        args: list[Any] = [len(rates), len(budgets), member, reservation_ttl_ms]
        for r in rates:
            args += [r.limit, r.cost]
        for b in budgets:
            keys += self._budget_keys(b.key)
            args += [b.limit - b.amount, b.amount, b.ttl_ms]
        out = await self._call(keys, ["admit", " ".join(map(str, args))])
        status = int(out[0])
        if status == OK:
            return AdmitResult(OK, rates=tuple(
                RateState(r.kind, r.scope, r.limit, int(out[1 + 2 * i]), int(out[2 + 2 * i]))
                for i, r in enumerate(rates)))
        if status == RATE_LIMITED:
            return AdmitResult(RATE_LIMITED, int(out[1]) - 1, retry_ms=int(out[2]))
        if status == OVER_BUDGET:
            return AdmitResult(OVER_BUDGET, int(out[1]) - 1, committed=int(out[2]))
        if status in (SEED, TOO_LARGE):
            return AdmitResult(status, int(out[1]) - 1)
        raise RuntimeError(f"limits.lua answered {out!r}")

    async def settle(self, rates: Sequence[RateSettle], budgets: Sequence[BudgetSettle]) -> list[int]:
        keys = [self.prefix + r.key for r in rates]
        args: list[Any] = [len(rates), len(budgets)]
        for r in rates:
            args += [r.limit, r.delta]
        for b in budgets:
            keys += self._budget_keys(b.key)
            args += [f"{b.member}:{b.reserved}", b.actual - b.reserved, b.actual, b.ttl_ms]
        out = await self._call(keys, ["settle", " ".join(map(str, args))], later=True)  # after the call
        return [int(x) for x in out]

    async def seed(self, key: str, spent: int, ttl_ms: int) -> None:
        await self._call([self.prefix + key], ["seed", f"{spent} {ttl_ms}"])

    async def read(self, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hmget(self.prefix + k, "spent", "committed", "seeded")
            rows = await pipe.execute()
        return [(int(s or 0), int(c or 0)) if (s is not None or c is not None or seeded is not None) else None
                for s, c, seeded in rows]

    async def close(self) -> None:
        return None  # the Redis pool belongs to the app
