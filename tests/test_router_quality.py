"""Routing on predicted quality: `cheapest_above` in decisions and policies, the predictor artefact, the
feature vector it reads, policy tests' `expect.quality`, and the output length hints of classify.yaml."""

from __future__ import annotations

import hashlib
import math
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from router import features
from router.classify import classify
from router.decide import CachePolicy, Caller, PoolState, RouteDecision, decide
from router.errors import NoCapableModel, NoHealthyModel, PolicyError
from router.policy import PolicySet, load_policy_set, read_policy_set
from router.policytests import load_policy_tests, run_policy_tests
from router.predictor import FORMAT, Head, parse_predictor, predictor_bytes, prior
from router.quality import QualityProbe, probe_for
from tests.test_router_decide import HEALTHY, RATES, TOOL, chat
from tests.test_router_policy import CLASSIFY, errors_of, write_policy

pytestmark = pytest.mark.pure

ZERO = [0.0] * features.SIZE
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}


def constant(**scores: float) -> bytes:
    """An artefact whose heads predict these scores for every request."""
    return predictor_bytes({name: Head(weights=list(ZERO), bias=s) for name, s in scores.items()})


# Dyadic scores: exact in float32, so bounds and thresholds compare exactly.
EVERY_HEAD = constant(tiny=0.5, mid=0.25, mid2=0.25, big=0.75)


def with_predictor(root: Path, routing: str, predictor: bytes | None = EVERY_HEAD, **kw: Any) -> Path:
    write_policy(root, routing=routing, **kw)
    if predictor is not None:
        (root / "predictor.json").write_bytes(predictor)
    return root


@pytest.fixture
def make(tmp_path: Path) -> Any:
    counter = iter(range(1000))

    def make_policy(routing: str, predictor: bytes | None = EVERY_HEAD) -> PolicySet:
        return load_policy_set(with_predictor(tmp_path / f"p{next(counter)}", routing, predictor))

    return make_policy


def pick(policy: PolicySet, scores: Mapping[str, float], body: dict[str, Any] | None = None,
         health: dict[str, PoolState] | None = None) -> RouteDecision:
    """Decide with these predictions (`decide` takes any callable giving them)."""
    f = classify(body or chat(max_tokens=50), "chat", {}, policy.classifier)
    return decide(f, Caller(), "auto", policy, HEALTHY if health is None else health, RATES, lambda: scores)


def choice(d: RouteDecision) -> str:
    (step,) = [t for t in d.trace if t.step == "choice"]
    assert step.subject == d.model
    return step.detail


def header(d: RouteDecision) -> tuple[str, dict[str, float]]:
    rule, *pairs = d.route_header().split("; ")
    return rule, {name: float(value) for name, value in (p.split("=") for p in pairs)}


def rule_of(body: str) -> str:
    return f"defaults: {{predictor: predictor.json}}\nrules:\n  - name: q\n    route: {body}\n"


# ------------------------------------------------------------------------------------- cheapest_above


def test_an_absolute_quality_takes_the_cheapest_predicted_to_reach_it(make: Any) -> None:
    p = make(rule_of("{cheapest_above: {quality: 0.7}}"))
    assert (p.rules[0].action, p.rules[0].quality, p.rules[0].relative) == ("cheapest_above", 0.7, None)
    d = pick(p, {"tiny": 0.5, "mid": 0.75, "mid2": 0.8, "big": 0.9})
    assert (d.model, d.rule, d.quality_min) == ("mid", "q", 0.7)  # mid and mid2 cost the same: the name decides
    assert choice(d) == "the cheapest predicted to reach 0.70 (0.70): 0.75; tiny predicted below"
    assert d.quality == {"tiny": 0.5, "mid": 0.75, "mid2": 0.8, "big": 0.9}
    assert d.route_header() == "q; min=0.70; tiny=0.50; mid=0.75; mid2=0.80; big=0.90"
    # the floor is inclusive, and the cheapest of all may reach it
    d = pick(p, {"tiny": 0.7, "mid": 0.75, "mid2": 0.8, "big": 0.9})
    assert d.model == "tiny" and choice(d) == "the cheapest that fits, predicted 0.70 >= 0.70 (0.70)"


def test_a_relative_quality_is_a_share_of_the_best_prediction(make: Any) -> None:
    p = make(rule_of("{cheapest_above: {relative: 0.8}}"))
    assert (p.rules[0].quality, p.rules[0].relative) == (None, 0.8)
    d = pick(p, {"tiny": 0.6, "mid": 0.75, "mid2": 0.7, "big": 0.9})
    assert d.model == "mid" and d.quality_min == pytest.approx(0.72)
    assert choice(d) == "the cheapest predicted to reach 0.72 (0.80 x the best 0.90): 0.75; tiny predicted below"
    # the same scores but a better best: the threshold rises with it
    d = pick(p, {"tiny": 0.6, "mid": 0.75, "mid2": 0.7, "big": 0.95})
    assert d.model == "big" and d.quality_min == pytest.approx(0.76)
    assert choice(d) == ("the cheapest predicted to reach 0.76 (0.80 x the best 0.95): 0.95; tiny, mid, mid2 "
                         "predicted below")


