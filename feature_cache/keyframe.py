"""The ``keyframe`` cache section (Deep Feature Flow) and its frozen model ``dff``.

For every frame ``t`` of a video and every distance ``d = 0..D_max`` to a keyframe
``k = t - d`` the section stores what Deep Feature Flow would produce for frame ``t`` had
frame ``k`` been the most recent keyframe (``d = 0``: ``t`` itself is the keyframe, N_task on
N_feat's features; ``d >= 1``: N_task on the keyframe's features warped by F(I_k, I_t)):

    /videos/<id>/keyframe/loss          (T, D+1) float32  the detector's own per-frame SSD loss
                                                          (:func:`~gistgym.backbones.ssdlite.frame_detection_loss`)
    /videos/<id>/keyframe/cues          (T, D+1, 4) float32  statistics of F(I_k, I_t), see CUE_NAMES
    /videos/<id>/keyframe/det_boxes     (T, D+1, K, 4) float32  top-K detections after NMS, pixels
    /videos/<id>/keyframe/det_scores    (T, D+1, K) float32      [x0, y0, x1, y1], best first,
    /videos/<id>/keyframe/det_labels    (T, D+1, K) int8         padded with zeros beyond
    /videos/<id>/keyframe/det_count     (T, D+1) int8            det_count
    /sections/keyframe                  attrs: max_distance, cue_names, large_displacement_px,
                                        max_detections, dff_costs (JSON), invalid_value

Detections are float32 on purpose: rounding boxes to float16 (at most 1/64 px here) moved
the mAP@0.5 of a tiny test set by 1.7 points, because synthetic boxes sit exactly at IoU
0.5 often enough; float32 keeps any schedule's mAP from the cache equal to running DFF.

Entries with ``d > t`` (no such keyframe) hold ``INVALID`` (-1) in ``loss`` and ``cues`` and
``det_count = 0``. The cues at ``d = 0`` are zero (a keyframe runs no flow). The four cues
are the ones a scheduler has at frame ``t`` after running F against its keyframe: mean and
max flow magnitude (pixels), the fraction of feature cells displaced by more than
``LARGE_DISPLACEMENT_PX`` and the mean of ``|S - 1|`` over the scale field.

With these tables the loss, the observation and the detections of **any** keyframe
schedule are lookups: :func:`schedule_detections` picks frame ``t``'s detections at its
schedule's distance, so ``gistgym.metrics.detection_map50`` scores the schedule exactly as
running DFF with it would (same models, same NMS), and :func:`signal_table` scores every
(t, d) with a per-frame signal against the ground truth (the Keyframe environment's signal
rewards, a hindsight oracle's objective).

The DFF model (role ``dff``, :mod:`gistgym.backbones.dff`) is self-contained: its N_feat is
its own copy of the heavy extractor it was trained with, so this section does not depend
on which interleaved detector the ``interleave`` section uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gistgym.backbones.dff import (
    DEFAULT_DFF_WEIGHTS,
    DeepFeatureFlow,
    describe_dff,
    dff_costs,
    dff_from_bytes,
)
from gistgym.backbones.ssdlite import Detections, build_targets, frame_detection_loss
from gistgym.feature_cache.hdf5 import EmbeddedArrays
from gistgym.feature_cache.reader import SectionData, register_section_check
from gistgym.feature_cache.sections import FrozenModels, FrozenModelSpec, Section, register_section
from gistgym.metrics import FRAME_SIGNALS, BoxesAndLabels, frame_signals
from gistgym.videos.dataset import VideoRecord

SECTION_KEYFRAME = "keyframe"
MODEL_ROLE = "dff"

# --- key names (per-video datasets and section attributes) ----------------------------------
LOSS = "loss"
CUES = "cues"
DET_BOXES = "det_boxes"
DET_SCORES = "det_scores"
DET_LABELS = "det_labels"
DET_COUNT = "det_count"
ATTR_MAX_DISTANCE = "max_distance"
ATTR_CUE_NAMES = "cue_names"
ATTR_LARGE_DISPLACEMENT = "large_displacement_px"
ATTR_MAX_DETECTIONS = "max_detections"
ATTR_DFF_COSTS = "dff_costs"
ATTR_INVALID = "invalid_value"

MAX_DISTANCE = 20
"""D_max: the largest keyframe distance cached (the paper's longest key duration is 20)."""
MAX_DETECTIONS = 25
"""K: detections kept per (t, d) (the detector's ``postprocess`` default)."""
LARGE_DISPLACEMENT_PX = 4.0
"""A cell counts as largely displaced beyond half a feature cell (8 px cells at 64x64)."""
CUE_NAMES = ("mean_flow_px", "max_flow_px", "large_displacement_fraction", "mean_abs_scale_minus_1")
INVALID = -1.0
"""Value of ``loss`` and ``cues`` where d > t."""
INVALID_SIGNAL = -np.inf
"""Value of :func:`signal_table` where d > t (no such keyframe): never the best of a maximum."""
PAIR_BATCH = 512
"""(t, d) pairs per forward pass of F, W and N_task."""


def _dff(models: FrozenModels) -> DeepFeatureFlow:
    model = models.get(MODEL_ROLE)
    assert isinstance(model, DeepFeatureFlow)
    return model


def flow_cues(flow: torch.Tensor, scale: torch.Tensor, cell_pixels: float) -> torch.Tensor:
    """The four cues of :data:`CUE_NAMES` for a batch of flow outputs.

    Args:
        flow: (B, 2, g, g) flow in feature cells.
        scale: (B, C, g, g) scale field.
        cell_pixels: Pixels per feature cell.

    Returns:
        (B, 4) float32.
    """
    magnitude = flow.pow(2).sum(1).sqrt().flatten(1) * cell_pixels
    return torch.stack(
        [
            magnitude.mean(1),
            magnitude.amax(1),
            (magnitude > LARGE_DISPLACEMENT_PX).float().mean(1),
            (scale - 1).abs().flatten(1).mean(1),
        ],
        dim=1,
    )


@torch.no_grad()
def keyframe_tables(
    model: DeepFeatureFlow, frames: np.ndarray, record: VideoRecord, max_distance: int = MAX_DISTANCE
) -> dict[str, np.ndarray]:
    """Loss, cues and detections of every (frame, keyframe distance) of one video.

    Args:
        model: The frozen DFF model.
        frames: (T, H, W, 3) uint8 RGB.
        record: The video (its annotations give the losses' targets).
        max_distance: D_max.

    Returns:
        The section's per-video arrays (see the module docstring).
    """
    T, D1, K = len(frames), max_distance + 1, MAX_DETECTIONS
    images = model.preprocess(torch.from_numpy(np.ascontiguousarray(frames)))
    feats = torch.cat([model.features(images[s : s + PAIR_BATCH]) for s in range(0, T, PAIR_BATCH)])
    ann = record.annotations
    targets = build_targets(
        [torch.from_numpy(np.asarray(a.boxes, np.float32)).reshape(-1, 4) for a in ann],
        [torch.from_numpy(np.asarray(a.labels, np.int64)) for a in ann],
        model.anchors,
    )
    loss = np.full((T, D1), INVALID, np.float32)
    cues = np.full((T, D1, len(CUE_NAMES)), INVALID, np.float32)
    boxes = np.zeros((T, D1, K, 4), np.float32)
    scores = np.zeros((T, D1, K), np.float32)
    labels = np.zeros((T, D1, K), np.int8)
    count = np.zeros((T, D1), np.int8)
    # every valid pair (t, d), d <= t, in one flat list processed in batches
    pairs = np.array([(t, d) for d in range(min(D1, T)) for t in range(d, T)], dtype=np.int64).reshape(-1, 2)
    cell = model.config.cell_pixels
    for s in range(0, len(pairs), PAIR_BATCH):
        chunk = pairs[s : s + PAIR_BATCH]
        t = torch.from_numpy(chunk[:, 0])
        d = torch.from_numpy(chunk[:, 1])
        k = t - d
        key_feats = feats[k]
        out = key_feats.clone()
        chunk_cues = torch.zeros(len(chunk), len(CUE_NAMES))
        prop = (d > 0).nonzero().squeeze(1)
        if len(prop):
            warped, fo = model.propagate(key_feats[prop], images[k[prop]], images[t[prop]])
            out[prop] = warped
            chunk_cues[prop] = flow_cues(fo.flow, fo.scale, cell)
        loc, conf = model.task(out)
        chunk_loss = frame_detection_loss(loc, conf, type(targets)(targets.labels[t], targets.offsets[t])).numpy()
        dets = model.detect(loc, conf, max_detections=K)
        tt, dd = chunk[:, 0], chunk[:, 1]
        loss[tt, dd] = chunk_loss
        cues[tt, dd] = chunk_cues.numpy()
        for row, det in enumerate(dets):
            n = len(det.scores)
            ti, di = tt[row], dd[row]
            count[ti, di] = n
            boxes[ti, di, :n] = det.boxes
            scores[ti, di, :n] = det.scores
            labels[ti, di, :n] = det.labels
    return {LOSS: loss, CUES: cues, DET_BOXES: boxes, DET_SCORES: scores, DET_LABELS: labels, DET_COUNT: count}


def keyframe_compute(models: FrozenModels, frames: np.ndarray, record: VideoRecord) -> dict[str, np.ndarray]:
    """The section's ``compute``: :func:`keyframe_tables` with the ``dff`` model and D_max = 20."""
    return keyframe_tables(_dff(models), frames, record, MAX_DISTANCE)


def keyframe_embedded(models: FrozenModels) -> EmbeddedArrays:
    """The section's constants (D_max, cue names, thresholds) and the DFF model's counted FLOPs."""
    return EmbeddedArrays(
        attrs={
            ATTR_MAX_DISTANCE: MAX_DISTANCE,
            ATTR_CUE_NAMES: list(CUE_NAMES),
            ATTR_LARGE_DISPLACEMENT: LARGE_DISPLACEMENT_PX,
            ATTR_MAX_DETECTIONS: MAX_DETECTIONS,
            ATTR_DFF_COSTS: dff_costs(_dff(models), measure=False).to_dict(),
            ATTR_INVALID: INVALID,
        },
        tensors={},
    )


def schedule_detections(tables: Mapping[str, np.ndarray], distances: Sequence[int] | np.ndarray) -> list[Detections]:
    """The detections of one video under a schedule, read from its cached tables.

    Args:
        tables: One episode's ``keyframe`` arrays (``episode.sections["keyframe"]``).
        distances: (T,) distance of every frame to its keyframe (0 on keyframes).

    Returns:
        One :class:`~gistgym.backbones.ssdlite.Detections` per frame.

    Raises:
        ValueError: A distance is negative, beyond D_max, or beyond the frame index.
    """
    d = np.asarray(distances, dtype=np.int64)
    T, D1 = tables[LOSS].shape
    if d.shape != (T,):
        raise ValueError(f"distances must have shape ({T},), got {d.shape}")
    t = np.arange(T)
    if (d < 0).any() or (d >= D1).any() or (d > t).any():
        raise ValueError(f"distances must lie in [0, min(t, {D1 - 1})], got {d.tolist()}")
    return [_detections_at(tables, ti, di) for ti, di in zip(t.tolist(), d.tolist(), strict=True)]


def _detections_at(tables: Mapping[str, np.ndarray], t: int, d: int) -> Detections:
    """Frame ``t``'s cached detections with its keyframe at distance ``d``."""
    n = int(tables[DET_COUNT][t, d])
    return Detections(
        tables[DET_BOXES][t, d, :n].astype(np.float32),
        tables[DET_SCORES][t, d, :n].astype(np.float32),
        tables[DET_LABELS][t, d, :n].astype(np.int64),
    )


def signal_table(
    tables: Mapping[str, np.ndarray], ground_truth: Sequence[BoxesAndLabels], signal: str, max_distance: int
) -> np.ndarray:
    """A per-frame detection signal of every (frame, keyframe distance) of one video.

    Entry ``(t, d)`` is :func:`gistgym.metrics.frame_signals` ``[signal]`` of the cached DFF
    detections of frame ``t`` with its keyframe at distance ``d`` (exactly the detections
    :func:`schedule_detections` returns for a schedule putting frame ``t`` at distance ``d``),
    scored against frame ``t``'s ground truth. Higher is better for every signal, so a
    scheduler (the Keyframe environment's signal reward, a hindsight oracle) maximises it.

    Args:
        tables: One episode's ``keyframe`` arrays (``episode.sections["keyframe"]``).
        ground_truth: (T,) per-frame ground truth (``episode.ground_truth(t)``), boxes in pixels.
        signal: One of :data:`gistgym.metrics.FRAME_SIGNALS` (``"f1"``, ``"errors"``, ``"matched"``).
        max_distance: D: distances ``0..D`` are scored (at most the cached D_max).

    Returns:
        (T, D + 1) float64; :data:`INVALID_SIGNAL` (``-inf``) where ``d > t`` (no such keyframe).

    Raises:
        ValueError: Unknown ``signal``, ``max_distance`` outside ``[0, cached D_max]``, or
            ground truth for another number of frames.
    """
    if signal not in FRAME_SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(map(repr, FRAME_SIGNALS))}, got {signal!r}")
    T, cached = tables[LOSS].shape[0], tables[LOSS].shape[1] - 1
    if isinstance(max_distance, bool) or not 0 <= int(max_distance) <= cached:
        raise ValueError(f"max_distance must lie in [0, {cached}] (the cached D_max), got {max_distance!r}")
    if len(ground_truth) != T:
        raise ValueError(f"ground truth has {len(ground_truth)} frames but the tables have {T}")
    D1 = int(max_distance) + 1
    out = np.full((T, D1), INVALID_SIGNAL, dtype=np.float64)
    for t in range(T):
        for d in range(min(t + 1, D1)):
            out[t, d] = frame_signals(ground_truth[t], _detections_at(tables, t, d))[signal]
    return out


