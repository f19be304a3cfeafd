"""The quality-versus-cost plot of routers, as SVG or PNG.

matplotlib is an optional dependency (the extra `train`): it is imported inside the function, and only
its object-oriented API is used (a Figure, no pyplot), so no global backend is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

FORMATS = {".svg": "svg", ".png": "png"}
SVG_HASH_SALT = "gateway.learning.plot"  # fixed, so the SVG's element ids (and bytes) repeat


def plot_quality_cost(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    title: str,
    markers: Mapping[str, tuple[float, float]] | None = None,
    xlabel: str = "cost per 1,000 calls",
) -> None:
    """Write mean quality against cost per 1,000 calls to `path`, in the format of its suffix (.svg or .png).

    `curves` maps a router's name to its points as (costs per 1,000 calls, mean qualities), drawn as one
    line in the given order; `markers` maps a label to a single point, e.g. "all weak", "all strong".
    `xlabel` names the horizontal axis (another quantity, e.g. the share of strong calls, may stand there).
    The same input gives the same SVG bytes. Raises ValueError for another suffix or a curve whose two
    sequences differ in length.
    """
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: the plot's format follows the suffix, which must be .svg or .png")
    for name, (costs, qualities) in curves.items():
        if len(costs) != len(qualities):
            raise ValueError(f"curve {name!r} has {len(costs)} costs and {len(qualities)} qualities")

    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, (costs, qualities) in curves.items():
        ax.plot(costs, qualities, marker="o", markersize=3, linewidth=1.5, label=name)
    for name, (cost, quality) in (markers or {}).items():
        ax.plot([cost], [quality], marker="D", markersize=7, linestyle="none", label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean quality")
    ax.grid(alpha=0.3)
    if curves or markers:
        ax.legend(loc="lower right")
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
