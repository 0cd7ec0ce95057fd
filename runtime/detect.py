"""``gistgym detect``: the interleaved detector on any video file, driven by a policy, sync or async.

:func:`detect_video` reads the video with PyAV (resized as :mod:`gistgym.runtime.video_source`
documents), runs :func:`gistgym.runtime.online.run_sync` or
:func:`~gistgym.runtime.online.run_async` with the chosen policy and writes
``detections.jsonl``, the annotated video and ``summary.json`` atomically
(:mod:`gistgym.runtime.outputs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import gistgym
from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.engines import DEFAULT_ENGINE, check_engine, check_threads
from gistgym.errors import ConfigError, PolicyMismatchError
from gistgym.runtime.online import AsyncStats, FrameResult, OnlineMemory, run_async, run_sync
from gistgym.runtime.outputs import SUMMARY_FORMAT, DetectionsWriter, timing_summary
from gistgym.runtime.schedules import ScheduleChoice, parse_policy
from gistgym.runtime.video_source import VideoSource

ANNOTATE_CHOICES = ("mp4", "gif", "none")


@dataclass(frozen=True)
class DetectArgs:
    """Arguments of ``gistgym detect``."""

    video: str
    """The video file (any container/codec PyAV decodes)."""
    policy: str = "fixed:9"
    """heavy, light, fixed:TAU, cue-rule:active=A,idle=I,change=X,cut=C or an exported policy file (with its .json
    sidecar); a Keyframe-v0 policy, every-frame, key=L or flow-threshold@X runs Deep Feature Flow instead, an
    exported AdaFrame agent the glimpse runtime."""
    out: str = "runs/detect"
    """Output folder (written atomically; replaces only a previous detect output, and only with --overwrite)."""
    overwrite: bool = False
    """Replace a previous detect output at --out (a folder that is not one is never replaced)."""
    async_mode: bool = False
    """The paper's asynchronous mode: light on every frame, heavy in a background thread."""
    weights: str = ""
    """Detector weights (.pt with its .json sidecar); empty = the shipped weights."""
    annotate: str = "mp4"
    """Annotated output: mp4, gif or none."""
    max_frames: int = 0
    """Process only the first N frames (0 = all)."""
    heavy_delay_frames: int = 0
    """Async only: fuse each heavy job exactly this many frames after its launch (0 = when it finishes)."""
    draw_threshold: float = 0.5
    """Detections scoring at least this are drawn on the annotated video."""
    progress: bool = True
    """Show a progress bar."""
    eager: bool = False
    """Same as --engine eager (kept for older command lines)."""
    engine: str = DEFAULT_ENGINE
    """Execution engine of the frozen modules: onnxruntime (exported once per weights, cached), torchscript or
    eager."""
    threads: int = 1
    """Threads per module call (ONNX Runtime intra-op threads; torch's threads for torchscript and eager)."""


def resolve_engine(engine: str, eager: bool, threads: int) -> str:
    """The engine ``--engine`` and ``--eager`` name, after checking both and ``--threads``.

    Raises:
        EngineError: Unknown engine, ``--eager`` with another engine than the default, ``--threads`` < 1.
    """
    from gistgym.backbones.engines import EngineError

    check_engine(engine)
    check_threads(threads)
    if eager and engine not in (DEFAULT_ENGINE, "eager"):
        raise EngineError(f"--eager contradicts --engine {engine}; pass only one of them")
    return "eager" if eager else engine


def modules_label(engine: str) -> str:
    """The summary's ``modules`` value of an engine."""
    return {"torchscript": "frozen-torchscript"}.get(engine, engine)


def class_names_for(meta: dict[str, Any], num_classes: int) -> tuple[str, ...]:
    """Label names: the weights sidecar's ``classes``, else the synthetic benchmark's, else ``class<i>``."""
    names = meta.get("classes")
    if isinstance(names, list) and len(names) == num_classes:
        return tuple(str(n) for n in names)
    from gistgym.videos.synthetic import CLASS_NAMES

    if num_classes == len(CLASS_NAMES):
        return CLASS_NAMES
    return tuple(f"class{i}" for i in range(num_classes))


