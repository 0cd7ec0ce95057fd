"""SSDLite anchors, box coding, matching, the per-frame SSD loss, NMS and postprocessing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gistgym.backbones.ssdlite import (
    AnchorConfig,
    DetectionTargets,
    SSDLiteHead,
    box_iou,
    build_targets,
    cxcywh_to_xyxy,
    decode_boxes,
    encode_boxes,
    frame_detection_loss,
    make_anchors,
    match_anchors,
    nms,
    postprocess,
)

SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------- anchors


def test_anchor_count_order_and_geometry() -> None:
    cfg = AnchorConfig()
    assert cfg.per_cell == 6
    anchors = make_anchors(cfg)
    assert anchors.shape == (8 * 8 * 6, 4) == (384, 4)
    expected_first_cell = torch.tensor(
        [
            [4, 4, 10, 10],
            [4, 4, 10 / SQRT2, 10 * SQRT2],  # aspect 0.5: w = s*sqrt(a), h = s/sqrt(a)
            [4, 4, 10 * SQRT2, 10 / SQRT2],  # aspect 2
            [4, 4, 20, 20],
            [4, 4, 20 / SQRT2, 20 * SQRT2],
            [4, 4, 20 * SQRT2, 20 / SQRT2],
        ]
    )
    assert torch.allclose(anchors[:6], expected_first_cell, atol=1e-5)
    # cell-major, row by row: anchor 6 is the next column, anchor 48 the next row
    assert anchors[6, :2].tolist() == [12.0, 4.0]
    assert anchors[48, :2].tolist() == [4.0, 12.0]
    assert torch.allclose(anchors[-1], torch.tensor([60.0, 60.0, 20 * SQRT2, 20 / SQRT2]))
    # every anchor of scale s has area s^2, whatever the aspect ratio
    areas = (anchors[:, 2] * anchors[:, 3]).view(64, 2, 3)
    assert torch.allclose(areas[:, 0], torch.full((64, 3), 100.0), atol=1e-3)
    assert torch.allclose(areas[:, 1], torch.full((64, 3), 400.0), atol=1e-3)
    assert make_anchors(AnchorConfig(image_size=32, grid=4, scales=(8.0,), aspect_ratios=(1.0,))).shape == (16, 4)


def test_head_output_order_matches_the_anchors() -> None:
    """Anchor i of the flattened output is cell (i // 6) in row-major order, slot i % 6."""
    cfg = AnchorConfig()
    head = SSDLiteHead(in_channels=2, num_classes=2, anchors=cfg).eval()
    head.dw = nn.Identity()  # type: ignore[assignment]
    per_anchor = 4 + 2 + 1
    with torch.no_grad():
        head.predict.weight.zero_()
        head.predict.weight[:, 0] = 1.0  # every output adds input channel 0
        head.predict.bias.copy_(torch.arange(6 * per_anchor, dtype=torch.float32))
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, 2, 5] = 1000.0  # one marked cell: row 2, column 5
    loc, conf = head(x)
    assert loc.shape == (1, 384, 4) and conf.shape == (1, 384, 3)
    values = torch.cat([loc, conf], -1)[0]
    marked = (2 * 8 + 5) * 6
    for i in range(384):
        slot = i % 6
        expected = torch.arange(per_anchor, dtype=torch.float32) + slot * per_anchor
        if marked <= i < marked + 6:
            expected = expected + 1000.0
        assert torch.equal(values[i], expected), i
    # the background-prior bias: P(background) ~ 0.99 at initialisation
    fresh = SSDLiteHead(in_channels=4, num_classes=4, anchors=cfg)
    with torch.no_grad():
        fresh.predict.weight.zero_()
        fresh.predict.bias.view(6, 9)[:, 5:] = 0.0  # object logits at 0: P(bg) = 396 / (396 + 4)
        _, logits = fresh(torch.zeros(1, 4, 8, 8))
    assert torch.allclose(torch.softmax(logits, -1)[..., 0], torch.full((1, 384), 0.99))


# --------------------------------------------------------------------------- box coding


