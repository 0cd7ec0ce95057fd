"""The ``keyframe`` cache section: tables equal a direct DFF run, schedules' mAP from the cache, identity, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gistgym.backbones.dff import DeepFeatureFlow, feature_net_digest, load_dff, save_dff
from gistgym.backbones.dff_training import evaluate_key_durations, video_detections
from gistgym.backbones.ssdlite import build_targets, frame_detection_loss
from gistgym.backbones.weights import sha256_file
from gistgym.errors import ConfigError, WeightsError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.build import build_cache
from gistgym.feature_cache.keyframe import (
    CUE_NAMES,
    LARGE_DISPLACEMENT_PX,
    MAX_DISTANCE,
    flow_cues,
    schedule_detections,
)
from gistgym.feature_cache.sections import FROZEN_MODELS, list_sections
from gistgym.metrics import detection_map50
from gistgym.videos.dataset import load_dataset


@pytest.fixture(scope="module")
def dff() -> DeepFeatureFlow:
    """The shipped DFF model (what ``keyframe_cache``'s keyframe section was built with)."""
    return load_dff()[0]


def test_section_metadata_and_model_identity(keyframe_cache: Path) -> None:
    assert "keyframe" in list_sections() and "dff" in FROZEN_MODELS
    cache = FeatureCache(keyframe_cache, sections=("interleave", "keyframe"))
    info = cache.info
    assert info.sections == ("interleave", "keyframe")
    assert dict(info.model_weights) == {"dff": load_dff()[1]["sha256"]}
    assert info.modules["models"]["dff"]["class"] == "gistgym.backbones.dff.DeepFeatureFlow"
    costs = info.costs["models"]["dff"]
    assert costs["key_flops"] == costs["feature_flops"] + costs["task_flops"]
    attrs = cache.section("keyframe").attrs
    assert attrs["max_distance"] == MAX_DISTANCE and tuple(attrs["cue_names"]) == CUE_NAMES
    assert attrs["dff_costs"]["cost_ratio_r"] == pytest.approx(costs["cost_ratio_r"])


def test_tables_equal_a_direct_dff_run(keyframe_cache: Path, tiny_bench: Path, dff: DeepFeatureFlow) -> None:
    cache = FeatureCache(keyframe_cache)
    record = load_dataset(tiny_bench).video(cache.video_ids("val")[0])
    tables = cache.load_episode(record.video_id, sections=("keyframe",)).sections["keyframe"]
    T = record.num_frames
    assert tables["loss"].shape == (T, MAX_DISTANCE + 1) and tables["cues"].shape == (T, MAX_DISTANCE + 1, 4)
    assert tables["det_boxes"].dtype == np.float32 and tables["det_labels"].dtype == np.int8
    invalid = [(t, d) for t in range(T) for d in range(t + 1, MAX_DISTANCE + 1)]  # d > t: no such keyframe
    assert invalid and all(tables["loss"][t, d] == -1 and tables["det_count"][t, d] == 0 for t, d in invalid)
    frames = torch.from_numpy(record.read_frames())
    images = dff.preprocess(frames)
    targets = build_targets(
        [torch.from_numpy(a.boxes).reshape(-1, 4) for a in record.annotations],
        [torch.from_numpy(a.labels) for a in record.annotations],
        dff.anchors,
    )
    with torch.no_grad():
        for t, d in ((0, 0), (7, 0), (7, 1), (7, 7), (23, 20), (23, 13)):
            k = t - d
            feats = dff.features(images[k : k + 1])
            cues = torch.zeros(1, 4)
            if d:
                feats, fo = dff.propagate(feats, images[k : k + 1], images[t : t + 1])
                cues = flow_cues(fo.flow, fo.scale, dff.config.cell_pixels)
            loc, conf = dff.task(feats)
            loss = frame_detection_loss(loc, conf, type(targets)(targets.labels[t : t + 1], targets.offsets[t : t + 1]))
            det = dff.detect(loc, conf)[0]
            # batch size differs from the build's, so float32 kernels may differ in the last bits
            assert tables["loss"][t, d] == pytest.approx(float(loss[0]), rel=1e-5, abs=1e-6)
            assert np.allclose(tables["cues"][t, d], cues[0].numpy(), rtol=1e-5, atol=1e-6)
            n = int(tables["det_count"][t, d])
            assert n == len(det.scores)
            assert np.allclose(tables["det_boxes"][t, d, :n], det.boxes, rtol=1e-4, atol=1e-4)
            assert np.allclose(tables["det_scores"][t, d, :n], det.scores, rtol=1e-4, atol=1e-6)
            assert np.array_equal(tables["det_labels"][t, d, :n], det.labels)
    assert (tables["cues"][:, 0] == 0).all()  # a keyframe runs no flow
    valid = tables["loss"] >= 0
    assert valid.sum() == sum(min(t, MAX_DISTANCE) + 1 for t in range(T))
    assert np.isfinite(tables["loss"][valid]).all() and (tables["cues"][..., 2] <= 1).all()


def test_flow_cues_by_hand() -> None:
    flow = torch.zeros(1, 2, 2, 2)
    flow[0, 0, 0, 0] = 1.0  # one cell moved by one cell = 8 px
    flow[0, 1, 1, 1] = 0.25  # one by 2 px
    scale = torch.ones(1, 3, 2, 2)
    scale[0, 0, 0, 0] = 1.5
    cues = flow_cues(flow, scale, 8.0)[0].tolist()
    assert cues == pytest.approx([(8 + 2) / 4, 8.0, 1 / 4, 0.5 / 12])
    assert LARGE_DISPLACEMENT_PX == 4.0


def test_any_schedules_map_from_the_cache_equals_running_dff(
    keyframe_cache: Path, tiny_bench: Path, dff: DeepFeatureFlow
) -> None:
    cache = FeatureCache(keyframe_cache)
    ds = load_dataset(tiny_bench)
    direct = evaluate_key_durations(dff, tiny_bench, "val", (1, 5), progress=False)
    for l_ in (1, 5):
        gts, dets = [], []
        for vid in cache.video_ids("val"):
            ep = cache.load_episode(vid, sections=("keyframe",))
            t = np.arange(ep.num_frames)
            from_cache = schedule_detections(ep.sections["keyframe"], t % l_)
            ran, _ = video_detections(dff, ds.video(vid).read_frames(), l_)
            assert [len(d.scores) for d in from_cache] == [len(d.scores) for d in ran]
            gts.extend(ep.ground_truth(i) for i in t)
            dets.extend(from_cache)
        # batch sizes differ between the build and the direct run: float32 kernels may differ in the last bits
        assert detection_map50(gts, dets, 4) == pytest.approx(direct[f"key={l_}"]["map50"], abs=1e-6)
    ep = cache.load_episode(cache.video_ids("val")[0], sections=("keyframe",))
    with pytest.raises(ValueError, match="distances must lie in"):
        schedule_detections(ep.sections["keyframe"], np.arange(ep.num_frames))  # d = t > D_max at the end


def test_interleave_section_is_unchanged_by_the_keyframe_section(
    keyframe_cache: Path, tiny_bench: Path, tmp_path: Path
) -> None:
    only = tmp_path / "interleave.h5"
    build_cache(
        tiny_bench,
        only,
        sections=("interleave",),
        splits=("val",),
        weights=keyframe_cache.parent / "detector.pt",
        measure_latency=False,
        progress=False,
    )
    a, b = FeatureCache(only), FeatureCache(keyframe_cache)
    assert a.info.sections == ("interleave",) and dict(a.info.model_weights) == {}
    for vid in a.video_ids("val"):
        ea, eb = a.load_episode(vid), b.load_episode(vid, sections=("interleave",))
        for name in ea.features:
            assert np.array_equal(ea.features[name], eb.features[name])


def test_other_dff_weights_change_the_file_identity(
    keyframe_cache: Path, tiny_bench: Path, dff: DeepFeatureFlow, tmp_path: Path
) -> None:
    changed = DeepFeatureFlow(dff.config)
    changed.load_state_dict(dff.state_dict())
    with torch.no_grad():
        # F predicts a constant flow of half a cell (4 px) to the right and unit scale
        changed.flow_net.predict.weight.zero_()
        changed.flow_net.predict.bias.copy_(torch.tensor([0.5, 0.0] + [1.0] * dff.config.feature_channels))
    path = tmp_path / "dff2.pt"
    save_dff(path, changed, {"command": "test"})
    out = tmp_path / "k.h5"
    build_cache(
        tiny_bench,
        out,
        sections=("keyframe",),
        splits=("test",),
        weights=keyframe_cache.parent / "detector.pt",
        model_weights={"dff": path},
        measure_latency=False,
        progress=False,
    )
    info = FeatureCache(out).info
    assert info.model_weights == {"dff": sha256_file(path)} and info.sections == ("keyframe",)
    assert info.modules["models"]["dff"]["feature_net_digest"] == feature_net_digest(dff.feature_net)
    cues = FeatureCache(out).load_episode(info.videos[0].video_id).sections["keyframe"]["cues"]
    T = len(cues)
    valid = np.array([[0 < d <= t for d in range(MAX_DISTANCE + 1)] for t in range(T)])
    # mean and max flow 4 px, no cell beyond 4 px (strictly), |S - 1| = 0
    assert np.allclose(cues[valid], [4.0, 4.0, 0.0, 0.0], atol=1e-5)


def test_bad_dff_weights_are_typed_errors(keyframe_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    detector = keyframe_cache.parent / "detector.pt"
    with pytest.raises(WeightsError, match=r"\[model\]: not a Deep Feature Flow sidecar"):
        build_cache(tiny_bench, tmp_path / "x.h5", model_weights={"dff": detector}, weights=detector, progress=False)
    with pytest.raises(ConfigError, match=r"--model-weights names \['dff'\]"):
        build_cache(
            tiny_bench,
            tmp_path / "y.h5",
            sections=("interleave",),
            model_weights={"dff": detector},
            weights=detector,
            progress=False,
        )
    # a truncated copy of the shipped weights
    bad = tmp_path / "dff.pt"
    shipped = load_dff()[1]
    src = Path(__file__).resolve().parents[1] / "gistgym" / "weights" / "dff.pt"
    shutil.copy(src.with_suffix(".json"), bad.with_suffix(".json"))
    bad.write_bytes(src.read_bytes()[:1000])
    assert shipped["sha256"] != sha256_file(bad)
    with pytest.raises(WeightsError, match="sha256 differs"):
        build_cache(tiny_bench, tmp_path / "z.h5", model_weights={"dff": bad}, weights=detector, progress=False)
    with h5py.File(keyframe_cache, "r") as f:
        assert "keyframe" in f["sections"]
