"""``gistgym compare``: baselines and trained runs on one held-out split, as tables and plots.

Every policy runs deterministically over every whole video of the split (the environment's
evaluator, :class:`~gistgym.agents.evaluation.InterleaveEvaluator` or
:class:`~gistgym.agents.keyframe_eval.KeyframeEvaluator`), and the comparison reports per
policy ``map50``, the share of the expensive action (``heavy_fraction`` for Interleave,
``key_fraction`` for Keyframe), ``gflops_per_frame``, ``mean_reward`` (Eq. 2 with the
comparison's ``gamma``, the same for every policy so the column is comparable) and, for
Interleave, ``latency_ms_per_frame``. Policies:

* Interleave-v0: ``heavy``, ``light``, ``tau=N`` for every N of ``taus``, ``oracle`` (myopic,
  on the cached losses) and ``random@F`` at the heavy fraction F of every trained run
  (rounded to 0.01);
* Keyframe-v0: ``every-frame``, ``key=L`` for every L of ``durations``,
  ``flow-threshold@X`` for every X of ``flow_thresholds`` and ``oracle``;
* every complete run directory under ``runs`` for that environment (named by its
  directory), each checked to be trained on a cache with this cache's identity, and any run
  directory or baseline named in ``policies`` (including the hindsight oracles ``hindsight...``
  of :mod:`gistgym.agents.hindsight`, planned on the comparison's evaluator before they run).

Runs are also summarised per *setting* (:func:`group_settings`: the runs whose config.json
records the same ``setting``, i.e. the run name without ``gistgym train --seeds``' ``-sSEED``
suffix, and environment), the way the RL field reports a learned result
(:mod:`gistgym.agents.stats`): over its seeds, the interquartile mean of the score and of the
expensive fraction, each with a 95 % stratified bootstrap confidence interval; ``random@F`` at
the setting's IQM fraction (Interleave); and the gap to every reference curve at that
fraction (:func:`summarize_settings`). With ``frontier`` (the hindsight frontier that
``benchmarks/headroom.py --save`` writes, :func:`load_frontier`), the learned curve (the
settings' IQM points) and random are placed between the fixed curve and that frontier: the
captured share of the headroom (:func:`captured_share`).

Written to ``out``: ``table.md``, ``results.csv``, ``results.json``, ``pareto.png`` (mAP
against the expensive fraction: the trained runs' adaptive curve against the reference
curves, like the paper's Fig. 7, with each setting's IQM and confidence intervals and the
frontier) and ``timeline.png`` (where the expensive action ran on a few videos, like Fig. 9).
The verdict (:func:`dominance`, per reference curve) says whether the adaptive curve
dominates it between 5% and 50%, and with a frontier how much of its headroom the learned
curve captures.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gistgym.agents.algorithms import load_run
from gistgym.agents.backends import (
    INTERLEAVE_ENV_ID,
    EnvBackend,
    get_backend,
    speed_rewards,
)
from gistgym.agents.glimpse_compare import DEFAULT_GLIMPSE_COUNTS, DEFAULT_MUS
from gistgym.agents.hindsight import HINDSIGHT, prepare_policies
from gistgym.agents.policy import Policy, SB3Policy
from gistgym.agents.report import check_compare_out, write_report
from gistgym.agents.runs import comparison_runs
from gistgym.agents.stats import BOOTSTRAP_REPS, CI_ALPHA, iqm, stratified_bootstrap_ci
from gistgym.errors import ConfigError, InputFileError
from gistgym.metrics import best_curve
from gistgym.options import NestedOptions

DEFAULT_TAUS = (1, 2, 3, 4, 6, 9, 14, 19, 29)
"""Fixed-tau schedules of an Interleave comparison: heavy fractions from 1/2 down to 1/30."""
DEFAULT_DURATIONS = (2, 3, 4, 5, 7, 10, 14, 20)
"""Fixed key durations of a Keyframe comparison: keyframe fractions from 1/2 down to 1/20."""
DEFAULT_FLOW_THRESHOLDS = (0.6, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)
"""Mean-flow thresholds (px) of the Keyframe heuristic ``flow-threshold@X``."""
DOMINANCE_RANGE = (0.05, 0.50)
"""Expensive-action fractions over which the adaptive curve must dominate the references."""
HEADROOM_STEP = 0.01
"""Spacing of the fractions (over :data:`DOMINANCE_RANGE`) at which the captured share is averaged."""


@dataclass(frozen=True)
class InterleaveCompareOptions:
    """``gistgym compare`` options of Interleave-v0 (``CompareConfig.interleave``)."""

    taus: tuple[int, ...] = DEFAULT_TAUS
    """Interleave: fixed-tau baselines."""
    extractors: tuple[str, ...] = ("heavy", "light")
    """Interleave: extractors of the baselines, heavy first."""


@dataclass(frozen=True)
class KeyframeCompareOptions:
    """``gistgym compare`` options of Keyframe-v0 (``CompareConfig.keyframe``)."""

    durations: tuple[int, ...] = DEFAULT_DURATIONS
    """Keyframe: fixed key durations l."""
    flow_thresholds: tuple[float, ...] = DEFAULT_FLOW_THRESHOLDS
    """Keyframe: mean-flow thresholds (px) of the flow-threshold heuristic."""


@dataclass(frozen=True)
class GlimpseCompareOptions:
    """``gistgym compare`` options of Glimpse-v0 (``CompareConfig.glimpse``)."""

    glimpse_counts: tuple[int, ...] = DEFAULT_GLIMPSE_COUNTS
    """Glimpse: frame counts K of the uniform@K, random@K and avgpool-uniform@K baselines."""
    mus: tuple[float, ...] = DEFAULT_MUS
    """Glimpse: AdaFrame's adaptive-lookahead thresholds (one point NAME@MU per run and value)."""
    patience: int = 2
    """Glimpse: adaptive lookahead stops after this many consecutive glimpses with utility below MU."""


