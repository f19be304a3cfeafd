"""Chart data from reports: `{"labels": [...], "series": [{"label", "values"}], "stacked": bool}`, values
as exact text (what `console.js` draws and the table beside each chart shows)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from gateway.accounting.money import ZERO
from gateway.accounting.reports import Report, ReportRow


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def group_label(row: ReportRow, names: tuple[str, ...], currencies: int) -> str:
    parts = [row.group.get(n) or "(none)" for n in names]
    if currencies > 1:
        parts.append(row.currency)
    return " / ".join(parts) or "all calls"


def by_day(report: Report, start: date, end: date) -> dict[str, Any]:
    """Cost per day, one series per value of the other groups, stacked."""
    others = tuple(g for g in report.group_by if g != "day")
    currencies = len({r.currency for r in report.rows})
    labels = days(start, end)
    series: dict[str, dict[date, Decimal]] = {}
    for row in report.rows:
        per_day = series.setdefault(group_label(row, others, currencies), {})
        day = date.fromisoformat(row.group["day"] or "")
        per_day[day] = per_day.get(day, ZERO) + row.cost
    return {
        "labels": [d.isoformat() for d in labels], "stacked": True,
        "series": [{"label": name, "values": [format(per_day.get(d, ZERO), "f") for d in labels]}
                   for name, per_day in series.items()],
    }


def by_group(report: Report) -> dict[str, Any]:
    """Cost per row of the report, as bars."""
    currencies = len({r.currency for r in report.rows})
    return {
        "labels": [group_label(r, report.group_by, currencies) for r in report.rows], "stacked": False,
        "series": [{"label": "cost", "values": [format(r.cost, "f") for r in report.rows]}],
    }


def cumulative(values: list[Decimal]) -> list[Decimal]:
    out, total = [], ZERO
    for v in values:
        total += v
        out.append(total)
    return out
