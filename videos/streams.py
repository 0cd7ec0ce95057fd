"""Long synthetic video streams with idle stretches, cuts and bursts: *when* to compute matters.

The ``detection`` benchmark is short single-shot clips in which every segment moves, so no
schedule beats a fixed period by more than about a point (DESIGN.md). Published adaptive
schedulers win on long streams instead: Glimpse (Chen et al., SenSys 2015) tracks on the
phone and sends only frames that changed to the server, Chameleon (Jiang et al., SIGCOMM
2018) adapts the configuration to content that changes over time, Reducto (Li et al.,
SIGCOMM 2020) filters frames on the camera with cheap differencing features. This benchmark
gives the synthetic scenes that structure; the classes, textures, colours, sensor noise,
blur, occlusion/visibility rules and annotation format are the detection benchmark's
(:mod:`gistgym.videos.synthetic`, reused through its simulator's hooks).

Published statistics (fixed; the module constants below, not tuned to any result):

* **Two families**, drawn per video with probability 1/2 each (``EDITED_PROBABILITY``) and
  recorded in the video's annotations (``stream.family``):

  - ``edited``: a moving, handheld camera and several shots. Shot lengths are lognormal
    with mean 4 s and standard deviation 1.2 x the mean (``SHOT_MEAN_SECONDS``,
    ``SHOT_SD_RATIO``): the average shot length of recent films is about 4 s with sd/mean
    about 1.2 (Salt, *Moving into Pictures*; Cutting, DeLong & Nothelfer, *Attention and
    the evolution of Hollywood film*, Psychological Science 2010, and Cutting, Brunick,
    DeLong, Iricinschi & Candan, *Quicker, faster, darker*, i-Perception 2011). At 15 fps
    the mean shot is 60 frames (lognormal ``sigma^2 = ln(1 + 1.2^2) = 0.892``,
    ``mu = ln 60 - sigma^2 / 2 = 3.648``), rounded to whole frames (at least 1).
  - ``fixed``: one shot from a static camera (no pan, no jitter; sensor noise as always).
    Idle stretches cover a fraction of the frames drawn per video uniformly in
    ``[0.5, 0.9]`` (``IDLE_FRACTION``): Reducto measured that 51-97 % of the frames of
    fixed-camera video can be skipped without changing the query's answer.

* **Object speeds** while something moves follow ImageNet VID's motion split as reported
  by FGFA (Zhu et al., *Flow-Guided Feature Aggregation*, ICCV 2017): 38 % slow, 36 %
  medium, 26 % fast (``SPEED_SPLIT``), drawn per object (an object keeps its class for
  life). The classes use the detection benchmark's speed ranges: slow = its ``calm``
  segment (0.1-0.4 px/frame), medium = ``medium`` (0.4-1.0), fast = ``fast`` (1.2-2.6), with
  each range's target sizes and the same blur rule (``BLUR_SPEED``). FGFA measures motion
  on screen (box IoU between nearby frames), so the drawn speed is the object's speed
  relative to the camera, which is what the annotated ``speeds`` are.

Design choices (not published numbers; the :class:`StreamsConfig` fields):

* Videos are long (at least ``MIN_FRAMES`` = 300 frames, 20 s at 15 fps; 360 by default).
* ``edited``: every shot starts at a cut (frame 0 is the first cut) that replaces the
  background, the camera position and path, and every object at once: the new shot opens
  with 1-3 fresh objects inside the frame. The camera pans at the detection benchmark's
  segment camera speeds (one of its five segment kinds drawn uniformly per shot, with the
  same random direction and per-axis factor) plus a handheld jitter: an AR(1) velocity
  perturbation (coefficient 0.8) with stationary sd ``jitter`` = 0.1 px/frame per axis.
  Within a shot an object enters from an edge with probability 0.04 per frame (the mean of
  the detection segments' spawn probabilities), or at once when the frame has emptied.
  Every frame of an edited video is ``active``: the camera always moves.
* ``fixed``: the timeline alternates idle gaps and activity bursts. With ``T`` frames and
  the drawn idle fraction ``f``, exactly ``I = round(f T)`` frames are idle and
  ``A = T - I`` active. The number of bursts is ``k ~ Poisson(T / (burst_interval x fps))``
  (one burst per 8 s: mean 3 in 360 frames) clipped to ``[1, A // min_active]`` (mean 2.2); the
  active frames are split into ``k`` bursts of at least ``min_active`` = 30 frames (2 s: time
  to enter and move) by ``k - 1`` uniform cut points, and the burst starts are Poisson
  arrivals on the idle clock: ``k`` uniform points in ``[0, I]`` split the idle frames into
  ``k + 1`` gaps (before the first burst, between bursts, after the last; a gap may be 0,
  merging two bursts). A burst brings 1-3 objects entering from a random edge (30-50 % of
  their extent already inside, moving inward within 45 degrees of the edge's normal) during
  its first ``entry_frames`` = 4 frames, the first on its first frame, and sets every object
  already on screen moving again (at its class's speed, in a random direction). When a
  burst ends the objects still on screen stop (no velocity, no scale change) and the scene
  goes idle; if every object leaves the frame before the burst's planned end, the burst ends
  there (the objects left) and its unused frames move to the next burst, so the last burst,
  which instead brings a new object whenever the frame empties, absorbs them and the idle
  fraction stays exactly ``I / T`` (within ``1 / (2T)`` of the drawn ``f``). Half of the
  fixed videos open with 1-3 objects standing in the scene, the others with none.

Per-frame ``segment`` names the stretch: ``active`` (objects or the camera move), ``idle``
(objects present, nothing moves) or ``empty`` (no object on screen, nothing moves). Two
consecutive idle or empty frames differ by sensor noise only; the first idle frame after a
burst can lose the motion blur of an object that just stopped. Per-frame ``shot`` is the
shot index (0 in fixed videos) and the video's ``stream`` annotation records the family and
the shot start frames. Everything random comes from one ``numpy.random.Generator`` seeded
by ``(seed, split, index, 2)``, a stream no other benchmark kind uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from gistgym.errors import ConfigError
from gistgym.videos.synthetic import (
    _SEGMENT_PARAMS,
    SEGMENT_KINDS,
    SPLIT_INDEX,
    FrameAnnotation,
    SyntheticConfig,
    SyntheticVideo,
    _make_background,
    _Object,
    _VideoSimulator,
)

STREAMS_GENERATOR = "gistgym.streams"
"""Generator name recorded in ``dataset.json`` (the video reader checks streams annotations by it)."""

EDITED = "edited"
FIXED = "fixed"
FAMILIES: tuple[str, ...] = (EDITED, FIXED)
"""Video families: a handheld camera with cuts, or one static camera."""

ACTIVE = "active"
IDLE = "idle"
EMPTY = "empty"
STRETCHES: tuple[str, ...] = (ACTIVE, IDLE, EMPTY)
"""Per-frame ``segment`` names: something moves; objects present, nothing moves; no object."""

MIN_FRAMES = 300
"""Shortest video (20 s at 15 fps): long enough for several shots or idle/burst cycles."""

# --- published statistics (see the module docstring for the sources) ------------------------
EDITED_PROBABILITY = 0.5
"""Probability that a video is ``edited`` (else ``fixed``)."""
SHOT_MEAN_SECONDS = 4.0
"""Mean shot length of edited videos (Salt; Cutting et al. 2010/2011)."""
SHOT_SD_RATIO = 1.2
"""Standard deviation of the (lognormal) shot length over its mean (Salt; Cutting et al.)."""
IDLE_FRACTION: tuple[float, float] = (0.5, 0.9)
"""Range of the per-video idle fraction of fixed videos, drawn uniformly (Reducto: 51-97 % skippable)."""
SPEED_CLASSES: tuple[str, ...] = ("calm", "medium", "fast")
"""Slow, medium and fast objects take these detection segments' speed and size ranges."""
SPEED_SPLIT: tuple[float, ...] = (0.38, 0.36, 0.26)
"""Share of slow, medium and fast objects (ImageNet VID's motion split, FGFA)."""

