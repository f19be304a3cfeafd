"""Figures -> targets (PASS/FAIL) and the Markdown summary for the README."""

from __future__ import annotations

from typing import Any

Point = dict[str, Any]

SCENARIO_TITLES = {
    "json": "non-streaming",
    "stream": "streaming, 30 chunks",
    "cache": "cache hit",
}


def find(points: list[Point], scenario: str, target: str, conns: int) -> Point | None:
    return next((p for p in points if p["scenario"] == scenario and p["target"] == target
                 and p["connections"] == conns), None)


def _flag(point: Point) -> str:
    """Marks a figure that must not be trusted: too many errors (invalid) or another job's load (noisy)."""
    if point.get("invalid"):
        return f" ⚠ {100 * point['error_rate']:.0f}% errors"
    if (point.get("foreign_cpu_pct") or 0) > 10:
        return " ⚠ noisy"
    return ""


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def targets(points: list[Point], soak: dict[str, Any] | None, litellm: bool, cache_on: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, figure: float | None, ok: bool | None, unit: str, digits: int = 2,
            why: str = "") -> None:
        result = "n/a" if ok is None else "PASS" if ok else "FAIL"
        shown = f"{_f(figure, digits)} {unit}".strip() if figure is not None else (why or "n/a")
        out.append({"target": name, "figure": figure, "shown": shown, "result": result})

    g64 = find(points, "json", "gateway", 64)
    l64 = find(points, "json", "litellm", 64)
    g1 = find(points, "json", "gateway", 1)
    s64 = find(points, "stream", "gateway", 64)
    c64 = find(points, "cache", "gateway", 64)
    add("non-streaming, 64 connections: >= 3,000 req/s", g64 and g64["rps"],
        g64 and g64["rps"] >= 3000, "req/s", 0)
    ratio = g64["rps"] / l64["rps"] if g64 and l64 and l64["rps"] else None
    add("non-streaming, 64 connections: >= 40x LiteLLM", ratio, None if ratio is None else ratio >= 40, "x", 1,
        "" if litellm else "LiteLLM skipped")
    add("added latency, 1 connection: p50 <= 0.3 ms", g1 and g1["added_p50_ms"],
        g1 and g1["added_p50_ms"] <= 0.3, "ms", 3)
    add("added latency, 1 connection: p99 <= 1 ms", g1 and g1["added_p99_ms"],
        g1 and g1["added_p99_ms"] <= 1.0, "ms", 3)
    add("streaming (30 chunks), 64 connections: >= 1,500 streams/s", s64 and s64["rps"],
        s64 and s64["rps"] >= 1500, "streams/s", 0)
    add("cache hit, 64 connections: p99 <= 2 ms", c64 and c64["p99_ms"], c64 and c64["p99_ms"] <= 2.0, "ms", 3,
        "" if cache_on else "no cache in the gateway yet")
    rss = [p["rss_mb_max"] for p in points if p["target"] == "gateway"]
    if soak:
        rss.append(soak["rss_mb_max"])
    peak = max(rss) if rss else None
    add("resident memory under load: <= 150 MB", peak, None if peak is None else peak <= 150, "MB", 1)
    if soak:
        add(f"soak ({soak['seconds']:.0f} s, 64 connections): RSS growth after warm-up <= 5%", soak["growth_pct"],
            soak["growth_pct"] <= 5.0, "%", 2)
    else:
        add("soak: RSS growth after warm-up <= 5%", None, None, "", why="no soak in this run")
    return out


def markdown(result: dict[str, Any]) -> str:
    points: list[Point] = result["points"]
    machine = result["machine"]
    litellm = result["litellm"]["measured"]
    lines = [
        f"**Gateway overhead** ({result['date'][:10]}; {machine['cpu_model']}, {machine['nproc']} cores; "
        f"gateway{' and LiteLLM ' + result['litellm']['version'] if litellm else ''} pinned to core 0, "
        f"wrk and the nginx mock upstream to core 1; {result['durations']['point_s']:.0f} s per point). "
        f"Reproduce: `{result['reproduce']}`",
        "",
    ]
    head = ["scenario", "conns", "mock req/s", "gateway req/s", "p50 / p99 ms", "added p50 / p99 ms", "CPU µs/req",
            "RSS MB"]
    if litellm:
        head += ["LiteLLM req/s", "LiteLLM p50 / p99 ms", "LiteLLM added p50 ms", "LiteLLM CPU µs/req",
                 "LiteLLM RSS MB", "gateway ÷ LiteLLM"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario in result["scenarios"]:
        for conns in result["connections"]:
            g = find(points, scenario, "gateway", conns)
            d = find(points, scenario, "direct", conns)
            if scenario == "cache" and g is None:
                continue
            row = [SCENARIO_TITLES[scenario], str(conns), _f(d and d["rps"], 0)]
            if g is None:
                row += ["n/a"] * 5
            else:
                row += [_f(g["rps"], 0) + _flag(g), f"{_f(g['p50_ms'])} / {_f(g['p99_ms'])}",
                        f"{_f(g['added_p50_ms'], 3)} / {_f(g['added_p99_ms'], 3)}", _f(g["cpu_us_per_req"], 0),
                        _f(g["rss_mb_max"], 0)]
            if litellm:
                x = find(points, scenario, "litellm", conns)
                if x is None:
                    row += ["n/a"] * 6
                else:
                    ratio = g["rps"] / x["rps"] if g and x["rps"] else None
                    row += [_f(x["rps"], 1) + _flag(x), f"{_f(x['p50_ms'], 1)} / {_f(x['p99_ms'], 1)}",
                            _f(x["added_p50_ms"], 1), _f(x["cpu_us_per_req"], 0), _f(x["rss_mb_max"], 0),
                            f"{_f(ratio, 1)}x" if ratio else "n/a"]
            lines.append("| " + " | ".join(row) + " |")
    if "cache" not in {p["scenario"] for p in points}:
        lines.append(f"| {SCENARIO_TITLES['cache']} | all | n/a (no response cache in the gateway yet) |"
                     + " |" * (len(head) - 3))
    lines += ["", "| target | figure | |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['shown']} | {t['result']} |" for t in result["targets"]]
    soak = result.get("soak")
    if soak:
        lines += ["", f"Soak: {soak['seconds']:.0f} s at 64 connections non-streaming, {_f(soak['rps'], 0)} req/s, "
                      f"{soak['errors']} errors; RSS {_f(soak['rss_mb_warm'], 1)} MB after {soak['warmup_s']:.0f} s "
                      f"warm-up, {_f(soak['rss_mb_end'], 1)} MB at the end ({soak['growth_pct']:+.2f}%)."]
    if result.get("problems"):
        lines += ["", "**Invalid points** (> 1% bad answers; figures kept for reference only): "
                      + "; ".join(p.split("; first:")[0].replace("\n", " ")[:160] for p in result["problems"])]
    if result.get("noisy_points"):
        lines += ["", f"**Noisy**: other jobs on the machine used more than 10% of a core during "
                      f"{', '.join(result['noisy_points'])}; rerun on a quiet machine."]
    feats = result["gateway"]["features"]
    on = "; ".join(f"{f['name']} ({f['note']})" for f in feats if f["applied"]) or "none"
    off = ", ".join(f"{f['name']} ({f['note']})" for f in feats if not f["applied"]) or "none"
    lines += ["", f"Gateway configured as in production: {on}; not on: {off}. "
                  f"Added latency = gateway (or LiteLLM) minus calling the mock directly, same scenario and "
                  f"connections. CPU = utime+stime of the server's processes per request."]
    return "\n".join(lines) + "\n"
