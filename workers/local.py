"""Replicas this gateway starts itself (the simulator so far): one process each, stopped with us."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger("gateway.workers")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the replica gets SIGTERM if the gateway dies without cleaning up (even on kill -9).
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(eq=False)
class LocalReplica:
    pool: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


def sim_command(model: str, port: int, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "workers.simulator", "--model", model, "--port", str(port), *args]


def start_sim(pool: str, model: str, index: int, args: tuple[str, ...], log_dir: Path) -> LocalReplica:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{pool}-{index}.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            sim_command(model, port, args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    return LocalReplica(pool, f"http://127.0.0.1:{port}", process, log_path)


async def wait_healthy(replicas: list[LocalReplica], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False) as client:
        for r in replicas:
            while True:
                if r.process.poll() is not None:
                    tail = r.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"replica {r.url} of pool {r.pool} exited at start:\n{tail}")
                try:
                    if (await client.get(f"{r.url}/health", timeout=1.0)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {r.url} of pool {r.pool} not healthy after {timeout:.0f}s")
                await asyncio.sleep(0.05)


def stop_all(replicas: list[LocalReplica], grace: float = 5.0) -> None:
    for r in replicas:
        if r.process.poll() is None:
            r.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for r in replicas:
        try:
            r.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()
