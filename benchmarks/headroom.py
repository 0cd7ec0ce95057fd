"""How much can *when* to compute gain? Fixed periods against hindsight oracles, per benchmark kind and env.

Usage::

    python benchmarks/headroom.py --cache detection=data/bench.h5 --cache streams=data/streams.h5
                                  [--env interleave keyframe] [--split val] [--widths 1 4 16]
                                  [--signal matched] [--max-videos N] [--segments] [--json] [--save JSON]
                                  [--plot PNG]

A learned scheduler can only gain over a fixed period what the data and the detector make
available. For each cache (``KIND=FILE``; the kind is a label, e.g. the benchmark's kind) and
each environment this script measures, in one run on the same split and evaluator:

* the **fixed curve**: ``tau=N`` (Interleave-v0) / ``key=L`` (Keyframe-v0) over a ladder of
  periods, expensive fractions from 5 % to 50 %;
* the **hindsight frontier** (:mod:`gistgym.agents.hindsight`), the upper envelope of:

  - Keyframe-v0: the exact oracle at key budgets 5-50 %, on the cached per-frame loss and
    on the per-frame signal ``--signal`` (``f1``, ``errors`` or ``matched``;
    :func:`gistgym.metrics.frame_signals`; ``none`` skips it);
  - Interleave-v0: beam search with real memory rollouts at widths ``--widths`` (a lower
    bound on the optimum; the rows per width show where it converges), at the prices per
    heavy step (lambdas) that spread width 1's heavy fraction over 5-50 %;

* the **myopic oracle** (next frame's losses) and **random** at the fixed curve's fractions;
* the **ceiling**: the expensive action on every frame, drawn flat over the span (what fixed
  periods lose at each fraction bounds what any schedule can gain there).

Printed per kind and env: every point, and the hindsight-minus-fixed and random-minus-fixed
mAP gaps at matched expensive fraction over 5-50 % (max, where, and the mean over the part of
the span both curves cover). ``--segments`` adds the old diagnostic: a scheduler told every
frame's ground-truth stretch, with a period per stretch tuned greedily in-sample
(:class:`~gistgym.agents.baselines.SegmentPeriodPolicy`). ``headroom.png`` draws one panel per
env and kind.
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

from gistgym.agents.backends import INTERLEAVE_ENV_ID, KEYFRAME_ENV_ID, get_backend
from gistgym.agents.baselines import FixedTauPolicy, OraclePolicy, RandomPolicy, SegmentPeriodPolicy
from gistgym.agents.compare import frontier_at
from gistgym.agents.hindsight import (
    BeamSearch,
    SchedulePolicy,
    keyframe_cost_table,
    keyframe_loss_tables,
    plan_keyframe,
)
from gistgym.agents.keyframe_baselines import FixedDurationPolicy, KeyframeOraclePolicy
from gistgym.errors import GistgymError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.keyframe import SECTION_KEYFRAME, signal_table
from gistgym.metrics import FRAME_SIGNALS
from gistgym.staging import staged_file

SPAN = (0.05, 0.50)
PERIODS = {
    "keyframe": (20, 16, 13, 10, 8, 6, 5, 4, 3, 2, 1),
    "interleave": (20, 14, 10, 7, 5, 4, 3, 2, 1),
}
"""The ladder of periods (frames between expensive actions): the fixed curve, and each segment's steps."""
BUDGETS = (0.05, 0.075, 0.10, 0.15, 0.20, 0.30, 0.40, 0.50)
"""Key budgets of the exact Keyframe oracle."""
LAMBDA_LADDER = tuple(float(x) for x in np.geomspace(0.01, 10.0, 19))
"""Prices per heavy step tried with width 1 to find the ones that span the fractions."""
MAX_LAMBDAS = 8
"""How many of them the wider beams search."""
MAX_EXTRA = 4
"""Higher prices a wider beam tries, one at a time, while its points stay above SPAN[0]."""
WIDE_LOW = SPAN[0] / 5
"""The wider beams search the prices at which width 1 keeps WIDE_LOW..SPAN[1] heavy frames: at the
same price a wider beam finds schedules with more heavy frames (about 3x at the low end), so its
points reach down to SPAN[0] only from prices where width 1 spends less."""


ENV_IDS = {"interleave": INTERLEAVE_ENV_ID, "keyframe": KEYFRAME_ENV_ID}


def _evaluator(env: str, cache: Path, split: str, max_videos: int | None) -> Any:
    """The env's registered evaluator (its default arguments) on ``split``."""
    return get_backend(ENV_IDS[env]).make_evaluator(str(cache), split, {}, max_videos=max_videos)


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


