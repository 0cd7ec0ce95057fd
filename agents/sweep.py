"""Sweeps: many training runs, one after another here or as Ray tasks on a cluster.

A sweep is a list of :class:`SweepJob`: a run's configuration (a
:class:`~gistgym.agents.train.TrainConfig`, or any frozen dataclass with ``cache``, ``out``,
``progress`` and ``overwrite`` fields) and the run folder it must end up in.
:func:`run_sweep` trains them

* **here** (``SweepOptions.ray is None``): one after another in this process;
* **on Ray** (``ray="local"`` starts a local instance, ``ray=ADDRESS`` joins a cluster): each
  run is a Ray task with one CPU and one torch thread. Plain tasks, not Ray Tune: the grid is
  fixed and every run is independent (no trial scheduling or early stopping to gain), while a
  task's ``max_retries`` gives the retries, ``ray.cancel`` the Ctrl-C, and the run folders
  keep exactly the layout and staging of local runs instead of Tune's trial directories.

**The cache reaches the workers** by a path every node can read (a shared filesystem; the
default), or with ``ship_cache`` through Ray's object store: the driver puts the file's
bytes once per sweep and the first task on each node writes them to a local file that the
node's later tasks reuse. Before any run starts one probe task per node checks that the
cache is there and is the driver's (:func:`cache_fingerprint`: the identity record a run
keeps, the recorded per-dataset checksums, and for a shipped copy the file's sha256); every
task checks it again before training.

**Runs come back whole.** A task trains into a folder on its worker, packs the finished run
and returns it; the driver writes it with the same staged rename as a local run
(:func:`~gistgym.agents.runs.staged_run_dir`), so ``OUT/NAME`` is always a complete run. A
task whose worker dies (SIGKILL, a lost node) or that raises anything but a bad-input error
is retried up to ``max_retries`` times; a bad-input error (deterministic) is not. Ctrl-C
cancels the remaining tasks. Whatever the workers leave behind (a killed attempt's partial
folder, a shipped cache copy) is removed from every node when the sweep ends.

``resume`` skips every run whose folder is already a complete run. ``OUT/sweep.json``
(:data:`SWEEP_FILE`) records each run's status (``done``, ``skipped``, ``failed``,
``cancelled``, ``pending``), node, seconds and error; it is rewritten as runs finish, so an
interrupted sweep leaves an accurate one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import gistgym
from gistgym.agents.runs import CONFIG_FILE, cache_identity, is_run_dir, prepare_run_target, staged_run_dir
from gistgym.backbones.weights import sha256_file
from gistgym.cluster import alive_nodes, cluster_cpus, ray_session
from gistgym.errors import ConfigError, GistgymError, RunError, one_line
from gistgym.feature_cache import FeatureCache
from gistgym.staging import default_log, parse_staging
from gistgym.videos.dataset import atomic_write_json

SWEEP_FILE = "sweep.json"
"""The sweep summary written into the sweep's output folder."""
SWEEP_FORMAT = "gistgym-sweep"
WORKER_DIR = "gistgym-sweeps"
"""Folder under a worker's temporary directory that holds each sweep's work (removed at the end)."""
KILL_ONCE_ENV = "GISTGYM_TEST_SWEEP_KILL_ONCE"
"""Test hook: a path. The first task to find it missing creates it and SIGKILLs its own worker
process once its run's partial folder exists (a worker killed mid-run); later attempts train."""

DONE, SKIPPED, FAILED, CANCELLED, PENDING = "done", "skipped", "failed", "cancelled", "pending"


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (``--ray``, ``--workers``, ``--ship-cache``, ``--resume``, ``--max-retries``)."""

    ray: str | None = None
    """None: here, one run after another; "local": a local Ray instance; else a Ray cluster's address."""
    workers: int = 0
    """CPUs of a local Ray instance (0: all of this machine's)."""
    ship_cache: bool = False
    """Send the cache through Ray's object store (for a cache only the driver can read)."""
    resume: bool = False
    """Skip runs whose folder is already a complete run."""
    max_retries: int = 2
    """Ray: attempts after the first for a task that died or failed."""
    progress: bool = True
    """One progress bar over the sweep."""


