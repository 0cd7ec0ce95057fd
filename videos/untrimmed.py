"""Untrimmed synthetic videos for frame selection (AdaFrame): the class shows in part of the video.

A video's label is the class of the textured objects that appear during one contiguous
**evidence** window (``evidence_len`` frames, placed uniformly at random); every other
frame is **background**: the same moving camera and textured background, with plain
(untextured) discs and boxes as distractors. At full resolution the heavy extractor sees
the class texture only inside the window; at half resolution (the light extractor, the
global memory) class objects and distractors look alike, so a cheap look over the whole
video says where objects are, never which class they are. Uniform sampling with few
frames can step over a short window; a policy that looks where something happens does not
have to.

Per-frame annotations box the class objects only (distractors are background) and the
segment field says ``evidence`` or ``background``. Inside the window the usual difficulty
segments (fast motion blurs the texture away, small objects) still apply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from gistgym.errors import ConfigError
from gistgym.videos.synthetic import (
    CLASS_NAMES,
    SPLIT_INDEX,
    FrameAnnotation,
    SyntheticConfig,
    SyntheticVideo,
    _VideoSimulator,
)

EVIDENCE = "evidence"
BACKGROUND = "background"


@dataclass(frozen=True)
class UntrimmedConfig:
    """Settings of the untrimmed generator (stored beside the videos)."""

    height: int = 64
    """Frame height in pixels."""
    width: int = 64
    """Frame width in pixels."""
    num_frames: int = 48
    """Frames per video."""
    fps: int = 15
    """Nominal frame rate written to the container."""
    evidence_len: tuple[int, int] = (5, 14)
    """Inclusive range of the evidence window's length in frames."""
    evidence_objects: tuple[int, int] = (1, 2)
    """Inclusive range of class objects on screen during the window."""
    distractor_rate: float = 0.06
    """Probability per background frame that a plain distractor enters (at most ``max_objects``)."""
    max_objects: int = 3
    """At most this many objects on screen at once."""
    texture_amplitude: tuple[float, float] = (35.0, 60.0)
    """Range of the class texture's luminance amplitude (0-255 scale)."""
    noise_sigma: float = 3.0
    """Standard deviation of per-pixel sensor noise (0-255 scale)."""

    def __post_init__(self) -> None:
        lo, hi = self.evidence_len
        if not 1 <= lo <= hi <= self.num_frames:
            raise ConfigError(
                f"UntrimmedConfig: evidence_len {self.evidence_len} must satisfy 1 <= lo <= hi <= "
                f"num_frames={self.num_frames}"
            )
        if not 1 <= self.evidence_objects[0] <= self.evidence_objects[1] <= self.max_objects:
            raise ConfigError(f"UntrimmedConfig: evidence_objects {self.evidence_objects} must lie in [1, max_objects]")
        if not 0.0 <= self.distractor_rate <= 1.0:
            raise ConfigError(f"UntrimmedConfig: distractor_rate must lie in [0, 1], got {self.distractor_rate}")

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
            initial_objects=(1, 1),
            texture_amplitude=self.texture_amplitude,
            noise_sigma=self.noise_sigma,
        )


class _UntrimmedSimulator(_VideoSimulator):
    """The scene simulator with a class-evidence window and plain distractors elsewhere."""

    def __init__(self, config: UntrimmedConfig, rng: np.random.Generator) -> None:
        super().__init__(config.simulator_config(), rng)
        self.untrimmed = config
        self.label = int(rng.integers(len(CLASS_NAMES)))
        length = int(rng.integers(config.evidence_len[0], config.evidence_len[1] + 1))
        self.evidence_start = int(rng.integers(0, config.num_frames - length + 1))
        self.evidence_end = self.evidence_start + length
        self.plain: set[int] = set()

    def _spawn_plain(self, kind: str, *, from_edge: bool) -> None:
        self._spawn(kind, from_edge=from_edge)
        obj = self.objects[-1]
        obj.amplitude = 0.0  # no texture: a distractor of random shape, no class
        self.plain.add(obj.track_id)

    def _spawn_class(self, kind: str, *, from_edge: bool) -> None:
        self._spawn(kind, from_edge=from_edge)
        self.objects[-1].label = self.label

    def _class_objects(self) -> int:
        return sum(o.track_id not in self.plain for o in self.objects)

    def _initial_objects(self, kind: str) -> None:
        """Half of the videos open with one distractor on screen."""
        if self.rng.random() < 0.5:
            self._spawn_plain(kind, from_edge=False)

    def _populate(self, t: int, kind: str) -> None:
        """Class objects during the evidence window, distractors entering elsewhere."""
        cfg = self.untrimmed
        inside = self.evidence_start <= t < self.evidence_end
        if t == self.evidence_end:
            # the event is over: its objects go (the background never shows the class)
            self.objects = [o for o in self.objects if o.track_id in self.plain]
        if inside:
            want = int(self.rng.integers(cfg.evidence_objects[0], cfg.evidence_objects[1] + 1))
            while self._class_objects() < (want if t == self.evidence_start else 1):
                if len(self.objects) >= cfg.max_objects:
                    self.objects.pop(0)  # make room: a distractor leaves
                self._spawn_class(kind, from_edge=t != self.evidence_start)
        elif len(self.objects) < cfg.max_objects and self.rng.random() < cfg.distractor_rate:
            self._spawn_plain(kind, from_edge=True)

    def _annotate(self, t: int, ann: FrameAnnotation) -> FrameAnnotation:
        """Class objects only (distractors are background); the segment says evidence or background."""
        keep = np.array([i not in self.plain for i in ann.track_ids.tolist()], dtype=bool)
        inside = self.evidence_start <= t < self.evidence_end
        return FrameAnnotation(
            boxes=ann.boxes[keep],
            labels=ann.labels[keep],
            track_ids=ann.track_ids[keep],
            speeds=ann.speeds[keep],
            segment=EVIDENCE if inside else BACKGROUND,
        )

    def _label(self, annotations: list[FrameAnnotation]) -> int:
        """The class of the evidence window."""
        return self.label


def generate_untrimmed_video(
    seed: int, split: str, index: int, config: UntrimmedConfig | None = None
) -> SyntheticVideo:
    """Generate one untrimmed video (deterministic from ``(seed, split, index)``).

    Args:
        seed: Benchmark seed.
        split: ``train``, ``val`` or ``test``; each split draws from its own stream.
        index: Video index within the split.
        config: Generator settings (defaults to the embedded glimpse benchmark).

    Returns:
        Frames, annotations (class objects only; ``segment`` is ``evidence`` or
        ``background``) and the video label.
    """
    if split not in SPLIT_INDEX:
        raise ConfigError(f"split must be one of {sorted(SPLIT_INDEX)}, got {split!r}")
    # a stream of its own (the 4th key) so these videos never repeat the detection benchmark's
    rng = np.random.default_rng([seed, SPLIT_INDEX[split], index, 1])
    return _UntrimmedSimulator(config or UntrimmedConfig(), rng).run()


def evidence_mask(video: SyntheticVideo) -> np.ndarray:
    """(T,) bool: which frames belong to the evidence window."""
    return np.array([a.segment == EVIDENCE for a in video.annotations], dtype=bool)
