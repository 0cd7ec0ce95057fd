"""``gistgym compare --env gistgym/Glimpse-v0``: frame selection methods against frames used.

Every method runs deterministically over every video of a held-out split of the ``glimpse``
cache section and is reported with video ``map``, ``top1``, ``frames_used`` (average distinct
frames the heavy extractor ran on) and ``gflops_per_video`` (including the global memory's
light passes for the methods that read it). Methods:

* the baselines of :mod:`gistgym.agents.glimpse_eval`: ``all``, and ``uniform@K``,
  ``random@K``, ``avgpool-uniform@K`` for every K of ``glimpse_counts`` (plus any named in
  ``policies``, e.g. ``avgpool-random@K``);
* every complete Glimpse-v0 run under ``runs`` (and run directories named in ``policies``):
  an AdaFrame run is reported under its name with all K glimpses, and as ``NAME@MU`` with
  adaptive lookahead for every threshold MU of ``mus`` (patience ``patience``) -- the
  adaptive curve; a PPO run under its name, through the environment.

The verdict (:func:`glimpse_verdict`) checks the AdaFrame paper's claims on this split: an
adaptive point within ``ALL_FRAMES_TOLERANCE`` mAP of ``all`` using at most a third of the
frames, and that point above the uniform and random curves at the same average frames
used (the margins at the other adaptive points are reported beside it). Written to
``out``: ``table.md``, ``results.csv``, ``results.json``, ``pareto.png`` (mAP and top-1
against frames used) and ``timeline.png`` (where each method looked on a few videos, with
the ground-truth evidence window shaded).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gistgym.agents.glimpse_eval import GlimpseBaselines, GlimpseEvaluation, is_glimpse_baseline
from gistgym.agents.glimpse_runs import glimpse_run_evaluator
from gistgym.agents.report import check_compare_out, write_report
from gistgym.agents.runs import comparison_runs
from gistgym.errors import ConfigError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.glimpse import SECTION_GLIMPSE, GlimpseSection, GlimpseVideos, read_glimpse_section
from gistgym.metrics import best_curve

DEFAULT_GLIMPSE_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
"""K of the uniform/random baselines."""
DEFAULT_MUS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
"""AdaFrame's adaptive-lookahead thresholds of a comparison."""
ALL_FRAMES_TOLERANCE = 0.01
"""How close (in mAP, [0, 1] units) to ``all`` an adaptive point must come."""
FRAME_BUDGET = 1 / 3
"""... using at most this share of the frames on average."""

RunEvaluator = Callable[[Path, GlimpseSection, GlimpseVideos], list[GlimpseEvaluation]]
"""``(run dir, section, videos) -> evaluations`` of one trained run (its name first)."""


@dataclass
class GlimpseComparison:
    """The results of a Glimpse comparison."""

    results: dict[str, GlimpseEvaluation]
    adaptive: list[str]
    """Names of the adaptive-lookahead points (``NAME@MU``), the adaptive curve."""
    runs: list[str]
    """Names of the trained runs (each with all its glimpses, or a PPO policy)."""
    videos: GlimpseVideos
    verdict: dict[str, Any] = field(default_factory=dict)

    def aggregates(self) -> dict[str, Any]:
        """Nothing beyond the per-method numbers (the generic comparison's per-setting summary has no analogue)."""
        return {}

    def text(self) -> str:
        """The table and the verdict, as ``gistgym compare`` prints them."""
        return format_glimpse_table(self) + "\n" + format_glimpse_verdict(self.verdict)

    def as_json(self) -> dict[str, dict[str, Any]]:
        """``{method: {map, top1, frames_used, gflops_per_video, ...}}``."""
        return {
            name: {**r.summary(), "adaptive": name in self.adaptive or name in self.runs}
            for name, r in self.results.items()
        }


def curve_points(results: Mapping[str, GlimpseEvaluation], prefix: str) -> list[tuple[float, float]]:
    """``(frames_used, map)`` of the baselines named ``prefix@K``."""
    return [(r.frames_used, r.map) for n, r in results.items() if n.startswith(prefix + "@")]


