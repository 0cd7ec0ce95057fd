"""Execution engines: parity with eager for every engine and runtime, the export cache, bad input."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gistgym.agents.baselines import FixedTauPolicy
from gistgym.backbones import engines
from gistgym.backbones.engines import (
    PARITY_ATOL,
    BatchedMemoryHead,
    EngineError,
    ExportMismatchError,
    compile_module,
    onnx_export,
)
from gistgym.backbones.weights import load_detector
from gistgym.runtime.online import AsyncStats, OnlineMemory, run_async, run_sync
from gistgym.scripts.cli import main
from gistgym.videos.dataset import load_dataset

COMPILED = ("onnxruntime", "torchscript")
BOX_ATOL = 1e-3
"""Boxes are decoded to pixels (64x64 frames): an offset difference of 1e-5 moves a corner by about 1e-4 px."""


@pytest.fixture(scope="module", autouse=True)
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every export of this module goes to a fresh folder (not the user's cache)."""
    folder = tmp_path_factory.mktemp("engine-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(engines.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def weights(tiny_cache: Path) -> Path:
    return tiny_cache.parent / "detector.pt"


@pytest.fixture(scope="module")
def model(weights: Path) -> Any:
    return load_detector(weights)[0]


@pytest.fixture(scope="module")
def frames(tiny_bench: Path) -> np.ndarray:
    return load_dataset(tiny_bench).split("val")[0].read_frames()


def _assert_same_detections(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores, atol=PARITY_ATOL)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=BOX_ATOL)


# --- parity: the interleaved runtime ---------------------------------------------------------------
@pytest.mark.parametrize("engine", COMPILED)
def test_interleaved_modules_match_eager_frame_by_frame(engine: str, model: Any, frames: np.ndarray) -> None:
    from gistgym.runtime.frozen import check_frozen_parity, engine_modules

    images = model.preprocess(torch.from_numpy(frames[:8]))
    assert check_frozen_parity(model, images, engine) <= PARITY_ATOL
    assert engine_modules(model, engine) is engine_modules(model, engine)  # compiled once per detector


def test_a_shift_step_from_zero_buffers_is_the_extractors_first_frame(model: Any, frames: np.ndarray) -> None:
    from gistgym.backbones.engines import ShiftExtractorStep

    index = next(i for i in range(len(model.extractors)) if model.extractor(i).uses_shift)
    images = model.preprocess(torch.from_numpy(frames[:2]))
    step = ShiftExtractorStep(model.extractor(index)).eval()
    with torch.no_grad():
        zeros = step.zero_buffers(images[:1])
        out = step(images[:1], *zeros)
        feats, state = model.extract(index, images[:1])
        assert torch.equal(out[0], feats) and all(torch.equal(a, b) for a, b in zip(out[1:], state, strict=True))
        # the second frame sees the first one's buffers, not zeros
        again = step(images[1:2], *out[1:])
        assert torch.equal(again[0], model.extract(index, images[1:2], state)[0])
        assert not torch.equal(again[0], step(images[1:2], *zeros)[0])


