"""Live state of each replica: its GET /health and the load gauges of its /metrics, on an interval."""

from __future__ import annotations

import asyncio
import logging

import httpx

from workers.engine_metrics import parse_load
from workers.pool import Pools, Replica
from workers.upstream import UPSTREAM_ERRORS

log = logging.getLogger("gateway.workers")


async def check_replica(client: httpx.AsyncClient, replica: Replica, timeout: float) -> None:
    try:
        health, metrics = await asyncio.gather(
            client.get(f"{replica.url}/health", timeout=timeout),
            client.get(f"{replica.url}/metrics", timeout=timeout),
            return_exceptions=True,
        )
        if isinstance(health, BaseException):
            raise health
        ok, error = health.status_code == 200, f"/health answered {health.status_code}"
        if isinstance(metrics, httpx.Response) and metrics.status_code == 200:
            load = parse_load(metrics.text)
            replica.running, replica.waiting, replica.kv_cache = load.running, load.waiting, load.kv_cache
    except UPSTREAM_ERRORS as exc:
        ok, error = False, f"/health failed: {type(exc).__name__}"
    if ok != replica.healthy:
        log.info("replica %s of pool %s is now %s", replica.url, replica.pool, "healthy" if ok else "unhealthy")
    replica.healthy = ok
    if not ok:
        replica.last_error = error


async def check_all(client: httpx.AsyncClient, pools: Pools, timeout: float) -> None:
    await asyncio.gather(*(check_replica(client, r, timeout) for r in pools.replicas()))


async def watch_health(client: httpx.AsyncClient, pools: Pools, interval: float) -> None:
    """Runs until cancelled."""
    while True:
        await check_all(client, pools, timeout=max(0.5, min(interval, 5.0)))
        await asyncio.sleep(interval)
