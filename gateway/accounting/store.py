"""Writing to the accounting database: records with their rollups in one transaction, and prices.

A batch's statements have the same SQL text whatever the batch's size. Each distinct text is a
prepared statement that SQLAlchemy's asyncpg dialect caches per connection (100 of them, and the
server keeps its own copy), and the sqlite3 module caches too (128 per connection); a multi-row
VALUES list is a new text for every row count, and at ~2 KB of client memory per row of a cached
statement the recorder's varying batch sizes grew a gateway under load by hundreds of MB (and each
PostgreSQL backend by more). So:

- PostgreSQL: the rows go as one array per column, turned back into rows by `unnest()`: one statement
  per batch, one prepared statement per connection, whatever the batch size.
- SQLite (no arrays): chunks whose sizes are powers of two up to `SQLITE_CHUNK` (a batch of 100 rows
  goes as 64 + 32 + 4), so there are at most 7 distinct statements of each kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, Table, bindparam, cast, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from gateway.accounting.models import ROLLUP_KEY, ROLLUP_SUMS, PriceVersion, UsageDaily, UsageRecord
from gateway.accounting.prices import PriceCatalogue
from gateway.accounting.records import UsageRecord as Record
from gateway.accounting.records import rollup_rows, to_row

RECORDS: Table = UsageRecord.__table__  # type: ignore[assignment]
DAILY: Table = UsageDaily.__table__  # type: ignore[assignment]
PRICES: Table = PriceVersion.__table__  # type: ignore[assignment]
SQLITE_CHUNK = 64  # rows per statement at most on SQLite (a power of two)


def _insert(dialect: str, table: Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite  # not imported by a gateway on PostgreSQL

    return sqlite.insert(table)


def _unnested(table: Table) -> Select[Any]:
    """`SELECT * FROM unnest($1::type[], $2::type[], ...)`: the table's rows from one array per column
    (bound by column name, each element through the column's own type)."""
    arrays = []
    for column in table.columns:
        array = postgresql.ARRAY(column.type)
        arrays.append(cast(bindparam(column.name, type_=array), array))
    names = [c.name for c in table.columns]
    rows = func.unnest(*arrays).table_valued(*names).render_derived()
    return select(*(rows.c[name] for name in names))


class Statements:
    """The statements of one dialect, built once (SQLAlchemy caches their compiled form)."""

    def __init__(self, dialect: str) -> None:
        self.arrays = dialect == "postgresql"
        # Idempotent by request id, returning the ids actually inserted.
        records = _insert(dialect, RECORDS)
        if self.arrays:
            records = records.from_select([c.name for c in RECORDS.columns], _unnested(RECORDS))
        self.records: Insert = records.on_conflict_do_nothing(index_elements=["request_id"]).returning(
            RECORDS.c.request_id)
        ins = _insert(dialect, DAILY)
        if self.arrays:
            ins = ins.from_select([c.name for c in DAILY.columns], _unnested(DAILY))
        self.rollups: Insert = ins.on_conflict_do_update(
            index_elements=list(ROLLUP_KEY),
            set_={name: DAILY.c[name] + ins.excluded[name] for name in ROLLUP_SUMS},
        )
        self.prices: Insert = _insert(dialect, PRICES).on_conflict_do_nothing(index_elements=["id"])

    async def execute(self, conn: AsyncConnection, statement: Insert, table: Table,
                      rows: Sequence[dict[str, Any]]) -> list[Result[Any]]:
        """`statement` for every row (a batch of `table` rows, as `to_row` / `rollup_rows` make them):
        one execution on PostgreSQL, power-of-two chunks on SQLite."""
        if self.arrays:
            columns = {c.name: [row[c.name] for row in rows] for c in table.columns}
            return [await conn.execute(statement, columns)]
        results = []
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


async def insert_records(conn: AsyncConnection, records: list[Record]) -> int:
    """Insert `records` (those already present are skipped) and add the inserted ones to the rollups.

    Runs in the caller's transaction, so records and rollups commit together. Returns how many rows
    were new.
    """
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        rows.setdefault(r.request_id, to_row(r))
    if not rows:
        return 0
    st = statements(conn.dialect.name)
    results = await st.execute(conn, st.records, RECORDS, list(rows.values()))
    inserted = [rows[rid] for result in results for (rid,) in result.all()]
    if inserted:
        await st.execute(conn, st.rollups, DAILY, rollup_rows(inserted))
    return len(inserted)


async def write_records(engine: AsyncEngine, records: list[Record]) -> int:
    async with engine.begin() as conn:
        return await insert_records(conn, records)


async def sync_prices(engine: AsyncEngine, catalogue: PriceCatalogue) -> None:
    """Every version of the catalogue as a `price_versions` row (rows already there stay as they are)."""
    prices = catalogue.all_prices()
    if not prices:
        return
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(statements(conn.dialect.name).prices, [p.row(now) for p in prices])