_JITTER_CORRELATION = 0.8  # AR(1) coefficient of the handheld jitter velocity
_ENTRY_DEPTH = (0.3, 0.5)  # share of an entering object's extent already inside the frame
_ENTRY_ANGLE = np.pi / 4  # entering objects move inward within this angle of the edge normal


@dataclass(frozen=True)
class StreamsConfig:
    """Settings of the streams generator (stored beside the videos).

    The published statistics are module constants, not settings; these are the design
    choices around them (see the module docstring).
    """

    height: int = 64
    """Frame height in pixels."""
    width: int = 64
    """Frame width in pixels."""
    num_frames: int = 360
    """Frames per video (at least ``MIN_FRAMES``)."""
    fps: int = 15
    """Frame rate: written to the container, and converts the shot length (seconds) to frames."""
    burst_interval: float = 8.0
    """Fixed camera: mean seconds of video per burst (the number of bursts is Poisson)."""
    burst_objects: tuple[int, int] = (1, 3)
    """Fixed camera: inclusive range of the objects a burst brings."""
    entry_frames: int = 4
    """Fixed camera: a burst's objects enter during its first this many frames."""
    min_active: int = 30
    """Fixed camera: shortest planned burst in frames (objects must have time to enter and move)."""
    arrival_rate: float = 0.04
    """Edited: probability per frame that an object enters from an edge (at most ``max_objects``)."""
    jitter: float = 0.1
    """Edited: stationary sd (px/frame, per axis) of the handheld camera's velocity jitter."""
    max_objects: int = 4
    """At most this many objects on screen at once."""
    initial_objects: tuple[int, int] = (1, 3)
    """Inclusive range of the objects a shot opens with (edited) or that stand in the scene (fixed)."""
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
        if self.num_frames < MIN_FRAMES:
            raise ConfigError(f"StreamsConfig: num_frames must be >= {MIN_FRAMES}, got {self.num_frames}")
        if not 1 <= self.entry_frames <= self.min_active:
            raise ConfigError(
                f"StreamsConfig: need 1 <= entry_frames <= min_active, got {self.entry_frames} and {self.min_active}"
            )
        fewest_active = self.num_frames - _round(IDLE_FRACTION[1] * self.num_frames)
        if self.min_active > fewest_active:
            raise ConfigError(
                f"StreamsConfig: min_active={self.min_active} exceeds the {fewest_active} active frames of the "
                f"idlest video ({IDLE_FRACTION[1]:.0%} idle of {self.num_frames})"
            )
        if not 1 <= self.burst_objects[0] <= self.burst_objects[1] <= self.max_objects:
            raise ConfigError(f"StreamsConfig: burst_objects {self.burst_objects} must lie in [1, max_objects]")
        if self.burst_interval <= 0 or not 0.0 <= self.arrival_rate <= 1.0 or self.jitter < 0:
            raise ConfigError(
                "StreamsConfig: need burst_interval > 0, arrival_rate in [0, 1] and jitter >= 0, got "
                f"{self.burst_interval}, {self.arrival_rate}, {self.jitter}"
            )
        self.simulator_config()  # the scene simulator's own checks (size, initial objects)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dictionary of the settings."""
        return dataclasses.asdict(self)

    def simulator_config(self) -> SyntheticConfig:
        """The settings of the underlying scene simulator."""
        return SyntheticConfig(
            height=self.height,
            width=self.width,
            num_frames=self.num_frames,
            fps=self.fps,
            max_objects=self.max_objects,
            initial_objects=self.initial_objects,
            texture_amplitude=self.texture_amplitude,
            noise_sigma=self.noise_sigma,
            min_visible_fraction=self.min_visible_fraction,
            min_box_side=self.min_box_side,
            dominant_class_bias=self.dominant_class_bias,
        )


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


