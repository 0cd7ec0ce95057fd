"""Evaluate fixed schedules of the interleaved detector: mAP@0.5 against counted GFLOPs.

Schedules (names are the ``--json`` keys):

* ``heavy`` (tau = 0): f0 on every frame; ``light`` (tau = inf) and ``light+shift``: that
  light extractor on every frame, from an empty memory;
* ``tau=N``: f0 on frame 0 and again after f1 ran N times (f0, f1 x N, f0, ...);
* ``tau=9,no-memory``: the tau = 9 schedule with the memory reset before every frame,
  so each frame detects from its own extractor's features alone;
* ``tau=9,other-update-rule``: tau = 9 run with the opposite ``skip_light_updates`` to the
  one the weights were trained with (the ablation showing the rule must match).

Accuracy is broken down by object speed and size by ignoring (COCO crowd semantics) every
ground-truth object outside the subset; the subsets are in ``SPEED_BINS`` and ``SIZE_BINS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import nan
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gistgym.backbones.detector import InterleavedDetector, extract_video_features
from gistgym.backbones.flops import StepCost, step_costs
from gistgym.backbones.ssdlite import Detections
from gistgym.errors import ConfigError
from gistgym.metrics import detection_map50, detection_map50_subsets
from gistgym.videos.dataset import VideoRecord, load_dataset
from gistgym.videos.synthetic import FrameAnnotation

SPEED_BINS: dict[str, tuple[float, float]] = {"slow": (0.0, 0.5), "medium": (0.5, 1.2), "fast": (1.2, np.inf)}
"""On-screen speed (px/frame) ranges; ``fast`` starts where the benchmark blurs objects."""
SIZE_BINS: dict[str, tuple[float, float]] = {"small": (0.0, 12.0), "large": (12.0, np.inf)}
"""Object size sqrt(w*h) in px at 64x64."""

DEFAULT_SCHEDULES: tuple[str, ...] = (
    "heavy",
    "light",
    "light+shift",
    "tau=1",
    "tau=4",
    "tau=9",
    "tau=19",
    "tau=9,no-memory",
    "tau=9,other-update-rule",
)


def fixed_tau_actions(num_frames: int, tau: int, light: int = 1) -> np.ndarray:
    """f0 on frame 0 and after every ``tau`` runs of extractor ``light``."""
    t = np.arange(num_frames)
    return np.where(t % (tau + 1) == 0, 0, light).astype(np.int64)


@dataclass(frozen=True)
class Schedule:
    """A fixed schedule: extractor per frame, plus memory options."""

    name: str
    actions: np.ndarray = field(repr=False)
    reset_memory: bool = False
    skip_light_updates: bool | None = None
    """None = the rule stored with the weights."""


def build_schedule(name: str, num_frames: int, trained_skip: bool, num_extractors: int) -> Schedule:
    """Parse a schedule name (see the module docstring)."""
    base, _, option = name.partition(",")
    if base == "heavy":
        actions = np.zeros(num_frames, np.int64)
    elif base == "light":
        actions = np.ones(num_frames, np.int64)
    elif base == "light+shift":
        if num_extractors < 3:
            raise ConfigError("schedule 'light+shift' needs a detector with a third (shift) extractor")
        actions = np.full(num_frames, 2, np.int64)
    elif base.startswith("tau="):
        try:
            tau = int(base[4:])
        except ValueError as exc:
            raise ConfigError(f"bad schedule {name!r}: tau must be an integer") from exc
        if tau < 0:
            raise ConfigError(f"bad schedule {name!r}: tau must be >= 0")
        actions = fixed_tau_actions(num_frames, tau)
    else:
        raise ConfigError(
            f"unknown schedule {name!r}; expected heavy, light, light+shift or tau=N[,no-memory|,other-update-rule]"
        )
    if option not in ("", "no-memory", "other-update-rule"):
        raise ConfigError(f"unknown schedule option {option!r} in {name!r}")
    return Schedule(
        name,
        actions,
        reset_memory=option == "no-memory",
        skip_light_updates=(not trained_skip) if option == "other-update-rule" else None,
    )


@dataclass
class VideoFeatures:
    """Every extractor's projected features for a batch of equally long videos."""

    features: list[torch.Tensor]
    """Per extractor: (V, T, C, g, g)."""
    records: list[VideoRecord]


