"""Is a newly trained predictor better than the one in force? Both judged on the same held-out rows.

The measure is the one routing cares about: APGR (metrics.py) of routing between the first head of
`--models` (the cheapest) and the last (the dearest), each predictor's router score being its predicted
last minus first, on the held-out rows scored for both. It falls back to the mean squared error of the
predicted scores, over every scored (row, head) pair of the heads both predictors have, when APGR cannot
be computed: the current predictor lacks the first or last head, fewer than `MIN_HELD_OUT` held-out rows
are scored for both, or the last model does not score above the first there (PGR is undefined).

The new predictor wins only by a margin, so that noise does not churn the policy: APGR higher by at
least `APGR_MARGIN`, or MSE lower by at least the share `MSE_MARGIN` of the current one's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from gateway.learning.build import Examples, head_targets
from gateway.learning.dataset import UsageError
from gateway.learning.metrics import apgr, pgr_curve
from router.predictor import Predictor

__all__ = ["APGR_MARGIN", "MIN_HELD_OUT", "MSE_MARGIN", "Comparison", "compare"]

APGR_MARGIN = 0.005  # the new predictor's APGR must be at least this much higher
MSE_MARGIN = 0.01  # ... or, as the fallback, its MSE at least 1% lower
MIN_HELD_OUT = 10  # held-out rows needed to compare at all (any head scored), and for APGR (both scored)


@dataclass(frozen=True)
class Comparison:
    measure: Literal["apgr", "mse"]
    current: float | None  # None: the current predictor could not be measured (no head in common)
    new: float | None
    rows: int  # held-out rows (APGR) or scored (row, head) pairs (MSE) the figures are over
    better: bool  # the new one wins by the margin
    fallback: str | None = None  # why not APGR

    def describe(self, weak: str, strong: str) -> str:
        if self.current is None or self.new is None:
            return f"{self.measure.upper()} cannot be compared: {self.fallback}"
        if self.measure == "apgr":
            return (f"APGR routing {weak} -> {strong} on {self.rows} held-out rows: new {self.new:.4f}, current "
                    f"{self.current:.4f}")
        return (f"MSE of the predicted scores over {self.rows} held-out (row, model) pairs: new {self.new:.4f}, "
                f"current {self.current:.4f} (not APGR: {self.fallback})")

    def verdict(self) -> str:
        """The decision's reason, one line."""
        if self.current is None or self.new is None:
            return str(self.fallback)
        if self.measure == "apgr":
            change, margin = f"APGR {self.new - self.current:+.4f}", f"the margin of +{APGR_MARGIN}"
        else:
            change = f"MSE {self.new / self.current - 1:+.1%}" if self.current else "MSE not lower than 0"
            margin = f"the margin of {MSE_MARGIN:.0%} lower"
        return f"{change}: {'meeting' if self.better else 'short of'} {margin}"


def compare(current: Predictor, new: Predictor, held: Examples, heads: Mapping[str, Sequence[str]]) -> Comparison:
    """Judge both predictors on the held-out rows; UsageError when too few rows are scored to judge."""
    names = list(heads)
    truth = head_targets(held.outcomes, heads)
    scored = np.zeros(len(held), dtype=np.bool_)
    for column in truth.values():
        scored |= ~np.isnan(column)
    if int(scored.sum()) < MIN_HELD_OUT:
        raise UsageError(f"{int(scored.sum())} held-out row(s) are scored; comparing predictors needs at least "
                         f"{MIN_HELD_OUT}: raise --holdout or collect more outcomes")
    predicted = {"current": current.predict_many(held.vectors), "new": new.predict_many(held.vectors)}
    weak, strong = names[0], names[-1]
    missing = [h for h in (weak, strong) if h not in current.index]
    if missing:
        fallback = f"the current predictor has no head `{missing[0]}`"
    else:
        both = ~np.isnan(truth[weak]) & ~np.isnan(truth[strong])
        if int(both.sum()) < MIN_HELD_OUT:
            fallback = f"{int(both.sum())} held-out row(s) are scored for both {weak} and {strong} (APGR needs " \
                       f"{MIN_HELD_OUT})"
        else:
            figures = {}
            try:
                for who, predictor in (("current", current), ("new", new)):
                    p = predicted[who][both]
                    score = p[:, predictor.index[strong]] - p[:, predictor.index[weak]]
                    figures[who] = apgr(pgr_curve(score, truth[weak][both], truth[strong][both]))
            except ValueError:
                fallback = f"APGR is undefined: {strong} does not score above {weak} on the held-out rows"
            else:
                return Comparison("apgr", figures["current"], figures["new"], int(both.sum()),
                                  figures["new"] - figures["current"] >= APGR_MARGIN)
    return _mse(current, new, predicted, truth, fallback)


def _mse(current: Predictor, new: Predictor, predicted: Mapping[str, npt.NDArray[np.float64]],
         truth: Mapping[str, npt.NDArray[np.float64]],
         fallback: str) -> Comparison:
    common = [h for h in truth if h in current.index]
    errors: dict[str, list[float]] = {"current": [], "new": []}
    for head in common:
        seen = ~np.isnan(truth[head])
        for who, predictor in (("current", current), ("new", new)):
            diff = predicted[who][seen, predictor.index[head]] - truth[head][seen]
            errors[who] += (diff * diff).tolist()
    pairs = len(errors["new"])
    if not pairs:
        return Comparison("mse", None, None, 0, False,
                          f"{fallback}, and it has none of the heads {', '.join(truth)} scored on the held-out rows")
    current_mse, new_mse = float(np.mean(errors["current"])), float(np.mean(errors["new"]))
    return Comparison("mse", current_mse, new_mse, pairs, new_mse <= current_mse * (1 - MSE_MARGIN) and
                      new_mse < current_mse, fallback)
