"""The console in a real headless Chromium (Debian's, driven by Playwright) against a real gateway process on
PostgreSQL and Redis with auth on: signing in with each role, the numbers of every chart and table equal
to what the reports API returns for the same traffic, the CSV download byte for byte the API's, tenant
scoping on every page, the admin-only pages closed to finance, a key created and revoked on the Keys page,
and a full-page screenshot of every page (tests/browser_support.py says where they go)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.auth_support import bearer
from tests.browser_support import headless_chromium, screenshot, session, sign_in
from tests.console_fixture import Key, Keys, make_keys, seed_traffic, start, wait_for_records
from tests.gateway_process import GatewayProcess
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.pg_support import create_pg_database, drop_pg_database

FINANCE_PAGES = ("overview", "spend", "budgets", "invoices")  # in the navigation's order
ADMIN_PAGES = ("routing", "workers", "keys")
NO_VALUE = "(none)"  # how charts and tables name a group without a value (a refused call's model)


@dataclass(frozen=True)
class Console:
    gw: GatewayProcess
    keys: Keys

    @property
    def url(self) -> str:
        return self.gw.base_url

    def api(self, caller: Key, path: str, /, **params: str) -> httpx.Response:
        """GET `path` of the API with `caller`'s key (200 expected)."""
        r = httpx.get(self.url + path, params=params, headers=bearer(caller.secret), timeout=30)
        assert r.status_code == 200, r.text
        return r


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    require_redis()
    url = asyncio.run(create_pg_database())
    prefix = unique_prefix()
    gw: GatewayProcess | None = None
    try:
        gw = start(tmp_path_factory.mktemp("console-gateway"), url, prefix)
        keys = make_keys(gw)
        wait_for_records(gw, keys.platform_admin, seed_traffic(gw, keys))
        yield Console(gw, keys)
    finally:
        if gw is not None:
            gw.stop()
        delete_prefix(prefix)
        asyncio.run(drop_pg_database(url))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with headless_chromium() as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Where this run's screenshots go (said on the terminal)."""
    out = tmp_path_factory.mktemp("console-screenshots")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nconsole screenshots: {out}")
    return out


def json_block(page: Page, element_id: str) -> Any:
    """The JSON of a page's `<script type="application/json" id=...>` block (what its chart draws)."""
    return json.loads(page.locator(f"script#{element_id}").text_content() or "null")


def table_rows(page: Page, table_id: str) -> list[list[str]]:
    """A table's body, cell by cell (row headers included), as the page shows it."""
    rows: list[list[str]] = page.locator(f"#{table_id} tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")
    return rows


def pages_of(page: Page) -> dict[str, str]:
    """The pages the signed-in key's navigation links to: name -> path."""
    links: list[list[str]] = page.locator("#nav a").evaluate_all(
        "links => links.map(a => [a.dataset.testid.replace(/^nav-/, ''), a.getAttribute('href')])")
    return dict((name, path) for name, path in links)


def expect_ok(page: Page, path: str) -> None:
    response = page.goto(path)
    assert response is not None and response.status == 200, (path, page.content()[:2000])


# -- signing in ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "role", "scope"), [
    ("platform_admin", "admin", "all tenants"), ("platform_finance", "finance", "all tenants"),
    ("acme_admin", "admin", "tenant acme"), ("acme_finance", "finance", "tenant acme")])
def test_a_finance_or_admin_key_signs_in_and_sees_its_roles_pages(
    console: Console, browser: Browser, who: str, role: str, scope: str,
) -> None:
    key: Key = getattr(console.keys, who)
    with session(browser, console.url, key.secret) as page:
        assert page.url.rstrip("/").endswith("/console")
        assert page.get_by_test_id("who-role").inner_text() == role
        assert page.get_by_test_id("who-scope").inner_text() == scope
        assert page.get_by_test_id("who-key").inner_text() == key.id
        names = list(pages_of(page))
        assert names == (list(FINANCE_PAGES) if role == "finance" else [*FINANCE_PAGES, *ADMIN_PAGES])
        assert key.secret not in page.content()
        with page.expect_navigation():
            page.get_by_test_id("sign-out").click()
        assert "/console/login" in page.url
        page.goto("/console/")
        assert "/console/login" in page.url  # the session has ended


