"""Can a scheduler *learned* on the runtime cues by direct policy search capture what the hand-made rule does?

Usage::

    python benchmarks/cue_search.py --cache data/streams.h5 --headroom runs/headroom/headroom.json
                                    [--other data/streams-2026.h5=runs/headroom/headroom-2026.json ...]
                                    [--gammas 0.3 0.6 1 1.6 2.5] [--seed 0] [--clips 64] [--iterations 12]
                                    [--population 24] [--json] [--save JSON]

``benchmarks/cue_rule.py`` showed that a two-threshold rule on the Interleave-v0 runtime cues
captures about twice the hindsight headroom the Double DQN schedulers capture, so their
shortfall is in learning, not in what they observe. This script measures a learner of a
different kind before any agent is built on it: the cross-entropy method (CEM), a
derivative-free policy search, over a linear threshold policy on the cues,

    heavy on the next frame  iff  theta . [since, light_change, light_step, memory_change,
                                            since * light_change, 1]  >  0,

with ``since`` the cue ``since_heavy`` (frames since the heavy step / 64). Each candidate
theta is scored by its mean return in the environment itself (``reward="matched"``, the
per-frame signal that tracks pooled mAP best, docs/headroom.md, with the speed reward
``(0, gamma)``) on ``--clips`` fixed clips of the ``train`` split, the same clips for every
candidate (common random numbers), all clips stepped as one batch. One policy per gamma
traces a curve; only the learned policies are then scored on ``--split`` of ``--cache`` and
of every ``--other`` cache (a benchmark made with a seed never used for training) like
``cue_rule.py`` scores its rules: the comparison's evaluator (real memory rollouts, mAP@0.5
pooled over every frame) and captured share of the headroom against fixed tau.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from causal_bound import READ_AT
from cue_rule import parse_targets, report_on
from tqdm.auto import tqdm

from gistgym.agents.backends import INTERLEAVE_ENV_ID
from gistgym.agents.compare import load_frontier
from gistgym.envs.interleave_core import CUE_NAMES, InterleaveCore
from gistgym.errors import GistgymError
from gistgym.staging import staged_file

FEATURES = ("since", "light_change", "light_step", "memory_change", "since*light_change", "bias")
_IDX = {name: CUE_NAMES.index(name) for name in ("light_change", "light_step", "memory_change")}


def features(cues: np.ndarray) -> np.ndarray:
    """(n, 6) policy features of (n, 4) runtime cues, :data:`FEATURES` in order."""
    since = cues[:, CUE_NAMES.index("since_heavy")]
    change = cues[:, _IDX["light_change"]]
    return np.stack(
        [
            since,
            change,
            cues[:, _IDX["light_step"]],
            cues[:, _IDX["memory_change"]],
            since * change,
            np.ones_like(since),
        ],
        axis=1,
    )


class LinearCuePolicy:
    """The heavy extractor on the next frame iff ``theta . features(cues) > 0`` (a comparison Policy)."""

    def __init__(self, theta: Sequence[float], name: str) -> None:
        self.theta = np.asarray(theta, dtype=np.float64)
        self.name = name
        self.env_kwargs = {"cues": True}

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Stateless."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Stateless."""

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Action 0 (heavy) where the linear score is positive, else 1."""
        cues = np.asarray(obs["cues"], dtype=np.float64).reshape(len(infos), -1)
        return np.where(features(cues) @ self.theta > 0, 0, 1).astype(np.int64)


def fixed_clips(core: InterleaveCore, count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` clips of the core's split drawn once (the same for every candidate)."""
    rng = np.random.default_rng(seed)
    return [core.choose_clip(rng) for _ in range(count)]


def mean_return(core: InterleaveCore, clips: Sequence[tuple[str, int]], thetas: np.ndarray) -> np.ndarray:
    """Mean per-step reward of each theta (P, 6) on ``clips``, all candidates x clips as one batch."""
    P, n = len(thetas), len(clips)
    slots = np.arange(P * n, dtype=np.int64)
    for p in range(P):
        for i, (video, start) in enumerate(clips):
            core.load(p * n + i, video, start)
    tr = core.advance(slots, np.zeros(len(slots), dtype=np.int64))
    total = np.zeros(P * n)
    steps = 0
    rows = np.repeat(thetas, n, axis=0)  # (P * n, 6)
    while not tr.truncated.all():
        assert tr.cues is not None
        actions = np.where(np.einsum("ij,ij->i", features(tr.cues.astype(np.float64)), rows) > 0, 0, 1)
        tr = core.advance(slots, actions.astype(np.int64))
        total += tr.rewards
        steps += 1
    return total.reshape(P, n).mean(axis=1) / steps


