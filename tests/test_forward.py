"""Forwarding one request to its targets (workers/forward.py): admission, replica failover, model fallback,
against real HTTP workers on localhost (small aiohttp servers) and ports where nothing listens."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from router.errors import NoHealthyReplica, PoolOverloaded, UpstreamTimeout
from workers.forward import forward_call
from workers.launcher import free_port
from workers.pool import Gate, Pool, Replica
from workers.upstream import Upstream, UpstreamCall, new_upstream

PROMPT = "a prompt that must never reach a log line"


@dataclass
class Worker:
    """A worker answering every call with `status` (after `delay_s`); it keeps what each call carried."""

    status: int = 200
    delay_s: float = 0.0
    url: str = ""
    calls: list[tuple[dict[str, str], dict[str, object]]] = field(default_factory=list)  # lower-case headers, body
    called: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Seen:
    """What a `CallObserver` is told, in order."""

    events: list[tuple[str, ...]] = field(default_factory=list)

    def calling(self, model: str, pool: str) -> Mapping[str, str]:
        self.events.append(("calling", model, pool))
        return {"traceparent": f"00-{'1' * 32}-{len(self.events):016x}-01"}

    def failed(self, error: BaseException | int) -> None:
        self.events.append(("failed", str(error) if isinstance(error, int) else type(error).__name__))

    def opened(self, call: UpstreamCall) -> None:
        self.events.append(("opened", call.replica.url, str(call.response.status_code)))


async def _serve(worker: Worker) -> web.AppRunner:
    async def answer(request: web.Request) -> web.Response:
        worker.calls.append(({k.lower(): v for k, v in request.headers.items()}, await request.json()))
        worker.called.set()
        if worker.delay_s:
            await asyncio.sleep(worker.delay_s)
        return web.json_response({"status": worker.status}, status=worker.status)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    worker.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


@pytest.fixture
async def workers() -> AsyncIterator[tuple[Worker, Worker, Worker]]:
    """A worker that answers 200, one that answers 500, one that takes 2 s to answer."""
    started = (Worker(), Worker(status=500), Worker(delay_s=2.0))
    runners = [await _serve(w) for w in started]
    try:
        yield started
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = new_upstream(connect_timeout=1.0, timeout=0.5, max_connections=8)
    try:
        yield client
    finally:
        await client.aclose()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens here: the connection is refused


def pool(name: str, *urls: str, limit: int = 4, max_queue: int = 4) -> Pool:
    replicas = [Replica(url, name, healthy=True) for url in urls]
    return Pool(name, f"m-{name}", replicas, gate=Gate(name, limit, max_queue, max_wait_s=0.2))


def prepare(model: str, target: Pool) -> tuple[bytes, bytes | None]:
    """The body for `model` (as the gateway makes it), and no affinity prefix."""
    return json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}]}).encode(), None


async def forward(upstream: Upstream, targets: list[Pool], seen: Seen | None = None) -> tuple[str, UpstreamCall]:
    done = await forward_call(upstream, [(p.model, p) for p in targets], "/v1/chat/completions", prepare, "rid-1",
                              attempts=2, observer=seen)
    return done.model, done.call


def assert_idle(*pools: Pool) -> None:
    """No call open on any replica, and every gate entered was left exactly once."""
    for p in pools:
        assert p.gate is not None and p.gate.active == 0, p.name
        assert all(r.in_flight == 0 for r in p.replicas), p.name


async def test_a_pool_whose_replicas_all_refuse_falls_back_to_the_next_model(
    upstream: Upstream, workers: tuple[Worker, Worker, Worker], caplog: pytest.LogCaptureFixture
) -> None:
    ok = workers[0]
    down, up = pool("down", dead_url(), dead_url()), pool("up", ok.url)
    seen = Seen()
    with caplog.at_level(logging.WARNING, "gateway.workers"):
        model, call = await forward(upstream, [down, up], seen)
    assert (model, call.replica.url, call.response.status_code) == ("m-up", ok.url, 200)
    assert not any(r.healthy for r in down.replicas)  # refused: out until the health checker brings them back
    assert up.gate is not None and up.gate.active == 1  # held by the open call
    await call.aclose()
    await call.aclose()  # closing again changes nothing
    assert_idle(down, up)
    headers, body = ok.calls[-1]
    assert body["model"] == "m-up" and headers["x-request-id"] == "rid-1"
    assert headers["traceparent"] == f"00-{'1' * 32}-{3:016x}-01"  # the observer's headers for this target
    assert seen.events == [("calling", "m-down", "down"), ("failed", "NoHealthyReplica"),
                           ("calling", "m-up", "up"), ("opened", ok.url, "200")]
    assert "request rid-1: pool down cannot serve m-down; falling back to m-up" in caplog.messages
    assert sum("refused, trying another" in m for m in caplog.messages) == 2
    assert not any(PROMPT in m for m in caplog.messages)


async def test_a_5xx_answer_falls_back_after_trying_another_replica(
    upstream: Upstream, workers: tuple[Worker, Worker, Worker], caplog: pytest.LogCaptureFixture
) -> None:
    ok, failing, _ = workers
    before = len(failing.calls)
    # Two replicas (two names for the same worker), both answering 500.
    sick, up = pool("sick", failing.url, failing.url.replace("127.0.0.1", "localhost")), pool("up", ok.url)
    seen = Seen()
    with caplog.at_level(logging.WARNING, "gateway.workers"):
        model, call = await forward(upstream, [sick, up], seen)
    assert (model, call.response.status_code) == ("m-up", 200)
    await call.aclose()
    assert_idle(sick, up)
    assert len(failing.calls) - before == 2  # both replicas of the first pool were tried (attempts=2)
    assert all(r.last_error == "answered 500" and r.breaker.failures == 1 for r in sick.replicas)
    assert seen.events[:2] == [("calling", "m-sick", "sick"), ("failed", "500")]
    assert "request rid-1: pool sick answered 500; falling back to m-up" in caplog.messages


async def test_the_last_target_fails_as_it_would_alone(
    upstream: Upstream, workers: tuple[Worker, Worker, Worker]
) -> None:
    failing = workers[1]
    first, last = pool("first", dead_url()), pool("last", dead_url())
    seen = Seen()
    with pytest.raises(NoHealthyReplica, match="model `m-last`") as raised:
        await forward(upstream, [first, last], seen)
    assert raised.value.headers == {"retry-after": "1"}
    assert seen.events == [("calling", "m-first", "first"), ("failed", "NoHealthyReplica"),
                           ("calling", "m-last", "last"), ("failed", "NoHealthyReplica")]
    assert_idle(first, last)
    # A 5xx from the last target is the answer: returned as it is, for the client to see.
    sick = pool("sick", failing.url)
    model, call = await forward(upstream, [pool("gone", dead_url()), sick], seen)
    assert (model, call.response.status_code) == ("m-sick", 500)
    assert seen.events[-1] == ("opened", failing.url, "500")
    await call.aclose()
    assert_idle(sick)


async def test_a_timeout_or_a_full_pool_is_raised_without_falling_back(
    upstream: Upstream, workers: tuple[Worker, Worker, Worker]
) -> None:
    ok, _, slow = workers
    before = len(ok.calls)
    late, up = pool("late", slow.url), pool("up", ok.url)
    seen = Seen()
    with pytest.raises(UpstreamTimeout, match="model `m-late`"):
        await forward(upstream, [late, up], seen)
    assert seen.events == [("calling", "m-late", "late"), ("failed", "UpstreamTimeout")]
    assert_idle(late, up)
    full = pool("full", ok.url, limit=1, max_queue=0)
    assert full.gate is not None
    await full.gate.enter()  # another call holds the pool's only slot
    with pytest.raises(PoolOverloaded):
        await forward(upstream, [full, up])
    assert full.gate.active == 1  # the holder's slot only: the refused call never had one
    full.gate.leave()
    assert_idle(full, up)
    assert len(ok.calls) == before  # no fallback was tried


async def test_a_caller_leaving_before_the_answer_leaves_the_gate_once(
    upstream: Upstream, workers: tuple[Worker, Worker, Worker]
) -> None:
    slow = workers[2]
    late, spare = pool("late", slow.url), pool("spare", dead_url())
    seen = Seen()
    task = asyncio.ensure_future(forward(upstream, [late, spare], seen))
    await slow.called.wait()  # the worker has the call
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen.events == [("calling", "m-late", "late"), ("failed", "CancelledError")]
    assert_idle(late, spare)
    assert late.replicas[0].breaker.failures == 0  # the client left: no verdict on the worker
