"""Procedural synthetic videos with exact ground truth, deterministic from a seed.

The benchmark is built so that *when* to spend compute matters:

* Four object classes. Each has a fine luminance texture of period 2 px (horizontal
  stripes, vertical stripes, checkerboard, dots) with zero mean over every 2x2 block, so
  it vanishes completely when a frame is area-downsampled to half resolution (what the
  light extractor sees). Classes 0-1 are discs, 2-3 are boxes: at half resolution the
  shape still tells the pair apart, never the class within a pair. Colours are random
  and carry no class information.
* Textured, smoothly coloured backgrounds with camera motion, sensor noise, objects that
  move, change scale, occlude each other, enter and leave, and blur when they move fast
  (motion blur erases the texture for every extractor, so only memory can keep a class).
* Every video is a sequence of segments of changing difficulty (``calm``, ``medium``,
  ``fast``, ``small``, ``arrivals``) so that an adaptive scheduler has something to learn.

Everything random goes through one ``numpy.random.Generator`` seeded by
``(seed, split, index)``, so the same seed gives the same pixels and boxes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from gistgym.errors import ConfigError

CLASS_NAMES: tuple[str, ...] = ("striped-disc", "barred-disc", "checkered-box", "dotted-box")
"""Class names; index = label. Texture: h-stripes, v-stripes, checkerboard, dots."""

_CLASS_SHAPE = ("disc", "disc", "box", "box")
_CLASS_TEXTURE = ("hstripe", "vstripe", "checker", "dots")

SEGMENT_KINDS: tuple[str, ...] = ("calm", "medium", "fast", "small", "arrivals")
"""Difficulty segments; the per-frame segment kind is stored in the annotations."""

# Speed range (px/frame), spawn probability per frame, target size range (px) per kind.
_SEGMENT_PARAMS: dict[str, dict[str, tuple[float, float] | float]] = {
    "calm": {"speed": (0.1, 0.4), "spawn": 0.0, "size": (12.0, 22.0), "camera": 0.1},
    "medium": {"speed": (0.4, 1.0), "spawn": 0.02, "size": (9.0, 20.0), "camera": 0.3},
    "fast": {"speed": (1.2, 2.6), "spawn": 0.03, "size": (9.0, 20.0), "camera": 0.6},
    "small": {"speed": (0.3, 1.0), "spawn": 0.03, "size": (6.0, 10.0), "camera": 0.3},
    "arrivals": {"speed": (0.4, 1.2), "spawn": 0.12, "size": (8.0, 20.0), "camera": 0.3},
}

BLUR_SPEED = 1.2
"""Objects faster than this (px/frame on screen) are rendered with motion blur."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings.

    The defaults define the embedded benchmark; change them only to make a different
    benchmark (the settings are stored beside the videos).
    """

    height: int = 64
    """Frame height in pixels."""
    width: int = 64
    """Frame width in pixels."""
    num_frames: int = 96
    """Frames per video."""
    fps: int = 15
    """Nominal frame rate written to the container."""
    segment_len: tuple[int, int] = (12, 32)
    """Inclusive range of a difficulty segment's length in frames."""
    max_objects: int = 4
    """At most this many objects on screen at once."""
    initial_objects: tuple[int, int] = (1, 3)
    """Inclusive range of the number of objects in the first frame."""
    texture_amplitude: tuple[float, float] = (35.0, 60.0)
    """Range of the class texture's luminance amplitude (0-255 scale)."""
    noise_sigma: float = 3.0
    """Standard deviation of per-pixel sensor noise (0-255 scale)."""
    min_visible_fraction: float = 0.25
    """An object is annotated only if at least this fraction of it is visible."""
    min_box_side: float = 3.0
    """An object is annotated only if its clipped box is at least this many px wide and tall."""
    dominant_class_bias: float = 0.5
    """Probability that a spawned object takes the video's dominant class."""

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ConfigError(f"SyntheticConfig: height/width must be >= 16, got {self.height}x{self.width}")
        if self.num_frames < 1:
            raise ConfigError(f"SyntheticConfig: num_frames must be >= 1, got {self.num_frames}")
        if not 1 <= self.initial_objects[0] <= self.initial_objects[1] <= self.max_objects:
            raise ConfigError(f"SyntheticConfig: initial_objects {self.initial_objects} must lie in [1, max_objects]")

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dictionary of the settings."""
        return dataclasses.asdict(self)


@dataclass
class _Object:
    track_id: int
    label: int
    x: float  # box centre, screen pixels
    y: float
    w: float
    h: float
    vx: float
    vy: float
    growth: float  # multiplicative size change per frame
    target_size: float
    color: np.ndarray  # (3,) float
    amplitude: float
    entered: bool = True


@dataclass(frozen=True)
class FrameAnnotation:
    """Ground truth of one frame.

    Boxes are ``[x0, y0, x1, y1]`` in pixels (x1, y1 exclusive, clipped to the frame).
    """

    boxes: np.ndarray
    """(N, 4) float32 boxes."""
    labels: np.ndarray
    """(N,) int64 class indices into ``CLASS_NAMES``."""
    track_ids: np.ndarray
    """(N,) int64 identity of each object within the video."""
    speeds: np.ndarray
    """(N,) float32 on-screen speed of each object in px/frame."""
    segment: str = "calm"
    """Difficulty segment this frame belongs to."""
    shot: int | None = None
    """Index of the shot the frame belongs to, in videos with cuts (``None``: not annotated)."""

    def __repr__(self) -> str:
        shot = "" if self.shot is None else f", shot={self.shot}"
        return f"FrameAnnotation(objects={len(self.labels)}, segment={self.segment!r}{shot})"


@dataclass(frozen=True)
class SyntheticVideo:
    """One generated video: frames plus exact per-frame annotations."""

    frames: np.ndarray = field(repr=False)
    """(T, H, W, 3) uint8 RGB frames."""
    annotations: tuple[FrameAnnotation, ...] = field(repr=False)
    """One annotation per frame."""
    label: int
    """Video-level label: the class with the most annotated object-frames."""

    def __repr__(self) -> str:
        return f"SyntheticVideo(frames={self.frames.shape}, label={self.label})"


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Tileable smooth noise in [0, 1] of shape (size, size) by bilinear upsampling."""
    grid = rng.random((cells, cells))
    coords = np.arange(size) * cells / size
    i0 = np.floor(coords).astype(int)
    frac = coords - i0
    i1 = (i0 + 1) % cells
    # smoothstep for C1 continuity
    frac = frac * frac * (3 - 2 * frac)
    rows = grid[i0] * (1 - frac)[:, None] + grid[i1] * frac[:, None]
    out = rows[:, i0] * (1 - frac)[None, :] + rows[:, i1] * frac[None, :]
    return out


