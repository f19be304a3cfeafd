"""`gateway router train|score|evaluate`: the learned quality predictor, offline (the `train` extra).

The work lives in gateway/learning/; numpy, scikit-learn and matplotlib are imported inside the run
functions, so other commands (`gateway serve`) never load them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.commands import config

if TYPE_CHECKING:  # the training code is imported only when a command runs
    from gateway.learning.build import Built, Examples
    from gateway.learning.production import Production
    from gateway.settings import Settings
    from router.policy import PolicySet
    from router.predictor import Predictor

MODELS_HELP = ("the heads, comma-separated: NAME (taught by the outcome scores named NAME) or "
               "NAME=OUTCOME[|OUTCOME...] (taught by the mean of those outcomes' scores on each row), "
               "e.g. small=Qwen2.5-7B-Instruct,large=gpt-4o-2024-05-13|gpt-4-1106-preview")
DEFAULT_PLOT = "router-evaluation.svg"
SCORE_BATCH = 4096
TRAIN_EXTRA = frozenset(("numpy", "sklearn", "scipy", "matplotlib"))  # rows whose vectors are held at once
INSTALL_HOLDOUT = 0.3  # --install-if-better without --holdout
# The figures below are gateway/learning/compare.py's and production.py's constants (a test keeps them equal);
# they are spelt out so that building the parser imports nothing of the training code.
TRAIN_DESCRIPTION = """\
Fit the quality predictor and write DIR/predictor.json. The same data, models and seed give the same bytes.

