"""How much of the hindsight headroom can a *causal* scheduler capture with perfect state knowledge?

Usage::

    python benchmarks/causal_bound.py --cache /tmp/caches/streams.h5 --headroom /tmp/res/headroom_final.json
                                      [--env gistgym/Keyframe-v0] [--annotations data/streams] [--split val]
                                      [--max-videos N]
                                      [--families segment shot events events-late speed speed-events oracle]
                                      [--grid full|small] [--json] [--save JSON] [--resume JSON]

Learned Interleave-v0 schedulers capture a small share of the hindsight headroom (the gap
between the fixed-tau curve and ``benchmarks/headroom.py``'s beam-search frontier). Before
training more agents: is the gap a matter of cue quality, or out of reach for any scheduler
that decides frame by frame from what it knows *now*? This script measures privileged
causal schedules that are told the true state of the frame about to be decided (its
ground-truth stretch, shot, objects and their speeds), each family over a grid of
parameters, with the evaluator ``gistgym compare`` uses for the environment (Interleave-v0:
real memory rollouts; Keyframe-v0: the cached DFF detections under the schedule; mAP@0.5
pooled over every frame of every video of the split). ``--env`` names any environment the
generic comparison scores (its registered backend gives the evaluator, the fixed-period
reference and the oracle); below, "the heavy extractor" is the expensive action 0 (a
keyframe on Keyframe-v0) and "a period" a fixed number of frames between them:

* ``segment``: :class:`~gistgym.agents.baselines.SegmentPeriodPolicy`, one period for
  ``active`` frames and one for ``idle`` and ``empty`` ones;
* ``shot``: the same, plus the heavy extractor on the first frame of every new shot (from
  ``--annotations DIR/<video>/annotations.json`` ``frames[i].shot``; without annotations a
  cut is a frame whose objects share no track id with the previous frame's, both non-empty,
  which on the ``streams`` val split finds all 94 annotated cuts and one more frame);
* ``events``: ``shot`` plus the heavy extractor on every frame where a new object (track id)
  appears;
* ``events-late``: ``events`` with every trigger one frame late (``--grid``'s ``lag``): what
  a scheduler can do that notices a cut or a new object only once it has run an extractor on
  that frame, the realistic form of a perfect event cue;
* ``speed``: on active frames the period ``clip(round(c / max(v, eps)), 1, Pmax)`` of the
  largest ground-truth object speed ``v`` (px/frame) of the frame about to be decided, on
  idle and empty frames an idle period;
* ``speed-events``: ``speed`` plus the ``events`` triggers;
* ``oracle`` (a reference, not state knowledge): the myopic oracle of
  :class:`~gistgym.agents.baselines.OraclePolicy` with the light action's speed reward
  swept, i.e. the heavy extractor whenever the next frame's light loss exceeds its heavy loss
  (given the current memory) by more than ``g`` (on Keyframe-v0 its keyframe oracle: a
  keyframe whenever the propagated loss exceeds the keyframe loss by more than ``g``).

Per family the upper Pareto envelope of its ``(expensive fraction, mAP)`` points is scored
with the comparison's own :func:`~gistgym.agents.compare.captured_share` against the
comparison's fixed-period curve (Interleave-v0: ``tau=N`` for ``gistgym compare``'s default
taus, plus ``heavy`` and ``light``; Keyframe-v0: ``key=L`` for its default durations, plus
``every-frame``) and the frontier ``gistgym compare --frontier`` reads from ``--headroom``
(:func:`~gistgym.agents.compare.load_frontier`), over the fractions it covers and, as the
best of it and the fixed-tau curve (which every family holds), over the whole span; the same
for the best of the state families and of all of them including the oracle (read like the
frontier: :func:`~gistgym.agents.compare.frontier_at`). ``--resume`` reuses the points of an
earlier ``--save`` (a wider grid costs only its new points).

Like ``SegmentPeriodPolicy``, every family decides frame ``t + 1`` knowing the true state of
frame ``t + 1`` itself (``events-late`` excepted). The families are a *lower* bound on what
such a privileged causal scheduler can do (hand-made rules over the state, tuned in-sample
on the split), not the optimum over all causal policies.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gistgym.agents.backends import INTERLEAVE_ENV_ID, EnvBackend, get_backend
from gistgym.agents.baselines import FramePeriodPolicy, SegmentPeriodPolicy
from gistgym.agents.compare import (
    DOMINANCE_RANGE,
    CompareConfig,
    captured_share,
    curve_at,
    frontier_at,
    headroom_grid,
    load_frontier,
)
from gistgym.errors import ConfigError, GistgymError
from gistgym.staging import staged_file

STATE_FAMILIES = ("segment", "shot", "events", "events-late", "speed", "speed-events")
FAMILIES = (*STATE_FAMILIES, "oracle")
IDLE_SEGMENTS = ("idle", "empty")
"""Stretches without moving objects: they share the idle period."""
READ_AT = (0.05, 0.10, 0.20, 0.30, 0.50)
"""Heavy fractions at which every curve is also printed."""
SPEED_EPS = 0.05
"""Speeds (px/frame) below this count as this (the period is then Pmax)."""

GRIDS: dict[str, dict[str, Any]] = {
    "full": {
        "segment": {"active": (1, 2, 3, 4, 5, 6, 8, 10, 13, 20), "idle": (8, 13, 20, 30, 60)},
        "shot": {"active": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20), "idle": (30, 60)},
        "events": {"active": (1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 30), "idle": (60,), "delay": (0, 2)},
        "events-late": {"active": (1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 30), "idle": (60,), "lag": (1,)},
        "speed": {"c": (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 15.0, 22.0), "pmax": (10, 30), "idle": (60,)},
        "speed-events": {
            "c": (0.5, 1.0, 1.5, 2.0, 4.0, 6.0, 8.0, 11.0, 15.0, 22.0),
            "pmax": (30,),
            "idle": (60,),
            "delay": (0, 2),
        },
        "oracle": {"g": (0.25, 0.5, 0.8, 1.2, 1.8, 2.6, 3.6, 5.0)},
    },
    "small": {
        "segment": {"active": (2, 3, 5, 8, 13, 20), "idle": (13, 30, 60)},
        "shot": {"active": (3, 5, 8, 13, 20), "idle": (60,)},
        "events": {"active": (5, 8, 13, 20, 30), "idle": (60,), "delay": (0,)},
        "events-late": {"active": (5, 8, 13, 20, 30), "idle": (60,), "lag": (1,)},
        "speed": {"c": (1.0, 2.0, 4.0, 8.0, 15.0, 22.0), "pmax": (30,), "idle": (60,)},
        "speed-events": {"c": (2.0, 6.0, 15.0, 22.0), "pmax": (30,), "idle": (60,), "delay": (0,)},
        "oracle": {"g": (0.5, 1.2, 2.6, 5.0)},
    },
}
"""Parameters per family: ``full`` (~165 evaluations on streams val, ~30 min on one core) or ``small``.

