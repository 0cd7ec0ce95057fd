"""``gistgym compare``: baselines and trained runs on one held-out split, as tables and plots.

Every policy runs deterministically over every whole video of the split
(:class:`~gistgym.agents.evaluation.InterleaveEvaluator`), and the comparison reports per
policy ``map50``, ``heavy_fraction``, ``gflops_per_frame``, ``mean_reward`` (Eq. 2 with the
comparison's ``gamma``, the same for every policy so the column is comparable) and
``latency_ms_per_frame``. Policies:

* the baselines ``heavy``, ``light``, ``tau=N`` for every N of ``taus``, ``oracle`` (myopic,
  on the cached losses) and ``random@F`` at the heavy fraction F of every trained run
  (rounded to 0.01);
* every complete run directory under ``runs`` (named by its directory), each checked to be
  trained on a cache with this cache's identity, and any run directory or baseline named in
  ``policies``.

Written to ``out``: ``table.md``, ``results.csv``, ``results.json``, ``pareto.png`` (mAP
against heavy fraction: the trained runs' adaptive curve against the fixed-tau curve, like
the paper's Fig. 7) and ``timeline.png`` (where the heavy extractor ran on a few videos,
like Fig. 9). The verdict (:func:`dominance`) says whether the adaptive curve dominates the
fixed-tau one between 5% and 50% heavy frames.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gistgym.agents.baselines import FixedTauPolicy, parse_baseline
from gistgym.agents.evaluation import InterleaveEvaluator, PolicyEvaluation
from gistgym.agents.policy import Policy, SB3Policy
from gistgym.agents.runs import find_runs, load_run
from gistgym.agents.train import INTERLEAVE_ENV_ID
from gistgym.errors import ConfigError
from gistgym.videos.dataset import atomic_write_bytes, atomic_write_json

DEFAULT_TAUS = (1, 2, 3, 4, 6, 9, 14, 19, 29)
"""Fixed-tau schedules of a comparison: heavy fractions from 1/2 down to 1/30."""
DOMINANCE_RANGE = (0.05, 0.50)
"""Heavy fractions over which the adaptive curve must dominate the fixed-tau curve."""
BASELINE_PREFIXES = ("heavy", "light", "tau=", "random@", "oracle")


@dataclass(frozen=True)
class CompareConfig:
    """Arguments of ``gistgym compare``."""

    cache: str = ""
    """Feature cache file. Required."""
    env: str = INTERLEAVE_ENV_ID
    """Environment id."""
    split: str = "val"
    """Held-out split to compare on."""
    runs: str = ""
    """Folder of run directories (gistgym train --out); every complete run in it is compared."""
    policies: tuple[str, ...] = ()
    """More policies: run directories or baseline names (heavy, light, tau=N, random@F, oracle)."""
    taus: tuple[int, ...] = DEFAULT_TAUS
    """Fixed-tau baselines."""
    gamma: float = 1.0
    """Speed reward of the light extractor(s) in the reported mean reward (and the oracle's choice)."""
    extractors: tuple[str, ...] = ("heavy", "light")
    """Extractors of the baselines, heavy first."""
    max_videos: int = 0
    """Only the first N videos of the split (0: all)."""
    seed: int = 0
    """Seed of the random baselines."""
    out: str = "runs/compare"
    """Folder for table.md, results.csv, results.json, pareto.png and timeline.png."""
    json: bool = False
    """Print one JSON object keyed by policy name instead of the table."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class Comparison:
    """The results of a comparison."""

    results: dict[str, PolicyEvaluation]
    adaptive: list[str]
    """Names of the trained runs (the adaptive curve)."""
    verdict: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, dict[str, Any]]:
        """``{policy: {map50, heavy_fraction, gflops_per_frame, mean_reward, ...}}``."""
        return {name: {**r.summary(), "adaptive": name in self.adaptive} for name, r in self.results.items()}


def _curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Heavy fractions (sorted) and mAPs of a curve; equal fractions keep the best mAP."""
    best: dict[float, float] = {}
    for x, y in points:
        best[x] = max(y, best.get(x, -np.inf))
    xs = np.array(sorted(best))
    return xs, np.array([best[x] for x in xs])


def dominance(
    results: Mapping[str, PolicyEvaluation], adaptive: Sequence[str], *, span: tuple[float, float] = DOMINANCE_RANGE
) -> dict[str, Any]:
    """Does the adaptive curve dominate the fixed-tau curve between ``span`` heavy fractions?

    Both curves are piecewise linear in heavy fraction. The fixed-tau curve also has the
    end points of running only the light extractor (tau -> infinity) and only the heavy one
    (tau = 0) when those were evaluated; the adaptive curve is the trained runs alone, so it
    ``covered`` the span only if its runs reach both ends (beyond its last run it is
    extended flat, which counts against it). The adaptive curve dominates if it covers the
    span and, on a 0.001 grid over ``span``, its mAP is >= the fixed-tau curve's; the margin
    is the largest ``mAP(run) - fixed(fraction of the run)`` over the runs inside ``span``.

    Returns:
        ``{"dominates", "min_gap", "at_fraction", "best_margin", "best_run", "span", "covered"}``
        (mAP differences in [0, 1] units); ``{}`` if there are no runs or no fixed schedules.
    """
    ends = [(r.heavy_fraction, r.map50) for n, r in results.items() if n in ("heavy", "light")]
    fixed = [(r.heavy_fraction, r.map50) for n, r in results.items() if n.startswith("tau=")]
    runs = [(r.heavy_fraction, r.map50, n) for n, r in results.items() if n in adaptive]
    if not fixed or not runs:
        return {}
    fx, fy = _curve(fixed + ends)
    ax, ay = _curve([(x, y) for x, y, _ in runs])
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


def format_verdict(verdict: Mapping[str, Any]) -> str:
    """One line for people."""
    if not verdict:
        return "verdict: no trained runs (or no fixed schedules) to compare"
    lo, hi = verdict["span"]
    word = "DOMINATES" if verdict["dominates"] else "does not dominate"
    extra = "" if verdict["covered"] else " (the curves do not cover the whole range)"
    return (
        f"verdict: the adaptive curve {word} fixed tau for heavy fractions {lo:.0%}-{hi:.0%}{extra}: "
        f"smallest gap {100 * verdict['min_gap']:+.2f} mAP points at {verdict['at_fraction']:.1%}; "
        f"best run {verdict['best_run'] or '-'} {100 * verdict['best_margin']:+.2f} points over fixed tau "
        f"at its heavy fraction {verdict['best_run_fraction']:.1%}"
    )


COLUMNS = ("map50", "heavy_fraction", "gflops_per_frame", "latency_ms_per_frame", "mean_reward")


def format_table(comparison: Comparison) -> str:
    """Markdown table, one row per policy, sorted by heavy fraction (descending)."""
    head = "| policy | mAP@0.5 | heavy fraction | GFLOPs/frame | latency ms/frame | mean reward |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    rows = sorted(comparison.results.items(), key=lambda kv: (-kv[1].heavy_fraction, kv[0]))
    for name, r in rows:
        label = f"**{name}**" if name in comparison.adaptive else name
        lines.append(
            f"| {label} | {r.map50:.3f} | {r.heavy_fraction:.3f} | {r.gflops_per_frame:.4f} | "
            f"{r.latency_ms_per_frame:.2f} | {r.mean_reward:+.3f} |"
        )
    return "\n".join(lines)


def _csv(comparison: Comparison) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["policy", "adaptive", *COLUMNS, "frames"])
    for name, r in comparison.results.items():
        s = r.summary()
        writer.writerow([name, int(name in comparison.adaptive), *(s[c] for c in COLUMNS), s["frames"]])
    return buf.getvalue().encode()


