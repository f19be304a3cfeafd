"""Accounting when the worst happens to `gateway serve` (real PostgreSQL, simulated workers of the test's
own): killed with -9 under load, again and again, every call whose last byte the client received has
exactly one record, and so has every call the kill cut off at a worker (marked incomplete unless it
finished); with its database hanging, calls are answered and their records arrive, once, when it is back.

Each call carries its own `x-request-id`, which its record keeps as `client_request_id`.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.chaos_support import Replica
from tests.fault_proxy import FaultProxy
from tests.gateway_process import GatewayProcess, start_gateway
from tests.pg_support import migrated_engine
from tests.services import libpq_dsn
from workers.launcher import free_port

ROUNDS = 3


@dataclass
class Ledger:
    """What the clients saw, per call id."""

    complete: dict[str, int] = field(default_factory=dict)  # last byte received: its status
    cut_at_worker: set[str] = field(default_factory=set)  # the answer had begun (a worker had the call), then cut
    cut: set[str] = field(default_factory=set)  # cut before any answer
    sent: set[str] = field(default_factory=set)


def bodies(rng: random.Random) -> Iterator[tuple[str, dict[str, Any]]]:
    """Chat and completion calls, routed (`auto`) and direct, half of them streamed, of varied lengths."""
    for i in range(1_000_000):
        tokens, stream = rng.randint(20, 150), i % 2 == 0
        if i % 4 < 2:
            yield "/v1/chat/completions", {"model": "auto" if i % 8 < 4 else "demo-small", "stream": stream,
                                           "max_tokens": tokens,
                                           "messages": [{"role": "user", "content": f"Tell me about {i}."}]}
        else:
            yield "/v1/completions", {"model": "demo-small", "stream": stream, "max_tokens": tokens,
                                      "prompt": f"Count to {i % 40}:"}


async def drive(base: str, auth: dict[str, str], calls: Iterator[tuple[str, dict[str, Any]]], ledger: Ledger,
                stop: asyncio.Event, concurrency: int = 16) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=2)) as client:
        async def one() -> None:
            while not stop.is_set():
                path, body = next(calls)
                rid = f"crash-{uuid.uuid4().hex}"
                ledger.sent.add(rid)
                begun, data = False, b""
                try:
                    async with client.stream("POST", base + path, json=body,
                                             headers={**auth, "x-request-id": rid}) as response:
                        begun = True
                        async for chunk in response.aiter_raw():
                            data += chunk
                except httpx.ConnectError:  # no gateway listening: never sent
                    ledger.sent.discard(rid)
                    await asyncio.sleep(0.02)
                except httpx.TransportError:
                    if b"data: [DONE]" in data:  # the whole answer, as an SDK reads it: only the body's end cut
                        ledger.complete[rid] = 200
                    else:
                        (ledger.cut_at_worker if begun else ledger.cut).add(rid)
                else:
                    ledger.complete[rid] = response.status_code
        await asyncio.gather(*(one() for _ in range(concurrency)))


async def records(database: str, rids: set[str]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(libpq_dsn(database))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT client_request_id, status, http_status, usage_source, prompt_tokens, completion_tokens "
            "FROM usage_records WHERE client_request_id = ANY($1::text[])", list(rids))
        return rows
    finally:
        await conn.close()


async def wait_records(database: str, ledger: Ledger, must: set[str], timeout_s: float = 20) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await records(database, ledger.sent)
        if must <= {r["client_request_id"] for r in rows} or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


@pytest.fixture
def database(pg_database: str) -> str:
    async def migrate() -> None:
        async with migrated_engine(pg_database):
            pass

    asyncio.run(migrate())
    return pg_database


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    """Workers of the test's own, which outlive the gateway's restarts, as a real pool's do."""
    started = [Replica("demo-small", free_port()), Replica("demo-large", free_port())]
    try:
        for r in started:
            r.start()
        yield started
    finally:
        for r in started:
            r.kill()


def config(database: str, replicas: list[Replica], **more: Any) -> dict[str, Any]:
    return {
        "database_url": database,
        "health_interval_s": 0.25,
        "pools": [{"name": r.model.removeprefix("demo-"), "model": r.model, "replicas": [r.url]} for r in replicas],
        **more,
    }


