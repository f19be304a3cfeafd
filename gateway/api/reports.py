"""`GET /v1/reports/usage`: what finance reads (gateway/accounting/reports.py does the work).

Query: `from`, `to` (UTC days, YYYY-MM-DD, both included; default: everything), `group_by` (a
comma-separated list of tenant, team, key, model, pool, day, month; default model) and `format`
(json, the default, or csv).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler

from gateway.accounting import Accounting, reports
from gateway.accounting.reports import ReportError, parse_day, parse_group_by, to_csv, to_json
from gateway.auth.guard import REPORTS, check_role
from gateway.auth.principal import principal_of
from router.errors import InvalidRequest


def may_read_reports(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Who may read usage reports: keys with the `finance` or `admin` role (403 otherwise).

    The app-wide guard (gateway/auth/guard.py) has authenticated the caller (401 without a valid key)
    and already checks the same roles for every `/v1/reports/...` path; this states it where reports live.
    """
    check_role(principal_of(connection), REPORTS)


@get("/v1/reports/usage", guards=[may_read_reports])
async def usage_report(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    accounting: Accounting = state.accounting
    q = request.query_params
    fmt = q.get("format") or "json"
    try:
        if fmt not in ("json", "csv"):
            raise ReportError(f"format `{fmt}` is not json or csv", "format")
        report = await reports.usage_report(
            accounting.engine,
            start=parse_day(q.get("from"), "from"),
            end=parse_day(q.get("to"), "to"),
            group_by=parse_group_by(q.getall("group_by", None) or None),
        )
    except ReportError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_report_query") from exc
    if fmt == "csv":
        return Response(to_csv(report), media_type="text/csv")
    return Response(to_json(report), media_type="application/json")

