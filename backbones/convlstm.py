"""The speed-optimised bottleneck ConvLSTM of *Looking Fast and Slow* (Sec. 3.3).

Per step, with ``*`` a depthwise-separable 3x3 convolution computed in ``groups`` groups::

    b_t = relu6(W_b * [x_t, h_{t-1}])                    bottleneck
    f_t, i_t, o_t = sigmoid(W_f * b_t), sigmoid(W_i * b_t), sigmoid(W_o * b_t)
    c_t = f_t . c_{t-1} + i_t . relu6(W_c * b_t)
    h_t = o_t . relu6(c_t)
    M_t = [h_t, b_t]                                     output with the bottleneck skip

Grouping splits x, h, b and c into ``groups`` slices that only talk within their slice
(the paper's G); this cuts the gate convolutions' cost by G. Whether a step may replace the
carried state is the detector's decision (``skip_light_updates``), not this module's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class LSTMState(NamedTuple):
    """Carried memory: cell ``c`` and hidden ``h``, each (B, hidden, H, W)."""

    c: Tensor
    h: Tensor


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 then grouped pointwise 1x1 (no normalisation: recurrent inputs)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, groups=groups, bias=True),
        )


class BottleneckConvLSTM(nn.Module):
    """Grouped bottleneck ConvLSTM.

    Args:
        in_channels: Channels of x_t (all extractors are projected to this).
        hidden_channels: Channels of h and c.
        bottleneck_channels: Channels of b_t.
        groups: The paper's G; every channel count must be divisible by it.
    """

    def __init__(
        self, in_channels: int = 64, hidden_channels: int = 64, bottleneck_channels: int = 64, groups: int = 4
    ) -> None:
        super().__init__()
        for name, value in (("in", in_channels), ("hidden", hidden_channels), ("bottleneck", bottleneck_channels)):
            if value % groups:
                raise ValueError(f"{name}_channels={value} is not divisible by groups={groups}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.bottleneck_channels = bottleneck_channels
        self.groups = groups
        self.bottleneck = SeparableConv(in_channels + hidden_channels, bottleneck_channels, groups)
        self.gates = SeparableConv(bottleneck_channels, 4 * hidden_channels, groups)
        with torch.no_grad():
            # forget-gate bias +1: remember by default (Jozefowicz et al.)
            pointwise = self.gates[1]
            assert isinstance(pointwise, nn.Conv2d) and pointwise.bias is not None
            bias = pointwise.bias.view(groups, 4, hidden_channels // groups)
            bias[:, 0].fill_(1.0)

    @property
    def out_channels(self) -> int:
        """Channels of the output ``[h_t, b_t]``."""
        return self.hidden_channels + self.bottleneck_channels

    def initial_state(self, batch: int, height: int, width: int, device: torch.device | None = None) -> LSTMState:
        """Zero state."""
        z = torch.zeros(batch, self.hidden_channels, height, width, device=device)
        return LSTMState(z, z.clone())

    def forward(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """One step. Returns the output ``M_t = [h_t, b_t]`` and the new state."""
        B, _, H, W = x.shape
        G = self.groups
        # interleave the groups of x and h so grouped convs see [x_g, h_g] together
        xh = torch.cat([x.view(B, G, -1, H, W), state.h.view(B, G, -1, H, W)], dim=2).view(B, -1, H, W)
        b = nn.functional.relu6(self.bottleneck(xh))
        gates = self.gates(b).view(B, G, 4, self.hidden_channels // G, H, W)
        f = torch.sigmoid(gates[:, :, 0]).reshape(B, -1, H, W)
        i = torch.sigmoid(gates[:, :, 1]).reshape(B, -1, H, W)
        o = torch.sigmoid(gates[:, :, 2]).reshape(B, -1, H, W)
        g = nn.functional.relu6(gates[:, :, 3]).reshape(B, -1, H, W)
        c = f * state.c + i * g
        h = o * nn.functional.relu6(c)
        return torch.cat([h, b], dim=1), LSTMState(c, h)