def envelope(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The Pareto upper envelope of ``(fraction, mAP)`` points: sorted by fraction, the best mAP so far."""
    pts = sorted(points)
    xs = np.array([f for f, _ in pts])
    ys = np.maximum.accumulate(np.array([m for _, m in pts]))
    return xs, ys


def best_at_each_fraction(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points sorted by fraction, one per fraction: the best mAP where several share one.

    Periods share a fraction on short videos; the curve through the result is a function.
    """
    best: dict[float, float] = {}
    for f, m in points:
        best[f] = max(m, best.get(f, -np.inf))
    return sorted(best.items())


def frontier(families: Sequence[Sequence[tuple[float, float]]], grid: np.ndarray) -> np.ndarray:
    """The best of several point families at each fraction of ``grid`` (``-inf`` where none covers).

    Each family (a beam width, an oracle's cost) is its own curve, the linear interpolation of
    its envelope, defined over its own range; the envelope of every point pooled is one more.
    Pooling alone would let a weak family's point cut below a strong family's segment. The
    comparison's captured share reads the same frontier (:func:`gistgym.agents.compare.frontier_at`).
    """
    best = frontier_at(families, grid)
    return np.where(np.isnan(best), -np.inf, best)


def curve_gap(
    upper: Sequence[tuple[float, float]],
    lower: Sequence[tuple[float, float]],
    families: Sequence[Sequence[tuple[float, float]]] = (),
) -> dict[str, Any]:
    """``envelope(upper) - fixed(lower)`` at matched fraction over :data:`SPAN`, both linearly interpolated.

    With ``families`` the upper curve is their :func:`frontier` (``upper`` is then ignored).

    Returns:
        ``max_gap``, ``max_at``, ``mean_gap`` (over the fractions both curves cover) and
        ``covered`` (that part of the span, as fractions ``[lo, hi]``); nan without overlap.
    """
    families = [f for f in families if f] or [upper]
    pooled = [p for pts in families for p in pts]
    ux, _ = envelope(pooled)
    lx, ly = zip(*best_at_each_fraction(lower), strict=True)
    lo, hi = max(SPAN[0], ux[0], lx[0]), min(SPAN[1], ux[-1], lx[-1])
    if hi <= lo:
        return {"max_gap": float("nan"), "max_at": float("nan"), "mean_gap": float("nan"), "covered": [lo, hi]}
    grid = np.linspace(lo, hi, 91)
    gap = frontier(families, grid) - np.interp(grid, lx, ly)
    k = int(np.argmax(gap))
    return {"max_gap": float(gap[k]), "max_at": float(grid[k]), "mean_gap": float(gap.mean()), "covered": [lo, hi]}


def gap_to(curve: Sequence[tuple[float, float]], points: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Largest and smallest ``mAP(point) - curve(fraction)`` over the points inside :data:`SPAN`."""
    xs, ys = zip(*best_at_each_fraction(curve), strict=True)
    gaps = [(m - float(np.interp(f, xs, ys)), f) for f, m in points if SPAN[0] <= f <= SPAN[1]]
    if not gaps:
        return {"max_gap": float("nan"), "max_at": float("nan"), "min_gap": float("nan"), "min_at": float("nan")}
    hi, lo = max(gaps), min(gaps)
    return {"max_gap": hi[0], "max_at": hi[1], "min_gap": lo[0], "min_at": lo[1]}


def _point(env: str, result: Any) -> tuple[float, float]:
    return _fraction(env, result), float(result.map50)


def keyframe_hindsight(
    evaluator: Any, cache: Path, signal: str, budgets: Sequence[float], progress: bool
) -> dict[str, list[dict[str, Any]]]:
    """The exact oracle's points at every budget, on the cached loss and on ``signal``."""
    D = evaluator.max_distance
    vids = list(evaluator.video_ids)
    tables = {"loss": keyframe_loss_tables(cache, vids, max_distance=D)}
    if signal != "none":
        with FeatureCache(cache, sections=(SECTION_KEYFRAME,)) as c:
            tables[signal] = {
                v: keyframe_cost_table(
                    -signal_table(
                        c.load_episode(v, sections=(SECTION_KEYFRAME,)).sections[SECTION_KEYFRAME],
                        evaluator.ground_truth[v],
                        signal,
                        D,
                    ),
                    D,
                )
                for v in vids
            }
    out: dict[str, list[dict[str, Any]]] = {}
    for name, costs in tables.items():
        rows = []
        for b in tqdm(budgets, desc=f"keyframe hindsight [{name}]", disable=not progress):
            plan = plan_keyframe(costs, max_distance=D, budget=b)
            policy = SchedulePolicy({v: s.actions for v, s in plan.items()}, f"hindsight[{name}]@{b:.3f}")
            f, m = _point("keyframe", evaluator.evaluate(policy))
            rows.append({"budget": b, "fraction": f, "map50": m})
        out[name] = rows
    return out


def interleave_hindsight(
    evaluator: Any, cache: Path, widths: Sequence[int], progress: bool
) -> dict[str, list[dict[str, Any]]]:
    """Beam-search points per width: width 1 over :data:`LAMBDA_LADDER`, wider ones at the lambdas spanning 5-50 %."""
    vids = list(evaluator.video_ids)
    out: dict[str, list[dict[str, Any]]] = {}
    with BeamSearch(cache, split=evaluator.split, **_beam_kwargs(evaluator)) as search:

        def run(configs: list[tuple[int, float]]) -> list[dict[str, Any]]:
            rows = []
            found = search.search(vids, configs, progress=progress)
            for (w, lam), plan in zip(configs, found, strict=True):
                policy = SchedulePolicy({v: s.actions for v, s in plan.items()}, f"hindsight@{w}:lambda={lam:g}")
                f, m = _point("interleave", evaluator.evaluate(policy))
                rows.append({"width": w, "lambda": lam, "fraction": f, "map50": m})
            return rows

        greedy = run([(1, lam) for lam in LAMBDA_LADDER])
        out["1"] = greedy
        inside = [r["lambda"] for r in greedy if WIDE_LOW <= r["fraction"] <= 1.2 * SPAN[1]]
        if len(inside) > MAX_LAMBDAS:
            inside = [inside[int(i)] for i in np.linspace(0, len(inside) - 1, MAX_LAMBDAS).round()]
        wider = [w for w in widths if w != 1]
        if inside and wider:
            rows = run([(w, lam) for w in wider for lam in inside])
            for w in wider:
                out[str(w)] = [r for r in rows if r["width"] == w]
            # a wide beam's cheapest point may still be above the span's low end: raise its
            # price along the ladder until it reaches SPAN[0] (a few more searches at most)
            higher = [lam for lam in LAMBDA_LADDER if lam > max(inside)][:MAX_EXTRA]
            for w in wider:
                for lam in higher:
                    if min(r["fraction"] for r in out[str(w)]) <= SPAN[0]:
                        break
                    out[str(w)] += run([(w, lam)])
    return {k: v for k, v in out.items() if int(k) in widths}


def _beam_kwargs(evaluator: Any) -> dict[str, Any]:
    kw = evaluator.env_kwargs
    return {"extractors": kw["extractors"], "skip_light_updates": kw["skip_light_updates"]}


def headroom(
    env: str,
    cache: Path,
    *,
    split: str,
    max_videos: int | None,
    widths: Sequence[int],
    signal: str,
    segments: bool,
    progress: bool,
) -> dict[str, Any]:
    """Every curve and gap of one (cache, env) pair (see the module docstring)."""
    start = time.perf_counter()
    evaluator = _evaluator(env, cache, split, max_videos)
    ladder = PERIODS[env]
    fixed = [_point(env, evaluator.evaluate(_fixed(env, p))) for p in ladder]
    oracle = _point(env, evaluator.evaluate(_oracle(env, evaluator)))
    randoms = [_point(env, evaluator.evaluate(RandomPolicy(f))) for f, _ in fixed if SPAN[0] <= f <= SPAN[1]]
    if env == "keyframe":
        hindsight = keyframe_hindsight(evaluator, cache, signal, BUDGETS, progress)
    else:
        hindsight = interleave_hindsight(evaluator, cache, widths, progress)
    every = [(r["fraction"], r["map50"]) for rows in hindsight.values() for r in rows]
    report: dict[str, Any] = {
        "env": env,
        "cache": str(cache),
        "split": split,
        "videos": len(evaluator.video_ids),
        "frames": sum(len(g) for g in evaluator.ground_truth.values()),
        "fixed": [{"period": p, "fraction": f, "map50": m} for p, (f, m) in zip(ladder, fixed, strict=True)],
        "oracle": {"fraction": oracle[0], "map50": oracle[1]},
        "random": [{"fraction": f, "map50": m} for f, m in randoms],
        "hindsight": hindsight,
        "hindsight_vs_fixed": curve_gap(every, fixed, families=[
            [(r["fraction"], r["map50"]) for r in rows] for rows in hindsight.values()]),
        "hindsight_vs_fixed_by": {k: curve_gap([(r["fraction"], r["map50"]) for r in rows], fixed)
                                  for k, rows in hindsight.items()},
        "random_vs_fixed": curve_gap(randoms, fixed) if randoms else None,
        # the expensive action on every frame (period 1), drawn flat over the span: no schedule's
        # gain can much exceed it unless cheap frames beat expensive ones
        "ceiling_vs_fixed": curve_gap([(SPAN[0], fixed[-1][1]), (SPAN[1], fixed[-1][1])], fixed),
        "oracle_vs_fixed": gap_to(fixed, [oracle]),
    }  # fmt: skip
    if segments:
        segments_of = {v: [a.segment for a in gt] for v, gt in evaluator.ground_truth.items()}
        names = sorted({s for per in segments_of.values() for s in per if s})
        memo: dict[tuple[tuple[str, int], ...], tuple[float, float]] = {}

        def evaluate(periods: dict[str, int]) -> tuple[float, float]:
            key = tuple(sorted(periods.items()))
            if key not in memo:
                memo[key] = _point(env, evaluator.evaluate(SegmentPeriodPolicy(periods, segments_of)))
            return memo[key]

        frontier = segment_frontier(evaluate, names, ladder, progress=progress)
        report["segment_frontier"] = [{"periods": per, "fraction": f, "map50": m} for f, m, per in frontier]
        report["segment_vs_fixed"] = curve_gap([(f, m) for f, m, _ in frontier], fixed)
    evaluator.close()
    report["seconds"] = time.perf_counter() - start
    return report


def plot(reports: Sequence[tuple[str, dict[str, Any]]], path: Path) -> None:
    """PNG: one panel per (env, kind): fixed curve, hindsight frontier and points, oracle, random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for _, r in reports))
    kinds = list(dict.fromkeys(k for k, _ in reports))
    fig, axes = plt.subplots(len(envs), len(kinds), figsize=(5.2 * len(kinds), 4.0 * len(envs)), squeeze=False)
    for kind, r in reports:
        ax = axes[envs.index(r["env"])][kinds.index(kind)]
        fx = sorted((p["fraction"], p["map50"]) for p in r["fixed"])
        ax.plot(*zip(*fx, strict=True), "o-", color="tab:blue", label="fixed period")
        families = [[(p["fraction"], p["map50"]) for p in rows] for rows in r["hindsight"].values()]
        ex = np.linspace(0.0, 0.6, 241)
        ey = frontier(families, ex)
        ax.plot(ex[np.isfinite(ey)], ey[np.isfinite(ey)], "-", color="tab:purple", lw=2, label="hindsight frontier")
        markers = "PXDsv^"
        for i, (name, rows) in enumerate(r["hindsight"].items()):
            label = f"hindsight [{name}]" if r["env"] == "keyframe" else f"beam width {name}"
            ax.plot([p["fraction"] for p in rows], [p["map50"] for p in rows], markers[i % 6], color="tab:purple",
                    alpha=0.35 + 0.65 * (i + 1) / len(r["hindsight"]), ms=5, ls="none", label=label)  # fmt: skip
        if r["random"]:
            rx = sorted((p["fraction"], p["map50"]) for p in r["random"])
            ax.plot(*zip(*rx, strict=True), "x:", color="0.5", label="random")
        ax.plot(r["oracle"]["fraction"], r["oracle"]["map50"], "*", color="tab:green", ms=12, label="myopic oracle")
        if "segment_frontier" in r:
            sx = [(p["fraction"], p["map50"]) for p in r["segment_frontier"]]
            ax.plot(*envelope(sx), "--", color="tab:orange", label="segment-aware (in-sample)")
        ax.axvspan(*SPAN, color="0.94", zorder=0)
        g = r["hindsight_vs_fixed"]
        gaps = f"max {100 * g['max_gap']:+.1f}, mean {100 * g['mean_gap']:+.1f}"
        ax.set_title(f"{r['env']} on {kind}: hindsight - fixed {gaps} points", fontsize=9)
        ax.set_xlabel("keyframe fraction" if r["env"] == "keyframe" else "heavy fraction")
        ax.set_ylabel("mAP@0.5")
        ax.set_xlim(0, 0.6)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with staged_file(path, ".png") as staged:  # a reader never sees half a PNG
        fig.savefig(staged, dpi=110)
    plt.close(fig)


def _caches(specs: Sequence[str]) -> list[tuple[str, Path]]:
    out = []
    for spec in specs:
        kind, sep, path = spec.partition("=")
        out.append((kind, Path(path)) if sep else (Path(spec).stem, Path(spec)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", action="append", required=True, metavar="KIND=FILE",
                        help="a feature cache and its label (repeat for several kinds)")  # fmt: skip
    parser.add_argument("--env", nargs="+", default=["interleave", "keyframe"], choices=sorted(PERIODS))
    parser.add_argument("--split", default="val", help="split to evaluate on")
    parser.add_argument("--max-videos", type=int, default=None, help="only the first N videos of the split")
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 4, 16], help="Interleave beam widths")
    parser.add_argument("--signal", default="matched", choices=(*FRAME_SIGNALS, "none"),
                        help="the per-frame signal the Keyframe oracle also optimises")  # fmt: skip
    parser.add_argument("--segments", action="store_true", help="also the in-sample segment-aware frontier")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars on stderr")  # fmt: skip
    parser.add_argument("--save", default="", help="also write the JSON report to this file")
    parser.add_argument("--plot", default="runs/headroom/headroom.png", help="PNG to write ('-' = none)")
    args = parser.parse_args(argv)
    if any(w < 1 for w in args.widths) or 1 not in args.widths:
        print("benchmarks/headroom.py: error: --widths must be >= 1 and include 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    reports: list[tuple[str, dict[str, Any]]] = []
    try:
        for kind, cache in _caches(args.cache):
            for env in args.env:
                r = headroom(env, cache, split=args.split, max_videos=args.max_videos, widths=args.widths,
                             signal=args.signal, segments=args.segments, progress=args.progress)  # fmt: skip
                reports.append((kind, r))
    except GistgymError as exc:
        print(f"benchmarks/headroom.py: error: {exc}", file=sys.stderr)
        return 2
    if args.plot != "-":
        plot(reports, Path(args.plot))
    everything = {f"{kind}/{r['env']}": r for kind, r in reports}
    if args.save:
        with staged_file(args.save, ".json") as staged:
            staged.write_text(json.dumps(everything, indent=1))
    if args.json:
        print(json.dumps(everything))
        return 0
    for kind, r in reports:
        label = "key" if r["env"] == "keyframe" else "heavy"
        print(f"\n## {r['env']} on {kind} ({r['cache']} [{r['split']}], {r['videos']} videos, "
              f"{r['frames']} frames, {r['seconds']:.0f} s)\n")  # fmt: skip
        print(f"| schedule | {label} fraction | mAP@0.5 |\n|---|---|---|")
        for p in r["fixed"]:
            print(f"| fixed period {p['period']} | {p['fraction']:.3f} | {p['map50']:.4f} |")
        for p in r["random"]:
            print(f"| random | {p['fraction']:.3f} | {p['map50']:.4f} |")
        print(f"| myopic oracle | {r['oracle']['fraction']:.3f} | {r['oracle']['map50']:.4f} |")
        for name, rows in r["hindsight"].items():
            for p in rows:
                what = f"budget {p['budget']:.3f}" if "budget" in p else f"lambda {p['lambda']:.3g}"
                tag = f"hindsight [{name}]" if r["env"] == "keyframe" else f"hindsight@{name}"
                print(f"| {tag} {what} | {p['fraction']:.3f} | {p['map50']:.4f} |")
        print(f"\nmAP points at matched {label} fraction, {SPAN[0]:.0%}-{SPAN[1]:.0%}: max (at) / mean")
        rows = [("hindsight frontier", r["hindsight_vs_fixed"])]
        rows += [(f"  {'signal ' if r['env'] == 'keyframe' else 'width '}{k}", g)
                 for k, g in r["hindsight_vs_fixed_by"].items()]  # fmt: skip
        if r["random_vs_fixed"]:
            rows.append(("random", r["random_vs_fixed"]))
        rows.append((f"{'every-frame keys' if r['env'] == 'keyframe' else 'heavy-only'} (the ceiling)",
                     r["ceiling_vs_fixed"]))  # fmt: skip
        if "segment_vs_fixed" in r:
            rows.append(("segment-aware (in-sample)", r["segment_vs_fixed"]))
        for name, g in rows:
            print(f"- {name} - fixed: {100 * g['max_gap']:+.2f} (at {g['max_at']:.3f}) / {100 * g['mean_gap']:+.2f} "
                  f"over [{g['covered'][0]:.3f}, {g['covered'][1]:.3f}]")  # fmt: skip
        o = r["oracle_vs_fixed"]
        print(f"- myopic oracle - fixed: {100 * o['max_gap']:+.2f} at {o['max_at']:.3f}")
    if args.plot != "-":
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