``delay``: the new-object trigger fires that many frames after the object's first frame (it
fades in over the first frames); the shot trigger always fires on the shot's first frame."""


# --- the state of every frame ------------------------------------------------------------


def _derived_cuts(tracks: Sequence[set[int]]) -> np.ndarray:
    """(T,) bool: frames whose objects share no track id with the previous frame's (both non-empty)."""
    cut = np.zeros(len(tracks), dtype=bool)
    for t in range(1, len(tracks)):
        cut[t] = bool(tracks[t]) and bool(tracks[t - 1]) and not (tracks[t] & tracks[t - 1])
    return cut


def frame_state(evaluator: Any, annotations: Path | None) -> dict[str, Any]:
    """Per video: ``segments``, ``speed`` (max px/frame), ``cuts`` and ``new`` (bool per frame).

    ``new`` marks frames where an object (track id) appears that the previous frame lacks,
    outside cuts.

    Cuts come from ``annotations`` (``frames[i].shot``) when given, else from the track ids
    (:func:`_derived_cuts`); ``cut_source`` says which, and with annotations
    ``cut_agreement`` counts annotated and derived cuts and the frames where they differ.
    """
    state: dict[str, Any] = {"segments": {}, "speed": {}, "cuts": {}, "new": {}}
    agree = {"annotated": 0, "derived": 0, "differ": 0}
    for v in evaluator.video_ids:
        gt = evaluator.ground_truth[v]
        tracks = [set(int(x) for x in a.track_ids) for a in gt]
        state["segments"][v] = [a.segment for a in gt]
        state["speed"][v] = np.array([float(np.max(a.speeds)) if len(a.speeds) else 0.0 for a in gt])
        derived = _derived_cuts(tracks)
        if annotations is not None:
            path = annotations / v / "annotations.json"
            frames = json.loads(path.read_text())["frames"]
            if len(frames) != len(gt):
                raise SystemExit(
                    f"benchmarks/causal_bound.py: error: {path} has {len(frames)} frames, the cache {len(gt)}"
                )
            shots = [f.get("shot") for f in frames]
            if any(s is None for s in shots):
                raise SystemExit(f"benchmarks/causal_bound.py: error: {path} lacks frames[i].shot")
            cuts = np.array([t > 0 and shots[t] != shots[t - 1] for t in range(len(shots))])
            agree["annotated"] += int(cuts.sum())
            agree["derived"] += int(derived.sum())
            agree["differ"] += int((cuts != derived).sum())
        else:
            cuts = derived
        new = np.array([t > 0 and bool(tracks[t] - tracks[t - 1]) for t in range(len(gt))])
        state["cuts"][v] = cuts
        state["new"][v] = new & ~cuts
    state["cut_source"] = "annotations" if annotations is not None else "track ids"
    state["cut_agreement"] = agree if annotations is not None else None
    return state