@dataclass(frozen=True)
class CompareConfig(NestedOptions):
    """Arguments of ``gistgym compare`` (each family's options in a group; :meth:`of` takes flat names)."""

    cache: str = ""
    """Feature cache file. Required."""
    env: str = INTERLEAVE_ENV_ID
    """Environment id (gistgym/Interleave-v0, gistgym/Keyframe-v0 or gistgym/Glimpse-v0)."""
    split: str = "val"
    """Held-out split to compare on."""
    runs: str = ""
    """Folder of run directories (gistgym train --out); every complete run of --env in it is compared."""
    policies: tuple[str, ...] = ()
    """More policies: run directories or baseline names (e.g. tau=N, random@F, key=L, flow-threshold@X,
    cue-rule:active=A,idle=I,change=X,cut=C)."""
    gamma: float = 1.0
    """Speed reward of the cheap action(s) in the reported mean reward (and the oracle's choice)."""
    max_videos: int = 0
    """Only the first N videos of the split (0: all)."""
    seed: int = 0
    """Seed of the random baselines and of the settings' bootstrap confidence intervals."""
    frontier: str = ""
    """Hindsight frontier JSON (benchmarks/headroom.py --save, or {"points": [[fraction, map50], ...]}).

    With it the comparison reports the captured share of its headroom over the fixed curve."""
    frontier_kind: str = ""
    """The KIND of the --frontier entry to use (default: the entry of --env whose cache is --cache)."""
    out: str = "runs/compare"
    """Folder for table.md, results.csv, results.json, pareto.png and timeline.png."""
    overwrite: bool = False
    """Replace a previous comparison at --out (a folder that is not one is never replaced)."""
    json: bool = False
    """Print one JSON object keyed by policy name instead of the table."""
    progress: bool = True
    """Show a progress bar."""
    interleave: InterleaveCompareOptions = field(default_factory=InterleaveCompareOptions)
    """Interleave-v0's options."""
    keyframe: KeyframeCompareOptions = field(default_factory=KeyframeCompareOptions)
    """Keyframe-v0's options."""
    glimpse: GlimpseCompareOptions = field(default_factory=GlimpseCompareOptions)
    """Glimpse-v0's options."""


@dataclass
class Comparison:
    """The results of a comparison."""

    results: dict[str, Any]
    """Policy name -> its evaluation (PolicyEvaluation or KeyframeEvaluation)."""
    adaptive: list[str]
    """Names of the trained runs (the adaptive curve)."""
    backend: EnvBackend
    verdict: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Reference curve name -> :func:`dominance` against it."""
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Setting name -> its summary over seeds (:func:`summarize_settings`)."""
    frontier: Frontier | None = None
    """The hindsight frontier of ``--frontier``, if given."""
    headroom: dict[str, Any] | None = None
    """The captured share of the frontier's headroom (:func:`headroom_report`); ``None`` without a frontier."""

    def fraction(self, name: str) -> float:
        """The expensive action's share of a policy."""
        return float(getattr(self.results[name], self.backend.fraction))

    def score(self, name: str) -> float:
        """The accuracy a policy reached (the backend's score, ``map50``)."""
        return float(getattr(self.results[name], self.backend.score))

    def as_json(self) -> dict[str, dict[str, Any]]:
        """``{policy: {map50, heavy_fraction | key_fraction, gflops_per_frame, mean_reward, ...}}``."""
        return {name: {**r.summary(), "adaptive": name in self.adaptive} for name, r in self.results.items()}

    def text(self) -> str:
        """The table, the per-setting summary and the verdicts, as ``gistgym compare`` prints them."""
        return format_text(self)

    def aggregates(self) -> dict[str, Any]:
        """``{"settings", "bootstrap", "headroom"}``: the per-setting numbers of results.json and ``--json``."""
        return {
            "settings": self.settings,
            "bootstrap": {"method": "stratified, percentile", "reps": BOOTSTRAP_REPS, "ci": 1 - CI_ALPHA},
            "headroom": self.headroom,
        }


@dataclass(frozen=True)
class Frontier:
    """A hindsight frontier: the best score reachable at each expensive fraction (:func:`load_frontier`)."""

    families: list[list[tuple[float, float]]]
    """Point families ``(fraction, score)`` (a beam width, an oracle's cost); see :func:`frontier_at`."""
    source: dict[str, Any]
    """Where it comes from: ``path``, and for a headroom.py file ``entry``, ``kind``, ``split``, ``videos``."""

    def span(self) -> tuple[float, float]:
        """The fractions some family covers, lowest to highest."""
        xs = [x for pts in self.families for x, _ in pts]
        return min(xs), max(xs)


def curve_at(
    points: Sequence[tuple[float, float]], xs: Any, *, extrapolate: bool = True, envelope: bool = False
) -> np.ndarray:
    """The piecewise linear curve through ``points`` (:func:`~gistgym.metrics.best_curve`) at ``xs``.

    The one interpolation of the comparison's curves (verdicts, settings, headroom).

    Args:
        points: ``(fraction, score)`` points.
        xs: Fractions to read the curve at.
        extrapolate: Beyond the points the curve is flat (``np.interp``); else ``nan`` there.
        envelope: Take the running maximum of the scores first (a Pareto upper envelope, as
            ``benchmarks/headroom.py`` draws its frontier).
    """
    fx, fy = best_curve(points)
    if envelope:
        fy = np.maximum.accumulate(fy)
    x = np.asarray(xs, dtype=np.float64)
    y = np.interp(x, fx, fy)
    if not extrapolate:
        y = np.where((x >= fx[0]) & (x <= fx[-1]), y, np.nan)
    return y