def plot_pareto(comparison: Comparison, path: Path, title: str) -> None:
    """mAP@0.5 against heavy fraction: adaptive runs, fixed tau, oracle, random, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = comparison.results
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    ends = [(r.heavy_fraction, r.map50) for n, r in res.items() if n in ("heavy", "light")]
    fx, fy = _curve([(r.heavy_fraction, r.map50) for n, r in res.items() if n.startswith("tau=")] + ends)
    if len(fx):
        ax.plot(fx, fy, "s-", color="tab:gray", label="fixed tau (and heavy/light only)")
        for n, r in res.items():
            if n.startswith("tau="):
                ax.annotate(n, (r.heavy_fraction, r.map50), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax_pts = [(res[n].heavy_fraction, res[n].map50) for n in comparison.adaptive]
    if ax_pts:
        xs, ys = _curve(ax_pts)
        ax.plot(xs, ys, "o-", color="tab:blue", label="adaptive (trained runs)")
        for n in comparison.adaptive:
            r = res[n]
            ax.annotate(n, (r.heavy_fraction, r.map50), fontsize=6, xytext=(3, 4), textcoords="offset points")
    for n, r in res.items():
        if n == "oracle":
            ax.plot(r.heavy_fraction, r.map50, "*", color="tab:green", markersize=11, label="myopic oracle")
        elif n.startswith("random@"):
            ax.plot(r.heavy_fraction, r.map50, "x", color="tab:red", label="random (matched fraction)")
    lo, hi = DOMINANCE_RANGE
    ax.axvspan(lo, hi, color="tab:blue", alpha=0.06)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax.set_xlabel("heavy fraction (frames the heavy extractor ran on)")
    ax.set_ylabel("mAP@0.5")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_timeline(comparison: Comparison, path: Path, *, videos: int = 4) -> None:
    """Where the heavy extractor ran on the first ``videos`` videos, per policy (like Fig. 9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = comparison.results
    shown = [n for n in comparison.adaptive]
    if shown:  # the fixed tau closest in heavy fraction to the middle run, and the oracle
        mid = res[sorted(shown, key=lambda n: res[n].heavy_fraction)[len(shown) // 2]].heavy_fraction
        taus = [n for n in res if n.startswith("tau=")]
        if taus:
            shown.append(min(taus, key=lambda n: abs(res[n].heavy_fraction - mid)))
    else:
        shown = [n for n in res if n.startswith("tau=")][:3]
    if "oracle" in res:
        shown.append("oracle")
    first = next(iter(res.values()))
    n_videos = min(videos, len(first.videos))
    fig, axes = plt.subplots(n_videos, 1, figsize=(9, 0.45 * len(shown) * n_videos + 1), dpi=120, squeeze=False)
    for k in range(n_videos):
        ax = axes[k, 0]
        for row, name in enumerate(shown):
            actions = res[name].videos[k].actions
            heavy = np.flatnonzero(actions == 0)
            ax.scatter(heavy, np.full(len(heavy), row), marker="|", s=60, color="tab:red")
            ax.plot([0, len(actions) - 1], [row, row], color="0.85", lw=0.8, zorder=0)
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        ax.set_ylim(-0.7, len(shown) - 0.3)
        ax.set_title(f"{first.videos[k].video_id}: frames the heavy extractor ran on", fontsize=8)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _is_baseline(spec: str) -> bool:
    return spec in ("heavy", "light", "oracle") or spec.startswith(("tau=", "random@"))


def _env_settings(run_config: Mapping[str, Any], gamma: float) -> dict[str, Any]:
    kw = dict(run_config.get("env_kwargs") or {})
    extractors = tuple(kw.get("extractors") or ("heavy", "light"))
    return {
        "extractors": extractors,
        "speed_reward": (0.0,) + (gamma,) * (len(extractors) - 1),
        "skip_light_updates": kw.get("skip_light_updates"),
        "history_len": int(kw.get("history_len", 20)),
    }


def compare(config: CompareConfig) -> Comparison:
    """Evaluate the baselines and runs of ``config`` and write the outputs into ``config.out``.

    Raises:
        ConfigError: Bad arguments (unknown environment, baseline, duplicate names).
        RunError: A named run directory is not a complete run.
        CacheError, CacheMismatchError: A bad cache, or a run trained on another detector's cache.
    """
    if not config.cache:
        raise ConfigError("--cache is required (a feature cache file made by `gistgym cache build`)")
    if config.env != INTERLEAVE_ENV_ID:
        raise ConfigError(f"--env {config.env!r}: gistgym compare supports {INTERLEAVE_ENV_ID}")
    if len(config.extractors) < 2:
        raise ConfigError(f"--extractors needs the heavy one and at least one light one, got {config.extractors}")
    max_videos = config.max_videos or None
    base_speed = (0.0,) + (config.gamma,) * (len(config.extractors) - 1)
    base_settings: dict[str, Any] = {
        "extractors": tuple(config.extractors),
        "speed_reward": base_speed,
        "skip_light_updates": None,
        "history_len": 20,
    }
    run_dirs = list(find_runs(config.runs)) if config.runs else []
    run_dirs += [Path(p) for p in config.policies if not _is_baseline(p)]
    trained: list[tuple[Policy, dict[str, Any]]] = []
    for d in run_dirs:
        run = load_run(d, cache=config.cache)
        trained.append((SB3Policy(run.model, run.name), _env_settings(run.config, config.gamma)))
    baselines: list[Policy] = [parse_baseline(s, base_speed) for s in ("heavy", "light")]
    baselines += [FixedTauPolicy(int(t)) for t in config.taus]
    baselines.append(parse_baseline("oracle", base_speed))
    baselines += [parse_baseline(s, base_speed) for s in config.policies if _is_baseline(s)]

    groups: dict[str, tuple[dict[str, Any], list[Policy]]] = {repr(base_settings): (base_settings, baselines)}
    for policy, settings in trained:
        groups.setdefault(repr(settings), (settings, []))[1].append(policy)
    results: dict[str, PolicyEvaluation] = {}
    for settings, policies in groups.values():
        with InterleaveEvaluator(config.cache, config.split, settings, max_videos=max_videos) as ev:
            names = [p.name for p in policies if p.name in results]
            if names:
                raise ConfigError(f"two policies are named {names}; give each a distinct name")
            results.update(ev.evaluate_many(policies, seed=config.seed, progress=config.progress))
    adaptive = [p.name for p, _ in trained]
    matched = sorted({round(results[n].heavy_fraction, 2) for n in adaptive} - {0.0, 1.0})
    randoms = [parse_baseline(f"random@{f:.2f}", ()) for f in matched]
    randoms = [p for p in randoms if p.name not in results]
    if randoms:
        with InterleaveEvaluator(config.cache, config.split, base_settings, max_videos=max_videos) as ev:
            results.update(ev.evaluate_many(randoms, seed=config.seed, progress=config.progress))
    comparison = Comparison(results, adaptive, dominance(results, adaptive))
    write_outputs(comparison, config)
    return comparison


def write_outputs(comparison: Comparison, config: CompareConfig) -> None:
    """table.md, results.csv, results.json, pareto.png and timeline.png in ``config.out`` (each atomically)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{config.env} on {Path(config.cache).name} [{config.split}], gamma={config.gamma:g} for mean reward"
    table = format_table(comparison)
    atomic_write_bytes(out / "table.md", f"{title}\n\n{table}\n\n{format_verdict(comparison.verdict)}\n".encode())
    atomic_write_bytes(out / "results.csv", _csv(comparison))
    atomic_write_json(out / "results.json", {"policies": comparison.as_json(), "verdict": comparison.verdict})
    for name, plot in (("pareto.png", plot_pareto), ("timeline.png", plot_timeline)):
        tmp = out / f".{name}.tmp{os.getpid()}.png"
        try:
            if plot is plot_pareto:
                plot_pareto(comparison, tmp, title)
            else:
                plot_timeline(comparison, tmp)
            os.replace(tmp, out / name)
        finally:
            tmp.unlink(missing_ok=True)
