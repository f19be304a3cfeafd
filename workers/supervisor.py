"""Starting launched replicas, watching them, restarting the ones that die (with backoff, up to a
limit), and stopping them all cleanly. One process group per replica, so vLLM's children go too."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp

from workers.health import fetch
from workers.launcher import ReplicaPlan

log = logging.getLogger("gateway.workers")

State = Literal["starting", "ready", "restarting", "failed", "stopped"]
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


def _die_with_parent() -> None:
    os.setsid()  # own process group: stop() signals the replica and every child it spawned
    if sys.platform.startswith("linux"):  # and it is told to stop if we die without stopping it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, which only wait to be reaped, do not count)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for entry in entries:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@dataclass(eq=False)
class ManagedReplica:
    plan: ReplicaPlan
    log_path: Path
    state: State = "starting"
    process: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)  # when it was restarted (monotonic)
    last_error: str | None = None
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return self.plan.url

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def status(self) -> dict[str, object]:
        return {
            "state": self.state, "pid": self.process.pid if self.process else None,
            "restarts": len(self.restarts), "last_error": self.last_error, "log": str(self.log_path),
            "gpus": list(self.plan.gpus),
        }


class Supervisor:
    def __init__(self, plans: Sequence[ReplicaPlan], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.replicas = [ManagedReplica(p, log_dir / f"{p.name}.log") for p in plans]
        self._tmp = log_dir.parent / "tmp"
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Start every replica and return once each is ready or given up."""
        firsts = [asyncio.get_running_loop().create_future() for _ in self.replicas]
        self._tasks = [asyncio.create_task(self._run(r, f)) for r, f in zip(self.replicas, firsts, strict=True)]
        await asyncio.gather(*firsts)

    async def _spawn(self, r: ManagedReplica) -> None:
        # A temp dir of its own: vLLM leaves IPC sockets there, removed with the replica.
        tmp = self._tmp / r.plan.name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with r.log_path.open("ab") as out:
            out.write(f"\n$ {' '.join(r.plan.argv)}\n".encode())
            out.flush()
            r.process = await asyncio.create_subprocess_exec(
                *r.plan.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(tmp), **r.plan.env}, preexec_fn=_die_with_parent,
            )
        r.started_at = time.monotonic()

    async def _wait_ready(self, r: ManagedReplica) -> bool:
        """True once /health answers; otherwise sets last_error (exited, or too slow and then killed)."""
        assert r.process is not None
        deadline = time.monotonic() + r.plan.ready_timeout_s
        async with aiohttp.ClientSession(trust_env=False) as session:
            while time.monotonic() < deadline:
                if r.process.returncode is not None:
                    r.last_error = f"exited with status {r.process.returncode} before it was ready"
                    return False
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    if (await fetch(session, r.url + "/health", timeout=2.0))[0] == 200:
                        return True
                await asyncio.sleep(0.1 if time.monotonic() - r.started_at < 10 else 1.0)
        r.last_error = f"not healthy after {r.plan.ready_timeout_s:.0f}s"
        await self._kill(r)
        return False

    async def _run(self, r: ManagedReplica, first: asyncio.Future[None]) -> None:
        try:
            while not self._stopping:
                await self._spawn(r)
                if await self._wait_ready(r):
                    r.state = "ready"
                    log.info("replica %s (%s) is ready at %s", r.plan.name, r.plan.model, r.url)
                    if not first.done():
                        first.set_result(None)
                    assert r.process is not None
                    code = await r.process.wait()
                    if self._stopping:
                        break
                    r.last_error = f"exited with status {code}"
                if self._stopping:
                    break
                now = time.monotonic()
                r.restarts = [t for t in r.restarts if now - t < r.plan.restart_window_s]
                if len(r.restarts) >= r.plan.max_restarts:
                    r.state = "failed"
                    log.error("replica %s gave up after %d restarts: %s\n%s", r.plan.name, len(r.restarts),
                              r.last_error, r.log_tail())
                    break
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** len(r.restarts))
                r.state = "restarting"
                log.warning("replica %s %s; restarting in %.1fs", r.plan.name, r.last_error, delay)
                r.restarts.append(now)
                await asyncio.sleep(delay)
        finally:
            if not first.done():
                first.set_result(None)

    async def _kill(self, r: ManagedReplica, grace: float = 10.0) -> None:
        """SIGTERM to the replica's whole process group; SIGKILL to what is left after `grace`."""
        proc = r.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
        # vLLM's worker processes can outlive the server by a moment; wait for them too.
        while group_alive(proc.pid) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling procfs
            await asyncio.sleep(0.1)
        if group_alive(proc.pid) or proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*(self._kill(r) for r in self.replicas))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in self.replicas:
            r.state = "stopped"
            shutil.rmtree(self._tmp / r.plan.name, ignore_errors=True)
