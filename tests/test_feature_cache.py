"""Feature cache: round trip of every field, metadata, determinism, resume, handles, CLI."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.evaluation import extract_all
from gistgym.backbones.flops import step_costs
from gistgym.backbones.weights import sha256_file
from gistgym.errors import CacheError
from gistgym.feature_cache import FeatureCache, verify_cache
from gistgym.feature_cache import build as build_module
from gistgym.feature_cache.build import build_cache as _build_cache
from gistgym.feature_cache.sections import interleave_modules
from gistgym.scripts.cli import main
from gistgym.videos.dataset import load_dataset

# These tests are about the cache machinery; they build the interleave section only, like the
# session's ``tiny_cache`` (the keyframe section has its own tests in test_keyframe_cache.py).
build_cache = functools.partial(_build_cache, sections=("interleave",))


def all_datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a cache file by HDF5 path."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


def assert_same_datasets(a: Path, b: Path) -> None:
    da, db = all_datasets(a), all_datasets(b)
    assert sorted(da) == sorted(db)
    for key in da:
        assert da[key].dtype == db[key].dtype, key
        assert da[key].shape == db[key].shape, key
        assert da[key].tobytes() == db[key].tobytes(), key


def weights_of(cache: Path) -> Path:
    return cache.parent / "detector.pt"


# --- round trip ---------------------------------------------------------------------------------


def test_features_equal_the_detectors_own_extract_outputs(
    tiny_cache: Path, tiny_bench: Path, nontrivial_model: InterleavedDetector
) -> None:
    ds = load_dataset(tiny_bench)
    cache = FeatureCache(tiny_cache, sections=("interleave",))
    for split in ("train", "val", "test"):
        for record in ds.split(split):
            ep = cache.load_episode(record.video_id)
            expected = extract_all(nontrivial_model, [record]).features
            assert list(ep.features) == ["heavy", "light", "light+shift"]
            for i, name in enumerate(nontrivial_model.extractor_names):
                want = expected[i][0].numpy().astype(np.float16)
                got = ep.features[name]
                assert got.dtype == np.float16 and got.shape == (24, 64, 8, 8)
                assert np.array_equal(got, want), (record.video_id, name)
                assert (got > 0).mean() > 0.2  # real features, not zeros
            # per-frame (batch 1) extraction agrees to float16 precision: nothing depends on batching
            frames = torch.from_numpy(record.read_frames())
            with torch.no_grad():
                single = torch.cat(
                    [nontrivial_model.extract(0, nontrivial_model.preprocess(frames[t : t + 1]))[0] for t in range(3)]
                )
            np.testing.assert_allclose(ep.features["heavy"][:3].astype(np.float32), single.numpy(), rtol=0, atol=4e-3)


def test_ground_truth_label_and_frame_count_round_trip(tiny_cache: Path, tiny_bench: Path) -> None:
    ds = load_dataset(tiny_bench)
    cache = FeatureCache(tiny_cache)
    seen_objects = 0
    for split, ids in ds.splits.items():
        assert cache.video_ids(split) == ids
        for record in ds.split(split):
            ep = cache.load_episode(record.video_id)
            assert (ep.video_id, ep.split, ep.label, ep.num_frames) == (record.video_id, split, record.label, 24)
            assert ep.frame_offsets[0] == 0 and ep.frame_offsets[-1] == len(ep.labels) == len(ep.boxes)
            for t, want in enumerate(record.annotations):
                got = ep.ground_truth(t)
                np.testing.assert_array_equal(got.boxes, want.boxes)
                np.testing.assert_array_equal(got.labels, want.labels)
                np.testing.assert_array_equal(got.track_ids, want.track_ids)
                np.testing.assert_array_equal(got.speeds, want.speeds)
                assert got.segment == want.segment
                assert got.boxes.dtype == np.float32 and got.labels.dtype == np.int64
                seen_objects += len(want.labels)
    assert seen_objects > 20
    assert cache.info.num_frames == 5 * 24 and cache.info.splits == ("train", "val", "test")


def test_embedded_memory_and_head_rebuild_the_original_modules(
    tiny_cache: Path, nontrivial_model: InterleavedDetector
) -> None:
    section = FeatureCache(tiny_cache).section("interleave")
    modules = interleave_modules(section.attrs, section.tensors)
    assert modules.extractor_names == nontrivial_model.extractor_names
    assert modules.config == nontrivial_model.config
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 64, 8, 8, generator=g) * 6
    state = nontrivial_model.memory.initial_state(2, 8, 8)
    state = type(state)(torch.randn(2, 64, 8, 8, generator=g), torch.randn(2, 64, 8, 8, generator=g))
    with torch.no_grad():
        out_a, st_a = nontrivial_model.memory(x, state)
        out_b, st_b = modules.memory(x, state)
        assert torch.equal(out_a, out_b) and torch.equal(st_a.c, st_b.c) and torch.equal(st_a.h, st_b.h)
        for a, b in zip(nontrivial_model.head(out_a), modules.head(out_b), strict=True):
            assert torch.equal(a, b)
    assert not modules.memory.training and not any(p.requires_grad for p in modules.head.parameters())


def test_identity_metadata(tiny_cache: Path, tiny_bench: Path, nontrivial_model: InterleavedDetector) -> None:
    info = FeatureCache(tiny_cache).info
    assert info.schema_version == 1 and info.sections == ("interleave",)
    assert info.weights_sha256 == sha256_file(weights_of(tiny_cache))
    config = json.loads(json.dumps(nontrivial_model.config.to_dict()))
    assert info.modules["detector"]["config"] == config
    assert [e["name"] for e in info.modules["extractors"]] == ["heavy", "light", "light+shift"]
    assert info.modules["extractors"][2]["config"]["shift_fraction"] == 0.125
    assert info.modules["memory"]["config"]["groups"] == 4
    assert info.preprocessing["mean"] == list(nontrivial_model.config.mean)
    assert info.preprocessing["image_size"] == 64
    for cost in step_costs(nontrivial_model, measure=False):
        recorded = info.costs["per_extractor"][cost.extractor]
        assert recorded["step_flops"] == cost.step_flops and recorded["extractor_flops"] == cost.extractor_flops
    dataset_json = json.loads((tiny_bench / "dataset.json").read_text())
    assert info.dataset["generator"] == dataset_json["generator"]
    assert info.storage["compression"] == "none"
    checks = FeatureCache(tiny_cache).checksums()
    assert set(checks["videos"]) == set(info.video_ids())
    assert (
        "interleave/heavy" in checks["videos"]["val_0000"] and "memory/gates.1.bias" in checks["sections"]["interleave"]
    )


# --- the episode API --------------------------------------------------------------------------


def test_episode_is_frozen_read_only_and_shows_shapes(tiny_cache: Path) -> None:
    cache = FeatureCache(tiny_cache)
    ep = cache.load_episode("val_0000")
    text = repr(ep)
    assert "(24, 64, 8, 8) float16" in text and "array(" not in text and len(text) < 400
    assert "videos=5" in repr(cache)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ep.label = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        ep.features["heavy"][0, 0, 0, 0] = 1
    with pytest.raises(TypeError):
        ep.features["heavy"] = ep.features["light"]  # type: ignore[index]
    with pytest.raises(IndexError):
        ep.ground_truth(24)
    only_gt = cache.load_episode("val_0000", sections=())
    assert dict(only_gt.sections) == {}
    with pytest.raises(CacheError, match="without the interleave section"):
        _ = only_gt.features


def test_handle_opens_lazily_and_never_crosses_fork_or_pickle(tiny_cache: Path) -> None:
    cache = FeatureCache(tiny_cache)
    assert cache._handle is None  # validated, but no handle kept until first use
    ep = cache.load_episode("train_0000")
    parent_handle = cache._handle
    assert parent_handle is not None
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must open its own handle and read the same data
        ok = False
        try:
            child = cache.load_episode("train_0000")
            ok = cache._handle is not parent_handle and np.array_equal(child.features["heavy"], ep.features["heavy"])
        finally:
            os.write(write_fd, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"1"
    os.waitpid(pid, 0)
    assert cache._handle is parent_handle  # the parent's handle is untouched
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._handle is None
    assert np.array_equal(clone.load_episode("train_0000").features["light"], ep.features["light"])
    cache.close()
    assert cache._handle is None
    assert cache.load_episode("train_0001").num_frames == 24  # reopens after close


# --- determinism and resume ----------------------------------------------------------------------


def test_two_builds_and_two_workers_give_identical_datasets(tiny_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    again = build_cache(
        tiny_bench, tmp_path / "again.h5", weights=weights_of(tiny_cache), measure_latency=False, progress=False
    )
    assert again.computed == 5 and again.frames == 120
    # decoding (a thread) and the forward passes (this one) each take at most the build's wall time
    assert 0 < again.compute_seconds < 2 * again.seconds
    assert_same_datasets(tiny_cache, tmp_path / "again.h5")
    build_cache(
        tiny_bench,
        tmp_path / "two.h5",
        weights=weights_of(tiny_cache),
        workers=2,
        measure_latency=False,
        progress=False,
    )
    assert_same_datasets(tiny_cache, tmp_path / "two.h5")
    assert FeatureCache(tmp_path / "two.h5").checksums() == FeatureCache(tiny_cache).checksums()
    assert not (tmp_path / "two.h5.parts").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"again.h5", "two.h5"}


def test_resume_reuses_only_current_complete_shards(
    tiny_cache: Path, tiny_bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "c.h5"
    weights = weights_of(tiny_cache)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("simulated crash before combining")

    monkeypatch.setattr(build_module, "combine_shards", crash)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tiny_bench, out, weights=weights, measure_latency=False, progress=False)
    monkeypatch.undo()
    parts = tmp_path / "c.h5.parts"
    shards = sorted(p.name for p in parts.iterdir() if p.name != "owner.json")
    assert shards == [f"{v}.h5" for v in sorted(FeatureCache(tiny_cache).video_ids())]
    assert not out.exists() and not list(tmp_path.glob("c.h5.tmp-*"))
    with h5py.File(parts / "train_0000.h5", "a") as f:  # stale: other weights
        f.attrs["weights_sha256"] = "0" * 64
    with h5py.File(parts / "train_0001.h5", "a") as f:  # partial: no completion mark
        del f["videos/train_0001"].attrs["complete"]
    (parts / "val_0000.h5").unlink()  # missing
    (parts / ".val_0001.abc.h5.tmp").write_bytes(b"half a shard")  # stray temp of a killed writer
    report = build_cache(tiny_bench, out, weights=weights, measure_latency=False, progress=False)
    assert (report.computed, report.reused) == (3, 2)
    assert not parts.exists()
    assert_same_datasets(tiny_cache, out)
    assert verify_cache(out).ok


def test_existing_output_is_up_to_date_or_refused(tiny_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.h5"
    shutil.copy(tiny_cache, out)
    weights = weights_of(tiny_cache)
    report = build_cache(tiny_bench, out, weights=weights, measure_latency=False, progress=False)
    assert report.up_to_date and report.computed == 0
    with pytest.raises(CacheError, match=r"differs in .*videos.*--overwrite") as err:
        build_cache(tiny_bench, out, splits=("val",), weights=weights, measure_latency=False, progress=False)
    assert str(out) in str(err.value)
    report = build_cache(
        tiny_bench, out, splits=("val",), weights=weights, overwrite=True, measure_latency=False, progress=False
    )
    assert report.computed == 2 and FeatureCache(out).video_ids() == ("val_0000", "val_0001")


# --- command line -----------------------------------------------------------------------------------


def test_cli_info_and_verify(tiny_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "info", str(tiny_cache), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"] == {
        "train": {"videos": 2, "frames": 48},
        "val": {"videos": 2, "frames": 48},
        "test": {"videos": 1, "frames": 24},
    }
    heavy = info["datasets"]["interleave/heavy"]
    assert heavy["bytes"] == 5 * 24 * 64 * 8 * 8 * 2 and heavy["stored_bytes"] == heavy["bytes"]
    assert info["weights_sha256"] == sha256_file(weights_of(tiny_cache))
    assert main(["cache", "info", str(tiny_cache)]) == 0
    text = capsys.readouterr().out
    assert "val: 2 videos, 48 frames" in text and "interleave" in text
    assert main(["cache", "verify", str(tiny_cache), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["videos"] == 5 and report["datasets"] == 5 * 9 + 14
    assert main(["cache", "verify", str(tiny_cache), "--weights", str(weights_of(tiny_cache))]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_reports_changed_bytes_and_exits_1(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_cache, bad)
    with h5py.File(bad, "a") as f:
        f["videos/val_0001/interleave/light"][5, 0, 0, 0] += np.float16(0.5)  # finite, plausible, wrong
        f["videos/test_0000/gt/labels"][0] = (f["videos/test_0000/gt/labels"][0] + 1) % 4
        f["sections/interleave/head/predict.bias"][0] += 1.0
    report = verify_cache(bad)
    assert not report.ok
    assert {(m.video, m.where, m.problem) for m in report.mismatches} == {
        ("val_0001", "videos/val_0001/interleave/light", "checksum differs"),
        ("test_0000", "videos/test_0000/gt/labels", "checksum differs"),
        (None, "sections/interleave/head/predict.bias", "checksum differs"),
    }
    assert main(["cache", "verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "videos/val_0001/interleave/light: checksum differs" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sections", "segmentation"], "unknown cache section 'segmentation'"),
        (["--split", "holdout"], "split(s) ['holdout'] not in"),
        (["--compression", "gzip", "--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_cli_build_bad_arguments_exit_2(
    args: list[str], needle: str, tiny_cache: Path, tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cache", "build", "--videos", str(tiny_bench), "--out", str(tmp_path / "x.h5")]
    argv += ["--weights", str(weights_of(tiny_cache)), "--no-progress", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not (tmp_path / "x.h5").exists()


def test_cli_build_missing_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "build", "--videos", str(tmp_path / "none"), "--out", str(tmp_path / "x.h5")]) == 2
    assert "dataset folder does not exist" in capsys.readouterr().err
    assert main(["cache", "build", "--videos", str(tmp_path)]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_cli_build_gzip_round_trip(
    tiny_cache: Path, tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gz.h5"
    argv = ["cache", "build", "--videos", str(tiny_bench), "--out", str(out), "--split", "val"]
    argv += ["--weights", str(weights_of(tiny_cache)), "--compression", "gzip", "--no-latency", "--no-progress"]
    argv += ["--sections", "interleave"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    gz, plain = FeatureCache(out), FeatureCache(tiny_cache)
    assert gz.info.storage["compression"] == "gzip"
    for vid in gz.video_ids():
        a, b = gz.load_episode(vid), plain.load_episode(vid)
        for name in a.features:
            assert np.array_equal(a.features[name], b.features[name])
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out


def test_bad_video_fails_the_build_with_its_typed_error(tiny_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    from gistgym.errors import VideoError

    bench = tmp_path / "bench"
    shutil.copytree(tiny_bench, bench)
    video = bench / "val_0001" / "video.mp4"
    video.write_bytes(video.read_bytes()[:300])
    out = tmp_path / "bad.h5"
    with pytest.raises(VideoError) as err:
        build_cache(bench, out, splits=("val",), weights=weights_of(tiny_cache), measure_latency=False, progress=False)
    assert err.value.path == video and not out.exists()
    assert [p.name for p in (tmp_path / "bad.h5.parts").glob("*.h5")] == ["val_0000.h5"]  # kept for the re-run


def test_ray_flag_without_ray_installed_is_a_config_error(
    tiny_cache: Path,
    tiny_bench: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    argv = ["cache", "build", "--videos", str(tiny_bench), "--out", str(tmp_path / "r.h5"), "--split", "val"]
    argv += ["--weights", str(weights_of(tiny_cache)), "--no-progress", "--ray"]
    assert main(argv) == 2
    assert "pip install 'gistgym[ray]'" in capsys.readouterr().err


def test_one_worker_decodes_the_next_video_and_writes_shards_while_computing(
    tiny_cache: Path, tiny_bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workers=1: video i + 1 is decoded in a thread during video i's forward pass; shards are written in a thread."""
    import threading
    import time

    events: list[tuple[str, str, str, float]] = []
    read, write = build_module._read_frames, build_module._write_shard

    def logged_read(job: build_module.VideoJob) -> np.ndarray:
        events.append(("decode", job.record.video_id, threading.current_thread().name, time.perf_counter()))
        return read(job)

    def logged_write(parts: Path, out: Path, record: object, *args: object) -> dict[str, str]:
        vid = record.video_id  # type: ignore[attr-defined]
        events.append(("write", vid, threading.current_thread().name, time.perf_counter()))
        return write(parts, out, record, *args)  # type: ignore[arg-type]

    section = build_module.get_section("interleave")
    compute = section.compute

    def slow_compute(models: object, frames: np.ndarray, record: object) -> dict[str, np.ndarray]:
        events.append(("compute", record.video_id, threading.current_thread().name, time.perf_counter()))  # type: ignore[attr-defined]
        time.sleep(0.3)  # long enough for the next decode to start meanwhile
        out = compute(models, frames, record)  # type: ignore[arg-type]
        events.append(("computed", record.video_id, threading.current_thread().name, time.perf_counter()))  # type: ignore[attr-defined]
        return out

    monkeypatch.setattr(build_module, "_read_frames", logged_read)
    monkeypatch.setattr(build_module, "_write_shard", logged_write)
    slow = dataclasses.replace(section, compute=slow_compute)
    get_section = build_module.get_section
    monkeypatch.setattr(build_module, "get_section", lambda name: slow if name == "interleave" else get_section(name))
    out = tmp_path / "overlap.h5"
    _build_cache(tiny_bench, out, splits=("val",), sections=("interleave",), weights=weights_of(tiny_cache),
                 measure_latency=False, progress=False)  # fmt: skip
    at = {(kind, vid): (thread, t) for kind, vid, thread, t in events}
    ids = sorted({vid for _, vid, _, _ in events})
    assert len(ids) >= 2
    for first, second in itertools.pairwise(ids):
        assert at["decode", second][0].startswith("gistgym-decode")
        assert at["decode", second][1] < at["computed", first][1]  # sequential: after it
        assert at["write", first][0].startswith("gistgym-shard-writer")
    # the same cache as every other build of these videos (the datasets are checked against their checksums)
    verify_cache(out)
