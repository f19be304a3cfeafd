"""Shared pieces of the tests on PostgreSQL: databases of their own on the test server, a TCP proxy to cut the
database off, and costed records (the fixtures built on them are in conftest.py).

PostgreSQL is used for real: when it is unreachable these raise, so the tests fail loudly (they never skip).
tests/services.py names the server; each test gets its own database, `gwtest_<pid>_<random>`, dropped
afterwards, so parallel runs never collide.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import db
from gateway.accounting.prices import PriceCatalogue, parse_prices
from gateway.accounting.records import UsageRecord
from tests.services import libpq_dsn, postgres_url

PRICES_YAML = """\
currency: USD
reference_model: big
models:
  small:
    - effective_from: 2020-01-01
      per_token: {input_per_million: 0.10, cached_input_per_million: 0.05, output_per_million: 0.40}
  big:
    - effective_from: 2020-01-01
      gpu_time: {gpu_hour_price: 3.00, gpus: 2, prefill_tokens_per_s: 6000, decode_tokens_per_s: 300}
"""


def catalogue() -> PriceCatalogue:
    return parse_prices(PRICES_YAML, "test-prices.yaml")


async def create_pg_database() -> str:
    """A new, empty database on the test server; its SQLAlchemy URL. Raises when PostgreSQL is down."""
    name = f"gwtest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin_url = postgres_url()
    try:
        conn = await asyncpg.connect(libpq_dsn(admin_url), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(f"PostgreSQL at {admin_url} is required by these tests: {exc}") from exc
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(admin_url).set(database=name, drivername="postgresql+asyncpg").render_as_string(
        hide_password=False)


async def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    conn = await asyncpg.connect(libpq_dsn(postgres_url()), timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def migrated_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(url)
    try:
        await db.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


def record(n: int, **fields: object) -> UsageRecord:
    """A costed record as the recorder would build it (amounts exact, varied by `n`)."""
    base = 1_800_000_000.0 + n * 0.001
    values: dict[str, object] = {
        "request_id": f"req-{n:08d}",
        "received": base,
        "first_token": base + 0.02,
        "finished": base + 0.1,
        "requested_model": "auto",
        "routed_model": "small" if n % 3 else "big",
        "pool": "p-small" if n % 3 else "p-big",
        "replica": "http://127.0.0.1:1",
        "team": ("red", "blue", None)[n % 3],
        "prompt_tokens": 100 + n % 17,
        "cached_tokens": n % 5,
        "completion_tokens": 10 + n % 13,
        "usage_source": "worker",
        "cost": Decimal("0.0000012345") * (n % 7 + 1),
        "reference_model": "big",
        "reference_cost": Decimal("0.0000543210") * (n % 4 + 1),
        "cache_hit": n % 11 == 0,
        "status": "ok" if n % 13 else "upstream_error",
        "currency": "USD",
    }
    if values["cache_hit"]:
        values["cache_saving"], values["cost"] = values["cost"], Decimal(0)
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]
