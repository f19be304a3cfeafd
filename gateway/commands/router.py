"""`gateway router train|score|evaluate`: the learned quality predictor, offline (the `train` extra).

The work lives in gateway/learning/; numpy, scikit-learn and matplotlib are imported inside the run
functions, so other commands (`gateway serve`) never load them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODELS_HELP = ("the heads, comma-separated: NAME (taught by the outcome scores named NAME) or "
               "NAME=OUTCOME[|OUTCOME...] (taught by the mean of those outcomes' scores on each row), "
               "e.g. small=Qwen2.5-7B-Instruct,large=gpt-4o-2024-05-13|gpt-4-1106-preview")
DEFAULT_PLOT = "router-evaluation.svg"
SCORE_BATCH = 4096
TRAIN_EXTRA = frozenset(("numpy", "sklearn", "scipy", "matplotlib"))  # rows whose vectors are held at once


def register(sub: Any) -> None:
    p = sub.add_parser("router", help="train and evaluate the learned quality predictor (needs the `train` extra)")
    cmds = p.add_subparsers(dest="router_command", required=True)

    t = cmds.add_parser("train", help="fit a predictor on outcome files; writes DIR/predictor.json",
                        description="Fit the quality predictor on outcome files (JSONL: prompts and the score "
                        "each model got) and write DIR/predictor.json. The same data, models and seed give the "
                        "same bytes.")
    _data(t)
    t.add_argument("--models", required=True, metavar="SPEC", help=MODELS_HELP)
    t.add_argument("--out", required=True, metavar="DIR", type=Path, help="where predictor.json goes (created)")
    _split(t, "hold out this share of the prompts (by text) from training, for `evaluate --holdout` (default 0)")
    _policies(t)
    t.set_defaults(run=run_train)

    s = cmds.add_parser("score", help="print each row's predicted score of every head, one JSON object a line")
    _predictor(s)
    _data(s)
    _policies(s)
    s.set_defaults(run=run_score)

    e = cmds.add_parser("evaluate", help="compare the predictor as a router with baselines (APGR, CPT, cost)",
                        description="Route between WEAK and STRONG by the predictor and by baselines (random, "
                        "oracle, length, rules, ridge on n-grams); print APGR, CPT and quality and cost at "
                        "operating points, and plot quality against cost. Costs are floats, for a report.")
    _predictor(e)
    _data(e)
    e.add_argument("--models", required=True, metavar="WEAK,STRONG",
                   help="two of the predictor's heads, weak first; more (ordered weak to strong) add APGR along "
                   "the cost axis over all of them (the first and last make the two-model figures)")
    _split(e, "evaluate on the prompts `train --holdout H --seed N` held out (default 0: on every row)")
    e.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    e.add_argument("--plot", metavar="PATH", default=DEFAULT_PLOT,
                   help=f"quality-versus-cost plot, .svg or .png (default: {DEFAULT_PLOT}; `none`: no plot)")
    e.add_argument("--prices", metavar="FILE", type=Path,
                   help="price file for costs (default: the shipped policies/prices.yaml)")
    _policies(e)
    e.set_defaults(run=run_evaluate)


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, action="append", metavar="FILE", type=Path,
                   help="outcome file, JSONL (repeatable)")


def _predictor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictor", required=True, metavar="DIR", type=Path,
                   help="directory holding predictor.json (or the file itself)")


def _policies(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policies", metavar="DIR", type=Path,
                   help="policy directory whose classifier computes the features (default: the shipped policies/)")


def _split(p: argparse.ArgumentParser, holdout_help: str) -> None:
    p.add_argument("--holdout", type=float, default=0.0, metavar="SHARE", help=holdout_help)
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the held-out split (default 0)")


def _guarded(command: str, work: Callable[[], int]) -> int:
    """Run `work`; a user's error becomes its lines on stderr and exit status 1."""
    from gateway.learning.dataset import UsageError
    from gateway.learning.outcomes import DataError
    from router.errors import PolicyError

    lines: Sequence[str]
    try:
        return work()
    except UsageError as exc:
        lines = exc.lines
    except DataError as exc:
        lines = str(exc).splitlines()
    except PolicyError as exc:
        lines = exc.errors
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        lines = [f"{exc}: install the `train` extra (pip install 'llm-gateway[train]')"]
    for line in lines:
        print(f"gateway router {command}: {line}", file=sys.stderr)
    return 1