def cem(
    core: InterleaveCore,
    clips: Sequence[tuple[str, int]],
    *,
    population: int,
    iterations: int,
    seed: int,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, list[float]]:
    """The cross-entropy method: Gaussian over theta, refit to the best quarter each iteration."""
    rng = np.random.default_rng(seed)
    mu = np.zeros(len(FEATURES))
    mu[FEATURES.index("since")], mu[FEATURES.index("bias")] = 8.0, -1.0  # start near a fixed period of 8
    sigma = np.full(len(FEATURES), 4.0)
    elite = max(2, population // 4)
    history = []
    for _ in tqdm(range(iterations), desc=desc, disable=not progress):
        thetas = mu + sigma * rng.standard_normal((population, len(FEATURES)))
        thetas[0] = mu  # keep the current mean in the running
        scores = mean_return(core, clips, thetas)
        best = thetas[np.argsort(-scores)[:elite]]
        mu, sigma = best.mean(axis=0), best.std(axis=0) + 0.05
        history.append(float(scores.max()))
    return mu, history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="feature cache with the interleave section (train and --split)")
    parser.add_argument("--headroom", required=True, help="benchmarks/headroom.py --save JSON of --cache")
    parser.add_argument("--other", action="append", default=[], metavar="CACHE=HEADROOM",
                        help="also report on this cache's --split against this headroom file (repeatable)")  # fmt: skip
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.3, 0.6, 1.0, 1.6, 2.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=64, help="training clips (the same for every candidate)")
    parser.add_argument("--clip-len", type=int, default=40)
    parser.add_argument("--population", type=int, default=24)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--split", default="val")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", default="")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    targets = parse_targets(args.cache, args.headroom, args.other)
    if isinstance(targets, str):
        print(f"benchmarks/cue_search.py: error: {targets}", file=sys.stderr)
        return 2
    try:
        for cache, headroom in targets:  # a bad file fails before the search
            load_frontier(headroom, env_id=INTERLEAVE_ENV_ID, cache=cache, split=args.split)
        learned, trained = [], {}
        for gamma in args.gammas:
            core = InterleaveCore(
                args.clips * args.population, args.cache, split="train", clip_len=args.clip_len,
                extractors=("heavy", "light"), speed_reward=(0.0, gamma), skip_light_updates=None, history_len=20,
                reward="matched", cues=True,
            )  # fmt: skip
            try:
                clips = fixed_clips(core, args.clips, args.seed)
                theta, hist = cem(core, clips, population=args.population, iterations=args.iterations,
                                  seed=args.seed, progress=args.progress, desc=f"CEM gamma={gamma:g}")  # fmt: skip
            finally:
                core.close()
            name = f"cem-g{gamma:g}-s{args.seed}"
            trained[name] = {"gamma": gamma, "theta": dict(zip(FEATURES, theta.tolist(), strict=True)), "best": hist}
            learned.append(LinearCuePolicy(theta, name))
        reports = [report_on(c, h, args.split, learned, progress=args.progress) for c, h in targets]
    except GistgymError as exc:
        print(f"benchmarks/cue_search.py: error: {exc}", file=sys.stderr)
        return 2
    report = {"trained": trained, "reports": reports, "seconds": time.perf_counter() - start, "args": vars(args)}
    if args.save:
        with staged_file(args.save, ".json") as staged:
            staged.write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report))
        return 0
    for r in reports:
        c, cf = r["captured"], r["captured_with_fixed"]
        print(f"{r['cache']} [{r['split']}]: captured {c['captured']:.1%} over {c['covered']}, mean gap "
              f"{100 * c['mean_gap']:+.2f}, max {100 * c['max_gap']:+.2f} at {c['max_gap_at']:.0%}; with fixed tau "
              f"{cf['captured']:.1%}; mAP at " + ", ".join(f"{x}: {v}" for x, v in r["map50_at"].items()))  # fmt: skip
        for p in r["rules"]:
            print(f"  {p['name']}: {p['fraction']:.3f} heavy, mAP@0.5 {p['map50']:.4f}")
    print(f"({time.perf_counter() - start:.0f} s; READ_AT {READ_AT})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