def test_a_wrong_key_or_an_app_key_is_refused_with_a_reason(
    console: Console, browser: Browser, shots: Path,
) -> None:
    with session(browser, console.url) as page:
        page.goto("/console/")
        assert "/console/login" in page.url  # no session: the sign-in form
        screenshot(page, "login", shots)
        sign_in(page, "sk-gw-not-a-key-of-this-gateway-0123456789")
        assert "/console/login" in page.url
        assert page.get_by_test_id("sign-in-problem").is_visible()
        assert "sk-gw-not-a-key" not in page.content()
        sign_in(page, console.keys.acme_app.secret)
        assert "/console/login" in page.url
        problem = page.get_by_test_id("sign-in-problem").inner_text()
        assert "app" in problem and "finance or admin" in problem
        page.goto("/console/")
        assert "/console/login" in page.url  # still no session


# -- the numbers are the API's -----------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["platform_finance", "acme_finance"])
def test_the_overview_shows_the_numbers_of_the_overview_api(console: Console, browser: Browser, who: str) -> None:
    key: Key = getattr(console.keys, who)
    api = console.api(key, "/v1/reports/overview").json()
    assert api["calls"] > 0 and api["refused"] == 1  # acme's
    with session(browser, console.url, key.secret) as page:
        assert json_block(page, "overview-data") == api
        for name in ("spend_today", "spend_month", "routing_savings", "cache_savings"):
            assert page.get_by_test_id(name).get_attribute("data-exact") == api[name]
        assert page.get_by_test_id("calls").inner_text() == str(api["calls"])
        assert page.get_by_test_id("refused").inner_text() == str(api["refused"])
        trend = json_block(page, "trend-chart-data")
        assert trend["labels"] == [d["day"] for d in api["trend"]]
        assert trend["series"][0]["values"] == [d["cost"] for d in api["trend"]]
        assert table_rows(page, "trend-table") == [[d["day"], d["cost"]] for d in api["trend"]]


def show(page: Page, groups: tuple[str, ...], **fields: str) -> dict[str, str]:
    """Fill in the Spend explorer's form (these groups, these filters) and show it; the query it asked for."""
    for box in page.locator("#spend-groups input[type=checkbox]").all():
        box.set_checked(box.get_attribute("value") in groups)
    for name, value in fields.items():
        page.fill(f"#spend-filters input[name={name}]", value)
    with page.expect_navigation():
        page.click("#spend-apply")
    query = {"from": page.input_value("#spend-filters input[name=from]"),
             "to": page.input_value("#spend-filters input[name=to]"), "group_by": ",".join(groups), **fields}
    assert query["from"] and query["to"]
    return query


def spend_cells(row: dict[str, Any], groups: tuple[str, ...]) -> list[str]:
    """A report row as the Spend explorer's table shows it."""
    return [*("" if row[g] is None else row[g] for g in groups), row["currency"],
            *(str(row[m]) for m in ("calls", "refused", "errors", "cache_hits", "cost", "reference_cost",
                                     "routing_savings", "cache_savings"))]


