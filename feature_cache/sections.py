"""What each cache section computes per video, and what it embeds once per file.

A section is one environment's view of the frozen video models. The registry
:data:`SECTIONS` is a plain dict; ``keyframe`` (Deep Feature Flow) and ``glimpse``
(AdaFrame) are added as new entries (each in its own module, registered at the bottom of
this one) without changing the schema version, and readers accept files with sections
they do not know.

Every section gets the interleaved detector (its extractors are the suite's heavy and
light feature networks) plus the extra frozen models it names in :attr:`Section.models`,
by role, from :data:`FROZEN_MODELS`: the build loads each from its weights file and JSON
sidecar (the shipped default, or ``--model-weights ROLE=PATH``), records its sha256,
configuration and costs in the file's identity, and hands them to ``compute`` and
``embed`` as :class:`FrozenModels`.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gistgym.backbones.convlstm import BottleneckConvLSTM
from gistgym.backbones.detector import DetectorConfig, InterleavedDetector, extract_video_features
from gistgym.backbones.ssdlite import SSDLiteHead
from gistgym.errors import ConfigError
from gistgym.feature_cache import schema
from gistgym.feature_cache.hdf5 import EmbeddedArrays
from gistgym.feature_cache.reader import SectionData, register_section_check
from gistgym.videos.dataset import VideoRecord

FEATURE_BATCH = 256
"""Frames per forward pass of a per-frame extractor (as in ``extract_all``)."""
FEATURE_DTYPE = np.float16


@dataclass(frozen=True, eq=False)
class FrozenModels:
    """The frozen models a section computes with (eval mode, gradients off)."""

    detector: InterleavedDetector
    """The interleaved detector (heavy and light extractors, memory, head)."""
    extra: Mapping[str, torch.nn.Module] = field(default_factory=dict)
    """Further frozen models by role (keys of :data:`FROZEN_MODELS`)."""

    def get(self, role: str) -> torch.nn.Module:
        """The extra model of ``role``.

        Raises:
            ConfigError: It was not loaded (the section does not list it in ``models``).
        """
        if role not in self.extra:
            raise ConfigError(
                f"frozen model {role!r} was not loaded (loaded: {sorted(self.extra)}); "
                "list it in the section's `models`"
            )
        return self.extra[role]


@dataclass(frozen=True)
class FrozenModelSpec:
    """How the build loads, describes and costs one extra frozen model.

    Attributes:
        role: Name of the model in :data:`FROZEN_MODELS`, the file's ``modules`` and
            ``costs`` attributes and ``--model-weights ROLE=PATH``.
        summary: One line for ``gistgym cache info``.
        default_weights: Path of the shipped weights file (its JSON sidecar beside it, with
            ``sha256`` and ``config``); called lazily so a missing file only matters to a
            build that needs it.
        train_hint: The command that produces the weights (shown when they are missing).
        load: ``(weights bytes, sidecar, path) -> frozen module``; raises ``WeightsError``.
        describe: ``module -> {"class": ..., "config": ...}`` for the ``modules`` attribute.
        costs: ``(module, measure latency) -> {...}`` counted FLOPs (and latency) of its parts.
    """

    role: str
    summary: str
    default_weights: Callable[[], Path]
    train_hint: str
    load: Callable[[bytes, Mapping[str, Any], Path], torch.nn.Module]
    describe: Callable[[torch.nn.Module], dict[str, Any]]
    costs: Callable[[torch.nn.Module, bool], dict[str, Any]]


@dataclass(frozen=True)
class Section:
    """One section of the cache.

    Attributes:
        name: Group name in the file.
        summary: One line for ``gistgym cache info``.
        compute: ``(models, frames (T, H, W, 3) uint8, record) -> {name: array}``, the
            per-video arrays, stored under ``/videos/<id>/<section>/<name>``; ``record``
            gives the video's annotations and label.
        embed: ``models -> EmbeddedArrays``, stored once under ``/sections/<section>``.
        models: Roles of the extra frozen models (:data:`FROZEN_MODELS`) it needs.
        default_for: The dataset kind (``detection`` or ``untrimmed``, see
            :func:`dataset_kind`) whose ``cache build`` includes this section when no
            ``--sections`` are given.
    """

    name: str
    summary: str
    compute: Callable[[FrozenModels, np.ndarray, VideoRecord], dict[str, np.ndarray]]
    embed: Callable[[FrozenModels], EmbeddedArrays]
    models: tuple[str, ...] = ()
    default_for: str = "detection"


UNTRIMMED_GENERATOR = "gistgym.untrimmed"


def dataset_kind(generator: Mapping[str, Any] | None) -> str:
    """``untrimmed`` for the untrimmed (frame selection) benchmark, ``detection`` for anything else.

    Anything else includes the streams benchmark (``gistgym.streams``): its long videos are
    scheduled frame by frame like the detection clips, so it gets the same sections.
    """
    return "untrimmed" if generator and generator.get("name") == UNTRIMMED_GENERATOR else "detection"


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"extractor name {name!r} cannot be an HDF5 dataset name (no '/', not empty)")
    return name


@torch.no_grad()
def interleave_features(models: FrozenModels, frames: np.ndarray, record: VideoRecord) -> dict[str, np.ndarray]:
    """Projected features of every extractor on one video, float16.

    Args:
        models: The frozen models (only the detector is used).
        frames: (T, H, W, 3) uint8 RGB.
        record: The video (unused: the features depend on the frames alone).

    Returns:
        ``{extractor name: (T, C, g, g) float16}`` in action order.
    """
    model = models.detector
    video = torch.from_numpy(np.ascontiguousarray(frames))[None]
    feats = extract_video_features(model, video, FEATURE_BATCH)
    return {
        _check_name(name): f[0].numpy().astype(FEATURE_DTYPE)
        for name, f in zip(model.extractor_names, feats, strict=True)
    }


def _state_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def interleave_embedded(models: FrozenModels) -> EmbeddedArrays:
    """The frozen memory and head tensors plus the detector configuration."""
    model = models.detector
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

FROZEN_MODELS: dict[str, FrozenModelSpec] = {}
"""Every extra frozen model a section can ask for, by role."""


def register_section(section: Section, *models: FrozenModelSpec) -> None:
    """Add a section (and the frozen models it brings) to the registries.

    Raises:
        ConfigError: A name or role is taken, or the section needs a role nobody registered.
    """
    if section.name in SECTIONS:
        raise ConfigError(f"cache section {section.name!r} is registered twice")
    for spec in models:
        if spec.role in FROZEN_MODELS or spec.role == "detector":
            raise ConfigError(f"frozen model role {spec.role!r} is registered twice")
        FROZEN_MODELS[spec.role] = spec
    missing = [r for r in section.models if r not in FROZEN_MODELS]
    if missing:
        raise ConfigError(f"cache section {section.name!r} needs frozen models {missing} that nobody registered")
    SECTIONS[section.name] = section


def get_model_spec(role: str) -> FrozenModelSpec:
    """The frozen model spec of ``role``.

    Raises:
        ConfigError: No such role.
    """
    if role not in FROZEN_MODELS:
        raise ConfigError(
            f"unknown frozen model role {role!r}; this gistgym knows: {', '.join(FROZEN_MODELS) or '(none)'}"
        )
    return FROZEN_MODELS[role]


def list_sections(kind: str | None = None) -> tuple[str, ...]:
    """Names of the sections this gistgym can build, or the default ones for a dataset kind."""
    return tuple(name for name, s in SECTIONS.items() if kind is None or s.default_for == kind)


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


def check_interleave_section(section: SectionData) -> tuple[str, str] | None:
    """Whether an ``interleave`` section's embedded modules rebuild (the reader's section check).

    Returns:
        ``(where, problem)`` (``where`` relative to the section group, e.g.
        ``.attrs[detector_config]`` or ``/memory``) if they do not, else ``None``.
    """
    attrs = section.attrs
    try:
        config = DetectorConfig.from_dict(dict(attrs[schema.INTERLEAVE_DETECTOR_CONFIG]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f".attrs[{schema.INTERLEAVE_DETECTOR_CONFIG}]", f"not a detector configuration: {exc!r}"
    names = attrs.get(schema.INTERLEAVE_EXTRACTORS)
    if names != [e.name for e in config.extractors]:
        return (
            f".attrs[{schema.INTERLEAVE_EXTRACTORS}]",
            f"extractors {names!r} are not the configuration's {[e.name for e in config.extractors]}",
        )
    grid = config.anchors.grid
    if attrs.get(schema.INTERLEAVE_FEATURE_SHAPE) != [config.memory_channels, grid, grid]:
        return (
            f".attrs[{schema.INTERLEAVE_FEATURE_SHAPE}]",
            f"feature_shape {attrs.get(schema.INTERLEAVE_FEATURE_SHAPE)!r} is not the configuration's "
            f"{[config.memory_channels, grid, grid]}",
        )
    for key in (schema.INTERLEAVE_MEMORY, schema.INTERLEAVE_HEAD):
        if key not in section.tensors:
            return f"/{key}", "embedded module missing"
    try:
        interleave_modules(attrs, section.tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        return "", f"the embedded memory and head do not fit the configuration: {' '.join(str(exc).split())[:300]}"
    return None


register_section_check(schema.SECTION_INTERLEAVE, check_interleave_section)

from gistgym.feature_cache import glimpse as _glimpse  # noqa: E402,F401  (registers the glimpse section)
from gistgym.feature_cache import keyframe as _keyframe  # noqa: E402,F401  (registers the keyframe section)