@dataclass(frozen=True)
class SweepJob:
    """One run of a sweep: its configuration and where it goes."""

    config: Any
    """A frozen dataclass with ``cache``, ``out``, ``progress`` and ``overwrite`` (a TrainConfig)."""
    target: Path
    """The run folder (``OUT/NAME``)."""
    setting: str = ""
    """The setting the run belongs to (its name without the seed suffix)."""

    @property
    def name(self) -> str:
        """The run's name (its folder's)."""
        return self.target.name


@dataclass
class RunRecord:
    """A run's line in sweep.json."""

    name: str
    path: str
    setting: str
    seed: int | None
    env: str | None
    status: str = PENDING
    node: str | None = None
    seconds: float | None = None
    error: str | None = None


@dataclass
class SweepResult:
    """What :func:`run_sweep` did."""

    records: list[RunRecord]
    summary_path: Path
    seconds: float = 0.0
    runs: list[Path] = field(default_factory=list)
    """Run folders done or skipped, in job order."""

    def count(self, status: str) -> int:
        """Runs with ``status``."""
        return sum(r.status == status for r in self.records)


# --- the cache the workers train on --------------------------------------------------------


def cache_fingerprint(path: str | os.PathLike[str]) -> str:
    """What must agree between the driver's cache and a worker's: identity record and recorded checksums.

    Reads metadata only (milliseconds, whatever the file's size).

    Raises:
        CacheError: The cache is missing or unreadable.
    """
    identity = cache_identity(path)
    cache = FeatureCache(Path(path))
    try:
        checksums = cache.checksums()
    finally:
        cache.close()
    text = json.dumps({"identity": identity, "checksums": checksums}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheSpec:
    """How tasks find the cache: the driver's path, its fingerprint, and (shipped) the file's sha256."""

    path: str
    """The driver's cache path, resolved on the driver."""
    fingerprint: str
    sha256: str = ""
    """Set when the bytes travel through the object store."""

    @property
    def shipped(self) -> bool:
        """Whether the cache comes through Ray's object store."""
        return bool(self.sha256)


def _worker_root(sweep_id: str) -> Path:
    return Path(tempfile.gettempdir()) / WORKER_DIR / sweep_id


def _node_name() -> str:
    return socket.gethostname()


def _materialise_cache(spec: CacheSpec, data: Any, root: Path) -> Path:
    """The cache file a task on this node trains on: the shared path, or this node's copy of the shipped bytes."""
    if not spec.shipped:
        path = Path(spec.path)
        if not path.is_file():
            raise ConfigError(
                f"--cache {spec.path}: node {_node_name()} cannot read it (no such file); give a path every node "
                "can read, or --ship-cache to send it through Ray's object store"
            )
    else:
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"cache-{spec.sha256[:16]}.h5"
        with open(root / ".cache.lock", "w") as lock:  # one copy per node, written once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.is_file():
                staged = root / f".{path.name}.tmp-{os.getpid()}"
                np.asarray(data).tofile(staged)
                if sha256_file(staged) != spec.sha256:
                    staged.unlink()
                    raise ConfigError(f"--cache {spec.path}: the copy shipped to node {_node_name()} is damaged")
                os.replace(staged, path)
    found = cache_fingerprint(path)
    if found != spec.fingerprint:
        raise ConfigError(
            f"--cache {spec.path}: node {_node_name()} reads a different cache there (fingerprint {found[:12]}, "
            f"the driver's is {spec.fingerprint[:12]}); give a path every node shares, or --ship-cache"
        )
    return path


def _probe_task(spec: CacheSpec, data: Any, sweep_id: str) -> str | None:
    """Runs once per node before the sweep: None if the cache is usable there, else the one-line reason."""
    try:
        _materialise_cache(spec, data, _worker_root(sweep_id))
    except GistgymError as exc:
        return one_line(exc)
    return None


def _cleanup_task(sweep_id: str) -> None:
    """Remove a sweep's work folder on this node (killed attempts' leftovers, the shipped cache copy)."""
    shutil.rmtree(_worker_root(sweep_id), ignore_errors=True)


# --- a run on a worker ----------------------------------------------------------------------


def pack_run(run: Path) -> bytes:
    """A run folder as an uncompressed tar (the model zips are compressed already)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(run.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(run)), recursive=False)
    return buffer.getvalue()


def unpack_run(data: bytes, into: Path) -> None:
    """Extract :func:`pack_run`'s bytes into ``into`` (plain files and folders only, nothing outside it)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()) or Path(member.name).is_absolute() or ".." in member.name:
                raise RunError(into, f"a returned run holds an unexpected entry {member.name!r}")
        tar.extractall(into, filter="data")


def recorded(run: Path, config: Any, cache_path: str) -> None:
    """Make a worker's run record the driver's cache path (resolved there) and configuration, as a local run would."""
    path = run / CONFIG_FILE
    data = json.loads(path.read_text())
    data["cache_path"] = cache_path
    if isinstance(data.get("train"), dict):
        data["train"].update({k: getattr(config, k) for k in ("cache", "out", "progress", "overwrite")})
    atomic_write_json(path, data)


def _kill_once_watch(partial_parent: Path, name: str) -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)

    def watch() -> None:
        while True:
            if partial_parent.is_dir() and any(
                (parse_staging(p.name, name) or ("",))[0] == "partial" for p in partial_parent.iterdir()
            ):
                os.kill(os.getpid(), 9)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def _run_task(
    train: Callable[..., Path], job: SweepJob, spec: CacheSpec, data: Any, sweep_id: str, command: Sequence[str]
) -> dict[str, Any]:
    """A Ray task: train ``job`` on this worker and return the packed run (or a bad-input error's line)."""
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    root = _worker_root(sweep_id)
    try:
        cache = _materialise_cache(spec, data, root)
        out = root / "runs" / hashlib.sha256(str(job.target.parent.resolve()).encode()).hexdigest()[:16]
        local = replace(job.config, cache=str(cache), out=str(out), progress=False, overwrite=True)
        _kill_once_watch(out, job.name)
        run = train(local, command=command)
        recorded(run, job.config, spec.path)
        archive = pack_run(run)
        shutil.rmtree(run, ignore_errors=True)
    except GistgymError as exc:  # bad input fails the same way on every attempt: report it, no retry
        return {"error": one_line(exc), "node": _node_name()}
    return {"archive": archive, "node": _node_name(), "seconds": time.perf_counter() - started}


