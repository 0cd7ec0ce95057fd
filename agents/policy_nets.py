"""Feature extractors for Q-learning on ``gistgym/Interleave-v0`` (SB3 ``MultiInputPolicy``).

:class:`InterleavePolicyNet` is the policy network of *Looking Fast and Slow* (Liu et al.
2019, Fig. 4). With ``H`` the memory's hidden channels, ``g`` its grid, ``L`` the history
length, ``C`` = ``channels`` and ``m`` actions, a forward pass is::

    state (4H, g, g) = [c | h | c - c_prev | h - h_prev]
      -> Conv2d(4H, C, 3x3, stride s, pad 1, groups=4) + ReLU6   # one group per map: c, h, dc, dh
      -> Conv2d(C, C, 3x3, pad 1, groups=C)   + ReLU6   # depthwise
      -> Conv2d(C, C, 1x1)                    + ReLU6   # pointwise
      -> global max pool over the g x g grid  -> (C,)
      -> concat float(history) (L,)           -> features (C + L,)
    SB3's QNetwork with ``net_arch=[]``: Linear(C + L, m) -> Q-values.

The grouped convolution has stride ``s`` (default 2: the 8 x 8 memory grid becomes 4 x 4),
the others stride 1 with "same" padding. The default ``C = 128`` puts the whole Q network
near the paper's 89.6K parameters. For the embedded detector (H = 64, g = 8, L = 20, m = 2)
the counts (:func:`policy_net_report`) are:

* parameters: 91,946 (paper: 89.6K);
* multiply-adds per observation: 1,460,520 with s = 2 (paper: 1.76M); 5,841,192 with
  s = 1. The paper does not give its grid or strides; s = 2 is 4x cheaper to train and
  what ``gistgym train`` uses.

:class:`MLPExtractor` is a comparison extractor without convolutions: the global average
of each of the 4H state channels, concatenated with the history, through an MLP.

Use either with ``DQN("MultiInputPolicy", env, policy_kwargs=dict(
features_extractor_class=InterleavePolicyNet, net_arch=[], normalize_images=False))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn

PAPER_PARAMETERS = 89_600
"""Parameter count of the paper's policy network (Liu et al. 2019, Sec. 4.2)."""
PAPER_MACS = 1_760_000
"""Multiply-adds of the paper's policy network."""


def _state_and_history(observation_space: gym.Space) -> tuple[spaces.Box, int]:
    """The ``state`` Box (4H, g, g) and the history length of an Interleave-v0 observation space."""
    if not isinstance(observation_space, spaces.Dict):
        raise TypeError(f"expected a Dict observation space, got {observation_space}")
    state, history = observation_space["state"], observation_space["history"]
    if not isinstance(state, spaces.Box) or len(state.shape) != 3 or state.shape[0] % 4:
        raise ValueError(f"'state' must be a Box of shape (4H, g, g), got {state}")
    if not isinstance(history, spaces.MultiBinary):
        raise ValueError(f"'history' must be MultiBinary, got {history}")
    return state, int(math.prod(history.shape))


def _num_cues(observation_space: gym.Space) -> int:
    """Length of the optional ``cues`` entry (0 without it)."""
    assert isinstance(observation_space, spaces.Dict)
    cues = observation_space.spaces.get("cues")
    if cues is None:
        return 0
    if not isinstance(cues, spaces.Box) or len(cues.shape) != 1:
        raise ValueError(f"'cues' must be a Box of shape (Q,), got {cues}")
    return int(cues.shape[0])


def _extras(observations: dict[str, th.Tensor]) -> list[th.Tensor]:
    """History (as float) and, when the observation has them, the cues: what every extractor appends."""
    out = [observations["history"].float().flatten(1)]
    if "cues" in observations:
        out.append(observations["cues"].float())
    return out


class InterleavePolicyNet(BaseFeaturesExtractor):
    """Grouped conv + depthwise-separable conv + global max pool, then the action history.

    Args:
        observation_space: Dict with ``state`` Box((4H, g, g)) and ``history`` MultiBinary(L)
            (and, with the environment's ``cues=True``, ``cues`` Box((Q,)), appended after the history).
        channels: Width ``C`` of the three conv layers (a multiple of 4). Features have
            ``C + L (+ Q)`` entries.
        stride: Stride of the grouped convolution.
    """

    def __init__(self, observation_space: gym.Space, channels: int = 128, stride: int = 2) -> None:
        state, history_len = _state_and_history(observation_space)
        if channels <= 0 or channels % 4:
            raise ValueError(f"channels must be a positive multiple of 4, got {channels}")
        super().__init__(observation_space, features_dim=channels + history_len + _num_cues(observation_space))
        in_ch = state.shape[0]
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.grouped = nn.Conv2d(in_ch, channels, 3, stride=stride, padding=1, groups=4)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU6()

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """Features (B, C + L) of a batch of preprocessed observations."""
        x = self.act(self.grouped(observations["state"]))
        x = self.act(self.depthwise(x))
        x = self.act(self.pointwise(x))
        pooled = th.amax(x, dim=(2, 3))
        return th.cat([pooled, *_extras(observations)], dim=1)


