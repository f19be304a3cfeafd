"""`gateway workers up|status`: launched replicas without the API, and the live state of every replica."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.commands import config
from gateway.settings import Settings, SettingsError


def register(sub: Any) -> None:
    p = sub.add_parser("workers", help="launch and supervise worker replicas; show their state")
    wsub = p.add_subparsers(dest="workers_command", required=True, help="what to do")
    up = wsub.add_parser("up", help="start the replicas of every pool with a `launch` spec and supervise them")
    status = wsub.add_parser("status", help="ask the running gateway for each replica's state, load and last error")
    config.add_config(up, "its pools and state_dir (the replicas' logs)")
    config.add_config(status, "the gateway's host and port, and its state_dir (the development key)")
    status.add_argument("--port", type=int, help="the gateway's port (default: settings / $GATEWAY_PORT)")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--key", help="an admin API key (default: the development key, GATEWAY_DEV_KEY or "
                                      "<state_dir>/dev-key)")
    up.set_defaults(run=run_up)
    status.set_defaults(run=run_status)


def _settings(args: argparse.Namespace) -> Settings | None:
    try:
        return config.settings(args, port=getattr(args, "port", None))
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return None


def format_status(pools: dict[str, Any]) -> str:
    rows = [("POOL", "MODEL", "REPLICA", "STATE", "HEALTHY", "CIRCUIT", "IN-FLIGHT", "RUNNING", "WAITING", "KV",
             "RESTARTS", "LAST ERROR")]
    for name, pool in pools.items():
        for r in pool["replicas"]:
            managed = r.get("managed") or {}
            rows.append((
                name, pool["model"], r["url"], managed.get("state", "remote"), "yes" if r["healthy"] else "no",
                r["circuit"], str(r["in_flight"]), f"{r['running']:g}", f"{r['waiting']:g}",
                f"{r['kv_cache']:.0%}", str(managed.get("restarts", "-")), r["last_error"] or "-",
            ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def run_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}/admin/workers"
    import httpx  # here: `gateway serve` registers this command too, and serves without httpx

    try:
        from gateway.auth.keys import known_dev_key

        key = args.key or known_dev_key(settings)
        response = httpx.get(url, timeout=5, headers={"authorization": f"Bearer {key}"} if key else {})
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"gateway: cannot reach the gateway at {url}: {exc}", file=sys.stderr)
        return 1
    pools = response.json()["pools"]
    print(json.dumps(pools, indent=2) if args.json else format_status(pools))
    return 0


def run_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    from gateway.telemetry.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(_up(settings))


async def _up(settings: Settings) -> int:
    from gateway.app import build_pools, launch_plans
    from workers.health import watch_health
    from workers.launcher import NoFreePort
    from workers.supervisor import Supervisor
    from workers.upstream import new_upstream

    try:
        plans = launch_plans(settings)
    except NoFreePort as exc:
        print(f"gateway: {exc} (widen launch_ports, or stop what holds its ports)", file=sys.stderr)
        return 1
    if not plans:
        print("gateway: no pool has a `launch` spec; nothing to start", file=sys.stderr)
        return 1
    # Health checks as `gateway serve` runs them: a replica that stays unhealthy is restarted here too.
    pools = build_pools(settings, plans)
    supervisor = Supervisor(plans, Path(settings.state_dir) / "logs", pools.replicas())
    upstream = new_upstream(settings.upstream_connect_timeout_s, settings.upstream_timeout_s, 16)
    checks = asyncio.create_task(watch_health(upstream.checks, pools, settings.health_interval_s))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
        for m in supervisor.replicas:
            gpus = ",".join(map(str, m.plan.gpus)) or "-"
            pid = m.process.pid if m.process else "-"
            print(f"{m.plan.name}\t{m.plan.model}\t{m.url}\t{m.state}\tpid={pid}\tgpus={gpus}\tlog={m.log_path}",
                  flush=True)
        if any(m.state == "failed" for m in supervisor.replicas):
            print("gateway: some replicas could not be started; see their logs", file=sys.stderr)
            return 1
        await stop.wait()
    finally:
        checks.cancel()
        await asyncio.gather(checks, return_exceptions=True)
        await supervisor.stop()
        await upstream.aclose()
    return 0
