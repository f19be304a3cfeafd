"""Monthly statements (gateway/accounting/invoice.py): built from the month's usage report and the budgets,
rendered as JSON, CSV and a printable page; `GET /v1/reports/invoice` (scoped, validated) and
`gateway report invoice` on the same PostgreSQL database.

The records are costed records of several teams, models and keys, with a refused call, a cache hit, failed
calls and the platform's shadow calls, written as the recorder writes them (tests/pg_support.py)."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.accounting import store
from gateway.accounting.invoice import Month, build_invoice, parse_month
from gateway.accounting.invoice_html import amount_text, places_for, to_html
from gateway.accounting.invoice_render import to_csv, to_dict
from gateway.accounting.records import UsageRecord
from gateway.accounting.reports import ReportError, ReportFilters, usage_report
from gateway.auth import store as keys_store
from gateway.auth.principal import Limits
from tests.auth_support import bearer, cli, new_key
from tests.gateway_process import GatewayProcess, start_gateway
from tests.pg_support import create_pg_database, drop_pg_database, migrated_engine, record

NOVEMBER = parse_month("2026-11")
KEY_NAME = 'ci <bot> & "co"'  # a name that must be escaped in HTML and quoted in CSV
BILLED = ("calls", "refused", "errors", "cache_hits", "prompt_tokens", "cached_tokens", "completion_tokens")
MONEY = ("cost", "reference_cost", "routing_savings", "cache_savings")


def ts(day: int, month: int = 11, second: int = 0) -> float:
    return datetime(2026, month, day, 12, 0, second, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Keys:
    red: str  # acme/red, named KEY_NAME, a month budget it spends past
    blue: str  # acme/blue
    globex: str  # globex/ops


def month_records(keys: Keys) -> list[UsageRecord]:
    """acme's November (two teams, two models, two keys; a refused call, a cache hit, failed calls, shadow
    calls), calls of October and December (outside the month), and globex's November."""
    out: list[UsageRecord] = []

    def add(n: int, received: float, **fields: Any) -> UsageRecord:
        r = record(n, received=received, first_token=received + 0.02, finished=received + 0.1, **fields)
        out.append(r)
        return r

    for i in range(12):
        key, team = (keys.red, "red") if i % 3 else (keys.blue, "blue")
        add(i + 1, ts(1 + i), tenant="acme", team=team, key_id=key, cache_hit=False, status="ok",
            policy_rule="default")
    add(20, ts(14), tenant="acme", team="red", key_id=keys.red, routed_model="small", status="upstream_error",
        cache_hit=False, policy_rule="default")
    hit = add(21, ts(15), tenant="acme", team="red", key_id=keys.red, routed_model="small", cache_hit=True,
              status="ok", policy_rule="default", cost=Decimal(0), cache_saving=Decimal("0.0000034567"))
    assert hit.cost == 0
    add(22, ts(16), tenant="acme", team="blue", key_id=keys.blue, routed_model=None, pool=None, replica=None,
        status="rejected", http_status=429, error="RateLimited", cache_hit=False, prompt_tokens=0, cached_tokens=0,
        completion_tokens=0, usage_source="none", cost=Decimal(0), reference_cost=Decimal(0), policy_rule=None)
    for n, purpose in ((1, "shadow"), (2, "judge")):  # the platform's evaluation of acme's call req-00000001
        add(30 + n, ts(2, second=n), request_id=f"req-00000001.{purpose}", purpose=purpose, tenant="acme",
            team="blue", key_id=keys.blue, routed_model="big", pool="p-big", cost=Decimal("0.0001000001") * n,
            reference_cost=Decimal("0.0001000001") * n, cache_hit=False, status="ok")
    add(40, ts(31, month=10), tenant="acme", team="red", key_id=keys.red, cache_hit=False, status="ok")
    add(41, ts(1, month=12), tenant="acme", team="red", key_id=keys.red, cache_hit=False, status="ok")
    add(42, ts(10), tenant="globex", team="ops", key_id=keys.globex, cache_hit=False, status="ok")
    return out


def dec(d: dict[str, Any], *names: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(d[n]) for n in names)


