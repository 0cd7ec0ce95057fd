"""``gistgym detect VIDEO --policy KEY_SCHEDULER``: Deep Feature Flow online, with a key scheduler.

:func:`run_keyframe` is ``gistgym/Keyframe-v0``'s semantics on live frames. With ``d`` the
distance of frame t to the last keyframe k (had t propagated) and D = ``max_distance``:

* frame 0, and any frame with d >= D, is a keyframe whatever the scheduler says (forced);
* otherwise the flow network runs on (I_k, I_t) and the scheduler sees the environment's
  observation: the flow cues (:func:`gistgym.feature_cache.keyframe.flow_cues`, clipped to
  the observation bounds), ``since_key = min(d, D) / D`` and the keyframe history, with the
  ``info`` of frame t - 1; it answers 0 (keyframe) or 1 (propagate);
* a keyframe runs N_feat on I_t and becomes the new k; a propagated frame warps k's features
  with that flow and scale field (W); N_task then gives the frame's detections.

On ONNX Runtime a uint8 frame takes the whole-frame graphs of
:class:`~gistgym.runtime.frozen.DFFSteps` (a keyframe is one engine call: preprocessing,
N_feat, N_task, decoding and NMS; a propagated frame two: preprocessing, F and its cues, then
W, N_task, decoding and NMS); elsewhere each network is one call with torch and numpy between.

On a cached benchmark video this reproduces the environment's schedule and the cache's
detections for the same scheduler (a test), since the cache holds exactly N_task's output
for every (frame, distance). The one difference in cost: a cue-based scheduler has to run F
before it can decide, so a frame it makes a keyframe also pays for F here (the environment
counts N_feat + N_task for it). Schedulers: an exported Keyframe-v0 policy
(:mod:`gistgym.agents.keyframe_export`, its DFF weights checked against the sidecar), or
the baselines ``every-frame``, ``key=L`` and ``flow-threshold@X``
(:mod:`gistgym.agents.keyframe_baselines`).

Outputs, written atomically as ``gistgym detect``'s (:mod:`gistgym.runtime.outputs`):
``detections.jsonl`` (per frame, with ``keyframe`` and ``distance``), the annotated video with
keyframes marked, and ``summary.json`` (key fraction, frames/s, latency p50/p95/max).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import gistgym
from gistgym.agents.backends import family_backend
from gistgym.agents.export_common import policy_env_id
from gistgym.agents.policy import Policy
from gistgym.backbones.dff import DeepFeatureFlow, warp
from gistgym.backbones.engines import DEFAULT_ENGINE
from gistgym.backbones.ssdlite import Detections, postprocess_frame
from gistgym.envs import KEYFRAME_ENV_ID
from gistgym.errors import ConfigError, InvalidActionError
from gistgym.runtime.frozen import DFFSteps, engine_dff
from gistgym.runtime.outputs import SUMMARY_FORMAT, DetectionsWriter, timing_summary
from gistgym.runtime.video_source import VideoSource

BASELINE_PREFIXES = ("key=", "flow-threshold@")
"""``--policy`` values (besides ``every-frame``) that name a keyframe baseline, not a file."""


def is_keyframe_spec(spec: str) -> bool:
    """Whether ``gistgym detect --policy SPEC`` means the DFF runtime (a baseline name or an exported key scheduler)."""
    if is_keyframe_name(spec):
        return True
    env_id = policy_env_id(spec)
    backend = family_backend(env_id) if env_id is not None else None
    return backend is not None and backend.env_id == KEYFRAME_ENV_ID


def is_keyframe_name(spec: str) -> bool:
    """Whether ``gistgym detect --policy SPEC`` names a keyframe baseline (not a file)."""
    return spec == "every-frame" or spec.startswith(BASELINE_PREFIXES)


@dataclass(frozen=True)
class KeyframeDetectArgs:
    """Arguments of ``gistgym detect`` with a key scheduler."""

    video: str
    """The video file (any container/codec PyAV decodes)."""
    policy: str = "key=10"
    """An exported Keyframe-v0 policy (with its .json sidecar), every-frame, key=L or flow-threshold@X."""
    out: str = "runs/detect"
    """Output folder (written atomically; replaces only a previous detect output, and only with --overwrite)."""
    overwrite: bool = False
    """Replace a previous detect output at --out (a folder that is not one is never replaced)."""
    dff_weights: str = ""
    """DFF weights (.pt with its .json sidecar); empty = the shipped ones."""
    max_distance: int = 0
    """D_max: a frame this far from its keyframe is made one (0 = the policy's, else 20)."""
    annotate: str = "mp4"
    """Annotated output: mp4, gif or none."""
    max_frames: int = 0
    """Process only the first N frames (0 = all)."""
    draw_threshold: float = 0.5
    """Detections scoring at least this are drawn on the annotated video."""
    progress: bool = True
    """Show a progress bar."""
    eager: bool = False
    """Same as --engine eager (kept for older command lines)."""
    engine: str = DEFAULT_ENGINE
    """Execution engine of N_feat, F and N_task: onnxruntime (exported once per weights, cached), torchscript or
    eager."""
    threads: int = 1
    """Threads per module call (ONNX Runtime intra-op threads; torch's threads for torchscript and eager)."""


@dataclass(frozen=True)
class KeyframeFrameResult:
    """What the DFF runtime produced for one frame."""

    index: int
    keyframe: bool
    forced: bool
    """Frame 0 or at D_max: a keyframe whatever the scheduler said."""
    distance: int
    """Distance to the keyframe whose features gave the detections (0 on keyframes)."""
    detections: Detections
    """In the model's S x S pixels."""
    latency_s: float
    """Time from the resized frame to its detections (F, the decision, N_feat or W, N_task, NMS)."""
    cues: np.ndarray | None
    """The cues the scheduler saw (``None`` on forced keyframes, where it is not asked)."""


def _check_action(action: Any, policy: Policy) -> int:
    a = int(np.asarray(action).reshape(-1)[0])
    if a not in (0, 1):
        raise InvalidActionError(
            f"key scheduler {policy.name!r} chose action {a}; expected 0 (keyframe) or 1 (propagate)"
        )
    return a


@torch.inference_mode()
def run_keyframe(
    model: DeepFeatureFlow,
    frames: Iterable[np.ndarray],
    policy: Policy,
    *,
    max_distance: int,
    history_len: int,
    frozen: bool = True,
    engine: str = DEFAULT_ENGINE,
    threads: int = 1,
) -> Iterator[KeyframeFrameResult]:
    """Deep Feature Flow on resized frames with ``policy`` choosing the keyframes (see the module docstring).

    Args:
        model: The frozen DFF model.
        frames: (S, S, 3) uint8 RGB frames.
        policy: A Keyframe-v0 policy (batch of one).
        max_distance: D_max.
        history_len: Length of the keyframe history in the observation.
        frozen: ``False`` runs the eager networks whatever ``engine`` says.
        engine: The engine of N_feat, F and N_task (:func:`gistgym.runtime.frozen.engine_dff`).
        threads: ONNX Runtime intra-op threads per session.

    Yields:
        One :class:`KeyframeFrameResult` per frame, as soon as it is processed.
    """
    from gistgym.envs.keyframe import CUE_HIGH
    from gistgym.feature_cache.keyframe import flow_cues

    if max_distance < 1:
        raise ConfigError(f"max_distance must be >= 1, got {max_distance}")
    policy.reset(1)
    policy.episode_started(np.zeros(1, dtype=np.int64))
    cell = model.config.cell_pixels
    size = model.config.image_size
    anchors = model.anchors.numpy().astype(np.float32)
    nets: Any = engine_dff(model, engine, threads) if frozen and engine != "eager" else model
    steps: DFFSteps | None = getattr(nets, "steps", None)
    history = np.zeros((1, history_len), dtype=np.int8)
    # the keyframe's normalised image and features: tensors, or arrays on the graphs
    key_images: torch.Tensor | np.ndarray | None = None
    key_feats: torch.Tensor | np.ndarray | None = None
    info: dict[str, Any] = {}
    d = 0
    for t, image in enumerate(frames):
        start = time.perf_counter()
        forced = t == 0 or d >= max_distance
        graphs = steps if steps is not None and image.dtype == np.uint8 else None
        batch = np.ascontiguousarray(image)[None]
        key = True
        cues = flow = None
        if graphs is not None:  # on ONNX Runtime: one call for a keyframe, two for a propagated frame
            if not forced:
                moved = graphs.flow.run_arrays(_array(key_images), batch)[1:]  # flow, scale, cues
                cues = np.clip(moved[2], 0.0, CUE_HIGH).astype(np.float32)
                key = _check_action(policy.act(_observation(cues, d, max_distance, history), [info]), policy) == 0
            if key:
                key_images, key_feats, _, _, *found = graphs.key.run_arrays(batch)
                dets = Detections(*found)
            else:
                dets = Detections(*graphs.propagate.run_arrays(_array(key_feats), moved[0], moved[1])[2:])
        else:
            images = model.preprocess(torch.from_numpy(batch))
            if not forced:
                flow = nets.flow(_tensor(key_images), images)
                cues = np.clip(flow_cues(flow.flow, flow.scale, cell).numpy(), 0.0, CUE_HIGH).astype(np.float32)
                key = _check_action(policy.act(_observation(cues, d, max_distance, history), [info]), policy) == 0
            if key:
                key_images, key_feats = images, nets.features(images)
                feats = key_feats
            else:
                assert flow is not None
                feats = warp(_tensor(key_feats), flow.flow, flow.scale)
            loc, conf = nets.task(feats)
            # as model.detect, in numpy (at batch one torch's per-op overhead doubles a propagated frame's cost)
            dets = postprocess_frame(loc[0].numpy(), conf[0].numpy(), anchors, image_size=(size, size))
        distance = 0 if key else d
        history[:, 1:] = history[:, :-1]
        history[:, 0] = key
        info = {
            "action": 0 if key else 1,
            "distance": d if t > 0 else 0,
            "forced": forced,
            "frame_index": t,
            "video_id": "",
        }
        d = 1 if key else d + 1
        latency = time.perf_counter() - start
        yield KeyframeFrameResult(t, key, forced, distance, dets, latency, None if cues is None else cues[0])


def _observation(cues: np.ndarray, d: int, max_distance: int, history: np.ndarray) -> dict[str, np.ndarray]:
    """Keyframe-v0's observation of a frame at distance ``d`` from the keyframe."""
    return {
        "cues": cues,
        "since_key": np.array([[min(d, max_distance) / max_distance]], dtype=np.float32),
        "history": history.copy(),
    }


def _array(x: Any) -> np.ndarray:
    """A keyframe tensor or array as a C-contiguous float32 array (what the frame graphs take)."""
    assert x is not None
    return np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)


