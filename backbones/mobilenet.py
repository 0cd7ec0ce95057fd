"""MobileNetV2 as a plain torch module, with torchvision's parameter names.

torchvision does not import beside the CPU torch used here, so this is a faithful
re-implementation of ``torchvision.models.mobilenet_v2`` (same module tree, so the same
``state_dict`` keys: real ImageNet weights load unchanged) plus three options the video
models need:

* ``num_blocks`` keeps only the first blocks (a truncated trunk is a feature extractor);
* ``output_stride`` drops the strides that would make the output coarser than that (the
  paper removes the last stride so heavy and light outputs match spatially);
* ``shift_fraction`` inserts TSM's online temporal shift at the start of every residual
  branch (see :mod:`gistgym.backbones.tsm`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gistgym.backbones.tsm import ShiftState, TemporalShift

# t (expansion), c (channels), n (repeats), s (stride): torchvision's setting
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
NUM_INVERTED_RESIDUAL_BLOCKS = sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING)  # 17


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` without going more than 10% below it."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNReLU(nn.Sequential):
    """Conv2d + BatchNorm2d + ReLU6 (torchvision's ``Conv2dNormActivation``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block; optionally with an online temporal shift on the residual branch."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, shift_fraction: float = 0.0) -> None:
        super().__init__()
        hidden = round(cin * expand_ratio)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        # TSM shifts only residual branches, so the identity path keeps the current frame.
        self.shift = TemporalShift(cin, shift_fraction) if self.use_res_connect and shift_fraction > 0 else None

    def forward_with_shift(self, x: Tensor, buffer: Tensor | None, steps: int = 1) -> tuple[Tensor, Tensor | None]:
        """Run the block; returns the output and the shift buffer for the next frame.

        ``steps``: consecutive frames in ``x``, time-major (:class:`~gistgym.backbones.tsm.TemporalShift`).
        """
        if self.shift is None:
            out = self.conv(x)
            return (x + out if self.use_res_connect else out), None
        shifted, new_buffer = self.shift(x, buffer, steps)
        return x + self.conv(shifted), new_buffer

    def forward(self, x: Tensor) -> Tensor:
        """Run the block on a single frame (a shifting block sees a zero past)."""
        return self.forward_with_shift(x, None)[0]


class MobileNetV2(nn.Module):
    """MobileNetV2 with torchvision's module names.

    Args:
        width_mult: Channel multiplier (1.0 = the ImageNet model).
        num_blocks: How many of the 17 inverted-residual blocks to keep.
        output_stride: Largest total stride; strides beyond it become 1.
        include_top: Keep the final 1x1 conv to 1280 channels and the classifier
            (only with all 17 blocks).
        num_classes: Classifier outputs when ``include_top``.
        shift_fraction: Fraction of each residual branch's channels taken from the
            previous frame (TSM online shift; 0 disables it).
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        num_blocks: int = NUM_INVERTED_RESIDUAL_BLOCKS,
        output_stride: int = 32,
        include_top: bool = False,
        num_classes: int = 1000,
        shift_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= num_blocks <= NUM_INVERTED_RESIDUAL_BLOCKS:
            raise ValueError(f"num_blocks must be in [1, 17], got {num_blocks}")
        if include_top and num_blocks != NUM_INVERTED_RESIDUAL_BLOCKS:
            raise ValueError("include_top needs all 17 blocks")
        self.width_mult = width_mult
        cin = make_divisible(32 * width_mult)
        stride_so_far = 2
        layers: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                if len(layers) > num_blocks:
                    break
                stride = s if i == 0 else 1
                if stride > 1 and stride_so_far * stride > output_stride:
                    stride = 1
                stride_so_far *= stride
                layers.append(InvertedResidual(cin, cout, stride, t, shift_fraction))
                cin = cout
        self.out_channels = cin
        self.output_stride = stride_so_far
        if include_top:
            last = make_divisible(1280 * max(1.0, width_mult))
            layers.append(ConvBNReLU(cin, last, kernel=1))
            self.classifier: nn.Module | None = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
            self.out_channels = last
        else:
            self.classifier = None
        self.features = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def num_shift_buffers(self) -> int:
        """How many blocks carry a temporal-shift buffer."""
        return sum(1 for m in self.features if isinstance(m, InvertedResidual) and m.shift is not None)

    def forward_features(
        self, x: Tensor, shift_state: ShiftState | None = None, steps: int = 1
    ) -> tuple[Tensor, ShiftState]:
        """Feature map and the updated shift buffers (empty without shift).

        Args:
            x: (steps * B, 3, H, W) normalised images: ``steps`` consecutive frames of B
                streams, time-major (one frame each when ``steps`` is 1).
            shift_state: Buffers from the frame before, one per shifting block, or
                ``None`` for the first frame (zeros).
            steps: Consecutive frames in ``x``; the result is the same as ``steps`` calls
                with one frame each, the buffers carried, and the buffers returned are the last frame's.
        """
        new_state: list[Tensor] = []
        k = 0
        for layer in self.features:
            if isinstance(layer, InvertedResidual) and layer.shift is not None:
                buf = shift_state[k] if shift_state is not None else None
                x, nb = layer.forward_with_shift(x, buf, steps)
                assert nb is not None
                new_state.append(nb)
                k += 1
            else:
                x = layer(x)
        return x, tuple(new_state)

    def forward(self, x: Tensor) -> Tensor:
        """Features, or ImageNet logits when ``include_top``."""
        feats, _ = self.forward_features(x)
        if self.classifier is None:
            return feats
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(feats, 1), 1))
