"""Training the quality predictor: feature vectors and scores in, a `predictor.json` artefact out.

The method, chosen on measurements (docs/learned-routing.md): one ridge regression per head over the feature
vector of router/features.py, with the n-gram counts log-scaled and L2-normalised, every column
standardised, and the dense numbers (sizes, structure, request fields) weighted `dense_scale` times as
much as a single n-gram bucket. The penalty grows with the rows (`alpha_per_row`), so the same
setting fits 300 feedback labels and 20,000 benchmark prompts. On the shipped data this beat a
ridge regression on hashed word and character n-grams and, more so, stronger learners (gradient
boosting, sentence embeddings) that over-fitted. Deterministic: the same rows give the same bytes.

scikit-learn does the fitting; it is imported here only (the `train` extra), never by the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.learning.outcomes import OutcomeRow
from router import features
from router.classifier import Classifier
from router.classify import classify
from router.predictor import Head, predictor_bytes, transform

__all__ = ["ALPHA_PER_ROW", "DENSE_SCALE", "fit", "parse_models", "row_vectors"]

ALPHA_PER_ROW = 15.0
DENSE_SCALE = 10.0
MIN_ROWS = 2  # a head needs at least this many scored rows
CLIP_SHARE = 0.01  # dense numbers are clipped to their 1st..99th percentile in training


def parse_models(spec: str) -> dict[str, list[str]]:
    """`a,b=x|y` -> {"a": ["a"], "b": ["x", "y"]}: each head, and the outcome names whose mean teaches it."""
    heads: dict[str, list[str]] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, members = item.partition("=")
        name = name.strip()
        names = [m.strip() for m in members.split("|") if m.strip()] if members else [name]
        if not name or not names:
            raise ValueError(f"`{item}`: a model is NAME or NAME=OUTCOME[|OUTCOME...]")
        if name in heads:
            raise ValueError(f"model `{name}` is named twice")
        heads[name] = names
    if not heads:
        raise ValueError("no models given")
    return heads


def row_vectors(rows: Sequence[OutcomeRow], classifier: Classifier) -> npt.NDArray[np.float32]:
    """(rows, SIZE) feature vectors, computed exactly as the gateway computes them for a request."""
    out = np.empty((len(rows), features.SIZE), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i] = features.vector(row.body, classify(row.body, row.kind, {}, classifier))
    return out


def _short(x: float) -> float:
    """A weight as written, to five significant digits: another CPU's BLAS changes the last digits of a fit,
    and the artefact must be the same bytes on every machine; the predictions change by less than 1e-4."""
    return float(f"{x:.5g}")


def fit(
    vectors: npt.NDArray[np.float32],
    scores: Mapping[str, npt.NDArray[np.float64]],
    members: Mapping[str, Sequence[str]],
    training: Mapping[str, Any],
    alpha_per_row: float = ALPHA_PER_ROW,
    dense_scale: float = DENSE_SCALE,
) -> bytes:
    """The artefact's bytes for these heads; raises ValueError when a head has too few scored rows."""
    from sklearn.linear_model import Ridge

    dense = vectors[:, features.BUCKETS:].astype(np.float64)
    low = np.quantile(dense, CLIP_SHARE, axis=0) if len(dense) else np.zeros(len(features.DENSE))
    high = np.quantile(dense, 1.0 - CLIP_SHARE, axis=0) if len(dense) else np.zeros(len(features.DENSE))
    low32, high32 = low.astype(np.float32), high.astype(np.float32)
    x = transform(vectors, low32, high32).astype(np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-9] = 1.0
    weight = np.ones(features.SIZE)
    weight[features.BUCKETS:] = dense_scale
    scaled = (x - mean) / std * weight
    heads: dict[str, Head] = {}
    for name, y in scores.items():
        seen = ~np.isnan(y)
        n = int(seen.sum())
        if n < MIN_ROWS:
            raise ValueError(f"model `{name}` has {n} scored row(s); it needs at least {MIN_ROWS}")
        model = Ridge(alpha=alpha_per_row * n).fit(scaled[seen], y[seen])
        # Fold the standardisation in, so inference is transform(vector) @ w + b.
        w = model.coef_ * weight / std
        b = float(model.intercept_) - float(mean @ w)
        heads[name] = Head(weights=[_short(v) for v in w], bias=_short(b), trained_as=list(members[name]), rows=n,
                           mean=round(float(y[seen].mean()), 4))
    info = {"method": "ridge", "alpha_per_row": alpha_per_row, "dense_scale": dense_scale, **training}
    return predictor_bytes(heads, info, [_short(v) for v in low32], [_short(v) for v in high32])
