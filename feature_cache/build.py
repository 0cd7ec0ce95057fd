"""Building a cache: one shard per video, then one combined, self-contained file.

Crash safety by construction::

    <OUT>.parts/                       the build's working folder (flock'ed while a build runs)
      owner.json                       host and pid of the build that last worked in it
      .<video_id>.<random>.h5.tmp      a shard being written (a crash leaves it; the next run deletes it)
      <video_id>.h5                    a finished shard: data, fsync, completion mark, fsync, rename
    <OUT>.tmp-<random>                 the combined file being written (same: deleted if stale)
    <OUT>                              appears only by an atomic rename of a finished combined file

1. Every video is computed and written to its own shard under a temporary name; the
   completion mark is written after the data is flushed and fsynced; the file is closed,
   fsynced and renamed into place. A re-run reuses a shard only if its completion mark is
   set and its identity (schema version, gistgym version, weights sha256, sections,
   storage, video id, sha256 of the video file and annotations) matches; anything else
   is recomputed.
2. When every shard exists, their video groups are **copied** (not linked) into
   ``<OUT>.tmp-XXXX``, the sections' frozen modules and the file identity are written,
   the file is fsynced and renamed to ``<OUT>``; then the parts folder is removed. The
   result is one self-contained file: an environment can be given it alone. Copying
   costs a second write of the data (a few ms per video), which buys a file that never
   dangles, can be moved or shipped alone, and cannot change when a part file changes —
   HDF5 external/virtual links would give none of these.

A reader therefore never sees a half-written cache.

Workers. The per-video work (:func:`compute_video`: decode, run every section) runs in
the calling process (``workers=1``; the next video is decoded in a thread meanwhile), in
``workers`` processes started with ``spawn`` (never ``fork`` a process holding torch or h5py
state), or as Ray tasks (``ray=ADDRESS`` or ``"local"``). Every worker runs torch on one
thread and loads the detector once. Ray tasks receive the video bytes and return numpy
arrays, so a remote cluster needs no shared file system; the driver alone writes shards,
each in a thread while the next video is computed, one at a time. Results do not depend on
where the work ran: the same videos and weights give identical datasets.

Test hook (:data:`gistgym.staging.STALL_ENV`). ``GISTGYM_TEST_STALL_AT=<point>`` makes the driver print
``gistgym-test-stall <point>`` to stderr and sleep forever at that point, so the crash
tests can SIGKILL a build at an exact place: ``shard-temp`` (first shard written, not
yet renamed), ``shard-done`` (first shard renamed), ``combine`` (first video copied into
the temporary combined file) and ``renamed`` (``<OUT>`` in place, parts not yet removed).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import gistgym
from gistgym import errors
from gistgym.backbones.detector import DetectorConfig, InterleavedDetector
from gistgym.backbones.engines import use_build_engine
from gistgym.backbones.flops import step_costs
from gistgym.backbones.weights import DEFAULT_WEIGHTS, freeze, load_into, read_sidecar
from gistgym.cluster import cluster_cpus, ray_session
from gistgym.errors import (
    CacheDataError,
    CacheError,
    ConfigError,
    GistgymError,
    InputFileError,
    WeightsError,
    add_note,
)
from gistgym.feature_cache import schema
from gistgym.feature_cache.hdf5 import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    combine_shards,
    fsync_path,
    read_shard_identity,
    storage_description,
    write_shard,
)
from gistgym.feature_cache.reader import FeatureCache
from gistgym.feature_cache.sections import FrozenModels, dataset_kind, get_model_spec, get_section, list_sections
from gistgym.feature_cache.verify import array_sha256
from gistgym.procs import die_with_parent
from gistgym.staging import default_log, owner_dead, owner_tag, read_json_marker, stall
from gistgym.videos.dataset import ANNOTATION_FILE, VideoRecord, atomic_write_json, load_dataset, new_temp_file


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread (same numerics in every worker), restoring the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- the detector, portable to worker processes and Ray tasks ---------------------------------


@dataclass(frozen=True, eq=False)
class DetectorSource:
    """Weights of a frozen model as bytes plus their sidecar: what a worker needs to rebuild it.

    Shipping bytes (not a path) lets a Ray task on another machine load the same weights.
    ``role`` is ``"detector"`` for the interleaved detector, otherwise a key of
    :data:`gistgym.feature_cache.sections.FROZEN_MODELS`.
    """

    path: str
    weights: bytes = field(repr=False)
    sidecar: dict[str, Any] = field(repr=False)
    role: str = "detector"

    @property
    def sha256(self) -> str:
        """The weights' sha256 (checked against the sidecar on load)."""
        return str(self.sidecar["sha256"])

    @staticmethod
    def from_path(path: str | Path | None, role: str = "detector") -> DetectorSource:
        """Read a weights file and its sidecar (default: the shipped weights of ``role``).

        Raises:
            WeightsError: Missing files, a bad sidecar, or bytes that differ from the sidecar's sha256.
            ConfigError: Unknown role.
        """
        if path:
            path = Path(path)
        elif role == "detector":
            path = DEFAULT_WEIGHTS
        else:
            spec = get_model_spec(role)
            path = spec.default_weights()
            if not path.is_file():
                raise WeightsError(path, f"the shipped {role} weights are missing; make them with `{spec.train_hint}`")
        sidecar = read_sidecar(path)
        if not path.is_file():
            raise WeightsError(path, "weights file does not exist")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sidecar.get("sha256"):
            raise WeightsError(
                path, f"sha256 differs from the sidecar's {sidecar.get('sha256')!r} (file changed?)", field="sha256"
            )
        return DetectorSource(str(path), data, sidecar, role)

    def load_module(self) -> torch.nn.Module:
        """The frozen module of this role (the detector, or an extra model via its spec)."""
        if self.role == "detector":
            return self.load()
        path = Path(self.path)
        if hashlib.sha256(self.weights).hexdigest() != self.sha256:
            raise WeightsError(path, "weights bytes differ from the sidecar's sha256", field="sha256")
        return get_model_spec(self.role).load(self.weights, self.sidecar, path)

    def load(self) -> InterleavedDetector:
        """The frozen detector (eval mode, no gradients)."""
        path = Path(self.path)
        if self.role != "detector":
            raise ConfigError(f"{path} holds {self.role!r} weights, not the interleaved detector's")
        if hashlib.sha256(self.weights).hexdigest() != self.sha256:
            raise WeightsError(path, "weights bytes differ from the sidecar's sha256", field="sha256")
        try:
            config = DetectorConfig.from_dict(self.sidecar["config"])
        except (TypeError, KeyError, ValueError) as exc:
            raise WeightsError(path, f"bad detector config: {exc}", field="config") from exc
        try:
            state = torch.load(io.BytesIO(self.weights), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt zip/pickle
            raise WeightsError(path, f"not a readable torch state_dict: {exc}") from exc
        if not isinstance(state, dict):
            raise WeightsError(path, "expected a state_dict (a mapping of parameter names to tensors)")
        model = InterleavedDetector(config)
        load_into(model, state, path)
        frozen: InterleavedDetector = freeze(model)
        return frozen


@dataclass(frozen=True, eq=False)
class ModelSources:
    """Every frozen model a build computes with: the detector and the sections' extra models."""

    detector: DetectorSource
    extra: tuple[DetectorSource, ...] = ()

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """Identity of the set (role, sha256), for the per-process model cache."""
        return (("detector", self.detector.sha256), *((s.role, s.sha256) for s in self.extra))

    def load(self) -> FrozenModels:
        """Load every model (frozen); the detector's per-frame extractors compute on the build's engine."""
        return FrozenModels(use_build_engine(self.detector.load()), {s.role: s.load_module() for s in self.extra})


_MODELS: dict[tuple[tuple[str, str], ...], FrozenModels] = {}
"""Per-process cache: a worker loads each set of models once."""


def _cached_models(sources: ModelSources) -> FrozenModels:
    if sources.key not in _MODELS:
        _MODELS[sources.key] = sources.load()
    return _MODELS[sources.key]


# --- per-video work ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VideoJob:
    """One video to compute."""

    record: VideoRecord
    sections: tuple[str, ...]
    data: bytes | None = field(default=None, repr=False)
    """The video file's bytes, for workers without the driver's file system (Ray)."""


@dataclass(frozen=True, eq=False)
class VideoResult:
    """What a worker sends back: arrays keyed ``<section>/<name>``, or a portable error."""

    video_id: str
    arrays: dict[str, np.ndarray] | None = field(default=None, repr=False)
    error: tuple[str, str, str | None, str | None] | None = None
    """``(error class name, path or message, problem, field)``; exceptions with keyword
    arguments do not survive pickling, so they travel as data and are rebuilt."""
    seconds: float = 0.0
    """Wall time of the decode and the sections' forward passes, measured where they ran."""


def _portable_error(exc: GistgymError) -> tuple[str, str, str | None, str | None]:
    if isinstance(exc, InputFileError):
        return type(exc).__name__, str(exc.path), exc.problem, exc.field
    return type(exc).__name__, str(exc), None, None


def _raise_portable(error: tuple[str, str, str | None, str | None]) -> None:
    name, first, problem, fld = error
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, InputFileError) and problem is not None:
        raise cls(first, problem, field=fld)
    if problem is not None:
        raise InputFileError(first, problem, field=fld)
    raise (cls if isinstance(cls, type) and issubclass(cls, GistgymError) else GistgymError)(first)


