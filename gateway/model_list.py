"""What `GET /v1/models` lists: each name a client may ask for, with its worker's own fields.

A model's entry is its workers' /v1/models entry as vLLM gives it (`max_model_len`, `root`, `parent`,
`owned_by`, `permission`, `created`), cached by the health checks (workers/health.py): no worker is asked on
a client's request. An alias gets its model's entry under its own `id`; `auto` (no worker) gets the
gateway's own fields and the largest context window it may route to. A model whose workers have not
answered yet gets the gateway's fields and, when catalogued, its catalogue window.
"""

from __future__ import annotations

from typing import Any

from gateway.routing import ActivePolicy
from router.catalogue import AUTO
from router.derive import UNKNOWN_WINDOW
from workers.pool import Pool

__all__ = ["model_entries", "model_entry"]


def _own(name: str, created: int, window: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "gateway"}
    if window is not None and window != UNKNOWN_WINDOW:
        entry["max_model_len"] = window
    return entry


def _pool_of(active: ActivePolicy, model: str) -> Pool | None:
    direct = active.direct.get(model)
    if direct is not None:
        return direct
    spec = active.policy.models.get(model)
    return active.pools.by_name.get(spec.pool) if spec is not None else None


def model_entry(active: ActivePolicy, name: str, created: int) -> dict[str, Any] | None:
    """The entry for `name` (None when clients may not ask for it); `created`: the gateway's start."""
    if name not in active.routable:
        return None
    if name == AUTO:
        pools = active.pools.by_name
        windows = [m.context_window for m in active.routing.models.values() if m.pool in pools]
        known = [w for w in windows if w != UNKNOWN_WINDOW]
        return _own(AUTO, created, max(known) if known else None)
    model = active.policy.resolve(name) or name  # an alias: its model's entry
    pool = _pool_of(active, model)
    card = pool.model_card() if pool is not None else None
    if card is None:
        spec = active.policy.models.get(model)
        return _own(name, created, spec.context_window if spec is not None else None)
    return {**card, "id": name, "object": "model"}


def model_entries(active: ActivePolicy, created: int) -> list[dict[str, Any]]:
    entries = (model_entry(active, name, created) for name in active.routable)
    return [e for e in entries if e is not None]
