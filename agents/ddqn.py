"""Double DQN (van Hasselt et al. 2016) on top of Stable-Baselines3's DQN.

The only change to SB3's :class:`~stable_baselines3.DQN` is the TD target: the online
network picks the next action, the target network scores it::

    y = r + (1 - done) * gamma * Q_target(s', argmax_a' Q_online(s', a'))

instead of ``r + (1 - done) * gamma * max_a' Q_target(s', a')``. ``done`` comes from the
replay buffer, which already zeroes it on time-limit truncations
(``handle_timeout_termination``), so truncated episodes bootstrap. ``train/q_mean`` (the
mean Q-value of the taken actions) is logged next to ``train/loss``.
"""

from __future__ import annotations

import numpy as np
import torch as th
import torch.nn.functional as F
from stable_baselines3 import DQN


def _bootstrap(rewards: th.Tensor, dones: th.Tensor, gamma: th.Tensor | float, next_q: th.Tensor) -> th.Tensor:
    """``r + (1 - done) * gamma * next_q`` with every tensor as a (B, 1) column."""
    if isinstance(gamma, th.Tensor):
        gamma = gamma.reshape(-1, 1)
    return rewards.reshape(-1, 1) + (1 - dones.reshape(-1, 1)) * gamma * next_q.reshape(-1, 1)


def vanilla_dqn_targets(
    q_target_next: th.Tensor, rewards: th.Tensor, dones: th.Tensor, gamma: th.Tensor | float
) -> th.Tensor:
    """DQN targets ``r + (1 - done) * gamma * max_a' Q_target(s', a')``.

    Args:
        q_target_next: Target network's Q-values of the next observations, (B, m).
        rewards: Rewards, (B,) or (B, 1).
        dones: 1.0 where the episode terminated (not truncated), (B,) or (B, 1).
        gamma: Discount, a float or a (B,)/(B, 1) tensor (n-step returns).

    Returns:
        Targets, (B, 1).
    """
    next_q = q_target_next.max(dim=1).values
    return _bootstrap(rewards, dones, gamma, next_q)


def double_dqn_targets(
    q_online_next: th.Tensor,
    q_target_next: th.Tensor,
    rewards: th.Tensor,
    dones: th.Tensor,
    gamma: th.Tensor | float,
) -> th.Tensor:
    """Double DQN targets ``r + (1 - done) * gamma * Q_target(s', argmax_a' Q_online(s', a'))``.

    Args:
        q_online_next: Online network's Q-values of the next observations, (B, m).
        q_target_next: Target network's Q-values of the next observations, (B, m).
        rewards: Rewards, (B,) or (B, 1).
        dones: 1.0 where the episode terminated (not truncated), (B,) or (B, 1).
        gamma: Discount, a float or a (B,)/(B, 1) tensor (n-step returns).

    Returns:
        Targets, (B, 1).
    """
    best = q_online_next.argmax(dim=1, keepdim=True)
    next_q = th.gather(q_target_next, dim=1, index=best)
    return _bootstrap(rewards, dones, gamma, next_q)


class DoubleDQN(DQN):
    """SB3's DQN with the Double DQN target; every other argument and behaviour is DQN's."""

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """Run ``gradient_steps`` Double DQN updates on batches from the replay buffer."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        losses, q_means = [], []
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # For n-step replay, the discount is gamma**n (when no early termination).
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            with th.no_grad():
                target_q_values = double_dqn_targets(
                    self.q_net(replay_data.next_observations),
                    self.q_net_target(replay_data.next_observations),
                    replay_data.rewards,
                    replay_data.dones,
                    discounts,
                )

            current_q_values = self.q_net(replay_data.observations)
            current_q_values = th.gather(current_q_values, dim=1, index=replay_data.actions.long())

            loss = F.smooth_l1_loss(current_q_values, target_q_values)
            losses.append(loss.item())
            q_means.append(current_q_values.mean().item())

            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        self.logger.record("train/q_mean", np.mean(q_means))
