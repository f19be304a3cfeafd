"""The response cache's speed: a cache hit through the gateway at 64 connections, beside a miss, on
both backends (this process's memory, the embedded default; and Redis).

A real `gateway serve` with its simulated workers (the embedded default's pools, accounting to its
SQLite, info logging: one access line per call, as in production) runs pinned to core 0; wrk, a load
generator in C, runs on core 1 with a Lua script that counts the `x-gateway-cache` header of every
response. Scenarios, each for --seconds:

  hit json   the same deterministic chat request again and again (answered from the cache)
  hit sse    the same, streamed (the cached answer rendered as vLLM's SSE framing)
  miss json  a distinct prompt per request (looked up, missed, sent to a simulated worker, stored)

at --connections (64) and at 1 connection (the latency of one request alone). Then, in-process, the
cache's own share of a hit: key, lookup, rendering (no HTTP).

    .venv/bin/python bench/cache_bench.py [--seconds 10] [--connections 64] [--backends memory,redis]

Needs wrk and, for the Redis backend, Redis on 127.0.0.1:6379 (keys under a unique prefix, deleted
afterwards). Results: bench/results/cache_bench.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gateway_process import GatewayProcess, start_gateway  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"
RESULTS = ROOT / "bench" / "results" / "cache_bench.json"
SYSTEM = (
    "You are a helpful assistant for an internal engineering team. Answer concisely, cite the relevant "
    "internal document when you know it, and say so when you are unsure."
)
USER = "Our nightly export job times out while writing to object storage. What should we check first? (@@NONCE@@)"

LUA = r"""
local counter, tid = 0, 0
local threads = {}
function setup(thread) tid = tid + 1; thread:set("tid", tid); table.insert(threads, thread) end
local pre, post, cached
function init(args)
  local f = assert(io.open(args[1], "rb")); local body = f:read("*a"); f:close()
  local h = {["Content-Type"] = "application/json"}
  if args[3] and args[3] ~= "" then h["Authorization"] = "Bearer " .. args[3] end
  run = args[4] or "0"
  if args[2] == "1" then
    local s, e = body:find("@@NONCE@@", 1, true)
    pre, post = body:sub(1, s - 1), body:sub(e + 1)
    headers_ = h
  else
    cached = wrk.format("POST", nil, h, body)
  end
end
function request()
  if cached then return cached end
  counter = counter + 1
  return wrk.format("POST", nil, headers_, pre .. run .. "-" .. tid .. "-" .. counter .. post)
end
hit, miss, bypass, other, bad = 0, 0, 0, 0, 0
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
  local c = headers["x-gateway-cache"]
  if c == "hit" then hit = hit + 1 elseif c == "miss" then miss = miss + 1
  elseif c == "bypass" then bypass = bypass + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local t = {hit = 0, miss = 0, bypass = 0, other = 0, bad = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"seconds":%.3f,"socket_errors":%d,"hit":%d,"miss":%d,"bypass":%d,"other":%d,' ..
    '"bad":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, t.hit, t.miss, t.bypass,
    t.other, t.bad, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def body(stream: bool, nonce: str) -> bytes:
    return json.dumps({
        "model": "auto", "temperature": 0, "max_tokens": 8, "stream": stream,
        "messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": USER.replace("@@NONCE@@", nonce)}],
    }).encode()


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def wait_quiet(max_wait_s: float, busy_below: float = 0.15) -> float:
    """Wait (at most max_wait_s) until the machine is quiet: other work skews latency figures."""
    started = time.monotonic()
    while True:
        t0, i0 = _cpu_times()
        time.sleep(1.0)
        t1, i1 = _cpu_times()
        busy = 1 - (i1 - i0) / max(1, t1 - t0)
        if busy < busy_below or time.monotonic() - started > max_wait_s:
            return busy


def pin(pid: int, core: int) -> None:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        subprocess.run(["taskset", "-a", "-pc", str(core), str(pid)], check=True, capture_output=True)