class MLPExtractor(BaseFeaturesExtractor):
    """Global average of each state channel (4H) + history (L) (+ cues) through an MLP with ReLUs.

    Args:
        observation_space: Dict with ``state`` Box((4H, g, g)) and ``history`` MultiBinary(L)
            (and optionally ``cues``).
        hidden_sizes: Widths of the MLP's layers; the last one is the features' size.
    """

    def __init__(self, observation_space: gym.Space, hidden_sizes: Sequence[int] = (256, 256)) -> None:
        state, history_len = _state_and_history(observation_space)
        if not hidden_sizes:
            raise ValueError("hidden_sizes must not be empty")
        super().__init__(observation_space, features_dim=int(hidden_sizes[-1]))
        layers: list[nn.Module] = []
        width = state.shape[0] + history_len + _num_cues(observation_space)
        for size in hidden_sizes:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        self.mlp = nn.Sequential(*layers)

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """Features (B, hidden_sizes[-1]) of a batch of preprocessed observations."""
        pooled = observations["state"].mean(dim=(2, 3))
        return self.mlp(th.cat([pooled, *_extras(observations)], dim=1))


class CueExtractor(BaseFeaturesExtractor):
    """The runtime cues (Q) and the history (L) through an MLP with ReLUs; the state maps are not read.

    For observations made with the environment's ``cues=True``: a few hundred
    multiply-adds per decision instead of the paper net's 1.5M, so the policy's own cost
    is negligible beside the light extractor's.

    Args:
        observation_space: Dict with ``history`` MultiBinary(L) and ``cues`` Box((Q,)).
        hidden_sizes: Widths of the MLP's layers; the last one is the features' size.
    """

    def __init__(self, observation_space: gym.Space, hidden_sizes: Sequence[int] = (64, 64)) -> None:
        _, history_len = _state_and_history(observation_space)
        num_cues = _num_cues(observation_space)
        if not num_cues:
            raise ValueError("the cue extractor needs a 'cues' observation (make the environment with cues=True)")
        if not hidden_sizes:
            raise ValueError("hidden_sizes must not be empty")
        super().__init__(observation_space, features_dim=int(hidden_sizes[-1]))
        layers: list[nn.Module] = []
        width = history_len + num_cues
        for size in hidden_sizes:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        self.mlp = nn.Sequential(*layers)

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """Features (B, hidden_sizes[-1]) of a batch of preprocessed observations."""
        return self.mlp(th.cat(_extras(observations), dim=1))


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_macs(q_net: nn.Module, observation_space: gym.Space) -> int:
    """Multiply-adds of one forward pass of ``q_net`` on a single (all-zero) observation.

    Counted analytically with forward hooks: a ``Conv2d`` costs
    ``out_elems * in_channels / groups * kh * kw``, a ``Linear`` ``in_features * out_features``
    per row. Other operations (activations, pooling, biases) are not counted.

    Args:
        q_net: A module taking a batch of observations of ``observation_space``
            (e.g. SB3's ``QNetwork``: ``model.q_net``).
        observation_space: Its observation space (Dict or Box).

    Returns:
        The multiply-add count.
    """
    total = 0

    def hook(mod: nn.Module, _inp: Any, out: th.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out.numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total += (out.numel() // mod.out_features) * mod.in_features * mod.out_features

    def zeros(space: gym.Space) -> th.Tensor:
        assert space.shape is not None
        return th.zeros((1, *space.shape), dtype=th.float32)

    obs: th.Tensor | dict[str, th.Tensor]
    if isinstance(observation_space, spaces.Dict):
        obs = {key: zeros(sub) for key, sub in observation_space.spaces.items()}
    else:
        obs = zeros(observation_space)
    handles = [m.register_forward_hook(hook) for m in q_net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with th.no_grad():
            q_net(obs)
    finally:
        for handle in handles:
            handle.remove()
    return total


def policy_net_report(observation_space: gym.Space, num_actions: int, **kwargs: Any) -> dict[str, int]:
    """Parameters and multiply-adds of the DQN Q network with :class:`InterleavePolicyNet`.

    Args:
        observation_space: The Interleave-v0 observation space.
        num_actions: m, the number of extractors.
        **kwargs: Passed to :class:`InterleavePolicyNet` (e.g. ``channels``).

    Returns:
        ``{"parameters", "macs", "paper_parameters", "paper_macs"}``.
    """
    policy = DQNPolicy(
        observation_space,
        spaces.Discrete(num_actions),
        lr_schedule=lambda _: 0.0,
        net_arch=[],
        features_extractor_class=InterleavePolicyNet,
        features_extractor_kwargs=kwargs,
        normalize_images=False,
    )
    return {
        "parameters": count_parameters(policy.q_net),
        "macs": count_macs(policy.q_net, observation_space),
        "paper_parameters": PAPER_PARAMETERS,
        "paper_macs": PAPER_MACS,
    }


def interleave_policy_kwargs(name: str, algo: str) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` of Interleave-v0's ``--extractor NAME`` (paper, mlp, cues) for ``--algo``."""
    cls = {"paper": InterleavePolicyNet, "mlp": MLPExtractor, "cues": CueExtractor}[name]
    # The paper's Q head is one fully connected layer on the extractor's features.
    net_arch: Any = {"pi": [64], "vf": [64]} if algo == "ppo" else []
    return {"features_extractor_class": cls, "net_arch": net_arch, "normalize_images": False}
