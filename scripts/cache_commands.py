"""``gistgym cache build | info | verify``: thin wrappers over :mod:`gistgym.feature_cache`.

Exit codes: 0 = fine, 1 = ``verify`` found checksum mismatches, 2 = bad input (one line on
stderr, printed by ``gistgym.scripts.cli.main``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gistgym.scripts.args import field_docs

EXIT_MISMATCH = 1


@dataclass(frozen=True)
class CacheBuildArgs:
    """Arguments of ``gistgym cache build``."""

    videos: str = "data/bench"
    """Dataset folder (made by `gistgym videos make` or in its layout)."""
    out: str = ""
    """Cache file to write (HDF5). Required."""
    split: tuple[str, ...] = ()
    """Splits to cache (default: every split of the dataset; each video's split is recorded)."""
    sections: tuple[str, ...] = ()
    """Sections to build (default: interleave and keyframe for a detection dataset, glimpse for an untrimmed one)."""
    weights: str = ""
    """Detector weights (.pt with its .json sidecar); empty = the shipped weights."""
    model_weights: tuple[str, ...] = ()
    """Weights of the sections' other frozen models as ROLE=PATH (default: the shipped ones)."""
    workers: int = 1
    """Local worker processes (1 = in this process); with --ray and no address, the local Ray instance's CPUs."""
    ray: str | None = None
    """Run the per-video work as Ray tasks: --ray alone starts a local instance, --ray ADDRESS joins a cluster."""
    compression: str = "none"
    """Storage of the features: none (fastest episode loads, the measured default), lzf or gzip."""
    overwrite: bool = False
    """Replace an existing --out that was built from other inputs."""
    fresh: bool = False
    """Drop the finished shards an interrupted or failed build left in OUT.parts/ instead of resuming from them."""
    latency: bool = True
    """Measure each module's latency for the cache metadata (--no-latency skips ~2 s)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class CacheFileArgs:
    """Arguments of ``gistgym cache info`` and ``gistgym cache verify``."""

    file: str
    """The cache file."""
    json: bool = False
    """Print one JSON object instead of text."""
    weights: str = ""
    """Also require the cache to be built from these weights (their sidecar's sha256)."""
    sections: tuple[str, ...] = ()
    """Also require these sections."""
    progress: bool | None = None
    """verify: show a progress bar (default: only when stderr is a terminal and --json is not given)."""


def _expected_sha(weights: str) -> str | None:
    if not weights:
        return None
    from gistgym.backbones.weights import read_sidecar

    return str(read_sidecar(Path(weights)).get("sha256"))


def _role_paths(items: tuple[str, ...]) -> dict[str, str]:
    from gistgym.errors import ConfigError

    out: dict[str, str] = {}
    for item in items:
        role, sep, path = item.partition("=")
        if not sep or not role or not path:
            raise ConfigError(f"--model-weights takes ROLE=PATH (e.g. dff=weights/dff.pt), got {item!r}")
        out[role] = path
    return out


def cmd_cache_build(ns: argparse.Namespace) -> int:
    """Build or resume a feature cache."""
    from gistgym.errors import ConfigError

    if not ns.out:
        raise ConfigError("--out is required (the cache file to write, e.g. runs/bench.h5)")
    # One torch thread (the build also runs every worker on one): two threads on a loaded
    # 2-core machine crawl, and measured latencies stay comparable.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from gistgym.feature_cache.build import build_cache

    report = build_cache(
        ns.videos,
        ns.out,
        splits=ns.split or (),
        sections=ns.sections or (),
        weights=ns.weights or None,
        model_weights=_role_paths(ns.model_weights or ()),
        workers=ns.workers,
        ray=ns.ray,
        compression=ns.compression,
        overwrite=ns.overwrite,
        fresh=ns.fresh,
        measure_latency=ns.latency,
        progress=ns.progress,
    )
    if report.up_to_date:
        print(f"{report.out} is up to date ({report.videos} videos, {report.frames} frames)")
    else:
        print(
            f"wrote {report.out}: {report.videos} videos, {report.frames} frames, "
            f"{report.file_bytes / 1e6:.1f} MB in {report.seconds:.1f} s "
            f"({report.computed} computed, {report.reused} reused from an interrupted run)"
        )
    return 0


def cache_summary(path: str | Path, *, weights: str = "", sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """What ``gistgym cache info`` reports, as a JSON-ready dict.

    Reads metadata only (no data), and checks all of it: every video of the index has a
    finished group, and every attribute and dataset header matches the metadata seal.

    Raises:
        CacheError: The reader refuses the file, or HDF5 cannot read its structures.
        CacheIncompleteError: Video groups of the index are missing or unfinished.
        CacheDataError: An attribute or dataset header differs from the seal.
    """
    from gistgym.errors import CacheError, CacheIncompleteError
    from gistgym.feature_cache.reader import REBUILD_HINT, FeatureCache

    cache = FeatureCache(path, sections=sections, expected_weights_sha256=_expected_sha(weights))
    info = cache.info
    videos = Counter(v.split for v in info.videos)
    frames: dict[str, int] = defaultdict(int)
    for v in info.videos:
        frames[v.split] += v.num_frames
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"bytes": 0, "stored_bytes": 0})
    try:
        unfinished = cache.incomplete_videos()
        if unfinished:
            video, what = unfinished[0]
            kinds = Counter(w for _, w in unfinished)
            counts = " and ".join(f"{n} {w}" for w, n in sorted(kinds.items()))
            error = CacheError if what == "missing" else CacheIncompleteError
            raise error(
                cache.path,
                f"{len(unfinished)} of {info.num_videos} videos in the index have no finished group "
                f"({counts}: a missing group or one without its completion mark; first: {video}); {REBUILD_HINT}",
                field=f"videos/{video}",
                video=video,
            )
        cache.check_metadata_all()
        for ds in cache.dataset_storage():
            parts = ds.path.split("/")
            kind = "/".join(parts[2:]) if parts[0] == "videos" else "/".join(parts[:3])
            by_kind[kind]["bytes"] += ds.nbytes
            by_kind[kind]["stored_bytes"] += ds.stored_bytes
    finally:
        cache.close()
    file_bytes = info.path.stat().st_size
    return {
        "path": str(info.path),
        "schema_version": info.schema_version,
        "gistgym_version": info.gistgym_version,
        "sections": list(info.sections),
        "splits": {s: {"videos": videos[s], "frames": frames[s]} for s in info.splits},
        "videos": info.num_videos,
        "frames": info.num_frames,
        "file_bytes": file_bytes,
        "bytes_per_frame": file_bytes / max(1, info.num_frames),
        "datasets": dict(sorted(by_kind.items())),
        "storage": dict(info.storage),
        "dataset": dict(info.dataset),
        "weights_sha256": info.weights_sha256,
        "model_weights": dict(info.model_weights),
        "modules": dict(info.modules),
        "preprocessing": dict(info.preprocessing),
        "costs": dict(info.costs),
        "sealed": cache.sealed,
    }


def cmd_cache_info(ns: argparse.Namespace) -> int:
    """Print what a cache holds."""
    s = cache_summary(ns.file, weights=ns.weights, sections=tuple(ns.sections or ()))
    if ns.json:
        print(json.dumps(s))
        return 0
    print(
        f"{s['path']}: gistgym feature cache, schema v{s['schema_version']} (written by gistgym {s['gistgym_version']})"
    )
    print(f"sections: {', '.join(s['sections'])}")
    for split, c in s["splits"].items():
        print(f"  {split}: {c['videos']} videos, {c['frames']} frames")
    print(
        f"size: {s['file_bytes'] / 1e6:.1f} MB ({s['bytes_per_frame'] / 1e3:.1f} kB/frame), "
        f"storage {s['storage'].get('compression')} ({s['storage'].get('layout')})"
    )
    for kind, b in s["datasets"].items():
        ratio = b["bytes"] / b["stored_bytes"] if b["stored_bytes"] else float("nan")
        print(f"  {kind}: {b['stored_bytes'] / 1e6:.2f} MB on disk ({b['bytes'] / 1e6:.2f} MB raw, x{ratio:.2f})")
    ds = s["dataset"]
    gen = ds.get("generator") or {}
    classes = len(ds.get("classes", []))
    print(f"dataset: {ds.get('name')} ({classes} classes; generator {gen.get('name')} seed {gen.get('seed')})")
    print(f"weights sha256: {s['weights_sha256']}")
    for role, sha in s["model_weights"].items():
        print(f"  {role} weights sha256: {sha}")
    for e in s["modules"].get("extractors", []):
        c = s["costs"].get("per_extractor", {}).get(e["name"], {})
        print(
            f"  extractor {e['index']} {e['name']}: width x{e['config']['width_mult']}, "
            f"input scale {e['config']['input_scale']}; step {c.get('step_flops', 0) / 1e6:.1f} MFLOPs, "
            f"{c.get('step_seconds', 0) * 1e3:.2f} ms"
        )
    print(f"preprocessing: image {s['preprocessing'].get('image_size')}px, mean {s['preprocessing'].get('mean')}")
    if s["sealed"]:
        print("metadata: sealed (every attribute and dataset header matches the checksums recorded at build)")
    else:
        print("metadata: unsealed (built before gistgym sealed its attributes; rebuild to seal it)")
    return 0


def cmd_cache_verify(ns: argparse.Namespace) -> int:
    """Recompute every checksum; exit 1 on any mismatch."""
    from gistgym.feature_cache.verify import verify_cache

    # a bar is for a person watching: not when stderr is a file or a pipe (a log would keep every frame)
    progress = ns.progress if ns.progress is not None else (not ns.json and sys.stderr.isatty())
    report = verify_cache(
        ns.file,
        expected_weights_sha256=_expected_sha(ns.weights),
        sections=tuple(ns.sections or ()),
        progress=progress,
    )
    sealed = (
        f", {report.attributes} attributes match the seal"
        if report.sealed
        else "; metadata unsealed (built before gistgym sealed its attributes: configurations and costs "
        "cannot be checked; rebuild to seal it)"
    )
    if ns.json:
        print(json.dumps(report.to_dict()))
    elif report.ok:
        print(f"OK: {report.path}: {report.videos} videos, {report.datasets} datasets match their checksums{sealed}")
    else:
        print(
            f"FAILED: {report.path}: {len(report.mismatches)} differences in {report.datasets} datasets"
            f"{'' if report.sealed else ' (metadata unsealed)'} and their metadata"
        )
        for m in report.mismatches:
            print(f"  {m.where}: {m.problem}")
    return 0 if report.ok else EXIT_MISMATCH


def register_cache_commands(sub: Any) -> None:
    """Add the ``cache`` command group to the top-level subparsers."""
    cache = sub.add_parser("cache", help="the HDF5 feature cache").add_subparsers(dest="command", required=True)

    docs = field_docs(CacheBuildArgs)
    p = cache.add_parser("build", help="build (or resume) a feature cache from a dataset and detector weights")
    p.add_argument("--videos", default=CacheBuildArgs.videos, help=docs["videos"])
    p.add_argument("--out", default="", help=docs["out"])
    p.add_argument("--split", action="extend", nargs="+", default=None, metavar="SPLIT", help=docs["split"])
    p.add_argument("--sections", action="extend", nargs="+", default=None, metavar="SECTION", help=docs["sections"])
    p.add_argument("--weights", default="", help=docs["weights"])
    p.add_argument(
        "--model-weights", action="extend", nargs="+", default=None, metavar="ROLE=PATH", help=docs["model_weights"]
    )
    p.add_argument("--workers", type=int, default=1, help=docs["workers"])
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help=docs["ray"])
    p.add_argument("--compression", default="none", choices=("none", "lzf", "gzip"), help=docs["compression"])
    for flag in ("overwrite", "fresh", "latency", "progress"):
        p.add_argument(
            f"--{flag}",
            action=argparse.BooleanOptionalAction,
            default=getattr(CacheBuildArgs, flag),
            help=docs[flag],
        )
    p.set_defaults(func=cmd_cache_build)

    file_docs = field_docs(CacheFileArgs)
    for name, func, text in (
        ("info", cmd_cache_info, "what a cache holds: sections, videos per split, sizes, provenance"),
        ("verify", cmd_cache_verify, "recompute per-dataset checksums; exit 1 on any mismatch"),
    ):
        p = cache.add_parser(name, help=text)
        p.add_argument("file", help=file_docs["file"])
        p.add_argument("--json", action="store_true", help=file_docs["json"])
        p.add_argument("--weights", default="", help=file_docs["weights"])
        p.add_argument(
            "--sections", action="extend", nargs="+", default=None, metavar="SECTION", help=file_docs["sections"]
        )
        if name == "verify":
            p.add_argument(
                "--progress", action=argparse.BooleanOptionalAction, default=None, help=file_docs["progress"]
            )
        p.set_defaults(func=func)
