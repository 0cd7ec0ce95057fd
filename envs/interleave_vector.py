"""The native batched ``gistgym/Interleave-v0``: N episodes, one torch call per step."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from gistgym.envs.interleave import ENV_ARGUMENTS
from gistgym.envs.interleave_core import (
    DEFAULT_CLIP_LEN,
    DEFAULT_EXTRACTORS,
    DEFAULT_HISTORY_LEN,
    DEFAULT_SPEED_REWARD,
    InterleaveCore,
    Transition,
    check_no_unknown_kwargs,
)
from gistgym.errors import EnvArgumentError, InvalidActionError

VECTOR_ARGUMENTS = ("num_envs", *ENV_ARGUMENTS)

INFO_KEYS = ("losses", "cost_flops", "frame_index", "video_id", "action", "state_written")


def check_actions(actions: object, num_envs: int, num_actions: int) -> np.ndarray:
    """``actions`` as an (N,) int64 array.

    Raises:
        InvalidActionError: Wrong shape, not integers, or outside ``[0, num_actions)``.
    """
    a = np.asarray(actions)
    if a.shape != (num_envs,) or a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() >= num_actions)):
        raise InvalidActionError(
            f"actions must be {num_envs} integers in [0, {num_actions - 1}] (MultiDiscrete([{num_actions}] * "
            f"{num_envs})), got {actions!r}"
        )
    return a.astype(np.int64, copy=False)


def seeds_for(seed: int | Sequence[int | None] | None, num_envs: int) -> list[int | None]:
    """Per-episode seeds: ``seed + i`` for an int (as Gymnasium's vector envs do), a list as given.

    Raises:
        EnvArgumentError: A list of the wrong length.
    """
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, int | np.integer):
        return [int(seed) + i for i in range(num_envs)]
    seeds = list(seed)
    if len(seeds) != num_envs:
        raise EnvArgumentError(f"reset got {len(seeds)} seeds for {num_envs} environments")
    return seeds


def clips_from_options(
    core: InterleaveCore, options: Mapping[str, Any] | None, rngs: Sequence[np.random.Generator]
) -> list[tuple[str, int]]:
    """One clip per episode: random, or fixed by ``options`` holding per-episode sequences.

    ``options={"video_id": [V0, V1, ...], "start": [S0, S1, ...]}`` (``start`` optional).

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
    for key in INFO_KEYS:
        info[f"_{key}"] = np.ones(n, dtype=bool)
    return info


class InterleaveVectorEnv(VectorEnv):
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
    array), with Gymnasium's ``_key`` masks (always all True: every slot reports every key).
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

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
        self.num_envs = self.core.num_slots
        self.single_observation_space = self.core.observation_space()
        self.single_action_space = self.core.action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._slots = np.arange(self.num_envs, dtype=np.int64)
        self._zeros = np.zeros(self.num_envs, dtype=np.int64)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._started = False

    def _rng(self, slot: int) -> np.random.Generator:
        rng = self._rngs[slot]
        if rng is None:
            rng, _ = seeding.np_random(None)
            self._rngs[slot] = rng
        return rng

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new clip in every slot (see the class docstring for seeds and options)."""
        super().reset(seed=int(seed) if isinstance(seed, int | np.integer) else None)
        for i, s in enumerate(seeds_for(seed, self.num_envs)):
            if s is not None:
                self._rngs[i], _ = seeding.np_random(s)
        rngs = [self._rng(i) for i in range(self.num_envs)]
        for i, (video_id, start) in enumerate(clips_from_options(self.core, options, rngs)):
            self.core.load(i, video_id, start)
        tr = self.core.advance(self._slots, self._zeros)
        self._autoreset[:] = False
        self._started = True
        return {"state": tr.state, "history": tr.history}, batched_info(tr)

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every slot; slots whose clip ended at the previous step start a new one (NEXT_STEP).

        Raises:
            InvalidActionError: ``actions`` is not in the batched action space.
            EnvStateError: Called before ``reset``.
        """
        a = check_actions(actions, self.num_envs, self.core.num_actions)
        if self._started:
            for i in np.flatnonzero(self._autoreset).tolist():
                self.core.load(i, *self.core.choose_clip(self._rng(i)))
        tr = self.core.advance(self._slots, a)
        self._autoreset = tr.truncated.copy()
        obs = {"state": tr.state, "history": tr.history}
        return obs, tr.rewards, np.zeros(self.num_envs, dtype=bool), tr.truncated, batched_info(tr)

    def close_extras(self, **kwargs: Any) -> None:
        """Release the cache file handle."""
        self.core.close()
