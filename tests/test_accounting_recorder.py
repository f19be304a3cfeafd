"""The recorder on real PostgreSQL and SQLite: batches, idempotency, exact sums, rollups, an outage
through a TCP proxy, a full buffer, the spool across processes, shutdown, and the dead letter."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import event, func, select, text

from gateway.accounting import reports, store
from gateway.accounting.models import UsageDaily, UsageRecord
from gateway.accounting.money import ZERO
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import UsageRecord as Record
from gateway.accounting.spool import DEAD_LETTER, Spool
from tests.fault_proxy import FaultProxy
from tests.pg_support import catalogue, migrated_engine, record
from workers.launcher import free_port


def recorder(engine, tmp_path: Path, **kw) -> Recorder:  # type: ignore[no-untyped-def]
    kw.setdefault("flush_interval_s", 0.05)
    kw.setdefault("retry_interval_s", 0.1)
    return Recorder(engine, catalogue(), tmp_path / "spool", url=str(engine.url) if engine else "", **kw)


async def count_rows(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(usage_records rows, calls counted by the rollups)"""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(func.count()).select_from(UsageRecord))).scalar_one()
        calls = (await conn.execute(select(func.coalesce(func.sum(UsageDaily.calls), 0)))).scalar_one()
    return int(rows), int(calls)


async def wait_rows(engine, n: int, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s / 0.05)):
        if (await count_rows(engine))[0] >= n:
            return
        await asyncio.sleep(0.05)


async def wait_spooled(rec: Recorder, n: int, timeout_s: float = 10) -> None:
    """Until `rec` has spooled `n` records (the flush, the database's failure or refusal, the spool's write)."""
    for _ in range(int(timeout_s / 0.05)):
        if rec.stats.spooled >= n:
            return
        await asyncio.sleep(0.05)


def python_totals(records: list[Record]) -> dict[str, object]:
    return {
        "calls": len(records),
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "completion_tokens": sum(r.completion_tokens for r in records),
        "cost": sum((r.cost for r in records), ZERO),
        "reference_cost": sum((r.reference_cost for r in records), ZERO),
        "routing_savings": sum((r.reference_cost - r.cost - r.cache_saving for r in records), ZERO),
        "cache_savings": sum((r.cache_saving for r in records), ZERO),
        "cache_hits": sum(r.cache_hit for r in records),
        "errors": sum(r.status != "ok" for r in records),
    }


async def test_batches_are_one_insert_each_and_sums_are_exact(any_url: str, tmp_path: Path) -> None:
    records = [record(n) for n in range(2500)]
    async with migrated_engine(any_url) as engine:
        inserts: list[int] = []

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
            if statement.startswith("INSERT INTO usage_records"):
                inserts.append(1)

        rec = recorder(engine, tmp_path, batch_max=1000)
        await rec.start()
        for r in records:
            rec.record(r)
        await rec.close()
        if engine.dialect.name == "postgresql":
            assert len(inserts) == 3  # 1000 + 1000 + 500 rows: one INSERT per batch
        else:  # chunks of 64 rows at most: 15 x 64 + 32 + 8 per 1000, 7 x 64 + 32 + 16 + 4 for 500
            assert len(inserts) == 17 + 17 + 10
        assert await count_rows(engine) == (2500, 2500)

        report = await reports.usage_report(engine, group_by=())
        (total,) = report.rows
        expected = python_totals(records)
        for name, value in expected.items():
            assert getattr(total, name) == value, name
        assert isinstance(total.cost, Decimal) and total.cost == sum((r.cost for r in records), Decimal(0))
        # Grouped reports add up to the same totals, to the last digit.
        by_team = await reports.usage_report(engine, group_by=("team", "model", "day", "month"))
        assert sum((r.cost for r in by_team.rows), ZERO) == expected["cost"]
        assert {r.group["team"] for r in by_team.rows} == {"red", "blue", None}
        # The rollups equal the raw records.
        keys, problems = await reports.verify(engine)
        assert problems == [] and keys > 0
        raw = await reports.usage_report(engine, group_by=("team", "model", "day"), source="records")
        rolled = await reports.usage_report(engine, group_by=("team", "model", "day"))
        assert [r.as_dict() for r in raw.rows] == [r.as_dict() for r in rolled.rows]