def _read_frames(job: VideoJob) -> np.ndarray:
    if job.data is None:
        return job.record.read_frames()
    with tempfile.TemporaryDirectory(prefix="gistgym-video-") as tmp:
        local = Path(tmp) / job.record.path.name
        local.write_bytes(job.data)
        try:
            return replace(job.record, path=local).read_frames()
        except InputFileError as exc:
            raise type(exc)(job.record.path, exc.problem, field=exc.field) from exc


def _timed_read(job: VideoJob) -> tuple[np.ndarray, float]:
    """The video's frames and the seconds decoding them took."""
    start = time.perf_counter()
    frames = _read_frames(job)
    return frames, time.perf_counter() - start


def compute_with(
    models: FrozenModels, job: VideoJob, decoded: Future[tuple[np.ndarray, float]] | None = None
) -> VideoResult:
    """Decode one video and compute every requested section on it with ``models``.

    ``decoded``: the frames being decoded elsewhere (:func:`_timed_read` in a thread), waited
    for here; a decoding error is this video's error as if it had been decoded here.
    """
    try:
        frames, seconds = _timed_read(job) if decoded is None else decoded.result()
        start = time.perf_counter()
        arrays: dict[str, np.ndarray] = {}
        for name in job.sections:
            for key, array in get_section(name).compute(models, frames, job.record).items():
                arrays[f"{name}/{key}"] = array
        return VideoResult(job.record.video_id, arrays, seconds=seconds + time.perf_counter() - start)
    except GistgymError as exc:
        return VideoResult(job.record.video_id, error=_portable_error(exc))


