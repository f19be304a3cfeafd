"""One request's predicted quality, computed when a rule first asks for it and at most once.

The probe is what `decide` calls for a rule that routes on predicted quality; rules that do not
never pay for features or inference. Afterwards it holds the feature vector (for feedback) and the
scores (for the trace and the `x-gateway-route` header).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router import features
from router.classify import Features
from router.predictor import Predictor

__all__ = ["QualityProbe", "probe_for"]


class QualityProbe:
    __slots__ = ("_body", "_features", "predictor", "scores", "vector")

    def __init__(self, predictor: Predictor, body: Mapping[str, Any], request: Features) -> None:
        self.predictor = predictor
        self._body = body
        self._features = request
        self.vector: features.Vector | None = None
        self.scores: dict[str, float] | None = None

    def __call__(self) -> Mapping[str, float]:
        if self.scores is None:
            self.vector = features.vector(self._body, self._features)
            self.scores = self.predictor.predict(self.vector)
        return self.scores


def probe_for(predictor: Predictor | None, body: Mapping[str, Any], request: Features) -> QualityProbe | None:
    """A probe when the policy has a predictor (its rules may route on predicted quality), else None."""
    return QualityProbe(predictor, body, request) if predictor is not None else None
