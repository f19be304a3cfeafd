"""What the gateway does when bodies are too big, workers are down, slow, failing or vanish mid-stream,
and when the client goes away. Workers are simulated vLLM engines with failure injection."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_process import GatewayProcess, start_gateway
from workers.launcher import free_port

HELLO = [{"role": "user", "content": "Say hello."}]


def metric(base_url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def recorded(gw: GatewayProcess, client_request_id: str) -> tuple[str, str, int]:
    """(status, usage_source, completion_tokens) of a call, from the gateway's embedded database."""
    db = gw.log_path.parent / ".gateway" / "gateway.db"
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT status, usage_source, completion_tokens FROM usage_records "
                               "WHERE client_request_id = ?", (client_request_id,)).fetchone()
        if row is not None:
            return row  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no usage record for {client_request_id}"
        time.sleep(0.1)


def set_faults(replica: str, **faults: object) -> None:
    httpx.post(replica + "/sim/faults", json=faults).raise_for_status()


def replicas(gw: GatewayProcess, pool: str) -> list[str]:
    return [r["url"] for r in httpx.get(gw.base_url + "/readyz").json()["pools"][pool]["replicas"]]


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    config = {
        "max_body_bytes": 4096,
        "upstream_timeout_s": 1.0,
        "health_interval_s": 0.5,
        "pools": [
            {"name": "ok", "model": "m-ok", "launch": {"replicas": 2, "args": ["--output-token-ms", "20"]}},
            {"name": "dead", "model": "m-dead", "replicas": [dead]},
            {"name": "mixed", "model": "m-mixed", "replicas": [dead], "launch": {"replicas": 1}},
            {"name": "slow", "model": "m-slow", "launch": {"replicas": 1, "args": ["--output-token-ms", "10"]}},
            {"name": "gated", "model": "m-gated", "launch": {"replicas": 1, "args": ["--output-token-ms", "10"]},
             "admission": {"max_in_flight": 1, "max_queue": 1, "max_wait_s": 0.3}},
        ],
    }
    gw = start_gateway(tmp_path_factory.mktemp("troubled"), config, ready=False)
    yield gw
    gw.stop()


def chat(gw: GatewayProcess, model: str, **extra: object) -> httpx.Response:
    return httpx.post(gw.api + "/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 3, **extra},
                      timeout=30, headers=gw.auth)


