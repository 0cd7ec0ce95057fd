"""Double DQN targets and training step, and the Interleave-v0 policy networks."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.logger import Logger
from torch import nn

from gistgym.agents.ddqn import DoubleDQN, double_dqn_targets, vanilla_dqn_targets
from gistgym.agents.policy_nets import (
    InterleavePolicyNet,
    MLPExtractor,
    count_macs,
    count_parameters,
    policy_net_report,
)

th.set_num_threads(1)

H, G, L, M = 4, 4, 5, 2


def obs_space(hidden: int = H, grid: int = G, history_len: int = L) -> spaces.Dict:
    return spaces.Dict(
        {
            "state": spaces.Box(-10.0, 10.0, (4 * hidden, grid, grid), np.float32),
            "history": spaces.MultiBinary(history_len),
        }
    )


class FakeInterleaveEnv(gym.Env[dict[str, Any], np.int64]):
    """Random observations with Interleave-v0's spaces; truncated after 6 steps."""

    def __init__(self) -> None:
        self.observation_space = obs_space()
        self.action_space = spaces.Discrete(M)
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "state": self.np_random.uniform(-1, 1, (4 * H, G, G)).astype(np.float32),
            "history": self.np_random.integers(0, 2, L).astype(np.int8),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.int64) -> tuple[dict[str, Any], float, bool, bool, dict]:
        self.t += 1
        return self._obs(), float(self.np_random.normal()), False, self.t >= 6, {}


def policy_kwargs(**extractor_kwargs: Any) -> dict[str, Any]:
    return dict(
        features_extractor_class=InterleavePolicyNet,
        features_extractor_kwargs=extractor_kwargs or dict(channels=8),
        net_arch=[],
        normalize_images=False,
    )


# --- targets -------------------------------------------------------------------------------
def test_double_vs_vanilla_targets_hand_computed() -> None:
    q_online = th.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    q_target = th.tensor([[4.0, 1.0, 0.0], [0.0, 2.0, 7.0], [1.0, 6.0, 3.0]])
    rewards = th.tensor([[1.0], [0.5], [-1.0]])
    dones = th.tensor([[0.0], [0.0], [1.0]])
    gamma = 0.5
    # online argmax: 1, 0, 2 -> target scores 1, 0, 3; row 2 is terminal.
    expected_double = th.tensor([[1.0 + 0.5 * 1.0], [0.5 + 0.5 * 0.0], [-1.0]])
    # target max: 4, 7, 6.
    expected_vanilla = th.tensor([[1.0 + 0.5 * 4.0], [0.5 + 0.5 * 7.0], [-1.0]])
    double = double_dqn_targets(q_online, q_target, rewards, dones, gamma)
    vanilla = vanilla_dqn_targets(q_target, rewards, dones, gamma)
    assert double.shape == (3, 1)
    assert th.allclose(double, expected_double)
    assert th.allclose(vanilla, expected_vanilla)
    assert not th.allclose(double, vanilla)
    # (B,) inputs and a per-row (n-step) discount tensor.
    per_row = double_dqn_targets(q_online, q_target, rewards.flatten(), dones.flatten(), th.tensor([0.5, 0.25, 0.5]))
    assert th.allclose(per_row, th.tensor([[1.5], [0.5], [-1.0]]))


def _model_with_one_transition(cls: type[DQN], done: bool, truncated: bool) -> DQN:
    """A model whose buffer holds one transition (action 1, reward 0.5) and whose Q heads are constant.

    Online Q = (0, 1) everywhere (argmax 1), target Q = (5, -3) everywhere (argmax 0), gamma = 0.9.
    """
    env = FakeInterleaveEnv()
    model = cls(
        "MultiInputPolicy",
        env,
        learning_rate=0.0,
        buffer_size=10,
        learning_starts=0,
        gamma=0.9,
        policy_kwargs=policy_kwargs(),
        device="cpu",
        seed=0,
    )
    model.set_logger(Logger(folder=None, output_formats=[]))
    obs, _ = env.reset(seed=0)
    next_obs, *_ = env.step(np.int64(1))
    assert isinstance(model.replay_buffer, DictReplayBuffer)
    model.replay_buffer.add(
        {k: v[None] for k, v in obs.items()},
        {k: v[None] for k, v in next_obs.items()},
        np.array([1]),
        np.array([0.5]),
        np.array([done]),
        [{"TimeLimit.truncated": truncated}],
    )
    for net, bias in ((model.q_net, (0.0, 1.0)), (model.q_net_target, (5.0, -3.0))):
        head = net.q_net[0]
        assert isinstance(head, nn.Linear)
        with th.no_grad():
            head.weight.zero_()
            head.bias.copy_(th.tensor(bias))
    return model


