"""``gistgym/Interleave-v0``: when to run the heavy extractor (*Looking Fast and Slow*, Algorithm 1)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from gistgym.envs.common import check_env_kwargs
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
from gistgym.envs.render import RENDER_FPS, RENDER_MODES, EpisodeCanvas
from gistgym.errors import InvalidActionError

ENV_ARGUMENTS = (
    "cache_path",
    "split",
    "clip_len",
    "extractors",
    "speed_reward",
    "skip_light_updates",
    "history_len",
    "reward",
    "cues",
    "render_mode",
)
"""Every constructor argument of :class:`InterleaveEnv` (the vector envs add ``num_envs``)."""

_SLOT = np.zeros(1, dtype=np.int64)


def single_info(tr: Transition, row: int) -> dict[str, Any]:
    """The ``info`` dict of one row of a transition (same keys at reset and at every step).

    With a signal reward it also holds ``signals``, every extractor's ``S^i`` (aligned with ``losses``).
    """
    info = {
        "losses": tr.losses[row],
        "cost_flops": int(tr.cost_flops[row]),
        "frame_index": int(tr.frame_index[row]),
        "video_id": tr.video_ids[row],
        "action": int(tr.actions[row]),
        "state_written": bool(tr.state_written[row]),
    }
    if tr.signals is not None:
        info["signals"] = tr.signals[row]
    return info


class InterleaveEnv(gym.Env[dict[str, Any], np.int64]):
    r"""Adaptive interleaving of a heavy and light feature extractors sharing one memory.

    ## Description

    The environment of *Looking Fast and Slow* (Liu et al. 2019), Algorithm 1, stepping over
    a feature cache. An interleaved detector has m feature extractors (``f_0`` heavy, the
    others light) that feed one frozen ConvLSTM memory ``mem`` (the paper's ``m(·)``) and
    one frozen SSDLite head ``d``. The cache holds every extractor's features of every frame, the memory and head
    weights and the detector configuration; the environment runs the memory and the head
    itself. An episode is a clip of ``clip_len`` consecutive frames of one cached video.
    After frame ``t`` the agent picks the extractor for frame ``t + 1``; the environment
    then runs, in one batched torch call, **every** extractor's features of frame ``t + 1``
    through the memory from the carried state ``s_t`` and through the head::

        M^i, s^i = mem(f_i(I_{t+1}), s_t)     D^i = d(M^i)     L^i = loss(D^i, GT_{t+1})

    for i = 0..m-1, where ``loss`` is the detector's own per-frame SSD loss
    (:func:`gistgym.backbones.ssdlite.frame_detection_loss`). The executed action's state
    becomes the carried state ``s_{t+1} = s^a``, except that with ``skip_light_updates`` a
    light action (``a != 0``) keeps ``s_{t+1} = s_t`` (light frames read the memory but do
    not write it), as the cached detector was trained.

    ## Action Space

    ``Discrete(m)``: the extractor to run on the **next** frame, in the order of the
    ``extractors`` argument. 0 is always the heavy extractor; ``extractors=("heavy",
    "light")`` (m = 2) is the paper's setting, ``("heavy", "light", "light+shift")`` adds
    the embedded detector's light extractor with TSM's online temporal shift.

    ## Observation Space

    ``Dict`` with two entries (SB3's ``MultiInputPolicy`` accepts it), with ``H`` the
    memory's hidden channels and ``g`` its grid (64 and 8 for the embedded detector):

    | key       | space                                  | contents (Eq. 1)                                   |
    |-----------|----------------------------------------|----------------------------------------------------|
    | state     | Box((4H, g, g), float32), rows 0..H-1  | ``ĉ_t`` in [0, 6 clip_len]                         |
    |           | rows H..2H-1                           | ``ĥ_t`` in [0, 6]                                   |
    |           | rows 2H..3H-1                          | ``ĉ_t - c_{t-1}`` in ±6 clip_len                   |
    |           | rows 3H..4H-1                          | ``ĥ_t - h_{t-1}`` in [-6, 6]                        |
    | history   | MultiBinary(history_len), int8         | ``η_t``: entry k = 1 iff a light extractor ran on  |
    |           |                                        | frame ``t - k`` (k = 0 is the frame just processed)|

    With ``cues=True`` a third entry, ``cues`` (Box((4,), float32), low 0, high (1, 4, 4, 6)),
    carries signals an interleaved detector has at run time for almost nothing
    (:func:`gistgym.envs.interleave_core.runtime_cues`; the light extractor
    ``extractors[1]`` then runs on every frame, and on a frame where another extractor runs
    its FLOPs are added to ``cost_flops``):

    | entry         | contents                                                                        |
    |---------------|---------------------------------------------------------------------------------|
    | since_heavy   | ``min(k, 64) / 64``, k = frames since the last heavy frame (0 on a heavy frame) |
    | light_change  | ``‖x_t - x_h‖ / ‖x_h‖``: light features of frame t against those of the last     |
    |               | heavy frame h (scene change since the memory was last refreshed)                |
    | light_step    | ``‖x_t - x_{t-1}‖ / ‖x_{t-1}‖``: against the previous frame (motion, cuts)       |
    | memory_change | RMS of ``ĥ_t - h_{t-1}`` (how far the frame pulls the memory output)            |

    ``(ĉ_t, ĥ_t)`` is the state the memory computed at frame ``t`` **for the executed
    extractor**, ``s^{a_t}``, before the skip rule decides whether it is kept, and
    ``(c_{t-1}, h_{t-1})`` is the carried state that step consumed (the cell's input
    state). Why: with ``skip_light_updates`` the carried state does not change on light
    frames, so exposing it would show the policy a memory frozen at the last heavy frame
    and differences of exactly zero, hiding the current frame; ``s^{a_t}`` is what the
    detector's output at frame ``t`` was computed from, and its difference to the consumed
    state measures how far the current frame pulls the memory from its last write, which
    grows as the memory goes stale. Without ``skip_light_updates`` both readings coincide
    with Eq. 1 literally (``ĉ_t = c_t``). At reset the consumed state is zero, so the
    differences equal ``ĉ_0, ĥ_0``. ``η_t`` records that *a* light extractor ran, not which
    one (the paper's binary history; with m = 3 both light extractors count as 1).

    ## Rewards

    Eq. 2, for the action ``a`` that chose frame ``t + 1``'s extractor::

        R_t(a) = min_i L^i - L^a + speed_reward[a]

    The first part (<= 0) is zero when the chosen extractor had the lowest loss on that
    frame; ``speed_reward`` (default ``(0, 1.0)``: ``gamma = 1`` for the light extractor) pays
    for skipping the heavy one. The losses are computed in float32 by torch and reported in
    ``info["losses"]`` as float64; the reward is computed in float64 from exactly those
    numbers, so ``reward == min(info["losses"]) - info["losses"][a] + speed_reward[a]``
    holds bit for bit (:func:`gistgym.envs.rewards.interleave_reward`). The default
    ``gamma = 1`` is of the size of the per-frame light-minus-heavy loss gap of the
    embedded benchmark (val split under a fixed tau = 9 schedule: median 1.25, below 1 on
    38% of the frames), so neither extractor dominates; a Pareto curve comes from a sweep
    over gamma.

    With ``reward`` set to a per-frame signal ``S`` of :data:`gistgym.metrics.FRAME_SIGNALS`
    (``"f1"``, ``"errors"`` or ``"matched"``, each higher-is-better) the same difference form
    is paid on the frame's detections instead of its losses::

        R_t(a) = S^a - max_i S^i + speed_reward[a]

    where ``S^i`` scores extractor i's detections of frame ``t + 1`` (the head outputs
    ``D^i`` decoded with the evaluation's decoding and NMS,
    :func:`gistgym.backbones.ssdlite.postprocess`) against its ground truth with
    :func:`gistgym.metrics.frame_signals`; ``info["signals"]`` reports them and
    ``reward == info["signals"][a] - max(info["signals"]) + speed_reward[a]`` holds bit for
    bit (:func:`gistgym.envs.rewards.signal_reward`). Pooled mAP is what schedulers are
    judged by; a signal of the frame's detections may track it better than the loss. The
    decoding costs a Python loop over the ``m`` rows of every step, paid only then.

    ## Starting State

    ``reset`` draws a video of ``split`` uniformly among those with at least ``clip_len``
    frames, then a clip start uniformly, both with ``self.np_random``; the video is read
    from the cache in one ``load_episode`` the first time it is used in this process and
    kept in a byte-bounded memo (:data:`gistgym.envs.interleave_core.EPISODE_MEMO`). Frame
    0 of the clip runs the heavy extractor from a zero memory state (its state is carried).
    ``reset(options={"video_id": V, "start": S})`` fixes the clip (``start`` optional:
    drawn if absent), e.g. to evaluate a policy on every video of a held-out split.

    ## Episode End

    ``truncated`` is True after the step that processed the clip's last frame, i.e. after
    ``clip_len - 1`` steps: a time limit, the video goes on beyond the clip, so value
    targets should bootstrap. ``terminated`` is always False (no terminal state). Stepping
    after the end raises :class:`~gistgym.errors.EnvStateError`.

    ## Info

    Same keys at reset and at every step: ``losses`` ((m,) float64, ``L^i`` of the frame
    just processed; at reset those of frame 0 with every extractor from the zero state),
    ``cost_flops`` (int, counted FLOPs of the executed extractor's whole step, extractor +
    memory + head, from the cache's per-module counts), ``frame_index`` (int, index in the
    video), ``video_id`` (str), ``action`` (int, the extractor that ran: 0 at reset) and
    ``state_written`` (bool, whether the carried state was replaced). With a signal reward
    also ``signals`` ((m,) float64, ``S^i`` of the frame just processed, aligned with ``losses``).

    ## Arguments

    | argument           | default                | meaning                                                   |
    |--------------------|------------------------|-----------------------------------------------------------|
    | cache_path         | required               | feature cache with the ``interleave`` section             |
    | split              | ``"train"``            | split the clips are drawn from                            |
    | clip_len           | 40                     | frames per episode (>= 2; episodes have clip_len-1 steps) |
    | extractors         | ``("heavy", "light")`` | cache extractor names in action order, heavy first        |
    | speed_reward       | ``(0.0, 1.0)``         | per-action speed reward, one entry per extractor          |
    | skip_light_updates | None                   | light steps keep the carried state; None = the rule the   |
    |                    |                        | cached detector was trained with                          |
    | history_len        | 20                     | length of the action history ``η``                        |
    | reward             | ``"eq2"``              | ``"eq2"`` (Eq. 2 from the losses) or a per-frame signal   |
    |                    |                        | ``"f1"``, ``"errors"``, ``"matched"`` (see Rewards)       |
    | cues               | False                  | add the runtime cues to the observation (see above)       |
    | render_mode        | None                   | ``"rgb_array"``: :meth:`render` draws the clip so far     |

    Example (``gistgym cache build --videos data/bench --out runs/bench.h5`` makes the cache)::

        import gymnasium as gym
        import gistgym  # registers the ids
        from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv

        env = gym.make("gistgym/Interleave-v0", cache_path="runs/bench.h5", split="train",
                       extractors=("heavy", "light", "light+shift"), speed_reward=(0.0, 1.0, 1.2))
        f1_env = gym.make("gistgym/Interleave-v0", cache_path="runs/bench.h5", reward="f1", speed_reward=(0.0, 0.2))
        envs = gym.make_vec("gistgym/Interleave-v0", num_envs=64, vectorization_mode="vector_entry_point",
                            cache_path="runs/bench.h5")
        sb3_envs = InterleaveSB3VecEnv("runs/bench.h5", num_envs=64)  # SB3 VecEnv, same-step resets

    Bad arguments raise :class:`~gistgym.errors.EnvArgumentError` (unknown keywords
    :class:`~gistgym.errors.UnknownEnvArgumentError`, also a ``TypeError``), a cache
    without the ``interleave`` section :class:`~gistgym.errors.CacheSectionError`, an
    action outside the action space :class:`~gistgym.errors.InvalidActionError`.

    ## Notes

    The ``light+shift`` features are cached as a stream (the extractor running on every
    frame), so they are exact for a policy that keeps running it and approximate when it
    is mixed with other extractors. A single environment and a vector environment process
    the same episode identically up to float32 rounding: torch's CPU matrix kernels pick
    batch-size-dependent code paths, so observations and losses differ in the last bits
    (measured on the embedded benchmark: observations by < 1e-6, losses by < 5e-6
    relative), not bit for bit; every discrete quantity (clips, actions, truncations, costs,
    history) is identical, and within one environment a seed reproduces a rollout exactly.

    ## Version History

    * v0: initial version; the ``reward`` argument was added later with a default
      (``"eq2"``) that pays exactly what v0 always paid, and ``cues`` with a default
      (False) that observes exactly what v0 always observed.
    """

    metadata: dict[str, Any] = {"render_modes": list(RENDER_MODES), "render_fps": RENDER_FPS}  # noqa: RUF012

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
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
        self.render_mode = check_env_kwargs(type(self).__name__, unknown, ENV_ARGUMENTS, render_mode, renders=True)
        self.core = InterleaveCore(
            1,
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
        self.observation_space = self.core.observation_space()
        self.action_space = self.core.action_space()
        # rendered: per frame the extractor that ran, its loss, and the reward
        self._canvas = EpisodeCanvas(self.core.clip_len, signed=(False, True)) if self.render_mode else None

    # --- resolved arguments (what the environment actually runs with) ------------------------
    @property
    def extractors(self) -> tuple[str, ...]:
        """Extractor names in action order."""
        return self.core.extractors

    @property
    def speed_reward(self) -> tuple[float, ...]:
        """Per-action speed reward."""
        return self.core.speed_reward

    @property
    def skip_light_updates(self) -> bool:
        """The state-update rule in force (resolved from the cache when given as None)."""
        return self.core.skip_light_updates

    @property
    def clip_len(self) -> int:
        """Frames per episode."""
        return self.core.clip_len

    @property
    def reward(self) -> str:
        """The reward paid: ``"eq2"`` or a per-frame signal name."""
        return self.core.reward

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start a clip and process its frame 0 with the heavy extractor (see the class docstring).

        Args:
            seed: Seeds ``self.np_random`` (clip choice).
            options: ``{"video_id": V, "start": S}`` fixes the clip (``start`` optional).

        Returns:
            The observation after frame 0 and its info.
        """
        super().reset(seed=seed)
        video_id, start = self.core.clip_from_options(options, self.np_random)
        self.core.load(0, video_id, start)
        tr = self.core.advance(_SLOT, _SLOT)
        if self._canvas is not None:
            self._canvas.clear()
            self._draw(tr, reward=float("nan"))
        return {k: v[0] for k, v in tr.observation().items()}, single_info(tr, 0)

    def step(self, action: np.int64 | int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Run extractor ``action`` on the next frame (every extractor is scored, see the class docstring).

        Raises:
            InvalidActionError: ``action`` is not in ``Discrete(m)``.
            EnvStateError: Before ``reset`` or after the clip's last frame.
        """
        if isinstance(action, bool) or not self.action_space.contains(action):
            raise InvalidActionError(
                f"action {action!r} is outside the action space Discrete({self.core.num_actions}); pass an integer "
                f"in [0, {self.core.num_actions - 1}] (extractors {self.core.extractors})"
            )
        tr = self.core.advance(_SLOT, np.array([action], dtype=np.int64))
        obs = {k: v[0] for k, v in tr.observation().items()}
        if self._canvas is not None:
            self._draw(tr, reward=float(tr.rewards[0]))
        return obs, float(tr.rewards[0]), False, bool(tr.truncated[0]), single_info(tr, 0)

    def _draw(self, tr: Transition, reward: float) -> None:
        assert self._canvas is not None
        a = int(tr.actions[0])
        self._canvas.record(self.core.clip(0)[2], a, (float(tr.losses[0, a]), reward))

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: the clip so far, (H, W, 3) uint8, else ``None``.

        One column per frame of the clip: the extractor that ran (orange: heavy, blue: the
        first light one, then green), below it that extractor's detection loss and the reward
        (green up, red down; each band scaled to its largest value so far), and a white tick
        under the frame just processed (:class:`~gistgym.envs.render.EpisodeCanvas`).
        """
        return None if self._canvas is None else self._canvas.image()

    def close(self) -> None:
        """Release the cache file handle."""
        self.core.close()
        super().close()
