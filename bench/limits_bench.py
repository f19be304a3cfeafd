"""What keys, rate limits and budgets cost a request: the auth guard's key lookup (warm cache) and the
limits' admission (two rate limits, two token limits, two budgets: a key and its team), in process and
in Redis (one EVALSHA round trip); plus the settlement each call causes off the request path.

    .venv/bin/python bench/limits_bench.py [--iterations N] [--redis redis://127.0.0.1:6379/0] [--json FILE]

Prints the median and p99 in microseconds per request, measured in the gateway's own event loop
(uvloop), one request at a time (latency, not throughput). Redis on this machine's loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis

from gateway.accounting.prices import DEFAULT_PRICES_FILE, current_token_rates, load_prices
from gateway.auth.keys import DevKey
from gateway.auth.principal import Limits as KeyLimits
from gateway.auth.principal import Principal
from gateway.auth.service import Auth
from gateway.inference.usage import Usage
from gateway.limits.backend import Backend, MemoryBackend
from gateway.limits.redis_backend import RedisBackend
from gateway.limits.service import Limits
from gateway.outcome import Outcome, Step, finish
from gateway.routing import ActivePolicy, route
from router.policy import default_policy_dir, load_policy_set
from router.tokens import warm_up
from workers.pool import Pool, Pools, Replica

CATALOGUE = load_prices(DEFAULT_PRICES_FILE)
BODY = {"model": "demo-large", "messages": [{"role": "user", "content": "Say hello to the gateway."}],
        "max_tokens": 16}
BODY_SIZE = len(json.dumps(BODY))  # the body's bytes as the gateway receives them
PRINCIPAL = Principal(
    tenant="bench", team="perf", key_id="key_bench", role="app",
    key_limits=KeyLimits(rpm=10**9, tpm=10**12, budget=Decimal(10**8)),
    team_limits=KeyLimits(rpm=10**9, tpm=10**12, budget=Decimal(10**8)),
)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def summary(name: str, us: list[float]) -> dict[str, Any]:
    out = {"name": name, "n": len(us), "median_us": round(statistics.median(us), 1), "p99_us": round(pct(us, 0.99), 1)}
    print(f"  {name:<58} median {out['median_us']:>7.1f} us   p99 {out['p99_us']:>7.1f} us")
    return out


async def bench_auth(n: int) -> list[dict[str, Any]]:
    auth = Auth(required=True, engine=None, secret=b"bench-secret", dev=DevKey("sk-gw-bench", "setting"), ttl_s=3600)
    key = "sk-gw-" + "x" * 43
    from gateway.auth.keys import digest
    from gateway.auth.service import _Entry

    auth._cache[digest(auth.secret, key)] = _Entry(PRINCIPAL, None, time.monotonic() + 3600)  # a warm cache
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    us = []
    for _ in range(n):
        t = time.perf_counter()
        await auth.authenticate(headers)
        us.append((time.perf_counter() - t) * 1e6)
    return [summary("auth: key lookup (warm in-process cache)", us)]


async def bench_limits(name: str, backend: Backend, n: int) -> list[dict[str, Any]]:
    limits = Limits(backend, CATALOGUE, None)
    await limits.start()
    pools = Pools([Pool("small", "demo-small", [Replica("http://127.0.0.1:1", "small", healthy=True)]),
                   Pool("large", "demo-large", [Replica("http://127.0.0.1:2", "large", healthy=True)])])
    active = ActivePolicy(load_policy_set(default_policy_dir()), pools, time.time())
    chosen = route(active, BODY, "chat", "demo-large", {}, PRINCIPAL.caller,
                   current_token_rates(CATALOGUE, datetime.now(UTC)))
    admit_us, settle_us = [], []
    steps = (Step("budget settlement", limits.settle),)  # the gateway's step after the call, alone
    batch = 250
    try:
        for b in range(n // batch + 1):
            outcomes = []
            for _ in range(batch):
                o = Outcome(request_id=uuid.uuid4().hex, model="demo-large", started=time.perf_counter(),
                            steps=steps)
                t = time.perf_counter()
                await limits.admit(PRINCIPAL, chosen, BODY, BODY_SIZE, o)
                if b:  # the first batch warms up: seeding, the script's load, caches
                    admit_us.append((time.perf_counter() - t) * 1e6)
                outcomes.append(o)
            for o in outcomes:
                o.replica, o.status, o.completed = "http://127.0.0.1:2", 200, True
                o.usage = Usage(prompt_tokens=14, completion_tokens=16, total_tokens=30)
                finish(o)  # each queues its settlement
            t = time.perf_counter()
            await limits.drain()  # the settlements, in batches, off the request path in the gateway
            if b:
                settle_us.append((time.perf_counter() - t) * 1e6 / batch)
    finally:
        await limits.close()
    return [summary(f"limits admit, {name}", admit_us),
            summary(f"settle per call (off the request path), {name}", settle_us)]


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    warm_up()
    results = await bench_auth(args.iterations)
    results += await bench_limits("in process", MemoryBackend(), args.iterations)
    redis = Redis.from_url(args.redis, socket_timeout=1.0, socket_connect_timeout=1.0)
    prefix = f"bench:limits:{os.getpid()}:"
    try:
        results += await bench_limits("Redis (1 EVALSHA)", RedisBackend(redis, prefix), args.iterations)
        ping = []
        for _ in range(args.iterations):
            t = time.perf_counter()
            await redis.ping()
            ping.append((time.perf_counter() - t) * 1e6)
        results.append(summary("for scale: one Redis PING from this client", ping))
    finally:
        keys = [k async for k in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--redis", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    print(f"limits bench: {args.iterations} requests each, python {platform.python_version()}, "
          f"{os.cpu_count()} CPU(s)")
    try:
        import uvloop

        results = uvloop.run(main_async(args))
    except ImportError:
        results = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps({"date": datetime.now(UTC).date().isoformat(), "results": results},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
