"""The tables of keys and team limits (SQLAlchemy 2.0), on the accounting's metadata so one Alembic
history covers them (migrations/versions/0002_keys_and_limits.py).

- `api_keys`: one row per API key. Never the key itself: `key_hash` is HMAC-SHA256 of the key under the
  server's `key_hash_secret`; `prefix` (the key's first characters) is what lists show.
- `team_limits`: rate limits and a budget per team (a team belongs to a tenant).

Budgets are amounts in the price catalogue's currency (exact: `Money`), for a period (`day`, `month`,
`total`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import DateTime, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.accounting.models import Base
from gateway.accounting.money import Money


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # key_<12 hex>: records' key_id
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, for lists
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex HMAC-SHA256(secret, key)
    name: Mapped[str | None] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(128))
    team: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # app | finance | admin
    # tenant: sees and manages its own tenant only; all: every tenant (gateway/auth/scope.py)
    scope: Mapped[str] = mapped_column(String(8), server_default=text("'tenant'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rpm: Mapped[int | None] = mapped_column(Integer())  # requests per minute
    tpm: Mapped[int | None] = mapped_column(Integer())  # tokens per minute (prompt + completion)
    budget: Mapped[Decimal | None] = mapped_column(Money())
    budget_period: Mapped[str | None] = mapped_column(String(8))  # day | month | total


class TeamLimits(Base):
    __tablename__ = "team_limits"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    team: Mapped[str] = mapped_column(String(128), primary_key=True)
    rpm: Mapped[int | None] = mapped_column(Integer())
    tpm: Mapped[int | None] = mapped_column(Integer())
    budget: Mapped[Decimal | None] = mapped_column(Money())
    budget_period: Mapped[str | None] = mapped_column(String(8))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
