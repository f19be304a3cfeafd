"""Writing to the accounting database: records with their rollups in one transaction, and prices.

A batch's statements have the same SQL text whatever the batch's size. Each distinct text is a
prepared statement that SQLAlchemy's asyncpg dialect caches per connection (100 of them, and the
server keeps its own copy), and the sqlite3 module caches too (128 per connection); a multi-row
VALUES list is a new text for every row count, and at ~2 KB of client memory per row of a cached
statement the recorder's varying batch sizes grew a gateway under load by hundreds of MB (and each
PostgreSQL backend by more). So:

- PostgreSQL: the rows go as one JSON document (encoded by msgspec, in C), turned back into typed rows
  by `jsonb_to_recordset()`: one statement per batch, one prepared statement per connection, whatever
  the batch size. Amounts travel as decimal strings, parsed by NUMERIC's own input: exact. Arrays
  (one per column) did the same with a prepared shape, but SQLAlchemy's and asyncpg's per-element
  processing held the event loop for every row: a batch delayed the requests waiting behind it (the p99
  at one connection, docs/performance.md).
- SQLite (no arrays): chunks whose sizes are powers of two up to `SQLITE_CHUNK` (a batch of 100 rows
  goes as 64 + 32 + 4), so there are at most 7 distinct statements of each kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import Select, Table, Text, bindparam, cast, column, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from gateway.accounting.models import ROLLUP_KEY, ROLLUP_SUMS, PriceVersion, UsageDaily, UsageRecord
from gateway.accounting.money import Money, exact
from gateway.accounting.prices import PriceCatalogue
from gateway.accounting.records import UsageRecord as Record
from gateway.accounting.records import rollup_rows, to_row
from gateway.loop_turns import Turns

RECORDS: Table = UsageRecord.__table__  # type: ignore[assignment]
DAILY: Table = UsageDaily.__table__  # type: ignore[assignment]
PRICES: Table = PriceVersion.__table__  # type: ignore[assignment]
SQLITE_CHUNK = 64  # rows per statement at most on SQLite (a power of two)
SLICE = 32  # rows encoded at a time (between two checks of the time spent: gateway/loop_turns.py)


def _insert(dialect: str, table: Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite  # not imported by a gateway on PostgreSQL

    return sqlite.insert(table)


def _from_json(table: Table) -> Select[Any]:
    """`SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(name type, ...)`: the table's rows from one JSON
    array of objects (keys: column names), each value through its column's SQL type's input."""
    rows = func.jsonb_to_recordset(cast(bindparam("rows", type_=Text), postgresql.JSONB)).table_valued(
        *(column(c.name, c.type) for c in table.columns)).render_derived("r", with_types=True)
    return select(*(rows.c[c.name] for c in table.columns))


_encode_json = msgspec.json.Encoder(decimal_format="string").encode


async def _json_rows(table: Table, rows: Sequence[dict[str, Any]], turns: Turns) -> str:
    """The rows as one JSON array, amounts made exact in place, encoded in slices between loop turns."""
    money = [c.name for c in table.columns if isinstance(c.type, Money)]
    parts = []
    for start in range(0, len(rows), SLICE):
        await turns.pause()
        part = rows[start:start + SLICE]
        for row in part:
            for name in money:
                row[name] = exact(row[name])  # as `Money` binds an amount
        parts.append(_encode_json(part)[1:-1])
    return "[" + b",".join(parts).decode() + "]"


class Statements:
    """The statements of one dialect, built once (SQLAlchemy caches their compiled form)."""

    def __init__(self, dialect: str) -> None:
        self.json = dialect == "postgresql"
        # Idempotent by request id, returning the ids actually inserted.
        records = _insert(dialect, RECORDS)
        if self.json:
            records = records.from_select([c.name for c in RECORDS.columns], _from_json(RECORDS))
        self.records: Insert = records.on_conflict_do_nothing(index_elements=["request_id"]).returning(
            RECORDS.c.request_id)
        ins = _insert(dialect, DAILY)
        if self.json:
            ins = ins.from_select([c.name for c in DAILY.columns], _from_json(DAILY))
        self.rollups: Insert = ins.on_conflict_do_update(
            index_elements=list(ROLLUP_KEY),
            set_={name: DAILY.c[name] + ins.excluded[name] for name in ROLLUP_SUMS},
        )
        self.prices: Insert = _insert(dialect, PRICES).on_conflict_do_nothing(index_elements=["id"])

    async def execute(self, conn: AsyncConnection, statement: Insert, table: Table,
                      rows: Sequence[dict[str, Any]], turns: Turns) -> list[Result[Any]]:
        """`statement` for every row (a batch of `table` rows, as `to_row` / `rollup_rows` make them):
        one execution on PostgreSQL, power-of-two chunks on SQLite."""
        if self.json:
            return [await conn.execute(statement, {"rows": await _json_rows(table, rows, turns)})]
        results: list[Result[Any]] = []
        start = 0
        while start < len(rows):
            size = min(SQLITE_CHUNK, 1 << ((len(rows) - start).bit_length() - 1))
            results.append(await conn.execute(statement, list(rows[start:start + size])))
            start += size
        return results


_STATEMENTS: dict[str, Statements] = {}


def statements(dialect: str) -> Statements:
    s = _STATEMENTS.get(dialect)
    if s is None:
        s = _STATEMENTS[dialect] = Statements(dialect)
    return s


async def insert_records(conn: AsyncConnection, records: list[Record], turns: Turns | None = None) -> int:
    """Insert `records` (those already present are skipped) and add the inserted ones to the rollups.

    Runs in the caller's transaction, so records and rollups commit together. Returns how many rows
    were new.
    """
    rows: dict[str, dict[str, Any]] = {}
    turns = turns or Turns()  # requests run in between (gateway/loop_turns.py)
    for r in records:
        await turns.pause()
        if r.request_id not in rows:
            rows[r.request_id] = to_row(r)
    if not rows:
        return 0
    st = statements(conn.dialect.name)
    results = await st.execute(conn, st.records, RECORDS, list(rows.values()), turns)
    inserted = [rows[rid] for result in results for (rid,) in result.all()]
    if inserted:
        await st.execute(conn, st.rollups, DAILY, rollup_rows(inserted), turns)
    return len(inserted)


async def write_records(engine: AsyncEngine, records: list[Record], turns: Turns | None = None) -> int:
    async with engine.begin() as conn:
        return await insert_records(conn, records, turns)


async def sync_prices(engine: AsyncEngine, catalogue: PriceCatalogue) -> None:
    """Every version of the catalogue as a `price_versions` row (rows already there stay as they are)."""
    prices = catalogue.all_prices()
    if not prices:
        return
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(statements(conn.dialect.name).prices, [p.row(now) for p in prices])
