"""Figures -> targets (PASS/FAIL) and the Markdown summary for docs/performance.md."""

from __future__ import annotations

from collections.abc import Callable
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


def targets(points: list[Point], soak: dict[str, Any] | None, litellm: bool, cache_on: bool,
            paired: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each target, PASS/FAIL for the gateway and, where it applies, the same figure for the floor (the
    libraries alone, doing nothing but HTTP): a target the floor itself fails is out of reach of any
    gateway built on them, on this machine."""
    out: list[dict[str, Any]] = []

    def add(name: str, figure: Callable[[str], float | None], passes: Callable[[float], bool], unit: str,
            digits: int = 2, why: str = "", floor: bool = True) -> None:
        row: dict[str, Any] = {"target": name}
        for target, prefix in (("gateway", ""), ("floor", "floor_")):
            value = figure(target) if target == "gateway" or floor else None
            ok = None if value is None else passes(value)
            row[prefix + "figure"] = value
            row[prefix + "shown"] = f"{_f(value, digits)} {unit}".strip() if value is not None else (
                why if target == "gateway" and why else "n/a")
            row[prefix + "result"] = "n/a" if ok is None else "PASS" if ok else "FAIL"
        out.append(row)

    def at(scenario: str, conns: int, key: str) -> Callable[[str], float | None]:
        def figure(target: str) -> float | None:
            p = find(points, scenario, target, conns)
            return p[key] if p and p.get(key) is not None else None
        return figure

    def litellm_ratio(target: str) -> float | None:
        median = (paired or {}).get("median_ratio", {}).get("json")
        if target == "gateway" and median is not None:  # the alternated rounds: the machine's drift cancels
            return float(median)
        mine, theirs = find(points, "json", target, 64), find(points, "json", "litellm", 64)
        return mine["rps"] / theirs["rps"] if mine and theirs and theirs["rps"] else None

    add("non-streaming, 64 connections: >= 3,000 req/s", at("json", 64, "rps"), lambda v: v >= 3000, "req/s", 0)
    add("non-streaming, 64 connections: >= 40x LiteLLM" + (" (paired rounds' median)" if paired else ""),
        litellm_ratio, lambda v: v >= 40, "x", 1,
        "" if litellm else "LiteLLM skipped")
    add("added latency, 1 connection: p50 <= 0.3 ms", at("json", 1, "added_p50_ms"), lambda v: v <= 0.3, "ms", 3)
    add("added latency, 1 connection: p99 <= 1 ms", at("json", 1, "added_p99_ms"), lambda v: v <= 1.0, "ms", 3)
    add("streaming (30 chunks), 64 connections: >= 1,500 streams/s", at("stream", 64, "rps"), lambda v: v >= 1500,
        "streams/s", 0)
    add("cache hit, 64 connections: p99 <= 2 ms", at("cache", 64, "p99_ms"), lambda v: v <= 2.0, "ms", 3,
        "" if cache_on else "no cache in the gateway yet")
    rss = [p["rss_mb_max"] for p in points if p["target"] == "gateway"]
    if soak:
        rss.append(soak["rss_mb_max"])
    peak = max(rss) if rss else None
    add("resident memory under load: <= 150 MB", lambda _t: peak, lambda v: v <= 150, "MB", 1, floor=False)
    if soak:
        add(f"soak ({soak['seconds']:.0f} s, 64 connections): RSS growth after warm-up <= 5%",
            lambda _t: soak["growth_pct"], lambda v: v <= 5.0, "%", 2, floor=False)
    else:
        add("soak: RSS growth after warm-up <= 5%", lambda _t: None, lambda v: True, "", why="no soak in this run",
            floor=False)
    return out


def _floor_cells(f: Point, g: Point | None) -> list[str]:
    share = g["rps"] / f["rps"] if g and f["rps"] else None
    return [_f(f["rps"], 0) + _flag(f), f"{_f(f['added_p50_ms'], 3)} / {_f(f['added_p99_ms'], 3)}",
            f"{100 * share:.0f}%" if share else "n/a"]


def _litellm_cells(x: Point, g: Point | None) -> list[str]:
    ratio = g["rps"] / x["rps"] if g and x["rps"] else None
    return [_f(x["rps"], 1) + _flag(x), f"{_f(x['p50_ms'], 1)} / {_f(x['p99_ms'], 1)}", _f(x["added_p50_ms"], 1),
            _f(x["cpu_us_per_req"], 0), _f(x["rss_mb_max"], 0), f"{_f(ratio, 1)}x" if ratio else "n/a"]


def _floor_cell(target: dict[str, Any]) -> str:
    result = target.get("floor_result", "n/a")
    return target.get("floor_shown", "n/a") + (f" ({result})" if result != "n/a" else "")


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
    floors = any(p["target"] == "floor" for p in points)
    if floors:
        head += ["floor req/s", "floor added p50 / p99 ms", "gateway ÷ floor"]
    if litellm:
        head += ["LiteLLM req/s", "LiteLLM p50 / p99 ms", "LiteLLM added p50 ms", "LiteLLM CPU µs/req",
                 "LiteLLM RSS MB", "gateway ÷ LiteLLM"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    others: list[tuple[str, int, Callable[[Point, Point | None], list[str]]]] = []  # beside the gateway's columns
    if floors:
        others.append(("floor", 3, _floor_cells))
    if litellm:
        others.append(("litellm", 6, _litellm_cells))
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
            for target, width, cells in others:
                x = find(points, scenario, target, conns)
                row += ["n/a"] * width if x is None else cells(x, g)
            lines.append("| " + " | ".join(row) + " |")
    if "cache" not in {p["scenario"] for p in points}:
        lines.append(f"| {SCENARIO_TITLES['cache']} | all | n/a (no response cache in the gateway yet) |"
                     + " |" * (len(head) - 3))
    lines += ["", "| target | gateway | | floor: the libraries alone |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['shown']} | {t['result']} | {_floor_cell(t)} |" for t in result["targets"]]
    paired = result.get("paired")
    if paired:
        lines += ["", f"Paired: the gateway and LiteLLM measured in alternation, both running, "
                      f"{paired['rounds']} round(s) at {paired['connections']} connections (the machine's drift "
                      f"between the main points, a quarter of an hour apart, cancels): "
                      + "; ".join(f"{SCENARIO_TITLES[k]} median {v:.1f}x ("
                                  + ", ".join(f"{r['gateway_rps']:,.0f} / {r['litellm_rps']:,.1f}"
                                              + (" ⚠" if r["litellm_invalid"] else "")
                                              for r in paired["rows"] if r["scenario"] == k) + " req/s)"
                                  for k, v in paired["median_ratio"].items() if v is not None) + "."]
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
                  f"connections. CPU = utime+stime of the server's processes per request."
                  + (" Floor: uvicorn (uvloop, httptools) with a raw ASGI app and nothing else, on the same core: "
                     "forwarding to the mock with aiohttp (non-streaming), relaying its stream (streaming), "
                     "answering a fixed body with no upstream (cache hit); `gateway ÷ floor` is the share of "
                     "the floor's throughput the gateway keeps." if floors else "")]
    return "\n".join(lines) + "\n"