def compute_video(sources: ModelSources, job: VideoJob) -> VideoResult:
    """The per-video work of every worker kind (one torch thread, models loaded once per process)."""
    with _one_torch_thread():
        return compute_with(_cached_models(sources), job)


_WORKER_SOURCE: ModelSources | None = None


def _init_pool_worker(sources: ModelSources) -> None:
    global _WORKER_SOURCE
    die_with_parent()  # a SIGKILLed build must not leave its workers computing
    torch.set_num_threads(1)
    _WORKER_SOURCE = sources
    _cached_models(sources)


def _pool_compute(job: VideoJob) -> VideoResult:
    assert _WORKER_SOURCE is not None, "pool worker not initialised"
    return compute_video(_WORKER_SOURCE, job)


def _local_results(
    jobs: Sequence[VideoJob], source: ModelSources, models: FrozenModels, workers: int
) -> Generator[VideoResult, None, None]:
    if workers == 1 or len(jobs) <= 1:
        # the next video is decoded in a thread while this one runs through the models (torch's and
        # ONNX Runtime's kernels run without the GIL): one core decodes, the other computes
        with _one_torch_thread(), ThreadPoolExecutor(1, thread_name_prefix="gistgym-decode") as decoder:
            ahead = decoder.submit(_timed_read, jobs[0]) if jobs else None
            for i, job in enumerate(jobs):
                current, ahead = ahead, (decoder.submit(_timed_read, jobs[i + 1]) if i + 1 < len(jobs) else None)
                yield compute_with(models, job, current)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_pool_worker, initargs=(source,)) as pool:
        yield from pool.imap_unordered(_pool_compute, jobs, chunksize=1)


def _ray_results(
    jobs: Sequence[VideoJob], source: ModelSources, workers: int, address: str
) -> Generator[VideoResult, None, None]:
    with ray_session(address, workers) as ray:
        remote = ray.remote(num_cpus=1, max_retries=2)(compute_video)
        source_ref = ray.put(source)
        window = max(2, 2 * cluster_cpus(ray))
        queue = list(jobs)
        in_flight: list[Any] = []
        while queue or in_flight:
            while queue and len(in_flight) < window:
                job = queue.pop(0)
                in_flight.append(remote.remote(source_ref, replace(job, data=job.record.path.read_bytes())))
            ready, in_flight = ray.wait(in_flight, num_returns=1)
            yield ray.get(ready[0])


# --- ground truth and identity -------------------------------------------------------------


