"""The pooled client that calls workers (workers/upstream.py), against a real HTTP server on localhost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from workers.upstream import KEEPALIVE_S, Upstream, new_upstream

pytestmark = pytest.mark.pure

WORKER_KEEPALIVE_S = 5.0  # vLLM's server (uvicorn) closes a connection idle this long


@dataclass
class Worker:
    url: str = ""
    cookies: list[str | None] = field(default_factory=list)  # the Cookie header each call carried
    ports: list[int] = field(default_factory=list)  # the client's port of each call: the connection it came on


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    """A worker that answers every call with a Set-Cookie."""
    state = Worker()

    async def answer(request: web.Request) -> web.Response:
        state.cookies.append(request.headers.get("Cookie"))
        assert request.transport is not None
        state.ports.append(request.transport.get_extra_info("peername")[1])
        response = web.json_response({"ok": True})
        response.set_cookie("session", "tenant-a-secret")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, keepalive_timeout=WORKER_KEEPALIVE_S)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://localhost:{runner.addresses[0][1]}"  # a host name: an IP address keeps no cookies anyway
    try:
        yield state
    finally:
        await runner.cleanup()


async def call(upstream: Upstream, url: str) -> None:
    response = await upstream.send(url + "/v1/chat/completions", b"{}", {"content-type": "application/json"})
    assert response.status_code == 200
    assert "session=tenant-a-secret" in response.headers["set-cookie"]  # set on every answer
    assert await response.aread() == b'{"ok": true}'
    await response.aclose()


async def test_cookies_a_worker_sets_are_never_sent_on_later_calls(worker: Worker) -> None:
    upstream = new_upstream(connect_timeout=2.0, timeout=5.0, max_connections=4)
    try:
        for _ in range(2):
            await call(upstream, worker.url)
    finally:
        await upstream.aclose()
    assert worker.cookies == [None, None]  # the second call (maybe another tenant's) carries no cookie of the first
    assert worker.ports[0] == worker.ports[1]  # one kept-alive connection


async def test_idle_connections_are_closed_before_the_worker_closes_them(worker: Worker) -> None:
    # Otherwise a call may be written on a connection the worker is closing, and fail before any answer.
    assert KEEPALIVE_S < WORKER_KEEPALIVE_S
    upstream = new_upstream(connect_timeout=2.0, timeout=5.0, max_connections=4)
    try:
        await call(upstream, worker.url)
        await asyncio.sleep(KEEPALIVE_S + 0.5)  # idle past the gateway's limit, not yet the worker's
        await call(upstream, worker.url)
    finally:
        await upstream.aclose()
    assert worker.ports[0] != worker.ports[1]  # the gateway had closed the idle connection and opened another