# --- the driver -----------------------------------------------------------------------------


def _write_summary(path: Path, records: Sequence[RunRecord], options: SweepOptions, started: float) -> None:
    atomic_write_json(
        path,
        {
            "format": SWEEP_FORMAT,
            "format_version": 1,
            "gistgym_version": gistgym.__version__,
            "engine": "local" if options.ray is None else f"ray:{options.ray}",
            "ship_cache": options.ship_cache,
            "max_retries": options.max_retries,
            "seconds": round(time.perf_counter() - started, 2),
            "counts": {s: sum(r.status == s for r in records) for s in (DONE, SKIPPED, FAILED, CANCELLED, PENDING)},
            "runs": [dataclasses.asdict(r) for r in records],
        },
    )


def _record(job: SweepJob, root: Path) -> RunRecord:
    config = job.config
    return RunRecord(
        name=job.name,
        path=str(job.target.relative_to(root)) if job.target.is_relative_to(root) else str(job.target),
        setting=job.setting or job.name,
        seed=getattr(config, "seed", None),
        env=getattr(config, "env", None),
    )


class _Bar:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, desc="sweep", unit="run", disable=not enabled)
        self.done = self.failed = self.running = 0

    def update(self, *, done: int = 0, failed: int = 0, running: int | None = None) -> None:
        self.done += done
        self.failed += failed
        if running is not None:
            self.running = running
        self.bar.set_postfix(done=self.done, running=self.running, failed=self.failed, refresh=False)
        self.bar.update(done + failed)

    def close(self) -> None:
        self.bar.close()


def plan(jobs: Sequence[SweepJob], options: SweepOptions, log: Callable[[str], None]) -> list[bool]:
    """Check every target before any work; per job, whether it still has to run (``resume`` skips complete ones).

    Raises:
        ConfigError: Two jobs share a folder.
        OutputDirError: A target exists and may not be replaced.
    """
    seen: dict[Path, str] = {}
    for job in jobs:
        key = job.target.resolve()
        if key in seen:
            raise ConfigError(f"two runs of the sweep would write {job.target}; give the grid distinct values")
        seen[key] = job.name
    todo = []
    for job in jobs:
        if options.resume and is_run_dir(job.target):
            todo.append(False)
            continue
        prepare_run_target(job.target.parent, job.name, getattr(job.config, "overwrite", False))
        todo.append(True)
    skipped = todo.count(False)
    if skipped:
        log(f"resume: {skipped} of {len(jobs)} runs are complete already, skipping them")
    return todo


