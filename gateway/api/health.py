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
    """Ready when every configured pool (with `readiness_pools: any`, one pool) has a healthy replica and
    calls can be authenticated (the database answers, or keys are known from before it stopped: `auth` is
    `last_known`); the body also details the response cache (backend, ok, errors, last error) and the
    database (`ok` or `degraded`, with its last error)."""
    ctx: GatewayContext = state.ctx
    reads = ctx.accounting.reads
    await reads.check()  # a bounded SELECT 1, at most once per database_retry_s
    auth = ctx.auth.readiness() if ctx.auth is not None else "ok"
    ready = ctx.pools.ready(ctx.settings.readiness_pools == "all") and auth != "unavailable"
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "pools": pools_status(ctx)}
    await ctx.cache.check()  # reported, never a reason to be unready: without it the gateway serves uncached
    body["cache"] = ctx.cache.status()
    body["database"] = reads.state  # degraded is not a reason to be unready while keys are known
    if reads.state == "degraded":
        body["database_error"] = reads.last_error
    body["auth"] = auth
    return Response(body, status_code=200 if ready else 503)