async def test_batches_of_any_size_are_a_few_statements(any_url: str, tmp_path: Path) -> None:
    """Each distinct SQL text is a prepared statement cached per connection (and on the PostgreSQL server):
    batches of every size must not each make their own (one per size grew a gateway by hundreds of MB)."""
    async with migrated_engine(any_url) as engine:
        texts: dict[str, set[str]] = {"usage_records": set(), "usage_daily": set()}

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
            for table, found in texts.items():
                if statement.startswith(f"INSERT INTO {table}"):
                    found.add(statement)

        n = 0
        for size in (*range(1, 70), 100, 127, 128, 129, 255, 500, 999, 1000):
            assert await store.write_records(engine, [record(n + i) for i in range(size)]) == size
            n += size
        assert await count_rows(engine) == (n, n)
        assert (await reports.verify(engine))[1] == []
        # PostgreSQL: one statement whatever the size; SQLite: chunks of 1, 2, 4, ... 64 rows.
        most = 1 if engine.dialect.name == "postgresql" else store.SQLITE_CHUNK.bit_length()
        assert 1 <= len(texts["usage_records"]) <= most
        assert 1 <= len(texts["usage_daily"]) <= most


async def test_amounts_are_stored_exactly_rounded_half_to_even(any_url: str) -> None:
    """Amounts reach SQL without a float (PostgreSQL: as decimal strings inside the batch's JSON document;
    SQLite: as scaled integers), rounded half to even at 10 places, and a float is refused."""
    wide = Decimal("123456789.0000000001")  # 19 digits: beyond a double's, within SQLite's scaled BIGINT
    async with migrated_engine(any_url) as engine:
        records = [record(1, request_id="half-down", cost=Decimal("0.00000000005"), reference_cost=wide),
                   record(2, request_id="half-up", cost=Decimal("0.00000000015"), reference_cost=Decimal(7))]
        assert await store.write_records(engine, records) == 2
        async with engine.connect() as conn:
            rows = dict((await conn.execute(select(UsageRecord.request_id, UsageRecord.cost))).all())
            refs = dict((await conn.execute(select(UsageRecord.request_id, UsageRecord.reference_cost))).all())
        assert rows == {"half-down": Decimal("0E-10"), "half-up": Decimal("2E-10")}
        assert refs == {"half-down": wide, "half-up": Decimal(7)}
        assert all(isinstance(v, Decimal) for v in (*rows.values(), *refs.values()))
        with pytest.raises(Exception, match="never a float"):  # SQLAlchemy wraps it on SQLite
            await store.write_records(engine, [record(3, request_id="float", cost=0.1)])
        assert await count_rows(engine) == (2, 2)


async def test_writes_are_idempotent_by_request_id(any_url: str, tmp_path: Path) -> None:
    records = [record(n) for n in range(300)]
    async with migrated_engine(any_url) as engine:
        assert await store.write_records(engine, records[:200]) == 200
        # Overlapping batches, and duplicates inside one batch: each call is counted once.
        assert await store.write_records(engine, records[100:] + records[250:]) == 100
        assert await store.write_records(engine, records) == 0
        assert await count_rows(engine) == (300, 300)
        assert (await reports.verify(engine))[1] == []
        report = await reports.usage_report(engine, group_by=())
        assert report.rows[0].cost == python_totals(records)["cost"]


async def test_a_database_outage_loses_nothing_and_counts_nothing_twice(pg_url: str, tmp_path: Path) -> None:
    async with migrated_engine(pg_url) as direct:
        proxy = FaultProxy.before(pg_url).start()
        from gateway.accounting.db import create_engine

        engine = create_engine(proxy.through(pg_url), connect_timeout_s=2)
        rec = recorder(engine, tmp_path, batch_max=200)
        await rec.start()
        sent = 0

        async def produce(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                rec.record(record(sent))
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0.005)

        try:
            await produce(500)
            await rec.flush()
            assert rec.database_ok
            # Cut while records keep coming (some batches are in flight when it happens).
            producer = asyncio.create_task(produce(1500))
            await asyncio.sleep(0.05)
            proxy.set_mode("refuse")
            await producer
            n_during = 1000
            await produce(n_during)  # all of these while the database is unreachable
            await rec.flush()
            assert not rec.database_ok
            assert rec.stats.spooled >= n_during
            assert rec.spool.has_files()
            rows_while_down, _ = await count_rows(direct)
            assert rows_while_down < sent
            # Back: the spool is replayed, and new records flow again.
            proxy.set_mode("pass")
            await produce(300)
            await wait_rows(direct, sent, timeout_s=30)
            await rec.close()
        finally:
            proxy.stop()
            await engine.dispose()
        assert sent == 3300
        assert await count_rows(direct) == (sent, sent)  # exactly N rows, and rollups counted each once
        async with direct.connect() as conn:
            distinct = (await conn.execute(text("SELECT count(DISTINCT request_id) FROM usage_records"))).scalar()
        assert distinct == sent
        assert rec.stats.replayed > 0
        assert not rec.spool.has_files()
        assert (await reports.verify(direct))[1] == []
        report = await reports.usage_report(direct, group_by=())
        assert report.rows[0].cost == python_totals([record(n) for n in range(sent)])["cost"]


