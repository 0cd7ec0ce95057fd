"""Helpers the benchmark scripts share: a small cache, a call-rate timer, a random-action stepper."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from gistgym.backbones.weights import DEFAULT_WEIGHTS
from gistgym.feature_cache.build import build_cache
from gistgym.videos.dataset import load_dataset


def small_cache(videos: Path, count: int, tmp: Path) -> tuple[Path, str]:
    """A cache of the first ``count`` val videos of ``videos`` (split ``val``) and a description."""
    if (videos / "dataset.json").is_file():
        index = json.loads((videos / "dataset.json").read_text())
        ids = list(index["splits"].get("val", []))[:count]
        folder = tmp / "videos"
        folder.mkdir()
        for vid in ids:
            (folder / vid).symlink_to((videos / vid).resolve(), target_is_directory=True)
        index["splits"] = {"val": ids}
        (folder / "dataset.json").write_text(json.dumps(index))
        line = f"{len(ids)} val videos of {videos}"
    else:
        from gistgym.videos.benchmark import make_benchmark

        folder = make_benchmark(tmp / "generated", seed=0, split_sizes={"val": count}, progress=False)
        ids = list(load_dataset(folder).splits["val"])
        line = f"{count} freshly generated videos ({videos} absent)"
    out = tmp / "bench.h5"
    start = time.perf_counter()
    build_cache(folder, out, weights=DEFAULT_WEIGHTS, measure_latency=False, progress=False)
    return out, f"{line}, built with {DEFAULT_WEIGHTS.name} in {time.perf_counter() - start:.1f} s"


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after 2 warm-up calls)."""
    for _ in range(2):
        fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    reps = max(5, int(seconds / once))
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return reps / (time.perf_counter() - start)


def env_stepper(env: gym.vector.VectorEnv, seed: int) -> Callable[[], object]:
    """One ``env.step`` with uniformly random actions per call (autoresets happen inside)."""
    rng = np.random.default_rng(seed)
    n, m = env.num_envs, int(env.single_action_space.n)  # type: ignore[attr-defined]
    actions = rng.integers(0, m, size=(4096, n))
    counter = iter(range(10**12))

    def step() -> object:
        return env.step(actions[next(counter) % len(actions)])

    return step
