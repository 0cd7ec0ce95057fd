"""The batched ``gistgym/Keyframe-v0``: a Gymnasium ``VectorEnv`` and a Stable-Baselines3 ``VecEnv``.

Both hold N episodes in one :class:`~gistgym.envs.keyframe.KeyframeCore` and advance them
with a few numpy operations per step (no Python loop over episodes except for the slots
that restart).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from gistgym.envs.interleave_core import check_no_unknown_kwargs
from gistgym.envs.interleave_vector import check_actions, seeds_for
from gistgym.envs.keyframe import (
    DEFAULT_CLIP_LEN,
    DEFAULT_HISTORY_LEN,
    DEFAULT_MAX_DISTANCE,
    DEFAULT_SPEED_REWARD,
    ENV_ARGUMENTS,
    INFO_KEYS,
    KeyframeCore,
    single_info,
)
from gistgym.errors import EnvArgumentError, EnvStateError

VECTOR_ARGUMENTS = ("num_envs", *ENV_ARGUMENTS)


def batched_info(out: Mapping[str, Any]) -> dict[str, Any]:
    """Gymnasium's vector ``info`` layout: one array per key plus an all-True ``_key`` mask."""
    n = len(out["action"])
    info: dict[str, Any] = {k: out[k] for k in INFO_KEYS}
    info["video_id"] = out["video_id"].copy()
    mask = np.ones(n, dtype=bool)
    for key in INFO_KEYS:
        info[f"_{key}"] = mask
    return info


def clips_from_options(
    core: KeyframeCore, options: Mapping[str, Any] | None, rngs: Sequence[np.random.Generator]
) -> list[tuple[str, int]]:
    """One clip per episode: random, or fixed by ``options`` holding per-episode sequences.

    Raises:
        EnvArgumentError: Unknown keys, sequences of the wrong length, or a bad clip.
    """
    n = len(rngs)
    if not options:
        return [core.choose_clip(rng) for rng in rngs]
    if not isinstance(options, Mapping):
        raise EnvArgumentError(f"reset options must be a dict, got {options!r}")
    per_env: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, values in options.items():
        if key not in ("video_id", "start"):
            raise EnvArgumentError(f"unknown reset option {key!r}; valid options: video_id, start (one per env)")
        if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray) or len(values) != n:
            raise EnvArgumentError(
                f"reset option {key!r} must be a sequence of {n} values (one per env), got {values!r}"
            )
        for i, v in enumerate(values):
            per_env[i][key] = v.item() if isinstance(v, np.generic) else v
    return [core.clip_from_options(o, rng) for o, rng in zip(per_env, rngs, strict=True)]


class _SlotRngs:
    """One generator per slot, created lazily (unseeded) or from a seed."""

    def __init__(self, n: int) -> None:
        self._rngs: list[np.random.Generator | None] = [None] * n

    def seed(self, seeds: Sequence[int | None]) -> None:
        for i, s in enumerate(seeds):
            if s is not None:
                self._rngs[i], _ = seeding.np_random(s)

    def __getitem__(self, slot: int) -> np.random.Generator:
        rng = self._rngs[slot]
        if rng is None:
            rng, _ = seeding.np_random(None)
            self._rngs[slot] = rng
        return rng


