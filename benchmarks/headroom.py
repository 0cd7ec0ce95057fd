"""How much can content-adaptive scheduling gain on a cache? A bound from the ground-truth segments.

Usage::

    python benchmarks/headroom.py --cache data/bench.h5 [--env keyframe|interleave] [--split val]
                                  [--max-videos N] [--json] [--plot PNG]

The learned schedulers of Interleave-v0 and Keyframe-v0 are asked to dominate the fixed
schedule (``tau=N``, ``key=L``) on the benchmark. They can only do that if *where* the
expensive action runs matters: if some frames gain much more from it than others, and the
scheduler can tell which. This script measures the first half with a scheduler that is
told the answer: the synthetic benchmark stores every frame's difficulty segment (``calm``,
``medium``, ``fast``, ``small``, ``arrivals``), and a
:class:`~gistgym.agents.baselines.SegmentPeriodPolicy` runs the expensive action every
``P[segment]`` frames. A greedy search on the evaluated split itself (in-sample, so
optimistic) traces its Pareto frontier: from the longest period everywhere, each step
shortens the one segment's period that buys the most mAP per extra expensive frame.

Printed, in one run on the same split and evaluator: the fixed curve, the segment frontier,
the myopic oracle (which sees the next frame's true losses), and for each the largest and
smallest mAP difference to the fixed curve (interpolated) between 5% and 50% expensive
frames. If even the in-sample segment frontier stays within a point of the fixed curve, a
learned scheduler's +1 point has to come from frame-level information its observation does
not carry; the oracle row shows how much such information would be worth.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gistgym.agents.baselines import FixedTauPolicy, OraclePolicy, SegmentPeriodPolicy
from gistgym.agents.keyframe_baselines import FixedDurationPolicy, KeyframeOraclePolicy
from gistgym.errors import GistgymError

SPAN = (0.05, 0.50)
PERIODS = {
    "keyframe": (20, 16, 13, 10, 8, 6, 5, 4, 3, 2, 1),
    "interleave": (20, 14, 10, 7, 5, 4, 3, 2, 1),
}
"""The ladder of periods (frames between expensive actions) each segment moves down."""


def _evaluator(env: str, cache: Path, split: str, max_videos: int | None) -> Any:
    if env == "keyframe":
        from gistgym.agents.keyframe_eval import KeyframeEvaluator

        return KeyframeEvaluator(cache, split, max_videos=max_videos)
    from gistgym.agents.evaluation import InterleaveEvaluator

    return InterleaveEvaluator(cache, split, max_videos=max_videos)


def _fraction(env: str, result: Any) -> float:
    return float(result.key_fraction if env == "keyframe" else result.heavy_fraction)


def _fixed(env: str, period: int) -> Any:
    return FixedDurationPolicy(period) if env == "keyframe" else FixedTauPolicy(period - 1)


def _oracle(env: str, evaluator: Any) -> Any:
    reward = tuple(evaluator.speed_reward if env == "keyframe" else evaluator.env_kwargs["speed_reward"])
    return KeyframeOraclePolicy(reward) if env == "keyframe" else OraclePolicy(reward)


def segment_frontier(
    evaluate: Callable[[dict[str, int]], tuple[float, float]],
    segments: Sequence[str],
    ladder: Sequence[int],
    *,
    progress: bool = True,
) -> list[tuple[float, float, dict[str, int]]]:
    """Greedy Pareto frontier of per-segment periods: ``(fraction, mAP, periods)`` per step.

    Args:
        evaluate: Periods per segment -> (expensive fraction, mAP).
        segments: Segment names.
        ladder: Periods from the longest to the shortest.
        progress: Show a progress bar.
    """
    level = dict.fromkeys(segments, 0)
    periods = {s: ladder[0] for s in segments}
    frac, score = evaluate(periods)
    frontier = [(frac, score, dict(periods))]
    steps = len(segments) * (len(ladder) - 1)
    with tqdm(total=steps, desc="segment frontier", unit="step", disable=not progress) as bar:
        while any(level[s] < len(ladder) - 1 for s in segments):
            best: tuple[float, str, float, float] | None = None
            for s in segments:
                if level[s] == len(ladder) - 1:
                    continue
                trial = {**periods, s: ladder[level[s] + 1]}
                f, m = evaluate(trial)
                gain = (m - score) / max(f - frac, 1e-6)
                if best is None or gain > best[0]:
                    best = (gain, s, f, m)
            assert best is not None
            _, s, frac, score = best
            level[s] += 1
            periods[s] = ladder[level[s]]
            frontier.append((frac, score, dict(periods)))
            bar.update(1)
    return frontier


def gap_to(curve: Sequence[tuple[float, float]], points: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Largest and smallest ``mAP(point) - curve(fraction)`` over the points inside :data:`SPAN`."""
    xs, ys = zip(*sorted(curve), strict=True)
    gaps = [(m - float(np.interp(f, xs, ys)), f) for f, m in points if SPAN[0] <= f <= SPAN[1]]
    if not gaps:
        return {"max_gap": float("nan"), "max_at": float("nan"), "min_gap": float("nan"), "min_at": float("nan")}
    hi, lo = max(gaps), min(gaps)
    return {"max_gap": hi[0], "max_at": hi[1], "min_gap": lo[0], "min_at": lo[1]}


