"""Shared fixtures. Tests run torch on one thread (two threads on a loaded 2-core box crawl)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic benchmark (2 train, 2 val, 1 test videos of 24 frames)."""
    from gistgym.videos.benchmark import make_benchmark
    from gistgym.videos.synthetic import SyntheticConfig

    out = tmp_path_factory.mktemp("bench")
    return make_benchmark(out, seed=3, split_sizes={"train": 2, "val": 2, "test": 1}, config=SyntheticConfig(num_frames=24), progress=False)
