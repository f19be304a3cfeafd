"""A monthly statement (gateway/accounting/invoice.py) as JSON, CSV or a printable page: what
`GET /v1/reports/invoice` serves and `gateway report invoice` writes, byte for byte."""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec

from gateway.accounting.invoice import LINE_LABELS, LINE_MEASURES, Invoice
from gateway.accounting.invoice_html import to_html
from gateway.accounting.reports import ReportRow

FORMATS = {"json": "application/json", "csv": "text/csv", "html": "text/html"}  # format -> media type


LINE_FIELDS = (*LINE_LABELS, "currency", *LINE_MEASURES)  # a line as JSON and CSV carry it
TOTAL_FIELDS = ("currency", *LINE_MEASURES)


def pick(row: ReportRow, names: tuple[str, ...]) -> dict[str, Any]:
    """`names` of the row as reports render it (amounts exact, as text)."""
    full = row.as_dict()
    return {name: full[name] for name in names}


def shadow_dict(row: ReportRow) -> dict[str, Any]:
    shadow = pick(row, ("shadow_calls", "shadow_cost"))
    return {"currency": row.currency, "calls": shadow["shadow_calls"], "cost": shadow["shadow_cost"], "billed": False}


def to_dict(inv: Invoice) -> dict[str, Any]:
    return {
        "statement": {
            "tenant": inv.tenant, "team": inv.team, "month": inv.month.name,
            "from": inv.month.first.isoformat(), "to": inv.month.last.isoformat(), "currency": inv.currency,
            "generated_at": inv.generated_at.isoformat().replace("+00:00", "Z"), "policy_hash": inv.policy_hash,
        },
        "lines": [pick(r, LINE_FIELDS) for r in inv.lines],
        "totals": [pick(r, TOTAL_FIELDS) for r in inv.totals],
        "shadow_evaluation": [shadow_dict(r) for r in inv.totals],
        "budgets": [b.as_dict() for b in inv.budgets],
    }


def to_json(inv: Invoice) -> bytes:
    return msgspec.json.encode(to_dict(inv))


CSV_COLUMNS = ("row", "tenant", "month", *LINE_FIELDS, "shadow_calls", "shadow_cost")


def to_csv(inv: Invoice) -> str:
    """One row per line (`row` = line), then a `total` row per currency: the lines' sums, and the
    platform's shadow evaluation (not billed) in its own two columns, empty on the lines."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    head = {"tenant": inv.tenant, "month": inv.month.name}
    for row in inv.lines:
        writer.writerow(_cells({"row": "line", **head, **pick(row, LINE_FIELDS)}))
    for total in inv.totals:
        writer.writerow(_cells({"row": "total", **head, "team": inv.team,
                                **pick(total, (*TOTAL_FIELDS, "shadow_calls", "shadow_cost"))}))
    return out.getvalue()


def _cells(values: dict[str, Any]) -> list[Any]:
    return ["" if (v := values.get(name)) is None else v for name in CSV_COLUMNS]


def render(inv: Invoice, fmt: str) -> str:
    """The statement in `fmt` (json, csv or html), as the API serves it and the CLI writes it."""
    if fmt == "json":
        return to_json(inv).decode() + "\n"
    if fmt == "csv":
        return to_csv(inv)
    return to_html(inv)
