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

Written to ``out``: ``table.md``, ``results.csv``, ``results.json``, ``pareto.png`` (mAP
against the expensive fraction: the trained runs' adaptive curve against the reference
curves, like the paper's Fig. 7) and ``timeline.png`` (where the expensive action ran on a
few videos, like Fig. 9). The verdict (:func:`dominance`, per reference curve) says whether
the adaptive curve dominates it between 5% and 50%.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gistgym.agents.backends import (
    GLIMPSE_ENV_ID,
    INTERLEAVE_ENV_ID,
    EnvBackend,
    get_backend,
    is_baseline,
    speed_rewards,
)
from gistgym.agents.baselines import parse_baseline
from gistgym.agents.glimpse_compare import DEFAULT_GLIMPSE_COUNTS, DEFAULT_MUS
from gistgym.agents.hindsight import HINDSIGHT, prepare_policies
from gistgym.agents.policy import Policy, SB3Policy
from gistgym.agents.report import check_compare_out, write_report
from gistgym.agents.runs import find_runs, load_run, read_run_config
from gistgym.errors import ConfigError
from gistgym.metrics import best_curve

DEFAULT_TAUS = (1, 2, 3, 4, 6, 9, 14, 19, 29)
"""Fixed-tau schedules of an Interleave comparison: heavy fractions from 1/2 down to 1/30."""
DEFAULT_DURATIONS = (2, 3, 4, 5, 7, 10, 14, 20)
"""Fixed key durations of a Keyframe comparison: keyframe fractions from 1/2 down to 1/20."""
DEFAULT_FLOW_THRESHOLDS = (0.6, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)
"""Mean-flow thresholds (px) of the Keyframe heuristic ``flow-threshold@X``."""
DOMINANCE_RANGE = (0.05, 0.50)
"""Expensive-action fractions over which the adaptive curve must dominate the references."""


@dataclass(frozen=True)
class CompareConfig:
    """Arguments of ``gistgym compare``."""

    cache: str = ""
    """Feature cache file. Required."""
    env: str = INTERLEAVE_ENV_ID
    """Environment id (gistgym/Interleave-v0, gistgym/Keyframe-v0 or gistgym/Glimpse-v0)."""
    split: str = "val"
    """Held-out split to compare on."""
    runs: str = ""
    """Folder of run directories (gistgym train --out); every complete run of --env in it is compared."""
    policies: tuple[str, ...] = ()
    """More policies: run directories or baseline names (e.g. tau=N, random@F, key=L, flow-threshold@X)."""
    taus: tuple[int, ...] = DEFAULT_TAUS
    """Interleave: fixed-tau baselines."""
    durations: tuple[int, ...] = DEFAULT_DURATIONS
    """Keyframe: fixed key durations l."""
    flow_thresholds: tuple[float, ...] = DEFAULT_FLOW_THRESHOLDS
    """Keyframe: mean-flow thresholds (px) of the flow-threshold heuristic."""
    gamma: float = 1.0
    """Speed reward of the cheap action(s) in the reported mean reward (and the oracle's choice)."""
    extractors: tuple[str, ...] = ("heavy", "light")
    """Interleave: extractors of the baselines, heavy first."""
    glimpse_counts: tuple[int, ...] = DEFAULT_GLIMPSE_COUNTS
    """Glimpse: frame counts K of the uniform@K, random@K and avgpool-uniform@K baselines."""
    mus: tuple[float, ...] = DEFAULT_MUS
    """Glimpse: AdaFrame's adaptive-lookahead thresholds (one point NAME@MU per run and value)."""
    patience: int = 2
    """Glimpse: adaptive lookahead stops after this many consecutive glimpses with utility below MU."""
    max_videos: int = 0
    """Only the first N videos of the split (0: all)."""
    seed: int = 0
    """Seed of the random baselines."""
    out: str = "runs/compare"
    """Folder for table.md, results.csv, results.json, pareto.png and timeline.png."""
    overwrite: bool = False
    """Replace a previous comparison at --out (a folder that is not one is never replaced)."""
    json: bool = False
    """Print one JSON object keyed by policy name instead of the table."""
    progress: bool = True
    """Show a progress bar."""


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

    def fraction(self, name: str) -> float:
        """The expensive action's share of a policy."""
        return float(getattr(self.results[name], self.backend.fraction))

    def as_json(self) -> dict[str, dict[str, Any]]:
        """``{policy: {map50, heavy_fraction | key_fraction, gflops_per_frame, mean_reward, ...}}``."""
        return {name: {**r.summary(), "adaptive": name in self.adaptive} for name, r in self.results.items()}


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
        "best_run_fraction", "span", "covered"}`` (mAP differences in [0, 1] units); ``{}``
        without runs or reference points.
    """
    if not points or not runs:
        return {}
    fx, fy = best_curve(points)
    ax, ay = best_curve([(x, y) for x, y, _ in runs])
    grid = np.round(np.arange(span[0], span[1] + 1e-9, 0.001), 3)
    covered = bool(ax[0] <= span[0] and ax[-1] >= span[1])
    gap = np.interp(grid, ax, ay) - np.interp(grid, fx, fy)
    inside = [(y - float(np.interp(x, fx, fy)), n, x) for x, y, n in runs if span[0] <= x <= span[1]]
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
    }


def reference_points(comparison: Comparison, prefix: str) -> list[tuple[float, float]]:
    """``(fraction, mAP)`` of one reference curve's baselines (and, for fixed schedules, the ends)."""
    names = [n for n in comparison.results if n.startswith(prefix)]
    if names and prefix in ("tau=", "key="):
        names += [n for n in comparison.backend.ends if n in comparison.results]
    return [(comparison.fraction(n), comparison.results[n].map50) for n in names]


