"""Video recognition under a frame budget on the ``glimpse`` cache: baselines and shared metrics.

Every method looks at some frames of each video of a split and outputs class probabilities;
a method is scored by video mAP (:func:`gistgym.metrics.video_map`), top-1, the average
number of distinct frames it ran the heavy extractor on, and counted GFLOPs per video
(heavy extractor per frame used, plus the global memory's ``T_d`` light passes for methods
that read it, AdaFrame and policies on ``gistgym/Glimpse-v0``).

Baselines (all with the cache's frozen classifier, :class:`~gistgym.backbones.glimpse.GlimpseClassifier`):

* ``all``: average pooling of the one-frame predictions over every frame of the video;
* ``uniform@K`` / ``random@K``: the recurrent classifier over K uniformly spaced frames
  (the centres of K equal parts) or K random distinct frames (in time order);
* ``avgpool-uniform@K`` / ``avgpool-random@K``: average pooling of the one-frame
  predictions over the same frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gistgym.backbones.glimpse import location_to_index
from gistgym.errors import ConfigError
from gistgym.feature_cache.glimpse import GlimpseSection, GlimpseVideos
from gistgym.metrics import video_map


@dataclass(frozen=True)
class GlimpseEvaluation:
    """One method on one split."""

    name: str
    probs: np.ndarray = field(repr=False)
    """(V, C) class probabilities per video."""
    labels: np.ndarray = field(repr=False)
    """(V,) true labels."""
    frames: list[np.ndarray] = field(repr=False)
    """Per video: the frame indices looked at, in the order they were looked at."""
    gflops_per_video: float
    uses_memory: bool = False
    """Whether the method read the global memory (its cost is in ``gflops_per_video``)."""
    extra: dict[str, float] = field(default_factory=dict)
    """Method-specific summary values (e.g. AdaFrame's ``mu``)."""

    @property
    def map(self) -> float:
        """Video mAP over classes."""
        return video_map(self.probs, self.labels)

    @property
    def top1(self) -> float:
        """Top-1 accuracy."""
        return float((self.probs.argmax(1) == self.labels).mean())

    @property
    def frames_used(self) -> float:
        """Average number of distinct frames the heavy extractor ran on."""
        return float(np.mean([len(np.unique(f)) for f in self.frames]))

    def summary(self) -> dict[str, float]:
        """``{map, top1, frames_used, gflops_per_video, videos, ...extra}``."""
        return {
            "map": self.map,
            "top1": self.top1,
            "frames_used": self.frames_used,
            "gflops_per_video": self.gflops_per_video,
            **self.extra,
            "videos": float(len(self.labels)),
        }


def video_gflops(section: GlimpseSection, frames: Sequence[np.ndarray], *, with_memory: bool) -> float:
    """Mean counted GFLOPs per video: the heavy extractor per distinct frame (+ the global memory)."""
    used = float(np.mean([len(np.unique(f)) for f in frames]))
    return section.costs.video_flops(used, with_memory=with_memory) / 1e9


def uniform_indices(num_frames: np.ndarray, count: int) -> np.ndarray:
    """(V, K) the centres of K equal parts of each video."""
    locations = (np.arange(count) + 0.5) / count
    return location_to_index(locations[None, :], np.asarray(num_frames)[:, None])


def random_indices(num_frames: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(V, K) K distinct random frames per video in time order (with repeats only if it is shorter)."""
    out = np.empty((len(num_frames), count), dtype=np.int64)
    for v, t in enumerate(np.asarray(num_frames)):
        pick = rng.choice(int(t), size=count, replace=int(t) < count)
        out[v] = np.sort(pick)
    return out


class GlimpseBaselines:
    """The frozen classifier over chosen frames of every video of a split."""

    def __init__(self, section: GlimpseSection, videos: GlimpseVideos) -> None:
        self.section = section
        self.videos = videos
        with torch.no_grad():
            feats = torch.from_numpy(videos.frame_features)
            v, t, f = feats.shape
            clf = section.classifier
            logits, _ = clf.step(feats.reshape(v * t, f), clf.initial_state(v * t))
            self._frame_probs = torch.softmax(logits, 1).reshape(v, t, -1).numpy()
        """(V, T_max, C) one-frame predictions of every frame."""

    def _check_count(self, count: int) -> int:
        if count < 1:
            raise ConfigError(f"a frame count must be >= 1, got {count}")
        return int(count)

    def recurrent(self, name: str, indices: np.ndarray) -> GlimpseEvaluation:
        """The recurrent classifier over ``indices`` (V, K), in that order."""
        with torch.no_grad():
            seq = np.take_along_axis(self.videos.frame_features, indices[:, :, None], axis=1)
            logits = self.section.classifier(torch.from_numpy(np.ascontiguousarray(seq)))[:, -1]
            probs = torch.softmax(logits, 1).numpy()
        frames = [row for row in indices]
        return GlimpseEvaluation(
            name, probs, self.videos.labels, frames, video_gflops(self.section, frames, with_memory=False)
        )

    def avgpool(self, name: str, frames: Sequence[np.ndarray]) -> GlimpseEvaluation:
        """Average of the one-frame predictions over each video's ``frames``."""
        probs = np.stack([self._frame_probs[v, idx].mean(0) for v, idx in enumerate(frames)])
        return GlimpseEvaluation(
            name, probs, self.videos.labels, list(frames), video_gflops(self.section, frames, with_memory=False)
        )

    def all_frames(self) -> GlimpseEvaluation:
        """``all``: average pooling over every frame."""
        return self.avgpool("all", [np.arange(int(t)) for t in self.videos.num_frames])

    def uniform(self, count: int) -> GlimpseEvaluation:
        """``uniform@K``."""
        return self.recurrent(f"uniform@{count}", uniform_indices(self.videos.num_frames, self._check_count(count)))

    def random(self, count: int, seed: int) -> GlimpseEvaluation:
        """``random@K`` (one seeded draw per video)."""
        rng = np.random.default_rng(seed)
        idx = random_indices(self.videos.num_frames, self._check_count(count), rng)
        return self.recurrent(f"random@{count}", idx)

    def avgpool_uniform(self, count: int) -> GlimpseEvaluation:
        """``avgpool-uniform@K``."""
        idx = uniform_indices(self.videos.num_frames, self._check_count(count))
        return self.avgpool(f"avgpool-uniform@{count}", list(idx))

    def avgpool_random(self, count: int, seed: int) -> GlimpseEvaluation:
        """``avgpool-random@K`` (the same frames as ``random@K`` with the same seed)."""
        rng = np.random.default_rng(seed)
        idx = random_indices(self.videos.num_frames, self._check_count(count), rng)
        return self.avgpool(f"avgpool-random@{count}", list(idx))

    def parse(self, spec: str, seed: int) -> GlimpseEvaluation:
        """A baseline by name (``all``, ``uniform@K``, ``random@K``, ``avgpool-uniform@K``, ``avgpool-random@K``).

        Raises:
            ConfigError: Not a glimpse baseline name.
        """
        if spec == "all":
            return self.all_frames()
        kind, _, count = spec.partition("@")
        makers: dict[str, Any] = {
            "uniform": self.uniform,
            "random": lambda k: self.random(k, seed),
            "avgpool-uniform": self.avgpool_uniform,
            "avgpool-random": lambda k: self.avgpool_random(k, seed),
        }
        if kind not in makers or not count.isdigit():
            raise ConfigError(
                f"unknown glimpse baseline {spec!r}; expected all, uniform@K, random@K, avgpool-uniform@K "
                "or avgpool-random@K with K a positive integer"
            )
        result: GlimpseEvaluation = makers[kind](int(count))
        return result


def is_glimpse_baseline(spec: str) -> bool:
    """Whether a ``--policies`` entry names a glimpse baseline."""
    kind, _, count = spec.partition("@")
    return spec == "all" or (kind in ("uniform", "random", "avgpool-uniform", "avgpool-random") and count.isdigit())