def glimpse_verdict(comparison: GlimpseComparison) -> dict[str, Any]:
    """Does adaptive lookahead reach ``all`` on a third of the frames, above uniform and random?

    The AdaFrame paper's two claims, checked at one **operating point** of the adaptive curve:
    the point with the fewest frames among those within ``ALL_FRAMES_TOLERANCE`` of ``all``
    and within ``FRAME_BUDGET`` of the frames (or, when none is, the best-mAP point within
    the budget). At that point the uniform and random curves (``uniform@K``, ``random@K``,
    linear in frames used, flat beyond their ends) are interpolated at the same average
    frames used. The margin at every other adaptive point is reported too.

    Returns:
        ``{"all_map", "budget_frames", "reaches_all": {ok, point, frames_used, map,
        gap_to_all}, "beats": {reference: {ok, point, margin, points_above, points,
        min_margin, margins}}}`` (mAP in [0, 1] units); ``{}`` without adaptive points.
    """
    res = comparison.results
    if not comparison.adaptive or "all" not in res:
        return {}
    all_map = res["all"].map
    budget = float(np.mean(comparison.videos.num_frames)) * FRAME_BUDGET
    points = [(n, res[n].frames_used, res[n].map) for n in comparison.adaptive]
    within = [p for p in points if p[1] <= budget]
    close = sorted((p for p in within if p[2] >= all_map - ALL_FRAMES_TOLERANCE), key=lambda p: p[1])
    pick = close[0] if close else max(within, key=lambda p: p[2], default=None)
    reaches = {
        "ok": bool(close),
        "point": pick[0] if pick else "",
        "frames_used": pick[1] if pick else float("nan"),
        "map": pick[2] if pick else float("nan"),
        "gap_to_all": (pick[2] - all_map) if pick else float("nan"),
    }
    beats: dict[str, Any] = {}
    for ref in ("uniform", "random"):
        fx, fy = best_curve(curve_points(res, ref))
        if not len(fx):
            continue
        margins = {n: y - float(np.interp(x, fx, fy)) for n, x, y in points}
        at = margins[pick[0]] if pick else float("nan")
        beats[ref] = {
            "ok": bool(pick and at > 0),
            "point": pick[0] if pick else "",
            "margin": at,
            "points_above": sum(m > 0 for m in margins.values()),
            "points": len(margins),
            "min_margin": min(margins.values()),
            "margins": margins,
        }
    return {"all_map": all_map, "budget_frames": budget, "reaches_all": reaches, "beats": beats}


def format_glimpse_verdict(verdict: Mapping[str, Any]) -> str:
    """The verdict for people, one line per claim."""
    if not verdict:
        return "verdict: no adaptive (AdaFrame) runs to compare"
    r = verdict["reaches_all"]
    word = "REACHES" if r["ok"] else "does not reach"
    head = (
        f"verdict: adaptive lookahead {word} all-frames mAP {_map(verdict['all_map'])} within "
        f"{100 * ALL_FRAMES_TOLERANCE:.0f} point on <= {verdict['budget_frames']:.1f} frames: "
    )
    if r["point"]:
        head += f"{r['point']} {_map(r['map'])} mAP ({_signed(r['gap_to_all'])}) with {r['frames_used']:.2f} frames"
    else:
        head += f"no adaptive point uses <= {verdict['budget_frames']:.1f} frames"
    lines = [head]
    for ref, b in verdict["beats"].items():
        word = "BEATS" if b["ok"] else "does not beat"
        curve = (
            f"the adaptive curve is above {ref} at {b['points_above']} of {b['points']} points "
            f"(smallest margin {_signed(b['min_margin'])})"
        )
        if b["point"]:
            lines.append(
                f"verdict: {b['point']} {word} {ref} sampling at equal frames used by "
                f"{_signed(b['margin'])} mAP points; {curve}"
            )
        else:
            lines.append(f"verdict: no adaptive point within the frame budget to set against {ref} sampling; {curve}")
    return "\n".join(lines)


def _map(x: float) -> str:
    """An mAP in points, or what is missing (NaN: no ground truth to score)."""
    return f"{100 * x:.2f}" if math.isfinite(x) else "(missing: no ground truth)"


def _signed(x: float) -> str:
    return f"{100 * x:+.2f}" if math.isfinite(x) else "(missing: no ground truth)"


def _order(comparison: GlimpseComparison) -> list[str]:
    return sorted(comparison.results, key=lambda n: (comparison.results[n].frames_used, n))