Data: outcome files (--data, JSONL: prompts and the score each model got), the gateway's routing outcomes
(--from-db: scores from POST /v1/feedback and shadow judges, stored with each call's feature vector, never
its text), or both. A production row is one request: per model, the mean of its scores there. Rows stored
with another feature layout than this gateway's are skipped and counted. Each head of --models is taught by
the rows of the models it names (a production row's model is a catalogue model name)."""
TRAIN_EPILOG = """\
--install-if-better (with --from-db; --holdout defaults to 0.3):
  1. train on the rows not held out (requests by a hash of seed and request id, file rows by text);
  2. judge it and the predictor the policy uses (routing.yaml `defaults.predictor`) on the held-out rows:
     APGR of routing between the FIRST and the LAST model of --models (list them cheapest first), the
     router score being predicted last minus predicted first, on the rows scored for both; when APGR
     cannot be computed (the current predictor lacks either head, fewer than 10 held-out rows are scored
     for both, or the last model does not score above the first there) the mean squared error of the
     predicted scores over every scored (row, model) pair of the heads both predictors have;
  3. install only when the new one is better by the margin: APGR higher by at least 0.005, or MSE at
     least 1% lower. Then it is retrained on every row (the held-out ones too) and written over the
     policy's predictor file atomically (temporary file, then rename), after checking that the policy
     loads with it; a running gateway's policy watcher hot-reloads it. Otherwise the file is left as it
     is and the exit status is still 0. DIR/predictor.json is written either way.
  Refused (exit 1): fewer than 10 held-out rows scored, a policy without `defaults.predictor`, a
  predictor the policy would not load (e.g. a rule's candidate without a head).

--from-db refuses (exit 1) to train a model scored on fewer than 20 rows (production requests and file
rows, held-out ones included): so few labels are noise.

examples:
  gateway router train --from-db --since 30d --models demo-small,demo-large --out /tmp/predictor
  gateway router train --from-db --since 30d --models demo-small,demo-large --out /tmp/predictor \\
      --install-if-better --config gateway.yaml
  gateway router train --from-db --data public.jsonl --models small=small|qwen-7b,large --out DIR"""


def register(sub: Any) -> None:
    p = sub.add_parser("router", help="train and evaluate the learned quality predictor (needs the `train` extra)")
    cmds = p.add_subparsers(dest="router_command", required=True, help="what to do")

    t = cmds.add_parser("train", help="fit a predictor on outcome files or production outcomes; writes "
                        "DIR/predictor.json", formatter_class=argparse.RawDescriptionHelpFormatter,
                        description=TRAIN_DESCRIPTION, epilog=TRAIN_EPILOG)
    t.add_argument("--data", action="append", metavar="FILE", type=Path,
                   help="outcome file, JSONL (repeatable); with --from-db its rows are added to production's")
    t.add_argument("--from-db", action="store_true",
                   help="train on the gateway's routing outcomes (client feedback, shadow judges): one row per "
                   "request, a model's score the mean of its feedback and shadow scores")
    t.add_argument("--since", metavar="AGE", help="with --from-db: only outcomes scored within AGE: 90m, 12h, 30d, "
                   "2w (default: all)")
    config.add_config(t, "its policies_dir and, with --from-db, its database_url (unset: the embedded SQLite in "
                      "<state_dir>/gateway.db)")
    t.add_argument("--install-if-better", action="store_true",
                   help="with --from-db: compare with the policy's predictor on the held-out rows and, when the "
                   "new one is better by the margin, retrain on every row and replace the policy's predictor "
                   "file atomically (a running gateway hot-reloads it)")
    t.add_argument("--models", required=True, metavar="SPEC",
                   help=MODELS_HELP + "; with --install-if-better list them cheapest first")
    t.add_argument("--out", required=True, metavar="DIR", type=Path, help="where predictor.json goes (created)")
    _split(t, "hold out this share of the prompts (by text) and of production's requests (by request id) from "
           "training, for `evaluate --holdout` and --install-if-better (default 0; 0.3 with --install-if-better)",
           default=None)
    config.add_policies(t, "policy directory: its classifier computes the file rows' features, and "
                        "--install-if-better compares with and replaces its predictor")
    t.set_defaults(run=run_train)

    s = cmds.add_parser("score", help="print each row's predicted score of every head, one JSON object a line")
    _predictor(s)
    _data(s)
    _policies(s)
    config.add_config(s, "its policies_dir")
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
    config.add_prices(e, "for costs")
    _policies(e)
    config.add_config(e, "its policies_dir and prices_file")
    e.set_defaults(run=run_evaluate)


def _data(p: argparse.ArgumentParser) -> None:  # score and evaluate
    p.add_argument("--data", required=True, action="append", metavar="FILE", type=Path,
                   help="outcome file, JSONL (repeatable)")


def _predictor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictor", required=True, metavar="DIR", type=Path,
                   help="directory holding predictor.json (or the file itself)")


def _policies(p: argparse.ArgumentParser) -> None:  # score and evaluate
    config.add_policies(p, "policy directory whose classifier computes the features")


