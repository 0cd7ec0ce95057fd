"""Detection accuracy: COCO-style mAP@0.5 computed by ``faster-coco-eval``.

Ground truth that should not count (objects outside an evaluated subset, e.g. only the
fast ones) is passed as *ignored*: it is marked ``iscrowd`` so a detection on it is
neither a true nor a false positive, exactly how COCO treats crowd regions.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
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
    from faster_coco_eval import COCO, COCOeval_faster

    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth frames but {len(detections)} detection frames")
    h, w = image_size
    images, anns, results = [], [], []
    ann_id = 1
    counted = 0
    for i, (gt, det) in enumerate(zip(ground_truth, detections, strict=True)):
        images.append({"id": i + 1, "width": w, "height": h})
        skip = ignore[i] if ignore is not None else np.zeros(len(gt.labels), dtype=bool)
        for box, label, ig in zip(gt.boxes, gt.labels, skip, strict=True):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [float(box[0]), float(box[1]), bw, bh],
                    "area": bw * bh,
                    "iscrowd": int(bool(ig)),
                }
            )
            ann_id += 1
            counted += int(not ig)
        for box, label, score in zip(det.boxes, det.labels, det.scores, strict=True):
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "score": float(score),
                }
            )
    if counted == 0:
        return float("nan")
    if not results:
        return 0.0
    cats = [{"id": k + 1, "name": str(k)} for k in range(num_classes)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO()
        gt_coco.dataset = {"images": images, "annotations": anns, "categories": cats}
        gt_coco.createIndex()
        dt_coco = gt_coco.loadRes(results)
        ev = COCOeval_faster(gt_coco, dt_coco, iouType="bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[1]), 0.0)