def ground_truth_arrays(record: VideoRecord) -> dict[str, np.ndarray]:
    """A video's per-frame annotations as flat arrays plus frame offsets (schema ``gt/``)."""
    ann = record.annotations
    offsets = np.zeros(len(ann) + 1, np.int64)
    offsets[1:] = np.cumsum([len(a.labels) for a in ann])

    def cat(parts: list[np.ndarray], dtype: type, tail: tuple[int, ...] = ()) -> np.ndarray:
        if not parts:
            return np.zeros((0, *tail), dtype)
        return np.concatenate([np.asarray(p, dtype).reshape(-1, *tail) for p in parts])

    return {
        schema.GT_FRAME_OFFSETS: offsets,
        schema.GT_BOXES: cat([a.boxes for a in ann], np.float32, (4,)),
        schema.GT_LABELS: cat([a.labels for a in ann], np.int64),
        schema.GT_TRACK_IDS: cat([a.track_ids for a in ann], np.int64),
        schema.GT_SPEEDS: cat([a.speeds for a in ann], np.float32),
        schema.GT_SEGMENTS: np.array([a.segment.encode() for a in ann], dtype=np.bytes_),
    }


def source_sha256(record: VideoRecord) -> str:
    """sha256 of a video's annotations and video file: a shard or cache of other bytes is stale."""
    h = hashlib.sha256()
    for part in (record.path.parent / ANNOTATION_FILE, record.path):
        h.update(part.name.encode() + b"\0")
        h.update(part.read_bytes())
    return h.hexdigest()


