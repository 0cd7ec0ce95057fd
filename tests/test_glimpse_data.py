"""The untrimmed benchmark, AdaFrame's frozen models and the glimpse cache section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.glimpse import (
    GlimpseModels,
    glimpse_costs,
    load_glimpse,
    location_to_index,
    memory_positions,
    memory_with_positions,
    pool_features,
    positional_encoding,
    save_glimpse,
)
from gistgym.errors import CacheSectionError, ConfigError, WeightsError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.build import _resolve_sections
from gistgym.feature_cache.glimpse import read_glimpse_section
from gistgym.scripts.cli import main
from gistgym.videos.dataset import load_dataset
from gistgym.videos.untrimmed import BACKGROUND, EVIDENCE, UntrimmedConfig, evidence_mask, generate_untrimmed_video


def test_untrimmed_videos_show_the_class_in_one_window_only() -> None:
    cfg = UntrimmedConfig(num_frames=40, evidence_len=(6, 10))
    for i in range(6):
        video = generate_untrimmed_video(1, "train", i, cfg)
        again = generate_untrimmed_video(1, "train", i, cfg)
        np.testing.assert_array_equal(video.frames, again.frames)
        mask = evidence_mask(video)
        idx = np.flatnonzero(mask)
        assert 6 <= len(idx) <= 10 and np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))  # one window
        for t, ann in enumerate(video.annotations):
            assert ann.segment == (EVIDENCE if mask[t] else BACKGROUND)
            assert (ann.labels == video.label).all()  # only class objects are annotated
            if not mask[t]:
                assert len(ann.labels) == 0
        assert sum(len(a.labels) for a in video.annotations) > 0
    assert not np.array_equal(
        generate_untrimmed_video(1, "train", 0, cfg).frames, generate_untrimmed_video(1, "val", 0, cfg).frames
    )
    with pytest.raises(ConfigError, match="evidence_len"):
        UntrimmedConfig(num_frames=8, evidence_len=(5, 12))


def test_default_sections_follow_the_dataset_kind(untrimmed_bench: Path) -> None:
    assert load_dataset(untrimmed_bench).generator["name"] == "gistgym.untrimmed"
    assert _resolve_sections((), "untrimmed") == ("glimpse",)
    assert set(_resolve_sections((), "detection")) == {"interleave", "keyframe"}
    assert _resolve_sections(("glimpse", "interleave"), "detection") == ("interleave", "glimpse")


def test_memory_positions_and_encoding() -> None:
    np.testing.assert_array_equal(memory_positions(48, 16), np.arange(16) * 3 + 1)  # centres of 16 parts
    # floor((i + 0.5) * 5 / 8): 0.31, 0.94, 1.56, 2.19, 2.81, 3.44, 4.06, 4.69
    np.testing.assert_array_equal(memory_positions(5, 8), [0, 0, 1, 2, 2, 3, 4, 4])
    enc = positional_encoding(np.array([0.0, 0.5]), 4)
    np.testing.assert_allclose(enc, [[0, 0, 1, 1], [1, 0, 0, -1]], atol=1e-6)  # sin(pi k x), cos(pi k x), k=1,2
    mem = memory_with_positions(np.ones((3, 2)), np.array([0, 1, 2]), 3, 4)
    assert mem.shape == (3, 6) and mem.dtype == np.float32
    np.testing.assert_allclose(mem[2, 2:], positional_encoding(np.array([1.0]), 4)[0])
    np.testing.assert_array_equal(location_to_index(np.array([0.0, 0.49, 0.5, 1.0, 1.7, -1]), 3), [0, 1, 1, 2, 2, 0])


def test_glimpse_models_features_and_weights_round_trip(nontrivial_model: InterleavedDetector, tmp_path: Path) -> None:
    models = GlimpseModels.from_detector(nontrivial_model, hidden=8, memory_frames=4)
    frames = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    feats = models.frame_features(frames, batch=4)
    with torch.no_grad():
        images = nontrivial_model.preprocess(torch.from_numpy(frames))
        expect = pool_features(nontrivial_model.extractor(0)(images)).numpy()
    np.testing.assert_allclose(feats, expect, rtol=1e-5, atol=1e-6)
    memory, positions = models.memory_features(frames)
    assert memory.shape == (4, models.config.feature_dim) and positions.tolist() == [0, 2, 3, 5]
    costs = glimpse_costs(models, measure=False)
    assert costs.frame_flops > 4 * costs.memory_frame_flops > 0  # heavy at full resolution, light at half
    weights = tmp_path / "g.pt"
    save_glimpse(weights, models, {"command": "test"})
    loaded, meta = load_glimpse(weights)
    assert meta["model"] == "adaframe-glimpse"
    np.testing.assert_allclose(loaded.frame_features(frames), feats, rtol=1e-6)
    side = json.loads(weights.with_suffix(".json").read_text())
    weights.with_suffix(".json").write_text(json.dumps({**side, "model": "deep-feature-flow"}))
    with pytest.raises(WeightsError, match="not a glimpse-models sidecar"):
        load_glimpse(weights)


def test_glimpse_section_contents(glimpse_cache: Path, untrimmed_bench: Path) -> None:
    cache = FeatureCache(glimpse_cache, sections=("glimpse",))
    section = read_glimpse_section(cache)
    videos = section.load_split(cache, "train")
    weights, _ = load_glimpse(glimpse_cache.parent / "glimpse.pt")
    for key, value in weights.classifier.state_dict().items():
        np.testing.assert_array_equal(section.classifier.state_dict()[key].numpy(), value.numpy())
    records = load_dataset(untrimmed_bench).split("train")
    assert videos.video_ids == tuple(r.video_id for r in records)
    for i, record in enumerate(records):
        frames = record.read_frames()
        np.testing.assert_allclose(videos.frame_features[i, : len(frames)], weights.frame_features(frames), rtol=1e-5)
        assert videos.labels[i] == record.label
        np.testing.assert_array_equal(
            videos.evidence[i, : len(frames)], [a.segment == EVIDENCE for a in record.annotations]
        )
    assert videos.memory.shape == (6, 8, section.config.memory_dim)
    assert section.class_names == ("striped-disc", "barred-disc", "checkered-box", "dotted-box")
    cache.close()


def test_caches_without_the_section_and_bad_commands(tiny_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CacheSectionError, match="glimpse"):
        read_glimpse_section(FeatureCache(tiny_cache, sections=("glimpse",)))
    assert main(["backbones", "train-glimpse", "--videos", "/nonexistent/videos"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gistgym: error:") and "/nonexistent/videos" in err[0]
    assert main(["videos", "make", "--kind", "trimmed", "--out", "/tmp/x"]) == 2
    assert "--kind must be" in capsys.readouterr().err


def test_damaged_glimpse_sections_are_refused(glimpse_cache: Path, tmp_path: Path) -> None:
    import shutil

    import h5py

    from gistgym.errors import CacheDataError, CacheError

    bad = tmp_path / "bad.h5"
    shutil.copy(glimpse_cache, bad)
    cache = FeatureCache(bad, sections=("glimpse",))
    vid = cache.video_ids("val")[0]
    cache.close()
    with h5py.File(bad, "r+") as f:
        del f[f"videos/{vid}/glimpse/memory_features"]
        f[f"videos/{vid}/glimpse/memory_features"] = np.zeros((3, 5), np.float32)
    cache = FeatureCache(bad, sections=("glimpse",), check_finite=True)
    section = read_glimpse_section(cache)
    with pytest.raises(CacheError, match=r"memory_features of shape \(3, 5\), expected \(8, 128\)") as err:
        section.load_split(cache, "val")
    assert err.value.field == f"videos/{vid}/glimpse/memory_features"
    cache.close()
    with h5py.File(bad, "r+") as f:
        f[f"videos/{vid}/glimpse/frame_features"][2, 0] = np.nan
    cache = FeatureCache(bad, sections=("glimpse",), check_finite=True)
    with pytest.raises(CacheDataError, match="NaN/inf"):
        read_glimpse_section(cache).load_split(cache, "val")
    cache.close()
