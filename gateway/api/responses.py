"""`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` (the Responses API): passed to the replica
that holds the response (gateway/inference/kept_responses.py) and its answer back unchanged; a response the gateway
does not know for the caller's tenant is a 404. Neither generates anything: neither is recorded (the call
that made the response is)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from gateway.auth.principal import principal_of
from gateway.context import GatewayContext
from gateway.request_id import request_id
from router.errors import NoHealthyReplica
from workers.upstream import UPSTREAM_ERRORS, AiohttpResponse


async def _call(request: Request[Any, Any, Any], response_id: str, suffix: str, method: str) -> Response[Any]:
    ctx: GatewayContext = request.app.state.ctx
    assert ctx.responses is not None
    _, pool, replica = await ctx.responses.pin_of(response_id, principal_of(request).tenant)
    url = f"{replica.url}/v1/responses/{quote(response_id, safe='')}{suffix}"
    if query := request.scope.get("query_string", b""):
        url += "?" + query.decode("latin-1")
    headers = {"x-request-id": request_id(request), "accept-encoding": "identity", **pool.headers}
    try:
        answer = await (ctx.upstream.get(url, headers) if method == "GET" else ctx.upstream.send(url, b"", headers))
    except UPSTREAM_ERRORS as exc:
        raise NoHealthyReplica(f"The worker holding response '{response_id}' cannot be reached right now; retry "
                               "shortly.", headers={"retry-after": "1"}) from exc
    media_type = answer.headers.get("content-type", "application/json")
    rid = {"x-request-id": request_id(request)}
    if answer.status_code == 200 and media_type.startswith("text/event-stream"):  # a background stream's events
        return Stream(_relay(answer), status_code=200, media_type=media_type, headers=rid)
    try:
        body = await answer.aread()
    finally:
        await answer.aclose()
    return Response(body, status_code=answer.status_code, media_type=media_type, headers=rid)


async def _relay(answer: AiohttpResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    finally:
        await answer.aclose()


@get("/v1/responses/{response_id:str}", opt={"produces": ("application/json", "text/event-stream")})
async def retrieve_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> Response[Any]:
    """A response the caller's tenant made, from the replica that holds it (`stream=true`: a background
    response's events, `starting_after` one of them)."""
    return await _call(request, response_id, "", "GET")


@post("/v1/responses/{response_id:str}/cancel", status_code=200)
async def cancel_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> Response[Any]:
    """Cancels a background response the caller's tenant made."""
    return await _call(request, response_id, "/cancel", "POST")
