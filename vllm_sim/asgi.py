"""The simulator's ASGI 3 plumbing: reading a body, answering, noticing a client that went away,
and dropping a connection on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "JSON_HEADERS",
    "Ctl",
    "Receive",
    "Scope",
    "Send",
    "SimulatedDeath",
    "read_body",
    "respond",
    "run_cancellable",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"), (b"vary", b"Origin")]


class SimulatedDeath(Exception):
    """Raised out of the ASGI app to make the server drop the connection mid-response.

    uvicorn answers an exception raised after the response started by closing the
    transport, so the client sees a truncated body (no terminating chunk).  The matching
    "Exception in ASGI application" log record is filtered out of ``uvicorn.error``.
    """


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    extra: list[tuple[bytes, bytes]],
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers, *extra],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Ctl:
    """Shared between a request's work and its disconnect watcher."""

    __slots__ = ("done", "fired")

    def __init__(self) -> None:
        self.done = False  # the response is complete (or being completed): ignore disconnects
        self.fired = False  # the watcher cancelled the work because the client went away


async def run_cancellable(receive: Receive, work: Callable[[Ctl], Awaitable[None]]) -> bool:
    """Run ``work``; cancel it as soon as the client disconnects (ASGI ``http.disconnect``).

    Returns True when the client went away and the work was cancelled for it: that
    cancellation is swallowed here (nobody is left to answer).
    """
    task = asyncio.current_task()
    assert task is not None
    ctl = Ctl()

    async def watch() -> None:
        while True:
            try:
                message = await receive()
            except Exception:  # a server that fails receive() once the client is gone
                message = {"type": "http.disconnect"}
            if message["type"] == "http.disconnect":
                if not ctl.done:
                    ctl.fired = True
                    task.cancel()
                return

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await work(ctl)
    except asyncio.CancelledError:
        if ctl.fired:
            task.uncancel()
            return True
        raise
    finally:
        ctl.done = True
        watcher.cancel()
    return False