def test_both_the_stricter_of_the_two_applies(make: Any) -> None:
    p = make(rule_of("{cheapest_above: {quality: 0.6, relative: 0.8}}"))
    d = pick(p, {"tiny": 0.55, "mid": 0.65, "mid2": 0.5, "big": 0.7})  # 0.6 > 0.8 x 0.7
    assert (d.model, d.quality_min) == ("mid", 0.6)
    assert choice(d) == ("the cheapest predicted to reach 0.60 (0.60 and 0.80 x the best 0.70): 0.65; "
                         "tiny predicted below")
    d = pick(p, {"tiny": 0.55, "mid": 0.65, "mid2": 0.5, "big": 1.0})  # 0.8 x 1.0 > 0.6
    assert (d.model, d.quality_min) == ("big", 0.8)


def test_the_policys_quality_target_is_the_default(make: Any) -> None:
    routing = """\
        defaults: {predictor: predictor.json, quality_target: 0.6}
        rules:
          - name: own-share
            match: {tenant: picky}
            route: {cheapest_above: {relative: 0.9}}
          - name: own-floor
            match: {tenant: thrifty}
            route: {cheapest_above: {quality: 0.5}}
          - name: listed
            match: {tenant: listed}
            route: {cheapest_above: {candidates: [tiny, best]}}
          - name: default-target
            route: cheapest_above
        """
    p = make(textwrap.dedent(routing))
    assert p.quality_target == 0.6
    assert [(r.name, r.quality, r.relative) for r in p.rules] == [
        ("own-share", None, 0.9), ("own-floor", 0.5, None), ("listed", None, 0.6), ("default-target", None, 0.6)]
    scores = {"tiny": 0.5, "mid": 0.59, "mid2": 0.61, "big": 1.0}

    def run(tenant: str) -> RouteDecision:
        f = classify(chat(max_tokens=50), "chat", {}, p.classifier)
        return decide(f, Caller(tenant=tenant), "auto", p, HEALTHY, RATES, lambda: scores)

    d = run("anyone")
    assert (d.rule, d.model, d.quality_min) == ("default-target", "mid2", 0.6)  # 0.6 x 1.0: mid is just below
    assert (run("picky").model, run("picky").quality_min) == ("big", 0.9)  # a rule's own share replaces the target
    assert run("thrifty").model == "tiny"  # an absolute floor alone: the target does not apply
    d = run("listed")
    assert (d.model, d.quality) == ("big", {"tiny": 0.5, "big": 1.0})  # only its candidates, aliases resolved


def test_when_none_reaches_the_floor_the_best_predicted_wins_ties_to_the_cheaper(make: Any) -> None:
    p = make(rule_of("{cheapest_above: {quality: 0.95}}"))
    d = pick(p, {"tiny": 0.8, "mid": 0.5, "mid2": 0.5, "big": 0.8})
    assert (d.model, d.quality_min) == ("tiny", 0.95)
    assert choice(d) == "none is predicted to reach 0.95 (0.95): the best predicted (0.80)"
    assert pick(p, {"tiny": 0.8, "mid": 0.5, "mid2": 0.5, "big": 0.85}).model == "big"
    assert pick(p, {"tiny": 0.1, "mid": 0.6, "mid2": 0.6, "big": 0.2}).model == "mid"  # same price: the name


def test_hard_constraints_come_before_quality(make: Any) -> None:
    p = make(rule_of("{cheapest_above: {relative: 0.9}}"))
    # tiny is predicted best, and cheapest, but cannot call tools; the threshold is relative to the best that can
    d = pick(p, {"tiny": 1.0, "mid": 0.5, "mid2": 0.6, "big": 0.6}, chat(tools=[TOOL], max_tokens=50))
    assert d.model == "mid2" and d.quality_min == pytest.approx(0.54)
    assert next(t.detail for t in d.trace if t.subject == "tiny") == "does not support tool calls"
    assert header(d) == ("q", {"min": 0.54, "tiny": 1.0, "mid": 0.5, "mid2": 0.6, "big": 0.6})  # all predictions shown
    # only big serves JSON-schema output: chosen however badly it is predicted to do
    d = pick(p, {"tiny": 1.0, "mid": 1.0, "mid2": 1.0, "big": 0.1}, chat(response_format=SCHEMA, max_tokens=50))
    assert d.model == "big" and choice(d) == "the only candidate that fits (predicted 0.10)"
    # the context window ...
    d = pick(p, {"tiny": 1.0, "mid": 0.1, "mid2": 0.1, "big": 0.9}, chat(max_tokens=3000))
    assert d.model == "big"
    assert next(t.detail for t in d.trace if t.subject == "tiny").startswith("context window 2,048 < 3,")
    # ... and a healthy pool
    d = pick(p, {"tiny": 1.0, "mid": 0.1, "mid2": 0.1, "big": 0.9}, health={**HEALTHY, "p-tiny": PoolState(False)})
    assert d.model == "big" and next(t.detail for t in d.trace if t.subject == "tiny") == "pool `p-tiny` is unhealthy"
    scores = {"tiny": 0.5, "mid": 0.5, "mid2": 0.5, "big": 0.5}
    with pytest.raises(NoHealthyModel) as unhealthy:
        pick(p, scores, chat(response_format=SCHEMA), health={**HEALTHY, "p-big": PoolState(False)})
    assert unhealthy.value.rule == "q"
    with pytest.raises(NoCapableModel, match="no model has a context window of at least 40,"):
        pick(p, scores, chat(max_tokens=40000))


