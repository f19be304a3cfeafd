"""Routing quality on held-out data: the learned predictor beside random, the prompt length, the keyword
rules and a ridge regression on hashed n-grams, over several splits and model pairs.

    .venv/bin/python bench/routing_quality.py [--seeds 5] [--holdout 0.3] [--out bench/results/routing_quality.json]
                                              [--plot docs/images/routing-evaluation.svg]

For each seed it trains on the prompts `--holdout` leaves in (`gateway router train --holdout H --seed N`)
and evaluates on the held-out ones (`gateway router evaluate --holdout H --seed N --json`), both through
the fixed CLI. The pairs are the shipped demo heads (each a small and a large model of every source) and
single model pairs of the shipped data. It prints the mean APGR per router and pair with the spread over
seeds, and writes the figures as JSON; `--plot` keeps seed 0's quality-versus-cost plot of the demo heads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "policies" / "training" / "outcomes.jsonl"
GATEWAY = Path(sys.executable).parent / "gateway"
ROUTERS = ("learned", "ridge", "length", "rules", "random", "oracle")
DEMO = (
    "demo-small=Qwen2.5-7B-Instruct|mistralai/Mistral-7B-Instruct-v0.1|rinna/japanese-gpt-neox-3.6b-instruction-ppo,"
    "demo-large=gpt-4o-2024-05-13|gpt-4-1106-preview|tokyotech-llm/Swallow-70b-instruct-hf"
)
# (name, --models for train, weak, strong): the shipped heads, then pairs of single models, weak first.
PAIRS = (
    ("demo-small vs demo-large (all five sources)", DEMO, "demo-small", "demo-large"),
    ("Qwen2.5-7B vs GPT-4o (CRUX, MATH)", "q7=Qwen2.5-7B-Instruct,g4o=gpt-4o-2024-05-13", "q7", "g4o"),
    ("Llama-3.1-8B vs GPT-4o (CRUX, MATH)", "l8=Meta-Llama-3.1-8B-Instruct,g4o=gpt-4o-2024-05-13", "l8", "g4o"),
    ("Llama-3.1-8B vs Llama-3.1-70B (CRUX, MATH)",
     "l8=Meta-Llama-3.1-8B-Instruct,l70=Meta-Llama-3.1-70B-Instruct", "l8", "l70"),
    ("Gemma-2-9B vs Gemma-2-27B (CRUX, MATH)", "g9=gemma-2-9b-it,g27=gemma-2-27b-it", "g9", "g27"),
    ("GPT-4o-mini vs GPT-4o (CRUX, MATH)", "mini=gpt-4o-mini-2024-07-18,g4o=gpt-4o-2024-05-13", "mini", "g4o"),
    ("Mixtral-8x7B vs GPT-4-1106 (arena, MT-bench)",
     "mx=mistralai/Mixtral-8x7B-Instruct-v0.1,g4=gpt-4-1106-preview", "mx", "g4"),
)


def run(*args: str) -> str:
    done = subprocess.run([str(GATEWAY), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"gateway {' '.join(args[:2])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def evaluate(models: str, weak: str, strong: str, seed: int, holdout: float, work: Path,
             plot: Path | None) -> dict[str, Any]:
    out = work / f"{weak}-{strong}-{seed}"
    run("router", "train", "--data", str(DATA), "--models", models, "--out", str(out), "--holdout", str(holdout),
        "--seed", str(seed))
    report: dict[str, Any] = json.loads(run(
        "router", "evaluate", "--predictor", str(out), "--data", str(DATA), "--models", f"{weak},{strong}",
        "--holdout", str(holdout), "--seed", str(seed), "--json", "--plot", str(plot) if plot else "none"))
    return report


def apgr_of(report: dict[str, Any], router: str) -> float:
    return float(report["routers"][router]["apgr"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "routing_quality.json")
    ap.add_argument("--plot", type=Path, help="keep seed 0's plot of the demo heads here (.svg or .png)")
    args = ap.parse_args()

    results: dict[str, Any] = {"data": DATA.name, "holdout": args.holdout, "seeds": args.seeds, "pairs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, models, weak, strong in PAIRS:
            per_seed = []
            for seed in range(args.seeds):
                plot = args.plot if (seed == 0 and models == DEMO) else None
                report = evaluate(models, weak, strong, seed, args.holdout, Path(tmp), plot)
                per_seed.append({"seed": seed, "rows": report["rows"],
                                 "apgr": {r: apgr_of(report, r) for r in ROUTERS}})
            summary = {r: {"mean": statistics.mean(s["apgr"][r] for s in per_seed),
                           "min": min(s["apgr"][r] for s in per_seed),
                           "max": max(s["apgr"][r] for s in per_seed)} for r in ROUTERS}
            results["pairs"].append({"name": name, "models": models, "weak": weak, "strong": strong,
                                     "apgr": summary, "per_seed": per_seed})
            line = "  ".join(f"{r} {summary[r]['mean']:.3f}" for r in ROUTERS)
            print(f"{name:<46} {line}", flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