def _normalise(value: Any) -> Any:
    """Attribute value as stored (structured values as sorted JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value


@dataclass(frozen=True)
class BuildReport:
    """What a build did."""

    out: Path
    videos: int
    frames: int
    computed: int
    """Videos computed by this run."""
    reused: int
    """Finished shards of an interrupted run that were reused."""
    seconds: float
    file_bytes: int
    up_to_date: bool = False
    """``<OUT>`` already held exactly this build; nothing was done."""
    compute_seconds: float = 0.0
    """Summed over videos: time spent decoding and in the sections' forward passes (where
    they ran). With one worker decoding runs in a thread beside the forward passes, so this
    can exceed ``seconds`` (up to twice it); ``compute_seconds / seconds`` above 1 is overlap."""


def _resolve_sections(sections: Sequence[str], kind: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(sections)) if sections else list_sections(kind)
    for name in names:
        get_section(name)
    return tuple(n for n in list_sections() if n in names)


def _plan(videos_dir: Path, splits: Sequence[str]) -> tuple[Any, list[tuple[str, str]]]:
    ds = load_dataset(videos_dir)
    chosen = list(dict.fromkeys(splits)) if splits else list(ds.splits)
    unknown = [s for s in chosen if s not in ds.splits]
    if unknown:
        raise ConfigError(f"split(s) {unknown} not in {videos_dir}/dataset.json (has {list(ds.splits)})")
    plan: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for split in chosen:
        for vid in ds.splits[split]:
            if vid in seen:
                raise ConfigError(f"video {vid!r} is listed in splits {seen[vid]!r} and {split!r} of {videos_dir}")
            seen[vid] = split
            plan.append((split, vid))
    if not plan:
        raise ConfigError(f"no videos in split(s) {chosen} of {videos_dir}")
    return ds, plan


def _weights_attr(source: DetectorSource) -> dict[str, Any]:
    return {
        "file": Path(source.path).name,
        "sha256": source.sha256,
        "provenance": {k: v for k, v in source.sidecar.items() if k not in ("config", "sha256")},
    }


def _modules_attr(models: FrozenModels, sources: ModelSources) -> dict[str, Any]:
    model, source = models.detector, sources.detector
    cfg = model.config
    extra = {
        s.role: {**get_model_spec(s.role).describe(models.get(s.role)), "frozen": True, "weights": _weights_attr(s)}
        for s in sources.extra
    }
    return {
        "detector": {"class": "gistgym.backbones.detector.InterleavedDetector", "config": cfg.to_dict()},
        "extractors": [
            {
                "index": i,
                "name": e.name,
                "class": "gistgym.backbones.detector.FeatureExtractor",
                "config": asdict(e),
                "role": "heavy" if i == 0 else "light",
            }
            for i, e in enumerate(cfg.extractors)
        ],
        "memory": {
            "class": "gistgym.backbones.convlstm.BottleneckConvLSTM",
            "config": {
                "in_channels": cfg.memory_channels,
                "hidden_channels": cfg.hidden_channels,
                "bottleneck_channels": cfg.bottleneck_channels,
                "groups": cfg.groups,
            },
        },
        "head": {
            "class": "gistgym.backbones.ssdlite.SSDLiteHead",
            "config": {"in_channels": model.memory.out_channels, "num_classes": cfg.num_classes, **asdict(cfg.anchors)},
        },
        "skip_light_updates": cfg.skip_light_updates,
        "frozen": True,
        "weights": _weights_attr(source),
        **({"models": extra} if extra else {}),
    }


def _costs_attr(models: FrozenModels, sources: ModelSources, measure: bool) -> dict[str, Any]:
    costs = step_costs(models.detector, measure=measure)
    extra = {s.role: get_model_spec(s.role).costs(models.get(s.role), measure) for s in sources.extra}
    return {
        "flops": "counted by torch.utils.flop_counter, a multiply-add = 2 FLOPs, batch 1",
        "latency": (
            "median seconds of one frame at batch 1 on one torch thread, measured on the build machine"
            if measure
            else "not measured (seconds are 0)"
        ),
        "per_extractor": {
            c.extractor: {**asdict(c), "step_flops": c.step_flops, "step_seconds": c.step_seconds} for c in costs
        },
        **({"models": extra} if extra else {}),
    }


@contextlib.contextmanager
def _locked(parts: Path, out: Path) -> Iterator[None]:
    fd = os.open(parts, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CacheError(out, f"another `gistgym cache build` is writing this cache (lock on {parts})") from exc
        yield
    finally:
        os.close(fd)


def _existing_differs(out: Path, expected: dict[str, Any]) -> str | None:
    """Why ``out`` is not exactly the requested build (``None`` if it is)."""
    try:
        info = FeatureCache(out).info
    except CacheError as exc:
        return exc.problem
    actual = {
        "weights_sha256": info.weights_sha256,
        "model_weights": dict(info.model_weights),
        "sections": list(info.sections),
        "storage": dict(info.storage),
        "dataset": dict(info.dataset),
        "splits": list(info.splits),
        "videos": [asdict(v) for v in info.videos],
        "gistgym_version": info.gistgym_version,
    }
    differing = [k for k in actual if _normalise(actual[k]) != _normalise(expected[k])]
    return f"it differs in {', '.join(differing)}" if differing else None


PARTS_OWNER = "owner.json"
"""The file in ``<OUT>.parts/`` naming the host and pid of the build that last worked there."""


def _finished_shards(parts: Path) -> list[Path]:
    return sorted(p for p in parts.glob("*.h5") if not p.name.startswith(".")) if parts.is_dir() else []


@contextlib.contextmanager
def _note_kept_shards(parts: Path) -> Iterator[None]:
    """On any error, add a note to it that the finished shards are kept for resuming (and how to drop them)."""
    try:
        yield
    except BaseException as exc:
        kept = len(_finished_shards(parts))
        if kept:
            add_note(
                exc,
                f"{kept} finished shard(s) are kept in {parts} for resuming: re-run the same command to resume, "
                "or add --fresh to drop them",
            )
        raise


def _resume_line(reused: int, parts: Path, owner: Mapping[str, Any]) -> str:
    host, pid = str(owner.get("host", "?")), owner.get("pid")
    who = f"pid {pid} on {host}" if isinstance(pid, int) else "an earlier build"
    gone = ", which is no longer running" if isinstance(pid, int) and owner_dead(host, pid) else ""
    return f"resuming from {reused} finished shard(s) in {parts} (left by {who}{gone}); --fresh drops them"


def _take_over_parts(parts: Path, fresh: bool, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Clear stray temporaries (and with ``fresh`` every shard), record this build as the owner.

    Returns:
        The previous owner's record, if an earlier build left finished shards.
    """
    previous = read_json_marker(parts / PARTS_OWNER)
    for stray in parts.glob(".*.tmp"):
        stray.unlink()
    if fresh:
        dropped = _finished_shards(parts)
        for shard in dropped:
            shard.unlink()
        if dropped:
            log(f"--fresh: dropped {len(dropped)} finished shard(s) of an earlier build in {parts}")
        previous = None
    host, _, pid = owner_tag().rpartition("-")
    atomic_write_json(parts / PARTS_OWNER, {"host": host, "pid": int(pid), "started": time.time()})
    return previous