@dataclass(frozen=True)
class StreamAnnotation:
    """Per-video ground truth of a stream: its family and where its shots start."""

    family: str
    """``edited`` or ``fixed``."""
    shot_starts: tuple[int, ...]
    """First frame of every shot, increasing, starting with 0 (fixed videos: ``(0,)``)."""

    def to_json(self) -> dict[str, object]:
        """The ``stream`` entry of ``annotations.json``."""
        return {"family": self.family, "shot_starts": list(self.shot_starts)}


@dataclass(frozen=True)
class StreamPlan:
    """What a stream's timeline was drawn to be, before the scene runs.

    The family, the shots and the idle frame count are what the video gets; a fixed video's
    bursts can end early (their objects left) and hand their frames to the next burst, so
    its stretches sit where the scene puts them, but the idle count never changes.
    """

    family: str
    shot_starts: tuple[int, ...]
    """First frame of every shot (``(0,)`` for a fixed video)."""
    idle_fraction: float = 0.0
    """The drawn idle fraction ``f`` (fixed videos)."""
    idle_frames: int = 0
    """``round(f T)``: frames that are ``idle`` or ``empty``."""
    gaps: tuple[int, ...] = ()
    """Planned idle gaps: before the first burst, between bursts, after the last (fixed)."""
    bursts: tuple[int, ...] = ()
    """Planned burst lengths in frames (fixed)."""


