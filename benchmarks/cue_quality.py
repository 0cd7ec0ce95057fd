"""What do the Interleave-v0 runtime cues tell about the state the causal bound was told?

Usage::

    python benchmarks/cue_quality.py --cache data/streams.h5 [--annotations data/streams]
                                     [--split val] [--tau 9] [--max-videos N] [--json] [--save JSON]

``benchmarks/causal_bound.py`` found that schedules told the true state of each frame (its
stretch, shot cuts, new objects) capture far more of the hindsight headroom than the learned
schedulers. This script asks how well what a runtime *has* predicts that state. It rolls out
``tau=N`` on ``--split`` with the runtime cues (``cues=True``), and on every light frame
scores each cue as a detector of

* ``event``: a shot cut or a new object on the frame just processed (``cut`` and ``new``
  separately too), i.e. one frame late, which is as early as a runtime can see it;
* ``event next``: the same on the frame about to be decided (what the privileged ``events``
  rules use);
* ``active``: the frame just processed lies in an ``active`` stretch (objects moving), against
  ``idle`` and ``empty``.

Besides the environment's four cues it scores three detection cues a runtime could add: the
confident detections (score >= 0.5) of the frame just processed that match no detection
(score >= 0.3, same class, IoU >= 0.3) of the previous frame (``new_dets``) or of the last heavy
frame (``new_dets_ref``), and the previous frame's confident ones that no detection of this
frame matches (``lost_dets``). The score is the ROC AUC (0.5: no information; 1: a threshold
separates the classes), computed with ranks and ties averaged.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from causal_bound import frame_state

from gistgym.agents.backends import INTERLEAVE_ENV_ID, get_backend
from gistgym.agents.baselines import FixedTauPolicy
from gistgym.agents.compare import CompareConfig
from gistgym.backbones.ssdlite import Detections
from gistgym.envs.interleave_core import CUE_NAMES
from gistgym.errors import GistgymError
from gistgym.staging import staged_file

CONFIDENT, CANDIDATE, MATCH_IOU = 0.5, 0.3, 0.3
DETECTION_CUES = ("new_dets", "lost_dets", "new_dets_ref")
TARGETS = ("event", "cut", "new", "event next", "active")


class RecordingTau(FixedTauPolicy):
    """``tau=N`` that records each row's cues at every decision, by (video, frame just processed)."""

    def __init__(self, tau: int) -> None:
        super().__init__(tau)
        self.cues: dict[tuple[str, int], np.ndarray] = {}

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Record, then act as ``tau=N``."""
        cues = np.asarray(obs["cues"], dtype=np.float64).reshape(len(infos), -1)
        for i, info in enumerate(infos):
            self.cues[(str(info["video_id"]), int(info["frame_index"]))] = cues[i]
        return super().act(obs, infos)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of two ``[x0, y0, x1, y1]`` box arrays."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def unmatched(d: Detections, ref: Detections) -> int:
    """Confident detections of ``d`` that no candidate of ``ref`` (same class, IoU >= 0.3) matches."""
    keep = d.scores >= CONFIDENT
    cand = ref.scores >= CANDIDATE
    if not keep.any():
        return 0
    if not cand.any():
        return int(keep.sum())
    iou = box_iou(d.boxes[keep], ref.boxes[cand])
    same = d.labels[keep][:, None] == ref.labels[cand][None, :]
    return int((~((iou >= MATCH_IOU) & same).any(axis=1)).sum())


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``positive`` (Mann-Whitney, tied ranks averaged); NaN for one class."""
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    _, inverse = np.unique(score, return_inverse=True)
    ranks = (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def measure(evaluator: Any, state: Mapping[str, Any], tau: int) -> dict[str, Any]:
    """Per cue and target: the AUC, over the light frames of a ``tau`` rollout."""
    policy = RecordingTau(tau)
    rollouts, detections = evaluator.rollout(policy)
    names = (*CUE_NAMES, *DETECTION_CUES)
    rows: list[list[float]] = []
    labels: dict[str, list[bool]] = {t: [] for t in TARGETS}
    for roll, dets in zip(rollouts, detections, strict=True):
        v = roll.video_id
        cuts, new, segs = state["cuts"][v], state["new"][v], state["segments"][v]
        ref = dets[0]
        for t in range(1, len(dets) - 1):  # a decision follows every frame but the last
            if roll.actions[t] == 0:
                ref = dets[t]
                continue  # on a heavy frame the cues restart: score the light frames
            own = policy.cues[(v, t)]
            rows.append(
                [*own, unmatched(dets[t], dets[t - 1]), unmatched(dets[t - 1], dets[t]), unmatched(dets[t], ref)]
            )
            labels["event"].append(bool(cuts[t] or new[t]))
            labels["cut"].append(bool(cuts[t]))
            labels["new"].append(bool(new[t]))
            labels["event next"].append(bool(cuts[t + 1] or new[t + 1]))
            labels["active"].append(segs[t] == "active")
    x = np.array(rows)
    out: dict[str, Any] = {"frames": len(rows), "positives": {}, "auc": {}}
    for target, ys in labels.items():
        y = np.array(ys, dtype=bool)
        out["positives"][target] = float(y.mean())
        out["auc"][target] = {name: auc(x[:, j], y) for j, name in enumerate(names)}
    return out


def format_report(report: Mapping[str, Any]) -> str:
    """Markdown: one row per cue, one column per target."""
    m = report["measured"]
    head = f"# Runtime cues as detectors of the state ({report['cache']} [{report['split']}], tau={report['tau']}, "
    head += f"{m['frames']} light frames)"
    share = ", ".join(f"{t} {100 * p:.1f} %" for t, p in m["positives"].items())
    lines = [
        head,
        "",
        f"positives: {share}",
        "",
        "| cue | " + " | ".join(TARGETS) + " |",
        "|---|" + "---:|" * len(TARGETS),
    ]
    for name in m["auc"]["event"]:
        lines.append(f"| {name} | " + " | ".join(f"{m['auc'][t][name]:.3f}" for t in TARGETS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="feature cache with the interleave section")
    parser.add_argument("--annotations", default="", help="dataset folder with <video>/annotations.json (shots)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--tau", type=int, default=9, help="the fixed schedule the cues are recorded under")
    parser.add_argument("--max-videos", type=int, default=None, help="only the first N videos of the split")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", default="", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    backend = get_backend(INTERLEAVE_ENV_ID)
    try:
        settings = {**backend.compare_settings(CompareConfig.of(cache=args.cache)), "cues": True}
        evaluator = backend.make_evaluator(args.cache, args.split, settings, max_videos=args.max_videos)
        try:
            state = frame_state(evaluator, Path(args.annotations) if args.annotations else None)
            measured = measure(evaluator, state, args.tau)
        finally:
            evaluator.close()
    except GistgymError as exc:
        print(f"benchmarks/cue_quality.py: error: {exc}", file=sys.stderr)
        return 2
    report = {
        "cache": args.cache,
        "split": args.split,
        "tau": args.tau,
        "cut_source": state["cut_source"],
        "measured": measured,
        "seconds": time.perf_counter() - start,
    }
    if args.save:
        with staged_file(args.save, ".json") as staged:
            staged.write_text(json.dumps(report, indent=1))
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