def wrk(url: str, workdir: Path, payload: bytes, unique: bool, connections: int, seconds: float,
        key: str) -> dict[str, Any]:
    script, body_file = workdir / "cache.lua", workdir / f"body-{uuid.uuid4().hex[:6]}.json"
    script.write_text(LUA)
    body_file.write_bytes(payload)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
           url, "--", str(body_file), "1" if unique else "0", key, uuid.uuid4().hex[:8]]
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        cmd = ["taskset", "-c", "1", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    n = r["requests"]
    return {
        "connections": connections, "requests": n, "rps": round(n / r["seconds"], 1),
        "hit_rate": round(r["hit"] / n, 4) if n else 0.0,
        "cache_headers": {k: r[k] for k in ("hit", "miss", "bypass", "other")},
        "errors": r["bad"] + r["socket_errors"],
        **{k.replace("_us", "_ms"): round(r[k] / 1000, 3) for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")},
    }


def in_process(backend: str, prefix: str, n: int = 20_000) -> dict[str, float]:
    """The cache's own work on a hit (key, one lookup, render), without HTTP: median and p99 in µs."""
    from redis.asyncio import Redis

    from gateway.cache.backends import MemoryBackend, RedisBackend
    from gateway.cache.service import CacheConfig, ResponseCache
    from gateway.inference.openai_request import ChatFields, parse_body
    from gateway.outcome import Outcome, Step, finish
    from gateway.routing import Route
    from router.decision import CachePolicy, RouteDecision

    raw = (ROOT / "tests" / "fixtures" / "vllm-0.32" / "chat.json").read_bytes()
    decision = RouteDecision(
        model="demo-small", pool="small", rule="default", requested_model="auto", fallbacks=(), max_tokens_cap=None,
        max_tokens=None, cache=CachePolicy(store=True, ttl_s=600), reference_model=None, expected_cost=None,
        reference_cost=None, currency=None, policy_hash="h", trace=())
    route = Route((), "default", decision)
    parsed = parse_body(body(False, "in-process"), ChatFields)
    streamed = parse_body(body(True, "in-process"), ChatFields)

    async def go() -> dict[str, float]:
        client = Redis.from_url(REDIS_URL) if backend == "redis" else None
        store = RedisBackend(client) if client is not None else MemoryBackend(1000, 10_000_000)
        cache = ResponseCache(store, CacheConfig(key_prefix=prefix))
        o = Outcome("r", "demo-small", time.perf_counter(), steps=(Step("cache store", cache.store),))
        t = await cache.begin({}, route, parsed.data, parsed.fields, "chat", o)
        o.model, o.status, o.completed = "demo-small", 200, True
        t.answer(raw)
        finish(o)
        await cache.aclose()
        out: dict[str, float] = {}
        for name, req in (("json", parsed), ("sse", streamed)):
            times = []
            for _ in range(n):
                o = Outcome("r", "demo-small", time.perf_counter())
                start = time.perf_counter()
                t = await cache.begin({}, route, req.data, req.fields, "chat", o)
                assert t.entry is not None
                cache.respond(t, req.fields, o, {})
                times.append(time.perf_counter() - start)
            times.sort()
            out[f"{name}_median_us"] = round(statistics.median(times) * 1e6, 1)
            out[f"{name}_p99_us"] = round(times[int(0.99 * len(times))] * 1e6, 1)
        if client is not None:
            await client.aclose()
        return out

    return asyncio.run(go())


def cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    prefix = f"bench:cache:{uuid.uuid4().hex[:8]}:"
    config: dict[str, Any] = {"log_level": "info", "cache_key_prefix": prefix}
    if backend == "redis":
        config["redis_url"] = REDIS_URL
    gw: GatewayProcess = start_gateway(workdir / backend, config)
    key = gw.key or ""  # API keys (gateway/auth): the calls carry the development key
    try:
        pin(gw.process.pid, 0)
        url = gw.api + "/chat/completions"
        hit_json, hit_sse = body(False, "cached"), body(True, "cached")
        for payload in (hit_json, hit_json, hit_sse):
            r = httpx.post(url, content=payload, timeout=30,
                           headers={"content-type": "application/json", **gw.auth})
            assert r.status_code == 200, r.text
        assert r.headers["x-gateway-cache"] == "hit", r.headers
        wrk(url, workdir, hit_json, False, args.connections, 2, key)  # warm-up
        miss_json = body(False, "@@NONCE@@")
        rows = []
        for name, payload, unique, conns in (
            ("hit json", hit_json, False, args.connections),
            ("hit sse", hit_sse, False, args.connections),
            ("miss json", miss_json, True, args.connections),
            ("hit json", hit_json, False, 1),
            ("miss json", miss_json, True, 1),
        ):
            busy = wait_quiet(args.wait_quiet)
            row = {"backend": backend, "scenario": name, "machine_busy_before": round(busy, 2),
                   **wrk(url, workdir, payload, unique, conns, args.seconds, key)}
            print(f"  {backend:6} {name:9} c={conns:<3} {row['rps']:>8} req/s  p50 {row['p50_ms']:>7} ms  "
                  f"p99 {row['p99_ms']:>7} ms  hit rate {row['hit_rate']:.3f}  errors {row['errors']}", flush=True)
            rows.append(row)
        status = httpx.get(gw.base_url + "/readyz").json()["cache"]
    finally:
        gw.stop()
        if backend == "redis":
            cleanup(prefix)
    own = in_process(backend, prefix + "inproc:")
    if backend == "redis":
        cleanup(prefix)
    print(f"  {backend:6} in-process hit (key + lookup + render): json median {own['json_median_us']} µs, "
          f"p99 {own['json_p99_us']} µs; sse median {own['sse_median_us']} µs", flush=True)
    return {"rows": rows, "in_process": own, "cache_status": status}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--backends", default="memory,redis")
    p.add_argument("--wait-quiet", type=float, default=60, metavar="S",
                   help="before each scenario wait up to S seconds for the machine to be idle (other processes)")
    args = p.parse_args()
    if not shutil.which("wrk"):
        print("cache_bench: needs wrk", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "seconds": args.seconds, "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        for backend in args.backends.split(","):
            print(f"backend {backend}", flush=True)
            result["backends"][backend] = run_backend(backend, args, Path(tmp))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| backend | scenario | connections | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | hit rate | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backend, res in result["backends"].items():
        for r in res["rows"]:
            print(f"| {backend} | {r['scenario']} | {r['connections']} | {r['rps']} | {r['p50_ms']} | {r['p90_ms']} | "
                  f"{r['p99_ms']} | {r['p999_ms']} | {r['hit_rate']:.3f} | {r['errors']} |")
    print(f"\nresults: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
