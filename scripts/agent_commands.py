"""``gistgym train`` and ``gistgym compare``: thin wrappers over :mod:`gistgym.agents`.

Exit codes: 0 = fine, 2 = bad input (one line on stderr, printed by ``gistgym.scripts.cli.main``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from gistgym.errors import ConfigError
from gistgym.scripts.args import (
    NumberType,
    add_dataclass_arguments,
    dataclass_from_args,
    field_docs,
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
    "cem_population": int_at_least(2),
    "cem_clips": positive_int,
    "cem_iterations": positive_int,
    "cem_elite": positive_fraction,
    "cem_init_std": positive_float,
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


CLUSTER_NUMBERS: dict[str, NumberType] = {"workers": nonnegative_int, "max_retries": nonnegative_int}
"""The range of each numeric option of the sweep flags (:func:`add_cluster_arguments`)."""


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--workers``, ``--ship-cache``, ``--resume``, ``--max-retries`` (SweepOptions)."""
    from gistgym.agents.sweep import SweepOptions

    docs = field_docs(SweepOptions)
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help=docs["ray"])
    for name, number in CLUSTER_NUMBERS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=number,
            default=getattr(SweepOptions, name),
            help=f"{docs[name]} (default: {getattr(SweepOptions, name)}; {number.expects})",
        )
    for flag in ("ship_cache", "resume"):
        p.add_argument(f"--{flag.replace('_', '-')}", action="store_true", help=docs[flag])


def cluster_options(ns: argparse.Namespace, progress: bool) -> Any:
    """The :class:`~gistgym.agents.sweep.SweepOptions` of parsed :func:`add_cluster_arguments` flags."""
    from gistgym.agents.sweep import SweepOptions

    if (ns.ship_cache or ns.workers) and ns.ray is None:
        flag = "--ship-cache" if ns.ship_cache else "--workers"
        raise ConfigError(f"{flag} is for Ray: add --ray (a local instance) or --ray ADDRESS")
    return SweepOptions(
        ray=ns.ray,
        workers=ns.workers,
        ship_cache=ns.ship_cache,
        resume=ns.resume,
        max_retries=ns.max_retries,
        progress=progress,
    )


def _report(runs: list[Any]) -> int:
    for run in runs:
        print(f"wrote {run}")
    return 0


def cmd_train(ns: argparse.Namespace) -> int:
    """Train one run, or a gamma sweep (here, or as Ray tasks with --ray)."""
    _set_threads()
    _exit_on_sigterm()
    from gistgym.agents.train import TrainConfig, main_command, train

    config = dataclass_from_args(TrainConfig, ns)
    cluster = cluster_options(ns, config.progress)
    uses_sweep = ns.ray is not None or ns.resume
    return _report(train(config, command=main_command(), cluster=cluster if uses_sweep else None))


def cmd_sweep(ns: argparse.Namespace) -> int:
    """Train every run of a sweep file (here, or as Ray tasks with --ray)."""
    _set_threads()
    _exit_on_sigterm()
    from gistgym.agents.sweep import run_sweep
    from gistgym.agents.sweep_file import sweep_jobs_from_file
    from gistgym.agents.train import main_command, train_one

    cluster = cluster_options(ns, ns.progress)
    jobs, out = sweep_jobs_from_file(ns.file, numbers=TRAIN_NUMBERS, overwrite=ns.overwrite, progress=ns.progress)
    result = run_sweep(jobs, out, train_one, options=cluster, command=main_command())
    print(
        f"sweep: {result.count('done')} trained, {result.count('skipped')} skipped in {result.seconds:.0f} s; "
        f"wrote {result.summary_path}"
    )
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    """Compare baselines and trained runs on a held-out split (the family's comparison)."""
    _set_threads()
    from gistgym.agents.compare import CompareConfig, compare_any
    from gistgym.videos.dataset import json_text, nan_to_null

    config = dataclass_from_args(CompareConfig, ns)
    if config.json:
        config = dataclasses.replace(config, progress=False)
    result = compare_any(config)
    if config.json:  # per policy, plus "verdict" (and "settings", "bootstrap", "headroom")
        print(json_text(nan_to_null({**result.as_json(), "verdict": result.verdict, **result.aggregates()})))
    else:
        print(result.text())
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
    add_cluster_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "sweep",
        help="train every run of a sweep file (settings x seeds x envs), here or as Ray tasks on a cluster",
    )
    p.add_argument("file", metavar="SWEEP.yaml", help="the sweep file (see gistgym.agents.sweep_file)")
    add_cluster_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace complete runs of the same name")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("compare", help="baselines and trained runs on a held-out split: table, CSV, Pareto plot")
    add_dataclass_arguments(p, CompareConfig, COMPARE_NUMBERS)
    p.set_defaults(func=cmd_compare)
