"""The cache fuzz harness (benchmarks/fuzz_cache.py), small and fixed-seed: no traceback, no silent wrong result.

Every flipped 16-byte block of a small cache (half in dataset bytes, half in HDF5 headers,
B-trees, heaps and attributes) must end in a typed one-line error, be caught by ``verify``, or
change nothing any consumer reads. The full run (``--flips 500``) is in the closing note of issue 19.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

FLIPS = 16
SEED = 19


def load_harness() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_cache.py"
    spec = importlib.util.spec_from_file_location("fuzz_cache", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_cache"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load_harness()


def test_classification(harness: ModuleType) -> None:
    Run = harness.Run
    base = {k: Run("ok", k) for k in ("info", "verify", "env", "compare")}
    assert harness.classify(dict(base), base) == "harmless"
    assert harness.classify({**base, "verify": Run("reported")}, base) == "caught by verify"
    assert harness.classify({**base, "env": Run("error"), "verify": Run("reported")}, base) == "one-line error"
    assert harness.classify({**base, "compare": Run("ok", "other"), "env": Run("error")}, base) == "silent wrong result"
    assert harness.classify({**base, "info": Run("traceback")}, base) == "traceback"


def test_flipped_blocks_end_in_one_line_errors_or_nothing_read(harness: ModuleType, tmp_path: Path) -> None:
    cache = harness.make_small_cache(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    _, results = harness.fuzz(cache, FLIPS, SEED, work)
    counts = Counter(f.category for f in results)
    report = harness.table(results) + "\n" + "\n".join(harness.findings(results))
    assert counts["traceback"] == 0 and counts["silent wrong result"] == 0, report
    assert {f.region for f in results} == {"data", "metadata"}
    # flips in the bytes of datasets every consumer reads are refused when read, not only by verify
    assert counts["one-line error"] >= FLIPS // 4, report
    assert sum(counts.values()) == FLIPS