def check_statement(body: dict[str, Any]) -> None:
    """Totals are the sums of the lines, and reference cost = cost + routing savings + cache savings."""
    lines, totals = body["lines"], body["totals"]
    assert [t["currency"] for t in totals] == ["USD"]
    total = totals[0]
    for name in BILLED:
        assert total[name] == sum(line[name] for line in lines), name
    for name in MONEY:
        assert Decimal(total[name]) == sum(Decimal(line[name]) for line in lines), name
    for row in [*lines, total]:
        ref, cost, routing, cache = dec(row, "reference_cost", "cost", "routing_savings", "cache_savings")
        assert ref == cost + routing + cache, row


# --- pure ---------------------------------------------------------------------------------------------------


def test_a_month_is_yyyy_mm_and_required() -> None:
    assert parse_month("2026-11") == Month("2026-11", date(2026, 11, 1), date(2026, 11, 30))
    assert parse_month("2024-02").last == date(2024, 2, 29)
    assert parse_month("2026-12").last == date(2026, 12, 31)
    assert parse_month("2026-12").end_ts == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert parse_month("9998-12").last == date(9998, 12, 31) and parse_month("1970-01").first == date(1970, 1, 1)
    for bad in ("2026-13", "2026-00", "2026-1", "26-11", "2026-11-01", "november", "0000-01", "1969-12", "9999-12",
                " 2026-11", "\uff12\uff10\uff12\uff16-11"):  # fullwidth digits
        with pytest.raises(ReportError) as info:
            parse_month(bad)
        assert info.value.param == "month" and "YYYY-MM" in str(info.value), bad
    for missing in (None, ""):
        with pytest.raises(ReportError, match="`month` is required") as info:
            parse_month(missing)
        assert info.value.param == "month"


def test_amounts_read_exactly_with_as_many_places_as_the_statement_needs() -> None:
    assert amount_text(Decimal("1234.5000000000")) == "1,234.50"
    assert amount_text(Decimal("0.0000073500")) == "0.00000735"  # never rounded
    assert amount_text(Decimal("0"), 4) == "0.0000"
    assert amount_text(Decimal("-2.1"), 3) == "-2.100"
    assert places_for([Decimal("1.5"), Decimal("0.0000073500"), Decimal(0)]) == 8
    assert places_for([Decimal(100), Decimal("0.1")]) == 2 and places_for([]) == 2


# --- the statement, built on both databases ---------------------------------------------------------------------


async def seed(engine: Any) -> Keys:
    secret = b"invoice-test-secret"
    made = []
    for tenant, team, name, limits in (("acme", "red", KEY_NAME, Limits(budget=Decimal("0.00001"))),
                                       ("acme", "blue", None, None),
                                       ("globex", "ops", None, Limits(budget=Decimal(1)))):
        made.append((await keys_store.create_key(engine, secret, tenant=tenant, team=team, role="app", name=name,
                                                 limits=limits))[1].id)
    await keys_store.set_team_limits(engine, "acme", "red", Limits(budget=Decimal(500)))
    keys = Keys(*made)
    await store.write_records(engine, month_records(keys))
    return keys


