"""`GET /v1/reports/invoice?month=YYYY-MM[&tenant=][&team=][&format=json|csv|html]`: a tenant's (or one
team's) monthly statement (gateway/accounting/invoice.py builds it).

Role finance or admin. A tenant-scoped key gets its own tenant's statements (it may leave `tenant` out;
another tenant is a 403 `tenant_out_of_scope`); a key that sees every tenant names one. `month` is
required; a bad month or format, or any other query parameter, is a 400. The CSV is a download,
`invoice-<tenant>[-<team>]-<YYYY-MM>.csv`; the HTML a standalone page that prints on A4.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.params import QueryParameter

from gateway.accounting.invoice import Invoice, build_invoice, parse_month
from gateway.accounting.invoice_render import FORMATS, render, to_json
from gateway.accounting.reads import within
from gateway.accounting.reports import ReportError
from gateway.api.downloads import csv_response
from gateway.api.report_query import check_format, report_filters, report_guard
from gateway.auth.principal import principal_of
from gateway.context import GatewayContext
from router.errors import InvalidRequest


@get("/v1/reports/invoice", guards=[report_guard], opt={"produces": tuple(FORMATS.values())})
async def invoice_report(
    request: Request[Any, Any, Any],
    state: State,
    month: Annotated[str | None, QueryParameter(description="the statement's month, YYYY-MM (UTC)")] = None,
    tenant: Annotated[str | None, QueryParameter(
        description="the tenant billed (a tenant-scoped key: its own, the default)")] = None,
    team: Annotated[str | None, QueryParameter(description="only this team of the tenant")] = None,
    format: Annotated[str, QueryParameter(schema_extra={"enum": list(FORMATS)})] = "json",
) -> Response[Any]:
    check_format(format, FORMATS)
    return respond(await invoice_of(request, state.ctx, month, tenant, team), format)


async def invoice_of(request: Request[Any, Any, Any], ctx: GatewayContext, month: str | None, tenant: str | None,
                     team: str | None) -> Invoice:
    """The statement a query asks for, within the caller's scope: the endpoint's and the console's."""
    try:
        when = parse_month(month)
    except ReportError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_report_query") from exc
    filters = report_filters(principal_of(request), tenant=tenant, team=team)
    if filters.tenant is None:
        raise InvalidRequest("`tenant` is required: this key sees every tenant; name the one billed",
                             param="tenant", code="invalid_report_query")
    return await within(build_invoice(
        ctx.accounting.engine, tenant=filters.tenant, team=filters.team, month=when,
        currency=ctx.accounting.catalogue.currency, soft_pct=ctx.settings.budget_soft_pct,
        policy_hash=ctx.policies.active.policy.hash), ctx.settings.report_timeout_s)


def respond(invoice: Invoice, fmt: str) -> Response[Any]:
    if fmt == "csv":
        return csv_response(render(invoice, "csv"), invoice.filename_stem + ".csv")
    if fmt == "html":
        return Response(render(invoice, "html"), media_type=FORMATS["html"])
    return Response(to_json(invoice), media_type=FORMATS["json"])
