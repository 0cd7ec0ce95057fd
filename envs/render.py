"""``render_mode="rgb_array"``: a picture of the episode so far, for every environment.

The cache holds features, not pixels, so the environments draw what a person watching a
scheduler wants to see: *the schedule*. :class:`EpisodeCanvas` is one strip of columns, one
per step (or per position in the video), with

* an action band: the column's color says which action ran there (dark gray: not yet);
* value bands below it: one bar per column (a loss, a reward, a distance, a margin), scaled
  by the largest magnitude of its band so far in the episode, drawn up from the bottom, or
  up and down from a middle line for a signed band;
* a white tick under the column of the last step.

Every image of an environment has the same size (``gymnasium.wrappers.RecordVideo`` and
video encoders need that; both sides are even for yuv420p encoders), and drawing costs a few
numpy slices per step. Pure numpy, no torch or matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gistgym.errors import EnvArgumentError

RENDER_MODES = ("rgb_array",)
"""What every environment renders (``render_mode=None`` renders nothing)."""

RENDER_FPS = 15
"""Frames per second of a recorded episode (the synthetic benchmarks' frame rate)."""

ACTION_COLORS: tuple[tuple[int, int, int], ...] = (
    (235, 125, 40),  # action 0: heavy extractor / keyframe / a glimpse
    (60, 125, 225),  # action 1: light extractor / propagate
    (90, 195, 110),  # action 2: a further light extractor
    (190, 90, 200),
)
BACKGROUND = (18, 18, 18)
NOT_YET = (48, 48, 48)
POSITIVE = (95, 205, 125)
NEGATIVE = (225, 85, 85)
TICK = (245, 245, 245)
ACTION_HEIGHT, BAND_HEIGHT, GAP, TARGET_WIDTH = 18, 40, 4, 480


def check_render_mode(owner: str, render_mode: str | None) -> str | None:
    """``render_mode`` if the environments render it.

    Raises:
        EnvArgumentError: Anything but ``None`` or ``"rgb_array"``.
    """
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise EnvArgumentError(
            f"{owner}: render_mode={render_mode!r} is not supported; use None or 'rgb_array' (the schedule so far)"
        )
    return render_mode


class EpisodeCanvas:
    """The schedule of one episode as an RGB image (see the module docstring).

    Args:
        columns: Columns of the strip (steps of a clip, or positions in a video).
        signed: One entry per value band: whether its values can be negative.
    """

    def __init__(self, columns: int, signed: Sequence[bool]) -> None:
        if columns < 1:
            raise ValueError(f"an episode canvas needs >= 1 columns, got {columns}")
        self.columns = int(columns)
        self.signed = tuple(bool(s) for s in signed)
        self.px = max(1, TARGET_WIDTH // self.columns)
        self.width = self.columns * self.px + (self.columns * self.px) % 2
        height = ACTION_HEIGHT + GAP + len(self.signed) * (BAND_HEIGHT + GAP) + GAP
        self.height = height + height % 2
        self.clear()

    def clear(self) -> None:
        """Start a new episode: nothing drawn."""
        self.actions = np.full(self.columns, -1, dtype=np.int64)
        self.values = np.full((len(self.signed), self.columns), np.nan)
        self.last: int | None = None

    def record(self, column: int, action: int, values: Sequence[float] = ()) -> None:
        """Column ``column`` ran ``action`` and scored ``values`` (one per band; NaN draws no bar)."""
        if not 0 <= column < self.columns:
            raise IndexError(f"column {column} is outside 0..{self.columns - 1}")
        self.actions[column] = int(action)
        for band, v in enumerate(values):
            self.values[band, column] = float(v)
        self.last = int(column)

    def image(self) -> np.ndarray:
        """(height, width, 3) uint8."""
        img = np.empty((self.height, self.width, 3), dtype=np.uint8)
        img[:] = BACKGROUND
        for c, a in enumerate(self.actions.tolist()):
            color = NOT_YET if a < 0 else ACTION_COLORS[a % len(ACTION_COLORS)]
            img[1 : ACTION_HEIGHT - 3, c * self.px : (c + 1) * self.px - (self.px > 2)] = color
        if self.last is not None:
            img[ACTION_HEIGHT - 2 : ACTION_HEIGHT, self.last * self.px : (self.last + 1) * self.px] = TICK
        top = ACTION_HEIGHT + GAP
        for band, signed in enumerate(self.signed):
            self._bars(img, top, self.values[band], signed)
            top += BAND_HEIGHT + GAP
        return img

    def _bars(self, img: np.ndarray, top: int, values: np.ndarray, signed: bool) -> None:
        img[top : top + BAND_HEIGHT, : self.columns * self.px] = (30, 30, 30)
        finite = np.isfinite(values)
        if not finite.any():
            return
        scale = float(np.max(np.abs(values[finite])))
        if scale <= 0:
            scale = 1.0
        half = BAND_HEIGHT // 2 if signed else BAND_HEIGHT
        base = top + half if signed else top + BAND_HEIGHT
        if signed:
            img[base, : self.columns * self.px] = (70, 70, 70)
        for c in np.flatnonzero(finite).tolist():
            v = float(values[c])
            n = max(1, round(abs(v) / scale * (half - 1))) if v != 0 else 0
            x = slice(c * self.px, (c + 1) * self.px - (self.px > 2))
            if v >= 0:
                img[base - n : base, x] = POSITIVE
            else:
                img[base + 1 : base + 1 + n, x] = NEGATIVE
