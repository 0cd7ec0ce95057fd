"""``gistgym detect VIDEO --policy FILE`` for an exported AdaFrame agent (``gistgym/Glimpse-v0``).

:func:`detect_glimpse` classifies a whole video by looking at a few of its frames:

1. decode every frame with PyAV and resize it to the glimpse models' image size
   (:class:`~gistgym.runtime.video_source.VideoSource`: the whole frame, aspect not kept);
2. the **global memory**: the light extractor on ``T_d`` frames at the centres of ``T_d``
   equal parts of the video, pooled, with each frame's positional encoding
   (:meth:`GlimpseModels.memory_features`, :func:`memory_with_positions`), then the agent's
   memory-only initial step gives the first location;
3. **glimpses**: location -> frame index ``round(location * (T - 1))``
   (:func:`~gistgym.backbones.glimpse.location_to_index`) -> the heavy extractor's pooled
   feature of that one frame -> one agent step (new location, utility ``V``, prediction);
   a frame glimpsed again reuses its feature (it costs no extractor pass, as in the
   offline FLOP count);
4. **adaptive lookahead**, the rule of :func:`gistgym.agents.adaframe.stopping_steps`: after
   glimpse ``n`` a counter increments when ``V_n < mu`` and resets otherwise; the agent stops
   when it reaches ``patience``, and always after ``K`` glimpses (default: the sidecar's
   training budget). The prediction is the softmax of the prediction head at the stop.

With the glimpse models the policy's cache was built from (checked by sha256) and a video
that decodes to the cached frames, this reproduces
:func:`~gistgym.agents.adaframe.adaptive_lookahead` on that video.

Outputs (in ``--out``, written atomically by :class:`~gistgym.runtime.outputs.AtomicOutputDir`):

* ``summary.json``: see :func:`detect_glimpse`;
* ``glimpses.jsonl``: one line per glimpse, in order: ``glimpse`` (1-based), ``frame``,
  ``location`` (the agent's location that chose the frame), ``utility`` (V after it),
  ``counter`` (the stop counter after it), ``revisit``, ``latency_ms`` (feature + agent step),
  ``top_class``, ``top_probability`` and ``probabilities`` after it;
* ``glimpses.png``: a contact sheet of the glimpsed frames in order, each labelled with its
  glimpse number and frame index, over a strip of the whole video: the memory frames as grey
  ticks, the glimpsed frames as red ticks numbered in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gistgym
from gistgym.backbones.engines import DEFAULT_ENGINE, Compiled, compile_module
from gistgym.errors import ConfigError, PolicyMismatchError
from gistgym.runtime.online import percentiles_ms
from gistgym.runtime.outputs import SUMMARY_FILE, SUMMARY_FORMAT, AtomicOutputDir
from gistgym.runtime.video_source import VideoSource
from gistgym.videos.dataset import atomic_write_json

GLIMPSES_FILE = "glimpses.jsonl"
SHEET_FILE = "glimpses.png"
THUMB_WIDTH = 160


@dataclass(frozen=True)
class GlimpseDetectArgs:
    """Arguments of ``gistgym detect`` with an exported AdaFrame agent."""

    video: str
    """The video file (any container/codec PyAV decodes)."""
    policy: str
    """The exported AdaFrame agent (with its .json sidecar)."""
    out: str = "runs/detect"
    """Output folder (written atomically; replaces only a previous detect output, and only with --overwrite)."""
    overwrite: bool = False
    """Replace a previous detect output at --out (a folder that is not one is never replaced)."""
    glimpse_weights: str = ""
    """Glimpse models (.pt with its .json sidecar); empty = the shipped weights."""
    mu: float = 0.1
    """Adaptive lookahead: stop when the utility V < mu for --patience glimpses in a row (--mu=-inf: never early)."""
    patience: int = 2
    """Adaptive lookahead: consecutive glimpses with utility < mu that stop the agent."""
    num_glimpses: int = 0
    """Budget K (0 = the policy's training budget from its sidecar)."""
    max_frames: int = 0
    """Read only the first N frames (0 = all)."""
    progress: bool = True
    """Unused (the glimpse runtime is quick); kept for symmetry with the interleave runtime."""
    engine: str = DEFAULT_ENGINE
    """Execution engine of the frame and memory extractors: onnxruntime (exported once per weights, cached),
    torchscript or eager."""
    threads: int = 1
    """Threads per module call (ONNX Runtime intra-op threads; torch's threads for torchscript and eager)."""


def glimpse_extractors(models: Any, engine: str, threads: int = 1) -> tuple[Compiled, Compiled]:
    """The glimpse models' frame (heavy) and memory (light) extractors on ``engine``.

    Raises:
        EngineError, ExportMismatchError: As :func:`gistgym.backbones.engines.compile_module`.
    """
    size = models.config.image_size
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2
    return tuple(  # type: ignore[return-value]
        compile_module(
            net,
            (images,),
            engine=engine,
            kind=f"glimpse-{role}",
            input_names=("images",),
            output_names=("features",),
            threads=threads,
        )
        for role, net in (("frame", models.frame_net), ("memory", models.memory_net))
    )


def _class_names(policy_names: Sequence[str], meta: dict[str, Any], num_classes: int) -> tuple[str, ...]:
    if len(policy_names) == num_classes:
        return tuple(policy_names)
    from gistgym.runtime.detect import class_names_for

    return class_names_for(meta, num_classes)


def _thumbnail(frame: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    from PIL import Image

    h, w = frame.shape[:2]
    if w <= width:
        return frame
    image = Image.fromarray(frame).resize((width, max(1, round(h * width / w))), Image.Resampling.BILINEAR)
    return np.asarray(image)


def detect_glimpse(args: GlimpseDetectArgs) -> dict[str, Any]:
    """Run the glimpse runtime and return its summary (also written to ``OUT/summary.json``).

    Summary keys: ``format`` (``gistgym-detect``), ``kind`` (``glimpse``), ``gistgym_version``,
    ``video`` (path, size, fps, codec, resize), ``frames`` (decoded), ``policy`` (path,
    format, env id, algorithm), ``lookahead`` (mu, patience, K), ``prediction`` (class index
    and name, probability), ``class_names``, ``probabilities``, ``glimpses`` (taken, the stop
    step), ``frames_used`` (distinct frames), ``glimpse_order`` (frame, location, utility per
    glimpse), ``memory`` (frames, positions), ``p50_ms``, ``p95_ms``, ``max_ms``, ``mean_ms``
    (per-glimpse latency: heavy feature + agent step), ``memory_ms`` (light extractor on the
    memory frames + encoding), ``initial_step_ms``, ``total_ms`` (memory + initial step +
    glimpses; decoding excluded), ``decode_ms``, ``gflops_per_video`` (heavy extractor per
    distinct frame + the memory, :class:`~gistgym.backbones.glimpse.GlimpseCosts`),
    ``gflops`` (its parts), ``modules``, ``engine``, ``threads``, ``glimpse_weights``,
    ``glimpse_weights_sha256``, ``outputs``.

    Raises:
        VideoError: Missing, corrupt, unsupported or empty video (nothing is written).
        ConfigError, PolicyFileError, PolicyMismatchError, OnnxOpsetError, WeightsError: Bad
            arguments, policy or glimpse weights (nothing is written).
        OutputDirError: ``--out`` cannot be written or is not a previous detect output.
    """
    engine, policy, models, meta = _load_runtime(args)
    cfg = models.config
    frame_net, memory_net = glimpse_extractors(models, engine, args.threads)
    k = args.num_glimpses or policy.num_glimpses
    classes = _class_names(policy.class_names, meta, cfg.num_classes)
    source = VideoSource(args.video, cfg.image_size, max_frames=args.max_frames or None)
    frames, thumbs, decode_s = _decode(source)
    run = glimpse_video(policy, models, frame_net, memory_net, frames, k=k, mu=args.mu, patience=args.patience)
    summary = _summary(args, source, policy, models, meta, engine, classes, run, decode_s, k)
    _write_outputs(args, source, thumbs, classes, run, summary)
    summary["out"] = str(Path(args.out))
    return summary


def _load_runtime(args: GlimpseDetectArgs) -> tuple[str, Any, Any, dict[str, Any]]:
    """Check the arguments, load the glimpse models and the exported agent, and check they fit each other.

    Returns:
        ``(engine, policy, models, weights metadata)``.
    """
    from gistgym.agents.glimpse_export import check_glimpse_policy_matches, load_glimpse_policy, read_glimpse_sidecar
    from gistgym.backbones.glimpse import load_glimpse
    from gistgym.runtime.detect import resolve_engine

    if args.patience < 1:
        raise ConfigError(f"--patience must be >= 1, got {args.patience}")
    if args.num_glimpses < 0 or args.max_frames < 0:
        raise ConfigError("--num-glimpses and --max-frames must be >= 0")
    if np.isnan(args.mu):
        raise ConfigError("--mu must be a number (or -inf / inf)")
    engine = resolve_engine(args.engine, False, args.threads)
    read_glimpse_sidecar(args.policy)  # a foreign sidecar fails before the weights load
    models, meta = load_glimpse(args.glimpse_weights or None)
    cfg = models.config
    sha = str(meta.get("sha256"))
    policy = load_glimpse_policy(args.policy)
    if policy.glimpse_weights_sha256 != sha:
        raise PolicyMismatchError(
            policy.path.with_name(policy.path.name + ".json"),
            f"policy was trained on features of glimpse models with sha256 {policy.glimpse_weights_sha256[:12]}... "
            f"but the runtime's glimpse weights {args.glimpse_weights or 'shipped'} have {sha[:12]}...; pass the "
            "weights its cache was built from with --glimpse-weights",
            field="cache.glimpse_weights_sha256",
        )
    check_glimpse_policy_matches(
        policy.path,
        policy.sidecar,
        memory_frames=cfg.memory_frames,
        feature_dim=cfg.feature_dim,
        memory_dim=cfg.memory_dim,
        num_classes=cfg.num_classes,
    )
    return engine, policy, models, meta


def _decode(source: VideoSource) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Every frame resized for the models, a thumbnail of each for the contact sheet, and the seconds it took."""
    t0 = time.perf_counter()
    resized: list[np.ndarray] = []
    thumbs: list[np.ndarray] = []
    for original, small in source.frames():
        resized.append(small)
        thumbs.append(_thumbnail(original))
    return np.stack(resized), thumbs, time.perf_counter() - t0


@dataclass
class GlimpseRun:
    """What :func:`glimpse_video` did on one video."""

    rows: list[dict[str, Any]]
    """One per glimpse taken: frame, location, utility, lookahead counter, revisit, latency, probabilities."""
    probabilities: np.ndarray
    """(K,) class probabilities after the last glimpse."""
    frames_used: int
    positions: np.ndarray
    """The global memory's frame positions."""
    latencies: list[float]
    """Seconds per glimpse (heavy features of a new frame + the agent's step)."""
    memory_s: float
    initial_s: float
    initial_utility: float
    num_frames: int
    """Frames of the video."""


def glimpse_video(
    policy: Any,
    models: Any,
    frame_net: Any,
    memory_net: Any,
    frames: np.ndarray,
    *,
    k: int,
    mu: float,
    patience: int,
) -> GlimpseRun:
    """AdaFrame on one decoded video: the global memory, the initial step, then glimpses with adaptive lookahead.

    After each glimpse a counter grows while the agent's utility is below ``mu`` and resets
    otherwise; the agent stops when it reaches ``patience`` or after ``k`` glimpses (the rule of
    :func:`~gistgym.agents.adaframe.stopping_steps`, which a test holds this loop to). A frame
    looked at twice reuses its features.
    """
    from gistgym.backbones.glimpse import location_to_index, memory_positions, memory_with_positions

    cfg = models.config
    num_frames = len(frames)
    t0 = time.perf_counter()
    positions = memory_positions(num_frames, cfg.memory_frames)
    mem_feats = models.pooled(memory_net, frames[positions], len(positions))
    memory = memory_with_positions(mem_feats, positions, num_frames, cfg.position_dim)[None]
    memory_s = time.perf_counter() - t0
    zeros_feat = np.zeros((1, cfg.feature_dim), dtype=np.float32)
    h, c = policy.initial_state(1)
    t0 = time.perf_counter()
    logits, location, utility, h, c = policy.step(zeros_feat, memory, h, c, np.zeros((1, 1), np.float32))
    initial_s = time.perf_counter() - t0
    initial_utility = float(utility[0])

    features: dict[int, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    latencies: list[float] = []
    counter = 0
    one = np.ones((1, 1), np.float32)
    probs = np.zeros(cfg.num_classes, dtype=np.float32)
    for n in range(1, k + 1):
        loc = float(location[0])
        start = time.perf_counter()
        idx = int(location_to_index(location[0], num_frames))
        revisit = idx in features
        if not revisit:
            features[idx] = models.pooled(frame_net, frames[idx : idx + 1])
        logits, location, utility, h, c = policy.step(features[idx], memory, h, c, one)
        latencies.append(time.perf_counter() - start)
        probs = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1)[0].numpy()
        u = float(utility[0])
        counter = counter + 1 if u < mu else 0
        rows.append(
            {
                "glimpse": n,
                "frame": idx,
                "location": loc,
                "utility": u,
                "counter": counter,
                "revisit": revisit,
                "latency_ms": latencies[-1] * 1e3,
                "probabilities": [float(p) for p in probs],
            }
        )
        if counter >= patience:
            break
    return GlimpseRun(
        rows, probs, len(features), positions, latencies, memory_s, initial_s, initial_utility, num_frames
    )


def _summary(
    args: GlimpseDetectArgs,
    source: VideoSource,
    policy: Any,
    models: Any,
    meta: dict[str, Any],
    engine: str,
    classes: Sequence[str],
    run: GlimpseRun,
    decode_s: float,
    k: int,
) -> dict[str, Any]:
    """``summary.json`` (see :func:`detect_glimpse`)."""
    from gistgym.backbones.glimpse import glimpse_costs
    from gistgym.runtime.detect import modules_label

    costs = glimpse_costs(models, measure=False)
    probs, rows, used = run.probabilities, run.rows, run.frames_used
    pred = int(np.argmax(probs))
    return {
        "format": SUMMARY_FORMAT,
        "kind": "glimpse",
        "gistgym_version": gistgym.__version__,
        "video": source.describe(),
        "frames": run.num_frames,
        "policy": str(args.policy),
        "policy_format": policy.export_format,
        "env_id": str(policy.sidecar["env"]["id"]),
        "algorithm": str(policy.sidecar.get("algorithm")),
        "lookahead": {"mu": _json_float(args.mu), "patience": args.patience, "num_glimpses": k},
        "prediction": {"class_index": pred, "class_name": classes[pred], "probability": float(probs[pred])},
        "class_names": list(classes),
        "probabilities": [float(p) for p in probs],
        "glimpses": len(rows),
        "stopped_early": len(rows) < k,
        "frames_used": used,
        "glimpse_order": [
            {"glimpse": r["glimpse"], "frame": r["frame"], "location": r["location"], "utility": r["utility"]}
            for r in rows
        ],
        "initial_utility": run.initial_utility,
        "memory": {"frames": int(models.config.memory_frames), "positions": [int(p) for p in run.positions]},
        **percentiles_ms(run.latencies),
        "memory_ms": run.memory_s * 1e3,
        "initial_step_ms": run.initial_s * 1e3,
        "total_ms": (run.memory_s + run.initial_s + float(np.sum(run.latencies))) * 1e3,
        "decode_ms": decode_s * 1e3,
        "gflops_per_video": costs.video_flops(used, with_memory=True) / 1e9,
        "gflops": {"memory": costs.memory_flops / 1e9, "frames": used * costs.frame_flops / 1e9},
        "modules": modules_label(engine),
        "engine": engine,
        "threads": args.threads,
        "glimpse_weights": str(args.glimpse_weights or "shipped"),
        "glimpse_weights_sha256": str(meta.get("sha256")),
        "outputs": [GLIMPSES_FILE, SHEET_FILE, SUMMARY_FILE],
    }


def _write_outputs(
    args: GlimpseDetectArgs,
    source: VideoSource,
    thumbs: Sequence[np.ndarray],
    classes: Sequence[str],
    run: GlimpseRun,
    summary: Mapping[str, Any],
) -> None:
    """``glimpses.jsonl``, the contact sheet and ``summary.json``, in a folder renamed into place when done."""
    rows, probs = run.rows, run.probabilities
    pred = int(np.argmax(probs))
    out = AtomicOutputDir(args.out, overwrite=args.overwrite)
    try:
        with open(out.path(GLIMPSES_FILE), "w") as f:
            for r in rows:
                top = int(np.argmax(r["probabilities"]))
                named = {"top_class": classes[top], "top_probability": r["probabilities"][top]}
                line = {**{k: v for k, v in r.items() if k != "probabilities"}, **named}
                f.write(json.dumps({**line, "probabilities": r["probabilities"]}) + "\n")
        contact_sheet(
            [thumbs[r["frame"]] for r in rows],
            [(r["glimpse"], r["frame"]) for r in rows],
            len(thumbs),
            [int(p) for p in run.positions],
            f"{source.path.name}: {classes[pred]} ({probs[pred]:.2f}) after {len(rows)} glimpses, "
            f"{run.frames_used} frames",
        ).save(out.path(SHEET_FILE))
        atomic_write_json(out.path(SUMMARY_FILE), summary)
    except BaseException:
        out.abort()
        raise
    out.commit()


def _json_float(x: float) -> float | str:
    return x if np.isfinite(x) else str(x)


def contact_sheet(
    thumbs: Sequence[np.ndarray],
    labels: Sequence[tuple[int, int]],
    num_frames: int,
    memory_positions: Sequence[int],
    title: str,
    *,
    per_row: int = 5,
) -> Any:
    """A PIL image: the glimpsed frames in order (``#n f=INDEX``) above a strip of the whole video."""
    from PIL import Image, ImageDraw

    th = max(t.shape[0] for t in thumbs)
    tw = max(t.shape[1] for t in thumbs)
    cols = min(per_row, len(thumbs))
    grid_rows = -(-len(thumbs) // per_row)
    pad, caption, head, strip = 4, 14, 18, 44
    width = max(cols * (tw + pad) + pad, 360)
    height = head + grid_rows * (th + caption + pad) + pad + strip
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    pen = ImageDraw.Draw(sheet)
    pen.text((pad, 3), title, fill=(255, 255, 255))
    for i, (thumb, (n, frame)) in enumerate(zip(thumbs, labels, strict=True)):
        x = pad + (i % per_row) * (tw + pad)
        y = head + (i // per_row) * (th + caption + pad)
        sheet.paste(Image.fromarray(thumb), (x, y))
        pen.text((x, y + thumb.shape[0] + 1), f"#{n} f={frame}", fill=(255, 200, 80))
    # the strip: the video's extent, memory frames grey, glimpses red with their order
    y0 = height - strip + 8
    left, right = pad + 2, width - pad - 2
    pen.rectangle([left, y0 + 10, right, y0 + 22], outline=(200, 200, 200))

    def x_of(frame: int) -> float:
        return left + (right - left) * (frame + 0.5) / max(num_frames, 1)

    for p in memory_positions:
        pen.line([x_of(p), y0 + 10, x_of(p), y0 + 22], fill=(120, 120, 120))
    for n, frame in labels:
        x = x_of(frame)
        pen.line([x, y0 + 6, x, y0 + 26], fill=(235, 40, 40), width=2)
        pen.text((x - 3, y0 - 6 if n % 2 else y0 + 26), str(n), fill=(255, 120, 120))
    pen.text((left, height - 10), "0", fill=(200, 200, 200))
    pen.text((right - 30, height - 10), f"{num_frames - 1}", fill=(200, 200, 200))
    return sheet


def format_glimpse_summary(summary: dict[str, Any]) -> str:
    """The printed summary of a glimpse ``gistgym detect`` run."""
    v = summary["video"]
    p = summary["prediction"]
    order = ", ".join(f"{g['frame']}" for g in summary["glimpse_order"])
    la = summary["lookahead"]
    return "\n".join(
        [
            f"{v['path']}: {summary['frames']} frames {v['width']}x{v['height']} @ {v['fps']:.2f} fps "
            f"(resized to {v['resized_to'][0]}x{v['resized_to'][1]})",
            f"prediction: {p['class_name']} (class {p['class_index']}, p = {p['probability']:.3f})",
            f"glimpses: {summary['glimpses']} of K = {la['num_glimpses']} (mu {la['mu']}, patience {la['patience']}), "
            f"{summary['frames_used']} distinct frames; order {order}",
            f"latency per glimpse p50 {summary['p50_ms']:.2f} ms, p95 {summary['p95_ms']:.2f} ms, max "
            f"{summary['max_ms']:.2f} ms; memory {summary['memory_ms']:.2f} ms; total {summary['total_ms']:.2f} ms "
            f"(decode {summary['decode_ms']:.1f} ms not included); {summary['gflops_per_video']:.3f} GFLOPs",
            f"wrote {summary['out']}/" + ", ".join(summary["outputs"]),
        ]
    )
