"""The README's snippet and the scripts in ``examples/`` run as a newcomer runs them (on tiny data)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_readme_snippet_runs(keyframe_cache: Path, glimpse_cache: Path) -> None:
    """The README's environment snippet, on the tiny caches (short clips: the tiny videos have 24 frames)."""
    (block,) = re.findall(r"## The environments\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = block.replace('cache_path="data/demo.h5"', f"cache_path={str(keyframe_cache)!r}, clip_len=6")
    code = code.replace('cache_path="data/glimpse-demo.h5"', f"cache_path={str(glimpse_cache)!r}")
    assert code.count("clip_len=6") == 2 and str(glimpse_cache) in code
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert np.isfinite(namespace["reward"]) and "margin" in namespace["info"]


def test_handwritten_policy_runs_on_every_env(keyframe_cache: Path, glimpse_cache: Path, tmp_path: Path) -> None:
    out = _run(
        "handwritten_policy.py", "--cache", str(keyframe_cache), "--glimpse-cache", str(glimpse_cache),
        "--episodes", "2", "--clip-len", "8", "--active", "2", "--idle", "4", cwd=tmp_path,
    )  # fmt: skip
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["Interleave-v0", "Keyframe-v0", "Glimpse-v0"]
    assert "fixed tau=" in lines[0] and "every " in lines[1]


def test_train_compare_export_and_detect(tiny_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    out = _run(
        "train_and_compare.py", "--cache", str(tiny_cache), "--out", str(tmp_path / "ex"), "--gammas", "0.5",
        "--steps", "96", "--clip-len", "8", cwd=tmp_path,
    )  # fmt: skip
    assert "| tau=9 |" in out and "ddqn-g0.5" in out and (tmp_path / "ex" / "compare" / "pareto.png").is_file()
    video = tiny_bench / "val_0000" / "video.mp4"
    out = _run(
        "export_and_detect.py", "--run", str(tmp_path / "ex" / "runs" / "ddqn-g0.5"), "--video", str(video),
        "--out", str(tmp_path / "det"), "--weights", str(tiny_cache.parent / "detector.pt"), cwd=tmp_path,
    )  # fmt: skip
    schedule = re.search(r"schedule \(H = heavy\): ([H.]+)", out)
    assert schedule is not None and schedule.group(1).startswith("H")  # frame 0 always runs the heavy extractor
    assert (tmp_path / "det" / "summary.json").is_file() and (tmp_path / "det-policy" / "policy.onnx").is_file()
