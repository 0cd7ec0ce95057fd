"""What every task family's environments share: argument checks and the choice of episodes.

* :func:`check_env_kwargs` / :func:`check_no_unknown_kwargs`: refuse keyword arguments an
  environment does not take and a ``render_mode`` it does not render;
* :func:`check_int`, :func:`check_reward`: argument checks with messages that name the argument;
* :class:`ClipSource`: which video and clip an episode plays, and ``reset(options=...)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gistgym.envs.render import check_render_mode
from gistgym.envs.rewards import REWARDS
from gistgym.errors import EnvArgumentError, UnknownEnvArgumentError
from gistgym.feature_cache import FeatureCache


def check_no_unknown_kwargs(owner: str, unknown: Mapping[str, Any], valid: Sequence[str]) -> None:
    """Refuse keyword arguments an environment does not have.

    Raises:
        UnknownEnvArgumentError: ``unknown`` is not empty (the message lists ``valid``).
    """
    if unknown:
        names = ", ".join(sorted(unknown))
        raise UnknownEnvArgumentError(
            f"{owner} got unknown keyword argument(s) {names}; valid arguments: {', '.join(valid)}"
        )


def check_env_kwargs(
    owner: str, unknown: Mapping[str, Any], valid: Sequence[str], render_mode: str | None, *, renders: bool = False
) -> str | None:
    """Refuse keyword arguments an environment does not have, and a ``render_mode`` it does not render.

    Args:
        owner: The environment's class name, for the messages.
        unknown: The keyword arguments the constructor did not name.
        valid: The constructor's argument names.
        render_mode: The ``render_mode`` asked for.
        renders: The environment renders :data:`~gistgym.envs.render.RENDER_MODES` (the single
            environments); else only ``None`` is accepted (the batched ones).

    Returns:
        ``render_mode``.

    Raises:
        UnknownEnvArgumentError: ``unknown`` is not empty (the message lists ``valid``).
        EnvArgumentError: A ``render_mode`` the environment does not render.
    """
    check_no_unknown_kwargs(owner, unknown, valid)
    if renders:
        return check_render_mode(owner, render_mode)
    if render_mode is not None:
        raise EnvArgumentError(
            f"{owner}: render_mode={render_mode!r} is not supported (the batched environments do not render; "
            "the single ones render 'rgb_array')"
        )
    return None


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool) >= ``minimum``.

    Raises:
        EnvArgumentError: Anything else (the message names the argument).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise EnvArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_reward(value: object) -> str:
    """The ``reward`` argument of the Interleave and Keyframe environments, validated.

    Raises:
        EnvArgumentError: ``value`` is not one of :data:`gistgym.envs.rewards.REWARDS`.
    """
    if not isinstance(value, str) or value not in REWARDS:
        raise EnvArgumentError(f"reward must be one of {', '.join(map(repr, REWARDS))}, got reward={value!r}")
    return value


class ClipSource:
    """Clip choice and ``reset(options=...)`` validation, shared by every core.

    A core sets ``cache``, ``split``, ``clip_len``, ``eligible`` (the videos of the split
    with at least ``clip_len`` frames) and ``_lengths`` (frames per video of the split).
    """

    cache: FeatureCache
    split: str
    clip_len: int
    eligible: tuple[str, ...]
    _lengths: Mapping[str, int]
    none_start_draws = False
    """Whether ``options["start"] = None`` draws the start (as an absent ``start``) or is refused."""

    def _set_split(self, split: object, path: Path) -> None:
        """Set ``split``, ``eligible`` and ``_lengths`` from ``self.cache`` (``clip_len`` already set).

        Raises:
            EnvArgumentError: ``split`` is not a string, or no video of it is ``clip_len`` long.
        """
        if not isinstance(split, str):
            raise EnvArgumentError(f"split must be a split name such as 'train', got {split!r}")
        self.split = split
        ids = self.cache.video_ids(split)
        lengths = {v: self.cache.entry(v).num_frames for v in ids}
        self.eligible = tuple(v for v in ids if lengths[v] >= self.clip_len)
        self._lengths = lengths
        if not self.eligible:
            longest = max(lengths.values(), default=0)
            raise EnvArgumentError(
                f"clip_len={self.clip_len} is longer than every video of split {split!r} in {path} "
                f"({len(ids)} videos, the longest has {longest} frames); pass clip_len <= {longest}"
            )

    def choose_clip(self, rng: np.random.Generator) -> tuple[str, int]:
        """A uniformly random eligible video of the split, then a uniformly random clip start."""
        video_id = self.eligible[int(rng.integers(len(self.eligible)))]
        start = int(rng.integers(self._lengths[video_id] - self.clip_len + 1))
        return video_id, start

    def check_clip(self, video_id: object, start: object) -> tuple[str, int]:
        """Validate a clip requested through ``reset(options=...)``.

        Raises:
            EnvArgumentError: Not a video of the split, or the clip does not fit in it.
        """
        if not isinstance(video_id, str) or video_id not in self._lengths:
            some = ", ".join(self.eligible[:3])
            raise EnvArgumentError(
                f"reset option video_id={video_id!r} is not a video of split {self.split!r} in {self.cache.path} "
                f"(e.g. {some})"
            )
        if video_id not in self.eligible:
            raise EnvArgumentError(
                f"video {video_id!r} has {self._lengths[video_id]} frames, fewer than clip_len={self.clip_len}"
            )
        last = self._lengths[video_id] - self.clip_len
        if isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 0 <= int(start) <= last:
            raise EnvArgumentError(
                f"reset option start={start!r} must be an integer in [0, {last}] for video {video_id!r} "
                f"({self._lengths[video_id]} frames, clip_len={self.clip_len})"
            )
        return video_id, int(start)

    def clip_from_options(self, options: Mapping[str, Any] | None, rng: np.random.Generator) -> tuple[str, int]:
        """The clip a ``reset`` starts: random, or fixed by ``options`` ``video_id`` (and ``start``).

        With only ``video_id`` the start is drawn with ``rng``.

        Raises:
            EnvArgumentError: Unknown option keys, ``start`` without ``video_id``, or a bad clip.
        """
        if not options:
            return self.choose_clip(rng)
        if not isinstance(options, Mapping):
            raise EnvArgumentError(f"reset options must be a dict, got {options!r}")
        unknown = sorted(set(options) - {"video_id", "start"})
        if unknown:
            raise EnvArgumentError(f"unknown reset option(s) {unknown}; valid options: video_id, start")
        if "video_id" not in options:
            raise EnvArgumentError("reset option start needs video_id as well")
        video_id = options["video_id"]
        start = options.get("start")
        if "start" in options and (start is not None or not self.none_start_draws):
            return self.check_clip(video_id, start)
        self.check_clip(video_id, 0)
        return video_id, int(rng.integers(self._lengths[video_id] - self.clip_len + 1))
