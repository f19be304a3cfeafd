"""The chaos suite: each fault an operator's worst day brings, rerun under load against one `gateway serve`
on real PostgreSQL and Redis behind fault proxies (tests/fault_proxy.py), loopback only.

Each scenario adds a row to the table printed at the end (docs/resilience.md carries one): calls answered,
records, lost, duplicated, and budget against spend. The bar for every row: 0 lost, 0 duplicated, spend
within the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.chaos_support import Body, Chaos, Replica, Row, children, ordinary_bodies, table, tally, under_load
from tests.fault_proxy import FaultProxy
from tests.pg_support import create_pg_database, drop_pg_database, migrated_engine
from tests.services import redis_url

ROWS: list[Row] = []
BUDGET = Decimal("0.002")


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Chaos]:
    database = asyncio.run(_migrated_database())
    pg, redis = FaultProxy.before(database).start(), FaultProxy.before(redis_url()).start()
    replicas = [Replica("demo-small", port) for port in (_port(), _port())]
    env = Chaos(tmp_path_factory.mktemp("chaos"), database, redis_url(), pg, redis, replicas)
    try:
        for r in replicas:
            r.start()
        env.start()
        env.create_key("load", rpm=1_000_000, budget="1000")  # limited: every call goes through Redis
        env.create_key("tight", budget=str(BUDGET), budget_period="day")
        yield env
    finally:
        env.stop()
        for r in replicas:
            r.kill()
        pg.stop()
        redis.stop()
        asyncio.run(drop_pg_database(database))
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None and ROWS:
            with capture.global_and_fixture_disabled():  # to the terminal, past pytest's capture
                reporter.write_line("\n\nchaos table:\n" + table(ROWS))


async def _migrated_database() -> str:
    url = await create_pg_database()
    async with migrated_engine(url):
        return url


def _port() -> int:
    from workers.launcher import free_port

    return free_port()


def _check(row: Row, server_errors_allowed: bool = False) -> None:
    ROWS.append(row)
    assert row.answered > 0, row
    assert row.lost == 0, row
    assert row.duplicated == 0, row
    assert not row.overspent, row
    if not server_errors_allowed:
        assert row.server_errors == 0, row


def hostile_bodies() -> Iterator[Body]:
    """Ordinary calls, with a malformed or oversized one every fourth call."""
    hostile: list[Body] = [
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "caf\xc3\x28"}], "max_tokens": 4}'),
        ("/v1/chat/completions", b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 1_000_000_000}),
        ("/v1/completions", {"model": "demo-small", "prompt": ["x"] * 100_000, "max_tokens": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12}),
        ("/v1/completions", b'{"model": "demo-small", "prompt": "hi", "max_tokens": 99999999999999999999999}'),
    ]
    ordinary = ordinary_bodies()
    for i in itertools.count():
        yield hostile[(i // 4) % len(hostile)] if i % 4 == 3 else next(ordinary)


async def test_steady_load_with_hostile_bodies(chaos: Chaos) -> None:
    async def nothing() -> None:
        await asyncio.sleep(2)

    ledger = await under_load(chaos, chaos.keys["load"][0], nothing, hostile_bodies())
    row = await tally("steady, with malformed and oversized bodies", chaos, ledger)
    _check(row)
    assert row.refused > 0  # the hostile bodies were refused (400), not served


@pytest.mark.parametrize("mode", ["refuse", "hang"])
async def test_database(chaos: Chaos, mode: str) -> None:
    async def fault() -> None:
        chaos.pg.set_mode(mode)  # type: ignore[arg-type]
        await asyncio.sleep(3)
        chaos.pg.set_mode("pass")

    ledger = await under_load(chaos, chaos.keys["load"][0], fault)
    row = await tally(f"database {'refuses' if mode == 'refuse' else 'hangs'} for 3 s", chaos, ledger)
    _check(row)
    # No call waited out the fault: the request path's waits on the database are bounded far below it.
    assert row.slowest_s < 2.0, row


@pytest.mark.parametrize("mode", ["refuse", "hang"])
async def test_redis(chaos: Chaos, mode: str) -> None:
    async def fault() -> None:
        chaos.redis.set_mode(mode)  # type: ignore[arg-type]
        await asyncio.sleep(2)
        chaos.redis.set_mode("pass")

    ledger = await under_load(chaos, chaos.keys["load"][0], fault)
    # A limited key's calls get 503 while Redis is away (limits fail closed): reported, not a loss.
    _check(await tally(f"Redis {'refuses' if mode == 'refuse' else 'hangs'} for 2 s", chaos, ledger),
           server_errors_allowed=True)


async def test_replica_killed(chaos: Chaos) -> None:
    victim = chaos.replicas[0]

    async def fault() -> None:
        victim.kill()
        await asyncio.sleep(1.5)
        await asyncio.to_thread(victim.start)

    ledger = await under_load(chaos, chaos.keys["load"][0], fault)
    _check(await tally("a replica killed (-9) and restarted", chaos, ledger), server_errors_allowed=True)


def large_bodies() -> Iterator[Body]:
    """Calls to the large pool (one launched replica) and to the small one, alternately."""
    for i, (path, body) in enumerate(ordinary_bodies()):
        assert isinstance(body, dict)
        yield path, {**body, "model": "demo-large" if i % 2 else "demo-small"}


async def test_launched_replica_wedged(chaos: Chaos) -> None:
    """The large pool's only replica stops answering (alive, deaf to SIGTERM); the supervisor replaces it."""
    [(url, restarts, _)] = chaos.launched("large")

    async def fault() -> None:
        async with httpx.AsyncClient() as client:
            with contextlib.suppress(httpx.HTTPError):  # it may not even answer this
                await client.post(url + "/sim/wedge", timeout=1)
        deadline = time.monotonic() + 30
        while chaos.launched("large") != [(url, restarts + 1, "ready")] or not _ready(chaos):
            assert time.monotonic() < deadline, "the wedged replica was not replaced"
            await asyncio.sleep(0.2)

    ledger = await under_load(chaos, chaos.keys["load"][0], fault, large_bodies())
    # The large pool's calls get 503 while it has no healthy replica: reported, not a loss.
    _check(await tally("the large pool's launched replica wedged, replaced", chaos, ledger),
           server_errors_allowed=True)


