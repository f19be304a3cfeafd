"""Routing by the model's name alone, for the endpoints no classifier reads (embeddings, tokenize, detokenize,
score, rerank): the requested model's pool, be it a catalogued model (or an alias) or the model of a pool the
catalogue does not list. Nothing else is chosen: no rule, no fallback (another model's embeddings, scores or
token ids are not the same answer).

`auto`, or no model, means the only pool serving the endpoint; with several, the call must name one (a 400
listing them), with none it is a 404. A pool whose engine serves something else (its `runner`) is a 400 naming
`model`.
"""

from __future__ import annotations

from gateway.routing import DIRECT_RULE, ActivePolicy, Route, not_served
from router.catalogue import AUTO
from router.errors import InvalidRequest, ModelNotFound
from workers.config import Runner
from workers.pool import Pool

__all__ = ["route_by_name"]


def _serving(active: ActivePolicy, runner: Runner | None) -> dict[str, tuple[str, Pool]]:
    """The names of the models whose pool serves `runner` (every pool: None), each with its model and pool."""
    return {n: target for n, target in active.named.items() if runner is None or target[1].runner == runner}


def route_by_name(active: ActivePolicy, requested: str, runner: Runner | None, what: str, cached: bool) -> Route:
    """The route of a call for `requested` at an endpoint served by `runner` pools (`what` it is, for errors).
    `cached`: the response cache may answer it, as the policy's defaults say (`defaults.cache`)."""
    target = active.named.get(requested)
    if target is None:
        if requested != AUTO:
            names = ", ".join(sorted(_serving(active, runner)))
            raise ModelNotFound(f"The model `{requested}` does not exist. Valid models for {what}: {names or 'none'}.",
                                param="model")
        pools = {pool.name: (model, pool) for model, pool in _serving(active, runner).values()}
        if len(pools) != 1:
            if not pools:
                raise ModelNotFound(f"No model can be routed for `auto`: no configured pool serves {what} (a pool of "
                                    "an embedding model says `runner: pooling`).", param="model")
            names = ", ".join(sorted(m for m, _ in pools.values()))
            raise InvalidRequest(f"Name the model for {what}: `auto` chooses only when one pool serves them. "
                                 f"Valid models: {names}.", param="model", code="model_required")
        [target] = pools.values()
    model, pool = target
    if runner is not None and pool.runner != runner:
        raise not_served(requested, pool, what)
    policy = active.policy
    cache = policy.default_rule.cache_store if cached else None
    return Route(((model, pool),), DIRECT_RULE, None, models=active.windows, cache=cache)
