"""The simulator's Responses API and Anthropic Messages API (vllm_sim/translated.py) against what real vLLM 0.32
answered (tests/fixtures/vllm-0.32): the same keys in the same order, the same events in the same order, the
same errors, usage that adds up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_simulator import CREATED, shape
from vllm_sim import SimConfig, SimServer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(model="tiny", max_model_len=1024, fixed_created=CREATED)).start()
    yield server
    server.stop()


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    text = raw.decode()
    assert text.endswith("\n\n") and "[DONE]" not in text
    for event in text.split("\n\n")[:-1]:
        name, data = event.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def deduplicated(names: list[str]) -> list[str]:
    """Event names with runs of the same name as one (the number of text deltas differs)."""
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def first_shapes(stream: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The keys (in order, recursively) of the first event of each name."""
    out: dict[str, Any] = {}
    for name, data in stream:
        out.setdefault(name, shape(data))
    return out


def post(sim: SimServer, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(sim.url + path, json=body, headers=headers, timeout=30)


BODY = {"model": "tiny", "instructions": "Be brief.", "input": "Tell me about routing gateways.",
        "max_output_tokens": 6, "temperature": 0}


def test_responses_json_and_stream_as_vllm(sim: SimServer) -> None:
    answer = post(sim, "/v1/responses", BODY)
    assert answer.status_code == 200
    expected = json.loads((FIXTURES / "responses.json").read_text())
    got = answer.json()
    assert shape(got) == shape(expected)
    assert (got["status"], got["incomplete_details"], got["usage"]["output_tokens"]) == (
        "incomplete", {"reason": "max_output_tokens"}, 6)
    assert got["usage"]["total_tokens"] == got["usage"]["input_tokens"] + 6 and got["instructions"] == "Be brief."
    assert got["temperature"] == 0.0 and got["id"].startswith("resp_")
    # The id vLLM gives a response is the body's `request_id` when there is one (the gateway sends it).
    assert post(sim, "/v1/responses", {**BODY, "request_id": "resp_mine"}).json()["id"] == "resp_mine"

    streamed = post(sim, "/v1/responses", {**BODY, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    got_events = events(streamed.content)
    want = events((FIXTURES / "responses_stream.sse").read_bytes())
    assert deduplicated([n for n, _ in got_events]) == deduplicated([n for n, _ in want])
    assert [d["sequence_number"] for _, d in got_events] == list(range(len(got_events)))
    assert first_shapes(got_events) == first_shapes(want)
    text = "".join(d["delta"] for n, d in got_events if n == "response.output_text.delta")
    assert got_events[-1][1]["response"]["output"][0]["content"][0]["text"] == text
    assert got_events[-1][1]["response"]["usage"]["output_tokens"] == 6


def test_responses_refused_as_vllm_without_a_store(sim: SimServer) -> None:
    background = post(sim, "/v1/responses", {**BODY, "background": True})
    assert background.status_code == 400
    assert background.json()["error"]["param"] == "background"
    assert "VLLM_ENABLE_RESPONSES_API_STORE" in background.json()["error"]["message"]
    previous = post(sim, "/v1/responses", {**BODY, "previous_response_id": "resp_x"})
    assert previous.status_code == 404 and previous.json() == {"error": {
        "message": "Response with id 'resp_x' not found.", "type": "invalid_request_error", "param": "response_id",
        "code": 404}}
    missing = post(sim, "/v1/responses", {"model": "tiny"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "body.input"


def test_messages_json_and_stream_as_vllm(sim: SimServer) -> None:
    body = {"model": "tiny", "system": "Be brief.", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me about routing gateways."}]}
    answer = post(sim, "/v1/messages", body, **{"x-request-id": "fixture"})
    expected = json.loads((FIXTURES / "messages.json").read_text())
    assert answer.status_code == 200 and shape(answer.json()) == shape(expected)
    assert answer.json()["id"] == "chatcmpl-fixture" and answer.json()["stop_reason"] == "max_tokens"

    streamed = post(sim, "/v1/messages", {**body, "stream": True})
    got = events(streamed.content)
    want = events((FIXTURES / "messages_stream.sse").read_bytes())
    assert deduplicated([n for n, _ in got]) == deduplicated([n for n, _ in want])
    assert first_shapes(got) == first_shapes(want)
    start, delta = got[0][1]["message"]["usage"], got[-2][1]["usage"]
    assert start["output_tokens"] == 0 and delta == {"input_tokens": start["input_tokens"], "output_tokens": 6}


def test_messages_errors_as_vllm(sim: SimServer) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    missing = post(sim, "/v1/messages", {"model": "tiny", "messages": messages})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "body.max_tokens"  # FastAPI's
    unknown = post(sim, "/v1/messages", {"model": "nope", "messages": messages, "max_tokens": 3})
    assert unknown.status_code == 404 and unknown.json() == {"type": "error", "error": {
        "type": "NotFoundError", "message": "The model `nope` does not exist. Valid aliases: tiny."}}
