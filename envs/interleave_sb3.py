"""``gistgym/Interleave-v0`` as a Stable-Baselines3 ``VecEnv`` over the same batched core.

SB3 expects same-step resets: when a clip ends, ``step_wait`` returns ``done = True``, the
clip's last observation in ``infos[i]["terminal_observation"]``, ``infos[i]
["TimeLimit.truncated"] = True`` (the episode was cut by its clip length, not terminated)
and, in the returned observation, the first observation of the next clip — exactly what
SB3's ``DummyVecEnv`` makes of single environments, but with one torch call for all the
steps and one more for the frame 0 of all the clips that restart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from gistgym.envs.interleave import single_info
from gistgym.envs.interleave_core import (
    DEFAULT_CLIP_LEN,
    DEFAULT_EXTRACTORS,
    DEFAULT_HISTORY_LEN,
    DEFAULT_SPEED_REWARD,
    InterleaveCore,
    check_no_unknown_kwargs,
)
from gistgym.envs.interleave_vector import VECTOR_ARGUMENTS, check_actions
from gistgym.errors import EnvArgumentError, EnvStateError


class InterleaveSB3VecEnv(VecEnv):
    """N ``Interleave`` episodes as an SB3 ``VecEnv`` (same-step autoreset).

    Arguments are those of :class:`~gistgym.envs.interleave_vector.InterleaveVectorEnv`.
    Seeds follow SB3: ``venv.seed(s)`` makes the next ``reset()`` seed slot ``i`` with
    ``s + i`` (as ``DummyVecEnv`` seeds its environments), ``venv.set_options(...)`` passes
    ``{"video_id", "start"}`` per slot to the next ``reset()``; automatic resets draw the
    next clip with the slot's generator. The slots share one core, so ``get_attr``,
    ``set_attr`` and ``env_method`` act on this object itself, the same for every index.
    Rewards are float32 (SB3's buffers), computed in float64 as in the single environment.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
        num_envs: int = 1,
        split: str = "train",
        clip_len: int = DEFAULT_CLIP_LEN,
        extractors: Sequence[str] = DEFAULT_EXTRACTORS,
        speed_reward: Sequence[float] = DEFAULT_SPEED_REWARD,
        skip_light_updates: bool | None = None,
        history_len: int = DEFAULT_HISTORY_LEN,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        check_no_unknown_kwargs(type(self).__name__, unknown, VECTOR_ARGUMENTS)
        if render_mode is not None:
            raise EnvArgumentError(f"render_mode={render_mode!r} is not supported (this environment has no rendering)")
        self.core = InterleaveCore(
            num_envs,
            cache_path,
            split=split,
            clip_len=clip_len,
            extractors=extractors,
            speed_reward=speed_reward,
            skip_light_updates=skip_light_updates,
            history_len=history_len,
        )
        self.render_mode = None  # read by VecEnv.__init__ through get_attr
        super().__init__(self.core.num_slots, self.core.observation_space(), self.core.action_space())
        self._slots = np.arange(self.num_envs, dtype=np.int64)
        self._zeros = np.zeros(self.num_envs, dtype=np.int64)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._actions: np.ndarray | None = None
        self._started = False

    def _rng(self, slot: int) -> np.random.Generator:
        rng = self._rngs[slot]
        if rng is None:
            rng, _ = seeding.np_random(None)
            self._rngs[slot] = rng
        return rng

    def reset(self) -> VecEnvObs:
        """Start a new clip in every slot, using the seeds and options set since the last reset."""
        for i, s in enumerate(self._seeds):
            if s is not None:
                self._rngs[i], _ = seeding.np_random(s)
        for i in range(self.num_envs):
            video_id, start = self.core.clip_from_options(self._options[i], self._rng(i))
            self.core.load(i, video_id, start)
        tr = self.core.advance(self._slots, self._zeros)
        self.reset_infos = [single_info(tr, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        self._started = True
        return {"state": tr.state, "history": tr.history}

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`.

        Raises:
            InvalidActionError: ``actions`` are not N integers of the action space.
        """
        self._actions = check_actions(actions, self.num_envs, self.core.num_actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Advance every slot; finished clips restart in the same call (SB3 semantics).

        Raises:
            EnvStateError: Called before ``reset`` or without ``step_async``.
        """
        if not self._started or self._actions is None:
            raise EnvStateError("call reset() and step_async(actions) before step_wait()")
        tr = self.core.advance(self._slots, self._actions)
        self._actions = None
        obs = {"state": tr.state, "history": tr.history}
        dones = tr.truncated.copy()
        infos = [single_info(tr, i) for i in range(self.num_envs)]
        for i, info in enumerate(infos):
            info["TimeLimit.truncated"] = bool(tr.truncated[i])  # never terminated: truncated means cut
        done = np.flatnonzero(dones)
        if done.size:
            for i in done.tolist():
                infos[i]["terminal_observation"] = {"state": tr.state[i].copy(), "history": tr.history[i].copy()}
                self.core.load(i, *self.core.choose_clip(self._rng(i)))
            fresh = self.core.advance(done, self._zeros[: done.size])
            obs["state"][done] = fresh.state
            obs["history"][done] = fresh.history
            for j, i in enumerate(done.tolist()):
                self.reset_infos[i] = single_info(fresh, j)
        return obs, tr.rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        """Release the cache file handle."""
        self.core.close()

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """``getattr(self, attr_name)`` once per index (the slots share this object)."""
        return [getattr(self, attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """``setattr(self, attr_name, value)`` (shared by every slot, whatever ``indices``)."""
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call this object's method once and return its result once per index."""
        return [getattr(self, method_name)(*method_args, **method_kwargs)] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """No slot is wrapped in a Gymnasium wrapper."""
        return [False] * self._count(indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        """No rendering."""
        return [None] * self.num_envs
