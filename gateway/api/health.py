"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from gateway.api.admin import pools_status
from gateway.context import GatewayContext


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


NOT_READY = ResponseSpec(dict[str, Any], generate_examples=False,
                         description="Not ready: the same body, with `status` not_ready")


@get("/readyz", responses={503: NOT_READY})
async def readyz(state: State) -> Response[dict[str, Any]]:
    """Ready when every configured pool has at least one healthy replica; the body also details the
    response cache (backend, ok, errors, last error)."""
    ctx: GatewayContext = state.ctx
    ready = ctx.pools.ready()
    body = {"status": "ready" if ready else "not_ready", "pools": pools_status(ctx)}
    await ctx.cache.check()  # reported, never a reason to be unready: without it the gateway serves uncached
    body["cache"] = ctx.cache.status()
    return Response(body, status_code=200 if ready else 503)
