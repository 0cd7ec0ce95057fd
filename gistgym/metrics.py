"""Accuracy metrics: COCO-style detection mAP@0.5 (``faster-coco-eval``) and video-classification mAP.

Ground truth that should not count (objects outside an evaluated subset, e.g. only the
fast ones) is passed as *ignored*: it is marked ``iscrowd`` so a detection on it is
neither a true nor a false positive, exactly how COCO treats crowd regions.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np


class BoxesAndLabels(Protocol):
    """Anything with ``boxes`` (N, 4) ``[x0, y0, x1, y1]`` and ``labels`` (N,)."""

    @property
    def boxes(self) -> np.ndarray: ...  # noqa: D102

    @property
    def labels(self) -> np.ndarray: ...  # noqa: D102


class ScoredBoxes(BoxesAndLabels, Protocol):
    """Detections: boxes and labels plus ``scores`` (N,)."""

    @property
    def scores(self) -> np.ndarray: ...  # noqa: D102


def detection_map50(
    ground_truth: Sequence[BoxesAndLabels],
    detections: Sequence[ScoredBoxes],
    num_classes: int,
    *,
    ignore: Sequence[np.ndarray] | None = None,
    image_size: tuple[int, int] = (64, 64),
) -> float:
    """Mean average precision at IoU 0.5 over classes (COCO's ``AP50``, 101-point).

    Args:
        ground_truth: One entry per frame.
        detections: One entry per frame, same order.
        num_classes: Number of classes (labels 0..K-1).
        ignore: Per frame, a boolean mask of ground-truth objects to ignore.
        image_size: (height, width) of the frames.

    Returns:
        AP50 in [0, 1]; ``nan`` when there is no (non-ignored) ground truth at all.
    """
    return detection_map50_subsets(ground_truth, detections, num_classes, {"all": ignore}, image_size=image_size)["all"]


def detection_map50_subsets(
    ground_truth: Sequence[BoxesAndLabels],
    detections: Sequence[ScoredBoxes],
    num_classes: int,
    subsets: Mapping[str, Sequence[np.ndarray] | None],
    *,
    image_size: tuple[int, int] = (64, 64),
) -> dict[str, float]:
    """:func:`detection_map50` for several ignore masks, building the COCO index only once.

    Args:
        ground_truth: One entry per frame.
        detections: One entry per frame, same order.
        num_classes: Number of classes.
        subsets: Name -> per-frame ignore masks (``None`` = count every object).
        image_size: (height, width) of the frames.

    Returns:
        Name -> AP50 (``nan`` where the subset has no ground truth).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth frames but {len(detections)} detection frames")
    h, w = image_size
    images = [{"id": i + 1, "width": w, "height": h} for i in range(len(ground_truth))]
    gt_boxes = [np.asarray(g.boxes, dtype=np.float64).reshape(-1, 4) for g in ground_truth]
    gt_img = np.concatenate([np.full(len(b), i + 1) for i, b in enumerate(gt_boxes)] + [np.zeros(0)]).astype(int)
    gt_xyxy = np.concatenate([*gt_boxes, np.zeros((0, 4))])
    gt_cls = np.concatenate([np.asarray(g.labels).reshape(-1) for g in ground_truth] + [np.zeros(0)]).astype(int)
    gt_wh = gt_xyxy[:, 2:] - gt_xyxy[:, :2]
    anns = [
        {
            "id": k + 1,
            "image_id": int(i),
            "category_id": int(c) + 1,
            "bbox": [float(b[0]), float(b[1]), float(s[0]), float(s[1])],
            "area": float(s[0] * s[1]),
            "iscrowd": 0,
        }
        for k, (i, c, b, s) in enumerate(zip(gt_img, gt_cls, gt_xyxy, gt_wh, strict=True))
    ]
    det_rows = []
    for i, d in enumerate(detections):
        b = np.asarray(d.boxes, dtype=np.float64).reshape(-1, 4)
        if len(b):
            det_rows.append(
                np.column_stack(
                    [
                        np.full(len(b), i + 1),
                        b[:, :2],
                        b[:, 2:] - b[:, :2],
                        np.asarray(d.scores),
                        np.asarray(d.labels) + 1,
                    ]
                )
            )
    results: dict[str, float] = {}
    cats = [{"id": k + 1, "name": str(k)} for k in range(num_classes)]
    gt_coco = dt_coco = None
    for name, ignore in subsets.items():
        flags = (
            np.concatenate([np.asarray(m, dtype=bool).reshape(-1) for m in ignore] + [np.zeros(0, bool)])
            if ignore is not None
            else np.zeros(len(anns), bool)
        )
        if len(flags) != len(anns):
            raise ValueError(f"subset {name!r}: {len(flags)} ignore flags for {len(anns)} ground-truth objects")
        if not (~flags).any():
            results[name] = float("nan")
            continue
        if not det_rows:
            results[name] = 0.0
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            if gt_coco is None:
                gt_coco = COCO()
                gt_coco.dataset = {"images": images, "annotations": anns, "categories": cats}
                gt_coco.createIndex()
                dt_coco = gt_coco.loadRes(np.concatenate(det_rows))
            for ann, flag in zip(anns, flags, strict=True):
                gt_coco.anns[ann["id"]]["iscrowd"] = int(flag)
            ev = COCOeval_faster(gt_coco, dt_coco, iouType="bbox")
            ev.params.maxDets = [1, 10, 100]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        results[name] = max(float(ev.stats[1]), 0.0)
    return results


# --- video classification ----------------------------------------------------------------------


def _scores_and_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"expected scores (V, C) and labels (V,), got {scores.shape} and {labels.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in 0..{scores.shape[1] - 1}")
    return scores, labels.astype(np.int64)


