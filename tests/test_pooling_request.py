"""The endpoints that do not generate (embeddings, tokenize, detokenize, score, rerank), without a worker: how
their bodies are read and bounded, how they are routed by name (and why a chat call never reaches an embedding
model's pool), the budget reservation of their prompts, and their whole answers in the response cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounting.prices import parse_prices
from gateway.cache.backends import MemoryBackend
from gateway.cache.entry import RawEntry
from gateway.cache.service import CacheConfig, ResponseCache
from gateway.inference.by_name import route_by_name
from gateway.inference.endpoints import ENDPOINTS
from gateway.inference.pooling_request import embedding_inputs, prompt_of, score_sides, worker_body
from gateway.inference.usage import Usage
from gateway.limits.backend import MemoryBackend as LimitsMemory
from gateway.limits.service import Limits, to_units
from gateway.limits.upper_bound import pooled_texts
from gateway.outcome import Outcome, Step, finish
from gateway.routing import ActivePolicy, Route, pool_states, route, served_models
from router.decision import Caller
from router.errors import InvalidRequest, ModelNotFound
from router.policy import default_policy_dir, load_policy_set
from router.request_limits import DEFAULT_LIMITS
from vllm_sim.text import count_tokens
from workers.pool import Pool, Pools, Replica

pytestmark = pytest.mark.pure

POLICY = load_policy_set(default_policy_dir())  # catalogues demo-small (pool small) and demo-large (pool large)


def pool(name: str, model: str, runner: str = "generate", max_model_len: int | None = None) -> Pool:
    replica = Replica(f"http://{name}", name, healthy=True)
    if max_model_len is not None:
        replica.lists, replica.card = (model,), {"id": model, "max_model_len": max_model_len}
    return Pool(name, model, [replica], runner=runner)  # type: ignore[arg-type]


SMALL, LARGE = pool("small", "demo-small"), pool("large", "demo-large")
EMBED = pool("embed", "e5", "pooling", max_model_len=512)


def active(*pools: Pool) -> ActivePolicy:
    chosen = Pools(list(pools))
    return ActivePolicy(POLICY, chosen, time.time(), served_models(POLICY, chosen))


def parse(path: str, body: dict[str, Any]) -> Any:
    return ENDPOINTS[path].parse(msgspec.json.encode(body), DEFAULT_LIMITS)


# --- reading the bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "n"), [
    ("one text", 1), ([1, 2, 3], 1), (["a", "b"], 2), ([[1, 2], [3]], 2), ([], 1),
    ([{"role": "user", "content": "hi"}], 1), ([[{"role": "user", "content": "a"}], [{"role": "user"}]], 2),
])
def test_an_embeddings_input_counts_its_sequences(value: Any, n: int) -> None:
    assert embedding_inputs(value) == n
    parsed = parse("/v1/embeddings", {"model": "e5", "input": value})
    assert parsed.fields.model == "e5" and not parsed.fields.stream  # never streamed, whatever the body says


@pytest.mark.parametrize(("path", "body", "param", "code"), [
    ("/v1/embeddings", {"model": "e5"}, "input", "missing_required_parameter"),
    ("/v1/embeddings", {"input": 3}, "input", "invalid_type"),
    ("/v1/embeddings", {"input": ["x"] * 1025}, "input", "array_above_max_length"),
    ("/v1/embeddings", {"messages": [[{"role": "user"}] * 1500] * 2}, "messages", "array_above_max_length"),
    ("/tokenize", {"model": "e5"}, "prompt", "missing_required_parameter"),
    ("/tokenize", {"prompt": ["not", "a", "string"]}, "prompt", "invalid_type"),
    ("/detokenize", {"model": "e5"}, "tokens", "missing_required_parameter"),
    ("/detokenize", {"tokens": ["x"]}, "tokens[0]", "invalid_type"),
    ("/v1/score", {"queries": "q"}, "documents", "missing_required_parameter"),
    ("/v1/score", {"text_1": "q"}, "text_2", "missing_required_parameter"),
    ("/v1/score", {"queries": "q", "documents": ["d"] * 1025}, "documents", "array_above_max_length"),
    ("/v1/rerank", {"query": "q"}, "documents", "missing_required_parameter"),
    ("/v1/rerank", {"query": 3, "documents": ["d"]}, "query", "invalid_type"),
])
def test_a_bad_body_is_a_400_naming_the_parameter(path: str, body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(path, body)
    assert (info.value.param, info.value.code) == (param, code)


def test_the_sides_of_a_score_in_each_of_vllms_spellings() -> None:
    for first, second in (("queries", "documents"), ("queries", "items"), ("text_1", "text_2"), ("data_1", "data_2")):
        assert score_sides({first: "q", second: ["a", "b"]}) == ("q", ["a", "b"])
        parse("/v1/score", {first: "q", second: ["a", "b"]})
    assert score_sides({"query": "q", "documents": ["a"]}) == ("q", ["a"])
    assert prompt_of("rerank", {"query": "q", "documents": ["a", {"content": []}]}) == ["q", "a"]
    assert prompt_of("tokenize", {"prompt": "free"}) is None  # tokenizing uses no tokens: nothing to estimate


def test_the_worker_gets_the_clients_body_with_the_model_the_name_means() -> None:
    raw = b'{"input":"x","model":"auto","dimensions":8}'
    parsed = ENDPOINTS["/v1/embeddings"].parse(raw, DEFAULT_LIMITS)
    body, strip = worker_body(parsed, "e5", raw)
    assert msgspec.json.decode(body) == {"input": "x", "model": "e5", "dimensions": 8} and not strip
    same = b'{"model":"e5","input":"x"}'
    assert worker_body(ENDPOINTS["/v1/embeddings"].parse(same, DEFAULT_LIMITS), "e5", same)[0] is same


# --- routing by name ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/embeddings", "/tokenize", "/v1/score"])
@pytest.mark.parametrize("model", [None, ""])
def test_a_null_or_empty_model_is_auto_as_vllm_reads_it(path: str, model: str | None) -> None:
    body = {"model": model, "input": "a", "prompt": "a", "text_1": "a", "text_2": "b"}
    assert ENDPOINTS[path].parse(msgspec.json.encode(body), DEFAULT_LIMITS).fields.model == "auto"


def test_embeddings_go_to_the_named_models_pool_and_auto_to_the_only_one() -> None:
    a = active(SMALL, LARGE, EMBED)
    for name in ("e5", "auto"):
        chosen = route_by_name(a, name, "pooling", "/v1/embeddings", True)
        assert [(m, p.name) for m, p in chosen.targets] == [("e5", "embed")] and chosen.decision is None
        assert chosen.rule == "direct" and chosen.cache == POLICY.default_rule.cache_store
    assert route_by_name(a, "e5", "pooling", "/v1/embeddings", False).cache is None
    # Tokenizing: any pool, by name or alias (`fast` is demo-small's).
    assert route_by_name(a, "fast", None, "/tokenize", False).targets[0][1] is SMALL
    with pytest.raises(InvalidRequest) as info:  # `auto` cannot choose among three pools
        route_by_name(a, "auto", None, "/tokenize", False)
    assert (info.value.param, info.value.code) == ("model", "model_required")
    assert "demo-large, demo-small, e5" in str(info.value)


def test_a_name_whose_pool_serves_something_else_is_a_400_naming_the_model() -> None:
    a = active(SMALL, LARGE, EMBED, pool("embed2", "bge", "pooling"))
    with pytest.raises(InvalidRequest) as info:
        route_by_name(a, "demo-small", "pooling", "/v1/embeddings", True)
    assert (info.value.param, info.value.code) == ("model", "model_not_supported")
    assert "runner generate" in str(info.value)
    with pytest.raises(InvalidRequest) as info:
        route_by_name(a, "auto", "pooling", "/v1/embeddings", True)
    assert info.value.code == "model_required" and "bge, e5" in str(info.value)
    with pytest.raises(ModelNotFound) as missing:
        route_by_name(a, "nope", "pooling", "/v1/embeddings", True)
    assert "Valid models for /v1/embeddings: bge, e5." in str(missing.value)
    with pytest.raises(ModelNotFound) as none:
        route_by_name(active(SMALL, LARGE), "auto", "pooling", "/v1/embeddings", True)
    assert "no configured pool serves /v1/embeddings" in str(none.value)


def test_chat_never_reaches_an_embedding_models_pool() -> None:
    a = active(SMALL, LARGE, EMBED)
    with pytest.raises(InvalidRequest) as info:
        route(a, {"messages": []}, "chat", "e5", {}, Caller(), {})
    assert (info.value.param, info.value.code) == ("model", "model_not_supported")
    assert "serves embeddings, score and rerank, not chat completions" in str(info.value)
    assert served_models(POLICY, a.pools) == ()  # never derived as a candidate for `auto`
    assert pool_states(a.pools)["embed"].healthy is False and pool_states(a.pools)["small"].healthy
    # Nor a catalogued model on a pooling pool: its pool takes no chat.
    catalogued = active(pool("small", "demo-small", "pooling"), LARGE)
    with pytest.raises(InvalidRequest):
        route(catalogued, {"messages": []}, "chat", "demo-small", {}, Caller(), {})
    chosen = route(catalogued, {"messages": [{"role": "user", "content": "hi"}]}, "chat", "auto", {}, Caller(), {})
    assert chosen.targets[0][0] == "demo-large"
    # Only the endpoints routed by name have no classifier view.
    assert {p for p, e in ENDPOINTS.items() if e.routed_as is None} >= {
        "/v1/embeddings", "/tokenize", "/detokenize", "/v1/score", "/score", "/v1/rerank", "/rerank", "/v2/rerank"}


# --- the budget reservation ---------------------------------------------------------------------------

PRICES = parse_prices("""currency: USD
models:
  e5:
    - effective_from: 2026-01-01
      per_token: {input_per_million: 0.13, output_per_million: 0}
