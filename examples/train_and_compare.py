"""Train Double DQN schedulers on a feature cache and compare them with fixed schedules and random.

Usage (after ``make demo``, which builds ``data/demo.h5``)::

    python examples/train_and_compare.py --cache data/demo.h5 --out runs/example

Trains one Interleave-v0 run per speed reward gamma (``gistgym train --gamma-sweep``), then
evaluates them with the baselines on every frame of every val video (``gistgym compare``)
and prints the table: each run's mAP@0.5 and heavy fraction against fixed tau and random
heavy steps at the same fraction. The same two steps as the command line, from Python.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one torch thread: much faster on a loaded small machine

from gistgym.agents.compare import CompareConfig, compare, format_table
from gistgym.agents.train import TrainConfig, train


def main() -> None:
    """Train, then compare."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="a feature cache (gistgym cache build)")
    parser.add_argument("--out", default="runs/example", help="folder for the runs and the comparison")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.5, 1.5], help="speed rewards, one run each")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps per run")
    parser.add_argument("--clip-len", type=int, default=40, help="frames per training episode")
    args = parser.parse_args()

    config = TrainConfig.of(
        cache=args.cache,
        out=os.path.join(args.out, "runs"),
        gamma_sweep=True,
        gammas=tuple(args.gammas),
        total_timesteps=args.steps,
        clip_len=args.clip_len,
        learning_starts=min(1_000, args.steps // 3),
        eval_every=max(args.steps // 2, 1),
        eval_videos=2,
        progress=False,
        overwrite=True,
    )
    train(config)  # one run directory per gamma: config.json, model.zip, eval.json, training.png, tb/

    compare_config = CompareConfig.of(
        cache=args.cache,
        runs=config.out,
        split="val",
        out=os.path.join(args.out, "compare"),
        overwrite=True,
        progress=False,
    )
    comparison = compare(compare_config)
    print(format_table(comparison))
    print(f"\ntables and plots (pareto.png, timeline.png): {os.path.join(args.out, 'compare')}")


if __name__ == "__main__":
    main()
