"""`GET /v1/reports/usage`: what finance reads (gateway/accounting/reports.py does the work).

Query: `from`, `to` (UTC days, YYYY-MM-DD, both included; default: everything), `group_by` (a
comma-separated list of tenant, team, key, model, pool, day, month, operation, route; default model),
`format` (json, the default, or csv; csv is a download, `usage-FROM-TO.csv`) and the filters `tenant`,
`team`, `key` (a key id), `model`, `route` (the policy rule), `operation`. A tenant-scoped key reports on
its own tenant only; any other parameter is a 400 (gateway/api/report_query.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import Accounting, reports
from gateway.accounting.reads import within
from gateway.accounting.reports import GROUPS, ReportError, parse_day, parse_group_by, to_csv, to_json
from gateway.api.downloads import csv_response
from gateway.api.report_query import check_format, report_filters, report_guard
from gateway.auth.principal import principal_of
from gateway.context import GatewayContext
from router.errors import InvalidRequest

FORMATS = {"json": "application/json", "csv": "text/csv"}  # the reports' `format`: the answer's media type
Filter = Annotated[str | None, QueryParameter(description="only the calls with this value")]


def usage_filename(start: str | None, end: str | None) -> str:
    """The CSV's name: `usage-2026-12-01-2026-12-07.csv`, `usage-from-2026-12-01.csv`, `usage.csv`..."""
    if start and end:
        return f"usage-{start}-{end}.csv"
    if start or end:
        return f"usage-from-{start}.csv" if start else f"usage-to-{end}.csv"
    return "usage.csv"


@get("/v1/reports/usage", guards=[report_guard], opt={"produces": tuple(FORMATS.values())})
async def usage_report(
    request: Request[Any, Any, Any],
    state: State,
    start: Annotated[str | None, QueryParameter(name="from", description="first UTC day, YYYY-MM-DD")] = None,
    end: Annotated[str | None, QueryParameter(name="to", description="last UTC day, YYYY-MM-DD (included)")] = None,
    group_by: Annotated[list[str] | None, QueryParameter(
        description=f"comma-separated, or repeated: {', '.join(GROUPS)}; empty: no grouping")] = None,
    format: Annotated[str, QueryParameter(schema_extra={"enum": list(FORMATS)})] = "json",
    tenant: Filter = None,
    team: Filter = None,
    key: Annotated[str | None, QueryParameter(description="only the calls of this key id (key_...)")] = None,
    model: Filter = None,
    route: Annotated[str | None, QueryParameter(description="only the calls the policy rule routed")] = None,
    operation: Filter = None,
) -> Response[Any]:
    accounting: Accounting = state.accounting
    check_format(format, FORMATS)
    report = await usage_of(request, accounting.engine, start, end, group_by, tenant=tenant, team=team, key=key,
                            model=model, route=route, operation=operation)
    if format == "csv":
        return usage_csv(report, start, end)
    return Response(to_json(report), media_type="application/json")


async def usage_of(request: Request[Any, Any, Any], engine: AsyncEngine, start: str | None, end: str | None,
                   group_by: list[str] | None, **filters: str | None) -> reports.Report:
    """The usage report a query asks for, within the caller's scope (400 for a bad value, 403 for a tenant out
    of scope): the endpoint's, and the console's Spend page's and its CSV's."""
    scoped = report_filters(principal_of(request), **filters)
    try:
        read = reports.usage_report(engine, start=parse_day(start, "from"), end=parse_day(end, "to"),
                                    group_by=parse_group_by(group_by), filters=scoped)
        return await within(read, request.app.state.ctx.settings.report_timeout_s)
    except ReportError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_report_query") from exc


async def bounded_usage(ctx: GatewayContext, **query: Any) -> reports.Report:
    """`usage_report(**query)` (filters already scoped) bounded by `report_timeout_s`: the console's reads."""
    return await within(reports.usage_report(ctx.accounting.engine, **query), ctx.settings.report_timeout_s)


def usage_csv(report: reports.Report, start: str | None, end: str | None) -> Response[Any]:
    """The report as the CSV download the endpoint serves."""
    return csv_response(to_csv(report), usage_filename(start, end))