def extract_all(model: InterleavedDetector, records: Sequence[VideoRecord], chunk: int = 256) -> VideoFeatures:
    """Every extractor's features on every frame of equally long videos.

    See :func:`~gistgym.backbones.detector.extract_video_features`: a shifting extractor runs
    as a stream, exact for schedules that run it on consecutive frames (``light+shift``).
    """
    frames = torch.from_numpy(np.stack([r.read_frames() for r in records]))  # (V, T, H, W, 3)
    return VideoFeatures(extract_video_features(model, frames, chunk), list(records))


@torch.no_grad()
def run_schedule(model: InterleavedDetector, vf: VideoFeatures, schedule: Schedule) -> list[list[Detections]]:
    """Detections per video and frame when ``schedule`` drives the memory and head."""
    feats = vf.features
    V, T = feats[0].shape[:2]
    g = model.grid
    skip = model.config.skip_light_updates if schedule.skip_light_updates is None else schedule.skip_light_updates
    lstm = model.memory.initial_state(V, g, g)
    per_video: list[list[Detections]] = [[] for _ in range(V)]
    for t in range(T):
        a = int(schedule.actions[t])
        if schedule.reset_memory:
            lstm = model.memory.initial_state(V, g, g)
        out, lstm = model.memory_step(feats[a][:, t], lstm, a == 0 or not skip)
        loc, conf = model.head(out)
        for v, det in enumerate(model.detect(loc, conf)):
            per_video[v].append(det)
    return per_video


def _subset_masks(annotations: Sequence[FrameAnnotation]) -> dict[str, list[np.ndarray]]:
    """For each speed/size subset, per frame, which objects to ignore."""
    masks: dict[str, list[np.ndarray]] = {}
    for name, (lo, hi) in SPEED_BINS.items():
        masks[f"speed:{name}"] = [~((a.speeds >= lo) & (a.speeds < hi)) for a in annotations]
    for name, (lo, hi) in SIZE_BINS.items():
        sizes = [np.sqrt((a.boxes[:, 2] - a.boxes[:, 0]) * (a.boxes[:, 3] - a.boxes[:, 1])) for a in annotations]
        masks[f"size:{name}"] = [~((s >= lo) & (s < hi)) for s in sizes]
    return masks


def _accuracy(
    gts: Sequence[FrameAnnotation],
    dets: Sequence[Detections],
    num_classes: int,
    masks: dict[str, list[np.ndarray]],
    size: tuple[int, int],
) -> dict[str, Any]:
    maps = detection_map50_subsets(gts, dets, num_classes, {"all": None, **masks}, image_size=size)
    return {"map50": maps.pop("all"), "subsets": maps}


