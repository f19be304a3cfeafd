"""The Budgets page (`/console/budgets`): every budget the caller may see, from the function that serves
`GET /v1/reports/budgets` (spend over its period, what remains, the forecast day it runs out), each with a
burn-down chart: what remains at the end of each day of its period, from the usage report by day of the
budget's team or key (`usage_report`, the same function as `GET /v1/reports/usage`), against an even pace
from the limit to nothing at the period's end."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from litestar import Request, get
from litestar.params import FromQuery
from litestar.response import Template

from gateway.accounting.money import ZERO, plain
from gateway.accounting.overview import today
from gateway.accounting.reports import ReportFilters
from gateway.api.budgets import budgets_of
from gateway.api.report_query import check_query
from gateway.api.reports import bounded_usage
from gateway.console.charts import cumulative, days
from gateway.console.pages import BUDGETS
from gateway.console.render import page
from gateway.context import GatewayContext
from gateway.limits.budgets import BudgetRow

PLACES = Decimal("0.0000000001")  # the database's scale of amounts


def _pace(limit: Decimal, start: date, end: date, day: date) -> Decimal:
    """What an even spend over the period leaves at the end of `day`."""
    total = (end - start).days
    left = limit - limit * ((day - start).days + 1) / total if total else ZERO
    return left.quantize(PLACES)


async def burn_down(ctx: GatewayContext, row: BudgetRow, last: date) -> dict[str, Any] | None:
    """The budget's chart data (None when it has no first day yet: a `total` budget with no spend)."""
    start = row.period_start if row.period != "total" else row.spend_start
    if start is None:
        return None
    end = min(last, row.period_end - timedelta(days=1)) if row.period_end is not None else last
    filters = ReportFilters(tenant=row.tenant, team=row.team) if row.scope == "team" else \
        ReportFilters(tenant=row.tenant, key=row.key_id)
    report = await bounded_usage(ctx, start=start, end=end, group_by=("day",), filters=filters)
    spent = {r.group["day"]: r.cost for r in report.rows if r.currency == row.currency}
    span = days(start, (row.period_end - timedelta(days=1)) if row.period_end is not None else end)
    used = cumulative([spent.get(d.isoformat(), ZERO) for d in span])
    series: list[dict[str, Any]] = [{"label": "remaining", "values": [format(row.limit - u, "f") if d <= end else None
                                                for d, u in zip(span, used, strict=True)]}]
    if row.period_end is not None:
        series.append({"label": "even pace", "dashed": True,
                       "values": [format(_pace(row.limit, start, row.period_end, d), "f") for d in span]})
    return {"labels": [d.isoformat() for d in span], "stacked": False, "series": series}


@get("/budgets", opt=BUDGETS.opt, guards=[check_query], include_in_schema=False)
async def budgets_page(request: Request[Any, Any, Any], tenant: FromQuery[str | None] = None) -> Template:
    ctx: GatewayContext = request.app.state.ctx
    rows = await budgets_of(request, ctx, tenant)
    last = today()
    budgets = [{"row": plain(r.as_dict()), "chart": await burn_down(ctx, r, last)} for r in rows]
    return page(request, BUDGETS, "budgets.html", budgets=budgets, tenant=tenant or "")


HANDLERS = [budgets_page]
