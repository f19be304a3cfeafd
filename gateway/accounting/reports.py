"""Usage reports: one query function for the HTTP API, the CLI and `--verify`.

Reports read the daily rollups (`usage_daily`), so they stay fast however many calls there are; the
same function reads the raw records (`source="records"`) for `gateway report --verify`, which proves
the two equal.

Measures: `calls` are billable calls (every call but the refused ones); `refused` are the calls the gateway
refused before a worker (status `rejected`: 400, 413, 429...), counted apart; `errors` are billable calls
whose status is not ok. Amounts keep `reference_cost = cost + routing_savings + cache_savings` exactly.
`ReportFilters` narrow a report to one tenant, team, key, model, route or operation. Rows grouped by `key`
carry the key's name (`key_name`).

Tenants' figures are their calls' (`purpose` call). The platform's shadow evaluation of routed calls (the
reference model's `shadow` call and its `judge` call) is reported apart, as `shadow_calls` and
`shadow_cost`, under the tenant whose call was evaluated.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Literal

import msgspec
from sqlalchemy import Select, case, column, func, literal, select, table, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from gateway.accounting.models import UsageDaily, UsageRecord
from gateway.accounting.money import ZERO, Money
from gateway.accounting.records import REFUSED
from router.pricing import format_money

GROUPS = ("tenant", "team", "key", "model", "pool", "day", "month", "operation", "route")
ALL_KEYS = ("day", "tenant", "team", "key", "model", "pool", "operation", "route")  # the rollups' key (+ currency)
FILTERS = ("tenant", "team", "key", "model", "route", "operation")  # ReportFilters' fields: groups' values
SHADOW = ("shadow_calls", "shadow_cost")  # the platform's evaluation of the group's calls, last
COUNTS = ("calls", "refused", "cache_hits", "errors", "prompt_tokens", "cached_tokens", "completion_tokens",
          "shadow_calls")
AMOUNTS = ("cost", "reference_cost", "routing_savings", "cache_savings", "shadow_cost")
MEASURES = tuple(m for m in COUNTS + AMOUNTS if m not in SHADOW) + SHADOW
FORMATS = ("json", "csv", "table")


class ReportError(ValueError):
    """A report was asked for wrongly; `param` names the parameter."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class ReportFilters(msgspec.Struct, frozen=True, kw_only=True):
    """What a report counts: only the calls matching every field given (None: any). `key` is a key id
    (key_...), `route` the policy rule that routed the call (records' `policy_rule`)."""

    tenant: str | None = None
    team: str | None = None
    key: str | None = None
    model: str | None = None
    route: str | None = None
    operation: str | None = None

    def given(self) -> dict[str, str]:
        return {name: value for name in FILTERS if (value := getattr(self, name)) is not None}


EVERY_CALL = ReportFilters()


@dataclass
class ReportRow:
    group: dict[str, str | None]
    currency: str
    key_name: str | None = None  # the key's name (rows grouped by key)
    calls: int = 0  # billable calls: every call but the refused ones
    refused: int = 0  # calls the gateway refused before a worker (status rejected)
    cache_hits: int = 0
    errors: int = 0  # billable calls whose status is not ok
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = ZERO
    reference_cost: Decimal = ZERO
    routing_savings: Decimal = ZERO  # reference_cost - the routed model's list cost, cache hits included
    cache_savings: Decimal = ZERO  # the routed model's list cost of the cache hits (which cost 0)
    shadow_calls: int = 0  # shadow and judge calls evaluating this group's calls (in none of the above)
    shadow_cost: Decimal = ZERO  # what they cost

    def add(self, other: ReportRow) -> None:
        for name in MEASURES:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.group.items():
            out[name] = value
            if name == "key":
                out["key_name"] = self.key_name
        out["currency"] = self.currency
        for name in MEASURES:
            value = getattr(self, name)
            out[name] = format(value, "f") if name in AMOUNTS else value  # amounts exact, as text
        return out


