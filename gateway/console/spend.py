"""The Spend explorer (`/console/spend`): the usage report of `GET /v1/reports/usage`, from the same function
with the same query (from, to, group_by, tenant, team, key, model, route), as a chart and a table; and
`/console/spend.csv`, the endpoint's CSV of the same query, byte for byte (the API wants a bearer key; a
browser has the console's session).

The page's own defaults (the last 30 days, grouped by day and model) are written into its links and form,
so the CSV link asks for exactly what the page shows."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, Response, get
from litestar.params import FromQuery, QueryParameter
from litestar.response import Template

from gateway.accounting.money import plain
from gateway.accounting.overview import today
from gateway.accounting.reports import Report, ReportError, parse_day
from gateway.api.report_query import check_query
from gateway.api.reports import usage_csv, usage_of
from gateway.console.charts import by_day, by_group
from gateway.console.pages import SPEND
from gateway.console.render import page
from gateway.context import GatewayContext

CHOICES = ("tenant", "team", "key", "model", "route", "day")  # the groups the page offers
DEFAULT_GROUPS = ("day", "model")
DEFAULT_DAYS = 30
From = Annotated[str | None, QueryParameter(name="from")]
To = Annotated[str | None, QueryParameter(name="to")]
GroupBy = Annotated[list[str] | None, QueryParameter()]
Filter = FromQuery[str | None]


def _default_from(end: str) -> str | None:
    """DEFAULT_DAYS days before `end`, included (None for a bad `end`: the report answers 400 for it)."""
    try:
        last = parse_day(end, "to")
    except ReportError:
        return None
    return (last - timedelta(days=DEFAULT_DAYS - 1)).isoformat() if last else None


def _chart(report: Report) -> dict[str, Any]:
    if "day" in report.group_by and report.start is not None and report.end is not None:
        return by_day(report, report.start, report.end)
    return by_group(report)


@get("/spend", opt=SPEND.opt, guards=[check_query], include_in_schema=False)
async def spend_page(
    request: Request[Any, Any, Any], start: From = None, end: To = None, group_by: GroupBy = None,
    tenant: Filter = None, team: Filter = None, key: Filter = None, model: Filter = None, route: Filter = None,
) -> Template:
    ctx: GatewayContext = request.app.state.ctx
    end = end or today().isoformat()
    start = start or _default_from(end)
    given = {"tenant": tenant, "team": team, "key": key, "model": model, "route": route}
    report = await usage_of(request, ctx.accounting.engine, start, end,
                            group_by if group_by is not None else [",".join(DEFAULT_GROUPS)], **given)
    groups = list(report.group_by)
    query = {"from": start or "", "to": end, "group_by": ",".join(groups),
             **{k: v for k, v in given.items() if v}}
    return page(request, SPEND, "spend.html", report=report, labels=report.labels,
                rows=plain([r.as_dict() for r in report.rows]), totals=plain([t.as_dict() for t in report.totals]),
                chart=_chart(report), groups=groups, choices=CHOICES, values={**given, "from": start or "", "to": end},
                csv_link="/console/spend.csv?" + urlencode(query))


@get("/spend.csv", opt=SPEND.opt, guards=[check_query], include_in_schema=False)
async def spend_csv(
    request: Request[Any, Any, Any], start: From = None, end: To = None, group_by: GroupBy = None,
    tenant: Filter = None, team: Filter = None, key: Filter = None, model: Filter = None, route: Filter = None,
    operation: Filter = None,
) -> Response[Any]:
    ctx: GatewayContext = request.app.state.ctx
    report = await usage_of(request, ctx.accounting.engine, start, end, group_by, tenant=tenant, team=team,
                            key=key, model=model, route=route, operation=operation)
    return usage_csv(report, start, end)


HANDLERS = [spend_page, spend_csv]