def _costs(model: torch.nn.Module, measure: bool) -> dict[str, Any]:
    assert isinstance(model, DeepFeatureFlow)
    return dff_costs(model, measure=measure).to_dict()


def _load(data: bytes, sidecar: Mapping[str, Any], path: Path) -> torch.nn.Module:
    return dff_from_bytes(data, sidecar, path)


DFF_MODEL = FrozenModelSpec(
    role=MODEL_ROLE,
    summary="Deep Feature Flow: N_feat (heavy extractor copy), flow net F, warp W, task net N_task",
    default_weights=lambda: DEFAULT_DFF_WEIGHTS,
    train_hint="gistgym backbones train-dff --out gistgym/weights/dff.pt",
    load=_load,
    describe=describe_dff,
    costs=_costs,
)

KEYFRAME_SECTION = Section(
    name=SECTION_KEYFRAME,
    summary=f"DFF loss, flow cues and detections of every frame for keyframe distances 0..{MAX_DISTANCE}",
    compute=keyframe_compute,
    embed=keyframe_embedded,
    models=(MODEL_ROLE,),
)


def check_keyframe_section(section: SectionData) -> tuple[str, str] | None:
    """Whether a ``keyframe`` section's attributes are what readers expect (the reader's section check)."""
    attrs = section.attrs
    ints = (ATTR_MAX_DISTANCE, ATTR_MAX_DETECTIONS)
    for key in ints:
        value = attrs.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f".attrs[{key}]", f"{key} must be a positive integer, got {value!r}"
    cues = attrs.get(ATTR_CUE_NAMES)
    if not isinstance(cues, list) or not all(isinstance(c, str) for c in cues):
        return f".attrs[{ATTR_CUE_NAMES}]", f"{ATTR_CUE_NAMES} must be a list of names, got {cues!r}"
    costs = attrs.get(ATTR_DFF_COSTS)
    if not isinstance(costs, dict):
        return f".attrs[{ATTR_DFF_COSTS}]", f"{ATTR_DFF_COSTS} must be a mapping, got {costs!r}"
    return None


register_section(KEYFRAME_SECTION, DFF_MODEL)
register_section_check(SECTION_KEYFRAME, check_keyframe_section)