def test_min_tier_narrows_the_candidates_of_cheapest_above(make: Any) -> None:
    p = make(rule_of("{cheapest_above: {relative: 0.5, min_tier: 2}}"))
    d = pick(p, {"tiny": 1.0, "mid": 0.4, "mid2": 0.5, "big": 0.9})
    assert d.model == "mid2" and next(t.detail for t in d.trace if t.subject == "tiny") == "tier 1 < 2"


def test_the_trace_shows_each_candidates_prediction(make: Any) -> None:
    p = make(rule_of("{cheapest_above: {quality: 0.3}}"))
    d = pick(p, {"tiny": 0.25, "mid": 0.5, "mid2": 0.5, "big": 0.75}, health={**HEALTHY, "p-mid": PoolState(True, 0.5)})
    lines = [(t.step, t.subject, t.ok, t.detail) for t in d.trace]
    assert lines[0] == ("rule", "q", True, "matches every request")
    candidates = [line for line in lines if line[0] == "candidate"]
    assert [(c[1], c[2]) for c in candidates] == [("tiny", True), ("mid", True), ("mid2", True), ("big", True)]
    assert candidates[0][3].startswith("fits; predicted quality 0.25, tier 1, expected cost ")
    assert candidates[1][3].startswith("fits; predicted quality 0.50, tier 2, expected cost ")
    assert candidates[1][3].endswith(" USD, pool p-mid load 0.50")
    # mid is as good and as cheap as mid2, but busier: the less loaded pool wins, and only the cheaper
    # candidates are named as passed over
    assert lines[5] == ("choice", "mid2", True,
                        "the cheapest predicted to reach 0.30 (0.30): 0.50; tiny predicted below")


def test_the_route_header() -> None:
    d = RouteDecision(model="m", pool="p", rule="plain", requested_model="auto", fallbacks=(), max_tokens_cap=None,
                      max_tokens=None, cache=CachePolicy(store=False), reference_model=None,
                      expected_cost=None, reference_cost=None, currency=None, policy_hash="h", trace=())
    assert d.route_header() == "plain"  # a rule that did not consult the predictor
    d = msgspec.structs.replace(d, rule="learned", quality={"b": 0.125, "a": 0.5}, quality_min=0.0625)
    assert d.route_header() == "learned; min=0.06; b=0.12; a=0.50"  # candidates in the rule's order
    assert msgspec.structs.replace(d, quality_min=None).route_header() == "learned; b=0.12; a=0.50"


def test_the_predictor_is_asked_only_by_rules_that_route_on_it(make: Any) -> None:
    routing = """\
        defaults: {predictor: predictor.json, quality_target: 0.5}
        rules:
          - name: named
            match: {requested: [model, alias]}
            route: requested
          - name: small-talk
            match: {prompt_tokens: {max: 10}}
            route: smallest_capable
          - name: learned
            route: cheapest_above
        """
    p = make(textwrap.dedent(routing))
    calls: list[int] = []

    def scores() -> dict[str, float]:
        calls.append(1)
        return {"tiny": 0.5, "mid": 0.5, "mid2": 0.5, "big": 0.5}

    def run(body: dict[str, Any], model: str = "auto") -> RouteDecision:
        return decide(classify(body, "chat", {}, p.classifier), Caller(), model, p, HEALTHY, RATES, scores)

    d = run(chat("hi"))
    assert (d.rule, d.quality, d.quality_min, d.route_header()) == ("small-talk", None, None, "small-talk")
    d = run(chat("a question long enough to be routed on its predicted quality"), model="best")
    assert (d.rule, d.model, d.quality) == ("named", "big", None)
    assert calls == []
    d = run(chat("a question long enough to be routed on its predicted quality"))
    assert (d.rule, d.model) == ("learned", "tiny") and calls == [1]
    f = classify(chat("a question long enough to be routed on its predicted quality"), "chat", {}, p.classifier)
    with pytest.raises(ValueError, match="rule `learned` routes on predicted quality, but no predictions were given"):
        decide(f, Caller(), "auto", p, HEALTHY, RATES)


