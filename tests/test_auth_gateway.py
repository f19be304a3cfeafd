"""Keys and roles through the running gateway (`gateway serve`, simulated workers): 401 and 403 in
OpenAI's envelope, the roles each endpoint takes, the tenant from the key only, revocation, the admin
keys API, `make run`'s development key, `auth: off`, and no key or prompt in any log."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.auth_support import bearer, cli, new_key, report, workdir
from tests.gateway_process import GATEWAY_BIN, GatewayProcess, start_gateway
from workers.launcher import free_port

HELLO = [{"role": "user", "content": "Say hello."}]
CHAT = {"model": "demo-small", "messages": HELLO, "max_tokens": 3}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp_path_factory.mktemp("auth"), {"recorder_flush_interval_s": 0.05,
                                                              "auth_cache_ttl_s": 1.0})
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def app_key(gw: GatewayProcess) -> str:
    return new_key(gw, "acme", "red", "app")[0]


def chat(gw: GatewayProcess, headers: dict[str, str], **extra: object) -> httpx.Response:
    return httpx.post(gw.api + "/chat/completions", json={**CHAT, **extra}, headers=headers, timeout=30)


def error_of(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert r.headers.get("x-request-id")
    return body["error"]  # type: ignore[no-any-return]


def test_no_key_or_a_bad_one_is_401(gw: GatewayProcess) -> None:
    for headers, code in (({}, "missing_api_key"), (bearer("sk-gw-guessed"), "invalid_api_key"),
                          ({"authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key"),
                          ({"authorization": "Bearer"}, "invalid_api_key")):
        r = chat(gw, headers)
        assert r.status_code == 401, headers
        err = error_of(r)
        assert (err["type"], err["code"]) == ("invalid_request_error", code)
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=gw.api, api_key="sk-gw-wrong", max_retries=0).models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


def test_the_key_may_come_in_any_of_three_headers(gw: GatewayProcess, app_key: str) -> None:
    for headers in (bearer(app_key), {"api-key": app_key}, {"x-api-key": app_key}):
        assert chat(gw, headers).status_code == 200, headers
    client = openai.OpenAI(base_url=gw.api, api_key=app_key, max_retries=0)
    assert client.chat.completions.create(model="demo-small", messages=HELLO, max_tokens=2).choices  # type: ignore[arg-type]


def test_each_role_reaches_only_its_endpoints(gw: GatewayProcess, app_key: str) -> None:
    finance = new_key(gw, "acme", "money", "finance")[0]
    admin = new_key(gw, "acme", "ops", "admin")[0]
    endpoints = {
        "chat": lambda h: httpx.post(gw.api + "/chat/completions", json=CHAT, headers=h, timeout=30),
        "completions": lambda h: httpx.post(gw.api + "/completions", headers=h, timeout=30,
                                            json={"model": "demo-small", "prompt": "Hi", "max_tokens": 2}),
        "models": lambda h: httpx.get(gw.api + "/models", headers=h),
        "usage report": lambda h: httpx.get(gw.base_url + "/v1/reports/usage", headers=h),
        "budgets report": lambda h: httpx.get(gw.base_url + "/v1/reports/budgets", headers=h),
        "workers": lambda h: httpx.get(gw.base_url + "/admin/workers", headers=h),
        "policy": lambda h: httpx.get(gw.base_url + "/admin/policy", headers=h),
        "explain": lambda h: httpx.post(gw.base_url + "/admin/route/explain", json=CHAT, headers=h),
        "keys": lambda h: httpx.get(gw.base_url + "/admin/keys", headers=h),
        "teams": lambda h: httpx.get(gw.base_url + "/admin/teams", headers=h),
    }
    may = {
        "app": {"chat", "completions", "models"},
        "finance": {"usage report", "budgets report"},
        "admin": set(endpoints),
    }
    for role, key in (("app", app_key), ("finance", finance), ("admin", admin)):
        for name, call in endpoints.items():
            r = call(bearer(key))
            if name in may[role]:
                assert r.status_code == 200, (role, name, r.text)
            else:
                assert r.status_code == 403, (role, name, r.status_code)
                err = error_of(r)
                assert (err["type"], err["code"]) == ("permission_error", "insufficient_permissions")
                assert f"role `{role}`" in str(err["message"])
            assert call({}).status_code == 401, name
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=gw.api, api_key=finance, max_retries=0).models.list()


def test_health_and_readiness_stay_open(gw: GatewayProcess) -> None:
    assert httpx.get(gw.base_url + "/healthz").status_code == 200
    assert httpx.get(gw.base_url + "/readyz").status_code == 200
    # Unknown paths are 404 as before (no route, nothing to guard).
    assert httpx.get(gw.api + "/nothing-here").status_code == 404


def test_the_tenant_comes_from_the_key_never_from_headers(gw: GatewayProcess) -> None:
    key, key_id = new_key(gw, "tenant-a", "team-a", "app")
    spoof = {"x-tenant": "tenant-b", "x-team": "team-b", "x-key-id": "key_other", "x-gateway-tenant": "tenant-b",
             "openai-organization": "tenant-b", "openai-project": "team-b"}
    rid = f"spoof-{time.monotonic_ns()}"
    r = chat(gw, {**bearer(key), **spoof, "x-request-id": rid})
    assert r.status_code == 200
    deadline = time.monotonic() + 20
    while True:
        rows = [row for row in report(gw, "--group-by", "tenant,team,key")["rows"] if row["key"] == key_id]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(row["tenant"], row["team"], row["calls"]) for row in rows] == [("tenant-a", "team-a", 1)]
    assert all(row["tenant"] != "tenant-b" for row in report(gw, "--group-by", "tenant")["rows"])
    # Nor can a caller choose where the call goes: a body naming an upstream is just passed to the pool.
    r = chat(gw, {**bearer(key), "x-upstream": "http://127.0.0.1:1", "host": "evil.example"},
             api_base="http://127.0.0.1:1", base_url="http://127.0.0.1:1")
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "demo-small"


def test_revoked_and_expired_keys_stop_within_seconds(gw: GatewayProcess) -> None:
    key, key_id = new_key(gw, "acme", "red", "app")
    assert chat(gw, bearer(key)).status_code == 200
    out = cli(gw, "keys", "revoke", key_id)
    assert out.returncode == 0 and "revoked" in out.stdout
    started = time.monotonic()
    while chat(gw, bearer(key)).status_code == 200:
        assert time.monotonic() - started < 3, "a revoked key kept working"  # auth_cache_ttl_s is 1 s here
        time.sleep(0.05)
    err = error_of(chat(gw, bearer(key)))
    assert err["code"] == "invalid_api_key" and "revoked" in str(err["message"])

    key, key_id = new_key(gw, "acme", "red", "app", "--expires", "2h")
    assert chat(gw, bearer(key)).status_code == 200
    assert cli(gw, "keys", "expire", key_id).returncode == 0
    started = time.monotonic()
    while chat(gw, bearer(key)).status_code == 200:
        assert time.monotonic() - started < 3, "an expired key kept working"
        time.sleep(0.05)
    assert "expired" in str(error_of(chat(gw, bearer(key)))["message"])
    listed = cli(gw, "keys", "list").stdout
    assert key_id in listed and key not in listed and key[:12] in listed
    assert re.search(rf"{key_id}\s.*expired", listed)


def test_admins_manage_keys_over_http(gw: GatewayProcess) -> None:
    admin = bearer(gw.key or "")
    r = httpx.post(gw.base_url + "/admin/keys", headers=admin,
                   json={"tenant": "web", "team": "front", "role": "app", "rpm": 100, "budget": "2.50"})
    assert r.status_code == 201, r.text
    made = r.json()
    key = made.pop("key")
    assert made["prefix"] == key[:12] and made["rpm"] == 100 and made["budget"] == "2.5000000000"
    assert chat(gw, bearer(key)).status_code == 200
    listed = httpx.get(gw.base_url + "/admin/keys", headers=admin, params={"tenant": "web"}).json()["keys"]
    assert [k["id"] for k in listed] == [made["id"]] and key not in str(listed)
    bad = httpx.post(gw.base_url + "/admin/keys", headers=admin, json={"tenant": "web", "team": "f", "role": "god"})
    assert bad.status_code == 400 and "role" in error_of(bad)["message"]  # type: ignore[operator]
    r = httpx.post(gw.base_url + f"/admin/keys/{made['id']}/revoke", headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert chat(gw, bearer(key)).status_code == 401  # at once on this process
    assert httpx.post(gw.base_url + "/admin/keys/key_nope/revoke", headers=admin).status_code == 404
    r = httpx.put(gw.base_url + "/admin/teams/web/front", headers=admin, json={"rpm": 7, "budget": 1})
    assert r.json() == {"tenant": "web", "team": "front", "rpm": 7, "tpm": None, "budget": "1.0000000000",
                        "budget_period": "month"}
    teams = httpx.get(gw.base_url + "/admin/teams", headers=admin).json()["teams"]
    assert any(t["tenant"] == "web" and t["rpm"] == 7 for t in teams)


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_make_run_prints_its_development_key_and_works_with_it(tmp_path: Path) -> None:
    """No configuration at all, on a terminal (as `make run`): the key is made, printed and accepted."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_PORT"] = str(port)
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(GATEWAY_BIN), "serve"], cwd=tmp_path, env=env, stdout=slave,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.close(slave)
    try:
        banner = _read_until(master, b"Application startup complete", 60).decode(errors="replace")
        found = re.search(r"development key \(role admin, tenant default, team dev\): (sk-gw-\S+)", banner)
        assert found, banner
        key = found.group(1)
        assert (tmp_path / ".gateway" / "dev-key").read_text().strip() == key
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(base + "/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=30)
        assert r.status_code == 200 and r.headers["x-gateway-model"] == "demo-small"
        assert httpx.post(base + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 401
        assert httpx.get(base + "/admin/workers", headers=bearer(key)).status_code == 200  # role admin
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(master)
    # Off a terminal (output captured to a file, like a log), the key is not printed: its file is named.
    gw = start_gateway(tmp_path / "again", dev_key=None)
    try:
        key = (tmp_path / "again" / ".gateway" / "dev-key").read_text().strip()
        assert "development key (role admin, tenant default, team dev) in .gateway/dev-key" in gw.log()
        assert chat(gw, bearer(key)).status_code == 200
    finally:
        gw.stop()
    assert key not in gw.log()


def test_auth_off_lets_everyone_in_as_the_default_tenant(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, {"auth": "off", "recorder_flush_interval_s": 0.05}, dev_key=None)
    try:
        assert chat(gw, {}).status_code == 200
        assert chat(gw, bearer("anything")).status_code == 200
        assert httpx.get(gw.base_url + "/admin/workers").status_code == 200
        assert "auth is off" in gw.log()
        deadline = time.monotonic() + 20
        while not (rows := report(gw, "--group-by", "tenant,team")["rows"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [(r["tenant"], r["team"], r["calls"]) for r in rows] == [("default", None, 2)]
    finally:
        gw.stop()


def test_keys_and_prompts_never_reach_the_logs(tmp_path: Path) -> None:
    """The most verbose log level, every kind of call; then every file the gateway wrote is searched."""
    gw = start_gateway(tmp_path, {"log_level": "debug", "recorder_flush_interval_s": 0.05})
    secret_prompt = "PLANTED-SECRET-PROMPT-7f3a9c do not log me"
    try:
        key, key_id = new_key(gw, "acme", "red", "app", "--rpm", "4")
        finance = new_key(gw, "acme", "money", "finance")[0]
        wrong = key[:-6] + "WRONG1"  # a near miss of the real key
        prompt = [{"role": "user", "content": secret_prompt}]
        assert chat(gw, bearer(key), messages=prompt).status_code == 200
        assert chat(gw, bearer(key), messages=prompt, stream=True).status_code == 200
        assert chat(gw, bearer(wrong), messages=prompt).status_code == 401
        assert chat(gw, {"x-api-key": wrong}, messages=prompt).status_code == 401
        assert chat(gw, bearer(finance), messages=prompt).status_code == 403
        assert chat(gw, bearer(key), messages=prompt, stream_options={"include_usage": True}).status_code == 400
        bad = httpx.post(gw.api + "/chat/completions", headers=bearer(key),
                         content=b'{"model": "demo-small", "messages": "' + secret_prompt.encode() + b'"')
        assert bad.status_code == 400
        statuses = [chat(gw, bearer(key), messages=prompt).status_code for _ in range(3)]
        assert 429 in statuses  # over its rpm
        assert httpx.post(gw.base_url + "/admin/route/explain", headers=bearer(gw.key or ""),
                          json={"messages": prompt}).status_code == 200
        assert cli(gw, "keys", "revoke", key_id).returncode == 0
    finally:
        gw.stop()
    files = [p for p in workdir(gw).rglob("*") if p.is_file()]
    assert any(p.name == "gateway.log" for p in files) and any(p.suffix == ".log" and p.parent.name == "logs"
                                                                for p in files)
    assert "DEBUG" in gw.log()  # debug logging was really on
    for path in files:
        data = path.read_bytes()
        for planted in (key, wrong, finance, secret_prompt, gw.key or "unset"):
            assert planted.encode() not in data, f"{planted[:12]}... found in {path}"
