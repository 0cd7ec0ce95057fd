"""COCO-style mAP@0.5 on hand-made ground truth and detections with known answers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from gistgym.metrics import (
    average_precision,
    box_iou,
    detection_map50,
    detection_map50_subsets,
    frame_signals,
    match_frame,
    top1_accuracy,
    video_map,
)


@dataclass
class GT:
    boxes: np.ndarray
    labels: np.ndarray


@dataclass
class Det:
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def gt(boxes: list[list[float]], labels: list[int]) -> GT:
    return GT(np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64))


def det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Det:
    return Det(
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(scores, dtype=np.float32),
        np.array(labels, dtype=np.int64),
    )


# 101-point interpolated AP of the ranking TP, FP, TP over 2 objects: precision 1 up to
# recall 0.5 (51 points: 0.00 ... 0.50), then 2/3 up to recall 1.0 (50 points)
HAND_AP = (51 + 50 * 2 / 3) / 101


def _hand_case() -> tuple[list[GT], list[Det]]:
    gts = [gt([[10, 10, 30, 30]], [0]), gt([[5, 5, 20, 25]], [0])]
    dets = [
        det([[10, 10, 30, 30]], [0.9], [0]),
        det([[40, 40, 60, 60], [5, 5, 20, 25]], [0.8, 0.5], [0, 0]),
    ]
    return gts, dets


def test_perfect_detections_score_one() -> None:
    gts = [gt([[10, 10, 30, 30], [40, 40, 50, 60]], [0, 1]), gt([[5, 5, 20, 25]], [2]), gt([], [])]
    dets = [
        det([[10, 10, 30, 30], [40, 40, 50, 60]], [0.9, 0.7], [0, 1]),
        det([[5, 5, 20, 25]], [0.6], [2]),
        det([], [], []),
    ]
    assert detection_map50(gts, dets, 3) == pytest.approx(1.0)


def test_hand_computed_average_precision() -> None:
    gts, dets = _hand_case()
    assert abs(HAND_AP - 0.834983) < 1e-6
    assert detection_map50(gts, dets, 1) == pytest.approx(HAND_AP, abs=1e-6)
    # only the ranking counts: all scores halved gives the same AP
    halved = [det(d.boxes.tolist(), (d.scores / 2).tolist(), d.labels.tolist()) for d in dets]
    assert detection_map50(gts, halved, 1) == pytest.approx(HAND_AP, abs=1e-6)
    # the false positive ranked last instead: TP, TP, FP -> 1.0
    last = [dets[0], det(dets[1].boxes.tolist(), [0.8, 0.95], [0, 0])]
    assert detection_map50(gts, last, 1) == pytest.approx(1.0)
    # a detection of the wrong class is no match: class 0 finds only frame 1's object
    wrong = [dets[0], det([[5, 5, 20, 25]], [0.5], [1])]
    assert detection_map50(gts, wrong, 2) == pytest.approx(51 / 101, abs=1e-6)


def test_iou_threshold_is_one_half() -> None:
    gts = [gt([[0, 0, 20, 20]], [0])]
    # IoU 0.6 counts; IoU 1/3 does not
    assert detection_map50(gts, [det([[0, 0, 20, 12]], [0.9], [0])], 1) == pytest.approx(1.0)
    assert detection_map50(gts, [det([[10, 0, 30, 20]], [0.9], [0])], 1) == pytest.approx(0.0)


def test_ignored_objects_are_neither_hits_nor_misses() -> None:
    gts = [gt([[10, 10, 30, 30], [40, 40, 60, 60]], [0, 0])]
    dets = [det([[40, 40, 60, 60], [0, 0, 5, 5], [10, 10, 30, 30]], [0.9, 0.8, 0.5], [0, 0, 0])]
    # nothing ignored: TP, FP, TP
    assert detection_map50(gts, dets, 1) == pytest.approx(HAND_AP, abs=1e-6)
    # object 1 ignored: its detection is ignored too, so FP, TP -> precision 1/2 at every recall
    assert detection_map50(gts, dets, 1, ignore=[np.array([False, True])]) == pytest.approx(0.5, abs=1e-6)
    # object 0 ignored: TP first -> 1.0; the detection on the ignored object is no false positive
    assert detection_map50(gts, dets, 1, ignore=[np.array([True, False])]) == pytest.approx(1.0)
    # a missed object that is ignored does not lower recall
    only_one = [det([[10, 10, 30, 30]], [0.5], [0])]
    assert detection_map50(gts, only_one, 1) == pytest.approx(51 / 101, abs=1e-6)
    assert detection_map50(gts, only_one, 1, ignore=[np.array([False, True])]) == pytest.approx(1.0)
    # everything ignored: no ground truth left
    assert math.isnan(detection_map50(gts, dets, 1, ignore=[np.array([True, True])]))
    # several subsets at once give the same answers, in any order
    res = detection_map50_subsets(
        gts,
        dets,
        1,
        {"second": [np.array([True, False])], "all": None, "first": [np.array([False, True])], "none": [np.ones(2)]},
    )
    assert res["all"] == pytest.approx(HAND_AP, abs=1e-6)
    assert res["first"] == pytest.approx(0.5, abs=1e-6)
    assert res["second"] == pytest.approx(1.0)
    assert math.isnan(res["none"])
    with pytest.raises(ValueError, match="ignore flags"):
        detection_map50(gts, dets, 1, ignore=[np.array([True])])


def test_no_detections_and_no_ground_truth() -> None:
    gts, dets = _hand_case()
    assert detection_map50(gts, [det([], [], []), det([], [], [])], 1) == 0.0
    empty_gt = [gt([], []), gt([], [])]
    assert math.isnan(detection_map50(empty_gt, dets, 1))
    assert math.isnan(detection_map50(empty_gt, [det([], [], []), det([], [], [])], 1))
    with pytest.raises(ValueError, match="frames"):
        detection_map50(gts, dets[:1], 1)


def test_mean_over_classes() -> None:
    gts, dets = _hand_case()
    # class 1: one object, found perfectly, in frame 1
    gts2 = [gt([[10, 10, 30, 30], [40, 0, 60, 20]], [0, 1]), gts[1]]
    dets2 = [det([[10, 10, 30, 30], [40, 0, 60, 20]], [0.9, 0.3], [0, 1]), dets[1]]
    assert detection_map50(gts2, dets2, 2) == pytest.approx((HAND_AP + 1.0) / 2, abs=1e-6)
    # a class without ground truth is left out of the mean (COCO), even with false alarms on it
    dets3 = [dets2[0], det([*dets[1].boxes.tolist(), [0, 40, 20, 60]], [0.8, 0.5, 0.99], [0, 0, 2])]
    assert detection_map50(gts2, dets3, 3) == pytest.approx((HAND_AP + 1.0) / 2, abs=1e-6)
    # a class with ground truth and no detections counts as 0
    gts4 = [gts2[0], gt([[5, 5, 20, 25], [30, 30, 40, 40]], [0, 2])]
    assert detection_map50(gts4, dets2, 3) == pytest.approx((HAND_AP + 1.0 + 0.0) / 3, abs=1e-6)


# --- video mAP ----------------------------------------------------------------------------------

# Five videos, labels 0, 0, 1, 1, 0; class 2 has no video (left out of the mean).
VIDEO_LABELS = np.array([0, 0, 1, 1, 0])
VIDEO_SCORES = np.array(
    [
        [0.9, 0.1, 0.0],
        [0.8, 0.2, 0.0],
        [0.8, 0.7, 0.0],
        [0.3, 0.4, 0.9],
        [0.1, 0.5, 0.9],
    ]
)
# Class 0 ranks 0.9 (P), then the tie 0.8 (P, video 1) / 0.8 (N, video 2), 0.3 (N), 0.1 (P).
# ties="group" (sklearn): the tie is one threshold: precision 2/3 at the recall reached there,
#   AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45.
# ties="stable": video 1 ranks before video 2: precisions 1/1, 2/2, 3/5, AP = 13/15.
CLASS0_GROUP, CLASS0_STABLE = 34 / 45, 13 / 15
# Class 1 ranks 0.7 (P), 0.5 (N), 0.4 (P), 0.2, 0.1: AP = (1 + 2/3) / 2 = 5/6 (no ties).
CLASS1 = 5 / 6


def test_average_precision_by_hand_with_ties() -> None:
    pos0 = VIDEO_LABELS == 0
    assert average_precision(VIDEO_SCORES[:, 0], pos0) == pytest.approx(CLASS0_GROUP)
    assert average_precision(VIDEO_SCORES[:, 0], pos0, ties="stable") == pytest.approx(CLASS0_STABLE)
    # swapping the tied videos: "group" does not change, "stable" now ranks the negative first
    swap = [0, 2, 1, 3, 4]
    assert average_precision(VIDEO_SCORES[swap, 0], pos0[swap]) == pytest.approx(CLASS0_GROUP)
    assert average_precision(VIDEO_SCORES[swap, 0], pos0[swap], ties="stable") == pytest.approx(CLASS0_GROUP)
    assert average_precision(VIDEO_SCORES[:, 1], VIDEO_LABELS == 1) == pytest.approx(CLASS1)
    # perfect and worst rankings, no positives
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == pytest.approx(1.0)
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([0, 0, 1])) == pytest.approx(1 / 3)
    # every score tied: precision = prevalence
    assert average_precision(np.zeros(4), np.array([1, 0, 0, 0])) == pytest.approx(1 / 4)
    assert average_precision(np.zeros(4), np.array([1, 0, 0, 0]), ties="stable") == pytest.approx(1.0)
    assert math.isnan(average_precision(np.array([1.0, 2.0]), np.array([0, 0])))
    with pytest.raises(ValueError, match="ties"):
        average_precision(np.zeros(2), np.ones(2), ties="random")


def test_video_map_and_top1_by_hand() -> None:
    assert video_map(VIDEO_SCORES, VIDEO_LABELS) == pytest.approx((CLASS0_GROUP + CLASS1) / 2)
    assert video_map(VIDEO_SCORES, VIDEO_LABELS, ties="stable") == pytest.approx((CLASS0_STABLE + CLASS1) / 2)
    # only the ranking within each class counts: a monotone transform of a column changes nothing
    squashed = VIDEO_SCORES.copy()
    squashed[:, 1] = squashed[:, 1] ** 3
    assert video_map(squashed, VIDEO_LABELS) == pytest.approx((CLASS0_GROUP + CLASS1) / 2)
    # top-1: argmax per video 0, 0, 0, 2, 2 -> videos 0 and 1 right
    assert top1_accuracy(VIDEO_SCORES, VIDEO_LABELS) == pytest.approx(2 / 5)
    assert video_map(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])) == pytest.approx(1.0)
    assert math.isnan(video_map(np.zeros((0, 3)), np.zeros(0, dtype=int)))
    with pytest.raises(ValueError, match="labels"):
        video_map(VIDEO_SCORES, np.array([0, 0, 1, 1, 3]))
    with pytest.raises(ValueError, match="expected scores"):
        video_map(VIDEO_SCORES, VIDEO_LABELS[:4])


# --- per-frame signals -------------------------------------------------------------------------
def _frame(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> SimpleNamespace:
    ns = SimpleNamespace(boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4), labels=np.array(labels, dtype=int))
    if scores is not None:
        ns.scores = np.array(scores, dtype=np.float64)
    return ns


def test_box_iou_by_hand() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_frame_signals_by_hand() -> None:
    gt = _frame([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])
    # a hit on the first object (class 0), a wrong-class box on the second, a low-score hit on the
    # second (below the operating threshold), and a duplicate of the first
    det = _frame(
        [[0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 30], [1, 0, 10, 10]], [0, 0, 1, 0], [0.9, 0.8, 0.3, 0.6]
    )
    assert match_frame(gt, det).tolist() == [True, False, True, False]
    s = frame_signals(gt, det)
    # at 0.5: tp 1 (0.9), fp 2 (0.8 wrong class, 0.6 duplicate), fn 1 (second object)
    assert s["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    assert s["errors"] == -3.0
    assert s["matched"] == pytest.approx((0.9 + 0.3) - (0.8 + 0.6))


def test_frame_signals_of_empty_frames() -> None:
    empty = _frame([], [], [])
    assert frame_signals(_frame([], []), empty) == {"f1": 1.0, "errors": -0.0, "matched": 0.0}
    fp_only = frame_signals(_frame([], []), _frame([[0, 0, 5, 5]], [2], [0.7]))
    assert fp_only["f1"] == 0.0 and fp_only["errors"] == -1.0 and fp_only["matched"] == pytest.approx(-0.7)
    missed = frame_signals(_frame([[0, 0, 5, 5]], [2]), empty)
    assert missed == {"f1": 0.0, "errors": -1.0, "matched": 0.0}
