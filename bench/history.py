"""What each change bought: the overhead benchmark on several commits, in one run.

Each commit is checked out into a git worktree (bench/.work/history/<commit>) and measured by
bench/overhead.py with this checkout's venv (BENCH_GATEWAY_SRC), the same points for all, one commit
after the other, `--rounds` times in turn (so slow drift of the machine spreads over all of them).
The table gives, per commit, the median over rounds of req/s and gateway CPU µs per request.

    .venv/bin/python bench/history.py COMMIT [COMMIT ...] [--rounds 2] [-- overhead.py options]
    .venv/bin/python bench/history.py bd9445f HEAD -- --connections 64 --scenarios json,stream
    .venv/bin/python bench/history.py bd9445f HEAD --rounds 1 -- --instructions --connections 16 \
        --scenarios json --duration 20 --warmup 5      # instructions per request (callgrind): no noise

Default overhead.py options: --quick --skip-litellm --connections 64 --scenarios json,stream,cache.
A commit's code runs with today's dependencies (the venv of this checkout). Results:
bench/results/history.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "history"
DEFAULT = ["--quick", "--skip-litellm", "--connections", "64", "--scenarios", "json,stream,cache"]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def worktree(commit: str) -> Path:
    sha = git("rev-parse", "--short", commit)
    path = WORK / sha
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(path), sha)
    return path


def measure(src: Path, options: list[str], out: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "BENCH_GATEWAY_SRC": str(src)}
    cmd = [sys.executable, str(HERE / "overhead.py"), *options, "--out", str(out), "--wait-quiet", "30"]
    out.unlink(missing_ok=True)  # a failed run must not leave an earlier run's file standing for it
    done = subprocess.run(cmd, env=env, text=True, capture_output=True)
    if done.returncode != 0 and not out.exists():
        raise SystemExit(f"overhead.py failed on {src}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return points(out)


def points(out: Path) -> list[dict[str, Any]]:
    """The gateway's points of one run; a point with more than 1% errors is no measurement (left out)."""
    return [p for p in json.loads(out.read_text())["points"]
            if p["target"] == "gateway" and p.get("error_rate", 0) <= 0.01]


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else DEFAULT
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("commits", nargs="+")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "history.json")
    p.add_argument("--report", action="store_true", help="only summarize the runs already in bench/.work/history")
    args = p.parse_args(argv)
    runs: dict[str, list[list[dict[str, Any]]]] = {c: [] for c in args.commits}
    if args.report:
        for c in args.commits:
            runs[c] = [points(f) for f in sorted(WORK.glob(f"{c.replace('/', '_')}-*.json"))]
    else:
        trees = {c: worktree(c) for c in args.commits}
        for r in range(args.rounds):
            for c, tree in trees.items():
                print(f"round {r + 1}/{args.rounds}: {c} ({git('log', '-1', '--format=%s', c)[:70]})", flush=True)
                runs[c].append(measure(tree, extra, WORK / f"{c.replace('/', '_')}-{r}.json"))
    rows = []
    for c, rounds in runs.items():
        keys = sorted({(p["scenario"], p["connections"]) for pts in rounds for p in pts})
        for scenario, conns in keys:
            pts = [p for pts in rounds for p in pts if p["scenario"] == scenario and p["connections"] == conns]
            if not pts:
                continue
            rows.append({
                "commit": git("rev-parse", "--short", c), "subject": git("log", "-1", "--format=%s", c),
                "scenario": scenario, "connections": conns,
                "rps": round(statistics.median(p["rps"] for p in pts), 1),
                "cpu_us_per_req": round(statistics.median(p["cpu_us_per_req"] for p in pts), 1),
                "p99_ms": round(statistics.median(p["p99_ms"] for p in pts), 2),
                "instructions_per_req": round(statistics.median(counts)) if (counts := [
                    p["instructions_per_req"] for p in pts if p.get("instructions_per_req")]) else None,
                "rounds": len(pts),
            })
    result = {"benchmark": "overhead per commit",
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "reproduce": "bench/history.py " + " ".join(args.commits) + " -- " + " ".join(extra),
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if any(row["instructions_per_req"] for row in rows):  # --instructions: timings under callgrind mean nothing
        print("\n| commit | change | scenario | instructions/req |\n|---|---|---|---|")
        for row in rows:
            print(f"| {row['commit']} | {row['subject'][:90]} | {row['scenario']} c{row['connections']} | "
                  f"{row['instructions_per_req'] or 0:,} |")
    else:
        print("\n| commit | change | scenario | req/s | CPU µs/req | p99 ms |\n|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['commit']} | {row['subject'][:90]} | {row['scenario']} c{row['connections']} | "
                  f"{row['rps']:,.0f} | {row['cpu_us_per_req']:,.0f} | {row['p99_ms']:,.1f} |")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
