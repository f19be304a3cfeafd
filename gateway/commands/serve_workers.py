"""`gateway serve --workers N`: N processes serving one port, supervised by the process that bound it.

The parent (process 0) binds the port (gateway/commands/serve.py) and does, once, what the serving processes
must not race on: the accounting database's migration or check, the key-hash secret and development key
files, the price file's and the routing policy's validation, and the launched replicas, which it starts,
health-checks and restarts as one process does (workers/supervisor.py), telling the serving processes their
status through a file (workers/launched_status.py).

Each serving process i (1..N) inherits listening socket i of the port, all N bound by the parent with
SO_REUSEPORT: the kernel spreads new connections evenly over them (by a hash of their addresses), where one
shared accept queue gives a burst to whichever process wakes first, and kept-alive connections stay with it.
The parent holds the sockets for the whole serve: connections waiting in the queue of a process that dies
are accepted by its replacement, never reset, and the port cannot be taken meanwhile. Each process reads its
settings as JSON on stdin, every launched pool turned into the URLs of its replicas (the settings hold
secrets: never in argv or the environment), and says on a pipe that it serves, or why it could not start
(`python -m gateway.commands.serve`: gateway/commands/serve.py `child`).

The parent starts a process that exits again (with backoff); one that fails to start START_ATTEMPTS times in a
row ends the serve with its error and status 1, as one process's failed start does. SIGTERM and SIGINT are
passed on as SIGTERM (uvicorn's graceful drain), SIGHUP as SIGHUP (a policy reload); once the processes have
exited, the replicas are stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from gateway.settings import Settings
from workers.launcher import ReplicaPlan

log = logging.getLogger("gateway.serve")

START_ATTEMPTS = 3  # failed starts in a row of one process that end the serve
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
RESTART_WINDOW_S = 60.0  # restarts within this window lengthen the next backoff
# A process's drain: uvicorn's graceful shutdown (10 s), then the app's (records flushed); then SIGKILL.
STOP_GRACE_S = 30.0
READY = b"ready\n"  # what a serving process writes on its status pipe once it serves


@dataclass
class Child:
    index: int  # 1..N
    process: asyncio.subprocess.Process | None = None
    failed_starts: int = 0  # in a row
    restarts: list[float] = field(default_factory=list)  # monotonic times


def child_settings(settings: Settings, plans: Sequence[ReplicaPlan], index: int, prepared: bool) -> Settings:
    """What serving process `index` runs with: launched pools as the URLs of their replicas, its own metrics
    port (metrics_port + index - 1), and no migration when the parent has prepared the database."""
    pools = tuple(
        msgspec.structs.replace(p, launch=None, replicas=(*p.replicas, *(r.url for r in plans if r.pool == p.name)))
        if p.launch is not None else p
        for p in settings.pools
    )
    metrics_port = settings.metrics_port + index - 1 if settings.metrics_port else settings.metrics_port
    return msgspec.structs.replace(settings, pools=pools, metrics_port=metrics_port, launch_ports=None,
                                   auto_migrate=False if prepared else settings.auto_migrate)


def listening_sockets(settings: Settings, probe: socket.socket) -> list[socket.socket]:
    """One SO_REUSEPORT socket per process, in place of `probe` (bound without SO_REUSEPORT: that it could be
    shows that no other process, not even another gateway of this user, listens on the port)."""
    probe.close()
    return [socket.create_server((settings.host, settings.port), reuse_port=True) for _ in range(settings.workers)]


def serve_processes(settings: Settings, socks: Sequence[socket.socket]) -> int:
    """Serve from `settings.workers` processes, process i on `socks[i - 1]`, until SIGTERM/SIGINT; the exit
    status."""
    failure = asyncio.run(_parent(settings, socks))
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    return 0


async def _prepare(settings: Settings) -> bool:
    """What must happen once, before any process serves (raises what refuses the start); whether the database
    is migrated (False: it did not answer, each process tries at its own start)."""
    from gateway.accounting import auto_migrate, database_url, db
    from gateway.accounting.prices import DEFAULT_PRICES_FILE, load_prices
    from gateway.auth.keys import dev_key, server_secret
    from gateway.routing import policy_directory
    from router.policy import load_policy_set

    load_prices(settings.prices_file or DEFAULT_PRICES_FILE)
    load_policy_set(policy_directory(settings.policies_dir))
    if settings.auth == "required":  # files made once (gateway/auth/keys.py), read by every process
        server_secret(settings)
        dev_key(settings)
    url = db.async_url(database_url(settings))
    engine = db.create_engine(url)
    try:
        await asyncio.wait_for(db.prepare(engine, url, auto_migrate(settings)), 60)
        return True
    except Exception as exc:
        if isinstance(exc, db.DatabaseError) or not (db.is_unreachable(exc) or isinstance(exc, TimeoutError)):
            raise
        log.warning("accounting: database %s unreachable at start (%s); records are spooled until it answers",
                    db.safe_url(url), type(exc).__name__)
        return False
    finally:
        await engine.dispose()


async def _parent(settings: Settings, socks: Sequence[socket.socket]) -> str | None:
    """The serve; None, or the line saying why it stopped."""
    from gateway.app import build_pools, launch_plans
    from gateway.commands.startup import report
    from workers.health import watch_health
    from workers.launched_status import publish_statuses, status_path
    from workers.supervisor import Supervisor
    from workers.upstream import new_upstream

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    children = [Child(i) for i in range(1, settings.workers + 1)]
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _signal(children, signal.SIGHUP))
    try:
        prepared = await _prepare(settings)
        plans = launch_plans(settings)
    except Exception as exc:
        return report(exc)
    pools = build_pools(settings, plans)
    supervisor = Supervisor(plans, Path(settings.state_dir) / "logs", pools.replicas())
    upstream = new_upstream(settings.upstream_connect_timeout_s, settings.upstream_timeout_s, 16)
    # The health checks of the launched replicas: one that stays unhealthy is restarted (the serving
    # processes check them too, for their own routing).
    checks = asyncio.create_task(watch_health(upstream.checks, pools, settings.health_interval_s))
    tasks = [checks]
    try:
        if plans:
            starting = asyncio.create_task(supervisor.start())
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not starting.done():  # stopped while the replicas started
                starting.cancel()
                return None
            log.info("started %d local replica(s)", len(plans))
            # What the serving processes show of the replicas (/admin/workers, /metrics): they launch none.
            tasks.append(asyncio.create_task(publish_statuses(
                status_path(Path(settings.state_dir), os.getpid()), supervisor.statuses, settings.health_interval_s)))
        return await _serve(settings, socks, plans, prepared, children, stopping)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await supervisor.stop()
        await upstream.aclose()


async def _serve(settings: Settings, socks: Sequence[socket.socket], plans: Sequence[ReplicaPlan], prepared: bool,
                 children: list[Child], stopping: asyncio.Event) -> str | None:
    failure: list[str] = []

    def give_up(line: str) -> None:
        if not failure:
            failure.append(line)
        stopping.set()

    keepers = [asyncio.create_task(_keep(c, socks[c.index - 1], msgspec.json.encode(
        child_settings(settings, plans, c.index, prepared)), stopping, give_up)) for c in children]
    await stopping.wait()
    _signal(children, signal.SIGTERM)  # a drain; one starting now is told by its keeper
    done, pending = await asyncio.wait(keepers, timeout=STOP_GRACE_S)
    if pending:
        log.error("%d process(es) still running %.0fs after SIGTERM; killing them", len(pending), STOP_GRACE_S)
        _signal(children, signal.SIGKILL)
        await asyncio.wait(pending)
    for task in done | pending:
        task.result()  # a keeper's own failure is a bug: let it show
    return failure[0] if failure else None


def _signal(children: Sequence[Child], sig: int) -> None:
    for c in children:
        if c.process is not None and c.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                c.process.send_signal(sig)


async def _keep(child: Child, sock: socket.socket, payload: bytes, stopping: asyncio.Event,
                give_up: Callable[[str], None]) -> None:
    """Run serving process `child` until the serve stops, starting it again when it exits."""
    while not stopping.is_set():
        started, error, status = await _run_once(child, sock, payload, stopping)
        if stopping.is_set():
            return
        child.failed_starts = 0 if started else child.failed_starts + 1
        if child.failed_starts >= START_ATTEMPTS:
            log.error("process %d failed to start %d times in a row; stopping", child.index, START_ATTEMPTS)
            give_up(error or f"gateway: error: process {child.index} exited with status {status} before it served")
            return
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** len(child.restarts))
        child.restarts.append(now)
        why = "exited" if started else "did not start"
        log.warning("process %d %s (status %s%s); starting it again in %.1fs", child.index, why, status,
                    f": {error}" if error else "", delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)


async def _run_once(child: Child, sock: socket.socket, payload: bytes,
                    stopping: asyncio.Event) -> tuple[bool, str | None, int]:
    """One serving process, from its start to its exit: (whether it served, its start-up error, its status)."""
    read_end, write_end = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.commands.serve", "--index", str(child.index),
            "--socket-fd", str(sock.fileno()), "--status-fd", str(write_end), "--parent", str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, pass_fds=(sock.fileno(), write_end),
        )
    finally:
        os.close(write_end)
    child.process = proc
    if stopping.is_set():  # the stop's SIGTERM went out while it was being started
        proc.send_signal(signal.SIGTERM)
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(payload)
        await proc.stdin.drain()
    proc.stdin.close()
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0))
    try:
        first = await reader.readline()  # READY, or the start-up error; empty: it exited before either
        if first == READY:
            log.info("process %d (pid %d) serves", child.index, proc.pid)
        status = await proc.wait()
    finally:
        transport.close()
    error = first.decode(errors="replace").strip() if first and first != READY else None
    return first == READY, error, status
