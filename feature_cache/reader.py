"""Reading a feature cache: validated on open, one episode at a time, numpy only.

Example::

    from gistgym.feature_cache import FeatureCache

    cache = FeatureCache("runs/bench.h5", sections=("interleave",))
    ep = cache.load_episode(cache.video_ids("train")[0])
    ep.features["heavy"]          # (T, C, g, g) float16, read-only
    ep.ground_truth(0)            # FrameAnnotation of frame 0 (boxes, labels, track ids, speeds)

Validation on open (cheap: file attributes only): the file exists and is HDF5 (not
truncated), its schema version is one this gistgym reads, the requested sections are
present, (optionally) it was built from the weights the caller expects, and every file
attribute matches the metadata seal recorded at build time (see the schema's ``seal``).
Each problem raises a typed :class:`~gistgym.errors.CacheError` naming the file and saying
how to fix it. A cache built before the seal existed opens with a one-line warning.

What is read is validated when it is read. A section's attributes against the seal and its
embedded tensors against their recorded checksums (and, for sections that register a check
with :func:`register_section_check`, that its modules rebuild). An episode: the video group
must carry its completion mark and its attributes match the seal; every dataset's dtype and
shape match the seal (checked from the header, before reading); features and ground-truth
boxes are finite; frame offsets add up, labels lie in the dataset's classes; and the bytes
of every dataset match the sha256 recorded when it was computed, checked the first time this
reader loads it (sha256 runs at about 1 GB/s: the first load of an episode in a reader takes
about 1.4-1.6x as long as unchecked, later loads of it cost nothing extra; see
``benchmarks/cache.py``).
Failures raise :class:`~gistgym.errors.CacheDataError` naming the video and the dataset.
Every h5py error becomes a one-line :class:`~gistgym.errors.CacheError` naming the file.

Handles. A :class:`FeatureCache` keeps one h5py handle per process, opened lazily on
first use. It records the process id at open and reopens in a forked child instead of
sharing the parent's handle; pickling drops the handle (a spawned worker reopens it).

Ground truth comes back ragged as flat arrays plus offsets, exactly as on disk: the
objects of frame ``t`` are rows ``frame_offsets[t]:frame_offsets[t + 1]`` of ``boxes``,
``labels``, ``track_ids`` and ``speeds``; :meth:`VideoEpisode.ground_truth` slices one
frame into a :class:`~gistgym.videos.synthetic.FrameAnnotation`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from gistgym.errors import (
    CacheDataError,
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheSectionError,
    CacheVersionError,
)
from gistgym.feature_cache import schema
from gistgym.feature_cache.hdf5 import CacheFile, DatasetStorage, Layout
from gistgym.videos.synthetic import FrameAnnotation

REBUILD_HINT = "rebuild it with `gistgym cache build --videos DIR --out FILE`"

log = logging.getLogger("gistgym.feature_cache")
"""Where the one-line warning about an unsealed cache goes (Python's last-resort handler
prints it on stderr as one line when nothing is configured)."""

_WARNED_UNSEALED: set[str] = set()
"""Files this process already warned about (one warning per file and process)."""

ATTR_DIFFERS = "checksum differs"
ATTR_MISSING = "missing"
ATTR_NOT_SEALED = "not sealed"
_ATTR_PROBLEMS = {
    ATTR_DIFFERS: "differs from the checksum recorded when the cache was built (edited or damaged)",
    ATTR_MISSING: "was recorded when the cache was built and is missing now",
    ATTR_NOT_SEALED: "is not covered by the seal (added after the build)",
}


def array_sha256(array: np.ndarray) -> str:
    """Hex sha256 of an array's raw bytes in C order (what the build records for every dataset)."""
    a = np.ascontiguousarray(array)
    if not a.size or not a.dtype.itemsize:
        return hashlib.sha256(a.tobytes()).hexdigest()
    # hash the array's own buffer: no copy of a whole episode's features per check
    return hashlib.sha256(a.reshape(-1).view(np.uint8).data).hexdigest()


V = TypeVar("V")


