"""`GET /v1/models` and `GET /v1/models/{model}`: what clients may ask for, with the workers' own fields
(gateway/model_list.py)."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State
from litestar.params import FromPath

from gateway.context import GatewayContext
from gateway.model_list import model_entries, model_entry
from router.errors import ModelNotFound


@get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    ctx: GatewayContext = state.ctx
    return {"object": "list", "data": model_entries(ctx.policies.active, ctx.started_at)}


@get("/v1/models/{model:path}")
async def retrieve_model(state: State, model: FromPath[str]) -> dict[str, Any]:
    """One model as OpenAI serves it; a model id may hold `/` (a hub name)."""
    ctx: GatewayContext = state.ctx
    active = ctx.policies.active
    name = model.removeprefix("/")
    entry = model_entry(active, name, ctx.started_at)
    if entry is None:
        raise ModelNotFound(f"The model `{name}` does not exist. Valid models: {', '.join(active.routable)}.",
                            param="model")
    return entry
