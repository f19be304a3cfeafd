"""The gateway's side of routing: the policy in force (hot-reloaded, last good kept), and one request's
route: classify, decide (router/, pure), and the pools it may go to, fallbacks included.

The models the pools serve but the catalogue does not list are derived from what their workers' /v1/models
said (router/derive.py): the health checks learn it, `PolicyStore.refresh_served` swaps the policy in force
when it changes, so no request waits on a worker to be routed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import watchfiles

from gateway.accounting.prices import PriceCatalogue, current_token_rates
from router.catalogue import AUTO, Model
from router.classify import Features, classify
from router.decide import decide
from router.decision import CachePolicy, Caller, PoolState, RouteDecision
from router.derive import UNKNOWN_WINDOW, ServedModel, routing_policy
from router.errors import InvalidRequest, ModelNotFound
from router.policy import PolicySet, default_policy_dir, load_policy_set, read_policy_set
from router.pricing import TokenRates
from router.quality import QualityProbe
from workers.pool import Pool, Pools, pool_load

log = logging.getLogger("gateway.routing")

DIRECT_RULE = "direct"  # a model a pool serves but the catalogue does not list: called by name only
RATES_TTL_S = 60.0


@dataclass(frozen=True, eq=False)
class ActivePolicy:
    """A policy and what the gateway derives from it for its configured pools; swapped whole."""

    policy: PolicySet  # as the files hold it
    pools: Pools
    loaded_at: float
    # The pools' models the catalogue does not list, as their workers described them (a pool whose workers do
    # not list its model is left out): routing derives catalogue entries from them.
    served: tuple[ServedModel, ...] = ()
    # The models of pools whose workers answered /v1/models without them: not offered; a call naming one still
    # goes to its pool (and gets the worker's own answer).
    unlisted: frozenset[str] = frozenset()

    @cached_property
    def direct(self) -> dict[str, Pool]:
        """Models the catalogue does not list, by name: a call naming one goes straight to its pool."""
        return {p.model: p for p in self.pools.pools if p.model not in self.policy.models}

    @cached_property
    def routing(self) -> PolicySet:
        """The policy `auto` is routed with: the files', or, when they list no served model, one among the
        derived models (router/derive.py)."""
        generating = [p.name for p in self.pools.pools if p.runner == "generate"]  # the pools chat may go to
        return routing_policy(self.policy, generating, self.served)

    @property
    def derived(self) -> bool:
        """Whether `auto` routes among models derived from the pools (the catalogue lists none they serve)."""
        return self.routing is not self.policy

    @cached_property
    def routable(self) -> tuple[str, ...]:
        """What clients may ask for: `auto` (when something can serve it), catalogued models whose pool is
        configured, their aliases, and the models of pools the catalogue does not list."""
        pools = self.pools.by_name
        served = {m for m, model in self.policy.models.items() if model.pool in pools}
        names = [n for n in self.policy.routable_names() if n != AUTO and self.policy.resolve(n) in served]
        chat = any(pools[self.policy.models[m].pool].runner == "generate" for m in served)
        auto = (AUTO,) if chat or self.derived else ()
        return (*auto, *names, *sorted(n for n in self.direct if n not in self.unlisted))

    @cached_property
    def named(self) -> dict[str, tuple[str, Pool]]:
        """Every name a model may be called by, with the model it means and its pool: catalogued models whose
        pool is configured, their aliases, and the models of pools the catalogue does not list."""
        pools, policy = self.pools.by_name, self.policy
        named = {n: (m, pools[policy.models[m].pool]) for n in policy.routable_names()
                 if (m := policy.resolve(n)) is not None and policy.models[m].pool in pools}
        return {**named, **{name: (name, pool) for name, pool in self.direct.items()}}

    @cached_property
    def windows(self) -> Mapping[str, Model]:
        """The routing policy's models whose context window is known (a budget's reservation is bounded by it)."""
        return {n: m for n, m in self.routing.models.items() if m.context_window != UNKNOWN_WINDOW}


@dataclass
class PolicyStore:
    """The policy in force. A reload that fails validation keeps the last good policy."""

    directory: Path
    pools: Pools
    active: ActivePolicy = field(init=False)
    last_error: list[str] | None = None
    last_error_at: float | None = None

    _said: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        policy = load_policy_set(self.directory)  # fails loudly
        self.active = ActivePolicy(policy, self.pools, time.time(), served_models(policy, self.pools),
                                   unlisted_models(self.pools))
        for problem in self.active.policy.check_pools(p.name for p in self.pools.pools):
            log.warning("policy: %s; routing never chooses it", problem)

    def refresh_served(self) -> None:
        """What the pools' workers serve changed (the health checks): derive again; say what is derived."""
        active = self.active
        served, unlisted = served_models(active.policy, self.pools), unlisted_models(self.pools)
        if (served, unlisted) != (active.served, active.unlisted):
            self.active = active = dataclasses.replace(active, served=served, unlisted=unlisted)
        for line in derivation_notes(active):
            if line not in self._said:
                self._said.add(line)
                log.warning("policy: %s", line)

    def reload(self) -> bool:
        """Validate the files again; swap atomically when they are good and changed."""
        policy, problems = read_policy_set(self.directory)
        if policy is None:
            self.last_error, self.last_error_at = problems, time.time()
            log.error("policy reload refused; keeping %s:\n  %s", self.active.policy.hash[:12], "\n  ".join(problems))
            return False
        self.last_error = self.last_error_at = None
        if policy.hash == self.active.policy.hash:
            return False
        self.active = ActivePolicy(policy, self.pools, time.time(), served_models(policy, self.pools),
                                   unlisted_models(self.pools))
        log.info("policy %s loaded from %s", policy.hash[:12], self.directory)
        self.refresh_served()
        return True

    async def watch(self) -> None:
        """Reload when a policy file changes (runs until cancelled)."""
        async for _ in watchfiles.awatch(self.directory, debounce=200, step=50):
            self.reload()

    def status(self) -> dict[str, Any]:
        p = self.active.policy
        return {
            "directory": str(self.directory), "hash": p.hash, "files": list(p.files),
            "loaded_at": datetime.fromtimestamp(self.active.loaded_at, UTC).isoformat(),
            "rules": [r.name for r in p.rules], "models": list(p.models), "aliases": dict(p.aliases),
            "derived": [{"model": s.name, "pool": s.pool, "context_window": s.max_model_len}
                        for s in self.active.served],
            "auto": "derived" if self.active.derived else "policy",
            "predictor": p.predictor.summary() if p.predictor is not None else None,
            "quality_target": p.quality_target,
            "last_error": self.last_error,
            "last_error_at": datetime.fromtimestamp(self.last_error_at, UTC).isoformat()
            if self.last_error_at else None,
        }


