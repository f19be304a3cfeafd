"""Routing decisions: match conditions, smallest capable, caps, cache, fallbacks, errors, the demo policy."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from router.classify import classify
from router.decide import Caller, PoolState, RouteDecision, decide
from router.errors import ModelNotFound, NoCapableModel, NoHealthyModel, PolicyDenied
from router.policy import PolicySet, load_policy_set
from router.policytests import load_policy_tests, run_policy_tests
from router.pricing import TokenRates, expected_cost
from router.quality import probe_for
from tests.test_router_policy import write_policy

pytestmark = pytest.mark.pure

D = Decimal
RATES = {
    "tiny": TokenRates(D("0.10"), D("0.05"), D("0.20"), "USD"),
    "mid": TokenRates(D("0.50"), D("0.25"), D("1.00"), "USD"),
    "mid2": TokenRates(D("0.50"), D("0.25"), D("1.00"), "USD"),
    "big": TokenRates(D("2.00"), D("1.00"), D("4.00"), "USD"),
}
HEALTHY = {p: PoolState(True, 0.0) for p in ("p-tiny", "p-mid", "p-mid2", "p-big")}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def chat(content: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def make(tmp_path: Path) -> Any:
    counter = iter(range(1000))

    def make_policy(routing: str, **kw: Any) -> PolicySet:
        return load_policy_set(write_policy(tmp_path / f"p{next(counter)}", routing=routing, **kw))

    return make_policy


def route(policy: PolicySet, body: dict[str, Any], model: str = "auto", caller: Caller | None = None,
          health: dict[str, PoolState] | None = None, rates: dict[str, TokenRates] | None = None,
          headers: dict[str, str] | None = None, kind: str = "chat") -> RouteDecision:
    f = classify(body, kind, headers or {}, policy.classifier)  # type: ignore[arg-type]
    return decide(f, caller or Caller(), model, policy, HEALTHY if health is None else health,
                  RATES if rates is None else rates)


SMALLEST = "rules:\n  - name: default\n    route: smallest_capable\n"


# ------------------------------------------------------------------------------------- smallest capable


def test_smallest_capable_is_the_cheapest_model_that_fits(make: Any) -> None:
    p = make(SMALLEST)
    d = route(p, chat(max_tokens=50))
    assert (d.model, d.pool, d.rule) == ("tiny", "p-tiny", "default")
    assert d.expected_cost == expected_cost(RATES["tiny"], classify(chat(max_tokens=50), "chat", {},
                                                                    p.classifier).prompt_tokens, 50)
    assert [(t.subject, t.ok) for t in d.trace if t.step == "candidate"] == [
        ("tiny", True), ("mid", True), ("mid2", True), ("big", True)]
    assert [t.detail for t in d.trace if t.step == "choice"] == ["lowest expected cost"]
    assert route(p, chat(tools=[TOOL])).model in ("mid", "mid2")  # tiny has no tools
    d = route(p, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}))
    assert d.model == "big"
    assert "does not support JSON-schema output" in next(t.detail for t in d.trace if t.subject == "tiny")
    # context: a prompt + max_tokens beyond tiny's 2048 and mid's 8192
    d = route(p, chat(max_tokens=9000))
    assert d.model == "big"
    assert next(t.detail for t in d.trace if t.subject == "tiny").startswith("context window 2,048 < 9,")


def test_cost_not_size_decides(make: Any) -> None:
    p = make(SMALLEST)
    rates = {**RATES, "big": TokenRates(D("0.01"), D("0.01"), D("0.01"), "USD")}
    assert route(p, chat(), rates=rates).model == "big"


def test_ties_go_to_the_less_loaded_pool(make: Any) -> None:
    p = make(SMALLEST)
    body = chat(tools=[TOOL])
    busy_mid = {**HEALTHY, "p-mid": PoolState(True, 0.7), "p-mid2": PoolState(True, 0.2)}
    d = route(p, body, health=busy_mid)
    assert d.model == "mid2"
    assert next(t.detail for t in d.trace if t.step == "choice") == \
        "lowest expected cost (tie broken by the less loaded pool)"
    busy_mid2 = {**HEALTHY, "p-mid": PoolState(True, 0.1), "p-mid2": PoolState(True, 0.9)}
    assert route(p, body, health=busy_mid2).model == "mid"


def test_without_rates_the_tier_stands_in_for_size(make: Any) -> None:
    p = make(SMALLEST)
    d = route(p, chat(tools=[TOOL]), rates={}, health={**HEALTHY, "p-mid": PoolState(True, 0.5)})
    assert d.model == "mid2" and d.expected_cost is None and d.currency is None  # tier 2, less loaded
    assert next(t.detail for t in d.trace if t.step == "choice") == "lowest tier (no prices for the candidates)"
    # priced models come before unpriced ones
    assert route(p, chat(), rates={"big": RATES["big"]}).model == "big"


def test_min_tier_and_complexity(make: Any) -> None:
    p = make("rules:\n  - name: strong\n    route: {smallest_capable: {min_tier: 2}}\n")
    d = route(p, chat())
    assert d.model == "mid"
    assert next(t.detail for t in d.trace if t.subject == "tiny") == "tier 1 < 2"
    p = make("rules:\n  - name: as-complex\n    route: {smallest_capable: {min_tier: complexity}}\n")
    assert route(p, chat("Hello")).model == "tiny"  # tier 1
    d = route(p, chat("What is 12 * 7?"))  # math: complexity tier 2
    assert d.model == "mid" and next(t.detail for t in d.trace if t.subject == "tiny") == "tier 1 < 2"


def test_candidates_list(make: Any) -> None:
    p = make("rules:\n  - name: listed\n    route: {smallest_capable: {candidates: [best, mid2]}}\n")
    d = route(p, chat())
    assert d.model == "mid2"
    assert [t.subject for t in d.trace if t.step == "candidate"] == ["big", "mid2"]  # aliases resolved


def test_min_category_score(make: Any) -> None:
    p = make("rules:\n  - name: good-at-it\n    route: {smallest_capable: {min_score: 0.85}}\n")
    d = route(p, chat("My python code fails"))
    assert d.model == "mid2"  # code 0.9; mid has 0.7, tiny none
    details = {t.subject: t.detail for t in d.trace if t.step == "candidate"}
    assert details["tiny"] == "no score for category code" and details["mid"] == "code score 0.7 < 0.85"


def test_unhealthy_pools_are_skipped(make: Any) -> None:
    p = make(SMALLEST)
    health = {**HEALTHY, "p-tiny": PoolState(False, 0.0)}
    d = route(p, chat(), health=health)
    assert d.model in ("mid", "mid2")
    assert next(t.detail for t in d.trace if t.subject == "tiny") == "pool `p-tiny` is unhealthy"
    d = route(p, chat(), health={k: v for k, v in HEALTHY.items() if k != "p-tiny"})
    assert next(t.detail for t in d.trace if t.subject == "tiny") == "pool `p-tiny` has no state (is it configured?)"


def test_capable_models_all_unhealthy_is_503(make: Any) -> None:
    p = make(SMALLEST)
    health = {**HEALTHY, "p-big": PoolState(False)}
    with pytest.raises(NoHealthyModel) as info:
        route(p, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
              health=health)
    exc = info.value
    assert exc.status == 503 and exc.code == "no_healthy_model" and exc.headers == {"retry-after": "2"}
    assert "big (pool p-big) could, but its pool is unhealthy" in exc.message
    assert exc.rule == "default" and any(t.subject == "big" and not t.ok for t in exc.trace)  # type: ignore[attr-defined]


def test_no_capable_model_is_a_400_that_says_why(make: Any) -> None:
    models = """\
        models:
          - {name: long, pool: a, context_window: 32768, tier: 2, capabilities: [long_context]}
          - {name: tooly, pool: b, context_window: 8192, tier: 2, capabilities: [tools]}
        """
    p = make(SMALLEST, models=models, classify=None)
    health = {"a": PoolState(True), "b": PoolState(True)}
    with pytest.raises(NoCapableModel) as info:
        route(p, chat(tools=[TOOL], max_tokens=20000), health=health, rates={})
    exc = info.value
    assert exc.status == 400 and exc.type == "invalid_request_error" and exc.code == "no_capable_model"
    assert "no model with a context window of at least 20,0" in exc.message
    assert "tokens supports tool calls" in exc.message
    assert "long: does not support tool calls; tooly: does not support long context, context window 8,192 < 20,0" \
        in exc.message
    with pytest.raises(NoCapableModel, match=r"no model has a context window of at least 40,0\d\d tokens "
                                            r"\(the largest is 32,768\)"):
        route(p, chat(max_tokens=40000), health=health, rates={})
    with pytest.raises(NoCapableModel, match="no model supports image input"):
        route(p, chat(max_tokens=10) | {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x"}}]}]}, health=health, rates={})


# ------------------------------------------------------------------------------- actions of a rule


def test_max_tokens_cap(make: Any) -> None:
    p = make("rules:\n  - name: capped\n    route: smallest_capable\n    max_tokens: 100\n")
    d = route(p, chat())  # no max_tokens: the cap is set
    assert (d.max_tokens_cap, d.max_tokens) == (100, 100)
    d = route(p, chat(max_tokens=5000))  # lowered to the cap, and routed as if it asked for 100
    assert (d.model, d.max_tokens) == ("tiny", 100)
    assert any(t.step == "max_tokens" and t.detail == "capped at 100 by the rule (asked: 5,000)" for t in d.trace)
    d = route(p, chat(max_tokens=50))  # already within: unchanged
    assert (d.max_tokens_cap, d.max_tokens) == (100, None)
    d = route(p, {"prompt": "hi"}, kind="completion")  # the API's default of 16 is within the cap
    assert d.max_tokens is None
    assert route(make(SMALLEST), chat(max_tokens=5000)).max_tokens_cap is None


def test_deny(make: Any) -> None:
    p = make("rules:\n  - name: no-guests\n    match: {tenant: guest}\n    deny: Guests may not call models.\n"
             + SMALLEST[len("rules:\n"):])
    with pytest.raises(PolicyDenied) as info:
        route(p, chat(), caller=Caller(tenant="guest"))
    exc = info.value
    assert (exc.status, exc.type, exc.code, exc.message) == (403, "permission_error", "policy_denied",
                                                             "Guests may not call models.")
    assert exc.rule == "no-guests" and [(t.subject, t.ok) for t in exc.trace] == [("no-guests", True)]  # type: ignore[attr-defined]
    assert route(p, chat(), caller=Caller(tenant="acme")).rule == "default"


def test_fixed_model_and_requested_model(make: Any) -> None:
    routing = """\
        rules:
          - name: honour
            match: {requested: [model, alias]}
            route: requested
          - name: pinned
            match: {tenant: acme}
            route: {model: best}
          - name: default
            route: smallest_capable
        """
    p = make(routing)
    assert (route(p, chat(), caller=Caller(tenant="acme")).model, "pinned") == ("big", "pinned")
    d = route(p, chat(), model="mid2")
    assert (d.model, d.rule, d.requested_model) == ("mid2", "honour", "mid2")
    assert route(p, chat(), model="quick").model == "tiny"
    # a requested model that cannot serve the request: 400 naming the model
    with pytest.raises(NoCapableModel) as info:
        route(p, chat(tools=[TOOL]), model="quick")
    assert info.value.param == "model"
    assert "The requested model cannot serve this request: `tiny` does not support tool calls" in info.value.message
    # a requested model whose pool is down: its fallback chain (tiny -> mid)
    d = route(p, chat(), model="tiny", health={**HEALTHY, "p-tiny": PoolState(False)})
    assert d.model == "mid" and next(t.detail for t in d.trace if t.step == "choice") == \
        "fallback: `tiny` is unavailable"
    with pytest.raises(NoHealthyModel):
        route(p, chat(), model="tiny", health={**HEALTHY, "p-tiny": PoolState(False), "p-mid": PoolState(False)})
    with pytest.raises(ModelNotFound) as nf:
        route(p, chat(), model="gpt-9")
    assert nf.value.status == 404 and "Valid models: auto, tiny, mid, mid2, big, best, quick" in nf.value.message


def test_fallbacks(make: Any) -> None:
    p = make(SMALLEST)
    d = route(p, chat())
    assert [(t.model, t.pool) for t in d.fallbacks] == [("mid", "p-mid")]  # tiny's chain
    p = make("rules:\n  - name: r\n    route: smallest_capable\n    fallbacks: [big, tiny, mid]\n")
    d = route(p, chat(max_tokens=3000))  # tiny cannot take 3000 tokens: not a fallback
    assert d.model == "mid" and [t.model for t in d.fallbacks] == ["big"]
    assert next(t.detail for t in d.trace if t.step == "fallback" and t.subject == "tiny").startswith(
        "context window 2,048")
    d = route(p, chat(max_tokens=3000), health={**HEALTHY, "p-big": PoolState(False)})
    assert d.fallbacks == ()


def test_cache_policies(make: Any) -> None:
    routing = """\
        defaults: {cache: {ttl_s: 300}}
        rules:
          - name: private
            match: {team: secret}
            cache: no-store
          - name: shared
            match: {team: docs}
            cache: {ttl_s: 3600, when: always, namespace: faq}
          - name: default
        """
    p = make(routing)
    d = route(p, chat(temperature=0))
    assert (d.cache.store, d.cache.ttl_s, d.cache.namespace) == (True, 300, None)
    assert route(p, chat(seed=3)).cache.store
    d = route(p, chat(temperature=0.7))
    assert not d.cache.store and d.cache.reason.startswith("not deterministic")
    assert not route(p, chat(temperature=0), caller=Caller(team="secret")).cache.store
    d = route(p, chat(temperature=0.7), caller=Caller(team="docs"))
    assert (d.cache.store, d.cache.ttl_s, d.cache.namespace) == (True, 3600, "faq")
    assert not route(make(SMALLEST.replace("rules", "defaults: {}\nrules")), chat(temperature=0)).cache.store


def test_reference_model_and_costs(make: Any) -> None:
    p = make("defaults: {reference_model: best}\nrules:\n  - name: r\n    route: smallest_capable\n")
    body = chat(max_tokens=100)
    prompt = classify(body, "chat", {}, p.classifier).prompt_tokens
    d = route(p, body)
    assert d.reference_model == "big" and d.currency == "USD"
    assert d.expected_cost == (prompt * D("0.10") + 100 * D("0.20")) / D(1_000_000)
    assert d.reference_cost == (prompt * D("4") / 2 + 100 * D("4")) / D(1_000_000)
    assert isinstance(d.expected_cost, Decimal) and d.policy_hash == p.hash


def test_pricing_is_exact() -> None:
    r = TokenRates(D("0.15"), D("0.075"), D("0.60"), "USD")
    assert expected_cost(r, 1000, 500) == D("0.00045")
    assert expected_cost(r, 1, 1) == D("0.00000075")
    with pytest.raises(TypeError):
        TokenRates(0.15, D(0), D(0), "USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TokenRates(D("-1"), D(0), D(0), "USD")


# ---------------------------------------------------------------------------------- match conditions

CONDITIONS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # (match, request that matches, request that does not, why it does not)
    ("{tenant: [acme, initech]}", {"caller": Caller(tenant="acme")}, {},
     "tenant `default` is not one of acme, initech"),
    ("{team: blue}", {"caller": Caller(team="blue")}, {}, "team (none) is not one of blue"),
    ("{key_id: k1}", {"caller": Caller(key_id="k1")}, {"caller": Caller(key_id="k2")},
     "key id `k2` is not one of k1"),
    ("{headers: {X-Priority: high}}", {"headers": {"x-priority": "high"}}, {"headers": {"X-Priority": "low"}},
     "header `x-priority` is `low`, not one of high"),
    ("{headers: {x-debug: '*'}}", {"headers": {"X-Debug": "1"}}, {}, "header `x-debug` is absent"),
    ("{model: [tiny]}", {"model": "quick"}, {"model": "mid"}, "requested model `mid` is not one of tiny"),
    ("{model: [quick]}", {"model": "quick"}, {"model": "tiny"}, "requested model `tiny` is not one of quick"),
    ("{requested: auto}", {}, {"model": "mid"}, "`mid` (a model name) was requested, not `auto`"),
    ("{requested: alias}", {"model": "best"}, {}, "`auto` was requested, not an alias"),
    ("{kind: completion}", {"kind": "completion", "body": {"prompt": "Hello"}}, {},
     "kind `chat` is not one of completion"),
    ("{category: [code, math]}", {"body": chat("What is 3 * 4?")}, {}, "category `chat` is not one of code, math"),
    ("{tier: {min: 2}}", {"body": chat("What is 3 * 4?")}, {}, "tier 1 is not >= 2"),
    ("{prompt_tokens: {max: 20}}", {}, {"body": chat("word " * 50)}, "prompt tokens 57 is not <= 20"),
    ("{max_tokens: {min: 10, max: 20}}", {"body": chat(max_tokens=15)}, {"body": chat(max_tokens=5)},
     "max tokens 5 is not 10..20"),
    ("{context_tokens: {min: 1000}}", {"body": chat(max_tokens=1000)}, {"body": chat(max_tokens=10)},
     "context tokens 17 is not >= 1000"),
    ("{turns: {min: 2}}", {"body": {"messages": [{"role": "user", "content": "a"},
                                                 {"role": "assistant", "content": "b"},
                                                 {"role": "user", "content": "c"}]}}, {}, "turns 1 is not >= 2"),
    ("{capabilities: [tools, logprobs]}", {"body": chat(tools=[TOOL], logprobs=True)}, {"body": chat(tools=[TOOL])},
     "does not need logprobs"),
    ("{any_capability: [tools, logprobs]}", {"body": chat(logprobs=True)}, {}, "needs none of logprobs, tools"),
    ("{not_capabilities: [tools]}", {}, {"body": chat(tools=[TOOL])}, "needs tools"),
    ("{stream: true}", {"body": chat(stream=True)}, {}, "stream is false, not true"),
    ("{deterministic: true}", {"body": chat(temperature=0)}, {}, "deterministic is false, not true"),
]


@pytest.mark.parametrize(("match", "yes", "no", "why"), CONDITIONS, ids=[c[0] for c in CONDITIONS])
def test_each_match_condition(make: Any, match: str, yes: dict[str, Any], no: dict[str, Any], why: str) -> None:
    p = make(f"rules:\n  - name: special\n    match: {match}\n    route: {{model: big}}\n"
             "  - name: default\n    route: smallest_capable\n")

    def run(case: dict[str, Any]) -> RouteDecision:
        return route(p, case.get("body", chat()), model=case.get("model", "auto"), caller=case.get("caller"),
                     headers=case.get("headers"), kind=case.get("kind", "chat"))

    d = run(yes)
    assert (d.model, d.rule) == ("big", "special")
    d = run(no)
    assert d.rule == "default"
    assert d.trace[0].subject == "special" and not d.trace[0].ok and d.trace[0].detail == why


def test_trace_explains_every_rule_before_the_match(make: Any) -> None:
    routing = """\
        rules:
          - {name: a, match: {tenant: x}}
          - {name: b, match: {category: [code]}, route: {model: big}}
          - {name: c, match: {max_tokens: {max: 100}}, route: {model: mid}}
          - {name: d}
        """
    d = route(make(routing), chat(max_tokens=50))
    assert [(t.step, t.subject, t.ok, t.detail) for t in d.trace] == [
        ("rule", "a", False, "tenant `default` is not one of x"),
        ("rule", "b", False, "category `chat` is not one of code"),
        ("rule", "c", True, "max_tokens <= 100"),
        ("choice", "mid", True, "fixed by the rule"),
    ]
    d = route(make("rules:\n  - {name: a, match: {tenant: x}}\n"), chat())
    assert (d.rule, d.model) == ("(implicit default)", "tiny")
    assert d.trace[1] == d.trace[1].__class__("rule", "(implicit default)", True,
                                              "no rule matched: the cheapest capable model")


# --------------------------------------------------------------------------------- the shipped demo


SHIPPED = load_policy_set()
DEMO_HEALTH = {"small": PoolState(True, 0.0), "large": PoolState(True, 0.0)}


def demo(body: dict[str, Any], model: str = "auto", kind: str = "chat", **kw: Any) -> RouteDecision:
    f = classify(body, kind, {}, SHIPPED.classifier)  # type: ignore[arg-type]
    return decide(f, kw.get("caller", Caller()), model, SHIPPED, kw.get("health", DEMO_HEALTH), kw.get("rates", {}),
                  probe_for(SHIPPED.predictor, body, f))


def test_shipped_policy_tests_all_pass() -> None:
    cases = load_policy_tests(SHIPPED)
    assert len(cases) >= 15
    results = run_policy_tests(SHIPPED, cases)
    assert [(r.case.name, r.diffs) for r in results if not r.ok] == []


SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}


def test_shipped_demo_routes_as_described() -> None:
    assert SHIPPED.predictor is not None and SHIPPED.quality_target == 0.55
    assert [r.name for r in SHIPPED.rules] == ["suspended-tenants", "honour-requested", "long-context", "short-chat",
                                               "learned"]
    # prompts whose routing policies/tests/demo.yaml pins for the shipped predictor
    for text in ("What is 2+2?", "What is 17 * 23 + 4?"):
        d = demo(chat(text, max_tokens=32))
        assert (d.model, d.rule) == ("demo-small", "learned"), d.route_header()
        assert d.quality is not None and d.quality_min is not None
        assert d.quality["demo-small"] >= d.quality_min == pytest.approx(0.55 * max(d.quality.values()), abs=1e-4)
    for text in ("Show that the square root of 2 is irrational.", "Explain why the sky is blue, step by step.",
                 "Why does this fail?\n```python\ndef add(a, b):\n    return a +\n```"):
        d = demo(chat(text))
        assert (d.model, d.rule) == ("demo-large", "learned"), d.route_header()
        assert d.quality is not None and d.quality_min is not None and d.quality["demo-small"] < d.quality_min
    for text in ("Hello!", "Hi"):  # one-liners: by rule, the predictor is not consulted
        d = demo(chat(text))
        assert (d.model, d.rule, d.quality, d.route_header()) == ("demo-small", "short-chat", None, "short-chat")
    # what demo-small cannot do goes to demo-large, whatever the prediction (hard constraints)
    for body in (chat("What's the weather in Paris?", tools=[TOOL]), chat("Give me a user record.",
                                                                           response_format=SCHEMA),
                 chat("hi", logprobs=True)):
        d = demo(body)
        assert d.model == "demo-large", body
        assert "does not support" in next(t.detail for t in d.trace if t.subject == "demo-small" and not t.ok)
    d = demo(chat("Write me a long story.", max_tokens=2000))  # beyond demo-small's window of 1,024
    assert (d.model, d.rule, d.max_tokens) == ("demo-large", "long-context", None)  # within the cap of 2,048
    assert demo(chat("Write me a long story.", max_tokens=3000)).max_tokens == 2048
    d = demo(chat("hi", max_tokens=5000))  # a one-liner asking for a long answer: the window and the cap first
    assert (d.model, d.rule, d.max_tokens) == ("demo-large", "long-context", 2048)
    assert demo(chat("hi"), model="demo-large").model == "demo-large"
    assert demo(chat("hi"), model="fast").model == "demo-small"
    assert demo(chat("hi"), model="smart").model == "demo-large"
    d = demo(chat("hi", temperature=0))
    assert d.cache.store and d.cache.ttl_s == 600 and d.reference_model == "demo-large"
    assert not demo(chat("hi", temperature=1)).cache.store
    with pytest.raises(PolicyDenied):
        demo(chat("hi"), caller=Caller(tenant="suspended"))
    # a prompt too long even for demo-large: 400 with the numbers
    with pytest.raises(NoCapableModel, match="the largest is 8,192"):
        demo(chat("lorem ipsum " * 5000))
