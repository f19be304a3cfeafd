"""The learned quality predictor, for inference: per catalogue model, the score it would get on a request.

An artefact is one JSON file (`predictor.json`) holding, per *head* (a catalogue model's name), a
linear model over the feature vector of router/features.py: the n-gram counts are log-scaled and
L2-normalised, then every weight applies; the result is clipped to [0, 1]. Standardisation was folded
into the weights when the artefact was written, so inference is one matrix product.

Artefacts are written by `gateway router train` (gateway/learning/); this module only parses,
validates and evaluates them: no file is read here, the caller hands over the bytes. The artefact's
name is the sha256 of those bytes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from router import features

__all__ = ["FORMAT", "PREDICTOR_FILE", "Head", "Predictor", "PredictorFile", "parse_predictor", "predictor_bytes"]

FORMAT = "llm-gateway/quality-predictor/1"
PREDICTOR_FILE = "predictor.json"


class Head(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One model's linear predictor."""

    weights: list[float]  # features.SIZE of them
    bias: float
    trained_as: list[str] = []  # the outcome names whose scores taught it (several: their mean)
    rows: int = 0  # training rows with an outcome for it
    mean: float | None = None  # its mean score on those rows


class PredictorFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The artefact's schema (strict: an unknown key is an error)."""

    format: str
    features: str
    heads: dict[str, Head]
    # The range of each dense number seen in training: inputs are clipped to it, so that a request unlike
    # any in the data (a one-word prompt, a huge one) is predicted like the nearest ones, not extrapolated.
    dense_low: list[float] = []
    dense_high: list[float] = []
    training: dict[str, Any] = {}  # provenance: data files and their sha256, seed, holdout, method, metrics


