"""The overview: the figures finance looks at first, for `GET /v1/reports/overview`, the console's Overview
page and `gateway report overview` alike.

Over a window of `days` UTC days ending `end` (today by default): spend on `end` and from the first of its
month to it, the spend of each day of the window (the trend), the window's routing and cache savings, its
calls (billable), refused calls, error rate and cache hit rate (both shares of the billable calls), and the
median and 95th percentile time to the first token of its calls. Everything but the percentiles comes from
`usage_report` (the daily rollups); the percentiles from the records' `ttft_ms` (PostgreSQL's
`percentile_cont`; the same interpolation computed here on SQLite). Amounts are the price catalogue's
currency's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.models import UsageRecord
from gateway.accounting.money import ZERO, plain
from gateway.accounting.reports import EVERY_CALL, ReportError, ReportFilters, filter_clauses, usage_report
from router.pricing import format_money

DEFAULT_DAYS = 30
MAX_DAYS = 366
PERCENTILES = (0.5, 0.95)


class DaySpend(msgspec.Struct, frozen=True):
    day: date
    cost: Decimal


class Overview(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    start: date  # the window's first day
    end: date  # its last day (included)
    filters: dict[str, str]  # the filters applied (ReportFilters.given())
    spend_today: Decimal  # the cost of `end`
    spend_month: Decimal  # from the first of `end`'s month to `end`
    trend: list[DaySpend]  # each day of the window, oldest first, 0 on a day without calls
    cost: Decimal  # the window's
    reference_cost: Decimal
    routing_savings: Decimal
    cache_savings: Decimal
    calls: int  # billable calls
    refused: int  # calls refused before a worker
    errors: int
    cache_hits: int
    error_rate: float | None  # errors / calls; None without calls
    cache_hit_rate: float | None  # cache_hits / calls
    ttft_p50_ms: float | None  # None without a call that had a first token
    ttft_p95_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: amounts as exact text (never an exponent), days as YYYY-MM-DD."""
        return plain(self)  # type: ignore[no-any-return]


def today() -> date:
    return datetime.now(UTC).date()


def window(end: date | None, days: int) -> tuple[date, date]:
    """The first and last days of `days` days ending `end` (today when None)."""
    if not 1 <= days <= MAX_DAYS:
        raise ReportError(f"`days` must be from 1 to {MAX_DAYS} (got {days})", "days")
    last = end or today()
    return last - timedelta(days=days - 1), last


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def interpolated(values: list[int], q: float) -> float | None:
    """The `q` quantile of sorted `values`, interpolated as PostgreSQL's percentile_cont does."""
    if not values:
        return None
    at = q * (len(values) - 1)
    low = int(at)
    high = min(low + 1, len(values) - 1)
    return float(values[low] + (values[high] - values[low]) * (at - low))


async def ttft_percentiles(engine: AsyncEngine, start: date, end: date,
                           filters: ReportFilters = EVERY_CALL) -> tuple[float | None, ...]:
    """The PERCENTILES of the time to first token (ms) of the calls from `start` to `end` that had one."""
    r = UsageRecord
    where = [r.day >= start, r.day <= end, r.purpose == "call", r.ttft_ms.is_not(None),
             *filter_clauses(filters, "records", engine.dialect.name)]
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            cols = [func.percentile_cont(q).within_group(r.ttft_ms) for q in PERCENTILES]
            row = (await conn.execute(select(*cols).where(*where))).one()
            return tuple(None if v is None else round(float(v), 3) for v in row)
        values = [v for v in (await conn.execute(select(r.ttft_ms).where(*where).order_by(r.ttft_ms))).scalars()
                  if v is not None]
    return tuple(None if (v := interpolated(values, q)) is None else round(v, 3) for q in PERCENTILES)


async def overview(engine: AsyncEngine, currency: str, *, end: date | None = None, days: int = DEFAULT_DAYS,
                   filters: ReportFilters = EVERY_CALL) -> Overview:
    """The overview of the calls matching `filters` over `days` days ending `end` (today when None)."""
    start, last = window(end, days)
    month_start = last.replace(day=1)
    report = await usage_report(engine, start=min(start, month_start), end=last, group_by=("day",), filters=filters)
    per_day: dict[date, Decimal] = {}
    totals = {"calls": 0, "refused": 0, "errors": 0, "cache_hits": 0}
    amounts = {"cost": ZERO, "reference_cost": ZERO, "routing_savings": ZERO, "cache_savings": ZERO}
    for row in report.rows:
        day = date.fromisoformat(row.group["day"] or "")
        if row.currency == currency:
            per_day[day] = per_day.get(day, ZERO) + row.cost
        if day < start:
            continue
        for name in totals:
            totals[name] += getattr(row, name)
        if row.currency == currency:
            for name in amounts:
                amounts[name] += getattr(row, name)
    p50, p95 = await ttft_percentiles(engine, start, last, filters)
    return Overview(
        currency=currency, start=start, end=last, filters=filters.given(),
        spend_today=per_day.get(last, ZERO),
        spend_month=sum((c for d, c in per_day.items() if d >= month_start), ZERO),
        trend=[DaySpend(start + timedelta(days=i), per_day.get(start + timedelta(days=i), ZERO))
               for i in range((last - start).days + 1)],
        cost=amounts["cost"], reference_cost=amounts["reference_cost"],
        routing_savings=amounts["routing_savings"], cache_savings=amounts["cache_savings"],
        calls=totals["calls"], refused=totals["refused"], errors=totals["errors"], cache_hits=totals["cache_hits"],
        error_rate=_rate(totals["errors"], totals["calls"]),
        cache_hit_rate=_rate(totals["cache_hits"], totals["calls"]),
        ttft_p50_ms=p50, ttft_p95_ms=p95,
    )


def to_table(o: Overview) -> str:
    """The overview for a terminal: amounts as format_money prints them (the JSON carries them exactly)."""
    def pct(rate: float | None) -> str:
        return "-" if rate is None else f"{rate * 100:.2f}%"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:g} ms"

    given = ", ".join(f"{k}={v}" for k, v in o.filters.items())
    lines = [
        f"overview {o.start} .. {o.end} (UTC days, inclusive){f'; {given}' if given else ''}; {o.currency}",
        f"spend today ({o.end})        {format_money(o.spend_today)}",
        f"spend this month             {format_money(o.spend_month)}",
        f"cost                         {format_money(o.cost)}",
        f"routing savings              {format_money(o.routing_savings)}",
        f"cache savings                {format_money(o.cache_savings)}",
        f"calls                        {o.calls}",
        f"refused                      {o.refused}",
        f"error rate                   {pct(o.error_rate)}",
        f"cache hit rate               {pct(o.cache_hit_rate)}",
        f"time to first token p50      {ms(o.ttft_p50_ms)}",
        f"time to first token p95      {ms(o.ttft_p95_ms)}",
        "day         spend",
        *(f"{d.day}  {format_money(d.cost)}" for d in o.trend),
    ]
    return "\n".join(lines) + "\n"