def test_box_iou_on_hand_made_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    b = torch.tensor(
        [
            [5.0, 5.0, 15.0, 15.0],  # 25 / (100 + 100 - 25)
            [10.0, 0.0, 20.0, 10.0],  # touching edges: 0
            [0.0, 0.0, 10.0, 10.0],  # identical: 1
            [0.0, 0.0, 5.0, 10.0],  # half of it: 50 / 100
            [2.0, 2.0, 4.0, 4.0],  # inside: 4 / 100
            [20.0, 20.0, 30.0, 30.0],  # disjoint: 0
        ]
    )
    iou = box_iou(a, b)
    assert iou.shape == (2, 6)
    assert torch.allclose(iou[0], torch.tensor([1 / 7, 0.0, 1.0, 0.5, 0.04, 0.0]))
    assert torch.allclose(iou[1], torch.tensor([1.0, 25 / 175, 1 / 7, 0.0, 0.0, 0.0]))
    degenerate = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert box_iou(degenerate, degenerate).item() == 0.0


def test_encode_known_offsets_and_round_trip() -> None:
    assert cxcywh_to_xyxy(torch.tensor([10.0, 10.0, 4.0, 6.0])).tolist() == [8.0, 7.0, 12.0, 13.0]
    anchors = torch.tensor([[10.0, 10.0, 10.0, 20.0], [10.0, 10.0, 10.0, 20.0], [10.0, 10.0, 10.0, 20.0]])
    gt = torch.tensor(
        [
            [5.0, 0.0, 15.0, 20.0],  # the anchor itself
            [6.0, 1.0, 16.0, 21.0],  # moved by (1, 1): 1 / (w * 0.1) = 1, 1 / (h * 0.1) = 0.5
            [0.0, -10.0, 20.0, 30.0],  # twice as big: log(2) / 0.2
        ]
    )
    off = encode_boxes(gt, anchors)
    ln2 = math.log(2.0) / 0.2
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0], [0.0, 0.0, ln2, ln2]])
    assert torch.allclose(off, expected, atol=1e-6)
    assert torch.allclose(decode_boxes(off, anchors), gt, atol=1e-5)

    g = torch.Generator().manual_seed(0)
    anchors = make_anchors(AnchorConfig())
    centres = anchors[:, :2] + (torch.rand(384, 2, generator=g) - 0.5) * 8
    sizes = anchors[:, 2:] * (0.5 + 1.5 * torch.rand(384, 2, generator=g))  # within the decoder's clamp
    gt = cxcywh_to_xyxy(torch.cat([centres, sizes], 1))
    off = encode_boxes(gt, anchors)
    assert torch.allclose(decode_boxes(off, anchors), gt, atol=1e-4)
    # decoding broadcasts over a batch dimension
    assert torch.allclose(decode_boxes(off.expand(3, -1, -1), anchors)[2], gt, atol=1e-4)
    # a box 5x its anchor decodes exactly; huge size offsets are clamped at 1000/16, never inf
    five = encode_boxes(torch.tensor([[-15.0, -15.0, 35.0, 35.0]]), torch.tensor([[10.0, 10.0, 10.0, 10.0]]))
    back = decode_boxes(five, torch.tensor([[10.0, 10.0, 10.0, 10.0]]))
    assert torch.allclose(back, torch.tensor([[-15.0, -15.0, 35.0, 35.0]]), atol=1e-4)
    big = decode_boxes(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[10.0, 10.0, 10.0, 10.0]]))
    assert torch.allclose(big[0, 2] - big[0, 0], torch.tensor(10 * 1000 / 16))


def test_match_anchors_gives_every_box_its_best_anchor() -> None:
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [20.0, 20.0, 40.0, 40.0],
            [0.0, 0.0, 4.0, 4.0],
            [21.0, 21.0, 41.0, 41.0],
        ]
    )
    gt = torch.tensor([[0.0, 0.0, 2.0, 2.0], [20.0, 20.0, 40.0, 40.0]])
    labels, matched = match_anchors(gt, torch.tensor([2, 0]), anchors)
    # box 0's best IoU is 4/16 = 0.25 < 0.4 (anchor 2), yet it claims that anchor;
    # anchor 3 overlaps box 1 by 361 / 439 = 0.82 >= 0.4; anchor 0 (0.04 with box 0) is background
    assert labels.tolist() == [0, 1, 3, 1]
    assert matched[1:].tolist() == [1, 0, 1]
    labels, _ = match_anchors(gt, torch.tensor([2, 0]), anchors, iou_threshold=0.9)
    assert labels.tolist() == [0, 1, 3, 0]
    labels, matched = match_anchors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), anchors)
    assert labels.tolist() == [0, 0, 0, 0]

    full = make_anchors(AnchorConfig())
    targets = build_targets([gt, torch.zeros(0, 4)], [torch.tensor([2, 0]), torch.zeros(0, dtype=torch.long)], full)
    assert targets.labels.shape == (2, 384) and targets.offsets.shape == (2, 384, 4)
    assert (targets.labels[1] == 0).all()
    # the tiny box is matched to the 10x10 anchor of the top-left cell (IoU 0.04 < 0.4)
    assert targets.labels[0].tolist().count(3) == 1 and targets.labels[0, 0] == 3
    assert torch.allclose(targets.offsets[0, 0], encode_boxes(gt[:1], full[:1])[0])


