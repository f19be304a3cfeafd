"""The Overview page (`/console/`): the figures of `GET /v1/reports/overview`, from the same function, over
the last 30 days; a tenant-scoped user sees their tenant's, a platform user may pick a tenant."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.params import FromQuery
from litestar.response import Template

from gateway.accounting.money import plain
from gateway.accounting.overview import DEFAULT_DAYS
from gateway.api.overview import overview_of
from gateway.api.report_query import check_query
from gateway.console.pages import OVERVIEW
from gateway.console.render import page


@get("/", opt=OVERVIEW.opt, guards=[check_query], include_in_schema=False)
async def overview_page(request: Request[Any, Any, Any], tenant: FromQuery[str | None] = None) -> Template:
    figures = await overview_of(request, None, DEFAULT_DAYS, tenant=tenant)
    chart = {"labels": [d.day.isoformat() for d in figures.trend], "series": [
        {"label": f"spend ({figures.currency})", "values": [format(d.cost, "f") for d in figures.trend]}]}
    return page(request, OVERVIEW, "overview.html", o=figures, data=plain(figures.as_dict()), chart=chart,
                tenant=tenant or "")


HANDLERS = [overview_page]
