"""The routing rules: routing.yaml compiled into ordered `Rule`s and the implicit default rule.

Phase two of loading routing.yaml (phase one is router/spec.py): each rule's `match` becomes a tuple of
condition closures (router/conditions.py) that say why a request does not match (for explain), its
action and cache policy are resolved against the catalogue, and rules that can never match --
contradictions, or an earlier rule that takes every request they would -- are errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from router.catalogue import AUTO, Catalogue, Model
from router.classifier import Classifier, as_names, check_range
from router.conditions import (
    GETTERS,
    LABELS,
    RANGES,
    REQUESTED_KINDS,
    Cond,
    bool_cond,
    caps_cond,
    header_cond,
    member_cond,
    names_text,
    range_cond,
    range_text,
    requested_cond,
)
from router.decision import CachePolicy
from router.spec import CAPABILITIES, CacheSpec, DefaultsSpec, MatchSpec, RangeSpec, RouteSpec, RoutingFile, RuleSpec
from router.yamlsrc import PathT, Problems, Source, convert

__all__ = ["IMPLICIT_RULE", "REQUESTED_KINDS", "Cond", "RequestKind", "Rule", "load_rules"]

IMPLICIT_RULE = "(implicit default)"

RequestKind = Literal["auto", "alias", "model"]


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    name: str
    description: str
    where: str
    conditions: tuple[Cond, ...]
    summary: str  # what it matches, for explain
    action: Literal["smallest_capable", "cheapest_above", "model", "requested", "deny"]
    model: str | None  # action "model"
    # actions "smallest_capable" and "cheapest_above" (and "requested" when `auto` was asked)
    candidates: tuple[Model, ...]
    min_tier: int | None
    tier_from_complexity: bool
    min_score: float | None
    deny_message: str | None
    max_tokens_cap: int | None
    cache_store: CachePolicy  # the cache policy when the request qualifies
    cache_skip: CachePolicy  # ... and when it does not (not deterministic)
    cache_needs_determinism: bool
    fallbacks: tuple[str, ...] | None  # None: the chosen model's own chain
    reference_model: str | None
    constraints: Mapping[str, Any] = field(default_factory=dict)  # normalized match, for shadowing checks
    # action "cheapest_above": the least predicted quality that will do, absolute and/or as a share of the
    # best candidate's
    quality: float | None = None
    relative: float | None = None


_INF = float("inf")


class _RuleContext:
    def __init__(self, src: Source, models: Mapping[str, Model] | None, aliases: Mapping[str, str],
                 classifier: Classifier | None, problems: Problems, heads: frozenset[str] | None) -> None:
        self.src = src
        self.models = models
        self.aliases = aliases
        self.classifier = classifier
        self.problems = problems
        self.heads = heads  # the models the policy's predictor scores; None: the policy has none

    def model(self, name: str, path: PathT, what: str) -> str | None:
        """A model or alias name -> the model; None (and a problem) when unknown."""
        if self.models is None:
            return None
        if name in self.models:
            return name
        if name in self.aliases:
            return self.aliases[name]
        known = ", ".join((*self.models, *self.aliases))
        self.problems.add(self.src, path, f"unknown {what} `{name}` (models and aliases: {known})")
        return None


def _compile_match(ctx: _RuleContext, spec: MatchSpec, path: PathT) -> tuple[list[Cond], list[str], dict[str, Any]]:
    conds: list[Cond] = []
    parts: list[str] = []
    norm: dict[str, Any] = {}
    src, problems = ctx.src, ctx.problems
    for key in ("tenant", "team", "key_id", "model", "requested", "kind", "category"):
        raw = getattr(spec, key)
        if raw is None:
            continue
        names = as_names(raw)
        kpath = (*path, key)
        if not names:
            problems.add(src, kpath, f"`{key}` lists nothing; the rule can never match")
            continue
        allowed = set(names)
        if key == "model":
            allowed = set()
            for name in names:
                if name == AUTO:
                    allowed.add(AUTO)
                    continue
                target = ctx.model(name, kpath, "model")
                allowed.add(name)
                if target is not None and name == target and ctx.models is not None:
                    allowed.update(ctx.models[target].aliases)  # a model matches requests for its aliases too
        elif key == "requested":
            for name in names:
                if name not in REQUESTED_KINDS:
                    problems.add(src, kpath, f"unknown requested kind `{name}` (known: {names_text(REQUESTED_KINDS)})")
        elif key == "kind":
            for name in names:
                if name not in ("chat", "completion"):
                    problems.add(src, kpath, f"unknown kind `{name}` (chat or completion)")
        elif key == "category" and ctx.classifier is not None:
            known = ctx.classifier.known_categories
            for name in names:
                if name not in known:
                    problems.add(src, kpath, f"unknown category `{name}` (known: {names_text(sorted(known))})")
        frozen = frozenset(allowed)
        norm[key] = frozen
        if key == "requested":
            conds.append(requested_cond(frozen, names_text(names)))
        else:
            conds.append(member_cond(LABELS[key], GETTERS[key], frozen, names_text(names)))
        parts.append(f"{key} in [{names_text(names)}]")
    if spec.headers is not None:
        headers: dict[str, frozenset[str] | None] = {}
        for hname, raw in spec.headers.items():
            values = as_names(raw)
            lname = hname.lower()
            headers[lname] = None if values == ("*",) else frozenset(values)
            conds.append(header_cond(lname, headers[lname], names_text(values)))
            parts.append(f"header {lname} " + ("present" if values == ("*",) else f"in [{names_text(values)}]"))
        norm["headers"] = headers
    for key, get in RANGES.items():
        rng: RangeSpec | None = getattr(spec, key)
        if rng is None:
            continue
        check_range(src, (*path, key), rng, problems)
        if key == "tier" and ctx.classifier is not None and rng.min is not None:
            top = max((t for _, t in ctx.classifier.tiers), default=ctx.classifier.lowest_tier)
            if rng.min > top:
                problems.add(src, (*path, key), f"the classifier's highest tier is {top}; this can never match")
        conds.append(range_cond(key.replace("_", " "), get, rng.min, rng.max))
        parts.append(f"{key} {range_text(rng.min, rng.max)}")
        norm[key] = (rng.min if rng.min is not None else -_INF, rng.max if rng.max is not None else _INF)
    for key in ("capabilities", "any_capability", "not_capabilities"):
        raw = getattr(spec, key)
        if raw is None:
            continue
        names = as_names(raw)
        for name in names:
            if name not in CAPABILITIES:
                problems.add(src, (*path, key), f"unknown capability `{name}` (known: {names_text(CAPABILITIES)})")
        caps = frozenset(names)
        if not caps:
            problems.add(src, (*path, key), f"`{key}` lists nothing")
            continue
        norm[key] = caps
        conds.append(caps_cond(key, caps))
        label = {"capabilities": "needs all of", "any_capability": "needs any of",
                 "not_capabilities": "needs none of"}[key]
        parts.append(f"{label} [{names_text(names)}]")
    for key in ("stream", "deterministic"):
        value = getattr(spec, key)
        if value is None:
            continue
        norm[key] = value
        conds.append(bool_cond(key, value))
        parts.append(f"{key} is {str(value).lower()}")
    # A few contradictions that make a rule dead on its own.
    if "requested" in norm and "model" in norm and ctx.models is not None:
        kinds = {("auto" if n == AUTO else "model" if n in ctx.models else "alias") for n in norm["model"]}
        if not kinds & norm["requested"]:
            problems.add(src, (*path, "requested"),
                         "`requested` and `model` contradict each other; the rule can never match")
    return conds, parts, norm


def _covers(a: Mapping[str, Any], b: Mapping[str, Any], model_kinds: Mapping[str, str]) -> bool:
    """True when every request matching constraints `b` also matches constraints `a`."""
    for key, want in a.items():
        have = b.get(key)
        if key == "requested" and have is None and "model" in b:
            if all(model_kinds.get(n, "alias") in want for n in b["model"]):
                continue
            return False
        if key == "any_capability":
            if have is not None and have <= want:
                continue
            if b.get("capabilities") and not want.isdisjoint(b["capabilities"]):
                continue
            return False
        if key == "capabilities":
            if have is not None and want <= have:
                continue
            return False
        if have is None:
            return False
        if key == "not_capabilities":
            if want <= have:
                continue
            return False
        if key == "headers":
            for hname, values in want.items():
                if hname not in have:
                    return False
                if values is not None and (have[hname] is None or not have[hname] <= values):
                    return False
            continue
        if isinstance(want, tuple):  # a range
            if not (want[0] <= have[0] and have[1] <= want[1]):
                return False
            continue
        if isinstance(want, frozenset):
            if not have <= want:
                return False
            continue
        if want != have:
            return False
    return True


def _cache_policies(spec: Any) -> tuple[CachePolicy, CachePolicy, bool]:
    if spec is None or spec == "no-store":
        off = CachePolicy(store=False, reason="the rule says no-store" if spec == "no-store" else "no cache policy")
        return off, off, False
    assert isinstance(spec, CacheSpec)
    deterministic = spec.when == "deterministic"
    on = CachePolicy(store=True, ttl_s=spec.ttl_s, namespace=spec.namespace,
                     reason="deterministic request" if deterministic else "the rule caches every request")
    skip = CachePolicy(store=False, reason="not deterministic: temperature > 0 and no seed")
    return on, skip, deterministic


def _check_cache(ctx: _RuleContext, spec: Any, path: PathT) -> None:
    if isinstance(spec, CacheSpec):
        if spec.ttl_s < 1:
            ctx.problems.add(ctx.src, (*path, "ttl_s"), "`ttl_s` must be >= 1 (use `no-store` to disable caching)")
        if spec.namespace is not None and not spec.namespace:
            ctx.problems.add(ctx.src, (*path, "namespace"), "`namespace` must not be empty")


def load_rules(src: Source, catalogue: Catalogue | None, classifier: Classifier | None, heads: frozenset[str] | None,
                problems: Problems) -> tuple[tuple[Rule, ...], Rule] | None:
    """routing.yaml (already read) -> (the rules in order, the implicit default rule); None when it has
    errors (recorded in `problems`). Without a catalogue, only what needs none is checked.
    """
    data = src.data if src.data is not None else {}
    spec = convert(src, data, RoutingFile, (), problems)
    if spec is None:
        return None
    models, aliases = catalogue if catalogue is not None else (None, {})
    ctx = _RuleContext(src, models, aliases, classifier, problems, heads)
    before = len(problems.items)

    defaults = spec.defaults
    dpath: PathT = ("defaults",)
    default_ref = None
    if defaults.reference_model is not None:
        default_ref = ctx.model(defaults.reference_model, (*dpath, "reference_model"), "reference model")
    _check_quality(ctx, defaults.quality_target, (*dpath, "quality_target"))
    if defaults.max_tokens is not None and defaults.max_tokens < 1:
        problems.add(src, (*dpath, "max_tokens"), "`max_tokens` must be >= 1")
    _check_cache(ctx, defaults.cache, (*dpath, "cache"))

    all_models = tuple(models.values()) if models is not None else ()
    rules: list[Rule] = []
    seen: dict[str, PathT] = {}
    for i, raw in enumerate(spec.rules):
        path: PathT = ("rules", i)
        rs = convert(src, raw, RuleSpec, path, problems)
        if rs is None:
            continue
        if not rs.name:
            problems.add(src, (*path, "name"), "a rule needs a non-empty `name`")
        elif rs.name in seen:
            first = src.line(seen[rs.name])
            problems.add(src, (*path, "name"), f"duplicate rule name `{rs.name}` (first at line {first})")
        elif rs.name == IMPLICIT_RULE:
            problems.add(src, (*path, "name"), f"`{IMPLICIT_RULE}` is reserved")
        seen.setdefault(rs.name, path)
        rule = _compile_rule(ctx, rs, path, defaults, default_ref, all_models)
        if rule is not None:
            rules.append(rule)
    if len(problems.items) != before or models is None:
        return None

    # Rules that can never match because an earlier rule takes every request they would.
    model_kinds = {n: "model" for n in models} | {a: "alias" for a in aliases} | {AUTO: "auto"}
    for j, later in enumerate(rules):
        for earlier in rules[:j]:
            if _covers(earlier.constraints, later.constraints, model_kinds):
                what = "matches every request" if not earlier.constraints else \
                    f"matches every request `{later.name}` would"
                line = later.where.rsplit(":", 1)[1]
                problems.add_at(src.name, int(line),
                                f"rule `{later.name}` can never match: rule `{earlier.name}` ({earlier.where}) {what}")
                break
    if len(problems.items) != before:
        return None
    implicit_cache = _cache_policies(defaults.cache)
    default_rule = Rule(
        name=IMPLICIT_RULE,
        description="applies when no rule matches: the cheapest capable model",
        where=src.where(("rules",)),
        conditions=(),
        summary="no rule matched",
        action="smallest_capable",
        model=None,
        candidates=all_models,
        min_tier=None,
        tier_from_complexity=False,
        min_score=None,
        deny_message=None,
        max_tokens_cap=defaults.max_tokens,
        cache_store=implicit_cache[0],
        cache_skip=implicit_cache[1],
        cache_needs_determinism=implicit_cache[2],
        fallbacks=None,
        reference_model=default_ref,
    )
    return tuple(rules), default_rule


def _compile_rule(ctx: _RuleContext, rs: RuleSpec, path: PathT, defaults: DefaultsSpec, default_ref: str | None,
                  all_models: tuple[Model, ...]) -> Rule | None:
    src, problems = ctx.src, ctx.problems
    before = len(problems.items)
    conds, parts, norm = _compile_match(ctx, rs.match, (*path, "match"))
    action: Literal["smallest_capable", "cheapest_above", "model", "requested", "deny"] = "smallest_capable"
    model = None
    candidates = all_models
    min_tier: int | None = None
    from_complexity = False
    min_score: float | None = None
    quality: float | None = None
    relative: float | None = None
    if rs.deny is not None:
        action = "deny"
        if not rs.deny.strip():
            problems.add(src, (*path, "deny"), "`deny` needs a message for the client")
        for key in ("route", "max_tokens", "cache", "fallbacks", "reference_model"):
            if getattr(rs, key) is not None:
                problems.add(src, (*path, key), f"a deny rule cannot also set `{key}`")
    elif rs.route == "requested":
        action = "requested"
    elif rs.route == "cheapest_above" or (isinstance(rs.route, RouteSpec) and rs.route.cheapest_above is not None):
        action = "cheapest_above"
        spec = rs.route.cheapest_above if isinstance(rs.route, RouteSpec) else None
        cpath: PathT = (*path, "route", "cheapest_above") if spec is not None else (*path, "route")
        if isinstance(rs.route, RouteSpec) and (rs.route.model is not None or rs.route.smallest_capable is not None):
            problems.add(src, (*path, "route"), "`route` needs exactly one of `smallest_capable`, `cheapest_above` "
                         "or `model`")
        if spec is not None and (spec.quality is not None or spec.relative is not None):
            quality, relative = spec.quality, spec.relative
            _check_quality(ctx, quality, (*cpath, "quality"))
            _check_quality(ctx, relative, (*cpath, "relative"))
        else:
            relative = defaults.quality_target
            if relative is None:
                problems.add(src, cpath, "`cheapest_above` needs a target: give `quality:` or `relative:` here, or "
                             "set `defaults.quality_target`")
        if spec is not None and spec.candidates is not None:
            candidates = _candidates(ctx, spec.candidates, (*cpath, "candidates"))
        if spec is not None and spec.min_tier is not None:
            min_tier = spec.min_tier
            _check_min_tier(ctx, candidates, min_tier, (*cpath, "min_tier"))
        if ctx.heads is None:
            if defaults.predictor is None:  # else it is set but could not be loaded, reported at its line
                problems.add(src, cpath, "routing on predicted quality needs a predictor: set `defaults.predictor`")
        else:
            for m in candidates:
                if m.name not in ctx.heads:
                    problems.add(src, cpath, f"candidate `{m.name}` has no head in the predictor (it predicts "
                                 f"{', '.join(sorted(ctx.heads))}); retrain it with that model, or list candidates")
    elif isinstance(rs.route, RouteSpec):
        route = rs.route
        rpath = (*path, "route")
        if (route.model is None) == (route.smallest_capable is None):
            problems.add(src, rpath, "`route` needs exactly one of `smallest_capable`, `cheapest_above` or `model`")
        elif route.model is not None:
            action = "model"
            model = ctx.model(route.model, (*rpath, "model"), "model")
        else:
            sc = route.smallest_capable
            assert sc is not None
            spath = (*rpath, "smallest_capable")
            if sc.candidates is not None:
                candidates = _candidates(ctx, sc.candidates, (*spath, "candidates"))
            if sc.min_tier == "complexity":
                from_complexity = True
            elif sc.min_tier is not None:
                min_tier = sc.min_tier
                _check_min_tier(ctx, candidates, min_tier, (*spath, "min_tier"))
            min_score = sc.min_score
    if rs.max_tokens is not None and rs.max_tokens < 1:
        problems.add(src, (*path, "max_tokens"), "`max_tokens` must be >= 1")
    _check_cache(ctx, rs.cache, (*path, "cache"))
    fallbacks: tuple[str, ...] | None = None
    if rs.fallbacks is not None:
        resolved = [ctx.model(n, (*path, "fallbacks", j), "fallback model") for j, n in enumerate(rs.fallbacks)]
        fallbacks = tuple(dict.fromkeys(r for r in resolved if r is not None))
        if model is not None and model in fallbacks:
            problems.add(src, (*path, "fallbacks"), f"`{model}` is both the route and one of its fallbacks")
    ref = default_ref
    if rs.reference_model is not None:
        ref = ctx.model(rs.reference_model, (*path, "reference_model"), "reference model")
    if len(problems.items) != before:
        return None
    cache_spec = rs.cache if rs.cache is not None else defaults.cache
    store, skip, needs_det = _cache_policies(cache_spec)
    return Rule(
        name=rs.name,
        description=rs.description,
        where=src.where(path),
        conditions=tuple(conds),
        summary=", ".join(parts) if parts else "matches every request",
        action=action,
        model=model,
        candidates=candidates,
        min_tier=min_tier,
        tier_from_complexity=from_complexity,
        min_score=min_score,
        deny_message=rs.deny,
        max_tokens_cap=rs.max_tokens if rs.max_tokens is not None else defaults.max_tokens,
        cache_store=store,
        cache_skip=skip,
        cache_needs_determinism=needs_det,
        fallbacks=fallbacks,
        reference_model=ref,
        constraints=MappingProxyType(norm),
        quality=quality,
        relative=relative,
    )


def _candidates(ctx: _RuleContext, names: tuple[str, ...], path: PathT) -> tuple[Model, ...]:
    chosen: list[Model] = []
    for j, name in enumerate(names):
        target = ctx.model(name, (*path, j), "candidate")
        if target is not None and ctx.models is not None and ctx.models[target] not in chosen:
            chosen.append(ctx.models[target])
    if not names:
        ctx.problems.add(ctx.src, path, "`candidates` lists nothing")
    return tuple(chosen)


def _check_min_tier(ctx: _RuleContext, candidates: tuple[Model, ...], min_tier: int, path: PathT) -> None:
    if candidates and all(m.tier < min_tier for m in candidates):
        top = max(m.tier for m in candidates)
        ctx.problems.add(ctx.src, path, f"no candidate has tier >= {min_tier} (highest: {top}); the rule can never "
                         "route")


def _check_quality(ctx: _RuleContext, value: float | None, path: PathT) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        ctx.problems.add(ctx.src, path, f"a quality is a predicted score in [0, 1], not {value:g}")
