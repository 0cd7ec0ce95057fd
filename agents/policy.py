"""The one interface every scheduling policy of gistgym implements.

Trained agents (Double DQN, PPO, the AdaFrame agent), the baselines (heavy-only, fixed
tau, random, oracle) and exported modules are all driven the same way by evaluation,
comparison and the online runtime: a batch of observations (and the matching ``info``
dicts) in, a batch of actions out. A policy that needs memory across steps (a fixed-tau
counter, a recurrent agent) keeps it per row and is told when rows start new episodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from gymnasium import spaces


@runtime_checkable
class Policy(Protocol):
    """A batched, deterministic-at-evaluation scheduling policy.

    Attributes:
        name: Key of the policy in comparison tables and ``--json`` output
            (``"heavy"``, ``"tau=9"``, ``"random@0.10"``, ``"oracle"``, a run directory's name).
    """

    name: str

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Forget all per-row memory and prepare for ``num_envs`` rows (seeding any randomness)."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Rows ``rows`` (int array) just started a new episode: forget their per-row memory."""

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Actions for every row.

        Args:
            obs: Batched observation, each entry with a leading ``num_envs`` axis.
            infos: One ``info`` dict per row, from the step (or reset) that produced ``obs``.

        Returns:
            (num_envs,) int64 actions (or float32 for continuous action spaces).
        """
        ...


class SB3Policy:
    """A Stable-Baselines3 model as a :class:`Policy`: its greedy (deterministic) action.

    Args:
        model: A trained SB3 model (DQN, DoubleDQN, PPO) over the environment's observation.
        name: The policy's name in comparisons (a run directory's name).
    """

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Stateless (feed-forward policies)."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Stateless."""

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``model.predict(obs, deterministic=True)``: (N,) int64, or (N, d) float32 for a Box action space."""
        actions, _ = self.model.predict(dict(obs), deterministic=True)
        if isinstance(self.model.action_space, spaces.Box):  # continuous (Glimpse locations)
            return np.asarray(actions, dtype=np.float32).reshape(len(infos), -1)
        return np.asarray(actions, dtype=np.int64).reshape(len(infos))