def test_a_gateway_killed_under_load_loses_no_record(database: str, replicas: list[Replica], tmp_path: Path) -> None:
    rng = random.Random(6)
    port = free_port()
    ledger = Ledger()
    calls = bodies(rng)

    async def run() -> list[asyncpg.Record]:
        gateway: GatewayProcess | None = None
        try:
            for _ in range(ROUNDS):
                gateway = await asyncio.to_thread(start_gateway, tmp_path, config(database, replicas), port=port)
                stop = asyncio.Event()
                load = asyncio.create_task(drive(gateway.base_url, gateway.auth, calls, ledger, stop))
                await asyncio.sleep(rng.uniform(0.8, 1.6))
                gateway.process.kill()  # kill -9, calls in flight
                await asyncio.to_thread(gateway.process.wait)
                stop.set()
                await load
            # The last start replays the last kill's journal.
            gateway = await asyncio.to_thread(start_gateway, tmp_path, config(database, replicas), port=port)
            return await wait_records(database, ledger, set(ledger.complete) | ledger.cut_at_worker)
        finally:
            if gateway is not None:
                await asyncio.to_thread(gateway.stop)

    rows = asyncio.run(run())
    per_call = collections.Counter(r["client_request_id"] for r in rows)
    status = {r["client_request_id"]: r["status"] for r in rows}
    assert ledger.complete and ledger.cut_at_worker, "no call was in flight at a kill"
    lost = [rid for rid in [*ledger.complete, *ledger.cut_at_worker] if rid not in per_call]
    assert lost == [], f"{len(lost)} of {len(ledger.complete)} answered calls have no record"
    assert [rid for rid, n in per_call.items() if n > 1] == []
    assert set(per_call) <= ledger.sent
    assert not [rid for rid, code in ledger.complete.items() if code == 200 and status[rid] == "incomplete"]
    incomplete = [r for r in rows if r["status"] == "incomplete"]
    assert incomplete, "no call cut off at a worker was recorded as incomplete"
    assert {r["client_request_id"] for r in incomplete} <= ledger.cut_at_worker | ledger.cut
    for r in incomplete:
        assert (r["http_status"], r["usage_source"], r["completion_tokens"]) == (None, "estimate", 0)
    assert list((tmp_path / ".gateway" / "spool").iterdir()) == []  # all in; the last stop left nothing


def test_a_hung_database_stalls_no_call_and_loses_no_record(database: str, replicas: list[Replica],
                                                            tmp_path: Path) -> None:
    ledger = Ledger()
    calls = bodies(random.Random(4))
    with FaultProxy.before(database) as proxy:
        settings = config(proxy.through(database), replicas, recorder_flush_interval_s=0.05,
                          recorder_retry_interval_s=0.3, recorder_write_timeout_s=0.5)
        gateway = start_gateway(tmp_path, settings)

        async def run() -> list[asyncpg.Record]:
            async def load(seconds: float) -> None:
                stop = asyncio.Event()
                task = asyncio.create_task(drive(gateway.base_url, gateway.auth, calls, ledger, stop, concurrency=4))
                await asyncio.sleep(seconds)
                stop.set()
                await task

            await load(0.5)
            proxy.set_mode("hang")  # accepts, never answers
            await load(4.0)
            # A write that recorder_write_timeout_s ended (waited for: the machine may be slow to get there).
            assert "accounting: database" in await asyncio.to_thread(gateway.wait_logged, "unavailable (TimeoutError")
            proxy.set_mode("pass")
            await load(0.5)
            return await wait_records(database, ledger, set(ledger.complete))

        try:
            rows = asyncio.run(run())
        finally:
            gateway.stop()
    assert ledger.cut == set() and ledger.cut_at_worker == set()
    assert set(ledger.complete.values()) == {200}  # every call answered while the database hung
    per_call = collections.Counter(r["client_request_id"] for r in rows)
    assert set(per_call) == set(ledger.complete) and set(per_call.values()) == {1}
