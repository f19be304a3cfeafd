"""`gateway serve --workers 2`, real processes on real Redis and PostgreSQL: refused without redis_url; the
launched replicas started once, by the parent, on ports of `launch_ports`; both processes answer and every
answered call has exactly one usage record; a process killed with -9 is replaced while the other serves;
SIGTERM drains a call in flight, exits 0 and leaves no process.

The shared limits, budgets and revocations over two processes are tests/test_limits_gateway.py's `pair` tests,
which run on one `gateway serve --workers 2` too."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.chaos_support import alive, descendants
from tests.gateway_process import GATEWAY_BIN, GatewayProcess, free_ports, start_gateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.pg_support import create_pg_database, drop_pg_database
from tests.services import libpq_dsn, redis_url

CHAT = {"model": "demo-small", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}


def serving(gw: GatewayProcess) -> dict[int, int]:
    """The serving processes of a gateway: index -> pid."""
    return {int(cmd.split("--index ")[1].split()[0]): pid for pid, cmd in descendants(gw.process.pid).items()
            if "-m gateway.commands.serve --index " in cmd}


def requests_served(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gateway_requests_total{"))


def gateway_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


@dataclass
class Served:
    gw: GatewayProcess
    database_url: str
    metrics_port: int
    ports: range  # launch_ports
    held: int  # a port of launch_ports another process listens on


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One `gateway serve --workers 2`: PostgreSQL migrated by its parent (auto_migrate), Redis, the embedded
    pools' two simulators launched on ports of launch_ports, whose first port something else holds."""
    require_redis()
    url = asyncio.run(create_pg_database())
    prefix = unique_prefix()
    first, metrics_port = free_ports(4), free_ports(2)
    config = {"database_url": url, "auto_migrate": True, "redis_url": redis_url(), "limits_key_prefix": prefix,
              "cache_key_prefix": prefix + "cache:", "feedback_key_prefix": prefix + "feedback:",
              "responses_key_prefix": prefix + "responses:", "recorder_flush_interval_s": 0.05, "workers": 2,
              "metrics_port": metrics_port, "launch_ports": f"{first}-{first + 3}"}
    gw = None
    try:
        with socket.create_server(("127.0.0.1", first)):
            gw = start_gateway(tmp_path_factory.mktemp("workers"), config)
            yield Served(gw, url, metrics_port, range(first, first + 4), first)
    finally:
        if gw is not None:
            gw.stop()
        delete_prefix(prefix)
        asyncio.run(drop_pg_database(url))


