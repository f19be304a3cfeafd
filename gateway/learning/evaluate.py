"""Evaluating a quality predictor as a router, beside baselines, on outcome data (RouteLLM's discipline).

Two models, WEAK and STRONG: each router gives every prompt a score (higher: send it to STRONG) and the
metrics of metrics.py sweep the share of strong calls. The routers:

- `learned`: the predictor's STRONG minus WEAK prediction;
- `random`: a constant (the tie-aware curve makes its APGR exactly 0.5);
- `oracle`: the true STRONG minus WEAK score (the best any router can rank);
- `length`: the prompt's characters;
- `rules`: the keyword rules used before learned routing: 1 when the policy classifier finds code, math
  or reasoning or a complexity tier >= 2, else 0, plus the complexity score / 100 to break ties;
- `ridge`: the plain learned baseline, a ridge regression of the score gap on hashed word and character
  n-grams, fitted on the training side of the split.

More models (ordered weak to strong): APGR along the cost axis of routing each prompt to the model of
best predicted quality less λ·cost, against the same for random and oracle. Labels come from the
predictor's own head definitions, so a head trained on the mean of several outcomes is judged on it.
Costs are floats: statistics for a report, not money.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.learning.build import check_holdout
from gateway.learning.dataset import DataSet, UsageError
from gateway.learning.metrics import (
    Point,
    apgr,
    apgr_along_cost,
    cost_quality_frontier,
    cpt,
    operating_points,
    pgr_curve,
)
from gateway.learning.outcomes import OutcomeRow, head_score, split
from router import features
from router.classifier import Classifier
from router.classify import classify
from router.predictor import Predictor
from router.pricing import TokenRates, expected_cost

__all__ = ["ROUTERS", "SHARES", "AlongCost", "Evaluation", "RouterResult", "evaluate", "provenance_findings"]

Array = npt.NDArray[np.float64]

ROUTERS = ("learned", "random", "oracle", "length", "rules", "ridge")
SHARES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PLOT_SHARES = tuple(i / 20 for i in range(21))
HARD_CATEGORIES = frozenset(("code", "math", "reasoning"))
RIDGE_ALPHA = 1.0
RIDGE_FEATURES = 2**18


@dataclass(frozen=True)
class RouterResult:
    name: str
    apgr: float
    cpt50: float | None  # share of strong calls reaching PGR 50% (None: never)
    cpt80: float | None
    points: list[Point]  # at SHARES; cost_per_1k is 0 when the models have no prices
    curve: list[Point]  # at PLOT_SHARES, for the plot


@dataclass(frozen=True)
class AlongCost:
    """APGR along the cost axis over every model given (learned, random, oracle)."""

    cheapest: str
    dearest: str
    apgr: dict[str, float]
    frontiers: dict[str, list[tuple[float, float]]]  # router -> (mean cost, mean quality) points
    models: dict[str, tuple[float, float]]  # every prompt on one model -> (mean cost, mean quality)


@dataclass(frozen=True)
class Evaluation:
    predictor: Predictor
    models: list[str]  # weak to strong; the first and last make the two-model figures
    holdout: float
    seed: int
    rows: int  # in the data
    split_rows: int  # on the evaluated side (held out, or all with holdout 0)
    used_rows: int  # of those, scored for every model
    ridge_rows: int  # rows the ridge baseline was fitted on
    quality_weak: float
    quality_strong: float
    currency: str | None  # None when a model has no price (costs are n/a)
    unpriced: list[str]
    results: list[RouterResult]
    along_cost: AlongCost | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def weak(self) -> str:
        return self.models[0]

    @property
    def strong(self) -> str:
        return self.models[-1]


def evaluate(
    predictor: Predictor,
    data: DataSet,
    models: Sequence[str],
    classifier: Classifier,
    rates: Mapping[str, TokenRates],
    holdout: float,
    seed: int,
) -> Evaluation:
    """The figures of every router on the evaluated rows; raises UsageError when they cannot be computed."""
    check_holdout(holdout)
    _check_models(predictor, models)
    warnings, notes = provenance_findings(predictor.spec.training, data, holdout, seed)
    train_rows, test_rows = split(data.rows, holdout, seed) if holdout > 0 else (data.rows, data.rows)
    members = {m: predictor.spec.heads[m].trained_as or [m] for m in models}
    used, true = _labelled(test_rows, members)
    if not used:
        side = "held-out row" if holdout > 0 else "row"
        raise UsageError(f"no {side} has a score for all of {', '.join(models)} (of {len(test_rows)})")
    weak, strong = true[:, 0], true[:, -1]
    if not weak.mean() < strong.mean():
        raise UsageError(f"PGR is undefined: `{models[-1]}` does not score above `{models[0]}` on these rows "
                         f"(means {strong.mean():.4f} and {weak.mean():.4f}); list the weaker model first")
    found = [classify(row.body, row.kind, {}, classifier) for row in used]
    vectors = features.stack([features.vector(row.body, f) for row, f in zip(used, found, strict=True)])
    predicted = predictor.predict_many(vectors)[:, [predictor.index[m] for m in models]]

    unpriced = [m for m in models if m not in rates]
    costs = np.zeros_like(true)
    if not unpriced:
        output = [classifier.tokens.default_output_tokens if f.max_tokens is None else f.max_tokens for f in found]
        for j, m in enumerate(models):
            costs[:, j] = [float(expected_cost(rates[m], f.prompt_tokens, out)) for f, out in zip(found, output,
                                                                                                   strict=True)]
    currencies = sorted({rates[m].currency for m in models if m in rates})
    if len(currencies) > 1:
        raise UsageError(f"the models are priced in several currencies ({', '.join(currencies)}): costs cannot add up")

    ridge_train, ridge_gap = _labelled(train_rows, {models[0]: members[models[0]], models[-1]: members[models[-1]]})
    if len(ridge_train) < 2:
        raise UsageError(f"the ridge baseline needs training rows scored for `{models[0]}` and `{models[-1]}`; "
                         f"there are {len(ridge_train)}")
    if holdout <= 0:
        notes.append("holdout 0: the ridge baseline is fitted and evaluated on the same rows, so it is optimistic")
    scores = {
        "learned": predicted[:, -1] - predicted[:, 0],
        "random": np.zeros(len(used)),
        "oracle": strong - weak,
        "length": np.array([float(len(row.text())) for row in used]),
        "rules": np.array([float(f.category in HARD_CATEGORIES or f.tier >= 2) + f.complexity / 100 for f in found]),
        "ridge": ridge_baseline([r.text() for r in ridge_train], ridge_gap[:, 1] - ridge_gap[:, 0],
                                [r.text() for r in used]),
    }
    results = [_result(name, s, weak, strong, costs[:, 0], costs[:, -1]) for name, s in scores.items()]
    along = None
    if len(models) > 2:
        if unpriced:
            raise UsageError(f"APGR along cost over {len(models)} models needs a price for each; none for "
                             f"{', '.join(unpriced)} in the price file")
        along = _along_cost(models, predicted, true, costs)
    return Evaluation(
        predictor=predictor, models=list(models), holdout=holdout, seed=seed, rows=len(data.rows),
        split_rows=len(test_rows), used_rows=len(used), ridge_rows=len(ridge_train),
        quality_weak=float(weak.mean()), quality_strong=float(strong.mean()),
        currency=None if unpriced else currencies[0], unpriced=unpriced, results=results, along_cost=along,
        warnings=warnings, notes=notes,
    )


def _check_models(predictor: Predictor, models: Sequence[str]) -> None:
    heads = ", ".join(predictor.heads)
    if len(models) < 2:
        raise UsageError(f"--models needs at least two heads, weak first (the predictor's heads: {heads})")
    if len(set(models)) != len(models):
        raise UsageError("--models names a model twice")
    unknown = [m for m in models if m not in predictor.index]
    if unknown:
        raise UsageError(f"{', '.join(f'`{m}`' for m in unknown)} not a head of predictor {predictor.name}; "
                         f"its heads: {heads}")


def _labelled(rows: Sequence[OutcomeRow], members: Mapping[str, Sequence[str]]) -> tuple[list[OutcomeRow], Array]:
    """The rows scored for every model, and their (rows, models) scores."""
    kept: list[OutcomeRow] = []
    labels: list[list[float]] = []
    for row in rows:
        scores = [head_score(row.outcomes, m) for m in members.values()]
        if all(s is not None for s in scores):
            kept.append(row)
            labels.append([float(s) for s in scores if s is not None])
    return kept, np.array(labels, dtype=np.float64).reshape(len(kept), len(members))


def _result(name: str, scores: Array, weak: Array, strong: Array, weak_cost: Array, strong_cost: Array) -> RouterResult:
    curve = pgr_curve(scores, weak, strong)
    points = operating_points(scores, weak, strong, weak_cost, strong_cost, PLOT_SHARES)
    at = [points[PLOT_SHARES.index(s)] for s in SHARES]
    return RouterResult(name, apgr(curve), cpt(curve, 0.5), cpt(curve, 0.8), at, points)


def ridge_baseline(train_texts: Sequence[str], train_gap: Array, test_texts: Sequence[str]) -> Array:
    """The predicted gap of a ridge regression on hashed word (1-2) and character (2-4) n-grams."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import Ridge

    vectorizers = [
        HashingVectorizer(n_features=RIDGE_FEATURES, alternate_sign=False, norm="l2", ngram_range=(1, 2)),
        HashingVectorizer(n_features=RIDGE_FEATURES, alternate_sign=False, norm="l2", analyzer="char_wb",
                          ngram_range=(2, 4)),
    ]

    def matrix(texts: Sequence[str]) -> Any:
        return hstack([v.transform(texts) for v in vectorizers]).tocsr()

    model = Ridge(alpha=RIDGE_ALPHA).fit(matrix(train_texts), train_gap)
    out: Array = np.asarray(model.predict(matrix(test_texts)), dtype=np.float64)
    return out


