"""`gateway report overview [--to YYYY-MM-DD] [--days N] [--tenant T ...] [--format table|json]`: the overview
that `GET /v1/reports/overview` and the console's Overview page show, from the accounting database (the same
function builds it: gateway/accounting/overview.py; `--format json` prints the endpoint's JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.commands import config
from gateway.settings import SettingsError

PROG = "gateway report overview"


def register(sub: Any, filters: dict[str, str]) -> None:
    """`overview` under `gateway report`, with its filters (`--tenant`, ...: `filters` names them and says what
    each keeps). Options left out keep the values given before `overview`."""
    p = sub.add_parser("overview", help="spend today and this month, the daily trend, savings, rates, time to "
                                        "first token", argument_default=argparse.SUPPRESS)
    config.add_config(p, "its database_url and prices_file (the currency)")
    config.add_database_url(p)
    p.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="the window's last UTC day (default: today)")
    p.add_argument("--days", type=int, default=30, help="days in the window (1 to 366; default 30)")
    for name, what in filters.items():
        p.add_argument(f"--{name}", metavar=name.upper(), help=f"only the calls {what}")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (the default) or json (amounts exact, as the API serves them)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gateway.accounting import database_url
    from gateway.accounting.db import DatabaseError, missing_sqlite
    from gateway.accounting.reports import FILTERS, ReportError, ReportFilters, parse_day

    try:
        settings = config.settings(args, database_url=getattr(args, "database_url", None))
        end = parse_day(getattr(args, "end", None), "to")
        filters = ReportFilters(**{name: getattr(args, name, None) or None for name in FILTERS})
        url = database_url(settings)
        if (missing := missing_sqlite(url)) is not None:
            print(f"{PROG}: no accounting database at {missing} yet", file=sys.stderr)
            return 2
        return asyncio.run(_run(url, args, end, filters, settings.prices_file))
    except (SettingsError, DatabaseError, ReportError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


async def _run(url: str, args: argparse.Namespace, end: Any, filters: Any, prices_file: str | None) -> int:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.accounting import db
    from gateway.accounting.overview import overview, to_table
    from gateway.accounting.prices import DEFAULT_PRICES_FILE, load_prices

    currency = load_prices(prices_file or DEFAULT_PRICES_FILE).currency

    async def work(engine: AsyncEngine) -> int:
        await db.check_migrated(engine, url)
        figures = await overview(engine, currency, end=end, days=args.days, filters=filters)
        if args.format == "json":
            print(json.dumps(figures.as_dict(), indent=1))
        else:
            sys.stdout.write(to_table(figures))
        return 0

    return await db.run_command(PROG, url, work)
