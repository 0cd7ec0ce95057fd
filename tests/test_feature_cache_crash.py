"""Crash safety: SIGKILL a real `gistgym cache build` at several points; every re-run finishes.

The build is stopped at exact places by the test hook ``GISTGYM_TEST_STALL_AT`` (the
driver prints a line and sleeps there; see ``gistgym.feature_cache.build``). Each killed
run is followed by the next one, which must resume from what the killed one left.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np

from gistgym.feature_cache import FeatureCache, verify_cache
from gistgym.staging import STALL_ENV


def build_command(tiny_bench: Path, out: Path, weights: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gistgym.scripts.cli",
        "cache",
        "build",
        "--videos",
        str(tiny_bench),
        "--out",
        str(out),
        "--weights",
        str(weights),
        "--workers",
        "1",
        "--no-latency",
        "--no-progress",
        "--sections",
        "interleave",  # like the session's tiny_cache it is compared with
    ]


def run_until(command: list[str], point: str | None, timeout: float = 120.0) -> int:
    """Run a build; with ``point``, SIGKILL it once it reports standing there. Returns the exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if point is None:
        env.pop(STALL_ENV, None)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return done.returncode
    env[STALL_ENV] = point
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)  # type: ignore[union-attr]
    reader.start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=timeout)
            seen.append(line)
            if f"gistgym-test-stall {point}" in line:
                break
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"build never reached {point!r}; stderr: {''.join(seen)}") from None
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=30)


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


def test_sigkill_at_every_stage_then_resume(tiny_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "crash.h5"
    parts = tmp_path / "crash.h5.parts"
    command = build_command(tiny_bench, out, tiny_cache.parent / "detector.pt")

    def finished_shards() -> list[str]:
        return sorted(p.name for p in parts.glob("*.h5"))

    def temp_shards() -> list[str]:
        return sorted(p.name for p in parts.glob(".*.tmp"))

    # 1. killed right after the first shard was renamed into place
    assert run_until(command, "shard-done") == -signal.SIGKILL
    assert not out.exists() and finished_shards() == ["train_0000.h5"]
    assert temp_shards() == []

    # 2. resumed, then killed with the next shard complete but not yet renamed
    assert run_until(command, "shard-temp") == -signal.SIGKILL
    assert not out.exists()
    assert len(finished_shards()) == 1 and len(temp_shards()) == 1

    # 3. resumed (the stray temp shard is deleted and redone), killed while combining
    assert run_until(command, "combine") == -signal.SIGKILL
    assert not out.exists()
    assert len(finished_shards()) == 5 and temp_shards() == []
    assert len(list(tmp_path.glob("crash.h5.tmp-*"))) == 1  # the half-combined file, never under the real name

    # 4. resumed, killed after the rename but before the parts folder is removed
    assert run_until(command, "renamed") == -signal.SIGKILL
    assert out.exists() and parts.exists()
    assert list(tmp_path.glob("crash.h5.tmp-*")) == []
    assert FeatureCache(out).info.num_videos == 5  # complete the moment it has its name

    # 5. the last run finds the cache up to date and cleans up
    run_until(command, None)
    assert not parts.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["crash.h5"]
    assert verify_cache(out).ok
    got, want = datasets(out), datasets(tiny_cache)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes(), key


def test_kill_before_any_shard_leaves_nothing_that_looks_finished(
    tiny_cache: Path, tiny_bench: Path, tmp_path: Path
) -> None:
    out = tmp_path / "early.h5"
    command = build_command(tiny_bench, out, tiny_cache.parent / "detector.pt")
    assert run_until(command, "shard-temp") == -signal.SIGKILL
    parts = tmp_path / "early.h5.parts"
    assert not out.exists() and list(parts.glob("*.h5")) == []
    # the temp shard is complete inside, but its name says it is not: a re-run redoes it
    run_until(command, None)
    assert verify_cache(out).ok and not parts.exists()
