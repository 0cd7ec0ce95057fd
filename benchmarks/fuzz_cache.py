"""Fuzz the feature cache: flip 16-byte blocks of a small cache and see who notices.

Usage::

    python benchmarks/fuzz_cache.py --flips 500 --seed 0 [--cache FILE] [--json OUT.json]

Builds a small cache (or takes ``--cache``: a cache with an ``interleave`` section and at
least 4 ``val`` videos), runs everything below once on the undamaged file, then for each
flip writes a copy with one 16-byte block XOR-ed with random non-zero bytes (half of the
flips inside dataset bytes, half in the rest: HDF5 headers, B-trees, heaps, attributes) and
runs, in this process, the functions the command line runs:

* ``gistgym cache info FILE --json`` and ``gistgym cache verify FILE --json``
  (:func:`gistgym.scripts.cli.main`: a typed error is its one line and exit 2);
* ``gym.make("gistgym/Interleave-v0")`` on the cache, then 50 steps with fixed actions and
  seeds (episodes reset as they end);
* :func:`gistgym.agents.compare.compare` on the first 4 ``val`` videos (heavy, light,
  tau=3, the myopic oracle).

Each flip is classified by what these runs did, worst first:

* ``traceback``: an exception that is not one of gistgym's typed errors;
* ``silent wrong result``: ``info``, the environment or ``compare`` returned a result that
  differs from the undamaged file's, without raising;
* ``one-line error``: a consumer (``info``, ``gym.make``/``step``, ``compare``) refused the
  file with a typed error (the command line prints it as one line);
* ``caught by verify``: the consumers' results are identical, and ``verify`` reported the damage;
* ``harmless``: everything identical and ``verify`` OK (bytes nothing reads: free space,
  padding, unused header fields).

The goal is 0 tracebacks and 0 silent wrong results. ``tests/test_fuzz_cache.py`` runs a
small fixed-seed version inside ``make test``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import gc
import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = ("traceback", "silent wrong result", "one-line error", "caught by verify", "harmless")
BLOCK = 16
STEPS = 50
COMPARE_VIDEOS = 4


# --- the cache -------------------------------------------------------------------------------------------


def make_small_cache(folder: Path, *, frames: int = 24) -> Path:
    """A cache of a fresh synthetic benchmark (2 train, 4 val videos of ``frames`` frames), ``interleave`` only.

    Built with the shipped detector (its detections hit and miss, so a changed feature moves
    mAP), or, without it, a random detector with spread BN statistics (as ``tests/conftest.py``).
    """
    import torch

    from gistgym.backbones.weights import DEFAULT_WEIGHTS
    from gistgym.feature_cache.build import build_cache
    from gistgym.videos.benchmark import make_benchmark
    from gistgym.videos.synthetic import SyntheticConfig

    torch.set_num_threads(1)
    bench = make_benchmark(
        folder / "bench",
        seed=3,
        split_sizes={"train": 2, "val": COMPARE_VIDEOS},
        config=SyntheticConfig(num_frames=frames),
        progress=False,
    )
    weights = DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else _random_weights(folder)
    out = folder / "small.h5"
    build_cache(
        bench, out, weights=weights, sections=("interleave",), measure_latency=False, progress=False, log=lambda _: None
    )
    return out


def _random_weights(folder: Path) -> Path:
    import torch

    from gistgym.backbones.detector import InterleavedDetector, default_detector_config
    from gistgym.backbones.weights import save_detector

    torch.manual_seed(0)
    model = InterleavedDetector(default_detector_config()).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g))
    path = folder / "detector.pt"
    save_detector(path, model.requires_grad_(False), {"command": "benchmarks/fuzz_cache.py"})
    return path


def unseal(path: Path) -> None:
    """Remove the metadata seal (what a cache built before it existed looks like)."""
    import h5py

    from gistgym.feature_cache import schema

    with h5py.File(path, "a") as f:
        del f.attrs[schema.ATTR_SEAL]


def data_ranges(path: Path) -> list[tuple[int, int, str]]:
    """``(start, end, dataset)`` byte ranges of every contiguous dataset's data in the file."""
    import h5py

    ranges: list[tuple[int, int, str]] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            offset, size = item.id.get_offset(), item.id.get_storage_size()
            if offset is not None and size:
                ranges.append((int(offset), int(offset) + int(size), name))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return sorted(ranges)


# --- what runs on each file --------------------------------------------------------------------------------


