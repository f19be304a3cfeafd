"""`GET /v1/reports/budgets[?format=json|csv][&tenant=]`: every team and key budget, its period, what it
spent (recorded by accounting and, live, in the limits' counters, with what calls in flight reserved) and
what remains. Role finance or admin; a tenant-scoped key sees its own tenant's budgets only, and any
other query parameter is a 400 (gateway/api/report_query.py). The CSV is a download, `budgets.csv`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.params import QueryParameter

from gateway.accounting.reads import within
from gateway.api.downloads import csv_response
from gateway.api.report_query import check_format, report_filters, report_guard
from gateway.api.reports import FORMATS
from gateway.auth.principal import principal_of
from gateway.context import GatewayContext
from gateway.limits.budgets import BudgetRow, budget_rows, to_csv
from gateway.limits.service import from_units


@get("/v1/reports/budgets", guards=[report_guard],
     opt={"produces": tuple(FORMATS.values())})  # the document: gateway/api/openapi.py
async def budgets_report(
    request: Request[Any, Any, Any], state: State,
    format: Annotated[str, QueryParameter(schema_extra={"enum": list(FORMATS)})] = "json",
    tenant: Annotated[str | None, QueryParameter(description="only this tenant's budgets")] = None,
) -> Response[Any]:
    check_format(format, FORMATS)
    rows = await budgets_of(request, state.ctx, tenant)
    if format == "csv":
        return csv_response(to_csv(rows), "budgets.csv")
    return Response(msgspec.json.encode({"budgets": [r.as_dict() for r in rows]}), media_type="application/json")


async def budgets_of(request: Request[Any, Any, Any], ctx: GatewayContext, tenant: str | None) -> list[BudgetRow]:
    """The budgets the caller may see (its own tenant's when tenant-scoped; 403 for another), with the live
    counters: the endpoint's rows and the console's Budgets page's."""
    scope = report_filters(principal_of(request), tenant=tenant).tenant
    limits = ctx.limits
    assert limits is not None
    rows = await within(budget_rows(ctx.accounting.engine, ctx.accounting.catalogue.currency, limits.soft_pct,
                                    tenant=scope), ctx.settings.report_timeout_s)
    live = await limits.backend.read([r.counter for r in rows]) if rows else []
    for row, counters in zip(rows, live, strict=True):
        if counters is not None:
            spent, committed = counters
            row.live_spent, row.live_reserved = from_units(spent), from_units(max(committed - spent, 0))
    return rows