def test_the_probe_computes_the_features_and_predictions_once(tmp_path: Path) -> None:
    # a predictor that reads the request: tiny is predicted worse the more output is asked for
    weights = list(ZERO)
    weights[features.BUCKETS + features.DENSE.index("log_max_tokens")] = -0.125
    artefact = predictor_bytes({"tiny": Head(weights=weights, bias=1.0), "mid": Head(weights=list(ZERO), bias=0.5),
                                "mid2": Head(weights=list(ZERO), bias=0.5), "big": Head(weights=list(ZERO), bias=0.75)})
    p = load_policy_set(with_predictor(tmp_path / "p", rule_of("{cheapest_above: {relative: 1.0}}"), artefact))
    assert p.predictor is not None
    for max_tokens, model in ((3, "tiny"), (200, "big")):
        body = chat("hello", max_tokens=max_tokens)
        f = classify(body, "chat", {}, p.classifier)
        probe = probe_for(p.predictor, body, f)
        assert isinstance(probe, QualityProbe) and probe.vector is None and probe.scores is None
        d = decide(f, Caller(), "auto", p, HEALTHY, RATES, probe)
        assert d.model == model
        expected = p.predictor.predict(features.vector(body, f))
        assert probe.scores == expected and probe() is probe.scores  # computed once, then kept
        assert expected["tiny"] == pytest.approx(1.0 - 0.125 * math.log1p(max_tokens), abs=1e-6)
        assert probe.vector is not None and np.array_equal(probe.vector, features.vector(body, f))
        assert d.quality == {m: round(s, 4) for m, s in expected.items()}
    assert probe_for(None, {}, f) is None


# --------------------------------------------------------------------------- policy validation (file:line)


def test_cheapest_above_needs_a_predictor_and_a_target(tmp_path: Path) -> None:
    root = write_policy(tmp_path / "a", routing="rules:\n  - name: q\n    route: cheapest_above\n")
    r = root / "routing.yaml"
    assert errors_of(root) == [
        f"{r}:3: `cheapest_above` needs a target: give `quality:` or `relative:` here, or set "
        "`defaults.quality_target`",
        f"{r}:3: routing on predicted quality needs a predictor: set `defaults.predictor`",
    ]
    routing = "defaults: {quality_target: 0.5}\nrules:\n  - name: q\n    route: {cheapest_above: {quality: 0.5}}\n"
    root = write_policy(tmp_path / "b", routing=routing)
    assert errors_of(root) == [f"{root / 'routing.yaml'}:4: routing on predicted quality needs a predictor: set "
                               "`defaults.predictor`"]


def test_every_candidate_needs_a_head_in_the_predictor(tmp_path: Path) -> None:
    routing = rule_of("cheapest_above").replace("predictor.json}", "predictor.json, quality_target: 0.5}")
    root = with_predictor(tmp_path / "a", routing, constant(tiny=0.5, big=0.5))
    r = root / "routing.yaml"
    assert errors_of(root) == [
        f"{r}:4: candidate `{m}` has no head in the predictor (it predicts big, tiny); retrain it with that model, "
        "or list candidates" for m in ("mid", "mid2")]
    # listing the candidates it predicts (an alias among them) is a valid policy
    routing = rule_of("{cheapest_above: {relative: 0.5, candidates: [tiny, best]}}")
    p = load_policy_set(with_predictor(tmp_path / "b", routing, constant(tiny=0.5, big=0.5)))
    assert [m.name for m in p.rules[0].candidates] == ["tiny", "big"]


def test_qualities_are_in_zero_to_one(tmp_path: Path) -> None:
    routing = """\
        defaults: {predictor: predictor.json, quality_target: 1.2}
        rules:
          - name: q
            match: {tenant: x}
            route:
              cheapest_above: {quality: 1.5, relative: -0.1}
          - name: r
            route: {cheapest_above: {quality: 0}}
        """
    root = with_predictor(tmp_path / "p", textwrap.dedent(routing))
    r = root / "routing.yaml"
    assert errors_of(root) == [
        f"{r}:1: a quality is a predicted score in [0, 1], not 1.2",
        f"{r}:6: a quality is a predicted score in [0, 1], not 1.5",
        f"{r}:6: a quality is a predicted score in [0, 1], not -0.1",
    ]


def test_route_takes_one_of_cheapest_above_smallest_capable_or_model(tmp_path: Path) -> None:
    root = with_predictor(tmp_path / "p", rule_of("{cheapest_above: {quality: 0.5}, model: big}"))
    assert errors_of(root) == [f"{root / 'routing.yaml'}:4: `route` needs exactly one of `smallest_capable`, "
                               "`cheapest_above` or `model`"]


