r"""A training sweep here (one run after another) against the same sweep as Ray tasks, in one run.

Prints the Ray sweep's speedup over the sequential one measured in the same run, whether every
run's config.json and eval.json numbers are equal, and (``--kill-after S``) what happened when a
worker process running a task was SIGKILLed S seconds into the Ray sweep.

    python benchmarks/sweep.py --cache data/bench.h5 --workers 2                  # a local Ray instance
    ray start --head --num-cpus 2 && \\
        python benchmarks/sweep.py --cache data/bench.h5 --ray 127.0.0.1:6379 --kill-after 40
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from gistgym.agents.runs import CONFIG_FILE, EVAL_FILE, find_runs
from gistgym.agents.sweep import SWEEP_FILE, WORKER_DIR, SweepOptions
from gistgym.agents.train import TrainConfig, train


def numbers(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json without what depends on where and when the run trained, and eval.json."""
    config = json.loads((run / CONFIG_FILE).read_text())
    for key in ("train_seconds", "command"):
        config.pop(key, None)
    for key in ("out", "progress"):
        config.get("train", {}).pop(key, None)
    return config, json.loads((run / EVAL_FILE).read_text())


def task_pids() -> list[int]:
    """Processes running a sweep task (Ray names them ``ray::_run_task``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::_run_task"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return sorted(pids)


def killer(after: float, record: dict[str, Any]) -> threading.Thread:
    """SIGKILL one task's worker ``after`` seconds from now (waits for one to be running)."""

    def run() -> None:
        time.sleep(after)
        while not (pids := task_pids()):
            time.sleep(0.5)
        os.kill(pids[0], signal.SIGKILL)
        record.update(pid=pids[0], at_seconds=round(time.perf_counter() - record["started"], 1))

    record["started"] = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def leftovers(out: Path) -> list[str]:
    """Staging folders in ``out`` and sweep work folders on this machine."""
    staged = [str(p) for p in out.rglob(".*") if ".partial-" in p.name]
    work = Path(tempfile.gettempdir()) / WORKER_DIR
    return staged + ([str(p) for p in work.iterdir()] if work.is_dir() else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="feature cache (gistgym cache build)")
    p.add_argument("--env", default=TrainConfig.env, help="a registered environment id")
    p.add_argument("--gammas", type=float, nargs="+", default=[0.5, 2.0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--total-timesteps", type=int, default=6000)
    p.add_argument("--ray", default="local", help="'local' (a local instance) or a cluster's ADDRESS")
    p.add_argument("--workers", type=int, default=2, help="CPUs of a local instance")
    p.add_argument("--ship-cache", action="store_true")
    p.add_argument("--kill-after", type=float, default=0.0, help="SIGKILL one task's worker after S seconds (0: no)")
    p.add_argument("--out", default="", help="folder for both sweeps (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.out or tempfile.mkdtemp(prefix="gistgym-sweep-bench-"))
    base = TrainConfig.of(
        cache=args.cache,
        env=args.env,
        gamma_sweep=True,
        gammas=tuple(args.gammas),
        seeds=args.seeds,
        total_timesteps=args.total_timesteps,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
    )
    started = time.perf_counter()
    train(replace(base, out=str(root / "sequential")), log=lambda _: None)
    sequential = time.perf_counter() - started
    kill: dict[str, Any] = {}
    if args.kill_after > 0:
        killer(args.kill_after, kill)
    cluster = SweepOptions(ray=args.ray, workers=args.workers, ship_cache=args.ship_cache, progress=True)
    started = time.perf_counter()
    train(replace(base, out=str(root / "ray")), log=lambda _: None, cluster=cluster)
    on_ray = time.perf_counter() - started
    names = [r.name for r in find_runs(root / "sequential")]
    equal = {n: numbers(root / "sequential" / n) == numbers(root / "ray" / n) for n in names}
    summary = json.loads((root / "ray" / SWEEP_FILE).read_text())
    result = {
        "runs": len(names),
        "total_timesteps": args.total_timesteps,
        "sequential_seconds": round(sequential, 1),
        "ray_seconds": round(on_ray, 1),
        "speedup": round(sequential / on_ray, 2),
        "ray": args.ray,
        "workers": args.workers,
        "ship_cache": args.ship_cache,
        "equal_numbers": equal,
        "ray_runs": [r.name for r in find_runs(root / "ray")],
        "statuses": [r["status"] for r in summary["runs"]],
        "killed": {k: v for k, v in kill.items() if k != "started"},
        "leftovers": leftovers(root),
        "out": str(root),
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"{len(names)} runs x {args.total_timesteps} steps: sequential {sequential:.1f} s, Ray ({args.ray}, "
            f"{args.workers} workers) {on_ray:.1f} s: speedup {sequential / on_ray:.2f}x; "
            f"equal numbers: {sum(equal.values())}/{len(equal)}; killed: {result['killed'] or 'none'}; "
            f"leftovers: {len(result['leftovers'])}"
        )
    return 0 if all(equal.values()) and len(equal) == len(result["ray_runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
