"""The vLLM simulator (vllm_sim), served for real by uvicorn in a background thread and
driven over HTTP with httpx; its answers are compared with real vLLM 0.32 bytes (tests/fixtures)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from vllm_sim import Faults, SimConfig, SimServer
from vllm_sim.cli import build_parser, config_from_args
from vllm_sim.text import count_tokens, generate, render_chat

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32"
CREATED = 1795818555
HELLO = [{"role": "user", "content": "Say hello."}]

# --------------------------------------------------------------------------- helpers


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture_error(name: str) -> tuple[bytes, int]:
    body, status = fixture_text(name).rstrip("\n").rsplit("\n", 1)
    return body.encode(), int(status.removeprefix("HTTP "))


def shape(value: Any) -> Any:
    """Keys (in order) of every object, recursively; lists by their first element; scalars vanish."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return None


def compact(data: str) -> bool:
    """True when ``data`` is JSON written with compact separators (as vLLM writes it)."""
    return json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False) == data


def sse_events(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking vLLM's framing on the way."""
    text = raw.decode()
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")
    assert events[-1] == ""
    out = []
    for event in events[:-1]:
        assert event.startswith("data: ") and "\n" not in event, event
        out.append(event.removeprefix("data: "))
    assert out[-1] == "[DONE]"
    return out[:-1]


def chunk_kind(chunk: dict[str, Any]) -> str:
    if not chunk["choices"]:
        return "usage"
    choice = chunk["choices"][0]
    if "role" in choice.get("delta", {}):
        return "role"
    return "content" if choice["finish_reason"] is None else "final"


def kinds_of(events: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        chunk = json.loads(e)
        out.setdefault(chunk_kind(chunk), []).append(chunk)
    return out


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def sample(metrics: dict[str, float], name: str, **labels: str) -> float:
    """One sample of model "tiny"; labels are written sorted, as the simulator (and vLLM) does."""
    all_labels = sorted({"engine": "0", "model_name": "tiny", **labels}.items())
    return metrics[name + "{" + ",".join(f'{k}="{v}"' for k, v in all_labels) + "}"]


async def metrics_of(client: httpx.AsyncClient, base: str) -> dict[str, float]:
    r = await client.get(base + "/metrics")
    assert r.status_code == 200
    return parse_metrics(r.text)


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": HELLO, **extra}


# --------------------------------------------------------------------------- fixtures


def _serve(**overrides: Any) -> SimServer:
    config = SimConfig(**{"model": "tiny", "max_model_len": 1024, "fixed_created": CREATED, **overrides})
    return SimServer(config).start()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    """Fast defaults: 5 ms TTFT, 0.2 ms per output token."""
    server = _serve()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimServer]:
    """Two running slots, two waiting places, 20 ms per token."""
    server = _serve(max_running=2, max_waiting=2, output_token_ms=20.0)
    yield server
    server.stop()


@pytest.fixture
def faulty_sim() -> Iterator[SimServer]:
    server = _serve(output_token_ms=5.0, seed=7)
    yield server
    server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20.0, trust_env=False) as c:
        yield c


# --------------------------------------------------------------------------- simple endpoints


async def test_health_version_models_tokenize(sim: SimServer, client: httpx.AsyncClient) -> None:
    r = await client.get(sim.url + "/health")
    assert (r.status_code, r.content) == (200, b"")

    r = await client.get(sim.url + "/version")
    assert r.content == fixture_text("version.json").strip().encode()

    r = await client.get(sim.url + "/v1/models")
    assert r.headers["content-type"] == "application/json"
    assert compact(r.text)
    assert shape(r.json()) == shape(json.loads(fixture_text("models.json")))
    model = r.json()["data"][0]
    assert (model["id"], model["max_model_len"], model["created"]) == ("tiny", 1024, CREATED)

    r = await client.post(sim.url + "/tokenize", json={"model": "tiny", "prompt": "Hello there, world"})
    assert shape(r.json()) == shape(json.loads(fixture_text("tokenize.json")))
    assert r.json()["count"] == count_tokens("Hello there, world") == len(r.json()["tokens"])
    assert r.json()["max_model_len"] == 1024

    r = await client.post(sim.url + "/tokenize", json={"model": "tiny", "messages": HELLO})
    assert r.json()["count"] == count_tokens(render_chat(HELLO).text)
    r = await client.post(sim.url + "/tokenize", json={"model": "tiny", "messages": [{"role": "user", "content": 5}]})
    assert (r.status_code, r.json()["error"]["type"]) == (400, "Bad Request")

    r = await client.get(sim.url + "/nowhere")
    assert r.status_code == 404
    r = await client.get(sim.url + "/v1/chat/completions")
    assert r.status_code == 405