class ReadOnlyMapping(Mapping[str, V]):
    """A read-only, picklable view of a dict (``MappingProxyType`` does not pickle)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, V]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)


def _shape(a: np.ndarray) -> str:
    return f"{tuple(a.shape)} {a.dtype}"


def _frozen_array(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class SectionData:
    """What a section embeds once per file (e.g. the ``interleave`` memory and head)."""

    name: str
    attrs: Mapping[str, Any]
    """Section attributes, JSON decoded."""
    tensors: Mapping[str, Mapping[str, np.ndarray]]
    """``{module: {state_dict key: array}}``."""

    def __repr__(self) -> str:
        counts = {m: len(t) for m, t in self.tensors.items()}
        return f"SectionData(name={self.name!r}, attrs={sorted(self.attrs)}, tensors={counts})"


@dataclass(frozen=True, eq=False)
class VideoEpisode:
    """One cached video, loaded whole. Arrays are read-only."""

    video_id: str
    split: str
    label: int
    """Video-level class (-1 if none)."""
    num_frames: int
    sections: Mapping[str, Mapping[str, np.ndarray]]
    """``{section: {name: array}}`` for the sections that were loaded."""
    frame_offsets: np.ndarray
    """(T + 1,) int64: objects of frame t are rows ``frame_offsets[t]:frame_offsets[t + 1]``."""
    boxes: np.ndarray
    """(N, 4) float32 ``[x0, y0, x1, y1]`` in pixels."""
    labels: np.ndarray
    """(N,) int64."""
    track_ids: np.ndarray
    """(N,) int64."""
    speeds: np.ndarray
    """(N,) float32 px/frame (NaN where unknown)."""
    segments: tuple[str, ...] = field(default=())
    """Per frame: the difficulty segment name ('' if none)."""
    cache_path: Path = field(default=Path(), repr=False)
    """The file the episode came from."""

    @property
    def features(self) -> Mapping[str, np.ndarray]:
        """The ``interleave`` section: ``{extractor name: (T, C, g, g) float16}``.

        Raises:
            CacheSectionError: The episode was loaded without the ``interleave`` section.
        """
        if schema.SECTION_INTERLEAVE not in self.sections:
            raise CacheSectionError(
                self.cache_path,
                f"episode {self.video_id!r} was loaded without the interleave section "
                f"(loaded: {sorted(self.sections)})",
                video=self.video_id,
            )
        return self.sections[schema.SECTION_INTERLEAVE]

    def ground_truth(self, t: int) -> FrameAnnotation:
        """Ground truth of frame ``t``."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} out of range for {self.video_id} ({self.num_frames} frames)")
        s, e = int(self.frame_offsets[t]), int(self.frame_offsets[t + 1])
        return FrameAnnotation(
            boxes=self.boxes[s:e],
            labels=self.labels[s:e],
            track_ids=self.track_ids[s:e],
            speeds=self.speeds[s:e],
            segment=self.segments[t] if self.segments else "",
        )

    def __repr__(self) -> str:
        secs = ", ".join(
            f"{s}: {{" + ", ".join(f"{k!r}: {_shape(a)}" for k, a in arrays.items()) + "}"
            for s, arrays in self.sections.items()
        )
        return (
            f"VideoEpisode(video_id={self.video_id!r}, split={self.split!r}, label={self.label}, "
            f"num_frames={self.num_frames}, objects={len(self.labels)}, sections={{{secs}}})"
        )


@dataclass(frozen=True, eq=False)
class VideoEntry:
    """One row of the file's video index."""

    video_id: str
    split: str
    label: int
    num_frames: int
    source_sha256: str


@dataclass(frozen=True, eq=False)
class CacheInfo:
    """Identity and contents of a cache file (file-level metadata, written once)."""

    path: Path
    schema_version: int
    gistgym_version: str
    sections: tuple[str, ...]
    weights_sha256: str
    dataset: Mapping[str, Any] = field(repr=False)
    model_weights: Mapping[str, str] = field(default_factory=dict)
    """sha256 of the extra frozen models' weights by role (sections other than ``interleave``)."""
    splits: tuple[str, ...] = ()
    videos: tuple[VideoEntry, ...] = field(default=(), repr=False)
    modules: Mapping[str, Any] = field(default_factory=dict, repr=False)
    preprocessing: Mapping[str, Any] = field(default_factory=dict, repr=False)
    costs: Mapping[str, Any] = field(default_factory=dict, repr=False)
    storage: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_videos(self) -> int:
        """Videos in the file."""
        return len(self.videos)

    @property
    def num_frames(self) -> int:
        """Frames in the file."""
        return sum(v.num_frames for v in self.videos)

    def video_ids(self, split: str | None = None) -> tuple[str, ...]:
        """Video ids in index order, optionally of one split."""
        return tuple(v.video_id for v in self.videos if split is None or v.split == split)


def _json_attr(path: Path, attrs: Mapping[str, Any], key: str, kind: type = object) -> Any:
    if key not in attrs:
        raise CacheError(path, f"file attribute missing; {REBUILD_HINT}", field=key)
    try:
        value = json.loads(attrs[key])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CacheError(path, f"file attribute is not valid JSON: {exc}; {REBUILD_HINT}", field=key) from exc
    if not isinstance(value, kind):
        raise CacheError(
            path,
            f"file attribute is a JSON {type(value).__name__}, expected a {kind.__name__}; {REBUILD_HINT}",
            field=key,
        )
    return value


