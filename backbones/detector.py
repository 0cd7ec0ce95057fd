"""The interleaved detector of *Looking Fast and Slow*: m extractors, one memory, one head.

Algorithm 1 of the paper, one frame at a time::

    x_t   = f_a(I_t)                       the chosen extractor (projected to the memory's width)
    M_t, s = m(x_t, s_{t-1})               the ConvLSTM
    D_t   = d(M_t)                         the SSDLite head
    s_t   = s        if a == 0 or not skip_light_updates
            s_{t-1}  otherwise             (light steps read the memory but do not write it)

Extractor 0 is the heavy one; every other extractor counts as light for
``skip_light_updates``. The update rule is stored with the weights and must match between
training and inference (see ``gistgym backbones eval``'s ``--override-skip-light-updates``
for the ablation that shows what a mismatch costs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gistgym.backbones.convlstm import BottleneckConvLSTM, LSTMState
from gistgym.backbones.engines import build_extractor
from gistgym.backbones.mobilenet import MobileNetV2
from gistgym.backbones.ssdlite import AnchorConfig, Detections, SSDLiteHead, postprocess
from gistgym.backbones.tsm import ShiftState

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExtractorConfig:
    """One feature extractor: a MobileNetV2 trunk at some input scale, projected to the memory.

    The light extractor sees the frame area-downsampled by ``input_scale`` (1/2 for the
    embedded default), which is what erases the benchmark's fine class textures.
    """

    name: str
    width_mult: float
    num_blocks: int
    output_stride: int
    input_scale: float = 1.0
    shift_fraction: float = 0.0


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild an :class:`InterleavedDetector` (stored with its weights)."""

    extractors: tuple[ExtractorConfig, ...]
    num_classes: int = 4
    image_size: int = 64
    memory_channels: int = 64
    hidden_channels: int = 64
    bottleneck_channels: int = 64
    groups: int = 4
    skip_light_updates: bool = True
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        import dataclasses

        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["extractors"] = tuple(ExtractorConfig(**e) for e in d["extractors"])
        a = dict(d.get("anchors", {}))
        for k in ("scales", "aspect_ratios"):
            if k in a:
                a[k] = tuple(a[k])
        d["anchors"] = AnchorConfig(**a)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return DetectorConfig(**d)


class FeatureExtractor(nn.Module):
    """A MobileNetV2 trunk at a given input scale plus a 1x1 projection to the memory width."""

    def __init__(self, cfg: ExtractorConfig, memory_channels: int) -> None:
        super().__init__()
        self.config = cfg
        self.trunk = MobileNetV2(
            width_mult=cfg.width_mult,
            num_blocks=cfg.num_blocks,
            output_stride=cfg.output_stride,
            shift_fraction=cfg.shift_fraction,
        )
        self.project = nn.Sequential(
            nn.Conv2d(self.trunk.out_channels, memory_channels, 1, bias=False),
            nn.BatchNorm2d(memory_channels),
            nn.ReLU6(inplace=True),
        )

    @property
    def uses_shift(self) -> bool:
        """Whether this extractor carries TSM buffers from frame to frame."""
        return self.config.shift_fraction > 0

    def forward_with_shift(
        self, images: Tensor, shift_state: ShiftState | None = None, steps: int = 1
    ) -> tuple[Tensor, ShiftState]:
        """Features (B, memory_channels, g, g) of normalised full-resolution images.

        ``steps``: consecutive frames in ``images``, time-major (:meth:`MobileNetV2.forward_features
        <gistgym.backbones.mobilenet.MobileNetV2.forward_features>`).
        """
        if self.config.input_scale != 1.0:
            factor = round(1 / self.config.input_scale)
            images = nn.functional.avg_pool2d(images, factor)
        feats, new_state = self.trunk.forward_features(images, shift_state, steps)
        return self.project(feats), new_state

    def forward(self, images: Tensor) -> Tensor:
        """Features of a single frame (zero temporal-shift past)."""
        return self.forward_with_shift(images, None)[0]


class DetectorState(NamedTuple):
    """What the detector carries between frames."""

    lstm: LSTMState
    shift: tuple[ShiftState | None, ...]
    """Per extractor: its TSM buffers from the previous frame it processed (or None)."""


class StepOutput(NamedTuple):
    """Result of one detector step."""

    loc: Tensor
    conf: Tensor
    memory_output: Tensor
    state: DetectorState