# --------------------------------------------------------------------------- non-streaming


async def test_chat_matches_the_fixture_shape_and_counts_tokens(
    sim: SimServer, client: httpx.AsyncClient
) -> None:
    r = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=12))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["vary"] == "Origin"
    assert int(r.headers["content-length"]) == len(r.content)
    assert compact(r.text)
    assert shape(r.json()) == shape(json.loads(fixture_text("chat.json")))
    body = r.json()
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", body["id"])
    assert (body["object"], body["created"], body["model"]) == ("chat.completion", CREATED, "tiny")
    assert body["system_fingerprint"] == "vllm-0.32.0-sim"
    choice = body["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)
    usage = body["usage"]
    assert usage["completion_tokens"] == 12 == count_tokens(choice["message"]["content"])
    assert usage["prompt_tokens"] == count_tokens(render_chat(HELLO).text)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_completion_matches_the_fixture_shape(sim: SimServer, client: httpx.AsyncClient) -> None:
    for prompt in ("Once upon a time", ["Once upon a time"]):
        r = await client.post(
            sim.url + "/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 8}
        )
        assert r.status_code == 200
        assert compact(r.text)
        assert shape(r.json()) == shape(json.loads(fixture_text("completion.json")))
        body = r.json()
        assert re.fullmatch(r"cmpl-[0-9a-f]{16}", body["id"])
        assert body["usage"]["prompt_tokens"] == count_tokens("Once upon a time")
        assert body["usage"]["completion_tokens"] == 8 == count_tokens(body["choices"][0]["text"])


async def test_max_tokens_defaults_to_the_rest_of_the_context(
    sim: SimServer, client: httpx.AsyncClient
) -> None:
    r = await client.post(sim.url + "/v1/chat/completions", json=chat_body())
    usage = r.json()["usage"]
    assert usage["total_tokens"] == 1024
    assert r.json()["choices"][0]["finish_reason"] == "length"
    # max_completion_tokens wins over max_tokens, as in vLLM
    r = await client.post(
        sim.url + "/v1/chat/completions", json=chat_body(max_tokens=50, max_completion_tokens=5)
    )
    assert r.json()["usage"]["completion_tokens"] == 5


async def test_content_parts_and_batches(sim: SimServer, client: httpx.AsyncClient) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]
    r1 = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=4))
    r2 = await client.post(
        sim.url + "/v1/chat/completions", json={"model": "tiny", "messages": parts, "max_tokens": 4}
    )
    assert r1.json()["usage"]["prompt_tokens"] == r2.json()["usage"]["prompt_tokens"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_image = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}, image]}]
    r3 = await client.post(sim.url + "/v1/chat/completions", json={"model": "tiny", "messages": with_image})
    assert r3.json()["usage"]["prompt_tokens"] == r1.json()["usage"]["prompt_tokens"] + 64

    r = await client.post(
        sim.url + "/v1/completions", json={"model": "tiny", "prompt": ["a b", "c"], "max_tokens": 3, "n": 2}
    )
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["prompt_tokens"] == count_tokens("a b") + count_tokens("c")
    r = await client.post(
        sim.url + "/v1/completions", json={"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2}
    )
    assert r.json()["usage"]["prompt_tokens"] == 3


async def test_stop_strings(sim: SimServer, client: httpx.AsyncClient) -> None:
    full = (await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=40))).json()
    text = full["choices"][0]["message"]["content"]
    words = text.split()
    stop = " " + words[5]
    cut = text[: text.index(stop)]
    r = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=40, stop=[stop]))
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"], choice["stop_reason"]) == (
        cut,
        "stop",
        stop,
    )
    # streamed: one chunk per counted token, and the same text
    r = await client.post(
        sim.url + "/v1/chat/completions",
        json=chat_body(max_tokens=40, stop=stop, stream=True, stream_options={"include_usage": True}),
    )
    kinds = kinds_of(sse_events(r.content))
    tokens = kinds.get("content", []) + kinds["final"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in tokens) == cut
    assert kinds["usage"][0]["usage"]["completion_tokens"] == len(tokens)
    assert kinds["final"][0]["choices"][0]["stop_reason"] == stop


