"""The metrics of learned routing on hand-computed examples, and the quality-versus-cost plot."""

from __future__ import annotations

import itertools
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from gateway.learning.metrics import (
    DEFAULT_SHARES,
    apgr,
    apgr_along_cost,
    cost_quality_frontier,
    cpt,
    default_knobs,
    operating_points,
    pgr_curve,
)
from gateway.learning.plot import plot_quality_cost

pytestmark = pytest.mark.pure

# Oracle example: gains (strong - weak) are 1, 0.5, -0.5, 0; the total gain is 1.
WEAK = np.array([0.0, 0.0, 1.0, 0.5])
STRONG = np.array([1.0, 0.5, 0.5, 0.5])

# Tie example: a rule-based router with two distinct scores; gains 0.8, 0, 0, 0.5, 0 (total 1.3).
TIE_SCORES = np.array([0.9, 0.9, 0.2, 0.2, 0.2])
TIE_WEAK = np.array([0.2, 0.4, 0.6, 0.5, 0.3])
TIE_STRONG = np.array([1.0, 0.4, 0.6, 1.0, 0.3])
TIE_WEAK_COST = np.array([1.0, 2.0, 1.0, 2.0, 1.0])
TIE_STRONG_COST = np.array([10.0, 20.0, 10.0, 20.0, 10.0])


def test_a_constant_router_is_random_routing() -> None:
    rng = np.random.default_rng(3)
    weak = rng.uniform(0, 0.7, 200)
    strong = rng.uniform(0.3, 1, 200)
    curve = pgr_curve(np.full(200, 0.42), weak, strong)
    assert curve.share.tolist() == [0.0, 1.0]
    assert curve.pgr.tolist() == [0.0, 1.0]
    assert apgr(curve) == 0.5
    assert curve.quality_weak == pytest.approx(weak.mean())
    assert curve.quality_strong == pytest.approx(strong.mean())
    assert cpt(curve, 0.5) == pytest.approx(0.5)


def test_the_oracle_ordering_by_hand() -> None:
    curve = pgr_curve(STRONG - WEAK, WEAK, STRONG)
    # Ranked gains 1, 0.5, 0, -0.5: cumulative 0, 1, 1.5, 1.5, 1.
    assert curve.share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.pgr.tolist() == [0.0, 1.0, 1.5, 1.5, 1.0]
    assert curve.quality.tolist() == pytest.approx([0.375, 0.625, 0.75, 0.75, 0.625])
    # 0.25 * (0 + 1) / 2 + 0.25 * (1 + 1.5) / 2 + 0.25 * (1.5 + 1.5) / 2 + 0.25 * (1.5 + 1) / 2
    assert apgr(curve) == pytest.approx(9 / 8)


def test_tied_scores_by_hand() -> None:
    curve = pgr_curve(TIE_SCORES, TIE_WEAK, TIE_STRONG)
    assert curve.share.tolist() == [0.0, 0.4, 1.0]
    assert curve.pgr.tolist() == pytest.approx([0.0, 8 / 13, 1.0])
    assert curve.quality.tolist() == pytest.approx([0.4, 0.56, 0.66])
    # 0.4 * (8/13) / 2 + 0.6 * (8/13 + 1) / 2
    assert apgr(curve) == pytest.approx(79 / 130)


def test_inside_a_run_of_ties_the_curve_is_the_expectation_over_tie_breaks() -> None:
    n = len(TIE_SCORES)
    groups = [[0, 1], [2, 3, 4]]
    quality: dict[int, list[float]] = {k: [] for k in range(n + 1)}
    for first, second in itertools.product(itertools.permutations(groups[0]), itertools.permutations(groups[1])):
        ranked = [*first, *second]
        for k in range(n + 1):
            routed = np.where(np.isin(np.arange(n), ranked[:k]), TIE_STRONG, TIE_WEAK)
            quality[k].append(float(routed.mean()))
    points = operating_points(TIE_SCORES, TIE_WEAK, TIE_STRONG, TIE_WEAK_COST, TIE_STRONG_COST,
                              shares=[k / n for k in range(n + 1)])
    assert [p.quality for p in points] == pytest.approx([float(np.mean(quality[k])) for k in range(n + 1)])


