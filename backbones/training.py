"""Training recipe of the interleaved detector (as in *Looking Fast and Slow*, Sec. 4).

The memory is unrolled over clips of ``clip_len`` frames and every step runs a randomly
chosen extractor, so the memory learns to fuse any mix of heavy and light features. Clips
come in four kinds, drawn per clip:

* ``interleaved``: the heavy extractor on frame 0 (what inference does), then at every
  step the heavy one with probability ``q ~ U(0, max_heavy_prob)``, otherwise a light one
  (drawn at every step or once per clip, see ``light_choice``);
  so gaps of up to ``clip_len - 1`` light frames are seen, as a fixed tau or an RL policy
  will produce;
* ``heavy``: heavy on every frame (the heavy-only detector);
* ``light`` / ``light+shift``: one light extractor on every frame from a zero memory
  (the light-only detectors; with skipped light updates they never write the memory);
* ``periodic``: the heavy extractor on frame 0 and then every ``P`` frames, ``P`` drawn
  uniformly from ``2..clip_len`` per clip (a fixed tau with a random phase-free period, the
  structure a fixed schedule or a scheduler that skips idle stretches produces: long runs
  of light frames after one heavy frame).

Clips are drawn from the train splits of one or more datasets (``videos``), a video with
probability proportional to its number of clip start positions, so every training frame
is equally likely whatever the dataset's video length (long ``streams`` videos and short
``detection`` clips train one detector).

The state-update rule (``skip_light_updates``) used here is stored with the weights and
is the one inference uses. The light+shift extractor's temporal-shift buffer holds the
last frame that extractor ran on (zeros before its first run), as online at inference.
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

from gistgym.backbones.detector import DetectorConfig, InterleavedDetector, default_detector_config
from gistgym.backbones.ssdlite import build_targets, frame_detection_loss
from gistgym.backbones.weights import load_detector, save_detector, sha256_file
from gistgym.errors import ConfigError
from gistgym.videos.dataset import VideoRecord, load_dataset


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``gistgym backbones train``."""

    videos: tuple[str, ...] = ("data/bench",)
    """Dataset folders (the train split of each is used; clips are drawn uniformly over their frames)."""
    out: str = "gistgym/weights/interleaved_detector.pt"
    """Where to write the weights (a JSON sidecar is written beside them)."""
    seed: int = 0
    """Seed of the initialisation, clip sampling and schedules."""
    iterations: int = 2400
    """Optimizer steps."""
    batch_clips: int = 12
    """Clips per step."""
    clip_len: int = 16
    """Frames per clip (the LSTM unroll length)."""
    lr: float = 3e-3
    """Peak learning rate (AdamW, linear warm-up then cosine decay)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup: int = 100
    """Warm-up steps."""
    max_heavy_prob: float = 0.3
    """Upper bound of the per-step heavy probability in interleaved clips."""
    clip_mix: tuple[float, ...] = (0.5, 0.25, 0.15, 0.10, 0.0)
    """Probabilities of interleaved, heavy, light, light+shift and periodic clips (a 4-tuple: no periodic clips)."""
    skip_light_updates: bool = True
    """Light steps read but do not write the memory (the paper's default)."""
    light_choice: str = "per-step"
    """In interleaved clips, draw the light extractor once per clip (``per-clip``: a shift
    extractor's buffer then holds the previous light frame, as in a fixed schedule) or at
    every light step (``per-step``, the paper's fully random choice)."""
    threads: int = 1
    """torch threads (1 is fastest on a loaded 2-core machine)."""
    init: str = ""
    """Fine-tune: start from these detector weights (.pt with its .json sidecar; its architecture is kept)."""

    def __post_init__(self) -> None:
        if isinstance(self.videos, str | Path):  # one folder given as a plain string
            object.__setattr__(self, "videos", (str(self.videos),))


class ClipSampler:
    """Random training clips (frames and boxes) from the videos of one split of one or more datasets, in memory.

    A clip starts at a uniformly drawn position among every clip start of every video, so
    each frame is equally likely whatever its video's length.

    Raises:
        ConfigError: No video is long enough, or the datasets disagree on classes or frame size.
    """

    def __init__(
        self,
        videos_dirs: str | Path | Sequence[str | Path],
        split: str,
        clip_len: int,
        rng: np.random.Generator,
        progress: bool = True,
    ) -> None:
        dirs = [videos_dirs] if isinstance(videos_dirs, str | Path) else list(videos_dirs)
        if not dirs:
            raise ConfigError("--videos names no dataset folder")
        records: list[VideoRecord] = []
        classes: tuple[str, ...] | None = None
        for d in dirs:
            ds = load_dataset(d)
            if classes is not None and tuple(ds.classes) != classes:
                raise ConfigError(f"dataset {d} has classes {list(ds.classes)}, the first one {list(classes)}")
            classes = tuple(ds.classes)
            records += [r for r in ds.split(split) if r.num_frames >= clip_len]
        if not records:
            where = ", ".join(map(str, dirs))
            raise ConfigError(f"no {split} video in {where} has at least clip_len={clip_len} frames")
        sizes = {(r.height, r.width) for r in records}
        if len(sizes) != 1:
            raise ConfigError(f"the datasets' frame sizes differ: {sorted(sizes)}; train on one frame size")
        self.frames = [
            r.read_frames() for r in tqdm(records, desc=f"decode {split}", disable=not progress, unit="video")
        ]
        self.boxes = [[torch.from_numpy(a.boxes) for a in r.annotations] for r in records]
        self.labels = [[torch.from_numpy(a.labels) for a in r.annotations] for r in records]
        self.clip_len = clip_len
        self.rng = rng
        assert classes is not None
        self.num_classes = len(classes)
        self.image_size = records[0].height
        starts = np.array([len(f) - clip_len + 1 for f in self.frames], dtype=np.float64)
        self._video_p = starts / starts.sum()

    def sample(self, batch: int) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """(B, T, H, W, 3) uint8 frames and the B*T boxes/labels (time-major within a clip)."""
        frames, boxes, labels = [], [], []
        size = self.image_size
        for _ in range(batch):
            v = int(self.rng.choice(len(self.frames), p=self._video_p))
            t0 = int(self.rng.integers(len(self.frames[v]) - self.clip_len + 1))
            clip = self.frames[v][t0 : t0 + self.clip_len]
            flip_x, flip_y = bool(self.rng.random() < 0.5), bool(self.rng.random() < 0.5)
            # flips keep every class (the textures are flip-symmetric); 90° turns would not
            if flip_x:
                clip = clip[:, :, ::-1]
            if flip_y:
                clip = clip[:, ::-1]
            frames.append(np.ascontiguousarray(clip))
            for t in range(t0, t0 + self.clip_len):
                b = self.boxes[v][t].clone()
                if flip_x:
                    b[:, [0, 2]] = size - b[:, [2, 0]]
                if flip_y:
                    b[:, [1, 3]] = size - b[:, [3, 1]]
                boxes.append(b)
                labels.append(self.labels[v][t])
        return torch.from_numpy(np.stack(frames)), boxes, labels


def sample_schedules(
    batch: int, clip_len: int, num_extractors: int, cfg: TrainConfig, rng: np.random.Generator
) -> np.ndarray:
    """Extractor index per (clip, step), following the clip mix of the module docstring."""
    mix = np.zeros(5)
    mix[: len(cfg.clip_mix)] = cfg.clip_mix
    if len(cfg.clip_mix) not in (4, 5) or (mix < 0).any() or mix.sum() <= 0:
        raise ConfigError(f"clip_mix must be 4 or 5 non-negative weights with a positive sum, got {cfg.clip_mix}")
    kinds = rng.choice(5, size=batch, p=mix / mix.sum())
    actions = np.zeros((batch, clip_len), dtype=np.int64)
    lights = np.arange(1, num_extractors)
    if cfg.light_choice not in ("per-clip", "per-step"):
        raise ConfigError(f"light_choice must be 'per-clip' or 'per-step', got {cfg.light_choice!r}")
    for b, kind in enumerate(kinds):
        if kind == 0:
            q = rng.uniform(0.0, cfg.max_heavy_prob)
            heavy = rng.random(clip_len) < q
            light = rng.choice(lights, size=clip_len if cfg.light_choice == "per-step" else 1)
            actions[b] = np.where(heavy, 0, light)
            actions[b, 0] = 0
        elif kind == 1:
            actions[b] = 0
        elif kind == 4:
            period = int(rng.integers(2, max(2, clip_len) + 1))
            actions[b] = np.where(np.arange(clip_len) % period == 0, 0, rng.choice(lights))
        else:
            actions[b] = 1 if kind == 2 or num_extractors < 3 else 2
    return actions


def unrolled_loss(
    model: InterleavedDetector, frames: Tensor, actions: Tensor, boxes: list[Tensor], labels: list[Tensor]
) -> Tensor:
    """Mean per-frame detection loss of clips run with the given extractor choices.

    Every extractor runs once, batched, on exactly the frames that chose it (a shifting
    extractor once per time step, carrying its buffers), then the memory is unrolled with
    the per-sample write rule; the result equals stepping :class:`InterleavedDetector`.
    """
    B, T = actions.shape
    images = model.preprocess(frames.reshape(B * T, *frames.shape[2:])).view(B, T, 3, frames.shape[2], frames.shape[3])
    g, C = model.grid, model.config.memory_channels
    feats = images.new_zeros(B, T, C, g, g)
    for i in range(len(model.extractors)):
        ext = model.extractor(i)
        chosen = actions == i
        if not chosen.any():
            continue
        if ext.uses_shift:
            # online TSM: the buffer holds the last frame this extractor ran on (zeros before),
            # exactly what InterleavedDetector.step carries at inference
            buffers: list[Tensor] | None = None
            for t in range(T):
                rows = chosen[:, t].nonzero().squeeze(1)
                if len(rows) == 0:
                    continue
                past = tuple(buf[rows] for buf in buffers) if buffers is not None else None
                f, new = model.extract(i, images[rows, t], past)
                if buffers is None:
                    buffers = [images.new_zeros(B, *nb.shape[1:]) for nb in new]
                buffers = [buf.index_put((rows,), nb) for buf, nb in zip(buffers, new, strict=True)]
                feats[rows, t] = f
        else:
            f, _ = model.extract(i, images[chosen])
            feats[chosen] = f
    anchors = model.head.anchors
    targets = build_targets(boxes, labels, anchors)
    lstm = model.memory.initial_state(B, g, g)
    locs, confs = [], []
    for t in range(T):
        out, lstm = model.memory_step(feats[:, t], lstm, model.writes_state(actions[:, t]))
        loc, conf = model.head(out)
        locs.append(loc)
        confs.append(conf)
    # boxes/labels are clip-major (b, t); stack predictions the same way
    loc_all = torch.stack(locs, dim=1).reshape(B * T, *locs[0].shape[1:])
    conf_all = torch.stack(confs, dim=1).reshape(B * T, *confs[0].shape[1:])
    return frame_detection_loss(loc_all, conf_all, targets).mean()


def train_detector(
    cfg: TrainConfig, *, progress: bool = True, detector_config: DetectorConfig | None = None, command: str = ""
) -> dict[str, Any]:
    """Train the interleaved detector and write its weights; returns the training summary."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sampler = ClipSampler(cfg.videos, "train", cfg.clip_len, rng, progress)
    if cfg.init:
        model, init_meta = load_detector(cfg.init)
        if (model.config.num_classes, model.config.image_size) != (sampler.num_classes, sampler.image_size):
            raise ConfigError(
                f"--init {cfg.init} is a detector for {model.config.num_classes} classes at {model.config.image_size} "
                f"px, the data has {sampler.num_classes} classes at {sampler.image_size} px"
            )
        if model.config.skip_light_updates != cfg.skip_light_updates:
            raise ConfigError(
                f"--init {cfg.init} was trained with skip_light_updates={model.config.skip_light_updates}; "
                "fine-tune it with the same update rule"
            )
        model.requires_grad_(True)
        init_record = {"path": cfg.init, "sha256": sha256_file(Path(cfg.init)), "command": init_meta.get("command", "")}
    else:
        init_record = None
        det_cfg = detector_config or default_detector_config(sampler.num_classes)
        det_cfg = dataclasses.replace(
            det_cfg,
            skip_light_updates=cfg.skip_light_updates,
            num_classes=sampler.num_classes,
            image_size=sampler.image_size,
        )
        model = InterleavedDetector(det_cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * p))

    start = time.time()
    history: list[float] = []
    bar = tqdm(range(cfg.iterations), desc="train detector", disable=not progress, unit="it")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        frames, boxes, labels = sampler.sample(cfg.batch_clips)
        actions = torch.from_numpy(sample_schedules(cfg.batch_clips, cfg.clip_len, len(model.extractors), cfg, rng))
        loss = unrolled_loss(model, frames, actions, boxes, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        history.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-50:]):.3f}")
    minutes = (time.time() - start) / 60
    summary = {
        "train_config": dataclasses.asdict(cfg),
        "train_minutes": round(minutes, 2),
        "final_loss": float(np.mean(history[-100:])),
        "command": command,
        "dataset_generator": [load_dataset(v).generator for v in cfg.videos],
    }
    if init_record is not None:
        summary["init"] = init_record
    digest = save_detector(Path(cfg.out), model, summary)
    summary["sha256"] = digest
    return summary