async def test_the_text_can_end_by_itself() -> None:
    server = _serve(mean_output_tokens=10)
    try:
        async with httpx.AsyncClient(trust_env=False) as c:
            r = await c.post(server.url + "/v1/chat/completions", json=chat_body(max_tokens=500))
            assert r.json()["choices"][0]["finish_reason"] == "stop"
            assert 5 <= r.json()["usage"]["completion_tokens"] <= 15
            r = await c.post(
                server.url + "/v1/chat/completions", json=chat_body(max_tokens=500, ignore_eos=True)
            )
            assert r.json()["usage"]["completion_tokens"] == 500
    finally:
        server.stop()


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_stream_matches_the_fixtures(
    sim: SimServer, client: httpx.AsyncClient, include_usage: bool
) -> None:
    fixture = "chat_stream_usage.sse" if include_usage else "chat_stream_nousage.sse"
    expected = kinds_of(sse_events(fixture_text(fixture).encode()))
    body = chat_body(max_tokens=7, stream=True)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r = await client.post(sim.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["transfer-encoding"] == "chunked"
    events = sse_events(r.content)
    assert all(compact(e) for e in events)
    got = kinds_of(events)
    assert list(got) == list(expected)  # role, content, final[, usage] in that order
    for kind, chunks in got.items():
        assert all(shape(c) == shape(expected[kind][0]) for c in chunks), kind
    assert len(got["content"]) + len(got["final"]) == 7  # one chunk per token
    ids = {json.loads(e)["id"] for e in events}
    assert len(ids) == 1 and re.fullmatch(r"chatcmpl-[0-9a-f]{16}", ids.pop())
    text = "".join(c["choices"][0]["delta"]["content"] for c in got["content"] + got["final"])
    assert count_tokens(text) == 7
    if include_usage:
        usage = got["usage"][0]["usage"]
        assert usage["completion_tokens"] == 7
        assert usage["prompt_tokens"] == count_tokens(render_chat(HELLO).text)
    else:
        assert "usage" not in got


async def test_completion_stream_matches_the_fixture(sim: SimServer, client: httpx.AsyncClient) -> None:
    expected = sse_events(fixture_text("completion_stream_usage.sse").encode())
    body = {
        "model": "tiny",
        "prompt": "Once upon",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await client.post(sim.url + "/v1/completions", json=body)
    events = sse_events(r.content)
    assert [shape(json.loads(e)) for e in events] == [shape(json.loads(e)) for e in expected]
    assert [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]] == [None, None, None, "length"]
    assert json.loads(events[-1])["usage"]["completion_tokens"] == 4


async def test_stream_and_non_stream_say_the_same(sim: SimServer, client: httpx.AsyncClient) -> None:
    plain = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=30))
    streamed = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=30, stream=True))
    kinds = kinds_of(sse_events(streamed.content))
    text = "".join(c["choices"][0]["delta"]["content"] for c in kinds["content"] + kinds["final"])
    assert text == plain.json()["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- ids and determinism


async def test_same_request_and_request_id_give_identical_bytes(
    sim: SimServer, client: httpx.AsyncClient
) -> None:
    headers = {"X-Request-Id": "req-42"}
    for path, body in [
        ("/v1/chat/completions", chat_body(max_tokens=20)),
        (
            "/v1/chat/completions",
            chat_body(max_tokens=20, stream=True, stream_options={"include_usage": True}),
        ),
        ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 9}),
    ]:
        a = await client.post(sim.url + path, json=body, headers=headers)
        b = await client.post(sim.url + path, json=body, headers=headers)
        assert a.content == b.content
        assert a.headers["x-request-id"] == "req-42"
    other = await client.post(
        sim.url + "/v1/chat/completions", json=chat_body(max_tokens=20), headers={"X-Request-Id": "req-43"}
    )
    same = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=20), headers=headers)
    assert other.json()["id"] != same.json()["id"]
    assert other.json()["choices"] == same.json()["choices"]
    # without a request id: a fresh id each time (and a generated x-request-id header)
    r1 = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=2))
    r2 = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=2))
    assert r1.json()["id"] != r2.json()["id"]
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]