class KeyframeVectorEnv(VectorEnv):
    """``gistgym/Keyframe-v0`` for N episodes at once (numpy over all slots per step).

    The MDP, spaces, rewards and arguments are those of
    :class:`~gistgym.envs.keyframe.KeyframeEnv`; ``gymnasium.make_vec("gistgym/Keyframe-v0",
    num_envs=N, vectorization_mode="vector_entry_point", cache_path=...)`` returns this class.

    ## Autoreset

    ``AutoresetMode.NEXT_STEP`` (Gymnasium's default): the step that processes a clip's
    last frame returns ``truncated[i] = True``; the **next** step ignores ``actions[i]``,
    starts a new clip in slot ``i`` (drawn with that slot's generator) and returns its
    reset observation and info with ``reward[i] = 0``.

    ## Seeding and options

    ``reset(seed=s)`` seeds slot ``i`` with ``s + i`` (as a ``SyncVectorEnv`` of single
    environments does, so both draw the same clips); a list seeds slot by slot.
    ``reset(options={"video_id": [...], "start": [...]})`` fixes the clips (one entry per slot).

    ## Info

    The single environment's keys, each an array over the slots (``video_id`` an object
    array), with Gymnasium's ``_key`` masks (always all True).
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
        num_envs: int = 1,
        split: str = "train",
        clip_len: int = DEFAULT_CLIP_LEN,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        speed_reward: Sequence[float] = DEFAULT_SPEED_REWARD,
        history_len: int = DEFAULT_HISTORY_LEN,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        check_no_unknown_kwargs(type(self).__name__, unknown, VECTOR_ARGUMENTS)
        if render_mode is not None:
            raise EnvArgumentError(f"render_mode={render_mode!r} is not supported (this environment has no rendering)")
        self.core = KeyframeCore(
            num_envs,
            cache_path,
            split=split,
            clip_len=clip_len,
            max_distance=max_distance,
            speed_reward=speed_reward,
            history_len=history_len,
        )
        self.num_envs = self.core.num_slots
        self.single_observation_space = self.core.observation_space()
        self.single_action_space = self.core.action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._slots = np.arange(self.num_envs, dtype=np.int64)
        self._zeros = np.zeros(self.num_envs, dtype=np.int64)
        self._rngs = _SlotRngs(self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._started = False

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new clip in every slot (see the class docstring for seeds and options)."""
        super().reset(seed=int(seed) if isinstance(seed, int | np.integer) else None)
        self._rngs.seed(seeds_for(seed, self.num_envs))
        rngs = [self._rngs[i] for i in range(self.num_envs)]
        for i, (video_id, start) in enumerate(clips_from_options(self.core, options, rngs)):
            self.core.load(i, video_id, start)
        out = self.core.advance(self._slots, self._zeros)
        self._autoreset[:] = False
        self._started = True
        return out["obs"], batched_info(out)

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every slot; slots whose clip ended at the previous step start a new one (NEXT_STEP).

        Raises:
            InvalidActionError: ``actions`` is not in the batched action space.
            EnvStateError: Called before ``reset``.
        """
        a = check_actions(actions, self.num_envs, 2)
        if not self._started:
            raise EnvStateError("call reset() before step()")
        if self._autoreset.any():
            for i in np.flatnonzero(self._autoreset).tolist():
                self.core.load(i, *self.core.choose_clip(self._rngs[i]))
        out = self.core.advance(self._slots, a)
        self._autoreset = out["truncated"].copy()
        return out["obs"], out["reward"], np.zeros(self.num_envs, dtype=bool), out["truncated"], batched_info(out)

    def close_extras(self, **kwargs: Any) -> None:
        """Release the cache file handle."""
        self.core.close()


class KeyframeSB3VecEnv(VecEnv):
    """N ``Keyframe`` episodes as an SB3 ``VecEnv`` (same-step autoreset, as ``DummyVecEnv``).

    Arguments are those of :class:`KeyframeVectorEnv`. When a clip ends, ``step_wait``
    returns ``done = True``, the clip's last observation in ``infos[i]["terminal_observation"]``,
    ``infos[i]["TimeLimit.truncated"] = True`` and the first observation of the next clip.
    ``venv.seed(s)`` makes the next ``reset()`` seed slot ``i`` with ``s + i``;
    ``venv.set_options(...)`` passes ``{"video_id", "start"}`` per slot to the next ``reset()``.
    The slots share one core, so ``get_attr``, ``set_attr`` and ``env_method`` act on this
    object itself. Rewards are float32 (SB3's buffers), computed in float64.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
        num_envs: int = 1,
        split: str = "train",
        clip_len: int = DEFAULT_CLIP_LEN,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        speed_reward: Sequence[float] = DEFAULT_SPEED_REWARD,
        history_len: int = DEFAULT_HISTORY_LEN,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        check_no_unknown_kwargs(type(self).__name__, unknown, VECTOR_ARGUMENTS)
        if render_mode is not None:
            raise EnvArgumentError(f"render_mode={render_mode!r} is not supported (this environment has no rendering)")
        self.core = KeyframeCore(
            num_envs,
            cache_path,
            split=split,
            clip_len=clip_len,
            max_distance=max_distance,
            speed_reward=speed_reward,
            history_len=history_len,
        )
        self.render_mode = None  # read by VecEnv.__init__ through get_attr
        super().__init__(self.core.num_slots, self.core.observation_space(), self.core.action_space())
        self._slots = np.arange(self.num_envs, dtype=np.int64)
        self._zeros = np.zeros(self.num_envs, dtype=np.int64)
        self._rngs = _SlotRngs(self.num_envs)
        self._actions: np.ndarray | None = None
        self._started = False

    def reset(self) -> VecEnvObs:
        """Start a new clip in every slot, using the seeds and options set since the last reset."""
        self._rngs.seed(self._seeds)
        for i in range(self.num_envs):
            video_id, start = self.core.clip_from_options(self._options[i], self._rngs[i])
            self.core.load(i, video_id, start)
        out = self.core.advance(self._slots, self._zeros)
        self.reset_infos = [single_info(out, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        self._started = True
        obs: dict[str, np.ndarray] = out["obs"]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`.

        Raises:
            InvalidActionError: ``actions`` are not N integers in {0, 1}.
        """
        self._actions = check_actions(actions, self.num_envs, 2)

    def step_wait(self) -> VecEnvStepReturn:
        """Advance every slot; finished clips restart in the same call (SB3 semantics).

        Raises:
            EnvStateError: Called before ``reset`` or without ``step_async``.
        """
        if not self._started or self._actions is None:
            raise EnvStateError("call reset() and step_async(actions) before step_wait()")
        out = self.core.advance(self._slots, self._actions)
        self._actions = None
        obs = out["obs"]
        dones = out["truncated"].copy()
        infos = [single_info(out, i) for i in range(self.num_envs)]
        for i, info in enumerate(infos):
            info["TimeLimit.truncated"] = bool(dones[i])
        done = np.flatnonzero(dones)
        if done.size:
            for i in done.tolist():
                infos[i]["terminal_observation"] = {k: v[i].copy() for k, v in obs.items()}
                self.core.load(i, *self.core.choose_clip(self._rngs[i]))
            fresh = self.core.advance(done, self._zeros[: done.size])
            for k in obs:
                obs[k][done] = fresh["obs"][k]
            for j, i in enumerate(done.tolist()):
                self.reset_infos[i] = single_info(fresh, j)
        return obs, out["reward"].astype(np.float32), dones, infos

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
