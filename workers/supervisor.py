"""Starting launched replicas, watching them, restarting the ones that die or stay unhealthy (with backoff,
up to a limit), and stopping them all cleanly. One process group per replica, so vLLM's children go too; a
watchdog process (workers/watchdog.py) stops the groups if this process dies without stopping them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from workers.groups import group_alive, stop_groups
from workers.health import fetch
from workers.launched_status import Statuses, read_statuses
from workers.launcher import ReplicaPlan
from workers.pool import Replica
from workers.watchdog import Watchdog

__all__ = ["ManagedReplica", "Supervisor", "group_alive"]

log = logging.getLogger("gateway.workers")

State = Literal["starting", "ready", "restarting", "failed", "stopped"]
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
_PR_SET_PDEATHSIG = 1


def _own_group(parent: int) -> Callable[[], None]:
    """What the replica runs before its command: a process group of its own, which stopping signals whole
    (the replica and every child it spawns), and death with us. SIGKILL, since a wedged replica ignores
    SIGTERM; it reaches only this process: the watchdog stops the rest of the group."""

    def before_exec() -> None:
        os.setsid()
        if sys.platform.startswith("linux"):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # we died before prctl could arm it
                os.kill(os.getpid(), signal.SIGKILL)

    return before_exec


@dataclass(eq=False)
class ManagedReplica:
    plan: ReplicaPlan
    log_path: Path
    state: State = "starting"
    process: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)  # when it was restarted (monotonic)
    last_error: str | None = None
    started_at: float = 0.0
    ready_at: float = 0.0
    checked: Replica | None = None  # its pool's replica, whose health the checks (workers/health.py) keep

    @property
    def url(self) -> str:
        return self.plan.url

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state, "pid": self.process.pid if self.process else None,
            "restarts": len(self.restarts), "last_error": self.last_error, "log": str(self.log_path),
            "gpus": list(self.plan.gpus),
        }


MAX_SOCKET_PATH = 107  # bytes in a Unix socket's path (sun_path, less its NUL)
SOCKET_NAME = 37  # vLLM binds its IPC sockets at <TMPDIR>/<uuid4>


def replica_temp_root(preferred: Path, names: Iterable[str]) -> Path:
    """Where the temp dirs of replicas `names` go: `preferred` (under the state dir), or, when a socket vLLM
    makes there would have too long a path, a short dir in the system's temp dir named after it (the same
    on every start, so that a restart clears what a killed replica left)."""
    longest = max((len(n) for n in names), default=0)
    if len(os.fsencode(preferred.absolute())) + 1 + longest + SOCKET_NAME <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(preferred.absolute()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"llm-gateway-{digest}"


class Supervisor:
    def __init__(self, plans: Sequence[ReplicaPlan], log_dir: Path, checked: Iterable[Replica] = (),
                 mirror: Path | None = None) -> None:
        """`checked`: the pools' replicas, kept up to date by the health checks; a launched replica among them
        that stays unhealthy past its `unhealthy_restart_s` is restarted. Without them, only one that exits.
        `mirror` (a serving process of `gateway serve --workers N`, which launches nothing): the file in which
        its parent's supervisor tells the status of the replicas it launched (workers/launched_status.py)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        self.mirror = mirror
        by_url = {c.url: c for c in checked}
        self.replicas = [ManagedReplica(p, log_dir / f"{p.name}.log", checked=by_url.get(p.url)) for p in plans]
        self._tmp = replica_temp_root(log_dir.parent / "tmp", (p.name for p in plans))
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.watchdog: Watchdog | None = None

    def statuses(self) -> Statuses:
        """Each launched replica's status (`ManagedReplica.status()`) by URL: this process's replicas, or those
        of the supervisor it mirrors."""
        if self.mirror is not None:
            return read_statuses(self.mirror)
        return {m.url: m.status() for m in self.replicas}

    async def start(self) -> None:
        """Start every replica and return once each is ready or given up."""
        if self.replicas:
            self.watchdog = await Watchdog.start()
        firsts = [asyncio.get_running_loop().create_future() for _ in self.replicas]
        self._tasks = [asyncio.create_task(self._run(r, f)) for r, f in zip(self.replicas, firsts, strict=True)]
        await asyncio.gather(*firsts)

    async def _spawn(self, r: ManagedReplica) -> None:
        # A temp dir of its own: vLLM leaves IPC sockets there, removed with the replica.
        tmp = self._tmp / r.plan.name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, mode=0o700)
        with r.log_path.open("ab") as out:
            out.write(f"\n$ {' '.join(r.plan.argv)}\n".encode())
            out.flush()
            r.process = await asyncio.create_subprocess_exec(
                *r.plan.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(tmp), **r.plan.env}, preexec_fn=_own_group(os.getpid()),
            )
        r.started_at = time.monotonic()
        if self.watchdog is not None:
            self.watchdog.watch(r.process.pid, r.plan.stop_grace_s)

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
        return False

    async def _serve(self, r: ManagedReplica) -> str:
        """Waits while the ready replica runs and passes its health checks; returns why it no longer does."""
        assert r.process is not None
        exited = asyncio.ensure_future(r.process.wait())
        limit, checked = r.plan.unhealthy_restart_s, r.checked
        try:
            while True:
                await asyncio.wait({exited}, timeout=min(1.0, limit / 4) if checked and limit else None)
                if exited.done():
                    return f"exited with status {exited.result()}"
                assert checked is not None
                # Measured by the checks themselves: should they stop running, no replica is restarted for it.
                silent = checked.checked_at - max(r.ready_at, checked.healthy_at)
                if silent > limit:
                    log.warning("replica %s at %s has failed its health checks for %.0fs (%s); stopping it to "
                                "start it again", r.plan.name, r.url, silent, checked.last_error)
                    return f"unhealthy for {silent:.0f}s ({checked.last_error})"
        finally:
            exited.cancel()

    async def _run(self, r: ManagedReplica, first: asyncio.Future[None]) -> None:
        try:
            while not self._stopping:
                await self._spawn(r)
                if await self._wait_ready(r):
                    r.state, r.ready_at = "ready", time.monotonic()
                    log.info("replica %s (%s) is ready at %s", r.plan.name, r.plan.model, r.url)
                    if not first.done():
                        first.set_result(None)
                    r.last_error = await self._serve(r)
                if self._stopping:
                    break
                # Whatever ended it (an exit, a failed start, its health), nothing of its group may outlive it:
                # vLLM's engine core would hold the GPUs the next start needs.
                r.state = "restarting"
                await self._kill(r)
                now = time.monotonic()
                r.restarts = [t for t in r.restarts if now - t < r.plan.restart_window_s]
                if len(r.restarts) >= r.plan.max_restarts:
                    r.state = "failed"
                    log.error("replica %s at %s gave up after %d restarts: %s\n%s", r.plan.name, r.url,
                              len(r.restarts), r.last_error, r.log_tail())
                    break
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** len(r.restarts))
                log.warning("replica %s at %s %s; restarting in %.1fs", r.plan.name, r.url, r.last_error, delay)
                r.restarts.append(now)
                await asyncio.sleep(delay)
        finally:
            if not first.done():
                first.set_result(None)

    async def _kill(self, r: ManagedReplica) -> None:
        """SIGTERM to the replica's whole process group; SIGKILL to what is left after its grace; reaped."""
        proc = r.process
        if proc is None:
            return
        if await stop_groups({proc.pid: r.plan.stop_grace_s}):  # stuck in the kernel: the watchdog keeps it
            log.error("replica %s: processes of group %d still run after SIGKILL", r.plan.name, proc.pid)
            return
        await proc.wait()
        if self.watchdog is not None:
            self.watchdog.forget(proc.pid)

    async def stop(self) -> None:
        """Every replica stopped (its group gone, SIGKILL after its grace), then the watchdog."""
        self._stopping = True
        for task in self._tasks:  # first, so that none starts a replica while the others are stopped
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._kill(r) for r in self.replicas))
        if self.watchdog is not None:
            await self.watchdog.close()
        for r in self.replicas:
            r.state = "stopped"
            shutil.rmtree(self._tmp / r.plan.name, ignore_errors=True)
