"""The console's admin pages (Routing, Workers, Keys) against a real gateway in this process, on PostgreSQL and
Redis: each page for an admin and a 403 page for finance; the Routing page's numbers, policy and explained
decision equal the API's; the Workers JSON equals `/admin/workers`'; a key created on the Keys page works and
its secret is shown once; a revoked one gets 401; a POST without the CSRF token is 403; a tenant admin sees and
manages its own tenant only."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.auth_support import bearer
from tests.console_support import Console, chat, console_gateway, create_key, json_block, signed_in

PAGES = ("/console/routing", "/console/workers", "/console/keys")
ASK = {"model": "auto", "messages": [{"role": "user", "content": "Write a haiku about the sea."}], "max_tokens": 40}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, pg_module_database: str) -> Iterator[Console]:
    with console_gateway(tmp_path_factory.mktemp("console-ops"), pg_module_database, auth_cache_ttl_s=1.0) as gw:
        gw.start()
        keys = {
            "platform_admin": create_key(gw, "ops", "platform", "admin", "all"),
            "acme_admin": create_key(gw, "acme", "it", "admin"),
            "acme_finance": create_key(gw, "acme", "money", "finance"),
            "acme_app": create_key(gw, "acme", "red", "app"),
            "globex_app": create_key(gw, "globex", "blue", "app"),
        }
        for key, model in (("acme_app", "demo-small"), ("acme_app", "auto"), ("globex_app", "demo-large")):
            assert chat(gw, keys[key], model=model).status_code == 200
        # refused by the gateway before a worker: past the policy's request limits
        assert chat(gw, keys["globex_app"], model="demo-small", max_tokens=10**9).status_code == 400
        gw.flush()
        yield Console(gw, keys, pg_module_database)


def token_of(html: str) -> str:
    found = re.search(r'name="_csrf_token" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def post_form(client: httpx.Client, form_page: str, path: str, **fields: str) -> httpx.Response:
    """A POST of the form on `form_page`, with the page's CSRF token, as a browser sends it."""
    return client.post(path, data={**fields, "_csrf_token": token_of(client.get(form_page).text)})


def admin_api(c: Console, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, c.gw.base_url + path, headers=bearer(c.keys["platform_admin"].secret), timeout=30,
                         **kwargs)


# --- every page -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["platform_admin", "acme_admin"])
def test_each_admin_page_renders_for_an_admin_with_its_nav_link(console: Console, key: str) -> None:
    client = signed_in(console, key)
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (path, r.text)
        assert r.headers["cache-control"] == "no-store"
        for name in ("routing", "workers", "keys"):
            assert f'data-testid="nav-{name}"' in r.text


def test_finance_gets_a_403_page_for_each_admin_page_and_no_link(console: Console) -> None:
    client = signed_in(console, "acme_finance")
    for path in (*PAGES, "/console/workers.json", "/console/keys/" + console.keys["acme_app"].id + "/revoke"):
        r = client.get(path)
        assert r.status_code == 403 and 'data-status="403"' in r.text, (path, r.text)
    overview = client.get("/console/").text
    assert not any(f'data-testid="nav-{n}"' in overview for n in ("routing", "workers", "keys"))
    for path, fields in (("/console/keys", {"team": "x", "role": "app"}), ("/console/routing/explain", {"body": "{}"}),
                         ("/console/teams", {"team": "money"})):
        r = client.post(path, data={**fields, "_csrf_token": token_of(overview)})
        assert r.status_code == 403, (path, r.text)


def test_a_post_without_the_csrf_token_is_403(console: Console) -> None:
    client = signed_in(console, "platform_admin")
    victim = create_key(console.gw, "acme", "red", "app")
    for path, fields in (("/console/keys", {"tenant": "acme", "team": "x", "role": "app"}),
                         (f"/console/keys/{victim.id}/revoke", {}),
                         ("/console/teams", {"tenant": "acme", "team": "red", "rpm": "5"}),
                         ("/console/routing/explain", {"body": json.dumps(ASK)})):
        for token in ({}, {"_csrf_token": "forged"}):
            r = client.post(path, data={**fields, **token})
            assert r.status_code == 403, (path, token, r.text)
    assert httpx.get(console.gw.api + "/models", headers=bearer(victim.secret)).status_code == 200
    teams = admin_api(console, "GET", "/admin/teams").json()["teams"]
    assert not any(t["team"] == "red" for t in teams)