async def test_the_seed_picks_the_text(sim: SimServer, client: httpx.AsyncClient) -> None:
    async def text(**extra: Any) -> str:
        r = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=15, **extra))
        return str(r.json()["choices"][0]["message"]["content"])

    assert await text(seed=1) == await text(seed=1, temperature=0.9)
    assert await text(seed=1) != await text(seed=2)
    assert await text() == await text()


def test_generated_text_is_one_token_per_piece() -> None:
    for seed in range(50):
        out = generate(f"prompt {seed}", seed=seed, max_tokens=300)
        assert count_tokens(out.text) == len(out.texts) == 300
        assert out.text == "".join(out.texts)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fixture", "path", "body"),
    [
        ("error_unknown_model.txt", "/v1/chat/completions", {"model": "nope", "messages": HELLO}),
        ("error_validation.txt", "/v1/chat/completions", {"model": "tiny", "messages": "notalist"}),
        (
            "error_stream_options.txt",
            "/v1/chat/completions",
            {"model": "tiny", "messages": HELLO, "stream_options": {"include_usage": True}},
        ),
        (
            "error_max_tokens_too_large.txt",
            "/v1/chat/completions",
            {"model": "tiny", "messages": HELLO, "max_tokens": 5000},
        ),
        ("error_context_length.txt", "/v1/completions", {"model": "tiny", "prompt": "hi" + " hi" * 1024}),
    ],
)
async def test_errors_are_vllms_bytes(
    sim: SimServer, client: httpx.AsyncClient, fixture: str, path: str, body: dict[str, Any]
) -> None:
    expected, status = fixture_error(fixture)
    r = await client.post(sim.url + path, json=body)
    assert (r.status_code, r.content) == (status, expected)
    assert r.headers["content-type"] == "application/json"


async def test_other_errors(sim: SimServer, client: httpx.AsyncClient) -> None:
    r = await client.post(sim.url + "/v1/chat/completions", content=b'{"model": "tiny", "messages": [')
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("Bad Request", 400)
    assert "json_invalid" in err["message"]

    r = await client.post(sim.url + "/v1/chat/completions", json={"model": "tiny"})
    assert r.status_code == 400 and "'type': 'missing'" in r.json()["error"]["message"]

    r = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=1020))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"

    r = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens="many"))
    assert r.status_code == 400 and "int_type" in r.json()["error"]["message"]

    r = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=0))
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"


