"""`GET /v1/models`: what clients may ask for."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State

from gateway.context import GatewayContext


@get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    ctx: GatewayContext = state.ctx
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": ctx.started_at, "owned_by": "gateway"}
            for name in ctx.policies.active.routable
        ],
    }
