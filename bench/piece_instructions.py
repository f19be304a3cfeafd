"""Instructions of single pieces of a call, each alone under callgrind.

`overhead.py --instructions` counts a whole call in the running gateway; this counts the pieces that
make it up, on the overhead benchmark's own request and mock stream, to see where the instructions go
(and to compare two versions of one piece: run it on each checkout). Each piece runs in a fresh
process under valgrind's callgrind, once with 0 and once with `--calls` repetitions after the same
set-up; the difference over the repetitions is its count per call. PYTHONHASHSEED is fixed, so a
repeat gives the same count to a few instructions.

    .venv/bin/python bench/piece_instructions.py [--calls 2000] [--only classify,access_line]

Results: bench/results/piece_instructions.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from overhead import FIXTURES, SCENARIOS  # noqa: E402
from overheadlib.instructions import take_total, wrapper  # noqa: E402

# --- the pieces: each takes the number of calls and returns the loop to count ----------------------------


def _bodies(n: int) -> list[dict[str, Any]]:
    raw = SCENARIOS["json"].body().decode()
    return [json.loads(raw.replace("@@NONCE@@", f"check-{i}")) for i in range(n + 1)]  # distinct prompts


def classify(n: int) -> Callable[[], None]:
    from router.classify import classify as run
    from router.policy import default_policy_dir, load_policy_set

    cls = load_policy_set(default_policy_dir()).classifier
    bodies = _bodies(n)
    run(bodies[-1], "chat", {}, cls)  # the tokenizer and the memo of the system prompt: set-up

    def loop() -> None:
        for body in bodies[:n]:
            run(body, "chat", {}, cls)
    return loop


def tokenize_user(n: int) -> Callable[[], None]:
    from router.tokens import encoding

    enc = encoding()
    texts = [b["messages"][1]["content"] for b in _bodies(n)]
    enc.encode_ordinary(texts[-1])

    def loop() -> None:
        for text in texts[:n]:
            enc.encode_ordinary(text)
    return loop


def _record_parts() -> tuple[Any, Any]:
    from gateway.accounting.prices import load_prices
    from gateway.inference.usage import Usage
    from gateway.outcome import Outcome

    catalogue = load_prices(ROOT / "policies" / "prices.yaml")  # the shipped prices: demo-small, reference demo-large

    def outcome() -> Outcome:
        return Outcome(request_id="9f2c1d0e9f2c1d0e9f2c1d0e9f2c1d0e", model="demo-small", started=100.0,
                       replica="http://127.0.0.1:41237", status=200, pool="small", requested_model="auto",
                       first_byte=100.05, finished=100.5, usage=Usage(120, 12, 132), completed=True,
                       tenant="default", team="dev", key_id="key_abc", policy_rule="default", cache="miss")
    return outcome, catalogue


def outcome(n: int) -> Callable[[], None]:
    make, _ = _record_parts()

    def loop() -> None:
        for _ in range(n):
            make()
    return loop


def build_record(n: int) -> Callable[[], None]:
    from gateway.accounting.records import build_record as build

    make, catalogue = _record_parts()
    outcomes = [make() for _ in range(n)]

    def loop() -> None:
        for o in outcomes:
            build(o, catalogue)
    return loop


def to_row(n: int) -> Callable[[], None]:
    from gateway.accounting.records import build_record as build
    from gateway.accounting.records import to_row as row

    make, catalogue = _record_parts()
    record = build(make(), catalogue)

    def loop() -> None:
        for _ in range(n):
            row(record)
    return loop


def access_line(n: int) -> Callable[[], None]:
    import logging

    from gateway.accounting.records import build_record as build
    from gateway.telemetry import logs

    make, catalogue = _record_parts()
    logs.configure_logging("info", "text")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 -- the process ends with the count
    outcomes = [make() for _ in range(n + 1)]
    record = build(outcomes[-1], catalogue)
    logs.access(outcomes[-1], record, None)

    def loop() -> None:
        for o in outcomes[:n]:
            logs.access(o, record, None)
    return loop


def usage_metrics(n: int) -> Callable[[], None]:
    from gateway.accounting.records import build_record as build
    from gateway.telemetry.metrics import Metrics

    make, catalogue = _record_parts()
    record = build(make(), catalogue)
    metrics = Metrics()
    metrics.usage.observe(record)

    def loop() -> None:
        for _ in range(n):
            metrics.usage.observe(record)
    return loop


def stream_collect(n: int) -> Callable[[], None]:
    from overheadlib.mock import sse_events

    from gateway.cache.entry import StreamCollector

    events = sse_events(FIXTURES, "bench-sse")  # the mock's 30-chunk stream, as the relay hands it on

    def collect() -> None:
        c = StreamCollector("chat", 1_000_000)
        for e in events:
            c.feed(e)
        assert c.entry(None) is not None
    collect()

    def loop() -> None:
        for _ in range(n):
            collect()
    return loop


PIECES: dict[str, tuple[Callable[[int], Callable[[], None]], str]] = {
    "classify": (classify, "classification of the bench's request (a distinct user message each time)"),
    "tokenize_user": (tokenize_user, "tiktoken's count of its 244-character user message"),
    "outcome": (outcome, "a call's Outcome (relay.py)"),
    "build_record": (build_record, "its usage record, costed (two exact Decimal costs)"),
    "to_row": (to_row, "the record as a database row"),
    "access_line": (access_line, "its access line (text format, to /dev/null)"),
    "usage_metrics": (usage_metrics, "its usage metrics"),
    "stream_collect": (stream_collect, "collecting a cacheable 30-chunk stream for the response cache (per stream)"),
}


# --- driver ----------------------------------------------------------------------------------------------


def count(piece: str, calls: int, out_dir: Path) -> int:
    """Instructions of the whole child process (set-up and `calls` repetitions of `piece`)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    before = set(out_dir.glob("callgrind.out.*"))
    argv = [*wrapper(out_dir), sys.executable, __file__, "--child", piece, str(calls)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{piece} failed:\n{done.stderr[-3000:]}")
    (dump,) = set(out_dir.glob("callgrind.out.*")) - before
    return take_total(dump)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--only", help="comma-separated pieces: " + ", ".join(PIECES))
    p.add_argument("--out", type=Path, default=HERE / "results" / "piece_instructions.json")
    p.add_argument("--child", nargs=2, metavar=("PIECE", "CALLS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        piece, calls = args.child
        PIECES[piece][0](int(calls))()
        return 0
    names = args.only.split(",") if args.only else list(PIECES)
    unknown = sorted(set(names) - set(PIECES))
    if unknown:
        p.error(f"unknown piece(s): {', '.join(unknown)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="piece-instructions-") as tmp:
        for name in names:
            base, loaded = count(name, 0, Path(tmp)), count(name, args.calls, Path(tmp))
            per_call = round((loaded - base) / args.calls)
            rows.append({"piece": name, "what": PIECES[name][1], "instructions_per_call": per_call})
            print(f"  {name:15} {per_call:>10,}  {PIECES[name][1]}", flush=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = {"benchmark": "instructions per call of single pieces, each alone under callgrind",
              "date": dt.date.today().isoformat(), "commit": commit, "calls": args.calls,
              "reproduce": "bench/piece_instructions.py" + (f" --only {args.only}" if args.only else ""),
              "rows": rows}
    if not args.only:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