def test_an_unknown_query_parameter_is_a_400_page(console: Console) -> None:
    client = signed_in(console, "platform_admin")
    for path in (*PAGES, "/console/workers.json"):
        r = client.get(path, params={"colour": "red"})
        assert r.status_code == 400 and "unknown_parameter" in r.text, (path, r.text)


# --- Routing ----------------------------------------------------------------------------------------


def test_the_routing_page_shows_the_usage_reports_numbers_by_route_and_model(console: Console) -> None:
    client = signed_in(console, "platform_admin")
    today = datetime.now(UTC).date().isoformat()
    html = client.get("/console/routing", params={"from": today, "to": today}).text
    for group in ("route", "model"):
        api = admin_api(console, "GET", "/v1/reports/usage",
                        params={"from": today, "to": today, "group_by": f"{group},day"}).json()
        assert api["rows"], api
        cost = json_block(html, f"{group}-cost-chart-data")
        calls = json_block(html, f"{group}-calls-chart-data")
        assert cost["labels"] == calls["labels"] == [today] and cost["stacked"]
        expected = {(r[group] or "(none)"): r for r in api["rows"]}
        assert {s["label"]: s["values"] for s in cost["series"]} == {k: [r["cost"]] for k, r in expected.items()}
        assert {s["label"]: s["values"] for s in calls["series"]} == {k: [r["calls"]] for k, r in expected.items()}
        for value, row in expected.items():
            assert f'data-{group}="{value}"' in html
            assert f'data-exact="{row["cost"]}"' in html
    assert json_block(html, "route-calls-chart-data")["series"]  # the seeded calls' rules


def test_a_tenant_admin_sees_its_tenants_routing_only(console: Console) -> None:
    client = signed_in(console, "acme_admin")
    shown = json_block(client.get("/console/routing").text, "model-calls-chart-data")
    calls = {s["label"]: sum(s["values"]) for s in shown["series"]}

    def api(**tenant: str) -> dict[str, int]:
        rows = admin_api(console, "GET", "/v1/reports/usage", params={"group_by": "model", **tenant}).json()["rows"]
        return {r["model"]: r["calls"] for r in rows}

    assert calls == api(tenant="acme") and calls != api()  # globex's calls left out
    r = client.get("/console/routing", params={"tenant": "globex"})
    assert r.status_code == 403 and "tenant_out_of_scope" in r.text


def test_the_routing_page_shows_the_policy_in_force(console: Console) -> None:
    html = signed_in(console, "platform_admin").get("/console/routing").text
    policy = admin_api(console, "GET", "/admin/policy").json()
    assert f'data-testid="policy-hash">{policy["hash"]}<' in html
    assert f'data-testid="policy-loaded-at">{policy["loaded_at"]}<' in html
    assert all(f"<code>{f}</code>" in html for f in policy["files"])


@pytest.mark.parametrize("kind,body", [
    ("chat", ASK),
    ("completion", {"model": "auto", "prompt": "Once upon a time", "max_tokens": 20}),
    ("chat", {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]}),
])
def test_explain_shows_the_decision_the_api_gives(console: Console, kind: str, body: dict[str, Any]) -> None:
    client = signed_in(console, "acme_admin")
    r = post_form(client, "/console/routing", "/console/routing/explain", body=json.dumps(body), kind=kind)
    assert r.status_code == 200, r.text
    shown = json_block(r.text, "explain-data")
    api = httpx.post(console.gw.base_url + "/admin/route/explain", params={"kind": kind}, json=body, timeout=30,
                     headers=bearer(console.keys["acme_admin"].secret))
    assert api.status_code == 200, api.text
    assert shown == api.json()
    assert shown["caller"] == {"tenant": "acme", "team": "it", "key_id": console.keys["acme_admin"].id}
    if shown["decision"] is not None:
        assert f'data-testid="explain-model">{shown["decision"]["model"]}<' in r.text
    else:
        assert 'data-testid="explain-refusal"' in r.text


