"""Glimpse-v0 runs: AdaFrame and PPO run directories, and comparing them with the baselines."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gistgym.agents.algorithms import load_run
from gistgym.agents.compare import CompareConfig, compare_any
from gistgym.agents.glimpse_runs import GlimpseEnvEvaluator, evaluate_adaframe, load_adaframe_run
from gistgym.agents.policy import SB3Policy
from gistgym.agents.runs import read_run_config
from gistgym.agents.train import TrainConfig, train_one
from gistgym.errors import CacheMismatchError, ConfigError, RunError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.glimpse import read_glimpse_section

ENV = "gistgym/Glimpse-v0"


def _split(cache: Path, split: str = "val") -> tuple:
    c = FeatureCache(cache, sections=("glimpse",))
    section = read_glimpse_section(c)
    videos = section.load_split(c, split)
    c.close()
    return section, videos


def test_adaframe_run_directory_round_trip(glimpse_runs: Path, glimpse_cache: Path) -> None:
    run = glimpse_runs / "ada"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "eval.json", "model.pt", "tb", "training.png"]
    config = read_run_config(run)
    assert config["algo"] == "adaframe" and config["env_id"] == ENV
    assert config["env_kwargs"] == {"split": "train", "num_glimpses": 3}
    assert config["adaframe"]["train_steps"] == 6 and config["adaframe"]["hidden"] == 16
    history = json.loads((run / "eval.json").read_text())["history"]
    assert [h["timesteps"] for h in history] == [36, 72]  # evaluations after optimiser steps 3 and 6
    # the saved weights are the final ones: evaluating them reproduces the last evaluation
    section, videos = _split(glimpse_cache)
    net = load_adaframe_run(run, cache=glimpse_cache)
    again = evaluate_adaframe(net, section, videos.first(2), "ada", mu=-math.inf, patience=1)
    assert again.map == pytest.approx(history[-1]["map"]) and again.frames_used == history[-1]["frames_used"]
    assert not any(p.name.startswith(".") for p in glimpse_runs.iterdir())  # no partial directory left


def test_adaframe_run_refuses_other_caches_and_algos(
    glimpse_runs: Path, glimpse_cache: Path, tmp_path: Path, adaframe_config: Callable[..., TrainConfig]
) -> None:
    with pytest.raises(RunError, match="not an AdaFrame run"):
        load_adaframe_run(glimpse_runs / "ppo")
    copy = tmp_path / "ada"
    shutil.copytree(glimpse_runs / "ada", copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["cache_identity"]["model_weights"]["glimpse"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CacheMismatchError, match="glimpse weights sha256"):
        load_adaframe_run(copy, cache=glimpse_cache)
    (copy / "model.pt").write_bytes(b"not a state dict")
    with pytest.raises(RunError, match="cannot load the AdaFrame agent"):
        load_adaframe_run(copy)
    with pytest.raises(ConfigError, match="adaframe trains on gistgym/Glimpse-v0"):
        train_one(adaframe_config(tmp_path, env="gistgym/Keyframe-v0"))
    with pytest.raises(ConfigError, match="need discrete actions"):
        train_one(adaframe_config(tmp_path, algo="ddqn"))


def test_ppo_runs_through_the_environment(glimpse_runs: Path, glimpse_cache: Path) -> None:
    run = load_run(glimpse_runs / "ppo", cache=glimpse_cache)
    ev = GlimpseEnvEvaluator(glimpse_cache, "val", {"num_glimpses": 3}, max_videos=None)
    try:
        a = ev.evaluate(SB3Policy(run.model, "ppo"))
        b = ev.evaluate(SB3Policy(run.model, "ppo"))
    finally:
        ev.close()
    assert [len(f) for f in a.frames] == [3] * len(a.labels)
    np.testing.assert_array_equal(a.probs, b.probs)  # deterministic
    section, _ = _split(glimpse_cache)
    expect = (a.frames_used * section.costs.frame_flops + section.costs.memory_flops) / 1e9
    assert a.gflops_per_video == pytest.approx(expect)


def test_compare_includes_runs_and_adaptive_points(glimpse_runs: Path, glimpse_cache: Path, tmp_path: Path) -> None:
    config = CompareConfig.of(
        cache=str(glimpse_cache),
        env=ENV,
        runs=str(glimpse_runs),
        glimpse_counts=(1, 3),
        mus=(0.1, 1e9),
        patience=1,
        out=str(tmp_path / "cmp"),
        progress=False,
    )
    comp = compare_any(config)
    assert comp.runs == ["ada", "ppo"] and comp.adaptive == ["ada@0.1", "ada@1e+09"]
    # a threshold nobody's utility reaches stops after `patience` = 1 glimpse
    assert comp.results["ada@1e+09"].frames_used == 1.0
    payload = json.loads(json.dumps(comp.as_json(), allow_nan=False))
    for key in ("all", "uniform@3", "random@1", "avgpool-uniform@3", "ada", "ada@0.1", "ppo"):
        assert set(payload[key]) >= {"map", "top1", "frames_used", "gflops_per_video"}
    assert "reaches_all" in comp.verdict
    assert (tmp_path / "cmp" / "pareto.png").stat().st_size > 0


def test_adaframe_training_rewards_equal_the_environments(glimpse_cache: Path) -> None:
    """The agent trains on exactly what Glimpse-v0 pays: same frames, margins and Eq. 3 rewards."""
    import torch

    from gistgym.agents.adaframe import AdaFrameConfig, AdaFrameNet, rollout
    from gistgym.envs.glimpse import GlimpseCore

    section, videos = _split(glimpse_cache, "train")
    n, k = len(videos.video_ids), 5
    locations = np.random.default_rng(4).uniform(0, 1, (n, k)).astype(np.float32)
    locations[:, 2] = locations[:, 0]  # a revisit
    net = AdaFrameNet.from_config(AdaFrameConfig(hidden=8, embed=8).for_section(section.config)).eval()
    with torch.no_grad():
        roll = rollout(
            net,
            section.classifier,
            torch.from_numpy(videos.frame_features),
            torch.from_numpy(videos.num_frames),
            torch.from_numpy(videos.memory),
            torch.from_numpy(videos.labels),
            num_glimpses=k,
            locations=torch.from_numpy(locations),
        )
    core = GlimpseCore(n, glimpse_cache, split="train", num_glimpses=k)
    slots = np.arange(n)
    for i, vid in enumerate(videos.video_ids):
        core.load(i, vid)
    core.advance(slots, np.zeros(n))
    for t in range(k):
        out = core.advance(slots, locations[:, t].astype(np.float64))
        np.testing.assert_array_equal(out["frame_index"], roll.indices[:, t].numpy())
        np.testing.assert_allclose(out["margin"], roll.margins[:, t].numpy(), atol=1e-6)
        np.testing.assert_allclose(out["reward"], roll.rewards[:, t].numpy(), atol=1e-6)
    core.close()
