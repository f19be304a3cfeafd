"""Admin endpoints (role admin: gateway/auth/guard.py guards every `/admin/...` path)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import QueryParameter

from gateway.auth.principal import principal_of
from gateway.context import GatewayContext
from gateway.inference.openai_request import ChatFields, CompletionFields
from gateway.routing_explain import KINDS, explain_route
from workers.pool import Replica


def replica_status(r: Replica, now: float) -> dict[str, Any]:
    b = r.breaker
    circuit = "closed" if b.closed else ("half-open" if b.probing or now >= b.open_until else "open")
    return {
        "url": r.url, "healthy": r.healthy, "in_flight": r.in_flight, "running": r.running, "waiting": r.waiting,
        "kv_cache": r.kv_cache, "load": r.load(), "circuit": circuit, "failures": b.failures,
        "last_error": r.last_error,
    }


def pools_status(ctx: GatewayContext) -> dict[str, Any]:
    now = time.monotonic()
    managed = ctx.supervisor.statuses()
    return {
        p.name: {
            "model": p.model,
            "balance": p.balance,
            "healthy": p.healthy_count,
            "in_flight": sum(r.in_flight for r in p.replicas),
            "replicas": [{**replica_status(r, now), "managed": managed.get(r.url)} for r in p.replicas],
        }
        for p in ctx.pools.pools
    }


@get("/admin/workers")
async def workers_status(state: State) -> dict[str, Any]:
    return {"pools": pools_status(state.ctx)}


@get("/admin/policy")
async def policy_status(state: State) -> dict[str, Any]:
    """The routing policy in force (content hash, load time, files) and the last refused reload."""
    return state.ctx.policies.status()  # type: ignore[no-any-return]


@post("/admin/route/explain", status_code=200, opt={"request_body": (ChatFields, CompletionFields)})
async def route_explain(
    request: Request[Any, Any, Any], state: State,
    kind: Annotated[str, QueryParameter(schema_extra={"enum": list(KINDS)})] = "chat",
) -> dict[str, Any]:
    """The whole routing decision for a request body, with its trace (nothing is sent to a worker)."""
    # as the admin's own key (tenant, team), never request headers
    return explain_route(state.ctx, await request.body(), kind, request.headers, principal_of(request).caller)
