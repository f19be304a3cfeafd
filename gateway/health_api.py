"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from gateway.context import GatewayContext


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State) -> Response[dict[str, Any]]:
    """Ready when every configured pool has at least one healthy replica."""
    ctx: GatewayContext = state.ctx
    pools = {
        p.name: {
            "model": p.model,
            "healthy": p.healthy_count,
            "replicas": [
                {"url": r.url, "healthy": r.healthy, "in_flight": r.in_flight, "last_error": r.last_error}
                for r in p.replicas
            ],
        }
        for p in ctx.pools.pools
    }
    ready = ctx.pools.ready()
    return Response({"status": "ready" if ready else "not_ready", "pools": pools},
                    status_code=200 if ready else 503)
