"""Feature cache speed and size, every number measured in this run on the same videos.

Usage::

    python benchmarks/cache.py [--videos data/bench] [--count 12] [--weights PATH] [--rounds 3] [--engine NAME ...]

Takes the first ``--count`` val videos of ``--videos`` (or generates that many 96-frame
videos into a temporary folder when the dataset is absent) and prints:

* build throughput of the ``interleave`` section, once per engine of the build's extractors
  (``--engine``, repeatable; default ``eager`` and ``onnxruntime``, set for each build
  through ``$GISTGYM_BUILD_ENGINE``, see :func:`gistgym.backbones.engines.use_build_engine`;
  the bare forward pass runs on the same engine): frames/s of ``build_cache`` with one worker, everything included
  (dataset parsing, decoding, every extractor, ground truth, checksums, shard write +
  fsync, combine, metadata), as a ratio of (a) the bare forward pass of every extractor on
  already-decoded frames and (b) decoding + that forward pass, which any build must do. The
  gap to (b) is what caching costs (goal >= 0.9). End to end includes a build's fixed setup
  (loading the model, counting FLOPs), also shown without it: that is what a whole-dataset
  build approaches. The last line is measured inside each build (time in decoding and the
  forward passes over the build's wall time), so it is immune to drift between measurements;
  with one worker the next video is decoded in a thread during the forward pass, so it can
  exceed 1;
* episode load throughput (``FeatureCache.load_episode``: features of every extractor and
  ground truth, finite checks on, warm page cache) as a ratio of copying the same arrays
  from memory, and what checking each dataset's recorded sha256 on its first load costs
  (first loads with and without the check, ratio of medians);
* file size per frame and compression ratio, for the default storage and the other options;
* a local build with 2 worker processes against 1 (wall-time speed-up).

Decode, forward and build are timed next to each other in ``--rounds`` rounds (alternating
order) and each ratio is the median of the rounds' ratios: on a shared machine the speed
drifts by tens of percent from minute to minute, which adjacent measurements cancel.

Weights: ``--weights``, else the shipped ones, else a random detector with spread BN
statistics (feature values then look like a trained model's; speed does not depend on them).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gistgym.backbones.detector import InterleavedDetector, default_detector_config
from gistgym.backbones.engines import BUILD_ENGINE_ENV, check_engine, use_build_engine
from gistgym.backbones.flops import step_costs
from gistgym.backbones.weights import DEFAULT_WEIGHTS, save_detector
from gistgym.errors import GistgymError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.build import DetectorSource, build_cache
from gistgym.feature_cache.hdf5 import COMPRESSIONS, CacheFile, write_shard
from gistgym.feature_cache.sections import FrozenModels, interleave_features
from gistgym.videos.dataset import load_dataset, read_video_file


def pick_weights(arg: str | None, tmp: Path) -> tuple[Path, str]:
    """The weights file to use and a line saying where it came from."""
    if arg:
        return Path(arg), f"weights: {arg}"
    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS, f"weights: shipped {DEFAULT_WEIGHTS}"
    torch.manual_seed(0)
    model = InterleavedDetector(default_detector_config()).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g))
    path = tmp / "random.pt"
    save_detector(path, model, {"command": "benchmarks/cache.py (random init)"})
    return path, "weights: none shipped -> random init with spread BN statistics"


def subset(root: Path, ids: list[str], folder: Path) -> Path:
    """A dataset folder of just ``ids`` (one split ``bench``), symlinking the video folders of ``root``."""
    folder.mkdir()
    for vid in ids:
        (folder / vid).symlink_to((root / vid).resolve(), target_is_directory=True)
    index = json.loads((root / "dataset.json").read_text())
    index["splits"] = {"bench": ids}
    (folder / "dataset.json").write_text(json.dumps(index))
    return folder


def pick_videos(root: Path, count: int, tmp: Path) -> tuple[Path, list[str], str]:
    """A dataset folder of ``count`` videos, their ids, and a description."""
    if (root / "dataset.json").is_file():
        ds = load_dataset(root)
        ids = list(ds.splits.get("val", ()))[:count] or [v for s in ds.splits.values() for v in s][:count]
        line = f"videos: {len(ids)} val videos of {root}"
    else:
        from gistgym.videos.benchmark import make_benchmark

        line = f"videos: {count} freshly generated ({root} absent)"
        root = make_benchmark(tmp / "generated", seed=0, split_sizes={"bench": count}, progress=False)
        ids = list(load_dataset(root).splits["bench"])
    return subset(root, ids, tmp / "videos"), ids, line


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def checksum_cost(cache_file: Path, ids: list[str], repeats: int) -> list[str]:
    """Lines on what checking each dataset's sha256 on its first load costs, measured here.

    Every pass opens a fresh reader, so every load is a first load (the checked case; a
    reader checks a dataset once, later loads cost nothing extra). Passes with and without
    the check alternate and each ratio is the median over passes.
    """
    ratios: list[float] = []
    checked: list[float] = []
    unchecked: list[float] = []
    FeatureCache(cache_file).close()  # warm the page cache
    for _ in range(max(3, repeats)):
        for check, into in ((True, checked), (False, unchecked)):
            cache = FeatureCache(cache_file, check_checksums=check)
            into.append(timed(lambda: [cache.load_episode(v) for v in ids]))  # noqa: B023 (called right here)
            cache.close()
        ratios.append(checked[-1] / unchecked[-1])
    again = FeatureCache(cache_file)
    [again.load_episode(v) for v in ids]
    later = timed(lambda: [again.load_episode(v) for v in ids])
    again.close()
    n = len(ids)
    return [
        "Episode load, checking every dataset's recorded sha256 on its first load in a reader",
        f"  first load, checked:       {np.median(checked) / n * 1e3:6.2f} ms per episode",
        f"  first load, unchecked:     {np.median(unchecked) / n * 1e3:6.2f} ms per episode",
        f"  checked / unchecked:       {np.median(ratios):6.2f}  (rounds: {', '.join(f'{r:.2f}' for r in ratios)})",
        f"  later loads, same reader:  {later / n * 1e3:6.2f} ms per episode (already checked: no hashing)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", default="data/bench", help="dataset folder (used read-only)")
    parser.add_argument("--count", type=int, default=12, help="videos to use (>= 2)")
    parser.add_argument("--weights", default=None, help="detector weights (.pt with its .json sidecar)")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the episodes when timing loads")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of decode/forward/build timing (median ratio)")
    parser.add_argument("--engine", action="append", default=None, help="engine of the build's extractors (repeatable)")
    args = parser.parse_args(argv)
    if args.count < 2 or args.rounds < 1 or args.repeats < 1:
        parser.error("--count must be >= 2, --rounds and --repeats >= 1")
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gistgym-cache-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            weights, weights_line = pick_weights(args.weights, tmp)
            videos, ids, videos_line = pick_videos(Path(args.videos), args.count, tmp)
            engines = tuple(dict.fromkeys(args.engine or ["eager", "onnxruntime"]))
            for engine in engines:
                check_engine(engine)
            model = DetectorSource.from_path(weights).load()
            models = FrozenModels(model)
        except GistgymError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ds = load_dataset(videos)
        records = [ds.video(v) for v in ids]
        frames_total = sum(r.num_frames for r in records)
        print(weights_line)
        print(videos_line, f"({frames_total} frames of {records[0].width}x{records[0].height})")
        cpu = platform.processor() or platform.machine()
        print(f"torch {torch.__version__}, 1 thread, {cpu}, {os.cpu_count()} CPUs")
        print()

        # Warm-up of both sides: the first forward pass, and the first FLOP count of the
        # process (torch.utils.flop_counter imports ~1.5 s of torch modules once).
        decoded = [read_video_file(r.path) for r in records]
        interleave_features(models, decoded[0][:8], records[0])
        step_costs(model, measure=False)

        def build(folder: Path, out: Path, inside: list[float], workers: int = 1) -> float:
            # the interleave section only: the bare forward pass below is that section's computation
            # (the keyframe and glimpse sections run their own networks, the flow net over every
            # (frame, distance) pair, which the ratio would otherwise charge to caching)
            report = build_cache(
                folder,
                out,
                weights=weights,
                workers=workers,
                sections=("interleave",),
                measure_latency=False,
                progress=False,
            )
            if workers == 1:  # share of its wall time spent decoding + forward
                inside.append(report.compute_seconds / report.seconds)
            return report.seconds

        def setup() -> None:
            step_costs(DetectorSource.from_path(weights).load(), measure=False)

        def median(values: list[float]) -> float:
            return float(np.median(values))

        def show(values: list[float]) -> str:
            return f"{median(values):6.3f}  (rounds: {', '.join(f'{v:.3f}' for v in values)})"

        # Per engine of the build's extractors (GISTGYM_BUILD_ENGINE, read by every build process):
        # rounds of adjacent measurements (order alternating between rounds), each giving its own
        # ratio; the median ratio cancels the slow drift of a shared machine's speed.
        cache_file = tmp / "one.h5"
        forward_fps: dict[str, float] = {}
        for engine in engines:
            os.environ[BUILD_ENGINE_ENV] = engine
            use_build_engine(model, engine)  # the bare forward pass on the same engine
            interleave_features(models, decoded[0][:8], records[0])  # warm-up (compiling, sessions)
            inside: list[float] = []
            rounds: list[dict[str, float]] = []
            for round_ in range(args.rounds):
                t: dict[str, float] = {}
                out = tmp / f"round{round_}.h5"
                steps: list[tuple[str, Callable[[], object]]] = [
                    ("decode", lambda: [read_video_file(r.path) for r in records]),
                    (
                        "forward",
                        lambda: [interleave_features(models, f, r) for f, r in zip(decoded, records, strict=True)],
                    ),
                    ("setup", setup),
                    ("build", lambda out=out, inside=inside: build(videos, out, inside)),  # type: ignore[misc]
                ]
                for name, fn in steps if round_ % 2 == 0 else steps[::-1]:
                    t[name] = timed(fn)
                if round_ == 0 and not cache_file.exists():
                    out.rename(cache_file)
                else:
                    out.unlink()
                rounds.append(t)

            fps_forward = median([frames_total / t["forward"] for t in rounds])
            forward_fps[engine] = fps_forward
            fps_decode_forward = median([frames_total / (t["decode"] + t["forward"]) for t in rounds])
            fps_build = median([frames_total / t["build"] for t in rounds])
            r_forward = [t["forward"] / t["build"] for t in rounds]
            r_decode = [(t["decode"] + t["forward"]) / t["build"] for t in rounds]
            r_steady = [(t["decode"] + t["forward"]) / (t["build"] - t["setup"]) for t in rounds]

            print(
                f"Build throughput, extractors on {engine} (one worker; medians of {args.rounds} rounds of "
                "adjacent measurements)"
            )
            print(f"  bare forward, every extractor, decoded frames: {fps_forward:7.1f} frames/s")
            print(f"  decode + bare forward:                         {fps_decode_forward:7.1f} frames/s")
            print(f"  cache build, end to end:                       {fps_build:7.1f} frames/s")
            print(
                f"  fixed setup of every build (model load + FLOP count): {median([t['setup'] for t in rounds]):.2f} s"
            )
            print(f"  build / bare forward:                          {show(r_forward)}")
            print(f"  build / (decode + bare forward):               {show(r_decode)}")
            print(f"  same, without the fixed setup [goal >= 0.9]:   {show(r_steady)}")
            print(f"  inside each build, (decode + forward) / wall:  {show(inside)}")
            if engine == engines[0]:
                build_s = median([t["build"] for t in rounds])
                build2_s = build(videos, tmp / "two.h5", [], workers=2)
                print(
                    f"Local build, 2 workers: {frames_total / build2_s:.1f} frames/s end to end, "
                    f"x{build_s / build2_s:.2f} the speed of 1 worker (includes starting 2 spawned processes; "
                    f"{os.cpu_count()} CPUs shared with whatever else runs)"
                )
            print()
        if len(engines) > 1:
            base = forward_fps[engines[0]]
            print(
                "Bare forward by engine (same run): "
                + ", ".join(
                    f"{e} {fps:.1f} frames/s ({fps / base:.2f}x {engines[0]})" for e, fps in forward_fps.items()
                )
            )
            print()
        os.environ.pop(BUILD_ENGINE_ENV, None)

        # episode loads against copying the same arrays from memory
        cache = FeatureCache(cache_file)
        episodes = {v: cache.load_episode(v) for v in ids}  # warm the page cache and the handle
        in_memory = {
            v: [*ep.sections["interleave"].values(), ep.frame_offsets, ep.boxes, ep.labels, ep.track_ids, ep.speeds]
            for v, ep in episodes.items()
        }
        episode_bytes = sum(a.nbytes for arrays in in_memory.values() for a in arrays)
        load_s = timed(lambda: [cache.load_episode(v) for _ in range(args.repeats) for v in ids])
        copy_s = timed(lambda: [[a.copy() for a in in_memory[v]] for _ in range(args.repeats) for v in ids])
        n = args.repeats * frames_total
        per_episode_ms = load_s / (args.repeats * len(ids)) * 1e3
        print("Episode load (whole video: every extractor's features + ground truth)")
        print(
            f"  FeatureCache.load_episode: {n / load_s:8.0f} frames/s "
            f"({args.repeats * episode_bytes / load_s / 1e6:5.0f} MB/s, {per_episode_ms:.2f} ms per episode)"
        )
        copy_mb_s = args.repeats * episode_bytes / copy_s / 1e6
        print(f"  numpy copy from memory:    {n / copy_s:8.0f} frames/s ({copy_mb_s:5.0f} MB/s)")
        print(f"  load / in-memory copy:     {copy_s / load_s:8.3f}")
        print()
        print("\n".join(checksum_cost(cache_file, ids, args.repeats)))
        print()

        print("Size on disk (float16 features; ratio = raw bytes / bytes on disk)")
        raw = sum(s.nbytes for s in cache.dataset_storage())
        size = cache_file.stat().st_size
        cache.close()
        print(
            f"  whole cache file, default storage:    {size / frames_total:7.0f} B/frame, ratio {raw / size:.2f} "
            f"(float32 features would make it {2 * raw / size:.2f}x larger)"
        )
        feature_raw = sum(a.nbytes for v in ids for a in episodes[v].sections["interleave"].values())
        for option in COMPRESSIONS:
            files = [tmp / f"{option}.{i}.h5" for i in range(len(ids))]
            write_s = 0.0
            for path, v in zip(files, ids, strict=True):
                arrays = {f"interleave/{k}": np.asarray(a) for k, a in episodes[v].sections["interleave"].items()}
                t = time.perf_counter()
                write_shard(path, file_attrs={}, video_id=v, video_attrs={}, arrays=arrays, compression=option)
                write_s += time.perf_counter() - t
            handles = [CacheFile(p) for p in files]
            t = time.perf_counter()
            for _ in range(args.repeats):
                for h, v in zip(handles, ids, strict=True):
                    h.read_group(f"videos/{v}/interleave")
            read_s = (time.perf_counter() - t) / (args.repeats * len(ids))
            for h in handles:
                h.close()
            opt_size = sum(p.stat().st_size for p in files)
            layout = "16-frame chunks" if COMPRESSIONS[option] else "contiguous"
            print(
                f"  features only, {option:<4} {layout:<15}: {opt_size / frames_total:7.0f} B/frame, "
                f"ratio {feature_raw / opt_size:.2f}, write {write_s / len(ids) * 1e3:5.1f} ms/video, "
                f"read {read_s * 1e3:5.2f} ms/video"
            )
    print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