def verdicts(comparison: Comparison) -> dict[str, dict[str, Any]]:
    """:func:`dominance` of the adaptive curve against each of the environment's reference curves."""
    runs = [(comparison.fraction(n), comparison.results[n].map50, n) for n in comparison.adaptive]
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
        word = "DOMINATES" if v["dominates"] else "does not dominate"
        extra = "" if v["covered"] else " (the runs do not cover the whole range)"
        lines.append(
            f"verdict: the adaptive curve {word} {ref} for {label} {lo:.0%}-{hi:.0%}{extra}: "
            f"smallest gap {100 * v['min_gap']:+.2f} mAP points at {v['at_fraction']:.1%}; "
            f"best run {v['best_run'] or '-'} {100 * v['best_margin']:+.2f} points over {ref} "
            f"at its fraction {v['best_run_fraction']:.1%}"
        )
    return "\n".join(lines)


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
    writer.writerow(["policy", "adaptive", *cols, "frames"])
    for name, r in comparison.results.items():
        s = r.summary()
        writer.writerow([name, int(name in comparison.adaptive), *(s[c] for c in cols), s["frames"]])
    return buf.getvalue().encode()


def plot_pareto(comparison: Comparison, path: Path, title: str) -> None:
    """mAP@0.5 against the expensive fraction: adaptive runs, reference curves, oracles, random, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, frac = comparison.results, comparison.fraction
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for (ref, prefix), color in zip(comparison.backend.references.items(), ("tab:gray", "tab:orange"), strict=False):
        fx, fy = best_curve(reference_points(comparison, prefix))
        if len(fx):
            ax.plot(fx, fy, "s-", color=color, markersize=4, label=ref)
            for n in res:
                if n.startswith(prefix):
                    ax.annotate(n, (frac(n), res[n].map50), fontsize=5, xytext=(3, -8), textcoords="offset points")
    if comparison.adaptive:
        xs, ys = best_curve([(frac(n), res[n].map50) for n in comparison.adaptive])
        ax.plot(xs, ys, "o-", color="tab:blue", label="adaptive (trained runs)")
        for n in comparison.adaptive:
            ax.annotate(n, (frac(n), res[n].map50), fontsize=6, xytext=(3, 4), textcoords="offset points")
    hindsight = [(frac(n), res[n].map50) for n in res if n.startswith(HINDSIGHT)]
    if hindsight:  # the best of every oracle point at each fraction (beam widths, budgets, lambdas)
        hx, hy = best_curve(hindsight)
        ax.plot(hx, hy, "P--", color="tab:purple", markersize=6, label="hindsight oracle")
    for n in res:
        if n == "oracle":
            ax.plot(frac(n), res[n].map50, "*", color="tab:green", markersize=11, label="myopic oracle")
        elif n.startswith("random@"):
            ax.plot(frac(n), res[n].map50, "x", color="tab:red", label="random (matched fraction)")
    lo, hi = DOMINANCE_RANGE
    ax.axvspan(lo, hi, color="tab:blue", alpha=0.06)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax.set_xlabel(comparison.backend.fraction_label)
    ax.set_ylabel("mAP@0.5")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


def comparison_runs(config: CompareConfig, named_baseline: Callable[[str], bool]) -> list[Path]:
    """Every run of ``config.env`` under ``config.runs`` plus the run directories in ``config.policies``."""
    found = find_runs(config.runs) if config.runs else []
    run_dirs = [d for d in found if read_run_config(d).get("env_id") == config.env]  # other envs' runs are skipped
    return run_dirs + [Path(p) for p in config.policies if not named_baseline(p)]


def compare(config: CompareConfig) -> Comparison:
    """Evaluate the baselines and runs of ``config`` and write the outputs into ``config.out``.

    Raises:
        ConfigError: Bad arguments (unknown environment, baseline, duplicate names).
        RunError: A named run directory is not a complete run.
        CacheError, CacheMismatchError: A bad cache, or a run trained on another detector's cache.
    """
    if not config.cache:
        raise ConfigError("--cache is required (a feature cache file made by `gistgym cache build`)")
    check_compare_out(config.out, config.overwrite)
    backend = get_backend(config.env)
    if backend.env_id == GLIMPSE_ENV_ID:
        raise ConfigError(f"{GLIMPSE_ENV_ID} is compared by gistgym.agents.glimpse_compare (compare_any)")
    max_videos = config.max_videos or None
    base_settings = backend.compare_settings(config)
    speed = base_settings["speed_reward"]
    run_dirs = comparison_runs(config, is_baseline)
    trained: list[tuple[Policy, dict[str, Any]]] = []
    for d in run_dirs:
        run = load_run(d, cache=config.cache)
        if run.config.get("env_id") != config.env:
            raise ConfigError(f"run {d} was trained on {run.config.get('env_id')}, not --env {config.env}")
        trained.append((SB3Policy(run.model, run.name), _run_settings(backend, run.config, config.gamma)))
    groups: dict[str, tuple[dict[str, Any], list[Any]]] = {
        repr(sorted(base_settings.items())): (base_settings, backend.baselines(config, speed))
    }
    for policy, settings in trained:
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
        evaluate(settings, policies)
    adaptive = [p.name for p, _ in trained]
    comparison = Comparison(results, adaptive, backend)
    if backend.matched_random:  # random at each run's expensive fraction
        matched = sorted({round(comparison.fraction(n), 2) for n in adaptive} - {0.0, 1.0})
        randoms = [p for p in (parse_baseline(f"random@{f:.2f}", speed) for f in matched) if p.name not in results]
        if randoms:
            evaluate(base_settings, randoms)
    comparison.verdict = verdicts(comparison)
    write_outputs(comparison, config)
    return comparison


def write_outputs(comparison: Comparison, config: CompareConfig) -> None:
    """table.md, results.csv, results.json, pareto.png and timeline.png in ``config.out`` (written whole)."""
    title = f"{config.env} on {Path(config.cache).name} [{config.split}], gamma={config.gamma:g} for mean reward"
    write_report(
        config.out,
        title=title,
        table=format_table(comparison),
        verdict=format_verdict(comparison.verdict, comparison.backend.fraction.replace("_", " ")),
        csv=_csv(comparison),
        results={"policies": comparison.as_json(), "verdict": comparison.verdict},
        plots={
            "pareto.png": lambda path: plot_pareto(comparison, path, title),
            "timeline.png": lambda path: plot_timeline(comparison, path),
        },
    )


def compare_any(config: CompareConfig) -> Any:
    """:func:`compare`, or for Glimpse-v0 :func:`~gistgym.agents.glimpse_compare.compare_glimpse`.

    Returns:
        A :class:`Comparison` or a :class:`~gistgym.agents.glimpse_compare.GlimpseComparison`.
    """
    if config.env != GLIMPSE_ENV_ID:
        return compare(config)
    if not config.cache:
        raise ConfigError("--cache is required (a feature cache file made by `gistgym cache build`)")
    check_compare_out(config.out, config.overwrite)
    from gistgym.agents.glimpse_compare import compare_glimpse
    from gistgym.agents.glimpse_eval import is_glimpse_baseline
    from gistgym.agents.glimpse_runs import glimpse_run_evaluator

    run_dirs = comparison_runs(config, is_glimpse_baseline)
    evaluate = glimpse_run_evaluator(config.cache, config.split, config.mus, config.patience, config.seed)
    return compare_glimpse(config, run_dirs, evaluate)
