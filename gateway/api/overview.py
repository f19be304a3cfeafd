"""`GET /v1/reports/overview`: the overview (gateway/accounting/overview.py does the work): spend today and
month to date, the daily trend, savings, calls, refused calls, error and cache hit rates, time to first token.

Query: `to` (the last UTC day, YYYY-MM-DD; default today), `days` (the window, 1 to 366; default 30) and the
report filters `tenant`, `team`, `key`, `model`, `route`, `operation`. Role finance or admin; a tenant-scoped
key sees its own tenant only.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import QueryParameter

from gateway.accounting import overview as figures
from gateway.accounting.reads import within
from gateway.accounting.reports import ReportError, parse_day
from gateway.api.report_query import report_filters, report_guard
from gateway.auth.principal import principal_of
from gateway.context import GatewayContext
from router.errors import InvalidRequest

Filter = Annotated[str | None, QueryParameter(description="only the calls with this value")]
LastDay = Annotated[str | None, QueryParameter(name="to", description="last UTC day, YYYY-MM-DD (default: today)")]


@get("/v1/reports/overview", guards=[report_guard])
async def overview_report(
    request: Request[Any, Any, Any],
    end: LastDay = None,
    days: Annotated[int, QueryParameter(description=f"days in the window, 1 to {figures.MAX_DAYS}")] = 30,
    tenant: Filter = None, team: Filter = None, key: Filter = None, model: Filter = None, route: Filter = None,
    operation: Filter = None,
) -> Response[Any]:
    result = await overview_of(request, end, days, tenant=tenant, team=team, key=key, model=model, route=route,
                               operation=operation)
    return Response(result.as_dict(), media_type="application/json")


async def overview_of(request: Request[Any, Any, Any], end: str | None, days: int,
                      **filters: str | None) -> figures.Overview:
    """The overview a query asks for, within the caller's scope (400 for a bad value, 403 for a tenant out of
    scope): the endpoint's and the console's Overview page's."""
    ctx: GatewayContext = request.app.state.ctx
    scoped = report_filters(principal_of(request), **filters)
    try:
        return await within(figures.overview(ctx.accounting.engine, ctx.accounting.catalogue.currency,
                                             end=parse_day(end, "to"), days=days, filters=scoped),
                            ctx.settings.report_timeout_s)
    except ReportError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_report_query") from exc