def test_the_predictor_file_is_read_and_checked_at_load(tmp_path: Path) -> None:
    routing = ("# the predictor\ndefaults:\n  predictor: {ref}\nrules:\n  - name: q\n"
               "    route: {{cheapest_above: {{quality: 0.5}}}}\n")

    def error(name: str, ref: str, artefact: bytes | None) -> tuple[str, str]:
        root = with_predictor(tmp_path / name, routing.format(ref=ref), None)
        if artefact is not None:
            (root / "predictor.json").write_bytes(artefact)
        errors = errors_of(root)
        assert len(errors) == 1, errors
        prefix = f"{root / 'routing.yaml'}:3: "
        assert errors[0].startswith(prefix), errors
        return errors[0][len(prefix):], str(root)

    message, root = error("missing", "gone.json", None)
    assert message == f"cannot read the predictor {root}/gone.json: No such file or directory"
    message, root = error("dir", ".", None)  # a directory: its predictor.json
    assert message == f"cannot read the predictor {root}/predictor.json: No such file or directory"
    message, root = error("json", "predictor.json", b"{not json")
    assert message.startswith(f"predictor {root}/predictor.json: not a quality predictor: ")
    message, _ = error("layout", "predictor.json", predictor_bytes({"tiny": Head(weights=list(ZERO), bias=0.5)},
                                                                    feature_layout="words2x64/0"))
    assert message.endswith(f": trained on features `words2x64/0`; this gateway computes `{features.FEATURES}` "
                            "(retrain it with `gateway router train`)")
    message, _ = error("weights", "predictor.json", predictor_bytes({"tiny": Head(weights=[0.5] * 3, bias=0.5)}))
    assert message.endswith(f": head `tiny` has 3 weights, not {features.SIZE}")


def test_the_predictor_is_part_of_the_policy_and_its_hash(tmp_path: Path) -> None:
    root = write_policy(tmp_path / "p", routing=rule_of("{cheapest_above: {quality: 0.5}}").replace(
        "predictor.json", "model"))
    (root / "model").mkdir()
    (root / "model" / "predictor.json").write_bytes(EVERY_HEAD)
    p = load_policy_set(root)
    assert p.predictor is not None and p.predictor.hash == hashlib.sha256(EVERY_HEAD).hexdigest()
    assert p.predictor.name == p.predictor.hash[:12] and set(p.predictor.heads) == {"tiny", "mid", "mid2", "big"}
    assert p.files[-1] == str(root / "model" / "predictor.json")
    assert load_policy_set(root).hash == p.hash
    (root / "model" / "predictor.json").write_bytes(constant(tiny=0.5, mid=0.5, mid2=0.5, big=0.5))
    changed = load_policy_set(root)
    assert changed.hash != p.hash and changed.predictor is not None and changed.predictor.hash != p.predictor.hash
    # a policy without one has none, and routes as before
    plain = load_policy_set(write_policy(tmp_path / "plain"))
    assert plain.predictor is None and plain.quality_target is None


# ----------------------------------------------------------------------------- policy tests: expect.quality


def test_policy_tests_compare_predictions_with_their_bounds(tmp_path: Path) -> None:
    tests = """\
        cases:
          - name: within
            request: {messages: [{role: user, content: hello}]}
            expect: {model: tiny, quality: {tiny: {min: 0.5, max: 0.5}, big: {min: 0.75}, mid: {max: 0.3}}}
          - name: outside
            request: {messages: [{role: user, content: hello}]}
            expect: {quality: {tiny: {min: 0.6}, big: {max: 0.7}, mid2: {min: 0.2}}}
        """
    root = with_predictor(tmp_path / "p", rule_of("{cheapest_above: {quality: 0.5}}"), tests={"q.yaml": tests})
    p = load_policy_set(root)
    results = run_policy_tests(p, load_policy_tests(p))
    assert [(r.case.name, r.diffs) for r in results] == [
        ("within", ()),
        ("outside", ("- quality of tiny: 0.6..1", "+ quality of tiny: 0.500",
                     "- quality of big: 0..0.7", "+ quality of big: 0.750")),
    ]


def test_policy_test_quality_bounds_are_checked_against_the_predictor(tmp_path: Path) -> None:
    tests = """\
        cases:
          - name: bad
            request: {messages: [{role: user, content: hello}]}
            expect:
              quality:
                gpt-9: {min: 0.5}
                tiny: {max: 1.5}
        """
    root = with_predictor(tmp_path / "p", rule_of("{cheapest_above: {quality: 0.5}}"), tests={"q.yaml": tests})
    p = load_policy_set(root)
    t = root / "tests" / "q.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy_tests(p)
    assert list(info.value.errors) == [
        f"{t}:6: no prediction for `gpt-9`: the policy's predictor has heads big, mid, mid2, tiny",
        f"{t}:7: a quality bound is in [0, 1], not 1.5",
    ]
    plain = load_policy_set(write_policy(tmp_path / "plain", tests={"q.yaml": tests.replace("gpt-9", "big")}))
    with pytest.raises(PolicyError) as info:
        load_policy_tests(plain)
    assert info.value.errors[0] == (
        f"{tmp_path / 'plain' / 'tests' / 'q.yaml'}:6: no prediction for `big`: the policy's predictor has not been "
        "set (defaults.predictor)")


