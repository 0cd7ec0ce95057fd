"""Which per-frame signal tracks pooled mAP? Rank correlations over random schedules.

Usage::

    python benchmarks/signals.py --cache data/streams.h5 --env interleave|keyframe [--split val]
                                 [--schedules 200] [--max-videos N] [--seed 0] [--json]

A scheduler is trained on a per-frame reward but judged by mAP@0.5 pooled over every frame
of every video. A per-frame signal is a good reward only if a schedule's summed signal ranks
schedules the way their pooled mAP does. This script draws ``--schedules`` random schedules
(per video, a uniformly random set of ``round(f x T)`` expensive frames, frame 0 always one;
``f`` cycles through 5 %, 10 %, ..., 50 %), rolls each out through the environment's own
evaluator (real memory rollouts for Interleave-v0, the cached tables for Keyframe-v0),
scores its pooled mAP@0.5 and sums each candidate signal over its frames:

* ``eq2``: Eq. 2's accuracy term, ``min_i L^i - L^a`` (the paper's reward without the speed
  reward);
* ``loss``: minus the executed action's detection loss ``-L^a``;
* ``f1``, ``errors``, ``matched``: :func:`gistgym.metrics.frame_signals` of the frame's
  detections (F1 and minus the error count at the operating threshold, and the
  threshold-free matched-score).

Printed: for each signal the Spearman rank correlation with mAP over all schedules (which the
expensive fraction alone already drives) and the mean over the ten fractions of the
correlation among schedules of the same fraction (what decides *where* to spend a fixed
budget; the number to choose a reward by).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gistgym.agents.backends import INTERLEAVE_ENV_ID, KEYFRAME_ENV_ID, get_backend
from gistgym.agents.hindsight import SchedulePolicy
from gistgym.errors import GistgymError
from gistgym.metrics import FRAME_SIGNALS, detection_map50, frame_signals

SIGNALS = ("eq2", "loss", *FRAME_SIGNALS)
FRACTIONS = tuple(round(0.05 * k, 2) for k in range(1, 11))


def random_schedule(num_frames: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(T,) actions: frame 0 and ``round(fraction x T) - 1`` other random frames expensive (0), the rest 1."""
    k = max(1, round(fraction * num_frames))
    actions = np.ones(num_frames, dtype=np.int64)
    actions[0] = 0
    actions[1 + rng.choice(num_frames - 1, size=min(k - 1, num_frames - 1), replace=False)] = 0
    return actions


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties averaged."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (nan when either side is constant)."""
    rx, ry = ranks(np.asarray(x, dtype=np.float64)), ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


ENV_IDS = {"interleave": INTERLEAVE_ENV_ID, "keyframe": KEYFRAME_ENV_ID}


def _evaluator(env: str, cache: Path, split: str, max_videos: int | None) -> Any:
    """The env's registered evaluator (its default arguments) on ``split``."""
    return get_backend(ENV_IDS[env]).make_evaluator(str(cache), split, {}, max_videos=max_videos)


def score_schedule(env: str, evaluator: Any, policy: SchedulePolicy) -> dict[str, float]:
    """Pooled mAP, expensive fraction and every signal summed over the split for one schedule."""
    if env == "keyframe":
        rollouts = evaluator.rollout(policy)
        dets = [evaluator.detections(r) for r in rollouts]
        chosen = [np.where(r.actions == 0, r.losses[:, 0], r.losses[:, 1]) for r in rollouts]
        best = [r.losses.min(axis=1) for r in rollouts]
    else:
        rollouts, dets = evaluator.rollout(policy)
        chosen = [r.losses[np.arange(len(r.actions)), r.actions] for r in rollouts]
        best = [r.losses.min(axis=1) for r in rollouts]
    gts = [evaluator.ground_truth[r.video_id] for r in rollouts]
    flat_g = [g for per in gts for g in per]
    flat_d = [d for per in dets for d in per]
    size = (evaluator.image_size,) * 2
    totals = dict.fromkeys(FRAME_SIGNALS, 0.0)
    for g, d in zip(flat_g, flat_d, strict=True):
        for k, v in frame_signals(g, d).items():
            totals[k] += v
    acts = np.concatenate([r.actions for r in rollouts])
    return {
        "map50": float(detection_map50(flat_g, flat_d, evaluator.num_classes, image_size=size)),
        "fraction": float((acts == 0).mean()),
        "eq2": float(sum((b - c).sum() for b, c in zip(best, chosen, strict=True))),
        "loss": -float(sum(c.sum() for c in chosen)),
        **totals,
    }


def study(env: str, evaluator: Any, schedules: int, seed: int, progress: bool) -> dict[str, Any]:
    """Score ``schedules`` random schedules and correlate every signal with their pooled mAP."""
    rng = np.random.default_rng(seed)
    lengths = {v: len(evaluator.ground_truth[v]) for v in evaluator.video_ids}
    rows = []
    for i in tqdm(range(schedules), desc=f"{env} random schedules", disable=not progress):
        target = FRACTIONS[i % len(FRACTIONS)]
        plan = {v: random_schedule(T, target, rng) for v, T in lengths.items()}
        rows.append({"target": target, **score_schedule(env, evaluator, SchedulePolicy(plan, f"random-{i}"))})
    table = {}
    for s in SIGNALS:
        within = [
            spearman([r[s] for r in rows if r["target"] == f], [r["map50"] for r in rows if r["target"] == f])
            for f in FRACTIONS
        ]
        table[s] = {
            "spearman_all": spearman([r[s] for r in rows], [r["map50"] for r in rows]),
            "spearman_within_fraction": float(np.nanmean(within)) if not np.isnan(within).all() else float("nan"),
            "per_fraction": dict(zip((f"{f:.2f}" for f in FRACTIONS), within, strict=True)),
        }
    return {"signals": table, "schedules": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="feature cache with the env's section")
    parser.add_argument("--env", default="interleave", choices=("interleave", "keyframe"))
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--schedules", type=int, default=200, help="random schedules (cycling over 10 fractions, 5-50 %%)"
    )
    parser.add_argument("--max-videos", type=int, default=None, help="only the first N videos of the split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars on stderr")  # fmt: skip
    args = parser.parse_args(argv)
    if args.schedules < 2 * len(FRACTIONS):
        print(
            f"benchmarks/signals.py: error: --schedules must be >= {2 * len(FRACTIONS)} (two per fraction)",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        evaluator = _evaluator(args.env, Path(args.cache), args.split, args.max_videos)
        report = study(args.env, evaluator, args.schedules, args.seed, progress=args.progress)
    except GistgymError as exc:
        print(f"benchmarks/signals.py: error: {exc}", file=sys.stderr)
        return 2
    report.update(
        env=args.env,
        cache=args.cache,
        split=args.split,
        videos=len(evaluator.video_ids),
        seconds=time.perf_counter() - start,
    )
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{args.env} on {args.cache} [{args.split}], {report['videos']} videos, {args.schedules} random schedules "
        f"({report['seconds']:.0f} s)\n"
    )
    print("| signal | Spearman, all schedules | Spearman within a fraction (mean of 10) |\n|---|---|---|")
    for s, row in report["signals"].items():
        print(f"| {s} | {row['spearman_all']:+.3f} | {row['spearman_within_fraction']:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