def average_precision(scores: np.ndarray, positives: np.ndarray, *, ties: str = "group") -> float:
    """Area under the precision-recall curve of one binary problem.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the ranking by decreasing score: with every item
    its own threshold this is the mean, over the positives, of the precision at each
    positive's rank.

    Args:
        scores: (N,) scores, higher = more likely positive.
        positives: (N,) bool.
        ties: ``"group"`` (scikit-learn's ``average_precision_score``): items with equal
            scores form one threshold, so each positive of a tie group gets the precision
            at the end of the group and the answer does not depend on the input order.
            ``"stable"``: ties are broken by a stable sort (the earlier item ranks
            higher), so each positive gets the precision at its own rank.

    Returns:
        AP in [0, 1]; ``nan`` when there is no positive.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.asarray(positives, dtype=bool).reshape(-1)
    if scores.shape != pos.shape:
        raise ValueError(f"{scores.shape[0]} scores but {pos.shape[0]} labels")
    if ties not in ("group", "stable"):
        raise ValueError(f"ties must be 'group' or 'stable', got {ties!r}")
    total = int(pos.sum())
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], pos[order]
    tp = np.cumsum(y)
    rank = np.arange(1, len(y) + 1)
    if ties == "stable":
        return float(np.mean(tp[y] / rank[y]))
    last = np.r_[s[1:] != s[:-1], True]  # the last item of each tie group: sklearn's thresholds
    tp_g, rank_g = tp[last], rank[last]
    recall_step = np.diff(tp_g, prepend=0) / total
    return float(np.sum(recall_step * tp_g / rank_g))


def video_map(scores: np.ndarray, labels: np.ndarray, *, ties: str = "group") -> float:
    """Video mean average precision: the mean over classes of one-vs-rest :func:`average_precision`.

    Class ``c`` ranks every video by ``scores[:, c]``; its positives are the videos labelled
    ``c``. Classes without a positive video are left out of the mean.

    Args:
        scores: (V, C) per-video class scores (e.g. probabilities).
        labels: (V,) int labels in 0..C-1.
        ties: How equal scores rank, see :func:`average_precision` (default: scikit-learn's).

    Returns:
        mAP in [0, 1]; ``nan`` when there are no videos.
    """
    scores, labels = _scores_and_labels(scores, labels)
    aps = [
        average_precision(scores[:, c], labels == c, ties=ties) for c in range(scores.shape[1]) if (labels == c).any()
    ]
    return float(np.mean(aps)) if aps else float("nan")


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of videos whose highest score is their label (ties: the lowest class index wins)."""
    scores, labels = _scores_and_labels(scores, labels)
    if len(labels) == 0:
        return float("nan")
    return float((scores.argmax(axis=1) == labels).mean())


def best_curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """A cost-accuracy curve from ``(cost, score)`` points: costs sorted, the best score kept per cost.

    Used by the comparisons' Pareto plots and dominance verdicts (costs are heavy or key
    fractions, or frames per video), which interpolate it piecewise linearly.
    """
    best: dict[float, float] = {}
    for x, y in points:
        best[x] = max(y, best.get(x, -np.inf))
    xs = np.array(sorted(best))
    return xs, np.array([best[x] for x in xs])


# --- per-frame signals: how good one frame's detections are, summable over a schedule ----------

OPERATING_THRESHOLD = 0.5
"""Score threshold at which the detector is used (what ``gistgym detect`` draws)."""

FRAME_SIGNALS = ("f1", "errors", "matched")
"""Per-frame signals computed from detections and ground truth (higher is better for each;
``errors`` is reported negated). See :func:`frame_signals`."""


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of ``[x0, y0, x1, y1]`` boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_frame(gt: BoxesAndLabels, det: ScoredBoxes, *, iou_threshold: float = 0.5) -> np.ndarray:
    """Which detections are true positives, matched greedily by score as COCO does.

    Each detection, highest score first, takes the unmatched ground-truth object of its class
    with the highest IoU >= ``iou_threshold``.

    Returns:
        (N,) bool over ``det``'s rows.
    """
    scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(det.labels).reshape(-1)
    gt_labels = np.asarray(gt.labels).reshape(-1)
    tp = np.zeros(len(scores), dtype=bool)
    if len(scores) == 0 or len(gt_labels) == 0:
        return tp
    iou = box_iou(det.boxes, gt.boxes)
    iou[labels[:, None] != gt_labels[None, :]] = -1.0
    taken = np.zeros(len(gt_labels), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            taken[j] = True
            tp[i] = True
    return tp


def frame_signals(
    gt: BoxesAndLabels, det: ScoredBoxes, *, threshold: float = OPERATING_THRESHOLD, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Per-frame quality signals of one frame's detections (each: higher is better).

    * ``f1``: F1 at IoU ``iou_threshold`` of the detections scoring >= ``threshold`` (the
      operating point); 1 for a frame with neither ground truth nor such detections.
    * ``errors``: minus the number of errors at the operating point, false positives plus
      missed objects (a sum over frames is minus the pooled error count).
    * ``matched``: threshold-free: the summed score of true positives minus the summed score
      of false positives, over every detection (a soft count of what an AP integrates).
    """
    scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
    tp = match_frame(gt, det, iou_threshold=iou_threshold)
    kept = scores >= threshold
    n_tp = int((tp & kept).sum())
    n_fp = int((~tp & kept).sum())
    n_fn = len(np.asarray(gt.labels).reshape(-1)) - n_tp
    denom = 2 * n_tp + n_fp + n_fn
    return {
        "f1": 1.0 if denom == 0 else 2.0 * n_tp / denom,
        "errors": -float(n_fp + n_fn),
        "matched": float(scores[tp].sum() - scores[~tp].sum()),
    }