class InterleavedDetector(nn.Module):
    """m feature extractors sharing one ConvLSTM memory and one SSDLite head."""

    mean: Tensor
    std: Tensor

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        if len(cfg.extractors) < 2:
            raise ValueError("an interleaved detector needs at least two extractors")
        self.config = cfg
        self.extractors = nn.ModuleList(FeatureExtractor(e, cfg.memory_channels) for e in cfg.extractors)
        self.memory = BottleneckConvLSTM(cfg.memory_channels, cfg.hidden_channels, cfg.bottleneck_channels, cfg.groups)
        self.head = SSDLiteHead(self.memory.out_channels, cfg.num_classes, cfg.anchors)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    @property
    def extractor_names(self) -> tuple[str, ...]:
        """Names of the extractors, in action order (0 = heavy)."""
        return tuple(e.name for e in self.config.extractors)

    @property
    def grid(self) -> int:
        """Spatial size of the memory."""
        return self.config.anchors.grid

    def preprocess(self, frames: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) normalised float."""
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def initial_state(self, batch: int) -> DetectorState:
        """Zero memory, empty shift buffers."""
        return DetectorState(
            self.memory.initial_state(batch, self.grid, self.grid), tuple(None for _ in self.extractors)
        )

    def extractor(self, index: int) -> FeatureExtractor:
        """Extractor ``index`` (0 = heavy)."""
        ext = self.extractors[index]
        assert isinstance(ext, FeatureExtractor)
        return ext

    def extract(
        self, index: int, images: Tensor, shift_state: ShiftState | None = None, steps: int = 1
    ) -> tuple[Tensor, ShiftState]:
        """Run extractor ``index`` on normalised images (``steps`` consecutive frames, time-major)."""
        return self.extractor(index).forward_with_shift(images, shift_state, steps)

    def memory_step(self, features: Tensor, lstm: LSTMState, write: Tensor | bool) -> tuple[Tensor, LSTMState]:
        """Memory output for ``features``; the state advances only where ``write`` is true.

        Args:
            features: (B, C, g, g) projected features.
            lstm: Carried state.
            write: Whether each sample's step may replace the carried state ((B,) bool or a bool).
        """
        out, new = self.memory(features, lstm)
        if isinstance(write, bool):
            return out, (new if write else lstm)
        w = write.view(-1, 1, 1, 1)
        return out, LSTMState(torch.where(w, new.c, lstm.c), torch.where(w, new.h, lstm.h))

    def writes_state(self, action: Tensor) -> Tensor:
        """Whether a step with these extractor choices writes the memory (skip rule)."""
        if not self.config.skip_light_updates:
            return torch.ones_like(action, dtype=torch.bool)
        return action == 0

    def step(self, frames: Tensor, action: int, state: DetectorState) -> StepOutput:
        """Process one frame per batch element with extractor ``action``.

        Args:
            frames: (B, H, W, 3) uint8 RGB.
            action: Extractor index (0 = heavy).
            state: From :meth:`initial_state` or the previous step.
        """
        images = self.preprocess(frames)
        feats, shift = self.extract(action, images, state.shift[action])
        write = action == 0 or not self.config.skip_light_updates
        out, lstm = self.memory_step(feats, state.lstm, write)
        loc, conf = self.head(out)
        shifts = tuple(shift if i == action and self.extractor(i).uses_shift else s for i, s in enumerate(state.shift))
        return StepOutput(loc, conf, out, DetectorState(lstm, shifts))

    def detect(self, loc: Tensor, conf: Tensor) -> list[Detections]:
        """Decoded, NMS-filtered detections in pixels."""
        size = self.config.image_size
        return postprocess(loc, conf, self.head.anchors, image_size=(size, size))


@torch.no_grad()
def extract_video_features(model: InterleavedDetector, videos: Tensor, chunk: int = 256) -> list[Tensor]:
    """Every extractor's projected features on every frame of equally long videos.

    A shifting extractor runs as a stream over each video's consecutive frames (its buffer
    always holds the previous frame), so its features are exact for schedules that run it
    on consecutive frames and approximate when it is mixed with other extractors. The stream
    goes through in runs of up to ``chunk`` frames per pass (``steps``, the buffers carried
    from run to run), the same features as frame by frame.

    Per-frame extractors run on the engine :func:`gistgym.backbones.engines.use_build_engine`
    registered for ``model`` (the cache build's), else in eager torch.

    Args:
        model: The detector.
        videos: (V, T, H, W, 3) uint8 RGB.
        chunk: Frames per forward pass of a per-frame extractor.

    Returns:
        Per extractor, in action order: (V, T, C, g, g) float32.
    """
    V, T = videos.shape[:2]
    out: list[Tensor] = []
    for i in range(len(model.extractors)):
        if model.extractor(i).uses_shift:
            state = None
            runs = []
            per_run = max(1, chunk // V)  # consecutive frames per pass
            for s in range(0, T, per_run):
                run = videos[:, s : s + per_run].transpose(0, 1)  # time-major: (t, V, H, W, 3)
                steps = run.shape[0]
                f, state = model.extract(i, model.preprocess(run.reshape(steps * V, *run.shape[2:])), state, steps)
                runs.append(f.view(steps, V, *f.shape[1:]).transpose(0, 1))
            out.append(torch.cat(runs, dim=1))
        else:
            flat = videos.reshape(V * T, *videos.shape[2:])
            compiled = build_extractor(model, i)
            feats = torch.cat(
                [
                    model.extract(i, images)[0] if compiled is None else compiled(images)
                    for images in (model.preprocess(flat[s : s + chunk]) for s in range(0, V * T, chunk))
                ]
            )
            out.append(feats.view(V, T, *feats.shape[1:]))
    return out


def default_detector_config(num_classes: int = 4) -> DetectorConfig:
    """The embedded default: heavy, light and light+shift extractors at 64x64.

    * heavy ``f0``: MobileNetV2 x1.0, blocks 1-13 (through the 96-channel stage), output
      stride 8 (the stride of the 64-channel stage removed), on the 64x64 frame;
    * light ``f1``: MobileNetV2 x0.35, blocks 1-10 (through the 64-channel stage), output
      stride 4, on the frame downsampled to 32x32 (both reach the 8x8 memory grid);
    * light+shift ``f2``: ``f1`` with TSM's online shift of 1/8 of every residual branch.

    The x1.0/x0.35 widths are the paper's (x1.4/x0.35 at 320/160) scaled to a 64x64
    benchmark that trains on a 2-core CPU; heavy runs at full resolution because the
    benchmark's classes differ only in 2-px textures that vanish at half resolution. The
    light trunk stops one stage earlier than the heavy one so a whole light step
    (extractor + memory + head) costs about a tenth of a heavy step, as in the paper.
    """
    return DetectorConfig(
        extractors=(
            ExtractorConfig("heavy", 1.0, 13, 8, 1.0, 0.0),
            ExtractorConfig("light", 0.35, 10, 4, 0.5, 0.0),
            ExtractorConfig("light+shift", 0.35, 10, 4, 0.5, 0.125),
        ),
        num_classes=num_classes,
    )
