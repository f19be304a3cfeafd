"""The OpenAI-compatible endpoints. Thin: parse what the gateway needs, pick the pool, relay."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

from gateway.context import GatewayContext
from gateway.openai_request import ChatFields, CompletionFields, parse_body, upstream_body
from gateway.relay import Outcome, finish, read_usage, relay_stream
from gateway.request_id import request_id
from workers.upstream import open_call


async def _forward(
    request: Request[Any, Any, Any],
    ctx: GatewayContext,
    path: str,
    kind: type[ChatFields] | type[CompletionFields],
) -> Response[Any]:
    started = time.perf_counter()
    rid = request_id(request)
    body = await request.body()
    parsed = parse_body(body, kind)
    model = ctx.catalogue.resolve(parsed.fields.model)
    pool = ctx.pools.by_model[model]
    payload, strip_usage = upstream_body(parsed, model, body)
    settings = ctx.settings
    call = await open_call(ctx.client, pool, path, payload, rid, settings.upstream_attempts)
    outcome = Outcome(request_id=rid, model=model, started=started, replica=call.replica.url,
                      status=call.response.status_code)
    headers = {"x-request-id": rid, "x-gateway-model": model}
    upstream_headers = call.response.headers
    media_type = upstream_headers.get("content-type", "application/json")
    if media_type.startswith("text/"):
        media_type = media_type.split(";", 1)[0]  # Litestar appends "; charset=utf-8" to text types itself
    if parsed.fields.stream and call.response.status_code == 200:
        return Stream(relay_stream(call, strip_usage, outcome), media_type=media_type, headers=headers)
    try:
        content = await call.response.aread()
    finally:
        await call.aclose()
    outcome.first_byte = time.perf_counter()
    if call.response.status_code == 200:
        outcome.usage = read_usage(content)
        outcome.completed = True
    finish(outcome)
    return Response(content, status_code=call.response.status_code, media_type=media_type, headers=headers)


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    return await _forward(request, state.ctx, "/v1/chat/completions", ChatFields)


@post("/v1/completions", status_code=200)
async def completions(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    return await _forward(request, state.ctx, "/v1/completions", CompletionFields)


@get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    ctx: GatewayContext = state.ctx
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": ctx.started_at, "owned_by": "gateway"}
            for name in ctx.catalogue.routable()
        ],
    }
