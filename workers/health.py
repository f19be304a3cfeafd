"""Live state of each replica: its GET /health, the load gauges of its /metrics and what its /v1/models
says it serves (the model's `max_model_len`, `root`, ...), on an interval.

The checks use aiohttp, as calls do, on a session of their own (`Upstream.checks`, workers/upstream.py).
What /v1/models says is kept on the replica: the gateway lists it at its own /v1/models and derives the
catalogue entries of models that models.yaml does not list from it (router/derive.py), never asking a
worker on a client's request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import msgspec

from workers.config import check_timeout
from workers.engine_metrics import parse_load
from workers.pool import Pool, Pools, Replica

log = logging.getLogger("gateway.workers")

# A healthy replica stays in rotation through this many late answers to /health in a row: an engine busy on a
# full batch (or a host short of CPU) can answer one late, and taking the last replica out fails every call.
# A refused connection, another status, or one late answer more takes it out at once.
LATE_TOLERATED = 1


async def fetch(session: aiohttp.ClientSession, url: str, timeout: float) -> tuple[int, bytes]:
    """GET `url`: its status and body (raises aiohttp's errors, and TimeoutError past `timeout`)."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout),
                           allow_redirects=False) as response:
        return response.status, await response.read()


async def fetch_models(session: aiohttp.ClientSession, url: str, timeout: float,
                       headers: Mapping[str, str]) -> tuple[int, bytes]:
    """GET `url` (/v1/models) with the pool's headers: vLLM's --api-key guards it, unlike /health."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False,
                           headers=headers) as response:
        return response.status, await response.read()


class _ModelList(msgspec.Struct):
    data: list[dict[str, Any]]


def read_models(replica: Replica, model: str | None, body: bytes) -> None:
    """A /v1/models answer onto `replica`: the ids it lists and the entry for `model`. Not a list: ignored."""
    try:
        entries = msgspec.json.decode(body, type=_ModelList).data
    except msgspec.DecodeError:
        return
    ids = tuple(e["id"] for e in entries if isinstance(e.get("id"), str))
    replica.lists = ids
    replica.card = next((e for e in entries if e.get("id") == model), None) if model is not None else None


def served_view(replica: Replica) -> tuple[object, ...]:
    """What routing derives from a replica's /v1/models (its `created` and permission ids change each time)."""
    card = replica.card
    return replica.lists, card.get("max_model_len") if card is not None else None


async def check_replica(session: aiohttp.ClientSession, replica: Replica, timeout: float, model: str | None = None,
                        headers: Mapping[str, str] | None = None) -> bool:
    """One check of `replica` (serving `model`); whether what it serves changed (its ids, the model's window)."""
    before = served_view(replica)
    health, metrics, models = await asyncio.gather(
        fetch(session, f"{replica.url}/health", timeout),
        fetch(session, f"{replica.url}/metrics", timeout),
        fetch_models(session, f"{replica.url}/v1/models", timeout, headers or {}),
        return_exceptions=True,
    )
    if isinstance(models, BaseException):
        if not isinstance(models, Exception):
            raise models
    elif models[0] == 200:
        read_models(replica, model, models[1])
    if isinstance(health, BaseException):
        if not isinstance(health, Exception):  # cancelled: the checker is stopping
            raise health
        ok, error = False, f"/health failed: {type(health).__name__}"
    else:
        ok, error = health[0] == 200, f"/health answered {health[0]}"
    replica.late = replica.late + 1 if isinstance(health, TimeoutError) else 0
    tolerated = not ok and replica.healthy and 0 < replica.late <= LATE_TOLERATED
    if not isinstance(metrics, BaseException) and metrics[0] == 200:
        load = parse_load(metrics[1].decode("utf-8", "replace"))
        replica.running, replica.waiting, replica.kv_cache = load.running, load.waiting, load.kv_cache
    if ok != replica.healthy and not tolerated:
        log.info("replica %s of pool %s is now %s", replica.url, replica.pool, "healthy" if ok else "unhealthy")
    replica.healthy = ok or tolerated
    replica.checked_at = time.monotonic()  # the supervisor restarts a launched replica failing them too long
    if ok:
        replica.healthy_at = replica.checked_at
    else:
        replica.last_error = error
    return served_view(replica) != before


async def check_pool(session: aiohttp.ClientSession, pool: Pool, timeout: float) -> bool:
    changed = await asyncio.gather(*(check_replica(session, r, timeout, pool.model, pool.headers)
                                     for r in pool.replicas))
    return any(changed)


async def check_all(session: aiohttp.ClientSession, pools: Pools, timeout: float) -> bool:
    """Check every replica; whether what some replica serves changed."""
    changed = await asyncio.gather(*(check_pool(session, p, timeout) for p in pools.pools))
    return any(changed)


async def watch_health(session: aiohttp.ClientSession, pools: Pools, interval: float,
                       on_served: Callable[[], None] | None = None) -> None:
    """Runs until cancelled; `on_served` is called after a round in which what a replica serves changed."""
    while True:
        if await check_all(session, pools, timeout=check_timeout(interval)) and on_served is not None:
            on_served()
        await asyncio.sleep(interval)
