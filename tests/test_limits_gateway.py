"""Rate limits and budgets through running gateways (`gateway serve`, simulated workers): 429s with
OpenAI's headers and types, team limits shared by their keys, budgets that concurrent calls never
overspend (in one process, and across two processes sharing Redis and PostgreSQL: two gateways, or one
`gateway serve --workers 2`), one rate limit for two processes, revocation reaching both at once, the budget
reports and the soft threshold."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.auth_support import GATEWAY, bearer, cli, new_key
from tests.gateway_process import GatewayProcess, free_ports, start_gateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.pg_support import create_pg_database, drop_pg_database
from tests.services import redis_url

HELLO = [{"role": "user", "content": "Say hello."}]
CHAT = {"model": "demo-small", "messages": HELLO, "max_tokens": 20}
# Budgets are spent on demo-large: it has no fallback, so a call reserves at its own price (a call that may
# fall back reserves at the dearest model it may end on).
PRICEY = {"model": "demo-large", "messages": HELLO, "max_tokens": 20}
SHARED_SECRET = "tests-shared-key-hash-secret"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway, counters in process (no redis_url), as `make run`."""
    gateway = start_gateway(tmp_path_factory.mktemp("limits"), {
        "recorder_flush_interval_s": 0.05, "auth_cache_ttl_s": 1.0, "budget_soft_pct": 50})
    yield gateway
    gateway.stop()


@dataclass
class Pair:
    gateways: tuple[GatewayProcess, GatewayProcess]  # where calls go (one gateway twice: its port)
    metrics: tuple[str, ...]  # the /metrics of each process that serves calls


