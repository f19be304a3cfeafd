"""Building a predictor artefact: rows of any origin, split, features, fit, provenance.

Rows come from outcome files (prompts with the score each model got) or from production
(`routing_outcomes`, production.py); both become `Examples`: a feature vector per row, the scores each
outcome name got on it, and whether the row is held out. File rows get their vectors from their text,
exactly as the gateway computes them, and are held out by text (outcomes.in_holdout); production rows
carry the vector stored with them and are held out by request id. `fit_examples` then trains on the
rows not held out, whatever their origin.

The provenance written into the artefact (`training`) is what `evaluate` checks a test split against:
the data files (name, sha256, rows), the seed and held-out share of the split, the training rows and
the heads. It holds no timestamp, so the same data, heads and seed give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.learning.dataset import DataSet, UsageError, check_outcome_names
from gateway.learning.outcomes import OutcomeRow, head_score, in_holdout
from gateway.learning.train import fit, row_vectors
from router import features
from router.classifier import Classifier
from router.predictor import Predictor, parse_predictor

__all__ = ["Built", "Examples", "build", "check_holdout", "file_examples", "fit_examples", "head_targets", "join"]


@dataclass(frozen=True)
class Built:
    artefact: bytes
    predictor: Predictor
    rows: int  # in the data
    training_rows: int
    held_out: int


@dataclass(frozen=True, eq=False)
class Examples:
    """Training material of any origin, row by row."""

    vectors: npt.NDArray[np.float32]  # (rows, SIZE): raw feature vectors, as router.features computes them
    outcomes: list[Mapping[str, float]]  # outcome name -> score
    held: npt.NDArray[np.bool_]  # in the held-out share

    def __len__(self) -> int:
        return len(self.outcomes)

    def side(self, held: bool) -> Examples:
        """The held-out rows (True) or the training rows (False)."""
        keep = self.held == held
        return Examples(self.vectors[keep], [o for o, k in zip(self.outcomes, keep, strict=True) if k],
                        self.held[keep])

    def all_for_training(self) -> Examples:
        """Every row, none held out."""
        return Examples(self.vectors, self.outcomes, np.zeros(len(self), dtype=np.bool_))


def check_holdout(holdout: float) -> None:
    if not 0.0 <= holdout < 1.0:
        raise UsageError(f"--holdout is the share of prompts held out: a number in [0, 1), not {holdout}")


def file_examples(rows: Sequence[OutcomeRow], classifier: Classifier, holdout: float, seed: int) -> Examples:
    """Outcome file rows: vectors from their text, held out by text."""
    held = np.array([in_holdout(row.text(), holdout, seed) for row in rows], dtype=np.bool_)
    return Examples(row_vectors(rows, classifier), [row.outcomes for row in rows], held)


def join(*parts: Examples) -> Examples:
    """The rows of every part, in order."""
    if not parts:
        return Examples(features.stack([]), [], np.zeros(0, dtype=np.bool_))
    return Examples(np.concatenate([p.vectors for p in parts]).astype(np.float32, copy=False),
                    [o for p in parts for o in p.outcomes], np.concatenate([p.held for p in parts]))


def head_targets(outcomes: Sequence[Mapping[str, float]],
                 heads: Mapping[str, Sequence[str]]) -> dict[str, npt.NDArray[np.float64]]:
    """Per head, each row's score: the mean of its members' scores there (NaN where none was scored)."""
    out = {}
    for head, members in heads.items():
        column = [head_score(scores, members) for scores in outcomes]
        out[head] = np.array([np.nan if s is None else s for s in column], dtype=np.float64)
    return out


def fit_examples(examples: Examples, heads: Mapping[str, Sequence[str]], training: Mapping[str, Any]) -> Built:
    """Train on the rows not held out; `training` is the provenance (its `rows` is filled in here).
    Raises UsageError on unusable input."""
    train = examples.side(False)
    if not len(train):
        raise UsageError(f"every row is held out (--holdout {training.get('holdout')}): nothing to train on")
    info = {**training, "rows": len(train)}
    try:
        artefact = fit(train.vectors, head_targets(train.outcomes, heads), heads, info)
    except ValueError as exc:
        raise UsageError(f"{exc} (among the {len(train)} training rows)") from None
    predictor, problems = parse_predictor(artefact)
    if predictor is None:  # fit wrote something the parser refuses: a bug, not the user's doing
        raise RuntimeError("; ".join(problems))
    return Built(artefact, predictor, len(examples), len(train), len(examples) - len(train))


def build(
    data: DataSet, heads: Mapping[str, Sequence[str]], classifier: Classifier, seed: int, holdout: float
) -> Built:
    """Train on the file rows not held out (by text: outcomes.in_holdout); raises UsageError on unusable input."""
    check_holdout(holdout)
    check_outcome_names([row.outcomes for row in data.rows], heads)
    training: dict[str, Any] = {
        "data": data.files,
        "seed": seed,
        "holdout": holdout,
        "models": {name: list(members) for name, members in heads.items()},
    }
    return fit_examples(file_examples(data.rows, classifier, holdout, seed), heads, training)
