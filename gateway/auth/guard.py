"""The one guard of every route (installed app-wide): authenticate, then check the role the path needs.

| path | roles |
|---|---|
| `/healthz`, `/readyz`, `/metrics` | open |
| `/console/...` | the console's own sign-in and sessions (gateway/console/access.py) |
| `/admin/...` | admin |
| `/v1/reports/...` | finance, admin |
| `/v1/feedback` | app, admin (a key rates its own tenant's calls: gateway/learning/feedback.py) |
| anything else (`/v1/chat/completions`, `/v1/completions`, `/v1/models`, new endpoints) | app, admin |

A new endpoint is therefore closed by default. The principal is kept in the request's scope
(`principal_of(request)`), where the handlers find it. Within the endpoints its role opens, a key's scope
(tenant or all) says whose data it reaches: the handlers check it (gateway/auth/scope.py), and every
report endpoint declares `gateway.api.report_query.report_guard`.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.router import Router
from litestar.utils import join_paths

from gateway.auth.principal import Principal, Role
from gateway.context import GatewayContext
from gateway.request_id import request_id
from gateway.telemetry.logs import refused
from router.errors import AuthUnavailable, Forbidden, GatewayError, MethodNotAllowed

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ADMIN: frozenset[Role] = frozenset({"admin"})
REPORTS: frozenset[Role] = frozenset({"finance", "admin"})
INFERENCE: frozenset[Role] = frozenset({"app", "admin"})

_WHAT = {ADMIN: "the admin endpoints", REPORTS: "reports", INFERENCE: "the inference endpoints"}


def roles_for(path: str) -> frozenset[Role] | None:
    """The roles that may use `path` (a route's declared path); None: open to everyone."""
    if path in OPEN_PATHS or path == "/console" or path.startswith("/console/"):
        return None  # the console checks its own sessions (gateway/console/access.py)
    if path == "/admin" or path.startswith("/admin/"):
        return ADMIN
    if path.startswith("/v1/reports"):
        return REPORTS
    return INFERENCE  # /v1/feedback included: the callers of inference rate their calls


def _handler_roles(handler: BaseRouteHandler) -> frozenset[Role] | None:
    # The paths as served: a handler on a router (the OpenAPI document's) declares them relative to it.
    owners = [layer.path for layer in handler.ownership_layers[:-1] if isinstance(layer, Router)]
    return _roles_for_paths(tuple(sorted(join_paths([*owners, p]) for p in handler.paths)))


@functools.lru_cache(maxsize=1024)  # keyed by the route's paths: bounded by the app's routes
def _roles_for_paths(paths: tuple[str, ...]) -> frozenset[Role] | None:
    roles = roles_for(paths[0]) if paths else INFERENCE
    for p in paths[1:]:  # a handler on several paths needs what the strictest one needs
        more = roles_for(p)
        roles = more if roles is None else roles if more is None else roles & more
    return roles


def check_role(principal: Principal, roles: frozenset[Role]) -> None:
    if principal.role not in roles:
        what = _WHAT.get(roles, "this endpoint")
        allowed = " or ".join(sorted(roles))
        raise Forbidden(f"A key with the role `{principal.role}` may not use {what}; it needs the role {allowed}.")


async def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The app-wide guard."""
    methods = handler.opt.get("methods")  # a raw ASGI handler's methods (Litestar routes any to it)
    if methods is not None and connection.scope.get("method") not in methods:
        method = connection.scope.get("method")
        raise MethodNotAllowed(f"Method {method} is not allowed on {connection.scope['path']}",
                               headers={"allow": ", ".join(methods)})
    roles = _handler_roles(handler)
    if roles is not None:
        await admit(connection, roles)


async def admit(connection: ASGIConnection[Any, Any, Any, Any], roles: frozenset[Role]) -> None:
    """Authenticate the caller and check its role: the guard's work, also done by the inference calls'
    own way in (gateway/front.py)."""
    ctx: GatewayContext | None = getattr(connection.app.state, "ctx", None)
    auth = ctx.auth if ctx is not None else None
    if ctx is None or auth is None:  # never in a started app; closed rather than open if it ever were
        raise AuthUnavailable("The gateway is not ready to check API keys.", headers={"retry-after": "1"})
    tracing = ctx.telemetry.tracing is not None
    started = time.perf_counter() if tracing else 0.0
    try:
        principal = await auth.authenticate(connection.headers)
        state = connection.scope.setdefault("state", {})
        state["principal"] = principal
        if tracing:  # the request's span shows the key check (gateway/telemetry/tracing.py)
            state["auth_times"] = (started, time.perf_counter())
        check_role(principal, roles)
    except GatewayError as exc:
        ctx.telemetry.metrics.requests.auth_rejected.labels(exc.code or "", str(exc.status)).inc()
        refused(request_id(connection), str(connection.scope.get("method", "")), connection.scope["path"],
                exc.status, exc.code)
        raise
