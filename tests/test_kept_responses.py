"""The responses workers keep (gateway/inference/response_pins.py and kept_responses.py): which replica
holds each response, in memory and in the real Redis; only the tenant that made a response may name it; a call pinned to
a replica goes there and nowhere else (workers/forward.py, against real HTTP workers on localhost); a
background response is followed until it is made, then recorded once with its usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway.inference.kept_responses import KeptCall, KeptResponses
from gateway.inference.response_pins import MemoryPins, Pin, RedisPins
from gateway.outcome import Outcome, Step
from gateway.redis_batch import RedisBatcher
from router.errors import NoHealthyReplica, ResponseNotFound, ResponsesUnavailable
from tests.limits_support import delete_prefix, unique_prefix
from workers.forward import forward_call
from workers.pool import Pool, Pools, Replica
from workers.upstream import new_upstream


def pin(n: int, tenant: str = "acme") -> Pin:
    return Pin(tenant, "tiny", "p", f"http://replica-{n}")


@pytest.mark.pure
async def test_memory_pins_bound_and_expiry() -> None:
    now = [0.0]
    pins = MemoryPins(10, 3, clock=lambda: now[0])
    for n in range(5):
        pins.put(f"resp_{n}", pin(n))
        now[0] += 1
    assert len(pins) == 3 and await pins.get("resp_1") is None and await pins.get("resp_4") == pin(4)
    now[0] = 12.0  # resp_2 was put at 2: gone at 12
    assert await pins.get("resp_2") is None and await pins.get("resp_3") == pin(3)


async def test_redis_pins_read_their_own_pending_write(aredis: Redis) -> None:
    prefix = unique_prefix()
    batcher = RedisBatcher(aredis, later_s=5.0)  # the write waits for company: the lookup is its company
    pins = RedisPins(batcher, prefix, 60)
    try:
        pins.put("resp_a", pin(1))
        started = time.monotonic()
        assert await pins.get("resp_a") == pin(1)  # a follow-up call right after the answer finds it
        assert await pins.get("resp_b") is None  # this one went to Redis, with the write
        assert time.monotonic() - started < 1
        assert 58 <= await aredis.ttl(f"{prefix}resp_a") <= 60
        assert await RedisPins(batcher, prefix, 60).get("resp_a") == pin(1)  # another gateway process
    finally:
        await batcher.aclose()
        delete_prefix(prefix)


class Broken:
    def put(self, response_id: str, pin: Pin) -> None:
        raise AssertionError("not written")

    async def get(self, response_id: str) -> Pin | None:
        raise ConnectionError("redis is away")


@pytest.mark.pure
async def test_a_response_is_its_tenants_alone() -> None:
    replica = Replica("http://replica-1", "p", healthy=True)
    pools = Pools([Pool("p", "tiny", [replica])])
    pins = MemoryPins(60, 10)
    kept = KeptResponses(pins, new_upstream(1, 1, 1), pools)
    try:
        pins.put("resp_1", pin(1))
        assert await kept.pin_of("resp_1", "acme") == (pin(1), pools.pools[0], replica)
        for tenant, response in (("globex", "resp_1"), ("acme", "resp_unknown")):
            with pytest.raises(ResponseNotFound) as info:
                await kept.pin_of(response, tenant, "previous_response_id")
            assert info.value.status == 404 and info.value.param == "previous_response_id"
            assert info.value.message == f"Response with id '{response}' not found."
        pins.put("resp_2", Pin("acme", "tiny", "p", "http://replica-gone"))  # the configuration changed since
        with pytest.raises(ResponseNotFound):
            await kept.pin_of("resp_2", "acme")
        with pytest.raises(ResponsesUnavailable) as away:
            await KeptResponses(Broken(), kept.upstream, pools).pin_of("resp_1", "acme")
        assert away.value.status == 503
    finally:
        await kept.upstream.aclose()


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[list[str], list[int], dict[str, list[str]]]]:
    """Three workers answering `/v1/responses` (the third with 500) and `GET /v1/responses/{id}`: a response is
    `queued`, then `in_progress`, then completed with its usage. Yields their URLs, the statuses and each
    worker's calls."""
    statuses = [200, 200, 500]
    calls: dict[str, list[str]] = {}
    polls: dict[str, int] = {}
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    for status in statuses:
        async def create(request: web.Request, status: int = status) -> web.Response:
            calls.setdefault(str(request.url.origin()), []).append("POST")
            return web.json_response({"id": "resp_x", "status": "queued", "usage": None}, status=status)

        async def retrieve(request: web.Request) -> web.Response:
            response = request.match_info["id"]
            calls.setdefault(str(request.url.origin()), []).append(f"GET {response}")
            polls[response] = polls.get(response, 0) + 1
            if polls[response] < 3:
                return web.json_response({"id": response, "status": "in_progress" if polls[response] > 1 else "queued",
                                          "usage": None})
            return web.json_response({"id": response, "status": "completed", "usage": {
                "input_tokens": 20, "output_tokens": 7, "total_tokens": 27,
                "input_tokens_details": {"cached_tokens": 16}}})

        app = web.Application()
        app.router.add_post("/v1/responses", create)
        app.router.add_get("/v1/responses/{id}", retrieve)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield urls, statuses, calls
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_a_pinned_call_goes_to_its_replica_alone(
        replicas: tuple[list[str], list[int], dict[str, list[str]]]) -> None:
    urls, _, calls = replicas
    pool = Pool("p", "tiny", [Replica(u, "p", healthy=True) for u in urls])
    upstream = new_upstream(1, 5, 10)

    def prepare(model: str, pool: Pool) -> tuple[bytes, bytes | None]:
        return b"{}", None

    try:
        for _ in range(4):  # least-loaded would spread these; the pin keeps them on the second replica
            done = await forward_call(upstream, [("tiny", pool)], "/v1/responses", prepare, "r", 3, pinned=urls[1])
            assert done.call.replica.url == urls[1]
            await done.call.aclose()
        assert calls == {urls[1]: ["POST"] * 4}
        # The replica holding the response answers 5xx: that answer, not another replica's (none has it).
        done = await forward_call(upstream, [("tiny", pool)], "/v1/responses", prepare, "r", 3, pinned=urls[2])
        assert done.call.response.status_code == 500 and done.call.replica.url == urls[2]
        await done.call.aclose()
        assert urls[0] not in calls
        pool.replicas[1].healthy = False  # gone: nobody else can continue its responses
        with pytest.raises(NoHealthyReplica):
            await forward_call(upstream, [("tiny", pool)], "/v1/responses", prepare, "r", 3, pinned=urls[1])
    finally:
        await upstream.aclose()