def _tensor(x: Any) -> torch.Tensor:
    """A keyframe tensor or array as a tensor (what the modules take)."""
    assert x is not None
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(x)


def keyframe_scheduler(spec: str, dff_sha256: str, max_distance: int = 0) -> tuple[Policy, int, int]:
    """The scheduler ``--policy SPEC`` names, with its D_max and history length.

    Args:
        spec: An exported Keyframe-v0 policy file, ``every-frame``, ``key=L`` or ``flow-threshold@X``.
        dff_sha256: sha256 of the DFF weights the runtime uses (an exported policy must match).
        max_distance: D_max override (0: the policy's, else the environment's default).

    Raises:
        ConfigError: ``oracle`` (it needs the next frame's true loss) or a bad baseline.
        PolicyFileError, PolicyMismatchError, OnnxOpsetError: A bad exported policy.
    """
    from gistgym.agents.keyframe_baselines import parse_keyframe_baseline
    from gistgym.envs.keyframe import DEFAULT_HISTORY_LEN, DEFAULT_MAX_DISTANCE, DEFAULT_SPEED_REWARD

    if max_distance < 0:
        raise ConfigError(f"--max-distance must be >= 0 (0 = the policy's), got {max_distance}")
    if spec == "every-frame" or spec.startswith(BASELINE_PREFIXES):
        return (
            parse_keyframe_baseline(spec, DEFAULT_SPEED_REWARD),
            max_distance or DEFAULT_MAX_DISTANCE,
            DEFAULT_HISTORY_LEN,
        )
    if spec == "oracle":
        raise ConfigError("the oracle reads the next frame's true loss, which a live video does not have")
    from gistgym.agents.keyframe_export import load_keyframe_policy

    policy = load_keyframe_policy(spec, dff_sha256=dff_sha256)
    return policy, max_distance or policy.max_distance, policy.history_len


