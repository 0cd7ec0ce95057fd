"""SSDLite detection head, anchors, box coding, the SSD loss, decoding and NMS.

One feature map, one shared box predictor (depthwise 3x3 + pointwise 1x1, SSDLite style),
``len(scales) * len(aspect_ratios)`` anchors per cell with aspect ratios {1, 0.5, 2}.
The per-frame scalar :func:`frame_detection_loss` is what the RL environments use as
``L(D_t, GT_t)``: the same loss the detector was trained with, so "lower is better"
means the same thing for the agent and for the detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

BOX_VARIANCES = (0.1, 0.2)
"""SSD's variances for centre and size offsets."""
MAX_LOG_SCALE = math.log(1000.0 / 16)
"""Largest log size offset decoded (a box at most 1000/16 times its anchor), as torchvision's SSD clamps it."""


@dataclass(frozen=True)
class AnchorConfig:
    """Anchors on a ``grid x grid`` map over an ``image_size x image_size`` image."""

    image_size: int = 64
    grid: int = 8
    scales: tuple[float, ...] = (10.0, 20.0)
    aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)

    @property
    def per_cell(self) -> int:
        """Anchors per grid cell."""
        return len(self.scales) * len(self.aspect_ratios)


def make_anchors(cfg: AnchorConfig) -> Tensor:
    """Anchors as (grid*grid*per_cell, 4) ``[cx, cy, w, h]`` in pixels, cell-major order."""
    step = cfg.image_size / cfg.grid
    out = []
    for r in range(cfg.grid):
        for c in range(cfg.grid):
            cx, cy = (c + 0.5) * step, (r + 0.5) * step
            for s in cfg.scales:
                for a in cfg.aspect_ratios:
                    out.append([cx, cy, s * math.sqrt(a), s / math.sqrt(a)])
    return torch.tensor(out, dtype=torch.float32)


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    """Convert ``[cx, cy, w, h]`` to ``[x0, y0, x1, y1]``."""
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], dim=-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of ``[x0, y0, x1, y1]`` boxes: (N, 4) x (M, 4) -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def encode_boxes(gt_xyxy: Tensor, anchors: Tensor) -> Tensor:
    """SSD offsets of ground-truth boxes relative to their anchors."""
    w = (gt_xyxy[:, 2] - gt_xyxy[:, 0]).clamp(min=1e-3)
    h = (gt_xyxy[:, 3] - gt_xyxy[:, 1]).clamp(min=1e-3)
    cx = gt_xyxy[:, 0] + w / 2
    cy = gt_xyxy[:, 1] + h / 2
    v0, v1 = BOX_VARIANCES
    return torch.stack(
        [
            (cx - anchors[:, 0]) / (anchors[:, 2] * v0),
            (cy - anchors[:, 1]) / (anchors[:, 3] * v0),
            torch.log(w / anchors[:, 2]) / v1,
            torch.log(h / anchors[:, 3]) / v1,
        ],
        dim=1,
    )


