"""The gateway's own cost: throughput, added latency, CPU and memory per request, vs LiteLLM.

A mock upstream that is never the bottleneck (nginx with fixed vLLM 0.32 bodies) and a load generator in
C (wrk + a Lua script that checks every response) run on core 1; the server under test runs alone on
core 0: first the gateway configured as in production (keys and limits, routing, the cache in Redis,
accounting to PostgreSQL: see overheadlib/servers.py), then the LiteLLM proxy configured from its
production docs. docs/performance.md describes the method and the latest results.
Every point is also measured against the mock directly, and the difference is the latency added.

    .venv/bin/python bench/overhead.py [--quick] [--soak N] [--skip-litellm] [--profile]
    make bench                  # the full run: 10 s per point, LiteLLM, a 600 s soak
    make bench BENCH_QUICK=1    # a smoke run: a few seconds per point, no soak

Results: bench/results/overhead.json (overhead-quick.json for --quick) and a Markdown summary on stdout.
Exit status: 0 when every point was measured with <= 1% errors (targets are reported, not enforced,
unless --strict), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from overheadlib import instructions as instr  # noqa: E402
from overheadlib import mock as mocklib  # noqa: E402
from overheadlib import profile as profiling  # noqa: E402
from overheadlib import report, servers  # noqa: E402
from overheadlib import wrk as wrklib  # noqa: E402
from overheadlib.procs import (  # noqa: E402
    CLK_TCK,
    HELPERS,
    BenchError,
    Child,
    Sampler,
    core_busy_ticks,
    cores,
    cpu_ticks,
    http_post,
    other_cpu,
    process_cpu,
    rss_kb,
    tree,
)

FIXTURES = Path(os.environ.get("BENCH_FIXTURES", ROOT / "tests" / "fixtures" / "vllm-0.32"))
RESULTS = BENCH / "results"
CONNECTIONS = (1, 16, 64, 256)
MAX_ERROR_RATE = 0.01
NOISE_PCT = 10.0  # other jobs' CPU (% of a core) during a point above which the point is flagged as noisy
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_BENCH_DB = f"gateway_overhead_bench_{os.getpid()}"  # its own per run: runs side by side never share one

# A realistic short chat call (~700 bytes). temperature 0 makes it cacheable; the nonce makes each
# request distinct, so a configured cache looks it up and misses, as on real traffic.
SYSTEM = (
    "You are a helpful assistant for an internal engineering team. Answer concisely, cite the relevant "
    "internal document when you know it, and say so when you are unsure. Never include secrets, credentials "
    "or personal data in an answer. Format code as fenced blocks and keep lines under 100 characters."
)
USER = (
    "Our nightly data export job started failing after the last deploy with a timeout while writing to object "
    "storage. The job writes about 40 files of 200 MB each. What are the first three things you would check, "
    "in order, and why? (ticket @@NONCE@@)"
)


# What the libraries alone reach, per scenario (servers.FLOORS): forwarding an answer, relaying a stream,
# and, for a cache hit, answering with no upstream at all.
FLOOR_APPS = {"json": "proxy", "stream": "relay", "cache": "plain"}

PROFILED = {"json": "non-streaming", "stream": "streaming (30 chunks)", "cache": "cache hits"}


@dataclass
class Scenario:
    key: str  # json | stream | cache
    model: str
    stream: bool
    unique: bool  # a distinct prompt per request (cache misses); False: the same request (cache hits)
    markers: tuple[str, ...]
    min_events: int = 0
    cache_status: str = "miss"  # the gateway's x-gateway-cache answer expected when its cache is on

    def body(self) -> bytes:
        data: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": USER if self.unique else USER.replace("@@NONCE@@", "42")}],
            "max_tokens": mocklib.CHUNKS - 1 if self.stream else 12,
            "temperature": 0,
        }
        if self.stream:
            data["stream"] = True
            data["stream_options"] = {"include_usage": True}
        return json.dumps(data).encode()

    @property
    def check(self) -> str:
        return "sse" if self.stream else "json"


SCENARIOS = {
    "json": Scenario("json", servers.JSON_MODEL, False, True, ('"chat.completion"', '"usage"')),
    # 30 chunks, the usage chunk, [DONE]: LiteLLM re-frames the stream, so count at least the 30 + [DONE]
    "stream": Scenario("stream", servers.SSE_MODEL, True, True, ('"chat.completion.chunk"', '"usage"'),
                       mocklib.CHUNKS + 1),
    "cache": Scenario("cache", servers.JSON_MODEL, False, False, ('"chat.completion"', '"usage"'), 0, "hit"),
}


def body_problem(scenario: Scenario, status: int, body: bytes) -> str | None:
    """The checks load.lua makes on every response, for the checks made before measuring."""
    if status != 200:
        return f"status {status}"
    text = body.decode(errors="replace")
    missing = [m for m in scenario.markers if m not in text]
    if missing:
        return f"missing {', '.join(missing)}"
    if scenario.stream:
        if not text.endswith("data: [DONE]\n\n"):
            return "stream does not end with data: [DONE]"
        if text.count("data: ") < scenario.min_events:
            return f"{text.count('data: ')} events, expected >= {scenario.min_events}"
    return None


CACHE_HEADER = "x-gateway-cache"


def validate(what: str, url: str, scenario: Scenario, auth: str = "", header: tuple[str, str] | None = None) -> None:
    """One call, checked as load.lua checks each call; a cache hit is checked on the second of two calls."""
    body = scenario.body().replace(b"@@NONCE@@", f"check-{time.monotonic_ns()}".encode())
    headers = {"authorization": f"Bearer {auth}"} if auth else {}
    for attempt in range(20 if header and header[1] == "hit" else 1):
        status, answer, got = http_post(url, body, headers)
        problem = body_problem(scenario, status, answer)
        if not problem and header and got.get(header[0]) != header[1]:
            problem = f"header {header[0]}: {got.get(header[0], 'absent')} (expected {header[1]})"
        if not problem:
            return
        if attempt < 19:
            time.sleep(0.1)  # the answer is stored once its call is over
    raise BenchError(f"{what}: {scenario.key} answer is wrong ({problem}):\n{answer[:1500]!r}")


def refresh_entry(url: str, scenario: Scenario, auth: str) -> None:
    """Store the cache scenario's answer anew (`x-gateway-cache: refresh`) just before its point: the
    benchmark's entries live 60 s (servers.bench_policies), so one stored at the start of the scenario
    would expire mid-run and its next request would be a (correct) miss, counted as an error."""
    status, answer, _ = http_post(url, scenario.body(), {"authorization": f"Bearer {auth}", CACHE_HEADER: "refresh"})
    if problem := body_problem(scenario, status, answer):
        raise BenchError(f"gateway: refreshing the cache entry failed ({problem}):\n{answer[:1500]!r}")


# --- one measured point ---------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.server_core, self.load_core = cores()
        self.points: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.wrk_log = tmp / "wrk.log"
        self.bodies: dict[str, Path] = {}
        for key, sc in SCENARIOS.items():
            path = tmp / f"body-{key}.json"
            path.write_bytes(sc.body())
            self.bodies[key] = path
        self.requests_sent = {"gateway": 0, "litellm": 0}
        self.cache_on = False
        self.own_pids: set[int] = {os.getpid()}  # the driver, the mock, py-spy: not "other jobs"

    def expect(self, scenario: Scenario) -> tuple[str, str] | None:
        """What the gateway must say about its cache for this scenario (when it has one)."""
        return (CACHE_HEADER, scenario.cache_status) if self.cache_on else None

    def load(self, scenario: Scenario, url: str, auth: str, header: tuple[str, str] | None = None) -> wrklib.Load:
        return wrklib.Load(url + "/v1/chat/completions", self.bodies[scenario.key], scenario.check,
                           scenario.markers, scenario.min_events, scenario.unique, auth, header)

    def settle(self, pid: int, max_wait: float = 30.0) -> None:
        """Waits until the server is idle (< 10% of a core over 0.5 s): calls abandoned by the previous wrk
        (in flight when it stopped) must not eat into the next measurement."""
        deadline = time.monotonic() + max_wait
        while time.monotonic() < deadline:
            before = cpu_ticks(tree(pid))
            time.sleep(0.5)
            if (cpu_ticks(tree(pid)) - before) / CLK_TCK < 0.05:
                return

    def duration_for(self, target: str, scenario: Scenario, conns: int) -> float:
        """The point's duration, longer for a slow server: at least 3x the latency the previous point (at
        as many connections or fewer: the paired rounds come after the main points) predicts, so that
        enough calls complete; bounded."""
        prev = [p for p in self.points if p["target"] == target and p["scenario"] == scenario.key and p["rps"] > 0
                and p["connections"] <= conns]
        if not prev:
            return self.args.duration
        latency = conns / prev[-1]["rps"]
        return min(self.args.max_point, max(self.args.duration, 3 * latency))

    def measure(self, target: str, pid: int, scenario: Scenario, url: str, conns: int, auth: str = "",
                warmup: float | None = None, header: tuple[str, str] | None = None) -> dict[str, Any]:
        """One point; measured again (once) after the machine is quiet when another job disturbed it."""
        point = self._measure(target, pid, scenario, url, conns, auth, warmup, header)
        if point["foreign_cpu_pct"] > NOISE_PCT and self.args.wait_quiet > 0:
            wait_quiet(self.args.wait_quiet)
            again = self._measure(target, pid, scenario, url, conns, auth, warmup, header)
            point = min(point, again, key=lambda p: p["foreign_cpu_pct"])
        self._count_problem(point)
        self.points.append(point)
        return point

    def _count_problem(self, point: dict[str, Any]) -> None:
        """An invalid point fails the run, but LiteLLM's: those are reported, not a failure of ours."""
        if point.get("invalid") and point["target"] != "litellm":
            self.problems.append(point["invalid"])

    @property
    def litellm_warmup(self) -> float:
        return max(self.args.warmup, 3.0)  # LiteLLM warms up for at least 3 s before each of its points

    def _measure(self, target: str, pid: int, scenario: Scenario, url: str, conns: int, auth: str,
                 warmup: float | None, header: tuple[str, str] | None) -> dict[str, Any]:
        name = f"{target}-{scenario.key}-c{conns}"
        load = self.load(scenario, url, auth, header)
        warm = self.args.warmup if warmup is None else warmup
        seconds = self.duration_for(target, scenario, conns)
        if warm > 0:
            w = wrklib.run(load, conns, warm, self.load_core, self.wrk_log, name + "-warmup")
            self.requests_sent[target] = self.requests_sent.get(target, 0) + w.requests
        self.settle(pid)
        counting = self.args.instructions and target == "gateway"
        idle_rate = 0.0
        if counting:  # what the gateway executes with no calls (timers, health checks) is not theirs
            idle_rate = instr.idle_rate(pid, self.tmp / "callgrind")
        pids = tree(pid)
        ticks = cpu_ticks(pids)
        busy = core_busy_ticks()
        procs_before = process_cpu()
        if counting:
            instr.zero(pid)
        with Sampler(pid) as sampler:
            r = wrklib.run(load, conns, seconds, self.load_core, self.wrk_log, name)
        per_call = (instr.per_call(pid, self.tmp / "callgrind", idle_rate, r.seconds, r.requests)
                    if counting else None)
        used = cpu_ticks(tree(pid)) - ticks
        core_busy = core_busy_ticks()[self.server_core] - busy[self.server_core]
        others = other_cpu(procs_before, process_cpu(), {*tree(pid), *self.own_pids}, ("wrk", "taskset"),
                           r.seconds or seconds)
        foreign = sum(v for k, v in others.items() if k not in HELPERS and k != "[kernel]")
        rss_after = rss_kb(tree(pid))
        self.requests_sent[target] = self.requests_sent.get(target, 0) + r.requests
        point = {
            "scenario": scenario.key, "target": target, "connections": conns,
            "seconds": round(r.seconds, 3), "requests": r.requests, "rps": round(r.rps, 1),
            "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms, "p999_ms": r.p999_ms, "max_ms": r.max_ms,
            "mean_ms": round(r.mean_ms, 3), "errors": r.errors, "error_rate": round(r.error_rate, 5),
            "cpu_us_per_req": round(used / CLK_TCK * 1e6 / r.requests, 1) if r.requests else None,
            "cpu_util_pct": round(100 * used / CLK_TCK / r.seconds, 1) if r.seconds else None,
            "instructions_per_req": per_call,
            "idle_instructions_per_s": round(idle_rate) if counting else None,
            "rss_mb_after": round(rss_after / 1024, 1), "rss_mb_max": round(max(sampler.max_kb, rss_after) / 1024, 1),
            "added_p50_ms": None, "added_p99_ms": None,
            # CPU used on the server core by anything but the server (PostgreSQL and Redis are unpinned)
            "other_load_on_server_core_pct": round(max(0.0, 100 * (core_busy - used) / CLK_TCK / r.seconds), 1)
            if r.seconds and target != "direct" else None,
            # CPU of other processes meanwhile, by name (% of one core; any core): the gateway's PostgreSQL and
            # Redis work shows here; anything else is another job's load, and spoils the point
            "other_processes_cpu_pct": others,
            "foreign_cpu_pct": round(foreign, 1),
        }
        if foreign > NOISE_PCT:
            print(f"  ! {name}: other jobs used {foreign:.0f}% of a core meanwhile ({others})", flush=True)
        if r.error_rate > MAX_ERROR_RATE or r.requests == 0:
            msg = (f"{name}: {r.errors} errors in {r.requests} requests ({100 * r.error_rate:.2f}% > 1%); "
                   f"first: {r.raw.get('first_bad') or 'socket errors/timeouts'}")
            print(f"\n  !!! ERROR {msg}\n", flush=True)
            point["invalid"] = msg
        print(f"  {name:<28} {r.rps:>9,.1f} req/s  p50 {r.p50_ms:8.3f} ms  p99 {r.p99_ms:8.3f} ms  "
              f"cpu {point['cpu_us_per_req'] or 0:>8,.0f} us/req  rss {point['rss_mb_max']:6.1f} MB  "
              f"errors {r.errors}"
              + (f"  {point['instructions_per_req']:,} instructions/req" if counting else ""), flush=True)
        return point

    def pairs(self, litellm: servers.Server, scenarios: list[Scenario], rounds: int,
              start_gateway: Callable[[], servers.Server]) -> dict[str, Any]:
        """The ratios to LiteLLM, measured in alternation: this VM's speed drifts by 10-30% over minutes,
        and the main points measure LiteLLM a quarter of an hour after the gateway. Both run (each idle
        while the other is measured), and each round measures the gateway, then LiteLLM, at 64
        connections; the ratio reported is the median of the rounds'."""
        conns = 64
        gateway = start_gateway()
        rows: list[dict[str, Any]] = []
        try:
            print(f"  pairs: {rounds} round(s) of gateway then LiteLLM at {conns} connections", flush=True)
            for i in range(rounds):
                for sc in scenarios:
                    g = self._measure("gateway", gateway.pid, sc, gateway.url, conns, gateway.auth, None,
                                      self.expect(sc))
                    x = self._measure("litellm", litellm.pid, sc, litellm.url, conns, litellm.auth,
                                      self.litellm_warmup, None)
                    self._count_problem(g)
                    rows.append({"round": i + 1, "scenario": sc.key, "gateway_rps": g["rps"],
                                 "litellm_rps": x["rps"], "gateway_cpu_us": g["cpu_us_per_req"],
                                 "litellm_cpu_us": x["cpu_us_per_req"], "litellm_invalid": bool(x.get("invalid")),
                                 "ratio": round(g["rps"] / x["rps"], 2) if x["rps"] else None})
        finally:
            gateway.child.stop()
        medians = {}
        for sc in scenarios:
            ratios = [r["ratio"] for r in rows if r["scenario"] == sc.key and r["ratio"] is not None]
            medians[sc.key] = statistics.median(ratios) if ratios else None
        print("  pairs: median ratio " + ", ".join(f"{k} {v:.1f}x" for k, v in medians.items() if v), flush=True)
        return {"connections": conns, "rounds": rounds, "rows": rows, "median_ratio": medians}

    def soak(self, server: servers.Server, seconds: float) -> dict[str, Any]:
        scenario = SCENARIOS["json"]
        warmup = min(60.0, seconds / 5)
        print(f"  soak: {seconds:.0f} s at 64 connections, non-streaming (RSS after {warmup:.0f} s vs at the end)",
              flush=True)
        self.settle(server.pid)
        pids = tree(server.pid)
        ticks = cpu_ticks(pids)
        with Sampler(server.pid, interval=1.0) as sampler:
            r = wrklib.run(self.load(scenario, server.url, server.auth, self.expect(scenario)), 64, seconds,
                           self.load_core, self.wrk_log, "gateway-soak")
        used = cpu_ticks(tree(server.pid)) - ticks
        end_kb = rss_kb(tree(server.pid))
        self.requests_sent["gateway"] += r.requests
        warm_kb = next((kb for t, kb in sampler.samples if t >= warmup), end_kb)
        growth = 100 * (end_kb - warm_kb) / warm_kb if warm_kb else 0.0
        soak = {
            "seconds": round(r.seconds, 1), "connections": 64, "requests": r.requests, "rps": round(r.rps, 1),
            "errors": r.errors, "error_rate": round(r.error_rate, 5), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "cpu_us_per_req": round(used / CLK_TCK * 1e6 / r.requests, 1) if r.requests else None,
            "warmup_s": warmup, "rss_mb_warm": round(warm_kb / 1024, 1), "rss_mb_end": round(end_kb / 1024, 1),
            "rss_mb_max": round(max(sampler.max_kb, end_kb) / 1024, 1), "growth_pct": round(growth, 2),
            "rss_timeline_mb": [(round(t), round(kb / 1024, 1)) for t, kb in sampler.samples[::10]],
        }
        if r.error_rate > MAX_ERROR_RATE:
            self.problems.append(f"soak: {r.errors} errors in {r.requests} requests")
            print(f"\n  !!! ERROR soak: {r.errors} errors in {r.requests} requests\n", flush=True)
        print(f"  soak: {r.rps:,.0f} req/s, {r.errors} errors, RSS {soak['rss_mb_warm']} MB after warm-up -> "
              f"{soak['rss_mb_end']} MB at the end ({growth:+.2f}%)", flush=True)
        return soak

    def profile(self, server: servers.Server) -> dict[str, Any]:
        exe = profiling.ensure_pyspy(servers.VENV_BIN)
        scenario = SCENARIOS[self.args.scenarios[0] if self.args.scenarios else "json"]  # the first asked for
        what = PROFILED[scenario.key]
        stem = self.args.out.with_suffix("").name
        raw = self.tmp / "py-spy.raw.txt"  # collapsed stacks; the SVG and the summary are made from it
        conns = self.args.profile_connections
        print(f"  profile: py-spy on the gateway, {what} at {conns} connections (an extra, unrecorded run)", flush=True)
        load = self.load(scenario, server.url, server.auth, self.expect(scenario))
        wrklib.run(load, conns, max(1.0, self.args.warmup), self.load_core, self.wrk_log, "profile-warmup")
        self.settle(server.pid)
        spy = profiling.record(exe, server.pid, self.args.duration, raw, self.tmp / "py-spy.log", self.load_core)
        before = profiling.thread_cpu(server.pid)
        time.sleep(0.5)  # py-spy attaches
        r = wrklib.run(load, conns, self.args.duration, self.load_core, self.wrk_log, "gateway-profiled")
        self.requests_sent["gateway"] += r.requests
        try:
            spy.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.stop()
        after = profiling.thread_cpu(server.pid)
        cpu = {tid: (name, (ticks - before.get(tid, (name, 0))[1]) / CLK_TCK) for tid, (name, ticks) in after.items()}
        if not raw.exists():
            raise BenchError(f"py-spy wrote nothing:\n{spy.tail()}")
        prof = profiling.parse(raw, server.pid)
        title = (f"gateway, {what}, {conns} connections, {r.rps:,.0f} req/s under py-spy "
                 f"({prof.samples} samples, {dt.date.today()})")
        svg = self.args.out.parent / f"{stem}-profile.svg"
        txt = self.args.out.parent / f"{stem}-profile.txt"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(profiling.flamegraph_svg(prof, title, threads=profiling.busy_threads(cpu, server.pid)))
        txt.write_text(profiling.summary_text(prof, 30, title, cpu))
        print(f"  profile: {shown(svg)}, {shown(txt)}", flush=True)
        return {"rps_under_profiler": round(r.rps, 1), "samples": prof.samples, "event_loop_samples": prof.main_samples,
                "threads": [{"thread": t, "samples": c} for t, c in prof.threads.most_common()],
                "thread_cpu_s": {f"{tid} {name}": round(secs, 2) for tid, (name, secs) in cpu.items()},
                "top_self": prof.top(15),
                "svg": shown(svg), "summary": shown(txt)}


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --- the whole run --------------------------------------------------------------------------------------


