"""`gateway report`: usage, cost and savings for finance, from the gateway's accounting database.

With no configuration it reads the embedded database that `gateway serve` (`make run`) writes in
`.gateway/gateway.db`. The HTTP API (`GET /v1/reports/usage`) runs the same query. `--budgets` lists the
team and key budgets with the spend recorded in their current period (`GET /v1/reports/budgets`).
`gateway report invoice` writes a monthly statement (gateway/commands/invoice.py), `gateway report overview`
prints the overview (gateway/commands/overview.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.commands import config, invoice, overview
from gateway.settings import Settings, SettingsError


def register(sub: Any) -> None:
    p = sub.add_parser("report",
                       help="usage, cost and savings per tenant/team/key/model/pool/day/month/operation/route")
    config.add_config(p, "its database_url, prices_file (--budgets: the currency) and budget_soft_pct")
    config.add_database_url(p)
    p.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first UTC day (default: the first call)")
    p.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last UTC day, included (default: today)")
    p.add_argument("--group-by", action="append", metavar="KEYS",
                   help="comma-separated: tenant, team, key, model, pool, day, month, operation, route "
                        "(default: model)")
    for name, what in FILTER_HELP.items():
        p.add_argument(f"--{name}", metavar=name.upper(), help=f"only the calls {what}")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default: table; csv and json carry the amounts exactly)")
    p.add_argument("--verify", action="store_true",
                   help="check that the rollups equal the raw records (exit 1 listing the differences)")
    p.add_argument("--budgets", action="store_true",
                   help="team and key budgets: limit, spend recorded in the current period, what remains")
    p.set_defaults(run=run)
    more = p.add_subparsers(title="statements and overviews", metavar="{invoice,overview}",
                            help="a monthly statement (invoice); the overview of spend and service (overview)")
    invoice.register(more)
    overview.register(more, FILTER_HELP)


FILTER_HELP = {  # reports.ReportFilters' fields
    "tenant": "of this tenant", "team": "of this team", "key": "made with this key id (key_...)",
    "model": "routed to this model", "route": "routed by this policy rule", "operation": "of this API (chat, ...)",
}


def run(args: argparse.Namespace) -> int:
    from gateway.accounting import database_url
    from gateway.accounting.db import DatabaseError
    from gateway.accounting.reports import ReportError, parse_day, parse_group_by

    try:
        settings = config.settings(args, database_url=args.database_url)
        start, end = parse_day(args.start, "from"), parse_day(args.end, "to")
        group_by = parse_group_by(args.group_by)
        url = database_url(settings)
        if (missing := _missing_sqlite(url)) is not None:
            print(f"gateway report: no accounting database at {missing} yet (start the gateway with "
                  "`gateway serve`, or run `gateway db upgrade`)", file=sys.stderr)
            return 2
        return asyncio.run(_run(settings, url, args, start, end, group_by))
    except (SettingsError, DatabaseError, ReportError) as exc:
        print(f"gateway report: {exc}", file=sys.stderr)
        return 2


def _missing_sqlite(url: str) -> str | None:
    from gateway.accounting import db

    return db.missing_sqlite(url)


async def _run(settings: Settings, url: str, args: argparse.Namespace, start: Any, end: Any,
               group_by: tuple[str, ...]) -> int:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.accounting import db, reports

    async def work(engine: AsyncEngine) -> int:
        await db.check_migrated(engine, url)
        if args.verify:
            keys, problems = await reports.verify(engine)
            if problems:
                print(f"rollups differ from the records ({len(problems)} difference(s)):")
                for p in problems:
                    print("  " + p)
                return 1
            print(f"rollups match the records ({keys} rollup key(s) compared)")
            return 0
        if args.budgets:
            return await _budgets(engine, settings, args.format)
        filters = reports.ReportFilters(**{name: getattr(args, name) for name in FILTER_HELP})
        report = await reports.usage_report(engine, start=start, end=end, group_by=group_by, filters=filters)
        sys.stdout.write(reports.render(report, args.format))
        return 0

    return await db.run_command("gateway report", url, work)


async def _budgets(engine: Any, settings: Settings, fmt: str) -> int:
    """`--budgets`: from the database alone (the gateway's `GET /v1/reports/budgets` adds its live counters)."""
    import json

    from gateway.accounting.prices import DEFAULT_PRICES_FILE, load_prices
    from gateway.limits.budgets import budget_rows, to_csv, to_table

    currency = load_prices(settings.prices_file or DEFAULT_PRICES_FILE).currency
    rows = await budget_rows(engine, currency, settings.budget_soft_pct)
    if fmt == "json":
        print(json.dumps({"budgets": [r.as_dict() for r in rows]}, indent=1))
    elif fmt == "csv":
        sys.stdout.write(to_csv(rows))
    else:
        sys.stdout.write(to_table(rows))
    return 0
