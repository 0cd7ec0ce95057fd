"""Exporting an AdaFrame agent (TorchScript / ONNX + sidecar) and the glimpse runtime of ``gistgym detect``."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gistgym.agents.adaframe import AdaFrameNet, adaptive_lookahead, locations_to_indices, stopping_steps
from gistgym.agents.export import load_exported_policy
from gistgym.agents.glimpse_export import (
    GLIMPSE_ENV_ID,
    INPUT_NAMES,
    GlimpsePolicy,
    export_adaframe_run,
    load_glimpse_policy,
)
from gistgym.agents.glimpse_runs import load_adaframe_run
from gistgym.agents.runs import read_run_config
from gistgym.errors import OnnxOpsetError, PolicyFileError, PolicyMismatchError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.glimpse import GlimpseVideos, read_glimpse_section
from gistgym.runtime.glimpse import GlimpseDetectArgs, detect_glimpse
from gistgym.scripts.cli import main
from gistgym.videos.dataset import load_dataset

K_RUNTIME = 6  # the inference budget of the runtime tests (the run trains with K = 3)


@pytest.fixture(scope="module")
def run(glimpse_runs: Path) -> Path:
    return glimpse_runs / "ada"


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("glimpse-exported")
    ts = out / "ada.pt"
    # through the CLI (the dispatch of `gistgym export` to the AdaFrame exporter) ...
    assert main(["export", "--run", str(run), "--format", "torchscript", "--out", str(ts)]) == 0
    # ... and through the API
    onnx = export_adaframe_run(run, out / "ada.onnx", "onnx").path
    return {"torchscript": ts, "onnx": onnx}


def _videos(cache: Path, split: str) -> GlimpseVideos:
    c = FeatureCache(cache, sections=("glimpse",))
    try:
        return read_glimpse_section(c).load_split(c, split)
    finally:
        c.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    return dst


def _edit_sidecar(path: Path, **changes: Any) -> None:
    side = path.with_name(path.name + ".json")
    meta = json.loads(side.read_text())
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = meta
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    side.write_text(json.dumps(meta))


# --- the sidecar ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_sidecar_records_env_cache_config_and_layout(
    fmt: str, exported: dict[str, Path], run: Path, glimpse_cache: Path
) -> None:
    path = exported[fmt]
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    config = read_run_config(run)
    assert meta["format"] == "gistgym-policy" and meta["export_format"] == fmt
    assert meta["onnx_opset"] == (18 if fmt == "onnx" else None)
    assert meta["file_sha256"] == _sha(path)
    assert meta["env"]["id"] == GLIMPSE_ENV_ID and meta["env"]["version"] == 0
    # the glimpse models' sha256 the run's cache recorded, i.e. the weights beside the cache
    glimpse_sha = config["cache_identity"]["model_weights"]["glimpse"]
    assert meta["cache"]["glimpse_weights_sha256"] == glimpse_sha == _sha(glimpse_cache.parent / "glimpse.pt")
    assert meta["cache"]["identity"] == config["cache_identity"]
    assert meta["adaframe"] == config["adaframe"] and meta["num_glimpses"] == 3 and meta["hidden"] == 16
    assert meta["memory"] == {"frames": 8, "position_dim": 16}
    section = read_glimpse_section(FeatureCache(glimpse_cache, sections=("glimpse",)))
    assert meta["class_names"] == list(section.class_names) and len(meta["class_names"]) == meta["num_classes"]
    assert meta["inputs"] == list(INPUT_NAMES)
    layout = meta["observation_layout"]
    assert layout["memory"]["shape"] == ["B", 8, meta["memory_dim"]]
    assert layout["frame_feature"]["shape"] == ["B", meta["feature_dim"]]
    assert meta["gistgym_version"]


# --- parity of the exported modules with the Python network -------------------------------------


@torch.no_grad()
def _record_rollouts(net: AdaFrameNet, videos: GlimpseVideos, *, k: int, seeds: int) -> dict[str, np.ndarray]:
    """Inputs and outputs of every step of sampled rollouts (K glimpses + the initial step per episode).

    Rows are ordered (seed, step, video); ``steps`` = K + 1.
    """
    feats = torch.from_numpy(videos.frame_features)
    lengths = torch.from_numpy(videos.num_frames)
    memory = torch.from_numpy(videos.memory)
    v = len(feats)
    rows = torch.arange(v)
    rec: dict[str, list[torch.Tensor]] = {
        n: [] for n in (*INPUT_NAMES, "logits", "location", "utility", "h_out", "c_out")
    }

    def add(frame: torch.Tensor, h: torch.Tensor, c: torch.Tensor, started: float, heads: Any, new: Any) -> None:
        for name, value in zip(
            rec,
            (frame, memory, h, c, torch.full((v, 1), started), heads.logits, heads.mu, heads.utility, *new),
            strict=True,
        ):
            rec[name].append(value.clone())

    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        keys, values = net.encode_memory(memory)
        heads, state = net.initial(keys, values)
        zero = torch.zeros(v, net.config.hidden)
        add(torch.zeros(v, net.config.feature_dim), zero, zero, 0.0, heads, state)
        for _ in range(k):
            sigma = 0.0 if seed == 0 else 0.15  # seed 0: the deterministic policy
            loc = (heads.mu + sigma * torch.randn(v, generator=gen)).clamp(0.0, 1.0)
            frame = feats[rows, locations_to_indices(loc, lengths)]
            prev = state
            heads, state = net.step(frame, prev, keys, values)
            add(frame, prev[0], prev[1], 1.0, heads, state)
    return {name: torch.cat(values).numpy() for name, values in rec.items()}


def _separating_thresholds(utilities: np.ndarray, count: int) -> list[float]:
    """Thresholds mu between neighbouring utilities (never within 1e-4 of one)."""
    u = np.unique(utilities)
    gaps = np.flatnonzero(np.diff(u) > 2e-4)
    picks = gaps[np.linspace(0, len(gaps) - 1, count).round().astype(int)]
    return [float((u[i] + u[i + 1]) / 2) for i in picks]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_agent_matches_python_on_recorded_rollouts(
    fmt: str, exported: dict[str, Path], run: Path, glimpse_cache: Path
) -> None:
    net = load_adaframe_run(run)
    videos = _videos(glimpse_cache, "train")
    k, seeds = 10, 16
    rec = _record_rollouts(net, videos, k=k, seeds=seeds)
    n = len(rec["started"])
    assert n >= 1000 and n == seeds * (k + 1) * len(videos.video_ids)
    policy = load_glimpse_policy(exported[fmt])
    outputs = policy.step(*(rec[i] for i in INPUT_NAMES))
    out = dict(zip(("logits", "location", "utility", "h_out", "c_out"), outputs, strict=True))
    for name, value in out.items():
        assert value.shape == rec[name].shape, name
        np.testing.assert_allclose(value, rec[name], atol=1e-5, rtol=0, err_msg=name)
    assert (out["logits"].argmax(1) == rec["logits"].argmax(1)).all()
    # the stop step of adaptive lookahead: utilities after glimpses 1..K of every episode
    v = len(videos.video_ids)
    per_episode = {
        src: u.reshape(seeds, k + 1, v)[:, 1:, :].transpose(0, 2, 1).reshape(seeds * v, k)
        for src, u in (("python", rec["utility"]), ("exported", out["utility"]))
    }
    stops = []
    for mu in _separating_thresholds(per_episode["python"], 9):
        for patience in (1, 2):
            want = stopping_steps(per_episode["python"], mu, patience)
            assert (stopping_steps(per_episode["exported"], mu, patience) == want).all(), (mu, patience)
            stops.append(want)
    assert len(np.unique(np.concatenate(stops))) >= 3  # the thresholds do stop at different steps


def test_exported_agent_matches_adaptive_lookahead_closed_loop(
    exported: dict[str, Path], run: Path, glimpse_cache: Path
) -> None:
    """Driving the exported agent step by step (B = 1) over cached features reproduces adaptive_lookahead."""
    net = load_adaframe_run(run)
    videos = _videos(glimpse_cache, "val")
    ref = adaptive_lookahead(net, videos, mu=-math.inf, patience=2, num_glimpses=K_RUNTIME)
    policy = load_glimpse_policy(exported["onnx"])
    for v in range(len(videos.video_ids)):
        mem = videos.memory[v : v + 1]
        h, c = policy.initial_state()
        _, loc, _, h, c = policy.step(np.zeros((1, net.config.feature_dim)), mem, h, c, np.zeros((1, 1)))
        for g in range(K_RUNTIME):
            idx = int(locations_to_indices(torch.from_numpy(loc), torch.tensor(int(videos.num_frames[v])))[0])
            assert idx == ref.indices[v, g]
            logits, loc, util, h, c = policy.step(videos.frame_features[v, idx][None], mem, h, c, np.ones((1, 1)))
            assert util[0] == pytest.approx(ref.utilities[v, g], abs=1e-5)
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()[0]
        np.testing.assert_allclose(probs, ref.probabilities[v], atol=1e-5)


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_loader_refuses_missing_foreign_changed_and_mismatched(
    fmt: str, exported: dict[str, Path], tmp_path: Path
) -> None:
    good = _copy(exported[fmt], tmp_path)
    side = good.with_name(good.name + ".json")
    assert isinstance(load_glimpse_policy(good), GlimpsePolicy)

    original = side.read_text()
    side.unlink()
    with pytest.raises(PolicyFileError, match="sidecar JSON missing") as e:
        load_glimpse_policy(good)
    assert e.value.path == side

    side.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PolicyFileError, match="gistgym-policy") as e:
        load_glimpse_policy(good)
    assert e.value.field == "format"

    side.write_text(original)
    _edit_sidecar(good, env__id="gistgym/Glimpse-v7")
    with pytest.raises(PolicyMismatchError, match=r"Glimpse-v7.*does not have") as e:
        load_glimpse_policy(good)
    assert e.value.field == "env.id" and e.value.path == side

    side.write_text(original)
    _edit_sidecar(good, env__id="gistgym/Interleave-v0")
    with pytest.raises(PolicyMismatchError, match="Interleave-v0") as e:
        load_glimpse_policy(good)
    assert e.value.field == "env.id"

    side.write_text(original)
    with pytest.raises(PolicyMismatchError, match="glimpse_weights_sha256") as e:
        load_glimpse_policy(good, glimpse_weights_sha256="0" * 64)
    assert e.value.field == "cache.glimpse_weights_sha256" and e.value.path == side
    with pytest.raises(PolicyMismatchError, match=r"memory\.frames"):
        load_glimpse_policy(good, memory_frames=16)

    # the interleave loader refuses it by its environment, not with a missing-field error
    with pytest.raises(PolicyMismatchError, match="AdaFrame") as e:
        load_exported_policy(good)
    assert e.value.field == "env.id"

    with open(good, "ab") as f:
        f.write(b"\0")
    with pytest.raises(PolicyFileError, match="changed or replaced") as e:
        load_glimpse_policy(good)
    assert e.value.path == good and e.value.field == "file_sha256"


def test_loader_refuses_another_onnx_opset(exported: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    path = _copy(exported["onnx"], tmp_path)
    _edit_sidecar(path, onnx_opset=17)
    with pytest.raises(OnnxOpsetError, match="sidecar records opset 17") as e:
        load_glimpse_policy(path)
    assert e.value.path == path
    model = onnx.load(str(path))
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 17
    onnx.save(model, str(path))
    _edit_sidecar(path, file_sha256=_sha(path))
    with pytest.raises(OnnxOpsetError, match="opset 17 is not the opset"):
        load_glimpse_policy(path)


# --- the glimpse runtime ----------------------------------------------------------------------------


def _bench_video(untrimmed_bench: Path, index: int = 0) -> tuple[str, Path]:
    record = load_dataset(untrimmed_bench).split("val")[index]
    return record.video_id, record.path


def _offline(net: AdaFrameNet, glimpse_cache: Path, video_id: str, mu: float, patience: int) -> Any:
    videos = _videos(glimpse_cache, "val")
    keep = slice(list(videos.video_ids).index(video_id), None)
    fields = ("labels", "num_frames", "frame_features", "memory", "evidence")
    rest = replace(videos, video_ids=videos.video_ids[keep], **{f: getattr(videos, f)[keep] for f in fields})
    return adaptive_lookahead(net, rest.first(1), mu=mu, patience=patience, num_glimpses=K_RUNTIME)


def _check_outputs(out: Path, summary: dict[str, Any]) -> None:
    from PIL import Image

    assert sorted(p.name for p in out.iterdir()) == ["glimpses.jsonl", "glimpses.png", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["glimpse_order"] == summary["glimpse_order"]
    lines = [json.loads(x) for x in (out / "glimpses.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == [g["frame"] for g in summary["glimpse_order"]]
    assert [x["glimpse"] for x in lines] == list(range(1, summary["glimpses"] + 1))
    with Image.open(out / "glimpses.png") as im:
        assert im.format == "PNG" and im.width >= 64 and im.height >= 64 + 44
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folder left


def test_detect_reproduces_adaptive_lookahead(
    exported: dict[str, Path],
    run: Path,
    glimpse_cache: Path,
    untrimmed_bench: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    net = load_adaframe_run(run)
    video_id, video = _bench_video(untrimmed_bench)
    weights = glimpse_cache.parent / "glimpse.pt"
    full = _offline(net, glimpse_cache, video_id, -math.inf, 2)
    mid = float(np.median(full.utilities[0]))  # stops somewhere in the middle (or late)
    cases = [("onnx", -math.inf, 2), ("torchscript", mid, 1), ("onnx", 1e9, 2), ("torchscript", mid, 2)]
    stops = set()
    for i, (fmt, mu, patience) in enumerate(cases):
        ref = _offline(net, glimpse_cache, video_id, mu, patience)
        out = tmp_path / f"out{i}"
        if i == 0:  # once through the CLI: `gistgym detect` routes the Glimpse-v0 sidecar to the glimpse runtime
            argv = ["detect", str(video), "--policy", str(exported[fmt]), "--out", str(out), "--json"]
            argv += ["--glimpse-weights", str(weights), f"--mu={mu}", "--patience", str(patience)]
            assert main([*argv, "--num-glimpses", str(K_RUNTIME)]) == 0
            summary = json.loads(capsys.readouterr().out)
        else:
            args = GlimpseDetectArgs(
                video=str(video),
                policy=str(exported[fmt]),
                out=str(out),
                glimpse_weights=str(weights),
                mu=mu,
                patience=patience,
                num_glimpses=K_RUNTIME,
            )
            summary = detect_glimpse(args)
        n = int(ref.glimpses[0])
        stops.add(n)
        assert summary["glimpses"] == n, (mu, patience)
        # the runtime's loop stops where the offline rule stops on the utilities it saw
        seen = np.array([[g["utility"] for g in summary["glimpse_order"]]], dtype=np.float32)
        assert int(stopping_steps(seen, mu, patience)[0]) == n
        assert [g["frame"] for g in summary["glimpse_order"]] == ref.indices[0, :n].tolist()
        np.testing.assert_allclose([g["location"] for g in summary["glimpse_order"]], ref.locations[0, :n], atol=1e-6)
        np.testing.assert_allclose(summary["probabilities"], ref.probabilities[0], atol=1e-5)
        assert summary["frames_used"] == int(ref.frames_used[0])
        assert summary["prediction"]["class_index"] == int(np.argmax(ref.probabilities[0]))
        assert summary["kind"] == "glimpse" and summary["glimpse_weights_sha256"] == _sha(weights)
        assert summary["p50_ms"] <= summary["p95_ms"] <= summary["max_ms"] <= summary["total_ms"]
        assert summary["total_ms"] >= summary["memory_ms"] > 0 and summary["gflops_per_video"] > 0
        _check_outputs(out, summary)
    assert len(stops) >= 2 and K_RUNTIME in stops  # early stops and the full budget were both exercised


def test_detect_refuses_other_glimpse_weights_and_bad_videos(
    exported: dict[str, Path],
    glimpse_cache: Path,
    untrimmed_bench: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, video = _bench_video(untrimmed_bench)
    policy = str(exported["torchscript"])
    out = tmp_path / "out"
    # the shipped glimpse weights are not the ones the test cache was built from
    with pytest.raises(PolicyMismatchError, match="--glimpse-weights") as e:
        detect_glimpse(GlimpseDetectArgs(video=str(video), policy=policy, out=str(out)))
    assert e.value.field == "cache.glimpse_weights_sha256"
    assert not out.exists()
    weights = str(glimpse_cache.parent / "glimpse.pt")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01 definitely not a video" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for v in (bad, empty):
        code = main(["detect", str(v), "--policy", policy, "--out", str(out), "--glimpse-weights", weights])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(v) in err, err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    # an interleave-only option with a glimpse policy is a one-line error too
    code = main(["detect", str(video), "--policy", policy, "--out", str(out), "--async"])
    assert code == 2 and "--async" in capsys.readouterr().err