async def test_a_full_buffer_spills_to_the_spool_instead_of_dropping(sqlite_url: str, tmp_path: Path) -> None:
    async with migrated_engine(sqlite_url) as engine:
        rec = recorder(engine, tmp_path, queue_max=10, batch_max=4)
        for n in range(100):  # the writer is not running yet: the buffer overflows
            rec.record(record(n))
        assert rec.stats.overflowed >= 88
        for _ in range(200):  # spilled on threads: the request path never waits on the disk
            if rec.spool.lines_written == rec.stats.overflowed:
                break
            await asyncio.sleep(0.01)
        assert rec.spool.lines_written == rec.stats.overflowed
        await rec.start()
        await rec.close()
        assert await count_rows(engine) == (100, 100)
        assert not rec.spool.has_files()


async def test_spools_of_dead_processes_are_replayed_at_start(any_url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    dead = Spool(spool_dir)
    dead.append([record(n) for n in range(40)])
    dead.append([record(n) for n in range(30, 60)])  # overlaps: replay must not count twice
    dead.close()  # its process is gone: the lock is released
    torn = next(spool_dir.glob("*.jsonl"))
    torn.write_bytes(torn.read_bytes() + b'{"request_id": "torn-by-a-cra')  # a line cut by a crash mid-write
    alive = Spool(spool_dir)
    alive.append([record(n) for n in range(100, 110)])  # a live process still writes this one
    async with migrated_engine(any_url) as engine:
        rec = recorder(engine, tmp_path)
        await rec.start()
        await rec.flush()
        await wait_rows(engine, 60)
        assert await count_rows(engine) == (60, 60)
        assert [p.name for p in spool_dir.glob("*.jsonl")] == [alive._path.name]  # type: ignore[union-attr]
        alive.close()  # that process ends: its file is replayed next
        await wait_rows(engine, 70)
        await rec.close()
        assert await count_rows(engine) == (70, 70)
        assert list(spool_dir.glob("*.jsonl")) == []


async def test_shutdown_flushes_to_the_database_or_else_the_spool(sqlite_url: str, tmp_path: Path) -> None:
    async with migrated_engine(sqlite_url) as engine:
        rec = recorder(engine, tmp_path, flush_interval_s=60)
        await rec.start()
        for n in range(25):
            rec.record(record(n))
        await rec.close()
        assert await count_rows(engine) == (25, 25)
        rec.record(record(99))  # after close: straight to the spool, not lost
        assert rec.spool.has_files()

    from gateway.accounting.db import create_engine

    engine = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", connect_timeout_s=1)
    rec = recorder(engine, tmp_path / "down", flush_interval_s=60)
    await rec.start()
    for n in range(25):
        rec.record(record(n))
    await rec.close()
    await engine.dispose()
    assert rec.stats.spooled == 25
    lines = sum(len(p.read_bytes().splitlines()) for p in (tmp_path / "down" / "spool").glob("*.jsonl"))
    assert lines == 25


async def test_a_record_the_database_refuses_goes_to_the_dead_letter(pg_url: str, tmp_path: Path) -> None:
    async with migrated_engine(pg_url) as engine:
        rec = recorder(engine, tmp_path)
        await rec.start()
        for n in range(10):
            rec.record(record(n))
        rec.record(record(10, request_id="x" * 300))  # longer than the column: PostgreSQL refuses it
        await rec.close()
        assert await count_rows(engine) == (10, 10)
        assert rec.stats.dead_lettered == 1
        assert b"x" * 300 in (tmp_path / "spool" / DEAD_LETTER).read_bytes()


async def test_a_missing_table_is_a_database_not_ready_not_a_refusal(pg_url: str, tmp_path: Path) -> None:
    """A table gone from under a running gateway (renamed, dropped, a database re-created) spools the
    records and tries again, as an outage does; they are written once the table is back, and none goes
    to the dead letter."""
    async with migrated_engine(pg_url) as engine:
        rec = recorder(engine, tmp_path)
        await rec.start()
        for n in range(10):
            rec.record(record(n))
        await wait_rows(engine, 10)
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE usage_records RENAME TO usage_records_away"))
        for n in range(10, 20):
            rec.record(record(n))
        await wait_spooled(rec, 10)
        assert rec.stats.spooled == 10 and rec.stats.dead_lettered == 0
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE usage_records_away RENAME TO usage_records"))
        await wait_rows(engine, 20)
        await rec.close()
        assert await count_rows(engine) == (20, 20)
        assert rec.stats.dead_lettered == 0 and not (tmp_path / "spool" / DEAD_LETTER).exists()


async def test_enqueueing_costs_microseconds(tmp_path: Path) -> None:
    rec = recorder(None, tmp_path, queue_max=1_000_000)
    items = [record(n) for n in range(20_000)]
    started = time.perf_counter()
    for r in items:
        rec.record(r)
    per_call_us = (time.perf_counter() - started) / len(items) * 1e6
    assert per_call_us < 20, per_call_us  # typically well under 1 µs


async def test_prices_are_loaded_as_versions_and_never_rewritten(any_url: str) -> None:
    from gateway.accounting.models import PriceVersion
    from gateway.accounting.prices import parse_prices
    from tests.pg_support import PRICES_YAML

    async with migrated_engine(any_url) as engine:
        await store.sync_prices(engine, catalogue())
        await store.sync_prices(engine, catalogue())  # loading the same file again adds nothing
        changed = parse_prices(PRICES_YAML.replace("output_per_million: 0.40", "output_per_million: 0.45"))
        await store.sync_prices(engine, changed)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(PriceVersion.__table__))).mappings().all()
    by_id = {r["id"]: SimpleNamespace(**r) for r in rows}
    assert len(by_id) == 3  # big, small as it was, small as it is now
    old, new = catalogue().versions["small"][0], changed.versions["small"][0]
    assert by_id[old.id].output_per_million == Decimal("0.40")
    assert by_id[new.id].output_per_million == Decimal("0.45")
    big = by_id[catalogue().versions["big"][0].id]
    assert (big.mode, big.gpus, big.prefill_tokens_per_s, big.gpu_hour_price) == ("gpu_time", 2, 6000, Decimal("3"))
    assert big.effective_from.year == 2020