# --------------------------------------------------------------------------- loss


def _ce(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def _smooth_l1(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def test_frame_detection_loss_on_a_hand_made_case() -> None:
    conf_rows = [
        # frame 0: anchor 0 is an object, anchors 1-4 background
        [[0.0, 2.0], [0.0, 1.0], [0.0, -1.0], [0.0, 3.0], [0.0, 0.0]],
        # frame 1: no object at all
        [[1.0, 0.0], [0.0, 2.0], [0.0, 0.5], [2.0, 0.0], [0.0, -3.0]],
    ]
    conf = torch.tensor(conf_rows)
    labels = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    target_off = torch.zeros(2, 5, 4)
    target_off[:, 1:] = 50.0  # offsets of background anchors must not count
    target_off[0, 0] = torch.tensor([0.0, 0.0, 0.3, 0.0])
    loc = torch.zeros(2, 5, 4)
    loc[0, 0] = torch.tensor([0.5, -2.0, 0.3, 0.0])
    targets = DetectionTargets(labels, target_off)

    ce0 = [_ce(r, int(y)) for r, y in zip(conf_rows[0], labels[0], strict=True)]
    ce1 = [_ce(r, 0) for r in conf_rows[1]]
    loc0 = _smooth_l1(0.5) + _smooth_l1(-2.0)  # 0.125 + 1.5
    # ratio 1, at least 2 negatives: the two hardest negatives are anchors 3 and 1
    hand0 = (ce0[0] + ce0[3] + ce0[1] + loc0) / 1
    # no positives: min_negatives = 2 hardest (anchors 1 and 2), divided by max(0, 1)
    hand1 = ce1[1] + ce1[2]
    loss = frame_detection_loss(loc, conf, targets, neg_pos_ratio=1, min_negatives=2)
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(hand0, rel=1e-5)
    assert loss[1].item() == pytest.approx(hand1, rel=1e-5)
    assert hand0 == pytest.approx(0.126928 + 3.048587 + 1.313262 + 1.625, abs=1e-5)
    assert hand1 == pytest.approx(2.126928 + 0.974077, abs=1e-5)

    # ratio 3, no minimum: anchors 3, 1 and 4 in frame 0; nothing at all in frame 1
    loss = frame_detection_loss(loc, conf, targets, neg_pos_ratio=3, min_negatives=0)
    assert loss[0].item() == pytest.approx(ce0[0] + ce0[3] + ce0[1] + ce0[4] + loc0, rel=1e-5)
    assert loss[1].item() == 0.0

    # two positives: everything is divided by 2
    labels2 = torch.tensor([[1, 1, 0, 0, 0]])
    t2 = DetectionTargets(labels2, torch.zeros(1, 5, 4))
    ce = [_ce(r, int(y)) for r, y in zip(conf_rows[0], labels2[0], strict=True)]
    expected = (ce[0] + ce[1] + ce[3] + ce[4] + _smooth_l1(0.5) + _smooth_l1(-2.0) + _smooth_l1(0.3)) / 2
    got = frame_detection_loss(loc[:1], conf[:1], t2, neg_pos_ratio=1, min_negatives=2)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_loss_is_lower_for_a_perfect_prediction() -> None:
    anchors = make_anchors(AnchorConfig())
    boxes = [torch.tensor([[10.0, 12.0, 24.0, 30.0], [40.0, 40.0, 52.0, 50.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1, 3]), torch.zeros(0, dtype=torch.long)]
    targets = build_targets(boxes, labels, anchors)
    assert (targets.labels[0] > 0).sum() >= 2
    perfect_conf = nn.functional.one_hot(targets.labels, 5).float() * 20.0
    perfect = frame_detection_loss(targets.offsets.clone(), perfect_conf, targets)
    wrong_conf = torch.roll(perfect_conf, 1, dims=-1)  # every anchor predicts the next class
    wrong = frame_detection_loss(targets.offsets + 1.0, wrong_conf, targets)
    assert (perfect < 1e-6).all()
    assert (wrong > 10.0).all()
    # an empty frame with false alarms still costs something (min_negatives)
    alarms = perfect_conf.clone()
    alarms[1, :3] = torch.tensor([0.0, 20.0, 0.0, 0.0, 0.0])
    assert frame_detection_loss(targets.offsets, alarms, targets)[1] > 10.0


# --------------------------------------------------------------------------- NMS


def test_nms_on_hand_made_boxes() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # A .8
            [1.0, 1.0, 11.0, 11.0],  # B .9, IoU(A, B) = 81 / 119 = 0.68
            [20.0, 20.0, 30.0, 30.0],  # C .7, alone
            [0.0, 0.0, 10.0, 9.0],  # D .6, IoU(A, D) = 0.9, IoU(B, D) = 72 / 118 = 0.61
        ]
    )
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 2, 3]
    assert nms(boxes, scores, 0.5, max_keep=1).tolist() == [1]
    # greedy: a suppressed box suppresses nothing (C overlaps only the suppressed B)
    chain = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 0.0, 13.0, 10.0], [6.0, 0.0, 16.0, 10.0]])
    assert nms(chain, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_postprocess_keeps_classes_apart() -> None:
    anchors = torch.tensor([[10.0, 10.0, 10.0, 10.0], [10.0, 10.0, 10.0, 10.0], [40.0, 40.0, 10.0, 10.0]])
    conf = torch.tensor(
        [
            [
                [0.0, 2.0, 2.0],  # anchor 0: class 0 and class 1 both at e^2 / (1 + 2e^2)
                [2.0, 1.0, -5.0],  # anchor 1: class 0 at e / (e^2 + e + e^-5), same box as anchor 0
                [0.0, -5.0, 1.0],  # anchor 2: class 1 alone
            ]
        ]
    )
    loc = torch.zeros(1, 3, 4)
    (det,) = postprocess(loc, conf, anchors)
    p_both = math.exp(2) / (1 + 2 * math.exp(2))
    p_a1 = math.e / (math.exp(2) + math.e + math.exp(-5))
    p_a2 = math.e / (1 + math.exp(-5) + math.e)
    assert len(det.scores) == 3  # anchor 1's class 0 is suppressed by anchor 0's; class-1 twin kept
    assert det.scores[0] == pytest.approx(p_a2, rel=1e-5) and det.labels[0] == 1
    np.testing.assert_allclose(det.boxes[0], [35, 35, 45, 45])
    assert sorted(det.labels[1:].tolist()) == [0, 1]
    np.testing.assert_allclose(det.scores[1:], [p_both, p_both], rtol=1e-5)
    np.testing.assert_allclose(det.boxes[1:], [[5, 5, 15, 15], [5, 5, 15, 15]])
    assert det.boxes.dtype == np.float32 and det.labels.dtype == np.int64
    assert p_a1 > 0.01  # so it was a real candidate that NMS removed
    (no_nms,) = postprocess(loc, conf, anchors, iou_threshold=1.0)
    assert len(no_nms.scores) == 4
    # thresholds and caps
    (few,) = postprocess(loc, conf, anchors, score_threshold=0.5)
    assert few.labels.tolist() == [1]
    (capped,) = postprocess(loc, conf, anchors, max_detections=2)
    assert len(capped.scores) == 2
    # clamped to the image
    (clamped,) = postprocess(loc, conf, anchors, image_size=(42, 38))
    np.testing.assert_allclose(clamped.boxes[0], [35, 35, 38, 42])
    # nothing above the threshold: an empty frame
    (empty,) = postprocess(loc, torch.tensor([[[9.0, 0.0, 0.0]] * 3]), anchors, score_threshold=0.01)
    assert len(empty.scores) == 0 and empty.boxes.shape == (0, 4)