def test_several_processes_are_refused_without_redis_url(tmp_path: Path) -> None:
    for args, env in ((["--workers", "2"], {}), ([], {"GATEWAY_WORKERS": "3"})):
        out = subprocess.run([str(GATEWAY_BIN), "serve", "--port", str(free_ports(1)), *args], cwd=tmp_path,
                             env={**gateway_env(), **env}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("gateway: error: invalid settings: workers: ") and \
            "needs redis_url (GATEWAY_REDIS_URL)" in out.stderr
        assert not (tmp_path / ".gateway").exists()  # nothing launched, nothing written


def test_the_replicas_are_launched_once_on_ports_of_launch_ports(served: Served) -> None:
    r = httpx.get(served.gw.base_url + "/admin/workers", headers=served.gw.auth, timeout=10)
    assert r.status_code == 200, r.text
    urls = [rep["url"] for pool in r.json()["pools"].values() for rep in pool["replicas"]]
    ports = sorted(int(u.rsplit(":", 1)[1]) for u in urls)
    assert len(ports) == 2 and all(p in served.ports and p != served.held for p in ports), (ports, served.ports)
    sims = [cmd for cmd in descendants(served.gw.process.pid).values() if "-m vllm_sim " in cmd]
    assert sorted(int(cmd.split("--port ")[1].split()[0]) for cmd in sims) == ports  # one of each, not one per process
    logs = sorted((served.gw.log_path.parent / ".gateway" / "logs").glob("*.log"))
    assert [sum(line.startswith("$ ") for line in f.read_text().splitlines()) for f in logs] == [1, 1]


def test_both_processes_answer_and_every_answered_call_has_one_record(served: Served) -> None:
    rids = [f"workers-{uuid.uuid4().hex}" for _ in range(40)]

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            calls = [client.post(served.gw.api + "/chat/completions", json={**CHAT, "seed": i},
                                 headers={**served.gw.auth, "x-request-id": rid}) for i, rid in enumerate(rids)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(burst()) == [200] * len(rids)
    assert all(requests_served(f"http://127.0.0.1:{served.metrics_port + i}/metrics") > 0 for i in range(2))

    async def counts() -> dict[str, int]:
        conn = await asyncpg.connect(libpq_dsn(served.database_url))
        try:
            rows = await conn.fetch("SELECT client_request_id, count(*) AS n FROM usage_records "
                                    "WHERE client_request_id = ANY($1::text[]) GROUP BY 1", rids)
        finally:
            await conn.close()
        return {r["client_request_id"]: r["n"] for r in rows}

    deadline = time.monotonic() + 20
    while len(found := asyncio.run(counts())) < len(rids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found == dict.fromkeys(rids, 1)


def restarts_shown(metrics_url: str) -> dict[int, float]:
    """`gateway_replica_restarts` of one process, by the replica's port."""
    text = httpx.get(metrics_url, timeout=10).text
    return {int(line.split('replica="')[1].split('"')[0].rsplit(":", 1)[1]): float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("gateway_replica_restarts{")}


def test_every_process_shows_the_parents_supervision_of_the_launched_replicas(served: Served) -> None:
    """The serving processes launch nothing: `/admin/workers` and `gateway_replica_restarts` tell what the
    parent's supervisor knows (state, pid, restarts), a killed replica's restart included."""
    def managed() -> dict[int, dict[str, Any]]:
        r = httpx.get(served.gw.base_url + "/admin/workers", headers=served.gw.auth, timeout=10)
        assert r.status_code == 200, r.text
        return {int(rep["url"].rsplit(":", 1)[1]): rep["managed"]
                for pool in r.json()["pools"].values() for rep in pool["replicas"]}

    sims = {int(cmd.split("--port ")[1].split()[0]): pid
            for pid, cmd in descendants(served.gw.process.pid).items() if "-m vllm_sim " in cmd}
    assert {port: (m["state"], m["pid"], m["restarts"]) for port, m in managed().items()} == \
        {port: ("ready", pid, 0) for port, pid in sims.items()}
    metrics = [f"http://127.0.0.1:{served.metrics_port + i}/metrics" for i in range(2)]
    assert [restarts_shown(url) for url in metrics] == [dict.fromkeys(sims, 0.0)] * 2

    port, pid = min(sims.items())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while [restarts_shown(url).get(port) for url in metrics] != [1.0, 1.0] or managed()[port]["state"] != "ready":
        assert time.monotonic() < deadline, (managed(), [restarts_shown(url) for url in metrics])
        time.sleep(0.2)
    assert managed()[port]["pid"] not in (None, pid)


def test_a_process_killed_with_sigkill_is_replaced_while_the_other_serves(served: Served) -> None:
    before = serving(served.gw)
    assert sorted(before) == [1, 2]
    os.kill(before[1], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (now := serving(served.gw)).get(1) in (None, before[1]):
        # Every call meanwhile is answered: by process 2, or, queued on process 1's socket, by its replacement.
        r = httpx.post(served.gw.api + "/chat/completions", json=CHAT, headers=served.gw.auth, timeout=30)
        assert r.status_code == 200, r.text
        assert time.monotonic() < deadline, "process 1 was not started again"
    assert now[2] == before[2]
    served.gw.wait_logged(f"process 1 (pid {now[1]}) serves", max(0.0, deadline - time.monotonic()))
    requests_served(f"http://127.0.0.1:{served.metrics_port}/metrics")  # the new process serves its metrics
    assert "process 1 exited (status -9); starting it again in " in served.gw.log()


def test_sigterm_drains_a_call_in_flight_exits_0_and_leaves_no_process(tmp_path: Path) -> None:
    require_redis()
    slow = {"name": "small", "model": "demo-small",
            "launch": {"engine": "sim", "replicas": 1, "args": ["--output-token-ms", "50"]}}
    gw = start_gateway(tmp_path, {"workers": 2, "redis_url": redis_url(), "pools": [slow]})
    try:
        tree = descendants(gw.process.pid)
        assert sum("-m vllm_sim " in c for c in tree.values()) == 1 and len(serving(gw)) == 2
        first_byte = threading.Event()
        result: dict[str, Any] = {}

        def call() -> None:
            with httpx.stream("POST", gw.api + "/chat/completions", json={**CHAT, "max_tokens": 60, "stream": True},
                              headers=gw.auth, timeout=30) as r:
                body = b""
                for chunk in r.iter_raw():
                    body += chunk
                    first_byte.set()
                result["status"], result["body"] = r.status_code, body

        caller = threading.Thread(target=call)
        caller.start()
        assert first_byte.wait(20)
        gw.process.send_signal(signal.SIGTERM)
        caller.join(30)
        assert result["status"] == 200 and result["body"].rstrip().endswith(b"data: [DONE]")  # ~3 s, drained whole
        assert gw.process.wait(timeout=60) == 0, gw.log()[-3000:]
        deadline = time.monotonic() + 10
        while (left := [p for p in tree if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, {p: tree[p] for p in left}
        assert not list((tmp_path / ".gateway").glob("launched-*")), "the replicas' status file was left"
    finally:
        gw.stop()


def test_a_process_that_cannot_start_three_times_ends_the_serve_with_its_error(tmp_path: Path) -> None:
    """Process 2's metrics port is taken: it fails at start, again and again; the serve ends with its error line
    and status 1, as one process's failed start does, and leaves nothing running."""
    require_redis()
    metrics_port = free_ports(2)
    pool = {"name": "small", "model": "demo-small", "launch": {"engine": "sim", "replicas": 1}}
    config = tmp_path / "gateway.yaml"
    config.write_text(f"workers: 2\nredis_url: {redis_url()}\nmetrics_port: {metrics_port}\npools: [{pool}]\n")
    with socket.create_server(("127.0.0.1", metrics_port + 1)):
        proc = subprocess.Popen([str(GATEWAY_BIN), "serve", "--port", str(free_ports(1)), "--config", str(config)],
                                cwd=tmp_path, env=gateway_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            # Each failed start is a few seconds; a cancelled Redis listener once held each for 30 s.
            _, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tree = descendants(proc.pid)
    assert proc.returncode == 1, err[-3000:]
    assert "Address already in use" in err.splitlines()[-1], err[-3000:]
    assert err.count("process 2 did not start") == 2 and "process 2 failed to start 3 times in a row" in err, \
        err[-3000:]
    assert not tree
