"""Training and evaluating Deep Feature Flow on the embedded benchmark.

Training follows DFF Sec. 4: every sample is a pair of frames (k, i) of one training video
with ``0 <= i - k <= max_distance`` (9, as in the paper); N_feat (the detector's frozen heavy
extractor) runs on the keyframe, F and W carry its features to frame i, N_task detects,
and the loss is the detector's own SSD loss of frame i. The keyframe's own detection loss
is added too (DFF trains N_task on keyframes as well: they are the i = k pairs), so every
sample supervises N_task twice and F once. F and N_task train end to end; N_feat stays frozen.

Ground-truth motion (optional, ``flow_supervision > 0``). The synthetic generator knows where
every object moves: an object visible in both frames has the same track id, so the
displacement of its box centre from frame i to frame k is its true flow. Feature cells whose
centre lies inside an object's box in frame i are supervised with that displacement (in
cells, smooth L1, weight ``flow_supervision``); the background has no target (camera motion
is not in the annotations) and is learnt from the detection loss alone. DFF pretrains F on
Flying Chairs; this is the benchmark's analogue, applied during training rather than before.

Flips (horizontal and vertical) augment the pairs; N_feat runs on the flipped frames, so
the features always match the pixels.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from gistgym.backbones.dff import DeepFeatureFlow, DFFCosts, dff_costs, keyframe_positions, save_dff, speedup_fixed
from gistgym.backbones.ssdlite import Detections, build_targets, frame_detection_loss
from gistgym.backbones.weights import load_detector
from gistgym.errors import ConfigError
from gistgym.metrics import detection_map50
from gistgym.videos.dataset import VideoRecord, load_dataset
from gistgym.videos.synthetic import FrameAnnotation


@dataclass(frozen=True)
class DFFTrainConfig:
    """Settings of ``gistgym backbones train-dff``."""

    videos: str = "data/bench"
    """Dataset folder (the train split is used)."""
    detector: str = ""
    """Interleaved detector weights whose heavy extractor becomes N_feat (empty = the shipped ones)."""
    out: str = "gistgym/weights/dff.pt"
    """Where to write the DFF weights (a JSON sidecar is written beside them)."""
    seed: int = 0
    """Seed of the initialisation and the pair sampling."""
    iterations: int = 5000
    """Optimizer steps."""
    batch_pairs: int = 32
    """Frame pairs per step."""
    max_distance: int = 9
    """Largest i - k of a training pair (DFF: 9)."""
    lr: float = 2e-3
    """Peak learning rate (AdamW, linear warm-up then cosine decay)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup: int = 100
    """Warm-up steps."""
    flow_supervision: float = 1.0
    """Weight of the ground-truth object-motion loss on F (0 = end-to-end detection loss only)."""
    max_videos: int = 0
    """Use only the first N training videos (0 = all)."""
    threads: int = 1
    """torch threads (1 is fastest on a loaded 2-core machine)."""


class PairSampler:
    """Random (keyframe, frame) pairs with their annotations from one split, held in memory.

    Args:
        records: Videos of the split.
        rng: Source of every random choice.
        progress: Show a decode progress bar.
    """

    def __init__(self, records: Sequence[VideoRecord], rng: np.random.Generator, progress: bool = True) -> None:
        if not records:
            raise ConfigError("no videos to sample training pairs from")
        self.frames = [r.read_frames() for r in tqdm(records, desc="decode", disable=not progress, unit="video")]
        self.annotations = [r.annotations for r in records]
        self.rng = rng
        self.image_size = records[0].height

    def sample(
        self, batch: int, max_distance: int
    ) -> tuple[Tensor, Tensor, list[FrameAnnotation], list[FrameAnnotation]]:
        """``batch`` pairs: key frames, current frames (B, H, W, 3) uint8 and both frames' annotations.

        The distance i - k is uniform in ``[1, max_distance]`` (the keyframe's own loss is
        the ``i = k`` case), clipped to the video's length.
        """
        keys: list[np.ndarray] = []
        curs: list[np.ndarray] = []
        key_ann: list[FrameAnnotation] = []
        cur_ann: list[FrameAnnotation] = []
        size = self.image_size
        for _ in range(batch):
            v = int(self.rng.integers(len(self.frames)))
            T = len(self.frames[v])
            d = min(int(self.rng.integers(1, max_distance + 1)), T - 1)
            k = int(self.rng.integers(T - d))
            fx, fy = bool(self.rng.random() < 0.5), bool(self.rng.random() < 0.5)
            for t, frames_out, ann_out in ((k, keys, key_ann), (k + d, curs, cur_ann)):
                img = self.frames[v][t]
                a = self.annotations[v][t]
                boxes = a.boxes.copy()
                if fx:
                    img = img[:, ::-1]
                    boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
                if fy:
                    img = img[::-1]
                    boxes[:, [1, 3]] = size - boxes[:, [3, 1]]
                frames_out.append(np.ascontiguousarray(img))
                ann_out.append(dataclasses.replace(a, boxes=boxes))
        return torch.from_numpy(np.stack(keys)), torch.from_numpy(np.stack(curs)), key_ann, cur_ann


