"""The native batched ``gistgym/Interleave-v0``: N episodes, one torch call per step."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from gistgym.envs.common import check_env_kwargs
from gistgym.envs.interleave import ENV_ARGUMENTS
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
from gistgym.envs.vector_common import SlotVectorEnv
from gistgym.envs.vector_common import check_actions as check_actions
from gistgym.envs.vector_common import clips_from_options as clips_from_options
from gistgym.envs.vector_common import seeds_for as seeds_for

VECTOR_ARGUMENTS = ("num_envs", *ENV_ARGUMENTS)

INFO_KEYS = ("losses", "cost_flops", "frame_index", "video_id", "action", "state_written")
SIGNAL_INFO_KEY = "signals"
"""The key a signal reward adds to ``info``: (N, m) float64 ``S^i``."""


def batched_info(tr: Transition) -> dict[str, Any]:
    """Gymnasium's vector ``info`` layout: one array per key plus an all-True ``_key`` mask."""
    n = len(tr.video_ids)
    video_ids = np.empty(n, dtype=object)
    video_ids[:] = tr.video_ids
    info: dict[str, Any] = {
        "losses": tr.losses,
        "cost_flops": tr.cost_flops,
        "frame_index": tr.frame_index,
        "video_id": video_ids,
        "action": tr.actions,
        "state_written": tr.state_written,
    }
    keys: tuple[str, ...] = INFO_KEYS
    if tr.signals is not None:
        info[SIGNAL_INFO_KEY] = tr.signals
        keys = (*INFO_KEYS, SIGNAL_INFO_KEY)
    for key in keys:
        info[f"_{key}"] = np.ones(n, dtype=bool)
    return info


def _unpack(tr: Transition) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    return tr.observation(), tr.rewards, tr.truncated, batched_info(tr)


class InterleaveVectorEnv(SlotVectorEnv[Transition]):
    """``gistgym/Interleave-v0`` for N episodes at once, with one batched torch call per step.

    The MDP, spaces, rewards and every argument are those of
    :class:`~gistgym.envs.interleave.InterleaveEnv` (one sub-environment = one episode
    slot); each step runs ``N * m`` rows through the frozen memory and head together.
    ``gymnasium.make_vec("gistgym/Interleave-v0", num_envs=N,
    vectorization_mode="vector_entry_point", cache_path=...)`` returns this class.

    ## Autoreset

    ``metadata["autoreset_mode"] = AutoresetMode.NEXT_STEP`` (Gymnasium's default): the
    step that processes a clip's last frame returns ``truncated[i] = True`` with the
    clip's last observation; the **next** ``step`` ignores ``actions[i]``, starts a new
    clip in slot ``i`` (drawn with that slot's generator) and returns its reset
    observation and reset info, ``reward[i] = 0`` and ``terminated[i] = truncated[i] =
    False``. The reset's frame 0 is processed in the same batched torch call as the other
    slots' steps.

    ## Seeding and options

    ``reset(seed=s)`` seeds slot ``i`` with ``s + i``, exactly as a ``SyncVectorEnv`` of
    single environments does, so both draw the same clips; a list seeds slot by slot;
    ``None`` keeps each slot's generator. ``reset(options={"video_id": [...], "start":
    [...]})`` fixes the clips (one entry per slot).

    ## Info

    The single environment's keys, each an array over the slots (``video_id`` an object
    array; ``signals`` (N, m) with a signal reward), with Gymnasium's ``_key`` masks (always
    all True: every slot reports every key).
    """

    step_before_reset_message = "the episode is over (or never started); call reset() before step()"

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