def test_the_spend_explorer_shows_the_numbers_of_the_usage_api(console: Console, browser: Browser) -> None:
    key = console.keys.platform_finance
    with session(browser, console.url, key.secret) as page:
        expect_ok(page, "/console/spend")  # by day and model: cost per day, a series per model, stacked
        start = page.input_value("#spend-filters input[name=from]")
        end = page.input_value("#spend-filters input[name=to]")
        api = console.api(key, "/v1/reports/usage", **{"from": start, "to": end, "group_by": "day,model"}).json()
        assert api["totals"][0]["calls"] == 7 and api["totals"][0]["refused"] == 1
        assert json_block(page, "spend-data") == {"rows": api["rows"], "totals": api["totals"]}
        chart = json_block(page, "spend-chart-data")
        assert chart["stacked"] and chart["labels"][-1] == end and len(chart["labels"]) == 30
        per_model = {s["label"]: sum(map(Decimal, s["values"])) for s in chart["series"]}
        assert per_model == {r["model"] or NO_VALUE: Decimal(r["cost"]) for r in api["rows"]}  # one day of calls
        assert [r[1:] for r in table_rows(page, "spend-chart-table")] == [
            [s["values"][i] for s in chart["series"]] for i in range(len(chart["labels"]))]

        query = show(page, ("tenant", "route"))  # bars: a cost per tenant and route
        api = console.api(key, "/v1/reports/usage", **query).json()
        assert {r["tenant"] for r in api["rows"]} == {"acme", "globex"}
        assert json_block(page, "spend-data") == {"rows": api["rows"], "totals": api["totals"]}
        assert table_rows(page, "spend-table") == [spend_cells(r, ("tenant", "route")) for r in api["rows"]]
        chart = json_block(page, "spend-chart-data")
        assert not chart["stacked"]
        assert table_rows(page, "spend-chart-table") == [
            [f"{r['tenant']} / {r['route'] or NO_VALUE}", r["cost"]] for r in api["rows"]]

        query = show(page, ("model",), tenant="globex")  # a platform key may pick a tenant
        api = console.api(key, "/v1/reports/usage", **query).json()
        assert api["filters"] == {"tenant": "globex"} and api["totals"][0]["calls"] == 2
        assert json_block(page, "spend-data") == {"rows": api["rows"], "totals": api["totals"]}


@pytest.mark.parametrize("who", ["platform_finance", "acme_finance"])
def test_the_spend_explorers_csv_is_the_usage_apis_byte_for_byte(
    console: Console, browser: Browser, tmp_path: Path, who: str,
) -> None:
    key: Key = getattr(console.keys, who)
    with session(browser, console.url, key.secret) as page:
        expect_ok(page, "/console/spend")
        query = show(page, ("team", "key"), model="demo-small")
        with page.expect_download() as download_info:
            page.get_by_test_id("spend-csv").click()
        download = download_info.value
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
    api = console.api(key, "/v1/reports/usage", **query, format="csv")
    assert saved.read_bytes() == api.content
    assert f'filename="{download.suggested_filename}"' in api.headers["content-disposition"]
    text = api.text
    assert text.splitlines()[0].startswith("team,key,key_name,currency,calls,refused,")
    assert "acme app" in text and ("globex app" in text) == (who == "platform_finance")


@pytest.mark.parametrize("who", ["platform_finance", "acme_finance"])
def test_the_budgets_page_shows_the_budgets_api_and_burns_down_by_the_usage_api(
    console: Console, browser: Browser, who: str,
) -> None:
    key: Key = getattr(console.keys, who)
    with session(browser, console.url, key.secret) as page:
        expect_ok(page, "/console/budgets")
        api = console.api(key, "/v1/reports/budgets").json()["budgets"]
        assert json_block(page, "budgets-data") == api
        assert {(b["tenant"], b["scope"]) for b in api} == (
            {("acme", "team"), ("globex", "key")} if who == "platform_finance" else {("acme", "team")})
        assert [row[:2] for row in table_rows(page, "budgets-table")] == [[b["scope"], b["tenant"]] for b in api]
        for n, budget in enumerate(api, start=1):  # the charts come in the table's order
            assert Decimal(budget["spent"]) > 0
            chart = json_block(page, f"burn-{n}-data")
            filters = {"team": budget["team"]} if budget["scope"] == "team" else {"key": budget["key_id"]}
            usage = console.api(key, "/v1/reports/usage", **{"from": budget["period_start"], "to": chart["labels"][-1]},
                                group_by="day", tenant=budget["tenant"], **filters).json()
            spent = sum((Decimal(r["cost"]) for r in usage["rows"]), Decimal(0))
            remaining = [v for v in chart["series"][0]["values"] if v is not None]
            assert spent > 0 and Decimal(remaining[-1]) == Decimal(budget["limit"]) - spent
            assert chart["labels"][0] == budget["period_start"]
            assert [r[1] for r in table_rows(page, f"burn-{n}-table")] == [
                v or "" for v in chart["series"][0]["values"]]


