"""IQM and stratified bootstrap CIs (rliable's protocol), and the captured share of a frontier's headroom."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gistgym.agents.compare import captured_share, curve_at, frontier_at, headroom_grid
from gistgym.agents.stats import iqm, stratified_bootstrap_ci, trimmed_mean


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1, 2, 3, 4], 2.5),  # floor(4 / 4) = 1 cut at each end: mean(2, 3)
        ([1, 2, 3, 4, 100, 5, 6, 7], 4.5),  # 2 cut at each end of 1..7, 100: mean(3, 4, 5, 6)
        ([1, 2, 10], 13 / 3),  # floor(3 / 4) = 0: nothing is cut
        ([1, 2, 3, 4, 100], 3.0),  # 1 cut at each end: mean(2, 3, 4)
        ([7.0], 7.0),
        ([[4, 1], [3, 2]], 2.5),  # every value, flattened (axis=None)
    ],
)
def test_iqm_is_scipy_trim_mean_at_a_quarter(values: list[float], expected: float) -> None:
    assert iqm(values) == pytest.approx(expected)


def test_trimmed_mean_cuts_floor_of_the_proportion() -> None:
    assert trimmed_mean(list(range(10)), 0.1) == pytest.approx(4.5)  # 1 cut: mean(1..8)
    assert trimmed_mean([0, 0, 0, 9], 0.2) == pytest.approx(2.25)  # floor(0.8) = 0: nothing cut
    with pytest.raises(ValueError, match="no values"):
        iqm([])
    with pytest.raises(ValueError, match="proportion"):
        trimmed_mean([1, 2], 0.5)


def test_bootstrap_ci_is_deterministic_per_seed_and_contains_the_estimate() -> None:
    scores = np.array([0.61, 0.64, 0.70, 0.72, 0.80])[:, None]
    a = stratified_bootstrap_ci(scores, iqm, seed=3)
    assert a == stratified_bootstrap_ci(scores, iqm, seed=3)
    assert a != stratified_bootstrap_ci(scores, iqm, seed=4)
    assert 0.61 <= a[0] <= iqm(scores) <= a[1] <= 0.80
    wider = stratified_bootstrap_ci(scores, iqm, seed=3, alpha=0.01)
    assert wider[0] <= a[0] and wider[1] >= a[1]


def test_bootstrap_ci_hand_computed() -> None:
    # constant scores: every resample is the same, the interval is a point
    lo, hi = stratified_bootstrap_ci(np.full((4, 2), 0.3), iqm)
    assert lo == hi == pytest.approx(0.3)
    # one run: a point at its value
    assert stratified_bootstrap_ci([0.42], iqm) == pytest.approx((0.42, 0.42))
    # two runs 0 and 1, mean: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4, so the
    # 2.5 % and 97.5 % quantiles of 2000 replicates are the extremes
    assert stratified_bootstrap_ci([0.0, 1.0], np.mean) == (0.0, 1.0)


def test_bootstrap_resamples_runs_within_each_task() -> None:
    # task 0 holds 0..2, task 1 holds 10..12: a resample never moves a value to the other task,
    # and each task keeps its number of runs
    scores = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]])

    def check(x: np.ndarray) -> float:
        return float(x.shape == (3, 2) and (x[:, 0] <= 2).all() and (x[:, 1] >= 10).all())

    assert stratified_bootstrap_ci(scores, check, reps=300) == (1.0, 1.0)
    with pytest.raises(ValueError, match="reps"):
        stratified_bootstrap_ci(scores, iqm, reps=0)
    with pytest.raises(ValueError, match="alpha"):
        stratified_bootstrap_ci(scores, iqm, alpha=1.0)
    with pytest.raises(ValueError, match="non-empty"):
        stratified_bootstrap_ci(np.zeros((0, 1)), iqm)


def flat(y: float, lo: float = 0.0, hi: float = 1.0) -> list[tuple[float, float]]:
    return [(lo, y), (hi, y)]


def test_captured_share_of_flat_curves() -> None:
    grid = headroom_grid()
    assert len(grid) == 46 and grid[0] == 0.05 and grid[-1] == 0.5
    # fixed 0.8, frontier 0.9, learned 0.85: half the headroom
    c = captured_share(flat(0.85, 0.05, 0.5), flat(0.8), [flat(0.9)])
    assert c["captured"] == pytest.approx(0.5)
    assert c["mean_gap"] == pytest.approx(0.05) and c["max_gap"] == pytest.approx(0.05)
    assert c["mean_headroom"] == pytest.approx(0.1)
    assert c["covered"] == [0.05, 0.5] and c["fractions"] == 46
    # only where every curve is defined: a learned curve from 10 % to 20 % uses 11 fractions
    c = captured_share(flat(0.9, 0.1, 0.2), flat(0.8), [flat(0.9)])
    assert c["covered"] == [0.1, 0.2] and c["fractions"] == 11 and c["captured"] == pytest.approx(1.0)
    # below the fixed curve the share is negative
    assert captured_share(flat(0.75), flat(0.8), [flat(0.9)])["captured"] == pytest.approx(-0.5)


def test_captured_share_is_a_ratio_of_means() -> None:
    # at 0.1: gap 0.1 of headroom 0.1; at 0.2: gap 0 of headroom 0.4 -> 0.05 / 0.25 = 0.2
    # (the mean of the ratios would be 0.5)
    c = captured_share([(0.1, 0.6), (0.2, 0.5)], flat(0.5), [[(0.1, 0.6), (0.2, 0.9)]], span=(0.1, 0.2), step=0.1)
    assert c["fractions"] == 2 and c["captured"] == pytest.approx(0.2)
    assert c["max_gap"] == pytest.approx(0.1) and c["max_gap_at"] == pytest.approx(0.1)


def test_captured_share_without_overlap_or_headroom_is_nan() -> None:
    c = captured_share(flat(0.9, 0.6, 0.7), flat(0.8), [flat(0.9)])
    assert math.isnan(c["captured"]) and c["covered"] is None and c["fractions"] == 0
    assert math.isnan(captured_share(flat(0.9), flat(0.8), [flat(0.8)])["captured"])  # no headroom
    assert captured_share([], flat(0.8), [flat(0.9)])["fractions"] == 0


def test_frontier_is_the_best_family_envelope_within_its_range() -> None:
    a = [(0.1, 0.6), (0.3, 0.6)]
    b = [(0.2, 0.9), (0.4, 0.9)]
    got = frontier_at([a, b], [0.05, 0.15, 0.25, 0.4, 0.45])
    # 0.15: only a (0.6) and the pooled envelope (0.6 -> 0.9 between 0.1 and 0.2: 0.75) cover it
    assert math.isnan(got[0]) and math.isnan(got[4])
    np.testing.assert_allclose(got[1:4], [0.75, 0.9, 0.9])
    # a family's envelope never dips: more budget can do what less did
    assert frontier_at([[(0.1, 0.7), (0.2, 0.5)]], [0.2])[0] == pytest.approx(0.7)


def test_curve_at_extends_flat_or_not_at_all() -> None:
    points = [(0.5, 0.8), (0.1, 0.6), (0.1, 0.5)]  # the best score per fraction
    np.testing.assert_allclose(curve_at(points, [0.0, 0.3, 1.0]), [0.6, 0.7, 0.8])
    got = curve_at(points, [0.0, 0.3, 1.0], extrapolate=False)
    assert math.isnan(got[0]) and got[1] == pytest.approx(0.7) and math.isnan(got[2])
