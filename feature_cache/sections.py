"""What each cache section computes per video, and what it embeds once per file.

A section is one environment's view of the frozen video model. The registry
:data:`SECTIONS` is a plain dict; later issues add ``keyframe`` (Deep Feature Flow) and
``glimpse`` (AdaFrame) as new entries without changing the schema version, and readers
accept files with sections they do not know.

``interleave`` (*Looking Fast and Slow*): for every extractor of the detector, its
projected features ``(T, C, g, g)`` as fed to the memory, stored float16. Extractors
without temporal shift run frame by frame (in batches of up to ``FEATURE_BATCH`` frames);
an extractor with TSM shift runs as a stream over the video's consecutive frames (both via
:func:`gistgym.backbones.detector.extract_video_features`, as evaluation does), so its
features are exact for an agent that keeps running it and approximate if it is mixed with
other extractors. The
section also embeds the frozen memory and head (``state_dict`` tensors) and the detector
configuration, so :func:`interleave_modules` rebuilds them from the cache file alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gistgym.backbones.convlstm import BottleneckConvLSTM
from gistgym.backbones.detector import DetectorConfig, InterleavedDetector, extract_video_features
from gistgym.backbones.ssdlite import SSDLiteHead
from gistgym.errors import ConfigError
from gistgym.feature_cache import schema
from gistgym.feature_cache.hdf5 import EmbeddedArrays

FEATURE_BATCH = 256
"""Frames per forward pass of a per-frame extractor (as in ``extract_all``)."""
FEATURE_DTYPE = np.float16


@dataclass(frozen=True)
class Section:
    """One section of the cache.

    Attributes:
        name: Group name in the file.
        summary: One line for ``gistgym cache info``.
        compute: ``(model, frames (T, H, W, 3) uint8) -> {name: array}``, the per-video
            arrays, stored under ``/videos/<id>/<section>/<name>``.
        embed: ``model -> EmbeddedArrays``, stored once under ``/sections/<section>``.
    """

    name: str
    summary: str
    compute: Callable[[InterleavedDetector, np.ndarray], dict[str, np.ndarray]]
    embed: Callable[[InterleavedDetector], EmbeddedArrays]


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"extractor name {name!r} cannot be an HDF5 dataset name (no '/', not empty)")
    return name


@torch.no_grad()
def interleave_features(model: InterleavedDetector, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Projected features of every extractor on one video, float16.

    Args:
        model: The frozen detector.
        frames: (T, H, W, 3) uint8 RGB.

    Returns:
        ``{extractor name: (T, C, g, g) float16}`` in action order.
    """
    video = torch.from_numpy(np.ascontiguousarray(frames))[None]
    feats = extract_video_features(model, video, FEATURE_BATCH)
    return {
        _check_name(name): f[0].numpy().astype(FEATURE_DTYPE)
        for name, f in zip(model.extractor_names, feats, strict=True)
    }


def _state_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def interleave_embedded(model: InterleavedDetector) -> EmbeddedArrays:
    """The frozen memory and head tensors plus the detector configuration."""
    g = model.grid
    return EmbeddedArrays(
        attrs={
            schema.INTERLEAVE_DETECTOR_CONFIG: model.config.to_dict(),
            schema.INTERLEAVE_EXTRACTORS: list(model.extractor_names),
            schema.INTERLEAVE_FEATURE_SHAPE: [model.config.memory_channels, g, g],
        },
        tensors={
            schema.INTERLEAVE_MEMORY: _state_arrays(model.memory),
            schema.INTERLEAVE_HEAD: _state_arrays(model.head),
        },
    )


SECTIONS: dict[str, Section] = {
    schema.SECTION_INTERLEAVE: Section(
        name=schema.SECTION_INTERLEAVE,
        summary="projected features of every extractor + the frozen ConvLSTM memory and SSDLite head",
        compute=interleave_features,
        embed=interleave_embedded,
    ),
}
"""Every section this gistgym can build, by name."""


def list_sections() -> tuple[str, ...]:
    """Names of the sections this gistgym can build (the default of ``cache build``)."""
    return tuple(SECTIONS)


def get_section(name: str) -> Section:
    """The section called ``name``.

    Raises:
        ConfigError: No such section.
    """
    if name not in SECTIONS:
        raise ConfigError(f"unknown cache section {name!r}; this gistgym builds: {', '.join(SECTIONS)}")
    return SECTIONS[name]


@dataclass(frozen=True)
class InterleaveModules:
    """The frozen modules an ``Interleave`` environment runs on the cached features."""

    config: DetectorConfig
    extractor_names: tuple[str, ...]
    """Action order: index 0 is the heavy extractor."""
    memory: BottleneckConvLSTM
    head: SSDLiteHead


def interleave_modules(attrs: Mapping[str, Any], tensors: Mapping[str, Mapping[str, np.ndarray]]) -> InterleaveModules:
    """Rebuild the frozen memory and head of an ``interleave`` section.

    Args:
        attrs: The section's attributes (JSON already decoded), e.g.
            ``FeatureCache.section("interleave").attrs``.
        tensors: Its tensors, ``{"memory": {...}, "head": {...}}``.

    Returns:
        Eval-mode modules with gradients off, equal to the ones the cache was built with.
    """
    config = DetectorConfig.from_dict(dict(attrs[schema.INTERLEAVE_DETECTOR_CONFIG]))
    memory = BottleneckConvLSTM(
        config.memory_channels, config.hidden_channels, config.bottleneck_channels, config.groups
    )
    head = SSDLiteHead(memory.out_channels, config.num_classes, config.anchors)
    for module, key in ((memory, schema.INTERLEAVE_MEMORY), (head, schema.INTERLEAVE_HEAD)):
        state = {k: torch.from_numpy(np.array(v)) for k, v in tensors[key].items()}
        module.load_state_dict(state, strict=True)
        module.eval().requires_grad_(False)
    return InterleaveModules(config, tuple(attrs[schema.INTERLEAVE_EXTRACTORS]), memory, head)
