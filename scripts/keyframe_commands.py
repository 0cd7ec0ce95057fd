"""``gistgym backbones train-dff | eval-dff``: Deep Feature Flow for ``gistgym/Keyframe-v0``; its ``detect`` runtime.

Thin wrappers over :mod:`gistgym.backbones.dff_training` and :mod:`gistgym.runtime.keyframe`
(registered with ``gistgym detect`` at import).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gistgym.envs import KEYFRAME_ENV_ID
from gistgym.scripts.args import (
    NumberType,
    add_dataclass_arguments,
    dataclass_from_args,
    field_docs,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    subcommands,
)
from gistgym.scripts.runtime_commands import DetectRuntime, register_detect_runtime, run_detect

TRAIN_DFF_NUMBERS: dict[str, NumberType] = {
    "seed": nonnegative_int,
    "iterations": positive_int,
    "batch_pairs": positive_int,
    "max_distance": positive_int,
    "lr": positive_float,
    "weight_decay": nonnegative_float,
    "warmup": nonnegative_int,
    "flow_supervision": nonnegative_float,
    "max_videos": nonnegative_int,
    "threads": positive_int,
}
"""The range of each numeric option of ``gistgym backbones train-dff``."""
EVAL_DFF_NUMBERS: dict[str, NumberType] = {"durations": positive_int, "max_videos": nonnegative_int}
"""The range of each numeric option of ``gistgym backbones eval-dff``."""


@dataclass(frozen=True)
class DFFEvalArgs:
    """Arguments of ``gistgym backbones eval-dff``."""

    videos: str = "data/bench"
    """Dataset folder."""
    split: str = "val"
    """Split to evaluate."""
    weights: str = ""
    """DFF weights (.pt with its .json sidecar); empty = the shipped ones."""
    durations: tuple[int, ...] = (1, 5, 10, 20)
    """Fixed key durations l to evaluate (1 = every frame is a keyframe)."""
    out: str = "runs/dff-eval"
    """Folder for the JSON report and the PNG plot."""
    max_videos: int = 0
    """Evaluate only the first N videos (0 = all)."""
    json: bool = False
    """Print one JSON object instead of the table."""


def _set_threads() -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def cmd_train_dff(ns: argparse.Namespace) -> int:
    """Train F and N_task of Deep Feature Flow and write the weights."""
    from gistgym.backbones.dff_training import DFFTrainConfig, train_dff

    _set_threads()
    cfg = dataclass_from_args(DFFTrainConfig, ns)
    command = "gistgym " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = train_dff(cfg, command=command)
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary["final_losses"].items())
    print(f"wrote {cfg.out} (sha256 {summary['sha256']}) after {summary['train_minutes']} min; final losses: {losses}")
    return 0


def plot_durations(report: dict[str, Any], path: Path) -> None:
    """mAP@0.5 against the key duration and against counted GFLOPs per frame (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["durations"]
    ls = [int(k.split("=")[1]) for k in rows]
    maps = [rows[k]["map50"] for k in rows]
    gf = [rows[k]["gflops_per_frame"] for k in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ls, maps, "o-")
    a.set_xlabel("key duration l")
    a.set_ylabel("mAP@0.5")
    a.set_title("DFF, fixed key duration")
    b.plot(gf, maps, "o-")
    for l_, x, y in zip(ls, gf, maps, strict=True):
        b.annotate(f"l={l_}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    b.set_xlabel("counted GFLOPs per frame")
    b.set_ylabel("mAP@0.5")
    b.set_title(f"r = {report['costs']['cost_ratio_r']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_eval_dff(ns: argparse.Namespace) -> int:
    """mAP@0.5 of fixed key durations, counted FLOPs of N_feat, F, W, N_task and r."""
    from gistgym.backbones.dff import dff_costs, load_dff
    from gistgym.backbones.dff_training import evaluate_key_durations
    from gistgym.videos.dataset import atomic_write_json, json_text, nan_to_null

    _set_threads()
    a = dataclass_from_args(DFFEvalArgs, ns)
    model, meta = load_dff(a.weights or None)
    costs = dff_costs(model, measure=True)
    rows = evaluate_key_durations(
        model, a.videos, a.split, a.durations, max_videos=a.max_videos or None, costs=costs, progress=not a.json
    )
    report = {"weights_sha256": meta["sha256"], "split": a.split, "costs": costs.to_dict(), "durations": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", nan_to_null(report))  # mAP is null on videos without ground truth
    plot_durations(report, out / "map_vs_key_duration.png")
    if a.json:
        print(json_text(nan_to_null(report)))
        return 0
    c = costs
    print(
        f"counted FLOPs: N_feat {c.feature_flops / 1e6:.2f} M, F {c.flow_flops / 1e6:.2f} M, "
        f"W {c.warp_flops / 1e6:.3f} M, N_task {c.task_flops / 1e6:.2f} M; r = (F + W) / N_feat = {c.cost_ratio:.4f}"
    )
    print("| schedule | mAP@0.5 | key fraction | GFLOPs/frame | speed-up Eq. 7 | speed-up counted |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['map50']:.3f} | {r['key_fraction']:.3f} | {r['gflops_per_frame']:.4f} | "
            f"{r['speedup_eq7']:.2f} | {r['speedup_counted']:.2f} |"
        )
    print(f"\nwrote {out}/report.json, map_vs_key_duration.png")
    return 0


def register_keyframe_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``train-dff`` and ``eval-dff`` to the ``gistgym backbones`` group."""
    from gistgym.backbones.dff_training import DFFTrainConfig

    backbones = subcommands(sub.choices["backbones"])
    p = backbones.add_parser(
        "train-dff", help="train Deep Feature Flow's flow and task nets (writes weights + sidecar)"
    )
    add_dataclass_arguments(p, DFFTrainConfig, TRAIN_DFF_NUMBERS)
    p.set_defaults(func=cmd_train_dff)
    p = backbones.add_parser("eval-dff", help="DFF mAP@0.5 for fixed key durations, counted FLOPs and r")
    add_dataclass_arguments(p, DFFEvalArgs, EVAL_DFF_NUMBERS)
    p.set_defaults(func=cmd_eval_dff)


_KEYFRAME_DETECT_FIELDS = (
    "video",
    "policy",
    "out",
    "overwrite",
    "dff_weights",
    "max_distance",
    "annotate",
    "max_frames",
    "draw_threshold",
    "eager",
    "engine",
    "threads",
)
"""The ``KeyframeDetectArgs`` fields ``gistgym detect`` takes from options of the same name (key schedulers)."""


def _run_keyframe(ns: argparse.Namespace) -> int:
    from gistgym.runtime.keyframe import KeyframeDetectArgs, detect_keyframe, format_keyframe_summary

    return run_detect(ns, KeyframeDetectArgs, _KEYFRAME_DETECT_FIELDS, detect_keyframe, format_keyframe_summary)


def _add_keyframe_arguments(p: argparse.ArgumentParser) -> None:
    from gistgym.runtime.keyframe import KeyframeDetectArgs

    docs = field_docs(KeyframeDetectArgs)
    k = p.add_argument_group(
        "Deep Feature Flow key schedulers (an exported Keyframe-v0 policy, every-frame, key=L, flow-threshold@X)"
    )
    k.add_argument("--dff-weights", default="", help=docs["dff_weights"])
    k.add_argument("--max-distance", type=nonnegative_int, default=0, help=docs["max_distance"])


def _is_keyframe_name(spec: str) -> bool:
    from gistgym.runtime.keyframe import is_keyframe_name

    return is_keyframe_name(spec)


register_detect_runtime(
    DetectRuntime(
        name="keyframe",
        description="Deep Feature Flow (an exported Keyframe-v0 policy, every-frame, key=L or flow-threshold@X)",
        env_ids=(KEYFRAME_ENV_ID,),
        takes_name=_is_keyframe_name,
        options=("--dff-weights", "--max-distance", "--eager"),
        add_arguments=_add_keyframe_arguments,
        run=_run_keyframe,
    )
)
