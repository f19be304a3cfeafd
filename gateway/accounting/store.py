"""Writing to the accounting database: records with their rollups in one transaction, and prices."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from gateway.accounting.models import ROLLUP_KEY, ROLLUP_SUMS, PriceVersion, UsageDaily, UsageRecord
from gateway.accounting.prices import PriceCatalogue
from gateway.accounting.records import UsageRecord as Record
from gateway.accounting.records import rollup_rows, to_row

RECORDS: Table = UsageRecord.__table__  # type: ignore[assignment]
DAILY: Table = UsageDaily.__table__  # type: ignore[assignment]
PRICES: Table = PriceVersion.__table__  # type: ignore[assignment]


def _insert(dialect: str, table: Table) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


class Statements:
    """The statements of one dialect, built once (SQLAlchemy caches their compiled form)."""

    def __init__(self, dialect: str) -> None:
        # One multi-row INSERT per batch (SQLAlchemy's "insertmanyvalues" renders the rows as one
        # VALUES list), idempotent by request id, returning the ids actually inserted.
        self.records: Insert = (
            _insert(dialect, RECORDS).on_conflict_do_nothing(index_elements=["request_id"])
            .returning(RECORDS.c.request_id)
        )
        ins = _insert(dialect, DAILY)
        self.rollups: Insert = ins.on_conflict_do_update(
            index_elements=list(ROLLUP_KEY),
            set_={name: DAILY.c[name] + ins.excluded[name] for name in ROLLUP_SUMS},
        )
        self.prices: Insert = _insert(dialect, PRICES).on_conflict_do_nothing(index_elements=["id"])


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
    result = await conn.execute(st.records, list(rows.values()))
    inserted = [rows[rid] for (rid,) in result.all()]
    if inserted:
        await conn.execute(st.rollups, rollup_rows(inserted))
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