def plot(env: str, fixed: list, frontier: list, oracle: tuple[float, float], path: Path) -> None:
    """PNG: mAP against the expensive fraction for the three families."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(*zip(*sorted(fixed), strict=True), "o-", label="fixed period", color="tab:blue")
    ax.plot(
        [f for f, _, _ in frontier],
        [m for _, m, _ in frontier],
        "s--",
        label="segment-aware (in-sample)",
        color="tab:orange",
    )
    ax.plot(*oracle, "r*", markersize=12, label="myopic oracle")
    ax.axvspan(*SPAN, color="0.93", zorder=0)
    ax.set_xlabel("keyframe fraction" if env == "keyframe" else "heavy fraction")
    ax.set_ylabel("mAP@0.5")
    ax.set_title(f"{env}: scheduling headroom")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="data/bench.h5", help="feature cache with the env's section")
    parser.add_argument("--env", default="keyframe", choices=sorted(PERIODS), help="which environment's schedules")
    parser.add_argument("--split", default="val", help="split to evaluate (and fit the frontier) on")
    parser.add_argument("--max-videos", type=int, default=None, help="only the first N videos of the split")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", default="", help="PNG to write (default runs/headroom/ENV.png; '-' = none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        evaluator = _evaluator(args.env, Path(args.cache), args.split, args.max_videos)
        segments_of = {v: [a.segment for a in gt] for v, gt in evaluator.ground_truth.items()}
        names = sorted({s for per in segments_of.values() for s in per if s})
        if not names:
            print(f"benchmarks/headroom.py: error: {args.cache} stores no difficulty segments", file=sys.stderr)
            return 2
        cache: dict[tuple[tuple[str, int], ...], tuple[float, float]] = {}

        def evaluate(periods: dict[str, int]) -> tuple[float, float]:
            key = tuple(sorted(periods.items()))
            if key not in cache:
                r = evaluator.evaluate(SegmentPeriodPolicy(periods, segments_of))
                cache[key] = (_fraction(args.env, r), float(r.map50))
            return cache[key]

        ladder = PERIODS[args.env]
        fixed = []
        for p in ladder:
            r = evaluator.evaluate(_fixed(args.env, p))
            fixed.append((_fraction(args.env, r), float(r.map50)))
        o = evaluator.evaluate(_oracle(args.env, evaluator))
        oracle = (_fraction(args.env, o), float(o.map50))
        frontier = segment_frontier(evaluate, names, ladder, progress=not args.json)
    except GistgymError as exc:
        print(f"benchmarks/headroom.py: error: {exc}", file=sys.stderr)
        return 2
    report = {
        "env": args.env,
        "cache": args.cache,
        "split": args.split,
        "videos": len(evaluator.video_ids),
        "segments": names,
        "fixed": [{"period": p, "fraction": f, "map50": m} for p, (f, m) in zip(ladder, fixed, strict=True)],
        "segment_frontier": [{"periods": per, "fraction": f, "map50": m} for f, m, per in frontier],
        "oracle": {"fraction": oracle[0], "map50": oracle[1]},
        "segment_vs_fixed": gap_to(fixed, [(f, m) for f, m, _ in frontier]),
        "oracle_vs_fixed": gap_to(fixed, [oracle]),
        "evaluations": len(cache) + len(fixed) + 1,
        "seconds": time.perf_counter() - start,
    }
    out = Path(args.plot or f"runs/headroom/{args.env}.png")
    if args.plot != "-":
        plot(args.env, fixed, frontier, oracle, out)
    if args.json:
        print(json.dumps(report))
        return 0
    label = "key" if args.env == "keyframe" else "heavy"
    print(f"{args.env} on {args.cache} [{args.split}], {report['videos']} videos, segments {', '.join(names)}")
    print(f"\n| schedule | {label} fraction | mAP@0.5 |\n|---|---|---|")
    for p, (f, m) in zip(ladder, fixed, strict=True):
        print(f"| period {p} | {f:.3f} | {m:.4f} |")
    for f, m, per in frontier:
        desc = " ".join(f"{k}={v}" for k, v in per.items())
        print(f"| segment {desc} | {f:.3f} | {m:.4f} |")
    print(f"| oracle | {oracle[0]:.3f} | {oracle[1]:.4f} |")
    for row in ("segment_vs_fixed", "oracle_vs_fixed"):
        g = report[row]
        print(
            f"\n{row.replace('_', ' ')} (between {SPAN[0]:.0%} and {SPAN[1]:.0%}): best {100 * g['max_gap']:+.2f} "
            f"mAP points at {g['max_at']:.3f}, worst {100 * g['min_gap']:+.2f} at {g['min_at']:.3f}"
        )
    print(
        f"\n{report['evaluations']} evaluations, {report['seconds']:.0f} s"
        + ("" if args.plot == "-" else f"; wrote {out}")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
