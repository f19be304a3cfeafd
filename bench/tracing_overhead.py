"""What tracing costs: gateway throughput, non-streaming, with tracing off and with tracing on at
10 % sampling exporting OTLP/HTTP to a local collector stand-in, in one run.

The pieces are bench/overheadlib's: the nginx mock upstream (fixed vLLM 0.32 bodies) and wrk with load.lua
(every answer checked) on core 1; the gateway alone on core 0, configured as in production (accounting
to PostgreSQL, the shipped routing policy, the response cache in Redis, API keys: overheadlib.servers).
Two gateways are started, identical but for the tracing settings, and measured in alternation (off, on,
off, on, ...), so slow drifts of the machine hit both alike; each figure is the median of its rounds.

The OTLP sink is a small HTTP server (this file, `--sink`, on core 1) that accepts each export, decodes
it (so the spans are counted: the export really happened) and discards it. The exporter is the real
one (BatchSpanProcessor + OTLPSpanExporter, protobuf over HTTP), so its cost in the gateway's process
(encoding, the export thread) is measured.

    .venv/bin/python bench/tracing_overhead.py [--duration 10] [--rounds 3] [--connections 64] [--ratio 0.1]

Results: bench/results/tracing_overhead.json and a summary on stdout. Exit status 0 when every round was
valid (<= 1 % errors) and the throughput cost of tracing is under --max-overhead (10 %), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from overheadlib import mock as mocklib  # noqa: E402
from overheadlib import servers  # noqa: E402
from overheadlib import wrk as wrklib  # noqa: E402
from overheadlib.procs import (  # noqa: E402
    CLK_TCK,
    BenchError,
    Child,
    cores,
    cpu_ticks,
    free_port,
    http_get,
    http_post,
    pinned,
    tree,
    wait_until,
)

FIXTURES = Path(os.environ.get("BENCH_FIXTURES", ROOT / "tests" / "fixtures" / "vllm-0.32"))
RESULTS = BENCH / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_BENCH_DB = "gateway_tracing_bench"
MAX_ERROR_RATE = 0.01

# A short chat call; the nonce makes each request distinct (the cache looks it up and misses, as on real traffic).
BODY = {
    "model": servers.JSON_MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant for an internal engineering team. Answer "
                                      "concisely and say so when you are unsure."},
        {"role": "user", "content": "Our nightly export job times out writing to object storage since the last "
                                    "deploy. What would you check first? (ticket @@NONCE@@)"},
    ],
    "max_tokens": 12,
    "temperature": 0,
}
MARKERS = ('"chat.completion"', '"usage"')


# --- the OTLP sink -------------------------------------------------------------------------------------------


def run_sink(port: int) -> None:
    """`--sink PORT`: accept OTLP/HTTP trace exports, count them, discard them. GET /stats: the counts."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    stats = {"exports": 0, "spans": 0, "traces": 0, "bytes": 0, "bad": 0}
    server_kind = 2  # SPAN_KIND_SERVER: one per traced request
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a collector

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes, media: str) -> None:
            self.send_response(status)
            self.send_header("content-type", media)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("content-length") or 0))
            spans = traces = 0
            try:
                request = ExportTraceServiceRequest.FromString(data)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        spans += len(ss.spans)
                        traces += sum(1 for span in ss.spans if span.kind == server_kind)
                ok = True
            except Exception:
                ok = False
            with lock:
                stats["exports"] += 1
                stats["spans"] += spans
                stats["traces"] += traces
                stats["bytes"] += len(data)
                stats["bad"] += 0 if ok else 1
            self._answer(200 if ok else 400, b"", "application/x-protobuf")  # an empty ExportTraceServiceResponse

        def do_GET(self) -> None:
            with lock:
                body = json.dumps(stats).encode()
            self._answer(200, body, "application/json")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"otlp sink on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


def start_sink(workdir: Path, core: str) -> tuple[Child, str]:
    port = free_port()
    child = Child("otlp sink", pinned(core, [sys.executable, str(Path(__file__).resolve()), "--sink", str(port)]),
                  workdir / "sink.log")
    url = f"http://127.0.0.1:{port}"
    wait_until("otlp sink", lambda: http_get(url + "/stats")[0] == 200, 30, child)
    return child, url


def sink_stats(url: str) -> dict[str, int]:
    return json.loads(http_get(url + "/stats")[1])  # type: ignore[no-any-return]


