"""Accounting through the running gateway (`gateway serve`, simulated workers): calls -> records ->
`gateway report` and `GET /v1/reports/usage`; a cancelled stream; a crash (kill -9) with records in the
spool; refusing to start on an unmigrated database; each record's operation, and the report by operation."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.accounting.money import ZERO
from gateway.accounting.prices import DEFAULT_PRICES_FILE, load_prices
from tests.gateway_process import GatewayProcess, start_gateway
from tests.services import libpq_dsn
from workers.launcher import free_port

GATEWAY = Path(sys.executable).parent / "gateway"
HELLO = [{"role": "user", "content": "Say hello to the accountants."}]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([str(GATEWAY), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def report_json(cwd: Path, *args: str) -> dict[str, Any]:
    out = cli("report", "--format", "json", *args, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for_calls(cwd: Path, n: int, *args: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        report = report_json(cwd, "--group-by", "model", *args)
        calls = sum(t["calls"] + t["refused"] for t in report["totals"])  # refused calls are counted apart
        if calls >= n or time.monotonic() > deadline:
            assert calls == n, report
            return report
        time.sleep(0.2)


@pytest.fixture(scope="module")
def accounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway on its embedded defaults (SQLite in <workdir>/.gateway/gateway.db), as `make run` runs it."""
    gw = start_gateway(tmp_path_factory.mktemp("accounted"), {"recorder_flush_interval_s": 0.05})
    yield gw
    gw.stop()


def test_calls_appear_in_the_report_with_the_workers_usage_and_the_catalogues_prices(
    accounted: GatewayProcess,
) -> None:
    workdir = Path(accounted.log_path).parent
    client = httpx.Client(base_url=accounted.api, timeout=30, headers=accounted.auth)
    usages: list[tuple[str, dict[str, int]]] = []
    for model, max_tokens in (("demo-small", 5), ("demo-small", 9), ("demo-large", 7)):
        body = client.post("/chat/completions", json={"model": model, "messages": HELLO,
                                                     "max_tokens": max_tokens}).json()
        usages.append((model, body["usage"]))
    # by alias: the report shows the model that served the call, not the name the client used
    body = client.post("/completions", json={"model": "fast", "prompt": "Once upon a time", "max_tokens": 4}).json()
    usages.append(("demo-small", body["usage"]))
    with client.stream("POST", "/chat/completions", json={
        "model": "demo-large", "messages": HELLO, "max_tokens": 6, "stream": True,
        "stream_options": {"include_usage": True},
    }) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: {")]
    usages.append(("demo-large", json.loads(events[-1][6:])["usage"]))
    assert client.post("/chat/completions", json={"model": "nope", "messages": HELLO}).status_code == 404

    report = wait_for_calls(workdir, len(usages) + 1)
    prices = load_prices(DEFAULT_PRICES_FILE)
    now = time.time()
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"demo-small", "demo-large", None}  # None: the rejected call, never routed
    assert (rows[None]["calls"], rows[None]["refused"], rows[None]["errors"]) == (0, 1, 0)  # refused, apart
    assert Decimal(rows[None]["cost"]) == 0
    for model in ("demo-small", "demo-large"):
        mine = [u for m, u in usages if m == model]
        price = prices.price_at(model, now)
        reference = prices.price_at("demo-large", now)
        assert price is not None and reference is not None
        row = rows[model]
        assert row["calls"] == len(mine) and row["errors"] == 0
        assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in mine)
        assert row["completion_tokens"] == sum(u["completion_tokens"] for u in mine)
        cost = sum((price.cost(u["prompt_tokens"], 0, u["completion_tokens"]) for u in mine), ZERO)
        ref = sum((reference.cost(u["prompt_tokens"], 0, u["completion_tokens"]) for u in mine), ZERO)
        assert Decimal(row["cost"]) == cost > 0
        assert Decimal(row["reference_cost"]) == ref
        assert Decimal(row["routing_savings"]) == ref - cost
    assert Decimal(rows["demo-small"]["routing_savings"]) > 0  # the small model is cheaper than the reference

    # The API, the CLI and the raw records agree (to the last digit, so to the cent).
    api = httpx.get(accounted.base_url + "/v1/reports/usage", params={"group_by": "model"},
                    headers=accounted.auth).json()
    assert api == report
    csv_text = httpx.get(accounted.base_url + "/v1/reports/usage",
                         params={"group_by": "model", "format": "csv"}, headers=accounted.auth).text
    assert csv_text == cli("report", "--group-by", "model", "--format", "csv", cwd=workdir).stdout
    with sqlite3.connect(workdir / ".gateway" / "gateway.db") as conn:
        n, cost_units = conn.execute("SELECT count(*), sum(cost) FROM usage_records").fetchone()
    assert n == len(usages) + 1
    assert Decimal(cost_units).scaleb(-10) == sum((Decimal(t["cost"]) for t in report["totals"]), ZERO)
    today = datetime.now(UTC).date().isoformat()
    by_day = report_json(workdir, "--group-by", "day,team", "--from", today, "--to", today)
    assert by_day["rows"][0]["day"] == today and by_day["rows"][0]["team"] == "dev"  # the development key's team
    assert by_day["totals"] == report["totals"]
    verify = cli("report", "--verify", cwd=workdir)
    assert verify.returncode == 0 and "rollups match the records" in verify.stdout
    table = cli("report", cwd=workdir).stdout
    assert "demo-small" in table and "TOTAL" in table