def object_motion_targets(
    key_ann: Sequence[FrameAnnotation], cur_ann: Sequence[FrameAnnotation], grid: int, cell: float
) -> tuple[Tensor, Tensor]:
    """Ground-truth flow (in cells) from frame i to frame k on the cells covered by objects.

    For every object of frame i whose track id is also in frame k, the cells whose centre
    lies inside its box in frame i get the displacement of the box centre (k minus i).
    Where boxes overlap, the later object wins (an approximation: occlusion order is not
    annotated).

    Returns:
        ``(flow, mask)``: (B, 2, g, g) float32 targets and (B, g, g) bool cells that have one.
    """
    B = len(cur_ann)
    flow = torch.zeros(B, 2, grid, grid)
    mask = torch.zeros(B, grid, grid, dtype=torch.bool)
    centres = (np.arange(grid) + 0.5) * cell
    for b, (ka, ca) in enumerate(zip(key_ann, cur_ann, strict=True)):
        key_by_id = {int(t): box for t, box in zip(ka.track_ids, ka.boxes, strict=True)}
        for tid, box in zip(ca.track_ids, ca.boxes, strict=True):
            kb = key_by_id.get(int(tid))
            if kb is None:
                continue
            cols = (centres >= box[0]) & (centres < box[2])
            rows = (centres >= box[1]) & (centres < box[3])
            inside = torch.from_numpy(rows[:, None] & cols[None, :])
            if not inside.any():
                continue
            dx = ((kb[0] + kb[2]) - (box[0] + box[2])) / 2 / cell
            dy = ((kb[1] + kb[3]) - (box[1] + box[3])) / 2 / cell
            flow[b, 0][inside] = float(dx)
            flow[b, 1][inside] = float(dy)
            mask[b] |= inside
    return flow, mask


def _targets(model: DeepFeatureFlow, ann: Sequence[FrameAnnotation]) -> Any:
    return build_targets(
        [torch.from_numpy(np.asarray(a.boxes, np.float32)).reshape(-1, 4) for a in ann],
        [torch.from_numpy(np.asarray(a.labels, np.int64)) for a in ann],
        model.anchors,
    )


def pair_losses(
    model: DeepFeatureFlow,
    key_frames: Tensor,
    frames: Tensor,
    key_ann: Sequence[FrameAnnotation],
    cur_ann: Sequence[FrameAnnotation],
) -> dict[str, Tensor]:
    """Mean keyframe loss, propagated-frame loss and object-motion flow loss of a batch of pairs."""
    key_images = model.preprocess(key_frames)
    images = model.preprocess(frames)
    with torch.no_grad():
        key_feats = model.features(key_images)
    warped, fo = model.propagate(key_feats, key_images, images)
    loc_k, conf_k = model.task(key_feats)
    loc_i, conf_i = model.task(warped)
    key_loss = frame_detection_loss(loc_k, conf_k, _targets(model, key_ann)).mean()
    prop_loss = frame_detection_loss(loc_i, conf_i, _targets(model, cur_ann)).mean()
    cfg = model.config
    target, mask = object_motion_targets(key_ann, cur_ann, cfg.grid, cfg.cell_pixels)
    per_cell = torch.nn.functional.smooth_l1_loss(fo.flow, target, reduction="none").sum(1)
    flow_loss = (per_cell * mask).sum() / mask.sum().clamp(min=1)
    return {"key": key_loss, "prop": prop_loss, "flow": flow_loss}


