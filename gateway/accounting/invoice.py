"""Monthly statements: a tenant's (or one team's) calls of a month, as finance bills them.

One statement is built from the usage report of the month (`usage_report`, rollups, filtered to the
tenant and team) and the budgets in force (`budget_rows`); `GET /v1/reports/invoice` and
`gateway report invoice` both call `build_invoice`, and render it as JSON, CSV or a printable page
(gateway/accounting/invoice_render.py, gateway/accounting/invoice_html.py).

- Lines: one per team, model and key (with the key's name): billable calls, refused calls, tokens, cost,
  reference cost and savings. The totals are the sums of the lines, one per currency.
- Savings: `reference_cost = cost + routing_savings + cache_savings`, exactly, on every line and total.
- The platform's shadow evaluation of the tenant's calls is stated apart, and not billed.
- Budgets: each budget of the tenant (or team) and of its keys, with the spend recorded in the period in
  force at the end of the month (for the current month: now).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.reports import MEASURES, SHADOW, ReportError, ReportFilters, ReportRow, usage_report
from gateway.limits.budgets import BudgetRow, budget_rows

LINE_GROUPS = ("team", "model", "key")
LINE_LABELS = ("team", "model", "key", "key_name")
LINE_MEASURES = tuple(m for m in MEASURES if m not in SHADOW)  # what a line bills: shadow evaluation is apart
_MONTH = re.compile(r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})")  # ASCII digits only
FIRST_YEAR, LAST_YEAR = 1970, 9998  # calls are timed in epoch seconds; a month's end stays a date


@dataclass(frozen=True)
class Month:
    name: str  # YYYY-MM
    first: date
    last: date  # included

    @property
    def end_ts(self) -> float:
        """The first second after the month (epoch seconds, UTC)."""
        after = self.last + timedelta(days=1)
        return datetime(after.year, after.month, after.day, tzinfo=UTC).timestamp()


def parse_month(value: str | None) -> Month:
    """`2026-11` -> that month's first and last UTC days; ReportError (param `month`) when absent or not YYYY-MM."""
    if value is None or value == "":
        raise ReportError("`month` is required: the statement's month, YYYY-MM", "month")
    m = _MONTH.fullmatch(value)
    if m is None or not 1 <= int(m["month"]) <= 12 or not FIRST_YEAR <= int(m["year"]) <= LAST_YEAR:
        raise ReportError(f"`month` must be a month, YYYY-MM, from {FIRST_YEAR}-01 to {LAST_YEAR}-12 "
                          f"(got `{value}`)", "month")
    first = date(int(m["year"]), int(m["month"]), 1)
    after = date(first.year + 1, 1, 1) if first.month == 12 else date(first.year, first.month + 1, 1)
    return Month(value, first, after - timedelta(days=1))


@dataclass
class Invoice:
    tenant: str
    team: str | None
    month: Month
    currency: str  # the price catalogue's: the budgets' (a line of another currency says its own)
    generated_at: datetime
    policy_hash: str | None
    lines: list[ReportRow]
    totals: list[ReportRow]  # one per currency, the lines' sums (and the shadow evaluation, not billed)
    budgets: list[BudgetRow]

    @property
    def filename_stem(self) -> str:
        """invoice-<tenant>[-<team>]-<YYYY-MM>"""
        return "-".join(["invoice", self.tenant, *([self.team] if self.team else []), self.month.name])


async def build_invoice(engine: AsyncEngine, *, tenant: str, team: str | None, month: Month, currency: str,
                        soft_pct: int, now: float | None = None, policy_hash: str | None = None) -> Invoice:
    """The statement of `tenant` (and `team`, when given) for `month`."""
    now = time.time() if now is None else now
    report = await usage_report(engine, start=month.first, end=month.last, group_by=LINE_GROUPS,
                                filters=ReportFilters(tenant=tenant, team=team))
    lines = [row for row in report.rows if any(getattr(row, m) for m in LINE_MEASURES)]  # not shadow alone
    budgets = [b for b in await budget_rows(engine, currency, soft_pct, now=min(now, month.end_ts - 1), tenant=tenant)
               if team is None or b.team == team]
    return Invoice(tenant, team, month, currency, datetime.fromtimestamp(now, UTC).replace(microsecond=0),
                   policy_hash, lines, report.totals, budgets)