@dataclass(frozen=True, eq=False)
class Predictor:
    """A validated artefact, ready for inference. Immutable; hot reload swaps the whole object."""

    hash: str  # sha256 of the artefact's bytes
    heads: tuple[str, ...]
    weights: npt.NDArray[np.float32]  # (SIZE, heads)
    bias: npt.NDArray[np.float32]  # (heads,)
    spec: PredictorFile
    low: npt.NDArray[np.float32] | None = None  # dense numbers are clipped to [low, high]
    high: npt.NDArray[np.float32] | None = None
    index: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {name: i for i, name in enumerate(self.heads)})

    @property
    def name(self) -> str:
        return self.hash[:12]

    def predict(self, vector: features.Vector) -> dict[str, float]:
        """Predicted score of each head's model for one feature vector, in [0, 1] (predict_many's maths,
        for one row without the matrix set-up: this runs per request)."""
        counts = np.log1p(vector[: features.BUCKETS])
        norm = max(float(np.sqrt(counts @ counts)), 1e-9)
        dense = vector[features.BUCKETS:]
        if self.low is not None and self.high is not None:
            dense = np.clip(dense, self.low, self.high)
        text = counts @ self.weights[: features.BUCKETS] / norm
        scores = text + dense @ self.weights[features.BUCKETS:] + self.bias
        return {name: min(1.0, max(0.0, float(s))) for name, s in zip(self.heads, scores.tolist(), strict=True)}

    def predict_many(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """(rows, heads) predicted scores of a (rows, SIZE) matrix of raw feature vectors."""
        x = transform(vectors, self.low, self.high)
        out: npt.NDArray[np.float64] = np.clip(x @ self.weights + self.bias, 0.0, 1.0).astype(np.float64)
        return out

    def summary(self) -> dict[str, Any]:
        """What /admin/policy and `gateway policies check` show of it."""
        return {
            "name": self.name,
            "sha256": self.hash,
            "features": self.spec.features,
            "heads": {name: {"trained_as": h.trained_as, "rows": h.rows, "mean": h.mean}
                      for name, h in self.spec.heads.items()},
            "training": self.spec.training,
        }


def transform(vectors: npt.NDArray[np.float32], low: npt.NDArray[np.float32] | None = None,
              high: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Raw feature vectors -> what the weights apply to: log-scaled, L2-normalised counts; the numbers,
    clipped to [low, high] when given."""
    counts = np.log1p(vectors[:, : features.BUCKETS])
    norms = np.sqrt((counts * counts).sum(axis=1, keepdims=True))
    counts /= np.maximum(norms, 1e-9)
    dense = vectors[:, features.BUCKETS:]
    if low is not None and high is not None:
        dense = np.clip(dense, low, high)
    out: npt.NDArray[np.float32] = np.concatenate([counts, dense], axis=1)
    return out


def parse_predictor(data: bytes) -> tuple[Predictor | None, list[str]]:
    """An artefact's bytes -> (Predictor, []) or (None, problems)."""
    try:
        spec = msgspec.json.decode(data, type=PredictorFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, [f"not a quality predictor: {exc}"]
    problems: list[str] = []
    if spec.format != FORMAT:
        problems.append(f"format `{spec.format}` is not `{FORMAT}`")
    if spec.features != features.FEATURES:
        problems.append(f"trained on features `{spec.features}`; this gateway computes `{features.FEATURES}` "
                        "(retrain it with `gateway router train`)")
    if not spec.heads:
        problems.append("it has no heads (no model to predict for)")
    for name, head in spec.heads.items():
        if len(head.weights) != features.SIZE:
            problems.append(f"head `{name}` has {len(head.weights)} weights, not {features.SIZE}")
        elif not all(math.isfinite(w) for w in head.weights) or not math.isfinite(head.bias):
            problems.append(f"head `{name}` has a weight that is not a finite number")
    dense = len(features.DENSE)
    if (spec.dense_low or spec.dense_high) and not (len(spec.dense_low) == len(spec.dense_high) == dense):
        problems.append(f"`dense_low` and `dense_high` need {dense} numbers each")
    elif any(lo > hi for lo, hi in zip(spec.dense_low, spec.dense_high, strict=True)):
        problems.append("a `dense_low` bound is above its `dense_high`")
    if problems:
        return None, problems
    heads = tuple(spec.heads)
    weights = np.array([spec.heads[h].weights for h in heads], dtype=np.float32).T.copy()
    bias = np.array([spec.heads[h].bias for h in heads], dtype=np.float32)
    low = np.array(spec.dense_low, dtype=np.float32) if spec.dense_low else None
    high = np.array(spec.dense_high, dtype=np.float32) if spec.dense_high else None
    return Predictor(hashlib.sha256(data).hexdigest(), heads, weights, bias, spec, low, high), []


def predictor_bytes(
    heads: Mapping[str, Head],
    training: Mapping[str, Any] | None = None,
    dense_low: Sequence[float] = (),
    dense_high: Sequence[float] = (),
    feature_layout: str = features.FEATURES,
) -> bytes:
    """The artefact for these heads, as written to `predictor.json` (stable: sorted keys, one head a line)."""
    spec = PredictorFile(format=FORMAT, features=feature_layout, heads=dict(heads), dense_low=list(dense_low),
                         dense_high=list(dense_high), training=dict(training or {}))
    raw = msgspec.to_builtins(spec)
    lines = ["{", f'  "format": {_j(raw["format"])},', f'  "features": {_j(raw["features"])},', '  "heads": {']
    names = sorted(raw["heads"])
    for i, name in enumerate(names):
        comma = "," if i < len(names) - 1 else ""
        lines.append(f"    {_j(name)}: {_j(raw['heads'][name])}{comma}")
    lines += ["  },", f'  "dense_low": {_j(raw["dense_low"])},', f'  "dense_high": {_j(raw["dense_high"])},',
              f'  "training": {_j(raw["training"])}', "}", ""]
    return "\n".join(lines).encode()


def _j(value: Any) -> str:
    return msgspec.json.encode(value, order="sorted").decode()


def prior(heads: Sequence[str], score: float = 0.5) -> bytes:
    """An untrained artefact: every head predicts `score` for every request (a starting point)."""
    zero = [0.0] * features.SIZE
    return predictor_bytes({h: Head(weights=zero, bias=score) for h in heads}, {"method": "prior", "score": score})
