"""TSM's online uni-directional temporal shift (Lin et al., Temporal Shift Module).

At every residual branch, the first ``fraction`` of the channels are replaced by the same
channels of the previous frame, cached in a buffer; the rest stay. Shifting moves memory,
it adds no FLOPs. Online (causal) mode only shifts from past to present.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ShiftState = tuple[Tensor, ...]
"""One buffer per shifting block: (B, C_shift, H, W) activations of the previous frame."""


class TemporalShift(nn.Module):
    """Replace the first ``fraction`` of channels with the previous frame's.

    Args:
        channels: Channels of the input.
        fraction: Fraction of channels to shift (TSM uses 1/8).
    """

    def __init__(self, channels: int, fraction: float = 0.125) -> None:
        super().__init__()
        self.fold = max(1, int(channels * fraction))

    def forward(self, x: Tensor, buffer: Tensor | None) -> tuple[Tensor, Tensor]:
        """Return the shifted input and the buffer to pass to the next frame.

        Args:
            x: (B, C, H, W) current activations.
            buffer: (B, fold, H, W) activations of the previous frame; ``None`` = zeros.
        """
        current = x[:, : self.fold]
        past = torch.zeros_like(current) if buffer is None else buffer
        return torch.cat([past, x[:, self.fold :]], dim=1), current
