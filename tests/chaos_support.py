"""The chaos suite's parts: a `gateway serve` under load, on real PostgreSQL and Redis behind fault proxies,
and a ledger of what its clients saw against what it recorded.

Every call carries its own `x-request-id`; the gateway records it as the record's `client_request_id`, so
the ledger can tell, per call, whether it was recorded, and how many times.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.fault_proxy import FaultProxy
from tests.gateway_process import GatewayProcess, start_gateway
from tests.services import libpq_dsn
from workers.launcher import free_port


@dataclass
class Row:
    """One scenario's line of the chaos table."""

    scenario: str
    answered: int = 0  # calls whose last byte the client received, with status 200
    refused: int = 0  # calls answered with a 4xx
    server_errors: int = 0  # calls answered with a 5xx
    cut: int = 0  # calls the client lost part-way (the gateway died under them)
    cut_recorded: int = 0  # of those, the ones recorded (those that had reached a worker: incomplete, or whole)
    unreachable: int = 0  # calls that found no gateway listening
    records: int = 0  # records of the answered calls
    lost: int = 0  # answered calls without a record
    duplicated: int = 0  # records beyond one per call, over every call sent
    slowest_s: float = 0.0  # the longest an answered call took, first byte sent to last byte received
    budget: Decimal | None = None
    spend: Decimal | None = None

    @property
    def overspent(self) -> bool:
        return self.budget is not None and self.spend is not None and self.spend > self.budget


HEADER = ("scenario", "answered", "4xx", "5xx", "unreachable", "cut", "cut, recorded", "records", "lost",
          "duplicated", "slowest (s)", "budget", "spend")


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (what the docs carry)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = (r.scenario, r.answered, r.refused, r.server_errors, r.unreachable, r.cut, r.cut_recorded,
                 r.records, r.lost, r.duplicated, f"{r.slowest_s:.2f}", "" if r.budget is None else r.budget,
                 "" if r.spend is None else r.spend)
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


# --- the workers and the gateway --------------------------------------------------------------------------