def train_dff(cfg: DFFTrainConfig, *, progress: bool = True, command: str = "") -> dict[str, Any]:
    """Train F and N_task end to end and write the DFF weights; returns the training summary."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_distance < 1:
        raise ConfigError(f"max_distance must be >= 1, got {cfg.max_distance}")
    detector, det_meta = load_detector(cfg.detector or None)
    ds = load_dataset(cfg.videos)
    records = ds.split("train")
    if cfg.max_videos:
        records = records[: cfg.max_videos]
    sampler = PairSampler(records, rng, progress)
    model = DeepFeatureFlow.from_detector(detector)
    model.train()
    params = [p for n, p in model.named_parameters() if not n.startswith("feature_net.")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * p))

    start = time.time()
    history: dict[str, list[float]] = {"key": [], "prop": [], "flow": []}
    bar = tqdm(range(cfg.iterations), desc="train dff", disable=not progress, unit="it")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        keys, curs, key_ann, cur_ann = sampler.sample(cfg.batch_pairs, cfg.max_distance)
        losses = pair_losses(model, keys, curs, key_ann, cur_ann)
        loss = losses["key"] + losses["prop"] + cfg.flow_supervision * losses["flow"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        for k, v in losses.items():
            history[k].append(float(v.detach()))
        if step % 20 == 0:
            bar.set_postfix({k: f"{np.mean(v[-50:]):.3f}" for k, v in history.items()})
    minutes = (time.time() - start) / 60
    model.eval()
    summary = {
        "train_config": dataclasses.asdict(cfg),
        "train_minutes": round(minutes, 2),
        "final_losses": {k: float(np.mean(v[-100:])) for k, v in history.items()},
        "command": command,
        "detector_sha256": det_meta.get("sha256"),
        "dataset_generator": ds.generator,
        "costs": dff_costs(model, measure=False).to_dict(),
    }
    digest = save_dff(Path(cfg.out), model, summary)
    summary["sha256"] = digest
    return summary


# --- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def video_detections(
    model: DeepFeatureFlow, frames: np.ndarray, key_duration: int, chunk: int = 128
) -> tuple[list[Detections], np.ndarray]:
    """Detections of every frame of one video under a fixed key duration, and the per-frame losses' inputs.

    Args:
        model: The DFF model.
        frames: (T, H, W, 3) uint8.
        key_duration: l (1 = every frame is a keyframe).
        chunk: Frames per forward pass.

    Returns:
        Per-frame detections and the (T,) keyframe index of every frame.
    """
    T = len(frames)
    keys = keyframe_positions(T, key_duration)
    images = model.preprocess(torch.from_numpy(np.ascontiguousarray(frames)))
    dets: list[Detections] = []
    for s in range(0, T, chunk):
        idx = torch.arange(s, min(s + chunk, T))
        kidx = keys[idx]
        key_feats = model.features(images[kidx])
        warped, _ = model.propagate(key_feats, images[kidx], images[idx])
        is_key = (kidx == idx).view(-1, 1, 1, 1)
        feats = torch.where(is_key, key_feats, warped)
        loc, conf = model.task(feats)
        dets.extend(model.detect(loc, conf))
    return dets, keys.numpy()


def evaluate_key_durations(
    model: DeepFeatureFlow,
    videos: str | Path,
    split: str,
    durations: Sequence[int] = (1, 5, 10, 20),
    *,
    max_videos: int | None = None,
    costs: DFFCosts | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """mAP@0.5 of fixed key durations on a split (keys ``key=L``; ``key=1`` is every frame).

    Returns:
        ``{"key=L": {"map50", "key_fraction", "gflops_per_frame", "speedup_eq7", "speedup_counted"}}``.
    """
    ds = load_dataset(videos)
    records = ds.split(split)[: max_videos or None]
    if not records:
        raise ConfigError(f"no videos in split {split!r} of {videos}")
    costs = costs or dff_costs(model, measure=False)
    gts: list[FrameAnnotation] = []
    per_l: dict[int, list[Detections]] = {l_: [] for l_ in durations}
    key_counts = dict.fromkeys(durations, 0)
    for r in tqdm(records, desc=f"eval dff {split}", disable=not progress, unit="video"):
        frames = r.read_frames()
        gts.extend(r.annotations)
        for l_ in durations:
            dets, keys = video_detections(model, frames, l_)
            per_l[l_].extend(dets)
            key_counts[l_] += int((keys == np.arange(len(keys))).sum())
    report: dict[str, dict[str, float]] = {}
    for l_ in durations:
        frac = key_counts[l_] / len(gts)
        mean_flops = frac * costs.key_flops + (1 - frac) * costs.propagate_flops
        report[f"key={l_}"] = {
            "map50": detection_map50(gts, per_l[l_], len(ds.classes)),
            "key_fraction": frac,
            "gflops_per_frame": mean_flops / 1e9,
            "speedup_eq7": speedup_fixed(costs.cost_ratio, l_),
            "speedup_counted": costs.key_flops / mean_flops,
        }
    return report
