"""The load generator: wrk (C, closed loop, one thread on the load core) with load.lua."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from overheadlib.procs import BenchError, Child, pinned

LUA = Path(__file__).with_name("load.lua")


@dataclass
class Load:
    """What one wrk run sends and how it checks the answers."""

    url: str  # full URL of the endpoint
    body: Path
    check: str  # "json" or "sse"
    markers: tuple[str, ...]
    min_events: int = 0
    unique: bool = True
    auth: str = ""
    header: tuple[str, str] | None = None  # a response header that must have this value


@dataclass
class WrkResult:
    requests: int
    seconds: float
    ok: int
    errors: int  # bad responses (non-200 or wrong body) + socket errors + timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    raw: dict[str, object]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.requests + int(self.raw.get("connect_errors", 0)))  # type: ignore[call-overload]


def run(load: Load, connections: int, seconds: float, core: str, log: Path, name: str) -> WrkResult:
    threads = 1  # the load core is one core: one wrk thread drives every connection (epoll)
    argv = pinned(core, [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
        "--timeout", "30s", "--latency", "-s", str(LUA), load.url, "--",
        f"body={load.body}", f"check={load.check}", f"min_events={load.min_events}",
        f"unique={int(load.unique)}", f"auth={load.auth}", f"run={uuid.uuid4().hex[:12]}",
        *(f"marker={m}" for m in load.markers),
        *([f"header={load.header[0]}:{load.header[1]}"] if load.header else []),
    ])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"\n### {name}: {' '.join(argv)}\n")
    child = Child(f"wrk {name}", argv, log)
    try:
        child.proc.wait(timeout=seconds + 90)
    except subprocess.TimeoutExpired as exc:
        child.stop()
        raise BenchError(f"wrk {name} did not finish in {seconds + 90:.0f}s") from exc
    text = log.read_text(errors="replace")
    text = text[text.rfind(f"### {name}:"):]
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if child.proc.returncode != 0 or line is None:
        raise BenchError(f"wrk {name} failed (exit {child.proc.returncode}):\n{text[-2000:]}")
    raw = json.loads(line[len("BENCH_RESULT "):])
    sock = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    return WrkResult(
        requests=raw["requests"], seconds=raw["duration_us"] / 1e6, ok=raw["ok"], errors=raw["bad"] + sock,
        p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
        p999_ms=raw["p999_us"] / 1000, max_ms=raw["lat_max_us"] / 1000, mean_ms=raw["lat_mean_us"] / 1000, raw=raw,
    )
