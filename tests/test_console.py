"""The web console (/console) against a real gateway in this process, on PostgreSQL and Redis (sessions in
Redis): sign-in with each role, a wrong key, an app key refused; the cookies' flags; CSRF on every POST; a
session ended by its key's revocation and by its time; pages closed to a role; tenant scoping; the Overview
page's numbers equal `GET /v1/reports/overview`'s and `gateway report overview`'s. Another gateway on the
embedded defaults (SQLite, sessions in memory) checks Secure cookies and the session's time limit, and one
with `auth: off` the open console with its banner."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Request, Router, get
from litestar.response import Template

from gateway.accounting.overview import interpolated
from gateway.auth.guard import ADMIN
from gateway.console.access import console_guard
from gateway.console.pages import Page
from gateway.console.render import EXCEPTIONS, page
from gateway.console.session import CSRF_COOKIE, SESSION_COOKIE, console_middleware
from tests.auth_support import GATEWAY
from tests.console_support import (
    HELLO,
    Console,
    Key,
    chat,
    console_gateway,
    create_key,
    csrf_of,
    json_block,
    sign_in,
    signed_in,
)
from tests.inprocess_gateway import InProcessGateway
from tests.services import redis_url

ADMIN_PAGE = Page(path="/console/test-admin-only", title="Admin only", name="admin-only", roles=ADMIN)


@get("/test-admin-only", opt=ADMIN_PAGE.opt, include_in_schema=False)
async def admin_only_page(request: Request[Any, Any, Any]) -> Template:
    return page(request, ADMIN_PAGE, "error.html", status=200, error={"message": "admin only", "code": "ok"})


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, pg_module_database: str) -> Iterator[Console]:
    with console_gateway(tmp_path_factory.mktemp("console"), pg_module_database) as gw:
        gw.app.register(Router(path="/console", route_handlers=[admin_only_page], guards=[console_guard],
                               middleware=console_middleware(gw.settings), exception_handlers=EXCEPTIONS))
        gw.start()
        keys = {
            "platform_finance": create_key(gw, "ops", "money", "finance", "all"),
            "acme_finance": create_key(gw, "acme", "money", "finance"),
            "acme_admin": create_key(gw, "acme", "it", "admin"),
            "acme_app": create_key(gw, "acme", "red", "app"),
            "globex_app": create_key(gw, "globex", "blue", "app"),
        }
        for key, model in (("acme_app", "demo-small"), ("acme_app", "demo-large"), ("globex_app", "demo-small")):
            assert chat(gw, keys[key], model=model).status_code == 200
        # refused by the gateway before a worker: past the policy's request limits
        assert chat(gw, keys["globex_app"], model="demo-small", max_tokens=10**9).status_code == 400
        gw.flush()
        yield Console(gw, keys, pg_module_database)


# --- sign-in ---------------------------------------------------------------------------------------


def test_a_page_without_a_session_sends_to_the_sign_in_form(console: Console) -> None:
    r = console.client().get("/console/", params={"tenant": "acme"})
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?next=%2Fconsole%3Ftenant%3Dacme"
    form = console.client().get("/console/login")
    assert form.status_code == 200 and form.headers["content-type"].startswith("text/html")
    assert 'type="password"' in form.text and 'name="api_key"' in form.text and 'method="post"' in form.text


@pytest.mark.parametrize("key", ["platform_finance", "acme_finance", "acme_admin"])
def test_finance_and_admin_keys_sign_in(console: Console, key: str) -> None:
    client = signed_in(console, key)
    r = client.get("/console/")
    assert r.status_code == 200, r.text
    role = "admin" if key.endswith("admin") else "finance"
    assert f'data-testid="who-role">{role}<' in r.text
    assert console.keys[key].id in r.text and console.keys[key].secret not in r.text


def test_sign_in_goes_back_to_the_page_asked_for(console: Console) -> None:
    client = console.client()
    r = sign_in(client, console.keys["platform_finance"].secret, "/console?tenant=acme")
    assert r.status_code == 303 and r.headers["location"] == "/console?tenant=acme"
    r = sign_in(client, console.keys["platform_finance"].secret, "https://elsewhere.example/")
    assert r.headers["location"] == "/console/"


def test_a_wrong_key_an_app_key_or_none_is_refused_with_the_form_again(console: Console) -> None:
    for secret, status, says in (("sk-gw-not-a-key", 401, "Incorrect API key provided."),
                                 (console.keys["acme_app"].secret, 403, "A key with the role `app` cannot sign in"),
                                 ("", 400, "Enter an API key.")):
        client = console.client()
        r = sign_in(client, secret)
        assert r.status_code == status, r.text
        assert says in r.text and 'name="api_key"' in r.text
        assert SESSION_COOKIE not in client.cookies
        assert client.get("/console/").status_code == 303
        if secret:
            assert secret not in r.text


def test_the_session_cookie_is_httponly_samesite_strict_and_short_lived(console: Console) -> None:
    client = console.client()
    r = sign_in(client, console.keys["acme_finance"].secret)
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "="))
    flags = {f.strip().split("=")[0].lower(): f.strip() for f in cookie.split(";")[1:]}
    assert "httponly" in flags and flags["samesite"].lower() == "samesite=strict"
    assert flags["path"] == "Path=/console" and flags["max-age"] == "Max-Age=1800"
    assert "secure" not in flags  # console_secure_cookies is off by default (http on 127.0.0.1)
    session_id = client.cookies[SESSION_COOKIE]
    assert console.keys["acme_finance"].secret not in session_id
    fresh = console.client().get("/console/login")
    csrf = next(c for c in fresh.headers.get_list("set-cookie") if c.startswith(CSRF_COOKIE + "="))
    assert "HttpOnly" in csrf and "SameSite=strict" in csrf and "Path=/console" in csrf
    assert SESSION_COOKIE + "=" not in fresh.headers.get("set-cookie", "")  # a visitor's empty session is not kept


def test_the_session_lives_in_redis_and_holds_the_keys_hash_never_the_key(console: Console) -> None:
    import redis

    client = signed_in(console, "acme_finance")
    sid = client.cookies[SESSION_COOKIE]
    held = redis.Redis.from_url(redis_url()).get(f"gateway:console:session:{sid}")
    assert isinstance(held, bytes)
    data = json.loads(held)
    assert set(data) == {"key_hash", "ends_at"}
    assert console.keys["acme_finance"].secret not in held.decode()


def test_a_sign_in_gets_a_fresh_session_id(console: Console) -> None:
    client = console.client()
    client.cookies.set(SESSION_COOKIE, "chosen-by-someone-else", domain="127.0.0.1", path="/console")
    sign_in(client, console.keys["acme_finance"].secret)
    assert client.cookies.get(SESSION_COOKIE, path="/console") not in (None, "chosen-by-someone-else")


def test_sign_out_ends_the_session(console: Console) -> None:
    client = signed_in(console, "acme_finance")
    page_html = client.get("/console/").text
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page_html)
    assert token is not None
    sid = client.cookies[SESSION_COOKIE]
    r = client.post("/console/logout", data={"_csrf_token": token.group(1)})
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert client.get("/console/").status_code == 303
    stolen = console.client()
    stolen.cookies.set(SESSION_COOKIE, sid, domain="127.0.0.1", path="/console")
    assert stolen.get("/console/").status_code == 303  # the id no longer opens anything


# --- CSRF ------------------------------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_403(console: Console) -> None:
    client = signed_in(console, "acme_finance")
    for path, data in (("/console/logout", {}), ("/console/login", {"api_key": console.keys["acme_finance"].secret}),
                       ("/console/logout", {"_csrf_token": "forged"})):
        r = client.post(path, data=data)
        assert r.status_code == 403, (path, r.text)
        assert r.headers["content-type"].startswith("text/html") and "CSRF" in r.text
    assert client.get("/console/").status_code == 200  # still signed in
    other = console.client()  # a token of another browser's cookie
    token = csrf_of(other)
    r = client.post("/console/logout", data={"_csrf_token": token})
    assert r.status_code == 403


# --- the session re-checked ------------------------------------------------------------------------


def test_revoking_the_key_ends_its_session_at_the_next_request(console: Console) -> None:
    key = create_key(console.gw, "acme", "money", "finance")
    client = console.client()
    assert sign_in(client, key.secret).status_code == 303
    assert client.get("/console/").status_code == 200
    r = httpx.post(f"{console.gw.base_url}/admin/keys/{key.id}/revoke", headers=console.gw.auth, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5  # published on Redis: at once; else within auth_cache_ttl_s
    while (r := client.get("/console/")).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    assert sign_in(console.client(), key.secret).status_code == 401


# --- roles and tenants -----------------------------------------------------------------------------


def test_finance_gets_a_403_page_for_an_admin_page_and_no_link_to_it(console: Console) -> None:
    for key in ("platform_finance", "acme_finance"):
        client = signed_in(console, key)
        r = client.get("/console/test-admin-only")
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
        assert "Admin only is for the role admin" in r.text and 'data-status="403"' in r.text
        nav = client.get("/console/").text
        assert 'data-testid="nav-overview"' in nav and "/console/test-admin-only" not in nav
    assert signed_in(console, "acme_admin").get("/console/test-admin-only").status_code == 200


def test_an_unknown_query_parameter_is_a_400_page(console: Console) -> None:
    r = signed_in(console, "platform_finance").get("/console/", params={"tenat": "acme"})
    assert r.status_code == 400 and "Unknown query parameter `tenat`" in r.text


def overview_api(console: Console, key: str, **params: Any) -> dict[str, Any]:
    r = console.api("/v1/reports/overview", key, **params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_overview_page_shows_the_apis_numbers(console: Console) -> None:
    for key, params in (("platform_finance", {}), ("platform_finance", {"tenant": "globex"}),
                        ("acme_finance", {}), ("acme_admin", {})):
        html = signed_in(console, key).get("/console/", params=params).text
        shown = json_block(html, "overview-data")
        assert shown == overview_api(console, key, **params)
        trend = json_block(html, "trend-chart-data")
        assert trend["labels"] == [d["day"] for d in shown["trend"]]
        assert trend["series"][0]["values"] == [d["cost"] for d in shown["trend"]]
        for day in shown["trend"]:  # the table beside the chart, as served
            assert f'<th scope="row">{day["day"]}</th><td class="num">{day["cost"]}</td>' in html


def test_each_tenant_sees_its_own_overview(console: Console) -> None:
    everything = overview_api(console, "platform_finance")
    acme = overview_api(console, "acme_finance")
    globex = overview_api(console, "platform_finance", tenant="globex")
    assert (everything["calls"], everything["refused"]) == (3, 1)
    assert (acme["calls"], acme["refused"], acme["filters"]) == (2, 0, {"tenant": "acme"})
    assert (globex["calls"], globex["refused"]) == (1, 1)
    assert overview_api(console, "acme_finance", tenant="acme") == acme
    r = console.api("/v1/reports/overview", "acme_finance", tenant="globex")
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_out_of_scope"
    page_403 = signed_in(console, "acme_finance").get("/console/", params={"tenant": "globex"})
    assert page_403.status_code == 403 and "tenant_out_of_scope" in page_403.text
    assert 'name="tenant"' not in signed_in(console, "acme_finance").get("/console/").text  # no tenant picker


def test_the_overview_figures(console: Console) -> None:
    o = overview_api(console, "platform_finance")
    assert len(o["trend"]) == 30 and o["trend"][-1]["day"] == o["end"]
    assert o["spend_today"] == o["trend"][-1]["cost"] and float(o["spend_today"]) > 0
    assert o["error_rate"] == 0 and o["cache_hit_rate"] == 0
    assert o["ttft_p50_ms"] is not None and o["ttft_p95_ms"] >= o["ttft_p50_ms"] > 0
    from decimal import Decimal

    assert Decimal(o["reference_cost"]) == Decimal(o["cost"]) + Decimal(o["routing_savings"]) + Decimal(
        o["cache_savings"])
    week = overview_api(console, "platform_finance", days=7, to=o["end"])
    assert len(week["trend"]) == 7 and week["spend_month"] == o["spend_month"]


def test_the_overview_endpoint_checks_its_query_and_the_role(console: Console) -> None:
    for params, param, code in (({"tenat": "x"}, "tenat", "unknown_parameter"),
                                ({"to": "yesterday"}, "to", "invalid_report_query")):
        r = console.api("/v1/reports/overview", "platform_finance", **params)
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)
    for days in (0, 367):
        r = console.api("/v1/reports/overview", "platform_finance", days=days)
        assert r.status_code == 400 and (r.json()["error"]["param"], r.json()["error"]["code"]) == (
            "days", "invalid_report_query")
    assert console.api("/v1/reports/overview", "acme_app").status_code == 403


def test_gateway_report_overview_prints_the_apis_numbers(console: Console, tmp_path: Path) -> None:
    api = overview_api(console, "platform_finance", tenant="acme")
    out = subprocess.run([str(GATEWAY), "report", "overview", "--database-url", console.database_url,
                          "--tenant", "acme", "--to", api["end"], "--format", "json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == api
    table = subprocess.run([str(GATEWAY), "report", "overview", "--database-url", console.database_url],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "time to first token p95" in table.stdout


def test_static_files_and_the_vendored_chart_library(console: Console) -> None:
    r = httpx.get(console.gw.base_url + "/console/static/vendor/chart.js-4.6.2/chart.umd.min.js")
    assert r.status_code == 200 and r.content.startswith(b"/*!\n * Chart.js v4.6.2")
    html = signed_in(console, "platform_finance").get("/console/").text
    for src in re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html):
        assert src.startswith("/console/static/"), src  # nothing from elsewhere
        assert httpx.get(console.gw.base_url + src).status_code == 200


# --- the embedded defaults: Secure cookies, the session's time limit; auth off ----------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(tmp_path_factory.mktemp("console-embedded"),
                          {"console_session_ttl_s": 2, "console_secure_cookies": True}).start()
    yield gw
    gw.stop()


def test_secure_cookies_when_the_setting_says_so(embedded: InProcessGateway) -> None:
    client = httpx.Client(base_url=embedded.base_url, follow_redirects=False)
    form = client.get("/console/login")
    assert all("; Secure" in c for c in form.headers.get_list("set-cookie"))
    token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    csrf_cookie = form.headers["set-cookie"].split(";")[0]
    r = httpx.post(embedded.base_url + "/console/login", headers={"cookie": csrf_cookie},
                   data={"api_key": embedded.key, "_csrf_token": token.group(1)})
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "="))
    assert "; Secure" in cookie and "Max-Age=2" in cookie


def test_a_session_ends_when_its_time_is_up(embedded: InProcessGateway) -> None:
    client = httpx.Client(base_url=embedded.base_url, follow_redirects=False)
    form = client.get("/console/login")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    csrf_cookie = form.headers["set-cookie"].split(";")[0]
    r = httpx.post(embedded.base_url + "/console/login", headers={"cookie": csrf_cookie},
                   data={"api_key": embedded.key, "_csrf_token": token.group(1)})
    assert r.status_code == 303
    session_cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "="))
    cookies = {"cookie": f"{csrf_cookie}; {session_cookie.split(';')[0]}"}
    assert httpx.get(embedded.base_url + "/console/", headers=cookies).status_code == 200
    time.sleep(2.2)
    r = httpx.get(embedded.base_url + "/console/", headers=cookies)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


def test_the_overview_on_sqlite_equals_the_api(embedded: InProcessGateway) -> None:
    r = httpx.post(embedded.api + "/chat/completions", headers=embedded.auth, timeout=30,
                   json={"model": "demo-small", "messages": HELLO, "max_tokens": 5})
    assert r.status_code == 200
    embedded.flush()
    o = httpx.get(embedded.base_url + "/v1/reports/overview", headers=embedded.auth).json()
    assert o["calls"] == 1 and o["ttft_p50_ms"] == o["ttft_p95_ms"] is not None


@pytest.fixture(scope="module")
def auth_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(tmp_path_factory.mktemp("console-auth-off"), {"auth": "off"}).start()
    yield gw
    gw.stop()


def test_with_auth_off_the_console_opens_as_the_anonymous_admin_with_a_banner(auth_off: InProcessGateway) -> None:
    r = httpx.get(auth_off.base_url + "/console/")
    assert r.status_code == 200
    assert 'data-testid="auth-off-banner"' in r.text and "Auth is off" in r.text
    assert "anonymous admin" in r.text and 'data-testid="nav-overview"' in r.text
    login = httpx.get(auth_off.base_url + "/console/login", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/console/"


@pytest.mark.pure
def test_percentiles_interpolate_as_postgresql_does() -> None:
    assert interpolated([], 0.5) is None
    assert interpolated([7], 0.95) == 7.0
    assert interpolated([10, 20, 30, 40], 0.5) == 25.0  # percentile_cont(0.5) of 10..40
    assert interpolated([10, 20, 30, 40], 0.95) == pytest.approx(38.5)
    assert interpolated(list(range(1, 101)), 0.95) == pytest.approx(95.05)


# --- Spend, Budgets, Invoices ----------------------------------------------------------------------


def test_the_spend_page_shows_the_usage_report_and_its_csv_link_serves_the_apis_bytes(console: Console) -> None:
    client = signed_in(console, "platform_finance")
    r = client.get("/console/spend")
    assert r.status_code == 200, r.text
    hrefs = re.findall(r'<a href="(/console/spend\.csv\?[^"]+)" id="spend-csv"', r.text)
    assert len(hrefs) == 1
    query = httpx.QueryParams(hrefs[0].split("?", 1)[1].replace("&amp;", "&"))
    assert query["group_by"] == "day,model" and query["from"] < query["to"]
    api = console.api("/v1/reports/usage", "platform_finance", **dict(query), format="json").json()
    assert json_block(r.text, "spend-data") == {"rows": api["rows"], "totals": api["totals"]}
    csv_page = client.get(hrefs[0].replace("&amp;", "&"))
    csv_api = console.api("/v1/reports/usage", "platform_finance", **dict(query), format="csv")
    assert csv_page.status_code == 200 and csv_page.content == csv_api.content
    assert csv_page.headers["content-type"] == csv_api.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv_page.headers["content-disposition"] == csv_api.headers["content-disposition"]
    chart = json_block(r.text, "spend-chart-data")
    assert chart["stacked"] and {s["label"] for s in chart["series"]} == {"demo-small", "demo-large", "(none)"}


@pytest.mark.parametrize("params", [{}, {"group_by": "tenant,key"}, {"group_by": "route", "tenant": "acme"},
                                    {"group_by": "team,day", "model": "demo-small", "from": "2020-01-01"}])
def test_the_consoles_csv_is_the_apis_csv(console: Console, params: dict[str, str]) -> None:
    for key in ("platform_finance", "acme_finance"):
        ours = signed_in(console, key).get("/console/spend.csv", params=params)
        theirs = console.api("/v1/reports/usage", key, **params, format="csv")
        assert ours.status_code == theirs.status_code == 200
        assert ours.content == theirs.content and ours.content.count(b"\n") >= 1


def test_the_spend_page_keeps_to_the_tenant_and_checks_its_query(console: Console) -> None:
    acme = signed_in(console, "acme_finance")
    html = acme.get("/console/spend", params={"group_by": "tenant"}).text
    assert [r["tenant"] for r in json_block(html, "spend-data")["rows"]] == ["acme"]
    assert 'name="tenant"' not in html
    for path in ("/console/spend", "/console/spend.csv"):
        r = acme.get(path, params={"tenant": "globex"})
        assert r.status_code == 403 and "tenant_out_of_scope" in r.text
    for params, says in (({"group_by": "colour"}, "cannot group by colour"), ({"from": "May"}, "`from` must be a date"),
                         ({"format": "csv"}, "Unknown query parameter `format`")):
        r = acme.get("/console/spend", params=params)
        assert r.status_code == 400 and says in r.text and r.headers["content-type"].startswith("text/html")


def test_the_budgets_page_shows_the_apis_rows_with_a_burn_down(console: Console) -> None:
    r = httpx.post(console.gw.base_url + "/admin/keys", headers=console.gw.auth, timeout=30,
                   json={"tenant": "acme", "team": "red", "role": "app", "name": "budgeted", "budget": "5",
                         "budget_period": "month"})
    assert r.status_code == 201, r.text
    budgeted = Key(r.json()["key"], r.json()["id"])
    assert chat(console.gw, budgeted, model="demo-large").status_code == 200
    console.gw.flush()
    for key, tenants in (("platform_finance", None), ("acme_finance", {"acme"})):
        html = signed_in(console, key).get("/console/budgets").text
        rows = json_block(html, "budgets-data")
        assert rows == console.api("/v1/reports/budgets", key).json()["budgets"]
        assert tenants is None or {r["tenant"] for r in rows} == tenants
        mine = next(i for i, r in enumerate(rows) if r["key_id"] == budgeted.id)
        chart = json_block(html, f"burn-{mine + 1}-data")
        remaining = [v for v in chart["series"][0]["values"] if v is not None]
        from decimal import Decimal

        assert Decimal(remaining[-1]) == Decimal(rows[mine]["limit"]) - Decimal(rows[mine]["recorded"])
        assert chart["series"][1]["label"] == "even pace" and Decimal(chart["series"][1]["values"][-1]) == 0
        assert f'<td data-testid="forecast_run_out">{rows[mine]["forecast_run_out"] or "—"}</td>' in html


def test_the_invoices_page_links_to_the_apis_statements(console: Console) -> None:
    month = overview_api(console, "platform_finance")["end"][:7]
    platform = signed_in(console, "platform_finance")
    page_html = platform.get("/console/invoices").text
    assert 'id="invoice-html"' not in page_html and "acme, globex" in page_html
    page_html = platform.get("/console/invoices", params={"tenant": "acme", "month": month}).text
    links = dict(re.findall(r'<a href="(/console/invoices/statement\?[^"]+)" id="invoice-(html|csv)"', page_html))
    assert len(links) == 2
    for href, fmt in links.items():
        ours = platform.get(href.replace("&amp;", "&"))
        theirs = console.api("/v1/reports/invoice", "platform_finance", month=month, tenant="acme", format=fmt)
        assert ours.status_code == theirs.status_code == 200
        assert ours.headers["content-type"] == theirs.headers["content-type"]
        if fmt == "csv":
            assert ours.content == theirs.content
        else:  # the statement's time of making differs
            assert re.sub(rb"\d{4}-\d\d-\d\dT[\d:.]+Z?", b"", ours.content) == re.sub(
                rb"\d{4}-\d\d-\d\dT[\d:.]+Z?", b"", theirs.content)
    acme = signed_in(console, "acme_finance")
    assert 'id="invoice-csv"' in acme.get("/console/invoices").text  # its own tenant, without asking
    r = acme.get("/console/invoices/statement", params={"month": month, "tenant": "globex"})
    assert r.status_code == 403


def test_an_unknown_console_path_is_a_404_page(console: Console) -> None:
    client = signed_in(console, "platform_finance")
    r = client.get("/console/nope/deeper")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "There is no console page at /console/nope/deeper." in r.text
    assert client.get("/console/spend").status_code == 200  # the pages and static files are still found
    assert client.get("/console/static/console.css").status_code == 200
    assert console.client().get("/console/nope").status_code == 303  # no session: sign in first