def test_cpt_by_hand() -> None:
    curve = pgr_curve(STRONG - WEAK, WEAK, STRONG)
    assert cpt(curve, 0.0) == 0.0
    assert cpt(curve, 0.5) == pytest.approx(0.125)
    assert cpt(curve, 1.0) == pytest.approx(0.25)
    assert cpt(curve, 1.2) == pytest.approx(0.35)  # 0.25 + (0.2 / 0.5) * 0.25
    assert cpt(curve, 1.5) == pytest.approx(0.5)
    assert cpt(curve, 1.6) is None
    ties = pgr_curve(TIE_SCORES, TIE_WEAK, TIE_STRONG)
    assert cpt(ties, 0.5) == pytest.approx(0.4 * 0.5 / (8 / 13))
    assert cpt(ties, 0.8) == pytest.approx(0.4 + 0.6 * (0.8 - 8 / 13) / (5 / 13))


def test_operating_points_by_hand() -> None:
    points = operating_points(TIE_SCORES, TIE_WEAK, TIE_STRONG, TIE_WEAK_COST, TIE_STRONG_COST,
                              shares=(0.0, 0.2, 0.4, 0.6, 1.0))
    assert [p.share for p in points] == [0.0, 0.2, 0.4, 0.6, 1.0]
    # Mean weak cost 1.4; extra cost of the strong model 9, 18, 9, 18, 9 per prompt. At 0.2 half of the
    # first run (27) is expected, at 0.6 all of it and a third of the second run (36).
    assert [p.cost_per_1k for p in points] == pytest.approx([1400, 4100, 6800, 9200, 14000])
    assert [p.quality for p in points] == pytest.approx([0.4, 0.48, 0.56, 0.4 + (0.8 + 0.5 / 3) / 5, 0.66])
    assert [p.pgr for p in points] == pytest.approx([0.0, 4 / 13, 8 / 13, 29 / 39, 1.0])
    default = operating_points(TIE_SCORES, TIE_WEAK, TIE_STRONG, TIE_WEAK_COST, TIE_STRONG_COST)
    assert [p.share for p in default] == list(DEFAULT_SHARES)
    assert DEFAULT_SHARES[0] == 0.0 and DEFAULT_SHARES[-1] == 1.0 and len(DEFAULT_SHARES) == 11
    with pytest.raises(ValueError, match="outside"):
        operating_points(TIE_SCORES, TIE_WEAK, TIE_STRONG, TIE_WEAK_COST, TIE_STRONG_COST, shares=(1.5,))


def test_pgr_is_undefined_when_the_strong_model_is_not_better() -> None:
    with pytest.raises(ValueError, match="PGR is undefined"):
        pgr_curve(np.array([0.1, 0.2]), np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="PGR is undefined"):
        operating_points(np.array([0.1, 0.2]), STRONG[:2], WEAK[:2], np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="prompts"):
        pgr_curve(np.array([0.1, 0.2]), WEAK, STRONG)


def test_the_frontier_routes_by_predicted_quality_minus_cost_ties_to_the_cheaper_model() -> None:
    pred = np.array([[0.5, 0.5, 0.9], [0.7, 0.7, 0.7]])
    true = np.array([[0.2, 0.6, 0.8], [0.4, 0.9, 0.1]])
    cost = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    # Crossings of the first prompt: model 2 over 0 at 0.4 / 2, over 1 at 0.4 / 1.
    knobs = default_knobs(pred, cost)  # 0, between the crossings, twice the last
    assert len(knobs) == 3 and np.allclose(knobs, [0.0, 0.3, 0.8])
    # At 0 the first prompt goes to model 2 and the second, tied everywhere, to the cheapest; from 0.3 on both
    # go to model 0.
    assert np.allclose(cost_quality_frontier(pred, true, cost), [(2.0, 0.6), (1.0, 0.3), (1.0, 0.3)])
    assert np.allclose(cost_quality_frontier(pred, true, cost, knobs=[0.1]), [(2.0, 0.6)])
    with pytest.raises(ValueError, match="knob"):
        cost_quality_frontier(pred, true, cost, knobs=[-1.0])