def dominance(
    points: Sequence[tuple[float, float]],
    runs: Sequence[tuple[float, float, str]],
    *,
    span: tuple[float, float] = DOMINANCE_RANGE,
) -> dict[str, Any]:
    """Does the adaptive curve dominate a reference curve between ``span`` fractions?

    Both curves are piecewise linear in the expensive action's fraction. ``points`` are the
    reference's ``(fraction, mAP)`` (for fixed schedules including the end points of only
    the cheap and only the expensive action, when evaluated); the adaptive curve is the
    trained ``runs`` ``(fraction, mAP, name)`` alone, so it ``covered`` the span only if
    its runs reach both ends (beyond its last run it is extended flat, which counts against
    it). The adaptive curve dominates if it covers the span and, on a 0.001 grid over
    ``span``, its mAP is >= the reference's; the margin is the largest ``mAP(run) -
    reference(fraction of the run)`` over the runs inside ``span``.

    Returns:
        ``{"dominates", "min_gap", "at_fraction", "best_margin", "best_run",
        "best_run_fraction", "span", "covered", "run_fractions"}`` (mAP differences in [0, 1]
        units; ``best_run`` is ``""`` and its margin and fraction ``nan`` when no run lies
        inside ``span``; ``run_fractions`` maps every run to its fraction); ``{}`` without
        runs or reference points.
    """
    if not points or not runs:
        return {}
    adaptive = [(x, y) for x, y, _ in runs]
    ax, _ = best_curve(adaptive)
    grid = np.round(np.arange(span[0], span[1] + 1e-9, 0.001), 3)
    covered = bool(ax[0] <= span[0] and ax[-1] >= span[1])
    gap = curve_at(adaptive, grid) - curve_at(points, grid)
    inside = [(y - float(curve_at(points, x)), n, x) for x, y, n in runs if span[0] <= x <= span[1]]
    best = max(inside, default=(float("nan"), "", float("nan")))
    return {
        "dominates": bool(covered and (gap >= 0).all()),
        "min_gap": float(gap.min()),
        "at_fraction": float(grid[int(gap.argmin())]),
        "best_margin": float(best[0]),
        "best_run": best[1],
        "best_run_fraction": float(best[2]),
        "span": list(span),
        "covered": covered,
        "run_fractions": {n: float(x) for x, _, n in runs},
    }


def reference_points(comparison: Comparison, prefix: str) -> list[tuple[float, float]]:
    """``(fraction, mAP)`` of one reference curve's baselines (and, for fixed schedules, the ends)."""
    names = [n for n in comparison.results if n.startswith(prefix)]
    if names and prefix == next(iter(comparison.backend.references.values())):  # the fixed schedules
        names += [n for n in comparison.backend.ends if n in comparison.results]
    return [(comparison.fraction(n), comparison.score(n)) for n in names]


def verdicts(comparison: Comparison) -> dict[str, dict[str, Any]]:
    """:func:`dominance` of the adaptive curve against each of the environment's reference curves."""
    runs = [(comparison.fraction(n), comparison.score(n), n) for n in comparison.adaptive]
    out = {}
    for ref, prefix in comparison.backend.references.items():
        v = dominance(reference_points(comparison, prefix), runs)
        if v:
            out[ref] = v
    return out


def format_verdict(verdict: Mapping[str, Mapping[str, Any]], label: str = "heavy fraction") -> str:
    """One line per reference curve, for people."""
    if not verdict:
        return "verdict: no trained runs (or no reference schedules) to compare"
    lines = []
    for ref, v in verdict.items():
        lo, hi = v["span"]
        span = f"{label} {lo:.0%}-{hi:.0%}"
        if not math.isfinite(v["min_gap"]):  # NaN mAP: a split without ground truth
            lines.append(f"verdict: no gap to {ref} for {span}: a policy's mAP is missing (no ground truth?)")
            continue
        word = "DOMINATES" if v["dominates"] else "does not dominate"
        extra = "" if v["covered"] else " (the runs do not cover the whole range)"
        text = (
            f"verdict: the adaptive curve {word} {ref} for {span}{extra}: "
            f"smallest gap {100 * v['min_gap']:+.2f} mAP points at {v['at_fraction']:.1%}; "
        )
        if v["best_run"] and math.isfinite(v["best_margin"]):
            text += (
                f"best run {v['best_run']} {100 * v['best_margin']:+.2f} points over {ref} "
                f"at its fraction {v['best_run_fraction']:.1%}"
            )
        elif v["best_run"]:
            text += f"best run {v['best_run']}: its mAP is missing"
        else:
            runs = ", ".join(f"{n} at {x:.1%}" for n, x in (v.get("run_fractions") or {}).items())
            text += f"no run inside {span}, so no best run" + (f" ({runs})" if runs else "")
        lines.append(text)
    return "\n".join(lines)


# --- settings: the runs of one configuration over seeds ------------------------------------


