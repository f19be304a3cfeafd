"""Policy tests: example requests with the decision an admin expects, kept in `policies/tests/*.yaml`.

Each case gives a request body (plus optional headers, caller, pool health and rates) and the parts of
the decision it expects (model, rule, fallbacks, cache, category, an error...). Only the parts given
are compared. `run_policy_tests` checks each case against the policy's request limits, classifies and
decides it, and reports, per case, the differences as `- expected` / `+ actual` lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from router.classify import Features, Kind, classify
from router.decide import decide
from router.decision import Caller, PoolState, RouteDecision
from router.errors import GatewayError, PolicyError
from router.policy import AUTO, PolicySet
from router.pricing import TokenRates
from router.quality import probe_for
from router.request_limits import check_depth, check_request
from router.spec import (
    CAPABILITIES,
    CacheExpect,
    CaseSpec,
    ExpectSpec,
    HealthSpec,
    QualityRange,
    RatesSpec,
    TestsFile,
)
from router.yamlsrc import PathT, Problems, Source, convert, read_yaml

__all__ = ["CaseResult", "PolicyCase", "load_policy_tests", "read_policy_tests", "run_case", "run_policy_tests"]


@dataclass(frozen=True)
class PolicyCase:
    where: str  # file:line
    name: str
    body: dict[str, Any]
    kind: Kind
    model: str
    headers: Mapping[str, str]
    caller: Caller
    health: Mapping[str, PoolState]
    rates: Mapping[str, TokenRates]
    expect: ExpectSpec


@dataclass(frozen=True)
class CaseResult:
    case: PolicyCase
    features: Features
    decision: RouteDecision | None
    error: GatewayError | None
    diffs: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.diffs


def tests_dir(policy_dir: Path) -> Path:
    return policy_dir / "tests"


def load_policy_tests(policy: PolicySet, directory: Path | None = None) -> list[PolicyCase]:
    cases, problems = read_policy_tests(policy, directory or tests_dir(policy.directory))
    if problems:
        raise PolicyError(problems)
    return cases


def _rates(src: Source, path: PathT, raw: Mapping[str, RatesSpec], policy: PolicySet | None,
           problems: Problems) -> dict[str, TokenRates]:
    out = {}
    for model, r in raw.items():
        if policy is not None and model not in policy.models:
            problems.add(src, (*path, model), f"rates for unknown model `{model}`")
        cached = r.cached_input_per_million if r.cached_input_per_million is not None else r.input_per_million
        if min(r.input_per_million, r.output_per_million, cached) < Decimal(0):
            problems.add(src, (*path, model), "rates must be >= 0")
            continue
        out[model] = TokenRates(r.input_per_million, cached, r.output_per_million, r.currency)
    return out


def _health(src: Source, path: PathT, raw: Mapping[str, HealthSpec], policy: PolicySet | None,
            problems: Problems) -> dict[str, PoolState]:
    if policy is not None:
        for pool in raw:
            if pool not in policy.pools():
                problems.add(src, (*path, pool), f"unknown pool `{pool}` (the catalogue's pools: "
                             f"{', '.join(sorted(policy.pools()))})")
    return {pool: PoolState(h.healthy, h.load) for pool, h in raw.items()}


def read_policy_tests(policy: PolicySet | None, directory: Path) -> tuple[list[PolicyCase], list[str]]:
    """Every case in `directory/*.yaml`, checked against `policy` when given; (cases, problems)."""
    problems = Problems()
    cases: list[PolicyCase] = []
    if not directory.is_dir():
        return cases, problems.items
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        src = read_yaml(path, str(path), problems)
        if src is None:
            continue
        spec = convert(src, src.data if src.data is not None else {}, TestsFile, (), problems)
        if spec is None:
            continue
        base_health = {p: PoolState(True, 0.0) for p in sorted(policy.pools())} if policy is not None else {}
        base_health.update(_health(src, ("health",), spec.health or {}, policy, problems))
        base_rates = _rates(src, ("rates",), spec.rates or {}, policy, problems)
        names: dict[str, int] = {}
        for i, raw in enumerate(spec.cases):
            cpath: PathT = ("cases", i)
            case = convert(src, raw, CaseSpec, cpath, problems)
            if case is None:
                continue
            if case.name in names:
                first = names[case.name]
                problems.add(src, (*cpath, "name"), f"duplicate case name `{case.name}` (first at line {first})")
            names.setdefault(case.name, src.line(cpath))
            kind: Kind
            if case.kind is not None:
                kind = case.kind
            elif "messages" in case.request:
                kind = "chat"
            elif "prompt" in case.request:
                kind = "completion"
            else:
                problems.add(src, (*cpath, "request"), "the request has neither `messages` nor `prompt`")
                continue
            model = case.model or case.request.get("model") or AUTO
            if not isinstance(model, str):
                problems.add(src, (*cpath, "request", "model"), "`model` must be a string")
                continue
            if policy is not None:
                _check_expect(src, (*cpath, "expect"), case.expect, policy, problems)
            health = dict(base_health)
            health.update(_health(src, (*cpath, "health"), case.health or {}, policy, problems))
            rates = dict(base_rates)
            rates.update(_rates(src, (*cpath, "rates"), case.rates or {}, policy, problems))
            cases.append(PolicyCase(
                where=src.where(cpath),
                name=case.name,
                body=case.request,
                kind=kind,
                model=model,
                headers=case.headers,
                caller=Caller(tenant=case.caller.tenant, team=case.caller.team, key_id=case.caller.key_id),
                health=health,
                rates=rates,
                expect=case.expect,
            ))
    return cases, problems.items


def _check_expect(src: Source, path: PathT, e: ExpectSpec, policy: PolicySet, problems: Problems) -> None:
    models = ", ".join(policy.models)
    if e.model is not None and e.model not in policy.models:
        problems.add(src, (*path, "model"), f"unknown model `{e.model}` (models: {models})")
    for i, fb in enumerate(e.fallbacks or ()):
        if fb not in policy.models:
            problems.add(src, (*path, "fallbacks", i), f"unknown model `{fb}` (models: {models})")
    if e.rule is not None and policy.rule(e.rule) is None:
        problems.add(src, (*path, "rule"), f"unknown rule `{e.rule}` (rules: "
                     f"{', '.join(r.name for r in (*policy.rules, policy.default_rule))})")
    if e.pool is not None and e.pool not in policy.pools():
        problems.add(src, (*path, "pool"), f"unknown pool `{e.pool}`")
    if e.category is not None and e.category not in policy.classifier.known_categories:
        problems.add(src, (*path, "category"), f"unknown category `{e.category}`")
    for cap in e.capabilities or ():
        if cap not in CAPABILITIES:
            problems.add(src, (*path, "capabilities"), f"unknown capability `{cap}`")
    for model, bounds in (e.quality or {}).items():
        heads = policy.predictor.heads if policy.predictor is not None else ()
        if model not in heads:
            problems.add(src, (*path, "quality", model),
                         f"no prediction for `{model}`: the policy's predictor has "
                         + (f"heads {', '.join(heads)}" if heads else "not been set (defaults.predictor)"))
        for bound in (bounds.min, bounds.max):
            if bound is not None and not 0.0 <= bound <= 1.0:
                problems.add(src, (*path, "quality", model), f"a quality bound is in [0, 1], not {bound:g}")
    if e.error is not None and any(
        getattr(e, k) is not None for k in ("model", "rule", "pool", "fallbacks", "max_tokens", "cache")
    ) and e.rule is None:
        problems.add(src, path, "a case expecting an error cannot also expect a decision (only `rule` may go with it)")


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _compare_quality(diffs: list[str], expected: Mapping[str, QualityRange],
                     actual: Mapping[str, float] | None) -> None:
    for model, bounds in expected.items():
        score = actual.get(model) if actual is not None else None
        low = bounds.min if bounds.min is not None else 0.0
        high = bounds.max if bounds.max is not None else 1.0
        if score is None or not low <= score <= high:
            want = f"{low:g}..{high:g}"
            got = "no prediction (the policy has no predictor for it)" if score is None else f"{score:.3f}"
            diffs.append(f"- quality of {model}: {want}")
            diffs.append(f"+ quality of {model}: {got}")


def _compare(diffs: list[str], name: str, expected: Any, actual: Any) -> None:
    if expected is not None and expected != actual:
        diffs.append(f"- {name}: {_fmt(expected)}")
        diffs.append(f"+ {name}: {_fmt(actual)}")


def run_case(policy: PolicySet, case: PolicyCase) -> CaseResult:
    decision: RouteDecision | None = None
    error: GatewayError | None = None
    try:  # as a call: past the request limits, it is refused before routing
        check_depth(case.body, policy.request_limits.max_depth)
        check_request(case.body, case.kind, policy.request_limits)
    except GatewayError as exc:
        error = exc
    features = classify(case.body, case.kind, case.headers, policy.classifier)
    probe = probe_for(policy.predictor, case.body, features)
    if error is None:
        try:
            decision = decide(features, case.caller, case.model, policy, case.health, case.rates, probe)
        except GatewayError as exc:
            error = exc
    e = case.expect
    diffs: list[str] = []
    if e.quality is not None:
        _compare_quality(diffs, e.quality, probe() if probe is not None else None)
    _compare(diffs, "category", e.category, features.category)
    _compare(diffs, "tier", e.tier, features.tier)
    if e.capabilities is not None:
        _compare(diffs, "capabilities", sorted(e.capabilities), sorted(features.capabilities))
    if e.error is not None:
        if error is None:
            assert decision is not None
            diffs.append(f"- error: {_fmt(e.error.status)} {_fmt(e.error.code)}")
            diffs.append(f"+ decision: {decision.model} by rule `{decision.rule}`")
        else:
            _compare(diffs, "error.status", e.error.status, error.status)
            _compare(diffs, "error.code", e.error.code, error.code)
            if e.error.message is not None and e.error.message not in error.message:
                diffs.append(f"- error.message containing: {e.error.message}")
                diffs.append(f"+ error.message: {error.message}")
            _compare(diffs, "rule", e.rule, getattr(error, "rule", None))
    elif error is not None:
        diffs.append("- a decision")
        diffs.append(f"+ error: {error.status} {error.code}: {error.message}")
    else:
        assert decision is not None
        _compare(diffs, "model", e.model, decision.model)
        _compare(diffs, "rule", e.rule, decision.rule)
        _compare(diffs, "pool", e.pool, decision.pool)
        if e.fallbacks is not None:
            _compare(diffs, "fallbacks", list(e.fallbacks), [t.model for t in decision.fallbacks])
        _compare(diffs, "max_tokens", e.max_tokens, decision.max_tokens)
        cache = decision.cache
        if e.cache == "no-store":
            _compare(diffs, "cache.store", False, cache.store)
        elif isinstance(e.cache, CacheExpect):
            _compare(diffs, "cache.store", e.cache.store, cache.store)
            _compare(diffs, "cache.ttl_s", e.cache.ttl_s, cache.ttl_s)
            _compare(diffs, "cache.namespace", e.cache.namespace, cache.namespace)
    return CaseResult(case=case, features=features, decision=decision, error=error, diffs=tuple(diffs))


def run_policy_tests(policy: PolicySet, cases: list[PolicyCase]) -> list[CaseResult]:
    return [run_case(policy, case) for case in cases]
