"""The running gateway, driven with the official `openai` SDK (sync and async) and raw HTTP.

The workers here are simulated vLLM engines (vllm_sim); tests/test_real_vllm.py runs the
same checks against a real vLLM engine.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway_process import GatewayProcess, start_gateway
from workers.launcher import free_port

HELLO = [{"role": "user", "content": "Say hello to the gateway."}]


def sdk(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api, api_key=gw.key, max_retries=0)


def replica_url(gw: GatewayProcess, pool: str) -> str:
    return httpx.get(gw.base_url + "/readyz").json()["pools"][pool]["replicas"][0]["url"]


def without_created(raw: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b'"created":0', raw)


def test_models_lists_routable_models_and_auto(gateway: GatewayProcess) -> None:
    assert [m.id for m in sdk(gateway).models.list()] == ["auto", "demo-small", "demo-large", "fast", "smart"]


def test_chat_non_streaming(gateway: GatewayProcess) -> None:
    raw = sdk(gateway).chat.completions.with_raw_response.create(model="demo-large", messages=HELLO, max_tokens=12)
    assert raw.headers["x-gateway-model"] == "demo-large"
    assert re.fullmatch(r"[0-9a-f]{32}", raw.headers["x-request-id"])
    completion = raw.parse()
    assert completion.model == "demo-large"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_auto_routes_short_chat_to_the_small_model(gateway: GatewayProcess) -> None:
    greeting = [{"role": "user", "content": "Hello!"}]  # a one-liner: the shipped policy's `short-chat` rule
    raw = sdk(gateway).chat.completions.with_raw_response.create(model="auto", messages=greeting, max_tokens=3)
    assert raw.headers["x-gateway-model"] == "demo-small"
    assert raw.headers["x-gateway-route"] == "short-chat"  # a rule that does not consult the predictor
    assert raw.parse().model == "demo-small"


def test_chat_stream_without_usage_gets_no_usage_chunk(gateway: GatewayProcess) -> None:
    stream = sdk(gateway).chat.completions.create(model="demo-small", messages=HELLO, max_tokens=10, stream=True)
    chunks = list(stream)
    assert chunks and all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


def test_chat_stream_with_usage_ends_with_usage_chunk(gateway: GatewayProcess) -> None:
    stream = sdk(gateway).chat.completions.create(
        model="demo-small", messages=HELLO, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    token_chunks = [c for c in chunks[:-1] if c.choices and c.choices[0].delta.content]
    assert len(token_chunks) == 10


async def test_async_completions_streaming_and_not(gateway: GatewayProcess) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.api, api_key=gateway.key, max_retries=0)
    completion = await client.completions.create(model="demo-small", prompt="Once upon a time", max_tokens=5)
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    stream = await client.completions.create(
        model="demo-small", prompt="Once upon a time", max_tokens=5, stream=True
    )
    texts = [c.choices[0].text async for c in stream]
    assert len(texts) == 5
    # Same seed-free deterministic simulator: streamed text equals the non-streamed text.
    assert "".join(texts) == completion.choices[0].text
    chat = await client.chat.completions.create(model="demo-large", messages=HELLO, max_tokens=4, stream=True)
    assert [c async for c in chat][-1].choices[0].finish_reason == "length"
    await client.close()


@pytest.mark.parametrize("client_asks_usage", [False, True])
def test_stream_is_byte_for_byte_what_the_worker_sent(gateway: GatewayProcess, client_asks_usage: bool) -> None:
    """What the worker sends the client's own request, though the gateway asks it for the usage event: without
    it, the system fingerprint is on the finished chunk."""
    body: dict[str, object] = {"model": "demo-small", "messages": HELLO, "max_tokens": 8, "stream": True}
    if client_asks_usage:
        body["stream_options"] = {"include_usage": True}
    rid = f"passthrough-{client_asks_usage}"
    direct = httpx.post(replica_url(gateway, "small") + "/v1/chat/completions", json=body,
                        headers={"x-request-id": rid})
    via = httpx.post(gateway.api + "/chat/completions", json=body, headers={**gateway.auth, "x-request-id": rid})
    assert via.headers["content-type"] == direct.headers["content-type"]
    assert via.headers["x-request-id"] == rid
    events = [e + b"\n\n" for e in direct.content.split(b"\n\n") if e]
    assert (b'"choices":[],"usage"' in events[-2]) == client_asks_usage
    assert b'"system_fingerprint"' in events[-2]
    assert without_created(via.content) == without_created(direct.content)


def test_request_id_reaches_the_worker_and_comes_back(gateway: GatewayProcess) -> None:
    body = {"model": "demo-small", "messages": HELLO, "max_tokens": 2}
    direct = httpx.post(replica_url(gateway, "small") + "/v1/chat/completions", json=body,
                        headers={"x-request-id": "req-42"})
    via = httpx.post(gateway.api + "/chat/completions", json=body, headers={**gateway.auth, "x-request-id": "req-42"})
    assert via.headers["x-request-id"] == "req-42"
    assert via.json()["id"] == direct.json()["id"]  # the simulator derives the id from X-Request-Id
    bad = httpx.post(gateway.api + "/chat/completions", json=body,
                     headers={**gateway.auth, "x-request-id": "no spaces allowed"})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert response.headers.get("x-request-id")
    return body["error"]


def test_malformed_json_is_400(gateway: GatewayProcess) -> None:
    r = httpx.post(gateway.api + "/chat/completions", content=b'{"model": "demo-small", "messages": [',
                   headers={**gateway.auth, "content-type": "application/json"})
    assert r.status_code == 400
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "demo-small", "messages": HELLO, "stream": "maybe"}, "stream"),  # "yes" is a stream, as in vLLM
        ({"model": "demo-small", "messages": "hi"}, "messages"),
        ({"model": "demo-small"}, "messages"),
        ({"model": ["demo-small"], "messages": HELLO}, "model"),
    ],
)
def test_wrong_type_is_400_naming_the_param(gateway: GatewayProcess, body: dict[str, object], param: str) -> None:
    r = httpx.post(gateway.api + "/chat/completions", json=body, headers=gateway.auth)
    assert r.status_code == 400
    assert error_of(r)["param"] == param


def test_unknown_model_is_404_naming_the_valid_ones(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk(gateway).chat.completions.create(model="gpt-17", messages=HELLO)
    err = error_of(info.value.response)
    assert err["param"] == "model" and err["code"] == "model_not_found"
    assert "auto, demo-small, demo-large, fast, smart" in str(err["message"])


def test_worker_4xx_passes_through_unchanged(gateway: GatewayProcess) -> None:
    # vLLM refuses stream_options without stream; the gateway does not check it, the worker does.
    body = {"model": "demo-small", "messages": HELLO, "max_tokens": 5, "stream_options": {"include_usage": True}}
    direct = httpx.post(replica_url(gateway, "small") + "/v1/chat/completions", json=body)
    via = httpx.post(gateway.api + "/chat/completions", json=body, headers=gateway.auth)
    assert direct.status_code == via.status_code == 400
    assert via.content == direct.content
    assert via.json()["error"]["message"].startswith("Stream options can only be defined when `stream=True`.")
    with pytest.raises(openai.BadRequestError):
        sdk(gateway).chat.completions.create(model="demo-small", messages=HELLO, stream_options={"include_usage": True})


def test_a_prompt_over_every_context_window_is_400_before_any_worker(gateway: GatewayProcess) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 5}
    r = httpx.post(gateway.api + "/chat/completions", json=body, headers=gateway.auth)
    assert r.status_code == 400
    assert "context" in error_of(r)["message"]


def test_unknown_path_and_wrong_method_use_the_envelope(gateway: GatewayProcess) -> None:
    r = httpx.get(gateway.api + "/engines")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = httpx.get(gateway.api + "/chat/completions")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"


def test_health_and_readiness(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.base_url + "/readyz")
    assert ready.status_code == 200
    pools = ready.json()["pools"]
    assert {name: p["healthy"] for name, p in pools.items()} == {"small": 1, "large": 1}


@pytest.mark.parametrize(("readiness_pools", "status"), [("all", 503), ("any", 200)])
def test_readiness_with_one_pool_down_follows_readiness_pools(
    tmp_path: Path, readiness_pools: str, status: int
) -> None:
    """Gateways behind one load balancer share their workers: with `any`, one pool's outage leaves them ready
    (calls to it fail over to a fallback model), with `all` (the default) it takes them out of rotation."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = {
        "readiness_pools": readiness_pools, "health_interval_s": 0.5,
        "pools": [
            {"name": "small", "model": "demo-small", "launch": {"engine": "sim"}},
            {"name": "large", "model": "demo-large", "replicas": [dead]},
        ],
    }
    gw = start_gateway(tmp_path, config, ready=False)
    try:
        deadline = time.monotonic() + 30
        while (r := httpx.get(gw.base_url + "/readyz")).json()["pools"]["small"]["healthy"] < 1:
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        assert r.status_code == status
        assert r.json()["status"] == ("ready" if status == 200 else "not_ready")
        assert r.json()["pools"]["large"]["healthy"] == 0
    finally:
        gw.stop()
