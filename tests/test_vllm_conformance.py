"""vLLM's API through the gateway, against vLLM itself: a matrix of requests, each sent to a real vLLM 0.32 engine
directly and through the gateway, must come back the same: status, body, text, finish reasons, usage, logprobs,
tool calls and, for streams, every chunk in order. Compared as raw bytes (httpx) and as the official `openai`
SDK parses them; only `created` (a clock) and tool call ids (random) are normalised. The request id is the
client's (`x-request-id`), which vLLM makes the answer's id.

Sampling is greedy (or seeded, for `n` > 1), so both sides of a pair write the same tokens. The engine runs with
a tool parser (tests/conftest.py), so forced tool calls come back as tool calls.

What the gateway answers differently, by design, is at the end (and in docs/api.md, "Differences from vLLM").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from router.lax import lax_bool
from tests.gateway_process import GatewayProcess, start_gateway
from tests.test_router_policy import write_policy
from tests.vllm_engine import VllmEngine

pytestmark = pytest.mark.vllm

CHAT, COMPLETIONS = "chat/completions", "completions"
ASK = [{"role": "user", "content": "Tell me about routing gateways."}]
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}
SEEDED: dict[str, Any] = {"temperature": 0.9, "seed": 3}  # vLLM refuses n > 1 with greedy sampling
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                   "required": ["city"], "additionalProperties": False}}}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
USAGE = {"include_usage": True}
EVERY_CHUNK = {"include_usage": True, "continuous_usage_stats": True}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any]
    status: int = 200
    sdk: bool = True  # also through the official SDK (a body it cannot send as such is raw only)
    checks: tuple[str, ...] = field(default=())  # what the answer must show besides being vLLM's own

    @property
    def stream(self) -> bool:
        try:
            return lax_bool(self.body.get("stream") or False)
        except ValueError:
            return False


def chat(name: str, status: int = 200, checks: tuple[str, ...] = (), sdk: bool = True, **body: Any) -> Case:
    return Case(name, CHAT, {"model": "tiny", "messages": ASK, "max_tokens": 6, **GREEDY, **body}, status, sdk, checks)


def completion(name: str, status: int = 200, checks: tuple[str, ...] = (), sdk: bool = True, **body: Any) -> Case:
    return Case(name, COMPLETIONS, {"model": "tiny", "prompt": "The gateway", "max_tokens": 5, **GREEDY, **body},
                status, sdk, checks)


CASES = [
    # answers and streams, with and without usage, usage on every chunk, several choices
    chat("chat"),
    chat("chat-stream", stream=True, checks=("fingerprint on finished chunks", "no usage")),
    chat("chat-stream-usage", stream=True, stream_options=USAGE, checks=("usage event",)),
    chat("chat-stream-empty-options", stream=True, stream_options={}, checks=("no usage",)),
    chat("chat-stream-every-chunk-unasked", stream=True, stream_options={"continuous_usage_stats": True},
         checks=("no usage",)),
    chat("chat-stream-every-chunk", stream=True, stream_options=EVERY_CHUNK, checks=("usage on every chunk",)),
    chat("chat-n", n=2, **SEEDED),
    chat("chat-n-stop-stream", n=3, stop=["q", "a"], max_tokens=8, stream=True, temperature=1.5, seed=3,
         checks=("fingerprint on finished chunks", "a choice finishes first")),
    chat("chat-n-stream-every-chunk", n=2, stream=True, stream_options=EVERY_CHUNK, **SEEDED),
    # sampling: stops, penalties, vLLM's own fields
    chat("chat-stop", stop=["q"], include_stop_str_in_output=True, max_tokens=10),
    chat("chat-penalties", presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.3, max_tokens=10),
    chat("chat-vllm-sampling", top_k=5, min_p=0.1, top_p=0.9, min_tokens=3, temperature=0.7, seed=11,
         stop_token_ids=[2], skip_special_tokens=False),
    chat("chat-logprobs", logprobs=True, top_logprobs=3),
    chat("chat-logprobs-stream", logprobs=True, top_logprobs=2, stream=True, stream_options=USAGE),
    chat("chat-multi-part", messages=[{"role": "system", "content": "Be short."}, {"role": "user", "content": [
        {"type": "text", "text": "Tell me about"}, {"type": "text", "text": " routing gateways."}]}]),
    # structured outputs
    chat("chat-json-schema", response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
         max_tokens=24),
    chat("chat-json-object", response_format={"type": "json_object"}, max_tokens=8),
    chat("chat-choice", structured_outputs={"choice": ["yes", "no"]}),
    chat("chat-regex-stream", structured_outputs={"regex": "[a-z]{3}"}, stream=True),
    chat("chat-guided-json-removed", guided_json=SCHEMA),  # vLLM 0.32 ignores it (and logs a warning)
    # tools
    chat("chat-tool-required", tools=[WEATHER], tool_choice="required", max_tokens=80, checks=("tool call",)),
    chat("chat-tool-named-stream", tools=[WEATHER], stream=True, max_tokens=80, checks=("tool call",),
         tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    chat("chat-tool-auto", tools=[WEATHER], tool_choice="auto"),
    # values vLLM reads leniently (pydantic's lax mode): the gateway reads them the same way
    chat("lax-max-tokens-string", max_tokens="5", sdk=False),
    chat("lax-max-tokens-float", max_tokens=5.0, sdk=False),
    chat("lax-stream-yes", stream="yes", sdk=False, checks=("fingerprint on finished chunks", "no usage")),
    chat("lax-usage-flag", stream=True, stream_options={"include_usage": "on"}, sdk=False, checks=("usage event",)),
    chat("lax-logprobs-and-n", logprobs="true", top_logprobs=2.0, n="1", max_completion_tokens="4", sdk=False),
    chat("lax-stream-false-string", stream="false", stream_options=USAGE, sdk=False),  # vLLM: truthy, then False
    chat("null-model", model=None, sdk=False),
    # completions: several prompts, token ids, echo, logprobs
    completion("completion"),
    completion("completion-prompts", prompt=["The gateway", "Hello"]),
    completion("completion-token-ids", prompt=[5, 6, 7, 8]),
    completion("completion-token-id-lists", prompt=[[5, 6], [7, 8, 9]]),
    completion("completion-lax-token-ids", prompt=["5", 6.0, 7], sdk=False),
    completion("completion-echo-only", echo=True, max_tokens=0),
    completion("completion-logprobs", logprobs=2, prompt=["The gateway", "Hello"]),
    completion("completion-prompts-stream", prompt=["The gateway", "Hello"], stream=True,
               checks=("fingerprint on finished chunks", "no usage")),
    completion("completion-prompts-stream-every-chunk", prompt=["The gateway", "Hello"], stream=True,
               stream_options=EVERY_CHUNK, checks=("usage on every chunk",)),
    completion("completion-n-stream-usage", n=2, stream=True, stream_options=USAGE, **SEEDED),
    # errors vLLM raises itself: its status and envelope, unchanged
    chat("error-context-overflow", 400, messages=[{"role": "user", "content": "routing " * 1500}]),
    chat("error-context-overflow-tokens", 400, messages=[{"role": "user", "content": "q" * 1100}]),
    chat("error-temperature", 400, temperature=-1),
    chat("error-top-k", 400, top_k=-5),
    chat("error-n-zero", 400, n=0),
    chat("error-max-tokens-zero", 400, max_tokens=0),
    chat("error-options-without-stream", 400, stream_options=USAGE),
    chat("error-top-logprobs-string", 400, logprobs=True, top_logprobs="2", sdk=False),
    chat("error-top-logprobs-below", 400, logprobs=True, top_logprobs=-2),
    chat("error-seed-past-64-bits", 400, seed=2**64),
    chat("error-unknown-tool", 400, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}),
    chat("error-no-messages", 400, messages=[]),
    chat("error-stop-type", 400, stop=5),
    completion("error-no-prompts", 400, prompt=[]),
    completion("error-token-out-of-vocabulary", 400, prompt=[99999]),
    completion("error-logprobs-below", 400, logprobs=-2),
    completion("error-mixed-prompt", 400, prompt=["x", 5], sdk=False),
]


@pytest.fixture(scope="module")
def gw(vllm_engine: VllmEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway in front of the engine alone; no cache (a repeated request is the worker's again)."""
    config = {"pools": [{"name": "tiny", "model": "tiny", "replicas": [vllm_engine.base_url]}],
              "cache_enabled": False}
    gateway = start_gateway(tmp_path_factory.mktemp("gw-conformance"), config)
    yield gateway
    gateway.stop()