def run_sweep(
    jobs: Sequence[SweepJob],
    root: str | os.PathLike[str],
    train: Callable[..., Path],
    *,
    options: SweepOptions | None = None,
    command: Sequence[str] = (),
    log: Callable[[str], None] = default_log,
) -> SweepResult:
    """Train every job (here or on Ray) and write ``ROOT/sweep.json``.

    Args:
        jobs: The runs, with distinct targets.
        root: The sweep's output folder (sweep.json goes there).
        train: Trains one configuration and returns its run folder
            (:func:`~gistgym.agents.train.train_one`; on Ray it runs in the workers).
        options: Where and how.
        command: The command line, recorded in every run.
        log: Where one-line notes go.

    Raises:
        ConfigError, OutputDirError: Bad targets, an unreachable cluster, a cache the workers
            cannot read or that differs from the driver's: nothing was started or written.
        RunError: Runs failed (after their retries); the others finished, sweep.json says which.
        KeyboardInterrupt: Ctrl-C; the remaining tasks were cancelled, no partial folder is left.
    """
    options = options if options is not None else SweepOptions()
    started = time.perf_counter()
    out = Path(root)
    todo = plan(jobs, options, log)
    records = [_record(job, out) for job in jobs]
    for record, run in zip(records, todo, strict=True):
        if not run:
            record.status = SKIPPED
    pending = [i for i, run in enumerate(todo) if run]
    summary = out / SWEEP_FILE
    result = SweepResult(records, summary)

    def save() -> None:
        _write_summary(summary, records, options, started)

    engine = (
        _here(train, command) if options.ray is None or not pending else _on_ray(jobs, pending, train, command, options)
    )
    with engine as run_all:  # on Ray: connected, cache checked on every node; nothing written before
        out.mkdir(parents=True, exist_ok=True)
        save()
        bar = _Bar(len(pending), options.progress)
        try:
            run_all(jobs, pending, records, bar, save)
        except BaseException:
            for i in pending:
                if records[i].status == PENDING:
                    records[i].status = CANCELLED
            raise
        finally:
            bar.close()
            result.seconds = time.perf_counter() - started
            save()
    result.runs = [job.target for job, r in zip(jobs, records, strict=True) if r.status in (DONE, SKIPPED)]
    failed = [r for r in records if r.status == FAILED]
    if failed:
        raise RunError(
            summary,
            f"{len(failed)} of {len(records)} runs failed ({failed[0].name}: {failed[0].error}); the others finished",
        )
    return result


_RunAll = Callable[[Sequence[SweepJob], Sequence[int], list[RunRecord], "_Bar", Callable[[], None]], None]


@contextlib.contextmanager
def _here(train: Callable[..., Path], command: Sequence[str]) -> Iterator[_RunAll]:
    """Run the jobs one after another in this process; a failure stops the sweep, as a single run's would."""

    def run_all(
        jobs: Sequence[SweepJob], pending: Sequence[int], records: list[RunRecord], bar: _Bar, save: Callable[[], None]
    ) -> None:
        for i in pending:
            job, record = jobs[i], records[i]
            bar.update(running=1)
            t0 = time.perf_counter()
            try:
                train(job.config, command=command)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                record.status, record.error = FAILED, one_line(exc)
                raise
            record.status, record.node = DONE, _node_name()
            record.seconds = round(time.perf_counter() - t0, 2)
            bar.update(done=1, running=0)
            save()

    yield run_all


def _ship(ray: Any, path: Path) -> tuple[str, Any]:
    """Put the cache's bytes in the object store once; returns (sha256, object ref)."""
    data = np.fromfile(path, dtype=np.uint8)
    digest = hashlib.sha256(data.data).hexdigest()
    return digest, ray.put(data)


