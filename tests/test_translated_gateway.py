"""The Responses and Messages APIs through a running gateway (`gateway serve`) in front of simulated workers,
for what a real engine cannot be made to do on demand: a worker dying mid-stream ends the client's stream
with the API's own error event (which the SDKs raise or yield) and the call is recorded with what was
relayed; and the response cache answering a repeated deterministic call."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.gateway_process import GatewayProcess, start_gateway

MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Tell me about routing gateways."}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {"recorder_flush_interval_s": 0.05, "pools": [
        {"name": "small", "model": "demo-small", "launch": {"replicas": 1, "args": ["--output-token-ms", "10"]}},
        {"name": "large", "model": "demo-large", "launch": {"replicas": 1, "args": ["--output-token-ms", "10"]}},
    ]}
    gateway = start_gateway(tmp_path_factory.mktemp("translated"), config)
    yield gateway
    gateway.stop()


def recorded(gw: GatewayProcess, client_request_id: str) -> tuple[str, str, int, int, bool]:
    """(status, usage_source, prompt_tokens, completion_tokens, cache_hit) of a call, from the embedded database."""
    db = gw.log_path.parent / ".gateway" / "gateway.db"
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT status, usage_source, prompt_tokens, completion_tokens, cache_hit "
                               "FROM usage_records WHERE client_request_id = ?", (client_request_id,)).fetchone()
        if row is not None:
            return (row[0], row[1], row[2], row[3], bool(row[4]))
        assert time.monotonic() < deadline, f"no usage record for {client_request_id}"
        time.sleep(0.1)


def dying(gw: GatewayProcess) -> str:
    """The small pool's replica, set to die after 3 tokens of every answer."""
    (replica,) = [r["url"] for r in httpx.get(gw.base_url + "/readyz").json()["pools"]["small"]["replicas"]]
    httpx.post(replica + "/sim/faults", json={"die_rate": 1.0, "die_after_tokens": 3}).raise_for_status()
    return replica


def healed(replica: str) -> None:
    httpx.post(replica + "/sim/faults", json={"die_rate": 0.0}).raise_for_status()


def test_a_messages_stream_cut_by_its_worker_ends_with_anthropics_error(gw: GatewayProcess) -> None:
    replica = dying(gw)
    try:
        client = anthropic.Anthropic(base_url=gw.base_url, api_key=gw.key, max_retries=0)
        texts: list[str] = []
        with (pytest.raises(anthropic.APIStatusError) as info,
              client.messages.stream(model="demo-small", max_tokens=20, messages=MESSAGES,
                                     extra_headers={"x-request-id": "messages-cut"}) as stream):
            texts.extend(stream.text_stream)
        assert len(texts) == 3  # what the worker sent before it died reached the client
        assert info.value.body == {"type": "error", "error": {"type": "api_error",
                                                              "message": "The worker failed mid-stream."}}
        status, source, prompt, completion, _ = recorded(gw, "messages-cut")
        # No message_delta came: the output is counted from the text events relayed, the prompt estimated.
        assert (status, source, completion) == ("upstream_error", "estimate", 3) and prompt > 0
    finally:
        healed(replica)


def test_a_responses_stream_cut_by_its_worker_ends_with_openais_error_event(gw: GatewayProcess) -> None:
    replica = dying(gw)
    try:
        client = openai.OpenAI(base_url=gw.api, api_key=gw.key, max_retries=0)
        events = list(client.responses.create(model="demo-small", input="Hello", max_output_tokens=20, stream=True,
                                              extra_headers={"x-request-id": "responses-cut"}))
        assert [e.type for e in events[:4]] == ["response.created", "response.in_progress",
                                               "response.output_item.added", "response.content_part.added"]
        assert [e.type for e in events[4:]] == ["response.output_text.delta"] * 3 + ["error"]
        error = events[-1]
        assert error.type == "error"
        assert (error.code, error.message, error.sequence_number) == (
            "upstream_stream_broken", "The worker failed mid-stream.", 7)
        assert recorded(gw, "responses-cut")[:2] == ("upstream_error", "estimate")
        assert recorded(gw, "responses-cut")[3] == 3
    finally:
        healed(replica)


def test_a_repeated_deterministic_message_comes_from_the_cache(gw: GatewayProcess) -> None:
    body = {"model": "auto", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": f"Say hello to the cache, {time.time_ns()}."}]}
    first = httpx.post(gw.base_url + "/v1/messages", json=body, timeout=30,
                       headers={"x-api-key": gw.key or "", "x-request-id": "message-first"})
    again = httpx.post(gw.base_url + "/v1/messages", json=body, timeout=30,
                       headers={"x-api-key": gw.key or "", "x-request-id": "message-again"})
    assert (first.headers["x-gateway-cache"], again.headers["x-gateway-cache"]) == ("miss", "hit")
    assert again.content == first.content
    usage = json.loads(first.content)["usage"]
    # The hit is recorded with the answer's tokens, at no cost (docs/cache.md).
    assert recorded(gw, "message-again") == ("ok", "worker", usage["input_tokens"], usage["output_tokens"], True)
    streamed = httpx.post(gw.base_url + "/v1/messages", json={**body, "stream": True}, timeout=30,
                          headers={"x-api-key": gw.key or ""})
    assert streamed.headers["x-gateway-cache"] == "bypass"  # a whole answer is not replayed as events