def _split(p: argparse.ArgumentParser, holdout_help: str, default: float | None = 0.0) -> None:
    p.add_argument("--holdout", type=float, default=default, metavar="SHARE", help=holdout_help)
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


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of --config; their problem as a UsageError."""
    from gateway.learning.dataset import UsageError
    from gateway.settings import SettingsError

    try:
        return config.settings(args)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def _classifier(args: argparse.Namespace) -> Any:
    """The classifier of the policy the settings (or --policies) name."""
    from router.policy import load_classifier

    return load_classifier(config.policy_dir(args, _settings(args)))


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

        try:
            heads = parse_models(args.models)
        except ValueError as exc:
            raise dataset.UsageError(f"--models: {exc}") from None
        if args.from_db:
            return _train_from_db(args, heads)
        for given, flag in ((args.since, "--since"), (args.install_if_better, "--install-if-better")):
            if given:
                raise dataset.UsageError(f"{flag} goes with --from-db")
        if not args.data:
            raise dataset.UsageError("give outcome files (--data FILE) or --from-db (the gateway's routing outcomes)")
        holdout = args.holdout or 0.0
        check_holdout(holdout)
        data = dataset.load(args.data)
        built = build(data, heads, _classifier(args), args.seed, holdout)
        target = _write_out(args.out, built.artefact)
        _print_trained(built, heads, holdout, args.seed)
        print(f"wrote {target}: predictor {built.predictor.name} (sha256 {built.predictor.hash})")
        return 0

    return _guarded("train", work)


def _write_out(out: Path, artefact: bytes) -> Path:
    from gateway.learning.dataset import UsageError

    try:
        out.mkdir(parents=True, exist_ok=True)
        target = out / "predictor.json"
        target.write_bytes(artefact)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the predictor: {exc.strerror or exc}") from None
    return target


def _print_trained(built: Built, heads: Collection[str], holdout: float, seed: int) -> None:
    held = f"; {built.held_out} held out (--holdout {holdout:g} --seed {seed})" if holdout > 0 else ""
    print(f"trained on {built.training_rows} of {built.rows} rows{held}")
    width = max(len(h) for h in heads)
    for name, head in built.predictor.spec.heads.items():
        print(f"  {name:<{width}}  {head.rows} rows scored, mean score {head.mean:.4f}")


def _train_from_db(args: argparse.Namespace, heads: dict[str, list[str]]) -> int:
    """`train --from-db [--install-if-better]`: production outcomes (and files), then maybe an install."""
    from gateway.learning import dataset, install, production
    from gateway.learning.build import check_holdout, file_examples, fit_examples, join
    from gateway.learning.dataset import UsageError
    from router.policy import load_policy_set

    holdout = args.holdout if args.holdout is not None else INSTALL_HOLDOUT if args.install_if_better else 0.0
    check_holdout(holdout)
    if args.install_if_better and holdout <= 0:
        raise UsageError("--install-if-better judges the predictors on held-out rows: --holdout must be above 0 "
                         f"(default {INSTALL_HOLDOUT})")
    since = production.parse_since(args.since) if args.since is not None else None
    url, policies_dir = _database_and_policies(args)
    policy = load_policy_set(policies_dir)
    target = install.predictor_target(policy) if args.install_if_better else None
    if target is not None and (args.out / "predictor.json").resolve() == target[0].resolve():
        raise UsageError(f"--out {args.out} is the policy's predictor directory: --install-if-better decides what "
                         "goes there; write the trained artefact elsewhere")
    data = dataset.load(args.data) if args.data else None
    found = _read_outcomes(url, since, args.since)
    parts = [production.examples(found, holdout, args.seed)]
    if data is not None:
        parts.append(file_examples(data.rows, policy.classifier, holdout, args.seed))
    examples = join(*parts)
    dataset.check_outcome_names(examples.outcomes, heads)
    production.check_enough(examples, heads)
    training: dict[str, Any] = {
        "source": "db",
        "db": {"url": production.public_url(url), "since": args.since, "rows": found.rows,
               "requests": len(found.request_ids)},
        "data": data.files if data is not None else [],
        "seed": args.seed,
        "holdout": holdout,
        "models": {name: list(members) for name, members in heads.items()},
    }
    built = fit_examples(examples, heads, training)
    _print_trained(built, heads, holdout, args.seed)
    if target is None:
        out = _write_out(args.out, built.artefact)
        print(f"wrote {out}: predictor {built.predictor.name} (sha256 {built.predictor.hash})")
        return 0
    return _install_if_better(args.out, policy, target, examples, heads, training, built)


def _database_and_policies(args: argparse.Namespace) -> tuple[str, Path]:
    """The database URL and the policy directory, from --config / $GATEWAY_CONFIG / GATEWAY_* / defaults."""
    from sqlalchemy.exc import ArgumentError

    from gateway.accounting import database_url
    from gateway.accounting.db import DatabaseError, async_url
    from gateway.learning.dataset import UsageError

    settings = _settings(args)
    try:
        url = async_url(database_url(settings))
    except DatabaseError as exc:
        raise UsageError(str(exc)) from None
    except ArgumentError as exc:
        raise UsageError(f"database_url: {exc}") from None
    return url, config.policy_dir(args, settings)


def _read_outcomes(url: str, since: timedelta | None, since_text: str | None) -> Production:
    """The production rows, their summary printed; UsageError when there are none to train on."""
    from gateway.learning import production
    from gateway.learning.dataset import UsageError
    from router.features import FEATURES

    found = production.read_production(url, since)
    where, window = production.public_url(url), f" scored within {since_text}" if since_text else ""
    skipped = []
    if found.skipped:
        layouts = ", ".join(f"{layout}: {n}" for layout, n in sorted(found.skipped.items()))
        skipped.append(f"skipped {sum(found.skipped.values())} outcome rows of another feature layout ({layouts}); "
                       f"this gateway computes {FEATURES}")
    if found.unreadable:
        skipped.append(f"skipped {found.unreadable} outcome rows whose stored vector does not decode")
    if not found.request_ids:
        raise UsageError(f"no routing outcomes{window} in {where} in this gateway's feature layout: nothing to "
                         "train on", *skipped)
    print(f"read {found.rows} outcome rows of {len(found.request_ids)} requests from {where}{window}")
    for line in skipped:
        print(line)
    return found


def _install_if_better(out_dir: Path, policy: PolicySet, target: tuple[Path, Predictor], examples: Examples,
                       heads: dict[str, list[str]], training: dict[str, Any], built: Built) -> int:
    """Judge `built` against the policy's predictor on the held-out rows; when it wins, retrain on every row
    and install that."""
    from gateway.durable import write_atomically
    from gateway.learning import install
    from gateway.learning.build import fit_examples
    from gateway.learning.compare import compare
    from gateway.learning.dataset import UsageError

    path, current = target
    names = list(heads)
    result = compare(current, built.predictor, examples.side(True), heads)
    print(f"compared with the policy's predictor {current.name} ({path}):")
    print(f"  {result.describe(names[0], names[-1])}")
    if not result.better:
        out = _write_out(out_dir, built.artefact)
        print(f"decision: keep {current.name} ({result.verdict()}); {path} is unchanged")
        print(f"wrote {out}: predictor {built.predictor.name} (trained without the held-out rows)")
        return 0
    print(f"decision: install the new predictor ({result.verdict()})")
    selected = {"against": current.hash, "measure": result.measure, "new": round(result.new or 0.0, 6),
                "current": round(result.current or 0.0, 6), "rows": result.rows, "holdout": training["holdout"]}
    final = fit_examples(examples.all_for_training(), heads, {**training, "holdout": 0.0, "selected": selected})
    out = _write_out(out_dir, final.artefact)
    print(f"wrote {out}: predictor {final.predictor.name} (retrained on all {final.training_rows} rows)")
    problems = install.check_in_policy(policy, path, final.artefact)
    if problems:
        raise UsageError(f"not installed: the policy in {policy.directory} would refuse the new predictor", *problems)
    try:
        write_atomically(path, final.artefact)
    except OSError as exc:
        raise UsageError(f"not installed: cannot write {path}: {exc.strerror or exc}") from None
    print(f"installed predictor {final.predictor.name} (sha256 {final.predictor.hash}) into {path}, replacing "
          f"{current.name}; a running gateway's policy watcher reloads it")
    return 0


def run_score(args: argparse.Namespace) -> int:
    def work() -> int:
        from gateway.learning import dataset
        from gateway.learning.train import row_vectors

        predictor = _load_predictor(args.predictor)
        classifier = _classifier(args)
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


def _rates(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.accounting.prices import PricesError, current_token_rates, load_prices
    from gateway.learning.dataset import UsageError

    settings = _settings(args)
    path = config.prices_file(args, settings)
    if args.prices is None and settings.prices_file is None and not path.exists():
        return {}
    try:
        return dict(current_token_rates(load_prices(path), datetime.now(UTC)))
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
        rates = _rates(args)
        data = dataset.load(args.data)
        result = evaluate(predictor, data, models, _classifier(args), rates, args.holdout, args.seed)
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