async def test_the_statement_is_the_months_usage_report_of_the_tenant(any_url: str) -> None:
    async with migrated_engine(any_url) as engine:
        keys = await seed(engine)
        now = ts(7, month=12)
        inv = await build_invoice(engine, tenant="acme", team=None, month=NOVEMBER, currency="USD", soft_pct=80,
                                  now=now, policy_hash="ab" * 32)
        report = await usage_report(engine, start=date(2026, 11, 1), end=date(2026, 11, 30),
                                    group_by=("team", "model", "key"), filters=ReportFilters(tenant="acme"))
        body = to_dict(inv)
        check_statement(body)
        usage = [{k: v for k, v in r.as_dict().items() if not k.startswith("shadow_")}
                 for r in report.rows if r.calls or r.refused]  # a row of shadow calls alone is no line
        assert body["lines"] == usage and len(usage) == 4  # blue: refused (no model), small; red: big, small
        whole = (await usage_report(engine, start=NOVEMBER.first, end=NOVEMBER.last, group_by=(),
                                    filters=ReportFilters(tenant="acme"))).totals[0].as_dict()
        assert body["totals"][0] == {k: whole[k] for k in body["totals"][0]}
        assert body["totals"][0]["calls"] == 14 and body["totals"][0]["refused"] == 1
        assert body["totals"][0]["errors"] == 1 and body["totals"][0]["cache_hits"] == 1
        assert body["shadow_evaluation"] == [{"currency": "USD", "calls": 2, "cost": "0.0003000003", "billed": False}]
        assert body["statement"] == {"tenant": "acme", "team": None, "month": "2026-11", "from": "2026-11-01",
                                     "to": "2026-11-30", "currency": "USD", "generated_at": "2026-12-07T12:00:00Z",
                                     "policy_hash": "ab" * 32}
        named = {line["key"]: line["key_name"] for line in body["lines"]}
        assert named == {keys.red: KEY_NAME, keys.blue: None}
        # Budgets: acme's team and key budgets, in force at the month's end (November), not globex's.
        budgets = {(b["scope"], b["team"]): b for b in body["budgets"]}
        assert set(budgets) == {("team", "red"), ("key", "red")}
        red_cost = sum((Decimal(line["cost"]) for line in body["lines"] if line["team"] == "red"), Decimal(0))
        assert Decimal(budgets["team", "red"]["spent"]) == red_cost > 0
        assert budgets["team", "red"]["period_start"] == "2026-11-01"
        assert budgets["key", "red"]["key_name"] == KEY_NAME and budgets["key", "red"]["state"] == "exhausted"

        team = to_dict(await build_invoice(engine, tenant="acme", team="red", month=NOVEMBER, currency="USD",
                                           soft_pct=80, now=now))
        check_statement(team)
        assert {line["team"] for line in team["lines"]} == {"red"}
        assert Decimal(team["totals"][0]["cost"]) == red_cost
        assert team["shadow_evaluation"][0]["calls"] == 0  # blue's call was evaluated

        empty = to_dict(await build_invoice(engine, tenant="acme", team=None, month=parse_month("2025-01"),
                                            currency="USD", soft_pct=80, now=now))
        assert empty["lines"] == [] and empty["totals"] == [] and empty["shadow_evaluation"] == []


async def test_the_csv_has_a_row_per_line_and_a_totals_row(sqlite_url: str) -> None:
    async with migrated_engine(sqlite_url) as engine:
        await seed(engine)
        inv = await build_invoice(engine, tenant="acme", team=None, month=NOVEMBER, currency="USD", soft_pct=80,
                                  now=ts(7, month=12))
    rows = list(csv.DictReader(io.StringIO(to_csv(inv))))
    lines = [r for r in rows if r["row"] == "line"]
    (total,) = [r for r in rows if r["row"] == "total"]
    assert len(lines) == len(inv.lines) == 4 and rows[-1] is total
    assert all(r["tenant"] == "acme" and r["month"] == "2026-11" for r in rows)
    assert Decimal(total["cost"]) == sum(Decimal(r["cost"]) for r in lines) == inv.totals[0].cost
    assert int(total["refused"]) == sum(int(r["refused"]) for r in lines) == 1
    assert [r["shadow_cost"] for r in lines] == [""] * 4 and total["shadow_cost"] == "0.0003000003"
    assert any(r["key_name"] == KEY_NAME for r in lines)
    assert all("E" not in r["cost"] and len(r["cost"].split(".")[1]) == 10 for r in rows)  # exact, never 1E-10


# --- the printable page ------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """The page's tables, as rows of (text, title) cells, and what it links to."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[tuple[str, str | None]]]] = []
        self.cell: list[str] | None = None
        self.title: str | None = None
        self.links: list[str] = []
        self.style = ""
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell, self.title = [], None
        elif tag == "span" and self.cell is not None and a.get("title"):
            self.title = a["title"]
        elif tag == "style":
            self.in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(("".join(self.cell).strip(), self.title))
            self.cell = None
        elif tag == "style":
            self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)
        if self.in_style:
            self.style += data


