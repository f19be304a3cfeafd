"""The app factory: `create_app(settings)`; one lifespan owns the client, the pools and launched replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar

from gateway.context import GatewayContext
from gateway.errors import EXCEPTION_HANDLERS
from gateway.health_api import healthz, readyz
from gateway.openai_api import chat_completions, completions, list_models
from gateway.settings import Settings
from router.models import Catalogue
from workers.health import check_all, watch_health
from workers.local import LocalReplica, start_sim, stop_all, wait_healthy
from workers.pool import Pool, Pools, Replica
from workers.upstream import new_client

log = logging.getLogger("gateway")


def _build_pools(settings: Settings, launched: list[LocalReplica]) -> Pools:
    pools = []
    for cfg in settings.pools:
        urls = [u.rstrip("/") for u in cfg.replicas] + [r.url for r in launched if r.pool == cfg.name]
        headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        pools.append(Pool(cfg.name, cfg.model, [Replica(u, cfg.name) for u in urls], headers))
    return Pools(pools)


def _launch(settings: Settings) -> list[LocalReplica]:
    log_dir = Path(settings.state_dir) / "logs"
    launched = []
    try:
        for cfg in settings.pools:
            if cfg.launch is not None:
                for i in range(cfg.launch.replicas):
                    launched.append(start_sim(cfg.name, cfg.model, i, cfg.launch.args, log_dir))
    except BaseException:
        stop_all(launched)
        raise
    return launched


def create_app(settings: Settings) -> Litestar:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        launched = _launch(settings)
        client = new_client(
            settings.upstream_connect_timeout_s, settings.upstream_timeout_s, settings.upstream_max_connections
        )
        watcher: asyncio.Task[None] | None = None
        try:
            if launched:
                await wait_healthy(launched)
                log.info("started %d local simulated replica(s)", len(launched))
            pools = _build_pools(settings, launched)
            await check_all(client, pools, timeout=2.0)
            watcher = asyncio.create_task(watch_health(client, pools, settings.health_interval_s))
            catalogue = Catalogue(tuple(p.model for p in settings.pools), settings.auto_model)
            app.state.ctx = GatewayContext(settings, catalogue, pools, client, int(time.time()))
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await client.aclose()
            stop_all(launched)

    return Litestar(
        route_handlers=[chat_completions, completions, list_models, healthz, readyz],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        logging_config=None,
    )