def action_extractor_indices(choice: ScheduleChoice, detector: InterleavedDetector, source: str) -> tuple[int, ...]:
    """Detector extractor index of each of the policy's actions (by name).

    Raises:
        PolicyMismatchError: The policy names an extractor the detector does not have, or its
            action 0 is not the detector's heavy extractor.
    """
    names = detector.extractor_names
    missing = [a for a in choice.action_meanings if a not in names]
    if missing or choice.action_meanings[0] != names[0]:
        raise PolicyMismatchError(
            source,
            f"policy actions {list(choice.action_meanings)} do not fit the detector's extractors {list(names)} "
            "(action 0 must be its heavy extractor)",
            field="action_meanings",
        )
    return tuple(names.index(a) for a in choice.action_meanings)


def build_runtime(
    policy_spec: str,
    weights: str | Path | None = None,
    *,
    frozen: bool = True,
    engine: str = DEFAULT_ENGINE,
    threads: int = 1,
) -> tuple[InterleavedDetector, dict[str, Any], ScheduleChoice, OnlineMemory]:
    """Load the detector and the policy, check they fit, and make the online memory (see :class:`OnlineMemory`)."""
    from gistgym.backbones.weights import load_detector

    detector, meta = load_detector(weights or None)
    choice = parse_policy(
        policy_spec,
        detector.extractor_names,
        weights_sha256=str(meta.get("sha256")),
        hidden_channels=detector.config.hidden_channels,
        grid=detector.grid,
    )
    return detector, meta, choice, online_memory(detector, choice, frozen=frozen, engine=engine, threads=threads)


def online_memory(
    detector: InterleavedDetector,
    choice: ScheduleChoice,
    *,
    frozen: bool = True,
    engine: str = DEFAULT_ENGINE,
    threads: int = 1,
) -> OnlineMemory:
    """The :class:`OnlineMemory` a schedule runs on: its actions' extractors, history length and cues."""
    indices = action_extractor_indices(choice, detector, choice.spec)
    exported = choice.exported
    history_len = exported.history_len if exported is not None else 20
    return OnlineMemory(
        detector, indices, history_len=history_len, cues=choice.cues, frozen=frozen, engine=engine, threads=threads
    )


def run_frames(
    memory: OnlineMemory,
    choice: ScheduleChoice,
    frames: Iterator[np.ndarray],
    *,
    async_mode: bool,
    heavy_delay_frames: int = 0,
    stats: AsyncStats | None = None,
) -> Iterator[FrameResult]:
    """The sync or async runner over resized frames."""
    if async_mode:
        return run_async(
            memory,
            frames,
            choice.policy,
            action_names=choice.action_meanings,
            heavy_delay_frames=heavy_delay_frames or None,
            stats=stats,
        )
    if heavy_delay_frames:
        raise ConfigError("--heavy-delay-frames only applies with --async")
    return run_sync(memory, frames, choice.policy, action_names=choice.action_meanings)