def normalized(raw: bytes) -> bytes:
    """`raw` less what vLLM makes anew for each request: the clock, tool call ids."""
    raw = re.sub(rb'"created":\d+', b'"created":0', raw)
    return re.sub(rb'"id":"chatcmpl-tool-[0-9a-f]+"', b'"id":"chatcmpl-tool-"', raw)


def datas(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]


def per_choice(raw: bytes) -> dict[Any, list[bytes]]:
    """A stream's events by choice (the usage event and `[DONE]` under None), each choice's in order.

    A completions call with several prompts is one engine request per prompt, whose chunks vLLM interleaves
    in the order they come: that order is the engine's, not the gateway's, and varies between two calls."""
    out: dict[Any, list[bytes]] = {}
    for event in raw.split(b"\n\n"):
        if event:
            choices = json.loads(event[6:])["choices"] if event.startswith(b"data: {") else []
            out.setdefault(choices[0]["index"] if choices else None, []).append(event)
    return out


def merged(chunks: list[dict[str, Any]]) -> dict[Any, Any]:
    """What a stream's chunks say, however its tokens were grouped into chunks: per choice its text, tool call
    arguments, logprobs and finish; the usage event. Two streams of the same tokens may group them differently
    when the engine's API server falls behind its engine core (a busy machine): that grouping is the engine's."""
    out: dict[Any, Any] = {}
    for chunk in chunks:
        if not chunk["choices"]:
            out["usage event"] = chunk
            continue
        choice = chunk["choices"][0]
        seen = out.setdefault(choice["index"], {"text": "", "tools": {}, "logprobs": [], "finish": None})
        delta = choice.get("delta") or {}
        seen["text"] += choice.get("text") or delta.get("content") or ""
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            tools = seen["tools"]
            tools[call["index"]] = tools.get(call["index"], "") + (function.get("name") or "") + (
                function.get("arguments") or "")
        seen["logprobs"] += (choice.get("logprobs") or {}).get("content") or []
        if choice.get("finish_reason") is not None:
            seen["finish"] = (choice["finish_reason"], choice.get("stop_reason"), chunk.get("system_fingerprint"))
    return out