def test_body_over_the_limit_is_413(troubled: GatewayProcess) -> None:
    r = chat(troubled, "m-ok", padding="x" * 5000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert "4096" in r.json()["error"]["message"]


def test_no_healthy_worker_is_503_with_retry_after(troubled: GatewayProcess) -> None:
    r = chat(troubled, "m-dead")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "no_healthy_replica"


def test_readiness_says_which_pool_is_down(troubled: GatewayProcess) -> None:
    r = httpx.get(troubled.base_url + "/readyz")
    assert r.status_code == 503
    pools = r.json()["pools"]
    assert pools["dead"]["healthy"] == 0 and pools["ok"]["healthy"] == 2
    assert pools["dead"]["replicas"][0]["last_error"]


def test_a_dead_replica_is_skipped(troubled: GatewayProcess) -> None:
    assert all(chat(troubled, "m-mixed").status_code == 200 for _ in range(6))


def test_a_5xx_before_the_first_byte_retries_on_another_replica(troubled: GatewayProcess) -> None:
    first, second = replicas(troubled, "ok")
    set_faults(first, error_rate=1.0, status=500)
    try:
        before = metric(first, "sim_injected_errors_total")
        results = [chat(troubled, "m-ok").status_code for _ in range(6)]
        assert results == [200] * 6
        assert metric(first, "sim_injected_errors_total") > before  # the failing replica was tried
        # With every replica failing, the worker's own 5xx comes back after the retries.
        set_faults(second, error_rate=1.0, status=500)
        assert chat(troubled, "m-ok").status_code == 500
    finally:
        set_faults(first, error_rate=0.0)
        set_faults(second, error_rate=0.0)


def test_worker_timeout_is_504(troubled: GatewayProcess) -> None:
    (slow,) = replicas(troubled, "slow")
    set_faults(slow, stall_rate=1.0, stall_ms=3000)
    try:
        started = time.monotonic()
        r = chat(troubled, "m-slow")
        assert r.status_code == 504
        assert r.json()["error"]["type"] == "timeout_error"
        assert time.monotonic() - started < 2.5
    finally:
        set_faults(slow, stall_rate=0.0)


def test_worker_dying_mid_stream_ends_the_stream_with_an_error_event(troubled: GatewayProcess) -> None:
    (slow,) = replicas(troubled, "slow")
    set_faults(slow, die_rate=1.0, die_after_tokens=3)
    try:
        r = httpx.post(troubled.api + "/chat/completions", timeout=30,
                       headers={**troubled.auth, "x-request-id": "dies-mid-stream"},
                       json={"model": "m-slow", "messages": HELLO, "max_tokens": 20, "stream": True})
        assert r.status_code == 200
        events = [e for e in r.content.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert events[-2].startswith(b'data: {"error":')
        assert b'"code":"upstream_stream_broken"' in events[-2]
        assert any(b'"delta":{"content"' in e for e in events[:-2])
        # The partial usage is on the books: the tokens relayed before the worker died.
        row = recorded(troubled, "dies-mid-stream")
        assert row[:2] == ("upstream_error", "estimate") and row[2] == 3
    finally:
        set_faults(slow, die_rate=0.0)


def test_client_going_away_cancels_the_upstream_request(troubled: GatewayProcess) -> None:
    (slow,) = replicas(troubled, "slow")
    cancelled_before = metric(slow, "sim_requests_cancelled_total")
    body = {"model": "m-slow", "messages": HELLO, "max_tokens": 900, "stream": True}
    with httpx.Client(timeout=10) as client, client.stream("POST", troubled.api + "/chat/completions", json=body,
                                                               headers=troubled.auth) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # the stream has started upstream
    deadline = time.monotonic() + 3
    while metric(slow, "sim_requests_cancelled_total") == cancelled_before:
        assert time.monotonic() < deadline, "the worker went on generating after the client left"
        time.sleep(0.05)
    assert metric(slow, "vllm:num_requests_running") == 0


async def test_admission_control_bounds_the_wait_then_refuses(troubled: GatewayProcess) -> None:
    body = {"model": "m-gated", "messages": HELLO, "max_tokens": 60}
    async with httpx.AsyncClient(timeout=30, headers=troubled.auth) as client:
        first = asyncio.create_task(client.post(troubled.api + "/chat/completions", json=body))
        await asyncio.sleep(0.15)  # the first call holds the pool's only slot for ~0.6 s
        queued = asyncio.create_task(client.post(troubled.api + "/chat/completions", json=body))
        await asyncio.sleep(0.05)
        refused = await client.post(troubled.api + "/chat/completions", json=body)  # queue full: at once
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "pool_overloaded"
        waited = await queued  # waited 0.3 s for the slot, then refused
        assert waited.status_code == 503 and "waited 0.3s" in waited.json()["error"]["message"]
        assert (await first).status_code == 200
        assert (await client.post(troubled.api + "/chat/completions", json=body)).status_code == 200


def test_client_leaving_before_the_first_chunk_still_cancels_the_upstream_request(troubled: GatewayProcess) -> None:
    (slow,) = replicas(troubled, "slow")
    cancelled_before = metric(slow, "sim_requests_cancelled_total")
    set_faults(slow, stall_rate=1.0, stall_ms=700)  # the worker answers its headers 0.7 s late
    try:
        body = {"model": "m-slow", "messages": HELLO, "max_tokens": 900, "stream": True}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up first
            httpx.post(troubled.api + "/chat/completions", json=body, timeout=0.2,
                       headers={**troubled.auth, "x-request-id": "left-early"})
        deadline = time.monotonic() + 4
        while metric(slow, "sim_requests_cancelled_total") == cancelled_before:
            assert time.monotonic() < deadline, "the worker went on generating for a client that had left"
            time.sleep(0.05)
        # And the call is on the books, as cancelled by the client.
        log = troubled.wait_logged("request_id=left-early ", max(0.0, deadline - time.monotonic()))
        line = next(x for x in log.splitlines() if "request_id=left-early " in x)
        assert "completed=False" in line
    finally:
        set_faults(slow, stall_rate=0.0)


def test_gateway_stop_stops_its_workers(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, {"pools": [{"name": "p", "model": "m", "launch": {"replicas": 2}}]})
    urls = replicas(gw, "p")
    gw.stop()
    assert gw.process.returncode == 0
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