@dataclass
class Run:
    """What one consumer did on one file."""

    status: str
    """``ok`` (returned; ``digest`` says what), ``reported`` (verify found differences),
    ``error`` (a typed gistgym error: one line) or ``traceback`` (anything else)."""
    digest: str = ""
    detail: str = ""


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_jsonable).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [str(value.dtype), list(value.shape), hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _guard(fn: Callable[[], Run]) -> Run:
    from gistgym.errors import GistgymError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except GistgymError as exc:
        return Run("error", detail=" ".join(str(exc).split())[:300])
    except Exception as exc:  # the harness's point: anything untyped is a finding
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return Run("traceback", detail=f"{type(exc).__name__}: {exc} ({Path(tb.filename).name}:{tb.lineno})"[:400])


def _cli(argv: Sequence[str]) -> tuple[int, str, str]:
    from gistgym.scripts.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def run_info(path: Path) -> Run:
    """``gistgym cache info FILE --json``."""

    def go() -> Run:
        code, out, err = _cli(["cache", "info", str(path), "--json"])
        if code == 2:
            return Run("error", detail=err.strip())
        summary = json.loads(out)
        summary.pop("path")  # the damaged copies live under another name
        return Run("ok", _digest(summary))

    return _guard(go)


def run_verify(path: Path) -> Run:
    """``gistgym cache verify FILE --json``."""

    def go() -> Run:
        code, out, err = _cli(["cache", "verify", str(path), "--json"])
        if code == 2:
            return Run("error", detail=err.strip())
        report = json.loads(out)
        if code == 1:
            where = ", ".join(f"{m['where']}: {m['problem']}" for m in report["mismatches"][:3])
            return Run("reported", detail=where)
        return Run("ok", _digest({k: v for k, v in report.items() if k != "path"}))

    return _guard(go)


def run_env(path: Path, steps: int = STEPS) -> Run:
    """``gym.make`` + ``steps`` steps with fixed actions, resets seeded."""
    import gymnasium as gym

    import gistgym.envs  # noqa: F401 (registers the ids)
    from gistgym.envs import INTERLEAVE_ENV_ID

    def go() -> Run:
        env = gym.make(INTERLEAVE_ENV_ID, cache_path=str(path), split="train", clip_len=8)
        try:
            actions = np.random.default_rng(0).integers(0, 2, size=steps)
            seen: list[Any] = []
            obs, info = env.reset(seed=0)
            seen.append((obs, info))
            for a in actions:
                obs, reward, terminated, truncated, info = env.step(int(a))
                seen.append((obs, float(reward), terminated, truncated, info))
                if terminated or truncated:
                    seen.append(env.reset())
            return Run("ok", _digest(seen))
        finally:
            env.close()

    return _guard(go)


def run_compare(path: Path, out: Path) -> Run:
    """:func:`gistgym.agents.compare.compare` on the first 4 val videos."""
    from gistgym.agents.compare import CompareConfig, compare

    def go() -> Run:
        config = CompareConfig.of(
            cache=str(path),
            split="val",
            taus=(3,),
            max_videos=COMPARE_VIDEOS,
            out=str(out),
            overwrite=True,
            progress=False,
        )
        comparison = compare(config)
        return Run("ok", _digest(comparison.as_json()))

    return _guard(go)


RUNS: dict[str, Callable[[Path, Path], Run]] = {
    "info": lambda path, work: run_info(path),
    "verify": lambda path, work: run_verify(path),
    "env": lambda path, work: run_env(path),
    "compare": lambda path, work: run_compare(path, work / "compare"),
}
CONSUMERS = ("info", "env", "compare")
"""Runs whose result a user would take at face value (verify is the checker)."""


def classify(runs: dict[str, Run], baseline: dict[str, Run]) -> str:
    """The category of :data:`CATEGORIES` of one flip's runs against the undamaged file's."""
    if any(r.status == "traceback" for r in runs.values()):
        return "traceback"
    if any(runs[c].status == "ok" and runs[c].digest != baseline[c].digest for c in CONSUMERS):
        return "silent wrong result"
    if any(runs[c].status == "error" for c in CONSUMERS):
        return "one-line error"
    if runs["verify"].status in ("reported", "error") or runs["verify"].digest != baseline["verify"].digest:
        return "caught by verify"
    return "harmless"


def run_all(path: Path, work: Path) -> dict[str, Run]:
    """Every run of :data:`RUNS` on ``path``."""
    runs = {name: fn(path, work) for name, fn in RUNS.items()}
    gc.collect()  # drop any reader a failed run left behind, with its HDF5 handle
    return runs


# --- flipping ----------------------------------------------------------------------------------------------


@dataclass
class Flip:
    """One damaged copy and what happened to it."""

    index: int
    offset: int
    region: str
    """``data`` or ``metadata``."""
    where: str
    """The dataset whose bytes were hit, or ``metadata``."""
    category: str = ""
    runs: dict[str, Run] = field(default_factory=dict)


def pick_offsets(size: int, ranges: Sequence[tuple[int, int, str]], count: int, seed: int) -> list[tuple[int, str]]:
    """``count`` block offsets, alternating between dataset bytes and everything else."""
    rng = np.random.default_rng(seed)
    in_data = np.zeros(size, dtype=bool)
    for start, end, _ in ranges:
        in_data[start:end] = True
    data_idx = np.flatnonzero(in_data[: size - BLOCK + 1])
    meta_idx = np.flatnonzero(~in_data[: size - BLOCK + 1])
    out: list[tuple[int, str]] = []
    for i in range(count):
        pool, region = (data_idx, "data") if i % 2 == 0 and len(data_idx) else (meta_idx, "metadata")
        out.append((int(pool[rng.integers(len(pool))]), region))
    return out


def _dataset_at(offset: int, ranges: Sequence[tuple[int, int, str]]) -> str:
    for start, end, name in ranges:
        if start <= offset < end or start < offset + BLOCK <= end:
            return name
    return "metadata"


def fuzz(
    cache: Path, flips: int, seed: int, work: Path, *, log: Callable[[str], None] = lambda _: None
) -> tuple[dict[str, Run], list[Flip]]:
    """Run :func:`run_all` on ``cache`` and on ``flips`` damaged copies; the baseline and every flip."""
    pristine = cache.read_bytes()
    baseline = run_all(cache, work)
    bad = {k: r for k, r in baseline.items() if r.status != "ok"}
    if bad:
        raise SystemExit(f"the undamaged cache does not pass: {bad}")
    ranges = data_ranges(cache)
    rng = np.random.default_rng(seed + 1)
    results: list[Flip] = []
    target = work / "flipped.h5"
    target.write_bytes(pristine)  # the undamaged bytes under the copies' name give the same results
    again = run_all(target, work)
    if any(again[k].digest != baseline[k].digest for k in RUNS):
        raise SystemExit(f"the runs are not deterministic: {baseline} then {again}")
    for i, (offset, region) in enumerate(pick_offsets(len(pristine), ranges, flips, seed)):
        data = bytearray(pristine)
        mask = rng.integers(1, 256, size=BLOCK, dtype=np.uint8).tobytes()
        data[offset : offset + BLOCK] = bytes(a ^ b for a, b in zip(data[offset : offset + BLOCK], mask, strict=True))
        target.unlink(missing_ok=True)  # a new inode: HDF5 never mistakes it for a file a stale handle holds
        target.write_bytes(bytes(data))
        flip = Flip(i, offset, region, _dataset_at(offset, ranges))
        flip.runs = run_all(target, work)
        flip.category = classify(flip.runs, baseline)
        results.append(flip)
        log(f"flip {i:4d} at {offset:8d} ({flip.where}): {flip.category}")
    target.unlink(missing_ok=True)
    return baseline, results


# --- report ------------------------------------------------------------------------------------------------


def table(results: Sequence[Flip]) -> str:
    """Counts per category, for flips in dataset bytes, in the rest, and in all."""
    by = {region: Counter(f.category for f in results if f.region == region) for region in ("data", "metadata")}
    total = Counter(f.category for f in results)
    lines = [f"{'outcome':<22}{'data':>8}{'metadata':>10}{'all':>8}"]
    for c in CATEGORIES:
        lines.append(f"{c:<22}{by['data'][c]:>8}{by['metadata'][c]:>10}{total[c]:>8}")
    lines.append(f"{'flips':<22}{sum(by['data'].values()):>8}{sum(by['metadata'].values()):>10}{len(results):>8}")
    return "\n".join(lines)


def findings(results: Sequence[Flip], limit: int = 10) -> list[str]:
    """One line per traceback or silent wrong result (the first ``limit``)."""
    out = []
    for f in results:
        if f.category in ("traceback", "silent wrong result"):
            runs = "; ".join(f"{k}={r.status}{': ' + r.detail if r.detail else ''}" for k, r in f.runs.items())
            out.append(f"flip {f.index} at {f.offset} ({f.where}): {f.category}: {runs}")
    return out[:limit]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=100, help="damaged copies to try")
    parser.add_argument("--seed", type=int, default=0, help="seed of offsets and masks")
    parser.add_argument("--cache", default="", help="cache to damage (default: build a small one)")
    parser.add_argument("--json", default="", metavar="FILE", help="also write every flip's outcome as JSON")
    parser.add_argument("--verbose", action="store_true", help="one line per flip on stderr")
    parser.add_argument(
        "--unsealed",
        action="store_true",
        help="remove the metadata seal first (a cache built before it existed: edited attributes go unnoticed)",
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gistgym-fuzz-") as tmp:
        work = Path(tmp)
        if args.cache:
            cache = work / "cache.h5"
            shutil.copy(args.cache, cache)
            built = f"copy of {args.cache}"
        else:
            cache = make_small_cache(work)
            built = f"small cache built in {time.perf_counter() - start:.1f} s"
        if args.unsealed:
            unseal(cache)
            built += ", seal removed"
        size = cache.stat().st_size
        in_data = sum(e - s for s, e, _ in data_ranges(cache))
        log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else (lambda _: None)
        _, results = fuzz(cache, args.flips, args.seed, work, log=log)
    seconds = time.perf_counter() - start
    print(
        f"fuzz_cache: {args.flips} flips of {BLOCK} bytes, seed {args.seed}, {built}; file {size} bytes "
        f"({in_data} in dataset bytes); {seconds:.0f} s"
    )
    print(table(results))
    for line in findings(results):
        print("  " + line)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "flips": args.flips,
                    "seed": args.seed,
                    "counts": dict(Counter(f.category for f in results)),
                    "results": [asdict(f) for f in results],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
