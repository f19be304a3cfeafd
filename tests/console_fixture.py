"""The gateway the console's browser tests drive (no tests here): a real `gateway serve` process on PostgreSQL
and Redis with auth on and its simulated worker pools, a key of each kind, and traffic of two tenants sent
through the real endpoints so the reports have numbers (calls, a cache hit, a refused call)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.auth_support import GATEWAY, bearer, cli, new_key
from tests.gateway_process import GatewayProcess, start_gateway
from tests.services import redis_url

HELLO = [{"role": "user", "content": "Say hello to the accountants."}]


@dataclass(frozen=True)
class Key:
    secret: str
    id: str


@dataclass(frozen=True)
class Keys:
    platform_admin: Key  # admin, scope all
    platform_finance: Key  # finance, scope all
    acme_admin: Key  # admin of tenant acme
    acme_finance: Key  # finance of tenant acme
    acme_app: Key
    globex_app: Key


def gateway_config(database_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"database_url": database_url, "redis_url": redis_url(), "recorder_flush_interval_s": 0.05,
            "auth_cache_ttl_s": 1.0, "limits_key_prefix": redis_prefix + "limits:",
            "cache_key_prefix": redis_prefix + "cache:", "feedback_key_prefix": redis_prefix + "feedback:",
            "responses_key_prefix": redis_prefix + "responses:"}


def start(workdir: Path, database_url: str, redis_prefix: str) -> GatewayProcess:
    migrate = cli_in(workdir, "db", "--database-url", database_url, "upgrade")
    assert migrate.returncode == 0, migrate.stderr
    return start_gateway(workdir, gateway_config(database_url, redis_prefix))


def cli_in(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS` in `workdir`, before a gateway runs there."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([str(GATEWAY), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def make_keys(gw: GatewayProcess) -> Keys:
    """A key of each kind; budgets on acme's team `red` (its app key's: small, so that the seeded traffic spends
    a good share of it and the Budgets page forecasts the day it runs out) and on globex's app key."""
    def key(tenant: str, team: str, role: str, scope: str, name: str, *extra: str) -> Key:
        secret, key_id = new_key(gw, tenant, team, role, "--scope", scope, "--name", name, *extra)
        return Key(secret, key_id)

    team_budget = cli(gw, "keys", "team", "--tenant", "acme", "--team", "red", "--budget", "0.00015",
                      "--budget-period", "month")
    assert team_budget.returncode == 0, team_budget.stderr
    return Keys(
        platform_admin=key("ops", "platform", "admin", "all", "platform admin"),
        platform_finance=key("ops", "finance", "finance", "all", "platform finance"),
        acme_admin=key("acme", "it", "admin", "tenant", "acme admin"),
        acme_finance=key("acme", "finance", "finance", "tenant", "acme finance"),
        acme_app=key("acme", "red", "app", "tenant", "acme app"),
        globex_app=key("globex", "blue", "app", "tenant", "globex app", "--budget", "0.01"),
    )


def chat(gw: GatewayProcess, key: Key, **body: Any) -> httpx.Response:
    return httpx.post(gw.api + "/chat/completions", json={"messages": HELLO, "max_tokens": 8, **body},
                      headers=bearer(key.secret), timeout=30)


def seed_traffic(gw: GatewayProcess, keys: Keys) -> int:
    """Calls of both tenants through the real endpoint; the number of records they make."""
    calls: list[tuple[Key, dict[str, Any]]] = [
        (keys.acme_app, {"model": "demo-small"}), (keys.acme_app, {"model": "demo-large", "max_tokens": 12}),
        (keys.acme_app, {"model": "auto"}), (keys.globex_app, {"model": "demo-large"}),
        (keys.globex_app, {"model": "demo-small", "max_tokens": 5})]
    for key, body in calls:
        r = chat(gw, key, **body)
        assert r.status_code == 200, r.text
    deterministic = {"model": "demo-small", "temperature": 0, "messages": [
        {"role": "user", "content": "What is 7 + 5?"}]}
    assert chat(gw, keys.acme_app, **deterministic).headers["x-gateway-cache"] == "miss"
    assert chat(gw, keys.acme_app, **deterministic).headers["x-gateway-cache"] == "hit"
    refused = chat(gw, keys.acme_app, model="demo-small", messages="not a list")  # refused before a worker
    assert refused.status_code == 400, refused.text
    return len(calls) + 3


def wait_for_records(gw: GatewayProcess, admin: Key, n: int, timeout_s: float = 30) -> None:
    """Until the reports count `n` calls (billable and refused) over every tenant."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = httpx.get(gw.base_url + "/v1/reports/usage", params={"group_by": "tenant"},
                         headers=bearer(admin.secret), timeout=30).json()
        seen = sum(t["calls"] + t["refused"] for t in body["totals"])
        if seen >= n or time.monotonic() > deadline:
            assert seen == n, body
            return
        time.sleep(0.2)