def _segment_periods(state: Mapping[str, Any], active: int, idle: int) -> dict[str, np.ndarray]:
    return {
        v: np.array([idle if s in IDLE_SEGMENTS else active for s in segs], dtype=np.int64)
        for v, segs in state["segments"].items()
    }


def _periods_by_name(state: Mapping[str, Any], active: int, idle: int) -> dict[str, int]:
    """The period of every segment name of the split: ``idle`` for :data:`IDLE_SEGMENTS`, else ``active``."""
    names = {s for segs in state["segments"].values() for s in segs} | {"active", *IDLE_SEGMENTS}
    return {s: idle if s in IDLE_SEGMENTS else active for s in sorted(names)}


def _speed_periods(state: Mapping[str, Any], c: float, pmax: int, idle: int) -> dict[str, np.ndarray]:
    out = {}
    for v, segs in state["segments"].items():
        p = np.clip(np.round(c / np.maximum(state["speed"][v], SPEED_EPS)), 1, pmax).astype(np.int64)
        out[v] = np.where(np.isin(segs, IDLE_SEGMENTS), idle, p)
    return out


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` moved ``k`` frames later (the first ``k`` frames False)."""
    out = np.zeros_like(x)
    out[k:] = x[: len(x) - k]
    return out


def _events(state: Mapping[str, Any], delay: int, lag: int = 0) -> dict[str, np.ndarray]:
    """Per video: ``lag`` frames after shot cuts, ``lag + delay`` after every new object (bool per frame)."""
    return {v: _shift(cuts, lag) | _shift(state["new"][v], lag + delay) for v, cuts in state["cuts"].items()}


def family_policies(
    family: str, grid: Mapping[str, Any], state: Mapping[str, Any], backend: EnvBackend | None = None
) -> list[tuple[dict[str, Any], Any]]:
    """``(parameters, policy)`` for every grid point of ``family`` (``backend``: whose oracle; Interleave-v0)."""
    out: list[tuple[dict[str, Any], Any]] = []
    if family == "segment":
        for a in grid["active"]:
            for i in grid["idle"]:
                periods = _periods_by_name(state, a, i)
                out.append(({"active": a, "idle": i}, SegmentPeriodPolicy(periods, state["segments"])))
    elif family in ("shot", "events", "events-late"):
        for d, lag in ((d, lag) for d in grid.get("delay", (0,)) for lag in grid.get("lag", (0,))):
            triggers = state["cuts"] if family == "shot" else _events(state, d, lag)
            extra = {"shot": {}, "events": {"delay": d}, "events-late": {"lag": lag}}[family]
            for a in grid["active"]:
                for i in grid["idle"]:
                    name = f"{family}:active={a},idle={i}" + "".join(f",{k}={v}" for k, v in extra.items())
                    policy = FramePeriodPolicy(_segment_periods(state, a, i), triggers, name)
                    out.append(({"active": a, "idle": i, **extra}, policy))
    elif family in ("speed", "speed-events"):
        for d in grid.get("delay", (0,)):
            triggers = _events(state, d) if family == "speed-events" else None
            extra = {"delay": d} if family == "speed-events" else {}
            for c in grid["c"]:
                for pmax in grid["pmax"]:
                    for i in grid["idle"]:
                        name = f"{family}:c={c:g},pmax={pmax},idle={i}" + (f",delay={d}" if extra else "")
                        policy = FramePeriodPolicy(_speed_periods(state, c, pmax, i), triggers, name)
                        out.append(({"c": c, "pmax": pmax, "idle": i, **extra}, policy))
    elif family == "oracle":
        backend = backend or get_backend(INTERLEAVE_ENV_ID)
        for g in grid["g"]:
            oracle = backend.baseline("oracle", (0.0, float(g)))
            out.append(({"g": g}, dataclasses.replace(oracle, name=f"oracle:g={g:g}")))
    else:
        raise ValueError(family)
    return out


# --- scoring --------------------------------------------------------------------------------


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper Pareto envelope: points by fraction, each with a higher mAP than every cheaper one."""
    out: list[tuple[float, float]] = []
    for f, m in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or m > out[-1][1]:
            if out and f == out[-1][0]:
                continue
            out.append((f, m))
    return out


def score_curves(
    curves: Sequence[Sequence[tuple[float, float]]],
    fixed: Sequence[tuple[float, float]],
    families: Sequence[Sequence[tuple[float, float]]],
) -> dict[str, Any]:
    """The best of ``curves``, its :func:`captured_share` and its mAP at :data:`READ_AT`.

    Each curve is its upper Pareto envelope (:func:`pareto`: dominated points dropped, linear
    between the rest); several are read the way the comparison reads a hindsight frontier
    (:func:`~gistgym.agents.compare.frontier_at`: each curve within its own range, and the
    envelope of all their points pooled, the maximum of them) on the captured share's grid of
    fractions. ``captured`` scores the result over the fractions it covers;
    ``captured_with_fixed`` the best of it and the fixed-tau curve (every family holds fixed
    tau: one period for every frame, no triggers), which covers the whole span.
    """
    grid = headroom_grid()
    out: dict[str, Any] = {}
    envelopes = [pareto(c) for c in curves]
    for key, these in (("captured", envelopes), ("captured_with_fixed", [*envelopes, pareto(fixed)])):
        y = frontier_at(these, grid)
        dense = [(float(x), float(v)) for x, v in zip(grid, y, strict=True) if np.isfinite(v)]
        out[key] = captured_share(dense, fixed, families) if dense else captured_share([], fixed, families)
    at = frontier_at(envelopes, READ_AT)
    xs = [f for pts in curves for f, _ in pts]
    out["span"] = [min(xs), max(xs)] if xs else None
    out["map50_at"] = {f"{x:.2f}": (None if not np.isfinite(y) else float(y)) for x, y in zip(READ_AT, at, strict=True)}
    if len(curves) == 1:
        out["pareto"] = [list(p) for p in pareto(curves[0])]
    return out


def _key(family: str, params: Mapping[str, Any]) -> tuple[Any, ...]:
    return (family, *sorted((k, float(v)) for k, v in params.items()))


def _cell(y: float | None) -> str:
    return "-" if y is None or not np.isfinite(y) else f"{y:.4f}"


def _covered(c: Mapping[str, Any]) -> str:
    return "-" if c["covered"] is None else f"{c['covered'][0]:.2f}-{c['covered'][1]:.2f}"


def format_report(report: Mapping[str, Any]) -> str:
    """Markdown: mAP of every curve at :data:`READ_AT`, then the captured share of every family and union."""
    src = report["frontier"]
    lines = [
        f"## causal bound of {report.get('env', INTERLEAVE_ENV_ID)} on {report['cache']} [{report['split']}] "
        f"({report['videos']} videos, {report['frames']} "
        f"frames, {report['seconds'] / 60:.1f} min; frontier {src.get('path')} {src.get('entry', '')})",
        "",
        f"cuts from {report['cut_source']}"
        + (f" (agreement {report['cut_agreement']})" if report["cut_agreement"] else ""),
        f"FramePeriodPolicy == SegmentPeriodPolicy on one point: {report['check_frame_period_equals_segment_period']}",
        "",
        "| curve | " + " | ".join(f"{x:.0%}" for x in READ_AT) + " |",
        "|---|" + "---|" * len(READ_AT),
    ]
    ref = report["reference_at"]
    fixed_name = report.get("reference", "fixed tau")
    for name, key in ((fixed_name, "fixed"), ("frontier", "frontier")):
        lines.append(f"| {name} | " + " | ".join(_cell(ref[f"{x:.2f}"][key]) for x in READ_AT) + " |")
    rows: list[tuple[str, Any]] = list(report["families"].items())
    rows += [("best of the state families", report["union_state"]), ("best of all", report["union_all"])]
    for name, r in rows:
        if r:
            lines.append(f"| {name} | " + " | ".join(_cell(r["map50_at"][f"{x:.2f}"]) for x in READ_AT) + " |")
    fv = report["frontier_vs_fixed"]
    lines += [
        "",
        f"frontier - {fixed_name} over {_covered(fv)}: mean {100 * fv['mean_gap']:+.2f}, "
        f"max {100 * fv['max_gap']:+.2f} (at {fv['max_gap_at']:.2f}) mAP points",
    ]
    cap = report.get("frontier_capped")
    if cap:
        lines.append(
            f"the frontier capped at {cap['at']}'s mAP ({cap['map50']:.4f}) captures {cap['captured']:.1%} over "
            f"{_covered(cap)}: the most a curve that never beats {cap['at']} can capture"
        )
    lines += [
        "",
        f"| family | points | span of its points | captured share (covered) | mean gap vs {fixed_name} | max gap (at) "
        f"| with {fixed_name}: captured (covered) | mean gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        if not r:
            continue
        c, cf = r["captured"], r["captured_with_fixed"]
        n = len(r["points"]) if "points" in r else "-"
        lines.append(
            f"| {name} | {n} | {r['span'][0]:.3f}-{r['span'][1]:.3f} | {c['captured']:.1%} ({_covered(c)}) | "
            f"{100 * c['mean_gap']:+.2f} | {100 * c['max_gap']:+.2f} ({c['max_gap_at']:.2f}) | "
            f"{cf['captured']:.1%} ({_covered(cf)}) | {100 * cf['mean_gap']:+.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="feature cache with the environment's section")
    parser.add_argument("--env", default=INTERLEAVE_ENV_ID,
                        help="environment id whose schedules are bounded (default %(default)s)")  # fmt: skip
    parser.add_argument("--headroom", required=True, help="benchmarks/headroom.py --save JSON (the frontier)")
    parser.add_argument("--frontier-kind", default="", help="the KIND entry of --headroom (default: by cache path)")
    parser.add_argument("--annotations", default="", help="dataset folder with <video>/annotations.json (shots)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-videos", type=int, default=None, help="only the first N videos of the split")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--grid", default="full", choices=sorted(GRIDS))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", default="", help="also write the JSON report to this file (after every family)")
    parser.add_argument("--resume", default="", help="a previous --save JSON of the same cache and split: "
                        "its evaluated points are reused, only the rest of the grid is evaluated")  # fmt: skip
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars on stderr")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    config = CompareConfig.of(cache=args.cache, split=args.split)
    try:
        backend = get_backend(args.env)
        if backend.compare is not None:
            raise ConfigError(f"--env {args.env} has its own comparison (no fixed-period curve or frontier to bound)")
        evaluator = backend.make_evaluator(args.cache, args.split, backend.compare_settings(config),
                                           max_videos=args.max_videos)  # fmt: skip
        frontier = load_frontier(args.headroom, env_id=backend.env_id, cache=args.cache, split=args.split,
                                 kind=args.frontier_kind, videos=len(evaluator.video_ids))  # fmt: skip
    except GistgymError as exc:
        print(f"benchmarks/causal_bound.py: error: {exc}", file=sys.stderr)
        return 2
    state = frame_state(evaluator, Path(args.annotations) if args.annotations else None)
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    earlier = 0.0  # seconds the resumed report's evaluations took
    if args.resume:
        old = json.loads(Path(args.resume).read_text())
        same = (old.get("env", INTERLEAVE_ENV_ID), old.get("cache"), old.get("split"), old.get("videos")) == (
            backend.env_id,
            args.cache,
            args.split,
            len(evaluator.video_ids),
        )
        if not same:
            print(f"benchmarks/causal_bound.py: error: {args.resume} is of another env, cache, split or "
                  "number of videos", file=sys.stderr)  # fmt: skip
            return 2
        earlier = float(old.get("seconds", 0.0))
        done.update({("fixed", r["name"]): r for r in old.get("fixed", [])})
        for fam, entry in old.get("families", {}).items():
            for r in entry["points"]:
                done[_key(fam, {k: v for k, v in r.items() if k not in ("fraction", "map50")})] = r
        if "check_frame_period_equals_segment_period" in old:
            done[("check",)] = {"ok": old["check_frame_period_equals_segment_period"]}
    speed = evaluator.env_kwargs["speed_reward"]

    reference = next(iter(backend.references))
    report: dict[str, Any] = {
        "env": backend.env_id,
        "reference": reference,
        "cache": args.cache,
        "split": args.split,
        "videos": len(evaluator.video_ids),
        "frames": sum(len(g) for g in evaluator.ground_truth.values()),
        "frontier": frontier.source,
        "grid": args.grid,
        "cut_source": state["cut_source"],
        "cut_agreement": state["cut_agreement"],
        "span": list(DOMINANCE_RANGE),
        "resumed_from": args.resume or None,
    }

    def save() -> None:
        report["seconds"] = earlier + time.perf_counter() - start
        if args.save:
            with staged_file(args.save, ".json") as staged:
                staged.write_text(json.dumps(report, indent=1))

    def log(msg: str) -> None:
        if args.progress:
            tqdm.write(msg, file=sys.stderr)

    # the fixed-period reference of gistgym compare: its ends and its default periods (tau=N, key=L)
    prefix = backend.references[reference]
    refs = [backend.baseline(name, speed) for name in backend.ends]
    refs += [p for p in backend.baselines(config, speed) if p.name.startswith(prefix)]

    def fraction(result: Any) -> float:
        return float(result.summary()[backend.fraction])

    grid = GRIDS[args.grid]
    planned = [("fixed", p.name) for p in refs] + [("check",)] * 2
    planned += [_key(f, params) for f in args.families for params, _ in family_policies(f, grid[f], state, backend)]
    n = sum(k not in done for k in planned)
    fixed_rows = []
    timed = False
    for p in tqdm(refs, desc=reference, disable=not args.progress):
        if ("fixed", p.name) in done:
            fixed_rows.append(done[("fixed", p.name)])
            continue
        t0 = time.perf_counter()
        r = evaluator.evaluate(p)
        fixed_rows.append({"name": p.name, "fraction": fraction(r), "map50": r.map50})
        if not timed:
            per_eval, timed = time.perf_counter() - t0, True
            log(f"one evaluation: {per_eval:.1f} s; {n} evaluations to run: ~{n * per_eval / 60:.0f} min")
    fixed = [(r["fraction"], r["map50"]) for r in fixed_rows]
    families = frontier.families
    report["fixed"] = fixed_rows
    report["reference_at"] = {
        f"{x:.2f}": {"fixed": float(b), "frontier": float(o)}
        for x, b, o in zip(READ_AT, curve_at(fixed, READ_AT, extrapolate=False), frontier_at(families, READ_AT),
                           strict=True)
    }  # fmt: skip
    report["frontier_span"] = list(frontier.span())
    dense = [(float(x), float(y)) for x, y in zip(headroom_grid(), frontier_at(families, headroom_grid()), strict=True)
             if np.isfinite(y)]  # fmt: skip
    report["frontier_vs_fixed"] = captured_share(dense, fixed, families)  # O - B: mean_gap is the mean headroom
    # the frontier where it is above the expensive action on every frame counts frames where the cheap
    # action happened to score better: a curve that never beats that end captures at most this
    top = fixed_rows[0]
    capped = [(x, min(y, top["map50"])) for x, y in dense]
    report["frontier_capped"] = {"at": top["name"], "map50": top["map50"], **captured_share(capped, fixed, families)}

    # FramePeriodPolicy reproduces SegmentPeriodPolicy (one point): the families share one counter
    if ("check",) in done:
        report["check_frame_period_equals_segment_period"] = done[("check",)]["ok"]
    else:
        seg = evaluator.evaluate(SegmentPeriodPolicy(_periods_by_name(state, 5, 30), state["segments"]))
        same = evaluator.evaluate(FramePeriodPolicy(_segment_periods(state, 5, 30), None, "check"))
        report["check_frame_period_equals_segment_period"] = bool(
            fraction(seg) == fraction(same) and seg.map50 == same.map50
        )

    report["families"] = {}
    for fam in args.families:
        rows = []
        policies = family_policies(fam, grid[fam], state, backend)
        for params, policy in tqdm(policies, desc=fam, disable=not args.progress):
            if _key(fam, params) in done:
                rows.append(done[_key(fam, params)])
                continue
            r = evaluator.evaluate(policy)
            rows.append({**params, "fraction": fraction(r), "map50": r.map50})
        pts = [(r["fraction"], r["map50"]) for r in rows]
        report["families"][fam] = {"points": rows, **score_curves([pts], fixed, families)}
        c = report["families"][fam]["captured"]
        cf = report["families"][fam]["captured_with_fixed"]
        log(f"{fam}: captured {c['captured']:.1%} over {c['covered']}, mean gap {100 * c['mean_gap']:+.2f}; "
            f"with {reference} {cf['captured']:.1%} over {cf['covered']}")  # fmt: skip
        save()

    def union(names: Sequence[str]) -> dict[str, Any] | None:
        curves = [[(r["fraction"], r["map50"]) for r in report["families"][f]["points"]] for f in names]
        return score_curves(curves, fixed, families) if curves else None

    report["union_state"] = union([f for f in args.families if f in STATE_FAMILIES])
    report["union_all"] = union(list(args.families))
    evaluator.close()
    save()

    if args.json:
        print(json.dumps(report))
        return 0
    print(format_report(report))
    if args.save:
        print(f"\nwrote {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
