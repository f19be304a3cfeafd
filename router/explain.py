"""Explaining a routing decision: the request's features, the decision (or the error) and its trace,
as human text or as JSON-ready data. Used by `gateway route explain` and `gateway policies test`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from router.classify import Features
from router.decide import Quality
from router.decision import Caller, RouteDecision, TraceStep
from router.errors import GatewayError, RoutingError
from router.policy import PolicySet
from router.pricing import format_money

__all__ = ["error_dict", "explain_dict", "explain_text", "features_dict", "trace_lines"]


def features_dict(f: Features) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "prompt_tokens": f.prompt_tokens,
        "prompt_chars": f.prompt_chars,
        "tokens_exact": f.tokens_exact,
        "max_tokens": f.max_tokens,
        "output_tokens": f.output_tokens,
        "output_assumed": f.output_assumed,
        "context_tokens": f.context_tokens,
        "capabilities": sorted(f.capabilities),
        "category": f.category,
        "category_score": f.category_score,
        "tier": f.tier,
        "complexity": f.complexity,
        "turns": f.turns,
        "messages": f.messages,
        "images": f.images,
        "n": f.n,
        "stream": f.stream,
        "deterministic": f.deterministic,
        "signals": list(f.signals),
    }


def _money(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")  # exact, never an exponent


def _trace_dict(trace: tuple[object, ...]) -> list[dict[str, Any]]:
    return [
        {"step": t.step, "subject": t.subject, "ok": t.ok, "detail": t.detail}
        for t in trace
        if isinstance(t, TraceStep)
    ]


def decision_dict(d: RouteDecision) -> dict[str, Any]:
    return {
        "model": d.model,
        "pool": d.pool,
        "rule": d.rule,
        "requested_model": d.requested_model,
        "fallbacks": [{"model": t.model, "pool": t.pool} for t in d.fallbacks],
        "max_tokens_cap": d.max_tokens_cap,
        "max_tokens": d.max_tokens,
        "cache": {"store": d.cache.store, "ttl_s": d.cache.ttl_s, "namespace": d.cache.namespace,
                  "reason": d.cache.reason},
        "reference_model": d.reference_model,
        "expected_cost": _money(d.expected_cost),
        "reference_cost": _money(d.reference_cost),
        "currency": d.currency,
        "policy_hash": d.policy_hash,
        "quality": d.quality,
        "quality_min": d.quality_min,
    }


def error_dict(exc: GatewayError) -> dict[str, Any]:
    return {
        "status": exc.status,
        "type": exc.type,
        "code": exc.code,
        "message": exc.message,
        "rule": exc.rule if isinstance(exc, RoutingError) else None,
    }


def _predicted(policy: PolicySet, probe: Quality | None) -> dict[str, float] | None:
    """Every model's predicted quality, in the catalogue's order (explain shows them whether or not the
    rule routed on them)."""
    if probe is None:
        return None
    scores = probe()
    order = [*[m for m in policy.models if m in scores], *[m for m in scores if m not in policy.models]]
    return {name: round(scores[name], 4) for name in order}


def explain_dict(policy: PolicySet, features: Features, caller: Caller, requested: str,
                 decision: RouteDecision | None, error: GatewayError | None,
                 probe: Quality | None = None) -> dict[str, Any]:
    trace: tuple[object, ...] = decision.trace if decision is not None else (
        error.trace if isinstance(error, RoutingError) else ())
    predictor = policy.predictor
    return {
        "requested_model": requested,
        "caller": {"tenant": caller.tenant, "team": caller.team, "key_id": caller.key_id},
        "features": features_dict(features),
        "quality": {
            "predicted": _predicted(policy, probe),
            "min": decision.quality_min if decision is not None else None,
            "target": policy.quality_target,
            "predictor": predictor.name if predictor is not None else None,
        },
        "decision": decision_dict(decision) if decision is not None else None,
        "error": error_dict(error) if error is not None else None,
        "trace": _trace_dict(trace),
        "policy": {"directory": str(policy.directory), "hash": policy.hash},
    }


def trace_lines(trace: tuple[object, ...], indent: str = "  ") -> list[str]:
    steps = [t for t in trace if isinstance(t, TraceStep)]
    width = max((len(t.subject) for t in steps), default=0)
    return [
        f"{indent}{t.step:<10} {t.subject:<{width}}  {'yes' if t.ok else 'no '}  {t.detail}" for t in steps
    ]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def explain_text(policy: PolicySet, features: Features, caller: Caller, requested: str,
                 decision: RouteDecision | None, error: GatewayError | None, probe: Quality | None = None) -> str:
    f = features
    pad = " " * 11
    tokens = f"{f.prompt_tokens:,} prompt tokens ({'exact' if f.tokens_exact else 'estimated'})"
    if f.max_tokens is not None:
        output = f"max_tokens {f.max_tokens:,}"
    elif f.output_assumed:
        output = f"no max_tokens (assuming {f.output_tokens:,})"
    else:
        output = f"max_tokens {f.output_tokens:,} (the API default)"
    shape = _plural(f.messages, "message") + ", " if f.kind == "chat" else ""
    needs = ", ".join(sorted(f.capabilities)) if f.capabilities else "nothing special"
    who = ", ".join(f"{k} `{v}`" for k, v in (("tenant", caller.tenant), ("team", caller.team),
                                               ("key", caller.key_id)) if v is not None) or "anonymous"
    lines = [
        f"request    {f.kind}, {tokens}, {output}, {shape}{_plural(f.turns, 'turn')}",
        f"{pad}category {f.category} (score {f.category_score}), complexity tier {f.tier} (score {f.complexity}),"
        f" needs: {needs}",
        f"{pad}signals: {', '.join(f.signals) if f.signals else 'none'}",
        f"{pad}deterministic: {'yes' if f.deterministic else 'no'}, stream: {'yes' if f.stream else 'no'}",
        f"{pad}requested `{requested}` by {who}",
    ]
    predicted = _predicted(policy, probe)
    if predicted is not None and policy.predictor is not None:
        floor = decision.quality_min if decision is not None else None
        shown = ", ".join(f"{name} {score:.2f}" for name, score in predicted.items())
        lines.append(f"quality    predicted: {shown}"
                     + (f"; accepted from {floor:.2f}" if floor is not None else " (the rule does not route on it)"))
        lines.append(f"{pad}predictor {policy.predictor.name}")
    trace: tuple[object, ...] = ()
    if decision is not None:
        d = decision
        rule = policy.rule(d.rule)
        where = f" ({rule.where})" if rule is not None else ""
        fallbacks = ", ".join(f"{t.model} (pool {t.pool})" for t in d.fallbacks) or "none"
        if d.max_tokens is not None:
            cap = f"set to {d.max_tokens:,} (the rule's cap)"
        elif d.max_tokens_cap is not None:
            cap = f"unchanged (within the cap of {d.max_tokens_cap:,})"
        else:
            cap = "unchanged (no cap)"
        c = d.cache
        if c.store:
            scope = f"shared namespace `{c.namespace}`" if c.namespace else "tenant-scoped"
            cache = f"store, ttl {c.ttl_s}s, {scope} ({c.reason})"
        else:
            cache = f"no-store ({c.reason})"
        if d.expected_cost is not None:
            cost = f"expected cost <= {format_money(d.expected_cost)} {d.currency}"
            if d.reference_model is not None and d.reference_cost is not None:
                cost += (f"; on the reference model {d.reference_model}: {format_money(d.reference_cost)} "
                         f"{d.currency}")
        else:
            cost = "expected cost: unknown (no rates)"
            if d.reference_model is not None:
                cost += f"; reference model {d.reference_model}"
        lines += [
            f"decision   {d.model} (pool {d.pool}) by rule `{d.rule}`{where}",
            f"{pad}fallbacks: {fallbacks}",
            f"{pad}max_tokens: {cap}",
            f"{pad}cache: {cache}",
            f"{pad}{cost}",
        ]
        trace = d.trace
    elif error is not None:
        rule_name = error.rule if isinstance(error, RoutingError) else None
        by = f" by rule `{rule_name}`" if rule_name else ""
        lines.append(f"decision   ERROR {error.status} {error.code}{by}: {error.message}")
        trace = error.trace if isinstance(error, RoutingError) else ()
    lines.append("trace")
    lines += trace_lines(trace) or ["  (none)"]
    lines.append(f"policy     {policy.directory} (sha256 {policy.hash[:12]})")
    return "\n".join(lines)