def _names(path: Path, attrs: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = _json_attr(path, attrs, key, list)
    if not all(isinstance(v, str) for v in value):
        raise CacheError(path, f"file attribute must be a list of names, got {value!r}; {REBUILD_HINT}", field=key)
    return tuple(value)


SectionCheck = Callable[["SectionData"], "tuple[str, str] | None"]
"""``section -> (field, problem)`` if the section's embedded data cannot be used, else ``None``."""

SECTION_CHECKS: dict[str, SectionCheck] = {}
"""Per section name, a check that its embedded modules rebuild (registered by the modules that
know them, e.g. :mod:`gistgym.feature_cache.sections` for ``interleave``; the reader stays torch-free)."""


def register_section_check(name: str, check: SectionCheck) -> None:
    """Run ``check`` on every :meth:`FeatureCache.section` of ``name``; a problem raises :class:`CacheDataError`."""
    SECTION_CHECKS[name] = check


@dataclass(frozen=True)
class Seal:
    """The metadata seal recorded at build time (see the schema's ``seal``)."""

    attrs: Mapping[str, str]
    """sha256 of every file attribute (but the seal) by name."""
    groups: Mapping[str, Mapping[str, str]]
    """sha256 of every attribute of every group that has attributes, by group path and name."""
    datasets: Mapping[str, Layout]
    """(dtype, shape) of every dataset by path."""

    @staticmethod
    def parse(path: Path, text: Any) -> Seal:
        """The seal in the ``seal`` attribute's JSON text.

        Raises:
            CacheDataError: It is not a seal this gistgym reads.
        """
        where = f"attrs[{schema.ATTR_SEAL}]"
        try:
            d = json.loads(text)
            if d["algorithm"] != schema.SEAL_ALGORITHM:
                raise ValueError(f"unknown algorithm {d['algorithm']!r}")
            attrs = {str(k): str(v) for k, v in dict(d["attrs"]).items()}
            groups = {str(g): {str(k): str(v) for k, v in dict(a).items()} for g, a in dict(d["groups"]).items()}
            datasets = {str(k): (str(v[0]), tuple(int(n) for n in v[1])) for k, v in dict(d["datasets"]).items()}
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise CacheDataError(path, f"the metadata seal is damaged ({exc}); {REBUILD_HINT}", field=where) from exc
        return Seal(attrs, groups, datasets)


def attr_mismatches(actual: Mapping[str, str], sealed: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(attribute name, problem)`` for every attribute whose digest is not the sealed one."""
    out: list[tuple[str, str]] = []
    for name in sorted(set(actual) | set(sealed)):
        if name not in actual:
            out.append((name, ATTR_MISSING))
        elif name not in sealed:
            out.append((name, ATTR_NOT_SEALED))
        elif actual[name] != sealed[name]:
            out.append((name, ATTR_DIFFERS))
    return out


def attr_field(group: str, name: str) -> str:
    """How errors name an attribute: ``attrs[costs]`` (file) or ``sections/interleave.attrs[extractors]``."""
    return f"{group}.attrs[{name}]" if group else f"attrs[{name}]"


def _nonfinite_count(a: np.ndarray) -> tuple[int, int]:
    """Number of NaN/inf values and the first frame (index on axis 0) that has one."""
    if a.dtype == np.float16:
        # A half is NaN/inf iff its exponent bits are all ones, i.e. |bits| >= 0x7C00. One
        # integer max is ~20x faster than np.isfinite on halves (this runs on every load).
        magnitude = a.view(np.uint16) & 0x7FFF
        if a.size == 0 or magnitude.max() < 0x7C00:
            return 0, -1
        bad = magnitude >= 0x7C00
    elif np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
    else:
        return 0, -1
    n = int(bad.sum())
    if n == 0:
        return 0, -1
    first = int(np.argmax(bad.reshape(len(a), -1).any(axis=1))) if a.ndim >= 1 else 0
    return n, first


class FeatureCache:
    """A feature cache file, validated on open and as it is read.

    Args:
        path: The ``.h5`` file written by ``gistgym cache build``.
        sections: Sections the caller needs; missing ones raise :class:`CacheSectionError`.
            Episodes load these sections (all present ones when empty).
        expected_weights_sha256: If given, refuse a cache built from other weights.
        check_finite: Refuse episodes whose features or ground-truth boxes hold NaN or inf.
        check_metadata: Check attributes and dataset layouts against the metadata seal
            (``verify`` turns it off to report every difference instead of the first).
        check_checksums: Check each dataset's bytes against its recorded sha256 the first
            time it is loaded (``verify`` turns it off: it compares every dataset itself).

    Raises:
        CacheError: Missing file, a directory, not HDF5, truncated, not a gistgym cache, bad metadata.
        CacheVersionError: Unknown or newer schema version.
        CacheSectionError: A requested section is absent.
        CacheMismatchError: Built from other weights than ``expected_weights_sha256``.
        CacheDataError: A file attribute differs from the seal.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        sections: Sequence[str] = (),
        expected_weights_sha256: str | None = None,
        check_finite: bool = True,
        check_metadata: bool = True,
        check_checksums: bool = True,
    ) -> None:
        self.path = Path(path)
        self.check_finite = check_finite
        self.check_metadata = check_metadata
        self.check_checksums = check_checksums
        self._handle: CacheFile | None = None
        self._pid = -1
        self._recorded: dict[str, Any] | None = None
        self._verified: set[str] = set()
        """Datasets whose bytes matched their recorded checksum in this reader (checked once)."""
        self._feature_shape: tuple[int, ...] | None = None
        if self.path.is_dir():
            raise CacheError(
                self.path,
                "is a directory, not a cache file; give the .h5 file (one made by "
                f"`gistgym cache build --out {self.path / 'cache.h5'}`)",
            )
        if not self.path.is_file():
            raise CacheError(self.path, f"cache file does not exist; build it with `gistgym cache build --out {path}`")
        # Validate with a handle that is closed again: the file stays closed until first use,
        # so a reader made before a fork or pickled for a worker holds no h5py state.
        try:
            attrs = self._file().file_attrs()
            self.info = self._read_info(attrs)
            digests = self._file().file_attr_digests()
        finally:
            self.close()
        missing = [s for s in sections if s not in self.info.sections]
        if missing:
            raise CacheSectionError(
                self.path,
                f"section(s) {missing} not in the cache (present: {list(self.info.sections)}); rebuild with "
                f"`gistgym cache build --videos DIR --out {self.path} --sections "
                f"{' '.join(dict.fromkeys([*self.info.sections, *missing]))}`",
                field=schema.ATTR_SECTIONS,
            )
        self.sections = tuple(sections) if sections else self.info.sections
        if expected_weights_sha256 is not None and expected_weights_sha256 != self.info.weights_sha256:
            raise CacheMismatchError(
                self.path,
                f"built from weights with sha256 {self.info.weights_sha256}, expected {expected_weights_sha256}; "
                f"rebuild it with `gistgym cache build --weights W.pt --out {self.path}`",
                field=schema.ATTR_WEIGHTS_SHA256,
            )
        # The seal is checked last: a missing section or other weights is the more useful message.
        self.seal = Seal.parse(self.path, attrs[schema.ATTR_SEAL]) if schema.ATTR_SEAL in attrs else None
        if check_metadata:
            if self.seal is None:
                self._warn_unsealed()
            else:
                self._raise_first("", attr_mismatches(digests, self.seal.attrs))
        self._index = {v.video_id: v for v in self.info.videos}

    @property
    def sealed(self) -> bool:
        """Whether the file carries a metadata seal (caches built before it existed do not)."""
        return self.seal is not None

    def _warn_unsealed(self) -> None:
        key = str(self.path.resolve())
        if key in _WARNED_UNSEALED:
            return
        _WARNED_UNSEALED.add(key)
        log.warning(
            "gistgym: warning: %s: metadata unsealed (built before gistgym sealed its attributes): edited "
            "configurations or costs would go unnoticed, data checksums are still checked; rebuild it with "
            "`gistgym cache build` to seal it",
            self.path,
        )

    def _raise_first(self, group: str, mismatches: Sequence[tuple[str, str]], video: str | None = None) -> None:
        """Raise :class:`CacheDataError` for the first attribute mismatch of ``group`` (if any)."""
        if not mismatches:
            return
        name, problem = mismatches[0]
        more = f" ({len(mismatches) - 1} more: run `gistgym cache verify`)" if len(mismatches) > 1 else ""
        raise CacheDataError(
            self.path,
            f"attribute {_ATTR_PROBLEMS[problem]}{more}; {REBUILD_HINT}",
            field=attr_field(group, name),
            video=video,
        )

    # --- handle management -----------------------------------------------------------------
    def _file(self) -> CacheFile:
        """The handle of this process, (re)opened lazily; never one inherited through fork."""
        if self._handle is None or self._pid != os.getpid():
            # A handle inherited through fork is never used here: HDF5's in-memory state is
            # not safe to share between processes. Dropping it only releases the child's copy
            # (read-only: nothing is flushed), the parent's handle is unaffected.
            self._handle = CacheFile(self.path)
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close this process's handle (it reopens on next use)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = -1
        return state

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, videos={self.info.num_videos}, frames={self.info.num_frames}, "
            f"sections={list(self.info.sections)})"
        )

    # --- metadata --------------------------------------------------------------------------
    def _read_info(self, attrs: Mapping[str, Any]) -> CacheInfo:
        path = self.path
        fmt = attrs.get(schema.ATTR_FORMAT)
        if fmt != schema.FORMAT:
            what = "a shard of an unfinished build" if fmt == schema.SHARD_FORMAT else f"format {fmt!r}"
            raise CacheError(
                path,
                f"not a gistgym feature cache ({what}, expected {schema.FORMAT!r}); {REBUILD_HINT}",
                field="format",
            )
        version = attrs.get(schema.ATTR_SCHEMA_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise CacheVersionError(
                path, f"schema version missing or not an integer ({version!r}); {REBUILD_HINT}", field="schema_version"
            )
        if version > schema.SCHEMA_VERSION:
            raise CacheVersionError(
                path,
                f"schema version {version} is newer than this gistgym reads ({schema.SCHEMA_VERSION}); upgrade "
                f"gistgym (`pip install -U gistgym`) or {REBUILD_HINT}",
                field="schema_version",
            )
        if version != schema.SCHEMA_VERSION:
            raise CacheVersionError(
                path,
                f"unknown schema version {version} (this gistgym reads {schema.SCHEMA_VERSION}); {REBUILD_HINT}",
                field="schema_version",
            )
        videos = _json_attr(path, attrs, schema.ATTR_VIDEOS, list)
        try:
            entries = tuple(
                VideoEntry(
                    str(v["video_id"]),
                    str(v["split"]),
                    int(v["label"]),
                    int(v["num_frames"]),
                    str(v["source_sha256"]),
                )
                for v in videos
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise CacheError(path, f"bad video index: {exc!r}", field=schema.ATTR_VIDEOS) from exc
        ids = [e.video_id for e in entries]
        bad = next((e for e in entries if e.num_frames < 0 or not e.video_id or "/" in e.video_id), None)
        if bad is not None or len(set(ids)) != len(ids):
            raise CacheError(path, f"bad video index entry {bad or 'duplicate id'}", field=schema.ATTR_VIDEOS)
        model_weights = (
            _json_attr(path, attrs, schema.ATTR_MODEL_WEIGHTS, dict) if schema.ATTR_MODEL_WEIGHTS in attrs else {}
        )
        return CacheInfo(
            path=path,
            schema_version=version,
            gistgym_version=str(attrs.get(schema.ATTR_GISTGYM_VERSION, "")),
            sections=_names(path, attrs, schema.ATTR_SECTIONS),
            weights_sha256=str(attrs.get(schema.ATTR_WEIGHTS_SHA256, "")),
            dataset=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_DATASET, dict)),
            model_weights=ReadOnlyMapping(model_weights),
            splits=_names(path, attrs, schema.ATTR_SPLITS),
            videos=entries,
            modules=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_MODULES, dict)),
            preprocessing=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_PREPROCESSING, dict)),
            costs=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_COSTS, dict)),
            storage=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_STORAGE, dict)),
        )

    def raw_datasets(self, group: str, *, video: str | None = None) -> dict[str, np.ndarray]:
        """Every dataset under an HDF5 group, as stored, keyed by path relative to the group.

        For tools such as ``verify``; environments use :meth:`load_episode`.
        """
        return self._file().read_group(group, video=video)

    def has_group(self, group: str) -> bool:
        """Whether the file has the HDF5 group ``group``."""
        return self._file().has_group(group)

    def dataset_storage(self) -> list[DatasetStorage]:
        """Logical and on-disk size of every dataset in the file (for ``gistgym cache info``)."""
        return list(self._file().iter_storage())

    def checksums(self) -> dict[str, Any]:
        """The per-dataset sha256 recorded at write time (see the schema's ``checksums``)."""
        if self._recorded is None:
            attrs = self._file().file_attrs()
            recorded = _json_attr(self.path, attrs, schema.ATTR_CHECKSUMS, dict)
            for key in ("videos", "sections"):
                if not isinstance(recorded.get(key, {}), dict):
                    raise CacheError(self.path, f"checksums[{key!r}] is not a mapping", field=schema.ATTR_CHECKSUMS)
            self._recorded = recorded
        return dict(self._recorded)

    def metadata_mismatches(self) -> list[tuple[str, str]]:
        """``(where, problem)`` for every attribute and dataset layout that differs from the seal.

        ``where`` names an attribute (``attrs[costs]``, ``sections/interleave.attrs[...]``) or a
        dataset path; problems are ``checksum differs``, ``missing``, ``not sealed`` and (for
        datasets) ``shape or dtype differs``. Empty for an unsealed cache (see :attr:`sealed`).
        Walks every group and dataset header of the file (no data): what ``info`` and ``verify`` check.
        """
        if self.seal is None:
            return []
        handle = self._file()
        out = [(attr_field("", n), p) for n, p in attr_mismatches(handle.file_attr_digests(), self.seal.attrs)]
        groups, layouts = handle.walk()
        for group in sorted(set(groups) | set(self.seal.groups)):
            found = groups.get(group, {})
            out += [(attr_field(group, n), p) for n, p in attr_mismatches(found, self.seal.groups.get(group, {}))]
        for name in sorted(set(layouts) | set(self.seal.datasets)):
            if name not in layouts:
                out.append((name, ATTR_MISSING))
            elif name not in self.seal.datasets:
                out.append((name, ATTR_NOT_SEALED))
            elif layouts[name] != self.seal.datasets[name]:
                out.append((name, "shape or dtype differs"))
        return out

    def check_metadata_all(self) -> None:
        """Raise for the first difference :meth:`metadata_mismatches` finds (no-op when unsealed).

        Raises:
            CacheDataError: Names the attribute or dataset, and how many more differ.
        """
        found = self.metadata_mismatches()
        if not found:
            return
        where, problem = found[0]
        more = f" ({len(found) - 1} more: run `gistgym cache verify`)" if len(found) > 1 else ""
        what = "dataset layout" if ".attrs[" not in where and not where.startswith("attrs[") else "attribute"
        text = _ATTR_PROBLEMS.get(problem, "differs from the one recorded when the cache was built")
        raise CacheDataError(self.path, f"{what} {text}{more}; {REBUILD_HINT}", field=where)

    def incomplete_videos(self) -> list[tuple[str, str]]:
        """``(video id, "missing" | "incomplete")`` for index entries without a finished video group."""
        handle = self._file()
        out: list[tuple[str, str]] = []
        for v in self.info.videos:
            group = f"{schema.GROUP_VIDEOS}/{v.video_id}"
            complete = handle.group_attr(group, schema.VIDEO_COMPLETE)
            if complete is not True:
                out.append(
                    (v.video_id, "missing" if complete is None and not handle.has_group(group) else "incomplete")
                )
        return out

    def video_ids(self, split: str | None = None) -> tuple[str, ...]:
        """Video ids in index order, optionally of one split.

        Raises:
            CacheError: ``split`` is not in the cache.
        """
        if split is not None and split not in self.info.splits:
            raise CacheError(
                self.path, f"no split {split!r} in the cache (has {list(self.info.splits)})", field=schema.ATTR_SPLITS
            )
        return self.info.video_ids(split)

    def entry(self, video_id: str) -> VideoEntry:
        """The index entry of one video.

        Raises:
            CacheError: No such video.
        """
        if video_id not in self._index:
            some = ", ".join(list(self._index)[:3])
            raise CacheError(
                self.path,
                f"no video {video_id!r} in the cache ({len(self._index)} videos, e.g. {some})",
                field=f"{schema.GROUP_VIDEOS}/{video_id}",
                video=video_id,
            )
        return self._index[video_id]

    # --- checks of what is read ---------------------------------------------------------------
    def _layouts(self) -> Mapping[str, Layout] | None:
        return self.seal.datasets if self.seal is not None and self.check_metadata else None

    def _check_group_attrs(self, group: str, video: str | None = None) -> None:
        """A group's attributes against the seal, once per reader (attributes are never rewritten)."""
        key = f"{group}.attrs"
        if self.seal is None or not self.check_metadata or key in self._verified:
            return
        found = self._file().group_attr_digests(group) or {}
        self._raise_first(group, attr_mismatches(found, self.seal.groups.get(group, {})), video)
        self._verified.add(key)

    def _check_bytes(
        self, prefix: str, arrays: Mapping[str, np.ndarray], recorded: Any, video: str | None = None
    ) -> None:
        """Compare each array (once per reader) with the sha256 recorded for ``prefix/name``."""
        if not self.check_checksums:
            return
        for name, a in arrays.items():
            where = f"{prefix}/{name}"
            if where in self._verified:
                continue
            expected = recorded.get(name) if isinstance(recorded, dict) else None
            if expected is None:
                raise CacheDataError(
                    self.path, f"no checksum recorded for this dataset; {REBUILD_HINT}", field=where, video=video
                )
            if array_sha256(a) != expected:
                raise CacheDataError(
                    self.path,
                    f"{name.rsplit('/', 1)[-1]} does not match the checksum recorded when it was computed "
                    f"(damaged on disk?); {REBUILD_HINT}",
                    field=where,
                    video=video,
                )
            self._verified.add(where)

    def _raise_nonfinite(self, where: str, a: np.ndarray, video: str, what: str) -> None:
        n, first = _nonfinite_count(a)
        if n:
            raise CacheDataError(
                self.path,
                f"{n} NaN/inf values in the {what} of video {video!r} (first at frame {first}); {REBUILD_HINT}",
                field=where,
                video=video,
            )

    def _interleave_feature_shape(self) -> tuple[int, ...] | None:
        """``[C, g, g]`` of the ``interleave`` section as recorded (``None`` if unreadable)."""
        if self._feature_shape is None:
            raw = self._file().group_attr(
                f"{schema.GROUP_SECTIONS}/{schema.SECTION_INTERLEAVE}", schema.INTERLEAVE_FEATURE_SHAPE
            )
            try:
                shape = tuple(int(n) for n in json.loads(raw))
            except (TypeError, ValueError):
                return None
            self._feature_shape = shape
        return self._feature_shape

    def _check_ground_truth(self, gt: Mapping[str, np.ndarray], group: str, video: str, frames: int) -> None:
        """Shapes against the frame count, offsets that add up, labels in range, finite boxes."""

        def fail(name: str, problem: str) -> None:
            raise CacheDataError(self.path, f"{problem}; {REBUILD_HINT}", field=f"{group}/{name}", video=video)

        offsets = gt[schema.GT_FRAME_OFFSETS]
        if offsets.shape != (frames + 1,) or offsets.dtype.kind not in "iu":
            fail(schema.GT_FRAME_OFFSETS, f"frame_offsets of shape {offsets.shape}, expected ({frames + 1},) integers")
        objects = len(gt[schema.GT_LABELS]) if gt[schema.GT_LABELS].ndim == 1 else -1
        if offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != objects:
            fail(
                schema.GT_FRAME_OFFSETS,
                f"frame_offsets must rise from 0 to the number of objects ({objects}), "
                f"got {offsets[0]} .. {offsets[-1]}{' and a decrease' if (np.diff(offsets) < 0).any() else ''}",
            )
        expected = {
            schema.GT_BOXES: ((objects, 4), "f"),
            schema.GT_LABELS: ((objects,), "iu"),
            schema.GT_TRACK_IDS: ((objects,), "iu"),
            schema.GT_SPEEDS: ((objects,), "f"),
            schema.GT_SEGMENTS: ((frames,), "S"),
        }
        for name, (shape, kinds) in expected.items():
            a = gt[name]
            if a.shape != shape or a.dtype.kind not in kinds:
                fail(name, f"{name.rsplit('/', 1)[-1]} of shape {a.shape} {a.dtype}, expected {shape}")
        if self.check_finite:
            self._raise_nonfinite(f"{group}/{schema.GT_BOXES}", gt[schema.GT_BOXES], video, "ground-truth boxes")
        classes = self.info.dataset.get("classes")
        labels = gt[schema.GT_LABELS]
        if isinstance(classes, list) and classes and len(labels):
            bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
            if len(bad):
                frame = int(np.searchsorted(offsets, bad[0], side="right")) - 1
                fail(
                    schema.GT_LABELS,
                    f"ground-truth label {int(labels[bad[0]])} outside 0..{len(classes) - 1} "
                    f"(the dataset's classes) at frame {frame}",
                )

    def section(self, name: str) -> SectionData:
        """What section ``name`` embeds once per file (attributes and tensors), checked.

        Raises:
            CacheSectionError: No such section in the file.
            CacheDataError: Its attributes or tensors differ from what the build recorded, or
                (for a section with a registered check) its modules do not rebuild.
        """
        if name not in self.info.sections:
            raise CacheSectionError(
                self.path,
                f"section {name!r} not in the cache (present: {list(self.info.sections)}); rebuild with "
                f"`gistgym cache build --sections {name} ...`",
                field=schema.ATTR_SECTIONS,
            )
        group = f"{schema.GROUP_SECTIONS}/{name}"
        handle = self._file()
        raw = handle.group_attrs(group)
        if raw is None:
            raise CacheError(self.path, f"section group missing; {REBUILD_HINT}", field=group)
        self._check_group_attrs(group)
        attrs: dict[str, Any] = {}
        for k, v in raw.items():
            try:
                attrs[k] = json.loads(v) if isinstance(v, str) else v
            except json.JSONDecodeError:
                attrs[k] = v
        arrays, problems = handle.read_group_checked(group, layouts=self._layouts())
        if problems:
            where, problem = problems[0]
            raise CacheDataError(self.path, f"{problem}; {REBUILD_HINT}", field=where)
        if self.check_checksums:
            recorded = self.checksums().get("sections", {}).get(name, {})
            for missing in sorted(set(recorded) - set(arrays)):
                raise CacheDataError(self.path, f"dataset missing; {REBUILD_HINT}", field=f"{group}/{missing}")
            self._check_bytes(group, arrays, recorded)
        tensors: dict[str, dict[str, np.ndarray]] = {}
        for rel, array in arrays.items():
            module, _, key = rel.partition("/")
            tensors.setdefault(module, {})[key] = _frozen_array(array)
        data = SectionData(name, ReadOnlyMapping(attrs), ReadOnlyMapping(tensors))
        check = SECTION_CHECKS.get(name)
        found = check(data) if check is not None else None
        if found is not None:
            where, problem = found
            raise CacheDataError(self.path, f"{problem}; {REBUILD_HINT}", field=f"{group}{where}")
        return data

    # --- episodes --------------------------------------------------------------------------
    def load_episode(self, video_id: str, *, sections: Sequence[str] | None = None) -> VideoEpisode:
        """Read one whole video (ground truth and section arrays) into numpy in one go, checked.

        Args:
            video_id: A video of the index.
            sections: Sections to load (default: the ones given at open, else all).

        Raises:
            CacheError: No such video, or its data is unreadable.
            CacheIncompleteError: The video group has no completion mark.
            CacheDataError: An attribute differs from the seal; a dataset's shape or dtype from
                the record or the frame count; NaN/inf features or boxes; frame offsets that do
                not add up; a label outside the classes; bytes that differ from their
                checksum (names the video, the dataset and, where it helps, the frame).
        """
        entry = self.entry(video_id)
        wanted = tuple(sections) if sections is not None else self.sections
        for s in wanted:
            if s not in self.info.sections:
                self.section(s)  # raises CacheSectionError with the rebuild hint
        group = f"{schema.GROUP_VIDEOS}/{video_id}"
        handle = self._file()
        complete = handle.group_attr(group, schema.VIDEO_COMPLETE)
        if complete is None and not handle.has_group(group):
            raise CacheError(self.path, f"video group missing; {REBUILD_HINT}", field=group, video=video_id)
        if complete is not True:
            raise CacheIncompleteError(
                self.path,
                f"video {video_id!r} has no completion mark (written by an interrupted or foreign writer); "
                f"{REBUILD_HINT}",
                field=f"{group}.attrs[{schema.VIDEO_COMPLETE}]",
                video=video_id,
            )
        self._check_group_attrs(group, video_id)
        layouts = self._layouts()
        T = entry.num_frames
        gt_group = f"{group}/{schema.GROUP_GT}"
        gt_read, problems = handle.read_group_checked(gt_group, video=video_id, layouts=layouts)
        gt = {f"{schema.GROUP_GT}/{k}": v for k, v in gt_read.items()}
        loaded: dict[str, dict[str, np.ndarray]] = {}
        for s in wanted:
            arrays, found = handle.read_group_checked(f"{group}/{s}", video=video_id, layouts=layouts)
            problems += found
            if self.check_finite:
                for name, a in arrays.items():
                    self._raise_nonfinite(f"{group}/{s}/{name}", a, video_id, "features")
            loaded[s] = arrays
        if problems:  # a dataset whose header differs from the record (it was not read)
            where, problem = problems[0]
            raise CacheDataError(self.path, f"{problem}; {REBUILD_HINT}", field=where, video=video_id)
        for name in schema.GT_DATASETS:
            if name not in gt:
                raise CacheError(self.path, "dataset missing", field=f"{group}/{name}", video=video_id)
        self._check_ground_truth(gt, group, video_id, T)
        shape = self._interleave_feature_shape() if schema.SECTION_INTERLEAVE in loaded else None
        if shape is not None:
            for name, a in loaded[schema.SECTION_INTERLEAVE].items():
                if a.shape != (T, *shape):
                    raise CacheDataError(
                        self.path,
                        f"{name} of shape {a.shape}, expected {(T, *shape)} ({T} frames); {REBUILD_HINT}",
                        field=f"{group}/{schema.SECTION_INTERLEAVE}/{name}",
                        video=video_id,
                    )
        if self.check_checksums:
            recorded = self.checksums().get("videos", {}).get(video_id, {})
            self._check_bytes(group, {k: gt[k] for k in schema.GT_DATASETS}, recorded, video_id)
            for s, arrays in loaded.items():
                self._check_bytes(group, {f"{s}/{k}": a for k, a in arrays.items()}, recorded, video_id)
        offsets = gt[schema.GT_FRAME_OFFSETS]
        return VideoEpisode(
            video_id=video_id,
            split=entry.split,
            label=entry.label,
            num_frames=T,
            sections=ReadOnlyMapping(
                {s: ReadOnlyMapping({k: _frozen_array(v) for k, v in arrays.items()}) for s, arrays in loaded.items()}
            ),
            frame_offsets=_frozen_array(offsets),
            boxes=_frozen_array(gt[schema.GT_BOXES]),
            labels=_frozen_array(gt[schema.GT_LABELS]),
            track_ids=_frozen_array(gt[schema.GT_TRACK_IDS]),
            speeds=_frozen_array(gt[schema.GT_SPEEDS]),
            segments=tuple(s.decode(errors="replace") for s in gt[schema.GT_SEGMENTS].tolist()),
            cache_path=self.path,
        )


def open_cache(path: str | Path, **kwargs: Any) -> FeatureCache:
    """Open and validate a cache file (same arguments as :class:`FeatureCache`)."""
    return FeatureCache(path, **kwargs)
