"""Signing in and out: `GET /console/login` (the form), `POST /console/login` (an API key in the form's
body, checked by the gateway's `Auth` as the API checks it; finance and admin keys only), `POST
/console/logout`. The key is never put in a URL, a log line or a page."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery
from litestar.response import Redirect, Template

from gateway.console.pages import OVERVIEW, PUBLIC_OPT
from gateway.console.render import LOGIN, layout
from gateway.console.session import CONSOLE_ROLES, PATH, end, start
from gateway.context import GatewayContext
from router.errors import AuthUnavailable, Unauthenticated

log = logging.getLogger("gateway.console")


class SignInForm(msgspec.Struct, kw_only=True):
    api_key: str = ""
    next: str = ""


def _back_to(target: str | None) -> str:
    """Where to go after sign-in: the console page the form came from (a path of this site), else the overview."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or "\\" in (target or "") or parts.path.startswith(LOGIN):
        return OVERVIEW.path
    if parts.path == PATH or parts.path.startswith(f"{PATH}/"):
        return target or OVERVIEW.path
    return OVERVIEW.path


def _form(request: Request[Any, Any, Any], status: int, target: str, problem: str | None = None) -> Template:
    return Template(template_name="login.html", status_code=status, headers={"cache-control": "no-store"},
                    context={**layout(request), "page": None, "next": target, "problem": problem})


@get("/login", opt={PUBLIC_OPT: True}, include_in_schema=False)
async def login_form(request: Request[Any, Any, Any], next: FromQuery[str | None] = None) -> Response[Any]:
    ctx: GatewayContext = request.app.state.ctx
    if ctx.auth is not None and not ctx.auth.required:  # auth off: nobody signs in
        return Redirect(_back_to(next), status_code=303)
    return _form(request, 200, _back_to(next))


@post("/login", opt={PUBLIC_OPT: True}, include_in_schema=False)
async def login(
    request: Request[Any, Any, Any], data: Annotated[SignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Response[Any]:
    ctx: GatewayContext = request.app.state.ctx
    auth = ctx.auth
    target = _back_to(data.next)
    if auth is None:
        raise AuthUnavailable("The gateway is not ready to check API keys.", headers={"retry-after": "1"})
    if not auth.required:
        return Redirect(target, status_code=303)
    key = data.api_key.strip()
    if not key:
        return _form(request, 400, target, "Enter an API key.")
    key_hash = auth.key_hash(key)
    try:
        principal = await auth.identify(key_hash)
    except Unauthenticated as exc:
        return _form(request, 401, target, exc.message)
    if principal.role not in CONSOLE_ROLES:
        return _form(request, 403, target, f"A key with the role `{principal.role}` cannot sign in to the console: "
                                           "sign in with a finance or admin key.")
    await start(request, key_hash, ctx.settings.console_session_ttl_s)
    log.info("console: %s key %s signed in", principal.role, principal.key_id or "-")
    return Redirect(target, status_code=303)


@post("/logout", include_in_schema=False)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    await end(request)
    request.clear_session()
    return Redirect(LOGIN, status_code=303)


HANDLERS = [login_form, login, logout]
