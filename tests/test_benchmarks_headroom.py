"""``benchmarks/headroom.py`` and ``benchmarks/signals.py``: their arithmetic by hand, and one run each on a tiny cache.

The scripts are not a package; they are loaded from their files as a user runs them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_script

headroom = load_script("headroom")
signals = load_script("signals")


# --- arithmetic -----------------------------------------------------------------------------
def test_envelope_is_the_running_best_by_fraction() -> None:
    xs, ys = headroom.envelope([(0.5, 0.52), (0.05, 0.55), (0.25, 0.60), (0.20, 0.58)])
    assert xs.tolist() == [0.05, 0.20, 0.25, 0.5]
    assert ys.tolist() == [0.55, 0.58, 0.60, 0.60]  # the 0.52 point is dominated


def test_curve_gap_by_hand() -> None:
    upper = [(0.5, 0.52), (0.05, 0.55), (0.25, 0.60), (0.20, 0.58)]
    lower = [(0.05, 0.50), (0.50, 0.50)]
    g = headroom.curve_gap(upper, lower)
    # gap: 0.05 -> 0.08 linearly over [0.05, 0.20], 0.08 -> 0.10 over [0.20, 0.25], then 0.10
    assert g["max_gap"] == pytest.approx(0.10) and g["max_at"] == pytest.approx(0.25)
    assert g["covered"] == [0.05, 0.5]
    # mean over the 91-point grid (step 0.005; the kinks lie on it, so the trapezoid rule is exact):
    # sum = integral / h + (first + last) / 2 = 0.03925 / 0.005 + 0.075 = 7.925
    assert g["mean_gap"] == pytest.approx(7.925 / 91, abs=1e-12)
    # only the fractions both curves cover count, and curves that do not overlap have no gap
    narrow = headroom.curve_gap([(0.2, 0.7), (0.3, 0.7)], lower)
    assert narrow["covered"] == [0.2, 0.3] and narrow["mean_gap"] == pytest.approx(0.2)
    assert math.isnan(headroom.curve_gap([(0.6, 0.9), (0.8, 0.95)], lower)["max_gap"])


def test_the_frontier_is_the_best_family_at_each_fraction() -> None:
    wide, greedy = [(0.1, 0.8), (0.3, 0.9)], [(0.2, 0.7), (0.05, 0.5)]
    grid = np.array([0.05, 0.1, 0.2, 0.3, 0.4])
    got = headroom.frontier([wide, greedy], grid)
    # pooled, the envelope is flat at 0.8 over [0.1, 0.2]; the wide family's own segment is above
    assert got[:4] == pytest.approx([0.5, 0.8, 0.85, 0.9]) and got[4] == -np.inf
    g = headroom.curve_gap([], [(0.05, 0.5), (0.5, 0.5)], families=[wide, greedy])
    assert g["covered"] == [0.05, 0.3] and g["max_gap"] == pytest.approx(0.4) and g["max_at"] == pytest.approx(0.3)


def test_a_curve_keeps_the_best_point_of_each_fraction() -> None:
    points = [(0.5, 0.9), (0.1, 0.6), (0.1, 0.7), (0.2, 0.65)]
    assert headroom.best_at_each_fraction(points) == [(0.1, 0.7), (0.2, 0.65), (0.5, 0.9)]
    g = headroom.curve_gap([(0.1, 0.8), (0.5, 0.8)], points)  # 0.8 - 0.65 at 0.2, the nearest grid point
    assert g["max_gap"] == pytest.approx(0.15, abs=0.002) and g["max_at"] == pytest.approx(0.2, abs=0.003)
    # from 0.8 - 0.7 at 0.1 to 0.8 - 0.695 at 0.11 (0.6, the worse point at 0.1, is not the curve)
    assert headroom.curve_gap([(0.1, 0.8), (0.11, 0.8)], points)["max_gap"] == pytest.approx(0.105)


def test_gap_to_a_curve_counts_points_inside_the_span() -> None:
    fixed = [(0.0, 0.4), (0.5, 0.6)]
    g = headroom.gap_to(fixed, [(0.25, 0.55), (0.1, 0.4), (0.9, 1.0)])  # 0.9 is outside 5-50 %
    assert g["max_gap"] == pytest.approx(0.05) and g["max_at"] == 0.25
    assert g["min_gap"] == pytest.approx(-0.04) and g["min_at"] == 0.1


def test_random_schedule_has_the_fraction_and_frame_zero() -> None:
    rng = np.random.default_rng(0)
    for fraction, T in ((0.05, 360), (0.5, 24), (0.2, 7)):
        a = signals.random_schedule(T, fraction, rng)
        assert a[0] == 0 and (a == 0).sum() == max(1, round(fraction * T)) and set(a.tolist()) <= {0, 1}
    assert (signals.random_schedule(10, 0.01, rng) == 0).sum() == 1


def test_spearman_by_hand() -> None:
    assert signals.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert signals.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: ranks x = (0.5, 0.5, 2, 3), y = (0, 1, 2, 3)
    x, y = np.array([0.5, 0.5, 2, 3]), np.array([0, 1, 2, 3])
    expected = float(np.corrcoef(x, y)[0, 1])
    assert signals.spearman([7, 7, 8, 9], [1, 2, 3, 4]) == pytest.approx(expected) and expected < 1
    assert math.isnan(signals.spearman([1, 1, 1], [1, 2, 3]))


# --- runs -------------------------------------------------------------------------------------
def test_headroom_run_reports_every_curve_and_is_deterministic(
    shipped_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "headroom.png"
    saved = tmp_path / "headroom.json"
    args = [
        "--cache",
        f"tiny={shipped_cache}",
        "--widths",
        "1",
        "2",
        "--json",
        "--save",
        str(saved),
        "--plot",
        str(png),
    ]
    assert headroom.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert set(first) == {"tiny/interleave", "tiny/keyframe"} and png.stat().st_size > 0
    assert json.loads(saved.read_text()) == first and sorted(p.name for p in tmp_path.iterdir()) == [
        saved.name,
        png.name,
    ]
    inter, key = first["tiny/interleave"], first["tiny/keyframe"]
    assert set(inter["hindsight"]) <= {"1", "2"} and "1" in inter["hindsight"]
    assert set(key["hindsight"]) == {"loss", "matched"}
    # the ceiling: period 1 (every frame) flat over the span, minus the fixed curve (its vertices in the span)
    # (periods that key the same number of frames of these short videos count with their best mAP)
    top = key["fixed"][-1]["map50"]
    curve = headroom.best_at_each_fraction([(p["fraction"], p["map50"]) for p in key["fixed"]])
    assert key["ceiling_vs_fixed"]["max_gap"] == pytest.approx(top - min(m for f, m in curve if 0.05 <= f <= 0.5))
    assert [p["period"] for p in key["fixed"]] == list(headroom.PERIODS["keyframe"])
    assert key["fixed"][-1]["fraction"] == 1.0  # period 1 keys every frame
    assert len(inter["hindsight"]["1"]) == len(headroom.LAMBDA_LADDER)
    for rows in key["hindsight"].values():  # the exact oracle meets its budgets on these short videos
        assert [r["budget"] for r in rows] == list(headroom.BUDGETS)
        assert all(abs(r["fraction"] - r["budget"]) <= 1 / 24 + 1e-9 for r in rows)
    assert headroom.main([*args[:-2], "--plot", "-"]) == 0
    again = json.loads(capsys.readouterr().out)
    for k in first:
        first[k].pop("seconds"), again[k].pop("seconds")
    assert again == first


def test_headroom_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert headroom.main(["--cache", "x=x.h5", "--widths", "0", "1"]) == 2
    assert "--widths must be >= 1" in capsys.readouterr().err
    missing = tmp_path / "missing.h5"
    assert headroom.main(["--cache", f"k={missing}", "--plot", "-"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarks/headroom.py: error:") and str(missing) in err and err.count("\n") == 1


def test_signals_run_correlates_every_signal(shipped_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert signals.main(["--cache", str(shipped_cache), "--env", "interleave", "--schedules", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["signals"]) == set(signals.SIGNALS) and len(report["schedules"]) == 20
    assert [r["target"] for r in report["schedules"]] == 2 * list(signals.FRACTIONS)
    maps = [r["map50"] for r in report["schedules"]]
    assert len(set(maps)) > 1 and all(0 <= m <= 1 for m in maps)
    for row in report["signals"].values():
        assert -1 <= row["spearman_all"] <= 1
    # across fractions more heavy frames mean fewer errors and more mAP: a sanity check of the signs
    assert report["signals"]["errors"]["spearman_all"] > 0
    assert signals.main(["--cache", str(shipped_cache), "--schedules", "19"]) == 2
    assert "--schedules must be >= 20 (two per fraction)" in capsys.readouterr().err