def _on_nodes(ray: Any, func: Callable[..., Any], *args: Any, max_retries: int = 0) -> list[tuple[dict[str, Any], Any]]:
    """Submit ``func(*args)`` once on every live node (no CPU reserved); ``(node, object ref)`` pairs."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=max_retries)(func)
    return [
        (n, remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args))
        for n in alive_nodes(ray)
    ]


def _preflight(ray: Any, spec: CacheSpec, data: Any, sweep_id: str) -> None:
    """One probe per node: every node must read the driver's cache before any run starts."""
    for node, ref in _on_nodes(ray, _probe_task, spec, data, sweep_id, max_retries=1):
        problem = ray.get(ref)
        if problem is not None:
            raise ConfigError(f"{problem} (node {node.get('NodeManagerAddress', '?')}); nothing was started")


def _cleanup(ray: Any, sweep_id: str) -> None:
    """Remove the sweep's work folder from every node (and this one)."""
    refs = [ref for _, ref in _on_nodes(ray, _cleanup_task, sweep_id)]
    with contextlib.suppress(Exception):  # a node that went away takes its leftovers with it
        ray.get(refs, timeout=60)
    _cleanup_task(sweep_id)


@contextlib.contextmanager
def _on_ray(
    jobs: Sequence[SweepJob],
    pending: Sequence[int],
    train: Callable[..., Path],
    command: Sequence[str],
    options: SweepOptions,
) -> Iterator[_RunAll]:
    """Connect, check the cache on every node, then run each job as a task; clean every node at the end."""
    cache = Path(jobs[pending[0]].config.cache)
    if any(Path(jobs[i].config.cache) != cache for i in pending):
        raise ConfigError("a sweep trains on one cache; its runs name several")
    fingerprint = cache_fingerprint(cache)
    sweep_id = f"{_node_name()}-{os.getpid()}-{int(time.time() * 1000)}"
    with ray_session(options.ray, options.workers) as ray:
        try:
            data: Any = None
            digest = ""
            if options.ship_cache:
                digest, data = _ship(ray, cache)
            spec = CacheSpec(str(cache.resolve()), fingerprint, digest)  # resolved here: workers have other cwds
            _preflight(ray, spec, data, sweep_id)
            task = ray.remote(num_cpus=1, max_retries=options.max_retries, retry_exceptions=True)(_run_task)

            def run_all(
                jobs: Sequence[SweepJob],
                pending: Sequence[int],
                records: list[RunRecord],
                bar: _Bar,
                save: Callable[[], None],
            ) -> None:
                window = cluster_cpus(ray)
                queue = list(pending)
                in_flight: dict[Any, int] = {}
                try:
                    while queue or in_flight:
                        while queue and len(in_flight) < window:
                            i = queue.pop(0)
                            in_flight[task.remote(train, jobs[i], spec, data, sweep_id, list(command))] = i
                        bar.update(running=len(in_flight))
                        ready, _ = ray.wait(list(in_flight), num_returns=1)
                        i = in_flight.pop(ready[0])
                        _collect(ray, ready[0], jobs[i], records[i], bar)
                        save()
                except BaseException:
                    for ref in in_flight:
                        ray.cancel(ref, force=True)
                    raise

            yield run_all
        finally:
            _cleanup(ray, sweep_id)


def _collect(ray: Any, ref: Any, job: SweepJob, record: RunRecord, bar: _Bar) -> None:
    """Write a finished task's run with the staged rename, or record its failure."""
    try:
        reply = ray.get(ref)
    except Exception as exc:  # retries exhausted: the task's exception, or its worker died each time
        record.status, record.error = FAILED, " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        bar.update(failed=1)
        return
    record.node = reply.get("node")
    if "error" in reply:
        record.status, record.error = FAILED, reply["error"]
        bar.update(failed=1)
        return
    prepare_run_target(job.target.parent, job.name, getattr(job.config, "overwrite", False))
    with staged_run_dir(job.target) as partial:
        unpack_run(reply["archive"], partial)
    record.status, record.seconds = DONE, round(float(reply["seconds"]), 2)
    bar.update(done=1)


__all__ = [
    "SWEEP_FILE",
    "CacheSpec",
    "RunRecord",
    "SweepJob",
    "SweepOptions",
    "SweepResult",
    "cache_fingerprint",
    "pack_run",
    "plan",
    "run_sweep",
    "unpack_run",
]