def evaluate_schedules(
    model: InterleavedDetector,
    videos_dir: str | Path,
    split: str = "val",
    schedules: Sequence[str] = DEFAULT_SCHEDULES,
    *,
    trained_skip: bool | None = None,
    costs: Sequence[StepCost] | None = None,
    max_videos: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """mAP@0.5, GFLOPs and latency per frame, and per-subset mAP for every schedule.

    Returns:
        ``{schedule: {"map50", "gflops_per_frame", "latency_ms_per_frame",
        "heavy_fraction", "subsets": {"speed:slow": map50, ...}}}``.
    """
    ds = load_dataset(videos_dir)
    records = ds.split(split)[:max_videos]
    if not records:
        raise ConfigError(f"split {split!r} of {videos_dir} has no videos")
    if len(ds.classes) != model.config.num_classes:
        raise ConfigError(
            f"dataset has {len(ds.classes)} classes but the detector was trained for {model.config.num_classes}"
        )
    trained_skip = model.config.skip_light_updates if trained_skip is None else trained_skip
    costs = list(costs) if costs is not None else step_costs(model, measure=False)
    by_len: dict[int, list[VideoRecord]] = {}
    for r in records:
        by_len.setdefault(r.num_frames, []).append(r)
    detections: dict[str, list[Detections]] = {s: [] for s in schedules}
    actions_all: dict[str, list[np.ndarray]] = {s: [] for s in schedules}
    gts: list[FrameAnnotation] = []
    groups = list(by_len.items())
    bar = tqdm(total=len(groups) * (1 + len(schedules)), desc=f"evaluate {split}", disable=not progress)
    for T, group in groups:
        vf = extract_all(model, group)
        bar.update(1)
        for r in group:
            gts.extend(r.annotations)
        for name in schedules:
            sched = build_schedule(name, T, trained_skip, len(model.extractors))
            for dets in run_schedule(model, vf, sched):
                detections[name].extend(dets)
                actions_all[name].append(sched.actions)
            bar.update(1)
    bar.close()
    masks = _subset_masks(gts)
    size = (model.config.image_size, model.config.image_size)
    report: dict[str, dict[str, Any]] = {}
    for name in schedules:
        acts = np.concatenate(actions_all[name])
        flops = np.array([c.step_flops for c in costs])[acts]
        secs = np.array([c.step_seconds for c in costs])[acts]
        report[name] = {
            **_accuracy(gts, detections[name], model.config.num_classes, masks, size),
            "gflops_per_frame": float(flops.mean() / 1e9),
            "latency_ms_per_frame": float(secs.mean() * 1e3),
            "heavy_fraction": float((acts == 0).mean()),
        }
    return report


def heavy_every(num_frames: int, period: int, phase: int, light: int = 1) -> np.ndarray:
    """Heavy on frame 0 and on every frame ``t`` with ``(t - phase) % period == 0``, light elsewhere."""
    t = np.arange(num_frames)
    return np.where((t == 0) | ((t - phase) % period == 0), 0, light).astype(np.int64)


def distances_since_heavy(actions: np.ndarray) -> np.ndarray:
    """(T,) frames since the last frame the heavy extractor (action 0) ran on (0 on heavy frames)."""
    heavy_at = np.where(actions == 0, np.arange(len(actions)), 0)
    return np.arange(len(actions)) - np.maximum.accumulate(heavy_at)


def light_by_distance(
    model: InterleavedDetector,
    videos_dir: str | Path,
    split: str = "val",
    *,
    max_distance: int = 20,
    phase_step: int = 3,
    max_videos: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """mAP@0.5 of frames by their distance d = 0..max_distance to the last heavy frame, overall and per stretch.

    Schedules run the heavy extractor every ``max_distance + 1`` frames at phases ``0,
    phase_step, ...`` so that every frame is seen at several distances; frame ``t`` counts at
    the distance it has in each schedule. ``d = 0`` rows are heavy frames (whose memory last
    heard a heavy frame ``max_distance + 1`` frames earlier). The per-stretch columns group
    frames by their annotated ``segment`` (the detection benchmark's difficulty segments, the
    streams benchmark's ``active`` / ``idle`` / ``empty``).

    Returns:
        ``{"distances": [0..D], "all": {"map50": [...], "frames": [...]},
        "segments": {name: {"map50": [...], "frames": [...]}}}`` (nan where a bucket has no
        ground truth).
    """
    if max_distance < 1 or phase_step < 1:
        raise ConfigError(f"max_distance and phase_step must be >= 1, got {max_distance} and {phase_step}")
    records = load_dataset(videos_dir).split(split)[:max_videos]
    if not records:
        raise ConfigError(f"split {split!r} of {videos_dir} has no videos")
    period = max_distance + 1
    buckets: dict[tuple[str, int], tuple[list[FrameAnnotation], list[Detections]]] = {}
    by_len: dict[int, list[VideoRecord]] = {}
    for r in records:
        by_len.setdefault(r.num_frames, []).append(r)
    phases = range(0, period, phase_step)
    bar = tqdm(total=len(by_len) * len(phases), desc=f"light by distance {split}", disable=not progress)
    for T, group in by_len.items():
        vf = extract_all(model, group)
        for phase in phases:
            actions = heavy_every(T, period, phase)
            dist = distances_since_heavy(actions)
            runs = run_schedule(model, vf, Schedule(f"phase={phase}", actions))
            for r, dets in zip(group, runs, strict=True):
                for t, (gt, det) in enumerate(zip(r.annotations, dets, strict=True)):
                    for key in (("all", int(dist[t])), (gt.segment, int(dist[t]))):
                        bucket = buckets.setdefault(key, ([], []))
                        bucket[0].append(gt)
                        bucket[1].append(det)
            bar.update(1)
    bar.close()
    size = (model.config.image_size, model.config.image_size)
    names = ["all", *sorted({k[0] for k in buckets} - {"all"})]
    table: dict[str, dict[str, list[Any]]] = {}
    for name in names:
        maps, frames = [], []
        for d in range(period):
            gts, dets = buckets.get((name, d), ([], []))
            has_gt = any(len(g.labels) for g in gts)
            maps.append(float(detection_map50(gts, dets, model.config.num_classes, image_size=size)) if has_gt else nan)
            frames.append(len(gts))
        table[name] = {"map50": maps, "frames": frames}
    return {"distances": list(range(period)), "all": table.pop("all"), "segments": table}


def format_distance_table(report: dict[str, Any]) -> str:
    """Markdown table of :func:`light_by_distance`: one row per distance, a column per stretch."""
    cols = [("all", report["all"]), *report["segments"].items()]
    rows = ["| d | " + " | ".join(name for name, _ in cols) + " |", "|" + "---|" * (1 + len(cols))]
    for i, d in enumerate(report["distances"]):
        cells = [f"{c['map50'][i]:.3f}" if np.isfinite(c["map50"][i]) else "-" for _, c in cols]
        rows.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_distance_report(report: dict[str, Any], path: Path, title: str = "") -> None:
    """PNG: mAP@0.5 against the distance to the last heavy frame, overall and per stretch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    d = report["distances"]
    ax.plot(d, report["all"]["map50"], "ko-", lw=2, label="all frames")
    for name, col in report["segments"].items():
        ax.plot(d, col["map50"], ".-", label=name)
    ax.set_xlabel("frames since the last heavy frame (0 = heavy frame)")
    ax.set_ylabel("mAP@0.5")
    ax.set_title(title or "light frames by distance to the last heavy frame")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(report: dict[str, dict[str, Any]]) -> str:
    """Markdown table of a report (mAP, GFLOPs/frame, latency, heavy fraction, subsets)."""
    subsets = list(next(iter(report.values()))["subsets"])
    head = "| schedule | mAP@0.5 | GFLOPs/frame | latency ms/frame | heavy fraction | " + " | ".join(subsets) + " |"
    sep = "|" + "---|" * (5 + len(subsets))
    rows = [head, sep]
    for name, r in report.items():
        rows.append(
            f"| {name} | {r['map50']:.3f} | {r['gflops_per_frame']:.4f} | {r['latency_ms_per_frame']:.2f} | "
            f"{r['heavy_fraction']:.2f} | " + " | ".join(f"{r['subsets'][s]:.3f}" for s in subsets) + " |"
        )
    return "\n".join(rows)


def ratio_summary(report: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The ratios the benchmark is judged by (tau=9 and light against heavy, per subset)."""
    out: dict[str, float] = {}
    if "heavy" not in report:
        return out
    h = report["heavy"]
    for name in ("light", "tau=9", "tau=9,no-memory"):
        if name in report:
            out[f"{name} / heavy"] = report[name]["map50"] / h["map50"] if h["map50"] else float("nan")
    if "tau=9" in report:
        for k, v in report["tau=9"]["subsets"].items():
            hv = h["subsets"][k]
            out[f"tau=9 / heavy [{k}]"] = v / hv if hv else float("nan")
    return out


def plot_report(report: dict[str, dict[str, Any]], path: Path) -> None:
    """PNG: mAP against tau (left) and against GFLOPs per frame (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    taus = sorted(int(k[4:]) for k in report if k.startswith("tau=") and "," not in k)
    if taus:
        ax1.plot(taus, [report[f"tau={t}"]["map50"] for t in taus], "o-", label="fixed tau, memory")
    if "heavy" in report:
        ax1.axhline(report["heavy"]["map50"], color="k", ls="--", label="heavy only (tau=0)")
    for name, style in (("light", ":"), ("light+shift", "-.")):
        if name in report:
            ax1.axhline(report[name]["map50"], color="gray", ls=style, label=f"{name} only")
    if "tau=9,no-memory" in report:
        ax1.plot([9], [report["tau=9,no-memory"]["map50"]], "rx", ms=10, label="tau=9, no memory")
    ax1.set_xlabel("tau (light frames between heavy frames)")
    ax1.set_ylabel("mAP@0.5")
    ax1.legend(fontsize=8)
    ax1.set_title("accuracy against tau")
    for name, r in report.items():
        ax2.plot(r["gflops_per_frame"], r["map50"], "o")
        ax2.annotate(name, (r["gflops_per_frame"], r["map50"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax2.set_xlabel("counted GFLOPs per frame")
    ax2.set_ylabel("mAP@0.5")
    ax2.set_title("accuracy against cost")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