@dataclass(frozen=True)
class StreamVideo(SyntheticVideo):
    """A generated stream: frames, per-frame annotations (with ``shot``) and the stream annotation."""

    stream: StreamAnnotation

    def __repr__(self) -> str:
        return (
            f"StreamVideo(frames={self.frames.shape}, label={self.label}, family={self.stream.family!r}, "
            f"shots={len(self.stream.shot_starts)})"
        )


def _shot_starts(rng: np.random.Generator, num_frames: int, mean_frames: float) -> tuple[int, ...]:
    """Cut frames of an edited video: lognormal shot lengths (mean, sd = ``SHOT_SD_RATIO`` x mean) from frame 0."""
    sigma2 = float(np.log1p(SHOT_SD_RATIO**2))
    mu = float(np.log(mean_frames)) - sigma2 / 2
    starts, t = [0], 0
    while True:
        t += max(1, _round(float(rng.lognormal(mu, np.sqrt(sigma2)))))
        if t >= num_frames:
            return tuple(starts)
        starts.append(t)


def _split(rng: np.random.Generator, total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` non-negative integers at ``parts - 1`` uniform cut points."""
    cuts = np.sort(rng.integers(0, total + 1, size=parts - 1))
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(int).tolist()


def _plan(config: StreamsConfig, rng: np.random.Generator) -> StreamPlan:
    T = config.num_frames
    if rng.random() < EDITED_PROBABILITY:
        return StreamPlan(EDITED, _shot_starts(rng, T, SHOT_MEAN_SECONDS * config.fps))
    f = float(rng.uniform(*IDLE_FRACTION))
    idle = _round(f * T)
    active = T - idle
    k = int(np.clip(rng.poisson(T / (config.burst_interval * config.fps)), 1, active // config.min_active))
    bursts = [config.min_active + extra for extra in _split(rng, active - k * config.min_active, k)]
    # burst starts are Poisson arrivals on the idle clock: k uniform points in [0, idle]
    points = np.sort(rng.integers(0, idle + 1, size=k))
    gaps = np.diff(np.concatenate([[0], points, [idle]])).astype(int).tolist()
    return StreamPlan(FIXED, (0,), idle_fraction=f, idle_frames=idle, gaps=tuple(gaps), bursts=tuple(bursts))


class _StreamSimulator(_VideoSimulator):
    """The scene simulator with shots and a jittering camera (edited) or idle gaps and bursts (fixed)."""

    def __init__(self, config: StreamsConfig, rng: np.random.Generator) -> None:
        self.streams = config
        self.plan = _plan(config, rng)  # the first draws, so plan_stream() repeats them without a scene
        super().__init__(config.simulator_config(), rng)
        self.edited = self.plan.family == EDITED
        self.speed_class: dict[int, str] = {}
        """Track id -> speed class (``calm``/``medium``/``fast`` range), drawn once per object."""
        self.pan = (0.0, 0.0)
        self.jitter = np.zeros(2)
        self.cam_vx = self.cam_vy = 0.0
        self.shot = 0
        # fixed-camera timeline: the phase ("gap" or "burst") being played and its frames left
        self.phase, self.left, self.burst_index, self.burst_frame, self.carry = "gap", 0, 0, 0, 0
        self.arrivals: list[int] = []  # burst frames on which the current burst's objects enter
        self.refill = False
        if self.edited:
            self._start_shot(first=True)
        else:
            self.left = self.plan.gaps[0]
            if self.rng.random() < 0.5:
                lo, hi = config.initial_objects
                for _ in range(int(self.rng.integers(lo, hi + 1))):
                    self._spawn_object(from_edge=False)

    def _plan_segments(self) -> list[str]:
        """None: the stretches are decided frame by frame (:meth:`_segment_at`)."""
        return []

    # --- objects --------------------------------------------------------------------------
    def _spawn_object(self, *, from_edge: bool) -> None:
        """A new object of a drawn speed class; ``from_edge``: entering, partly inside, moving inward."""
        cls = SPEED_CLASSES[int(self.rng.choice(len(SPEED_CLASSES), p=SPEED_SPLIT))]
        self._spawn(cls, from_edge=False)  # the class's size and speed ranges, on-screen velocity
        obj = self.objects[-1]
        self.speed_class[obj.track_id] = cls
        if from_edge:
            self._place_at_edge(obj)
        obj.vx += self.pan[0]  # the drawn velocity is on screen: move with the camera's pan
        obj.vy += self.pan[1]

    def _place_at_edge(self, obj: _Object) -> None:
        H, W = self.cfg.height, self.cfg.width
        speed = float(np.hypot(obj.vx, obj.vy))
        side = int(self.rng.integers(4))
        along = float(self.rng.uniform(0.2, 0.8))
        depth = float(self.rng.uniform(*_ENTRY_DEPTH))
        angle = float(self.rng.uniform(-_ENTRY_ANGLE, _ENTRY_ANGLE))
        inward, sideways = speed * np.cos(angle), speed * np.sin(angle)
        if side == 0:  # left edge
            obj.x, obj.y, obj.vx, obj.vy = (depth - 0.5) * obj.w, along * H, inward, sideways
        elif side == 1:  # right
            obj.x, obj.y, obj.vx, obj.vy = W + (0.5 - depth) * obj.w, along * H, -inward, sideways
        elif side == 2:  # top
            obj.x, obj.y, obj.vx, obj.vy = along * W, (depth - 0.5) * obj.h, sideways, inward
        else:  # bottom
            obj.x, obj.y, obj.vx, obj.vy = along * W, H + (0.5 - depth) * obj.h, sideways, -inward

    def _set_moving(self, obj: _Object) -> None:
        """Start a standing object again: its class's speed, a random direction, scale drift and wobble."""
        obj.vx, obj.vy = self._random_velocity(self.speed_class[obj.track_id])
        obj.target_size = self._random_size(self.speed_class[obj.track_id])
        obj.growth = float(self.rng.uniform(-0.006, 0.006))

    @staticmethod
    def _stop(obj: _Object) -> None:
        """No velocity and no scale change (the camera is static in fixed videos)."""
        obj.vx = obj.vy = obj.growth = 0.0
        obj.target_size = float(np.sqrt(obj.w * obj.h))

    # --- edited: shots and the handheld camera ------------------------------------------------
    def _start_shot(self, *, first: bool) -> None:
        """A cut: new background, camera position and pan, and fresh objects."""
        rng = self.rng
        if not first:
            self.background = _make_background(rng, self.canvas_size)
            self.cam_x = float(rng.uniform(0, self.canvas_size))
            self.cam_y = float(rng.uniform(0, self.canvas_size))
            self.objects = []
        kind = SEGMENT_KINDS[int(rng.integers(len(SEGMENT_KINDS)))]
        speed = float(_SEGMENT_PARAMS[kind]["camera"])  # type: ignore[arg-type]
        angle = rng.uniform(0, 2 * np.pi)
        self.pan = (
            float(speed * np.cos(angle) * rng.uniform(0.3, 1.0)),
            float(speed * np.sin(angle) * rng.uniform(0.3, 1.0)),
        )
        self.cam_vx, self.cam_vy = self.pan[0] + float(self.jitter[0]), self.pan[1] + float(self.jitter[1])
        lo, hi = self.streams.initial_objects
        for _ in range(int(rng.integers(lo, hi + 1))):
            self._spawn_object(from_edge=False)

    def _move_camera(self) -> None:
        """Fixed: the camera stays. Edited: the shot's pan plus the AR(1) handheld jitter."""
        if self.edited:
            rho = _JITTER_CORRELATION
            self.jitter = rho * self.jitter + np.sqrt(1 - rho**2) * self.streams.jitter * self.rng.normal(size=2)
            self.cam_vx, self.cam_vy = self.pan[0] + float(self.jitter[0]), self.pan[1] + float(self.jitter[1])
        super()._move_camera()

    # --- the timeline ---------------------------------------------------------------------
    def _segment_at(self, t: int) -> str:
        """Edited: always active. Fixed: play the planned gaps and bursts against the scene."""
        if self.edited:
            return ACTIVE
        plan = self.plan
        while True:
            if self.phase == "gap":
                if self.left > 0:
                    self.left -= 1
                    return IDLE if self.objects else EMPTY
                if self.burst_index == len(plan.bursts):
                    raise RuntimeError(f"stream timeline exhausted at frame {t} (bug: plan {plan})")
                self.phase, self.left, self.carry = "burst", plan.bursts[self.burst_index] + self.carry, 0
                self.burst_frame = 0
                lo, hi = self.streams.burst_objects
                n = int(self.rng.integers(lo, hi + 1))
                later = self.rng.integers(0, self.streams.entry_frames, size=n - 1).tolist()
                self.arrivals = sorted([0, *later])
                continue
            last = self.burst_index == len(plan.bursts) - 1
            arrived = self.burst_frame >= self.streams.entry_frames
            if self.left > 0 and (self.objects or not arrived or last):
                # the last burst never ends early: when its objects have left, a new one enters
                self.refill = last and arrived and not self.objects
                self.left -= 1
                self.burst_frame += 1
                return ACTIVE
            if self.left > 0:  # every object left before the planned end: the burst is over
                self.carry = self.left
            self.burst_index += 1
            self.phase, self.left = "gap", plan.gaps[self.burst_index]

    def _enter_segment(self, kind: str) -> None:
        """Fixed: a burst sets standing objects moving; idle stops them. Edited: the shot sets the camera."""
        if self.edited:
            return
        for obj in self.objects:
            if kind == ACTIVE:
                self._set_moving(obj)
            else:
                self._stop(obj)

    def _initial_objects(self, kind: str) -> None:
        """Placed when the plan is drawn (the first frame's stretch depends on them)."""

    def _populate(self, t: int, kind: str) -> None:
        """Edited: a cut at a shot start, else occasional arrivals. Fixed: the burst's arrivals."""
        room = self.streams.max_objects - len(self.objects)
        if self.edited:
            if t > 0 and self.shot + 1 < len(self.plan.shot_starts) and t == self.plan.shot_starts[self.shot + 1]:
                self.shot += 1
                self._start_shot(first=False)
            elif t > 0 and room > 0 and (not self.objects or self.rng.random() < self.streams.arrival_rate):
                self._spawn_object(from_edge=True)
            return
        if kind != ACTIVE:
            return
        due = self.arrivals.count(self.burst_frame - 1) + int(self.refill)
        self.refill = False
        for _ in range(min(due, room)):
            self._spawn_object(from_edge=True)

    def _annotate(self, t: int, ann: FrameAnnotation) -> FrameAnnotation:
        """Every rendered object, the stretch as the segment, and the shot index."""
        return dataclasses.replace(ann, shot=self.shot)

    def run(self) -> StreamVideo:
        """Simulate the whole stream."""
        video = super().run()
        return StreamVideo(
            frames=video.frames,
            annotations=video.annotations,
            label=video.label,
            stream=StreamAnnotation(self.plan.family, self.plan.shot_starts),
        )


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLIT_INDEX:
        raise ConfigError(f"split must be one of {sorted(SPLIT_INDEX)}, got {split!r}")
    # a stream of its own (the 4th key) so these videos never repeat the other benchmarks'
    return np.random.default_rng([seed, SPLIT_INDEX[split], index, 2])


def generate_stream_video(seed: int, split: str, index: int, config: StreamsConfig | None = None) -> StreamVideo:
    """Generate one stream (deterministic from ``(seed, split, index)``).

    Args:
        seed: Benchmark seed.
        split: ``train``, ``val`` or ``test``; each split draws from its own stream.
        index: Video index within the split.
        config: Generator settings (defaults to the embedded streams benchmark).

    Returns:
        Frames, per-frame annotations (``segment`` is the stretch, ``shot`` the shot index)
        and the stream annotation (family, shot starts).
    """
    return _StreamSimulator(config or StreamsConfig(), _rng(seed, split, index)).run()


def plan_stream(seed: int, split: str, index: int, config: StreamsConfig | None = None) -> StreamPlan:
    """The drawn timeline of one stream without simulating it (cheap: for checking the statistics).

    The same draws :func:`generate_stream_video` makes first, so the video has this family,
    these shot starts and ``idle_frames`` idle or empty frames.
    """
    return _plan(config or StreamsConfig(), _rng(seed, split, index))
