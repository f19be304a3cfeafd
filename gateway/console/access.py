"""The console's guard: every console route but sign-in needs a signed-in finance or admin key (or auth
off), and each page's own roles (gateway/console/pages.py). The principal is put where the API's guard
puts it, so `principal_of(request)` and the tenant scope work the same way."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.auth.guard import REPORTS
from gateway.console.pages import PAGE_OPT, PUBLIC_OPT, Page
from gateway.console.session import signed_in
from gateway.context import GatewayContext
from router.errors import AuthUnavailable, Forbidden


async def console_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    if handler.opt.get(PUBLIC_OPT):
        return
    ctx: GatewayContext | None = getattr(connection.app.state, "ctx", None)
    if ctx is None or ctx.auth is None:
        raise AuthUnavailable("The gateway is not ready to check API keys.", headers={"retry-after": "1"})
    principal = await signed_in(connection, ctx.auth)
    connection.scope.setdefault("state", {})["principal"] = principal
    page = handler.opt.get(PAGE_OPT)
    roles = page.roles if isinstance(page, Page) else REPORTS
    if principal.role not in roles:
        title = page.title if isinstance(page, Page) else "This page"
        raise Forbidden(f"{title} is for the role {' or '.join(sorted(roles))}; you are signed in with a "
                        f"{principal.role} key.")
