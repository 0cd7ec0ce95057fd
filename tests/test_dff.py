"""Deep Feature Flow: warp (Eq. 1-3), identity initialisation, costs (Eq. 5-7), weights, training, evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.dff import (
    DEFAULT_DFF_WEIGHTS,
    DeepFeatureFlow,
    dff_costs,
    feature_net_digest,
    keyframe_positions,
    load_dff,
    save_dff,
    speedup_fixed,
    warp,
    warp_flops,
)
from gistgym.backbones.dff_training import (
    DFFTrainConfig,
    evaluate_key_durations,
    object_motion_targets,
    train_dff,
    video_detections,
)
from gistgym.backbones.flops import count_flops
from gistgym.backbones.weights import save_detector, sha256_file
from gistgym.errors import ConfigError, WeightsError
from gistgym.videos.dataset import load_dataset
from gistgym.videos.synthetic import FrameAnnotation


@pytest.fixture(scope="module")
def dff(nontrivial_model: InterleavedDetector) -> DeepFeatureFlow:
    """A DFF model from the test detector with a non-trivial (random) flow prediction layer."""
    model = DeepFeatureFlow.from_detector(nontrivial_model)
    torch.manual_seed(3)
    with torch.no_grad():
        model.flow_net.predict.weight.normal_(0, 0.05)
        # no background prior, so the untrained head reports detections
        bias = model.task_net.head.predict.bias.view(model.config.anchors.per_cell, -1)
        bias[:, 4] = 0.0
    return model.eval().requires_grad_(False)


def test_warp_is_bilinear_sampling_along_the_flow() -> None:
    torch.manual_seed(0)
    f = torch.randn(2, 5, 8, 8)
    zero = torch.zeros(2, 2, 8, 8)
    assert torch.equal(warp(f, zero), f)
    one_right = zero.clone()
    one_right[:, 0] = 1.0  # location p reads f at p + (1, 0)
    assert torch.allclose(warp(f, one_right)[..., :7], f[..., 1:], atol=1e-6)
    assert torch.allclose(warp(f, one_right)[..., 7], f[..., 7], atol=1e-6)  # border
    half_down = zero.clone()
    half_down[:, 1] = 0.5
    assert torch.allclose(warp(f, half_down)[:, :, :7], (f[:, :, :7] + f[:, :, 1:]) / 2, atol=1e-6)
    scale = torch.rand(2, 5, 8, 8)
    assert torch.allclose(warp(f, one_right, scale), warp(f, one_right) * scale)


def test_untrained_flow_net_is_the_identity_propagation(nontrivial_model: InterleavedDetector) -> None:
    model = DeepFeatureFlow.from_detector(nontrivial_model).eval()
    frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    images = model.preprocess(frames)
    with torch.no_grad():
        feats = model.features(images)
        # N_feat is the detector's heavy extractor, bit for bit
        assert torch.equal(feats, nontrivial_model.extract(0, nontrivial_model.preprocess(frames))[0])
        fo = model.flow(images.roll(1, 0), images)
        assert torch.equal(fo.flow, torch.zeros_like(fo.flow)) and torch.equal(fo.scale, torch.ones_like(fo.scale))
        warped, _ = model.propagate(feats, images.roll(1, 0), images)
    assert torch.equal(warped, feats)
    assert fo.scale.shape == feats.shape  # one scale per feature channel, at feature resolution


def test_feature_net_stays_frozen_in_train_mode(nontrivial_model: InterleavedDetector) -> None:
    model = DeepFeatureFlow.from_detector(nontrivial_model).train()
    assert not model.feature_net.training and model.flow_net.training and model.task_net.training
    assert not any(p.requires_grad for p in model.feature_net.parameters())
    assert all(p.requires_grad for p in [*model.flow_net.parameters(), *model.task_net.parameters()])
    # the head starts from the detector's
    assert torch.equal(model.task_net.head.predict.weight, nontrivial_model.head.predict.weight)


def test_costs_and_eq5_to_eq7(dff: DeepFeatureFlow, nontrivial_model: InterleavedDetector) -> None:
    c = dff_costs(dff, measure=False)
    images = torch.zeros(1, 3, 64, 64)
    assert c.feature_flops == count_flops(lambda: nontrivial_model.extract(0, images))
    assert c.warp_flops == warp_flops(64, 8) == 64 * (10 + 64 * 8)
    assert 0 < c.flow_flops < c.feature_flops / 10
    assert c.key_flops == c.feature_flops + c.task_flops
    assert c.propagate_flops == c.flow_flops + c.warp_flops + c.task_flops
    assert c.cost_ratio == pytest.approx((c.flow_flops + c.warp_flops) / c.feature_flops)
    assert c.speedup(1.0) == 1.0
    # the paper's l / (1 + r (l - 1)) is the key-fraction speed-up with N_task neglected
    no_task = type(c)(c.feature_flops, c.flow_flops, c.warp_flops, 0)
    for l_ in (1, 5, 10, 20):
        assert no_task.speedup(1 / l_) == pytest.approx(speedup_fixed(c.cost_ratio, l_))
    assert c.speedup(0.1) < speedup_fixed(c.cost_ratio, 10)  # N_task runs on every frame
    assert keyframe_positions(7, 3).tolist() == [0, 0, 0, 3, 3, 3, 6]


def test_save_load_round_trip_and_bad_files(
    dff: DeepFeatureFlow, nontrivial_model: InterleavedDetector, tmp_path: Path
) -> None:
    path = tmp_path / "dff.pt"
    digest = save_dff(path, dff, {"command": "gistgym backbones train-dff --seed 0"})
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["sha256"] == digest == sha256_file(path)
    assert side["model"] == "deep-feature-flow" and side["command"].startswith("gistgym backbones train-dff")
    assert side["feature_net_digest"] == feature_net_digest(nontrivial_model.extractor(0))
    loaded, _ = load_dff(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for (k, a), (_, b) in zip(dff.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # a changed byte
    bad = tmp_path / "bad.pt"
    shutil.copy(path, bad)
    shutil.copy(path.with_suffix(".json"), bad.with_suffix(".json"))
    data = bytearray(bad.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 differs"):
        load_dff(bad)
    # the detector's weights are not DFF weights
    det = tmp_path / "det.pt"
    save_detector(det, nontrivial_model, {})
    with pytest.raises(WeightsError, match=r"det.json \[model\]: not a Deep Feature Flow sidecar"):
        load_dff(det)
    with pytest.raises(WeightsError, match="sidecar JSON missing"):
        load_dff(tmp_path / "missing.pt")


def test_object_motion_targets_by_hand() -> None:
    key = FrameAnnotation(
        boxes=np.array([[8, 8, 24, 24], [40, 40, 50, 50]], np.float32),
        labels=np.array([0, 1]),
        track_ids=np.array([5, 6]),
        speeds=np.zeros(2, np.float32),
    )
    # track 5 moved by (+8, +4) px from k to i; track 7 is new (no target)
    cur = FrameAnnotation(
        boxes=np.array([[16, 12, 32, 28], [0, 0, 10, 10]], np.float32),
        labels=np.array([0, 2]),
        track_ids=np.array([5, 7]),
        speeds=np.zeros(2, np.float32),
    )
    flow, mask = object_motion_targets([key], [cur], grid=8, cell=8.0)
    # cell centres are 4, 12, 20, ...: inside x in [16, 32) are columns 2, 3 (20, 28), inside y in [12, 28) rows 1, 2
    expected = np.zeros((8, 8), bool)
    expected[1:3, 2:4] = True
    assert np.array_equal(mask[0].numpy(), expected)
    assert torch.all(flow[0, 0][mask[0]] == -1.0) and torch.all(flow[0, 1][mask[0]] == -0.5)
    assert torch.all(flow[0][:, ~mask[0]] == 0)


def test_training_writes_reproducible_weights(
    tiny_bench: Path, nontrivial_model: InterleavedDetector, tmp_path: Path
) -> None:
    det = tmp_path / "det.pt"
    save_detector(det, nontrivial_model, {})
    cfg = dict(videos=str(tiny_bench), detector=str(det), iterations=3, batch_pairs=4, warmup=1)
    a = train_dff(DFFTrainConfig(out=str(tmp_path / "a.pt"), **cfg), progress=False, command="cmd")  # type: ignore[arg-type]
    b = train_dff(DFFTrainConfig(out=str(tmp_path / "b.pt"), **cfg), progress=False)  # type: ignore[arg-type]
    assert a["sha256"] == b["sha256"]  # one thread, same seed: same bytes
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["command"] == "cmd" and side["detector_sha256"] == sha256_file(det)
    assert side["train_config"]["max_distance"] == 9 and all(np.isfinite(v) for v in side["final_losses"].values())
    model, _ = load_dff(tmp_path / "a.pt")
    # N_feat was not trained
    assert feature_net_digest(model.feature_net) == feature_net_digest(nontrivial_model.extractor(0))
    with pytest.raises(ConfigError, match="max_distance"):
        train_dff(DFFTrainConfig(out=str(tmp_path / "c.pt"), **{**cfg, "max_distance": 0}), progress=False)  # type: ignore[arg-type]


def test_fixed_key_durations(dff: DeepFeatureFlow, tiny_bench: Path) -> None:
    record = load_dataset(tiny_bench).split("val")[0]
    frames = record.read_frames()
    every, keys1 = video_detections(dff, frames, 1)
    assert np.array_equal(keys1, np.arange(len(frames)))
    five, keys5 = video_detections(dff, frames, 5)
    assert keys5.tolist()[:7] == [0, 0, 0, 0, 0, 5, 5]
    # keyframes detect identically whatever the duration; propagated frames differ
    for t in (0, 5, 10):
        assert np.array_equal(every[t].boxes, five[t].boxes)
    assert any(
        len(every[t].scores) != len(five[t].scores) or not np.array_equal(every[t].scores, five[t].scores)
        for t in (1, 2, 3)
    )
    report = evaluate_key_durations(dff, tiny_bench, "val", (1, 5), progress=False)
    assert report["key=1"]["key_fraction"] == 1.0 and report["key=5"]["key_fraction"] == pytest.approx(10 / 48)
    assert report["key=5"]["gflops_per_frame"] < report["key=1"]["gflops_per_frame"]
    assert report["key=1"]["speedup_eq7"] == 1.0


def test_shipped_weights_load_and_match_the_shipped_detector() -> None:
    from gistgym.backbones.weights import DEFAULT_WEIGHTS, load_detector

    model, meta = load_dff()
    assert meta["model"] == "deep-feature-flow" and "gistgym backbones train-dff" in meta["command"]
    _, det_meta = load_detector()
    assert det_meta["sha256"] == sha256_file(DEFAULT_WEIGHTS)
    # DFF was trained from the detector the shipped one was fine-tuned from (its sidecar's
    # ``init``) and carries its own copy of that heavy extractor as N_feat
    assert meta["detector_sha256"] == det_meta["init"]["sha256"] != det_meta["sha256"]
    assert meta["feature_net_digest"] == feature_net_digest(model.feature_net)
    assert DEFAULT_DFF_WEIGHTS.stat().st_size < 4_000_000