async def test_a_database_migrated_past_this_code_spools_for_the_next_version(pg_url: str, tmp_path: Path) -> None:
    """A rolling upgrade: the new version's migration runs while this process (the old version) still serves,
    and the new schema refuses what it writes (here: the rollups' key changed, as a migration may change it).
    The records are not the database's to refuse: they stay in the spool, none in the dead letter, and a
    process at the database's revision replays them, each once."""
    async with migrated_engine(pg_url) as engine:
        async with engine.connect() as conn:
            head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        rec = recorder(engine, tmp_path)
        await rec.start()
        for n in range(10):
            rec.record(record(n))
        await wait_rows(engine, 10)
        async with engine.begin() as conn:  # "the next version's migration"
            await conn.execute(text("ALTER TABLE usage_daily RENAME TO usage_daily_before"))
            await conn.execute(text("CREATE TABLE usage_daily (LIKE usage_daily_before INCLUDING DEFAULTS)"))
            await conn.execute(text("ALTER TABLE usage_daily ADD PRIMARY KEY (day, tenant, team, key_id)"))
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999_next'"))
        for n in range(10, 20):
            rec.record(record(n))
        await wait_spooled(rec, 10)
        await rec.close()  # the old version stops; what it could not write stays in the spool
        assert rec.stats.spooled == 10 and rec.stats.dead_lettered == 0, rec.stats
        assert not (tmp_path / "spool" / DEAD_LETTER).exists()
        async with engine.begin() as conn:  # the schema this code knows stands for "the new version's"
            await conn.execute(text("DROP TABLE usage_daily"))
            await conn.execute(text("ALTER TABLE usage_daily_before RENAME TO usage_daily"))
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
        assert await count_rows(engine) == (10, 10)  # nothing of the refused batch was written
        successor = recorder(engine, tmp_path)
        await successor.start()
        await wait_rows(engine, 20)
        await successor.close()
        assert await count_rows(engine) == (20, 20)
        assert successor.stats.replayed == 10 and successor.stats.dead_lettered == 0
