"""The console's routes, as mounted on the app: the pages under `/console` with their own middleware
(sessions, CSRF), guard and HTML errors, and the static files (stylesheet, script, the vendored Chart.js)."""

from __future__ import annotations

from litestar import Router, get
from litestar.params import FromPath
from litestar.static_files import create_static_files_router

from gateway.console import budgets, invoices, keys_page, overview, routing_page, signin, spend, workers_page
from gateway.console.access import console_guard
from gateway.console.render import EXCEPTIONS, STATIC
from gateway.console.session import PATH, console_middleware
from gateway.settings import Settings
from router.errors import RouteNotFound


@get("/{rest:path}", include_in_schema=False)
async def unknown_page(rest: FromPath[str]) -> None:
    """Any other path under /console: the 404 as an HTML page, like every console error."""
    raise RouteNotFound(f"There is no console page at {PATH}{rest}.")


def console_routers(settings: Settings) -> list[Router]:
    pages = Router(
        path=PATH, route_handlers=[*signin.HANDLERS, *overview.HANDLERS, *spend.HANDLERS, *budgets.HANDLERS,
                                   *invoices.HANDLERS, *routing_page.HANDLERS, *workers_page.HANDLERS,
                                   *keys_page.HANDLERS, unknown_page],
        guards=[console_guard], middleware=console_middleware(settings), exception_handlers=EXCEPTIONS,
        include_in_schema=False,
    )
    static = create_static_files_router(path=f"{PATH}/static", directories=[STATIC], include_in_schema=False,
                                        name="console-static")
    return [pages, static]
