"""The pooled client that calls workers (workers/upstream.py), against a real HTTP server on localhost."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from workers.upstream import new_upstream


@pytest.fixture
async def worker() -> AsyncIterator[tuple[str, list[str | None]]]:
    """A worker that answers every call with a Set-Cookie and notes the Cookie header each call carried."""
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "tenant-a-secret")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://localhost:{port}", seen  # a host name: an IP address would not keep cookies anyway
    finally:
        await runner.cleanup()


async def test_cookies_a_worker_sets_are_never_sent_on_later_calls(worker: tuple[str, list[str | None]]) -> None:
    url, seen = worker
    upstream = new_upstream(connect_timeout=2.0, timeout=5.0, max_connections=4)
    try:
        for _ in range(2):
            response = await upstream.send(url + "/v1/chat/completions", b"{}", {"content-type": "application/json"})
            assert response.status_code == 200
            assert "session=tenant-a-secret" in response.headers["set-cookie"]  # set on every answer
            assert await response.aread() == b'{"ok": true}'
            await response.aclose()
    finally:
        await upstream.aclose()
    assert seen == [None, None]  # the second call (maybe another tenant's) carries no cookie of the first