def build_cache(
    videos: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] = (),
    sections: Sequence[str] = (),
    weights: str | Path | None = None,
    model_weights: Mapping[str, str | Path] | None = None,
    workers: int = 1,
    ray: str | None = None,
    compression: str = DEFAULT_COMPRESSION,
    overwrite: bool = False,
    fresh: bool = False,
    measure_latency: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = default_log,
) -> BuildReport:
    """Build (or resume building) a feature cache.

    Args:
        videos: Dataset folder (``gistgym videos make`` layout).
        out: Cache file to write.
        splits: Splits to include (default: every split of the dataset; each video's split
            is recorded).
        sections: Sections to build (default: the ones for the dataset's kind, see
            :func:`~gistgym.feature_cache.sections.list_sections`).
        weights: Detector weights with their JSON sidecar (default: the shipped ones).
        model_weights: Weights of the sections' extra frozen models by role (default: the
            shipped ones); a role no requested section needs is an error.
        workers: Local processes (1 = compute in this process); with ``ray="local"`` the
            CPUs of the local Ray instance.
        ray: ``None`` = no Ray; ``"local"`` (or ``""``) = a local Ray instance; otherwise
            the address of a Ray cluster (``ray.init(address=...)``).
        compression: Storage of section arrays (see :mod:`gistgym.feature_cache.hdf5`).
        overwrite: Replace an existing ``out`` built from other inputs.
        fresh: Drop the finished shards an interrupted or failed build left in
            ``<OUT>.parts/`` instead of resuming from them.
        measure_latency: Measure per-module latency for the ``costs`` metadata.
        progress: Show a progress bar.
        log: Where the one-line notes go (resuming from an earlier build's shards).

    Raises:
        ConfigError: Unknown section, split or compression; bad worker count; Ray missing.
        CacheError: ``out`` exists with other contents (without ``overwrite``), or another
            build holds the lock.
        CacheDataError: The detector produced NaN/inf features.
        WeightsError, VideoError, AnnotationError: Bad inputs.
    """
    start = time.perf_counter()
    out = Path(out)
    _check_arguments(out, sections, compression, workers)
    plan = _plan_build(Path(videos), splits, sections, weights, model_weights, compression)
    parts = out.with_name(out.name + ".parts")
    if out.exists() and not overwrite:
        reason = _existing_differs(out, plan.expected())
        if reason is not None:
            raise CacheError(out, f"exists and is not this build ({reason}); pass --overwrite or delete it")
        shutil.rmtree(parts, ignore_errors=True)
        return BuildReport(
            out, len(plan.records), plan.total_frames, 0, 0, time.perf_counter() - start, out.stat().st_size,
            up_to_date=True,
        )  # fmt: skip

    out.parent.mkdir(parents=True, exist_ok=True)
    parts.mkdir(exist_ok=True)
    with _locked(parts, out), _note_kept_shards(parts):
        previous_owner = _take_over_parts(parts, fresh, log)
        pending, shard_checksums = _reusable_shards(parts, plan)
        reused = len(plan.records) - len(pending)
        if reused and previous_owner is not None:
            log(_resume_line(reused, parts, previous_owner))
        compute_seconds = _compute_shards(
            out, parts, plan, pending, shard_checksums, workers=workers, ray=ray, progress=progress
        )
        _combine(out, parts, plan, shard_checksums, measure_latency)
    return BuildReport(
        out,
        len(plan.records),
        plan.total_frames,
        len(pending),
        reused,
        time.perf_counter() - start,
        out.stat().st_size,
        compute_seconds=compute_seconds,
    )


def _check_arguments(out: Path, sections: Sequence[str], compression: str, workers: int) -> None:
    """Refuse a bad section name, compression, worker count or a folder as ``out`` before any work."""
    for name in sections:
        get_section(name)
    if compression not in COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out}/cache.h5")


@dataclass(frozen=True)
class _BuildPlan:
    """What a build makes, resolved and checked before anything is written (:func:`_plan_build`)."""

    videos: Path
    records: list[VideoRecord]
    index: list[dict[str, Any]]
    """The file's video index: id, split, label, frames, source checksum."""
    section_names: tuple[str, ...]
    source: DetectorSource
    sources: ModelSources
    models: FrozenModels
    identity: dict[str, Any]
    """The attributes every shard and the file carry (schema, versions, weights, sections, storage)."""
    dataset_attr: dict[str, Any]
    split_names: list[str]
    total_frames: int

    def expected(self) -> dict[str, Any]:
        """What an existing file must record to be this build (:func:`_existing_differs`)."""
        return {
            "weights_sha256": self.source.sha256,
            "model_weights": {s.role: s.sha256 for s in self.sources.extra},
            "sections": list(self.section_names),
            "storage": self.identity[schema.ATTR_STORAGE],
            "dataset": self.dataset_attr,
            "splits": self.split_names,
            "videos": self.index,
            "gistgym_version": gistgym.__version__,
        }