async def test_a_huge_fan_out_is_refused_at_once(sim: SimServer, client: httpx.AsyncClient) -> None:
    """`n` of a billion once held a replica for good, growing past 5 GB: the simulator refuses it, as vLLM does
    past its VLLM_MAX_N_SEQUENCES, before generating anything; so with too many prompts, or prompts x n."""
    r = await client.post(sim.url + "/v1/completions", json={"model": "tiny", "prompt": ["x"] * 1025, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = await client.post(sim.url + "/v1/completions",
                          json={"model": "tiny", "prompt": ["x"] * 100, "n": 11, "max_tokens": 1})
    assert r.status_code == 400 and "1100 sequences" in r.json()["error"]["message"]
    r = await client.post(sim.url + "/v1/chat/completions", json=chat_body(n=1_000_000_000, max_tokens=4))
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert "n must be at most 1024" in r.json()["error"]["message"]
    r = await client.post(sim.url + "/v1/completions",
                          json={"model": "tiny", "prompt": ["x"] * 100, "n": 10, "max_tokens": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 1000
    assert (await client.get(sim.url + "/health")).status_code == 200


# --------------------------------------------------------------------------- metrics


async def test_metrics_use_vllms_names_and_help(sim: SimServer, client: httpx.AsyncClient) -> None:
    before = await metrics_of(client, sim.url)
    r = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=10))
    usage = r.json()["usage"]
    r = await client.get(sim.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    after = parse_metrics(r.text)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("vllm:generation_tokens_total") == 10
    assert delta("vllm:request_success_total", finished_reason="length") == 1
    assert delta("sim_requests_received_total") == 1
    assert sample(after, "vllm:num_requests_running") == 0
    assert sample(after, "vllm:num_requests_waiting") == 0
    assert sample(after, "vllm:kv_cache_usage_perc") == 0
    assert delta("vllm:time_to_first_token_seconds_count") == 1

    # HELP/TYPE lines are vLLM's own for every vllm: metric the fixture also has
    fixture_meta = {line for line in fixture_text("metrics.prom").splitlines() if line.startswith("# ")}
    ours = [line for line in r.text.splitlines() if line.startswith("# ") and "vllm:" in line]
    assert ours and all(line in fixture_meta for line in ours if "cache_config_info" not in line)
    for name in ("sim_requests_cancelled_total", "sim_injected_errors_total", "sim_requests_received_total"):
        assert f"# TYPE {name} counter" in r.text


# --------------------------------------------------------------------------- latency and admission


async def test_latency_model_is_honoured(client: httpx.AsyncClient) -> None:
    server = _serve(ttft_ms=100.0, prompt_token_us=100.0, output_token_ms=10.0)
    try:
        prompt = "hello" + " hello" * 499  # 500 tokens -> +50 ms of prefill
        assert count_tokens(prompt) == 500
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 10, "stream": True}
        started = time.perf_counter()
        async with client.stream("POST", server.url + "/v1/completions", json=body) as r:
            first = None
            async for _ in r.aiter_raw():
                first = first or time.perf_counter()
        done = time.perf_counter()
        assert first is not None
        assert first - started >= 0.15  # ttft 100 ms + 500 * 100 us
        assert done - started >= 0.15 + 9 * 0.010
        assert done - started < 2.0

        started = time.perf_counter()
        r2 = await client.post(server.url + "/v1/completions", json={**body, "stream": False})
        assert r2.status_code == 200
        assert time.perf_counter() - started >= 0.15 + 9 * 0.010
    finally:
        server.stop()


async def test_prefix_cache_makes_a_repeated_prefix_cheap(client: httpx.AsyncClient) -> None:
    server = _serve(ttft_ms=1.0, prompt_token_us=400.0, output_token_ms=0.1, prefix_cache_blocks=64)
    try:
        shared = "You are a careful assistant. " * 100  # ~2,900 chars, ~600 tokens: 240 ms of prefill

        async def ttft(question: str) -> float:
            body = {"model": "tiny", "prompt": shared + question, "max_tokens": 2, "stream": True}
            started = time.perf_counter()
            first = None
            async with client.stream("POST", server.url + "/v1/completions", json=body) as r:
                async for _ in r.aiter_raw():
                    first = first or time.perf_counter()
            assert first is not None
            return first - started

        cold = await ttft("What is a gateway?")
        warm = await ttft("What is a router?")  # same first 11 blocks: cached
        assert cold >= 0.2 and warm < cold / 3, (cold, warm)
        text = (await client.get(server.url + "/metrics")).text
        hits = float(re.search(r"vllm:prefix_cache_hits_total\{[^}]*\} (\S+)", text).group(1))  # type: ignore[union-attr]
        queries = float(re.search(r"vllm:prefix_cache_queries_total\{[^}]*\} (\S+)", text).group(1))  # type: ignore[union-attr]
        assert 0.3 * queries < hits < 0.5 * queries  # the second prompt's shared part, not the first's
    finally:
        server.stop()


async def test_running_slots_queue_and_503(slow_sim: SimServer, client: httpx.AsyncClient) -> None:
    body = chat_body(max_tokens=15, stream=True)  # ~300 ms each

    async def one() -> int:
        async with httpx.AsyncClient(timeout=20.0, trust_env=False) as c:
            r = await c.post(slow_sim.url + "/v1/chat/completions", json=body)
            return r.status_code

    tasks = [asyncio.create_task(one()) for _ in range(4)]  # 2 running + 2 waiting
    deadline = time.monotonic() + 5
    while True:
        m = await metrics_of(client, slow_sim.url)
        if sample(m, "vllm:num_requests_waiting") == 2:
            break
        assert time.monotonic() < deadline, m
        await asyncio.sleep(0.01)
    assert sample(m, "vllm:num_requests_running") == 2
    assert 0 < sample(m, "vllm:kv_cache_usage_perc") < 1

    r = await client.post(slow_sim.url + "/v1/chat/completions", json=body)
    assert r.status_code == 503
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("ServiceUnavailableError", 503)
    assert list(r.json()) == ["error"] and list(err) == ["message", "type", "param", "code"]

    assert await asyncio.gather(*tasks) == [200] * 4
    m = await metrics_of(client, slow_sim.url)
    assert sample(m, "vllm:num_requests_running") == sample(m, "vllm:num_requests_waiting") == 0
    assert m['vllm:admission_rejections_total{model_name="tiny",reason="max_num_queued_reqs"}'] >= 1
    assert sample(m, "vllm:request_queue_time_seconds_sum") > 0.2  # two requests waited ~300 ms


# --------------------------------------------------------------------------- client disconnects


async def wait_for_cancelled(
    client: httpx.AsyncClient, base: str, before: float, within: float = 0.5
) -> float:
    started = time.monotonic()
    while True:
        m = await metrics_of(client, base)
        if sample(m, "sim_requests_cancelled_total") > before:
            return time.monotonic() - started
        assert time.monotonic() - started < within, "the simulator did not notice the disconnect"
        await asyncio.sleep(0.01)


async def test_disconnect_mid_stream_is_noticed(slow_sim: SimServer, client: httpx.AsyncClient) -> None:
    m = await metrics_of(client, slow_sim.url)
    before = sample(m, "sim_requests_cancelled_total")
    aborts = sample(m, "vllm:request_success_total", finished_reason="abort")
    async with httpx.AsyncClient(timeout=20.0, trust_env=False) as c:
        body = chat_body(max_tokens=500, stream=True)  # would take 10 s
        async with c.stream("POST", slow_sim.url + "/v1/chat/completions", json=body) as r:
            seen = 0
            async for chunk in r.aiter_raw():
                seen += chunk.count(b"data: ")
                if seen >= 3:
                    break
    await wait_for_cancelled(client, slow_sim.url, before)
    m = await metrics_of(client, slow_sim.url)
    assert sample(m, "vllm:num_requests_running") == 0
    assert sample(m, "vllm:request_success_total", finished_reason="abort") == aborts + 1


async def test_disconnect_during_a_non_streaming_wait_and_in_the_queue(
    slow_sim: SimServer, client: httpx.AsyncClient
) -> None:
    before = sample(await metrics_of(client, slow_sim.url), "sim_requests_cancelled_total")

    async def long_request() -> None:
        async with httpx.AsyncClient(timeout=20.0, trust_env=False) as c:
            await c.post(slow_sim.url + "/v1/chat/completions", json=chat_body(max_tokens=500))

    # 2 running + 1 queued, then every client goes away
    tasks = [asyncio.create_task(long_request()) for _ in range(3)]
    deadline = time.monotonic() + 5
    while sample(await metrics_of(client, slow_sim.url), "vllm:num_requests_waiting") < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    started = time.monotonic()
    while sample(await metrics_of(client, slow_sim.url), "sim_requests_cancelled_total") < before + 3:
        assert time.monotonic() - started < 0.5
        await asyncio.sleep(0.01)
    m = await metrics_of(client, slow_sim.url)
    assert sample(m, "vllm:num_requests_running") == sample(m, "vllm:num_requests_waiting") == 0


# --------------------------------------------------------------------------- failure injection


async def test_faults_endpoint(faulty_sim: SimServer, client: httpx.AsyncClient) -> None:
    r = await client.get(faulty_sim.url + "/sim/faults")
    assert msgspec.convert(r.json(), Faults) == Faults()
    r = await client.post(faulty_sim.url + "/sim/faults", json={"stall_ms": 5})
    assert r.json()["stall_ms"] == 5 and r.json()["error_rate"] == 0
    for bad in ({"error_rate": 2}, {"nope": 1}, {"status": "x"}, [1]):
        r = await client.post(faulty_sim.url + "/sim/faults", json=bad)
        assert r.status_code == 400, bad
    assert (await client.get(faulty_sim.url + "/sim/faults")).json()["stall_ms"] == 5

    await client.post(faulty_sim.url + "/sim/faults", json={"health_status": 503})
    assert (await client.get(faulty_sim.url + "/health")).status_code == 503


async def test_injected_errors(faulty_sim: SimServer, client: httpx.AsyncClient) -> None:
    await client.post(faulty_sim.url + "/sim/faults", json={"error_rate": 1.0, "status": 503})
    r = await client.post(faulty_sim.url + "/v1/chat/completions", json=chat_body(max_tokens=3, stream=True))
    assert r.status_code == 503
    assert list(r.json()["error"]) == ["message", "type", "param", "code"]
    assert r.json()["error"]["type"] == "ServiceUnavailableError"
    m = await metrics_of(client, faulty_sim.url)
    assert sample(m, "sim_injected_errors_total", kind="error") == 1

    # a rate between 0 and 1 draws from the seeded PRNG: some fail, some do not
    await client.post(faulty_sim.url + "/sim/faults", json={"error_rate": 0.5, "status": 500})
    codes = [
        (await client.post(faulty_sim.url + "/v1/chat/completions", json=chat_body(max_tokens=1))).status_code
        for _ in range(30)
    ]
    assert set(codes) == {200, 500}
    await client.post(faulty_sim.url + "/sim/faults", json={"error_rate": 0.0})
    assert (
        await client.post(faulty_sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    ).is_success


async def test_injected_stall_delays_the_first_byte(faulty_sim: SimServer, client: httpx.AsyncClient) -> None:
    await client.post(faulty_sim.url + "/sim/faults", json={"stall_rate": 1.0, "stall_ms": 300})
    started = time.perf_counter()
    async with client.stream(
        "POST", faulty_sim.url + "/v1/chat/completions", json=chat_body(max_tokens=2, stream=True)
    ) as r:
        headers_at = time.perf_counter()
        assert r.status_code == 200
        await r.aread()
    assert headers_at - started >= 0.3
    # a client that gives up during the stall is noticed too
    before = sample(await metrics_of(client, faulty_sim.url), "sim_requests_cancelled_total")
    with pytest.raises(httpx.ReadTimeout):
        await client.post(faulty_sim.url + "/v1/chat/completions", json=chat_body(max_tokens=2), timeout=0.1)
    await wait_for_cancelled(client, faulty_sim.url, before)
    assert sample(await metrics_of(client, faulty_sim.url), "sim_injected_errors_total", kind="stall") == 2


async def test_injected_death_mid_stream(
    faulty_sim: SimServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    await client.post(faulty_sim.url + "/sim/faults", json={"die_rate": 1.0, "die_after_tokens": 3})
    received = b""
    with caplog.at_level(logging.ERROR):
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream(
                "POST", faulty_sim.url + "/v1/chat/completions", json=chat_body(max_tokens=20, stream=True)
            ) as r:
                assert r.status_code == 200
                async for chunk in r.aiter_raw():
                    received += chunk
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(faulty_sim.url + "/v1/chat/completions", json=chat_body(max_tokens=20))
    events = [e for e in received.split(b"\n\n") if e]
    assert len(events) == 1 + 3  # the role chunk and 3 tokens, then nothing: no final chunk, no [DONE]
    assert b"[DONE]" not in received
    assert not [rec for rec in caplog.records if "Exception in ASGI application" in rec.getMessage()]
    m = await metrics_of(client, faulty_sim.url)
    assert sample(m, "sim_injected_errors_total", kind="die") == 2
    assert sample(m, "vllm:num_requests_running") == 0


# --------------------------------------------------------------------------- configuration and CLI


def test_config_validation_and_created_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        SimConfig(max_running=0)
    with pytest.raises(ValueError):
        SimConfig(error_rate=1.5)
    monkeypatch.setenv("VLLM_SIM_FIXED_CREATED", "123")
    assert SimConfig().resolved_created() == 123
    assert SimConfig(fixed_created=5).resolved_created() == 5
    args = build_parser().parse_args(
        ["--model", "m", "--port", "1", "--max-running", "3", "--error-rate", "0.5"]
    )
    config = config_from_args(args)
    assert (config.model, config.max_running, config.initial_faults().error_rate) == ("m", 3, 0.5)


def test_cli_serves_and_says_it_is_a_simulator() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "vllm_sim", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "SIMULATOR" in help_text and "--max-waiting" in help_text
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm_sim",
            "--model",
            "cli-model",
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"listening on (http://\S+)", line)
        assert url, line
        deadline = time.monotonic() + 10
        while True:
            try:
                r = httpx.get(url.group(1) + "/v1/models", trust_env=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert r.json()["data"][0]["id"] == "cli-model"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