@pytest.mark.parametrize("who", ["platform_finance", "acme_finance"])
def test_the_invoices_page_links_to_the_invoice_apis_statement(
    console: Console, browser: Browser, tmp_path: Path, who: str,
) -> None:
    key: Key = getattr(console.keys, who)
    with session(browser, console.url, key.secret) as page:
        expect_ok(page, "/console/invoices")
        month = page.input_value("#invoice-picker input[name=month]")
        if who == "platform_finance":
            page.fill("#invoice-picker input[name=tenant]", "acme")
        page.fill("#invoice-picker input[name=team]", "red")
        with page.expect_navigation():
            page.click("#invoice-show")
        query = {"month": month, "tenant": "acme", "team": "red"}
        with page.expect_download() as download_info:
            page.get_by_test_id("invoice-csv").click()
        saved = tmp_path / "statement.csv"
        download_info.value.save_as(saved)
        assert saved.read_bytes() == console.api(key, "/v1/reports/invoice", **query, format="csv").content
        link = page.get_by_test_id("invoice-html").get_attribute("href") or ""
        with page.context.expect_page() as opened:
            page.get_by_test_id("invoice-html").click()  # a printable page of its own
        statement = opened.value
        statement.wait_for_load_state()
        assert statement.title() == f"Statement acme / red {month}"
        html = console.api(key, "/v1/reports/invoice", **query, format="html").content
        assert page.context.request.get(link).body() == html  # what the page opened, byte for byte
        assert b"acme" in html and b"globex" not in html


# -- every page --------------------------------------------------------------------------------------------------


def test_every_page_renders_for_a_platform_admin_and_is_screenshotted(
    console: Console, browser: Browser, shots: Path,
) -> None:
    with session(browser, console.url, console.keys.platform_admin.secret) as page:
        pages = pages_of(page)
        assert list(pages) == [*FINANCE_PAGES, *ADMIN_PAGES]
        for name, path in pages.items():
            expect_ok(page, path)
            assert page.locator(f"[data-testid=nav-{name}]").get_attribute("aria-current") == "page"
            assert not page.get_by_test_id("error").count()
            screenshot(page, name, shots)


@pytest.mark.parametrize("who", ["acme_finance", "acme_admin"])
def test_a_tenant_scoped_key_sees_no_other_tenants_data_on_any_page(
    console: Console, browser: Browser, who: str,
) -> None:
    key: Key = getattr(console.keys, who)
    with session(browser, console.url, key.secret) as page:
        pages = pages_of(page)
        assert list(pages)[:len(FINANCE_PAGES)] == list(FINANCE_PAGES)
        for name, path in pages.items():
            expect_ok(page, path)
            html = page.content()
            assert "acme" in html and "globex" not in html.lower(), path
            response = page.goto(f"{path}?tenant=globex")
            status = 400 if name == "workers" else 403  # the Workers page has no tenant (an unknown parameter)
            assert response is not None and response.status == status, path
            assert page.get_by_test_id("error").get_attribute("data-status") == str(status)
            assert "globex app" not in page.content()