def machine_load(seconds: float = 2.0) -> dict[str, float]:
    """Each core's busy share (%) over `seconds`, while none of the benchmark's servers runs."""
    before = core_busy_ticks()
    time.sleep(seconds)
    after = core_busy_ticks()
    return {core: round(100 * (after[core] - before[core]) / CLK_TCK / seconds, 1) for core in after}


def wait_quiet(max_wait: float) -> dict[str, float]:
    """Waits (at most `max_wait` s) until no core is more than 15% busy: another job's load (a test suite, a
    build) would be measured as the server's."""
    deadline = time.monotonic() + max_wait
    load = machine_load()
    while max(load.values()) > 15 and time.monotonic() < deadline:
        print(f"  machine busy (core load {load} %): waiting for it to be quiet ...", flush=True)
        time.sleep(8)
        load = machine_load()
    if max(load.values()) > 15:
        print(f"  !!! WARNING: the machine is busy (core load {load} %); the figures will be noisy", flush=True)
    return load


def ensure_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0:
            raise BenchError(f"{', '.join(missing)} missing: run `apt-get install -y nginx-light wrk` as root")
        print(f"  installing {', '.join(missing)}: apt-get update && apt-get install -y nginx-light wrk", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=900, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light", "wrk"], check=True, env=env, timeout=900,
                       stdout=subprocess.DEVNULL)
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found")


