"""The app factory: `create_app(settings)`; one lifespan owns the client, the pools and launched replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar

from gateway.accounting import start_accounting, stop_accounting
from gateway.admin_api import workers_status
from gateway.context import GatewayContext
from gateway.errors import EXCEPTION_HANDLERS
from gateway.health_api import healthz, readyz
from gateway.openai_api import chat_completions, completions, list_models
from gateway.reports_api import usage_report
from gateway.settings import Settings
from router.models import Catalogue
from workers.breaker import Breaker
from workers.gpus import discover
from workers.health import check_all, watch_health
from workers.launcher import PoolLaunch, ReplicaPlan, plan
from workers.pool import Affinity, Gate, Pool, Pools, Replica
from workers.supervisor import Supervisor
from workers.upstream import new_client

log = logging.getLogger("gateway")


def launch_plans(settings: Settings) -> list[ReplicaPlan]:
    launches = [PoolLaunch(p.name, p.model, p.launch) for p in settings.pools if p.launch is not None]
    needs_gpus = any(x.spec.engine == "vllm" and x.spec.gpus is None for x in launches)
    return plan(launches, [g.index for g in discover()] if needs_gpus else [])


def build_pools(settings: Settings, plans: list[ReplicaPlan]) -> Pools:
    pools = []
    for cfg in settings.pools:
        urls = [u.rstrip("/") for u in cfg.replicas] + [p.url for p in plans if p.pool == cfg.name]
        b = cfg.breaker
        replicas = [
            Replica(u, cfg.name, breaker=Breaker(b.failures, b.cooldown_s, b.max_cooldown_s)) for u in urls
        ]
        pools.append(Pool(
            cfg.name, cfg.model, replicas,
            headers={"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {},
            balance=cfg.balance,
            affinity=Affinity(cfg.prefix_affinity.prefix_chars, cfg.prefix_affinity.max_extra_load)
            if cfg.prefix_affinity else None,
            gate=Gate(cfg.name, cfg.admission.max_in_flight, cfg.admission.max_queue, cfg.admission.max_wait_s)
            if cfg.admission else None,
        ))
    return Pools(pools)


def create_app(settings: Settings) -> Litestar:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:  # first: refuse to start on a bad price file or an unmigrated database
            accounting = await start_accounting(settings)
        except Exception as exc:
            log.error("gateway: %s", exc)
            raise
        app.state.accounting = accounting
        plans = launch_plans(settings)
        supervisor = Supervisor(plans, Path(settings.state_dir) / "logs")
        client = new_client(
            settings.upstream_connect_timeout_s, settings.upstream_timeout_s, settings.upstream_max_connections
        )
        watcher: asyncio.Task[None] | None = None
        try:
            if plans:
                await supervisor.start()
                log.info("started %d local replica(s)", len(plans))
            pools = build_pools(settings, plans)
            await check_all(client, pools, timeout=2.0)
            watcher = asyncio.create_task(watch_health(client, pools, settings.health_interval_s))
            catalogue = Catalogue(tuple(p.model for p in settings.pools), settings.auto_model)
            app.state.ctx = GatewayContext(settings, catalogue, pools, client, int(time.time()), supervisor)
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await client.aclose()
            try:
                await stop_accounting(accounting)  # after the last request: flushes every record
            finally:
                await supervisor.stop()

    return Litestar(
        route_handlers=[chat_completions, completions, list_models, healthz, readyz, workers_status, usage_report],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        logging_config=None,
    )
