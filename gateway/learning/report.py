"""An evaluation as text, as one JSON document, and as a quality-versus-cost plot.

The same figures in each; no prompt text in any of them.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.learning.evaluate import SHARES, Evaluation
from gateway.learning.plot import plot_quality_cost
from router.pricing import format_money

__all__ = ["as_json", "as_text", "plot"]


def _pct(share: float | None) -> str:
    return "never" if share is None else f"{share * 100:.1f}%"


def _cost(value: float) -> str:
    """A cost statistic (a mean over rows, computed in floats for the curves) at the CLI's one money precision."""
    return format_money(Decimal(str(float(value))))


def _split(ev: Evaluation) -> str:
    if ev.holdout > 0:
        return f"held out {ev.holdout:g} of the prompts (seed {ev.seed}): {ev.split_rows} rows"
    return f"no holdout: all {ev.split_rows} rows"


def as_text(ev: Evaluation) -> str:
    p = ev.predictor
    pair = f"`{ev.weak}` and `{ev.strong}`" if len(ev.models) == 2 else f"all of {', '.join(ev.models)}"
    costs = (f"cost per 1,000 calls in {ev.currency} (floats, for a report)" if ev.currency
             else f"costs n/a (no price for {', '.join(ev.unpriced)})")
    width = 18 if ev.currency else 7
    lines = [
        f"predictor {p.name} (heads: {', '.join(p.heads)}); weak `{ev.weak}`, strong `{ev.strong}`",
        f"data: {ev.rows} rows; {_split(ev)}; {ev.used_rows} scored for {pair}",
        f"ridge baseline fitted on {ev.ridge_rows} rows; mean quality all-weak {ev.quality_weak:.4f}, "
        f"all-strong {ev.quality_strong:.4f}; {costs}",
        *(f"WARNING: {w}" for w in ev.warnings),
        *(f"note: {n}" for n in ev.notes),
        "",
        f"{'router':<8} {'APGR':>6} {'CPT(50%)':>9} {'CPT(80%)':>9}   "
        f"{'quality / cost per 1,000 calls' if ev.currency else 'quality'} at this share of strong calls",
        f"{'':<8} {'':>6} {'':>9} {'':>9}   " + " ".join(f"{f'{s * 100:.0f}%':<{width}}" for s in SHARES).rstrip(),
    ]
    for r in ev.results:
        cells = [f"{pt.quality:.3f} / {_cost(pt.cost_per_1k)}" if ev.currency else f"{pt.quality:.3f}"
                 for pt in r.points]
        lines.append(f"{r.name:<8} {r.apgr:>6.3f} {_pct(r.cpt50):>9} {_pct(r.cpt80):>9}   "
                     + " ".join(f"{c:<{width}}" for c in cells).rstrip())
    a = ev.along_cost
    if a is not None:
        lines += [
            "",
            f"over all {len(ev.models)} models, APGR along cost (from all `{a.cheapest}` to all `{a.dearest}`): "
            + ", ".join(f"{name} {value:.3f}" for name, value in a.apgr.items()),
            "  every prompt on one model: " + ", ".join(
                f"{m} {q:.3f} / {_cost(c * 1000)}" for m, (c, q) in a.models.items()),
        ]
    return "\n".join(lines)


def _r(x: float) -> float:
    return round(x, 6)


def as_json(ev: Evaluation, plot_path: Path | None) -> dict[str, Any]:
    p = ev.predictor
    a = ev.along_cost
    return {
        "predictor": {"name": p.name, "sha256": p.hash, "heads": list(p.heads)},
        "models": ev.models,
        "weak": ev.weak,
        "strong": ev.strong,
        "split": {"holdout": ev.holdout, "seed": ev.seed},
        "rows": {"data": ev.rows, "evaluated": ev.split_rows, "scored": ev.used_rows, "ridge_training": ev.ridge_rows},
        "quality": {"weak": _r(ev.quality_weak), "strong": _r(ev.quality_strong)},
        "currency": ev.currency,
        "unpriced": ev.unpriced,
        "routers": {
            r.name: {
                "apgr": _r(r.apgr),
                "cpt50": None if r.cpt50 is None else _r(r.cpt50),
                "cpt80": None if r.cpt80 is None else _r(r.cpt80),
                "points": [{"share": pt.share, "quality": _r(pt.quality), "pgr": _r(pt.pgr),
                            "cost_per_1k": _r(pt.cost_per_1k) if ev.currency else None} for pt in r.points],
            }
            for r in ev.results
        },
        "along_cost": None if a is None else {
            "cheapest": a.cheapest,
            "dearest": a.dearest,
            "apgr": {name: _r(v) for name, v in a.apgr.items()},
            "models": {m: {"cost_per_1k": _r(c * 1000), "quality": _r(q)} for m, (c, q) in a.models.items()},
        },
        "warnings": ev.warnings,
        "notes": ev.notes,
        "plot": None if plot_path is None else str(plot_path),
    }


def plot(ev: Evaluation, path: Path) -> None:
    """Each router's operating points, and the all-weak / all-strong (all-one-model) markers."""
    priced = ev.currency is not None

    def x(share: float, cost_per_1k: float) -> float:
        return cost_per_1k if priced else share * 100

    curves = {r.name: ([x(pt.share, pt.cost_per_1k) for pt in r.curve], [pt.quality for pt in r.curve])
              for r in ev.results}
    first, last = ev.results[0].curve[0], ev.results[0].curve[-1]
    markers = {f"all {ev.weak}": (x(0.0, first.cost_per_1k), ev.quality_weak),
               f"all {ev.strong}": (x(1.0, last.cost_per_1k), ev.quality_strong)}
    a = ev.along_cost
    if a is not None:
        for name in ("learned", "oracle"):
            points = sorted(a.frontiers[name])
            curves[f"{name}, all models"] = ([c * 1000 for c, _ in points], [q for _, q in points])
        markers.update({f"all {m}": (c * 1000, q) for m, (c, q) in a.models.items()})
    xlabel = f"cost per 1,000 calls ({ev.currency})" if priced else f"share of calls to {ev.strong} (%)"
    split = "held-out " if ev.holdout > 0 else ""
    title = f"{' vs '.join(ev.models)} on {ev.used_rows} {split}prompts"
    plot_quality_cost(curves, path, title, markers, xlabel=xlabel)
