"""The evaluation metrics of learned routing (RouteLLM, arXiv 2406.18665).

Two models: a router gives each prompt a score and the top share p of prompts by score goes to the strong
model. `pgr_curve` gives the mean quality and the PGR (performance gap recovered) along p, `apgr` the area
under it, `cpt` the share of strong calls a PGR needs, `operating_points` quality and cost at chosen shares.
More models: `cost_quality_frontier` sweeps the knob λ of argmax(predicted quality - λ·cost), and
`apgr_along_cost` is the same area with the normalised cost as the horizontal axis.

Tied scores are broken uniformly at random and every curve is the expectation over that draw: within a
run of tied scores the gain grows linearly with the share, so each curve is piecewise linear with its
breakpoints at the ends of the runs, and a constant score (random routing) gives an APGR of exactly 0.5.

Costs here are statistics for a report and a plot, so they are floats (money elsewhere is Decimal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

DEFAULT_SHARES: tuple[float, ...] = tuple(i / 10 for i in range(11))


@dataclass(frozen=True, eq=False)
class Curve:
    """Quality and PGR along the share of calls sent to the strong model, at the curve's breakpoints.

    `share` runs from 0 through the end of each run of tied scores to 1; between two breakpoints the
    expected curve is the straight line between them. The arrays are read-only.
    """

    share: Array
    quality: Array  # mean quality of the mix
    pgr: Array  # (quality - quality_weak) / (quality_strong - quality_weak)
    quality_weak: float  # every prompt on the weak model
    quality_strong: float  # every prompt on the strong model


@dataclass(frozen=True)
class Point:
    """One operating point of a two-model router."""

    share: float  # of calls sent to the strong model
    quality: float
    pgr: float
    cost_per_1k: float  # mean cost of the mix per call, times 1,000


def pgr_curve(scores: npt.ArrayLike, weak: npt.ArrayLike, strong: npt.ArrayLike) -> Curve:
    """The expected quality and PGR curve of a router's `scores` (highest first to the strong model).

    `weak` and `strong` are each prompt's score on the two models. Raises ValueError when the strong
    model's mean quality is not above the weak model's: PGR divides by that gap, so it is undefined.
    """
    s, w, st = _vectors(scores=scores, weak=weak, strong=strong)
    counts, (gain,) = _cumulative(s, st - w)
    return _curve(counts, gain, w, st)


def apgr(curve: Curve) -> float:
    """The area under PGR over the share in [0, 1]: 0.5 for random routing, 1 for the ideal step.

    The trapezoid rule over the breakpoints, exact for the piecewise-linear expected curve.
    """
    return _area(curve.share, curve.pgr)


def cpt(curve: Curve, x: float) -> float | None:
    """The smallest share of strong calls at which PGR reaches `x` (CPT(50%) is `cpt(curve, 0.5)`).

    Interpolated linearly inside the segment where the curve first reaches `x`; None when it never does.
    """
    if not np.isfinite(x):
        raise ValueError(f"CPT of a non-finite PGR ({x})")
    reached = np.flatnonzero(curve.pgr >= x)
    if reached.size == 0:
        return None
    i = int(reached[0])
    if i == 0:
        return float(curve.share[0])
    p0, p1 = curve.share[i - 1], curve.share[i]
    y0, y1 = curve.pgr[i - 1], curve.pgr[i]  # y0 < x <= y1
    return float(p0 + (x - y0) / (y1 - y0) * (p1 - p0))


def operating_points(
    scores: npt.ArrayLike,
    weak: npt.ArrayLike,
    strong: npt.ArrayLike,
    weak_cost: npt.ArrayLike,
    strong_cost: npt.ArrayLike,
    shares: Sequence[float] = DEFAULT_SHARES,
) -> list[Point]:
    """Quality, PGR and cost per 1,000 calls at each share of strong calls in `shares`.

    `weak_cost` and `strong_cost` are the cost of answering each prompt on each model. Between
    breakpoints (inside a run of tied scores) quality and cost are the expectations, as in `pgr_curve`.
    Raises ValueError when PGR is undefined (see `pgr_curve`) or a share is outside [0, 1].
    """
    s, w, st, wc, sc = _vectors(scores=scores, weak=weak, strong=strong, weak_cost=weak_cost, strong_cost=strong_cost)
    counts, (gain, extra_cost) = _cumulative(s, st - w, sc - wc)
    curve = _curve(counts, gain, w, st)
    n = len(s)
    base_cost = float(wc.mean())
    points = []
    for p in shares:
        if not 0 <= p <= 1:
            raise ValueError(f"share of strong calls {p} is outside [0, 1]")
        cost = base_cost + float(np.interp(p, curve.share, extra_cost)) / n
        points.append(Point(
            share=float(p),
            quality=float(np.interp(p, curve.share, curve.quality)),
            pgr=float(np.interp(p, curve.share, curve.pgr)),
            cost_per_1k=cost * 1000,
        ))
    return points


def cost_quality_frontier(
    pred: npt.ArrayLike,
    true: npt.ArrayLike,
    cost: npt.ArrayLike,
    knobs: Sequence[float] | None = None,
) -> list[tuple[float, float]]:
    """(mean cost, mean true quality) of routing each prompt to argmax(pred - λ·cost), for each λ in `knobs`.

    `pred`, `true` and `cost` are (prompts, models) arrays: predicted quality, true score, cost per prompt.
    Among equal values the cheaper model wins (then the lower index). The points follow the order of
    `knobs`; None means `default_knobs(pred, cost)`.
    """
    p, t, c = _matrices(pred=pred, true=true, cost=cost)
    rows = np.arange(p.shape[0])
    points = []
    for knob in default_knobs(p, c) if knobs is None else knobs:
        if not (np.isfinite(knob) and knob >= 0):
            raise ValueError(f"knob λ must be a finite number >= 0, not {knob}")
        value = p - knob * c
        best = value == value.max(axis=1, keepdims=True)
        choice = np.argmin(np.where(best, c, np.inf), axis=1)
        points.append((float(c[rows, choice].mean()), float(t[rows, choice].mean())))
    return points


def default_knobs(pred: npt.ArrayLike, cost: npt.ArrayLike, count: int = 201) -> tuple[float, ...]:
    """A sweep of λ, ascending, that reaches every routing argmax(pred - λ·cost) can make, if `count` allows.

    A prompt changes model only where the lines of two models cross (λ = Δpred / Δcost): the sweep is 0
    (cost ignored), one λ between each two consecutive crossings, and twice the largest crossing (every
    prompt on its cheapest model). With more than `count` - 1 crossings it keeps an even subset of them.
    """
    p, c = _matrices(pred=pred, cost=cost)
    if count < 2:
        raise ValueError(f"a sweep needs at least 2 knobs, not {count}")
    found = [np.empty(0)]
    for j in range(p.shape[1]):
        for k in range(j + 1, p.shape[1]):
            d_pred, d_cost = p[:, k] - p[:, j], c[:, k] - c[:, j]
            dearer_is_better = ((d_cost > 0) & (d_pred > 0)) | ((d_cost < 0) & (d_pred < 0))
            found.append(d_pred[dearer_is_better] / d_cost[dearer_is_better])
    crossings = np.unique(np.concatenate(found))
    if crossings.size == 0:
        return (0.0,)
    if crossings.size > count - 1:
        crossings = np.unique(crossings[np.linspace(0, crossings.size - 1, count - 1).round().astype(np.intp)])
    between = (crossings[1:] + crossings[:-1]) / 2
    return (0.0, *(float(x) for x in between), 2 * float(crossings[-1]))


def apgr_along_cost(
    points: Sequence[tuple[float, float]],
    cheapest: tuple[float, float],
    dearest: tuple[float, float],
) -> float:
    """APGR with cost as the horizontal axis, for routers over more than two models.

    `points` are (mean cost, mean quality), e.g. from `cost_quality_frontier`; `cheapest` and `dearest`
    are those of sending every prompt to the cheapest and to the dearest model. Cost is normalised to
    [0, 1] between theirs (and clipped to it), quality to PGR between theirs. The curve is the upper
    envelope of the points with (0, 0) and (1, 1): the best PGR at each cost, made non-decreasing (a
    dearer point never counts below a cheaper one), straight between points. Sending each prompt to the
    dearest model with probability t, else to the cheapest, lies on the diagonal: random mixing gives 0.5.
    Raises ValueError unless the dearest model costs more and scores higher than the cheapest.
    """
    (c0, q0), (c1, q1) = cheapest, dearest
    if not c1 > c0:
        raise ValueError(f"the dearest model's mean cost ({c1}) is not above the cheapest's ({c0})")
    if not q1 > q0:
        raise ValueError(f"PGR is undefined: the dearest model's mean quality ({q1}) is not above the cheapest's "
                         f"({q0})")
    xy = np.array([(0.0, 0.0), (1.0, 1.0), *(((c - c0) / (c1 - c0), (q - q0) / (q1 - q0)) for c, q in points)])
    if not np.isfinite(xy).all():
        raise ValueError("a point's cost or quality is not finite")
    x, y = np.clip(xy[:, 0], 0.0, 1.0), xy[:, 1]
    order = np.lexsort((-y, x))  # by cost, the best quality first among equal costs
    x, y = x[order], y[order]
    best_at_cost = np.concatenate(([True], x[1:] != x[:-1]))
    return _area(x[best_at_cost], np.maximum.accumulate(y[best_at_cost]))


def _curve(counts: Array, gain: Array, weak: Array, strong: Array) -> Curve:
    """The curve from the cumulative gain (strong - weak) at each breakpoint of `counts` prompts."""
    n = len(weak)
    quality_weak, quality_strong = float(weak.mean()), float(strong.mean())
    total = float(gain[-1])
    if not (quality_strong > quality_weak and total > 0):
        raise ValueError(
            f"PGR is undefined: the strong model's mean quality ({quality_strong:.6g}) "
            f"is not above the weak model's ({quality_weak:.6g})"
        )
    return Curve(
        share=_frozen(counts / n),
        quality=_frozen(quality_weak + gain / n),
        pgr=_frozen(gain / total),
        quality_weak=quality_weak,
        quality_strong=quality_strong,
    )


def _cumulative(scores: Array, *values: Array) -> tuple[Array, list[Array]]:
    """The breakpoints as prompt counts, and each of `values` summed over the prompts ranked by score there.

    The breakpoints are 0 prompts, the end of each run of tied scores, and all n prompts.
    """
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    ends = np.flatnonzero(ranked[1:] != ranked[:-1]) + 1
    counts = np.concatenate(([0], ends, [len(scores)]))
    sums = [np.concatenate(([0.0], np.cumsum(v[order])))[counts] for v in values]
    return counts.astype(np.float64), sums


def _area(x: Array, y: Array) -> float:
    """Trapezoid rule: exact for the piecewise-linear curve through (x, y)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)


def _frozen(a: Array) -> Array:
    a.setflags(write=False)
    return a


def _vectors(**named: npt.ArrayLike) -> list[Array]:
    """The arrays as float64 vectors, checked: one dimension, the same non-zero length, finite."""
    return _checked(1, **named)


def _matrices(**named: npt.ArrayLike) -> list[Array]:
    """The arrays as float64 (prompts, models) matrices, checked: the same non-empty shape, finite."""
    return _checked(2, **named)


def _checked(ndim: int, **named: npt.ArrayLike) -> list[Array]:
    arrays = [np.asarray(a, dtype=np.float64) for a in named.values()]
    first = next(iter(named))
    for name, a in zip(named, arrays, strict=True):
        if a.ndim != ndim or a.size == 0:
            what = "a non-empty vector" if ndim == 1 else "a non-empty (prompts, models) array"
            raise ValueError(f"{name} must be {what}, not of shape {a.shape}")
        if a.shape != arrays[0].shape:
            if ndim == 1:
                raise ValueError(f"{name} has {a.size} prompts, {first} has {arrays[0].size}")
            raise ValueError(f"{name} has shape {a.shape}, {first} has {arrays[0].shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds a value that is not finite")
    return arrays
