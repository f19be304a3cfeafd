"""Today's shadow evaluation spend (shadow and judge calls, UTC day), which stops sampling at
`shadow.daily_budget`.

It starts from what the accounting database recorded for the day and grows by each shadow or judge call's
cost as the job records it. With Redis, every gateway process adds to one counter (`<prefix>spend:<day>`,
integer 10^-10 units, exact); without, each process keeps its own, so N processes may spend up to N times
the budget. Either way jobs already running finish, so a day can end over its budget by at most what the
jobs in flight cost (`concurrency` per process, each capped by `max_tokens` and the judge's 64 tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal

from redis.asyncio import Redis
from sqlalchemy import func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.models import UsageDaily
from gateway.accounting.money import ZERO, Money, quantize
from gateway.limits.service import from_units, to_units

KEY_TTL_S = 2 * 86400  # a day's counter outlives its day, for a process whose clock is a little behind


async def recorded_shadow_spend(engine: AsyncEngine, day: date, currency: str) -> Decimal:
    """What the accounting database holds of the day's shadow and judge calls."""
    d = UsageDaily
    total = type_coerce(func.coalesce(func.sum(d.cost), 0), Money())
    stmt = select(total).where(d.day == day, d.currency == currency, d.purpose != "call")
    async with engine.connect() as conn:
        value = (await conn.execute(stmt)).scalar()
    return quantize(value) if value is not None else ZERO


class DailySpend:
    def __init__(self, engine: AsyncEngine, currency: str, redis: Redis | None = None, prefix: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.currency = currency
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self.known = ZERO  # the last figure read: what a finished call checks, without waiting
        self._day: date | None = None  # without Redis: the day `_total` counts
        self._total = ZERO

    def today(self) -> date:
        return datetime.fromtimestamp(self.clock(), UTC).date()

    def key(self, day: date) -> str:
        return f"{self.prefix}spend:{day.isoformat()}"

    async def spent(self) -> Decimal:
        """Today's spend (raises when the database or Redis cannot say)."""
        day = self.today()
        if self.redis is None:
            if self._day != day:
                self._total, self._day = await recorded_shadow_spend(self.engine, day, self.currency), day
            self.known = self._total
            return self.known
        raw = await self.redis.get(self.key(day))
        if raw is None:
            raw = await self._seed(day)
        self.known = from_units(int(raw))
        return self.known

    async def _seed(self, day: date) -> bytes:
        assert self.redis is not None
        units = to_units(await recorded_shadow_spend(self.engine, day, self.currency))
        key = self.key(day)
        await self.redis.set(key, units, nx=True, ex=KEY_TTL_S)  # another process may have seeded it first
        raw = await self.redis.get(key)
        return raw if isinstance(raw, bytes) else str(units).encode()

    async def add(self, amount: Decimal) -> None:
        """A shadow or judge call's cost, as it is recorded."""
        if not amount:
            return
        if self.redis is None:
            await self.spent()  # a new day starts from the database
            self._total += amount
            self.known = self._total
            return
        day = self.today()
        if not await self.redis.exists(self.key(day)):
            await self._seed(day)
        self.known = from_units(int(await self.redis.incrby(self.key(day), to_units(quantize(amount)))))
