"""``gistgym train`` and ``gistgym compare``: thin wrappers over :mod:`gistgym.agents`.

Exit codes: 0 = fine, 2 = bad input (one line on stderr, printed by ``gistgym.scripts.cli.main``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from gistgym.scripts.args import (
    NumberType,
    add_dataclass_arguments,
    dataclass_from_args,
    finite_float,
    int_at_least,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_fraction,
    positive_int,
    unit_interval,
)

TRAIN_NUMBERS: dict[str, NumberType] = {
    "gamma": finite_float,  # a speed reward may be negative
    "gammas": finite_float,
    "seeds": positive_int,
    "max_distance": positive_int,
    "num_glimpses": positive_int,
    "adaframe_hidden": positive_int,
    "glimpse_sigma": positive_float,
    "utility_weight": nonnegative_float,
    "adaframe_steps": positive_int,
    "adaframe_lr": positive_float,
    "clip_len": int_at_least(2),  # an episode has clip_len - 1 steps
    "history_len": positive_int,
    "num_envs": positive_int,
    "total_timesteps": positive_int,
    "seed": nonnegative_int,
    "learning_rate": positive_float,
    "discount": positive_fraction,
    "batch_size": positive_int,
    "buffer_size": positive_int,
    "learning_starts": nonnegative_int,
    "train_freq": positive_int,
    "gradient_steps": positive_int,
    "target_update_interval": positive_int,
    "exploration_fraction": unit_interval,
    "exploration_final_eps": unit_interval,
    "n_steps": positive_int,
    "eval_every": nonnegative_int,
    "eval_videos": positive_int,
    "checkpoint_every": nonnegative_int,
}
"""The range of each numeric option of ``gistgym train``."""
COMPARE_NUMBERS: dict[str, NumberType] = {
    "taus": positive_int,
    "durations": positive_int,
    "flow_thresholds": nonnegative_float,
    "gamma": finite_float,
    "glimpse_counts": positive_int,
    "mus": finite_float,  # every AdaFrame run is also evaluated with all its glimpses (mu = -inf)
    "patience": positive_int,
    "max_videos": nonnegative_int,
    "seed": nonnegative_int,
}
"""The range of each numeric option of ``gistgym compare``."""


def _set_threads() -> None:
    # One torch thread: two threads on a loaded 2-core machine run 10-60x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _exit_on_sigterm() -> None:
    # SIGTERM (a scheduler stopping the job) raises SystemExit in the main thread, so the run
    # in progress removes its hidden .partial directory like it does on Ctrl-C or an error.
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def cmd_train(ns: argparse.Namespace) -> int:
    """Train one run, or a gamma sweep."""
    _set_threads()
    _exit_on_sigterm()
    from gistgym.agents.train import TrainConfig, main_command, train

    config = dataclass_from_args(TrainConfig, ns)
    runs = train(config, command=main_command())
    for run in runs:
        print(f"wrote {run}")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    """Compare baselines and trained runs on a held-out split."""
    _set_threads()
    from gistgym.agents.compare import CompareConfig, Comparison, compare_any, format_text
    from gistgym.agents.glimpse_compare import format_glimpse_table, format_glimpse_verdict
    from gistgym.videos.dataset import json_text, nan_to_null

    config = dataclass_from_args(CompareConfig, ns)
    if config.json:
        config = CompareConfig(**{**config.__dict__, "progress": False})
    result = compare_any(config)
    if config.json:  # per policy, plus "verdict" (and "settings", "bootstrap", "headroom")
        extra = result.aggregates() if isinstance(result, Comparison) else {}
        print(json_text(nan_to_null({**result.as_json(), "verdict": result.verdict, **extra})))
    elif isinstance(result, Comparison):
        print(format_text(result))
    else:
        print(format_glimpse_table(result))
        print(format_glimpse_verdict(result.verdict))
    if not config.json:
        print(f"wrote table.md, results.csv, results.json, pareto.png and timeline.png to {config.out}")
    return 0


def register_agent_commands(sub: Any) -> None:
    """Add ``train`` and ``compare`` to the top-level subparsers."""
    from gistgym.agents.compare import CompareConfig
    from gistgym.agents.train import TrainConfig

    p = sub.add_parser(
        "train",
        help="train Double DQN / DQN / PPO (or AdaFrame on Glimpse-v0) on a cached environment, or a gamma sweep",
    )
    add_dataclass_arguments(p, TrainConfig, TRAIN_NUMBERS)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("compare", help="baselines and trained runs on a held-out split: table, CSV, Pareto plot")
    add_dataclass_arguments(p, CompareConfig, COMPARE_NUMBERS)
    p.set_defaults(func=cmd_compare)