@pytest.mark.parametrize("body,kind,says", [
    ("{not json", "chat", "not valid JSON"),
    ("[1, 2]", "chat", "JSON object"),
    ('{"messages": "hi"}', "chat", "messages"),
    ("{}", "embedding", "kind must be"),
])
def test_explain_of_a_bad_body_shows_the_apis_error_not_a_500(console: Console, body: str, kind: str,
                                                               says: str) -> None:
    client = signed_in(console, "platform_admin")
    r = post_form(client, "/console/routing", "/console/routing/explain", body=body, kind=kind)
    assert r.status_code == 400, r.text
    problem = re.search(r'data-testid="explain-problem" role="alert">(.*?)</p>', r.text, re.S)
    assert problem is not None, r.text
    api = admin_api(console, "POST", "/admin/route/explain", params={"kind": kind}, content=body.encode())
    assert api.status_code == 400
    assert problem.group(1) == _escaped(api.json()["error"]["message"])
    assert says.lower() in problem.group(1).lower()
    assert 'data-testid="explain-form"' in r.text and "explain-result" not in r.text


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;").replace(
        "'", "&#39;")


# --- Workers ----------------------------------------------------------------------------------------


def test_the_workers_json_is_what_admin_workers_answers(console: Console) -> None:
    client = signed_in(console, "platform_admin")
    for _ in range(5):  # the health checks may change a figure between the two reads: read again
        ours, api = client.get("/console/workers.json"), admin_api(console, "GET", "/admin/workers")
        assert ours.status_code == 200 and ours.headers["content-type"].startswith("application/json")
        if ours.json() == api.json():
            break
    assert ours.json() == api.json()
    assert ours.headers["cache-control"] == "no-store"
    html = client.get("/console/workers").text
    shown = json_block(html, "workers-data")
    assert set(shown["pools"]) == set(api.json()["pools"])
    assert 'id="workers-table"' in html and 'data-source="/console/workers.json"' in html
    assert '<script src="/console/static/workers.js"></script>' in html
    script = client.get("/console/static/workers.js")
    assert script.status_code == 200 and "setInterval" in script.text


# --- Keys -------------------------------------------------------------------------------------------


def test_a_key_created_on_the_page_works_and_is_shown_once(console: Console) -> None:
    client = signed_in(console, "platform_admin")
    r = post_form(client, "/console/keys", "/console/keys", tenant="acme", team="blue", role="app", scope="tenant",
                  name="made in the console", rpm="60", budget="12.5", budget_period="day",
                  expires_at="2999-01-01T00:00")
    assert r.status_code == 200, r.text
    secret = re.search(r'data-testid="new-key-secret">([^<]+)<', r.text)
    key_id = re.search(r'data-testid="new-key-id"><code>(key_[0-9a-f]+)<', r.text)
    assert secret is not None and key_id is not None, r.text
    assert httpx.get(console.gw.api + "/models", headers=bearer(secret.group(1))).status_code == 200
    listed = {k["id"]: k for k in admin_api(console, "GET", "/admin/keys").json()["keys"]}[key_id.group(1)]
    assert (listed["tenant"], listed["team"], listed["role"], listed["scope"], listed["name"]) == (
        "acme", "blue", "app", "tenant", "made in the console")
    assert (listed["rpm"], listed["budget"], listed["budget_period"]) == (60, "12.5000000000", "day")
    assert listed["expires_at"] == "2999-01-01T00:00:00+00:00"
    page = client.get("/console/keys").text
    assert key_id.group(1) in page and secret.group(1) not in page


def test_a_refused_key_form_comes_back_with_the_reason(console: Console) -> None:
    client = signed_in(console, "platform_admin")
    for fields, status, says in (
        ({"tenant": "acme", "team": "blue", "role": "boss"}, 400, "role `boss`"),
        ({"tenant": "acme", "team": "blue", "role": "app", "rpm": "many"}, 400, "rpm"),
        ({"tenant": "acme", "team": "blue", "role": "app", "budget": "lots"}, 400, "budget"),
        ({"tenant": "acme", "team": "blue", "role": "app", "expires_at": "soon"}, 400, "expires_at"),
        ({"tenant": "acme", "team": "blue", "role": "app", "colour": "red"}, 400, "colour"),
    ):
        r = post_form(client, "/console/keys", "/console/keys", **fields)
        assert r.status_code == status, (fields, r.text)
        problem = re.search(r'data-testid="create-key-problem" role="alert">(.*?)</p>', r.text, re.S)
        assert problem is not None and says in problem.group(1), (fields, r.text)
        assert 'value="blue"' in r.text  # the form as filled in
        assert "new-key-secret" not in r.text