def _ready(chaos: Chaos) -> bool:
    return httpx.get(chaos.base_url + "/readyz", timeout=2).status_code == 200


async def test_gateway_killed_repeatedly(chaos: Chaos) -> None:
    rng = random.Random(20)

    async def fault() -> None:
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            launched = children(chaos.gateway.process.pid) if chaos.gateway else []
            chaos.kill9()
            await asyncio.to_thread(chaos.start)
            assert launched  # the large pool's replica; the restarted gateway launched its own
    ledger = await under_load(chaos, chaos.keys["load"][0], fault)
    row = await tally("the gateway killed (-9) 3 times, restarted", chaos, ledger)
    _check(row, server_errors_allowed=True)


def adversarial_bodies() -> Iterator[Body]:
    """Calls built to cost more than they look: many prompts, many choices, multi-byte text, no max_tokens."""
    emoji = "\U0001f600\U0001f680\u2728" * 600
    cjk = "\u4f60\u597d\u4e16\u754c" * 500
    shapes: list[Body] = [
        ("/v1/completions", {"model": "demo-small", "prompt": ["tell me a story"] * 100, "max_tokens": 16}),
        ("/v1/chat/completions", {"model": "demo-small", "messages": [{"role": "user", "content": emoji}],
                                  "max_tokens": 8}),
        ("/v1/chat/completions", {"model": "demo-small", "messages": [{"role": "user", "content": cjk}], "n": 4,
                                  "max_tokens": 16}),
        ("/v1/completions", {"model": "demo-small", "prompt": [[1, 2, 3] * 200] * 8, "max_tokens": 8}),
        ("/v1/chat/completions", {"model": "demo-small", "messages": [{"role": "user", "content": "go on " * 300}]}),
        ("/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "hello"}],
                                  "max_tokens": 4}),
    ]
    for i in itertools.count():
        yield shapes[i % len(shapes)]


async def test_budget_race_with_adversarial_calls(chaos: Chaos) -> None:
    async def nothing() -> None:
        await asyncio.sleep(3)

    ledger = await under_load(chaos, chaos.keys["tight"][0], nothing, adversarial_bodies(), concurrency=24)
    row = await tally("one key's budget raced by 24 clients sending adversarial calls", chaos, ledger,
                      budget_key="tight", budget=BUDGET)
    _check(row)
    assert row.refused > 0  # the budget ran out: the race was real


@pytest.mark.pure
def test_docs_carry_the_table() -> None:
    """docs/resilience.md shows a chaos table of the same columns, with 0 lost and 0 duplicated."""
    text = (Path(__file__).parents[1] / "docs" / "resilience.md").read_text()
    header = table([]).splitlines()[0]
    assert header in text
    rows = [line for line in text.split(header, 1)[1].splitlines()[2:] if line.startswith("|")]
    assert rows, "the docs' chaos table has no rows"
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[8] == "0" and cells[9] == "0", line  # lost, duplicated
        if cells[11]:
            assert Decimal(cells[12]) <= Decimal(cells[11]), line  # spend within the budget
