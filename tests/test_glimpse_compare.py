"""Glimpse baselines, the comparison verdict and its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gistgym.agents.compare import CompareConfig
from gistgym.agents.glimpse_compare import GlimpseComparison, compare_glimpse, glimpse_verdict
from gistgym.agents.glimpse_eval import (
    GlimpseBaselines,
    GlimpseEvaluation,
    is_glimpse_baseline,
    random_indices,
    uniform_indices,
)
from gistgym.envs import GLIMPSE_ENV_ID
from gistgym.errors import ConfigError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.glimpse import GlimpseVideos, read_glimpse_section


@pytest.fixture(scope="module")
def split(glimpse_cache: Path) -> tuple:
    cache = FeatureCache(glimpse_cache, sections=("glimpse",))
    section = read_glimpse_section(cache)
    videos = section.load_split(cache, "val")
    cache.close()
    return section, videos


def test_uniform_indices_are_the_centres_of_equal_parts() -> None:
    # T = 20: centres (k + 0.5) / 4 of [0, 1] -> round(x * 19) = 2.375, 7.125, 11.875, 16.625
    np.testing.assert_array_equal(uniform_indices(np.array([20]), 4), [[2, 7, 12, 17]])
    np.testing.assert_array_equal(uniform_indices(np.array([20, 3]), 1), [[10], [1]])


def test_random_indices_are_distinct_sorted_and_seeded() -> None:
    a = random_indices(np.array([20, 20, 5]), 5, np.random.default_rng(3))
    b = random_indices(np.array([20, 20, 5]), 5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    for row in a:
        assert list(row) == sorted(set(row.tolist()))
    np.testing.assert_array_equal(a[2], np.arange(5))


def test_baselines_equal_the_classifier_by_hand(split: tuple) -> None:
    section, videos = split
    base = GlimpseBaselines(section, videos)
    clf = section.classifier
    # all: mean over frames of the one-frame softmax
    v0 = videos.frame_features[0, : videos.num_frames[0]]
    with torch.no_grad():
        logits, _ = clf.step(torch.from_numpy(v0), clf.initial_state(len(v0)))
    expect_all = torch.softmax(logits, 1).mean(0).numpy()
    np.testing.assert_allclose(base.all_frames().probs[0], expect_all, rtol=1e-5, atol=1e-6)
    # uniform@3: the LSTM stepped over the three frames in order
    ev = base.uniform(3)
    idx = uniform_indices(videos.num_frames, 3)[1]
    state = clf.initial_state(1)
    with torch.no_grad():
        for i in idx:
            logits, state = clf.step(torch.from_numpy(videos.frame_features[1, i][None]), state)
    np.testing.assert_allclose(ev.probs[1], torch.softmax(logits, 1)[0].numpy(), rtol=1e-5, atol=1e-6)
    assert ev.frames_used == 3.0
    assert ev.gflops_per_video == pytest.approx(3 * section.costs.frame_flops / 1e9)
    everything = base.all_frames()
    assert everything.frames_used == float(np.mean(videos.num_frames))
    # same seed, same frames for random@K and avgpool-random@K
    r, ar = base.random(4, seed=1), base.avgpool_random(4, seed=1)
    for a, b in zip(r.frames, ar.frames, strict=True):
        np.testing.assert_array_equal(a, b)


def test_baseline_names(split: tuple) -> None:
    section, videos = split
    base = GlimpseBaselines(section, videos)
    assert base.parse("avgpool-uniform@2", seed=0).name == "avgpool-uniform@2"
    assert is_glimpse_baseline("random@3") and not is_glimpse_baseline("runs/x") and not is_glimpse_baseline("tau=3")
    for bad in ("uniform@0", "uniform@x", "median@3"):
        with pytest.raises(ConfigError, match=r"glimpse baseline|>= 1"):
            base.parse(bad, seed=0)


def _evaluation(name: str, frames: int, correct: int, n: int = 10) -> GlimpseEvaluation:
    """``correct`` of ``n`` two-class videos right (confident), using ``frames`` frames each."""
    labels = np.arange(n) % 2
    probs = np.full((n, 2), 0.5)
    probs[np.arange(correct), labels[:correct]] = 0.9
    probs[np.arange(correct), 1 - labels[:correct]] = 0.1
    probs[np.arange(correct, n), labels[correct:]] = 0.2
    probs[np.arange(correct, n), 1 - labels[correct:]] = 0.8
    return GlimpseEvaluation(name, probs, labels, [np.arange(frames)] * n, gflops_per_video=float(frames))


def _videos(n: int = 10, frames: int = 30) -> GlimpseVideos:
    return GlimpseVideos(
        video_ids=tuple(f"v{i}" for i in range(n)),
        labels=np.arange(n) % 2,
        num_frames=np.full(n, frames),
        frame_features=np.zeros((n, frames, 2), np.float32),
        memory=np.zeros((n, 2, 3), np.float32),
        evidence=np.zeros((n, frames), bool),
    )


def test_verdict_reaches_all_and_beats_the_curves() -> None:
    results = {
        "all": _evaluation("all", 30, 9),
        "uniform@2": _evaluation("uniform@2", 2, 5),
        "uniform@8": _evaluation("uniform@8", 8, 7),
        "random@2": _evaluation("random@2", 2, 4),
        "random@8": _evaluation("random@8", 8, 6),
        "ada@0.1": _evaluation("ada@0.1", 4, 9),
        "ada@0.5": _evaluation("ada@0.5", 2, 6),
    }
    comp = GlimpseComparison(results, ["ada@0.1", "ada@0.5"], [], _videos())
    v = glimpse_verdict(comp)
    assert v["budget_frames"] == pytest.approx(10.0)
    assert v["reaches_all"]["ok"] and v["reaches_all"]["point"] == "ada@0.1"
    assert v["beats"]["uniform"]["ok"] and v["beats"]["random"]["ok"]
    # ada@0.5 at 2 frames: mAP(6 right) - mAP(uniform@2, 5 right) > 0
    assert v["beats"]["uniform"]["margins"]["ada@0.5"] == pytest.approx(
        results["ada@0.5"].map - results["uniform@2"].map
    )
    # an adaptive point under the uniform curve fails that claim; one beyond the budget cannot reach all
    assert v["beats"]["uniform"]["point"] == "ada@0.1" and v["beats"]["uniform"]["points_above"] == 2
    # the operating point under the uniform curve fails that claim; one beyond the budget cannot reach all
    results["ada@0.5"] = _evaluation("ada@0.5", 2, 4)
    results["ada@0.1"] = _evaluation("ada@0.1", 12, 9)
    v = glimpse_verdict(GlimpseComparison(results, ["ada@0.1", "ada@0.5"], [], _videos()))
    assert not v["reaches_all"]["ok"] and v["reaches_all"]["point"] == "ada@0.5"  # the best point within budget
    assert not v["beats"]["uniform"]["ok"] and v["beats"]["uniform"]["margin"] < 0
    assert v["beats"]["uniform"]["points_above"] == 1 and v["beats"]["uniform"]["min_margin"] < 0
    assert glimpse_verdict(GlimpseComparison(results, [], [], _videos())) == {}


def test_compare_writes_outputs_and_refuses_unknown_policies(glimpse_cache: Path, tmp_path: Path) -> None:
    config = CompareConfig.of(
        cache=str(glimpse_cache),
        env=GLIMPSE_ENV_ID,
        split="val",
        policies=("avgpool-random@2",),
        glimpse_counts=(1, 2),
        seed=0,
        max_videos=3,
        out=str(tmp_path / "cmp"),
        overwrite=True,
    )
    comp = compare_glimpse(config, [], lambda *a: [])
    assert set(comp.results) == {
        "all",
        "uniform@1",
        "random@1",
        "avgpool-uniform@1",
        "uniform@2",
        "random@2",
        "avgpool-uniform@2",
        "avgpool-random@2",
    }
    assert len(comp.videos.video_ids) == 3
    for name in ("table.md", "results.csv", "results.json", "pareto.png", "timeline.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    bad = config.replace(policies=("tau=3",))
    with pytest.raises(ConfigError, match="neither a glimpse baseline nor a run directory"):
        compare_glimpse(bad, [], lambda *a: [])
    bad = config.replace(glimpse_counts=(2, 0))
    with pytest.raises(ConfigError, match=r"--glimpse-counts must be frame counts >= 1, got \[2, 0\]"):
        compare_glimpse(bad, [], lambda *a: [])