# ----------------------------------------------------------------------------------------------- features


def text_vector(text: str, **kw: Any) -> features.Vector:
    facts: dict[str, Any] = {"prompt_chars": len(text), "prompt_tokens": 10, "messages": 1, "turns": 1,
                             "system": False, "tools": False, "structured_output": False, "max_tokens": None,
                             "completion": False}
    return features.vector_of_text(text, **{**facts, **kw})


def dense(v: features.Vector, name: str) -> float:
    return float(v[features.BUCKETS + features.DENSE.index(name)])


def ngrams(n_bytes: int) -> int:
    """How many byte n-grams of orders 1-4 a window of n bytes has."""
    return sum(max(0, n_bytes - order + 1) for order in features.ORDERS)


def test_the_vector_has_a_fixed_length_whatever_the_text() -> None:
    assert len(features.DENSE) + features.BUCKETS == features.SIZE
    for text in ("", "a", "hello world", "x" * 100_000):
        v = text_vector(text)
        assert v.shape == (features.SIZE,) and v.dtype == np.float32 and np.isfinite(v).all()
    assert not text_vector("")[: features.BUCKETS].any()


def test_a_huge_prompt_is_read_through_its_head_and_tail() -> None:
    head, tail = features.HEAD_BYTES, features.TAIL_BYTES
    rng = np.random.default_rng(7)
    text = "".join(rng.choice(list("abcdefghij \n0123456789")) for _ in range(4000)) * 250  # 1 MB
    assert len(text) == 1_000_000
    window = text[:head] + "\n" + text[-tail:]
    big, small = text_vector(text), text_vector(window, prompt_chars=len(text))
    assert np.array_equal(big, small)  # the same window: the same counts and numbers
    assert big[: features.BUCKETS].sum() == ngrams(head + 1 + tail)
    assert dense(big, "log_window_bytes") == pytest.approx(math.log1p(head + 1 + tail))
    assert dense(big, "log_chars") == pytest.approx(math.log1p(1_000_000))
    # multi-byte text is cut on characters first, then on bytes: still bounded
    v = text_vector("日本語のテキスト" * 100_000)
    assert round(math.expm1(dense(v, "log_window_bytes"))) <= head + 1 + tail
    # through a request body: the last user message
    body = {"messages": [{"role": "user", "content": "ignored"}, {"role": "assistant", "content": "no"},
                         {"role": "user", "content": text}]}
    f = classify(body, "chat", {}, load_policy_set().classifier)
    assert np.array_equal(features.vector(body, f)[: features.BUCKETS], big[: features.BUCKETS])


@pytest.mark.parametrize("text", ["√2が無理数であることを証明してください。",
                                  "Докажите, что корень из 2 иррационален."])
def test_any_language_gives_n_gram_counts(text: str) -> None:
    v = text_vector(text)
    size = len(text.encode())
    assert v[: features.BUCKETS].sum() == ngrams(size) > 0  # every byte n-gram is counted: no vocabulary
    assert np.count_nonzero(v[: features.BUCKETS]) > 20
    assert dense(v, "non_ascii_share") > 0.5
    assert dense(v, "log_words") > 0


def test_different_texts_give_different_vectors() -> None:
    ja, ru = text_vector("証明してください"), text_vector("Докажите это")
    assert not np.array_equal(ja[: features.BUCKETS], ru[: features.BUCKETS])
    assert np.array_equal(text_vector("Докажите это"), ru)  # and the same text the same one


# When this fails the computation changed: stored vectors and trained predictors no longer match it.
# Name a new layout in `features.FEATURES` (predictors and stored vectors say which one they use), retrain
# the shipped predictor, and add the new layout's values here.
GOLDEN = {
    "bytes4x1024+d26/2": {4: 1, 46: 1, 146: 1, 248: 1, 663: 1, 985: 3, 999: 1, 1003: 1},
}


def test_a_layout_always_computes_the_same_vector() -> None:
    assert features.FEATURES in GOLDEN, f"no golden values for the layout `{features.FEATURES}`"
    v = text_vector("abc?")
    counts = v[: features.BUCKETS]
    assert {int(i): int(counts[i]) for i in np.flatnonzero(counts)} == GOLDEN[features.FEATURES]