def test_a_key_revoked_on_the_page_gets_401(console: Console) -> None:
    victim = create_key(console.gw, "acme", "red", "app")
    assert httpx.get(console.gw.api + "/models", headers=bearer(victim.secret)).status_code == 200
    client = signed_in(console, "platform_admin")
    assert f'href="/console/keys/{victim.id}/revoke"' in client.get("/console/keys").text
    confirm = client.get(f"/console/keys/{victim.id}/revoke")
    assert confirm.status_code == 200 and 'data-testid="confirm-revoke"' in confirm.text
    assert httpx.get(console.gw.api + "/models", headers=bearer(victim.secret)).status_code == 200  # not yet
    r = client.post(f"/console/keys/{victim.id}/revoke", data={"_csrf_token": token_of(confirm.text)})
    assert r.status_code == 200 and f"Key {victim.id}" in r.text, r.text
    assert re.search(rf'data-key-id="{victim.id}" data-state="revoked"', r.text)
    refused = httpx.get(console.gw.api + "/models", headers=bearer(victim.secret))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"], refused.text
    assert client.get("/console/keys/key_0000000000000000/revoke").status_code == 404


def test_team_limits_set_on_the_page_are_the_teams(console: Console) -> None:
    client = signed_in(console, "platform_admin")
    r = post_form(client, "/console/keys", "/console/teams", tenant="acme", team="green", rpm="30", tpm="9000",
                  budget="100", budget_period="month")
    assert r.status_code == 200 and "The limits of team acme/green are set." in r.text, r.text
    teams = {(t["tenant"], t["team"]): t for t in admin_api(console, "GET", "/admin/teams").json()["teams"]}
    green = teams[("acme", "green")]
    assert (green["rpm"], green["tpm"], green["budget"], green["budget_period"]) == (
        30, 9000, "100.0000000000", "month")
    assert 'data-team="acme/green"' in r.text
    r = post_form(client, "/console/keys", "/console/teams", tenant="acme", team="green")  # every field empty
    assert r.status_code == 200
    assert ("acme", "green") not in {(t["tenant"], t["team"]) for t in admin_api(console, "GET", "/admin/teams").json()[
        "teams"]}
    r = post_form(client, "/console/keys", "/console/teams", tenant="acme", team="green", rpm="0")
    assert r.status_code == 400 and 'data-testid="team-limits-problem"' in r.text and "rpm" in r.text


def test_a_tenant_admin_sees_and_manages_its_own_tenant_only(console: Console) -> None:
    client = signed_in(console, "acme_admin")
    html = client.get("/console/keys").text
    tenants = set(re.findall(r'data-testid="key-row" data-key-id="[^"]+" data-state="\w+">\s*<th scope="row">'
                             r'<code>[^<]+</code></th><td>[^<]*</td><td><code>[^<]+</code></td>\s*<td>([^<]+)</td>',
                             html))
    assert tenants == {"acme"}, html
    assert console.keys["globex_app"].id not in html and console.keys["platform_admin"].id not in html
    assert 'id="new-key-tenant"' not in html and 'id="new-key-scope"' not in html and 'id="team-tenant"' not in html
    # its own tenant without naming it
    r = post_form(client, "/console/keys", "/console/keys", team="ops", role="app", name="acme's own")
    assert r.status_code == 200 and 'data-testid="new-key-secret"' in r.text, r.text
    assert "<dd>acme / ops</dd>" in r.text
    # another tenant, or scope all, named in a forged form: 403, and no key made
    before = len(admin_api(console, "GET", "/admin/keys").json()["keys"])
    for fields in ({"tenant": "globex", "team": "x", "role": "app"}, {"team": "x", "role": "admin", "scope": "all"}):
        r = post_form(client, "/console/keys", "/console/keys", **fields)
        assert r.status_code == 403, r.text
        assert 'data-testid="create-key-problem"' in r.text
    assert len(admin_api(console, "GET", "/admin/keys").json()["keys"]) == before
    assert client.get("/console/keys", params={"tenant": "globex"}).status_code == 403
    # another tenant's key: not found, and it still works
    globex = console.keys["globex_app"]
    assert client.get(f"/console/keys/{globex.id}/revoke").status_code == 404
    r = client.post(f"/console/keys/{globex.id}/revoke", data={"_csrf_token": token_of(html)})
    assert r.status_code == 404, r.text
    assert httpx.get(console.gw.api + "/models", headers=bearer(globex.secret)).status_code == 200
    # another tenant's team
    r = post_form(client, "/console/keys", "/console/teams", tenant="globex", team="blue", rpm="1")
    assert r.status_code == 403 and 'data-testid="team-limits-problem"' in r.text
    assert ("globex", "blue") not in {(t["tenant"], t["team"]) for t in admin_api(console, "GET", "/admin/teams")
                                      .json()["teams"]}


