"""Live state of each replica: its GET /health and the load gauges of its /metrics, on an interval.

The checks use aiohttp, as calls do, on a session of their own (`Upstream.checks`, workers/upstream.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from workers.config import check_timeout
from workers.engine_metrics import parse_load
from workers.pool import Pools, Replica

log = logging.getLogger("gateway.workers")


async def fetch(session: aiohttp.ClientSession, url: str, timeout: float) -> tuple[int, bytes]:
    """GET `url`: its status and body (raises aiohttp's errors, and TimeoutError past `timeout`)."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout),
                           allow_redirects=False) as response:
        return response.status, await response.read()


async def check_replica(session: aiohttp.ClientSession, replica: Replica, timeout: float) -> None:
    health, metrics = await asyncio.gather(
        fetch(session, f"{replica.url}/health", timeout),
        fetch(session, f"{replica.url}/metrics", timeout),
        return_exceptions=True,
    )
    if isinstance(health, BaseException):
        if not isinstance(health, Exception):  # cancelled: the checker is stopping
            raise health
        ok, error = False, f"/health failed: {type(health).__name__}"
    else:
        ok, error = health[0] == 200, f"/health answered {health[0]}"
    if not isinstance(metrics, BaseException) and metrics[0] == 200:
        load = parse_load(metrics[1].decode("utf-8", "replace"))
        replica.running, replica.waiting, replica.kv_cache = load.running, load.waiting, load.kv_cache
    if ok != replica.healthy:
        log.info("replica %s of pool %s is now %s", replica.url, replica.pool, "healthy" if ok else "unhealthy")
    replica.healthy = ok
    replica.checked_at = time.monotonic()  # the supervisor restarts a launched replica failing them too long
    if ok:
        replica.healthy_at = replica.checked_at
    else:
        replica.last_error = error


async def check_all(session: aiohttp.ClientSession, pools: Pools, timeout: float) -> None:
    await asyncio.gather(*(check_replica(session, r, timeout) for r in pools.replicas()))


async def watch_health(session: aiohttp.ClientSession, pools: Pools, interval: float) -> None:
    """Runs until cancelled."""
    while True:
        await check_all(session, pools, timeout=check_timeout(interval))
        await asyncio.sleep(interval)
