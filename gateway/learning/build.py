"""Building a predictor artefact from outcome files: split, features, fit, provenance.

The provenance written into the artefact (`training`) is what `evaluate` checks a test split against:
the data files (name, sha256, rows), the seed and held-out share of the split, the training rows and
the heads. It holds no timestamp, so the same data, heads and seed give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.learning.dataset import DataSet, UsageError, check_outcome_names
from gateway.learning.outcomes import split
from gateway.learning.train import fit, row_vectors, targets
from router.classifier import Classifier
from router.predictor import Predictor, parse_predictor

__all__ = ["Built", "build", "check_holdout"]


@dataclass(frozen=True)
class Built:
    artefact: bytes
    predictor: Predictor
    rows: int  # in the data
    training_rows: int
    held_out: int


def check_holdout(holdout: float) -> None:
    if not 0.0 <= holdout < 1.0:
        raise UsageError(f"--holdout is the share of prompts held out: a number in [0, 1), not {holdout}")


def build(
    data: DataSet, heads: Mapping[str, Sequence[str]], classifier: Classifier, seed: int, holdout: float
) -> Built:
    """Train on the rows not held out by `split(rows, holdout, seed)`; raises UsageError on unusable input."""
    check_holdout(holdout)
    check_outcome_names(data.rows, heads)
    train_rows, held = split(data.rows, holdout, seed)
    if not train_rows:
        raise UsageError(f"every row is held out (--holdout {holdout}): nothing to train on")
    training: dict[str, Any] = {
        "data": data.files,
        "seed": seed,
        "holdout": holdout,
        "rows": len(train_rows),
        "models": {name: list(members) for name, members in heads.items()},
    }
    try:
        artefact = fit(row_vectors(train_rows, classifier), targets(train_rows, heads), heads, training)
    except ValueError as exc:
        raise UsageError(f"{exc} (among the {len(train_rows)} training rows)") from None
    predictor, problems = parse_predictor(artefact)
    if predictor is None:  # fit wrote something the parser refuses: a bug, not the user's doing
        raise RuntimeError("; ".join(problems))
    return Built(artefact, predictor, len(data.rows), len(train_rows), len(held))