def policy_directory(configured: str | None) -> Path:
    return Path(configured) if configured else default_policy_dir()


def served_models(policy: PolicySet, pools: Pools) -> tuple[ServedModel, ...]:
    """The generating pools' models `policy` does not list, as their workers told (those they do not list left
    out). A pooling pool's model (an embedding model) is never a candidate for chat: it is called by name."""
    return tuple(
        ServedModel(p.model, p.name, p.max_model_len())
        for p in pools.pools
        if p.model not in policy.models and not p.model_unlisted() and p.runner == "generate"
    )


def unlisted_models(pools: Pools) -> frozenset[str]:
    """The models of pools whose workers answered /v1/models and list none of them."""
    return frozenset(p.model for p in pools.pools if p.model_unlisted())


def derivation_notes(active: ActivePolicy) -> list[str]:
    """What an operator should know about the models derived from the pools, and what to edit."""
    models_file = active.policy.directory / "models.yaml"
    hint = f"add them to {models_file} to route them by the policy (`gateway init --from-pools` writes entries)"
    notes: list[str] = []

    def told(s: ServedModel) -> str:
        window = f"context window {s.max_model_len:,}" if s.max_model_len is not None else "context window not known"
        return f"`{s.name}` (pool `{s.pool}`, {window})"

    if active.derived:
        names = ", ".join(told(s) for s in active.served)
        notes.append(f"{models_file} lists no model a configured pool serves: `auto` routes among the pools' own "
                     f"models, {names}, the cheapest first; {hint}")
    elif active.served:
        names = ", ".join(told(s) for s in active.served)
        notes.append(f"not in {models_file}: {names}; clients can call them by name, `auto` never chooses them; "
                     f"{hint}")
    for pool in active.pools.pools:
        if pool.model_unlisted():
            ids = sorted({i for r in pool.replicas for i in (r.lists or ())})
            notes.append(f"pool `{pool.name}`: its workers serve {', '.join(ids) or 'no model'}, not `{pool.model}`; "
                         f"calls for `{pool.model}` get the worker's error and `auto` never chooses it; set the "
                         "pool's `model` to the name the worker serves (vLLM's --served-model-name)")
    return notes


def pool_states(pools: Pools) -> dict[str, PoolState]:
    """Health and load of each pool, as routing sees them. A pooling pool cannot take a chat or completion: a
    catalogued model of one is never chosen for them."""
    return {p.name: PoolState(p.has_candidate() and p.runner == "generate", pool_load(p)) for p in pools.pools}


@dataclass
class Rates:
    """Per-token rates for routing's cost comparison, refreshed now and then (prices change by date)."""

    source: PriceCatalogue
    _rates: Mapping[str, TokenRates] = field(default_factory=dict)
    _until: float = 0.0

    def current(self) -> Mapping[str, TokenRates]:
        now = time.monotonic()
        if now >= self._until:
            self._rates, self._until = current_token_rates(self.source, datetime.now(UTC)), now + RATES_TTL_S
        return self._rates


@dataclass(frozen=True)
class Route:
    targets: tuple[tuple[str, Pool], ...]  # (model, pool): the choice, then its fallbacks
    rule: str
    decision: RouteDecision | None  # None for a direct call
    features: Features | None = None  # what classify() found (None for a direct call); limits estimate with it
    quality: QualityProbe | None = None  # the learned predictor's view, when a rule consulted it
    # The catalogue it was routed with: the targets' context windows bound a budget's reservation.
    models: Mapping[str, Model] | None = None
    cache: CachePolicy | None = None  # a call routed by name only (no decision): what the response cache may do

    @property
    def header(self) -> str:
        """`x-gateway-route`: the rule, with the predicted quality of each candidate when it was asked."""
        return self.decision.route_header() if self.decision is not None else self.rule


def route(
    active: ActivePolicy,
    body: dict[str, Any],
    kind: Literal["chat", "completion"],
    requested: str,
    headers: Mapping[str, str],
    caller: Caller,
    rates: Mapping[str, TokenRates],
) -> Route:
    if (pool := active.direct.get(requested)) is not None and pool.runner == "generate":
        return Route(((requested, pool),), DIRECT_RULE, None)
    if (named := active.named.get(requested)) is not None and named[1].runner != "generate":
        raise not_served(requested, named[1], "chat completions" if kind == "chat" else "completions")
    if requested not in active.routable:
        if requested == AUTO:
            valid = f" Valid models: {', '.join(active.routable)}." if active.routable else ""
            raise ModelNotFound(f"No model can be routed for `auto`: {active.policy.directory / 'models.yaml'} lists "
                                "no model a configured pool serves, and no pool's workers serve the pool's model."
                                + valid, param="model")
        raise ModelNotFound(
            f"The model `{requested}` does not exist. Valid models: {', '.join(active.routable)}.", param="model"
        )
    policy = active.routing
    features = classify(body, kind, headers, policy.classifier)
    probe = QualityProbe(policy.predictor, body, features) if policy.predictor is not None else None
    decision = decide(features, caller, requested, policy, pool_states(active.pools), rates, probe)
    by_name = active.pools.by_name
    targets = [(decision.model, by_name[decision.pool])]
    targets += [(t.model, by_name[t.pool]) for t in decision.fallbacks if t.pool in by_name]
    return Route(tuple(targets), decision.rule, decision, features,
                 probe if probe is not None and probe.vector is not None else None, active.windows)


def not_served(requested: str, pool: Pool, what: str) -> InvalidRequest:
    """A call naming a model whose pool's engine does not serve the endpoint (pools' `runner`)."""
    serves = "chat completions and completions" if pool.runner == "generate" else "embeddings, score and rerank"
    return InvalidRequest(f"The model `{requested}` (pool `{pool.name}`, runner {pool.runner}) serves {serves}, "
                          f"not {what}.", param="model", code="model_not_supported")


def install_sighup(store: PolicyStore) -> None:
    """SIGHUP reloads the policy (where this process can take signals: its main thread)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, store.reload)