def format_glimpse_table(comparison: GlimpseComparison) -> str:
    """Markdown table sorted by frames used; trained runs and adaptive points in bold."""
    cols = ["map", "top1", "frames_used", "gflops_per_video"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in _order(comparison):
        s = comparison.results[name].summary()
        bold = name in comparison.adaptive or name in comparison.runs
        label = f"**{name}**" if bold else name
        lines.append(f"| {label} | " + " | ".join(f"{s[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def _csv(comparison: GlimpseComparison) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = ["map", "top1", "frames_used", "gflops_per_video", "videos"]
    writer.writerow(["method", "adaptive", *cols])
    for name in _order(comparison):
        s = comparison.results[name].summary()
        writer.writerow([name, int(name in comparison.adaptive or name in comparison.runs), *(s[c] for c in cols)])
    return buf.getvalue().encode()


def plot_glimpse_pareto(comparison: GlimpseComparison, path: Path, title: str) -> None:
    """Video mAP and top-1 against average frames used, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = comparison.results
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    styles = {
        "uniform": ("s-", "tab:gray"),
        "random": ("^-", "tab:orange"),
        "avgpool-uniform": ("d--", "tab:purple"),
        "avgpool-random": ("v--", "tab:brown"),
    }
    budget = float(np.mean(comparison.videos.num_frames)) * FRAME_BUDGET
    for ax, metric in zip(axes, ("map", "top1"), strict=True):
        for prefix, (marker, color) in styles.items():
            pts = [(r.frames_used, getattr(r, metric)) for n, r in res.items() if n.startswith(prefix + "@")]
            if pts:
                xs, ys = best_curve(pts)
                ax.plot(xs, ys, marker, color=color, markersize=4, label=f"{prefix}@K")
        if comparison.adaptive:
            pts = [(res[n].frames_used, getattr(res[n], metric)) for n in comparison.adaptive]
            xs, ys = best_curve(pts)
            ax.plot(xs, ys, "o-", color="tab:blue", label="AdaFrame, adaptive lookahead")
        for n in comparison.runs:
            ax.plot(res[n].frames_used, getattr(res[n], metric), "*", markersize=10, label=n)
        if "all" in res:
            ax.axhline(getattr(res["all"], metric), color="tab:green", ls=":", label="all frames (avg-pool)")
        ax.axvline(budget, color="0.6", lw=0.8, ls="--", label="a third of the frames")
        ax.set_xlabel("average frames used (heavy extractor passes per video)")
        ax.set_ylabel("video mAP" if metric == "map" else "top-1")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes[0].legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _closest(results: Mapping[str, GlimpseEvaluation], prefix: str, frames: float) -> str | None:
    names = [n for n in results if n.startswith(prefix + "@")]
    return min(names, key=lambda n: abs(results[n].frames_used - frames), default=None)


def plot_glimpse_timeline(comparison: GlimpseComparison, path: Path, *, videos: int = 4) -> None:
    """Which frames each method looked at on the first ``videos`` videos (evidence window shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = comparison.results
    shown = list(comparison.adaptive[len(comparison.adaptive) // 2 :][:1]) + list(comparison.runs[:2])
    ref_frames = res[shown[0]].frames_used if shown else 4.0
    for prefix in ("uniform", "random"):
        near = _closest(res, prefix, ref_frames)
        if near:
            shown.append(near)
    v = comparison.videos
    n = min(videos, len(v.video_ids))
    fig, axes = plt.subplots(n, 1, figsize=(9, 0.45 * max(len(shown), 1) * n + 1), dpi=120, squeeze=False)
    for k in range(n):
        ax = axes[k, 0]
        t = int(v.num_frames[k])
        ev = np.flatnonzero(v.evidence[k, :t])
        for start, stop in _runs(ev):
            ax.axvspan(start - 0.5, stop + 0.5, color="tab:green", alpha=0.15)
        for row, name in enumerate(shown):
            frames = res[name].frames[k]
            ax.scatter(frames, np.full(len(frames), row), marker="|", s=70, color="tab:red")
            for order, f in enumerate(frames[:12]):
                ax.annotate(str(order + 1), (f, row), fontsize=5, xytext=(1, 3), textcoords="offset points")
            ax.plot([0, t - 1], [row, row], color="0.85", lw=0.8, zorder=0)
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        ax.set_ylim(-0.7, len(shown) - 0.3)
        ax.set_xlim(-1, t)
        ax.set_title(
            f"{v.video_ids[k]} (label {int(v.labels[k])}): frames looked at, in order; green = class evidence",
            fontsize=8,
        )
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs of sorted indices as (first, last) pairs."""
    out: list[tuple[int, int]] = []
    for i in indices.tolist():
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def write_glimpse_outputs(comparison: GlimpseComparison, out: Path, title: str) -> None:
    """table.md, results.csv, results.json, pareto.png and timeline.png in ``out`` (written whole)."""
    write_report(
        out,
        title=title,
        table=format_glimpse_table(comparison),
        verdict=format_glimpse_verdict(comparison.verdict),
        csv=_csv(comparison),
        results={"policies": comparison.as_json(), "verdict": comparison.verdict},
        plots={
            "pareto.png": lambda path: plot_glimpse_pareto(comparison, path, title),
            "timeline.png": lambda path: plot_glimpse_timeline(comparison, path),
        },
    )


def compare_glimpse(config: Any, run_dirs: Sequence[Path], evaluate_run: RunEvaluator) -> GlimpseComparison:
    """Evaluate the baselines of ``config`` (a :class:`~gistgym.agents.compare.CompareConfig`) and ``run_dirs``.

    Args:
        config: The comparison's arguments (``cache``, ``split``, ``policies``,
            ``glimpse_counts``, ``seed``, ``max_videos``, ``out``).
        run_dirs: Trained Glimpse-v0 runs to include.
        evaluate_run: Evaluates one run (see :data:`RunEvaluator`).

    Raises:
        ConfigError: Bad arguments (a baseline name, duplicate names).
        CacheSectionError: The cache has no ``glimpse`` section.
    """
    check_compare_out(config.out, config.overwrite)
    bad = [k for k in config.glimpse.glimpse_counts if k < 1]
    if bad:
        raise ConfigError(f"--glimpse-counts must be frame counts >= 1, got {list(config.glimpse.glimpse_counts)}")
    cache = FeatureCache(Path(config.cache), sections=(SECTION_GLIMPSE,))
    try:
        section = read_glimpse_section(cache)
        videos = section.load_split(cache, config.split)
    finally:
        cache.close()
    if config.max_videos:
        videos = videos.first(config.max_videos)
    baselines = GlimpseBaselines(section, videos)
    specs = ["all"]
    for k in config.glimpse.glimpse_counts:
        specs += [f"uniform@{k}", f"random@{k}", f"avgpool-uniform@{k}"]
    for p in config.policies:
        if is_glimpse_baseline(p):
            specs.append(p)
        elif not Path(p).is_dir():
            raise ConfigError(f"--policies {p!r} is neither a glimpse baseline nor a run directory")
    results: dict[str, GlimpseEvaluation] = {}
    for spec in dict.fromkeys(specs):
        results[spec] = baselines.parse(spec, config.seed)
    adaptive: list[str] = []
    runs: list[str] = []
    for d in run_dirs:
        evals = evaluate_run(Path(d), section, videos)
        for i, ev in enumerate(evals):
            if ev.name in results:
                raise ConfigError(f"two methods are named {ev.name!r}; give each run a distinct directory name")
            results[ev.name] = ev
            (runs if i == 0 else adaptive).append(ev.name)
    comparison = GlimpseComparison(results, adaptive, runs, videos)
    comparison.verdict = glimpse_verdict(comparison)
    title = f"{config.env} on {Path(config.cache).name} [{config.split}], {len(videos.video_ids)} videos"
    write_glimpse_outputs(comparison, Path(config.out), title)
    return comparison


def compare_glimpse_config(config: Any) -> GlimpseComparison:
    """``gistgym compare --env gistgym/Glimpse-v0`` (Glimpse's registered comparison).

    Args:
        config: A :class:`~gistgym.agents.compare.CompareConfig`.

    Raises:
        ConfigError: No ``--cache``, a ``--frontier`` (Glimpse has no hindsight frontier), bad counts.
        OutputDirError: ``--out`` is not a previous comparison (or exists without ``--overwrite``).
    """
    if not config.cache:
        raise ConfigError("--cache is required (a feature cache file made by `gistgym cache build`)")
    if config.frontier:
        raise ConfigError(f"--frontier is for the fixed-period environments; {config.env} has no hindsight frontier")
    check_compare_out(config.out, config.overwrite)
    run_dirs = comparison_runs(config, is_glimpse_baseline)
    evaluate = glimpse_run_evaluator(
        config.cache, config.split, config.glimpse.mus, config.glimpse.patience, config.seed
    )
    return compare_glimpse(config, run_dirs, evaluate)
