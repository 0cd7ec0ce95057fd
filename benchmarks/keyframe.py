"""Keyframe-v0 throughput against Interleave-v0 and against a SyncVectorEnv, measured in this run.

Usage::

    python benchmarks/keyframe.py [--cache FILE] [--videos data/bench] [--count 4] [--rounds 3]

Without ``--cache`` it builds a small cache (sections ``interleave`` and ``keyframe``) from the
first ``--count`` val videos of ``--videos`` with the shipped weights, into a temporary
folder. Prints env steps/s (one env step = one episode advancing one frame; random
actions, autoresets included) of

* the native batched ``KeyframeVectorEnv`` at N = 1, 64, 1024, 4096 (goal: >= 1,000,000
  env steps/s batched; the env is pure table lookup);
* at N = 64: a ``SyncVectorEnv`` of 64 single ``Keyframe-v0`` envs, and the native
  ``InterleaveVectorEnv`` (which runs the ConvLSTM and the head every step) on the same cache.

Each comparison alternates its two sides ``--rounds`` times and reports the median of the
rounds' ratios (speed on a shared machine drifts from minute to minute).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from bench_common import env_stepper, rate, small_cache  # beside this script

import gistgym.envs  # noqa: F401 (registers the ids)
from gistgym.envs import KEYFRAME_ENV_ID
from gistgym.envs.interleave_vector import InterleaveVectorEnv
from gistgym.envs.keyframe_vector import KeyframeVectorEnv
from gistgym.errors import GistgymError

SIZES = (1, 64, 1024, 4096)


def compare(
    a: Callable[[], object], b: Callable[[], object], rounds: int, seconds: float
) -> tuple[float, float, float]:
    """Median rates of ``a`` and ``b`` and the median of the per-round ratios a / b."""
    pairs = [(rate(a, seconds), rate(b, seconds)) for _ in range(rounds)]
    return (
        statistics.median(x for x, _ in pairs),
        statistics.median(y for _, y in pairs),
        statistics.median(x / y for x, y in pairs),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=None, help="cache with both sections (default: build a small one)")
    parser.add_argument("--split", default="val", help="split of --cache to draw clips from")
    parser.add_argument("--videos", default="data/bench", help="dataset folder for the small cache (read-only)")
    parser.add_argument("--count", type=int, default=4, help="val videos in the small cache")
    parser.add_argument("--clip-len", type=int, default=48, help="frames per episode")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (median ratio)")
    parser.add_argument("--seconds", type=float, default=0.5, help="seconds per timed measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"Keyframe-v0 throughput: python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.machine()})"
    )
    with tempfile.TemporaryDirectory(prefix="gistgym-keyframe-bench-") as tmp:
        try:
            if args.cache:
                cache, line = Path(args.cache), f"cache: {args.cache}"
            else:
                cache, made = small_cache(Path(args.videos), args.count, Path(tmp))
                line = f"cache: {made}"
            kwargs = {"cache_path": str(cache), "split": args.split, "clip_len": args.clip_len}
            envs = {n: KeyframeVectorEnv(**kwargs, num_envs=n) for n in SIZES}
        except GistgymError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(line)
        for video_id in envs[SIZES[0]].core.eligible:  # read every video once per core, as after a first pass
            for env in envs.values():
                env.core.tables(video_id)
        results: dict[str, float] = {}
        print("\nnative KeyframeVectorEnv: N, env steps/s (= N x vector steps/s)")
        for n in SIZES:
            envs[n].reset(seed=0)
            r = statistics.median(rate(env_stepper(envs[n], n), args.seconds) for _ in range(args.rounds)) * n
            results[f"native_N{n}"] = r
            print(f"{n:>6} {r:>14,.0f}")
        best = max(results.values())
        print(f"best: {best:,.0f} env steps/s (goal >= 1,000,000)")

        n = 64
        sync = gym.make_vec(KEYFRAME_ENV_ID, num_envs=n, vectorization_mode="sync", **kwargs)
        sync.reset(seed=0)
        envs[n].reset(seed=0)
        native, other, ratio = compare(env_stepper(envs[n], 1), env_stepper(sync, 1), args.rounds, args.seconds)
        print(
            f"\nN = {n}: native {native * n:,.0f} vs SyncVectorEnv of {n} single envs {other * n:,.0f} "
            f"env steps/s: native is {ratio:.1f}x"
        )
        sync.close()
        try:
            inter = InterleaveVectorEnv(**kwargs, num_envs=n)
        except GistgymError as exc:
            print(f"Interleave-v0 not comparable on this cache: {exc}")
        else:
            inter.reset(seed=0)
            native, other, ratio = compare(env_stepper(envs[n], 2), env_stepper(inter, 2), args.rounds, args.seconds)
            print(
                f"N = {n}: Keyframe-v0 {native * n:,.0f} vs Interleave-v0 {other * n:,.0f} env steps/s: "
                f"Keyframe-v0 is {ratio:.0f}x"
            )
            inter.close()
        for env in envs.values():
            env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
