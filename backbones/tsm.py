"""TSM's online uni-directional temporal shift (Lin et al., Temporal Shift Module).

At every residual branch, the first ``fraction`` of the channels are replaced by the same
channels of the previous frame, cached in a buffer; the rest stay. Shifting moves memory,
it adds no FLOPs. Online (causal) mode only shifts from past to present. A run of consecutive
frames can go through in one batch (``steps``): block by block, each frame's buffer is the
previous frame's input to that block, which the batch already holds.
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

    def forward(self, x: Tensor, buffer: Tensor | None, steps: int = 1) -> tuple[Tensor, Tensor]:
        """Return the shifted input and the buffer to pass to the next frame.

        With ``steps`` > 1, ``x`` holds ``steps`` consecutive frames of B streams, time-major
        (rows ``t * B .. t * B + B - 1`` are frame t): each frame takes its channels from the
        frame before it in ``x`` (the first from ``buffer``), exactly as ``steps`` calls of
        one frame each would, in one pass.

        Args:
            x: (steps * B, C, H, W) current activations.
            buffer: (B, fold, H, W) activations of the frame before the first; ``None`` = zeros.
            steps: Consecutive frames in ``x``.

        Returns:
            The shifted (steps * B, C, H, W) input and the last frame's (B, fold, H, W) buffer.
        """
        current = x[:, : self.fold]
        if steps == 1:  # the online runtime's frame: no reshaping on the way
            past = torch.zeros_like(current) if buffer is None else buffer
            return torch.cat([past, x[:, self.fold :]], dim=1), current
        rows, _, h, w = x.shape
        frames = current.reshape(steps, rows // steps, self.fold, h, w)
        first = torch.zeros_like(frames[0]) if buffer is None else buffer
        past = torch.cat([first[None], frames[:-1]]).reshape(rows, self.fold, h, w)
        return torch.cat([past, x[:, self.fold :]], dim=1), frames[-1]
