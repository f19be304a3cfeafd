"""Alembic environment for the accounting tables (gateway/accounting/models.py), the keys' (gateway/auth/models.py)
and routing_outcomes (gateway/learning/store.py), all on one metadata.

Used through gateway/accounting/db.py, which builds the configuration in code (`gateway db ...` and the
gateway's start-up). With a connection in `config.attributes["connection"]` it runs on that connection;
otherwise it connects to `sqlalchemy.url` with the async driver.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

import gateway.auth.models  # noqa: F401 (its tables join the metadata)
from gateway.accounting.models import Base
from gateway.accounting.money import Money
from gateway.learning import store as _outcome_tables  # noqa: F401 (routing_outcomes joins it too)

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Revisions stay self-contained: the money type is rendered as the template's MONEY variant.
    return "MONEY" if type_ == "type" and isinstance(obj, Money) else False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    from gateway.accounting.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    _run(conn)
else:
    asyncio.run(_run_async(config.get_main_option("sqlalchemy.url") or ""))
