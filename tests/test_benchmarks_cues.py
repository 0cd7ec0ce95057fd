"""``benchmarks/cue_quality.py`` and ``benchmarks/cue_rule.py``: arithmetic by hand, one run each on a tiny cache.

The scripts are not a package; they are loaded from their files as a user runs them (with the
``benchmarks`` folder on the path, where ``python benchmarks/X.py`` puts it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_script

from gistgym.backbones.ssdlite import Detections
from gistgym.feature_cache import FeatureCache

cue_quality = load_script("cue_quality")
cue_rule = load_script("cue_rule")
cue_search = load_script("cue_search")


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(
        np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(labels, np.int64)
    )


def test_auc_by_hand() -> None:
    # every positive above every negative
    assert cue_quality.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, True, False, True])) == 1.0
    # a tie counts one half: pairs (1 vs 1) = 0.5 and (1 vs 0) = 1 -> 1.5 / 2
    assert cue_quality.auc(np.array([1.0, 1.0, 0.0]), np.array([True, False, False])) == 0.75
    assert cue_quality.auc(np.array([2.0, 1.0]), np.array([False, True])) == 0.0
    assert math.isnan(cue_quality.auc(np.array([1.0, 2.0]), np.array([True, True])))


def test_unmatched_counts_confident_detections_without_a_same_class_overlap() -> None:
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.35], [0, 1])
    # shifted by 2 px (IoU 0.67 >= 0.3): matched; same box but another class: new; score 0.4 < 0.5: not counted
    boxes = [[2, 0, 12, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]
    d = _dets(boxes, [0.8, 0.6, 0.7, 0.4], [0, 0, 2, 1])
    assert cue_quality.unmatched(d, ref) == 2
    # a reference candidate below 0.3 matches nothing
    assert cue_quality.unmatched(_dets([[20, 20, 30, 30]], [0.9], [1]), _dets([[20, 20, 30, 30]], [0.2], [1])) == 1
    assert cue_quality.unmatched(_dets([], [], []), ref) == 0


def test_envelope_keeps_the_rules_nothing_cheaper_beats() -> None:
    rows = [
        {"name": "a", "fraction": 0.1, "map50": 0.80},
        {"name": "b", "fraction": 0.2, "map50": 0.78},  # dominated by a
        {"name": "c", "fraction": 0.3, "map50": 0.90},
        {"name": "d", "fraction": 0.05, "map50": 0.70},
    ]
    assert cue_rule.on_envelope(rows) == ["a", "c", "d"]


def test_cue_quality_scores_every_light_frame_of_a_tau_rollout(
    shipped_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cue_quality.main(["--cache", str(shipped_cache), "--tau", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    with FeatureCache(shipped_cache) as cache:
        lengths = [cache.entry(v).num_frames for v in cache.video_ids("val")]
    # a decision follows frames 1 .. T - 2; tau=3 runs the heavy extractor on every 4th frame
    assert report["measured"]["frames"] == sum(sum(1 for t in range(1, T - 1) if t % 4) for T in lengths)
    names = {"since_heavy", "light_change", "light_step", "memory_change", *cue_quality.DETECTION_CUES}
    for target in cue_quality.TARGETS:
        assert set(report["measured"]["auc"][target]) == names
        assert all(math.isnan(a) or 0 <= a <= 1 for a in report["measured"]["auc"][target].values())
    assert report["cut_source"] == "track ids"


def test_cue_rule_selects_on_one_split_and_reports_on_another(
    shipped_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps({"points": [[0.05, 0.99], [0.5, 1.0]]}))
    saved = tmp_path / "rule.json"
    argv = ["--cache", str(shipped_cache), "--headroom", str(frontier), "--grid", "small", "--select-split", "train"]
    assert cue_rule.main([*argv, "--json", "--save", str(saved), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(saved.read_text()) == report
    grid = [r.name for r in cue_rule.grid_rules(cue_rule.GRIDS["small"])]
    assert [r["name"] for r in report["select"]["rules"]] == grid
    assert report["selected"] and set(report["selected"]) <= set(grid)
    (val,) = report["reports"]
    assert val["split"] == "val" and [r["name"] for r in val["rules"]] == report["selected"]
    assert [r["name"] for r in val["fixed"]][:2] == ["heavy", "light"]
    assert {"captured", "captured_with_fixed", "map50_at"} <= val.keys()
    # bad input: one line, exit 2, nothing evaluated
    assert cue_rule.main([*argv, "--other", "no-equals-sign"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CACHE=HEADROOM" in err
    assert cue_rule.main([*argv, "--other", f"{shipped_cache}={tmp_path / 'none.json'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.json" in err


def test_cue_search_features_and_policy_by_hand() -> None:
    cues = np.array([[0.25, 0.5, 2.0, 0.1], [0.0, 0.0, 0.0, 0.3]])  # since_heavy, light_change, light_step, memory
    np.testing.assert_allclose(
        cue_search.features(cues), [[0.25, 0.5, 2.0, 0.1, 0.125, 1.0], [0.0, 0.0, 0.0, 0.3, 0.0, 1.0]]
    )
    # heavy where 8 * since_heavy + light_step > 1.9: after about 15 frames, or at once after a jump of the features
    policy = cue_search.LinearCuePolicy([8.0, 0.0, 1.0, 0.0, 0.0, -1.9], "p")
    assert policy.act({"cues": cues}, [{}, {}]).tolist() == [0, 1]
    assert policy.act({"cues": np.array([[0.2, 0.0, 0.0, 0.0]])}, [{}]).tolist() == [1]
    assert policy.env_kwargs == {"cues": True}


def test_cue_search_learns_on_train_and_reports_on_val(
    shipped_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps({"points": [[0.05, 0.99], [0.5, 1.0]]}))
    argv = ["--cache", str(shipped_cache), "--headroom", str(frontier), "--gammas", "0.5", "3", "--clips", "3",
            "--clip-len", "8", "--population", "4", "--iterations", "2", "--json", "--no-progress"]  # fmt: skip
    assert cue_search.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["trained"]) == ["cem-g0.5-s0", "cem-g3-s0"]
    for entry in report["trained"].values():
        assert list(entry["theta"]) == list(cue_search.FEATURES) and len(entry["best"]) == 2
    (val,) = report["reports"]
    assert [r["name"] for r in val["rules"]] == ["cem-g0.5-s0", "cem-g3-s0"]
    assert [r["name"] for r in val["fixed"]][:2] == ["heavy", "light"]
    # the same search again: the same policies (seeded candidates, fixed clips)
    assert cue_search.main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["trained"] == report["trained"]