@dataclass
class Report:
    start: date | None
    end: date | None
    group_by: tuple[str, ...]
    rows: list[ReportRow] = field(default_factory=list)
    filters: ReportFilters = EVERY_CALL

    @property
    def labels(self) -> tuple[str, ...]:
        """The rows' columns before the measures: the groups, `key_name` right after `key`."""
        return tuple(n for g in self.group_by for n in ((g, "key_name") if g == "key" else (g,)))

    @property
    def totals(self) -> list[ReportRow]:
        per_currency: dict[str, ReportRow] = {}
        for row in self.rows:
            per_currency.setdefault(row.currency, ReportRow({}, row.currency)).add(row)
        return [per_currency[c] for c in sorted(per_currency)]


def parse_group_by(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`team,model,day` (or a list of such) -> ("team", "model", "day"); no value -> ("model",)."""
    if value is None:
        return ("model",)
    parts = [value] if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(p.strip() for part in parts for p in part.split(",") if p.strip()))
    if not names:
        return ()
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise ReportError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPS)}", "group_by")
    return names


def parse_day(value: str | None, param: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ReportError(f"`{param}` must be a date, YYYY-MM-DD (got `{value}`)", param) from None


def _month(dialect: str, day: Any) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.to_char(day, "YYYY-MM")
    return func.substr(day, 1, 7)  # SQLite keeps dates as YYYY-MM-DD text


def _money_sum(expr: Any) -> ColumnElement[Decimal]:
    return type_coerce(func.coalesce(func.sum(type_coerce(expr, Money())), 0), Money())


def _groups(source: str, dialect: str) -> dict[str, Any]:
    """The column each group (and filter) reads in `source` (absent values as '')."""
    if source == "rollups":
        d = UsageDaily
        return {"tenant": d.tenant, "team": d.team, "key": d.key_id, "model": d.model, "pool": d.pool,
                "day": d.day, "month": d.month, "operation": d.operation, "route": d.route}
    r = UsageRecord
    return {"tenant": r.tenant, "team": func.coalesce(r.team, ""), "key": func.coalesce(r.key_id, ""),
            "model": func.coalesce(r.routed_model, ""), "pool": func.coalesce(r.pool, ""), "day": r.day,
            "month": _month(dialect, r.day), "operation": r.operation, "route": func.coalesce(r.policy_rule, "")}


def filter_clauses(filters: ReportFilters, source: str, dialect: str) -> list[ColumnElement[bool]]:
    """`filters` as WHERE clauses on `source`: one reading of them for every query over usage."""
    groups = _groups(source, dialect)
    return [groups[name] == value for name, value in filters.given().items()]


def _columns(source: str, dialect: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    one, zero = literal(1), literal(0)
    money_zero = type_coerce(zero, Money())
    groups = _groups(source, dialect)
    if source == "rollups":
        d = UsageDaily
        call = d.purpose == "call"
        measures: dict[str, Any] = {name: func.coalesce(func.sum(case((call, getattr(d, name)), else_=zero)), 0)
                                    for name in COUNTS if name != "shadow_calls"}
        measures.update(
            cost=_money_sum(case((call, d.cost), else_=money_zero)),
            reference_cost=_money_sum(case((call, d.reference_cost), else_=money_zero)),
            routing_savings=_money_sum(case((call, d.routing_saving), else_=money_zero)),
            cache_savings=_money_sum(case((call, d.cache_saving), else_=money_zero)),
            shadow_calls=func.coalesce(func.sum(case((call, zero), else_=d.calls + d.refused)), 0),
            shadow_cost=_money_sum(case((call, money_zero), else_=d.cost)),
        )
        return groups, measures, (d.day, d.currency)
    r = UsageRecord
    call = r.purpose == "call"
    refused = r.status == REFUSED

    def count(cond: Any) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((cond, one), else_=zero)), 0)

    def calls_only(expr: Any) -> Any:
        return case((call, expr), else_=zero)

    measures = {
        "calls": count(call & ~refused),
        "refused": count(call & refused),
        "cache_hits": count(call & r.cache_hit),
        "errors": count(call & ~refused & (r.status != "ok")),
        "prompt_tokens": func.coalesce(func.sum(calls_only(r.prompt_tokens)), 0),
        "cached_tokens": func.coalesce(func.sum(calls_only(r.cached_tokens)), 0),
        "completion_tokens": func.coalesce(func.sum(calls_only(r.completion_tokens)), 0),
        "cost": _money_sum(case((call, r.cost), else_=money_zero)),
        "reference_cost": _money_sum(case((call, r.reference_cost), else_=money_zero)),
        "routing_savings": _money_sum(case((call, r.routing_saving), else_=money_zero)),
        "cache_savings": _money_sum(case((call, r.cache_saving), else_=money_zero)),
        "shadow_calls": count(~call),
        "shadow_cost": _money_sum(case((call, money_zero), else_=r.cost)),
    }
    return groups, measures, (r.day, r.currency)


def _query(source: str, dialect: str, start: date | None, end: date | None,
           group_by: Sequence[str], filters: ReportFilters) -> Select[Any]:
    groups, measures, (day, currency) = _columns(source, dialect)
    keys = [groups[g].label(f"g_{g}") for g in group_by] + [currency.label("currency")]
    stmt = select(*keys, *(m.label(name) for name, m in measures.items()))
    if start is not None:
        stmt = stmt.where(day >= start)
    if end is not None:
        stmt = stmt.where(day <= end)
    stmt = stmt.where(*filter_clauses(filters, source, dialect))
    group_cols = [groups[g] for g in group_by] + [currency]
    return stmt.group_by(*group_cols).order_by(*group_cols)


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value.isoformat() if isinstance(value, date) else str(value)


async def usage_report(
    engine: AsyncEngine,
    *,
    start: date | None = None,
    end: date | None = None,
    group_by: Sequence[str] = ("model",),
    filters: ReportFilters = EVERY_CALL,
    source: Literal["rollups", "records"] = "rollups",
) -> Report:
    """Calls, tokens, cost and savings from `start` to `end` (UTC days, both included) of the calls matching
    `filters`, grouped."""
    group_by = tuple(group_by)
    if start is not None and end is not None and end < start:
        raise ReportError("`to` is before `from`", "to")
    stmt = _query(source, engine.dialect.name, start, end, group_by, filters)
    report = Report(start, end, group_by, filters=filters)
    async with engine.connect() as conn:
        result = await conn.execute(stmt)
        for row in result.mappings():
            measures: dict[str, Any] = {name: int(row[name]) for name in COUNTS}
            measures.update((name, row[name]) for name in AMOUNTS)
            report.rows.append(ReportRow({g: _text(row[f"g_{g}"]) for g in group_by}, row["currency"], **measures))
        if "key" in group_by:
            names = await _key_names(conn, {k for r in report.rows if (k := r.group["key"]) is not None})
            for r in report.rows:
                r.key_name = names.get(r.group["key"] or "")
    return report


_API_KEYS = table("api_keys", column("id"), column("name"))  # gateway/auth/models.py's, read here by name


async def _key_names(conn: AsyncConnection, ids: set[str]) -> dict[str, str | None]:
    """The names the keys `ids` were given at creation (one query)."""
    if not ids:
        return {}
    rows = await conn.execute(select(_API_KEYS.c.id, _API_KEYS.c.name).where(_API_KEYS.c.id.in_(sorted(ids))))
    return {key_id: name for key_id, name in rows}


SHOWN = 20  # records or rollups named, at most, per broken identity


def _unbalanced(t: type[UsageRecord] | type[UsageDaily]) -> ColumnElement[bool]:
    return t.reference_cost != t.cost + t.routing_saving + t.cache_saving


async def _identity(engine: AsyncEngine) -> list[str]:
    """Records and rollups where reference_cost != cost + routing_saving + cache_saving (one query each)."""
    problems = []
    d = UsageDaily
    rollup_key = (d.day, d.tenant, d.team, d.key_id, d.model, d.pool, d.currency, d.purpose, d.operation, d.route)
    queries = (
        ("record", select(UsageRecord.request_id, func.count().over()).where(_unbalanced(UsageRecord))
         .order_by(UsageRecord.request_id)),
        ("rollup", select(*rollup_key, func.count().over()).where(_unbalanced(d)).order_by(*rollup_key)),
    )
    async with engine.connect() as conn:
        for what, stmt in queries:
            rows = (await conn.execute(stmt.limit(SHOWN))).all()
            if not rows:
                continue
            named = ", ".join(" ".join("-" if v == "" else _text(v) or "-" for v in row[:-1]) for row in rows)
            more = f" and {rows[0][-1] - len(rows)} more" if rows[0][-1] > len(rows) else ""
            problems.append(f"{rows[0][-1]} {what}(s) where reference_cost != cost + routing_saving + "
                            f"cache_saving: {named}{more}")
    return problems


async def verify(engine: AsyncEngine) -> tuple[int, list[str]]:
    """Check `reference_cost = cost + routing_saving + cache_saving` on every record and rollup, and compare
    the rollups with the raw records, per rollup key. Returns (keys compared, problems)."""
    identity = await _identity(engine)
    rollups = await usage_report(engine, group_by=ALL_KEYS, source="rollups")
    records = await usage_report(engine, group_by=ALL_KEYS, source="records")

    def keyed(report: Report) -> dict[tuple[Any, ...], ReportRow]:
        return {(*(row.group[k] for k in ALL_KEYS), row.currency): row for row in report.rows}

    a, b = keyed(rollups), keyed(records)
    problems = []
    for key in sorted(set(a) | set(b), key=lambda k: tuple(str(x) for x in k)):
        where = " ".join(f"{name}={value if value is not None else '-'}"
                         for name, value in zip((*ALL_KEYS, "currency"), key, strict=True))
        ra, rb = a.get(key), b.get(key)
        if ra is None or rb is None:
            problems.append(f"{where}: {'no rollup' if ra is None else 'a rollup'} for "
                            f"{rb.calls if rb else 0} record(s)")
            continue
        for name in MEASURES:
            va, vb = getattr(ra, name), getattr(rb, name)
            if va != vb:
                problems.append(f"{where}: {name} rollup {va} != records {vb}")
    return len(set(a) | set(b)), identity + problems


# --- output ---------------------------------------------------------------------------------------


def to_json(report: Report) -> bytes:
    return msgspec.json.encode({
        "from": report.start.isoformat() if report.start else None,
        "to": report.end.isoformat() if report.end else None,
        "group_by": list(report.group_by),
        "filters": report.filters.given(),
        "rows": [r.as_dict() for r in report.rows],
        "totals": [r.as_dict() for r in report.totals],
    })


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.labels, "currency", *MEASURES])
    for row in report.rows:
        d = row.as_dict()
        writer.writerow([d[g] if d[g] is not None else "" for g in report.labels]
                        + [d["currency"]] + [d[m] for m in MEASURES])
    return out.getvalue()


def to_table(report: Report) -> str:
    """Aligned columns for a terminal; amounts as format_money prints them (json and csv carry them exactly)."""
    headers = [*report.labels, "currency", "calls", "refused", "errors", "cache_hits", "prompt", "cached",
               "completion", "cost", "reference", "routing_savings", "cache_savings", "shadow_calls", "shadow_cost"]

    def cells(row: ReportRow, label: dict[str, str | None]) -> list[str]:
        return [*(label.get(g) or "-" for g in report.labels), row.currency, str(row.calls), str(row.refused),
                str(row.errors), str(row.cache_hits), str(row.prompt_tokens), str(row.cached_tokens),
                str(row.completion_tokens),
                *(format_money(getattr(row, a)) for a in AMOUNTS if a not in SHADOW), str(row.shadow_calls),
                format_money(row.shadow_cost)]

    lines = [cells(r, {**r.group, "key_name": r.key_name}) for r in report.rows]
    totals = [cells(t, {g: "TOTAL" if i == 0 else "" for i, g in enumerate(report.labels)})
              for t in report.totals]
    widths = [max(len(x) for x in col) for col in zip(headers, *lines, *totals, strict=True)]
    n_left = len(report.labels) + 1

    def fmt(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i < n_left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    span = f"{report.start or 'start'} .. {report.end or 'now'} (UTC days, inclusive)"
    out = [f"usage {span}", fmt(headers), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    if totals and report.group_by:
        out.append(fmt(["-" * w for w in widths]))
        out += [fmt(t) for t in totals]
    if not report.rows:
        out.append("(no calls)")
    return "\n".join(out) + "\n"


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return to_json(report).decode() + "\n"
    if fmt == "csv":
        return to_csv(report)
    return to_table(report)