# --- the span pipeline alone, in process -------------------------------------------------------------------


def span_pipeline(sink_url: str, traces: int = 3000) -> dict[str, float]:
    """CPU per request of the gateway's own tracing code with the real OTLP exporter (to the sink): a traced
    request's seven spans (as in the run: the key has rate limits) built and exported, and the sampling
    decision of one that is not traced. Independent
    of how fast the rest of the gateway is, so it tells what tracing will cost once the hot path is faster."""
    from gateway.inference.usage import Usage
    from gateway.outcome import Outcome
    from gateway.settings import load_settings
    from gateway.telemetry.tracing import Tracing

    settings = load_settings(env={}, overrides={"otel_exporter": "otlp", "otel_endpoint": sink_url,
                                                "otel_sample_ratio": 1.0})
    tracing = Tracing.create(settings)
    assert tracing is not None

    class Replica:
        url = "http://127.0.0.1:9000"

    class Response:
        status_code = 200

    class Call:
        replica, response = Replica, Response

    headers = {"host": "127.0.0.1:8080"}

    def request() -> None:
        o = Outcome(request_id=uuid.uuid4().hex, model="", started=time.perf_counter(), kind="chat")
        trace, _ = tracing.begin(headers, o, "/v1/chat/completions", (o.started - 1e-4, o.started - 5e-5))
        if trace is None:
            return
        o.requested_model, o.policy_rule, o.model, o.pool, o.cache = "auto", "default", "demo-small", "small", "miss"
        t = time.perf_counter()
        trace.step("gateway.route", t, time.perf_counter(), {"gateway.route.rule": "default"})
        t = time.perf_counter()
        trace.step("gateway.limits", t, time.perf_counter())
        t = time.perf_counter()
        trace.step("gateway.cache", t, time.perf_counter(), {"gateway.cache.result": "miss"})
        trace.upstream(o, "demo-small", "small", BODY)
        trace.upstream_opened(Call)  # type: ignore[arg-type]
        o.replica, o.status, o.completed = Replica.url, 200, True
        o.first_byte = time.perf_counter()
        o.usage = Usage(prompt_tokens=34, completion_tokens=12, total_tokens=46)
        o.finished = time.perf_counter()
        trace.end(o, "ok", (o.finished, time.perf_counter()))

    for _ in range(200):  # warm up (below the exporter's queue of 2048 spans)
        request()
    tracing.provider.force_flush()
    chunk, loop_s, cpu0 = 250, 0.0, time.process_time()  # chunks below the exporter's queue (2048 spans)
    for _ in range(traces // chunk):
        t0 = time.thread_time()
        for _ in range(chunk):
            request()
        loop_s += time.thread_time() - t0
        tracing.provider.force_flush()
    traced_all = (time.process_time() - cpu0) / (traces // chunk * chunk) * 1e6
    traced_loop = loop_s / (traces // chunk * chunk) * 1e6
    tracing.ratio = 1e-12  # what every request pays with tracing on: the sampling decision (a draw, not traced)
    o = Outcome(request_id="r", model="", started=time.perf_counter(), kind="chat")
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        tracing.begin(headers, o, "/v1/chat/completions", None)
    untraced = (time.perf_counter() - t0) / n * 1e6
    tracing.shutdown()
    return {"traced_request_cpu_us": round(traced_all, 1), "traced_request_event_loop_us": round(traced_loop, 1),
            "untraced_request_us": round(untraced, 2)}


# --- one round ---------------------------------------------------------------------------------------------


def settle(pid: int, max_wait: float = 30.0) -> None:
    """Until the gateway is idle: calls abandoned by the previous wrk must not eat into the next round."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = cpu_ticks(tree(pid))
        time.sleep(0.5)
        if (cpu_ticks(tree(pid)) - before) / CLK_TCK < 0.05:
            return


def measure(name: str, server: servers.Server, body: Path, conns: int, seconds: float, warmup: float,
            load_core: str, log: Path) -> dict[str, Any]:
    load = wrklib.Load(server.url + "/v1/chat/completions", body, "json", MARKERS, 0, True, server.auth)
    warm = wrklib.run(load, conns, warmup, load_core, log, name + "-warmup") if warmup > 0 else None
    settle(server.pid)
    ticks = cpu_ticks(tree(server.pid))
    r = wrklib.run(load, conns, seconds, load_core, log, name)
    used = cpu_ticks(tree(server.pid)) - ticks
    point = {
        "name": name, "connections": conns, "seconds": round(r.seconds, 3), "requests": r.requests,
        "rps": round(r.rps, 1), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors,
        "error_rate": round(r.error_rate, 5),
        "cpu_us_per_req": round(used / CLK_TCK * 1e6 / r.requests, 1) if r.requests else None,
        "warmup_requests": warm.requests if warm is not None else 0,
    }
    print(f"  {name:<14} {r.rps:>9,.1f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  "
          f"cpu {point['cpu_us_per_req'] or 0:>7,.0f} us/req  errors {r.errors}", flush=True)
    return point


def check_call(server: servers.Server) -> None:
    body = json.dumps(BODY).replace("@@NONCE@@", f"check-{uuid.uuid4().hex}").encode()
    status, answer, _ = http_post(server.url + "/v1/chat/completions", body,
                                  {"authorization": f"Bearer {server.auth}"} if server.auth else {})
    if status != 200 or any(m.encode() not in answer for m in MARKERS):
        raise BenchError(f"{server.name}: a checked call failed ({status}): {answer[:500]!r}")


# --- the run -----------------------------------------------------------------------------------------------


def execute(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server_core, load_core = cores()
    print(f"tracing overhead: gateway on core {server_core}; wrk, the mock and the OTLP sink on core {load_core}",
          flush=True)
    mock = mocklib.start(tmp / "mock", FIXTURES, load_core, servers.JSON_MODEL, servers.SSE_MODEL)
    sink, sink_url = start_sink(tmp, load_core)
    database_url = None if args.sqlite else servers.prepare_database(PG_ADMIN_URL, PG_BENCH_DB)
    redis_url = servers.REDIS_URL if servers.redis_reachable(servers.REDIS_URL) else None
    prefix = f"bench:tracing:{uuid.uuid4().hex[:8]}:"
    body = tmp / "body.json"
    body.write_text(json.dumps(BODY))
    configs = {
        "off": {},
        "on": {"otel_exporter": "otlp", "otel_endpoint": sink_url, "otel_sample_ratio": args.ratio},
    }
    gateways: dict[str, servers.Server] = {}
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    features: list[str] = []
    try:
        for key, extra in configs.items():
            config, feats = servers.gateway_config(tmp / f"gw-{key}", mock, database_url, redis_url,
                                                   f"{prefix}{key}:", extra)
            gateways[key] = servers.start_gateway(tmp / f"gw-{key}", server_core, config, feats)
            check_call(gateways[key])
            features = [f"{f.name}: {f.note}" for f in feats if f.applied]
        print("  features: " + "; ".join(features), flush=True)
        before = sink_stats(sink_url)
        for i in range(args.rounds):
            for key in ("off", "on") if i % 2 == 0 else ("on", "off"):
                rounds[key].append(measure(f"{key}-{i + 1}", gateways[key], body, args.connections, args.duration,
                                           args.warmup, load_core, tmp / "wrk.log"))
        time.sleep(6)  # the exporter's schedule delay (5 s): the last batch reaches the sink
        after = sink_stats(sink_url)
        exported = {k: after[k] - before[k] for k in after}
        pipeline = span_pipeline(sink_url)
        print(f"  span pipeline in process: {pipeline}", flush=True)
        logs = {k: (tmp / f"gw-{k}" / "gateway.log").read_text(errors="replace") for k in gateways}
    finally:
        for server in gateways.values():
            server.child.stop()
        sink.stop()
        mock.child.stop()
        if database_url is not None:
            with contextlib.suppress(Exception):
                servers.drop_database(PG_ADMIN_URL, PG_BENCH_DB)
        if redis_url is not None:
            with contextlib.suppress(Exception):
                servers.delete_redis_prefix(redis_url, prefix)

    def med(key: str, field: str) -> float:
        return float(statistics.median(p[field] for p in rounds[key]))

    off, on = med("off", "rps"), med("on", "rps")
    overhead = 100 * (off - on) / off if off else 0.0
    traced_requests = sum(p["requests"] + p["warmup_requests"] for p in rounds["on"])
    export_failures = logs["on"].count("Failed to export")
    invalid = [p["name"] for key in rounds for p in rounds[key] if p["error_rate"] > MAX_ERROR_RATE]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "bench/tracing_overhead.py " + " ".join(sys.argv[1:]),
        "settings": {"connections": args.connections, "duration_s": args.duration, "rounds": args.rounds,
                     "warmup_s": args.warmup, "sample_ratio": args.ratio, "exporter": "otlp (http/protobuf)"},
        "features": features,
        "rounds": rounds,
        "rps_off": off, "rps_on": on, "overhead_pct": round(overhead, 2),
        "cpu_us_per_req_off": med("off", "cpu_us_per_req"), "cpu_us_per_req_on": med("on", "cpu_us_per_req"),
        "p50_ms_off": med("off", "p50_ms"), "p50_ms_on": med("on", "p50_ms"),
        "p99_ms_off": med("off", "p99_ms"), "p99_ms_on": med("on", "p99_ms"),
        "exported": exported,
        "span_pipeline": pipeline,
        # What tracing at this ratio costs per request on average, from the in-process figures, and that as a
        # share of the traced-off gateway's CPU per request measured here.
        "projected_cpu_us_per_req": round(args.ratio * pipeline["traced_request_cpu_us"]
                                          + (1 - args.ratio) * pipeline["untraced_request_us"], 1),
        "traced_share": round(exported["traces"] / traced_requests, 4) if traced_requests else None,
        "export_failures_logged": export_failures,
        "invalid_rounds": invalid,
        "max_overhead_pct": args.max_overhead,
        "pass": not invalid and overhead < args.max_overhead and exported["spans"] > 0 and not exported["bad"],
        "versions": servers.python_versions(),
    }
    return result


def summary(r: dict[str, Any]) -> str:
    return "\n".join([
        "",
        f"tracing off: {r['rps_off']:,.1f} req/s (median of {len(r['rounds']['off'])}), "
        f"{r['cpu_us_per_req_off']:,.0f} us CPU/req, p50 {r['p50_ms_off']:.2f} ms, p99 {r['p99_ms_off']:.2f} ms",
        f"tracing on ({100 * r['settings']['sample_ratio']:g} % sampled, OTLP): {r['rps_on']:,.1f} req/s, "
        f"{r['cpu_us_per_req_on']:,.0f} us CPU/req, p50 {r['p50_ms_on']:.2f} ms, p99 {r['p99_ms_on']:.2f} ms",
        f"throughput cost of tracing: {r['overhead_pct']:.2f} % (limit {r['max_overhead_pct']:g} %): "
        f"{'PASS' if r['pass'] else 'FAIL'}",
        f"exported: {r['exported']['spans']:,} spans in {r['exported']['exports']:,} OTLP requests "
        f"({r['exported']['bytes'] / 1e6:.1f} MB): {r['exported']['traces']:,} traces, "
        f"{100 * (r['traced_share'] or 0):.1f} % of the traced gateway's requests; export failures logged: "
        f"{r['export_failures_logged']}",
        f"span pipeline in process: a traced request {r['span_pipeline']['traced_request_cpu_us']:.0f} us CPU "
        f"({r['span_pipeline']['traced_request_event_loop_us']:.0f} us on the event loop, the rest on the "
        f"exporter's thread), an untraced one {r['span_pipeline']['untraced_request_us']:.2f} us: "
        f"{r['projected_cpu_us_per_req']:.1f} us per request on average at this ratio "
        f"({100 * r['projected_cpu_us_per_req'] / r['cpu_us_per_req_off']:.1f} % of the {r['cpu_us_per_req_off']:,.0f}"
        f" us a request costs here with tracing off)",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per round (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each round (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per configuration, alternated (default 3)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--ratio", type=float, default=0.1, help="otel_sample_ratio of the traced gateway (default 0.1)")
    p.add_argument("--max-overhead", type=float, default=10.0, help="percent (default 10)")
    p.add_argument("--sqlite", action="store_true", help="accounting on the embedded SQLite, not PostgreSQL")
    p.add_argument("--out", type=Path, default=RESULTS / "tracing_overhead.json")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--sink", type=int, default=None, help=argparse.SUPPRESS)  # internal: run the OTLP sink
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sink is not None:
        run_sink(args.sink)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    try:
        result = execute(args, tmp)
    except BenchError as exc:
        print(f"\n!!! {exc}", file=sys.stderr)
        return 1
    finally:
        for line in Child.stop_all():
            print(f"  ! {line}", file=sys.stderr)
        if not args.keep_tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  kept {tmp}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"results: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
