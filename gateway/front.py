"""The served app: Litestar, with a short way in for inference calls.

A POST to `/v1/chat/completions` or `/v1/completions` is what the gateway serves thousands of times a
second; Litestar's routing, middleware and guard machinery cost such a call more than uvicorn's whole
answer does (docs/performance.md, "Measurements behind the code"). Those calls take a short way: the
same key check (`gateway.auth.guard.admit`), the same handler, and an error raised before the answer
starts is rendered by the app's own exception handlers, as Litestar would (in Anthropic's envelope on
`/v1/messages`, whose clients use Anthropic's SDK). Other methods on those paths (405), other paths and
lifespan events go to Litestar.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send

from gateway.api.openai import forward
from gateway.auth.guard import INFERENCE, admit
from gateway.errors import EXCEPTION_HANDLERS, as_anthropic
from gateway.inference.endpoints import ENDPOINTS

__all__ = ["GatewayApp"]


class GatewayApp(Litestar):
    """What `create_app` builds and uvicorn serves: inference POSTs go straight to their handler."""

    __slots__ = ()

    async def __call__(self, scope: Scope | LifeSpanScope, receive: Receive | LifeSpanReceive,
                       send: Send | LifeSpanSend) -> None:
        if scope.get("method") == "POST" and scope.get("path") in ENDPOINTS:  # only an HTTP scope has a method
            await _inference(self, scope, receive, send)  # type: ignore[arg-type]
        else:
            await super().__call__(scope, receive, send)


async def _inference(app: Litestar, scope: Scope, receive: Receive, send: Send) -> None:
    scope["app"] = scope["litestar_app"] = app  # what Litestar's connection objects read
    scope.setdefault("state", {})
    connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope, receive)
    endpoint = ENDPOINTS[scope["path"]]
    try:
        await admit(connection, INFERENCE)
        answer = await forward(connection, app.state.ctx, endpoint)
    except Exception as exc:  # before the answer started: rendered as Litestar renders a route's error
        await _render(app, scope, receive, send, exc, endpoint.errors == "anthropic")
        return
    await answer.send(receive, send)


async def _render(app: Litestar, scope: Scope, receive: Receive, send: Send, exc: Exception,
                  anthropic: bool = False) -> None:
    handler = next(h for cls in type(exc).__mro__ if (h := EXCEPTION_HANDLERS.get(cls)) is not None)
    request = app.request_class(scope=scope, receive=receive, send=send)
    response = handler(request, exc)
    if anthropic:  # Anthropic's Messages API: its SDK reads Anthropic's envelope
        response = as_anthropic(response)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)
