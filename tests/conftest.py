"""Shared fixtures. Tests run torch on one thread (two threads on a loaded 2-core box crawl)."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:
    from gistgym.agents.train import TrainConfig
    from gistgym.backbones.detector import InterleavedDetector

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def sb3_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SB3 models trained without a logger of their own log here, not into a new /tmp/SB3-* folder each."""
    folder = tmp_path_factory.mktemp("sb3")
    os.environ["SB3_LOGDIR"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX Runtime exports of the test session go to a temporary folder, not the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("engines")
    os.environ["GISTGYM_ENGINE_CACHE"] = str(folder)  # subprocesses (CLI tests) inherit it
    return folder


@pytest.fixture
def bench(tiny_bench: Path, tmp_path: Path) -> Path:
    """A private copy of the session benchmark, for tests that break it."""
    return Path(shutil.copytree(tiny_bench, tmp_path / "bench"))


@pytest.fixture
def copy_of(tiny_cache: Path, tmp_path: Path) -> Callable[[str], Path]:
    """``copy_of(name)``: a private copy of the session cache, for tests that damage it."""

    def make(name: str) -> Path:
        path = tmp_path / name
        shutil.copy(tiny_cache, path)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic benchmark (2 train, 2 val, 1 test videos of 24 frames)."""
    from gistgym.videos.benchmark import make_benchmark
    from gistgym.videos.synthetic import SyntheticConfig

    out = tmp_path_factory.mktemp("bench")
    return make_benchmark(
        out,
        seed=3,
        split_sizes={"train": 2, "val": 2, "test": 1},
        config=SyntheticConfig(num_frames=24),
        progress=False,
    )


@pytest.fixture(scope="session")
def nontrivial_model() -> InterleavedDetector:
    """A random detector whose BN statistics give features of realistic size.

    At initialisation BN running statistics make every feature ~1e-5, too small for a test
    to tell two computations apart; spread them as a trained model would.
    """
    from gistgym.backbones.detector import InterleavedDetector, default_detector_config

    torch.manual_seed(0)
    model = InterleavedDetector(default_detector_config()).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g))
    return model.requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_cache(
    tiny_bench: Path, nontrivial_model: InterleavedDetector, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A feature cache of ``tiny_bench`` (every split, the ``interleave`` section) from ``nontrivial_model``.

    Built with the default storage and ``measure_latency=False`` (latencies are 0). The
    detector's weights sit next to it as ``detector.pt`` + ``detector.json``
    (``tiny_cache.parent / "detector.pt"``). Session-scoped: copy it before modifying it.
    """
    from gistgym.backbones.weights import save_detector
    from gistgym.feature_cache.build import build_cache

    folder = tmp_path_factory.mktemp("cache")
    weights = folder / "detector.pt"
    save_detector(weights, nontrivial_model, {"command": "tests/conftest.py::nontrivial_model"})
    out = folder / "tiny.h5"
    build_cache(tiny_bench, out, weights=weights, sections=("interleave",), measure_latency=False, progress=False)
    return out


@pytest.fixture(scope="session")
def keyframe_cache(
    tiny_bench: Path, nontrivial_model: InterleavedDetector, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A cache of ``tiny_bench`` with the ``interleave`` and ``keyframe`` sections (shipped DFF weights).

    Separate from ``tiny_cache`` (interleave only, for the cache machinery tests). The
    detector sits beside it as ``detector.pt``. Session-scoped: copy it before modifying it.
    """
    from gistgym.backbones.weights import save_detector
    from gistgym.feature_cache.build import build_cache

    folder = tmp_path_factory.mktemp("keyframe")
    weights = folder / "detector.pt"
    save_detector(weights, nontrivial_model, {"command": "tests/conftest.py::nontrivial_model"})
    out = folder / "tiny.h5"
    build_cache(
        tiny_bench, out, sections=("interleave", "keyframe"), weights=weights, measure_latency=False, progress=False
    )
    return out


@pytest.fixture(scope="session")
def shipped_cache(tiny_bench: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_bench`` cached with the shipped detector and DFF (``interleave`` and ``keyframe``).

    The shipped detector's detections hit and miss (``nontrivial_model`` detects nothing), so
    per-frame signals and mAP vary with the schedule. Session-scoped: copy it before modifying it.
    """
    from gistgym.feature_cache.build import build_cache

    out = tmp_path_factory.mktemp("shipped") / "tiny.h5"
    build_cache(
        tiny_bench, out, sections=("interleave", "keyframe"), measure_latency=False, progress=False, log=lambda _: None
    )
    return out


@pytest.fixture(scope="session")
def untrimmed_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrimmed benchmark (6 train, 4 val videos of 20 frames) for the glimpse section."""
    from gistgym.videos.benchmark import make_benchmark
    from gistgym.videos.untrimmed import UntrimmedConfig

    out = tmp_path_factory.mktemp("untrimmed")
    cfg = UntrimmedConfig(num_frames=20, evidence_len=(3, 8))
    return make_benchmark(out, seed=5, split_sizes={"train": 6, "val": 4}, config=cfg, progress=False)


@pytest.fixture(scope="session")
def glimpse_cache(
    untrimmed_bench: Path, nontrivial_model: InterleavedDetector, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A cache of ``untrimmed_bench`` with the ``glimpse`` section.

    The glimpse models are ``nontrivial_model``'s extractors with a classifier trained for a
    few steps on the train split (so margins and rewards vary); their weights sit beside the
    cache as ``glimpse.pt`` + ``glimpse.json``. Session-scoped: copy it before modifying it.
    """
    from gistgym.backbones.glimpse import ClassifierTrainConfig, GlimpseModels, save_glimpse, train_glimpse_classifier
    from gistgym.feature_cache.build import build_cache
    from gistgym.videos.dataset import load_dataset

    folder = tmp_path_factory.mktemp("glimpse")
    torch.manual_seed(0)  # the classifier's initial weights: the same whichever test builds this first
    models = GlimpseModels.from_detector(nontrivial_model, hidden=32, memory_frames=8)
    records = load_dataset(untrimmed_bench).split("train")
    feats = [models.frame_features(r.read_frames()) for r in records]
    labels = [r.label for r in records]
    train_glimpse_classifier(
        models.classifier, feats, labels, ClassifierTrainConfig(glimpses=5, steps=60, batch_size=8)
    )
    weights = folder / "glimpse.pt"
    save_glimpse(weights, models.requires_grad_(False), {"command": "tests/conftest.py::glimpse_cache"})
    out = folder / "glimpse.h5"
    build_cache(
        untrimmed_bench,
        out,
        sections=("glimpse",),
        model_weights={"glimpse": weights},
        measure_latency=False,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def adaframe_config(glimpse_cache: Path) -> Callable[..., TrainConfig]:
    """``(out, **overrides) -> TrainConfig`` of a tiny AdaFrame run on ``glimpse_cache``.

    K = 3 glimpses, LSTM 16, batches of 4 videos, 6 optimiser steps, evaluated on 2 val videos
    after steps 3 and 6.
    """
    from gistgym.agents.train import TrainConfig

    def make(out: Path, **overrides: Any) -> TrainConfig:
        base = TrainConfig.of(
            cache=str(glimpse_cache),
            out=str(out),
            env="gistgym/Glimpse-v0",
            algo="adaframe",
            name="ada",
            num_glimpses=3,
            adaframe_hidden=16,
            batch_size=4,
            adaframe_steps=6,
            eval_every=4 * 3 * 3,
            eval_videos=2,
            progress=False,
        )
        return base.replace(**overrides)

    return make


@pytest.fixture(scope="session")
def glimpse_runs(adaframe_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two tiny Glimpse-v0 runs, ``ada`` (AdaFrame) and ``ppo``, trained once per session."""
    from gistgym.agents.train import train_one

    out = tmp_path_factory.mktemp("glimpse-runs")
    train_one(adaframe_config(out))
    train_one(adaframe_config(out, algo="ppo", name="ppo", num_envs=2, n_steps=6, total_timesteps=24, eval_every=0))
    return out


@pytest.fixture(scope="session")
def keyframe_run(keyframe_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Path]:
    """A tiny Double DQN run on Keyframe-v0 (64 steps, alone in its runs folder) and its config, trained once.

    Its network is barely trained: enough for the train, compare, export and runtime plumbing.
    """
    from gistgym.agents.train import TrainConfig, train

    config = TrainConfig.of(
        cache=str(keyframe_cache),
        env="gistgym/Keyframe-v0",
        out=str(tmp_path_factory.mktemp("keyframe-runs")),
        split="val",  # the tiny cache's val split: the module's tests evaluate on it too
        clip_len=8,
        num_envs=4,
        total_timesteps=64,
        learning_starts=16,
        buffer_size=100,
        batch_size=8,
        eval_every=0,
        eval_videos=1,
        checkpoint_every=0,
        gamma=0.4,
        progress=False,
    )
    (run_dir,) = train(config, log=lambda _: None)
    return config, Path(run_dir)


@pytest.fixture(scope="session")
def streams_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small streams benchmark: train = an edited video (9 shots) and a fixed-camera one (3 bursts), val = edited.

    300 frames each (the shortest streams allow).
    """
    from gistgym.videos.benchmark import make_benchmark
    from gistgym.videos.streams import StreamsConfig

    out = tmp_path_factory.mktemp("streams")
    cfg = StreamsConfig(num_frames=300)
    return make_benchmark(out, seed=3, split_sizes={"train": 2, "val": 1}, config=cfg, progress=False)