def detect_video(args: DetectArgs, *, on_frame: Callable[[FrameResult], None] | None = None) -> dict[str, Any]:
    """Run ``gistgym detect`` and return its summary (also written to ``OUT/summary.json``).

    Summary keys: ``format``, ``gistgym_version``, ``video`` (path, size, fps, codec, resize),
    ``policy``, ``mode`` (sync/async), ``modules`` (onnxruntime, frozen-torchscript or eager),
    ``engine``, ``threads``, ``frames``,
    ``fps`` (frames over the summed per-frame
    latencies), ``fps_wall`` (frames over the wall time including decoding and writing),
    ``heavy_fraction`` (frames the heavy extractor ran on, or was launched on in async mode),
    ``p50_ms``, ``p95_ms``, ``max_ms``, ``mean_ms`` (per-frame latency), ``detections_from``
    (frames per extractor that produced the detections), ``async`` (heavy jobs launched,
    fused, dropped, fuse delays), ``weights_sha256``, ``outputs``.

    Raises:
        VideoError: Missing, corrupt, unsupported or empty video (nothing is written).
        ConfigError, PolicyFileError, PolicyMismatchError, OnnxOpsetError, WeightsError:
            Bad arguments, policy or weights (nothing is written).
        OutputDirError: ``--out`` cannot be written or is not a previous detect output.
    """
    if args.annotate not in ANNOTATE_CHOICES:
        raise ConfigError(f"--annotate must be one of {', '.join(ANNOTATE_CHOICES)}, got {args.annotate!r}")
    if args.max_frames < 0 or args.heavy_delay_frames < 0:
        raise ConfigError("--max-frames and --heavy-delay-frames must be >= 0")
    engine = resolve_engine(args.engine, args.eager, args.threads)
    detector, meta, choice, memory = build_runtime(
        args.policy, args.weights or None, engine=engine, threads=args.threads
    )
    source = VideoSource(args.video, detector.config.image_size, max_frames=args.max_frames or None)
    classes = class_names_for(meta, detector.config.num_classes)
    stats = AsyncStats()
    latencies: list[float] = []
    heavy: list[bool] = []
    used: dict[str, int] = {}
    wall0 = time.perf_counter()
    with DetectionsWriter.for_args(args, source, classes) as writer:
        results = run_frames(
            memory,
            choice,
            writer.frames(),
            async_mode=args.async_mode,
            heavy_delay_frames=args.heavy_delay_frames,
            stats=stats,
        )
        for r in results:
            writer.write(r.index, r.extractor, r.heavy, r.fused_from, r.detections, _caption(r, args.async_mode))
            latencies.append(r.latency_s)
            heavy.append(r.heavy)
            used[r.extractor] = used.get(r.extractor, 0) + 1
            if on_frame is not None:
                on_frame(r)
        n = len(latencies)
        summary: dict[str, Any] = {
            "format": SUMMARY_FORMAT,
            "gistgym_version": gistgym.__version__,
            "video": source.describe(),
            "policy": args.policy,
            "policy_name": choice.policy.name,
            "action_meanings": list(choice.action_meanings),
            "mode": "async" if args.async_mode else "sync",
            "modules": modules_label(engine),
            "engine": engine,
            "threads": args.threads,
            "frames": n,
            "heavy_fraction": float(np.mean(heavy)) if n else None,
            **timing_summary(latencies, wall0),
            "detections_from": used,
            "async": {**stats.to_dict(), "heavy_delay_frames": args.heavy_delay_frames or None}
            if args.async_mode
            else None,
            "weights": str(args.weights or "shipped"),
            "weights_sha256": meta.get("sha256"),
        }
        return writer.finish(summary)


def _caption(r: FrameResult, async_mode: bool) -> str:
    if not async_mode:
        return f"frame {r.index}: {r.extractor}"
    text = f"frame {r.index}: {r.extractor}"
    if r.heavy:
        text += ", heavy launched"
    if r.fused_from is not None:
        text += f", heavy of frame {r.fused_from} fused"
    return text


def format_summary(summary: dict[str, Any]) -> str:
    """The printed summary of a ``gistgym detect`` run."""
    v = summary["video"]
    lines = [
        f"{v['path']}: {summary['frames']} frames {v['width']}x{v['height']} @ {v['fps']:.2f} fps "
        f"(resized to {v['resized_to'][0]}x{v['resized_to'][1]})",
        f"policy {summary['policy']} ({summary['mode']}): heavy fraction {summary['heavy_fraction']:.3f}, "
        f"detections from {summary['detections_from']}",
        f"{summary['fps']:.1f} frames/s (detector + policy; {summary['fps_wall']:.1f} including decode and outputs), "
        f"latency p50 {summary['p50_ms']:.2f} ms, p95 {summary['p95_ms']:.2f} ms, max {summary['max_ms']:.2f} ms",
    ]
    if summary.get("async"):
        a = summary["async"]
        lines.append(
            f"heavy jobs: {a['heavy_jobs_launched']} launched, {a['heavy_jobs_fused']} fused "
            f"(mean delay {a['fuse_delay_frames_mean']} frames), {a['heavy_jobs_dropped_at_end']} dropped at the end"
        )
    lines.append(f"wrote {summary['out']}/" + ", ".join(summary["outputs"]))
    return "\n".join(lines)
