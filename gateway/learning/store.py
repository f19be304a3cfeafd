"""The `routing_outcomes` table and its one write: what the router learns from, never any text.

One row per (request, model, source): a score in [0, 1] that `model` earned on the call recorded as
`request_id` in `usage_records`, from client feedback or a shadow judge, with the call's feature vector
(router/features.py: hashed n-gram counts and numbers) and the layout it was computed in. The table sits
on the accounting's metadata, so one Alembic history covers it (migrations/versions/0003_routing_outcomes.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from gateway.accounting.models import Base

Source = Literal["feedback", "shadow"]
KEY = ("request_id", "model", "source")  # a later score for the same key replaces the earlier one


class RoutingOutcome(Base):
    __tablename__ = "routing_outcomes"

    # SQLite autoincrements only an INTEGER primary key.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))  # usage_records.request_id
    tenant: Mapped[str] = mapped_column(String(128))
    team: Mapped[str | None] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))  # the catalogue model the score is about
    score: Mapped[float] = mapped_column(Double())
    label: Mapped[str | None] = mapped_column(String(32))  # as the client gave it
    source: Mapped[str] = mapped_column(String(16))  # feedback | shadow
    judge: Mapped[str | None] = mapped_column(String(200))  # shadow: `exact` or the judge model; feedback: null
    feature_layout: Mapped[str] = mapped_column(String(64))  # router.features.FEATURES of `features`
    features: Mapped[bytes] = mapped_column(LargeBinary())  # router.features.encode_vector
    predictor: Mapped[str | None] = mapped_column(String(64))  # sha256 of the predictor that routed the call
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # UTC, of the latest score

    __table_args__ = (
        UniqueConstraint(*KEY),
        Index(None, "created_at"),
        CheckConstraint("score >= 0 AND score <= 1", name="score"),
        CheckConstraint("source IN ('feedback', 'shadow')", name="source"),
    )


OUTCOMES: Table = RoutingOutcome.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    request_id: str
    tenant: str
    team: str | None
    key_id: str | None
    model: str
    score: float
    label: str | None
    source: Source
    judge: str | None
    feature_layout: str
    features: bytes
    predictor: str | None


def _insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(OUTCOMES)
    from sqlalchemy.dialects import sqlite  # not imported by a gateway on PostgreSQL

    return sqlite.insert(OUTCOMES)


async def upsert_outcome(engine: AsyncEngine, row: OutcomeRow) -> None:
    """Insert the row, or replace the score (label, judge, time) of the one with the same key."""
    await upsert_outcomes(engine, [row])


async def upsert_outcomes(engine: AsyncEngine, rows: list[OutcomeRow]) -> None:
    """`upsert_outcome` for each row, in one transaction (a shadow evaluation's two scores land together)."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        ins = _insert(conn.dialect.name)
        await conn.execute(ins.values([{**asdict(row), "created_at": now} for row in rows]).on_conflict_do_update(
            index_elements=list(KEY),
            set_={name: ins.excluded[name] for name in ("score", "label", "judge", "created_at")},
        ))