def post(url: str, case: Case, rid: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url, content=json.dumps(case.body), timeout=60,
                      headers={"content-type": "application/json", "x-request-id": rid, **(headers or {})})


def check(case: Case, raw: bytes) -> None:
    """What the case shows, on the gateway's answer (equal to vLLM's: these say the matrix tests something)."""
    chunks = datas(raw)
    finished = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    for what in case.checks:
        if what == "fingerprint on finished chunks":
            assert finished and all(c["system_fingerprint"].startswith("vllm-0.32.0") for c in finished)
        elif what == "no usage":
            assert b'"usage"' not in raw
        elif what == "usage event":
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
            assert chunks[-1]["system_fingerprint"].startswith("vllm-0.32.0")
            assert all("system_fingerprint" not in c for c in chunks[:-1])
        elif what == "usage on every chunk":
            assert all(c.get("usage") for c in chunks)
        elif what == "a choice finishes first":
            assert chunks.index(finished[0]) < len(chunks) - len(finished)
        elif what == "tool call":
            answers = chunks or [json.loads(raw)]
            parts = [ch.get("delta") or ch.get("message") or {} for c in answers for ch in c["choices"]]
            assert any(part.get("tool_calls") for part in parts)


REGROUPED_TRIES = 5  # a pair whose streams group the same tokens differently is asked again, this often


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_raw_bytes_equal_vllms(case: Case, gw: GatewayProcess, vllm_engine: VllmEngine) -> None:
    rid = f"conformance-{case.name}"
    for _ in range(REGROUPED_TRIES):
        direct = post(f"{vllm_engine.base_url}/v1/{case.path}", case, rid)
        via = post(f"{gw.api}/{case.path}", case, rid, gw.auth)
        assert (direct.status_code, via.status_code) == (case.status, case.status), via.text
        assert via.headers["content-type"] == direct.headers["content-type"]
        expected, got = normalized(direct.content), normalized(via.content)
        if case.path == COMPLETIONS and case.stream and isinstance(case.body["prompt"], list):
            expected, got = per_choice(expected), per_choice(got)  # type: ignore[assignment]
        if got == expected or not case.stream:
            break
        # the same tokens, grouped otherwise (compared less the clock: the two calls may fall in two seconds)
        assert merged(datas(normalized(via.content))) == merged(datas(normalized(direct.content)))
    assert got == expected
    assert (b"data: " in via.content) == case.stream
    if case.status != 200:
        error = via.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == case.status
    check(case, via.content)