def page_of(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


async def test_the_page_prints_standalone_and_its_totals_are_the_lines_sums(sqlite_url: str) -> None:
    async with migrated_engine(sqlite_url) as engine:
        keys = await seed(engine)
        inv = await build_invoice(engine, tenant="acme", team=None, month=NOVEMBER, currency="USD", soft_pct=80,
                                  now=ts(7, month=12), policy_hash="cd" * 32)
    text = to_html(inv)
    page = page_of(text)
    assert page.links == [] and "url(" not in page.style and "@import" not in page.style  # nothing to fetch
    assert "@page" in page.style and "A4" in page.style and "@media print" in page.style
    assert "break-inside: avoid" in page.style and "table-header-group" in page.style
    assert "<bot>" not in text and "ci &lt;bot&gt; &amp; &quot;co&quot;" in text  # escaped
    calls, savings, budgets = page.tables
    assert calls[0][:3] == [("Team", None), ("Model", None), ("Key", None)] and calls[0][-1] == ("Cost", None)
    body, total = calls[1:-1], calls[-1]
    assert len(body) == len(inv.lines) and total[0][0] == "Total"
    # Each amount's title is the exact amount; the shown one is the same number; the total is the lines' sum.
    costs = [Decimal(row[-1][1] or "") for row in body]
    assert sum(costs) == Decimal(total[-1][1] or "") == inv.totals[0].cost
    assert all(Decimal(row[-1][0].replace(",", "")) == Decimal(row[-1][1] or "") for row in [*body, total])
    assert sum(int(row[4][0]) for row in body) == int(total[4][0]) == 1  # refused
    assert any(keys.red in row[2][0] and KEY_NAME in row[2][0] for row in body)
    ref, routing, cache, cost = (Decimal(c[1] or "") for c in savings[1][1:5])
    assert ref == cost + routing + cache and cost == inv.totals[0].cost
    assert "Shadow evaluation (not billed)" in text and "0.0003000003" in text
    assert [r[0][0].split()[0] for r in budgets[1:]] == ["team", "key"]
    assert "2026-11" in text and "cdcdcdcdcdcd" in text


# --- through the gateway and the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Keys, dict[str, str]]]:
    """A gateway on a PostgreSQL database holding November's records; acme's and globex's keys."""
    url = asyncio.run(create_pg_database())
    gw = start_gateway(tmp_path_factory.mktemp("invoice"), {"database_url": url, "auto_migrate": True})
    try:
        red = new_key(gw, "acme", "red", "app", "--name", KEY_NAME, "--budget", "0.00001")[1]
        blue = new_key(gw, "acme", "blue", "app")[1]
        globex = new_key(gw, "globex", "ops", "app", "--budget", "1")[1]
        out = cli(gw, "keys", "team", "--tenant", "acme", "--team", "red", "--budget", "500")
        assert out.returncode == 0, out.stderr
        keys = Keys(red, blue, globex)

        async def write() -> None:
            async with migrated_engine(url) as engine:
                await store.write_records(engine, month_records(keys))

        asyncio.run(write())
        auth = {"finance": new_key(gw, "acme", "money", "finance")[0],
                "app": new_key(gw, "acme", "red", "app")[0],
                "globex": new_key(gw, "globex", "money", "finance")[0]}
        yield gw, keys, auth
    finally:
        gw.stop()
        asyncio.run(drop_pg_database(url))


def get(gw: GatewayProcess, headers: dict[str, str], **params: str) -> httpx.Response:
    return httpx.get(gw.base_url + "/v1/reports/invoice", params=params, headers=headers, timeout=30)


def usage(gw: GatewayProcess, **params: str) -> dict[str, Any]:
    r = httpx.get(gw.base_url + "/v1/reports/usage", headers=gw.auth, timeout=30,
                  params={"from": "2026-11-01", "to": "2026-11-30", **params})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_served_statement_equals_the_usage_report(billed: tuple[GatewayProcess, Keys, dict[str, str]]) -> None:
    gw, keys, _ = billed
    for team in (None, "red", "blue"):
        params = {"month": "2026-11", "tenant": "acme", **({"team": team} if team else {})}
        r = get(gw, gw.auth, **params)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        body = r.json()
        check_statement(body)
        filters = {"tenant": "acme", **({"team": team} if team else {})}
        rows = [row for row in usage(gw, group_by="team,model,key", **filters)["rows"]
                if row["calls"] or row["refused"]]
        assert body["lines"] == [{k: v for k, v in row.items() if not k.startswith("shadow_")} for row in rows]
        (whole,) = usage(gw, group_by="", **filters)["totals"]
        assert body["totals"] == [{k: v for k, v in whole.items() if not k.startswith("shadow_")}]
        assert body["shadow_evaluation"] == [{"currency": "USD", "calls": whole["shadow_calls"],
                                              "cost": whole["shadow_cost"], "billed": False}]
        assert body["statement"]["team"] == team and len(body["statement"]["policy_hash"]) == 64
    assert {line["key_name"] for line in body["lines"]} == {None}  # blue's key has no name
    assert get(gw, gw.auth, month="2026-11", tenant="acme").json()["lines"][-1]["key"] == keys.red


def test_csv_and_html_downloads(billed: tuple[GatewayProcess, Keys, dict[str, str]]) -> None:
    gw, _, _ = billed
    r = get(gw, gw.auth, month="2026-11", tenant="acme", team="red", format="csv")
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="invoice-acme-red-2026-11.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows[-1]["row"] == "total" and {row["team"] for row in rows} == {"red"}
    r = get(gw, gw.auth, month="2026-11", tenant="acme", format="html")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    page = page_of(r.text)
    total = page.tables[0][-1]
    json_total = get(gw, gw.auth, month="2026-11", tenant="acme").json()["totals"][0]
    assert total[0][0] == "Total" and total[-1][1] == json_total["cost"]


def test_the_cli_writes_the_csv_the_api_serves(billed: tuple[GatewayProcess, Keys, dict[str, str]],
                                               tmp_path: Path) -> None:
    gw, _, _ = billed
    served = get(gw, gw.auth, month="2026-11", tenant="acme", format="csv").text
    out = cli(gw, "report", "invoice", "--month", "2026-11", "--tenant", "acme", "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert out.stdout == served and served.count("\n") == 6  # header, 4 lines, the total
    target = tmp_path / "acme.csv"
    out = cli(gw, "report", "invoice", "--month", "2026-11", "--tenant", "acme", "--format", "csv",
              "--out", str(target))
    assert out.returncode == 0 and "written to" in out.stderr and target.read_text() == served
    team = cli(gw, "report", "invoice", "--month", "2026-11", "--tenant", "acme", "--team", "red", "--format", "csv")
    assert team.stdout == get(gw, gw.auth, month="2026-11", tenant="acme", team="red", format="csv").text
    for args, problem in ((("--month", "2026-13", "--tenant", "acme"), "`month` must be a month"),
                          (("--month", "2026-11"), "--tenant is required")):
        bad = cli(gw, "report", "invoice", *args)
        assert bad.returncode == 2 and problem in bad.stderr, bad.stderr


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    if status == 400:
        assert body["type"] == "invalid_request_error"
    return body  # type: ignore[no-any-return]


def test_a_tenant_scoped_key_gets_its_own_tenants_statements_only(
    billed: tuple[GatewayProcess, Keys, dict[str, str]],
) -> None:
    gw, _, auth = billed
    own = get(gw, bearer(auth["finance"]), month="2026-11")  # tenant left out: its own
    assert own.status_code == 200 and own.json() | {"statement": None} == \
        get(gw, gw.auth, month="2026-11", tenant="acme").json() | {"statement": None}
    assert own.json()["statement"]["tenant"] == "acme"
    assert get(gw, bearer(auth["finance"]), month="2026-11", tenant="acme", team="blue").status_code == 200
    for fmt in ("json", "csv", "html"):
        err = error(get(gw, bearer(auth["finance"]), month="2026-11", tenant="globex", format=fmt), 403)
        assert err["code"] == "tenant_out_of_scope" and err["param"] == "tenant"
    assert get(gw, bearer(auth["globex"]), month="2026-11").json()["statement"]["tenant"] == "globex"
    assert error(get(gw, bearer(auth["app"]), month="2026-11", tenant="acme"), 403)["code"] != "tenant_out_of_scope"


def test_the_query_is_checked(billed: tuple[GatewayProcess, Keys, dict[str, str]]) -> None:
    gw, _, auth = billed
    for params in ({}, {"month": ""}, {"month": "2026-13"}, {"month": "2026-1"}, {"month": "nov"}):
        err = error(get(gw, gw.auth, tenant="acme", **params), 400)
        assert err["param"] == "month" and "YYYY-MM" in err["message"], params
    err = error(get(gw, gw.auth, month="2026-11", tenant="acme", colour="red"), 400)
    assert (err["code"], err["param"]) == ("unknown_parameter", "colour")
    err = error(get(gw, gw.auth, month="2026-11", tenant="acme", format="pdf"), 400)
    assert err["param"] == "format"
    err = error(get(gw, gw.auth, month="2026-11"), 400)  # a key of every tenant names the one billed
    assert err["param"] == "tenant"
    assert error(get(gw, bearer(auth["finance"]), month="2026-11", **{"from": "2026-11-01"}), 400)["param"] == "from"