def _plan_build(
    videos: Path,
    splits: Sequence[str],
    sections: Sequence[str],
    weights: str | Path | None,
    model_weights: Mapping[str, str | Path] | None,
    compression: str,
) -> _BuildPlan:
    """Read the dataset and the weights and check they fit each other (the build's first phase)."""
    ds, plan = _plan(videos, splits)
    section_names = _resolve_sections(sections, dataset_kind(ds.generator))
    records = [ds.video(vid) for _, vid in plan]
    source = DetectorSource.from_path(weights)
    roles = tuple(dict.fromkeys(r for name in section_names for r in get_section(name).models))
    given = dict(model_weights or {})
    unused = sorted(set(given) - set(roles))
    if unused:
        raise ConfigError(
            f"--model-weights names {unused} but the sections {list(section_names)} need only {list(roles) or 'none'}"
        )
    sources = ModelSources(source, tuple(DetectorSource.from_path(given.get(r), r) for r in roles))
    models = sources.load()  # also validates the weights before anything is written
    model = models.detector
    if len(ds.classes) != model.config.num_classes:
        raise ConfigError(
            f"dataset {videos} has {len(ds.classes)} classes but the detector {source.path} "
            f"was trained for {model.config.num_classes}"
        )
    size = model.config.image_size
    for r in records:
        if (r.height, r.width) != (size, size):
            raise ConfigError(
                f"video {r.video_id} of {videos} is {r.width}x{r.height} but the detector {source.path} "
                f"expects {size}x{size} frames"
            )
    index = [
        {
            "video_id": r.video_id,
            "split": split,
            "label": r.label,
            "num_frames": r.num_frames,
            "source_sha256": source_sha256(r),
        }
        for (split, _), r in zip(plan, records, strict=True)
    ]
    identity = {
        schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
        schema.ATTR_GISTGYM_VERSION: gistgym.__version__,
        schema.ATTR_WEIGHTS_SHA256: source.sha256,
        schema.ATTR_MODEL_WEIGHTS: {s.role: s.sha256 for s in sources.extra},
        schema.ATTR_SECTIONS: list(section_names),
        schema.ATTR_STORAGE: storage_description(compression),
    }
    return _BuildPlan(
        videos=videos,
        records=records,
        index=index,
        section_names=tuple(section_names),
        source=source,
        sources=sources,
        models=models,
        identity=identity,
        dataset_attr={"name": videos.resolve().name, "generator": ds.generator, "classes": list(ds.classes)},
        split_names=list(dict.fromkeys(split for split, _ in plan)),
        total_frames=sum(r.num_frames for r in records),
    )


def _reusable_shards(parts: Path, plan: _BuildPlan) -> tuple[list[VideoJob], dict[str, dict[str, str]]]:
    """The videos still to compute, and the checksums of the shards an earlier build finished for this one."""
    pending: list[VideoJob] = []
    shard_checksums: dict[str, dict[str, str]] = {}
    for record, entry in zip(plan.records, plan.index, strict=True):
        shard = parts / f"{record.video_id}.h5"
        found = read_shard_identity(shard, record.video_id) if shard.exists() else None
        wanted = {
            **plan.identity,
            schema.ATTR_VIDEO_ID: record.video_id,
            schema.ATTR_SOURCE_SHA256: entry["source_sha256"],
        }
        if found is not None and all(found.get(k) == _normalise(wanted[k]) for k in schema.SHARD_IDENTITY):
            shard_checksums[record.video_id] = json.loads(found[schema.ATTR_CHECKSUMS])
            continue
        shard.unlink(missing_ok=True)
        pending.append(VideoJob(record, plan.section_names))
    return pending, shard_checksums


def _compute_shards(
    out: Path,
    parts: Path,
    plan: _BuildPlan,
    pending: Sequence[VideoJob],
    shard_checksums: dict[str, dict[str, str]],
    *,
    workers: int,
    ray: str | None,
    progress: bool,
) -> float:
    """Compute the pending videos (here, in worker processes or on Ray) and write each one's shard.

    Adds every new shard's checksums to ``shard_checksums``; returns the summed compute seconds.
    """
    by_id = {r.video_id: (r, e) for r, e in zip(plan.records, plan.index, strict=True)}
    results = (
        _ray_results(list(pending), plan.sources, workers, ray)
        if ray is not None
        else _local_results(list(pending), plan.sources, plan.models, workers)
    )
    compute_seconds = 0.0
    # leave=False: the bar is erased when done or on an error (the CLI then prints one line)
    with (
        tqdm(
            total=len(plan.records),
            initial=len(plan.records) - len(pending),
            unit="video",
            desc=f"cache build {out.name}",
            disable=not progress,
            leave=False,
        ) as bar,
        ThreadPoolExecutor(1, thread_name_prefix="gistgym-shard-writer") as writer,
    ):
        # a shard is written in a thread while the next video is computed; one write is in flight
        # at a time and each is waited for before the next starts, so a failed write stops the build
        writing: tuple[str, Future[dict[str, str]]] | None = None

        def finish(write: tuple[str, Future[dict[str, str]]]) -> None:
            video_id, checksums = write
            shard_checksums[video_id] = checksums.result()
            bar.update(1)

        try:
            for result in results:
                if result.error is not None:
                    _raise_portable(result.error)
                assert result.arrays is not None
                compute_seconds += result.seconds
                record, entry = by_id[result.video_id]
                if writing is not None:
                    finish(writing)
                written = writer.submit(_write_shard, parts, out, record, entry, plan.identity, result.arrays)
                writing = (record.video_id, written)
            if writing is not None:
                finish(writing)
        finally:
            results.close()  # stop worker processes / shut down our Ray instance now, also on errors
    return compute_seconds