def group_settings(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Group runs by setting: the same ``setting`` in config.json and the same environment.

    ``gistgym train --seeds N`` records a run's setting (its name without the ``-sSEED``
    suffix); a run without one (trained before seeds, or by AdaFrame's trainer) is its own
    setting, under its name.

    Args:
        configs: Run name -> its config.json.

    Returns:
        Setting name -> its run names, by seed then name (settings in order of first
        appearance). A setting name found under two environments is suffixed ``[ENV]``.
    """
    keyed: dict[tuple[str, str], list[str]] = {}
    for name, cfg in configs.items():
        key = (str(cfg.get("env_id", "")), str(cfg.get("setting") or name))
        keyed.setdefault(key, []).append(name)
    envs_of: dict[str, set[str]] = {}
    for env, setting in keyed:
        envs_of.setdefault(setting, set()).add(env)
    out = {}
    for (env, setting), names in keyed.items():
        label = setting if len(envs_of[setting]) == 1 else f"{setting} [{env}]"
        out[label] = sorted(names, key=lambda n: (_run_seed(configs[n]) or 0, n))
    return out


def _run_seed(config: Mapping[str, Any]) -> int | None:
    seed = dict(config.get("train") or {}).get("seed")
    return int(seed) if isinstance(seed, int) else None


def matched_random_name(fraction: float) -> str | None:
    """``random@F`` at ``fraction`` rounded to 0.01 (``None`` at 0 or 1, where it is ``light``/``heavy``)."""
    f = round(float(fraction), 2)
    return None if f in (0.0, 1.0) or not math.isfinite(f) else f"random@{f:.2f}"


def _with_ci(values: Sequence[float], seed: int) -> dict[str, Any]:
    return {"iqm": iqm(values), "ci": list(stratified_bootstrap_ci(np.asarray(values)[:, None], iqm, seed=seed))}


def summarize_settings(
    comparison: Comparison, groups: Mapping[str, Sequence[str]], configs: Mapping[str, Mapping[str, Any]], *, seed: int
) -> dict[str, dict[str, Any]]:
    """Each setting over its seeds: IQM and 95 % CI of the score and the fraction, random and reference gaps.

    The confidence intervals are :func:`~gistgym.agents.stats.stratified_bootstrap_ci` of
    the IQM with one task (the split) and the setting's runs as its runs.

    Returns:
        Setting -> ``{"env_id", "runs", "seeds", "n_seeds", SCORE: {"iqm", "ci"}, FRACTION:
        {"iqm", "ci"}, "random", "gap_vs", "headroom"}`` (``SCORE``/``FRACTION`` the backend's
        keys, e.g. ``map50``, ``heavy_fraction``). ``random`` is ``{"policy", SCORE,
        FRACTION, "gap"}`` of ``random@F`` at the IQM fraction (``None`` where it was not
        evaluated); ``gap_vs`` maps every reference curve to ``IQM score - reference(IQM
        fraction)``, the curve read as :func:`dominance` reads it; ``headroom`` is filled by
        :func:`headroom_report`. Scores and gaps in [0, 1] units.
    """
    backend = comparison.backend
    out: dict[str, dict[str, Any]] = {}
    for setting, names in groups.items():
        fractions = _with_ci([comparison.fraction(n) for n in names], seed)
        scores = _with_ci([comparison.score(n) for n in names], seed)
        f, y = fractions["iqm"], scores["iqm"]
        random = matched_random_name(f)
        gaps = {}
        for ref, prefix in backend.references.items():
            points = reference_points(comparison, prefix)
            if points:
                gaps[ref] = y - float(curve_at(points, f))
        out[setting] = {
            "env_id": configs[names[0]].get("env_id"),
            "runs": list(names),
            "seeds": [_run_seed(configs[n]) for n in names],
            "n_seeds": len(names),
            backend.score: scores,
            backend.fraction: fractions,
            "random": None
            if random is None or random not in comparison.results
            else {
                "policy": random,
                backend.score: comparison.score(random),
                backend.fraction: comparison.fraction(random),
                "gap": y - comparison.score(random),
            },
            "gap_vs": gaps,
            "headroom": None,
        }
    return out


def learned_points(comparison: Comparison) -> list[tuple[float, float]]:
    """``(IQM fraction, IQM score)`` of every setting: the learned curve's points."""
    frac, score = comparison.backend.fraction, comparison.backend.score
    return [(s[frac]["iqm"], s[score]["iqm"]) for s in comparison.settings.values()]


# --- headroom: the learned curve between the fixed curve and a hindsight frontier ----------


def frontier_at(families: Sequence[Sequence[tuple[float, float]]], xs: Any) -> np.ndarray:
    """A hindsight frontier at ``xs``: the best of its point families, ``nan`` where none covers.

    ``benchmarks/headroom.py``'s definition (its ``frontier``): each family (and the pool of
    every point) is the upper envelope of its points, linear within its own range; the
    frontier is their maximum. Pooling alone would let a weak family's point cut below a
    strong family's segment.
    """
    x = np.asarray(xs, dtype=np.float64)
    pooled = [p for pts in families for p in pts]
    best = np.full(x.shape, np.nan)
    for pts in [*families, pooled]:
        if pts:
            best = np.fmax(best, curve_at(pts, x, extrapolate=False, envelope=True))
    return best


def headroom_grid(span: tuple[float, float] = DOMINANCE_RANGE, step: float = HEADROOM_STEP) -> np.ndarray:
    """The fractions over ``span`` every ``step`` (46 from 5 % to 50 % every 1 %)."""
    n = round((span[1] - span[0]) / step) + 1
    return np.round(span[0] + step * np.arange(n), 6)


def captured_share(
    curve: Sequence[tuple[float, float]],
    fixed: Sequence[tuple[float, float]],
    frontier: Sequence[Sequence[tuple[float, float]]],
    *,
    span: tuple[float, float] = DOMINANCE_RANGE,
    step: float = HEADROOM_STEP,
) -> dict[str, Any]:
    """How much of the fixed curve's headroom up to a hindsight frontier ``curve`` captures.

    At matched expensive fraction ``x`` on :func:`headroom_grid` (``span`` every ``step``), with
    ``pi(x)`` the curve, ``B(x)`` the fixed curve (both :func:`curve_at`, not extended beyond
    their points) and ``O(x)`` the frontier (:func:`frontier_at`), over the fractions all
    three cover::

        captured = mean(pi - B) / mean(O - B)

    a ratio of means (not the mean of per-fraction ratios, which explodes where the
    headroom is near 0): 0 is the fixed curve, 1 the frontier, negative below fixed.

    Returns:
        ``captured`` (``nan`` without overlap or without positive mean headroom), ``mean_gap``
        and ``max_gap`` (``pi - B``) and ``max_gap_at``, ``mean_headroom`` (``O - B``),
        ``covered`` (``[lowest, highest]`` fraction used, or ``None``) and ``fractions`` (how
        many); scores in [0, 1] units.
    """
    nan = float("nan")
    out: dict[str, Any] = {
        "captured": nan,
        "mean_gap": nan,
        "max_gap": nan,
        "max_gap_at": nan,
        "mean_headroom": nan,
        "covered": None,
        "fractions": 0,
    }
    if not curve or not fixed or not any(frontier):
        return out
    grid = headroom_grid(span, step)
    pi = curve_at(curve, grid, extrapolate=False)
    base = curve_at(fixed, grid, extrapolate=False)
    ceiling = frontier_at(frontier, grid)
    ok = np.isfinite(pi) & np.isfinite(base) & np.isfinite(ceiling)
    if not ok.any():
        return out
    gap, room, xs = pi[ok] - base[ok], ceiling[ok] - base[ok], grid[ok]
    k = int(np.argmax(gap))
    mean_room = float(room.mean())
    return {
        "captured": float(gap.mean()) / mean_room if mean_room > 0 else nan,
        "mean_gap": float(gap.mean()),
        "max_gap": float(gap[k]),
        "max_gap_at": float(xs[k]),
        "mean_headroom": mean_room,
        "covered": [float(xs[0]), float(xs[-1])],
        "fractions": int(ok.sum()),
    }


def headroom_report(comparison: Comparison, frontier: Frontier) -> dict[str, Any]:
    """The captured share of ``frontier``'s headroom over the first reference (the fixed curve).

    For the learned curve (the settings' IQM points, :func:`learned_points`) and for random
    (its ``random@F`` points), :func:`captured_share`; per setting (written into
    ``comparison.settings[S]["headroom"]``) the same at its IQM point alone: ``fixed``,
    ``frontier``, ``gap``, ``headroom`` and ``captured = gap / headroom`` there (``nan``
    where the fixed curve or the frontier does not reach its fraction).

    Returns:
        ``{"frontier": source, "reference", "span", "step", "learned", "random"}`` (``random``
        ``None`` without random@F points).
    """
    ref, prefix = next(iter(comparison.backend.references.items()))
    fixed = reference_points(comparison, prefix)
    families = frontier.families
    frac, score = comparison.backend.fraction, comparison.backend.score
    nan = float("nan")
    for s in comparison.settings.values():
        f, y = s[frac]["iqm"], s[score]["iqm"]
        b = float(curve_at(fixed, f, extrapolate=False)) if fixed else nan
        o = float(frontier_at(families, [f])[0])
        room = o - b
        s["headroom"] = {
            "fixed": b,
            "frontier": o,
            "gap": y - b,
            "headroom": room,
            "captured": (y - b) / room if room > 0 else nan,
        }
    randoms = [(comparison.fraction(n), comparison.score(n)) for n in comparison.results if n.startswith("random@")]
    return {
        "frontier": frontier.source,
        "reference": ref,
        "span": list(DOMINANCE_RANGE),
        "step": HEADROOM_STEP,
        "learned": captured_share(learned_points(comparison), fixed, families),
        "random": captured_share(randoms, fixed, families) if randoms else None,
    }


def _env_short_name(env_id: str) -> str:
    """``gistgym/Interleave-v0`` -> ``interleave``: how benchmarks/headroom.py names an env."""
    return env_id.rsplit("/", 1)[-1].split("-v")[0].lower()


def _finite_pair(point: Any) -> tuple[float, float] | None:
    """``[fraction, score]`` or ``{"fraction", "map50"}`` as two finite floats (``None`` if it is neither)."""
    pair: Any = [point.get("fraction"), point.get("map50")] if isinstance(point, dict) else point
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in pair):
        return None
    return float(pair[0]), float(pair[1])