def test_no_secret_in_the_gateways_log(console: Console, caplog: pytest.LogCaptureFixture) -> None:
    client = signed_in(console, "platform_admin")
    with caplog.at_level("DEBUG"):
        r = post_form(client, "/console/keys", "/console/keys", tenant="acme", team="audit", role="app")
        secret = re.search(r'data-testid="new-key-secret">([^<]+)<', r.text)
        assert secret is not None
        console.gw.flush()
    assert "created for tenant acme, team audit" in caplog.text
    assert secret.group(1) not in caplog.text


# --- the pages' own pieces ----------------------------------------------------------------------------


@pytest.mark.pure
def test_the_routing_range_defaults_to_the_last_30_days_and_refuses_a_bad_one() -> None:
    from datetime import date

    from gateway.accounting.reports import ReportError
    from gateway.console.routing_page import window

    today = date(2026, 12, 7)
    assert (window(None, None, today).start, window(None, None, today).end) == (date(2026, 11, 8), today)
    week = window("2026-12-01", None, today).days
    assert week[0] == date(2026, 12, 1) and len(week) == 7
    assert window(None, "2026-01-31", today).start == date(2026, 1, 2)
    for start, end, param in (("2026-12-08", "2026-12-01", "to"), ("2025-01-01", "2026-12-01", "from"),
                              ("yesterday", None, "from")):
        with pytest.raises(ReportError) as info:
            window(start, end, today)
        assert info.value.param == param


@pytest.mark.pure
def test_a_key_form_is_read_as_the_api_reads_its_body() -> None:
    from gateway.auth.principal import Principal
    from gateway.console.keys_page import key_request, team_request
    from router.errors import InvalidRequest

    tenant_admin = Principal(tenant="acme", team="it", key_id="key_1", role="admin")
    b = key_request(tenant_admin, {"_csrf_token": "t", "team": " ops ", "role": "app", "rpm": "60", "budget": "1.5",
                                   "budget_period": "day", "expires_at": "2027-01-31T12:00", "name": ""})
    assert (b.tenant, b.team, b.role, b.scope, b.name, b.rpm, b.budget, b.budget_period, b.expires_at) == (
        "acme", "ops", "app", "tenant", None, 60, "1.5", "day", "2027-01-31T12:00:00+00:00")
    assert key_request(tenant_admin, {"team": "x", "role": "app", "expires_at": "2027-01-31T12:00+02:00"}
                       ).expires_at == "2027-01-31T12:00:00+02:00"
    for form in ({"team": "x", "role": "app", "rpm": "many"}, {"team": "x", "role": "app", "colour": "red"},
                 {"team": "x", "role": "app", "expires_at": "soon"}):
        with pytest.raises(InvalidRequest):
            key_request(tenant_admin, form)
    assert team_request(tenant_admin, {"team": "red", "tpm": "100"})[:2] == ("acme", "red")
    with pytest.raises(InvalidRequest):
        team_request(tenant_admin, {"rpm": "1"})
