"""The accounting tables (SQLAlchemy 2.0). migrations/ creates them; a test checks the two agree.

- `usage_records`: one row per call (never prompt or completion text).
- `usage_daily`: rollups per UTC day, tenant, team, key, model, pool, currency, purpose, operation and route, kept in
  the same transaction as the records they count.
- `price_versions`: every price ever loaded from the catalogue; rows are never updated.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Date, DateTime, Index, Integer, MetaData, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gateway.accounting.money import Money

# What a call was for: a client's (`call`), or the platform's evaluation of a routed call (a `shadow` call to
# the reference model, its `judge` call). Reports keep the last two out of tenants' figures.
PURPOSES = ("call", "shadow", "judge")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class PriceVersion(Base):
    """One immutable version of one model's price. Its id names model, effective date and content."""

    __tablename__ = "price_versions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(16))  # per_token | gpu_time
    currency: Mapped[str] = mapped_column(String(3))
    effective_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Per million tokens; for gpu_time, the equivalent rates the formula implies (rounded).
    input_per_million: Mapped[Decimal] = mapped_column(Money())
    cached_input_per_million: Mapped[Decimal] = mapped_column(Money())
    output_per_million: Mapped[Decimal] = mapped_column(Money())
    # gpu_time only.
    gpu_hour_price: Mapped[Decimal | None] = mapped_column(Money())
    gpus: Mapped[Decimal | None] = mapped_column(Money())
    prefill_tokens_per_s: Mapped[int | None] = mapped_column(Integer())
    decode_tokens_per_s: Mapped[int | None] = mapped_column(Integer())
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index(None, "model", "effective_from"),)


class UsageRecord(Base):
    """One call. Times are UTC; `day` is the UTC day it was received."""

    __tablename__ = "usage_records"

    # The id the call is recorded under (unique; replays are idempotent on it): the x-request-id
    # when the gateway minted it, else a fresh one, so a client re-using its own id cannot hide a call.
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    client_request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_token_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    day: Mapped[date] = mapped_column(Date(), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    team: Mapped[str | None] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(128))
    requested_model: Mapped[str] = mapped_column(String(200))
    routed_model: Mapped[str | None] = mapped_column(String(200))
    pool: Mapped[str | None] = mapped_column(String(128))
    replica: Mapped[str | None] = mapped_column(String(512))
    policy_rule: Mapped[str | None] = mapped_column(String(200))
    cache_hit: Mapped[bool] = mapped_column(Boolean())
    status: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int | None] = mapped_column(Integer())
    error: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer())
    cached_tokens: Mapped[int] = mapped_column(Integer())
    completion_tokens: Mapped[int] = mapped_column(Integer())
    usage_source: Mapped[str] = mapped_column(String(16))  # worker | estimate | none
    duration_ms: Mapped[int] = mapped_column(Integer())
    ttft_ms: Mapped[int | None] = mapped_column(Integer())
    cost: Mapped[Decimal] = mapped_column(Money())
    reference_model: Mapped[str | None] = mapped_column(String(200))
    reference_cost: Mapped[Decimal] = mapped_column(Money())
    # reference_cost - the routed model's list cost (cache hits included): reference_cost = cost +
    # routing_saving + cache_saving, exactly, on every record (`gateway report --verify` checks it).
    routing_saving: Mapped[Decimal] = mapped_column(Money())
    cache_saving: Mapped[Decimal] = mapped_column(Money())
    currency: Mapped[str] = mapped_column(String(3))
    price_version: Mapped[str | None] = mapped_column(String(255))
    reference_price_version: Mapped[str | None] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(16), server_default=text("'call'"))  # one of PURPOSES
    # The API called (gateway.outcome.operation_of): chat, text_completion, embeddings, ...
    operation: Mapped[str] = mapped_column(String(32), server_default=text("'chat'"))


class UsageDaily(Base):
    """Sums of usage_records per key. Absent team / key / model / pool are stored as ''."""

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date(), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    team: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    pool: Mapped[str] = mapped_column(String(128), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True, server_default=text("'call'"))
    operation: Mapped[str] = mapped_column(String(32), primary_key=True, server_default=text("'chat'"))
    route: Mapped[str] = mapped_column(String(200), primary_key=True, server_default=text("''"))  # policy_rule
    month: Mapped[str] = mapped_column(String(7), index=True)  # YYYY-MM of day
    calls: Mapped[int] = mapped_column(BigInteger())  # billable calls: all but the refused ones
    refused: Mapped[int] = mapped_column(BigInteger(), server_default=text("0"))  # status rejected
    cache_hits: Mapped[int] = mapped_column(BigInteger())
    errors: Mapped[int] = mapped_column(BigInteger())  # billable calls whose status is not ok
    prompt_tokens: Mapped[int] = mapped_column(BigInteger())
    cached_tokens: Mapped[int] = mapped_column(BigInteger())
    completion_tokens: Mapped[int] = mapped_column(BigInteger())
    cost: Mapped[Decimal] = mapped_column(Money())
    reference_cost: Mapped[Decimal] = mapped_column(Money())
    routing_saving: Mapped[Decimal] = mapped_column(Money())  # reference_cost - list cost, hits included
    cache_saving: Mapped[Decimal] = mapped_column(Money())


ROLLUP_KEY = ("day", "tenant", "team", "key_id", "model", "pool", "currency", "purpose", "operation", "route")
ROLLUP_SUMS = (
    "calls", "refused", "cache_hits", "errors", "prompt_tokens", "cached_tokens", "completion_tokens",
    "cost", "reference_cost", "routing_saving", "cache_saving",
)
MONEY_SUMS = ("cost", "reference_cost", "routing_saving", "cache_saving")