def decode_boxes(offsets: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`encode_boxes`; returns ``[x0, y0, x1, y1]``. Broadcasts over batch."""
    v0, v1 = BOX_VARIANCES
    cxcy = anchors[..., :2] + offsets[..., :2] * v0 * anchors[..., 2:]
    # the usual bound (torchvision's): a box may grow to 1000/16 of its anchor, not to inf
    wh = anchors[..., 2:] * torch.exp((offsets[..., 2:] * v1).clamp(max=MAX_LOG_SCALE))
    return cxcywh_to_xyxy(torch.cat([cxcy, wh], dim=-1))


def match_anchors(
    gt_boxes: Tensor, gt_labels: Tensor, anchors_xyxy: Tensor, iou_threshold: float = 0.4
) -> tuple[Tensor, Tensor]:
    """Assign every anchor a class (0 = background) and a matched ground-truth index.

    An anchor is positive if its IoU with some box is >= ``iou_threshold``; every box also
    claims its best anchor so small objects are never left unmatched.

    Returns:
        ``(labels, matched)``: (A,) int64 class per anchor (gt label + 1, or 0) and (A,)
        index of the matched box (meaningful where labels > 0).
    """
    A = anchors_xyxy.shape[0]
    if gt_boxes.numel() == 0:
        return torch.zeros(A, dtype=torch.long), torch.zeros(A, dtype=torch.long)
    iou = box_iou(gt_boxes, anchors_xyxy)  # (G, A)
    best_iou, matched = iou.max(dim=0)
    best_anchor = iou.argmax(dim=1)
    matched[best_anchor] = torch.arange(len(gt_boxes))
    best_iou[best_anchor] = 1.0
    labels = gt_labels[matched] + 1
    labels[best_iou < iou_threshold] = 0
    return labels, matched


@dataclass(frozen=True)
class DetectionTargets:
    """Per-anchor training targets for a batch of frames."""

    labels: Tensor
    """(B, A) int64 class per anchor, 0 = background."""
    offsets: Tensor
    """(B, A, 4) encoded box targets (valid where labels > 0)."""


def build_targets(boxes: list[Tensor], labels: list[Tensor], anchors: Tensor) -> DetectionTargets:
    """Match a batch of ground truths to the anchors."""
    anchors_xyxy = cxcywh_to_xyxy(anchors)
    all_labels, all_offsets = [], []
    for b, lab in zip(boxes, labels, strict=True):
        cls, idx = match_anchors(b, lab, anchors_xyxy)
        all_labels.append(cls)
        off = encode_boxes(b[idx], anchors) if b.numel() else torch.zeros(len(anchors), 4)
        all_offsets.append(off)
    return DetectionTargets(torch.stack(all_labels), torch.stack(all_offsets))


def frame_detection_loss(
    loc: Tensor, conf: Tensor, targets: DetectionTargets, neg_pos_ratio: int = 3, min_negatives: int = 8
) -> Tensor:
    """The SSD multibox loss of every frame separately.

    Softmax cross-entropy over positives and the hardest ``neg_pos_ratio`` negatives per
    positive (at least ``min_negatives``, so false alarms on empty frames cost something),
    plus smooth-L1 on positive box offsets; the sum is divided by max(#positives, 1).

    Args:
        loc: (B, A, 4) predicted offsets.
        conf: (B, A, K + 1) class logits (index 0 = background).
        targets: Matched targets.
        neg_pos_ratio: Hard negatives kept per positive.
        min_negatives: Hard negatives kept at least, even in a frame without objects.

    Returns:
        (B,) loss per frame.
    """
    labels = targets.labels
    pos = labels > 0
    num_pos = pos.sum(dim=1)
    ce = nn.functional.cross_entropy(conf.transpose(1, 2), labels, reduction="none")  # (B, A)
    neg_ce = ce.detach().masked_fill(pos, -1.0)
    # rank of every anchor in descending order: one argsort and a scatter (what a second argsort
    # of the order would give, at a fraction of the cost; this loss runs in every env step)
    order = neg_ce.argsort(dim=1, descending=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    num_neg = torch.clamp(neg_pos_ratio * num_pos, min=min_negatives)
    neg = rank < num_neg[:, None]
    cls_loss = (ce * (pos | neg)).sum(dim=1)
    loc_loss = (nn.functional.smooth_l1_loss(loc, targets.offsets, reduction="none").sum(-1) * pos).sum(dim=1)
    return (cls_loss + loc_loss) / num_pos.clamp(min=1)


class SSDLiteHead(nn.Module):
    """One shared SSDLite box predictor over a single feature map.

    Args:
        in_channels: Channels of the memory output ``[h, b]``.
        num_classes: Object classes (background excluded).
        anchors: Anchor layout.
    """

    anchors: Tensor

    def __init__(self, in_channels: int, num_classes: int, anchors: AnchorConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor_config = anchors
        a = anchors.per_cell
        self.dw = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU6(inplace=True),
        )
        self.predict = nn.Conv2d(in_channels, a * (4 + num_classes + 1), 1)
        self.register_buffer("anchors", make_anchors(anchors), persistent=False)
        with torch.no_grad():
            # start with a background prior of ~0.99 (RetinaNet-style) for stable early training
            assert self.predict.bias is not None
            bias = self.predict.bias.view(a, 4 + num_classes + 1)
            bias[:, 4] = math.log(0.99 * num_classes / 0.01)

    def forward(self, memory_output: Tensor) -> tuple[Tensor, Tensor]:
        """Box offsets (B, A, 4) and class logits (B, A, K + 1), anchors in cell-major order."""
        p = self.predict(self.dw(memory_output))
        B, _, H, W = p.shape
        p = p.permute(0, 2, 3, 1).reshape(B, H * W * self.anchor_config.per_cell, 4 + self.num_classes + 1)
        return p[..., :4], p[..., 4:]


@dataclass(frozen=True)
class Detections:
    """Detections of one frame (pixels, ``[x0, y0, x1, y1]``)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __repr__(self) -> str:
        return f"Detections(n={len(self.scores)})"


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy non-maximum suppression. Returns kept indices, highest score first.

    Args:
        boxes: (N, 4) ``[x0, y0, x1, y1]``.
        scores: (N,) scores.
        iou_threshold: A box is suppressed by a higher-scored one overlapping more than this.
        max_keep: Stop once this many boxes are kept.
    """
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    iou = box_iou(boxes, boxes)
    over = (iou > iou_threshold).numpy()
    keep = np.ones(len(order), dtype=bool)
    kept: list[int] = []
    for i in range(len(order)):
        if keep[i]:
            kept.append(i)
            if max_keep is not None and len(kept) >= max_keep:
                break
            keep[i + 1 :] &= ~over[i, i + 1 :]
    return order[torch.as_tensor(kept, dtype=torch.long)]


def postprocess(
    loc: Tensor,
    conf: Tensor,
    anchors: Tensor,
    *,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.5,
    max_detections: int = 25,
    pre_nms_top_k: int = 100,
    image_size: tuple[int, int] | None = None,
) -> list[Detections]:
    """Decode, threshold, per-class NMS, keep the best ``max_detections`` per frame.

    25 detections per frame is plenty for frames with at most a handful of objects; the
    cut only drops the lowest-scored tail that COCO's 100-detection limit would also rank last.
    """
    probs = torch.softmax(conf, dim=-1)[..., 1:]
    boxes = decode_boxes(loc, anchors)
    if image_size is not None:
        h, w = image_size
        boxes = torch.stack(
            [
                boxes[..., 0].clamp(0, w),
                boxes[..., 1].clamp(0, h),
                boxes[..., 2].clamp(0, w),
                boxes[..., 3].clamp(0, h),
            ],
            dim=-1,
        )
    out = []
    K = probs.shape[-1]
    for b in range(loc.shape[0]):
        scores = probs[b].reshape(-1)
        cand = torch.nonzero(scores > score_threshold).squeeze(1)
        if len(cand) > pre_nms_top_k:
            cand = cand[scores[cand].topk(pre_nms_top_k).indices]
        anchor_idx, cls = cand // K, cand % K
        bx, sc = boxes[b][anchor_idx], scores[cand]
        # class offset trick: one NMS call, boxes of different classes never overlap
        keep = nms(bx + (cls[:, None] * 1e4).to(bx.dtype), sc, iou_threshold, max_keep=max_detections)
        out.append(
            Detections(
                bx[keep].numpy().astype(np.float32),
                sc[keep].numpy().astype(np.float32),
                cls[keep].numpy().astype(np.int64),
            )
        )
    return out


def postprocess_frame(
    loc: np.ndarray,
    conf: np.ndarray,
    anchors: np.ndarray,
    *,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.5,
    max_detections: int = 25,
    pre_nms_top_k: int = 100,
    image_size: tuple[int, int] | None = None,
) -> Detections:
    """:func:`postprocess` of one frame in numpy: the same detections, without torch's per-op overhead.

    The online runtime's per-frame cost at batch one: torch spends about 0.5 ms on the thirty
    small ops of :func:`postprocess`, as much as a whole light step on ONNX Runtime; numpy does
    the same work in a fraction of that. Only the candidates above ``score_threshold`` are
    decoded (decoding is per anchor, so that changes nothing).

    Every array is handled column-major (one row per logit, per box coordinate): a numpy op
    over a (384, 5) or (N, 4) array broadcast along its short last axis runs one tiny inner
    loop per row, which cost more than the arithmetic. The float32 operations are those of
    :func:`postprocess` (softmax: max, ``exp(x - max)``, the sum, a division; decoding and
    clamping as :func:`decode_boxes`; the NMS's IoU as :func:`box_iou`), so scores and boxes
    agree with it to float32 rounding; candidates keep the anchor-major order of its ``nonzero``.

    **Equal scores** are broken by that order, lower candidate index (``anchor * K + class``)
    first, both in the ``pre_nms_top_k`` cut and in the NMS's score order. :func:`postprocess`
    leaves them to torch's ``topk`` and unstable ``argsort``, whose order among equal values is
    an implementation detail, so the two give the same detections whenever the candidates'
    scores are distinct (what a trained network's float32 softmax gives in practice; exact
    ties take degenerate logits such as all zeros).

    Args:
        loc: (A, 4) box offsets of one frame.
        conf: (A, K + 1) class logits (0 = background).
        anchors: (A, 4) anchors ``[cx, cy, w, h]`` in pixels.
        score_threshold: As :func:`postprocess`.
        iou_threshold: As :func:`postprocess`.
        max_detections: As :func:`postprocess`.
        pre_nms_top_k: As :func:`postprocess`.
        image_size: As :func:`postprocess`.
    """
    logits = np.asarray(conf, dtype=np.float32).T  # (K + 1, A)
    peak = logits[0]
    for row in logits[1:]:
        peak = np.maximum(peak, row)
    z = np.exp(logits - peak)
    total = z[0].copy()
    for row in z[1:]:
        total += row
    probs = z[1:] / total  # (K, A)
    K = probs.shape[0]
    cand = np.flatnonzero((probs > score_threshold).T)  # anchor-major, as the (A, K) flattening
    anchor_idx, cls = np.divmod(cand, K)
    sc = probs[cls, anchor_idx]
    if len(cand) > pre_nms_top_k:
        # the top k, and of candidates tied with the k-th score the first ones (anchor-major),
        # kept in candidate order: equal scores then always fall the same way (see _nms_columns)
        kth = -np.partition(-sc, pre_nms_top_k - 1)[pre_nms_top_k - 1]
        chosen = sc > kth
        chosen[np.flatnonzero(sc == kth)[: pre_nms_top_k - int(np.count_nonzero(chosen))]] = True
        top = np.flatnonzero(chosen)
        anchor_idx, cls, sc = anchor_idx[top], cls[top], sc[top]
    a = np.asarray(anchors, dtype=np.float32).T[:, anchor_idx]  # (4, N): cx, cy, w, h
    off = np.asarray(loc, dtype=np.float32).T[:, anchor_idx]
    v0, v1 = BOX_VARIANCES
    cxcy = a[:2] + off[:2] * np.float32(v0) * a[2:]
    half = a[2:] * np.exp(np.minimum(off[2:] * np.float32(v1), np.float32(MAX_LOG_SCALE))) / np.float32(2)
    corners = np.concatenate([cxcy - half, cxcy + half])  # (4, N): x0, y0, x1, y1
    if image_size is not None:
        h, w = image_size
        np.maximum(corners, np.float32(0), out=corners)
        np.minimum(corners, np.array([[w], [h], [w], [h]], dtype=np.float32), out=corners)
    # class offset trick, as postprocess: boxes of different classes never overlap
    keep = _nms_columns(corners + (cls * 1e4).astype(np.float32), sc, iou_threshold, max_detections)
    return Detections(np.ascontiguousarray(corners[:, keep].T), sc[keep], cls[keep].astype(np.int64, copy=False))


def _nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """:func:`nms` in numpy: kept indices, highest score first (ties: the lower index first); ``boxes`` (N, 4)."""
    return _nms_columns(np.asarray(boxes, dtype=np.float32).T, scores, iou_threshold, max_keep)


def _nms_columns(corners: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """:func:`_nms_numpy` of boxes given as (4, N) rows ``x0, y0, x1, y1``.

    The pairwise IoU is computed as :func:`box_iou` does it, element for element the same
    float32 operations (so the same bits and the same ``> iou_threshold`` decisions), but
    from the four coordinate rows rather than (N, N, 2) corner arrays, whose last-axis
    product costs numpy more than the rest. The greedy pass then runs over the kept boxes
    only: the rows of the "overlaps too much" matrix are packed into bits (bit ``j`` of row
    ``i``: box ``j`` of the score order overlaps box ``i``), the candidates still alive form
    one Python integer, and each kept box removes itself and its row from it; the next kept
    box is the lowest bit left (every lower one is already kept or removed, so a row's bits
    below the diagonal change nothing). At most ``max_keep`` rows are ever unpacked.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    if n == 1:
        return order.astype(np.int64, copy=False)
    x0, y0, x1, y1 = corners[:, order]
    zero = np.float32(0)
    area = np.maximum(x1 - x0, zero) * np.maximum(y1 - y0, zero)
    w = np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0)
    h = np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0)
    inter = np.maximum(w, zero, out=w) * np.maximum(h, zero, out=h)
    union = area[:, None] + area - inter
    over = inter / np.maximum(union, np.float32(1e-9), out=union) > iou_threshold
    rows = np.packbits(over, axis=1, bitorder="little")
    alive = (1 << n) - 1
    kept: list[int] = []
    while alive:
        i = (alive & -alive).bit_length() - 1
        kept.append(i)
        if len(kept) >= max_keep:
            break
        alive &= ~int.from_bytes(rows[i].tobytes(), "little") & ~(1 << i)
    return order[np.asarray(kept, dtype=np.int64)]
