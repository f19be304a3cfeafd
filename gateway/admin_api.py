"""Admin endpoints (the admin role guards them once keys land)."""

from __future__ import annotations

import time
from typing import Any

from litestar import get
from litestar.datastructures import State

from gateway.context import GatewayContext
from workers.pool import Replica


def replica_status(r: Replica, now: float) -> dict[str, Any]:
    b = r.breaker
    circuit = "closed" if b.closed else ("half-open" if b.probing or now >= b.open_until else "open")
    return {
        "url": r.url, "healthy": r.healthy, "in_flight": r.in_flight, "running": r.running, "waiting": r.waiting,
        "kv_cache": r.kv_cache, "load": r.load(), "circuit": circuit, "failures": b.failures,
        "last_error": r.last_error,
    }


def pools_status(ctx: GatewayContext) -> dict[str, Any]:
    now = time.monotonic()
    managed = {m.url: m.status() for m in ctx.supervisor.replicas}
    return {
        p.name: {
            "model": p.model,
            "balance": p.balance,
            "healthy": p.healthy_count,
            "in_flight": sum(r.in_flight for r in p.replicas),
            "replicas": [{**replica_status(r, now), "managed": managed.get(r.url)} for r in p.replicas],
        }
        for p in ctx.pools.pools
    }


@get("/admin/workers")
async def workers_status(state: State) -> dict[str, Any]:
    return {"pools": pools_status(state.ctx)}
