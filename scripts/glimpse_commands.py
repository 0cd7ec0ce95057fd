"""``gistgym backbones train-glimpse``: the frozen models of ``gistgym/Glimpse-v0`` (AdaFrame).

Thin wrapper over :mod:`gistgym.backbones.glimpse_training`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from gistgym.envs import GLIMPSE_ENV_ID
from gistgym.scripts.args import (
    NumberType,
    add_dataclass_arguments,
    dataclass_from_args,
    field_docs,
    nonnegative_int,
    number_or_infinity,
    positive_int,
    subcommands,
)
from gistgym.scripts.runtime_commands import DetectRuntime, register_detect_runtime, run_detect

TRAIN_GLIMPSE_NUMBERS: dict[str, NumberType] = {
    "seed": nonnegative_int,
    "steps": positive_int,
    "glimpses": positive_int,
    "hidden": positive_int,
    "memory_frames": positive_int,
    "max_videos": nonnegative_int,
}
"""The range of each numeric option of ``gistgym backbones train-glimpse``."""


def cmd_train_glimpse(ns: argparse.Namespace) -> int:
    """Train the frozen recurrent classifier of the glimpse models and write the weights."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from gistgym.backbones.glimpse_training import GlimpseTrainConfig, train_glimpse

    torch.set_num_threads(1)
    cfg = dataclass_from_args(GlimpseTrainConfig, ns)
    command = "gistgym " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = train_glimpse(cfg, command=command)
    acc = ", ".join(f"{k} {v:.3f}" for k, v in summary["val_accuracy"].items())
    print(
        f"wrote {cfg.out} (sha256 {summary['sha256']}) after {summary['train_minutes']} min; val top-1: {acc}, "
        f"avg-pool over all frames {summary['val_accuracy_avgpool_all']:.3f}"
    )
    return 0


def register_glimpse_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``train-glimpse`` to the ``gistgym backbones`` group."""
    from gistgym.backbones.glimpse_training import GlimpseTrainConfig

    backbones = subcommands(sub.choices["backbones"])
    p = backbones.add_parser(
        "train-glimpse", help="train the frozen glimpse classifier of Glimpse-v0 (writes weights + sidecar)"
    )
    add_dataclass_arguments(p, GlimpseTrainConfig, TRAIN_GLIMPSE_NUMBERS)
    p.set_defaults(func=cmd_train_glimpse)


_GLIMPSE_DETECT_FIELDS = (
    "video",
    "policy",
    "out",
    "overwrite",
    "glimpse_weights",
    "mu",
    "patience",
    "num_glimpses",
    "max_frames",
    "engine",
    "threads",
)
"""The ``GlimpseDetectArgs`` fields ``gistgym detect`` takes from options of the same name (AdaFrame policies)."""


def _run_glimpse(ns: argparse.Namespace) -> int:
    from gistgym.runtime.glimpse import GlimpseDetectArgs, detect_glimpse, format_glimpse_summary

    return run_detect(ns, GlimpseDetectArgs, _GLIMPSE_DETECT_FIELDS, detect_glimpse, format_glimpse_summary)


def _add_glimpse_arguments(p: argparse.ArgumentParser) -> None:
    from gistgym.runtime.glimpse import GlimpseDetectArgs

    docs = field_docs(GlimpseDetectArgs)
    g = p.add_argument_group("AdaFrame policies (an exported gistgym/Glimpse-v0 agent: the glimpse runtime)")
    g.add_argument("--glimpse-weights", default="", help=docs["glimpse_weights"])
    g.add_argument("--mu", type=number_or_infinity, default=GlimpseDetectArgs.mu, help=docs["mu"])
    g.add_argument("--patience", type=positive_int, default=GlimpseDetectArgs.patience, help=docs["patience"])
    g.add_argument("--num-glimpses", type=nonnegative_int, default=0, help=docs["num_glimpses"])


register_detect_runtime(
    DetectRuntime(
        name="glimpse",
        description="the glimpse runtime (an exported AdaFrame agent)",
        env_ids=(GLIMPSE_ENV_ID,),
        takes_name=lambda spec: False,
        options=("--glimpse-weights", "--mu", "--patience", "--num-glimpses"),
        add_arguments=_add_glimpse_arguments,
        run=_run_glimpse,
    )
)
