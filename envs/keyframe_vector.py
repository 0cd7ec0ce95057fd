"""The batched ``gistgym/Keyframe-v0``: a Gymnasium ``VectorEnv`` and a Stable-Baselines3 ``VecEnv``.

Both hold N episodes in one :class:`~gistgym.envs.keyframe.KeyframeCore` and advance them
with a few numpy operations per step (no Python loop over episodes except for the slots
that restart).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gistgym.envs.common import check_env_kwargs
from gistgym.envs.keyframe import (
    DEFAULT_CLIP_LEN,
    DEFAULT_HISTORY_LEN,
    DEFAULT_MAX_DISTANCE,
    DEFAULT_REWARD,
    DEFAULT_SPEED_REWARD,
    ENV_ARGUMENTS,
    INFO_KEYS,
    SIGNAL_INFO_KEYS,
    KeyframeCore,
    single_info,
)
from gistgym.envs.vector_common import SlotSB3VecEnv, SlotVectorEnv
from gistgym.envs.vector_common import clips_from_options as clips_from_options

VECTOR_ARGUMENTS = ("num_envs", *ENV_ARGUMENTS)


def batched_info(out: Mapping[str, Any]) -> dict[str, Any]:
    """Gymnasium's vector ``info`` layout: one array per key plus an all-True ``_key`` mask."""
    n = len(out["action"])
    keys = (*INFO_KEYS, *SIGNAL_INFO_KEYS) if SIGNAL_INFO_KEYS[0] in out else INFO_KEYS
    info: dict[str, Any] = {k: out[k] for k in keys}
    info["video_id"] = out["video_id"].copy()
    mask = np.ones(n, dtype=bool)
    for key in keys:
        info[f"_{key}"] = mask
    return info


def _unpack(out: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    return out["obs"], out["reward"], out["truncated"], batched_info(out)


def _unpack_rows(out: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict[str, Any]]]:
    return out["obs"], out["reward"], out["truncated"], [single_info(out, i) for i in range(len(out["truncated"]))]


class KeyframeVectorEnv(SlotVectorEnv[Mapping[str, Any]]):
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
    array; ``signal_key`` and ``signal_prop`` with a signal reward), with Gymnasium's
    ``_key`` masks (always all True).
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
        reward: str = DEFAULT_REWARD,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        check_env_kwargs(type(self).__name__, unknown, VECTOR_ARGUMENTS, render_mode)
        core = KeyframeCore(
            num_envs,
            cache_path,
            split=split,
            clip_len=clip_len,
            max_distance=max_distance,
            speed_reward=speed_reward,
            history_len=history_len,
            reward=reward,
        )
        super().__init__(core, _unpack)


class KeyframeSB3VecEnv(SlotSB3VecEnv[Mapping[str, Any]]):
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
        reward: str = DEFAULT_REWARD,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        check_env_kwargs(type(self).__name__, unknown, VECTOR_ARGUMENTS, render_mode)
        core = KeyframeCore(
            num_envs,
            cache_path,
            split=split,
            clip_len=clip_len,
            max_distance=max_distance,
            speed_reward=speed_reward,
            history_len=history_len,
            reward=reward,
        )
        super().__init__(core, _unpack_rows)
