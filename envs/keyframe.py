"""``gistgym/Keyframe-v0``: when to make a keyframe (*Deep Feature Flow*), a pure table lookup.

:class:`KeyframeCore` holds ``num_slots`` episodes side by side and advances them with a
few numpy operations over all slots at once; the single environment is a core with one
slot, the vector environments (:mod:`gistgym.envs.keyframe_vector`) cores with N, so both
run the same code. Everything the environment needs (the loss of every frame for every
keyframe distance, the flow cues) is in the cache's ``keyframe`` section
(:mod:`gistgym.feature_cache.keyframe`); no torch runs here.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gistgym.envs.common import ClipSource, check_env_kwargs, check_int, check_reward
from gistgym.envs.render import RENDER_FPS, RENDER_MODES, EpisodeCanvas
from gistgym.envs.rewards import EQ2, keyframe_reward, signal_reward
from gistgym.errors import CacheError, EnvArgumentError, EnvStateError, InvalidActionError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.keyframe import (
    ATTR_CUE_NAMES,
    ATTR_DFF_COSTS,
    ATTR_MAX_DISTANCE,
    CUES,
    LOSS,
    SECTION_KEYFRAME,
    signal_table,
)

DEFAULT_CLIP_LEN = 48
DEFAULT_MAX_DISTANCE = 20
DEFAULT_GAMMA = 0.3
DEFAULT_SPEED_REWARD = (0.0, DEFAULT_GAMMA)
DEFAULT_HISTORY_LEN = 20
DEFAULT_REWARD = EQ2

KEY, PROPAGATE = 0, 1
"""The two actions."""

CUE_HIGH = np.array([64.0, 64.0, 1.0, 10.0], dtype=np.float32)
"""Observation bounds of the cues (pixels, pixels, fraction, |S - 1|); values are clipped to them."""

ENV_ARGUMENTS = (
    "cache_path",
    "split",
    "clip_len",
    "max_distance",
    "speed_reward",
    "history_len",
    "reward",
    "render_mode",
)
"""Every constructor argument of :class:`KeyframeEnv` (the vector envs add ``num_envs``)."""

INFO_KEYS = ("loss_key", "loss_prop", "distance", "forced", "action", "cost_flops", "frame_index", "video_id")
"""Keys of ``info``, the same at reset and at every step."""
SIGNAL_INFO_KEYS = ("signal_key", "signal_prop")
"""Keys a signal reward adds to ``info``: ``S(t, 0)`` and ``S(t, d)`` beside ``loss_key`` and ``loss_prop``."""


def _check_speed_reward(value: object) -> tuple[float, float]:
    example = DEFAULT_SPEED_REWARD
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray) or len(value) != 2:
        raise EnvArgumentError(
            f"speed_reward must be two numbers (keyframe, propagate), got {value!r}; e.g. speed_reward={example!r}"
        )
    out = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(float(x)):
            raise EnvArgumentError(f"speed_reward entries must be finite numbers, got {value!r}")
        out.append(float(x))
    return out[0], out[1]


class KeyframeCore(ClipSource):
    """``num_slots`` Keyframe episodes advanced together with numpy.

    Args:
        num_slots: Episodes held side by side.
        cache_path: Feature cache with the ``keyframe`` section.
        split: Split whose videos episodes are drawn from.
        clip_len: Frames per episode.
        max_distance: D_max: a frame this far from its keyframe is made a keyframe.
        speed_reward: ``(keyframe, propagate)`` speed rewards.
        history_len: Length of the keyframe history.
        reward: ``"eq2"`` (from the cached losses) or a per-frame signal of
            :data:`gistgym.metrics.FRAME_SIGNALS`, tabulated per video from the cached
            detections and the ground truth when the video is first loaded.

    Raises:
        CacheError: Missing or unreadable cache, unknown split, no DFF costs.
        CacheSectionError: The cache has no ``keyframe`` section.
        EnvArgumentError: Any other bad argument (e.g. ``max_distance`` beyond what is cached).
    """

    none_start_draws = True

    def __init__(
        self,
        num_slots: int,
        cache_path: str | os.PathLike[str],
        *,
        split: str,
        clip_len: int,
        max_distance: int,
        speed_reward: Sequence[float],
        history_len: int,
        reward: str = DEFAULT_REWARD,
    ) -> None:
        self.num_slots = check_int("num_envs", num_slots, 1)
        self.reward = check_reward(reward)
        if not isinstance(cache_path, str | os.PathLike):
            raise EnvArgumentError(f"cache_path must be the path of a feature cache file, got {cache_path!r}")
        self.cache = FeatureCache(Path(cache_path), sections=(SECTION_KEYFRAME,))
        path = self.cache.path
        attrs = self.cache.section(SECTION_KEYFRAME).attrs
        cached = int(attrs[ATTR_MAX_DISTANCE])
        self.max_distance = check_int("max_distance", max_distance, 1)
        if self.max_distance > cached:
            raise EnvArgumentError(
                f"max_distance={self.max_distance} is larger than the keyframe distances cached in {path} "
                f"(sections/keyframe attribute {ATTR_MAX_DISTANCE} = {cached}); pass max_distance <= {cached} "
                "or rebuild the cache with a larger D_max"
            )
        self.cue_names = tuple(attrs[ATTR_CUE_NAMES])
        try:
            costs = attrs[ATTR_DFF_COSTS]
            self.action_flops = np.array([int(costs["key_flops"]), int(costs["propagate_flops"])], dtype=np.int64)
            self.flow_flops = int(costs["flow_flops"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(
                path, f"no counted DFF FLOPs ({exc!r}); rebuild the cache", field=f"sections/keyframe.{ATTR_DFF_COSTS}"
            ) from exc
        self.speed_reward = _check_speed_reward(speed_reward)
        self.speed_reward_array = np.array(self.speed_reward, dtype=np.float64)
        self.clip_len = check_int("clip_len", clip_len, 2)
        self.history_len = check_int("history_len", history_len, 1)
        self._set_split(split, path)
        self._tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._signal_tables: dict[str, np.ndarray] = {}

        n, L, D1, Q = self.num_slots, self.clip_len, self.max_distance + 1, len(self.cue_names)
        # one clip per slot, plus the frame after it when the video has one (the observation
        # returned with truncation describes it, so value targets can bootstrap)
        self._loss = np.zeros((n, L + 1, D1), dtype=np.float64)
        self._signal = np.zeros((n, L + 1, D1), dtype=np.float64) if self.reward != EQ2 else None
        self._cues = np.zeros((n, L + 1, D1, Q), dtype=np.float32)
        self._t = np.full(n, -1, dtype=np.int64)
        self._d = np.zeros(n, dtype=np.int64)
        self._loaded = np.zeros(n, dtype=bool)
        self._start = np.zeros(n, dtype=np.int64)
        self.video_ids = np.empty(n, dtype=object)
        self.video_ids[:] = ""
        self._history = np.zeros((n, self.history_len), dtype=np.int8)
        self._row = np.arange(n, dtype=np.int64)

    # --- spaces -----------------------------------------------------------------------------
    def observation_space(self) -> spaces.Dict:
        """The single-episode observation space (see :class:`KeyframeEnv`)."""
        return spaces.Dict(
            {
                "cues": spaces.Box(low=np.zeros(len(self.cue_names), np.float32), high=CUE_HIGH, dtype=np.float32),
                "since_key": spaces.Box(low=0.0, high=1.0, shape=(1,), dtype=np.float32),
                "history": spaces.MultiBinary(self.history_len),
            }
        )

    def action_space(self) -> spaces.Discrete:
        """Discrete(2): 0 = keyframe, 1 = propagate."""
        return spaces.Discrete(2)

    # --- episodes ---------------------------------------------------------------------------
    def tables(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(loss (T, D+1) float64, cues (T, D+1, Q) float32)`` of a video, read once per core.

        With a signal reward, reading the video also computes its signal table
        (:meth:`signals`) from the cached detections and the ground truth.
        """
        if video_id not in self._tables:
            ep = self.cache.load_episode(video_id, sections=(SECTION_KEYFRAME,))
            arrays = ep.sections[SECTION_KEYFRAME]
            D1 = self.max_distance + 1
            loss = np.asarray(arrays[LOSS][:, :D1], dtype=np.float64)
            cues = np.clip(np.asarray(arrays[CUES][:, :D1], dtype=np.float32), 0.0, CUE_HIGH)
            if self.reward != EQ2:
                truth = [ep.ground_truth(t) for t in range(ep.num_frames)]
                self._signal_tables[video_id] = signal_table(arrays, truth, self.reward, self.max_distance)
            self._tables[video_id] = (loss, cues)
        return self._tables[video_id]

    def signals(self, video_id: str) -> np.ndarray:
        """The video's (T, D+1) float64 signal table of the ``reward`` signal (``-inf`` where d > t).

        Raises:
            EnvStateError: The reward is ``"eq2"`` (no signal is tabulated).
        """
        if self.reward == EQ2:
            raise EnvStateError('reward="eq2" tabulates no signal; make the core with a signal reward')
        self.tables(video_id)
        return self._signal_tables[video_id]

    def load(self, slot: int, video_id: str, start: int) -> None:
        """Put the clip ``video_id[start : start + clip_len]`` into ``slot``."""
        loss, cues = self.tables(video_id)
        end = min(start + self.clip_len + 1, len(loss))
        n = end - start
        self._loss[slot, :n] = loss[start:end]
        self._cues[slot, :n] = cues[start:end]
        self._loss[slot, n:] = 0.0
        self._cues[slot, n:] = 0.0
        if self._signal is not None:
            self._signal[slot, :n] = self._signal_tables[video_id][start:end]
            self._signal[slot, n:] = 0.0
        self._history[slot] = 0
        self._t[slot] = -1
        self._d[slot] = 0
        self._start[slot] = start
        self.video_ids[slot] = video_id
        self._loaded[slot] = True

    def clip(self, slot: int) -> tuple[str, int, int]:
        """``(video_id, start, clip step of the frame last processed)`` of ``slot``."""
        return str(self.video_ids[slot]), int(self._start[slot]), int(self._t[slot])

    def advance(self, slots: np.ndarray, actions: np.ndarray) -> dict[str, Any]:
        """Process the next frame of every slot in ``slots``.

        A slot that was just loaded processes its clip's first frame as a keyframe and
        ignores its action; a frame at distance ``max_distance`` from its keyframe is made
        a keyframe whatever the action.

        Args:
            slots: (n,) int64 distinct slot indices.
            actions: (n,) int64 validated actions (0 = keyframe, 1 = propagate).

        Returns:
            ``obs`` (batched dict), ``reward`` (n,) float64, ``truncated`` (n,) bool, ``first``
            (n,) bool and the :data:`INFO_KEYS` arrays (plus :data:`SIGNAL_INFO_KEYS` with a
            signal reward).

        Raises:
            EnvStateError: A slot was never loaded or its clip is over.
        """
        t = self._t[slots] + 1
        if not self._loaded[slots].all() or (t >= self.clip_len).any():
            raise EnvStateError("the episode is over (or never started); call reset() before step()")
        first = t == 0
        d = np.where(first, 0, self._d[slots])
        forced = first | (d >= self.max_distance)
        executed = np.where(forced, KEY, actions).astype(np.int64)
        rows = self._row[: len(slots)]
        loss = self._loss[slots, t]
        loss_key = loss[:, 0]
        loss_prop = loss[rows, d]
        signals: dict[str, np.ndarray] = {}
        if self._signal is None:
            rewards = keyframe_reward(loss_key, loss_prop, executed, self.speed_reward_array)
        else:
            signal = self._signal[slots, t]
            pair = np.stack([signal[:, 0], signal[rows, d]], axis=1)
            rewards = signal_reward(pair, executed, self.speed_reward_array)
            signals = {"signal_key": pair[:, 0], "signal_prop": pair[:, 1]}
        rewards[first] = 0.0
        next_d = np.where(executed == KEY, 1, d + 1)
        history = self._history[slots]
        history[:, 1:] = history[:, :-1]
        history[:, 0] = executed == KEY
        self._history[slots] = history
        self._t[slots] = t
        self._d[slots] = next_d
        truncated = t == self.clip_len - 1
        obs = {
            "cues": self._cues[slots, t + 1, np.minimum(next_d, self.max_distance)],
            "since_key": (np.minimum(next_d, self.max_distance) / self.max_distance).astype(np.float32)[:, None],
            "history": history,
        }
        return {
            "obs": obs,
            "reward": rewards,
            "truncated": truncated,
            "first": first,
            "loss_key": loss_key,
            "loss_prop": loss_prop,
            "distance": d,
            "forced": forced,
            "action": executed,
            "cost_flops": self.action_flops[executed],
            "frame_index": self._start[slots] + t,
            "video_id": self.video_ids[slots],
            **signals,
        }

    def close(self) -> None:
        """Release the cache file handle."""
        self.cache.close()