def _make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colourful, low-frequency, tileable background canvas (size, size, 3) float."""
    base = rng.uniform(60, 190, size=3)
    tint = rng.uniform(-60, 60, size=3)
    layers = 0.6 * _smooth_noise(rng, size, 4) + 0.4 * _smooth_noise(rng, size, 8)
    second = _smooth_noise(rng, size, 6)
    canvas = base[None, None, :] + tint[None, None, :] * (layers[..., None] - 0.5) * 2
    canvas += 30.0 * (second[..., None] - 0.5) * rng.uniform(-1, 1, size=3)[None, None, :]
    return canvas


def _texture(kind: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Zero-mean (over any 2x2 block) texture in {-1, +1} (dots: {-1, +3})."""
    if kind == "hstripe":
        return np.where(rows % 2 == 0, 1.0, -1.0)
    if kind == "vstripe":
        return np.where(cols % 2 == 0, 1.0, -1.0)
    if kind == "checker":
        return np.where((rows + cols) % 2 == 0, 1.0, -1.0)
    # dots: one bright pixel per 2x2 block, the other three darker, mean zero
    return np.where((rows % 2 == 0) & (cols % 2 == 0), 3.0, -1.0)


class _VideoSimulator:
    """Simulates one video; all randomness from ``rng``."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator) -> None:
        self.cfg = config
        self.rng = rng
        self.canvas_size = 2 * max(config.height, config.width)
        self.background = _make_background(rng, self.canvas_size)
        self.cam_x = float(rng.uniform(0, self.canvas_size))
        self.cam_y = float(rng.uniform(0, self.canvas_size))
        self.dominant = int(rng.integers(len(CLASS_NAMES)))
        self.objects: list[_Object] = []
        self.next_id = 0
        self.segments = self._plan_segments()

    def _plan_segments(self) -> list[str]:
        kinds: list[str] = []
        lo, hi = self.cfg.segment_len
        previous = ""
        while len(kinds) < self.cfg.num_frames:
            # Start calm half of the time, then never repeat a kind twice in a row.
            if not kinds and self.rng.random() < 0.5:
                kind = "calm"
            else:
                choices = [k for k in SEGMENT_KINDS if k != previous]
                kind = choices[int(self.rng.integers(len(choices)))]
            kinds.extend([kind] * int(self.rng.integers(lo, hi + 1)))
            previous = kind
        return kinds[: self.cfg.num_frames]

    def _random_velocity(self, kind: str) -> tuple[float, float]:
        lo, hi = _SEGMENT_PARAMS[kind]["speed"]  # type: ignore[misc]
        speed = self.rng.uniform(lo, hi)
        angle = self.rng.uniform(0, 2 * np.pi)
        return float(speed * np.cos(angle)), float(speed * np.sin(angle))

    def _random_size(self, kind: str) -> float:
        lo, hi = _SEGMENT_PARAMS[kind]["size"]  # type: ignore[misc]
        return float(self.rng.uniform(lo, hi))

    def _spawn(self, kind: str, *, from_edge: bool) -> None:
        label = (
            self.dominant
            if self.rng.random() < self.cfg.dominant_class_bias
            else int(self.rng.integers(len(CLASS_NAMES)))
        )
        size = self._random_size(kind)
        aspect = float(self.rng.uniform(0.7, 1.45))
        w, h = size * np.sqrt(aspect), size / np.sqrt(aspect)
        vx, vy = self._random_velocity(kind)
        H, W = self.cfg.height, self.cfg.width
        if from_edge:
            side = int(self.rng.integers(4))
            speed = max(np.hypot(vx, vy), 0.5)
            along = self.rng.uniform(0.2, 0.8)
            # place just outside the frame and aim inward
            if side == 0:
                x, y, vx, vy = -w / 2 + 1, along * H, speed, self.rng.uniform(-0.3, 0.3)
            elif side == 1:
                x, y, vx, vy = W + w / 2 - 1, along * H, -speed, self.rng.uniform(-0.3, 0.3)
            elif side == 2:
                x, y, vx, vy = along * W, -h / 2 + 1, self.rng.uniform(-0.3, 0.3), speed
            else:
                x, y, vx, vy = along * W, H + h / 2 - 1, self.rng.uniform(-0.3, 0.3), -speed
        else:
            x = float(self.rng.uniform(w / 2, W - w / 2))
            y = float(self.rng.uniform(h / 2, H - h / 2))
        color = self.rng.uniform(50, 205, size=3)
        amp = float(self.rng.uniform(*self.cfg.texture_amplitude))
        self.objects.append(
            _Object(
                track_id=self.next_id,
                label=label,
                x=float(x),
                y=float(y),
                w=float(w),
                h=float(h),
                vx=float(vx),
                vy=float(vy),
                growth=float(self.rng.uniform(-0.006, 0.006)),
                target_size=size,
                color=color,
                amplitude=amp,
            )
        )
        self.next_id += 1

    def _enter_segment(self, kind: str) -> None:
        for obj in self.objects:
            obj.vx, obj.vy = self._random_velocity(kind)
            obj.target_size = self._random_size(kind)
        cam_speed = float(_SEGMENT_PARAMS[kind]["camera"])  # type: ignore[arg-type]
        angle = self.rng.uniform(0, 2 * np.pi)
        self.cam_vx = cam_speed * np.cos(angle) * self.rng.uniform(0.3, 1.0)
        self.cam_vy = cam_speed * np.sin(angle) * self.rng.uniform(0.3, 1.0)

    def _step_objects(self, kind: str) -> None:
        H, W = self.cfg.height, self.cfg.width
        for obj in self.objects:
            obj.x += obj.vx - self.cam_vx
            obj.y += obj.vy - self.cam_vy
            size = np.sqrt(obj.w * obj.h)
            # drift towards the segment's target size (scale change), plus a slow wobble
            rate = float(np.clip((obj.target_size / size - 1.0) * 0.08, -0.04, 0.04)) + obj.growth
            obj.w = float(np.clip(obj.w * (1 + rate), 4.0, 30.0))
            obj.h = float(np.clip(obj.h * (1 + rate), 4.0, 30.0))
            # calm objects occasionally bounce off the border instead of leaving
            if kind == "calm":
                if obj.x < obj.w / 2 or obj.x > W - obj.w / 2:
                    obj.vx = -obj.vx
                if obj.y < obj.h / 2 or obj.y > H - obj.h / 2:
                    obj.vy = -obj.vy
        # objects that left the frame entirely are gone
        self.objects = [o for o in self.objects if -o.w / 2 < o.x < W + o.w / 2 and -o.h / 2 < o.y < H + o.h / 2]

    def _render(self, kind: str) -> tuple[np.ndarray, FrameAnnotation]:
        cfg, rng = self.cfg, self.rng
        H, W = cfg.height, cfg.width
        # background: integer crop of the tileable canvas (camera offset)
        ox, oy = int(np.floor(self.cam_x)) % self.canvas_size, int(np.floor(self.cam_y)) % self.canvas_size
        rows = (np.arange(H) + oy) % self.canvas_size
        cols = (np.arange(W) + ox) % self.canvas_size
        frame = self.background[rows][:, cols].copy()
        owner = np.full((H, W), -1, dtype=np.int64)
        full_area: list[float] = []
        for idx, obj in enumerate(self.objects):
            speed = float(np.hypot(obj.vx - self.cam_vx, obj.vy - self.cam_vy))
            taps = 5 if speed > BLUR_SPEED else 1
            accum = np.zeros((H, W, 3))
            cover = np.zeros((H, W))
            area = 0.0
            for k in range(taps):
                # motion blur: average shifted copies along the last frame's displacement
                shift = (k / (taps - 1) - 0.5) if taps > 1 else 0.0
                cx = obj.x - (obj.vx - self.cam_vx) * shift
                cy = obj.y - (obj.vy - self.cam_vy) * shift
                r0 = max(int(np.floor(cy - obj.h / 2)), 0)
                r1 = min(int(np.ceil(cy + obj.h / 2)), H)
                c0 = max(int(np.floor(cx - obj.w / 2)), 0)
                c1 = min(int(np.ceil(cx + obj.w / 2)), W)
                if r1 <= r0 or c1 <= c0:
                    continue
                rr, cc = np.mgrid[r0:r1, c0:c1]
                py, px = rr + 0.5, cc + 0.5
                dy, dx = (py - cy) / (obj.h / 2), (px - cx) / (obj.w / 2)
                if _CLASS_SHAPE[obj.label] == "disc":
                    inside = dx * dx + dy * dy <= 1.0
                else:
                    inside = (np.abs(dx) <= 1.0) & (np.abs(dy) <= 1.0)
                # texture is attached to the object (moves with it in whole pixels)
                tex = _texture(
                    _CLASS_TEXTURE[obj.label],
                    rr - int(np.floor(cy - obj.h / 2)),
                    cc - int(np.floor(cx - obj.w / 2)),
                )
                colour = obj.color[None, None, :] + obj.amplitude * tex[..., None]
                m = inside.astype(float)
                accum[r0:r1, c0:c1] += colour * m[..., None]
                cover[r0:r1, c0:c1] += m
                if k == taps // 2:
                    area = float(np.pi / 4 * obj.w * obj.h if _CLASS_SHAPE[obj.label] == "disc" else obj.w * obj.h)
            alpha = cover / taps
            drawn = cover > 0
            mean_colour = np.where(drawn[..., None], accum / np.maximum(cover, 1)[..., None], 0)
            frame = frame * (1 - alpha[..., None]) + mean_colour * alpha[..., None]
            owner[alpha >= 0.5] = idx
            full_area.append(max(area, 1.0))
        frame += rng.normal(0.0, cfg.noise_sigma, size=frame.shape)
        pixels = np.clip(np.rint(frame), 0, 255).astype(np.uint8)

        boxes, labels, ids, speeds = [], [], [], []
        for idx, obj in enumerate(self.objects):
            x0, y0 = max(obj.x - obj.w / 2, 0.0), max(obj.y - obj.h / 2, 0.0)
            x1, y1 = min(obj.x + obj.w / 2, float(W)), min(obj.y + obj.h / 2, float(H))
            if x1 - x0 < cfg.min_box_side or y1 - y0 < cfg.min_box_side:
                continue
            visible = float((owner == idx).sum()) / full_area[idx]
            if visible < cfg.min_visible_fraction:
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(obj.label)
            ids.append(obj.track_id)
            speeds.append(float(np.hypot(obj.vx - self.cam_vx, obj.vy - self.cam_vy)))
        ann = FrameAnnotation(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            track_ids=np.asarray(ids, dtype=np.int64),
            speeds=np.asarray(speeds, dtype=np.float32),
            segment=kind,
        )
        return pixels, ann

    # --- what a variant of the benchmark overrides (see gistgym.videos.untrimmed, .streams) ----
    def _segment_at(self, t: int) -> str:
        """The segment of frame ``t``; asked once per frame, in order, before the scene moves to ``t``."""
        return self.segments[t]

    def _move_camera(self) -> None:
        """Move the camera by one frame's velocity."""
        self.cam_x += self.cam_vx
        self.cam_y += self.cam_vy

    def _initial_objects(self, kind: str) -> None:
        """Objects on screen in the first frame."""
        lo, hi = self.cfg.initial_objects
        for _ in range(int(self.rng.integers(lo, hi + 1))):
            self._spawn(kind, from_edge=False)

    def _populate(self, t: int, kind: str) -> None:
        """Objects entering at frame ``t`` (after the scene moved)."""
        if t == 0:
            return
        spawn_p = float(_SEGMENT_PARAMS[kind]["spawn"])  # type: ignore[arg-type]
        if len(self.objects) < self.cfg.max_objects and (not self.objects or self.rng.random() < spawn_p):
            self._spawn(kind, from_edge=True)

    def _annotate(self, t: int, ann: FrameAnnotation) -> FrameAnnotation:
        """The ground truth stored for frame ``t`` (default: every rendered object)."""
        return ann

    def _label(self, annotations: list[FrameAnnotation]) -> int:
        """The video-level label: the class with the most annotated object-frames."""
        counts = np.bincount(
            np.concatenate([a.labels for a in annotations] + [np.zeros(0, np.int64)]),
            minlength=len(CLASS_NAMES),
        )
        return int(np.argmax(counts)) if counts.sum() else self.dominant

    def run(self) -> SyntheticVideo:
        cfg = self.cfg
        kind = self._segment_at(0)
        self._enter_segment(kind)
        self._initial_objects(kind)
        frames = np.empty((cfg.num_frames, cfg.height, cfg.width, 3), dtype=np.uint8)
        annotations: list[FrameAnnotation] = []
        for t in range(cfg.num_frames):
            if t > 0:
                previous, kind = kind, self._segment_at(t)
                if kind != previous:
                    self._enter_segment(kind)
                self._move_camera()
                self._step_objects(kind)
            self._populate(t, kind)
            frames[t], ann = self._render(kind)
            annotations.append(self._annotate(t, ann))
        return SyntheticVideo(frames=frames, annotations=tuple(annotations), label=self._label(annotations))


SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


def generate_video(seed: int, split: str, index: int, config: SyntheticConfig | None = None) -> SyntheticVideo:
    """Generate one video of the benchmark.

    Args:
        seed: Benchmark seed.
        split: ``train``, ``val`` or ``test``; each split draws from its own stream.
        index: Video index within the split.
        config: Generator settings (defaults to the embedded benchmark).

    Returns:
        The frames and their exact annotations.
    """
    if split not in SPLIT_INDEX:
        raise ConfigError(f"split must be one of {sorted(SPLIT_INDEX)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLIT_INDEX[split], index])
    return _VideoSimulator(config or SyntheticConfig(), rng).run()
