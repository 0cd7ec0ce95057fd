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

import numpy as np

from gistgym.envs.common import check_env_kwargs
from gistgym.envs.interleave import single_info
from gistgym.envs.interleave_core import (
    DEFAULT_CLIP_LEN,
    DEFAULT_CUES,
    DEFAULT_EXTRACTORS,
    DEFAULT_HISTORY_LEN,
    DEFAULT_REWARD,
    DEFAULT_SPEED_REWARD,
    InterleaveCore,
    Transition,
)
from gistgym.envs.interleave_vector import VECTOR_ARGUMENTS
from gistgym.envs.vector_common import SlotSB3VecEnv


def _unpack(tr: Transition) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict[str, Any]]]:
    infos = [single_info(tr, i) for i in range(len(tr.truncated))]
    return tr.observation(), tr.rewards, tr.truncated, infos


class InterleaveSB3VecEnv(SlotSB3VecEnv[Transition]):
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
        reward: str = DEFAULT_REWARD,
        cues: bool = DEFAULT_CUES,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        check_env_kwargs(type(self).__name__, unknown, VECTOR_ARGUMENTS, render_mode)
        core = InterleaveCore(
            num_envs,
            cache_path,
            split=split,
            clip_len=clip_len,
            extractors=extractors,
            speed_reward=speed_reward,
            skip_light_updates=skip_light_updates,
            history_len=history_len,
            reward=reward,
            cues=cues,
        )
        super().__init__(core, _unpack)