@pytest.mark.parametrize("engine", COMPILED)
def test_the_runtime_runs_a_shift_extractor_compiled_with_its_buffers_carried(
    engine: str, model: Any, frames: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gistgym.runtime import frozen
    from gistgym.runtime.frozen import engine_modules

    index = next(i for i in range(len(model.extractors)) if model.extractor(i).uses_shift)
    steps = engine_modules(model, engine).shift_steps
    assert [s is not None for s in steps] == [model.extractor(i).uses_shift for i in range(len(steps))]
    assert engine_modules(model, "eager").shift_steps == (None,) * len(steps)
    actions = (0, 1, index)
    got, want = OnlineMemory(model, actions, engine=engine), OnlineMemory(model, actions, engine="eager")
    calls = []
    run = got._shift_steps[index]
    assert run is not None
    got._shift_steps = tuple(
        (lambda *a: calls.append(1) or run(*a)) if i == index else s for i, s in enumerate(got._shift_steps)
    )
    for memory in (got, want):
        for t, image in enumerate(frames[:8]):
            memory.frame(0 if t % 4 == 0 else 2, image)  # the shift extractor on 6 frames, its buffers carried
        memory.reset()
    assert len(calls) == 6
    for t, image in enumerate(frames[:5]):  # after a reset: zero buffers again
        action = 0 if t == 0 else 2
        (rec, dets), (want_rec, want_dets) = got.frame(action, image), want.frame(action, image)
        np.testing.assert_allclose(rec.observation["state"], want_rec.observation["state"], atol=PARITY_ATOL, rtol=0)
        _assert_same_detections(dets, want_dets)
    # a compiled step that drops its buffers is caught by the parity check
    broken = lambda images, *buffers: steps[index](images, *(b * 0 for b in buffers))  # noqa: E731
    images = model.preprocess(torch.from_numpy(frames[:4]))
    assert frozen.shift_step_parity(model, index, steps[index], images) <= PARITY_ATOL
    assert frozen.shift_step_parity(model, index, broken, images) > 100 * PARITY_ATOL


@pytest.mark.parametrize("engine", COMPILED)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_interleaved_runtime_gives_eager_schedule_and_detections(
    engine: str, mode: str, model: Any, frames: np.ndarray
) -> None:
    def run(which: str) -> list[Any]:
        memory = OnlineMemory(model, (0, 1), engine=which)
        names = ("heavy", "light")
        if mode == "sync":
            return list(run_sync(memory, iter(frames), FixedTauPolicy(3), action_names=names))
        # a fixed fuse delay: the schedule must not depend on timing
        stats = AsyncStats()
        return list(
            run_async(memory, iter(frames), FixedTauPolicy(3), action_names=names, heavy_delay_frames=2, stats=stats)
        )

    got, want = run(engine), run("eager")
    assert [(r.heavy, r.fused_from, r.state_written) for r in got] == [
        (r.heavy, r.fused_from, r.state_written) for r in want
    ]
    assert sum(r.heavy for r in got) >= 3
    for a, b in zip(got, want, strict=True):
        _assert_same_detections(a.detections, b.detections)
        np.testing.assert_allclose(a.observation["state"], b.observation["state"], atol=PARITY_ATOL)
        np.testing.assert_array_equal(a.observation["history"], b.observation["history"])


# --- parity: Deep Feature Flow --------------------------------------------------------------------
@pytest.mark.parametrize("engine", COMPILED)
def test_dff_runtime_gives_eager_keyframes_and_detections(engine: str, frames: np.ndarray) -> None:
    from gistgym.agents.keyframe_baselines import FlowThresholdPolicy
    from gistgym.backbones.dff import load_dff
    from gistgym.runtime.keyframe import run_keyframe

    dff = load_dff()[0]

    def run(which: str) -> list[Any]:
        policy = FlowThresholdPolicy(1.0)
        return list(run_keyframe(dff, iter(frames), policy, max_distance=6, history_len=20, engine=which))

    got, want = run(engine), run("eager")
    assert [r.keyframe for r in got] == [r.keyframe for r in want]
    assert 1 < sum(r.keyframe for r in got) < len(got)
    for a, b in zip(got, want, strict=True):
        _assert_same_detections(a.detections, b.detections)
        if b.cues is not None:
            assert a.cues is not None
            np.testing.assert_allclose(a.cues, b.cues, atol=PARITY_ATOL)


# --- parity: the glimpse runtime ------------------------------------------------------------------
@pytest.fixture(scope="module")
def adaframe_onnx(glimpse_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gistgym.agents.glimpse_export import export_adaframe_run

    return export_adaframe_run(glimpse_runs / "ada", tmp_path_factory.mktemp("ada") / "ada.onnx", "onnx").path


def test_glimpse_runtime_gives_eager_glimpses_and_prediction(
    adaframe_onnx: Path, glimpse_cache: Path, untrimmed_bench: Path, tmp_path: Path
) -> None:
    from gistgym.runtime.glimpse import GlimpseDetectArgs, detect_glimpse

    video = load_dataset(untrimmed_bench).split("val")[0].path
    summaries = {}
    for engine in (*COMPILED, "eager"):
        args = GlimpseDetectArgs(
            video=str(video),
            policy=str(adaframe_onnx),
            out=str(tmp_path / engine),
            glimpse_weights=str(glimpse_cache.parent / "glimpse.pt"),
            mu=-float("inf"),
            num_glimpses=5,
            engine=engine,
        )
        summaries[engine] = detect_glimpse(args)
    want = summaries["eager"]
    for engine in COMPILED:
        got = summaries[engine]
        assert got["engine"] == engine
        assert [g["frame"] for g in got["glimpse_order"]] == [g["frame"] for g in want["glimpse_order"]]
        np.testing.assert_allclose(
            [g["utility"] for g in got["glimpse_order"]],
            [g["utility"] for g in want["glimpse_order"]],
            atol=PARITY_ATOL,
        )
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=PARITY_ATOL)
        assert got["prediction"]["class_index"] == want["prediction"]["class_index"]


# --- parity: the environment's batched step and the build's extractors ----------------------------
def test_environment_step_is_the_same_on_every_engine(tiny_cache: Path) -> None:
    from gistgym.envs.interleave_core import InterleaveCore

    kwargs = {
        "split": "val",
        "clip_len": 8,
        "extractors": ("heavy", "light"),
        "speed_reward": (0.0, 1.0),
        "skip_light_updates": None,
        "history_len": 20,
    }
    slots = np.arange(4)
    actions = np.random.default_rng(0).integers(0, 2, size=(8, 4))
    runs: dict[str, list[Any]] = {}
    for engine in ("auto", *COMPILED, "eager"):
        core = InterleaveCore(4, tiny_cache, engine=engine, **kwargs)
        for s in slots:
            core.load(int(s), core.eligible[int(s) % len(core.eligible)], 0)
        runs[engine] = [core.advance(slots, a) for a in actions]
        if engine == "auto":
            assert core.step_engine.engine_for(8) == "onnxruntime"
        core.close()
    for engine in ("auto", *COMPILED):
        for a, b in zip(runs[engine], runs["eager"], strict=True):
            np.testing.assert_allclose(a.state, b.state, atol=PARITY_ATOL)
            np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(a.state_written, b.state_written)


def test_build_extractors_match_eager(model: Any, frames: np.ndarray) -> None:
    from gistgym.backbones.detector import extract_video_features
    from gistgym.backbones.engines import build_extractor, use_build_engine

    video = torch.from_numpy(frames[:10])[None]
    eager = extract_video_features(model, video, chunk=4)
    try:
        use_build_engine(model, "onnxruntime")
        assert build_extractor(model, 0) is not None and build_extractor(model, 2) is None  # light+shift stays eager
        fast = extract_video_features(model, video, chunk=4)
    finally:
        use_build_engine(model, "eager")
    assert build_extractor(model, 0) is None
    for a, b in zip(fast, eager, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=PARITY_ATOL)


# --- the export cache -----------------------------------------------------------------------------
def _export(module: torch.nn.Module, folder: Path) -> engines.OnnxExport:
    example = (torch.rand(1, 3, 64, 64) * 4 - 2,)
    return onnx_export(
        module, example, kind="ext", input_names=("images",), output_names=("features",), cache_dir=folder
    )


def test_export_is_cached_by_weights_and_a_corrupt_one_is_rebuilt(model: Any, tmp_path: Path) -> None:
    light = model.extractor(1)
    first = _export(light, tmp_path)
    assert first.status == "exported" and first.path is not None
    assert first.sidecar["weights_sha256"] == engines.weights_sha256(light)
    assert first.sidecar["parity_max_abs"] <= PARITY_ATOL
    again = _export(light, tmp_path)
    assert again.status == "cached" and again.data == first.data
    # other weights: another key, another file
    other = _export(model.extractor(0), tmp_path)
    assert other.path != first.path and len(list(tmp_path.glob("*.onnx"))) == 2
    # truncated ONNX bytes: rebuilt, never used
    first.path.write_bytes(first.data[: len(first.data) // 2])
    rebuilt = _export(light, tmp_path)
    assert rebuilt.status.startswith("rebuilt") and "onnx_sha256" in rebuilt.status
    assert first.path.read_bytes() == first.data
    # an unreadable sidecar or an older export version: rebuilt too
    sidecar = first.path.with_suffix(".json")
    sidecar.write_text("{not json")
    assert _export(light, tmp_path).status.startswith("rebuilt (unreadable sidecar")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "format_version": 0}))
    assert _export(light, tmp_path).status.startswith("rebuilt (export version")


