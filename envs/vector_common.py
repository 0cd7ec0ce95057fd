"""What the batched environments of every family share.

Per-slot generators and seeds, clips from per-slot ``reset`` options, action checks, and
the reset/step/autoreset loops over a core holding N episodes: :class:`SlotVectorEnv`
(a Gymnasium ``VectorEnv``, NEXT_STEP autoreset) and :class:`SlotSB3VecEnv` (a
Stable-Baselines3 ``VecEnv``, same-step autoreset). A family's vector classes are thin
subclasses that build their core and pass a function turning the core's ``advance``
output into ``(obs, rewards, done, infos)``. ``done`` means truncated (the clip was cut)
unless the subclass sets ``done_means_terminated``; actions are checked against a
``Discrete`` action space unless the subclass passes its own ``check_actions`` hook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from gistgym.errors import EnvArgumentError, EnvStateError, InvalidActionError

Out = TypeVar("Out")
Out_co = TypeVar("Out_co", covariant=True)

Obs = dict[str, np.ndarray]
Unpack = Callable[[Out], tuple[Obs, np.ndarray, np.ndarray, Any]]
"""``advance`` output -> ``(obs, rewards, done, infos)``, one row per advanced slot."""

ActionCheck = Callable[[object, int], np.ndarray]
"""``(actions, num_envs)`` -> the validated actions ``advance`` takes; raises ``InvalidActionError``."""


class SlotCore(Protocol[Out_co]):
    """What the vector environments use of a core (``InterleaveCore``, ``KeyframeCore``, ``GlimpseCore``)."""

    @property
    def num_slots(self) -> int: ...  # noqa: D102

    def observation_space(self) -> spaces.Dict: ...  # noqa: D102

    def action_space(self) -> spaces.Space[Any]: ...  # noqa: D102

    def choose_clip(self, rng: np.random.Generator) -> tuple[str, int]: ...  # noqa: D102

    def clip_from_options(  # noqa: D102
        self, options: Mapping[str, Any] | None, rng: np.random.Generator
    ) -> tuple[str, int]: ...

    def load(self, slot: int, video_id: str, start: int) -> None: ...  # noqa: D102

    def advance(self, slots: np.ndarray, actions: np.ndarray) -> Out_co: ...  # noqa: D102

    def close(self) -> None: ...  # noqa: D102


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


def discrete_action_check(space: spaces.Space[Any]) -> ActionCheck:
    """The default action check: :func:`check_actions` against a ``Discrete`` space.

    Raises:
        TypeError: ``space`` is not ``Discrete`` (such a family passes its own check).
    """
    if not isinstance(space, spaces.Discrete):
        raise TypeError(f"no default action check for {space}; pass check_actions to the vector env")
    num_actions = int(space.n)
    return lambda actions, num_envs: check_actions(actions, num_envs, num_actions)


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
    core: SlotCore[Any], options: Mapping[str, Any] | None, rngs: Sequence[np.random.Generator]
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


class SlotRngs:
    """One generator per slot, created lazily (unseeded) or from a seed."""

    def __init__(self, n: int) -> None:
        self._rngs: list[np.random.Generator | None] = [None] * n

    def seed(self, seeds: Sequence[int | None]) -> None:
        """Reseed the slots whose seed is not None (the others keep their generator)."""
        for i, s in enumerate(seeds):
            if s is not None:
                self._rngs[i], _ = seeding.np_random(s)

    def __getitem__(self, slot: int) -> np.random.Generator:
        rng = self._rngs[slot]
        if rng is None:
            rng, _ = seeding.np_random(None)
            self._rngs[slot] = rng
        return rng


class SlotVectorEnv(VectorEnv, Generic[Out]):
    """A Gymnasium ``VectorEnv`` over a core's N slots, NEXT_STEP autoreset.

    Args:
        core: The slots (one sub-environment each).
        unpack: ``advance`` output -> ``(obs, rewards, done, info)``, ``info`` in
            Gymnasium's vector layout.
        check_actions: Validates the batched actions (default: :func:`check_actions` on the
            core's ``Discrete`` action space).
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    step_before_reset_message = "call reset() before step()"
    """The :class:`~gistgym.errors.EnvStateError` message of a ``step`` before any ``reset``."""

    done_means_terminated = False
    """Whether ``unpack``'s done flags are ``terminated`` (the MDP ended) rather than ``truncated``."""

    def __init__(self, core: SlotCore[Out], unpack: Unpack[Out], check_actions: ActionCheck | None = None) -> None:
        self.core = core
        self._unpack = unpack
        self.num_envs = core.num_slots
        self.single_observation_space = core.observation_space()
        self.single_action_space = core.action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._check_actions = check_actions or discrete_action_check(self.single_action_space)
        self._slots = np.arange(self.num_envs, dtype=np.int64)
        self._zeros = np.zeros(self.num_envs, dtype=np.int64)
        self._rngs = SlotRngs(self.num_envs)
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
        obs, _, _, info = self._unpack(self.core.advance(self._slots, self._zeros))
        self._autoreset[:] = False
        self._started = True
        return obs, info

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every slot; slots whose episode ended at the previous step start a new one (NEXT_STEP).

        Raises:
            InvalidActionError: ``actions`` is not in the batched action space.
            EnvStateError: Called before ``reset``.
        """
        a = self._check_actions(actions, self.num_envs)
        if not self._started:
            raise EnvStateError(self.step_before_reset_message)
        if self._autoreset.any():
            for i in np.flatnonzero(self._autoreset).tolist():
                self.core.load(i, *self.core.choose_clip(self._rngs[i]))
        obs, rewards, ended, info = self._unpack(self.core.advance(self._slots, a))
        self._autoreset = ended.copy()
        never = np.zeros(self.num_envs, dtype=bool)
        if self.done_means_terminated:
            return obs, rewards, ended, never, info
        return obs, rewards, never, ended, info

    def close_extras(self, **kwargs: Any) -> None:
        """Release the cache file handle."""
        self.core.close()


class SlotSB3VecEnv(VecEnv, Generic[Out]):
    """An SB3 ``VecEnv`` over a core's N slots, same-step autoreset (as ``DummyVecEnv``).

    Args:
        core: The slots (one sub-environment each).
        unpack: ``advance`` output -> ``(obs, rewards, done, infos)``, ``infos`` a list
            of one single-environment ``info`` dict per row.
        check_actions: Validates the batched actions (default: :func:`check_actions` on the
            core's ``Discrete`` action space).
    """

    done_means_terminated = False
    """Whether ``unpack``'s done flags are ``terminated`` (``TimeLimit.truncated`` False) rather than ``truncated``."""

    def __init__(self, core: SlotCore[Out], unpack: Unpack[Out], check_actions: ActionCheck | None = None) -> None:
        self.core = core
        self._unpack = unpack
        self.render_mode = None  # read by VecEnv.__init__ through get_attr
        super().__init__(core.num_slots, core.observation_space(), core.action_space())
        self._check_actions = check_actions or discrete_action_check(self.action_space)
        self._slots = np.arange(self.num_envs, dtype=np.int64)
        self._zeros = np.zeros(self.num_envs, dtype=np.int64)
        self._rngs = SlotRngs(self.num_envs)
        self._actions: np.ndarray | None = None
        self._started = False

    def reset(self) -> VecEnvObs:
        """Start a new clip in every slot, using the seeds and options set since the last reset."""
        self._rngs.seed(self._seeds)
        for i in range(self.num_envs):
            video_id, start = self.core.clip_from_options(self._options[i], self._rngs[i])
            self.core.load(i, video_id, start)
        obs, _, _, self.reset_infos = self._unpack(self.core.advance(self._slots, self._zeros))
        self._reset_seeds()
        self._reset_options()
        self._started = True
        return obs

    def play_clips(
        self, clips: Sequence[tuple[str, int]], act: Callable[[Obs], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One whole episode per slot, slot ``i`` on ``clips[i]``, without autoreset.

        For policy search and evaluation of many candidates on the same clips: the slots
        are loaded video by video (so the episode memo reads each video once however many
        slots play it), ``act(obs) -> actions`` decides every step, and nothing is loaded
        after the episodes end. Afterwards the env needs a :meth:`reset` before stepping.

        Returns:
            Per slot, the summed rewards (float64) and the number of steps taken.

        Raises:
            EnvArgumentError: Not one clip per slot, or a bad clip.
            InvalidActionError: ``act`` returned invalid actions.
        """
        n = self.num_envs
        if len(clips) != n:
            raise EnvArgumentError(f"play_clips got {len(clips)} clips for {n} environments")
        for i in sorted(range(n), key=lambda i: (str(clips[i][0]), int(clips[i][1]))):
            self.core.load(i, *self.core.clip_from_options({"video_id": clips[i][0], "start": int(clips[i][1])},
                                                           self._rngs[i]))  # fmt: skip
        self._started = False
        obs, _, _, _ = self._unpack(self.core.advance(self._slots, self._zeros))
        total = np.zeros(n)
        steps = np.zeros(n, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        while alive.any():
            rows = np.flatnonzero(alive)
            actions = self._check_actions(np.asarray(act(obs))[rows], rows.size)
            obs_rows, rewards, ended, _ = self._unpack(self.core.advance(rows, actions))
            for k, v in obs_rows.items():
                obs[k][rows] = v
            total[rows] += rewards
            steps[rows] += 1
            alive[rows[np.asarray(ended, dtype=bool)]] = False
        return total, steps

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`.

        Raises:
            InvalidActionError: ``actions`` are not N actions of the action space.
        """
        self._actions = self._check_actions(actions, self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        """Advance every slot; finished episodes restart in the same call (SB3 semantics).

        Raises:
            EnvStateError: Called before ``reset`` or without ``step_async``.
        """
        if not self._started or self._actions is None:
            raise EnvStateError("call reset() and step_async(actions) before step_wait()")
        obs, rewards, ended, infos = self._unpack(self.core.advance(self._slots, self._actions))
        self._actions = None
        dones = ended.copy()
        for i, info in enumerate(infos):
            # a truncated episode was cut (bootstrap from terminal_observation), a terminated one ended
            info["TimeLimit.truncated"] = bool(dones[i]) and not self.done_means_terminated
        done = np.flatnonzero(dones)
        if done.size:
            for i in done.tolist():
                infos[i]["terminal_observation"] = {k: v[i].copy() for k, v in obs.items()}
                self.core.load(i, *self.core.choose_clip(self._rngs[i]))
            fresh_obs, _, _, fresh_infos = self._unpack(self.core.advance(done, self._zeros[: done.size]))
            for k in obs:
                obs[k][done] = fresh_obs[k]
            for j, i in enumerate(done.tolist()):
                self.reset_infos[i] = fresh_infos[j]
        return obs, rewards.astype(np.float32), dones, infos

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