def detect_keyframe(
    args: KeyframeDetectArgs, *, on_frame: Callable[[KeyframeFrameResult], None] | None = None
) -> dict[str, Any]:
    """Run DFF with a key scheduler on a video file and return the summary (also ``OUT/summary.json``).

    Summary keys: ``format``, ``gistgym_version``, ``runtime`` (``"keyframe"``), ``video``,
    ``policy``, ``policy_name``, ``max_distance``, ``modules``, ``engine``, ``threads``, ``frames``, ``key_fraction``,
    ``forced_keyframes``, ``fps`` (frames over the summed per-frame latencies), ``fps_wall``,
    ``p50_ms``, ``p95_ms``, ``max_ms``, ``mean_ms``, ``dff_weights``, ``dff_sha256``, ``outputs``.

    Raises:
        VideoError: Missing, corrupt, unsupported or empty video (nothing is written).
        ConfigError, PolicyFileError, PolicyMismatchError, OnnxOpsetError, WeightsError: Bad
            arguments, scheduler or weights (nothing is written).
        OutputDirError: ``--out`` cannot be written or is not a previous detect output.
    """
    from gistgym.backbones.dff import load_dff
    from gistgym.runtime.detect import ANNOTATE_CHOICES, class_names_for, modules_label, resolve_engine

    if args.annotate not in ANNOTATE_CHOICES:
        raise ConfigError(f"--annotate must be one of {', '.join(ANNOTATE_CHOICES)}, got {args.annotate!r}")
    if args.max_frames < 0:
        raise ConfigError("--max-frames must be >= 0")
    engine = resolve_engine(args.engine, args.eager, args.threads)
    model, meta = load_dff(args.dff_weights or None)
    if engine != "eager":
        engine_dff(model, engine, args.threads)  # compiled (or its export refused) before anything is written
    policy, max_distance, history_len = keyframe_scheduler(args.policy, str(meta.get("sha256")), args.max_distance)
    size = model.config.image_size
    source = VideoSource(args.video, size, max_frames=args.max_frames or None)
    classes = class_names_for(meta, model.config.num_classes)
    latencies: list[float] = []
    keys: list[bool] = []
    forced = 0
    wall0 = time.perf_counter()
    with DetectionsWriter.for_args(args, source, classes) as writer:
        results = run_keyframe(
            model,
            writer.frames(),
            policy,
            max_distance=max_distance,
            history_len=history_len,
            engine=engine,
            threads=args.threads,
        )
        for r in results:
            kind = "keyframe" if r.keyframe else "propagated"
            caption = f"frame {r.index}: " + ("keyframe" if r.keyframe else f"propagated d={r.distance}")
            extra = {"keyframe": r.keyframe, "forced": r.forced, "distance": r.distance}
            writer.write(r.index, kind, r.keyframe, None, r.detections, caption, extra)
            latencies.append(r.latency_s)
            keys.append(r.keyframe)
            forced += int(r.forced)
            if on_frame is not None:
                on_frame(r)
        n = len(latencies)
        summary: dict[str, Any] = {
            "format": SUMMARY_FORMAT,
            "gistgym_version": gistgym.__version__,
            "runtime": "keyframe",
            "video": source.describe(),
            "policy": args.policy,
            "policy_name": policy.name,
            "max_distance": max_distance,
            "modules": modules_label(engine),
            "engine": engine,
            "threads": args.threads,
            "frames": n,
            "key_fraction": float(np.mean(keys)) if n else None,
            "forced_keyframes": forced,
            **timing_summary(latencies, wall0),
            "dff_weights": str(args.dff_weights or "shipped"),
            "dff_sha256": meta.get("sha256"),
        }
        return writer.finish(summary)


def format_keyframe_summary(summary: dict[str, Any]) -> str:
    """The printed summary of a DFF ``gistgym detect`` run."""
    v = summary["video"]
    return "\n".join(
        [
            f"{v['path']}: {summary['frames']} frames {v['width']}x{v['height']} @ {v['fps']:.2f} fps "
            f"(resized to {v['resized_to'][0]}x{v['resized_to'][1]})",
            f"key scheduler {summary['policy']} (D_max {summary['max_distance']}): key fraction "
            f"{summary['key_fraction']:.3f} ({summary['forced_keyframes']} forced)",
            f"{summary['fps']:.1f} frames/s (DFF + scheduler; {summary['fps_wall']:.1f} including decode and outputs), "
            f"latency p50 {summary['p50_ms']:.2f} ms, p95 {summary['p95_ms']:.2f} ms, max {summary['max_ms']:.2f} ms",
            f"wrote {summary['out']}/" + ", ".join(summary["outputs"]),
        ]
    )
