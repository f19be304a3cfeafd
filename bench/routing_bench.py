"""Routing speed: classify + decide for a 2,000-token chat request, and for a 1,000,000-character prompt.

    .venv/bin/python bench/routing_bench.py [--iterations N] [--json FILE]

Prints the median and p99 in microseconds (tokenization included; the tokenizer is loaded first, as
the gateway does at start). Targets: p99 <= 200 us for the 2,000-token request, < 30 ms for the
1,000,000-character prompt. The request is built from a fixed word list, so runs are comparable.

The learned decision is measured against the rules in the same run: the shipped policy (whose rules
consult the quality predictor) and the same policy with `cheapest_above` replaced by `smallest_capable`.
What the predictor adds -- the feature vector, inference and the quality-aware choice -- must stay
within p99 <= 150 us on the 2,000-token request; it is measured on its own (the probe) and as the
difference of the two whole decisions.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.classify import classify
from router.decide import Caller, PoolState, decide
from router.errors import GatewayError
from router.policy import load_policy_set
from router.pricing import TokenRates
from router.quality import QualityProbe
from router.tokens import count_tokens, warm_up

_WORDS_TEXT = (
    "the of and to in is that for it as was with be by on not this are or from at which but have an they you "
    "were there one all we their been has when who will more no if out so what up its about into than them can "
    "only other new some could time these two may then do first any my now such like our over even most made "
    "after also did many before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get here between both "
    "life being under never day same another know while last great old year off come since against go right "
    "used take three model data system value number point small large open close light water green house place "
    "river city road field order power short plain clear quiet customer invoice shipment warehouse report "
    "quarter revenue policy meeting schedule project budget account review"
)
WORDS = tuple(_WORDS_TEXT.split())


def prose(rng: random.Random, n_words: int) -> str:
    out = []
    for i in range(n_words):
        w = rng.choice(WORDS)
        out.append(w.capitalize() if i % 14 == 0 else w)
        if i % 14 == 13:
            out[-1] += "."
        elif i % 5 == 4 and rng.random() < 0.3:
            out[-1] += ","
    return " ".join(out)


def chat_request(target_tokens: int) -> dict[str, Any]:
    """A multi-turn chat whose prompt is about `target_tokens` tokens."""
    rng = random.Random(7)
    messages = [{"role": "system", "content": "You are a helpful assistant for the operations team. " + prose(rng, 40)}]
    for _ in range(3):
        messages.append({"role": "user", "content": prose(rng, 260)})
        messages.append({"role": "assistant", "content": prose(rng, 160)})
    messages.append({"role": "user", "content": prose(rng, 300) + " Can you summarize the key points?"})
    body = {"model": "auto", "messages": messages, "max_tokens": 400, "temperature": 0.2}
    # trim or grow the last message to land near the target
    while _tokens(body) < target_tokens:
        messages[-2]["content"] += " " + prose(rng, 20)
    return body


def _tokens(body: dict[str, Any]) -> int:
    return sum(count_tokens(m["content"]) + 3 for m in body["messages"]) + 3


def measure(fn: Any, iterations: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock microseconds per call (and, into `cpu`, this thread's CPU time per call: on a shared
    machine the wall clock also counts the time other processes held the CPU)."""
    samples = []
    gc.collect()
    for _ in range(iterations):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
        if cpu is not None:
            cpu.append((time.thread_time_ns() - c0) / 1000)
    return samples


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def rules_only(policy_dir: Path, into: Path) -> Path:
    """A copy of the policy whose learned rules pick the smallest capable model instead."""
    shutil.copytree(policy_dir, into, dirs_exist_ok=True)
    routing = into / "routing.yaml"
    routing.write_text(routing.read_text().replace("route: cheapest_above", "route: smallest_capable"))
    return into


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()

    policy = load_policy_set()
    assert policy.predictor is not None, "the shipped policy routes with the quality predictor"
    predictor = policy.predictor
    with tempfile.TemporaryDirectory() as tmp:
        rules = load_policy_set(rules_only(policy.directory, Path(tmp) / "p"))
    warm_up()
    health = {"small": PoolState(True, 0.2), "large": PoolState(True, 0.4)}
    rates = {
        "demo-small": TokenRates(Decimal("0.05"), Decimal("0.025"), Decimal("0.20"), "USD"),
        "demo-large": TokenRates(Decimal("0.50"), Decimal("0.25"), Decimal("2.00"), "USD"),
    }
    caller = Caller()
    cls = policy.classifier

    body = chat_request(2000)
    exact = _tokens(body)
    f = classify(body, "chat", {}, cls)
    def both() -> None:
        request = classify(body, "chat", {}, cls)
        decide(request, caller, "auto", policy, health, rates, QualityProbe(predictor, body, request))

    def with_rules() -> None:
        decide(classify(body, "chat", {}, rules.classifier), caller, "auto", rules, health, rates)

    def probe() -> None:
        QualityProbe(predictor, body, f)()

    d = decide(f, caller, "auto", policy, health, rates, QualityProbe(predictor, body, f))
    for _ in range(2000):  # warm caches and the allocator
        both()
        with_rules()
    total_cpu: list[float] = []
    total: list[float] = []
    rules_total: list[float] = []
    for _ in range(4):  # alternate, so that a slow stretch of the machine weighs on both alike
        total += measure(both, args.iterations // 4, total_cpu)
        rules_total += measure(with_rules, args.iterations // 4)
    only_classify = measure(lambda: classify(body, "chat", {}, cls), args.iterations // 4)
    only_probe = measure(probe, args.iterations // 4)
    only_decide = measure(lambda: decide(f, caller, "auto", policy, health, rates, QualityProbe(predictor, body, f)),
                          args.iterations // 4)

    million = (prose(random.Random(3), 200_000) * 2)[:1_000_000]
    big: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": million}], "max_tokens": 100}
    assert len(million) == 1_000_000
    big_f = classify(big, "chat", {}, cls)
    try:
        big_outcome = decide(big_f, caller, "auto", policy, health, rates, QualityProbe(predictor, big, big_f)).model
    except GatewayError as exc:  # the shipped demo has no model with a 250k-token window: a clear 400
        big_outcome = f"{type(exc).__name__} ({getattr(exc, 'status', '?')})"

    def big_both() -> None:
        with contextlib.suppress(GatewayError):
            request = classify(big, "chat", {}, cls)
            decide(request, caller, "auto", policy, health, rates, QualityProbe(predictor, big, request))

    big_samples = measure(big_both, 50)

    print(f"python {platform.python_version()} on {platform.machine()}, {iterations_note(args.iterations)}")
    print(f"2,000-token chat request: {len(body['messages'])} messages, {f.prompt_chars:,} chars, "
          f"exact {exact:,} tokens, estimated {f.prompt_tokens:,} ({'exact' if f.tokens_exact else 'sampled'}); "
          f"-> {d.model} by `{d.rule}` ({f.category}, tier {f.tier})")
    print(f"  classify+decide  median {statistics.median(total):7.1f} us   p99 {pct(total, 0.99):7.1f} us   "
          f"(target p99 <= 200 us)")
    print(f"  (thread CPU time) median {statistics.median(total_cpu):7.1f} us   p99 {pct(total_cpu, 0.99):7.1f} us   "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"  rules only       median {statistics.median(rules_total):7.1f} us   "
          f"p99 {pct(rules_total, 0.99):7.1f} us   (the same policy, smallest_capable instead of cheapest_above)")
    added_median = statistics.median(total) - statistics.median(rules_total)
    added_p99 = pct(total, 0.99) - pct(rules_total, 0.99)
    print(f"  learned - rules  median {added_median:7.1f} us   p99 {added_p99:7.1f} us   (target p99 <= 150 us)")
    for label, samples in (("classify only", only_classify), ("quality probe", only_probe),
                           ("decide (learned)", only_decide)):
        print(f"  {label:<16} median {statistics.median(samples):7.1f} us   p99 {pct(samples, 0.99):7.1f} us")
    figures = {
        "python": platform.python_version(), "iterations": args.iterations, "load_average": os.getloadavg()[0],
        "prompt_tokens": exact, "decision": d.route_header(),
        "learned_us": {"median": statistics.median(total), "p99": pct(total, 0.99)},
        "rules_us": {"median": statistics.median(rules_total), "p99": pct(rules_total, 0.99)},
        "added_us": {"median": added_median, "p99": added_p99},
        "probe_us": {"median": statistics.median(only_probe), "p99": pct(only_probe, 0.99)},
        "classify_us": {"median": statistics.median(only_classify), "p99": pct(only_classify, 0.99)},
        "decide_us": {"median": statistics.median(only_decide), "p99": pct(only_decide, 0.99)},
    }
    print(f"1,000,000-char prompt: estimated {big_f.prompt_tokens:,} tokens -> {big_outcome}")
    print(f"  classify+decide  median {statistics.median(big_samples) / 1000:7.2f} ms   max "
          f"{max(big_samples) / 1000:7.2f} ms   (target < 30 ms)")
    figures["million_chars_ms"] = {"median": statistics.median(big_samples) / 1000, "max": max(big_samples) / 1000}
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def iterations_note(n: int) -> str:
    return f"{n:,} iterations"


if __name__ == "__main__":
    main()