def _along_cost(models: Sequence[str], predicted: Array, true: Array, costs: Array) -> AlongCost:
    mean_cost, mean_quality = costs.mean(axis=0), true.mean(axis=0)
    cheapest, dearest = int(np.argmin(mean_cost)), int(np.argmax(mean_cost))
    single = {m: (float(mean_cost[j]), float(mean_quality[j])) for j, m in enumerate(models)}
    frontiers = {
        "learned": cost_quality_frontier(predicted, true, costs),
        "random": cost_quality_frontier(np.zeros_like(true), true, costs),
        "oracle": cost_quality_frontier(true, true, costs),
    }
    try:
        area = {name: apgr_along_cost(points, single[models[cheapest]], single[models[dearest]])
                for name, points in frontiers.items()}
    except ValueError as exc:
        raise UsageError(f"APGR along cost ({models[cheapest]} is the cheapest, {models[dearest]} the dearest): "
                         f"{exc}") from None
    return AlongCost(models[cheapest], models[dearest], area, frontiers, single)


def provenance_findings(
    training: Mapping[str, Any], data: DataSet, holdout: float, seed: int
) -> tuple[list[str], list[str]]:
    """(warnings, notes) on whether the predictor may have been trained on the prompts evaluated here.

    A prompt is held out by its text, seed and share alone (outcomes.in_holdout), so a predictor trained
    with the same seed and at least this share held out never saw a prompt held out here, whatever
    files it read; otherwise only files it was trained on can leak prompts.
    """
    files = training.get("data")
    if not isinstance(files, list) or "holdout" not in training or "seed" not in training:
        return [f"the predictor carries no training provenance (method: {training.get('method', 'unknown')}): "
                "it may have been trained on these prompts, and its figures may be optimistic"], []
    trained_on = {f.get("sha256") for f in files if isinstance(f, dict)}
    names = ", ".join(str(f.get("name")) for f in files if isinstance(f, dict)) or "none"
    shared = trained_on & set(data.digests())
    t_holdout, t_seed = training["holdout"], training["seed"]
    split_text = f"--holdout {t_holdout} --seed {t_seed}"
    if holdout <= 0:
        if shared:
            hint = f"; evaluate with {split_text} to test on its held-out prompts" if t_holdout else ""
            return [f"the predictor was trained on these data ({names}): evaluating on every row measures it on "
                    f"prompts it has seen, so the learned figures are optimistic{hint}"], []
        return [], [f"the predictor was trained on other data ({names})"]
    same_split = t_seed == seed and isinstance(t_holdout, int | float) and t_holdout >= holdout
    if same_split:
        if shared == set(data.digests()) == trained_on:
            return [], []
        return [], [f"the predictor was trained on other data files ({names}) with the same split: "
                    "the prompts held out here were held out there too"]
    if shared:
        return [f"the predictor was trained with {split_text} on these data ({names}), not with --holdout "
                f"{holdout} --seed {seed}: it may have seen the test prompts, so the learned figures may be "
                "optimistic"], []
    return [], [f"the predictor was trained on other data ({names}) with {split_text}: only prompts present "
                "in both could have been seen"]
