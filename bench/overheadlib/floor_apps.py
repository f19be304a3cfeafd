"""Floors for the instruction count (bench/instruction_floors.py): the least a server can do per call.

- `plain`: raw ASGI under uvicorn, reading the body and answering a fixed chat completion;
- `litestar`: the same answer from a Litestar `@asgi` route behind an app-wide guard (the gateway's shape
  before gateway/front.py);
- `proxy`: raw ASGI forwarding the body to the mock with aiohttp (the gateway's client and settings) and
  answering what it got: the floor of any gateway built on these libraries;
- `relay`: the same for a stream, passing each piece on as it arrives.

`bench/overhead.py` also runs `plain` (the floor of a cache hit: nothing but HTTP), `proxy` and `relay` as
servers in the same run as the gateway, so that each target can be read against what the libraries alone
reach on the machine. `FLOOR_UPSTREAM` is the mock's endpoint.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from litestar import Litestar, asgi
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.types import Receive, Scope, Send

from gateway.settings import Settings
from workers.upstream import new_upstream

BODY = (b'{"id":"chatcmpl-floor","object":"chat.completion","model":"demo-small","choices":[],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')
UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "")


async def _read(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _answer(send: Send, content: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content, "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def plain(scope: Any, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await _read(receive)
    await _answer(send, BODY)


_session: aiohttp.ClientSession | None = None


async def _post(body: bytes) -> aiohttp.ClientResponse:
    global _session
    if _session is None:  # the gateway's own client, with its default settings
        defaults = Settings()
        _session = new_upstream(defaults.upstream_connect_timeout_s, defaults.upstream_timeout_s,
                                defaults.upstream_max_connections).session
    return await _session.post(UPSTREAM, data=body, allow_redirects=False, headers={
        "content-type": "application/json", "accept-encoding": "identity", "x-request-id": "floor"})


async def proxy(scope: Any, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    response = await _post(await _read(receive))
    content = await response.read()
    response.release()
    await _answer(send, content)


async def relay(scope: Any, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    response = await _post(await _read(receive))
    await send({"type": "http.response.start", "status": response.status,
                "headers": [(b"content-type", response.headers.get("content-type", "text/event-stream").encode())]})
    async for piece in response.content.iter_any():
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    response.release()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    connection.scope.setdefault("state", {})["principal"] = connection.headers.get("authorization")


@asgi("/v1/chat/completions", copy_scope=False, opt={"methods": ("POST",)})
async def _chat(scope: Scope, receive: Receive, send: Send) -> None:
    await _read(receive)
    await _answer(send, BODY)


litestar = Litestar(route_handlers=[_chat], guards=[_guard], openapi_config=None, logging_config=None)