def test_the_dense_numbers() -> None:
    v = text_vector("Is 12 + 3 = 15?\n    yes", max_tokens=100, tools=True, system=True, messages=3, turns=2)
    assert dense(v, "ends_with_question") == 0.0 and dense(text_vector("Why?"), "ends_with_question") == 1.0
    assert dense(v, "log_numbers") == pytest.approx(math.log1p(3))
    assert dense(v, "log_questions") == pytest.approx(math.log1p(1))
    assert dense(v, "log_lines") == pytest.approx(math.log1p(2))
    assert dense(v, "log_indented_lines") == pytest.approx(math.log1p(1))
    assert dense(v, "digit_share") == pytest.approx(5 / 23)
    assert dense(v, "log_max_tokens") == pytest.approx(math.log1p(100))
    assert dense(text_vector("x"), "log_max_tokens") == 0.0  # absent
    assert (dense(v, "tools"), dense(v, "system"), dense(v, "structured_output"), dense(v, "completion")) == \
        (1.0, 1.0, 0.0, 0.0)
    assert dense(v, "log_messages") == pytest.approx(math.log1p(3)) and dense(v, "log_turns") == pytest.approx(
        math.log1p(2))


def test_the_text_read_is_the_last_user_message_or_the_prompt() -> None:
    body = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"},
                                                      {"type": "input_text", "text": "b"}]},
                         {"role": "assistant", "content": "reply"}]}
    assert features.quality_text(body, "chat") == "a\nb"
    assert features.quality_text({"messages": "nope"}, "chat") == ""
    assert features.quality_text({"prompt": ["one", 2, "three"]}, "completion") == "one\nthree"
    assert features.quality_text({"prompt": "once"}, "completion") == "once"


def test_vectors_are_stored_compactly_and_exactly() -> None:
    v = text_vector("Prove that √2 is irrational.", max_tokens=64)
    blob = features.encode_vector(v)
    assert len(blob) == features.BUCKETS + 4 * len(features.DENSE)
    assert np.array_equal(features.decode_vector(blob), v)
    heavy = text_vector("a" * 2000)  # counts above 255 saturate
    assert heavy[: features.BUCKETS].max() > 255
    back = features.decode_vector(features.encode_vector(heavy))
    assert back[: features.BUCKETS].max() == 255
    assert np.array_equal(back[features.BUCKETS:], heavy[features.BUCKETS:])
    for wrong in (blob[:-1], blob + b"\0", b""):
        with pytest.raises(ValueError, match=re.escape(f"a {features.FEATURES} vector is {len(blob)} bytes, not "
                                                       f"{len(wrong)}")):
            features.decode_vector(wrong)


# ---------------------------------------------------------------------------------------------- predictor


def test_parse_predictor_accepts_what_predictor_bytes_writes() -> None:
    data = predictor_bytes({"b": Head(weights=list(ZERO), bias=0.25, trained_as=["x"], rows=3, mean=0.5),
                            "a": Head(weights=list(ZERO), bias=0.75)}, training={"seed": 1})
    p, problems = parse_predictor(data)
    assert problems == [] and p is not None
    assert p.heads == ("a", "b") and p.hash == hashlib.sha256(data).hexdigest() and p.name == p.hash[:12]
    assert p.predict(text_vector("hi")) == {"a": 0.75, "b": 0.25}
    summary = p.summary()
    assert summary["heads"]["b"] == {"trained_as": ["x"], "rows": 3, "mean": 0.5} and summary["training"] == {"seed": 1}
    q, _ = parse_predictor(prior(["x", "y"], 0.5))
    assert q is not None and q.predict(text_vector("anything")) == {"x": 0.5, "y": 0.5}


def test_parse_predictor_refuses_what_it_cannot_use() -> None:
    def problems(data: bytes | dict[str, Any]) -> list[str]:
        raw = data if isinstance(data, bytes) else msgspec.json.encode(data)
        p, found = parse_predictor(raw)
        assert p is None and found
        return found

    good = msgspec.json.decode(prior(["m"]))
    assert problems(b"[]")[0].startswith("not a quality predictor: Expected `object`")
    assert problems({**good, "extra": 1})[0].startswith("not a quality predictor: Object contains unknown field")
    assert problems({**good, "format": "other/1"}) == [f"format `other/1` is not `{FORMAT}`"]
    assert problems({**good, "features": "bytes2x64/0"})[0].startswith("trained on features `bytes2x64/0`")
    assert problems({**good, "heads": {}}) == ["it has no heads (no model to predict for)"]
    short = {**good, "heads": {"m": {"weights": [0.0] * 5, "bias": 0.5}}}
    assert problems(short) == [f"head `m` has 5 weights, not {features.SIZE}"]
    # weights must be finite numbers: JSON cannot carry NaN or infinities, and out-of-range numbers are refused
    assert problems(predictor_bytes({"m": Head(weights=[math.nan] * features.SIZE, bias=0.5)}))[0].startswith(
        "not a quality predictor")
    text = prior(["m"]).decode().replace('"bias":0.5', '"bias":1e999')
    assert problems(text.encode())[0].startswith("not a quality predictor")
    assert problems({**good, "dense_low": [0.0], "dense_high": [1.0]}) == [
        f"`dense_low` and `dense_high` need {len(features.DENSE)} numbers each"]
    n = len(features.DENSE)
    assert problems({**good, "dense_low": [1.0] * n, "dense_high": [0.0] * n}) == [
        "a `dense_low` bound is above its `dense_high`"]


