"""The ``gistgym`` command line.

Thin: every subcommand parses its typed arguments and calls library code. Bad input ends
with one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gistgym.errors import GistgymError, one_line
from gistgym.scripts.args import (
    NumberType,
    OneLineArgumentParser,
    add_dataclass_arguments,
    dataclass_from_args,
    int_at_least,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    unit_interval,
)

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class VideosMakeArgs:
    """Arguments of ``gistgym videos make``."""

    out: str = "data/bench"
    """Output folder of the benchmark."""
    kind: str = "detection"
    """`detection` (short clips), `untrimmed` (the class shows in one window) or `streams` (long: cuts, idle gaps)."""
    seed: int = 0
    """Benchmark seed (same seed, byte-identical files)."""
    train: int = -1
    """Videos in the train split (-1 = the kind's default: 160 detection, 800 untrimmed, 80 streams)."""
    val: int = -1
    """Videos in the val split (-1 = the kind's default: 32 detection, 400 untrimmed, 24 streams)."""
    test: int = -1
    """Videos in the test split (-1 = the kind's default: 32 detection, 200 untrimmed, 24 streams)."""
    frames: int = -1
    """Frames per video (-1 = the kind's default: 96 detection, 48 untrimmed, 360 streams; streams need >= 300)."""


@dataclass(frozen=True)
class EvalArgs:
    """Arguments of ``gistgym backbones eval``."""

    videos: str = "data/bench"
    """Dataset folder."""
    split: str = "val"
    """Split to evaluate."""
    weights: str = ""
    """Detector weights (.pt with its .json sidecar); empty = the shipped weights."""
    out: str = "runs/backbones-eval"
    """Folder for the markdown table, the JSON report and the PNG plot."""
    max_videos: int = 0
    """Evaluate only the first N videos (0 = all)."""
    by_distance: bool = False
    """Also: mAP@0.5 of frames by their distance d = 0..20 to the last heavy frame, overall and per stretch
    (by_distance.md, .json, .png; under the JSON key light_by_distance)."""
    json: bool = False
    """Print one JSON object keyed by schedule instead of the table."""


VIDEOS_MAKE_NUMBERS: dict[str, NumberType] = {
    "seed": nonnegative_int,
    "train": int_at_least(-1),
    "val": int_at_least(-1),
    "test": int_at_least(-1),
    "frames": int_at_least(-1),
}
"""The range of each numeric option of ``gistgym videos make`` (-1: the kind's default)."""
BACKBONES_TRAIN_NUMBERS: dict[str, NumberType] = {
    "seed": nonnegative_int,
    "iterations": positive_int,
    "batch_clips": positive_int,
    "clip_len": positive_int,
    "lr": positive_float,
    "weight_decay": nonnegative_float,
    "warmup": nonnegative_int,
    "max_heavy_prob": unit_interval,
    "clip_mix": unit_interval,
    "threads": positive_int,
}
"""The range of each numeric option of ``gistgym backbones train``."""
BACKBONES_EVAL_NUMBERS: dict[str, NumberType] = {"max_videos": nonnegative_int}
"""The range of each numeric option of ``gistgym backbones eval``."""


def _set_threads() -> None:
    # One torch thread: two threads on a loaded 2-core machine run 10-60x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def cmd_videos_make(ns: argparse.Namespace) -> int:
    """Generate the synthetic benchmark."""
    from gistgym.errors import ConfigError
    from gistgym.videos.benchmark import (
        DEFAULT_SPLIT_SIZES,
        GENERATORS,
        STREAMS_SPLIT_SIZES,
        UNTRIMMED_SPLIT_SIZES,
        make_benchmark,
    )
    from gistgym.videos.streams import MIN_FRAMES, StreamsConfig
    from gistgym.videos.synthetic import SyntheticConfig
    from gistgym.videos.untrimmed import UntrimmedConfig

    a = dataclass_from_args(VideosMakeArgs, ns)
    config: SyntheticConfig | UntrimmedConfig | StreamsConfig
    if a.kind == "detection":
        config, defaults = SyntheticConfig(num_frames=96 if a.frames < 0 else a.frames), DEFAULT_SPLIT_SIZES
    elif a.kind == "untrimmed":
        config, defaults = UntrimmedConfig(num_frames=48 if a.frames < 0 else a.frames), UNTRIMMED_SPLIT_SIZES
    elif a.kind == "streams":
        if 0 <= a.frames < MIN_FRAMES:
            raise ConfigError(f"--frames must be >= {MIN_FRAMES} for --kind streams (long videos), got {a.frames}")
        config, defaults = StreamsConfig(num_frames=360 if a.frames < 0 else a.frames), STREAMS_SPLIT_SIZES
    else:
        kinds = ", ".join(f"`{k}`" for k in GENERATORS)
        raise ConfigError(f"--kind must be one of {kinds}, got {a.kind!r}")
    requested = {"train": a.train, "val": a.val, "test": a.test}
    sizes = {s: defaults[s] if n < 0 else n for s, n in requested.items()}
    out = make_benchmark(a.out, seed=a.seed, split_sizes=sizes, config=config)
    print(f"wrote {sum(sizes.values())} videos to {out} ({a.kind} benchmark)")
    return 0


def cmd_backbones_train(ns: argparse.Namespace) -> int:
    """Train the interleaved detector."""
    from gistgym.backbones.training import TrainConfig, train_detector

    _set_threads()
    cfg = dataclass_from_args(TrainConfig, ns)
    command = "gistgym " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = train_detector(cfg, command=command)
    print(
        f"wrote {cfg.out} (sha256 {summary['sha256']}) after {summary['train_minutes']} min, "
        f"final loss {summary['final_loss']:.3f}"
    )
    return 0


def cmd_backbones_eval(ns: argparse.Namespace) -> int:
    """Evaluate fixed schedules of the detector."""
    from gistgym.backbones.evaluation import (
        evaluate_schedules,
        format_distance_table,
        format_table,
        light_by_distance,
        plot_distance_report,
        plot_report,
        ratio_summary,
    )
    from gistgym.backbones.flops import step_costs
    from gistgym.backbones.weights import load_detector
    from gistgym.videos.dataset import atomic_write_json, json_text, nan_to_null

    _set_threads()
    a = dataclass_from_args(EvalArgs, ns)
    model, _meta = load_detector(a.weights or None)
    costs = step_costs(model, measure=True)
    report = evaluate_schedules(
        model, a.videos, a.split, costs=costs, max_videos=a.max_videos or None, progress=not a.json
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    clean = nan_to_null(report)  # mAP is null where a schedule or stretch has no ground truth
    atomic_write_json(out / "report.json", clean)
    table = format_table(report)
    ratios = ratio_summary(report)
    (out / "table.md").write_text(table + "\n\n" + "\n".join(f"- {k}: {v:.3f}" for k, v in ratios.items()) + "\n")
    plot_report(report, out / "map_vs_tau_and_gflops.png")
    by_distance: dict[str, Any] | None = None
    if a.by_distance:
        by_distance = light_by_distance(model, a.videos, a.split, max_videos=a.max_videos or None, progress=not a.json)
        distance_table = format_distance_table(by_distance)
        atomic_write_json(out / "by_distance.json", nan_to_null(by_distance))
        (out / "by_distance.md").write_text(distance_table + "\n")
        plot_distance_report(by_distance, out / "by_distance.png", f"{Path(a.videos).name} [{a.split}]")
        clean["light_by_distance"] = nan_to_null(by_distance)
    if a.json:
        print(json_text(clean))
        return 0
    print(table)
    print()
    heavy, light = costs[0], costs[1]
    ratio = heavy.step_flops / light.step_flops
    print(
        f"counted FLOPs of a whole step: heavy {heavy.step_flops / 1e6:.1f} M, "
        f"light {light.step_flops / 1e6:.1f} M, ratio {ratio:.1f}x"
    )
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    wrote = "table.md, report.json, map_vs_tau_and_gflops.png"
    if by_distance is not None:
        print("\nmAP@0.5 by frames since the last heavy frame (d = 0: the heavy frame), overall and per stretch:")
        print(distance_table)
        wrote += ", by_distance.md, by_distance.json, by_distance.png"
    print(f"\nwrote {out}/{wrote}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from gistgym.backbones.training import TrainConfig

    parser = OneLineArgumentParser(prog="gistgym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", required=True)

    videos = sub.add_parser("videos", help="synthetic benchmark and video data").add_subparsers(
        dest="command", required=True
    )
    p = videos.add_parser("make", help="generate the synthetic video benchmark")
    add_dataclass_arguments(p, VideosMakeArgs, VIDEOS_MAKE_NUMBERS)
    p.set_defaults(func=cmd_videos_make)

    backbones = sub.add_parser("backbones", help="frozen video models").add_subparsers(dest="command", required=True)
    p = backbones.add_parser("train", help="train the interleaved detector (writes weights + sidecar)")
    add_dataclass_arguments(p, TrainConfig, BACKBONES_TRAIN_NUMBERS)
    p.set_defaults(func=cmd_backbones_train)
    p = backbones.add_parser("eval", help="mAP@0.5 and GFLOPs of fixed schedules")
    add_dataclass_arguments(p, EvalArgs, BACKBONES_EVAL_NUMBERS)
    p.set_defaults(func=cmd_backbones_eval)

    from gistgym.scripts.cache_commands import register_cache_commands

    register_cache_commands(sub)
    from gistgym.scripts.keyframe_commands import register_keyframe_commands

    register_keyframe_commands(sub)
    from gistgym.scripts.glimpse_commands import register_glimpse_commands

    register_glimpse_commands(sub)
    from gistgym.scripts.runtime_commands import register_runtime_commands

    register_runtime_commands(sub)
    from gistgym.scripts.agent_commands import register_agent_commands

    register_agent_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gistgym`` console command."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a bad option: its one line is printed (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        return int(ns.func(ns))
    except GistgymError as exc:
        print(f"gistgym: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        notes = "; ".join(str(n) for n in getattr(exc, "__notes__", ()))
        print("gistgym: interrupted" + (f"; {notes}" if notes else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
