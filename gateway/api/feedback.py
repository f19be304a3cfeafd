"""`POST /v1/feedback`: a client's score of a call (roles app and admin; gateway/learning/feedback.py does
the work)."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.datastructures import State

from gateway.auth.principal import principal_of
from gateway.context import GatewayContext
from gateway.learning.feedback import LABELS, MAX_REQUEST_ID, submit_feedback

# The body parse_feedback accepts, for the OpenAPI document (gateway/api/openapi.py).
BODY: dict[str, Any] = {
    "type": "object",
    "required": ["request_id"],
    "anyOf": [{"required": ["score"]}, {"required": ["label"]}],
    "properties": {
        "request_id": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID,
                       "description": "the x-request-id of the call being rated"},
        "score": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "label": {"type": ["string", "null"], "enum": [*LABELS, None]},
        "model": {"type": ["string", "null"], "description": "the model that answered the call"},
    },
    "additionalProperties": False,
}


@post("/v1/feedback", status_code=200, opt={"request_body": BODY})
async def feedback(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    ctx: GatewayContext = state.ctx
    return await submit_feedback(ctx.feedback, ctx.accounting.engine, principal_of(request), await request.body())