def _cmd(argv: list[str]) -> str:
    with contextlib.suppress(Exception):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return "?"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "cpu_model": "?", "kernel": platform.release()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    return info


def versions() -> dict[str, Any]:
    out: dict[str, Any] = servers.python_versions()
    out["nginx"] = _cmd(["nginx", "-v"]).replace("nginx version: ", "")
    out["wrk"] = _cmd(["wrk", "--version"]).split(" [")[0]
    out["postgresql_client"] = _cmd(["psql", "--version"])
    out["redis_server"] = _cmd(["redis-server", "--version"])
    src = servers.SOURCE  # BENCH_GATEWAY_SRC: another checkout's code, measured with this venv
    head = _cmd(["git", "-C", str(src), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    out["gateway_commit"] = head + ("+local changes" if dirty else "")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
                   help="smoke run: a few seconds per point, no soak (also BENCH_QUICK=1)")
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                   help="soak duration at 64 connections (default 600; 0 = none; none with --quick)")
    p.add_argument("--skip-litellm", action="store_true", help="measure only the gateway (and the mock)")
    p.add_argument("--skip-floors", action="store_true",
                   help="do not measure the floors (uvicorn + aiohttp doing nothing but HTTP, in the same run)")
    p.add_argument("--profile", action="store_true", help="py-spy flamegraph + top functions (first of --scenarios)")
    p.add_argument("--instructions", action="store_true",
                   help="run the gateway under callgrind and count instructions per request (slow: only the "
                        "count is meaningful; implies --skip-litellm; see overheadlib/instructions.py)")
    p.add_argument("--profile-connections", type=int, default=64, help="connections while profiling (default 64)")
    p.add_argument("--duration", type=float, default=None, help="seconds per point (default 10, quick 3)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each point (default 2, quick 1)")
    p.add_argument("--max-point", type=float, default=None,
                   help="longest a point may be stretched for a slow server (default 60, quick 15)")
    p.add_argument("--wait-quiet", type=float, default=180.0, metavar="SECONDS",
                   help="wait at most this long for other jobs to leave the cores idle first (default 180)")
    p.add_argument("--connections", default=",".join(map(str, CONNECTIONS)), help="comma-separated")
    p.add_argument("--scenarios", default="json,stream,cache", help="comma-separated: json, stream, cache")
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="extra gateway setting (repeatable), e.g. --set upstream_max_connections=512")
    p.add_argument("--refresh-litellm", action="store_true", help="reinstall the latest LiteLLM first")
    p.add_argument("--pairs", type=int, default=None, metavar="ROUNDS",
                   help="rounds of the gateway and LiteLLM measured in alternation at 64 connections, both "
                        "running, for the ratios (default 3, quick 1; 0 = none)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/overhead.json)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the run's temp dir (configs, logs)")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target FAILs")
    p.add_argument("--report", type=Path, metavar="RESULTS_JSON", help="only print the Markdown summary of a result")
    args = p.parse_args(argv)
    if args.instructions:
        args.skip_litellm = args.skip_floors = True
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.max_point = args.max_point or (15.0 if args.quick else 60.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.soak = args.soak if args.soak is not None else (0.0 if args.quick else 600.0)
    args.pairs = args.pairs if args.pairs is not None else (1 if args.quick else 3)
    args.out = (args.out or RESULTS / ("overhead-quick.json" if args.quick else "overhead.json")).resolve()
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    args.extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item}: expected KEY=VALUE")
        # YAML 1.1 reads on/off/yes/no as booleans; settings such as `auth: off` want the word
        words = {"on", "off", "yes", "no", "y", "n"}
        args.extra[key] = value if value.strip().lower() in words else yaml.safe_load(value)
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    if args.quick:
        return "make bench BENCH_QUICK=1"
    if args.soak == 600 and args.duration == 10 and not args.skip_litellm:
        return "make bench"
    parts = [".venv/bin/python bench/overhead.py", f"--duration {args.duration:g}", f"--soak {args.soak:g}"]
    if args.skip_litellm:
        parts.append("--skip-litellm")
    return " ".join(parts)