def sdk_answer(client: openai.OpenAI, case: Case, rid: str) -> Any:
    """What the SDK makes of the case's answer: the parsed answer or chunks, or the error's status and body."""
    extra = dict(case.body)
    model = extra.pop("model")
    main = {"messages": extra.pop("messages")} if case.path == CHAT else {"prompt": extra.pop("prompt")}
    stream = bool(extra.pop("stream", False))
    resource: Any = client.chat.completions if case.path == CHAT else client.completions
    try:
        answer = resource.create(model=model, **main, stream=stream, extra_body=extra,
                                 extra_headers={"x-request-id": rid})
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.json()
    if not stream:
        return json.loads(normalized(answer.model_dump_json().encode()))
    chunks = [json.loads(normalized(c.model_dump_json().encode())) for c in answer]
    if case.path == COMPLETIONS and isinstance(case.body["prompt"], list):  # interleaved at random (per_choice)
        chunks.sort(key=lambda c: c["choices"][0]["index"] if c["choices"] else 1 << 30)
    return chunks


@pytest.mark.parametrize("case", [c for c in CASES if c.sdk], ids=[c.name for c in CASES if c.sdk])
def test_the_sdk_reads_vllms_answer(case: Case, gw: GatewayProcess, vllm_engine: VllmEngine) -> None:
    rid = f"conformance-sdk-{case.name}"
    direct = openai.OpenAI(base_url=f"{vllm_engine.base_url}/v1", api_key="unused", max_retries=0)
    via = openai.OpenAI(base_url=gw.api, api_key=gw.key, max_retries=0)
    for _ in range(REGROUPED_TRIES):
        expected = sdk_answer(direct, case, rid)
        got = sdk_answer(via, case, rid)
        if got == expected or not case.stream:
            break
        assert merged(got) == merged(expected)  # the same tokens, grouped otherwise (see `merged`)
    assert got == expected
    if case.status != 200:
        assert expected[0] == case.status


# --- what the gateway answers itself, by design (docs/api.md, "Differences from vLLM") --------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"n": "two"}, "n"), ({"max_tokens": 5.5}, "max_tokens"), ({"stream": "maybe"}, "stream"),
    ({"stream": True, "stream_options": {"include_usage": "sometimes"}}, "stream_options.include_usage"),
])
def test_a_value_neither_can_read_is_refused_by_the_gateway_in_its_own_words(
        body: dict[str, Any], param: str, gw: GatewayProcess, vllm_engine: VllmEngine) -> None:
    """A field the gateway acts on, with a value vLLM cannot read either: both 400, the gateway's error names
    the field in OpenAI's words, vLLM's is pydantic's."""
    full = {"model": "tiny", "messages": ASK, **body}
    direct = httpx.post(f"{vllm_engine.base_url}/v1/chat/completions", json=full, timeout=60)
    via = httpx.post(f"{gw.api}/chat/completions", json=full, headers=gw.auth, timeout=60)
    assert direct.status_code == via.status_code == 400
    assert direct.json()["error"]["param"] == f"body.{param}"
    assert via.json()["error"]["param"] == param
    assert via.json()["error"]["type"] == "invalid_request_error" and via.json()["error"]["code"] == "invalid_type"


