"""Replica choice under load: load-aware vs round-robin, and prefix affinity vs plain load balancing.

Three *simulated* vLLM replicas of unequal speed (vllm_sim) sit behind one pool of a real
`gateway serve`; an open-loop load generator sends requests at a fixed rate. Each scenario runs in
the same session against the same replicas, so the figures are ratios measured in one run.

    .venv/bin/python bench/pool_bench.py [--rate 40] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gateway_process import DEV_KEY, start_gateway  # noqa: E402
from workers.launcher import free_port  # noqa: E402

# Unequal replicas: ms per output token, and at most 4 requests running on each.
SPEEDS_MS = (2.0, 6.0, 18.0)


@dataclass
class Result:
    name: str
    latencies: list[float]
    ttfts: list[float]
    errors: int
    seconds: float
    prefix_hit_rate: float | None = None

    def row(self) -> dict[str, object]:
        lat = sorted(self.latencies)
        p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
        return {
            "scenario": self.name, "ok": len(lat), "errors": self.errors,
            "throughput_rps": round(len(lat) / self.seconds, 1),
            "p50_ms": round(p(0.5), 1), "p99_ms": round(p(0.99), 1),
            "ttft_p50_ms": round(statistics.median(self.ttfts) * 1000, 1) if self.ttfts else None,
            "prefix_hit_rate": None if self.prefix_hit_rate is None else round(self.prefix_hit_rate, 3),
        }


def start_sims(prefix_blocks: int) -> list[tuple[subprocess.Popen[bytes], str]]:
    sims = []
    for speed in SPEEDS_MS:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm_sim", "--model", "m", "--port", str(port),
             "--output-token-ms", str(speed), "--ttft-ms", "5", "--prompt-token-us", "300",
             "--max-running", "4", "--max-model-len", "8192", "--prefix-cache-blocks", str(prefix_blocks)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        sims.append((proc, f"http://127.0.0.1:{port}"))
    for _, url in sims:
        for _ in range(100):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    return sims


def prefix_counters(urls: list[str]) -> tuple[float, float]:
    hits = queries = 0.0
    for url in urls:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total{"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total{"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


async def run_load(api: str, rate: float, seconds: float, make_body, name: str) -> Result:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    rng = random.Random(1)

    async def one(client: httpx.AsyncClient, body: dict[str, object]) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            async with client.stream("POST", api + "/chat/completions", json=body) as r:
                first = None
                async for _ in r.aiter_raw():
                    first = first or time.perf_counter()
                if r.status_code != 200:
                    errors += 1
                    return
            latencies.append(time.perf_counter() - started)
            ttfts.append((first or time.perf_counter()) - started)
        except httpx.HTTPError:
            errors += 1

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    auth = {"authorization": f"Bearer {DEV_KEY}"}  # the key start_gateway's gateway accepts
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=auth) as client:
        tasks = []
        started = time.perf_counter()
        next_at = started
        while next_at - started < seconds:  # open loop: Poisson arrivals at `rate`
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, make_body(rng))))
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return Result(name, latencies, ttfts, errors, elapsed)


def plain_body(rng: random.Random) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": f"Question {rng.random()}"}],
            "max_tokens": 20, "stream": True}


def prefix_body_factory(salt: str):  # type: ignore[no-untyped-def]
    # 12 long system prompts (~1,000 tokens each) shared by many requests.
    systems = [f"[{salt}:{i}] " + f"You are assistant number {i}; follow the house style guide. " * 60
               for i in range(12)]

    def body(rng: random.Random) -> dict[str, object]:
        return {"model": "m", "max_tokens": 4, "stream": True, "messages": [
            {"role": "system", "content": rng.choice(systems)},
            {"role": "user", "content": f"Question {rng.random()}"},
        ]}
    return body


def scenario(workdir: Path, urls: list[str], pool_extra: dict[str, object], load) -> Result:  # type: ignore[no-untyped-def]
    gw = start_gateway(workdir, {"pools": [{"name": "p", "model": "m", "replicas": urls, **pool_extra}],
                                 "health_interval_s": 0.25})
    try:
        return asyncio.run(load(gw.api))
    finally:
        gw.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=40.0, help="requests per second (open loop)")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    # Each replica's prefix cache holds 5 of the 12 system prompts (14 blocks each).
    sims = start_sims(prefix_blocks=5 * 14)
    urls = [u for _, u in sims]
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, extra in (("round_robin", {"balance": "round_robin"}), ("least_load", {})):
                results.append(scenario(Path(tmp) / name, urls, extra, lambda api, n=name: run_load(
                    api, args.rate, args.seconds, plain_body, n)))
            for name, extra in (("least_load, shared prefixes", {}),
                                ("prefix affinity, shared prefixes", {"prefix_affinity": {"prefix_chars": 1000}})):
                before = prefix_counters(urls)
                # Half the rate: prefill of ~1,000 tokens keeps the replicas busier.
                results.append(scenario(Path(tmp) / name.replace(" ", "_"), urls, extra, lambda api, n=name: run_load(
                    api, args.rate / 2, args.seconds, prefix_body_factory(n), n)))
                after = prefix_counters(urls)
                results[-1].prefix_hit_rate = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    finally:
        for proc, _ in sims:
            proc.terminate()
            proc.wait()
    rows = [r.row() for r in results]
    print(f"{'scenario':34} {'ok':>5} {'err':>4} {'rps':>6} {'p50 ms':>8} {'p99 ms':>8} {'ttft p50':>9} "
          f"{'prefix hit':>10}")
    for r in rows:
        print(f"{r['scenario']:34} {r['ok']:>5} {r['errors']:>4} {r['throughput_rps']:>6} {r['p50_ms']:>8} "
              f"{r['p99_ms']:>8} {r['ttft_p50_ms']!s:>9} {r['prefix_hit_rate']!s:>10}")
    rr, ll, plain, aff = rows
    print(f"\nleast_load vs round_robin: p99 {rr['p99_ms'] / ll['p99_ms']:.2f}x lower, "
          f"throughput {ll['throughput_rps'] / rr['throughput_rps']:.2f}x")
    print(f"prefix affinity vs plain: hit rate {aff['prefix_hit_rate']} vs {plain['prefix_hit_rate']}, "
          f"ttft p50 {plain['ttft_p50_ms'] / aff['ttft_p50_ms']:.2f}x lower")
    out = ROOT / "bench" / "results" / "pool_bench.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rate": args.rate, "seconds": args.seconds,
                               "speeds_ms_per_token": SPEEDS_MS, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
