"""The Routing page (`/console/routing`, admins): calls and cost by route (the policy rule that routed each
call) and by model over a range of UTC days, the routing policy in force, and an "Explain" box.

- The charts and tables are `usage_report(group_by=("route", "day"))` and `("model", "day")`, with the
  filters of `/v1/reports/usage` (`from`, `to`, `tenant`, `team`, `model`, `route`) scoped as the API
  scopes them (gateway/api/report_query.py); the range defaults to the last 30 days.
- The policy is `ctx.policies.status()`, what `GET /admin/policy` answers.
- Explain (`POST /console/routing/explain`, a pasted chat or completion body) is `explain_route`, what
  `POST /admin/route/explain` answers, as the signed-in admin's own key (tenant, team). A body the API
  would refuse shows the API's message (400), not a decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery, QueryParameter
from litestar.response import Template

from gateway.accounting.reports import Report, ReportError, ReportRow, parse_day
from gateway.api.report_query import check_query, report_filters
from gateway.api.reports import bounded_usage
from gateway.auth.principal import principal_of
from gateway.console.pages import ROUTING
from gateway.console.render import page
from gateway.context import GatewayContext
from gateway.routing_explain import KINDS, explain_route
from router.errors import GatewayError, InvalidRequest

DEFAULT_DAYS = 30
MAX_DAYS = 366
NONE = "(none)"  # a group without a value: calls no rule routed (refused before routing, called by name...)
TOTALS = ("calls", "refused", "errors", "cost", "reference_cost", "routing_savings", "cache_savings")


class ExplainForm(msgspec.Struct, kw_only=True):
    body: str = ""
    kind: str = "chat"


@dataclass(frozen=True)
class Window:
    start: date
    end: date

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]


def window(start: str | None, end: str | None, today: date | None = None) -> Window:
    """The UTC days asked for: the last DEFAULT_DAYS to `to` (today by default) when `from` is not given."""
    last = parse_day(end, "to") or today or datetime.now(UTC).date()
    first = parse_day(start, "from") or last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first:
        raise ReportError("`to` is before `from`", "to")
    if (last - first).days >= MAX_DAYS:
        raise ReportError(f"the range is at most {MAX_DAYS} days", "from")
    return Window(first, last)


def by_day(report: Report, group: str, days: list[date], measure: str) -> dict[str, Any]:
    """Chart data (labels: the days; a series per value of `group`, stacked) of `measure` in a (group, day)
    report, 0 on days without calls; amounts as exact text."""
    currencies = {r.currency for r in report.rows}
    series: dict[str, dict[str, Any]] = {}
    for row in report.rows:
        name = (row.group[group] or NONE) + (f" ({row.currency})" if len(currencies) > 1 else "")
        per_day = series.setdefault(name, {})
        day = row.group["day"] or ""
        per_day[day] = per_day.get(day, 0) + getattr(row, measure)
    labels = [d.isoformat() for d in days]
    return {"labels": labels, "stacked": True, "series": [
        {"label": name, "values": [_exact(per_day.get(day, 0)) for day in labels]}
        for name, per_day in sorted(series.items())]}


def totals(report: Report, group: str) -> list[dict[str, Any]]:
    """One row per value of `group` (and currency) over the whole range: TOTALS, amounts as exact text."""
    rows: dict[tuple[str, str], ReportRow] = {}
    for row in report.rows:
        value = row.group[group] or NONE
        rows.setdefault((value, row.currency), ReportRow({group: value}, row.currency)).add(row)
    return [{group: value, "currency": currency, **{m: _exact(getattr(r, m)) for m in TOTALS}}
            for (value, currency), r in sorted(rows.items())]


def _exact(value: Any) -> Any:
    return value if isinstance(value, int) else format(value, "f")


async def _routing_page(request: Request[Any, Any, Any], query: dict[str, str | None], status: int = 200,
                        **context: Any) -> Template:
    ctx: GatewayContext = request.app.state.ctx
    p = principal_of(request)
    try:
        span = window(query.get("from"), query.get("to"))
    except ReportError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_report_query") from exc
    filters = report_filters(p, **{k: query.get(k) for k in ("tenant", "team", "model", "route")})
    views = {}
    for group in ("route", "model"):
        report = await bounded_usage(ctx, start=span.start, end=span.end, group_by=(group, "day"), filters=filters)
        views[group] = {"cost": by_day(report, group, span.days, "cost"),
                        "calls": by_day(report, group, span.days, "calls"), "totals": totals(report, group)}
    answer = page(request, ROUTING, "routing.html", span=span, query={k: v or "" for k, v in query.items()},
                  filters=filters.given(), views=views, policy=ctx.policies.status(), kinds=KINDS,
                  platform=p.scope == "all", **{"explained": None, "explain_problem": None, "form": {}, **context})
    answer.status_code = status
    return answer


@get("/routing", opt=ROUTING.opt, guards=[check_query], include_in_schema=False)
async def routing_page(
    request: Request[Any, Any, Any],
    start: Annotated[str | None, QueryParameter(name="from")] = None,
    end: Annotated[str | None, QueryParameter(name="to")] = None,
    tenant: FromQuery[str | None] = None, team: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None, route: FromQuery[str | None] = None,
) -> Template:
    query = {"from": start, "to": end, "tenant": tenant, "team": team, "model": model, "route": route}
    return await _routing_page(request, query)


@post("/routing/explain", opt=ROUTING.opt, include_in_schema=False)
async def explain(
    request: Request[Any, Any, Any], data: Annotated[ExplainForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Template:
    """The decision for the pasted body, as the signed-in key; the page's charts over their default range."""
    ctx: GatewayContext = request.app.state.ctx
    form = {"body": data.body, "kind": data.kind}
    try:
        explained = explain_route(ctx, data.body.encode(), data.kind, {}, principal_of(request).caller)
    except GatewayError as exc:
        return await _routing_page(request, {}, exc.status, form=form, explain_problem=exc.message)
    return await _routing_page(request, {}, form=form, explained=explained)


HANDLERS = [routing_page, explain]
