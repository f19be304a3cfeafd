"""`gateway report invoice --month YYYY-MM --tenant T [--team X] [--format json|csv|html] [--out FILE]`: a
monthly statement from the accounting database, as `GET /v1/reports/invoice` serves it (the same
function builds it; JSON differs only in `generated_at`, and in `policy_hash`, which the served one fills in).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.commands import config
from gateway.settings import SettingsError

PROG = "gateway report invoice"


def register(sub: Any) -> None:
    """`invoice` under `gateway report`. Options left out keep the values given before `invoice`."""
    p = sub.add_parser("invoice", help="a tenant's (or team's) monthly statement: json, csv or printable html",
                       argument_default=argparse.SUPPRESS)
    config.add_config(p, "its database_url, prices_file (the currency) and budget_soft_pct")
    config.add_database_url(p)
    p.add_argument("--month", required=True, metavar="YYYY-MM", help="the statement's month (UTC)")
    p.add_argument("--tenant", help="the tenant billed (required)")
    p.add_argument("--team", help="only this team of the tenant")
    p.add_argument("--format", choices=("json", "csv", "html"), default="json",
                   help="json (the default), csv (one row per line, then the totals) or html (prints on A4)")
    p.add_argument("--out", metavar="FILE", type=Path, default=None, help="write it to FILE (default: stdout)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gateway.accounting import database_url
    from gateway.accounting.db import DatabaseError, missing_sqlite
    from gateway.accounting.invoice import parse_month
    from gateway.accounting.reports import ReportError

    try:
        settings = config.settings(args, database_url=getattr(args, "database_url", None))
        month = parse_month(args.month)
        if not getattr(args, "tenant", None):
            raise ReportError("--tenant is required: the tenant billed", "tenant")
        url = database_url(settings)
        if (missing := missing_sqlite(url)) is not None:
            print(f"{PROG}: no accounting database at {missing} yet", file=sys.stderr)
            return 2
        return asyncio.run(_run(url, args, month, settings.prices_file, settings.budget_soft_pct))
    except (SettingsError, DatabaseError, ReportError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


async def _run(url: str, args: argparse.Namespace, month: Any, prices_file: str | None, soft_pct: int) -> int:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.accounting import db
    from gateway.accounting.invoice import build_invoice
    from gateway.accounting.invoice_render import render
    from gateway.accounting.prices import DEFAULT_PRICES_FILE, load_prices

    currency = load_prices(prices_file or DEFAULT_PRICES_FILE).currency

    async def work(engine: AsyncEngine) -> int:
        await db.check_migrated(engine, url)
        invoice = await build_invoice(engine, tenant=args.tenant, team=getattr(args, "team", None) or None,
                                      month=month, currency=currency, soft_pct=soft_pct)
        text = render(invoice, args.format)
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.write_text(text, encoding="utf-8", newline="")
            print(f"{invoice.filename_stem}: written to {args.out}", file=sys.stderr)
        return 0

    return await db.run_command(PROG, url, work)