@pytest.mark.parametrize("example", ["ties", "random"])
def test_the_frontier_of_two_models_is_the_two_model_curve(example: str) -> None:
    if example == "ties":
        scores, weak, strong = TIE_SCORES, TIE_WEAK, TIE_STRONG
    else:
        rng = np.random.default_rng(11)
        weak = rng.uniform(0, 1, 300)
        strong = np.maximum(weak, rng.uniform(0, 1, 300))  # never worse: PGR rises with the share
        scores = np.round(strong - weak + rng.normal(0, 0.2, 300), 1) + 2  # noisy, tied, positive
    n = len(weak)
    pred = np.column_stack([np.zeros(n), scores])
    true = np.column_stack([weak, strong])
    cost = np.column_stack([np.full(n, 1.5), np.full(n, 6.0)])
    points = cost_quality_frontier(pred, true, cost)
    assert points[0] == pytest.approx((6.0, strong.mean()))  # cost ignored: all on the strong model
    assert points[-1] == pytest.approx((1.5, weak.mean()))  # all on the cheapest
    along_cost = apgr_along_cost(points, (1.5, float(weak.mean())), (6.0, float(strong.mean())))
    assert along_cost == pytest.approx(apgr(pgr_curve(scores, weak, strong)), abs=1e-12)


def test_apgr_along_cost_of_random_mixing_is_one_half() -> None:
    cheapest, dearest = (2.0, 0.3), (10.0, 0.8)
    diagonal = [(2.0 + t * 8.0, 0.3 + t * 0.5) for t in (0.0, 0.1, 0.35, 0.8, 1.0)]
    assert apgr_along_cost(diagonal, cheapest, dearest) == pytest.approx(0.5)
    assert apgr_along_cost([], cheapest, dearest) == pytest.approx(0.5)


def test_apgr_along_cost_takes_the_non_decreasing_envelope_by_hand() -> None:
    cheapest, dearest = (0.0, 0.0), (10.0, 1.0)
    # Normalised: (0.5, 0.8); (0.7, 0.6) counts as 0.8; (1.5, 1.2) is clipped to cost 1 and beats (1, 1);
    # (-1, -0.5) is clipped to cost 0 and loses to (0, 0).
    points = [(5.0, 0.8), (7.0, 0.6), (15.0, 1.2), (-10.0, -0.5)]
    # 0.5 * 0.8 / 2 + 0.2 * 0.8 + 0.3 * (0.8 + 1.2) / 2
    assert apgr_along_cost(points, cheapest, dearest) == pytest.approx(0.66)
    with pytest.raises(ValueError, match="PGR is undefined"):
        apgr_along_cost(points, (0.0, 0.5), (10.0, 0.5))
    with pytest.raises(ValueError, match="mean cost"):
        apgr_along_cost(points, (10.0, 0.0), (10.0, 1.0))


def _plot(path: Path) -> None:
    plot_quality_cost(
        {"learned": ([1400.0, 6800.0, 14000.0], [0.4, 0.56, 0.66]), "random": ([1400.0, 14000.0], [0.4, 0.66])},
        path,
        "quality against cost",
        markers={"all weak": (1400.0, 0.4), "all strong": (14000.0, 0.66)},
    )


def test_the_plot_writes_a_deterministic_svg(tmp_path: Path) -> None:
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    _plot(first)
    _plot(second)
    assert ET.parse(first).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert first.read_bytes() == second.read_bytes()


def test_the_plot_writes_a_png_and_refuses_other_formats(tmp_path: Path) -> None:
    _plot(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        _plot(tmp_path / "a.pdf")
    assert not (tmp_path / "a.pdf").exists()


def test_importing_the_plot_module_does_not_import_matplotlib() -> None:
    code = "import sys, gateway.learning.plot; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