@pytest.fixture(scope="module", params=["two gateways", "one gateway of 2 processes"])
def pair_of(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two processes sharing Redis and a PostgreSQL database: two gateways (own state directories), or one
    `gateway serve --workers 2` (its processes on one port, metrics on metrics_port and metrics_port + 1)."""
    require_redis()
    url = asyncio.run(create_pg_database())
    prefix = unique_prefix()
    root = tmp_path_factory.mktemp("pair")
    config: dict[str, Any] = {
        "database_url": url, "redis_url": redis_url(), "limits_key_prefix": prefix, "key_hash_secret": SHARED_SECRET,
        "recorder_flush_interval_s": 0.05, "auth_cache_ttl_s": 30.0}
    gateways: list[GatewayProcess] = []
    try:
        migrate = subprocess_run(root, "db", "--database-url", url, "upgrade")
        assert migrate.returncode == 0, migrate.stderr
        if request.param == "two gateways":
            gateways = [start_gateway(root / f"gw{i}", config) for i in range(2)]
            yield Pair((gateways[0], gateways[1]), tuple(g.base_url + "/metrics" for g in gateways))
        else:
            metrics_port = free_ports(2)
            gateways = [start_gateway(root / "gw", {**config, "workers": 2, "metrics_port": metrics_port})]
            yield Pair((gateways[0], gateways[0]),
                       tuple(f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(2)))
    finally:
        for g in gateways:
            g.stop()
        delete_prefix(prefix)
        asyncio.run(drop_pg_database(url))


@pytest.fixture(scope="module")
def pair(pair_of: Pair) -> tuple[GatewayProcess, GatewayProcess]:
    return pair_of.gateways


def subprocess_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([str(GATEWAY), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def chat(gw: GatewayProcess, key: str, **extra: Any) -> httpx.Response:
    return httpx.post(gw.api + "/chat/completions", json={**CHAT, **extra}, headers=bearer(key), timeout=30)


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def budgets(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    """/v1/reports/budgets, by key id (key budgets) or tenant/team (team budgets)."""
    r = httpx.get(gw.base_url + "/v1/reports/budgets", headers=gw.auth)
    assert r.status_code == 200, r.text
    return {b["key_id"] or f"{b['tenant']}/{b['team']}": b for b in r.json()["budgets"]}


def settled(gw: GatewayProcess, ident: str, timeout: float = 20) -> dict[str, Any]:
    """The budget once every call is settled and recorded: nothing reserved, live spend == records."""
    deadline = time.monotonic() + timeout
    while True:
        b = budgets(gw)[ident]
        if (Decimal(b["reserved"] or 0) == 0 and b["live_spent"] == b["recorded"]) or time.monotonic() > deadline:
            return b
        time.sleep(0.1)


def reservation_of(message: str) -> Decimal:
    found = re.search(r"could cost up to ([0-9.]+)", message)
    assert found, message
    return Decimal(found.group(1))


def test_requests_per_minute_429_with_openai_headers(gw: GatewayProcess) -> None:
    key, _ = new_key(gw, "acme", "rpm", "app", "--rpm", "3")
    answers = [chat(gw, key) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in answers)
    assert answers[-1].headers["x-ratelimit-reset-requests"].endswith("s")
    refused = chat(gw, key)
    assert refused.status_code == 429
    err = error_of(refused)
    assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")
    assert 15 <= int(refused.headers["retry-after"]) <= 20  # one request back every 20 s
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as info:
        openai.OpenAI(base_url=gw.api, api_key=key, max_retries=0).chat.completions.create(
            model="demo-small", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    assert info.value.code == "rate_limit_exceeded"
    # Streams carry the headers too; a key without limits gets none.
    other, _ = new_key(gw, "acme", "rpm", "app", "--rpm", "100")
    assert chat(gw, other, stream=True).headers["x-ratelimit-limit-requests"] == "100"
    plain, _ = new_key(gw, "acme", "free", "app")
    assert not any(h.startswith("x-ratelimit") for h in chat(gw, plain).headers)


def test_tokens_per_minute_count_the_estimate_and_settle(gw: GatewayProcess) -> None:
    key, _ = new_key(gw, "acme", "tpm", "app", "--tpm", "300")
    first = chat(gw, key, max_tokens=150)
    assert first.status_code == 200
    estimate = 300 - int(first.headers["x-ratelimit-remaining-tokens"])
    assert estimate >= 150  # max_tokens and the prompt estimate
    refused = chat(gw, key, max_tokens=150)
    assert refused.status_code == 429 and error_of(refused)["type"] == "tokens"
    assert "TPM" in error_of(refused)["message"] and int(refused.headers["retry-after"]) >= 1
    too_big = chat(gw, key, max_tokens=400)  # more than a whole minute's tokens: never
    assert too_big.status_code == 429 and too_big.headers["x-should-retry"] == "false"


def test_a_team_limit_is_shared_by_its_keys(gw: GatewayProcess) -> None:
    out = cli(gw, "keys", "team", "--tenant", "acme", "--team", "shared", "--rpm", "4")
    assert out.returncode == 0, out.stderr
    a, _ = new_key(gw, "acme", "shared", "app")
    b, _ = new_key(gw, "acme", "shared", "app", "--rpm", "100")
    elsewhere, _ = new_key(gw, "other-tenant", "shared", "app")  # another tenant's team of the same name
    statuses = [chat(gw, k).status_code for k in (a, b, a, b, a, b)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert all(chat(gw, elsewhere).status_code == 200 for _ in range(5))
    teams = cli(gw, "keys", "teams").stdout
    assert re.search(r"acme\s+shared\s+4 rpm", teams)


def test_over_budget_is_429_insufficient_quota_and_reported(gw: GatewayProcess) -> None:
    key, key_id = new_key(gw, "acme", "budget", "app", "--budget", "0.0004")
    statuses = []
    for _ in range(40):
        r = chat(gw, key, **PRICEY)
        statuses.append(r.status_code)
        if r.status_code != 200:
            break
    assert statuses[-1] == 429 and statuses.count(200) >= 3
    err = error_of(r)
    assert (err["type"], err["code"]) == ("insufficient_quota", "insufficient_quota")
    assert r.headers["x-should-retry"] == "false"  # the SDKs do not retry it
    with pytest.raises(openai.RateLimitError) as info:
        openai.OpenAI(base_url=gw.api, api_key=key).chat.completions.create(  # default retries: none happen
            model="demo-large", messages=HELLO, max_tokens=20)  # type: ignore[arg-type]
    assert info.value.code == "insufficient_quota"
    b = settled(gw, key_id)
    assert Decimal(b["spent"]) <= Decimal("0.0004") < Decimal(b["spent"]) + reservation_of(err["message"])
    assert b["live_spent"] == b["recorded"]  # settled exactly to the recorded costs
    assert b["state"] == "soft" and b["period"] == "month"  # past its soft threshold (50 % here)
    table = cli(gw, "report", "--budgets").stdout
    assert re.search(rf"key\s+acme\s+budget\s+{key_id}\s+month", table)
    assert "soft threshold 50%" in gw.log() and f"key {key_id} has spent" in gw.log()


async def _burst(targets: list[GatewayProcess], key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60, headers=bearer(key),
                                 limits=httpx.Limits(max_connections=200)) as client:
        calls = [client.post(targets[i % len(targets)].api + "/chat/completions", json=PRICEY) for i in range(n)]
        return [r.status_code for r in await asyncio.gather(*calls)]


def _race(targets: list[GatewayProcess], key: str, key_id: str, budget: Decimal) -> None:
    """Many parallel calls against a small budget: some answered, the rest 429, never a cent over."""
    statuses = asyncio.run(_burst(targets, key, 60))
    assert set(statuses) == {200, 429}, statuses
    assert 3 <= statuses.count(200) < 60
    b = settled(targets[0], key_id)
    assert Decimal(b["recorded"]) <= budget and b["live_spent"] == b["recorded"]
    # Sequential calls use up what the burst's reservations left; the budget ends within one reservation.
    last = None
    for i in range(100):
        last = chat(targets[i % len(targets)], key, **PRICEY)
        if last.status_code != 200:
            break
    assert last is not None and last.status_code == 429
    b = settled(targets[0], key_id)
    spent = Decimal(b["recorded"])
    assert spent <= budget < spent + reservation_of(error_of(last)["message"])
    assert b["live_spent"] == b["recorded"]


def test_parallel_calls_never_overspend_a_budget_in_one_process(gw: GatewayProcess) -> None:
    budget = Decimal("0.0008")
    key, key_id = new_key(gw, "acme", "race", "app", "--budget", str(budget))
    _race([gw], key, key_id, budget)


def test_parallel_calls_on_two_processes_never_overspend_one_budget(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    budget = Decimal("0.0008")
    key, key_id = new_key(pair[0], "acme", "race", "app", "--budget", str(budget))
    _race(list(pair), key, key_id, budget)
    assert budgets(pair[1])[key_id] == budgets(pair[0])[key_id]  # one budget, seen alike from both


def test_two_processes_enforce_one_rate_limit(pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    key, _ = new_key(pair[0], "acme", "shared-rpm", "app", "--rpm", "6")
    statuses = [chat(pair[i % 2], key).status_code for i in range(10)]
    assert statuses == [200] * 6 + [429] * 4
    # A team budget and rate limit set once apply on both processes (team limits are read with the key).
    assert cli(pair[0], "keys", "team", "--tenant", "acme", "--team", "t2", "--rpm", "2").returncode == 0
    key2, _ = new_key(pair[1], "acme", "t2", "app")
    assert [chat(pair[i % 2], key2).status_code for i in range(3)] == [200, 200, 429]


def test_a_revocation_reaches_both_processes_at_once(pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    key, key_id = new_key(pair[1], "acme", "red", "app")
    assert all(chat(g, key).status_code == 200 for g in pair)  # cached by both, for 30 s
    assert cli(pair[0], "keys", "revoke", key_id).returncode == 0  # publishes the revocation in Redis
    started = time.monotonic()
    for g in pair:
        while chat(g, key).status_code == 200:
            assert time.monotonic() - started < 2, "the revocation did not reach every gateway"
            time.sleep(0.02)


def test_each_process_served_calls(pair_of: Pair) -> None:
    """The tests above ran on both processes: each counted calls of its own (one gateway of 2 processes: the
    kernel gave the burst's connections to both)."""
    for url in pair_of.metrics:
        text = httpx.get(url, timeout=10).text
        served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("gateway_requests_total{"))
        assert served >= 5, (url, served)