def test_a_cancelled_stream_is_recorded_with_the_tokens_relayed(accounted: GatewayProcess) -> None:
    workdir = Path(accounted.log_path).parent
    rid = "cancel-me-1"
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", accounted.api + "/chat/completions", headers={**accounted.auth, "x-request-id": rid},
        json={"model": "demo-large", "messages": HELLO, "max_tokens": 400, "stream": True},
    ) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen >= 6:
                break  # leave mid-stream
    db_path = workdir / ".gateway" / "gateway.db"
    row = None
    for _ in range(100):
        with sqlite3.connect(db_path) as conn:
            row = conn.execute(
                "SELECT status, usage_source, prompt_tokens, completion_tokens, cost, request_id "
                "FROM usage_records WHERE client_request_id = ?", (rid,)).fetchone()
        if row:
            break
        time.sleep(0.1)
    assert row is not None
    status, source, prompt, completion, cost, request_id = row
    assert (status, source) == ("client_cancelled", "estimate")
    assert 5 <= completion < 400  # what was relayed (the role chunk does not count), not max_tokens
    assert prompt > 5 and cost > 0
    assert request_id != rid  # a client-chosen id is kept beside the gateway's own


def test_the_reports_api_refuses_bad_queries(accounted: GatewayProcess) -> None:
    r = httpx.get(accounted.base_url + "/v1/reports/usage", params={"group_by": "colour"}, headers=accounted.auth)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "group_by" and "tenant, team, key" in r.json()["error"]["message"]
    r = httpx.get(accounted.base_url + "/v1/reports/usage", params={"from": "yesterday"}, headers=accounted.auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "from"
    r = httpx.get(accounted.base_url + "/v1/reports/usage", params={"format": "xml"}, headers=accounted.auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "format"
    empty = httpx.get(accounted.base_url + "/v1/reports/usage", params={"from": "2001-01-01", "to": "2001-01-31"},
                      headers=accounted.auth)
    assert empty.json()["rows"] == [] and empty.json()["totals"] == []


def test_report_cli_errors_say_what_to_do(tmp_path: Path) -> None:
    missing = cli("report", cwd=tmp_path)
    assert missing.returncode == 2 and "no accounting database" in missing.stderr
    bad = cli("report", "--group-by", "model,colour", cwd=tmp_path)
    assert bad.returncode == 2 and "cannot group by colour" in bad.stderr


def _spooled(workdir: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (workdir / ".gateway" / "spool").glob("*.jsonl"))


def test_records_spooled_by_a_killed_gateway_are_written_once_after_restart(
    pg_database: str, tmp_path: Path,
) -> None:
    assert cli("db", "--database-url", pg_database, "upgrade", cwd=tmp_path).returncode == 0
    dead_url = pg_database.replace(":5432/", f":{free_port()}/")  # nothing listens there
    config = {"database_url": dead_url, "recorder_flush_interval_s": 0.05, "recorder_retry_interval_s": 0.2}
    gw = start_gateway(tmp_path, config)
    n = 12
    try:
        for i in range(n):
            body = {"model": "demo-small", "messages": HELLO, "max_tokens": 3, "stream": i % 2 == 0}
            assert httpx.post(gw.api + "/chat/completions", json=body, timeout=30, headers=gw.auth).status_code == 200
        for _ in range(100):
            if _spooled(tmp_path) >= n:
                break
            time.sleep(0.1)
        assert _spooled(tmp_path) == n
        assert "unavailable" in gw.log() or "unreachable" in gw.log()
    finally:
        gw.process.kill()  # kill -9: no shutdown, no flush
        gw.process.wait()

    gw = start_gateway(tmp_path, {**config, "database_url": pg_database})
    try:
        report = wait_for_calls(tmp_path, n, "--database-url", pg_database)
        assert report["rows"][0]["model"] == "demo-small"
        assert report["rows"][0]["completion_tokens"] == 3 * n
        for _ in range(50):  # the spool file is removed once it is all in
            if not list((tmp_path / ".gateway" / "spool").glob("*.jsonl")):
                break
            time.sleep(0.1)
        assert list((tmp_path / ".gateway" / "spool").glob("*.jsonl")) == []
    finally:
        gw.stop()
    # Once, even after another restart that finds nothing to replay.
    report = report_json(tmp_path, "--database-url", pg_database)
    assert sum(t["calls"] for t in report["totals"]) == n
    verify = cli("report", "--verify", "--database-url", pg_database, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout


def test_the_gateway_refuses_an_unmigrated_database(pg_database: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as err:
        start_gateway(tmp_path, {"database_url": pg_database}, ready=False)
    assert "gateway: error: the accounting database " in str(err.value)
    assert " is not migrated (run `gateway db upgrade`)" in str(err.value)


async def _operations(database: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(libpq_dsn(database))
    try:
        return [(r["operation"], r["completion_tokens"])
                for r in await conn.fetch("SELECT operation, completion_tokens FROM usage_records")]
    finally:
        await conn.close()


def test_records_say_which_api_each_call_used_and_the_report_groups_by_it(pg_database: str,
                                                                           tmp_path: Path) -> None:
    assert cli("db", "--database-url", pg_database, "upgrade", cwd=tmp_path).returncode == 0
    gw = start_gateway(tmp_path, {"database_url": pg_database, "recorder_flush_interval_s": 0.05})
    try:
        calls = {"/chat/completions": {"model": "demo-small", "messages": HELLO, "max_tokens": 3},
                 "/completions": {"model": "demo-small", "prompt": "Once upon a time", "max_tokens": 3}}
        for path, body in calls.items():
            assert httpx.post(gw.api + path, json=body, headers=gw.auth, timeout=30).status_code == 200
        tokenize = httpx.post(gw.base_url + "/tokenize", json={"model": "demo-small", "prompt": "Hi there"},
                              headers=gw.auth, timeout=30)
        assert tokenize.status_code == 200, tokenize.text
        wait_for_calls(tmp_path, 3, "--database-url", pg_database)
        rows = asyncio.run(_operations(pg_database))
        assert sorted(rows) == [("chat", 3), ("text_completion", 3), ("tokenize", 0)]
        report = httpx.get(gw.base_url + "/v1/reports/usage", params={"group_by": "operation"},
                           headers=gw.auth).json()
        assert [(r["operation"], r["calls"], r["completion_tokens"]) for r in report["rows"]] == [
            ("chat", 1, 3), ("text_completion", 1, 3), ("tokenize", 1, 0)]
    finally:
        gw.stop()
    verify = cli("report", "--verify", "--database-url", pg_database, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout
