"""Catalogue entries derived from the models the pools serve but models.yaml does not list.

Pure: what the workers said (each served model, its pool and vLLM's `max_model_len`) comes in as values,
learned by the gateway's health checks; nothing here waits on the network. A derived model accepts every
request its window holds (the gateway knows nothing else about it: the worker's own error answers what it
cannot do), has tier 1, no scores, no aliases and no fallbacks.

When the catalogue lists no model whose pool is configured, the policy's rules can route nowhere: `auto`
is then routed by `routing_policy` among the derived models, cheapest first (by price when the price file
has one, else the least loaded pool), keeping only the policy's `deny` rules. When some catalogued model
is served, the policy routes `auto` as written and the derived models are called by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from router.catalogue import AUTO, Model
from router.policy import PolicySet
from router.rules import RequestKind, Rule
from router.spec import CAPABILITIES

__all__ = ["DERIVED_RULE", "UNKNOWN_WINDOW", "ServedModel", "derived_model", "routing_policy"]

DERIVED_RULE = "(derived from the pools)"
UNKNOWN_WINDOW = 2**31 - 1  # a window no worker has told yet: no request is refused for its size


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model a pool serves that the catalogue does not list, as its workers' `/v1/models` described it."""

    name: str
    pool: str
    max_model_len: int | None  # None: no worker has answered `/v1/models` yet


def derived_model(served: ServedModel) -> Model:
    window = served.max_model_len
    told = f"context window {window:,} from its workers" if window is not None else "context window not known yet"
    return Model(
        name=served.name,
        pool=served.pool,
        context_window=window if window is not None else UNKNOWN_WINDOW,
        tier=1,
        capabilities=frozenset(CAPABILITIES),
        scores=MappingProxyType({}),
        fallbacks=(),
        aliases=(),
        description=f"served by pool `{served.pool}`, not in models.yaml; {told}",
        where=f"pool `{served.pool}` (derived)",
    )


def served_by_catalogue(policy: PolicySet, configured_pools: Iterable[str]) -> list[str]:
    """The catalogued models whose pool is configured (what the policy's rules can route to)."""
    pools = set(configured_pools)
    return [m.name for m in policy.models.values() if m.pool in pools]


def routing_policy(policy: PolicySet, configured_pools: Iterable[str], derived: Sequence[ServedModel]) -> PolicySet:
    """The policy `auto` is routed with: `policy` itself when it lists a model of a configured pool (or
    nothing is derived), else one whose only candidates are the derived models (see the module's text)."""
    if not derived or served_by_catalogue(policy, configured_pools):
        return policy
    models = {s.name: derived_model(s) for s in derived}
    candidates = tuple(models.values())
    implicit = policy.default_rule
    rule = Rule(
        name=DERIVED_RULE,
        description="models.yaml lists no model a configured pool serves: the cheapest of the pools' own models",
        where=f"{policy.directory / 'models.yaml'} (no served model)",
        conditions=(),
        summary="the pools' own models",
        action="smallest_capable",
        model=None,
        candidates=candidates,
        min_tier=None,
        tier_from_complexity=False,
        min_score=None,
        deny_message=None,
        max_tokens_cap=implicit.max_tokens_cap,
        cache_store=implicit.cache_store,
        cache_skip=implicit.cache_skip,
        cache_needs_determinism=implicit.cache_needs_determinism,
        fallbacks=None,
        reference_model=None,
    )
    lookup: dict[str, tuple[RequestKind, str | None]] = {AUTO: ("auto", None)}
    return dataclasses.replace(
        policy,
        models=MappingProxyType(models),
        aliases=MappingProxyType({}),
        rules=tuple(r for r in policy.rules if r.action == "deny"),  # who may call still holds
        default_rule=rule,
        lookup=MappingProxyType(lookup),
        predictor=None,  # it has no head for these models
        predictor_ref=None,
        quality_target=None,
    )
