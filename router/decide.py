"""The routing decision: features + caller + requested name + policy + pool states + rates -> a model.

Pure: every input is a value (pool health and load, per-token rates), nothing is read from the
outside, and the same inputs always give the same decision. The first matching rule's action picks
the model; "smallest capable" means, among the candidates meeting every constraint (capabilities,
context window >= prompt estimate + output tokens, tier, category score, healthy pool), the lowest
expected cost for this request, ties going to the less loaded pool. Without rates for a model its
quality tier stands in for its size (priced models come first). Every decision carries a trace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal

from router.catalogue import Model
from router.classify import Features
from router.decision import CachePolicy, Caller, PoolState, RouteDecision, Target, TraceStep
from router.errors import ModelNotFound, NoCapableModel, NoHealthyModel, PolicyDenied
from router.policy import PolicySet
from router.pricing import TokenRates, expected_cost, format_money
from router.rules import Rule
from router.spec import CAPABILITIES

__all__ = ["CachePolicy", "Caller", "PoolState", "RouteDecision", "Target", "TraceStep", "decide"]


def _human_caps(caps: frozenset[str] | set[str]) -> str:
    return " and ".join(CAPABILITIES.get(c, c) for c in sorted(caps))


def _unfit(m: Model, f: Features, need: int, min_tier: int | None, min_score: float | None) -> list[str] | None:
    """Why `m` cannot serve the request (None when it can)."""
    if (
        f.capabilities <= m.capabilities
        and need <= m.context_window
        and (min_tier is None or m.tier >= min_tier)
        and min_score is None
    ):
        return None
    reasons: list[str] = []
    missing = f.capabilities - m.capabilities
    if missing:
        reasons.append(f"does not support {_human_caps(missing)}")
    if need > m.context_window:
        reasons.append(f"context window {m.context_window:,} < {need:,} tokens needed")
    if min_tier is not None and m.tier < min_tier:
        reasons.append(f"tier {m.tier} < {min_tier}")
    if min_score is not None:
        score = m.scores.get(f.category)
        if score is None:
            reasons.append(f"no score for category {f.category}")
        elif score < min_score:
            reasons.append(f"{f.category} score {score:g} < {min_score:g}")
    return reasons or None


def _pool_problem(m: Model, health: Mapping[str, PoolState]) -> str | None:
    state = health.get(m.pool)
    if state is None:
        return f"pool `{m.pool}` has no state (is it configured?)"
    if not state.healthy:
        return f"pool `{m.pool}` is unhealthy"
    return None


def _no_fit_message(rule: Rule, f: Features, need: int, output: int, candidates: tuple[Model, ...],
                    rejected: list[tuple[Model, list[str]]], restricted: bool) -> str:
    caps = f.capabilities
    window = [m for m in candidates if need <= m.context_window]
    capable = [m for m in candidates if caps <= m.capabilities]
    both = [m for m in window if caps <= m.capabilities]
    if both:
        summary = f"no model meets the constraints of rule `{rule.name}`"
    elif not window:
        largest = max((m.context_window for m in candidates), default=0)
        summary = f"no model has a context window of at least {need:,} tokens (the largest is {largest:,})"
        if caps and not capable:
            summary += f", and none supports {_human_caps(caps)}"
    else:
        # name only what the models with a large enough window lack
        lacking = {c for c in caps if not all(c in m.capabilities for m in window)}
        if len(window) == len(candidates):
            summary = f"no model supports {_human_caps(lacking)}"
        else:
            summary = f"no model with a context window of at least {need:,} tokens supports {_human_caps(lacking)}"
    where = f" (among the candidates of rule `{rule.name}`)" if restricted else ""
    details = "; ".join(f"{m.name}: {', '.join(r)}" for m, r in rejected)
    needs = f"{need:,} tokens of context (~{f.prompt_tokens:,} prompt + {output:,} output)"
    return f"No model can serve this request{where}: {summary}. It needs {needs}. {details}."


Quality = Callable[[], Mapping[str, float]]


def decide(
    features: Features,
    caller: Caller,
    requested_model: str,
    policy: PolicySet,
    health: Mapping[str, PoolState],
    rates: Mapping[str, TokenRates],
    quality: Quality | None = None,
) -> RouteDecision:
    """Route one request. Raises ModelNotFound (404), PolicyDenied (403), NoCapableModel (400) or
    NoHealthyModel (503); each routing error carries `.rule` and `.trace`.

    `quality` gives each model's predicted quality for this request (router/quality.py); it is called
    only when the matched rule routes on it, and must be given when a rule may (`cheapest_above`)."""
    entry = policy.lookup.get(requested_model)
    if entry is None:
        raise ModelNotFound(
            f"The model `{requested_model}` does not exist. Valid models: {', '.join(policy.routable_names())}.",
            param="model",
        )
    req_kind, req_target = entry
    trace: list[TraceStep] = []
    rule: Rule | None = None
    for candidate_rule in policy.rules:
        why = None
        for cond in candidate_rule.conditions:
            why = cond(features, caller, requested_model, req_kind)
            if why is not None:
                break
        if why is None:
            rule = candidate_rule
            trace.append(TraceStep("rule", candidate_rule.name, True, candidate_rule.summary))
            break
        trace.append(TraceStep("rule", candidate_rule.name, False, why))
    if rule is None:
        rule = policy.default_rule
        trace.append(TraceStep("rule", rule.name, True, "no rule matched: the cheapest capable model"))
    if rule.action == "deny":
        raise PolicyDenied(rule.deny_message or "Denied by policy.", rule=rule.name, trace=tuple(trace))

    output = features.output_tokens
    cap = rule.max_tokens_cap
    send: int | None = None
    if cap is not None and (features.output_assumed or output > cap):
        send = output = cap
        asked = "none" if features.max_tokens is None else f"{features.max_tokens:,}"
        trace.append(TraceStep("max_tokens", str(cap), True, f"capped at {cap:,} by the rule (asked: {asked})"))
    need = features.prompt_tokens + output
    prompt = features.prompt_tokens

    chosen: Model
    predicted: dict[str, float] | None = None
    quality_min: float | None = None
    if rule.action == "cheapest_above":
        if quality is None:
            raise ValueError(f"rule `{rule.name}` routes on predicted quality, but no predictions were given")
        scores = quality()
        chosen, quality_min = _cheapest_above(rule, features, need, output, health, rates, trace, len(policy.models),
                                              scores)
        predicted = {m.name: round(scores[m.name], 4) for m in rule.candidates if m.name in scores}
    elif rule.action == "smallest_capable" or (rule.action == "requested" and req_target is None):
        chosen = _smallest(rule, features, need, output, health, rates, trace, len(policy.models))
    else:
        target = rule.model if rule.action == "model" else req_target
        assert target is not None
        chosen = _fixed(policy, rule, policy.models[target], rule.action == "requested", features, need, output,
                        health, trace)

    chain = rule.fallbacks if rule.fallbacks is not None else chosen.fallbacks
    fallbacks: list[Target] = []
    for name in chain:
        if name == chosen.name:
            continue
        fb = policy.models[name]
        reasons = _unfit(fb, features, need, None, None)
        problem = "; ".join(reasons) if reasons else _pool_problem(fb, health)
        if problem is None:
            fallbacks.append(Target(fb.name, fb.pool))
            trace.append(TraceStep("fallback", fb.name, True, f"pool {fb.pool}"))
        else:
            trace.append(TraceStep("fallback", fb.name, False, problem))

    cache = rule.cache_skip if rule.cache_needs_determinism and not features.deterministic else rule.cache_store
    rate = rates.get(chosen.name)
    cost = expected_cost(rate, prompt, output) if rate is not None else None
    ref = rule.reference_model
    ref_cost = None
    if ref is not None:
        ref_rate = rates.get(ref)
        if ref_rate is not None and (rate is None or ref_rate.currency == rate.currency):
            ref_cost = expected_cost(ref_rate, prompt, output)
    return RouteDecision(
        model=chosen.name,
        pool=chosen.pool,
        rule=rule.name,
        requested_model=requested_model,
        fallbacks=tuple(fallbacks),
        max_tokens_cap=cap,
        max_tokens=send,
        cache=cache,
        reference_model=ref,
        expected_cost=cost,
        reference_cost=ref_cost,
        currency=rate.currency if rate is not None else None,
        policy_hash=policy.hash,
        trace=tuple(trace),
        quality=predicted,
        quality_min=quality_min,
    )


def _cheapest_above(rule: Rule, f: Features, need: int, output: int, health: Mapping[str, PoolState],
                    rates: Mapping[str, TokenRates], trace: list[TraceStep], n_models: int,
                    scores: Mapping[str, float]) -> tuple[Model, float]:
    """Among the candidates that meet the hard constraints, the cheapest predicted good enough: at least the
    rule's absolute `quality` and `relative` times the best prediction among them. When none is (only an
    absolute floor can exclude them all), the one predicted best, ties to the cheaper. Also returns the
    threshold applied."""
    fitting = _fitting(rule, f, need, output, health, rates, trace, n_models, rule.min_tier, scores)
    best = max(scores[m.name] for _, m in fitting)
    floor = max(rule.quality or 0.0, (rule.relative or 0.0) * best)
    terms = [] if rule.quality is None else [f"{rule.quality:.2f}"]
    if rule.relative is not None:
        terms.append(f"{rule.relative:.2f} x the best {best:.2f}")
    how = " and ".join(terms)
    good = [(key, m) for key, m in fitting if scores[m.name] >= floor]
    if good:
        key, model = min(good, key=lambda km: km[0])
        below = [m.name for k, m in fitting if k < key]
        if len(fitting) == 1:
            why = f"the only candidate that fits (predicted {scores[model.name]:.2f})"
        elif below:
            why = (f"the cheapest predicted to reach {floor:.2f} ({how}): {scores[model.name]:.2f}; "
                   f"{', '.join(below)} predicted below")
        else:
            why = f"the cheapest that fits, predicted {scores[model.name]:.2f} >= {floor:.2f} ({how})"
    else:
        key, model = min(fitting, key=lambda km: (-scores[km[1].name], km[0]))
        why = f"none is predicted to reach {floor:.2f} ({how}): the best predicted ({scores[model.name]:.2f})"
    trace.append(TraceStep("choice", model.name, True, why))
    return model, round(floor, 4)


Key = tuple[int, Decimal, float, int, str]


def _fitting(rule: Rule, f: Features, need: int, output: int, health: Mapping[str, PoolState],
             rates: Mapping[str, TokenRates], trace: list[TraceStep], n_models: int, min_tier: int | None,
             scores: Mapping[str, float] | None = None) -> list[tuple[Key, Model]]:
    """The candidates meeting every hard constraint, each with its cost key (cheapest first by cost with
    rates, else by tier; then load); raises NoHealthyModel / NoCapableModel when there is none."""
    fits: list[tuple[Key, Model]] = []
    rejected: list[tuple[Model, list[str]]] = []
    unhealthy: list[Model] = []
    for m in rule.candidates:
        reasons = _unfit(m, f, need, min_tier, rule.min_score)
        if reasons is not None:
            rejected.append((m, reasons))
            trace.append(TraceStep("candidate", m.name, False, "; ".join(reasons)))
            continue
        state = health.get(m.pool)
        if state is None or not state.healthy:
            unhealthy.append(m)
            trace.append(TraceStep("candidate", m.name, False, _pool_problem(m, health) or ""))
            continue
        rate = rates.get(m.name)
        key: Key
        if rate is not None:
            cost = expected_cost(rate, f.prompt_tokens, output)
            key = (0, cost, state.load, m.tier, m.name)
            price = f"expected cost {format_money(cost)} {rate.currency}"
        else:
            key = (1, Decimal(m.tier), state.load, 0, m.name)
            price = "no price"
        quality = f"predicted quality {scores[m.name]:.2f}, " if scores is not None else ""
        trace.append(TraceStep("candidate", m.name, True, f"fits; {quality}tier {m.tier}, {price}, pool {m.pool} load "
                               f"{state.load:.2f}"))
        fits.append((key, m))
    if fits:
        return fits
    if unhealthy:
        names = ", ".join(f"{m.name} (pool {m.pool})" for m in unhealthy)
        raise NoHealthyModel(
            f"No healthy pool can serve this request right now: {names} could, but "
            f"{'its pool is' if len(unhealthy) == 1 else 'their pools are'} unhealthy. Retry shortly.",
            rule=rule.name, trace=tuple(trace), headers={"retry-after": "2"},
        )
    restricted = len(rule.candidates) < n_models
    raise NoCapableModel(_no_fit_message(rule, f, need, output, rule.candidates, rejected, restricted),
                         rule=rule.name, trace=tuple(trace))


def _smallest(rule: Rule, f: Features, need: int, output: int, health: Mapping[str, PoolState],
              rates: Mapping[str, TokenRates], trace: list[TraceStep], n_models: int) -> Model:
    min_tier = f.tier if rule.tier_from_complexity else rule.min_tier
    fitting = sorted(_fitting(rule, f, need, output, health, rates, trace, n_models, min_tier), key=lambda km: km[0])
    key, model = fitting[0]
    if len(fitting) == 1:
        why = "the only candidate that fits"
    elif key[0] == 0:
        why = "lowest expected cost"
        runner_up = fitting[1][0]
        if runner_up[0] == 0 and runner_up[1] == key[1]:
            why += " (tie broken by the less loaded pool)"
    else:
        why = "lowest tier (no prices for the candidates)"
    trace.append(TraceStep("choice", model.name, True, why))
    return model


def _fixed(policy: PolicySet, rule: Rule, m: Model, requested: bool, f: Features, need: int, output: int,
           health: Mapping[str, PoolState], trace: list[TraceStep]) -> Model:
    reasons = _unfit(m, f, need, None, None)
    who = "The requested model" if requested else f"Rule `{rule.name}` routes to a model that"
    if reasons is not None:
        trace.append(TraceStep("candidate", m.name, False, "; ".join(reasons)))
        raise NoCapableModel(
            f"{who} cannot serve this request: `{m.name}` {'; '.join(reasons)} (~{f.prompt_tokens:,} prompt + "
            f"{output:,} output tokens).",
            rule=rule.name, trace=tuple(trace), param="model" if requested else None,
        )
    problem = _pool_problem(m, health)
    if problem is None:
        trace.append(TraceStep("choice", m.name, True, "requested by the client" if requested else "fixed by the rule"))
        return m
    trace.append(TraceStep("candidate", m.name, False, problem))
    chain = rule.fallbacks if rule.fallbacks is not None else m.fallbacks
    for name in chain:
        fb = policy.models[name]
        fb_reasons = _unfit(fb, f, need, None, None)
        fb_problem = "; ".join(fb_reasons) if fb_reasons else _pool_problem(fb, health)
        if fb_problem is None:
            trace.append(TraceStep("choice", fb.name, True, f"fallback: `{m.name}` is unavailable"))
            return fb
        trace.append(TraceStep("candidate", fb.name, False, fb_problem))
    raise NoHealthyModel(
        f"`{m.name}` can serve this request but its pool `{m.pool}` is unhealthy, and no fallback is available. "
        "Retry shortly.",
        rule=rule.name, trace=tuple(trace), headers={"retry-after": "2"},
    )