def test_predictions_are_clipped_to_zero_to_one_and_inputs_to_the_training_range() -> None:
    p, _ = parse_predictor(predictor_bytes({"over": Head(weights=list(ZERO), bias=1.5),
                                            "under": Head(weights=list(ZERO), bias=-0.5)}))
    assert p is not None and p.predict(text_vector("x")) == {"over": 1.0, "under": 0.0}
    # a weight on the prompt's size; the dense numbers were between 0 and 3 in training
    weights = list(ZERO)
    weights[features.BUCKETS + features.DENSE.index("log_prompt_tokens")] = 0.25
    n = len(features.DENSE)
    bounded, _ = parse_predictor(predictor_bytes({"m": Head(weights=weights, bias=0.0)}, dense_low=[0.0] * n,
                                                 dense_high=[3.0] * n))
    free, _ = parse_predictor(predictor_bytes({"m": Head(weights=weights, bias=0.0)}))
    assert bounded is not None and free is not None
    huge = text_vector("x", prompt_tokens=1_000_000)  # log1p: 13.8, clipped to 3
    assert bounded.predict(huge)["m"] == pytest.approx(0.75)
    assert bounded.predict(text_vector("x", prompt_tokens=2))["m"] == pytest.approx(0.25 * math.log1p(2))
    assert free.predict(huge)["m"] == 1.0  # unbounded input: extrapolated, then clipped
    rows = np.vstack([huge, text_vector("x", prompt_tokens=2)])
    assert bounded.predict_many(rows)[:, 0] == pytest.approx([0.75, 0.25 * math.log1p(2)])


# -------------------------------------------------------------------------------- classify: output hints


def shipped_output(body: dict[str, Any]) -> tuple[int, bool]:
    f = classify(body, "chat", {}, load_policy_set().classifier)
    return f.output_tokens, f.output_assumed


def test_a_length_asked_for_in_the_text_raises_the_assumed_output() -> None:
    assert shipped_output(chat("Write a 3000-word essay about the history of Rome.")) == (4200, True)
    assert shipped_output(chat("Write a 3,000 word essay.")) == (4200, True)
    assert shipped_output(chat("Écrivez un texte de 2000 mots.")) == (2800, True)
    assert shipped_output(chat("2000字の作文を書いてください。")) == (2000, True)
    assert shipped_output(chat("Write 5 pages on Rome.")) == (3500, True)
    assert shipped_output(chat("Answer in 10 words.")) == (256, True)  # never below the default
    assert shipped_output(chat("Write a 9999999-word essay.")) == (1_000_000, True)  # bounded
    assert shipped_output(chat("Write the history of Rome.")) == (256, True)


def test_with_max_tokens_the_hint_is_ignored() -> None:
    assert shipped_output(chat("Write a 3000-word essay about the history of Rome.", max_tokens=100)) == (100, False)


def test_output_hints_are_validated(tmp_path: Path) -> None:
    hints = textwrap.dedent("""\
        output_hints:
          - {regex: '\\d+ words', tokens_per_unit: 1.4}
          - {regex: '(\\d+) pages', tokens_per_unit: 0}
          - {regex: '(\\d+', tokens_per_unit: 1}
          - {regex: '(\\d+) lines', tokens_per_unit: 10, unit: line}
        """)
    root = write_policy(tmp_path / "p", classify=CLASSIFY + hints)
    c = root / "classify.yaml"
    first = len(CLASSIFY.splitlines()) + 2
    errors = errors_of(root)
    assert errors[:3] == [
        f"{c}:{first}: the regex needs a group capturing the number",
        f"{c}:{first + 1}: `tokens_per_unit` must be > 0",
        f"{c}:{first + 2}: invalid regular expression: missing ), unterminated subpattern at position 0",
    ]
    assert errors[3].startswith(f"{c}:{first + 3}: unknown field `unit`")
    assert len(errors) == 4
    # a valid hint is used
    good = "output_hints:\n  - {regex: '(\\d+) lines', tokens_per_unit: 10}\n"
    p = load_policy_set(write_policy(tmp_path / "q", classify=CLASSIFY + good))
    assert classify(chat("Write 50 lines"), "chat", {}, p.classifier).output_tokens == 500


def test_read_policy_set_reports_predictor_problems_without_raising(tmp_path: Path) -> None:
    root = with_predictor(tmp_path / "p", rule_of("{cheapest_above: {quality: 0.5}}"), b"{}")
    policy, problems = read_policy_set(root)
    assert policy is None and len(problems) == 1
    assert problems[0].startswith(f"{root / 'routing.yaml'}:1: predictor {root / 'predictor.json'}: not a quality "
                                  "predictor: Object missing required field")