def test_cached_export_recording_other_weights_is_refused(model: Any, tmp_path: Path) -> None:
    first = _export(model.extractor(1), tmp_path)
    assert first.path is not None
    sidecar = first.path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    with pytest.raises(ExportMismatchError, match="weights sha256 000000000000"):
        _export(model.extractor(1), tmp_path)


def test_unwritable_cache_folder_still_runs(model: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    export = _export(model.extractor(1), blocker / "sub")
    assert export.path is None and "not cached" in export.status


def test_compile_refuses_a_module_in_training_mode_and_unknown_engines(model: Any) -> None:
    example = (torch.zeros(1, 3, 64, 64),)
    names: dict[str, Any] = {"kind": "x", "input_names": ("images",), "output_names": ("features",)}
    with pytest.raises(EngineError, match="must be one of onnxruntime, torchscript, eager"):
        compile_module(model.extractor(1), example, engine="tensorrt", **names)
    with pytest.raises(EngineError, match="--threads must be an integer >= 1"):
        compile_module(model.extractor(1), example, engine="onnxruntime", threads=0, **names)
    with pytest.raises(EngineError, match="step engine must be one of"):
        BatchedMemoryHead(model.memory, model.head, grid=model.grid, engine="fast")


# --- bad input on the command line ----------------------------------------------------------------
def _detect_argv(video: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", str(video), "--weights", str(weights), "--out", str(out), "--annotate", "none",
            "--no-progress", *extra]  # fmt: skip


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert match in err, err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--engine", "tensorrt"], "--engine must be one of onnxruntime, torchscript, eager, got 'tensorrt'"),
        (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
        (["--eager", "--engine", "torchscript"], "--eager contradicts --engine torchscript"),
    ],
)
def test_bad_engine_options_are_one_line_exit_2(
    extra: list[str], match: str, tiny_bench: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = load_dataset(tiny_bench).split("val")[0].path
    _one_line_exit_2(_detect_argv(video, weights, tmp_path / "out", *extra), capsys, match)
    assert not (tmp_path / "out").exists()


def test_missing_onnxruntime_is_one_line_exit_2(
    tiny_bench: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    monkeypatch.setattr(engines, "_SESSIONS", {})
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    video = load_dataset(tiny_bench).split("val")[0].path
    _one_line_exit_2(_detect_argv(video, weights, tmp_path / "out"), capsys, "onnxruntime is missing or fails to load")
    # the DFF runtime too
    _one_line_exit_2(
        ["detect", str(video), "--policy", "key=5", "--out", str(tmp_path / "dff"), "--annotate", "none"],
        capsys,
        "onnxruntime is missing or fails to load",
    )


def test_failing_export_is_one_line_exit_2(
    tiny_bench: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Unsupported: ONNX export of operator foo\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken)
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    video = load_dataset(tiny_bench).split("val")[0].path
    _one_line_exit_2(
        _detect_argv(video, weights, tmp_path / "out"), capsys, "exporting the extractor-heavy module to ONNX failed"
    )


def test_cached_export_of_other_weights_is_one_line_exit_2(
    model: Any,
    tiny_bench: Path,
    weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "cache"
    monkeypatch.setenv(engines.CACHE_ENV, str(folder))
    video = load_dataset(tiny_bench).split("val")[0].path
    assert main(_detect_argv(video, weights, tmp_path / "ok", "--max-frames", "3")) == 0
    capsys.readouterr()
    (sidecar,) = folder.glob("extractor-heavy-*.json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "weights_sha256": "f" * 64}))
    _one_line_exit_2(_detect_argv(video, weights, tmp_path / "out"), capsys, "records weights sha256 ffffffffffff")


def test_threads_and_engine_reach_the_summary(
    tiny_bench: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = load_dataset(tiny_bench).split("val")[0].path
    argv = _detect_argv(video, weights, tmp_path / "out", "--engine", "onnxruntime", "--threads", "2", "--json")
    try:
        assert main([*argv, "--max-frames", "4"]) == 0
    finally:
        torch.set_num_threads(1)
    summary = json.loads(capsys.readouterr().out)
    assert (summary["engine"], summary["modules"], summary["threads"]) == ("onnxruntime", "onnxruntime", 2)


def test_numpy_postprocessing_gives_torchs_detections(model: Any) -> None:
    """The runtime's per-frame numpy postprocessing equals the batched torch one (evaluation, environment)."""
    from gistgym.backbones.ssdlite import postprocess, postprocess_frame

    gen = torch.Generator().manual_seed(0)
    A = model.head.anchors.shape[0]
    loc = torch.randn(20, A, 4, generator=gen)
    # from nearly empty frames to frames with more candidates than the pre-NMS top-k
    conf = torch.randn(20, A, 5, generator=gen) * 2
    conf[:, :, 0] += torch.linspace(12.0, 0.0, 20)[:, None]
    want = postprocess(loc, conf, model.head.anchors, image_size=(64, 64))
    anchors = model.head.anchors.numpy()
    counts = []
    for b in range(20):
        got = postprocess_frame(loc[b].numpy(), conf[b].numpy(), anchors, image_size=(64, 64))
        np.testing.assert_array_equal(got.labels, want[b].labels)
        np.testing.assert_allclose(got.scores, want[b].scores, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got.boxes, want[b].boxes, rtol=1e-5, atol=1e-4)
        counts.append(len(got.scores))
    assert min(counts) < 25 == max(counts)
