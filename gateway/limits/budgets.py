"""Budgets and their spend, for `GET /v1/reports/budgets` and `gateway report --budgets`.

Two views of spend: `recorded` (the accounting database's rollups for the period: the authoritative
figure, a fraction of a second behind) and, in the gateway, `live` (the counters limits enforce:
settled spend plus what calls in flight have reserved). Each row forecasts the day its budget runs out
at the average daily spend of its period so far (`forecast_run_out`).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy import func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.models import UsageDaily
from gateway.accounting.money import ZERO, Money, quantize
from gateway.auth import store
from gateway.limits.periods import window
from router.pricing import format_money


async def recorded_spend(engine: AsyncEngine, *, tenant: str, team: str | None, key_id: str | None,
                         start: date | None, end: date | None, currency: str) -> Decimal:
    """What the accounting recorded for a key (`key_id`) or a team (`tenant`, `team`) from `start` to
    `end` (excluded). The platform's shadow evaluation is not the tenant's spend."""
    d = UsageDaily
    total = type_coerce(func.coalesce(func.sum(d.cost), 0), Money())  # exact on both dialects
    stmt = select(total).where(d.tenant == tenant, d.currency == currency, d.purpose == "call")
    if key_id is not None:
        stmt = stmt.where(d.key_id == key_id)
    if team is not None:
        stmt = stmt.where(d.team == team)
    if start is not None:
        stmt = stmt.where(d.day >= start)
    if end is not None:
        stmt = stmt.where(d.day < end)
    async with engine.connect() as conn:
        value = (await conn.execute(stmt)).scalar()
    return quantize(value) if value is not None else ZERO


async def first_spend_day(engine: AsyncEngine, *, tenant: str, team: str | None, key_id: str | None,
                          currency: str) -> date | None:
    """The first UTC day with recorded spend of a key (`key_id`) or a team: where a `total` budget's
    spending began."""
    d = UsageDaily
    stmt = select(func.min(d.day)).where(d.tenant == tenant, d.currency == currency, d.purpose == "call", d.cost > 0)
    if key_id is not None:
        stmt = stmt.where(d.key_id == key_id)
    if team is not None:
        stmt = stmt.where(d.team == team)
    async with engine.connect() as conn:
        value = (await conn.execute(stmt)).scalar()
    return date.fromisoformat(value) if isinstance(value, str) else value


def forecast_run_out(limit: Decimal, spent: Decimal, start: date | None, end: date | None,
                     today: date) -> date | None:
    """The UTC day on which a budget runs out if it goes on spending its average daily spend so far.

    `start`: the period's first day (for a `total` budget, its first day of spend); `end`: the first day
    after the period (None: open, a `total` budget). Spend so far counts as the spend of the days from
    `start` to `today`, both included; the budget runs out on the first day whose cumulative spend, at that
    rate, reaches `limit`. None when nothing is spent yet, or when that day is not before `end`. A budget
    already spent runs out `today`.
    """
    if spent <= 0 or start is None or today < start:
        return None
    if spent >= limit:
        return today
    elapsed = (today - start).days + 1
    days = (limit * elapsed / spent).to_integral_value(rounding=ROUND_CEILING)  # exact: Decimal, rounded up
    if days > (date.max - start).days:  # a tiny spend so far: beyond any calendar
        return None
    day = start + timedelta(days=int(days) - 1)
    return day if end is None or day < end else None


@dataclass
class BudgetRow:
    scope: str  # "team" | "key"
    tenant: str
    team: str
    key_id: str | None
    key_prefix: str | None
    period: str
    period_start: date | None
    period_end: date | None  # excluded
    limit: Decimal
    currency: str
    recorded: Decimal
    live_spent: Decimal | None = None
    live_reserved: Decimal | None = None
    soft_pct: int = 80
    counter: str = ""  # the live counter's name
    key_name: str | None = None  # the key's label given at creation
    as_of: date | None = None  # the UTC day the row describes (the forecast's today)
    spend_start: date | None = None  # a `total` budget's first day of spend (the forecast's start)

    @property
    def spent(self) -> Decimal:
        """The larger of the two views (the live counter leads the records by a moment)."""
        return max(self.recorded, self.live_spent) if self.live_spent is not None else self.recorded

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.spent - (self.live_reserved or ZERO)

    @property
    def state(self) -> str:
        if self.spent + (self.live_reserved or ZERO) >= self.limit:
            return "exhausted"
        if self.spent >= self.limit * self.soft_pct / 100:
            return "soft"
        return "ok"

    @property
    def used_pct(self) -> Decimal:
        """Spend as a percentage of the limit, to 2 places (half to even)."""
        return (self.spent * 100 / self.limit).quantize(Decimal("0.01")) if self.limit else Decimal(100)

    @property
    def forecast_run_out(self) -> date | None:
        if self.as_of is None:
            return None
        start = self.period_start if self.period != "total" else self.spend_start
        return forecast_run_out(self.limit, self.spent, start, self.period_end, self.as_of)

    def as_dict(self) -> dict[str, Any]:
        forecast = self.forecast_run_out

        def amount(v: Decimal | None) -> str | None:
            return format(quantize(v), "f") if v is not None else None

        return {
            "scope": self.scope, "tenant": self.tenant, "team": self.team, "key_id": self.key_id,
            "key_name": self.key_name, "key_prefix": self.key_prefix, "period": self.period,
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "period_end": self.period_end.isoformat() if self.period_end else None,
            "currency": self.currency, "limit": amount(self.limit), "spent": amount(self.spent),
            "recorded": amount(self.recorded), "live_spent": amount(self.live_spent),
            "reserved": amount(self.live_reserved), "remaining": amount(self.remaining),
            "used_pct": format(self.used_pct, "f"), "soft_threshold_pct": self.soft_pct, "state": self.state,
            "forecast_run_out": forecast.isoformat() if forecast else None,
        }


async def budget_rows(engine: AsyncEngine, currency: str, soft_pct: int, now: float | None = None,
                      tenant: str | None = None) -> list[BudgetRow]:
    """Every team and key budget (keys not revoked; `tenant`: only that tenant's) with its spend recorded in
    the current period (the period in force at `now`, epoch seconds; default: the present)."""
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, UTC).date()
    keys, teams = await store.budgets(engine, tenant)
    rows = []
    for t in teams:
        assert t.limits.budget is not None
        w = window(t.limits.budget_period, now)
        rows.append(BudgetRow(
            "team", t.tenant, t.team, None, None, w.period, w.start, w.end, t.limits.budget, currency,
            await recorded_spend(engine, tenant=t.tenant, team=t.team, key_id=None, start=w.start, end=w.end,
                                 currency=currency),
            soft_pct=soft_pct, counter=f"b:t:{t.tenant}:{t.team}:{w.id}", as_of=today,
            spend_start=await first_spend_day(engine, tenant=t.tenant, team=t.team, key_id=None, currency=currency)
            if w.start is None else None))
    for k in keys:
        assert k.limits.budget is not None
        w = window(k.limits.budget_period, now)
        rows.append(BudgetRow(
            "key", k.tenant, k.team, k.id, k.prefix, w.period, w.start, w.end, k.limits.budget, currency,
            await recorded_spend(engine, tenant=k.tenant, team=None, key_id=k.id, start=w.start, end=w.end,
                                 currency=currency),
            soft_pct=soft_pct, counter=f"b:k:{k.id}:{w.id}", key_name=k.name, as_of=today,
            spend_start=await first_spend_day(engine, tenant=k.tenant, team=None, key_id=k.id, currency=currency)
            if w.start is None else None))
    return rows


def to_csv(rows: list[BudgetRow]) -> str:
    """The budgets as CSV (`as_dict`'s columns; an absent value empty): the API's and the CLI's."""
    out = [r.as_dict() for r in rows]
    buf = io.StringIO()
    if out:
        writer = csv.DictWriter(buf, fieldnames=list(out[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in out)
    return buf.getvalue()


def to_table(rows: list[BudgetRow]) -> str:
    headers = ["scope", "tenant", "team", "key", "period", "from", "currency", "limit", "spent", "reserved",
               "remaining", "state"]

    def amount(v: Decimal | None) -> str:
        return format_money(v) if v is not None else "-"

    lines = [[r.scope, r.tenant, r.team, r.key_id or "-", r.period,
              r.period_start.isoformat() if r.period_start else "-", r.currency, amount(r.limit), amount(r.spent),
              amount(r.live_reserved), amount(r.remaining), r.state] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *lines, strict=True)]
    right = {"limit", "spent", "reserved", "remaining"}

    def fmt(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if h in right else v.ljust(w)
                         for h, v, w in zip(headers, values, widths, strict=True)).rstrip()

    out = [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)]
    if not rows:
        out.append("(no budgets: set them with `gateway keys create --budget` or `gateway keys team --budget`)")
    return "\n".join(out) + "\n"
