"""`POST /v1/feedback`: a client's score of a call (roles app and admin; gateway/learning/feedback.py does
the work)."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.datastructures import State

from gateway.auth.principal import principal_of
from gateway.context import GatewayContext
from gateway.learning.feedback import submit_feedback


@post("/v1/feedback", status_code=200)
async def feedback(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    ctx: GatewayContext = state.ctx
    return await submit_feedback(ctx.feedback, ctx.accounting.engine, principal_of(request), await request.body())
