from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.training import TrainConfig, sample_schedules, train_detector, unrolled_loss
from gistgym.backbones.weights import load_detector, sha256_file


def _tiny_cfg(bench: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(videos=str(bench), out=str(out), iterations=3, batch_clips=3, clip_len=6, warmup=1)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_schedules_follow_the_clip_mix() -> None:
    cfg = TrainConfig(clip_mix=(1.0, 0.0, 0.0, 0.0), max_heavy_prob=0.0, light_choice="per-step")
    acts = sample_schedules(50, 8, 3, cfg, np.random.default_rng(0))
    # interleaved clips with q = 0: heavy on frame 0 only, then light or light+shift
    assert (acts[:, 0] == 0).all()
    assert set(np.unique(acts[:, 1:])) == {1, 2}
    per_clip = sample_schedules(
        50,
        8,
        3,
        TrainConfig(clip_mix=(1.0, 0.0, 0.0, 0.0), max_heavy_prob=0.0, light_choice="per-clip"),
        np.random.default_rng(0),
    )
    assert all(len(set(row[1:].tolist())) == 1 for row in per_clip)  # one light extractor per clip
    heavy_only = sample_schedules(10, 8, 3, TrainConfig(clip_mix=(0.0, 1.0, 0.0, 0.0)), np.random.default_rng(0))
    assert (heavy_only == 0).all()
    light_only = sample_schedules(10, 8, 3, TrainConfig(clip_mix=(0.0, 0.0, 1.0, 0.0)), np.random.default_rng(0))
    assert (light_only == 1).all()
    shift_only = sample_schedules(10, 8, 3, TrainConfig(clip_mix=(0.0, 0.0, 0.0, 1.0)), np.random.default_rng(0))
    assert (shift_only == 2).all()


def test_shift_buffer_changes_the_features(nontrivial_model: InterleavedDetector) -> None:
    model = nontrivial_model
    x = model.preprocess(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    with torch.no_grad():
        _, buffers = model.extract(2, x[:1])
        with_past, _ = model.extract(2, x[1:], buffers)
        without_past, _ = model.extract(2, x[1:], None)
    assert (with_past - without_past).abs().max() > 1e-2 * without_past.abs().mean()


def test_unrolled_loss_uses_the_inference_update_rule(nontrivial_model: InterleavedDetector) -> None:
    """The training unroll must give the same memory outputs as step-by-step inference."""
    model = nontrivial_model
    frames = torch.randint(0, 256, (2, 5, 64, 64, 3), dtype=torch.uint8)
    # clip 0 runs light+shift twice with a heavy frame between (stale buffer), clip 1 in a row
    actions = torch.tensor([[0, 2, 1, 0, 2], [0, 2, 2, 2, 1]])
    captured: list[torch.Tensor] = []
    handle = model.head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach().clone()))
    boxes = [torch.zeros(0, 4)] * 10
    labels = [torch.zeros(0, dtype=torch.long)] * 10
    with torch.no_grad():
        unrolled_loss(model, frames, actions, boxes, labels)
        train_outputs = torch.stack(captured, dim=1)  # (B, T, C, g, g)
        captured.clear()
        for b in range(2):
            state = model.initial_state(1)
            for t in range(5):
                state = model.step(frames[b : b + 1, t], int(actions[b, t]), state).state
        # step() of the last clip's frames ran through the same hook
    handle.remove()
    step_outputs = torch.stack(captured).view(2, 5, *train_outputs.shape[2:])
    torch.testing.assert_close(train_outputs, step_outputs, rtol=1e-3, atol=1e-4)


def test_training_writes_weights_sidecar_and_is_deterministic(tiny_bench: Path, tmp_path: Path) -> None:
    a = train_detector(_tiny_cfg(tiny_bench, tmp_path / "a.pt"), progress=False, command="gistgym backbones train ...")
    b = train_detector(_tiny_cfg(tiny_bench, tmp_path / "b.pt"), progress=False)
    assert a["sha256"] == b["sha256"] == sha256_file(tmp_path / "a.pt")
    assert np.isfinite(a["final_loss"])
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["command"] == "gistgym backbones train ..."
    assert meta["config"]["skip_light_updates"] is True
    assert meta["train_config"]["iterations"] == 3
    model, _ = load_detector(tmp_path / "a.pt")
    assert model.config.skip_light_updates is True
    assert not any(p.requires_grad for p in model.parameters())


def test_training_stores_the_update_rule_it_used(tiny_bench: Path, tmp_path: Path) -> None:
    train_detector(_tiny_cfg(tiny_bench, tmp_path / "w.pt", iterations=1, skip_light_updates=False), progress=False)
    model, _ = load_detector(tmp_path / "w.pt")
    assert model.config.skip_light_updates is False


def test_training_refuses_clips_longer_than_every_video(tiny_bench: Path, tmp_path: Path) -> None:
    from gistgym.errors import ConfigError

    with pytest.raises(ConfigError, match="clip_len=500"):
        train_detector(_tiny_cfg(tiny_bench, tmp_path / "w.pt", clip_len=500), progress=False)


def test_periodic_clips_run_heavy_every_p_frames() -> None:
    cfg = TrainConfig(clip_mix=(0.0, 0.0, 0.0, 0.0, 1.0))
    acts = sample_schedules(200, 12, 2, cfg, np.random.default_rng(0))
    periods = set()
    for row in acts:
        heavy = np.flatnonzero(row == 0)
        assert heavy[0] == 0 and set(row.tolist()) <= {0, 1}
        gaps = set(np.diff(heavy).tolist())
        assert len(gaps) <= 1  # one period per clip
        periods.add(int(heavy[1]) if len(heavy) > 1 else 12)
    assert periods == set(range(2, 13))  # every period 2..clip_len (12 = heavy on frame 0 only)
    with pytest.raises(Exception, match="clip_mix"):
        sample_schedules(2, 12, 2, TrainConfig(clip_mix=(1.0, -1.0, 0.0, 0.0)), np.random.default_rng(0))


def test_training_draws_clips_from_several_datasets_and_fine_tunes(
    tiny_bench: Path, streams_bench: Path, tmp_path: Path
) -> None:
    from gistgym.backbones.training import ClipSampler
    from gistgym.errors import ConfigError

    sampler = ClipSampler([tiny_bench, streams_bench], "train", 6, np.random.default_rng(0), progress=False)
    # 2 videos of 24 frames and 2 of 300: clip starts 19 and 295 each
    np.testing.assert_allclose(sampler._video_p, np.array([19, 19, 295, 295]) / 628)
    first = train_detector(_tiny_cfg(tiny_bench, tmp_path / "a.pt"), progress=False, command="gistgym first")
    cfg = _tiny_cfg(tiny_bench, tmp_path / "b.pt", init=str(tmp_path / "a.pt"), iterations=1)
    tuned = train_detector(replace(cfg, videos=(str(tiny_bench), str(streams_bench))), progress=False)
    assert tuned["sha256"] != first["sha256"]
    meta = json.loads((tmp_path / "b.json").read_text())
    assert meta["train_config"]["init"] == str(tmp_path / "a.pt") and len(meta["dataset_generator"]) == 2
    # the starting point is identified, and its own recipe kept, so the chain can be reproduced
    assert meta["init"] == {"path": str(tmp_path / "a.pt"), "sha256": first["sha256"], "command": "gistgym first"}
    assert "init" not in json.loads((tmp_path / "a.json").read_text())
    with pytest.raises(ConfigError, match="same update rule"):
        train_detector(replace(cfg, skip_light_updates=False), progress=False)