def test_past_the_gateways_limits_is_the_gateways_400(gw: GatewayProcess, vllm_engine: VllmEngine) -> None:
    """The policy's request limits (routing.yaml `defaults.request_limits`) are the gateway's own: vLLM's
    `--max-logprobs` is 20, OpenAI's limit for completions' `logprobs` (the gateway's default) is 5."""
    body = {"model": "tiny", "prompt": "The gateway", "max_tokens": 2, "logprobs": 8}
    assert httpx.post(f"{vllm_engine.base_url}/v1/completions", json=body, timeout=60).status_code == 200
    via = httpx.post(f"{gw.api}/completions", json=body, headers=gw.auth, timeout=60)
    assert via.status_code == 400 and via.json()["error"]["param"] == "logprobs"
    assert "the gateway's limit" in via.json()["error"]["message"]


# --- the response cache: a stream replayed from it ends as vLLM's own ------------------------------------------


CACHED_MODELS = """\
models:
  - {name: tiny, pool: tiny, context_window: 1024, tier: 1, scores: {chat: 0.5}}
"""
CACHED_ROUTING = """\
defaults:
  reference_model: tiny
  cache: {ttl_s: 600}
rules:
  - {name: default, route: smallest_capable}
"""


@pytest.fixture(scope="module")
def cached_gw(vllm_engine: VllmEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway with its response cache (in memory) and a policy that stores deterministic calls to tiny."""
    policies = write_policy(tmp_path_factory.mktemp("policy-cache"), CACHED_ROUTING, CACHED_MODELS)
    config = {"pools": [{"name": "tiny", "model": "tiny", "replicas": [vllm_engine.base_url]}],
              "policies_dir": str(policies)}
    gateway = start_gateway(tmp_path_factory.mktemp("gw-conformance-cache"), config)
    yield gateway
    gateway.stop()


def ends(raw: bytes) -> list[tuple[Any, ...]]:
    """Each choice's last chunk and the usage event: finish, usage and fingerprint (what a replay, whose chunks
    are coarser than the worker's, must say as the worker said it)."""
    return [(c["choices"][0]["index"] if c["choices"] else None,
             c["choices"][0]["finish_reason"] if c["choices"] else None, c.get("usage"), c.get("system_fingerprint"))
            for c in datas(raw) if not c["choices"] or c["choices"][0]["finish_reason"] is not None]


@pytest.mark.parametrize("options", [None, USAGE, EVERY_CHUNK], ids=["no-usage", "usage", "usage-every-chunk"])
def test_a_stream_from_the_cache_ends_as_vllms(options: dict[str, Any] | None, cached_gw: GatewayProcess,
                                               vllm_engine: VllmEngine) -> None:
    # `stream_options` is not in the cache key (one entry serves every way of streaming it): a seed of its own
    body = {"model": "tiny", "messages": ASK, "max_tokens": 6, "temperature": 0, "seed": 100 + len(options or ()),
            "stream": True, "stream_options": options}
    rid = {"x-request-id": f"conformance-cache-{len(options or ())}"}
    direct = httpx.post(f"{vllm_engine.base_url}/v1/chat/completions", json=body, headers=rid, timeout=60)
    first = httpx.post(f"{cached_gw.api}/chat/completions", json=body, headers={**cached_gw.auth, **rid}, timeout=60)
    assert first.headers["x-gateway-cache"] == "miss"
    for _ in range(20):  # the store is made off the request path
        again = httpx.post(f"{cached_gw.api}/chat/completions", json=body, headers={**cached_gw.auth, **rid},
                           timeout=60)
        if again.headers["x-gateway-cache"] == "hit":
            break
    assert again.headers["x-gateway-cache"] == "hit"
    assert normalized(first.content) == normalized(direct.content)  # from the worker: its bytes
    assert ends(again.content) == ends(direct.content)
    assert merged(datas(again.content))[0]["text"] == merged(datas(direct.content))[0]["text"]
    if options == EVERY_CHUNK:
        assert all(c["usage"] for c in datas(again.content))
    else:
        assert (b'"usage"' in again.content) == (options is not None)
