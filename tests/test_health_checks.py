"""The health checker (workers/health.py) against a real HTTP server standing in for a vLLM replica.

It serves vLLM 0.32's real /metrics page (tests/fixtures), gzip-compressed when the client accepts it, as
vLLM's Prometheus endpoint does (the calls' session would leave it compressed: calls are passthrough).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from workers.health import check_replica
from workers.pool import Replica
from workers.upstream import Upstream, new_upstream

pytestmark = pytest.mark.pure

METRICS = (Path(__file__).resolve().parent / "fixtures" / "vllm-0.32" / "metrics.prom").read_text()
BUSY = (
    'vllm:num_requests_running{engine="0",model_name="tiny"} 3.0\n'
    'vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0\n'
    'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.5\n'
)


@dataclass
class Worker:
    url: str
    health_status: int = 200
    health_delay_s: float = 0.0
    metrics: str = METRICS
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the answers of /v1/slow
    models: list[str] = field(default_factory=lambda: ["tiny"])  # what /v1/models lists
    max_model_len: int = 1024
    api_key: str | None = None  # /v1/models wants it, as vLLM's --api-key does (/health does not)
    models_asked: int = 0


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    state = Worker("")

    async def health(request: web.Request) -> web.Response:
        await asyncio.sleep(state.health_delay_s)
        return web.Response(status=state.health_status)

    async def metrics(request: web.Request) -> web.Response:
        body = state.metrics.encode()
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
        return web.Response(body=body, content_type="text/plain")

    async def models(request: web.Request) -> web.Response:
        state.models_asked += 1
        if state.api_key is not None and request.headers.get("Authorization") != f"Bearer {state.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        created = 1796000000 + state.models_asked  # vLLM's changes with every answer
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "vllm", "root": f"/models/{m}",
             "parent": None, "max_model_len": state.max_model_len,
             "permission": [{"id": f"modelperm-{created}", "object": "model_permission"}]}
            for m in state.models]})

    async def slow(request: web.Request) -> web.StreamResponse:  # a long stream: headers now, the end later
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        await state.release.wait()
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = new_upstream(connect_timeout=1.0, timeout=5.0, max_connections=1)
    try:
        yield client
    finally:
        await client.aclose()


async def test_load_gauges_are_read_from_the_metrics_page(worker: Worker, upstream: Upstream) -> None:
    worker.metrics = METRICS + BUSY
    replica = Replica(worker.url, "p", healthy=False)
    await check_replica(upstream.checks, replica, timeout=2.0)
    assert replica.healthy
    assert (replica.running, replica.waiting, replica.kv_cache) == (3.0, 2.0, 0.5)


async def test_calls_holding_every_connection_do_not_hold_up_health_checks(worker: Worker,
                                                                           upstream: Upstream) -> None:
    call = await upstream.send(worker.url + "/v1/slow", b"{}", {})  # the calls' pool has one connection
    try:
        assert call.status_code == 200
        replica = Replica(worker.url, "p", healthy=True)
        await check_replica(upstream.checks, replica, timeout=1.0)
        assert replica.healthy, replica.last_error
    finally:
        worker.release.set()
        await call.aread()
        await call.aclose()


async def test_a_failing_or_twice_late_health_check_marks_the_replica_unhealthy(worker: Worker,
                                                                                   upstream: Upstream) -> None:
    replica = Replica(worker.url, "p", healthy=True)
    worker.health_status = 503
    await check_replica(upstream.checks, replica, timeout=2.0)
    assert not replica.healthy and replica.last_error == "/health answered 503"

    worker.health_status = 200
    await check_replica(upstream.checks, replica, timeout=2.0)
    assert replica.healthy

    # A healthy replica rides out one late answer (a busy engine); the second in a row takes it out.
    worker.health_delay_s = 1.0
    await check_replica(upstream.checks, replica, timeout=0.2)
    assert replica.healthy and replica.last_error is not None and "Timeout" in replica.last_error
    await check_replica(upstream.checks, replica, timeout=0.2)
    assert not replica.healthy and replica.late == 2
    await check_replica(upstream.checks, replica, timeout=0.2)  # an unhealthy one is not let back in late
    assert not replica.healthy

    # An answer in time ends the count: the next late one is ridden out again.
    worker.health_delay_s = 0.0
    await check_replica(upstream.checks, replica, timeout=2.0)
    assert replica.healthy and replica.late == 0
    worker.health_delay_s = 1.0
    await check_replica(upstream.checks, replica, timeout=0.2)
    assert replica.healthy
    worker.health_status, worker.health_delay_s = 503, 0.0  # another status takes it out at once
    await check_replica(upstream.checks, replica, timeout=2.0)
    assert not replica.healthy and replica.late == 0


async def test_an_unreachable_replica_is_unhealthy(upstream: Upstream) -> None:
    replica = Replica("http://127.0.0.1:9", "p", healthy=True)  # the discard port: nothing listens
    await check_replica(upstream.checks, replica, timeout=1.0)
    assert not replica.healthy
    assert replica.last_error == "/health failed: ClientConnectorError"


async def test_what_a_replica_serves_is_kept_and_a_change_is_told(worker: Worker, upstream: Upstream) -> None:
    worker.api_key = "sk-worker"
    replica = Replica(worker.url, "p")
    # Without the pool's key, /v1/models is refused: nothing is learned, the replica is healthy all the same.
    assert not await check_replica(upstream.checks, replica, 2.0, "tiny")
    assert replica.healthy and (replica.lists, replica.card) == (None, None)

    key = {"authorization": "Bearer sk-worker"}
    assert await check_replica(upstream.checks, replica, 2.0, "tiny", key)
    assert replica.lists == ("tiny",)
    assert replica.card is not None and replica.card["max_model_len"] == 1024
    assert replica.card["root"] == "/models/tiny" and replica.card["owned_by"] == "vllm"
    # A new answer (vLLM's `created` and permission ids change each time) with the same window: no change.
    first = replica.card
    assert not await check_replica(upstream.checks, replica, 2.0, "tiny", key)
    assert replica.card is not None and replica.card["created"] != first["created"]

    worker.max_model_len = 2048  # restarted with another --max-model-len
    assert await check_replica(upstream.checks, replica, 2.0, "tiny", key)
    assert replica.card is not None and replica.card["max_model_len"] == 2048

    worker.models = ["other"]  # it now serves another model: listed, no entry for this pool's
    assert await check_replica(upstream.checks, replica, 2.0, "tiny", key)
    assert replica.lists == ("other",) and replica.card is None


async def test_a_replica_gone_away_keeps_what_it_last_served(worker: Worker, upstream: Upstream) -> None:
    replica = Replica(worker.url, "p")
    assert await check_replica(upstream.checks, replica, 2.0, "tiny")
    replica.url = "http://127.0.0.1:9"  # nothing listens there
    assert not await check_replica(upstream.checks, replica, 1.0, "tiny")
    assert not replica.healthy and replica.card is not None and replica.card["max_model_len"] == 1024
