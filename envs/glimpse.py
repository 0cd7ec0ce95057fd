"""``gistgym/Glimpse-v0``: where to look next in a video (*AdaFrame* frame selection), numpy only.

:class:`GlimpseCore` holds ``num_slots`` episodes side by side and advances them with a few
numpy operations over all slots at once, including the frozen recurrent classifier that
pays the reward (:class:`NumpyGlimpseClassifier`, a numpy copy of
:class:`~gistgym.backbones.glimpse.GlimpseClassifier`); the single environment is a core
with one slot, the vector environments (:mod:`gistgym.envs.glimpse_vector`) cores with N,
so both run the same code. Everything an episode needs (frame features, the global
memory, labels) is read from the cache's ``glimpse`` section
(:mod:`gistgym.feature_cache.glimpse`) once, for the whole split; no torch runs in a step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from gistgym.backbones.glimpse import GlimpseClassifier, location_to_index
from gistgym.envs.common import check_env_kwargs, check_int
from gistgym.envs.render import RENDER_FPS, RENDER_MODES, EpisodeCanvas
from gistgym.envs.rewards import glimpse_reward
from gistgym.errors import CacheError, EnvArgumentError, EnvStateError, InvalidActionError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.glimpse import SECTION_GLIMPSE, read_glimpse_section

DEFAULT_NUM_GLIMPSES = 10

ENV_ARGUMENTS = ("cache_path", "split", "num_glimpses", "render_mode")
"""Every constructor argument of :class:`GlimpseEnv` (the vector envs add ``num_envs``)."""

INFO_KEYS = (
    "margin",
    "best_margin",
    "frame_index",
    "location",
    "frames_used",
    "cost_flops",
    "correct",
    "label",
    "video_id",
    "step",
)
"""Keys of ``info``, the same at reset and at every step."""


# --- the frozen classifier in numpy ---------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    # the tanh form never overflows (1 / (1 + exp(-x)) warns for large negative x)
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


class NumpyGlimpseClassifier:
    """:class:`~gistgym.backbones.glimpse.GlimpseClassifier` in float32 numpy, batched over rows.

    LayerNorm -> Linear + ReLU -> LSTMCell (torch's gate order i, f, g, o) -> Linear, with
    the weights of the torch module's ``state_dict``. Weight matrices are stored transposed
    and contiguous, and the LSTM's two products are one product of ``[x, h]`` with the
    stacked weights.

    Args:
        state_dict: The torch module's ``state_dict`` (tensors or arrays).
        eps: LayerNorm epsilon (torch's default).
    """

    def __init__(self, state_dict: Mapping[str, Any], *, eps: float = 1e-5) -> None:
        def get(key: str) -> np.ndarray:
            value = state_dict[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            return np.ascontiguousarray(array, dtype=np.float32)

        self.eps = np.float32(eps)
        self.norm_weight, self.norm_bias = get("norm.weight"), get("norm.bias")
        self.embed_weight_t, self.embed_bias = np.ascontiguousarray(get("embed.weight").T), get("embed.bias")
        w_ih, w_hh = get("cell.weight_ih"), get("cell.weight_hh")
        self.cell_weight_t = np.ascontiguousarray(np.concatenate([w_ih, w_hh], axis=1).T)
        self.cell_bias = get("cell.bias_ih") + get("cell.bias_hh")
        self.out_weight_t, self.out_bias = np.ascontiguousarray(get("out.weight").T), get("out.bias")
        self.feature_dim = len(self.norm_weight)
        self.hidden = w_hh.shape[1]
        self.num_classes = len(self.out_bias)

    @staticmethod
    def from_torch(module: GlimpseClassifier) -> NumpyGlimpseClassifier:
        """A numpy copy of a torch classifier."""
        return NumpyGlimpseClassifier(module.state_dict(), eps=float(module.norm.eps))

    def initial_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero ``(h, c)``, each (batch, hidden) float32."""
        return np.zeros((batch, self.hidden), np.float32), np.zeros((batch, self.hidden), np.float32)

    def step(
        self, features: np.ndarray, state: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Logits after one more glimpse: (B, F) float32, ``(h, c)`` -> (B, classes) float32, new ``(h, c)``."""
        x = np.asarray(features, dtype=np.float32)
        mean = x.mean(axis=1, keepdims=True)
        centred = x - mean
        var = np.mean(centred * centred, axis=1, keepdims=True)
        x = centred / np.sqrt(var + self.eps) * self.norm_weight + self.norm_bias
        x = np.maximum(x @ self.embed_weight_t + self.embed_bias, 0.0)
        h, c = state
        gates = np.concatenate([x, h], axis=1) @ self.cell_weight_t + self.cell_bias
        i, f, g, o = np.split(gates, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        logits: np.ndarray = h @ self.out_weight_t + self.out_bias
        return logits, (h, c)


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = z / z.sum(axis=1, keepdims=True)
    return out


def prediction_margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``m = p[label] - max_{c != label} p[c]`` per row, in float64.

    Args:
        probs: (B, C) probabilities (the environment passes the float32 ``obs["probs"]``).
        labels: (B,) integer labels.
    """
    p = np.asarray(probs, dtype=np.float64)
    rows = np.arange(len(p))
    others = p.copy()
    others[rows, labels] = -np.inf
    margin: np.ndarray = p[rows, labels] - others.max(axis=1)
    return margin


def _check_locations(actions: object, shape: tuple[int, ...], expected: str) -> np.ndarray:
    """``actions`` of ``shape`` as flat float64 locations, rounded to float32 as the action space holds them.

    Raises:
        InvalidActionError: Another shape, not real numbers, NaN/inf, or outside the valid range [0, 1].
    """
    try:
        a = np.asarray(actions)
    except (TypeError, ValueError):  # ragged sequences
        a = np.asarray(None)
    if a.shape != shape or a.dtype.kind not in "fiu":
        raise InvalidActionError(f"action must be {expected}, got {actions!r}")
    raw = a.reshape(-1).astype(np.float64)
    if not np.isfinite(raw).all() or (raw < 0.0).any() or (raw > 1.0).any():
        raise InvalidActionError(
            f"action {actions!r} is outside the valid range [0, 1] (0 = first frame, 1 = last frame); pass {expected}"
        )
    loc = raw.astype(np.float32).astype(np.float64)
    return loc


# --- the batched simulator ------------------------------------------------------------------
class GlimpseCore:
    """``num_slots`` Glimpse episodes advanced together with numpy.

    An episode is a whole video (a "clip" in the :mod:`~gistgym.envs.vector_common`
    vocabulary, whose start is always 0). A loaded slot's first :meth:`advance` returns the
    reset observation and ignores its action; each later one takes a glimpse.

    Args:
        num_slots: Episodes held side by side.
        cache_path: Feature cache with the ``glimpse`` section.
        split: Split whose videos episodes are drawn from.
        num_glimpses: K, glimpses per episode.

    Raises:
        CacheError: Missing or unreadable cache, unknown or empty split, bad section contents.
        CacheSectionError: The cache has no ``glimpse`` section.
        EnvArgumentError: Any other bad argument.
    """

    def __init__(self, num_slots: int, cache_path: str | os.PathLike[str], *, split: str, num_glimpses: int) -> None:
        self.num_slots = check_int("num_envs", num_slots, 1)
        self.num_glimpses = check_int("num_glimpses", num_glimpses, 1)
        if not isinstance(cache_path, str | os.PathLike):
            raise EnvArgumentError(f"cache_path must be the path of a feature cache file, got {cache_path!r}")
        if not isinstance(split, str):
            raise EnvArgumentError(f"split must be a split name such as 'train', got {split!r}")
        self.cache = FeatureCache(Path(cache_path), sections=(SECTION_GLIMPSE,))
        self.split = split
        section = read_glimpse_section(self.cache)
        self.videos = section.load_split(self.cache, split)
        self.costs = section.costs
        self.class_names = section.class_names
        self.classifier = NumpyGlimpseClassifier.from_torch(section.classifier)
        cfg = section.config
        if cfg.num_classes < 2:
            raise CacheError(
                self.cache.path,
                f"the glimpse classifier has {cfg.num_classes} class(es); the margin reward needs at least 2",
                field=f"sections/{SECTION_GLIMPSE}",
            )
        self.num_classes = cfg.num_classes
        self.feature_dim = cfg.feature_dim
        self.memory_shape = (cfg.memory_frames, cfg.memory_dim)
        self._index = {v: i for i, v in enumerate(self.videos.video_ids)}
        self._video_ids = np.array(self.videos.video_ids, dtype=object)

        n, C = self.num_slots, self.num_classes
        t_max = self.videos.frame_features.shape[1]
        # per-slot state, and what the slot's last advance reported (reset values after load)
        self._video = np.zeros(n, dtype=np.int64)
        self._label = np.zeros(n, dtype=np.int64)
        self._steps = np.zeros(n, dtype=np.int64)  # glimpses taken; -1 = loaded, reset obs not returned yet
        self._loaded = np.zeros(n, dtype=bool)
        self._h, self._c = self.classifier.initial_state(n)
        self._seen = np.zeros((n, t_max), dtype=bool)
        self._frame = np.zeros((n, self.feature_dim), dtype=np.float32)
        self._probs = np.full((n, C), 1.0 / C, dtype=np.float32)
        self._location = np.zeros(n, dtype=np.float32)
        self._margin = np.zeros(n, dtype=np.float64)
        self._best = np.zeros(n, dtype=np.float64)
        self._reward = np.zeros(n, dtype=np.float64)
        self._frame_index = np.full(n, -1, dtype=np.int64)
        self._frames_used = np.zeros(n, dtype=np.int64)
        self._cost = np.zeros(n, dtype=np.int64)
        self._uniform = np.full(C, 1.0 / C, dtype=np.float32)

    # --- spaces -----------------------------------------------------------------------------
    def observation_space(self) -> spaces.Dict:
        """The single-episode observation space (see :class:`GlimpseEnv`)."""
        return spaces.Dict(
            {
                "frame": spaces.Box(-np.inf, np.inf, shape=(self.feature_dim,), dtype=np.float32),
                "memory": spaces.Box(-np.inf, np.inf, shape=self.memory_shape, dtype=np.float32),
                "probs": spaces.Box(0.0, 1.0, shape=(self.num_classes,), dtype=np.float32),
                "step": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
                "location": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
            }
        )

    def action_space(self) -> spaces.Box:
        """Box(0, 1, (1,), float32): the location of the next glimpse."""
        return spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)

    # --- actions ----------------------------------------------------------------------------
    @staticmethod
    def check_actions(actions: object, num_envs: int) -> np.ndarray:
        """Batched actions, shape ``(N, 1)``, as (N,) float64 locations (float32 values).

        Raises:
            InvalidActionError: Wrong shape, not real numbers, NaN/inf, or outside [0, 1].
        """
        return _check_locations(
            actions, (num_envs, 1), f"{num_envs} locations in [0, 1] (Box(0.0, 1.0, ({num_envs}, 1), float32))"
        )

    @staticmethod
    def check_action(action: object) -> np.ndarray:
        """One environment's action, shape ``(1,)``, as a (1,) float64 location (a float32 value).

        Raises:
            InvalidActionError: Wrong shape, not a real number, NaN/inf, or outside [0, 1].
        """
        return _check_locations(action, (1,), "a location in [0, 1] of shape (1,) (Box(0.0, 1.0, (1,), float32))")

    # --- episodes ---------------------------------------------------------------------------
    def choose_clip(self, rng: np.random.Generator) -> tuple[str, int]:
        """A uniformly random video of the split (the start is always 0: episodes are whole videos)."""
        return self.videos.video_ids[int(rng.integers(len(self.videos.video_ids)))], 0

    def clip_from_options(self, options: Mapping[str, Any] | None, rng: np.random.Generator) -> tuple[str, int]:
        """The video a ``reset`` starts: random (drawn with ``rng``), or ``options["video_id"]``.

        Raises:
            EnvArgumentError: Unknown option keys or a video not in the split.
        """
        if not options:
            return self.choose_clip(rng)
        if not isinstance(options, Mapping):
            raise EnvArgumentError(f"reset options must be a dict, got {options!r}")
        unknown = sorted(set(options) - {"video_id"})
        if unknown:
            raise EnvArgumentError(f"unknown reset option(s) {unknown}; valid options: video_id")
        video_id = options["video_id"]
        if not isinstance(video_id, str) or video_id not in self._index:
            some = ", ".join(self.videos.video_ids[:3])
            raise EnvArgumentError(
                f"reset option video_id={video_id!r} is not a video of split {self.split!r} in {self.cache.path} "
                f"(e.g. {some})"
            )
        return video_id, 0

    def load(self, slot: int, video_id: str, start: int = 0) -> None:
        """Start ``video_id`` in ``slot`` (``start`` is ignored: an episode is the whole video)."""
        v = self._index[video_id]
        self._video[slot] = v
        self._label[slot] = self.videos.labels[v]
        self._steps[slot] = -1
        self._loaded[slot] = True
        self._h[slot] = 0.0
        self._c[slot] = 0.0
        self._seen[slot] = False
        self._frame[slot] = 0.0
        self._probs[slot] = self._uniform
        self._location[slot] = 0.0
        self._margin[slot] = 0.0
        self._best[slot] = 0.0
        self._reward[slot] = 0.0
        self._frame_index[slot] = -1
        self._frames_used[slot] = 0
        self._cost[slot] = self.costs.memory_flops  # the global memory, computed once per video

    def video(self, slot: int) -> tuple[str, int]:
        """``(video_id, glimpses taken)`` of ``slot``."""
        return str(self._video_ids[self._video[slot]]), int(self._steps[slot])

    def _glimpse(self, slots: np.ndarray, locations: np.ndarray) -> None:
        """Take one glimpse in each of ``slots`` (distinct, mid-episode) and record what it reported."""
        v = self._video[slots]
        index = location_to_index(locations, self.videos.num_frames[v])
        features = self.videos.frame_features[v, index]
        logits, (h, c) = self.classifier.step(features, (self._h[slots], self._c[slots]))
        probs = softmax64(logits).astype(np.float32)
        # the margin from the float32 probabilities the observation shows, so it can be recomputed
        margin = prediction_margin(probs, self._label[slots])
        steps = self._steps[slots]
        best_before = self._best[slots]  # 0 before the first glimpse
        fresh_frame = ~self._seen[slots, index]
        self._h[slots], self._c[slots] = h, c
        self._seen[slots, index] = True
        self._frame[slots] = features
        self._probs[slots] = probs
        self._location[slots] = locations
        self._margin[slots] = margin
        self._reward[slots] = glimpse_reward(margin, best_before)
        self._best[slots] = np.where(steps == 0, margin, np.maximum(best_before, margin))
        self._frame_index[slots] = index
        self._frames_used[slots] += fresh_frame
        self._cost[slots] = np.where(fresh_frame, self.costs.frame_flops, 0)
        self._steps[slots] = steps + 1

    def advance(self, slots: np.ndarray, actions: np.ndarray) -> dict[str, Any]:
        """Take the next glimpse in every slot of ``slots``, or return its reset observation.

        A slot that was just loaded returns its reset observation and info (reward 0) and
        ignores its action.

        Args:
            slots: (n,) int64 distinct slot indices.
            actions: (n,) float64 validated locations in [0, 1].

        Returns:
            ``obs`` (batched dict), ``reward`` (n,) float64, ``terminated`` (n,) bool and the
            :data:`INFO_KEYS` arrays.

        Raises:
            EnvStateError: A slot was never loaded or its episode is over.
        """
        steps = self._steps[slots]
        if not self._loaded[slots].all() or (steps >= self.num_glimpses).any():
            raise EnvStateError("the episode is over (or never started); call reset() before step()")
        first = steps < 0
        if first.all():
            self._steps[slots] = 0
        else:
            moving = ~first
            self._steps[slots[first]] = 0
            self._glimpse(slots[moving], np.asarray(actions, dtype=np.float64)[moving])
        steps = self._steps[slots]
        probs = self._probs[slots]
        labels = self._label[slots]
        location = self._location[slots]
        obs = {
            "frame": self._frame[slots],
            "memory": self.videos.memory[self._video[slots]],
            "probs": probs,
            "step": (steps / self.num_glimpses).astype(np.float32)[:, None],
            "location": location[:, None],
        }
        return {
            "obs": obs,
            "reward": self._reward[slots],
            "terminated": steps == self.num_glimpses,
            "first": first,
            "margin": self._margin[slots],
            "best_margin": self._best[slots],
            "frame_index": self._frame_index[slots],
            "location": location.astype(np.float64),
            "frames_used": self._frames_used[slots],
            "cost_flops": self._cost[slots],
            "correct": probs.argmax(axis=1) == labels,
            "label": labels,
            "video_id": self._video_ids[self._video[slots]],
            "step": steps,
        }

    def close(self) -> None:
        """Release the cache file handle."""
        self.cache.close()


def single_info(out: Mapping[str, Any], row: int) -> dict[str, Any]:
    """The ``info`` dict of one row of :meth:`GlimpseCore.advance` (same keys at reset and every step)."""
    return {
        "margin": float(out["margin"][row]),
        "best_margin": float(out["best_margin"][row]),
        "frame_index": int(out["frame_index"][row]),
        "location": float(out["location"][row]),
        "frames_used": int(out["frames_used"][row]),
        "cost_flops": int(out["cost_flops"][row]),
        "correct": bool(out["correct"][row]),
        "label": int(out["label"][row]),
        "video_id": str(out["video_id"][row]),
        "step": int(out["step"][row]),
    }


def single_obs(out: Mapping[str, Any], row: int) -> dict[str, np.ndarray]:
    """The observation of one row."""
    return {k: v[row] for k, v in out["obs"].items()}


_SLOT = np.zeros(1, dtype=np.int64)
RENDER_COLUMNS = 96
"""Bins of the video's timeline in a rendered episode."""
_NO_ACTION = np.zeros(1, dtype=np.float64)


class GlimpseEnv(gym.Env[dict[str, Any], np.ndarray]):
    r"""AdaFrame: choose which frames of a video to look at before classifying it.

    ## Description

    AdaFrame (Wu et al. 2019) classifies an untrimmed video from a few frames chosen one at
    a time: after each glimpse a recurrent classifier updates its prediction and a policy
    decides where to look next. Here the classifier is frozen (trained on random glimpse
    sequences, :func:`~gistgym.backbones.glimpse.train_glimpse_classifier`) and part of the
    environment; the agent is the policy. An episode is one whole video of ``split``; the
    agent sees the video's **global memory** (cheap features of ``T_d`` uniformly sampled
    frames with their positions) from the start, and after each glimpse the heavy feature of
    the frame it looked at and the classifier's new prediction. A glimpse at frame ``i``
    feeds ``frame_features[i]`` (cached) to the classifier: one LSTM step on its running
    state, then ``probs = softmax(logits)``. The classifier runs in numpy
    (:class:`NumpyGlimpseClassifier`, equal to the torch module to float rounding).

    ## Action Space

    ``Box(0, 1, (1,), float32)``: the location of the next glimpse; the frame looked at is
    ``round(location * (T - 1))`` of the episode's ``T``-frame video
    (:func:`~gistgym.backbones.glimpse.location_to_index`). Looking at a frame again is
    allowed (it feeds the classifier again, at no new frame cost). NaN/inf, a location
    outside [0, 1] or another shape raise :class:`~gistgym.errors.InvalidActionError`.

    ## Observation Space

    ``Dict`` (SB3's ``MultiInputPolicy`` accepts it), with ``F`` the frame feature width,
    ``T_d`` the memory frames, ``P`` the positional-encoding width and ``C`` the classes:

    | key      | space                              | contents                                                |
    |----------|------------------------------------|---------------------------------------------------------|
    | frame    | Box((F,), float32), unbounded      | feature of the frame last glimpsed (zeros at reset)     |
    | memory   | Box((T_d, F + P), float32),        | the video's global memory with positional encodings     |
    |          | unbounded                          | (the same at every step of the episode)                 |
    | probs    | Box((C,), float32) in [0, 1]       | the classifier's probabilities (uniform 1/C at reset)   |
    | step     | Box((1,), float32) in [0, 1]       | glimpses taken / ``num_glimpses``                       |
    | location | Box((1,), float32) in [0, 1]       | the last glimpse's location (0 at reset)                |

    ## Rewards

    Eq. 3 of AdaFrame, with the margin of the prediction after glimpse ``t``
    ``m_t = probs_t[label] - max_{c != label} probs_t[c]``::

        r_t = max(0, m_t - max_{t' < t} m_t')

    a glimpse is paid for how much it raises the best margin so far. For the first glimpse
    (``t = 0``) the maximum over no glimpses is taken as 0, the margin of the uniform
    prediction the episode starts from; later glimpses compare with the earlier margins
    only (not with that 0). ``m_t`` is computed in float64 from the float32
    ``obs["probs"]`` and reported as ``info["margin"]``; ``info["best_margin"]`` is
    ``max_{t' <= t} m_t'`` (0 at reset), so ``reward == max(0.0, info["margin"] -
    previous_info["best_margin"])`` holds exactly, ``previous_info`` being the info of the
    previous step or of the reset (:func:`gistgym.envs.rewards.glimpse_reward`).

    ## Starting State

    ``reset`` draws a video of ``split`` uniformly with ``self.np_random``;
    ``reset(options={"video_id": V})`` picks one. The classifier state is zero, no frame is
    glimpsed yet.

    ## Episode End

    ``terminated`` is True after the ``num_glimpses``-th glimpse (the prediction then is the
    episode's answer); ``truncated`` is always False. Stepping after the end raises
    :class:`~gistgym.errors.EnvStateError`.

    ## Info

    Same keys at reset and every step: ``margin`` (float, ``m_t``; 0 at reset),
    ``best_margin`` (float, max margin so far including this step; 0 at reset),
    ``frame_index`` (int, frame just glimpsed; -1 at reset), ``location`` (float, the
    action as float32; 0 at reset), ``frames_used`` (int, distinct frames glimpsed so far),
    ``cost_flops`` (int, the heavy extractor's ``frame_flops`` if this frame was not
    glimpsed before in the episode, else 0; at reset the global memory's ``memory_flops``,
    counted once per episode), ``correct`` (bool, ``argmax(probs) == label``; argmax takes
    the first class on ties, so at reset it is ``label == 0``), ``label`` (int),
    ``video_id`` (str) and ``step`` (int, glimpses taken).

    ## Arguments

    | argument     | default     | meaning                                                  |
    |--------------|-------------|----------------------------------------------------------|
    | cache_path   | required    | feature cache with the ``glimpse`` section               |
    | split        | ``"train"`` | split the videos are drawn from                          |
    | num_glimpses | 10          | K, glimpses per episode (>= 1)                           |
    | render_mode  | None        | ``"rgb_array"``: :meth:`render` draws the glimpses so far |

    Example (``gistgym cache build --videos data/glimpse --out data/glimpse.h5 --sections
    glimpse`` makes the cache)::

        import gymnasium as gym
        import gistgym  # registers the ids

        env = gym.make("gistgym/Glimpse-v0", cache_path="data/glimpse.h5", num_glimpses=8)
        envs = gym.make_vec("gistgym/Glimpse-v0", num_envs=256, vectorization_mode="vector_entry_point",
                            cache_path="data/glimpse.h5")

    Bad arguments raise :class:`~gistgym.errors.EnvArgumentError` (unknown keywords
    :class:`~gistgym.errors.UnknownEnvArgumentError`), a cache without the ``glimpse``
    section :class:`~gistgym.errors.CacheSectionError`, an unknown split
    :class:`~gistgym.errors.CacheError`.

    ## Version History

    * v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": list(RENDER_MODES), "render_fps": RENDER_FPS}  # noqa: RUF012

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
        split: str = "train",
        num_glimpses: int = DEFAULT_NUM_GLIMPSES,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        self.render_mode = check_env_kwargs(type(self).__name__, unknown, ENV_ARGUMENTS, render_mode, renders=True)
        self.core = GlimpseCore(1, cache_path, split=split, num_glimpses=num_glimpses)
        self.observation_space = self.core.observation_space()
        self.action_space = self.core.action_space()
        # rendered: the video's timeline in RENDER_COLUMNS bins, each glimpse's margin and reward at its place
        self._canvas = EpisodeCanvas(RENDER_COLUMNS, signed=(True, True)) if self.render_mode else None

    @property
    def num_glimpses(self) -> int:
        """K, glimpses per episode."""
        return self.core.num_glimpses

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a video with nothing glimpsed (see the class docstring).

        Args:
            seed: Seeds ``self.np_random`` (video choice).
            options: ``{"video_id": V}`` fixes the video.
        """
        super().reset(seed=seed)
        video_id, _ = self.core.clip_from_options(options, self.np_random)
        self.core.load(0, video_id)
        out = self.core.advance(_SLOT, _NO_ACTION)
        if self._canvas is not None:
            self._canvas.clear()
        return single_obs(out, 0), single_info(out, 0)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Glimpse the frame at ``action`` (a location in [0, 1]).

        Raises:
            InvalidActionError: ``action`` is not a finite location in [0, 1] of shape (1,).
            EnvStateError: Before ``reset`` or after the last glimpse.
        """
        location = self.core.check_action(action)
        out = self.core.advance(_SLOT, location)
        info = single_info(out, 0)
        if self._canvas is not None:
            column = min(int(info["location"] * RENDER_COLUMNS), RENDER_COLUMNS - 1)
            self._canvas.record(column, 0, (info["margin"], float(out["reward"][0])))
        return single_obs(out, 0), float(out["reward"][0]), bool(out["terminated"][0]), False, info

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: the glimpses so far, (H, W, 3) uint8, else ``None``.

        The video's timeline in :data:`RENDER_COLUMNS` equal bins: orange where a glimpse
        looked, below it the margin of the prediction after that glimpse and the glimpse's
        reward (green up, red down; each band scaled to its largest magnitude so far), and a
        white tick under the last glimpse (:class:`~gistgym.envs.render.EpisodeCanvas`).
        """
        return None if self._canvas is None else self._canvas.image()

    def close(self) -> None:
        """Release the cache file handle."""
        self.core.close()
        super().close()