@dataclass
class Replica:
    """A simulated replica the test runs itself (so it outlives gateway restarts, as a real pool does)."""

    model: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vllm_sim", "--model", self.model, "--host", "127.0.0.1", "--port", str(self.port),
             "--ttft-ms", "5", "--output-token-ms", "1", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simulated replica on {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Chaos:
    """The gateway under test and everything around it; `restart()` brings it back on the same port."""

    workdir: Path
    database_url: str  # the real database (the gateway reaches it through `pg`)
    redis_url: str
    pg: FaultProxy
    redis: FaultProxy
    replicas: list[Replica]
    port: int = field(default_factory=free_port)
    gateway: GatewayProcess | None = None
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (key, key id)

    def config(self) -> dict[str, Any]:
        return {
            "database_url": self.pg.through(self.database_url),
            "redis_url": self.redis.through(self.redis_url),
            "recorder_flush_interval_s": 0.05,
            "recorder_retry_interval_s": 0.5,
            "health_interval_s": 0.25,
            "pools": [
                {"name": "small", "model": "demo-small", "replicas": [r.url for r in self.replicas]},
                {"name": "large", "model": "demo-large",
                 "launch": {"args": ["--ttft-ms", "5", "--output-token-ms", "1", "--max-model-len", "8192"],
                            "unhealthy_restart_s": 2.0, "stop_grace_s": 2.0}},
            ],
        }

    def start(self) -> GatewayProcess:
        self.gateway = start_gateway(self.workdir, self.config(), port=self.port)
        return self.gateway

    def kill9(self) -> None:
        assert self.gateway is not None
        self.gateway.process.send_signal(signal.SIGKILL)
        self.gateway.process.wait()

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launched(self, pool: str) -> list[tuple[str, int, str]]:
        """The replicas the gateway launched for `pool`: URL, restarts, state."""
        assert self.gateway is not None
        r = httpx.get(self.base_url + "/admin/workers", headers=self.gateway.auth, timeout=10)
        return [(rep["url"], rep["managed"]["restarts"], rep["managed"]["state"])
                for rep in r.json()["pools"][pool]["replicas"] if rep["managed"] is not None]

    def create_key(self, name: str, **limits: Any) -> str:
        assert self.gateway is not None
        body = {"tenant": "chaos", "team": name, "role": "app", "name": name, **limits}
        r = httpx.post(self.base_url + "/admin/keys", json=body, headers=self.gateway.auth, timeout=10)
        r.raise_for_status()
        self.keys[name] = (r.json()["key"], r.json()["id"])
        return self.keys[name][0]


# --- the load -----------------------------------------------------------------------------------------------

Body = tuple[str, dict[str, Any] | bytes]  # (path, JSON body or raw bytes)


def ordinary_bodies() -> Iterator[Body]:
    """Small chat and completion calls, every third one streamed."""
    for i in itertools.count():
        stream = i % 3 == 0
        if i % 2:
            yield "/v1/chat/completions", {"model": "auto", "stream": stream, "max_tokens": 8,
                                           "messages": [{"role": "user", "content": f"Say hello number {i}."}]}
        else:
            yield "/v1/completions", {"model": "demo-small", "stream": stream, "max_tokens": 8,
                                      "prompt": f"Count to {i % 50}:"}


@dataclass
class Ledger:
    """What the clients saw, per call id."""

    answered: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    cut: set[str] = field(default_factory=set)
    unreachable: int = 0
    slowest_s: float = 0.0


async def _call(client: httpx.AsyncClient, base: Callable[[], str], key: str, path: str,
                body: dict[str, Any] | bytes, ledger: Ledger) -> bool:
    """Whether the gateway was reached."""
    rid = f"chaos-{uuid.uuid4().hex}"
    ledger.sent.add(rid)
    headers = {"authorization": f"Bearer {key}", "x-request-id": rid, "content-type": "application/json"}
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    stream = not isinstance(body, bytes) and bool(body.get("stream"))
    started = time.perf_counter()
    try:
        async with client.stream("POST", base() + path, content=content, headers=headers) as response:
            data = await response.aread()
    except httpx.ConnectError:
        ledger.unreachable += 1
        ledger.sent.discard(rid)
        return False
    except httpx.TransportError:
        ledger.cut.add(rid)
        return True
    ledger.statuses[response.status_code] += 1
    if response.status_code == 200 and (not stream or data.rstrip().endswith(b"data: [DONE]")):
        ledger.answered.add(rid)
        ledger.slowest_s = max(ledger.slowest_s, time.perf_counter() - started)
    return True


async def drive(base: Callable[[], str], key: str, bodies: Iterator[Body], stop: asyncio.Event, ledger: Ledger,
                concurrency: int = 12) -> None:
    """Calls `concurrency` at a time until `stop` is set."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=1)) as client:
        async def worker() -> None:
            while not stop.is_set():
                path, body = next(bodies)
                if not await _call(client, base, key, path, body, ledger):
                    await asyncio.sleep(0.02)  # no busy loop while the gateway is down
        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def under_load(chaos: Chaos, key: str, fault: Callable[[], Awaitable[None]], bodies: Iterator[Body] | None = None,
                     settle_s: float = 0.5, concurrency: int = 12) -> Ledger:
    """Load before, during and after `fault`."""
    ledger = Ledger()
    stop = asyncio.Event()
    load = asyncio.create_task(drive(lambda: chaos.base_url, key, bodies or ordinary_bodies(), stop, ledger,
                                     concurrency))
    await asyncio.sleep(settle_s)
    await fault()
    await asyncio.sleep(settle_s)
    stop.set()
    await load
    return ledger


# --- the records ----------------------------------------------------------------------------------------------


async def tally(scenario: str, chaos: Chaos, ledger: Ledger, timeout_s: float = 30.0,
                budget_key: str | None = None, budget: Decimal | None = None) -> Row:
    """The scenario's row, once every answered call has its record (or `timeout_s` has passed)."""
    conn = await asyncpg.connect(libpq_dsn(chaos.database_url))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await conn.fetch("SELECT client_request_id, count(*) AS n FROM usage_records "
                                    "WHERE client_request_id = ANY($1::text[]) GROUP BY 1", list(ledger.sent))
            counts = {r["client_request_id"]: r["n"] for r in rows}
            lost = ledger.answered - counts.keys()
            if not lost or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        spend = None
        if budget_key is not None:
            spend = await conn.fetchval("SELECT coalesce(sum(cost), 0) FROM usage_records WHERE key_id = $1",
                                        chaos.keys[budget_key][1])
    finally:
        await conn.close()
    s = ledger.statuses
    return Row(scenario, answered=len(ledger.answered),
               refused=sum(v for k, v in s.items() if 400 <= k < 500),
               server_errors=sum(v for k, v in s.items() if k >= 500), cut=len(ledger.cut),
               cut_recorded=sum(1 for rid in ledger.cut if rid in counts),
               unreachable=ledger.unreachable, records=sum(1 for rid in ledger.answered if rid in counts),
               lost=len(lost), duplicated=sum(n - 1 for n in counts.values()), slowest_s=ledger.slowest_s,
               budget=budget,
               spend=None if spend is None else Decimal(spend))


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    return found


def descendants(pid: int) -> dict[int, str]:
    """Every process under `pid` that still runs, with its command line."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            with contextlib.suppress(OSError):
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                todo.append(child)
    return found
