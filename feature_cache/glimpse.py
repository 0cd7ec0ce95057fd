"""The ``glimpse`` cache section (AdaFrame) and its frozen model ``glimpse``.

Per video, what AdaFrame's agent and environment can look at, computed once::

    /videos/<id>/glimpse/frame_features    (T, F) float32   pooled heavy features of every frame
    /videos/<id>/glimpse/memory_features   (T_d, F) float32 pooled light features of the global memory
    /videos/<id>/glimpse/memory_positions  (T_d,) int64     frame index of each memory entry
    /sections/glimpse/classifier/<key>     the frozen recurrent classifier's tensors
      attrs: glimpse_config (JSON GlimpseConfig), glimpse_costs (JSON GlimpseCosts),
             feature_dim, memory_frames, position_dim

The video label is the video group's ``label`` attribute; where the class shows (the
untrimmed benchmark's ``evidence`` window) is in the ground truth's per-frame segments. The positional encoding of the
memory is not stored: :func:`gistgym.backbones.glimpse.memory_with_positions` derives it from
the positions and the video length, so the environment and every agent see the same one.

The glimpse models (role ``glimpse``, :mod:`gistgym.backbones.glimpse`) carry their own copies
of the extractors the classifier was trained on, so this section does not depend on which
interleaved detector the ``interleave`` section uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gistgym.backbones.glimpse import (
    DEFAULT_GLIMPSE_WEIGHTS,
    TRAIN_HINT,
    GlimpseClassifier,
    GlimpseConfig,
    GlimpseCosts,
    GlimpseModels,
    describe_glimpse,
    glimpse_costs,
    glimpse_from_bytes,
    memory_with_positions,
)
from gistgym.errors import CacheError
from gistgym.feature_cache.hdf5 import EmbeddedArrays
from gistgym.feature_cache.reader import FeatureCache
from gistgym.feature_cache.sections import FrozenModels, FrozenModelSpec, Section, register_section
from gistgym.videos.dataset import VideoRecord
from gistgym.videos.untrimmed import EVIDENCE

SECTION_GLIMPSE = "glimpse"
MODEL_ROLE = "glimpse"

# --- key names (per-video datasets, embedded tensors, section attributes) --------------------
FRAME_FEATURES = "frame_features"
MEMORY_FEATURES = "memory_features"
MEMORY_POSITIONS = "memory_positions"
CLASSIFIER = "classifier"
ATTR_CONFIG = "glimpse_config"
ATTR_COSTS = "glimpse_costs"
ATTR_FEATURE_DIM = "feature_dim"
ATTR_MEMORY_FRAMES = "memory_frames"
ATTR_POSITION_DIM = "position_dim"


def _models(models: FrozenModels) -> GlimpseModels:
    model = models.get(MODEL_ROLE)
    assert isinstance(model, GlimpseModels)
    return model


@torch.no_grad()
def glimpse_compute(models: FrozenModels, frames: np.ndarray, record: VideoRecord) -> dict[str, np.ndarray]:
    """The section's ``compute``: frame features, the global memory and the evidence mask of one video."""
    model = _models(models)
    memory, positions = model.memory_features(frames)
    return {FRAME_FEATURES: model.frame_features(frames), MEMORY_FEATURES: memory, MEMORY_POSITIONS: positions}


def glimpse_embedded(models: FrozenModels) -> EmbeddedArrays:
    """The frozen classifier's tensors, the configuration and the counted FLOPs."""
    model = _models(models)
    cfg = model.config
    return EmbeddedArrays(
        attrs={
            ATTR_CONFIG: cfg.to_dict(),
            ATTR_COSTS: glimpse_costs(model, measure=False).to_dict(),
            ATTR_FEATURE_DIM: cfg.feature_dim,
            ATTR_MEMORY_FRAMES: cfg.memory_frames,
            ATTR_POSITION_DIM: cfg.position_dim,
        },
        tensors={CLASSIFIER: {k: v.detach().cpu().numpy().copy() for k, v in model.classifier.state_dict().items()}},
    )


@dataclass(frozen=True)
class GlimpseVideos:
    """Every video of one split's ``glimpse`` section, in memory and padded to the longest video.

    ``frame_features[v, t]`` is zero for ``t >= num_frames[v]``.
    """

    video_ids: tuple[str, ...]
    labels: np.ndarray = field(repr=False)
    """(V,) int64 video labels."""
    num_frames: np.ndarray = field(repr=False)
    """(V,) int64."""
    frame_features: np.ndarray = field(repr=False)
    """(V, T_max, F) float32."""
    memory: np.ndarray = field(repr=False)
    """(V, T_d, F + P) float32: memory features with the positional encoding appended."""
    evidence: np.ndarray = field(repr=False)
    """(V, T_max) bool: frames the ground truth marks as the class evidence window."""

    def __repr__(self) -> str:
        return (
            f"GlimpseVideos(videos={len(self.video_ids)}, frames={self.frame_features.shape}, "
            f"memory={self.memory.shape})"
        )

    def first(self, count: int) -> GlimpseVideos:
        """The first ``count`` videos (views, no copies)."""
        keep = slice(0, int(count))
        return replace(
            self,
            video_ids=self.video_ids[keep],
            labels=self.labels[keep],
            num_frames=self.num_frames[keep],
            frame_features=self.frame_features[keep],
            memory=self.memory[keep],
            evidence=self.evidence[keep],
        )