def _classifier(directory: Path | None) -> Any:
    from router.policy import load_policy_set

    return load_policy_set(directory).classifier


def _load_predictor(path: Path) -> Any:
    from gateway.learning.dataset import UsageError
    from router.predictor import parse_predictor

    file = path / "predictor.json" if path.is_dir() else path
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{file}: cannot read the predictor: {exc.strerror or exc}") from None
    predictor, problems = parse_predictor(data)
    if predictor is None:
        raise UsageError(*(f"{file}: {p}" for p in problems))
    return predictor


def run_train(args: argparse.Namespace) -> int:
    def work() -> int:
        from gateway.learning import dataset
        from gateway.learning.build import build, check_holdout
        from gateway.learning.train import parse_models

        check_holdout(args.holdout)
        try:
            heads = parse_models(args.models)
        except ValueError as exc:
            raise dataset.UsageError(f"--models: {exc}") from None
        data = dataset.load(args.data)
        built = build(data, heads, _classifier(args.policies), args.seed, args.holdout)
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            target = args.out / "predictor.json"
            target.write_bytes(built.artefact)
        except OSError as exc:
            raise dataset.UsageError(f"{args.out}: cannot write the predictor: {exc.strerror or exc}") from None
        held = (f"; {built.held_out} held out (--holdout {args.holdout:g} --seed {args.seed})"
                if args.holdout > 0 else "")
        print(f"trained on {built.training_rows} of {built.rows} rows{held}")
        width = max(len(h) for h in heads)
        for name, head in built.predictor.spec.heads.items():
            print(f"  {name:<{width}}  {head.rows} rows scored, mean score {head.mean:.4f}")
        print(f"wrote {target}: predictor {built.predictor.name} (sha256 {built.predictor.hash})")
        return 0

    return _guarded("train", work)


def run_score(args: argparse.Namespace) -> int:
    def work() -> int:
        from gateway.learning import dataset
        from gateway.learning.train import row_vectors

        predictor = _load_predictor(args.predictor)
        classifier = _classifier(args.policies)
        rows = dataset.load(args.data).rows
        out = sys.stdout
        for start in range(0, len(rows), SCORE_BATCH):
            batch = rows[start:start + SCORE_BATCH]
            scores = predictor.predict_many(row_vectors(batch, classifier))
            for row, values in zip(batch, scores, strict=True):
                line = {"id": row.id, "scores": {h: round(float(v), 6) for h, v in zip(predictor.heads, values,
                                                                                        strict=True)}}
                out.write(json.dumps(line) + "\n")
        return 0

    return _guarded("score", work)


def _rates(path: Path | None) -> dict[str, Any]:
    from gateway.accounting.prices import DEFAULT_PRICES_FILE, PricesError, current_token_rates, load_prices
    from gateway.learning.dataset import UsageError

    if path is None and not DEFAULT_PRICES_FILE.exists():
        return {}
    try:
        return dict(current_token_rates(load_prices(path or DEFAULT_PRICES_FILE), datetime.now(UTC)))
    except (PricesError, OSError) as exc:
        raise UsageError(f"prices: {exc}") from None


def run_evaluate(args: argparse.Namespace) -> int:
    def work() -> int:
        from gateway.learning import dataset, report
        from gateway.learning.evaluate import evaluate

        plot_path = None if args.plot.lower() == "none" else Path(args.plot)
        if plot_path is not None and plot_path.suffix.lower() not in (".svg", ".png"):
            raise dataset.UsageError(f"--plot {args.plot}: the format follows the suffix, .svg or .png")
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if any("=" in m for m in models):
            raise dataset.UsageError("--models names heads of the predictor (NAME=... is for `train`)")
        predictor = _load_predictor(args.predictor)
        rates = _rates(args.prices)
        data = dataset.load(args.data)
        result = evaluate(predictor, data, models, _classifier(args.policies), rates, args.holdout, args.seed)
        if plot_path is not None:
            try:
                report.plot(result, plot_path)
            except OSError as exc:
                raise dataset.UsageError(f"--plot {plot_path}: cannot write it: {exc.strerror or exc}") from None
        if args.json:
            for warning in result.warnings:
                print(f"WARNING: {warning}", file=sys.stderr)
            print(json.dumps(report.as_json(result, plot_path), indent=2))
        else:
            print(report.as_text(result))
            if plot_path is not None:
                print(f"\nplot: {plot_path}")
        return 0

    return _guarded("evaluate", work)
