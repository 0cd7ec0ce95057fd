"""AdaFrame's frozen video models: pooled frame features, the global memory, a recurrent classifier.

*AdaFrame* (Wu et al., 2019) looks at a video through two kinds of features:

* the **frame feature** of each frame it decides to look at: the heavy extractor on the
  full-resolution frame, pooled over space (global average and global max, so a small object
  still shows) -- :meth:`GlimpseModels.frame_features`;
* the **global memory**: the light extractor on ``T_d = 16`` uniformly sampled frames seen
  at its reduced resolution, pooled the same way, with a positional encoding of each
  frame's place in the video -- :meth:`GlimpseModels.memory_features` and
  :func:`memory_with_positions`. It is computed once per video and costs ``T_d`` light passes.

The environment pays AdaFrame's reward with a **frozen recurrent frame classifier**
(:class:`GlimpseClassifier`): an LSTM over the frame features of the glimpses in the order
they were taken, trained on random glimpse sequences (:func:`train_glimpse_classifier`) so
its prediction after any prefix is meaningful. Its prediction from one frame alone is a
frame classifier, which the average-pooling baselines use.

:class:`GlimpseModels` is self-contained: it holds its own copies of the extractors it was
trained with (from the interleaved detector), so the ``glimpse`` cache section depends on
this one weights file only.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import gistgym
from gistgym.backbones.detector import ExtractorConfig, FeatureExtractor, InterleavedDetector
from gistgym.backbones.flops import count_flops, measure_latency
from gistgym.backbones.weights import check_sidecar_model, frozen_from_bytes, read_checked_sidecar, save_weights
from gistgym.errors import ConfigError, WeightsError

DEFAULT_GLIMPSE_WEIGHTS = Path(gistgym.__file__).parent / "weights" / "glimpse.pt"
"""The shipped glimpse models (trained on the embedded untrimmed benchmark)."""

SIDECAR_MODEL = "adaframe-glimpse"
TRAIN_HINT = "gistgym backbones train-glimpse --videos data/glimpse --out gistgym/weights/glimpse.pt"


@dataclass(frozen=True)
class GlimpseConfig:
    """Everything needed to rebuild :class:`GlimpseModels` (stored with its weights)."""

    frame_extractor: ExtractorConfig
    """The heavy extractor (per glimpsed frame)."""
    memory_extractor: ExtractorConfig
    """The light extractor (global memory; it downsamples the frame itself)."""
    channels: int = 64
    """Projected width of both extractors (the detector's memory width)."""
    num_classes: int = 4
    image_size: int = 64
    memory_frames: int = 16
    """T_d: frames in the global memory, sampled uniformly."""
    position_dim: int = 16
    """Width of the sinusoidal positional encoding appended to each memory entry."""
    hidden: int = 128
    """LSTM width of the frozen classifier."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.memory_frames < 1 or self.position_dim < 2 or self.position_dim % 2:
            raise ConfigError(
                f"GlimpseConfig: memory_frames must be >= 1 and position_dim even and >= 2, "
                f"got {self.memory_frames}, {self.position_dim}"
            )

    @property
    def feature_dim(self) -> int:
        """Width of a pooled frame feature (average and max pooling concatenated)."""
        return 2 * self.channels

    @property
    def memory_dim(self) -> int:
        """Width of a memory entry with its positional encoding."""
        return 2 * self.channels + self.position_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return json.loads(json.dumps(asdict(self)))

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> GlimpseConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        for key in ("frame_extractor", "memory_extractor"):
            d[key] = ExtractorConfig(**d[key])
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return GlimpseConfig(**d)


def pool_features(features: Tensor) -> Tensor:
    """(B, C, g, g) -> (B, 2C): global average and global max over space, concatenated."""
    return torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)


def memory_positions(num_frames: int, memory_frames: int) -> np.ndarray:
    """Frame indices of the global memory: the centres of ``memory_frames`` equal parts of the video."""
    if num_frames < 1:
        raise ConfigError(f"a video needs at least one frame for the global memory, got {num_frames}")
    idx = np.floor((np.arange(memory_frames) + 0.5) * num_frames / memory_frames).astype(np.int64)
    return np.minimum(idx, num_frames - 1)


def relative_position(index: np.ndarray | int, num_frames: int) -> np.ndarray:
    """Frame index -> location in [0, 1] (the inverse of ``round(location * (T - 1))``)."""
    return np.asarray(index, dtype=np.float64) / max(num_frames - 1, 1)


def location_to_index(location: np.ndarray | float, num_frames: int | np.ndarray) -> np.ndarray:
    """AdaFrame's ``round(location * (T - 1))`` with the location clipped to [0, 1]."""
    loc = np.clip(np.asarray(location, dtype=np.float64), 0.0, 1.0)
    return np.rint(loc * (np.asarray(num_frames) - 1)).astype(np.int64)


def positional_encoding(locations: np.ndarray, dim: int) -> np.ndarray:
    """Sinusoidal encoding of locations in [0, 1]: ``[sin(pi k x), cos(pi k x)]`` for k = 1..dim/2."""
    x = np.asarray(locations, dtype=np.float64)[..., None]
    k = np.arange(1, dim // 2 + 1, dtype=np.float64)
    angles = math.pi * k * x
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def memory_with_positions(features: np.ndarray, positions: np.ndarray, num_frames: int, dim: int) -> np.ndarray:
    """The global memory as observed: (T_d, F) features with each frame's encoding appended."""
    enc = positional_encoding(relative_position(positions, num_frames), dim)
    return np.concatenate([np.asarray(features, dtype=np.float32), enc], axis=-1)


class GlimpseClassifier(nn.Module):
    """The frozen recurrent frame classifier: LayerNorm -> Linear+ReLU -> LSTMCell -> Linear.

    ``step`` consumes one glimpse; ``forward`` a whole sequence (predictions after every prefix).
    """

    def __init__(self, feature_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.embed = nn.Linear(feature_dim, hidden)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.out = nn.Linear(hidden, num_classes)
        self.hidden = hidden

    def initial_state(self, batch: int) -> tuple[Tensor, Tensor]:
        """Zero (h, c)."""
        z = torch.zeros(batch, self.hidden)
        return z, z.clone()

    def step(self, features: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Logits after one more glimpse: (B, F), state -> (B, classes), new state."""
        x = torch.relu(self.embed(self.norm(features)))
        h, c = self.cell(x, state)
        logits: Tensor = self.out(h)
        return logits, (h, c)

    def forward(self, sequence: Tensor) -> Tensor:
        """(B, K, F) glimpse features -> (B, K, classes) logits after each prefix."""
        state = self.initial_state(sequence.shape[0])
        outs = []
        for k in range(sequence.shape[1]):
            logits, state = self.step(sequence[:, k], state)
            outs.append(logits)
        return torch.stack(outs, dim=1)


class GlimpseModels(nn.Module):
    """The frame network (heavy), the memory network (light) and the frozen classifier."""

    mean: Tensor
    std: Tensor

    def __init__(self, cfg: GlimpseConfig) -> None:
        super().__init__()
        self.config = cfg
        self.frame_net = FeatureExtractor(cfg.frame_extractor, cfg.channels)
        self.memory_net = FeatureExtractor(cfg.memory_extractor, cfg.channels)
        self.classifier = GlimpseClassifier(cfg.feature_dim, cfg.hidden, cfg.num_classes)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def from_detector(detector: InterleavedDetector, *, hidden: int = 128, memory_frames: int = 16) -> GlimpseModels:
        """Glimpse models on ``detector``'s heavy (extractor 0) and light (extractor 1) extractors.

        The extractors are frozen copies; the classifier starts untrained.
        """
        dcfg = detector.config
        if len(dcfg.extractors) < 2:
            raise ConfigError("the glimpse models need a detector with a heavy and a light extractor")
        light = dcfg.extractors[1]
        cfg = GlimpseConfig(
            frame_extractor=dcfg.extractors[0],
            # the memory reads single frames: no temporal shift state
            memory_extractor=ExtractorConfig(**{**asdict(light), "shift_fraction": 0.0}),
            channels=dcfg.memory_channels,
            num_classes=dcfg.num_classes,
            image_size=dcfg.image_size,
            memory_frames=memory_frames,
            hidden=hidden,
            mean=dcfg.mean,
            std=dcfg.std,
        )
        model = GlimpseModels(cfg)
        model.frame_net.load_state_dict(copy.deepcopy(detector.extractor(0).state_dict()))
        model.memory_net.load_state_dict(copy.deepcopy(detector.extractor(1).state_dict()))
        model.frame_net.eval().requires_grad_(False)
        model.memory_net.eval().requires_grad_(False)
        return model

    def preprocess(self, frames: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) normalised float."""
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def pooled(self, net: Callable[[Tensor], Tensor], frames: np.ndarray, batch: int = 128) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, F) float32 pooled features of ``net`` (an extractor, eager or compiled)."""
        out = []
        with torch.inference_mode():
            for s in range(0, len(frames), batch):
                images = self.preprocess(torch.from_numpy(np.ascontiguousarray(frames[s : s + batch])))
                out.append(pool_features(net(images)))
        if not out:
            return np.zeros((0, self.config.feature_dim), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def frame_features(self, frames: np.ndarray, batch: int = 128) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, F) float32 pooled heavy features."""
        return self.pooled(self.frame_net, frames, batch)

    def memory_features(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The global memory of a whole video: (T_d, F) pooled light features and their (T_d,) frame indices."""
        positions = memory_positions(len(frames), self.config.memory_frames)
        return self.pooled(self.memory_net, frames[positions], len(positions)), positions


@dataclass(frozen=True)
class GlimpseCosts:
    """Counted FLOPs (and measured seconds) of one pass of each glimpse model."""

    frame_flops: int
    """Heavy extractor + pooling on one full-resolution frame."""
    memory_frame_flops: int
    """Light extractor + pooling on one memory frame."""
    classifier_step_flops: int
    memory_frames: int
    frame_seconds: float = 0.0
    memory_frame_seconds: float = 0.0

    @property
    def memory_flops(self) -> int:
        """The global memory of one video (T_d light passes)."""
        return self.memory_frames * self.memory_frame_flops

    def video_flops(self, frames_used: float, *, with_memory: bool) -> float:
        """FLOPs of looking at ``frames_used`` frames (plus the global memory if the method uses it)."""
        return frames_used * self.frame_flops + (self.memory_flops if with_memory else 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> GlimpseCosts:
        """Inverse of :meth:`to_dict`."""
        return GlimpseCosts(**{k: d[k] for k in GlimpseCosts.__dataclass_fields__ if k in d})


def glimpse_costs(model: GlimpseModels, *, measure: bool = True, repeats: int = 20) -> GlimpseCosts:
    """Count (and optionally time) one frame pass, one memory-frame pass and one classifier step."""
    cfg = model.config
    image = torch.zeros(1, 3, cfg.image_size, cfg.image_size)
    feats = torch.zeros(1, cfg.feature_dim)
    state = model.classifier.initial_state(1)

    def run_frame() -> object:
        return pool_features(model.frame_net(image))

    def run_memory() -> object:
        return pool_features(model.memory_net(image))

    def run_classifier() -> object:
        return model.classifier.step(feats, state)

    return GlimpseCosts(
        frame_flops=count_flops(run_frame),
        memory_frame_flops=count_flops(run_memory),
        classifier_step_flops=count_flops(run_classifier),
        memory_frames=cfg.memory_frames,
        frame_seconds=measure_latency(run_frame, repeats=repeats) if measure else 0.0,
        memory_frame_seconds=measure_latency(run_memory, repeats=repeats) if measure else 0.0,
    )


# --- training the frozen classifier --------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """How the frozen classifier is trained on random glimpse sequences."""

    glimpses: int = 10
    """Length of each random glimpse sequence (frames sampled without replacement, random order)."""
    steps: int = 4000
    """Optimiser steps."""
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def random_glimpses(rng: np.random.Generator, num_frames: int, count: int) -> np.ndarray:
    """``count`` distinct frame indices in random order (with repeats only if the video is shorter)."""
    if num_frames >= count:
        return rng.permutation(num_frames)[:count]
    return rng.integers(0, num_frames, size=count)


def _glimpse_batch(
    rng: np.random.Generator, features: Sequence[np.ndarray], labels: np.ndarray, size: int, glimpses: int
) -> tuple[Tensor, Tensor]:
    videos = rng.integers(0, len(features), size=size)
    seq = np.stack([features[v][random_glimpses(rng, len(features[v]), glimpses)] for v in videos])
    return torch.from_numpy(seq.astype(np.float32)), torch.from_numpy(labels[videos])


def classifier_accuracy(
    classifier: GlimpseClassifier, features: Sequence[np.ndarray], labels: np.ndarray, glimpses: int, seed: int = 0
) -> float:
    """Top-1 after ``glimpses`` random glimpses per video (one draw per video, seeded)."""
    rng = np.random.default_rng(seed)
    seq = np.stack([f[random_glimpses(rng, len(f), glimpses)] for f in features]).astype(np.float32)
    with torch.no_grad():
        logits = classifier(torch.from_numpy(seq))[:, -1]
    return float((logits.argmax(1).numpy() == labels).mean())


def train_glimpse_classifier(
    classifier: GlimpseClassifier,
    features: Sequence[np.ndarray],
    labels: np.ndarray,
    cfg: ClassifierTrainConfig,
    *,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``classifier`` in place: cross-entropy after every prefix of random glimpse sequences.

    Args:
        classifier: The classifier to train.
        features: Per training video, its (T, F) frame features.
        labels: (V,) int64 video labels.
        cfg: Training settings.
        progress: Called with (step, loss) after every step.

    Returns:
        The loss of every step.
    """
    if len(features) == 0:
        raise ConfigError("training the glimpse classifier needs at least one video")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    labels = np.asarray(labels, dtype=np.int64)
    opt = torch.optim.AdamW(classifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    classifier.train()
    losses = []
    for step in range(cfg.steps):
        seq, y = _glimpse_batch(rng, features, labels, cfg.batch_size, cfg.glimpses)
        logits = classifier(seq)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(cfg.glimpses))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    classifier.eval()
    return losses


# --- weights files -------------------------------------------------------------------------------


def save_glimpse(path: Path, model: GlimpseModels, metadata: Mapping[str, Any]) -> str:
    """Write the glimpse models' weights and JSON sidecar atomically; returns the weights' sha256."""
    return save_weights(path, model, {"model": SIDECAR_MODEL, "config": model.config.to_dict()}, metadata)


def glimpse_from_bytes(data: bytes, sidecar: Mapping[str, Any], path: Path) -> GlimpseModels:
    """Build the frozen glimpse models described by ``sidecar`` from the weights' bytes.

    Raises:
        WeightsError: Not a glimpse sidecar, a bad configuration, unreadable bytes, or
            missing or mis-shaped keys.
    """
    check_sidecar_model(sidecar, path, SIDECAR_MODEL, "glimpse-models", TRAIN_HINT)
    try:
        cfg = GlimpseConfig.from_dict(sidecar["config"])
    except (TypeError, KeyError, ValueError, ConfigError) as exc:
        raise WeightsError(Path(path).with_suffix(".json"), f"bad glimpse config: {exc}", field="config") from exc
    return frozen_from_bytes(GlimpseModels, cfg, data, path)


def load_glimpse(path: str | Path | None = None, *, check_sha256: bool = True) -> tuple[GlimpseModels, dict[str, Any]]:
    """Load glimpse weights and their sidecar (default: the shipped ones).

    Raises:
        WeightsError: Missing files, a checksum that differs from the sidecar, or bad contents.
    """
    path = Path(path) if path is not None else DEFAULT_GLIMPSE_WEIGHTS
    meta = read_checked_sidecar(path, check_sha256=check_sha256, train_command=TRAIN_HINT)
    return glimpse_from_bytes(path.read_bytes(), meta, path), meta


def describe_glimpse(model: nn.Module) -> dict[str, Any]:
    """``{"class", "config"}`` of the glimpse models (for the cache's ``modules`` attribute)."""
    assert isinstance(model, GlimpseModels)
    return {"class": f"{GlimpseModels.__module__}.{GlimpseModels.__qualname__}", "config": model.config.to_dict()}