@dataclass(frozen=True)
class GlimpseSection:
    """What a ``glimpse`` section embeds: configuration, costs, class names, the frozen classifier."""

    path: Path
    config: GlimpseConfig
    costs: GlimpseCosts
    class_names: tuple[str, ...]
    classifier: GlimpseClassifier = field(repr=False)

    def load_split(self, cache: FeatureCache, split: str) -> GlimpseVideos:
        """Read every video of ``split`` (the whole split fits in memory: a few KB per video)."""
        ids = cache.video_ids(split)
        if not ids:
            raise CacheError(cache.path, f"split {split!r} has no videos (splits: {list(cache.info.splits)})")
        episodes = [cache.load_episode(v, sections=(SECTION_GLIMPSE,)) for v in ids]
        t_max = max(int(e.num_frames) for e in episodes)
        cfg = self.config
        feats = np.zeros((len(ids), t_max, cfg.feature_dim), dtype=np.float32)
        evidence = np.zeros((len(ids), t_max), dtype=bool)
        memory = np.zeros((len(ids), cfg.memory_frames, cfg.memory_dim), dtype=np.float32)
        for i, ep in enumerate(episodes):
            arrays = ep.sections[SECTION_GLIMPSE]
            expected = {
                FRAME_FEATURES: (int(ep.num_frames), cfg.feature_dim),
                MEMORY_FEATURES: (cfg.memory_frames, cfg.feature_dim),
                MEMORY_POSITIONS: (cfg.memory_frames,),
            }
            for name, shape in expected.items():
                if name not in arrays or arrays[name].shape != shape:
                    found = arrays[name].shape if name in arrays else "missing"
                    raise CacheError(
                        cache.path,
                        f"{name} of shape {found}, expected {shape}; rebuild the cache",
                        field=f"videos/{ids[i]}/{SECTION_GLIMPSE}/{name}",
                    )
            f = arrays[FRAME_FEATURES]
            feats[i, : len(f)] = f
            evidence[i, : len(f)] = [seg == EVIDENCE for seg in ep.segments] if ep.segments else False
            memory[i] = memory_with_positions(
                arrays[MEMORY_FEATURES], arrays[MEMORY_POSITIONS], int(ep.num_frames), cfg.position_dim
            )
        labels = np.array([e.label for e in episodes], dtype=np.int64)
        if (labels < 0).any() or (labels >= cfg.num_classes).any():
            bad = ids[int(np.flatnonzero((labels < 0) | (labels >= cfg.num_classes))[0])]
            raise CacheError(
                cache.path,
                f"video label outside 0..{cfg.num_classes - 1}; the glimpse section needs labelled videos",
                field=f"videos/{bad}.label",
            )
        return GlimpseVideos(
            video_ids=ids,
            labels=labels,
            num_frames=np.array([e.num_frames for e in episodes], dtype=np.int64),
            frame_features=feats,
            memory=memory,
            evidence=evidence,
        )


def read_glimpse_section(cache: FeatureCache) -> GlimpseSection:
    """The embedded configuration, costs and frozen classifier of a cache's ``glimpse`` section.

    Raises:
        CacheSectionError: The cache has no ``glimpse`` section.
        CacheError: Its attributes or tensors are malformed.
    """
    data = cache.section(SECTION_GLIMPSE)
    where = f"sections/{SECTION_GLIMPSE}"
    try:
        cfg = GlimpseConfig.from_dict(data.attrs[ATTR_CONFIG])
        costs = GlimpseCosts.from_dict(data.attrs[ATTR_COSTS])
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(
            cache.path, f"bad glimpse configuration or costs: {exc!r}; rebuild the cache", field=where
        ) from exc
    classifier = GlimpseClassifier(cfg.feature_dim, cfg.hidden, cfg.num_classes)
    try:
        state = {k: torch.from_numpy(np.array(v)) for k, v in data.tensors[CLASSIFIER].items()}
        classifier.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CacheError(
            cache.path, f"classifier tensors do not fit its configuration: {exc}", field=f"{where}/{CLASSIFIER}"
        ) from exc
    classifier.eval().requires_grad_(False)
    return GlimpseSection(cache.path, cfg, costs, tuple(cache.info.dataset.get("classes", ())), classifier)


def _costs(model: torch.nn.Module, measure: bool) -> dict[str, Any]:
    assert isinstance(model, GlimpseModels)
    return glimpse_costs(model, measure=measure).to_dict()


def _load(data: bytes, sidecar: Mapping[str, Any], path: Path) -> torch.nn.Module:
    return glimpse_from_bytes(data, sidecar, path)


GLIMPSE_MODEL = FrozenModelSpec(
    role=MODEL_ROLE,
    summary="AdaFrame: heavy frame features, light global-memory features, frozen recurrent classifier",
    default_weights=lambda: DEFAULT_GLIMPSE_WEIGHTS,
    train_hint=TRAIN_HINT,
    load=_load,
    describe=describe_glimpse,
    costs=_costs,
)

GLIMPSE_SECTION = Section(
    name=SECTION_GLIMPSE,
    summary="pooled heavy features of every frame, the light global memory, the frozen glimpse classifier",
    compute=glimpse_compute,
    embed=glimpse_embedded,
    models=(MODEL_ROLE,),
    default_for="untrimmed",
)

register_section(GLIMPSE_SECTION, GLIMPSE_MODEL)