def _combine(
    out: Path, parts: Path, plan: _BuildPlan, shard_checksums: Mapping[str, dict[str, str]], measure_latency: bool
) -> None:
    """Copy the shards and the embedded modules into a temporary file, renamed to ``out`` when complete."""
    models, sources = plan.models, plan.sources
    with _one_torch_thread():
        costs = _costs_attr(models, sources, measure_latency)
        embedded = {name: get_section(name).embed(models) for name in plan.section_names}
    checksums = {
        "videos": {e["video_id"]: shard_checksums[e["video_id"]] for e in plan.index},
        "sections": {
            name: {f"{m}/{k}": array_sha256(a) for m, tensors in emb.tensors.items() for k, a in tensors.items()}
            for name, emb in embedded.items()
        },
    }
    cfg = models.detector.config
    file_attrs = {
        schema.ATTR_FORMAT: schema.FORMAT,
        **plan.identity,
        schema.ATTR_DATASET: plan.dataset_attr,
        schema.ATTR_SPLITS: plan.split_names,
        schema.ATTR_VIDEOS: plan.index,
        schema.ATTR_MODULES: _modules_attr(models, sources),
        schema.ATTR_PREPROCESSING: {
            "image_size": cfg.image_size,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "input": "uint8 RGB frames / 255, then (x - mean) / std; an extractor with input_scale s "
            "area-downsamples by 1/s first",
        },
        schema.ATTR_COSTS: costs,
        schema.ATTR_CHECKSUMS: checksums,
    }
    for stale in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
        stale.unlink()
    tmp = new_temp_file(out.parent, f"{out.name}.tmp-")
    try:
        combine_shards(
            tmp,
            shards=[(e["video_id"], parts / f"{e['video_id']}.h5") for e in plan.index],
            sections=embedded,
            file_attrs=file_attrs,
            after_copy=lambda i: stall("combine") if i == 0 else None,
        )
        os.replace(tmp, out)
        fsync_path(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    stall("renamed")
    shutil.rmtree(parts)


def _write_shard(
    parts: Path,
    out: Path,
    record: VideoRecord,
    entry: dict[str, Any],
    identity: dict[str, Any],
    section_arrays: dict[str, np.ndarray],
) -> dict[str, str]:
    """Write one video's shard atomically; returns its per-dataset checksums."""
    vid = record.video_id
    for rel, array in section_arrays.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise CacheDataError(
                out,
                f"the detector produced {int((~np.isfinite(array)).sum())} NaN/inf values "
                "(float16 overflow or broken weights); refusing to cache them",
                field=f"{schema.GROUP_VIDEOS}/{vid}/{rel}",
                video=vid,
            )
    arrays = {**ground_truth_arrays(record), **section_arrays}
    checksums = {rel: array_sha256(a) for rel, a in arrays.items()}
    tmp = new_temp_file(parts, f".{vid}.", ".h5.tmp")
    try:
        write_shard(
            tmp,
            file_attrs={
                schema.ATTR_FORMAT: schema.SHARD_FORMAT,
                **identity,
                schema.ATTR_VIDEO_ID: vid,
                schema.ATTR_SOURCE_SHA256: entry["source_sha256"],
                schema.ATTR_CHECKSUMS: checksums,
            },
            video_id=vid,
            video_attrs={
                schema.ATTR_VIDEO_ID: vid,
                schema.VIDEO_SPLIT: entry["split"],
                schema.VIDEO_LABEL: record.label,
                schema.VIDEO_NUM_FRAMES: record.num_frames,
                schema.VIDEO_HEIGHT: record.height,
                schema.VIDEO_WIDTH: record.width,
                schema.VIDEO_FPS: record.fps,
                schema.ATTR_SOURCE_SHA256: entry["source_sha256"],
            },
            arrays=arrays,
            compression=str(identity[schema.ATTR_STORAGE]["compression"]),
        )
        stall("shard-temp")
        os.replace(tmp, parts / f"{vid}.h5")
        fsync_path(parts)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    stall("shard-done")
    return checksums
