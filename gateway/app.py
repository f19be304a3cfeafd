"""The app factory: `create_app(settings)`; one lifespan owns the client, the pools and launched replicas."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar
from opentelemetry.sdk.trace.export import SpanExporter

from gateway.accounting import start_accounting, stop_accounting
from gateway.api import HANDLERS
from gateway.api.metrics import MetricsServer
from gateway.api.openapi import openapi_config
from gateway.auth.guard import authorize
from gateway.auth.service import start_auth
from gateway.cache.service import build_cache
from gateway.completion import completion_steps
from gateway.console import session as console_session
from gateway.console.render import template_config
from gateway.console.router import console_routers
from gateway.context import GatewayContext
from gateway.errors import EXCEPTION_HANDLERS
from gateway.front import GatewayApp
from gateway.inference.kept_responses import KeptResponses
from gateway.inference.response_pins import build_pins
from gateway.learning.shadow.service import start_shadow
from gateway.learning.stash import build_stash
from gateway.limits.service import start_limits
from gateway.redis_batch import RedisBatcher
from gateway.redis_client import redis_client
from gateway.routing import PolicyStore, Rates, install_sighup, policy_directory
from gateway.settings import Settings
from gateway.telemetry import Telemetry
from gateway.telemetry.metrics import Sources
from router.tokens import warm_up
from workers.breaker import Breaker
from workers.gpus import discover
from workers.health import check_all, watch_health
from workers.launched_status import status_path
from workers.launcher import PoolLaunch, ReplicaPlan, parse_port_range, plan
from workers.pool import Affinity, Gate, Pool, Pools, Replica
from workers.supervisor import Supervisor
from workers.upstream import new_upstream

log = logging.getLogger("gateway")


def launch_plans(settings: Settings) -> list[ReplicaPlan]:
    launches = [PoolLaunch(p.name, p.model, p.launch, p.runner) for p in settings.pools if p.launch is not None]
    needs_gpus = any(x.spec.engine == "vllm" and x.spec.gpus is None for x in launches)
    ports = parse_port_range(settings.launch_ports) if settings.launch_ports else None
    return plan(launches, [g.index for g in discover()] if needs_gpus else [], ports)


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
            runner=cfg.runner,
        ))
    return Pools(pools)


def create_app(settings: Settings, span_exporter: SpanExporter | None = None,
               launched_by: int | None = None) -> GatewayApp:
    """The gateway's app, as served (the short way in for inference calls included: gateway/front.py).
    `span_exporter` (tests: an in-memory exporter) turns tracing on with that exporter, whatever
    `otel_exporter` says; each span is handed to it as it ends. `launched_by`: in a serving process of
    `gateway serve --workers N`, its parent's pid, whose supervisor owns the launched replicas."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            # The app's own tracer provider and metrics registry; traces are exported last, at the very end.
            telemetry = Telemetry.create(settings, span_exporter)
            stack.push_async_callback(asyncio.to_thread, telemetry.shutdown)
            # First what must refuse a start: a bad price file, an unmigrated database, a bad policy.
            accounting = await start_accounting(settings, telemetry.on_record)  # usage metrics, the access line
            stack.push_async_callback(stop_accounting, accounting)  # after the last request: flushes records
            app.state.accounting = accounting
            plans = launch_plans(settings)
            pools = build_pools(settings, plans)
            policies = PolicyStore(policy_directory(settings.policies_dir), pools)
            # The health checks below also tell the supervisor which launched replica stays unhealthy.
            state_dir = Path(settings.state_dir)
            mirror = status_path(state_dir, launched_by) if launched_by is not None else None
            supervisor = Supervisor(plans, state_dir / "logs", pools.replicas(), mirror)
            stack.push_async_callback(supervisor.stop)
            if plans:
                await supervisor.start()
                log.info("started %d local replica(s)", len(plans))
            upstream = new_upstream(
                settings.upstream_connect_timeout_s, settings.upstream_timeout_s, settings.upstream_max_connections
            )
            stack.push_async_callback(upstream.aclose)
            await check_all(upstream.checks, pools, timeout=2.0)
            policies.refresh_served()  # the models the pools serve and the catalogue does not list, derived
            warm_up()  # the tokenizer, before the first request rather than during it
            checks = watch_health(upstream.checks, pools, settings.health_interval_s, policies.refresh_served)
            for job in (checks, policies.watch()):
                stack.push_async_callback(_cancel, asyncio.create_task(job))
            install_sighup(policies)
            redis = batcher = None
            if settings.redis_url:
                redis = redis_client(settings.redis_url, settings.redis_timeout_s, settings.redis_max_connections)
                stack.push_async_callback(redis.aclose)
                batcher = RedisBatcher(redis)  # the cache's and the limits' commands share pipelines
                stack.push_async_callback(batcher.aclose)  # its own connections, after the cache and limits
            console_session.install_store(app, redis)  # the console's sessions: in Redis, else in memory
            cache = build_cache(settings, redis, batcher)
            stack.push_async_callback(cache.aclose)  # pending stores, before the Redis pool closes
            auth = await start_auth(settings, accounting.reads, redis)
            stack.push_async_callback(auth.close)
            limits = await start_limits(settings, accounting.catalogue, accounting.reads, redis, batcher)
            stack.push_async_callback(limits.close)  # settles what is pending, before the Redis pool closes
            shadow = await start_shadow(settings, policies, pools, upstream, accounting, redis)
            if shadow is not None:  # its jobs finish or are cancelled first: they use the client, Redis, the recorder
                stack.push_async_callback(shadow.close)
            stash = build_stash(settings, batcher)
            # Background responses still followed are recorded (as far as known) before the limits and recorder stop.
            responses = KeptResponses(build_pins(settings, batcher), upstream, pools, settings.responses_poll_s,
                                      settings.responses_follow_max_s)
            stack.push_async_callback(responses.close)
            completion = completion_steps(telemetry.metrics.requests, accounting.recorder, cache, limits, stash,
                                          shadow)
            ctx = GatewayContext(
                settings, policies, Rates(accounting.catalogue), pools, upstream, accounting, int(time.time()),
                supervisor, cache, telemetry, completion, redis, auth=auth, limits=limits, feedback=stash,
                shadow=shadow, responses=responses,
            )
            telemetry.metrics.attach(Sources(
                pools, supervisor, policies, accounting.recorder, accounting.engine, accounting.catalogue.currency,
                cache, limits, auth, shadow,
            ))
            if settings.metrics_port is not None:
                metrics_server = MetricsServer(ctx, settings.host, settings.metrics_port)
                await metrics_server.start()
                stack.push_async_callback(metrics_server.stop)
                log.info("metrics on http://%s:%d/metrics", settings.host, metrics_server.port)
            app.state.ctx = ctx
            # What start-up built (modules, the tokenizer, policies) lives as long as the process: out of the
            # collector's sight, so collections only walk what requests allocate (shorter GC pauses).
            gc.collect()
            gc.freeze()
            yield
            gc.unfreeze()

    return GatewayApp(
        route_handlers=[*HANDLERS, *console_routers(settings)],  # the console: its own middleware (gateway/console)
        guards=[authorize],  # API keys and roles, on every route (gateway/auth/guard.py)
        template_config=template_config(),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(),  # the document, for admins, built when first asked for
        logging_config=None,
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