async def test_background_response_is_followed_then_recorded_once(
        replicas: tuple[list[str], list[int], dict[str, list[str]]]) -> None:
    urls, _, calls = replicas
    replica = Replica(urls[0], "p", healthy=True)
    pool = Pool("p", "tiny", [replica])
    pins = MemoryPins(60, 10)
    kept = KeptResponses(pins, new_upstream(1, 5, 10), Pools([pool]), poll_s=0.01)
    recorded: list[Outcome] = []
    outcome = Outcome("r1", "tiny", time.perf_counter(), status=200, replica=urls[0],
                      steps=(Step("record", recorded.append),))
    call = KeptCall(kept, "resp_r1", "acme", keep=True, background=True)
    try:
        call.opened("tiny", pool, replica)
        assert await pins.get("resp_r1") == Pin("acme", "tiny", "p", urls[0])  # pinned before the client had it
        call.done(outcome)  # the POST's answer (`queued`) is over; the response is not made yet
        call.done(outcome)  # the stream's own clean-up calls it again: still followed once
        assert recorded == []
        for _ in range(200):
            if recorded:
                break
            await asyncio.sleep(0.01)
        assert recorded == [outcome] and outcome.completed and not outcome.cancelled
        assert outcome.usage is not None and (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (20, 7)
        details = outcome.usage.prompt_tokens_details
        assert details is not None and details.cached_tokens == 16
        assert calls[urls[0]] == ["GET resp_r1"] * 3
    finally:
        await kept.close()
        await kept.upstream.aclose()


async def test_following_stops_with_the_gateway_and_records_what_is_known(
        replicas: tuple[list[str], list[int], dict[str, list[str]]]) -> None:
    urls, _, _ = replicas
    replica = Replica(urls[0], "p", healthy=True)
    pool = Pool("p", "tiny", [replica])
    kept = KeptResponses(MemoryPins(60, 10), new_upstream(1, 5, 10), Pools([pool]), poll_s=30)
    recorded: list[Outcome] = []
    outcome = Outcome("r2", "tiny", time.perf_counter(), status=200, replica=urls[0],
                      steps=(Step("record", recorded.append),))
    call = KeptCall(kept, "resp_r2", "acme", keep=False, background=True)
    call.opened("tiny", pool, replica)
    call.done(outcome)
    await asyncio.sleep(0)
    await kept.close()
    await kept.upstream.aclose()
    assert recorded == [outcome] and outcome.error == "GatewayStopped" and outcome.usage is None
