"""The batched ``gistgym/Glimpse-v0``: a Gymnasium ``VectorEnv`` and a Stable-Baselines3 ``VecEnv``.

Both hold N episodes in one :class:`~gistgym.envs.glimpse.GlimpseCore` and advance them with
a few numpy operations per step, the frozen classifier included (no Python loop over
episodes except for the slots that restart).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gistgym.envs.common import check_env_kwargs
from gistgym.envs.glimpse import DEFAULT_NUM_GLIMPSES, ENV_ARGUMENTS, INFO_KEYS, GlimpseCore, single_info
from gistgym.envs.vector_common import SlotSB3VecEnv, SlotVectorEnv

VECTOR_ARGUMENTS = ("num_envs", *ENV_ARGUMENTS)


def batched_info(out: Mapping[str, Any]) -> dict[str, Any]:
    """Gymnasium's vector ``info`` layout: one array per key plus an all-True ``_key`` mask."""
    n = len(out["step"])
    info: dict[str, Any] = {k: out[k] for k in INFO_KEYS}
    mask = np.ones(n, dtype=bool)
    for key in INFO_KEYS:
        info[f"_{key}"] = mask
    return info


def _unpack(out: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    return out["obs"], out["reward"], out["terminated"], batched_info(out)


def _unpack_rows(out: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict[str, Any]]]:
    return out["obs"], out["reward"], out["terminated"], [single_info(out, i) for i in range(len(out["step"]))]


class _GlimpseSlots:
    """The constructor both batched Glimpse envs share (put first among the bases, before the slot env).

    It checks the arguments, builds one :class:`GlimpseCore` for all slots and hands it to
    the slot env next in the MRO with the subclass's ``unpack_output`` and the core's action check.
    """

    done_means_terminated = True
    unpack_output: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    """How the slot env reads the core's output (:func:`_unpack` or :func:`_unpack_rows`, a staticmethod)."""

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
        num_envs: int = 1,
        split: str = "train",
        num_glimpses: int = DEFAULT_NUM_GLIMPSES,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        check_env_kwargs(type(self).__name__, unknown, VECTOR_ARGUMENTS, render_mode)
        core = GlimpseCore(num_envs, cache_path, split=split, num_glimpses=num_glimpses)
        super().__init__(core, type(self).unpack_output, core.check_actions)  # type: ignore[call-arg]


class GlimpseVectorEnv(_GlimpseSlots, SlotVectorEnv[Mapping[str, Any]]):
    """``gistgym/Glimpse-v0`` for N episodes at once (numpy over all slots per step).

    The MDP, spaces, rewards and arguments are those of
    :class:`~gistgym.envs.glimpse.GlimpseEnv`; ``gymnasium.make_vec("gistgym/Glimpse-v0",
    num_envs=N, vectorization_mode="vector_entry_point", cache_path=...)`` returns this class.
    Actions are an ``(N, 1)`` array of locations in [0, 1] (``Box(0, 1, (N, 1), float32)``).

    ## Autoreset

    ``AutoresetMode.NEXT_STEP`` (Gymnasium's default, as the other gistgym vector envs): the
    step that takes an episode's last glimpse returns ``terminated[i] = True``; the **next**
    step ignores ``actions[i]`` (it must still be a valid location), starts a new video in
    slot ``i`` (drawn with that slot's generator) and returns its reset observation and info
    with ``reward[i] = 0``. ``truncated`` is always False.

    ## Seeding and options

    ``reset(seed=s)`` seeds slot ``i`` with ``s + i`` (as a ``SyncVectorEnv`` of single
    environments does, so both draw the same videos); a list seeds slot by slot.
    ``reset(options={"video_id": [...]})`` fixes the videos (one entry per slot).

    ## Info

    The single environment's keys, each an array over the slots (``video_id`` an object
    array), with Gymnasium's ``_key`` masks (always all True).
    """

    unpack_output = staticmethod(_unpack)


class GlimpseSB3VecEnv(_GlimpseSlots, SlotSB3VecEnv[Mapping[str, Any]]):
    """N ``Glimpse`` episodes as an SB3 ``VecEnv`` (same-step autoreset, as ``DummyVecEnv``).

    Arguments are those of :class:`GlimpseVectorEnv`. When an episode ends, ``step_wait``
    returns ``done = True``, the episode's last observation in
    ``infos[i]["terminal_observation"]``, ``infos[i]["TimeLimit.truncated"] = False`` (the
    episode terminated; nothing to bootstrap) and the first observation of the next video.
    ``venv.seed(s)`` makes the next ``reset()`` seed slot ``i`` with ``s + i``;
    ``venv.set_options(...)`` passes ``{"video_id"}`` per slot to the next ``reset()``.
    The slots share one core, so ``get_attr``, ``set_attr`` and ``env_method`` act on this
    object itself. Rewards are float32 (SB3's buffers), computed in float64.
    """

    unpack_output = staticmethod(_unpack_rows)