@pytest.mark.parametrize(
    ("cls", "done", "truncated", "target"),
    [
        (DoubleDQN, False, False, 0.5 + 0.9 * -3.0),  # target scores the online argmax (1)
        (DoubleDQN, True, True, 0.5 + 0.9 * -3.0),  # time limit: bootstraps
        (DoubleDQN, True, False, 0.5),  # terminal
        (DQN, False, False, 0.5 + 0.9 * 5.0),  # vanilla: target's own max
    ],
)
def test_train_uses_double_target(cls: type[DQN], done: bool, truncated: bool, target: float) -> None:
    model = _model_with_one_transition(cls, done, truncated)
    model.train(gradient_steps=1, batch_size=4)
    err = abs(1.0 - target)  # current Q of the taken action 1 is 1
    expected_loss = 0.5 * err**2 if err < 1 else err - 0.5
    assert model.logger.name_to_value["train/loss"] == pytest.approx(expected_loss, abs=1e-5)
    if cls is DoubleDQN:
        assert model.logger.name_to_value["train/q_mean"] == pytest.approx(1.0)
        assert model.logger.name_to_value["train/n_updates"] == 1


# --- networks ------------------------------------------------------------------------------
def _batch(space: spaces.Dict, n: int = 3) -> dict[str, th.Tensor]:
    gen = th.Generator().manual_seed(0)
    state_shape, hist_shape = space["state"].shape, space["history"].shape
    assert state_shape is not None and hist_shape is not None
    return {
        "state": th.randn((n, *state_shape), generator=gen),
        "history": th.randint(0, 2, (n, *hist_shape), generator=gen).float(),
    }


@pytest.mark.parametrize(("hidden", "grid", "history_len", "channels"), [(4, 4, 5, 8), (3, 5, 7, 12)])
def test_policy_net_feature_dim(hidden: int, grid: int, history_len: int, channels: int) -> None:
    space = obs_space(hidden, grid, history_len)
    net = InterleavePolicyNet(space, channels=channels)
    feats = net(_batch(space))
    assert net.features_dim == channels + history_len
    assert feats.shape == (3, channels + history_len)
    batch = _batch(space)
    assert th.equal(net(batch)[:, channels:], batch["history"])


def test_policy_net_rejects_bad_channels() -> None:
    with pytest.raises(ValueError):
        InterleavePolicyNet(obs_space(), channels=10)


def test_grouped_conv_has_one_group_per_map() -> None:
    net = InterleavePolicyNet(obs_space(), channels=8)
    assert net.grouped.groups == 4
    batch = _batch(obs_space())
    base = net.grouped(batch["state"])
    per_group = 8 // 4
    for group in range(4):
        state = batch["state"].clone()
        state[:, group * H : (group + 1) * H] += 1.0  # perturb one map (c, h, dc or dh)
        out = net.grouped(state)
        changed = (out - base).abs().amax(dim=(0, 2, 3)) > 0
        expected = th.zeros(8, dtype=th.bool)
        expected[group * per_group : (group + 1) * per_group] = True
        assert th.equal(changed, expected), group


def test_counts_hand_computed() -> None:
    c = 8
    grouped = c * (4 * H // 4) * 9 + c
    depthwise = c * 9 + c
    pointwise = c * c + c
    head = (c + L) * M + M
    report = policy_net_report(obs_space(), M, channels=c, stride=1)
    assert report["parameters"] == grouped + depthwise + pointwise + head == 476
    macs = G * G * c * (4 * H // 4) * 9 + G * G * c * 9 + G * G * c * c + (c + L) * M
    assert report["macs"] == macs == 6810
    strided = policy_net_report(obs_space(), M, channels=c, stride=2)  # 2 x 2 grid after the first conv
    assert strided["parameters"] == 476
    assert strided["macs"] == 2 * 2 * c * (4 * H // 4) * 9 + 2 * 2 * c * 9 + 2 * 2 * c * c + (c + L) * M
    assert report["paper_parameters"] == 89_600 and report["paper_macs"] == 1_760_000
    assert count_parameters(nn.Linear(3, 2)) == 8
    assert count_macs(nn.Linear(3, 2), spaces.Box(0, 1, (3,))) == 6


def test_default_counts_near_paper() -> None:
    report = policy_net_report(obs_space(64, 8, 20), 2)
    assert report["parameters"] == 91_946
    assert report["macs"] == 1_460_520
    assert policy_net_report(obs_space(64, 8, 20), 2, stride=1)["macs"] == 5_841_192


@pytest.mark.parametrize("cls", [DQN, DoubleDQN])
def test_learns_a_few_steps_on_fake_env(cls: type[DQN]) -> None:
    model = cls(
        "MultiInputPolicy",
        FakeInterleaveEnv(),
        buffer_size=64,
        learning_starts=8,
        batch_size=8,
        target_update_interval=10,
        policy_kwargs=policy_kwargs(channels=8),
        device="cpu",
        seed=0,
    )
    assert isinstance(model.q_net.features_extractor, InterleavePolicyNet)
    before = [p.detach().clone() for p in model.q_net.parameters()]
    model.learn(total_timesteps=32)
    assert model._n_updates > 0
    assert any(not th.equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))
    action, _ = model.predict(FakeInterleaveEnv().reset(seed=1)[0], deterministic=True)
    assert int(action) in (0, 1)


def test_mlp_extractor_shape() -> None:
    space = obs_space()
    net = MLPExtractor(space, hidden_sizes=(16, 6))
    assert net.features_dim == 6
    assert net(_batch(space)).shape == (3, 6)
    assert MLPExtractor(space).features_dim == 256
    linears = [m for m in net.mlp if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 4 * H + L
