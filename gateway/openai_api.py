"""The OpenAI-compatible endpoints. Thin: parse what the gateway needs, pick the pool, relay."""

from __future__ import annotations

import time
import uuid
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State

from gateway.accounting import Accounting
from gateway.accounting.records import failure_of
from gateway.context import GatewayContext
from gateway.openai_request import ChatFields, CompletionFields, parse_body, prompt_prefix, upstream_body
from gateway.relay import Outcome, RelayStream, finish, read_usage
from gateway.request_id import request_id
from workers.upstream import open_call


async def _forward(
    request: Request[Any, Any, Any],
    ctx: GatewayContext,
    path: str,
    kind: type[ChatFields] | type[CompletionFields],
    accounting: Accounting,
) -> Response[Any]:
    started = time.perf_counter()
    rid = request_id(request)
    # Every call ends in finish(outcome), which hands it to the recorder (accounting).
    outcome = Outcome(request_id=rid, model="", started=started, sink=accounting.recorder.record)
    if request.headers.get("x-request-id") == rid:  # the client's own id: recorded under one of ours
        outcome.record_id = uuid.uuid4().hex
    try:
        body = await request.body()
        parsed = parse_body(body, kind)
        outcome.requested_model = parsed.fields.model
        model = ctx.catalogue.resolve(parsed.fields.model)
        pool = ctx.pools.by_model[model]
        outcome.model, outcome.pool = model, pool.name
        outcome.prompt = parsed.data.get("messages", parsed.data.get("prompt"))  # for an estimate only
        payload, strip_usage = upstream_body(parsed, model, body)
        settings = ctx.settings
        prefix = prompt_prefix(parsed.data, pool.affinity.prefix_chars) if pool.affinity else None
        call = await open_call(ctx.client, pool, path, payload, rid, settings.upstream_attempts, prefix)
    except BaseException as exc:
        outcome.failure, outcome.error, outcome.status = failure_of(exc), type(exc).__name__, getattr(exc, "status", 0)
        finish(outcome)
        raise
    outcome.replica, outcome.status = call.replica.url, call.response.status_code
    headers = {"x-request-id": rid, "x-gateway-model": model}
    upstream_headers = call.response.headers
    media_type = upstream_headers.get("content-type", "application/json")
    if media_type.startswith("text/"):
        media_type = media_type.split(";", 1)[0]  # Litestar appends "; charset=utf-8" to text types itself
    if parsed.fields.stream and call.response.status_code == 200:
        return RelayStream(call, strip_usage, outcome, media_type=media_type, headers=headers)
    try:
        content = await call.response.aread()
    except BaseException as exc:
        outcome.failure, outcome.error = failure_of(exc), type(exc).__name__
        finish(outcome)
        raise
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
    return await _forward(request, state.ctx, "/v1/chat/completions", ChatFields, state.accounting)


@post("/v1/completions", status_code=200)
async def completions(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    return await _forward(request, state.ctx, "/v1/completions", CompletionFields, state.accounting)


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
