"""The console in a real headless Chromium (Debian's, driven by Playwright) against a real gateway process on
PostgreSQL and Redis with auth on: signing in with each role, the numbers of every chart and table equal
to what the reports API returns for the same traffic, the CSV download byte for byte the API's, tenant
scoping on every page, the admin-only pages closed to finance, a key created and revoked on the Keys page,
and a full-page screenshot of every page (tests/browser_support.py says where they go)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
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

FINANCE_PAGES = ("overview", "spend", "budgets", "invoices")


@dataclass(frozen=True)
class Console:
    gw: GatewayProcess
    keys: Keys

    @property
    def url(self) -> str:
        return self.gw.base_url

    def api(self, key: Key, path: str, **params: str) -> httpx.Response:
        r = httpx.get(self.url + path, params=params, headers=bearer(key.secret), timeout=30)
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


def nav_names(page: Page) -> list[str]:
    ids: list[str] = page.locator("#nav a").evaluate_all("links => links.map(a => a.dataset.testid)")
    return [i.removeprefix("nav-") for i in ids]


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
        names = nav_names(page)
        assert names[:len(FINANCE_PAGES)] == list(FINANCE_PAGES)
        if role == "finance":
            assert names == list(FINANCE_PAGES)
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
