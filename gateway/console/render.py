"""Rendering the console's pages: the templates, the layout's context, chart data, and errors as HTML pages
(the same status and message the API gives, through the app's one error mapping: gateway/errors.py)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template import TemplateConfig

from gateway.auth.principal import principal_of
from gateway.console.pages import Page, visible
from gateway.console.session import PATH, SESSION_COOKIE, SignInNeeded
from gateway.errors import EXCEPTION_HANDLERS
from gateway.request_id import request_id
from router.pricing import format_money

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
LOGIN = f"{PATH}/login"


def money(exact: str | Decimal) -> str:
    """An exact amount as people read it (6 places: router.pricing.format_money); tables keep the exact text."""
    return format_money(Decimal(exact))


def _filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["money"] = money


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The app's templates: the console's, in Jinja with autoescaping on."""
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_filters)


def layout(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """What the base layout shows: who is signed in, the pages their role sees, whether auth is off."""
    signed = (request.scope.get("state") or {}).get("principal")  # set by the console's guard (None: sign-in)
    principal = principal_of(request) if signed is not None else None
    ctx = getattr(request.app.state, "ctx", None)
    auth_off = ctx is not None and ctx.auth is not None and not ctx.auth.required
    return {"principal": principal, "nav": visible(principal.role) if principal else [], "auth_off": auth_off}


def page(request: Request[Any, Any, Any], current: Page, template: str, **context: Any) -> Template:
    """`template` rendered in the layout, `current` marked in the navigation."""
    return Template(template_name=template, context={**layout(request), "page": current, **context},
                    headers={"cache-control": "no-store"})


def sign_in_redirect(request: Request[Any, Any, Any]) -> Response[Any]:
    """To the sign-in form, coming back here afterwards (for a page the browser asked for with GET)."""
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = LOGIN if request.method != "GET" else f"{LOGIN}?next={quote(back, safe='')}"
    answer = Redirect(target, status_code=303)
    if request.cookies.get(SESSION_COOKIE):
        answer.delete_cookie(SESSION_COOKIE, path=PATH)
    return answer


def on_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Any error of a console route: a sign-in redirect, else an HTML page with the API's status and message."""
    if isinstance(exc, SignInNeeded):
        return sign_in_redirect(request)
    handler = next(h for cls in type(exc).__mro__ if (h := EXCEPTION_HANDLERS.get(cls)) is not None)
    answer = handler(request, exc)  # the API's answer: OpenAI's envelope (and the log line of a failure)
    error = msgspec.json.decode(answer.content)["error"]
    return Template(template_name="error.html", status_code=answer.status_code,
                    context={**layout(request), "page": None, "status": answer.status_code, "error": error},
                    headers={**answer.headers, "x-request-id": request_id(request), "cache-control": "no-store"})


EXCEPTIONS: dict[Any, Any] = {cls: on_error for cls in (*EXCEPTION_HANDLERS, SignInNeeded)}
