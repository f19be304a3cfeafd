"""`GET /v1/reports/usage`: what finance reads (gateway/accounting/reports.py does the work).

Query: `from`, `to` (UTC days, YYYY-MM-DD, both included; default: everything), `group_by` (a
comma-separated list of tenant, team, key, model, pool, day, month, operation; default model) and `format`
(json, the default, or csv).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.params import QueryParameter

from gateway.accounting import Accounting, reports
from gateway.accounting.reports import GROUPS, ReportError, parse_day, parse_group_by, to_csv, to_json
from gateway.api.downloads import csv_response
from gateway.auth.guard import REPORTS, check_role
from gateway.auth.principal import principal_of
from router.errors import InvalidRequest

FORMATS = {"json": "application/json", "csv": "text/csv"}  # the reports' `format`: the answer's media type


def may_read_reports(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Who may read usage reports: keys with the `finance` or `admin` role (403 otherwise).

    The app-wide guard (gateway/auth/guard.py) has authenticated the caller (401 without a valid key)
    and already checks the same roles for every `/v1/reports/...` path; this states it where reports live.
    """
    check_role(principal_of(connection), REPORTS)


def usage_filename(start: str | None, end: str | None) -> str:
    """The CSV's name: `usage-2026-12-01-2026-12-07.csv`, `usage-from-2026-12-01.csv`, `usage.csv`..."""
    if start and end:
        return f"usage-{start}-{end}.csv"
    if start or end:
        return f"usage-from-{start}.csv" if start else f"usage-to-{end}.csv"
    return "usage.csv"


@get("/v1/reports/usage", guards=[may_read_reports], opt={"produces": tuple(FORMATS.values())})
async def usage_report(
    state: State,
    start: Annotated[str | None, QueryParameter(name="from", description="first UTC day, YYYY-MM-DD")] = None,
    end: Annotated[str | None, QueryParameter(name="to", description="last UTC day, YYYY-MM-DD (included)")] = None,
    group_by: Annotated[list[str] | None, QueryParameter(
        description=f"comma-separated, or repeated: {', '.join(GROUPS)}; empty: no grouping")] = None,
    format: Annotated[str, QueryParameter(schema_extra={"enum": list(FORMATS)})] = "json",
) -> Response[Any]:
    accounting: Accounting = state.accounting
    try:
        if format not in FORMATS:
            raise ReportError(f"format `{format}` is not json or csv", "format")
        report = await reports.usage_report(
            accounting.engine,
            start=parse_day(start, "from"),
            end=parse_day(end, "to"),
            group_by=parse_group_by(group_by),
        )
    except ReportError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_report_query") from exc
    if format == "csv":
        return csv_response(to_csv(report), usage_filename(start, end))
    return Response(to_json(report), media_type="application/json")