def execute(args: argparse.Namespace, tmp: Path,
            cleanups: list[Callable[[], object]]) -> tuple[dict[str, Any], list[str]]:
    run = Run(args, tmp)
    server_core, load_core = run.server_core, run.load_core
    print(f"overhead benchmark: server on core {server_core}; wrk, nginx and this driver on core {load_core}; "
          f"{args.duration:g} s per point (+{args.warmup:g} s warm-up); temp dir {tmp}", flush=True)
    if server_core == load_core:
        print("  ! fewer than 2 cores: server and load share a core; figures are not comparable", flush=True)
    ensure_tools()
    litellm_version = None if args.skip_litellm else servers.ensure_litellm(args.refresh_litellm)

    idle_load = wait_quiet(args.wait_quiet)
    mock = mocklib.start(tmp / "mock", FIXTURES, load_core, servers.JSON_MODEL, servers.SSE_MODEL)
    run.own_pids.update(tree(mock.child.pid))
    direct_url = {"json": mock.json_url, "stream": mock.sse_url, "cache": mock.json_url}
    for key in ("json", "stream"):
        validate("mock", direct_url[key] + "/v1/chat/completions", SCENARIOS[key])

    db_url = servers.prepare_database(PG_ADMIN_URL, PG_BENCH_DB)
    if db_url:
        cleanups.append(lambda: servers.drop_database(PG_ADMIN_URL, PG_BENCH_DB))
    prefix = f"gateway-bench-{os.getpid()}-{int(time.time())}:"  # this run's Redis keys
    redis_url = servers.REDIS_URL if servers.redis_reachable(servers.REDIS_URL) else None
    if redis_url:
        cleanups.append(lambda: servers.delete_redis_prefix(redis_url, prefix))
    config, feats = servers.gateway_config(tmp / "gateway", mock, db_url, redis_url, prefix, args.extra)
    cache_on = run.cache_on = any(f.name == "cache" and f.applied for f in feats)
    scenarios = [SCENARIOS[s] for s in args.scenarios if s != "cache" or cache_on]
    print("  gateway features: " + "; ".join(
        f"{f.name} {'ON (' + f.note + ')' if f.applied else f.note}" for f in feats), flush=True)

    if args.instructions:
        gateway = servers.start_gateway(tmp / "gateway", server_core, config, feats,
                                        instr.wrapper(tmp / "callgrind"), ready_s=900)
    else:
        gateway = servers.start_gateway(tmp / "gateway", server_core, config, feats)
    for sc in scenarios:
        validate("gateway", gateway.url + "/v1/chat/completions", sc, gateway.auth, run.expect(sc))
    soak: dict[str, Any] | None = None
    paired: dict[str, Any] | None = None
    prof: dict[str, Any] | None = None
    records: int | None = None
    try:
        for sc in scenarios:
            for conns in args.connections:
                if not args.instructions:  # under callgrind only the gateway's count means anything
                    run.measure("direct", mock.child.pid, sc, direct_url[sc.key], conns)
                if sc.key == "cache" and cache_on:
                    refresh_entry(gateway.url + "/v1/chat/completions", sc, gateway.auth)
                run.measure("gateway", gateway.pid, sc, gateway.url, conns, gateway.auth, header=run.expect(sc))
        if args.profile:
            prof = run.profile(gateway)
        if args.soak > 0:
            soak = run.soak(gateway, args.soak)
    finally:
        gateway.child.stop()
    if gateway.child.proc.returncode not in (0, None):
        run.problems.append(f"gateway exited with {gateway.child.proc.returncode}: {gateway.child.tail(1500)}")

    if not args.skip_floors:
        for sc in scenarios:
            floor = servers.start_floor(tmp / "floors", server_core, FLOOR_APPS[sc.key],
                                        direct_url[sc.key] + "/v1/chat/completions")
            try:
                validate("floor", floor.url + "/v1/chat/completions", sc)
                for conns in args.connections:
                    run.measure("floor", floor.pid, sc, floor.url, conns)
            finally:
                floor.child.stop()

    if litellm_version:
        litellm = servers.start_litellm(tmp / "litellm", server_core, mock)
        try:
            for sc in scenarios:
                if sc.key != "cache":
                    validate("litellm", litellm.url + "/v1/chat/completions", sc, litellm.auth)
            for sc in scenarios:
                if sc.key == "cache":
                    continue
                for conns in args.connections:
                    run.measure("litellm", litellm.pid, sc, litellm.url, conns, litellm.auth,
                                warmup=run.litellm_warmup)
            if args.pairs > 0:
                paired = run.pairs(litellm, [sc for sc in scenarios if sc.key != "cache"], args.pairs,
                                   lambda: servers.start_gateway(tmp / "gateway-paired", server_core, config, feats))
        finally:
            litellm.child.stop()
    mock.child.stop()
    if db_url:  # every gateway call's record, the paired rounds' included (each gateway stopped cleanly)
        records = servers.count_records(db_url)

    for p in run.points:
        d = report.find(run.points, p["scenario"], "direct", p["connections"])
        if p["target"] != "direct" and d:
            p["added_p50_ms"] = round(p["p50_ms"] - d["p50_ms"], 3)
            p["added_p99_ms"] = round(p["p99_ms"] - d["p99_ms"], 3)
    result: dict[str, Any] = {
        "benchmark": "gateway overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reproduce": reproduce_command(args),
        "command": " ".join([".venv/bin/python", "bench/overhead.py", *sys.argv[1:]]),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "versions": {**versions(), "litellm": litellm_version},
        "pinning": {"server_core": server_core, "load_core": load_core,
                    "note": "gateway / LiteLLM alone on the server core; wrk (1 thread), nginx (1 worker) and "
                            "the driver on the load core; PostgreSQL and Redis (the gateway's accounting, "
                            "cache and limits) unpinned, as the system's services"},
        "durations": {"point_s": args.duration, "warmup_s": args.warmup, "soak_s": args.soak,
                      "max_point_s": args.max_point},
        "machine_load_before_pct": idle_load,
        "noisy_points": [f"{p['target']}-{p['scenario']}-c{p['connections']}" for p in run.points
                         if (p.get("foreign_cpu_pct") or 0) > NOISE_PCT],
        "connections": args.connections,
        "scenarios": [s.key for s in scenarios] + (["cache"] if "cache" in args.scenarios and not cache_on else []),
        "requests": {key: {"model": sc.model, "stream": sc.stream, "bytes": len(sc.body()),
                           "distinct_per_request": sc.unique} for key, sc in SCENARIOS.items()},
        "mock": {"json_bytes": len(mock.json_body), "sse_bytes": len(mock.sse_body), "sse_events": len(mock.sse_events),
                 "fixtures": "vllm-0.32/chat.json, chat_stream_usage.sse"},
        "gateway": {
            "settings": {k: v for k, v in config.items() if k != "state_dir"},
            "features": [{"name": f.name, "applied": f.applied, "note": f.note} for f in feats],
            "accounting": {"database": "postgresql" if db_url else "sqlite (embedded)", "records_written": records,
                           "requests_sent": run.requests_sent["gateway"]},
        },
        "floors": {"measured": not args.skip_floors,
                   "apps": {key: {"app": f"bench/overheadlib/floor_apps.py:{app}", "what": servers.FLOORS[app]}
                            for key, app in FLOOR_APPS.items()}},
        "litellm": {"measured": bool(litellm_version), "version": litellm_version,
                    "config": servers.litellm_config(mock) if litellm_version else None,
                    "command": "litellm --config litellm.yaml --host 127.0.0.1 --port PORT --num_workers 1",
                    "env": {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}},
        "points": run.points,
        "paired": paired,
        "soak": soak,
        "profile": prof,
        "problems": run.problems,
    }
    result["targets"] = report.targets(run.points, soak, bool(litellm_version), cache_on, paired)
    return result, run.problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(report.markdown(json.loads(args.report.read_text())), end="")
        return 0
    _, load_core = cores()
    os.sched_setaffinity(0, {int(load_core)})  # the driver never competes with the server under test

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-overhead-"))
    ok = False
    cleanups: list[Callable[[], object]] = []  # run after every child has stopped: the database, Redis keys
    try:
        result, problems = execute(args, tmp, cleanups)
        RESULTS.mkdir(parents=True, exist_ok=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print("\n" + report.markdown(result))
        print(f"results: {args.out}")
        if problems:
            print("\nFAILED: " + "\n  ".join(["some points are not valid:", *problems]), file=sys.stderr)
            return 1
        ok = True
        if args.strict and any(t["result"] == "FAIL" for t in result["targets"]):
            return 3
        return 0
    except BenchError as exc:
        print(f"\nFAILED: {exc}\n(logs kept in {tmp})", file=sys.stderr)
        return 1
    finally:
        left = Child.stop_all()
        if left:
            print(f"WARNING: could not stop: {', '.join(left)}", file=sys.stderr)
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception as exc:
                print(f"WARNING: cleanup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if ok and not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not ok:
            print(f"(temp dir with configs and logs kept: {tmp})", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