@pytest.mark.parametrize("who", ["platform_finance", "acme_finance"])
def test_a_finance_key_has_no_link_to_the_admin_pages_and_gets_a_403_page_there(
    console: Console, browser: Browser, who: str,
) -> None:
    with session(browser, console.url, console.keys.platform_admin.secret) as page:
        admin_only = {name: path for name, path in pages_of(page).items() if name not in FINANCE_PAGES}
    assert list(admin_only) == list(ADMIN_PAGES)
    key: Key = getattr(console.keys, who)
    with session(browser, console.url, key.secret) as page:
        assert not admin_only.keys() & pages_of(page).keys()
        for path in admin_only.values():
            response = page.goto(path)
            assert response is not None and response.status == 403, path
            assert page.get_by_test_id("error").get_attribute("data-status") == "403"
            assert "finance" in page.get_by_test_id("error-message").inner_text()


# -- the admin pages ---------------------------------------------------------------------------------------------


def test_the_routing_page_shows_the_usage_api_by_route_and_explains_as_the_api(
    console: Console, browser: Browser,
) -> None:
    key = console.keys.platform_admin
    with session(browser, console.url, key.secret) as page:
        expect_ok(page, "/console/routing")
        query = {"from": page.input_value("#routing-filters input[name=from]"),
                 "to": page.input_value("#routing-filters input[name=to]")}
        for group in ("route", "model"):
            api = console.api(key, "/v1/reports/usage", **query, group_by=group).json()
            shown = {row[0]: row[1:5] for row in table_rows(page, f"{group}-totals")}
            assert shown == {r[group] or NO_VALUE: [str(r["calls"]), str(r["refused"]), str(r["errors"]), r["cost"]]
                             for r in api["rows"]}
            calls = json_block(page, f"{group}-calls-chart-data")
            assert {s["label"]: sum(map(int, s["values"])) for s in calls["series"]} == {
                r[group] or NO_VALUE: r["calls"] for r in api["rows"]}
        assert {"honour-requested", "learned"} <= {row[0] for row in table_rows(page, "route-totals")}

        body = {"model": "auto", "messages": [{"role": "user", "content": "Summarise this quarter's invoices."}]}
        page.select_option("#explain-kind", "chat")
        page.fill("#explain-body", json.dumps(body))
        with page.expect_navigation():
            page.get_by_test_id("explain-submit").click()
        api = httpx.post(console.gw.base_url + "/admin/route/explain", json=body, headers=bearer(key.secret),
                         timeout=30).json()
        assert json_block(page, "explain-data") == api
        assert page.get_by_test_id("explain-model").inner_text() == api["decision"]["model"]
        assert page.get_by_test_id("explain-rule").inner_text() == api["decision"]["rule"]

        page.fill("#explain-body", "{not json")
        with page.expect_navigation():
            page.get_by_test_id("explain-submit").click()
        assert page.get_by_test_id("explain-problem").is_visible()  # a 400 shown on the page, not a 500


def test_the_workers_page_draws_and_redraws_the_workers_api(console: Console, browser: Browser) -> None:
    key = console.keys.platform_admin
    api = console.api(key, "/admin/workers").json()["pools"]
    with session(browser, console.url, key.secret) as page:
        expect_ok(page, "/console/workers")
        assert json_block(page, "workers-data") == {"pools": api}
        replicas = page.locator("[data-testid=replica-row]")
        assert sorted(replicas.evaluate_all("rows => rows.map(r => r.dataset.url)")) == sorted(
            r["url"] for pool in api.values() for r in pool["replicas"])
        assert set(replicas.locator("[data-field=health]").all_inner_texts()) == {"healthy"}
        status = page.get_by_test_id("workers-status")
        page.wait_for_function("() => document.getElementById('workers-status').textContent.startsWith('as of ')")
        assert "problem" not in (status.get_attribute("class") or "")
        assert replicas.count() == sum(len(pool["replicas"]) for pool in api.values())


# -- keys --------------------------------------------------------------------------------------------------------