""", Path("prices.yaml"))


def reserve(kind: str, body: dict[str, Any], chosen: Route | None = None) -> tuple[int, int]:
    chosen = chosen or route_by_name(active(EMBED), "e5", "pooling", kind, True)
    size = len(msgspec.json.encode(body))
    return Limits(LimitsMemory(), PRICES, None).estimate(chosen, body, size, kind, time.time())  # type: ignore[arg-type]


def units(tokens: int) -> int:
    price = PRICES.price_at("e5", time.time())
    assert price is not None
    return to_units(price.cost(tokens, 0, 0))


def test_tokenizing_reserves_nothing_and_counts_no_tokens() -> None:
    assert reserve("tokenize", {"prompt": "x" * 10_000}) == (0, 0)
    assert reserve("detokenize", {"tokens": list(range(1000))}) == (0, 0)


def test_pooled_texts_count_what_the_engine_encodes() -> None:
    assert pooled_texts("embeddings", {"input": "x"}, (None, None)) == (1, 0, 0)
    assert pooled_texts("embeddings", {"input": ["a", "b", "c"]}, (None, None)) == (3, 0, 0)
    assert pooled_texts("embeddings", {"input": [5, 6, 7]}, (None, None)) == (1, 0, 0)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]
    assert pooled_texts("embeddings", {"messages": chat}, (None, None)) == (1, 0, 2)
    assert pooled_texts("embeddings", {"messages": [chat, chat[:1]]}, (None, None)) == (2, 0, 3)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]
    assert pooled_texts("embeddings", {"input": image}, (None, None)) == (1, None, 1)  # no byte count bounds it
    # One query against three documents: the query may be encoded with each of them (a cross-encoder).
    assert pooled_texts("score", {}, ("héllo", ["a", "b", "c"])) == (6, 2 * len("héllo".encode()), 0)
    assert pooled_texts("score", {}, (["a", "bb"], ["c", "d"])) == (4, 0, 0)
    assert pooled_texts("rerank", {}, ("q", [{"content": [{"type": "image_url"}]}])) == (2, None, 0)


def test_a_reservation_is_capped_by_the_window_and_refused_without_one() -> None:
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]
    assert reserve("embeddings", {"input": image})[1] == units(512) + 1  # the pool's window, as its workers told
    unknown = route_by_name(active(pool("embed", "e5", "pooling")), "e5", "pooling", "/v1/embeddings", True)
    with pytest.raises(InvalidRequest) as info:
        reserve("embeddings", {"input": image}, unknown)
    assert info.value.param == "input" and "not known yet" in str(info.value)
    assert reserve("embeddings", {"input": "text"}, unknown)[1] > 0  # text: its bytes bound it
    huge = {"input": ["x" * 2000] * 4}  # the window (512 per input) bounds it below the bytes
    assert reserve("embeddings", huge)[1] == units(4 * 512) + 1


@settings(max_examples=150, deadline=None)
@given(query=st.text(min_size=1, max_size=60), documents=st.lists(st.text(max_size=80), min_size=1, max_size=12),
       kind=st.sampled_from(["score", "rerank"]))
def test_a_score_reservation_covers_a_cross_encoder_and_a_bi_encoder(query: str, documents: list[str],
                                                                     kind: str) -> None:
    """Byte-level BPE counts at most a token per byte (tiktoken, as the simulator counts): with the template's
    tokens per sequence, what either kind of model encodes costs at most the reservation."""
    body = {"model": "e5", "query": query, "documents": documents} if kind == "rerank" else \
        {"model": "e5", "queries": query, "documents": documents}
    specials = 2  # BOS and a separator, far below the template's allowance per sequence
    cross = sum(count_tokens(query) + count_tokens(d) + specials for d in documents)
    bi = count_tokens(query) + sum(count_tokens(d) for d in documents) + specials * (len(documents) + 1)
    _, reserved = reserve(kind, body)
    assert reserved >= units(max(cross, bi))


@settings(max_examples=150, deadline=None)
@given(inputs=st.lists(st.text(max_size=200), min_size=1, max_size=20))
def test_an_embeddings_reservation_covers_its_inputs(inputs: list[str]) -> None:
    tokens = sum(count_tokens(t) + 2 for t in inputs)
    expected, reserved = reserve("embeddings", {"model": "e5", "input": inputs})
    assert reserved >= units(tokens) and expected == sum(count_tokens(t) for t in inputs)


# --- the response cache keeps a whole answer ----------------------------------------------------------

ANSWER = b'{"id":"embd-1","object":"list","model":"e5","data":[{"index":0,"embedding":[0.5]}],' \
         b'"usage":{"prompt_tokens":3,"total_tokens":3}}'


async def test_a_whole_answer_is_cached_as_the_worker_sent_it() -> None:
    cache = ResponseCache(MemoryBackend(100, 1_000_000), CacheConfig(key_prefix="pool:"))
    chosen = route_by_name(active(EMBED), "e5", "pooling", "/v1/embeddings", True)
    parsed = parse("/v1/embeddings", {"model": "e5", "input": "x"})

    async def call(kind: str = "embeddings", data: dict[str, Any] | None = None) -> tuple[Outcome, Any]:
        o = Outcome(request_id="r", model="e5", started=time.perf_counter(), tenant="acme")
        o.steps = (Step("cache store", cache.store),)
        return o, await cache.begin({}, chosen, data or parsed.data, parsed.fields, kind, o)

    o, ticket = await call()
    assert ticket.status == "miss"
    o.status, o.completed, o.usage = 200, True, Usage(prompt_tokens=3, total_tokens=3)
    ticket.answer(ANSWER)
    finish(o)
    await cache.aclose()
    o2, hit = await call()
    assert hit.status == "hit" and hit.entry == RawEntry(ANSWER, Usage(prompt_tokens=3, total_tokens=3), "e5")
    reply = cache.respond(hit, parsed.fields, o2, {})
    assert reply.content == ANSWER and reply.media_type == "application/json"
    assert o2.cache_hit and o2.usage is not None and o2.usage.prompt_tokens == 3
    # The same body at another endpoint, or another body, is another entry.
    assert (await call("score"))[1].status == "miss"
    assert (await call(data={**parsed.data, "encoding_format": "base64"}))[1].status == "miss"


async def test_an_answer_without_usage_or_not_json_is_not_cached() -> None:
    cache = ResponseCache(MemoryBackend(100, 1_000_000), CacheConfig(key_prefix="pool2:"))
    chosen = route_by_name(active(EMBED), "e5", "pooling", "/v1/embeddings", True)
    for body, usage in ((b"\x00\x01binary", Usage(prompt_tokens=1)), (ANSWER, None)):
        parsed = parse("/v1/embeddings", {"model": "e5", "input": body.hex()})
        o = Outcome(request_id="r", model="e5", started=time.perf_counter(), tenant="acme")
        o.steps = (Step("cache store", cache.store),)
        ticket = await cache.begin({}, chosen, parsed.data, parsed.fields, "embeddings", o)
        o.status, o.completed, o.usage = 200, True, usage
        ticket.answer(body)
        finish(o)
        await cache.aclose()
        again = Outcome(request_id="r2", model="e5", started=time.perf_counter(), tenant="acme")
        assert (await cache.begin({}, chosen, parsed.data, parsed.fields, "embeddings", again)).status == "miss"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=20)
FIELDS = {"/v1/embeddings": ("input", "messages"), "/v1/score": ("queries", "documents", "text_1", "text_2"),
          "/v1/rerank": ("query", "documents")}


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(sorted(FIELDS)), data=st.data())
def test_any_body_is_read_and_reserved_or_refused_with_a_400(path: str, data: st.DataObject) -> None:
    """Whatever JSON holds the fields the gateway reads, reading and pricing it either works or is a 400."""
    body = {name: data.draw(JSON) for name in FIELDS[path] if data.draw(st.booleans())}
    kind = ENDPOINTS[path].kind
    try:
        parsed = parse(path, {"model": "e5", **body})
        expected, reserved = reserve(kind, parsed.data)
    except InvalidRequest:
        return
    assert expected >= 0 and reserved > 0


def test_a_catalogue_listing_only_an_embedding_model_lets_auto_route_chat_among_the_pools() -> None:
    """The shipped catalogue's demo-small on a pooling pool, and a generating pool it does not list: chat's
    `auto` is routed among the generating pools' own models (derived), never to the embedding model."""
    embedding, free = pool("small", "demo-small", "pooling"), pool("g", "free-chat", max_model_len=4096)
    a = active(embedding, free)
    assert a.derived and "auto" in a.routable
    chosen = route(a, {"messages": [{"role": "user", "content": "hi"}]}, "chat", "auto", {}, Caller(), {})
    assert [(m, p.name) for m, p in chosen.targets] == [("free-chat", "g")]
    assert "auto" not in active(embedding).routable  # nothing that writes text: no `auto` for chat
    assert route_by_name(active(embedding), "auto", "pooling", "/v1/embeddings", True).targets[0][1] is embedding
