"""Migrations on real PostgreSQL and SQLite: stairway (up, down, up), models == migrated schema, one head,
the CLI, and the start-up check (auto-migrate the embedded SQLite; refuse an unmigrated database)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection

from gateway.accounting import db, reports, start_accounting, stop_accounting
from gateway.accounting.models import Base, UsageRecord
from gateway.accounting.money import ZERO
from gateway.accounting.records import rollup_rows, to_row
from gateway.accounting.store import DAILY, RECORDS, write_records
from gateway.auth import models as _key_models  # noqa: F401 (the key tables join the metadata)
from gateway.learning import store as _outcome_models  # noqa: F401 (and routing_outcomes)
from gateway.settings import load_settings
from tests.pg_support import record

GATEWAY = Path(sys.executable).parent / "gateway"
TABLES = {"usage_records", "usage_daily", "price_versions", "api_keys", "team_limits", "routing_outcomes"}


def _diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def test_one_head() -> None:
    script = ScriptDirectory.from_config(db.alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1, heads
    # The start-up check reads the scripts without Alembic: it must agree with Alembic.
    assert db.head_revision() == heads[0]
    assert db.revisions() == ({s.revision for s in script.walk_revisions()}, set(heads))


def test_serving_on_postgresql_imports_neither_alembic_nor_sqlite(pg_url: str, tmp_path: Path) -> None:
    """Alembic and Mako are ~10 MB of a gateway's memory, SQLite's modules ~1.5 MB: a start on a migrated
    PostgreSQL database (and the recorder's check when the database comes back) must not import them."""
    assert _cli("db", "--database-url", pg_url, "upgrade", cwd=tmp_path).returncode == 0
    check = (
        "import asyncio, sys\n"
        "import gateway.app, gateway.cli\n"
        "from gateway.accounting import db\n"
        "async def main():\n"
        f"    engine = db.create_engine({pg_url!r})\n"
        f"    await db.prepare(engine, {pg_url!r}, auto_migrate=True)\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako') or 'sqlite' in m))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_a_database_from_a_newer_gateway_is_refused(pg_url: str) -> None:
    engine = db.create_engine(pg_url)
    try:
        await db.upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(db.DatabaseError, match="at revision 9999, which this gateway does not know"):
            await db.check_migrated(engine, pg_url)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        with pytest.raises(db.DatabaseError, match=f"at revision 0001, not {db.head_revision()}: run `gateway db"):
            await db.check_migrated(engine, pg_url)
    finally:
        await engine.dispose()


async def test_stairway_up_down_up(any_url: str) -> None:
    script = ScriptDirectory.from_config(db.alembic_config())
    revisions = list(reversed(list(script.walk_revisions())))
    engine = db.create_engine(any_url)
    try:
        for rev in revisions:
            await db.upgrade(engine, rev.revision)
            assert await db.current_revision(engine) == rev.revision
            await db.downgrade(engine, rev.down_revision or "base")
            assert await db.current_revision(engine) == rev.down_revision
            await db.upgrade(engine, rev.revision)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
        await db.downgrade(engine, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        await db.upgrade(engine)
        assert await db.current_revision(engine) == db.head_revision()
    finally:
        await engine.dispose()


async def test_models_match_the_migrated_schema(any_url: str) -> None:
    engine = db.create_engine(any_url)
    try:
        await db.upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            # The comparison is not vacuous: a schema that drifted is noticed.
            await conn.execute(text("DROP INDEX ix_usage_records_day"))
            await conn.execute(text("DROP INDEX ix_routing_outcomes_created_at"))
            found = [str(d) for d in await conn.run_sync(_diff)]
            assert any("ix_usage_records_day" in d for d in found)
            assert any("ix_routing_outcomes_created_at" in d for d in found)
            await conn.rollback()
    finally:
        await engine.dispose()


async def test_operation_reads_chat_for_older_rows_and_folds_into_chat_on_downgrade(any_url: str) -> None:
    same = {"team": "red", "routed_model": "small", "pool": "p-small"}  # one rollup key, but for the operation
    engine = db.create_engine(any_url)
    try:
        await db.upgrade(engine, "0004")
        async with engine.begin() as conn:  # a call recorded before the column existed
            row = to_row(record(1, **same))
            [rollup] = rollup_rows([row])
            await conn.execute(RECORDS.insert().inline(), [_without(row, "operation", "routing_saving")])
            await conn.execute(DAILY.insert().inline(), [_without(rollup, "operation", "route", "refused")])
        await db.upgrade(engine, "0005")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT operation FROM usage_records"))).scalars().all() == ["chat"]
            assert (await conn.execute(text("SELECT operation FROM usage_daily"))).scalars().all() == ["chat"]
        await db.upgrade(engine)
        await write_records(engine, [record(2, operation="embeddings", **same), record(4, **same)])
        by_operation = await reports.usage_report(engine, group_by=("operation",))
        assert {r.group["operation"]: r.calls for r in by_operation.rows} == {"chat": 2, "embeddings": 1}
        assert (await reports.verify(engine))[1] == []
        await db.downgrade(engine, "0004")  # the embeddings call's rollup joins the chat calls'
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT calls FROM usage_daily"))).scalars().all() == [3]
            assert (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar_one() == 3
    finally:
        await engine.dispose()


async def test_0006_stores_routing_savings_rebuilds_rollups_by_route_and_scopes_admin_keys(any_url: str) -> None:
    """From 0005 with data (a cache hit, routed calls, a refused call; admin and finance keys) to 0006 and back."""
    same = {"team": "red", "routed_model": "small", "pool": "p-small", "reference_cost": Decimal("0.0000500000")}
    calls = [record(1, cache_hit=True, cost=ZERO, cache_saving=Decimal("0.0000020000"), policy_rule="cheap", **same),
             record(2, cache_hit=False, cost=Decimal("0.0000030000"), policy_rule="cheap", **same),
             record(3, cache_hit=False, cost=Decimal("0.0000040000"), policy_rule="quality", **same),
             record(4, cache_hit=False, cost=ZERO, reference_cost=ZERO, team="red", routed_model="small",
                    pool="p-small", status="rejected", http_status=429, prompt_tokens=0, completion_tokens=0)]
    rows = [to_row(r) for r in calls]
    # The rollup as 0005 counted: a refused call among calls and errors, no routing saving on a cache hit.
    old = {**_without(rollup_rows([{**r, "policy_rule": None} for r in rows])[0], "route", "refused"),
           "calls": 4, "errors": 1, "routing_saving": sum((r["reference_cost"] - r["cost"] for r in rows
                                                          if not r["cache_hit"]), ZERO)}
    engine = db.create_engine(any_url)
    try:
        await db.upgrade(engine, "0005")
        async with engine.begin() as conn:
            await conn.execute(RECORDS.insert().inline(), [_without(r, "routing_saving") for r in rows])
            await conn.execute(DAILY.insert().inline(), [old])
            for key_id, role in (("key_admin0000000", "admin"), ("key_finance00000", "finance")):
                await conn.execute(text(
                    "INSERT INTO api_keys (id, prefix, key_hash, tenant, team, role, created_at) "
                    "VALUES (:id, 'gw-', :id, 'acme', 'ops', :role, :now)"),
                    {"id": key_id, "role": role, "now": datetime(2026, 1, 1, tzinfo=UTC)})
        await db.upgrade(engine, "0006")
        async with engine.connect() as conn:
            saved = dict((await conn.execute(select(UsageRecord.request_id, UsageRecord.routing_saving))).all())
            scopes: dict[str, str] = dict((await conn.execute(text("SELECT role, scope FROM api_keys"))).all())
        assert saved == {c.request_id: c.reference_cost - c.cost - c.cache_saving for c in calls}
        assert saved["req-00000001"] == Decimal("0.0000480000")  # the cache hit's routing saving, derived
        assert scopes == {"admin": "all", "finance": "tenant"}
        by_route = await reports.usage_report(engine, group_by=("route",))
        assert {r.group["route"]: (r.calls, r.refused, r.errors, r.routing_savings) for r in by_route.rows} == {
            None: (0, 1, 0, ZERO), "cheap": (2, 0, 0, Decimal("0.0000950000")),
            "quality": (1, 0, 0, Decimal("0.0000460000"))}
        (total,) = (await reports.usage_report(engine, group_by=())).rows
        assert total.reference_cost == total.cost + total.routing_savings + total.cache_savings
        assert (await reports.verify(engine))[1] == []
        await db.downgrade(engine, "0005")
        async with engine.connect() as conn:
            back = [dict(r) for r in (await conn.execute(select(*(DAILY.c[k] for k in old)))).mappings()]
            columns = {c["name"] for c in await conn.run_sync(lambda c: inspect(c).get_columns("api_keys"))}
        assert back == [old] and "scope" not in columns
    finally:
        await engine.dispose()


def _without(row: dict[str, object], *names: str) -> dict[str, object]:
    """`row` as an earlier revision's table holds it: without the columns added since."""
    return {k: v for k, v in row.items() if k not in names}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([str(GATEWAY), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_upgrade_downgrade_current(pg_url: str, tmp_path: Path) -> None:
    head = db.head_revision()
    current = _cli("db", "--database-url", pg_url, "current", cwd=tmp_path)
    assert current.returncode == 0 and "not migrated" in current.stdout
    up = _cli("db", "--database-url", pg_url, "upgrade", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert f"revision {head} (up to date)" in up.stdout
    down = _cli("db", "--database-url", pg_url, "downgrade", "base", cwd=tmp_path)
    assert down.returncode == 0 and "revision (none)" in down.stdout
    # With no configuration: the embedded SQLite in ./.gateway, from any working directory.
    embedded = _cli("db", "upgrade", cwd=tmp_path)
    assert embedded.returncode == 0, embedded.stderr
    assert (tmp_path / ".gateway" / "gateway.db").exists()
    unreachable = _cli("db", "--database-url", "postgresql://postgres@127.0.0.1:1/x", "current", cwd=tmp_path)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


async def test_embedded_sqlite_is_migrated_at_start(tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"state_dir": str(tmp_path / "state")})
    accounting = await start_accounting(settings)
    try:
        assert await db.current_revision(accounting.engine) == db.head_revision()
        assert accounting.url.endswith(str(tmp_path / "state" / "gateway.db"))
    finally:
        await stop_accounting(accounting)


async def test_unmigrated_database_refuses_to_start(pg_url: str, tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"state_dir": str(tmp_path), "database_url": pg_url})
    with pytest.raises(db.DatabaseError, match=r"not migrated: run `gateway db upgrade`"):
        await start_accounting(settings)
    # auto_migrate: true migrates it instead.
    settings = load_settings(env={"GATEWAY_AUTO_MIGRATE": "true"},
                             overrides={"state_dir": str(tmp_path), "database_url": pg_url})
    accounting = await start_accounting(settings)
    try:
        assert await db.current_revision(accounting.engine) == db.head_revision()
    finally:
        await stop_accounting(accounting)