def _point_pairs(value: Any, path: Path, where: str) -> list[tuple[float, float]]:
    """``[[fraction, score], ...]`` or ``[{"fraction", "map50"}, ...]`` as finite pairs.

    Raises:
        InputFileError: Not a non-empty list of such points (naming the point).
    """
    if not isinstance(value, list) or not value:
        raise InputFileError(path, "expected a non-empty list of [fraction, map50] points", field=where)
    out = []
    for i, point in enumerate(value):
        pair = _finite_pair(point)
        if pair is None:
            raise InputFileError(path, f"expected a [fraction, map50] pair of finite numbers, got {point!r}",
                                 field=f"{where}[{i}]")  # fmt: skip
        out.append(pair)
    return out


def load_frontier(
    path: str | os.PathLike[str],
    *,
    env_id: str,
    cache: str | os.PathLike[str],
    split: str,
    kind: str = "",
    videos: int | None = None,
) -> Frontier:
    """The hindsight frontier in ``path`` that belongs to this comparison.

    ``path`` is either ``{"points": [[fraction, map50], ...]}`` (taken as it is: one family,
    no checks) or the JSON of ``python benchmarks/headroom.py --save PATH``: ``{"KIND/ENV":
    report}`` with per report ``env`` (``interleave``, ``keyframe``), ``cache``, ``split``,
    ``videos`` and ``hindsight`` (point families). The entry used is the one of ``env_id``
    whose ``cache`` resolves to ``cache`` or, with ``kind``, the one of that KIND; it must be
    measured on ``split`` and, when ``videos`` is given, on as many videos.

    Raises:
        InputFileError: The file is missing, not JSON, of neither format, has bad points,
            holds no (or several) matching entries, or was measured on another split or
            number of videos. The message names the file and the entry.
    """
    file = Path(path)
    if not file.is_file():
        raise InputFileError(file, "no such frontier file (python benchmarks/headroom.py --save PATH writes one)")
    try:
        doc = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(file, f"unreadable JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputFileError(file, "expected a JSON object: {'points': [...]}, or the report of headroom.py --save")
    if "points" in doc:
        return Frontier([_point_pairs(doc["points"], file, "points")], {"path": str(file)})
    entries = {k: e for k, e in doc.items() if isinstance(e, dict) and isinstance(e.get("hindsight"), dict)}
    if not entries:
        raise InputFileError(
            file, "neither {'points': [[fraction, map50], ...]} nor the report of benchmarks/headroom.py --save"
        )
    short = _env_short_name(env_id)
    mine = {k: e for k, e in entries.items() if e.get("env") in (short, env_id)}
    if kind:
        chosen = {k: e for k, e in mine.items() if k.partition("/")[0] == kind}
    else:
        target = Path(cache).resolve()
        chosen = {
            k: e for k, e in mine.items() if isinstance(e.get("cache"), str) and Path(e["cache"]).resolve() == target
        }
    held = ", ".join(f"{k} (cache {e.get('cache')})" for k, e in entries.items())
    if not chosen:
        what = f"of kind {kind!r}" if kind else f"on cache {cache}"
        hint = "" if kind else "; pass --frontier-kind KIND to use another cache's entry"
        raise InputFileError(file, f"no {short} entry {what}; it holds {held}{hint}")
    if len(chosen) > 1:
        raise InputFileError(file, f"several {short} entries match: {', '.join(chosen)}; pass --frontier-kind KIND")
    key, entry = next(iter(chosen.items()))
    if entry.get("split", split) != split:
        raise InputFileError(
            file, f"measured on split {entry['split']!r}, this comparison is on {split!r}", field=f"{key}.split"
        )
    if videos is not None and entry.get("videos", videos) != videos:
        raise InputFileError(
            file,
            f"measured on {entry['videos']} videos, this comparison on {videos} (match --max-videos)",
            field=f"{key}.videos",
        )
    families = [
        _point_pairs(rows, file, f"{key}.hindsight.{name}") for name, rows in entry["hindsight"].items() if rows
    ]
    if not families:
        raise InputFileError(file, "no hindsight points", field=f"{key}.hindsight")
    source = {"path": str(file), "entry": key, "kind": key.partition("/")[0], "split": entry.get("split"),
              "videos": entry.get("videos")}  # fmt: skip
    return Frontier(families, source)


def _points(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:+.2f}"


def _share(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def format_settings(comparison: Comparison) -> str:
    """Markdown table, one row per setting (IQM over seeds with 95 % CIs, gaps in points), by fraction."""
    if not comparison.settings:
        return "settings: no trained runs"
    backend = comparison.backend
    score, frac = backend.score, backend.fraction
    with_random = any(s["random"] for s in comparison.settings.values())
    cols = ["setting", "seeds", f"{score} IQM [95% CI]", f"{frac} IQM [95% CI]"]
    cols += ["random@F", "vs random"] if with_random else []
    cols += [f"vs {ref}" for ref in backend.references]
    cols += ["captured"] if comparison.headroom is not None else []
    lines = [
        "Settings (runs whose config.json records the same setting: the run name without -sSEED), over their "
        f"seeds: interquartile mean [95% stratified bootstrap CI, {BOOTSTRAP_REPS} resamples]; gaps in "
        f"{score} points at the setting's IQM {frac.replace('_', ' ')}.",
        "",
        "| " + " | ".join(cols) + " |",
        "|---|" + "---:|" * (len(cols) - 1),
    ]

    def cell(v: Mapping[str, Any]) -> str:
        return f"{v['iqm']:.4f} [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}]"

    for name, s in sorted(comparison.settings.items(), key=lambda kv: (-kv[1][frac]["iqm"], kv[0])):
        row = [f"**{name}**", str(s["n_seeds"]), cell(s[score]), cell(s[frac])]
        if with_random:
            r = s["random"]
            row += [f"{r['policy']}: {r[score]:.4f}", _points(r["gap"])] if r else ["-", "-"]
        row += [_points(s["gap_vs"].get(ref, float("nan"))) for ref in backend.references]
        if comparison.headroom is not None:
            row.append(_share((s["headroom"] or {}).get("captured")))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_headroom(comparison: Comparison) -> str:
    """The ``headroom`` section of table.md (one line without a frontier)."""
    h = comparison.headroom
    if h is None:
        return "headroom: not computed (no --frontier; `python benchmarks/headroom.py --save PATH` writes one)"
    src = h["frontier"]
    where = src["path"] + (f" [{src['entry']}]" if "entry" in src else "")
    lo, hi = h["span"]
    label = comparison.backend.fraction.replace("_", " ")
    lines = [
        f"headroom: between {h['reference']} (0%) and the hindsight frontier of {where} (100%) at matched "
        f"{label}, {lo:.0%}-{hi:.0%} every {h['step']:.0%}: captured = mean(curve - {h['reference']}) / "
        f"mean(frontier - {h['reference']}) over the fractions all three cover (gaps in points)",
        "",
        "| curve | covered | captured | mean gap | max gap (at) | mean headroom |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, key in (("learned (settings' IQM)", "learned"), ("random (matched fraction)", "random")):
        c = h[key]
        if c is None:
            continue
        covered = "none" if c["covered"] is None else f"{c['covered'][0]:.0%}-{c['covered'][1]:.0%}"
        at = "" if not math.isfinite(c["max_gap_at"]) else f" ({c['max_gap_at']:.0%})"
        lines.append(
            f"| {name} | {covered} | {_share(c['captured'])} | {_points(c['mean_gap'])} | "
            f"{_points(c['max_gap'])}{at} | {_points(c['mean_headroom'])} |"
        )
    return "\n".join(lines)


def format_headroom_verdict(headroom: Mapping[str, Any] | None, label: str = "heavy fraction") -> str:
    """One line: the captured share of the learned curve and of random ("" without a frontier)."""
    if headroom is None:
        return ""
    c, ref = headroom["learned"], headroom["reference"]
    if c["covered"] is None:
        return f"verdict: the learned curve, {ref} and the frontier share no {label} in the span: no captured share"
    lo, hi = c["covered"]
    if not math.isfinite(c["captured"]):
        return (
            f"verdict: the frontier is not above {ref} on average for {label} {lo:.0%}-{hi:.0%}: no headroom to capture"
        )
    text = (
        f"verdict: the learned curve (settings' IQM) captures {_share(c['captured'])} of the hindsight headroom over "
        f"{ref} for {label} {lo:.0%}-{hi:.0%}: mean gap {_points(c['mean_gap'])}, max {_points(c['max_gap'])} "
        f"points at {c['max_gap_at']:.0%}"
    )
    r = headroom["random"]
    if r is not None and r["covered"] is None:
        text += f"; random at matched fraction: no {label} in the span where random, {ref} and the frontier all reach"
    elif r is not None and not math.isfinite(r["captured"]):
        text += f"; random at matched fraction: mean gap {_points(r['mean_gap'])}, no headroom there to capture"
    elif r is not None:
        text += f"; random at matched fraction captures {_share(r['captured'])} (mean gap {_points(r['mean_gap'])})"
    return text


def format_verdicts(comparison: Comparison) -> str:
    """The dominance verdict per reference curve, then the headroom one (with a frontier)."""
    label = comparison.backend.fraction.replace("_", " ")
    lines = (format_verdict(comparison.verdict, label), format_headroom_verdict(comparison.headroom, label))
    return "\n".join(line for line in lines if line)


def format_text(comparison: Comparison) -> str:
    """What ``gistgym compare`` prints (table.md below its title): policies, settings, headroom, verdict."""
    parts = [format_table(comparison), format_settings(comparison), format_headroom(comparison)]
    return "\n\n".join([*parts, format_verdicts(comparison)])


def _columns(comparison: Comparison) -> list[str]:
    first = next(iter(comparison.results.values()))
    return [k for k in first.summary() if k != "frames"]


def format_table(comparison: Comparison) -> str:
    """Markdown table, one row per policy, sorted by the expensive fraction (descending); runs in bold."""
    cols = _columns(comparison)
    lines = ["| policy | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in sorted(comparison.results, key=lambda n: (-comparison.fraction(n), n)):
        summary = comparison.results[name].summary()
        label = f"**{name}**" if name in comparison.adaptive else name
        lines.append(f"| {label} | " + " | ".join(f"{summary[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def _csv(comparison: Comparison) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = _columns(comparison)
    cols += [k for k in next(iter(comparison.results.values())).summary() if k not in cols]  # frames last
    writer.writerow(["policy", "adaptive", *cols])
    for name, r in comparison.results.items():
        s = r.summary()
        writer.writerow([name, int(name in comparison.adaptive), *(s[c] for c in cols)])
    return buf.getvalue().encode()


def plot_pareto(comparison: Comparison, path: Path, title: str) -> None:
    """mAP@0.5 against the expensive fraction: adaptive runs, reference curves, oracles, random, as a PNG.

    Each setting is its IQM point with its 95 % confidence intervals as error bars on both
    axes; the learned curve joins them, in a band from the curve of the settings' lower CI
    ends to that of their upper ones; with several seeds per setting each run is a faint dot.
    A ``--frontier`` is drawn dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, frac, score = comparison.results, comparison.fraction, comparison.score
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for (ref, prefix), color in zip(comparison.backend.references.items(), ("tab:gray", "tab:orange"), strict=False):
        fx, fy = best_curve(reference_points(comparison, prefix))
        if len(fx):
            ax.plot(fx, fy, "s-", color=color, markersize=4, label=ref)
            for n in res:
                if n.startswith(prefix):
                    ax.annotate(n, (frac(n), score(n)), fontsize=5, xytext=(3, -8), textcoords="offset points")
    if comparison.settings:
        _plot_settings(ax, comparison)
    elif comparison.adaptive:
        xs, ys = best_curve([(frac(n), score(n)) for n in comparison.adaptive])
        ax.plot(xs, ys, "o-", color="tab:blue", label="adaptive (trained runs)")
        for n in comparison.adaptive:
            ax.annotate(n, (frac(n), score(n)), fontsize=6, xytext=(3, 4), textcoords="offset points")
    if comparison.frontier is not None:
        lo, hi = comparison.frontier.span()
        fx = np.linspace(lo, hi, 241)
        fy = frontier_at(comparison.frontier.families, fx)
        ax.plot(fx, fy, "--", color="tab:purple", lw=1.5, label="hindsight frontier (--frontier)")
    hindsight = [(frac(n), score(n)) for n in res if n.startswith(HINDSIGHT)]
    if hindsight:  # the best of every oracle point at each fraction (beam widths, budgets, lambdas)
        hx, hy = best_curve(hindsight)
        ax.plot(hx, hy, "P--", color="tab:purple", markersize=6, label="hindsight oracle")
    for n in res:
        if n == "oracle":
            ax.plot(frac(n), score(n), "*", color="tab:green", markersize=11, label="myopic oracle")
        elif n.startswith("random@"):
            ax.plot(frac(n), score(n), "x", color="tab:red", label="random (matched fraction)")
    lo, hi = DOMINANCE_RANGE
    ax.axvspan(lo, hi, color="tab:blue", alpha=0.06)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax.set_xlabel(comparison.backend.fraction_label)
    ax.set_ylabel(comparison.backend.score_label)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_settings(ax: Any, comparison: Comparison) -> None:
    """The settings' IQM points with CI error bars, the learned curve through them and its CI band."""
    frac, score = comparison.backend.fraction, comparison.backend.score
    settings = comparison.settings
    several = any(s["n_seeds"] > 1 for s in settings.values())
    if several:
        runs = [(comparison.fraction(n), comparison.score(n)) for n in comparison.adaptive]
        ax.plot(*zip(*runs, strict=True), ".", color="tab:blue", alpha=0.3, markersize=4, label="trained runs (seeds)")
    points = learned_points(comparison)
    xs, ys = best_curve(points)
    label = "learned (IQM over seeds, 95% CI)" if several else "adaptive (trained runs)"
    ax.plot(xs, ys, "o-", color="tab:blue", markersize=4, label=label)
    low = curve_at([(s[frac]["iqm"], s[score]["ci"][0]) for s in settings.values()], xs)
    high = curve_at([(s[frac]["iqm"], s[score]["ci"][1]) for s in settings.values()], xs)
    ax.fill_between(xs, low, high, color="tab:blue", alpha=0.15, linewidth=0)
    for name, s in settings.items():
        x, y = s[frac]["iqm"], s[score]["iqm"]
        (xl, xh), (yl, yh) = s[frac]["ci"], s[score]["ci"]
        ax.errorbar(x, y, xerr=[[x - xl], [xh - x]], yerr=[[y - yl], [yh - y]], fmt="none", ecolor="tab:blue",
                    elinewidth=0.8, capsize=2)  # fmt: skip
        ax.annotate(name, (x, y), fontsize=6, xytext=(3, 4), textcoords="offset points")


def plot_timeline(comparison: Comparison, path: Path, *, videos: int = 4) -> None:
    """Where the expensive action (0) ran on the first ``videos`` videos, per policy (like Fig. 9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, frac = comparison.results, comparison.fraction
    fixed_prefix = next(iter(comparison.backend.references.values()))
    fixed = [n for n in res if n.startswith(fixed_prefix)]
    shown = list(comparison.adaptive)
    if shown and fixed:  # the fixed schedule closest in fraction to the middle run
        mid = frac(sorted(shown, key=frac)[len(shown) // 2])
        shown.append(min(fixed, key=lambda n: abs(frac(n) - mid)))
    elif not shown:
        shown = fixed[:3]
    if "oracle" in res:
        shown.append("oracle")
    first = next(iter(res.values()))
    n_videos = min(videos, len(first.videos))
    fig, axes = plt.subplots(n_videos, 1, figsize=(9, 0.45 * len(shown) * n_videos + 1), dpi=120, squeeze=False)
    for k in range(n_videos):
        ax = axes[k, 0]
        for row, name in enumerate(shown):
            actions = res[name].videos[k].actions
            expensive = np.flatnonzero(actions == 0)
            ax.scatter(expensive, np.full(len(expensive), row), marker="|", s=60, color="tab:red")
            ax.plot([0, len(actions) - 1], [row, row], color="0.85", lw=0.8, zorder=0)
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        ax.set_ylim(-0.7, len(shown) - 0.3)
        ax.set_title(f"{first.videos[k].video_id}: frames where action 0 (the expensive one) ran", fontsize=8)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _run_settings(backend: EnvBackend, run_config: Mapping[str, Any], gamma: float) -> dict[str, Any]:
    """A run's evaluation arguments, with the comparison's gamma (the same reward for every policy).

    The run's ``reward`` is left out for the same reason: every policy's ``mean_reward`` is
    the environment's default reward, whatever signal a run was trained on.
    """
    kw = backend.eval_kwargs(dict(run_config.get("env_kwargs") or {}))
    kw.pop("reward", None)
    num_actions = len(kw.get("extractors") or ("heavy", "light"))
    return {**kw, "speed_reward": speed_rewards(num_actions, gamma)}


def compare(config: CompareConfig) -> Comparison:
    """Evaluate the baselines and runs of ``config`` and write the outputs into ``config.out``.

    Raises:
        ConfigError: Bad arguments (unknown environment, baseline, duplicate names).
        RunError: A named run directory is not a complete run.
        CacheError, CacheMismatchError: A bad cache, or a run trained on another detector's cache.
        InputFileError: A bad ``--frontier`` file (see :func:`load_frontier`).
    """
    if not config.cache:
        raise ConfigError("--cache is required (a feature cache file made by `gistgym cache build`)")
    check_compare_out(config.out, config.overwrite)
    backend = get_backend(config.env)
    if backend.compare is not None:
        raise ConfigError(f"{backend.env_id} has its own comparison; call compare_any")
    max_videos = config.max_videos or None
    frontier = _config_frontier(config) if config.frontier else None  # a bad file fails before any evaluation
    base_settings = backend.compare_settings(config)
    speed = base_settings["speed_reward"]
    run_dirs = comparison_runs(config, backend.is_baseline)
    trained: list[tuple[Policy, dict[str, Any]]] = []
    run_configs: dict[str, dict[str, Any]] = {}
    for d in run_dirs:
        run = load_run(d, cache=config.cache)
        if run.config.get("env_id") != config.env:
            raise ConfigError(f"run {d} was trained on {run.config.get('env_id')}, not --env {config.env}")
        trained.append((SB3Policy(run.model, run.name), _run_settings(backend, run.config, config.gamma)))
        run_configs[run.name] = run.config
    groups: dict[str, tuple[dict[str, Any], list[Any]]] = {repr(sorted(base_settings.items())): (base_settings, [])}
    # a baseline that needs more of the environment (a cue rule reads cues=True) says so in env_kwargs
    policies = backend.baselines(config, speed) + [backend.baseline(s, speed) for s in config.policies
                                                    if backend.is_baseline(s)]  # fmt: skip
    baselines = [(b, {**base_settings, **getattr(b, "env_kwargs", {})}) for b in policies]
    for policy, settings in [*baselines, *trained]:
        groups.setdefault(repr(sorted(settings.items())), (settings, []))[1].append(policy)
    results: dict[str, Any] = {}

    def evaluate(settings: Mapping[str, Any], policies: Sequence[Any]) -> None:
        clash = [p.name for p in policies if p.name in results]
        if clash:
            raise ConfigError(f"two policies are named {clash}; give each a distinct name")
        ev = backend.make_evaluator(config.cache, config.split, settings, max_videos=max_videos)
        try:
            prepare_policies(policies, ev)  # hindsight oracles plan on the evaluator's videos
            results.update(ev.evaluate_many(policies, seed=config.seed, progress=config.progress))
        finally:
            ev.close()

    for settings, policies in groups.values():
        if policies:
            evaluate(settings, policies)
    adaptive = [p.name for p, _ in trained]
    comparison = Comparison(results, adaptive, backend)
    setting_runs = group_settings(run_configs)
    if backend.matched_random:  # random at each run's and each setting's (IQM) expensive fraction
        fractions = [comparison.fraction(n) for n in adaptive]
        fractions += [iqm([comparison.fraction(n) for n in names]) for names in setting_runs.values()]
        matched = sorted({name for name in map(matched_random_name, fractions) if name is not None})
        randoms = [backend.baseline(name, speed) for name in matched if name not in results]
        if randoms:
            evaluate(base_settings, randoms)
    comparison.settings = summarize_settings(comparison, setting_runs, run_configs, seed=config.seed)
    comparison.verdict = verdicts(comparison)
    if frontier is not None:
        comparison.frontier = frontier
        comparison.headroom = headroom_report(comparison, frontier)
    write_outputs(comparison, config)
    return comparison


def _config_frontier(config: CompareConfig) -> Frontier:
    """:func:`load_frontier` of ``config.frontier`` for this comparison's env, cache, split and videos."""
    from gistgym.feature_cache import FeatureCache

    with FeatureCache(Path(config.cache)) as cache:
        videos = len(cache.video_ids(config.split)[: config.max_videos or None])
    return load_frontier(
        config.frontier, env_id=config.env, cache=config.cache, split=config.split, kind=config.frontier_kind,
        videos=videos,
    )  # fmt: skip


def write_outputs(comparison: Comparison, config: CompareConfig) -> None:
    """table.md, results.csv, results.json, pareto.png and timeline.png in ``config.out`` (written whole)."""
    title = f"{config.env} on {Path(config.cache).name} [{config.split}], gamma={config.gamma:g} for mean reward"
    write_report(
        config.out,
        title=title,
        table=format_table(comparison),
        sections=[format_settings(comparison), format_headroom(comparison)],
        verdict=format_verdicts(comparison),
        csv=_csv(comparison),
        results={"policies": comparison.as_json(), "verdict": comparison.verdict, **comparison.aggregates()},
        plots={
            "pareto.png": lambda path: plot_pareto(comparison, path, title),
            "timeline.png": lambda path: plot_timeline(comparison, path),
        },
    )


def compare_any(config: CompareConfig) -> Any:
    """``gistgym compare``: the family's own comparison if it registered one, else :func:`compare`.

    Returns:
        A :class:`Comparison`, or what the family's comparison returns (e.g. a
        :class:`~gistgym.agents.glimpse_compare.GlimpseComparison`); each has ``as_json()``,
        ``verdict``, ``aggregates()`` and ``text()``.
    """
    backend = get_backend(config.env)
    return compare(config) if backend.compare is None else backend.compare(config)