def single_info(out: Mapping[str, Any], row: int) -> dict[str, Any]:
    """The ``info`` dict of one row of :meth:`KeyframeCore.advance` (same keys at reset and every step)."""
    info: dict[str, Any] = {
        "loss_key": float(out["loss_key"][row]),
        "loss_prop": float(out["loss_prop"][row]),
        "distance": int(out["distance"][row]),
        "forced": bool(out["forced"][row]),
        "action": int(out["action"][row]),
        "cost_flops": int(out["cost_flops"][row]),
        "frame_index": int(out["frame_index"][row]),
        "video_id": str(out["video_id"][row]),
    }
    if "signal_key" in out:  # a signal reward
        info["signal_key"] = float(out["signal_key"][row])
        info["signal_prop"] = float(out["signal_prop"][row])
    return info


def single_obs(out: Mapping[str, Any], row: int) -> dict[str, np.ndarray]:
    """The observation of one row."""
    return {k: v[row] for k, v in out["obs"].items()}


_SLOT = np.zeros(1, dtype=np.int64)


class KeyframeEnv(gym.Env[dict[str, Any], np.int64]):
    r"""Adaptive keyframe scheduling for Deep Feature Flow.

    ## Description

    Deep Feature Flow (Zhu et al. 2017) runs the expensive feature network N_feat only on
    keyframes; every other frame ``t`` warps the last keyframe's features with a flow field
    that a cheap flow network F computes between the keyframe and frame ``t``, and the task
    network N_task detects on the warped features. The paper uses a fixed key duration l
    and names adaptive key scheduling as future work. Here the agent decides, frame by
    frame, whether the **current** frame becomes a keyframe. An episode is a clip of
    ``clip_len`` consecutive frames of one cached video; the cache's ``keyframe`` section
    holds, for every frame ``t`` and keyframe distance ``d = 0..D``, the detector's
    per-frame loss ``L(t, d)`` and the flow cues of F(I_{t-d}, I_t), so a step is a table
    lookup (numpy only).

    ## Action Space

    ``Discrete(2)``: ``0`` = make the current frame a keyframe (run N_feat: loss
    ``L_key = L(t, 0)``), ``1`` = propagate from the last keyframe at distance ``d``
    (loss ``L_prop = L(t, d)``). Frame 0 of a clip and a frame at distance
    ``d = max_distance`` are keyframes whatever the action (``info["forced"]``).

    ## Observation Space

    ``Dict`` (SB3's ``MultiInputPolicy`` accepts it), describing the frame about to be
    decided, at distance ``d`` from the last keyframe:

    | key       | space                         | contents                                                   |
    |-----------|-------------------------------|------------------------------------------------------------|
    | cues      | Box((4,), float32)            | F(keyframe, current frame): mean and max flow magnitude    |
    |           | low 0, high (64, 64, 1, 10)   | (px), fraction of cells moved > 4 px, mean abs(S - 1)      |
    |           |                               | (clipped to the bounds)                                    |
    | since_key | Box((1,), float32) in [0, 1]  | ``d / max_distance`` (frames since the keyframe)           |
    | history   | MultiBinary(history_len), int8| entry j = 1 iff the frame j steps back was a keyframe      |
    |           |                               | (j = 0: the frame just processed)                          |

    After the clip's last frame the observation describes the frame after the clip when
    the video has one (zeros when the video ends there).

    ## Rewards

    Eq. 2 of *Looking Fast and Slow* with DFF's two actions::

        R_t(a) = min(L_key, L_prop) - L_a + speed_reward[a]

    ``speed_reward`` (default ``(0, 0.3)``) pays for propagating. Losses are cached float32,
    reported in ``info`` as Python floats (float64), and the reward is computed in float64
    from exactly those numbers (:func:`gistgym.envs.rewards.keyframe_reward`), so
    ``reward == min(info["loss_key"], info["loss_prop"]) - L_a + speed_reward[a]`` holds bit
    for bit, with ``L_a = info["loss_key"]`` if ``info["action"] == 0`` else
    ``info["loss_prop"]``. A forced keyframe is paid as a keyframe.

    With ``reward`` set to a per-frame signal ``S`` of :data:`gistgym.metrics.FRAME_SIGNALS`
    (``"f1"``, ``"errors"`` or ``"matched"``, each higher-is-better) the same difference form
    is paid on the frame's detections::

        R_t(a) = S_a - max(S_key, S_prop) + speed_reward[a]

    with ``S_key = S(t, 0)`` and ``S_prop = S(t, d)`` the signal of the cached DFF detections
    of frame ``t`` with its keyframe at distance 0 and ``d``, scored against the frame's
    ground truth by :func:`gistgym.metrics.frame_signals`. The table ``S(t, d)`` is computed
    once per video when the video is first loaded
    (:func:`gistgym.feature_cache.keyframe.signal_table`), so a step stays a lookup;
    ``info["signal_key"]`` and ``info["signal_prop"]`` report it and
    ``reward == S_a - max(info["signal_key"], info["signal_prop"]) + speed_reward[a]`` holds
    bit for bit (:func:`gistgym.envs.rewards.signal_reward`).

    ## Starting State

    ``reset`` draws a video of ``split`` uniformly among those with at least ``clip_len``
    frames and a clip start uniformly, both with ``self.np_random``; frame 0 of the clip is
    a keyframe. ``reset(options={"video_id": V, "start": S})`` fixes the clip.

    ## Episode End

    ``truncated`` is True after the step that processed the clip's last frame
    (``clip_len - 1`` steps). ``terminated`` is always False. Stepping after the end
    raises :class:`~gistgym.errors.EnvStateError`.

    ## Info

    Same keys at reset and every step, for the frame just processed: ``loss_key`` and
    ``loss_prop`` (float, ``L(t, 0)`` and ``L(t, d)``; equal at reset), ``distance`` (int,
    ``d``: 0 at reset), ``forced`` (bool), ``action`` (int, what ran: 0 = keyframe),
    ``cost_flops`` (int, counted FLOPs of what ran: N_feat + N_task for a keyframe,
    F + W + N_task for a propagated frame; a scheduler that reads the cues also runs F
    before deciding a keyframe), ``frame_index`` (int, in the video) and ``video_id`` (str).
    With a signal reward also ``signal_key`` and ``signal_prop`` (float, ``S(t, 0)`` and
    ``S(t, d)``, the signal's counterparts of ``loss_key`` and ``loss_prop``).

    ## Arguments

    | argument     | default       | meaning                                                        |
    |--------------|---------------|----------------------------------------------------------------|
    | cache_path   | required      | feature cache with the ``keyframe`` section                    |
    | split        | ``"train"``   | split the clips are drawn from                                 |
    | clip_len     | 48            | frames per episode (>= 2; episodes have clip_len - 1 steps)    |
    | max_distance | 20            | D_max: keyframe forced at this distance (<= the cached D_max)  |
    | speed_reward | ``(0.0, 0.3)``| ``(keyframe, propagate)`` speed reward                         |
    | history_len  | 20            | length of the keyframe history                                 |
    | reward       | ``"eq2"``     | ``"eq2"`` (from the losses) or a per-frame signal ``"f1"``,    |
    |              |               | ``"errors"``, ``"matched"`` (see Rewards)                      |
    | render_mode  | None          | ``"rgb_array"``: :meth:`render` draws the clip so far          |

    Example (``gistgym cache build --videos data/bench --out runs/keyframe/bench.h5`` makes
    the cache)::

        import gymnasium as gym
        import gistgym  # registers the ids

        env = gym.make("gistgym/Keyframe-v0", cache_path="runs/keyframe/bench.h5", speed_reward=(0.0, 0.5))
        f1_env = gym.make("gistgym/Keyframe-v0", cache_path="runs/keyframe/bench.h5", reward="f1")
        envs = gym.make_vec("gistgym/Keyframe-v0", num_envs=1024, vectorization_mode="vector_entry_point",
                            cache_path="runs/keyframe/bench.h5")

    Bad arguments raise :class:`~gistgym.errors.EnvArgumentError` (unknown keywords
    :class:`~gistgym.errors.UnknownEnvArgumentError`), a cache without the ``keyframe``
    section :class:`~gistgym.errors.CacheSectionError`, an action outside the action
    space :class:`~gistgym.errors.InvalidActionError`.

    ## Version History

    * v0: initial version; the ``reward`` argument was added later with a default
      (``"eq2"``) that pays exactly what v0 always paid.
    """

    metadata: dict[str, Any] = {"render_modes": list(RENDER_MODES), "render_fps": RENDER_FPS}  # noqa: RUF012

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
        split: str = "train",
        clip_len: int = DEFAULT_CLIP_LEN,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        speed_reward: Sequence[float] = DEFAULT_SPEED_REWARD,
        history_len: int = DEFAULT_HISTORY_LEN,
        reward: str = DEFAULT_REWARD,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        self.render_mode = check_env_kwargs(type(self).__name__, unknown, ENV_ARGUMENTS, render_mode, renders=True)
        self.core = KeyframeCore(
            1,
            cache_path,
            split=split,
            clip_len=clip_len,
            max_distance=max_distance,
            speed_reward=speed_reward,
            history_len=history_len,
            reward=reward,
        )
        self.observation_space = self.core.observation_space()
        self.action_space = self.core.action_space()
        # rendered: per frame keyframe or propagation, the distance to the keyframe, and the reward
        self._canvas = EpisodeCanvas(self.core.clip_len, signed=(False, True)) if self.render_mode else None

    @property
    def speed_reward(self) -> tuple[float, float]:
        """``(keyframe, propagate)`` speed reward."""
        return self.core.speed_reward

    @property
    def max_distance(self) -> int:
        """D_max in force."""
        return self.core.max_distance

    @property
    def reward(self) -> str:
        """The reward paid: ``"eq2"`` or a per-frame signal name."""
        return self.core.reward

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a clip; its frame 0 is a keyframe (see the class docstring).

        Args:
            seed: Seeds ``self.np_random`` (clip choice).
            options: ``{"video_id": V, "start": S}`` fixes the clip (``start`` optional).
        """
        super().reset(seed=seed)
        video_id, start = self.core.clip_from_options(options, self.np_random)
        self.core.load(0, video_id, start)
        out = self.core.advance(_SLOT, _SLOT)
        if self._canvas is not None:
            self._canvas.clear()
            self._draw(out, float("nan"))
        return single_obs(out, 0), single_info(out, 0)

    def step(self, action: np.int64 | int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Key (0) or propagate (1) the current frame.

        Raises:
            InvalidActionError: ``action`` is not 0 or 1.
            EnvStateError: Before ``reset`` or after the clip's last frame.
        """
        if isinstance(action, bool) or not self.action_space.contains(action):
            raise InvalidActionError(
                f"action {action!r} is outside the action space Discrete(2); pass 0 (keyframe) or 1 (propagate)"
            )
        out = self.core.advance(_SLOT, np.array([action], dtype=np.int64))
        if self._canvas is not None:
            self._draw(out, float(out["reward"][0]))
        return single_obs(out, 0), float(out["reward"][0]), False, bool(out["truncated"][0]), single_info(out, 0)

    def _draw(self, out: Mapping[str, Any], reward: float) -> None:
        assert self._canvas is not None
        self._canvas.record(self.core.clip(0)[2], int(out["action"][0]), (float(out["distance"][0]), reward))

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: the clip so far, (H, W, 3) uint8, else ``None``.

        One column per frame of the clip: keyframe (orange) or propagated (blue), below it
        the distance to the keyframe the frame's features come from and the reward (green up,
        red down; each band scaled to its largest value so far), and a white tick under the
        frame just processed (:class:`~gistgym.envs.render.EpisodeCanvas`).
        """
        return None if self._canvas is None else self._canvas.image()

    def close(self) -> None:
        """Release the cache file handle."""
        self.core.close()
        super().close()