def key_state(page: Page, key_id: str) -> str:
    return page.locator(f"[data-testid=key-row][data-key-id={key_id}]").get_attribute("data-state") or ""


def models_status(console: Console, secret: str) -> int:
    return httpx.get(console.gw.api + "/models", headers=bearer(secret), timeout=10).status_code


def test_an_admin_creates_a_key_seen_once_and_revokes_it(console: Console, browser: Browser, shots: Path) -> None:
    with session(browser, console.url, console.keys.platform_admin.secret) as page:
        expect_ok(page, "/console/keys")
        page.fill("#new-key-tenant", "acme")
        page.fill("#new-key-team", "green")
        page.select_option("#new-key-role", "app")
        page.fill("#new-key-name", "made in the browser")
        page.fill("#new-key-rpm", "600")
        with page.expect_navigation():
            page.get_by_test_id("create-key").click()
        secret = page.get_by_test_id("new-key-secret").inner_text().strip()
        key_id = page.get_by_test_id("new-key").get_attribute("data-key-id") or ""
        assert secret.startswith("sk-gw-") and key_id.startswith("key_")
        screenshot(page, "key-created", shots, mask=[page.get_by_test_id("new-key-secret")])
        assert models_status(console, secret) == 200  # the key works at once

        expect_ok(page, "/console/keys")
        assert secret not in page.content()  # shown once, never again
        assert key_state(page, key_id) == "active"
        row = page.locator(f"[data-testid=key-row][data-key-id={key_id}]").inner_text()
        assert "made in the browser" in row and "acme" in row and "green" in row and "600" in row

        with page.expect_navigation():
            page.get_by_test_id(f"revoke-{key_id}").click()
        assert page.get_by_test_id("revoke-key").get_attribute("data-key-id") == key_id
        with page.expect_navigation():
            page.get_by_test_id("confirm-revoke").click()
        expect_ok(page, "/console/keys")
        assert key_state(page, key_id) == "revoked"
        assert not page.get_by_test_id(f"revoke-{key_id}").count()
    deadline = time.monotonic() + 10
    while models_status(console, secret) != 401:
        assert time.monotonic() < deadline, "a revoked key still works"
        time.sleep(0.2)


def test_revoking_a_key_on_the_keys_page_ends_its_console_session(console: Console, browser: Browser) -> None:
    with session(browser, console.url, console.keys.platform_admin.secret) as admin:
        expect_ok(admin, "/console/keys")
        admin.fill("#new-key-tenant", "acme")
        admin.fill("#new-key-team", "audit")
        admin.select_option("#new-key-role", "finance")
        with admin.expect_navigation():
            admin.get_by_test_id("create-key").click()
        secret = admin.get_by_test_id("new-key-secret").inner_text().strip()
        key_id = admin.get_by_test_id("new-key").get_attribute("data-key-id") or ""
        with session(browser, console.url, secret) as auditor:
            assert auditor.get_by_test_id("who-key").inner_text() == key_id
            expect_ok(admin, f"/console/keys/{key_id}/revoke")
            with admin.expect_navigation():
                admin.get_by_test_id("confirm-revoke").click()
            deadline = time.monotonic() + 10
            while "/console/login" not in auditor.url:  # within auth_cache_ttl_s (1 s here)
                assert time.monotonic() < deadline, "a revoked key's session goes on"
                time.sleep(0.2)
                auditor.goto("/console/spend")


def test_a_tenant_admin_sees_and_makes_keys_of_its_tenant_only(console: Console, browser: Browser) -> None:
    with session(browser, console.url, console.keys.acme_admin.secret) as page:
        expect_ok(page, "/console/keys")
        tenants = page.locator("[data-testid=key-row] td:nth-child(4)").all_inner_texts()
        assert tenants and set(tenants) == {"acme"}
        assert "globex" not in page.content().lower()
        assert not page.locator("#new-key-tenant").count() and not page.locator("#new-key-scope").count()
