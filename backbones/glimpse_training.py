"""Training the glimpse models (AdaFrame's frozen classifier) on the untrimmed benchmark.

The extractors are frozen copies of the interleaved detector's heavy and light extractors;
only :class:`~gistgym.backbones.glimpse.GlimpseClassifier` trains, on the pooled heavy
features of the train split's frames, with random glimpse sequences (cross-entropy after
every prefix). ``gistgym backbones train-glimpse`` writes the weights and a sidecar that
records the command, the val accuracy after 1, 3 and ``glimpses`` random glimpses, and the
accuracy of average pooling over all frames.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gistgym.backbones.glimpse import (
    ClassifierTrainConfig,
    GlimpseModels,
    classifier_accuracy,
    glimpse_costs,
    save_glimpse,
    train_glimpse_classifier,
)
from gistgym.backbones.weights import load_detector
from gistgym.errors import ConfigError
from gistgym.videos.dataset import load_dataset


@dataclass(frozen=True)
class GlimpseTrainConfig:
    """Settings of ``gistgym backbones train-glimpse``."""

    videos: str = "data/glimpse"
    """Untrimmed dataset folder (`gistgym videos make --kind untrimmed`); train split trains, val reports."""
    detector: str = ""
    """Interleaved detector weights whose heavy and light extractors are copied (empty = the shipped ones)."""
    out: str = "gistgym/weights/glimpse.pt"
    """Where to write the weights (a JSON sidecar is written beside them)."""
    seed: int = 0
    """Seed of the initialisation and the glimpse sampling."""
    steps: int = 4000
    """Optimizer steps of the classifier."""
    glimpses: int = 10
    """Random glimpses per training sequence."""
    hidden: int = 128
    """LSTM width of the classifier."""
    memory_frames: int = 16
    """T_d: frames of the global memory."""
    max_videos: int = 0
    """Use only the first N videos of each split (0 = all)."""


def split_features(
    model: GlimpseModels, videos: str | Path, split: str, *, max_videos: int = 0, progress: bool = True
) -> tuple[list[np.ndarray], np.ndarray]:
    """Pooled heavy features of every frame of every video of ``split`` and the video labels."""
    records = load_dataset(videos).split(split)
    if max_videos:
        records = records[:max_videos]
    if not records:
        raise ConfigError(f"{videos}: split {split!r} has no videos")
    feats, labels = [], []
    for record in tqdm(records, desc=f"frame features ({split})", disable=not progress, unit="video"):
        feats.append(model.frame_features(record.read_frames()))
        labels.append(record.label)
    y = np.asarray(labels, dtype=np.int64)
    if (y < 0).any():
        raise ConfigError(f"{videos}: every video of split {split!r} needs a label (found -1)")
    return feats, y


def avgpool_accuracy(model: GlimpseModels, features: list[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 of averaging the one-frame predictions over every frame of each video."""
    correct = 0
    with torch.no_grad():
        for f, y in zip(features, labels, strict=True):
            logits, _ = model.classifier.step(torch.from_numpy(f), model.classifier.initial_state(len(f)))
            correct += int(torch.softmax(logits, 1).mean(0).argmax()) == int(y)
    return correct / len(features)


def train_glimpse(cfg: GlimpseTrainConfig, *, progress: bool = True, command: str = "") -> dict[str, Any]:
    """Train the frozen classifier and write the glimpse weights; returns the summary stored in the sidecar."""
    torch.manual_seed(cfg.seed)
    detector, meta = load_detector(cfg.detector or None)
    model = GlimpseModels.from_detector(detector, hidden=cfg.hidden, memory_frames=cfg.memory_frames)
    train_x, train_y = split_features(model, cfg.videos, "train", max_videos=cfg.max_videos, progress=progress)
    val_x, val_y = split_features(model, cfg.videos, "val", max_videos=cfg.max_videos, progress=progress)
    tcfg = ClassifierTrainConfig(glimpses=cfg.glimpses, steps=cfg.steps, seed=cfg.seed)
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc="classifier", disable=not progress, unit="step")

    def report(step: int, loss: float) -> None:
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    losses = train_glimpse_classifier(model.classifier, train_x, train_y, tcfg, progress=report)
    bar.close()
    model.classifier.requires_grad_(False)
    summary: dict[str, Any] = {
        "command": command,
        "detector_sha256": meta.get("sha256"),
        "train": {**asdict(tcfg), "videos": len(train_x)},
        "train_minutes": round((time.perf_counter() - start) / 60, 2),
        "final_loss": float(np.mean(losses[-100:])),
        "val_accuracy": {
            f"random@{k}": classifier_accuracy(model.classifier, val_x, val_y, k) for k in (1, 3, cfg.glimpses)
        },
        "val_accuracy_avgpool_all": avgpool_accuracy(model, val_x, val_y),
        "costs": glimpse_costs(model, measure=False).to_dict(),
    }
    summary["sha256"] = save_glimpse(Path(cfg.out), model, summary)
    return summary
