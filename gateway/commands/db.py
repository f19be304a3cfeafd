"""`gateway db upgrade | downgrade [REV] | current`: the accounting database's migrations (Alembic).

The database is the gateway's (`database_url`, else the embedded SQLite in `<state_dir>/gateway.db`),
read from the same settings as `gateway serve` (--config / $GATEWAY_CONFIG / GATEWAY_*).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.commands import config
from gateway.settings import SettingsError


def register(sub: Any) -> None:
    p = sub.add_parser("db", help="migrate the accounting database (upgrade, downgrade, current)")
    config.add_config(p, "its database_url")
    config.add_database_url(p)
    actions = p.add_subparsers(dest="action", required=True, help="what to do")
    up = actions.add_parser("upgrade", help="migrate to REV (default: the latest, head)")
    up.add_argument("revision", metavar="REV", nargs="?", default="head",
                    help="a revision id, `head` (the default) or +N")
    down = actions.add_parser("downgrade", help="migrate back to REV (default: one step, -1; `base`: empty)")
    down.add_argument("revision", metavar="REV", nargs="?", default="-1",
                      help="a revision id, -N (default -1) or `base` (no tables)")
    actions.add_parser("current", help="show the database's revision and the latest one")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gateway.accounting import database_url
    from gateway.accounting.db import DatabaseError

    try:
        settings = config.settings(args, database_url=args.database_url)
        url = database_url(settings)
        return asyncio.run(_run(args.action, url, getattr(args, "revision", None)))
    except (SettingsError, DatabaseError) as exc:
        print(f"gateway db: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gateway db: cannot reach the database: {exc}", file=sys.stderr)
        return 1


async def _run(action: str, url: str, revision: str | None) -> int:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.accounting import db

    async def work(engine: AsyncEngine) -> int:
        where = db.safe_url(db.async_url(url))
        if action == "upgrade":
            await db.upgrade(engine, revision or "head")
        elif action == "downgrade":
            await db.downgrade(engine, revision or "-1")
        current = await db.current_revision(engine)
        head = db.head_revision()
        state = "up to date" if current == head else "not migrated" if current is None else f"head is {head}"
        print(f"{where}: revision {current or '(none)'} ({state})")
        return 0

    return await db.run_command("gateway db", url, work)
