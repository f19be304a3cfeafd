"""The Workers page (`/console/workers`, admins): each pool's replicas with their health, load, requests in
flight, circuit breaker and, for replicas the gateway launched, the supervisor's state and restarts.

The page and `GET /console/workers.json` show `pools_status(ctx)`, the function behind `GET /admin/workers`;
the page's script (`static/workers.js`) fetches the JSON every few seconds and redraws the table."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.response import Template

from gateway.api.admin import pools_status
from gateway.api.report_query import check_query
from gateway.console.pages import WORKERS
from gateway.console.render import page

REFRESH_S = 3  # how often the page's table is redrawn


@get("/workers", opt=WORKERS.opt, guards=[check_query], include_in_schema=False)
async def workers_page(request: Request[Any, Any, Any]) -> Template:
    return page(request, WORKERS, "workers.html", pools=pools_status(request.app.state.ctx), refresh_s=REFRESH_S)


@get("/workers.json", opt=WORKERS.opt, guards=[check_query], include_in_schema=False)
async def workers_json(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """What `GET /admin/workers` answers."""
    return Response({"pools": pools_status(request.app.state.ctx)}, headers={"cache-control": "no-store"})


HANDLERS = [workers_page, workers_json]
