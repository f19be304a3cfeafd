"""The Invoices page (`/console/invoices`): a month and a tenant (and, optionally, a team) to pick, and links
to that statement as a printable page and as CSV, served at `/console/invoices/statement` by the functions
that serve `GET /v1/reports/invoice` (the same bytes). The tenants offered are those with calls that month
(the usage report by tenant)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, Response, get
from litestar.params import FromQuery, QueryParameter
from litestar.response import Template

from gateway.accounting.invoice import parse_month
from gateway.accounting.invoice_render import FORMATS
from gateway.accounting.overview import today
from gateway.accounting.reports import ReportError, ReportFilters
from gateway.api.invoices import invoice_of, respond
from gateway.api.report_query import check_format, check_query, report_filters
from gateway.api.reports import bounded_usage
from gateway.auth.principal import principal_of
from gateway.console.pages import INVOICES
from gateway.console.render import page
from gateway.context import GatewayContext
from router.errors import InvalidRequest

Filter = FromQuery[str | None]


@get("/invoices", opt=INVOICES.opt, guards=[check_query], include_in_schema=False)
async def invoices_page(request: Request[Any, Any, Any], month: Filter = None, tenant: Filter = None,
                        team: Filter = None) -> Template:
    ctx: GatewayContext = request.app.state.ctx
    month = month or today().isoformat()[:7]
    try:
        when = parse_month(month)
    except ReportError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_report_query") from exc
    filters = report_filters(principal_of(request), tenant=tenant, team=team)
    seen = await bounded_usage(ctx, start=when.first, end=when.last, group_by=("tenant", "team"),
                               filters=ReportFilters(tenant=filters.tenant))
    tenants = sorted({r.group["tenant"] or "" for r in seen.rows} - {""})
    teams = sorted({r.group["team"] or "" for r in seen.rows} - {""})
    links = {}
    if filters.tenant is not None:
        query = {"month": month, "tenant": filters.tenant, **({"team": filters.team} if filters.team else {})}
        links = {fmt: "/console/invoices/statement?" + urlencode({**query, "format": fmt}) for fmt in ("html", "csv")}
    return page(request, INVOICES, "invoices.html", month=month, tenant=filters.tenant or "", team=team or "",
                tenants=tenants, teams=teams, links=links)


@get("/invoices/statement", opt=INVOICES.opt, guards=[check_query], include_in_schema=False)
async def statement(
    request: Request[Any, Any, Any], month: Filter = None, tenant: Filter = None, team: Filter = None,
    format: Annotated[str, QueryParameter(schema_extra={"enum": list(FORMATS)})] = "html",
) -> Response[Any]:
    check_format(format, FORMATS)
    return respond(await invoice_of(request, request.app.state.ctx, month, tenant, team), format)


HANDLERS = [invoices_page, statement]
