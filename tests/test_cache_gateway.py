"""The response cache through the running gateway (`gateway serve`, simulated workers), on both
backends: the embedded in-process cache and Redis (real, 127.0.0.1:6379, keys under a prefix unique to
the run, deleted afterwards). Miss then hit with the same content, JSON and streams both ways; the
request header; accounting of hits; single flight within and across gateway processes (counted by the
simulators' own `sim_requests_received_total`); and Redis down."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis as sync_redis

from tests.cache_support import delete_prefix, require_redis, unique_prefix
from tests.gateway_process import GATEWAY_BIN, GatewayProcess, start_gateway
from tests.services import redis_url
from workers.launcher import free_port

POOLS = [  # the embedded default's two simulated pools, and one the catalogue does not list (direct calls)
    {"name": "small", "model": "demo-small", "launch": {"args": ["--ttft-ms", "20", "--output-token-ms", "5"]}},
    {"name": "large", "model": "demo-large",
     "launch": {"args": ["--ttft-ms", "60", "--output-token-ms", "15", "--max-model-len", "8192"]}},
    {"name": "direct", "model": "m-direct", "launch": {"replicas": 1}},
]


@pytest.fixture(scope="module")
def redis_sync() -> Iterator[sync_redis.Redis]:
    client = require_redis()
    yield client
    client.close()


@pytest.fixture(scope="module")
def redis_prefix(redis_sync: sync_redis.Redis) -> Iterator[str]:
    prefix = unique_prefix("gateway")
    yield prefix
    delete_prefix(redis_sync, prefix)


@pytest.fixture(scope="module")
def memory_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("cache-memory"),
                       {"recorder_flush_interval_s": 0.05, "pools": POOLS})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def redis_gw(tmp_path_factory: pytest.TempPathFactory, redis_prefix: str) -> Iterator[GatewayProcess]:
    config = {"recorder_flush_interval_s": 0.05, "pools": POOLS, "redis_url": redis_url(),
              "cache_key_prefix": redis_prefix}
    gw = start_gateway(tmp_path_factory.mktemp("cache-redis"), config)
    yield gw
    gw.stop()


@pytest.fixture(params=["memory", "redis"])
def gw(request: pytest.FixtureRequest) -> GatewayProcess:
    fixture: GatewayProcess = request.getfixturevalue(f"{request.param}_gw")
    return fixture


def sdk(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api, api_key=gw.key, max_retries=0)  # the development key: tenant default


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Say hello to visitor {uuid.uuid4().hex[:8]}."}]


def chat_json(gw: GatewayProcess, messages: list[dict[str, str]], model: str = "auto",
              **extra: Any) -> tuple[str, Any]:
    raw = sdk(gw).chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=8,
                                                            temperature=0, **extra)
    return raw.headers["x-gateway-cache"], raw.parse()


def chat_stream(gw: GatewayProcess, messages: list[dict[str, str]], include_usage: bool = False,
                model: str = "auto", **extra: Any) -> tuple[str, list[Any]]:
    raw = sdk(gw).chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True} if include_usage else openai.NOT_GIVEN, **extra)
    return raw.headers["x-gateway-cache"], list(raw.parse())


def streamed(chunks: list[Any]) -> tuple[str, str | None]:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish[-1] if finish else None


def test_json_then_json_is_a_hit_with_the_same_body(gw: GatewayProcess) -> None:
    body = {"model": "demo-small", "messages": question(), "max_tokens": 8, "temperature": 0}
    first = httpx.post(gw.api + "/chat/completions", json=body, timeout=30, headers=gw.auth)
    # the same request, other key order and spacing, other client-side options
    again = json.dumps({"user": "bob", "temperature": 0.0, "max_tokens": 8, "messages": body["messages"],
                        "model": "demo-small"}, indent=2)
    second = httpx.post(gw.api + "/chat/completions", content=again, timeout=30,
                        headers={"content-type": "application/json", **gw.auth})
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert second.content == first.content
    assert second.headers["x-gateway-model"] == first.headers["x-gateway-model"] == "demo-small"
    assert second.headers["x-gateway-route"] == first.headers["x-gateway-route"] == "honour-requested"
    assert second.headers["x-request-id"] != first.headers["x-request-id"]


def test_stream_then_json_and_stream(gw: GatewayProcess) -> None:
    messages = question()
    status, chunks = chat_stream(gw, messages, include_usage=True)
    assert status == "miss"
    text, finish = streamed(chunks)
    assert text and finish == "length"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8
    status, completion = chat_json(gw, messages)
    assert status == "hit"
    assert completion.choices[0].message.content == text and completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 8 and completion.usage.prompt_tokens == usage.prompt_tokens
    assert completion.id == chunks[0].id
    status, again = chat_stream(gw, messages)  # no usage chunk unless asked
    assert status == "hit" and streamed(again) == (text, "length")
    assert all(c.usage is None for c in again)
    status, with_usage = chat_stream(gw, messages, include_usage=True)
    assert status == "hit" and with_usage[-1].choices == [] and with_usage[-1].usage == usage


def test_json_then_stream(gw: GatewayProcess) -> None:
    messages = question()
    status, completion = chat_json(gw, messages)
    assert status == "miss"
    status, chunks = chat_stream(gw, messages, include_usage=True)
    assert status == "hit"
    assert streamed(chunks) == (completion.choices[0].message.content, completion.choices[0].finish_reason)
    assert chunks[-1].usage.total_tokens == completion.usage.total_tokens
    raw = httpx.post(gw.api + "/chat/completions", timeout=30, headers=gw.auth, json={
        "model": "auto", "messages": messages, "max_tokens": 8, "temperature": 0, "stream": True})
    assert raw.headers["content-type"] == "text/event-stream; charset=utf-8"  # as vLLM sends it
    assert raw.text.startswith("data: {") and raw.text.endswith("data: [DONE]\n\n")


def test_completions_both_ways(gw: GatewayProcess) -> None:
    prompt = f"Once upon a time {uuid.uuid4().hex[:8]}"
    client = sdk(gw)
    raw = client.completions.with_raw_response.create(model="auto", prompt=prompt, max_tokens=5, seed=1, stream=True)
    assert raw.headers["x-gateway-cache"] == "miss"
    text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
    raw = client.completions.with_raw_response.create(model="auto", prompt=prompt, max_tokens=5, seed=1)
    assert raw.headers["x-gateway-cache"] == "hit" and raw.parse().choices[0].text == text
    raw = client.completions.with_raw_response.create(model="auto", prompt=prompt, max_tokens=5, seed=2)
    assert raw.headers["x-gateway-cache"] == "miss"  # another seed, another answer


def test_what_is_not_cached_says_bypass(gw: GatewayProcess) -> None:
    messages = question()
    raw = sdk(gw).chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=4)
    assert raw.headers["x-gateway-cache"] == "bypass"  # temperature 1 and no seed: not deterministic
    for _ in range(2):  # a model no catalogue lists (rule `direct`): never cached
        raw = sdk(gw).chat.completions.with_raw_response.create(model="m-direct", messages=messages, max_tokens=4,
                                                                temperature=0)
        assert raw.headers["x-gateway-cache"] == "bypass" and raw.headers["x-gateway-route"] == "direct"
    for _ in range(2):
        status, _ = chat_json(gw, messages, extra_headers={"x-gateway-cache": "no-store"})
        assert status == "bypass"
    assert chat_json(gw, messages)[0] == "miss"  # no-store stored nothing


def test_refresh_goes_to_the_worker_and_stores_anew(gw: GatewayProcess) -> None:
    messages = question()
    assert chat_json(gw, messages)[0] == "miss"
    assert chat_json(gw, messages)[0] == "hit"
    assert chat_json(gw, messages, extra_headers={"x-gateway-cache": "refresh"})[0] == "miss"
    assert chat_json(gw, messages)[0] == "hit"


def test_a_bad_cache_header_is_400(gw: GatewayProcess) -> None:
    r = httpx.post(gw.api + "/chat/completions", headers={"x-gateway-cache": "forever", **gw.auth}, timeout=30,
                   json={"model": "auto", "messages": question(), "temperature": 0})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "x-gateway-cache"
    assert r.json()["error"]["code"] == "invalid_cache_directive"


def test_a_stream_the_client_left_is_not_cached(gw: GatewayProcess) -> None:
    body = {"model": "auto", "messages": question(), "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30, headers=gw.auth) as client, \
            client.stream("POST", gw.api + "/chat/completions", json=body) as r:
        assert r.headers["x-gateway-cache"] == "miss"
        for n, _ in enumerate(r.iter_lines()):
            if n > 6:
                break
    time.sleep(0.3)
    again = httpx.post(gw.api + "/chat/completions", json={**body, "stream": False}, timeout=30, headers=gw.auth)
    assert again.headers["x-gateway-cache"] == "miss"


def db_rows(gw: GatewayProcess, rids: list[str]) -> list[dict[str, Any]]:
    db = Path(gw.log_path).parent / ".gateway" / "gateway.db"
    deadline = time.monotonic() + 20
    while True:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute(
                f"SELECT * FROM usage_records WHERE client_request_id IN ({','.join('?' * len(rids))})", rids)]
        if len(rows) == len(rids) or time.monotonic() > deadline:
            assert len(rows) == len(rids)
            return sorted(rows, key=lambda r: rids.index(r["client_request_id"]))
        time.sleep(0.1)


def test_a_hit_is_recorded_with_its_tokens_no_cost_and_the_cost_it_saved(gw: GatewayProcess) -> None:
    messages = question()
    rids = [f"cache-acct-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    small = "demo-small"
    assert chat_json(gw, messages, model=small, extra_headers={"x-request-id": rids[0]})[0] == "miss"
    assert chat_json(gw, messages, model=small, extra_headers={"x-request-id": rids[1]})[0] == "hit"
    assert chat_stream(gw, messages, model=small, extra_headers={"x-request-id": rids[2]})[0] == "hit"
    miss, *hits = db_rows(gw, rids)
    assert miss["cache_hit"] == 0 and miss["cost"] > 0 and miss["cache_saving"] == 0 and miss["replica"]
    for hit in hits:
        assert hit["cache_hit"] == 1 and hit["status"] == "ok" and hit["usage_source"] == "worker"
        assert (hit["prompt_tokens"], hit["completion_tokens"]) == (miss["prompt_tokens"], miss["completion_tokens"])
        assert hit["cost"] == 0 and hit["cache_saving"] == miss["cost"]  # SQLite: integer units of 1e-10
        assert hit["routed_model"] == "demo-small" and hit["replica"] is None
        assert hit["price_version"] == miss["price_version"]
    # and the report (API and CLI share the query) counts them
    report = httpx.get(gw.base_url + "/v1/reports/usage", params={"group_by": "model"}, headers=gw.auth).json()
    row = next(r for r in report["rows"] if r["model"] == "demo-small")
    assert row["cache_hits"] >= 2 and Decimal(row["cache_savings"]) >= 2 * Decimal(miss["cost"]).scaleb(-10)


# --- tenants -----------------------------------------------------------------------------------------


def create_key(gw: GatewayProcess, tenant: str) -> str:
    """An app key of `tenant`, made as an operator makes one (`gateway keys create`, the gateway's database)."""
    workdir = Path(gw.log_path).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out = subprocess.run([str(GATEWAY_BIN), "keys", "create", "--config", str(workdir / "gateway.yaml"),
                          "--tenant", tenant, "--team", "apps", "--role", "app"],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_tenants_never_see_each_others_entries(gw: GatewayProcess, redis_sync: sync_redis.Redis,
                                               redis_prefix: str) -> None:
    acme, globex = create_key(gw, "acme"), create_key(gw, "globex")
    messages = question()

    def call(key: str) -> tuple[str, str | None]:
        raw = openai.OpenAI(base_url=gw.api, api_key=key, max_retries=0).chat.completions.with_raw_response.create(
            model="auto", messages=messages, max_tokens=8, temperature=0)
        return raw.headers["x-gateway-cache"], raw.parse().choices[0].message.content

    first = call(acme)
    assert first[0] == "miss" and call(acme) == ("hit", first[1])
    assert call(globex)[0] == "miss"  # the same request, another tenant: its own entry
    assert call(globex)[0] == "hit"
    assert gw.key and call(gw.key)[0] == "miss"  # the development key: tenant `default`
    if "redis_url" in (Path(gw.log_path).parent / "gateway.yaml").read_text():
        for tenant in ("acme", "globex", "default"):
            assert list(redis_sync.scan_iter(match=f"{redis_prefix}t={tenant}:*"))


# --- single flight -----------------------------------------------------------------------------------


def replicas(gw: GatewayProcess) -> list[str]:
    pools = httpx.get(gw.base_url + "/readyz").json()["pools"]
    return [r["url"] for p in pools.values() for r in p["replicas"]]


def received(urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith("sim_requests_received_total"):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def identical_calls(targets: list[GatewayProcess], n: int, messages: list[dict[str, str]]) -> list[str]:
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(i: int) -> str:
            gw = targets[i % len(targets)]
            r = await client.post(gw.api + "/chat/completions", headers=gw.auth, json={
                "model": "auto", "messages": messages, "max_tokens": 40, "temperature": 0, "stream": i % 3 == 0})
            assert r.status_code == 200 and r.content
            return r.headers["x-gateway-cache"]

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_concurrent_identical_misses_go_to_a_worker_once(gw: GatewayProcess) -> None:
    urls = replicas(gw)
    before = received(urls)
    statuses = await identical_calls([gw], 12, question())
    assert received(urls) - before == 1
    assert sorted(statuses) == ["hit"] * 11 + ["miss"]


@pytest.fixture(scope="module")
def second_redis_gw(tmp_path_factory: pytest.TempPathFactory, redis_gw: GatewayProcess,
                    redis_prefix: str) -> Iterator[GatewayProcess]:
    """Another gateway process sharing the first one's Redis and workers (as replicas behind a load
    balancer do)."""
    pools = httpx.get(redis_gw.base_url + "/readyz").json()["pools"]
    config = {"pools": [{"name": name, "model": p["model"], "replicas": [r["url"] for r in p["replicas"]]}
                        for name, p in pools.items()],
              "redis_url": redis_url(), "cache_key_prefix": redis_prefix}
    gw = start_gateway(tmp_path_factory.mktemp("cache-redis-2"), config)
    yield gw
    gw.stop()


async def test_single_flight_across_gateway_processes(redis_gw: GatewayProcess,
                                                      second_redis_gw: GatewayProcess) -> None:
    urls = replicas(redis_gw)
    assert sorted(replicas(second_redis_gw)) == sorted(urls)
    before = received(urls)
    statuses = await identical_calls([redis_gw, second_redis_gw], 12, question())
    assert received(urls) - before == 1
    assert sorted(statuses) == ["hit"] * 11 + ["miss"]
    # and an entry one process stored is a hit in the other
    messages = question()
    assert chat_json(redis_gw, messages)[0] == "miss"
    assert chat_json(second_redis_gw, messages)[0] == "hit"


# --- Redis down --------------------------------------------------------------------------------------


def test_redis_down_serves_uncached_and_says_so_in_readyz(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gw = start_gateway(tmp_path, {"redis_url": dead})
    try:
        messages = question()
        for stream in (False, True, False):
            r = httpx.post(gw.api + "/chat/completions", timeout=30, headers=gw.auth, json={
                "model": "auto", "messages": messages, "max_tokens": 5, "temperature": 0, "stream": stream})
            assert r.status_code == 200 and r.headers["x-gateway-cache"] in ("bypass", "miss")
            assert "Redis" not in r.text and "redis" not in r.text  # never the client's business
            time.sleep(1.1)  # past cache_retry_s: the next call asks Redis again
        ready = httpx.get(gw.base_url + "/readyz")
        assert ready.status_code == 200  # the cache never makes the gateway unready
        cache = ready.json()["cache"]
        assert cache["backend"] == "redis" and cache["ok"] is False and cache["errors"] >= 3
        assert "ConnectionError" in cache["last_error"] and cache["last_error_at"]
        assert "response cache: redis failed" in gw.log()
    finally:
        gw.stop()


def test_readyz_reports_a_healthy_cache(memory_gw: GatewayProcess, redis_gw: GatewayProcess) -> None:
    for gw, backend in ((memory_gw, "memory"), (redis_gw, "redis")):
        messages = question()
        assert [chat_json(gw, messages)[0] for _ in range(2)] == ["miss", "hit"]
        cache = httpx.get(gw.base_url + "/readyz").json()["cache"]
        assert cache["backend"] == backend and cache["ok"] is True and cache["errors"] == 0
        assert cache["hits"] > 0 and cache["stores"] > 0


def test_cached_bodies_never_reach_the_logs_or_the_database(memory_gw: GatewayProcess) -> None:
    secret = f"zebra-{uuid.uuid4().hex}"
    messages = [{"role": "user", "content": f"Remember {secret}."}]
    _, completion = chat_json(memory_gw, messages)
    assert chat_json(memory_gw, messages)[0] == "hit"
    answer = completion.choices[0].message.content
    time.sleep(0.3)
    db = b"".join(p.read_bytes() for p in (Path(memory_gw.log_path).parent / ".gateway").glob("gateway.db*"))
    for text in (secret, answer):
        assert text not in memory_gw.log()
        assert text.encode() not in db
