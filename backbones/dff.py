"""Deep Feature Flow (Zhu et al. 2017) on the embedded detector: N_feat, F, W and N_task.

DFF runs the expensive feature network only on keyframes and carries the keyframe's
features to the other frames with a cheap flow network and a parameter-free warp::

    keyframe k:          f_k = N_feat(I_k)                           y_k = N_task(f_k)
    frame i (key k):     M_{i->k}, S_{i->k} = F(I_k, I_i)            (flow field, scale field)
                         f_i = W(f_k, M_{i->k}, S_{i->k})            Eq. 1-3
                         y_i = N_task(f_i)

* ``N_feat`` is a frozen copy of the heavy extractor (MobileNetV2 trunk + projection) of
  the interleaved detector the DFF weights were trained with; the copy travels in the DFF
  weights so a DFF model is self-contained (the sidecar records the detector's sha256).
* ``N_task`` is DFF's "one randomly initialised layer" (a 1x1 conv + BN + ReLU6 from the
  64 feature channels to the 128 the head reads) followed by the detector's SSDLite head,
  initialised from the shipped head and fine-tuned. Why not the head alone: it was trained
  on the ConvLSTM's ``[h, b]`` output (128 channels), not on the 64 projected features, so
  it needs at least one adapting layer; why not the frozen ConvLSTM from a zero state: it
  costs ~5x the head and would make ``N_task`` a recurrent cell, not a task layer.
* ``F`` is a small FlowNet-style encoder-decoder on the frame pair at half resolution
  (32x32 for 64x64 frames): strided convolutions down to 2x2, then up to the feature grid
  (8x8) with skip connections, predicting a flow field (2 channels, in feature cells) and
  a per-channel scale field (C channels). The prediction layer starts at zero weights with
  bias 0 for the flow and 1 for the scale: an untrained ``F`` is the identity propagation.
* ``W`` (:func:`warp`) is bilinear sampling (Eq. 2-3): for every location p of frame i,
  ``f_i(p) = S(p) * sum_q G(q, p + M(p)) f_k(q)`` with the bilinear kernel ``G``; samples
  outside the map read the border.

Counted FLOPs (:func:`dff_costs`) follow :mod:`gistgym.backbones.flops` (a multiply-add =
2). ``torch.utils.flop_counter`` does not count ``grid_sample``, so the warp's FLOPs are
counted by hand: per output element 4 bilinear weights, 4 multiplies and 3 adds, plus the
scale multiply (the weights themselves, 2 subtractions and 4 products per location, are
added per location).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

import gistgym
from gistgym.backbones.detector import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ExtractorConfig,
    FeatureExtractor,
    InterleavedDetector,
)
from gistgym.backbones.engines import weights_sha256
from gistgym.backbones.flops import count_flops, measure_latency
from gistgym.backbones.mobilenet import ConvBNReLU
from gistgym.backbones.ssdlite import AnchorConfig, Detections, SSDLiteHead, postprocess
from gistgym.backbones.weights import check_sidecar_model, frozen_from_bytes, read_checked_sidecar, save_weights
from gistgym.errors import WeightsError

DEFAULT_DFF_WEIGHTS = Path(gistgym.__file__).parent / "weights" / "dff.pt"
"""The shipped DFF weights (flow net, task net and the copy of the heavy extractor)."""

SIDECAR_MODEL = "deep-feature-flow"
"""``"model"`` entry of a DFF sidecar (its ``format`` is the shared ``gistgym-detector``)."""
TRAIN_COMMAND = "gistgym backbones train-dff"
"""The command that trains DFF weights (named when they are missing or of another model)."""


@dataclass(frozen=True)
class DFFConfig:
    """Everything needed to rebuild a :class:`DeepFeatureFlow` (stored in the sidecar)."""

    feature: ExtractorConfig
    """N_feat: the heavy extractor of the detector (its configuration)."""
    feature_channels: int = 64
    """Channels of N_feat's projected output (the detector's ``memory_channels``)."""
    task_channels: int = 128
    """Channels the SSDLite head reads (the detector's ConvLSTM output width)."""
    num_classes: int = 4
    image_size: int = 64
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    flow_input_scale: float = 0.5
    """F sees both frames area-downsampled by this factor."""
    flow_channels: tuple[int, int, int, int] = (24, 32, 48, 64)
    """Widths of F's four stride-2 encoder stages."""
    decoder_channels: int = 48
    """Width of F's decoder at the feature grid."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def grid(self) -> int:
        """Spatial size of the feature map."""
        return self.anchors.grid

    @property
    def cell_pixels(self) -> float:
        """Pixels per feature cell (flow is predicted in cells)."""
        return self.image_size / self.grid

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> DFFConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["feature"] = ExtractorConfig(**d["feature"])
        a = dict(d.get("anchors", {}))
        for k in ("scales", "aspect_ratios"):
            if k in a:
                a[k] = tuple(a[k])
        d["anchors"] = AnchorConfig(**a)
        for k in ("mean", "std", "flow_channels"):
            if k in d:
                d[k] = tuple(d[k])
        return DFFConfig(**d)


def dff_config_for(detector: InterleavedDetector) -> DFFConfig:
    """The DFF configuration that reuses ``detector``'s heavy extractor and head layout."""
    cfg = detector.config
    return DFFConfig(
        feature=cfg.extractors[0],
        feature_channels=cfg.memory_channels,
        task_channels=detector.memory.out_channels,
        num_classes=cfg.num_classes,
        image_size=cfg.image_size,
        anchors=cfg.anchors,
        mean=cfg.mean,
        std=cfg.std,
    )


class SeparableBlock(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, each with BN and ReLU6 (MobileNet v1 block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(ConvBNReLU(cin, cin, 3, stride, groups=cin), ConvBNReLU(cin, cout, 1))


class FlowOutput(NamedTuple):
    """What F predicts for a batch of (keyframe, current frame) pairs."""

    flow: Tensor
    """(B, 2, g, g) displacement ``(dx, dy)`` in feature cells from frame i to its keyframe."""
    scale: Tensor
    """(B, C, g, g) per-channel scale field."""


class FlowNet(nn.Module):
    """F: a FlowNetSimple-style encoder-decoder on the stacked frame pair at reduced resolution.

    Input: the two normalised frames and their difference (9 channels), area-downsampled by
    ``flow_input_scale``. Four stride-2 encoder stages (the first a full 3x3 conv, then
    depthwise-separable blocks) reach 1/32 of the frame; the decoder upsamples to the
    feature grid, fusing the encoder map of the same size at each step, and a 1x1 conv
    predicts ``2 + C`` channels: flow (dx, dy) and the scale field.
    """

    def __init__(self, cfg: DFFConfig) -> None:
        super().__init__()
        self.config = cfg
        c1, c2, c3, c4 = cfg.flow_channels
        d = cfg.decoder_channels
        self.enc1 = ConvBNReLU(9, c1, 3, 2)
        self.enc2 = SeparableBlock(c1, c2, 2)
        self.enc3 = SeparableBlock(c2, c3, 2)
        self.enc4 = SeparableBlock(c3, c4, 2)
        self.dec3 = SeparableBlock(c4 + c3, d)
        self.dec2 = SeparableBlock(d + c2, d)
        self.refine = SeparableBlock(d, d)
        self.predict = nn.Conv2d(d, 2 + cfg.feature_channels, 1)
        with torch.no_grad():
            # identity propagation at initialisation: zero flow, unit scale (DFF initialises F from FlowNet)
            self.predict.weight.zero_()
            assert self.predict.bias is not None
            self.predict.bias.zero_()
            self.predict.bias[2:] = 1.0

    def forward(self, key_images: Tensor, images: Tensor) -> FlowOutput:
        """Flow and scale from frame i (``images``) to its keyframe (``key_images``), normalised (B, 3, H, W)."""
        factor = round(1 / self.config.flow_input_scale)
        x = torch.cat([key_images, images, images - key_images], dim=1)
        if factor > 1:
            x = nn.functional.avg_pool2d(x, factor)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        up = nn.functional.interpolate(e4, size=e3.shape[-2:], mode="nearest")
        d3 = self.dec3(torch.cat([up, e3], dim=1))
        g = self.config.grid
        up = nn.functional.interpolate(d3, size=(g, g), mode="nearest")
        skip = e2 if e2.shape[-1] == g else nn.functional.adaptive_avg_pool2d(e2, g)
        d2 = self.refine(self.dec2(torch.cat([up, skip], dim=1)))
        p = self.predict(d2)
        return FlowOutput(p[:, :2], p[:, 2:])


def warp(features: Tensor, flow: Tensor, scale: Tensor | None = None) -> Tensor:
    """W of DFF (Eq. 2-3): bilinear sampling of the keyframe features along the flow, times the scale.

    Args:
        features: (B, C, g, g) keyframe features ``f_k``.
        flow: (B, 2, g, g) displacement ``(dx, dy)`` in cells: location p of frame i reads
            ``f_k`` at ``p + flow(p)``.
        scale: (B, C, g, g) scale field, or ``None`` for none.

    Returns:
        (B, C, g, g) propagated features ``f_i``. Reads outside the map take the border value.
    """
    H, W = features.shape[-2:]
    ys = torch.arange(H, dtype=features.dtype, device=features.device)
    xs = torch.arange(W, dtype=features.dtype, device=features.device)
    # pixel-centre coordinates -> [-1, 1] (align_corners=False): x_n = (2x + 1) / W - 1
    gx = (2 * (xs[None, None, :] + flow[:, 0]) + 1) / W - 1
    gy = (2 * (ys[None, :, None] + flow[:, 1]) + 1) / H - 1
    grid = torch.stack([gx, gy], dim=-1)
    out = nn.functional.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out if scale is None else out * scale


def warp_flops(channels: int, grid: int) -> int:
    """Counted FLOPs of :func:`warp` on a (channels, grid, grid) map (hand count, see the module docstring)."""
    per_location = 2 + 4 + 4  # coordinates (2 adds), fractional parts and the 4 bilinear weights
    per_element = 4 + 3 + 1  # 4 multiplies + 3 adds of the bilinear sum, 1 scale multiply
    return grid * grid * (per_location + channels * per_element)


class TaskNetwork(nn.Module):
    """N_task: one 1x1 conv layer (+ BN, ReLU6) adapting the features, then the SSDLite head."""

    def __init__(self, cfg: DFFConfig) -> None:
        super().__init__()
        self.adapt = ConvBNReLU(cfg.feature_channels, cfg.task_channels, kernel=1)
        self.head = SSDLiteHead(cfg.task_channels, cfg.num_classes, cfg.anchors)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Box offsets (B, A, 4) and class logits (B, A, K + 1)."""
        out: tuple[Tensor, Tensor] = self.head(self.adapt(features))
        return out


class DeepFeatureFlow(nn.Module):
    """N_feat (frozen heavy extractor), F, W and N_task.

    Args:
        cfg: The configuration (see :func:`dff_config_for`).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, cfg: DFFConfig) -> None:
        super().__init__()
        self.config = cfg
        self.feature_net = FeatureExtractor(cfg.feature, cfg.feature_channels)
        self.flow_net = FlowNet(cfg)
        self.task_net = TaskNetwork(cfg)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def from_detector(detector: InterleavedDetector) -> DeepFeatureFlow:
        """A DFF model built on ``detector``: N_feat is a frozen copy of its heavy extractor.

        The task net's head starts from ``detector``'s head; F starts as the identity propagation.
        """
        model = DeepFeatureFlow(dff_config_for(detector))
        model.feature_net.load_state_dict(detector.extractor(0).state_dict())
        model.task_net.head.load_state_dict(detector.head.state_dict())
        model.feature_net.eval().requires_grad_(False)
        return model

    def train(self, mode: bool = True) -> DeepFeatureFlow:
        """Train mode for F and N_task; N_feat stays frozen in eval mode (fixed BN statistics)."""
        super().train(mode)
        self.feature_net.eval()
        return self

    @property
    def anchors(self) -> Tensor:
        """The head's anchors ``[cx, cy, w, h]`` in pixels."""
        return self.task_net.head.anchors

    def preprocess(self, frames: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) normalised float."""
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def features(self, images: Tensor) -> Tensor:
        """N_feat on normalised images: (B, C, g, g)."""
        out: Tensor = self.feature_net(images)
        return out

    def flow(self, key_images: Tensor, images: Tensor) -> FlowOutput:
        """F on normalised (keyframe, current frame) pairs."""
        out: FlowOutput = self.flow_net(key_images, images)
        return out

    def propagate(self, key_features: Tensor, key_images: Tensor, images: Tensor) -> tuple[Tensor, FlowOutput]:
        """Warped features of ``images`` from their keyframes, and the flow output used."""
        fo = self.flow(key_images, images)
        return warp(key_features, fo.flow, fo.scale), fo

    def task(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """N_task: box offsets and class logits."""
        out: tuple[Tensor, Tensor] = self.task_net(features)
        return out

    def detect(self, loc: Tensor, conf: Tensor, max_detections: int = 25) -> list[Detections]:
        """Decoded, NMS-filtered detections in pixels (as the detector's ``detect``)."""
        size = self.config.image_size
        return postprocess(loc, conf, self.anchors, image_size=(size, size), max_detections=max_detections)


# --- costs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DFFCosts:
    """Counted FLOPs (and measured latency) of the four DFF parts for one frame at batch 1."""

    feature_flops: int
    flow_flops: int
    warp_flops: int
    task_flops: int
    feature_seconds: float = 0.0
    flow_seconds: float = 0.0
    warp_seconds: float = 0.0
    task_seconds: float = 0.0

    @property
    def key_flops(self) -> int:
        """A keyframe: N_feat + N_task."""
        return self.feature_flops + self.task_flops

    @property
    def propagate_flops(self) -> int:
        """A propagated frame: F + W + N_task."""
        return self.flow_flops + self.warp_flops + self.task_flops

    @property
    def cost_ratio(self) -> float:
        """DFF Eq. 5: ``r = (O(F) + O(W)) / O(N_feat)``."""
        return (self.flow_flops + self.warp_flops) / self.feature_flops

    def speedup(self, key_fraction: float) -> float:
        """DFF Eq. 7 generalised to a key fraction: per-frame cost over the schedule's mean cost.

        With a fixed key duration l, ``key_fraction = 1 / l`` and, neglecting N_task, this is
        the paper's ``s = l / (1 + r (l - 1))``.
        """
        mean = key_fraction * self.key_flops + (1 - key_fraction) * self.propagate_flops
        return self.key_flops / mean

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with the derived quantities."""
        return {
            **dataclasses.asdict(self),
            "key_flops": self.key_flops,
            "propagate_flops": self.propagate_flops,
            "cost_ratio_r": self.cost_ratio,
        }


def dff_costs(model: DeepFeatureFlow, *, measure: bool = True, repeats: int = 30) -> DFFCosts:
    """Counted FLOPs (and, with ``measure``, median latency) of N_feat, F, W and N_task."""
    cfg = model.config
    size, g, C = cfg.image_size, cfg.grid, cfg.feature_channels
    images = torch.randn(1, 3, size, size)
    key = torch.randn(1, 3, size, size)
    feats = torch.randn(1, C, g, g)
    fo = FlowOutput(torch.zeros(1, 2, g, g), torch.ones(1, C, g, g))

    def run_feature() -> object:
        return model.features(images)

    def run_flow() -> object:
        return model.flow(key, images)

    def run_warp() -> object:
        return warp(feats, fo.flow, fo.scale)

    def run_task() -> object:
        return model.task(feats)

    fns = (run_feature, run_flow, run_warp, run_task)
    flops = [count_flops(f) for f in fns]
    flops[2] = warp_flops(C, g)
    seconds = [measure_latency(f, repeats=repeats) if measure else 0.0 for f in fns]
    return DFFCosts(*flops, *seconds)


# --- weights -------------------------------------------------------------------------------------


def feature_net_digest(module: nn.Module) -> str:
    """sha256 over a module's ``state_dict`` tensors (names, shapes, bytes), in key order.

    Identifies N_feat independently of the file it came from: a DFF model and a detector
    whose heavy extractors have the same digest compute the same keyframe features.
    """
    return weights_sha256(module)


def save_dff(path: Path, model: DeepFeatureFlow, metadata: Mapping[str, Any]) -> str:
    """Write the DFF weights and their JSON sidecar atomically; returns the weights' sha256.

    The sidecar uses the shared ``gistgym-detector`` format (what
    :func:`gistgym.backbones.weights.read_sidecar` and the cache build accept) with
    ``"model": "deep-feature-flow"`` and the :class:`DFFConfig` as ``config``.
    """
    return save_weights(
        path,
        model,
        {"model": SIDECAR_MODEL, "config": model.config.to_dict()},
        {"feature_net_digest": feature_net_digest(model.feature_net), **metadata},
    )


def dff_from_bytes(data: bytes, sidecar: Mapping[str, Any], path: Path) -> DeepFeatureFlow:
    """Build the frozen DFF model described by ``sidecar`` from the weights' bytes.

    Raises:
        WeightsError: Not a DFF sidecar, a bad configuration, unreadable bytes, or missing
            or mis-shaped keys.
    """
    check_sidecar_model(sidecar, path, SIDECAR_MODEL, "Deep Feature Flow", TRAIN_COMMAND)
    try:
        cfg = DFFConfig.from_dict(sidecar["config"])
    except (TypeError, KeyError, ValueError) as exc:
        raise WeightsError(Path(path).with_suffix(".json"), f"bad DFF config: {exc}", field="config") from exc
    return frozen_from_bytes(DeepFeatureFlow, cfg, data, path)


def load_dff(path: str | Path | None = None, *, check_sha256: bool = True) -> tuple[DeepFeatureFlow, dict[str, Any]]:
    """Load DFF weights and their sidecar (default: the shipped ones).

    Returns:
        The frozen model (eval, no gradients) and the sidecar.

    Raises:
        WeightsError: Missing files, a checksum that differs from the sidecar, or bad contents.
    """
    path = Path(path) if path is not None else DEFAULT_DFF_WEIGHTS
    meta = read_checked_sidecar(path, check_sha256=check_sha256, train_command=TRAIN_COMMAND)
    return dff_from_bytes(path.read_bytes(), meta, path), meta


def describe_dff(model: nn.Module) -> dict[str, Any]:
    """``{"class", "config"}`` of a DFF model (for the cache's ``modules`` attribute)."""
    assert isinstance(model, DeepFeatureFlow)
    return {
        "class": f"{DeepFeatureFlow.__module__}.{DeepFeatureFlow.__qualname__}",
        "config": json.loads(json.dumps(model.config.to_dict())),
        "feature_net_digest": feature_net_digest(model.feature_net),
    }


def keyframe_positions(num_frames: int, key_duration: int) -> Tensor:
    """Keyframe index of every frame under a fixed key duration ``l`` (keys at 0, l, 2l, ...)."""
    if key_duration < 1:
        raise ValueError(f"key duration must be >= 1, got {key_duration}")
    t = torch.arange(num_frames)
    return t - t % key_duration


def speedup_fixed(r: float, key_duration: int) -> float:
    """The paper's Eq. 7 for a fixed key duration l (N_task neglected): ``l / (1 + r (l - 1))``."""
    return key_duration / (1 + r * (key_duration - 1))


__all__ = [
    "DEFAULT_DFF_WEIGHTS",
    "DFFConfig",
    "DFFCosts",
    "DeepFeatureFlow",
    "FlowNet",
    "FlowOutput",
    "TaskNetwork",
    "describe_dff",
    "dff_config_for",
    "dff_costs",
    "dff_from_bytes",
    "feature_net_digest",
    "keyframe_positions",
    "load_dff",
    "save_dff",
    "speedup_fixed",
    "warp",
    "warp_flops",
]
