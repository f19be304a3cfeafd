"""Each key sees only its tenant unless its scope is `all`: two tenants (acme, globex) with traffic through a
running gateway on PostgreSQL; acme's finance key sees only acme in every report endpoint and format, its
admin key manages only acme's keys and teams; the platform's keys (scope all) see both. Report endpoints
refuse unknown query parameters; CSVs are named downloads.

A report endpoint added later joins the cross-tenant checks with one line in REPORT_ENDPOINTS.
"""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.auth_support import GATEWAY, bearer, cli, new_key
from tests.gateway_process import GatewayProcess, start_gateway
from tests.pg_support import create_pg_database, drop_pg_database

CHAT = {"model": "demo-small", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 3}
CALLS = {"acme": 2, "globex": 3}
THIS_MONTH = datetime.now(UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class ReportEndpoint:
    """A report endpoint, as the cross-tenant checks call it."""

    path: str
    params: dict[str, str] = field(default_factory=dict)
    formats: tuple[str, ...] = ("json", "csv")
    names_tenant: bool = True  # the answer names the tenant(s) it covers
    spans_tenants: bool = True  # without `tenant`, a key of scope all gets every tenant's figures
    calls_of: Callable[[Any], int] | None = None  # the calls its JSON answer counts, if it counts them


REPORT_ENDPOINTS = [
    ReportEndpoint("/v1/reports/usage", {"group_by": "tenant"}),
    ReportEndpoint("/v1/reports/usage", {"group_by": "tenant,team,key,model,route,operation"}),
    ReportEndpoint("/v1/reports/usage", {"group_by": "key", "from": "2020-01-01", "to": "2099-12-31"}),
    ReportEndpoint("/v1/reports/budgets"),
    ReportEndpoint("/v1/reports/overview", {"days": "2"}, formats=("json",), spans_tenants=False,
                   calls_of=lambda body: int(body["calls"])),
    ReportEndpoint("/v1/reports/invoice", {"month": THIS_MONTH}, formats=("json", "csv", "html"), spans_tenants=False),
]


@dataclass
class World:
    gw: GatewayProcess
    keys: dict[str, str]  # who -> key
    ids: dict[str, str]  # who -> key id
    tenant_of: dict[str, str | None] = field(default_factory=lambda: {
        "acme_finance": "acme", "acme_admin": "acme", "platform_finance": None, "platform_admin": None})

    def get(self, who: str, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.gw.base_url + path, params=params, headers=bearer(self.keys[who]), timeout=30)

    def send(self, who: str, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return httpx.request(method, self.gw.base_url + path, json=body, headers=bearer(self.keys[who]),
                             timeout=30)


def _migrate(url: str, cwd: Any) -> None:
    out = subprocess.run([str(GATEWAY), "db", "--database-url", url, "upgrade"], cwd=cwd, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = asyncio.run(create_pg_database())
    root = tmp_path_factory.mktemp("scope")
    gw: GatewayProcess | None = None
    try:
        _migrate(url, root)
        gw = start_gateway(root / "gw", {"database_url": url, "recorder_flush_interval_s": 0.05,
                                         "auth_cache_ttl_s": 1.0})
        made = {
            "acme_app": new_key(gw, "acme", "red", "app", "--budget", "5"),
            "globex_app": new_key(gw, "globex", "gxteam", "app", "--budget", "5"),
            "acme_finance": new_key(gw, "acme", "money", "finance"),
            "acme_admin": new_key(gw, "acme", "ops", "admin"),
            "platform_finance": new_key(gw, "platform", "money", "finance", "--scope", "all"),
            "platform_admin": new_key(gw, "platform", "ops", "admin", "--scope", "all"),
        }
        for tenant, team in (("acme", "red"), ("globex", "gxteam")):
            out = cli(gw, "keys", "team", "--tenant", tenant, "--team", team, "--budget", "10")
            assert out.returncode == 0, out.stderr
        w = World(gw, {k: v[0] for k, v in made.items()}, {k: v[1] for k, v in made.items()})
        for tenant, n in CALLS.items():
            for _ in range(n):
                r = httpx.post(gw.api + "/chat/completions", json=CHAT, headers=bearer(w.keys[f"{tenant}_app"]),
                               timeout=30)
                assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while _calls_by_tenant(w, "platform_finance") != CALLS:
            assert time.monotonic() < deadline, _calls_by_tenant(w, "platform_finance")
            time.sleep(0.1)
        yield w
    finally:
        if gw is not None:
            gw.stop()
        asyncio.run(drop_pg_database(url))


def _calls_by_tenant(w: World, who: str, **params: str) -> dict[str, int]:
    r = w.get(who, "/v1/reports/usage", {"group_by": "tenant", **params})
    assert r.status_code == 200, r.text
    return {row["tenant"]: row["calls"] for row in r.json()["rows"]}


def _error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def _tenants_named(w: World, text: str) -> set[str]:
    """Which of the two tenants an answer names, by their names, their teams or their keys."""
    marks = {"acme": ("acme", w.ids["acme_app"]), "globex": ("globex", "gxteam", w.ids["globex_app"])}
    return {tenant for tenant, words in marks.items() if any(word in text for word in words)}


def _fetch(w: World, who: str, ep: ReportEndpoint, fmt: str, **extra: str) -> str:
    params = {**ep.params, **({"format": fmt} if len(ep.formats) > 1 else {}), **extra}
    r = w.get(who, ep.path, params)
    assert r.status_code == 200, (ep, fmt, r.text)
    if fmt == "json" and ep.calls_of is not None:
        tenant = extra.get("tenant") or w.tenant_of[who]
        assert ep.calls_of(r.json()) == (CALLS[tenant] if tenant else sum(CALLS.values())), (who, params)
    if fmt == "csv":  # every CSV a named download (gateway/api/downloads.py)
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        disposition = r.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="') and disposition.endswith('.csv"'), disposition
        list(csv.reader(io.StringIO(r.text)))  # well-formed
    return r.text


ENDPOINT_IDS = [f"{ep.path}?{'&'.join(f'{k}={v}' for k, v in ep.params.items())}" for ep in REPORT_ENDPOINTS]


@pytest.mark.parametrize("ep", REPORT_ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_tenant_finance_key_sees_only_its_tenant(world: World, ep: ReportEndpoint) -> None:
    for fmt in ep.formats:
        for extra in ({}, {"tenant": "acme"}):
            text = _fetch(world, "acme_finance", ep, fmt, **extra)
            assert _tenants_named(world, text) == ({"acme"} if ep.names_tenant else set()), (fmt, extra, text)
    r = world.get("acme_finance", ep.path, {**ep.params, "tenant": "globex"})
    assert r.status_code == 403, r.text
    err = _error(r)
    assert (err["type"], err["code"], err["param"]) == ("permission_error", "tenant_out_of_scope", "tenant")
    assert "globex" in err["message"]


@pytest.mark.parametrize("ep", REPORT_ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_platform_finance_key_sees_every_tenant(world: World, ep: ReportEndpoint) -> None:
    for fmt in ep.formats:
        if ep.spans_tenants:
            assert _tenants_named(world, _fetch(world, "platform_finance", ep, fmt)) >= {"acme", "globex"}
        for tenant in CALLS:
            named = _tenants_named(world, _fetch(world, "platform_finance", ep, fmt, tenant=tenant))
            assert named == ({tenant} if ep.names_tenant else set()), (fmt, tenant)


@pytest.mark.parametrize("ep", REPORT_ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_report_refuses_a_parameter_it_does_not_take(world: World, ep: ReportEndpoint) -> None:
    for who in ("acme_finance", "platform_finance", "platform_admin"):
        for bad in ({"tenat": "globex"}, {"limit": "5"}):
            r = world.get(who, ep.path, {**ep.params, **bad})
            assert r.status_code == 400, (who, bad, r.text)
            err = _error(r)
            assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "unknown_parameter",
                                                                next(iter(bad)))


def test_every_report_endpoint_refuses_unknown_parameters(world: World) -> None:
    """Every `/v1/reports/...` path the gateway serves, those added after these tests included."""
    document = world.get("platform_admin", "/admin/openapi.json").json()
    paths = [p for p in document["paths"] if p.startswith("/v1/reports/")]
    assert {"/v1/reports/usage", "/v1/reports/budgets"} <= set(paths)
    for path in paths:
        r = world.get("acme_finance", path, {"colour": "red"})
        assert r.status_code == 400, (path, r.text)
        assert _error(r)["code"] == "unknown_parameter" and _error(r)["param"] == "colour"


def test_usage_filters_stay_within_the_callers_tenant(world: World) -> None:
    assert _calls_by_tenant(world, "acme_finance") == {"acme": CALLS["acme"]}
    assert _calls_by_tenant(world, "platform_finance", tenant="globex") == {"globex": CALLS["globex"]}
    # Another tenant's key or team, asked by a tenant-scoped key, matches nothing of its own tenant.
    for params in ({"key": world.ids["globex_app"]}, {"team": "gxteam"}):
        r = world.get("acme_finance", "/v1/reports/usage", {"group_by": "key", **params})
        assert r.status_code == 200 and r.json()["rows"] == [], r.text
        assert r.json()["filters"] == {"tenant": "acme", **params}
    by_key = world.get("platform_finance", "/v1/reports/usage",
                       {"group_by": "key", "key": world.ids["globex_app"]}).json()["rows"]
    assert [(row["key"], row["calls"]) for row in by_key] == [(world.ids["globex_app"], CALLS["globex"])]
    by_model = world.get("acme_finance", "/v1/reports/usage", {"group_by": "tenant", "model": "demo-small",
                                                               "operation": "chat"}).json()["rows"]
    assert [(row["tenant"], row["calls"]) for row in by_model] == [("acme", CALLS["acme"])]


def test_budgets_of_a_tenant(world: World) -> None:
    def budgets(who: str, **params: str) -> list[tuple[str, str, str | None]]:
        r = world.get(who, "/v1/reports/budgets", params)
        assert r.status_code == 200, r.text
        return sorted((b["scope"], b["tenant"], b["key_id"]) for b in r.json()["budgets"])

    acme = [("key", "acme", world.ids["acme_app"]), ("team", "acme", None)]
    globex = [("key", "globex", world.ids["globex_app"]), ("team", "globex", None)]
    assert budgets("acme_finance") == budgets("acme_finance", tenant="acme") == acme
    assert budgets("acme_admin") == acme
    assert budgets("platform_finance") == sorted(acme + globex)
    assert budgets("platform_finance", tenant="globex") == globex
    r = world.get("acme_finance", "/v1/reports/budgets", {"format": "csv"})
    assert r.headers["content-disposition"] == 'attachment; filename="budgets.csv"'
    r = world.get("acme_finance", "/v1/reports/usage", {"format": "csv", "from": "2026-12-01", "to": "2026-12-07"})
    assert r.headers["content-disposition"] == 'attachment; filename="usage-2026-12-01-2026-12-07.csv"'


def test_a_tenant_admin_manages_only_its_tenants_keys(world: World) -> None:
    listed = world.get("acme_admin", "/admin/keys").json()["keys"]
    assert {k["tenant"] for k in listed} == {"acme"} and world.ids["acme_app"] in {k["id"] for k in listed}
    assert {k["tenant"] for k in world.get("platform_admin", "/admin/keys").json()["keys"]} >= {"acme", "globex"}
    scopes = {k["id"]: k["scope"] for k in world.get("platform_admin", "/admin/keys").json()["keys"]}
    assert scopes[world.ids["platform_finance"]] == "all" and scopes[world.ids["acme_finance"]] == "tenant"

    for method, path, body in (
        ("GET", "/admin/keys?tenant=globex", None),
        ("POST", "/admin/keys", {"tenant": "globex", "team": "gxteam", "role": "admin"}),
        ("POST", "/admin/keys", {"tenant": "acme", "team": "red", "role": "finance", "scope": "all"}),
        ("GET", "/admin/teams?tenant=globex", None),
        ("PUT", "/admin/teams/globex/gxteam", {"rpm": 1}),
    ):
        r = world.send("acme_admin", method, path, body)
        assert r.status_code == 403, (method, path, r.text)
        assert _error(r)["code"] == "tenant_out_of_scope"

    # Another tenant's key: not found, as if it did not exist; and it still works.
    r = world.send("acme_admin", "POST", f"/admin/keys/{world.ids['globex_app']}/revoke")
    assert r.status_code == 404 and _error(r)["code"] == "key_not_found"
    assert httpx.post(world.gw.api + "/chat/completions", json=CHAT, headers=bearer(world.keys["globex_app"]),
                      timeout=30).status_code == 200

    # Its own tenant: a key of scope tenant, made, listed, revoked.
    r = world.send("acme_admin", "POST", "/admin/keys", {"tenant": "acme", "team": "red", "role": "app"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["tenant"], made["scope"]) == ("acme", "tenant")
    r = world.send("acme_admin", "POST", f"/admin/keys/{made['id']}/revoke")
    assert r.status_code == 200 and r.json()["state"] == "revoked"

    teams = world.get("acme_admin", "/admin/teams").json()["teams"]
    assert [(t["tenant"], t["team"]) for t in teams] == [("acme", "red")]
    theirs = [t for t in world.get("platform_admin", "/admin/teams").json()["teams"] if t["tenant"] == "globex"]
    assert [(t["team"], t["rpm"], t["budget"]) for t in theirs] == [("gxteam", None, "10.0000000000")]  # unchanged

    # The platform's admin reaches every tenant, and may make keys of scope all.
    r = world.send("platform_admin", "POST", "/admin/keys",
                   {"tenant": "globex", "team": "gxteam", "role": "finance", "scope": "all"})
    assert r.status_code == 201 and r.json()["scope"] == "all", r.text
    assert world.send("platform_admin", "POST", "/admin/keys",
                      {"tenant": "acme", "team": "red", "role": "app", "scope": "every"}).status_code == 400


def test_fleet_status_is_readable_by_a_tenant_admin(world: World) -> None:
    for path in ("/admin/workers", "/admin/policy", "/admin/openapi.json"):
        assert world.get("acme_admin", path).status_code == 200, path
    r = world.send("acme_admin", "POST", "/admin/route/explain", CHAT)
    assert r.status_code == 200 and r.json()["caller"]["tenant"] == "acme", r.text


def test_the_keys_cli_shows_and_sets_the_scope(world: World) -> None:
    listed = cli(world.gw, "keys", "list").stdout
    header, *rows = listed.splitlines()
    assert header.split()[4:7] == ["role", "scope", "state"]
    row = next(r for r in rows if r.startswith(world.ids["platform_finance"]))
    assert row.split()[4:7] == ["finance", "all", "active"]
    row = next(r for r in rows if r.startswith(world.ids["acme_finance"]))
    assert row.split()[4:7] == ["finance", "tenant", "active"]
    bad = cli(world.gw, "keys", "create", "--tenant", "acme", "--team", "red", "--role", "app", "--scope", "some")
    assert bad.returncode == 2 and "--scope" in bad.stderr
