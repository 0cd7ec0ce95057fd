"""Frames/s and per-frame latency of the online runtime: heavy, light, tau=9, adaptive, async, in one run.

Usage::

    python benchmarks/runtime.py [--video FILE ...] [--policy EXPORTED] [--repeats N] [--engine NAME ...]
                                 [--threads N] [--json] [--plot PNG]

For each video (default: the first val video of ``data/bench`` and, if it can be obtained,
the real sample ``bikes.mp4``, see :mod:`gistgym.runtime.sample_video`) the frames are
decoded and resized once, then every configuration runs over them ``--repeats`` times on every
engine, round-robin (heavy, light, tau=9, ... on ONNX Runtime, the same on TorchScript, then
again) so that a change in the machine's load hits every configuration and engine alike. Configurations (the JSON keys):

* ``heavy``, ``light``: one extractor on every frame (sync);
* ``tau=9``: the fixed schedule (sync); ``tau=9+async``: the same requests in async mode;
* ``adaptive``, ``adaptive+async``: an exported policy (``--policy``), sync and async;
* ``dff every-frame``, ``dff key=10``, ``dff adaptive``: Deep Feature Flow
  (:mod:`gistgym.runtime.keyframe`, the shipped DFF weights) with a keyframe on every frame,
  every 10th frame, and an exported Keyframe-v0 key scheduler (``--keyframe-policy``).

Latency is the main thread's time per frame from the resized frame to its detections and
the next decision (:mod:`gistgym.runtime.online`); frames are fed back to back (throughput
mode, not paced at the video's frame rate), so in async mode the heavy job competes with
the following light frames for the CPU. Per configuration the statistics of each repeat are
computed and the median over repeats reported (fps, p50, p95, max), with the ratios the
issue asks for: fps / heavy's fps and max latency / light's max latency, each against the same
engine's heavy and light rows of the same run. One torch thread per thread
(``OMP_NUM_THREADS=1``), single-threaded ONNX Runtime sessions (``--threads``). Engines
(``--engine``, repeatable; default ``onnxruntime`` and ``torchscript``): the modules as
``gistgym detect --engine`` runs them (:mod:`gistgym.runtime.frozen`); ``--eager`` adds the
eager torch modules.

``--json`` prints ``{"machine", "engines", "videos": [{..., "engines": {ENGINE: {CONFIG: stats}}}]}``
and, at the top level, the first video's configurations on the first engine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from gistgym.errors import GistgymError
from gistgym.runtime.detect import online_memory
from gistgym.runtime.online import AsyncStats, percentiles_ms, run_async, run_sync
from gistgym.runtime.schedules import ScheduleChoice, parse_policy
from gistgym.runtime.video_source import VideoSource

STATS = ("fps", "p50_ms", "p95_ms", "max_ms")


def _default_videos() -> list[Path]:
    videos = []
    bench = Path("data/bench")
    if (bench / "dataset.json").is_file():
        from gistgym.videos.dataset import load_dataset

        videos.append(load_dataset(bench).split("val")[0].path)
    try:
        from gistgym.runtime.sample_video import obtain_sample_video

        videos.append(obtain_sample_video("runs/sample"))
    except GistgymError as exc:
        print(f"(no real sample video: {exc})", file=sys.stderr)
    return videos


def _configs(policy: str | None) -> list[tuple[str, str, bool]]:
    out = [("heavy", "heavy", False), ("light", "light", False), ("tau=9", "fixed:9", False)]
    out.append(("tau=9+async", "fixed:9", True))
    if policy:
        out += [("adaptive", policy, False), ("adaptive+async", policy, True)]
    return out


def run_keyframe_once(
    dff: Any, spec: str, frames: list[np.ndarray], engine: str = "onnxruntime", threads: int = 1
) -> dict[str, Any]:
    """One DFF pass over ``frames`` with the key scheduler ``spec``: fps, latency percentiles, key fraction."""
    from gistgym.runtime.keyframe import keyframe_scheduler, run_keyframe

    policy, max_distance, history_len = keyframe_scheduler(spec, str(dff.sha256))
    results = list(
        run_keyframe(
            dff.model,
            iter(frames),
            policy,
            max_distance=max_distance,
            history_len=history_len,
            engine=engine,
            threads=threads,
        )
    )
    lat = [r.latency_s for r in results]
    return {
        "fps": len(lat) / float(np.sum(lat)),
        **percentiles_ms(lat),
        "heavy_fraction": float(np.mean([r.keyframe for r in results])),  # the key fraction, in the same column
    }


def run_once(
    model: Any,
    choice: ScheduleChoice,
    frames: list[np.ndarray],
    async_mode: bool,
    engine: str = "onnxruntime",
    threads: int = 1,
) -> dict[str, Any]:
    """One pass over ``frames``: fps over the summed latencies, latency percentiles, heavy fraction."""
    memory = online_memory(model, choice, engine=engine, threads=threads)
    names = choice.action_meanings
    stats = AsyncStats()
    if async_mode:
        results = list(run_async(memory, iter(frames), choice.policy, action_names=names, stats=stats))
    else:
        results = list(run_sync(memory, iter(frames), choice.policy, action_names=names))
    lat = [r.latency_s for r in results]
    return {
        "fps": len(lat) / float(np.sum(lat)),
        **percentiles_ms(lat),
        "heavy_fraction": float(np.mean([r.heavy for r in results])),
        **({"heavy_jobs_fused": stats.fused} if async_mode else {}),
    }


def bench_video(
    model: Any,
    meta: dict[str, Any],
    video: Path,
    policy: str | None,
    repeats: int,
    engines: tuple[str, ...] = ("onnxruntime", "torchscript"),
    dff: Any = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Every configuration on every engine on one video, round-robin over ``repeats`` (with DFF rows if ``dff``)."""
    source = VideoSource(video, model.config.image_size)
    frames = [small for _, small in source.frames()]
    configs = _configs(policy)
    choices = {
        key: parse_policy(
            spec,
            model.extractor_names,
            weights_sha256=str(meta.get("sha256")),
            hidden_channels=model.config.hidden_channels,
            grid=model.grid,
        )
        for key, spec, _ in configs
    }
    dff_specs = {} if dff is None else {f"dff {s}": s for s in ("every-frame", "key=10")}
    if dff is not None and dff.policy:
        dff_specs["dff adaptive"] = dff.policy
    keys = [key for key, _, _ in configs] + list(dff_specs)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {e: {key: [] for key in keys} for e in engines}
    for engine in engines:  # warm-up (allocator, lazy init, exports or their cache, compiling)
        run_once(model, choices["heavy"], frames[:10], False, engine, threads)
        if dff is not None:
            run_keyframe_once(dff, "key=10", frames[:10], engine, threads)
    for _ in range(repeats):
        for engine in engines:
            for key, _, async_mode in configs:
                runs[engine][key].append(run_once(model, choices[key], frames, async_mode, engine, threads))
            for key, spec in dff_specs.items():
                runs[engine][key].append(run_keyframe_once(dff, spec, frames, engine, threads))
    reports: dict[str, dict[str, Any]] = {}
    for engine in engines:
        report: dict[str, Any] = {}
        for key, per_repeat in runs[engine].items():
            report[key] = {k: float(np.median([r[k] for r in per_repeat])) for k in per_repeat[0]}
        heavy_fps = report["heavy"]["fps"]
        light_max = report["light"]["max_ms"]
        for r in report.values():
            r["fps_vs_heavy"] = r["fps"] / heavy_fps
            r["max_vs_light"] = r["max_ms"] / light_max
        reports[engine] = report
    return {
        "video": str(video),
        "frames": len(frames),
        "size": [source.info.width, source.info.height],
        "repeats": repeats,
        "threads": threads,
        "engines": reports,
        "configs": reports[engines[0]],
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """PNG: frames/s (left) and p50/p95/max latency (right) per configuration and video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(res, engine) for res in results for engine in res["engines"]]
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for row, (res, engine) in zip(axes, panels, strict=True):
        configs = res["engines"][engine]
        keys = list(configs)
        x = np.arange(len(keys))
        row[0].bar(x, [configs[k]["fps"] for k in keys], color="tab:blue")
        row[0].set_ylabel("frames/s")
        w = 0.27
        for j, (stat, colour) in enumerate((("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("max_ms", "tab:red"))):
            row[1].bar(x + (j - 1) * w, [configs[k][stat] for k in keys], w, label=stat, color=colour)
        row[1].set_ylabel("latency per frame (ms)")
        row[1].legend(fontsize=8)
        for ax in row:
            ax.set_xticks(x, keys, rotation=20, fontsize=8)
            ax.set_title(
                f"{Path(res['video']).name} ({res['frames']} frames {res['size'][0]}x{res['size'][1]}), {engine}"
            )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", action="append", default=None, help="video file (repeatable)")
    parser.add_argument("--policy", default=None, help="exported policy for the adaptive rows")
    parser.add_argument("--weights", default=None, help="detector weights (default: the shipped ones)")
    parser.add_argument("--repeats", type=int, default=5, help="passes over each video per configuration")
    parser.add_argument(
        "--engine",
        action="append",
        default=None,
        help="engine to measure (repeatable; default onnxruntime and torchscript, in the same run)",
    )
    parser.add_argument("--eager", action="store_true", help="also measure the eager torch modules")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per session")
    parser.add_argument(
        "--keyframe-policy", default=None, help="exported Keyframe-v0 policy for the 'dff adaptive' row"
    )
    parser.add_argument("--no-dff", action="store_true", help="skip the Deep Feature Flow rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", default="runs/runtime/benchmark.png", help="PNG to write ('' = none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from gistgym.backbones.engines import check_engine, check_threads
    from gistgym.backbones.weights import load_detector

    try:
        engines = tuple(dict.fromkeys([*(args.engine or ["onnxruntime", "torchscript"]), *(["eager"] * args.eager)]))
        for engine in engines:
            check_engine(engine)
        check_threads(args.threads)
        if args.repeats < 1:
            raise GistgymError(f"--repeats must be >= 1, got {args.repeats}")
        model, meta = load_detector(args.weights)
        dff = None
        if not args.no_dff:
            from gistgym.backbones.dff import load_dff

            dff_model, dff_meta = load_dff()
            dff = SimpleNamespace(model=dff_model, sha256=dff_meta.get("sha256"), policy=args.keyframe_policy)
        videos = [Path(v) for v in args.video] if args.video else _default_videos()
        results = [bench_video(model, meta, v, args.policy, args.repeats, engines, dff, args.threads) for v in videos]
    except GistgymError as exc:
        print(f"benchmarks/runtime.py: error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        plot(results, Path(args.plot))
    if args.json:
        out: dict[str, Any] = {
            "machine": platform.processor() or platform.machine(),
            "engines": list(engines),
            "videos": results,
        }
        if results:  # the first video's table under the top-level keys
            out.update(results[0]["configs"])
        print(json.dumps(out))
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}")
    for res in results:
        print(
            f"\n{res['video']}: {res['frames']} frames {res['size'][0]}x{res['size'][1]}, median of {res['repeats']}, "
            f"engines {', '.join(res['engines'])} (ratios against the same engine's heavy and light rows)"
        )
        print(
            "| engine | config | frames/s | x heavy | p50 ms | p95 ms | max ms | max / light max | "
            "heavy (dff: key) frac. |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for engine, configs in res["engines"].items():
            for key, r in configs.items():
                print(
                    f"| {engine} | {key} | {r['fps']:.1f} | {r['fps_vs_heavy']:.2f} | {r['p50_ms']:.2f} | "
                    f"{r['p95_ms']:.2f} | {r['max_ms']:.2f} | {r['max_vs_light']:.2f} | {r['heavy_fraction']:.3f} |"
                )
    if args.plot:
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
