"""Reading a feature cache: validated on open, one episode at a time, numpy only.

Example::

    from gistgym.feature_cache import FeatureCache

    cache = FeatureCache("runs/bench.h5", sections=("interleave",))
    ep = cache.load_episode(cache.video_ids("train")[0])
    ep.features["heavy"]          # (T, C, g, g) float16, read-only
    ep.ground_truth(0)            # FrameAnnotation of frame 0 (boxes, labels, track ids, speeds)

Validation on open: the file exists and is HDF5 (not truncated), its schema version is one
this gistgym reads, the requested sections are present, and (optionally) it was built from
the weights the caller expects. Each problem raises a typed
:class:`~gistgym.errors.CacheError` naming the file and saying how to fix it. Per episode:
the video group must carry its completion mark, and features must be finite.

Handles. A :class:`FeatureCache` keeps one h5py handle per process, opened lazily on
first use. It records the process id at open and reopens in a forked child instead of
sharing the parent's handle; pickling drops the handle (a spawned worker reopens it).

Ground truth comes back ragged as flat arrays plus offsets, exactly as on disk: the
objects of frame ``t`` are rows ``frame_offsets[t]:frame_offsets[t + 1]`` of ``boxes``,
``labels``, ``track_ids`` and ``speeds``; :meth:`VideoEpisode.ground_truth` slices one
frame into a :class:`~gistgym.videos.synthetic.FrameAnnotation`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
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
from gistgym.feature_cache.hdf5 import CacheFile, DatasetStorage
from gistgym.videos.synthetic import FrameAnnotation

REBUILD_HINT = "rebuild it with `gistgym cache build --videos DIR --out FILE`"


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


def _json_attr(path: Path, attrs: Mapping[str, Any], key: str) -> Any:
    if key not in attrs:
        raise CacheError(path, f"file attribute missing; {REBUILD_HINT}", field=key)
    try:
        return json.loads(attrs[key])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CacheError(path, f"file attribute is not valid JSON: {exc}", field=key) from exc


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
    """A feature cache file, validated on open.

    Args:
        path: The ``.h5`` file written by ``gistgym cache build``.
        sections: Sections the caller needs; missing ones raise :class:`CacheSectionError`.
            Episodes load these sections (all present ones when empty).
        expected_weights_sha256: If given, refuse a cache built from other weights.
        check_finite: Refuse episodes whose features hold NaN or inf.

    Raises:
        CacheError: Missing file, not HDF5, truncated, not a gistgym cache, bad metadata.
        CacheVersionError: Unknown or newer schema version.
        CacheSectionError: A requested section is absent.
        CacheMismatchError: Built from other weights than ``expected_weights_sha256``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        sections: Sequence[str] = (),
        expected_weights_sha256: str | None = None,
        check_finite: bool = True,
    ) -> None:
        self.path = Path(path)
        self.check_finite = check_finite
        self._handle: CacheFile | None = None
        self._pid = -1
        if not self.path.is_file():
            raise CacheError(self.path, f"cache file does not exist; build it with `gistgym cache build --out {path}`")
        # Validate with a handle that is closed again: the file stays closed until first use,
        # so a reader made before a fork or pickled for a worker holds no h5py state.
        self.info = self._read_info()
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
        self._index = {v.video_id: v for v in self.info.videos}

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
    def _read_info(self) -> CacheInfo:
        path = self.path
        attrs = self._file().file_attrs()
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
        videos = _json_attr(path, attrs, schema.ATTR_VIDEOS)
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
            raise CacheError(path, f"bad video index: {exc}", field=schema.ATTR_VIDEOS) from exc
        return CacheInfo(
            path=path,
            schema_version=version,
            gistgym_version=str(attrs.get(schema.ATTR_GISTGYM_VERSION, "")),
            sections=tuple(_json_attr(path, attrs, schema.ATTR_SECTIONS)),
            weights_sha256=str(attrs.get(schema.ATTR_WEIGHTS_SHA256, "")),
            dataset=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_DATASET)),
            model_weights=ReadOnlyMapping(
                _json_attr(path, attrs, schema.ATTR_MODEL_WEIGHTS) if schema.ATTR_MODEL_WEIGHTS in attrs else {}
            ),
            splits=tuple(_json_attr(path, attrs, schema.ATTR_SPLITS)),
            videos=entries,
            modules=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_MODULES)),
            preprocessing=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_PREPROCESSING)),
            costs=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_COSTS)),
            storage=ReadOnlyMapping(_json_attr(path, attrs, schema.ATTR_STORAGE)),
        )

    def raw_datasets(self, group: str, *, video: str | None = None) -> dict[str, np.ndarray]:
        """Every dataset under an HDF5 group, as stored, keyed by path relative to the group.

        For tools such as ``verify``; environments use :meth:`load_episode`.
        """
        return self._file().read_group(group, video=video)

    def dataset_storage(self) -> list[DatasetStorage]:
        """Logical and on-disk size of every dataset in the file (for ``gistgym cache info``)."""
        return list(self._file().iter_storage())

    def checksums(self) -> dict[str, Any]:
        """The per-dataset sha256 recorded at write time (see the schema's ``checksums``)."""
        return dict(_json_attr(self.path, self._file().file_attrs(), schema.ATTR_CHECKSUMS))

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

    def section(self, name: str) -> SectionData:
        """What section ``name`` embeds once per file (attributes and tensors).

        Raises:
            CacheSectionError: No such section in the file.
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
        attrs: dict[str, Any] = {}
        for k, v in raw.items():
            try:
                attrs[k] = json.loads(v) if isinstance(v, str) else v
            except json.JSONDecodeError:
                attrs[k] = v
        tensors: dict[str, dict[str, np.ndarray]] = {}
        for rel, array in handle.read_group(group).items():
            module, _, key = rel.partition("/")
            tensors.setdefault(module, {})[key] = _frozen_array(array)
        return SectionData(name, ReadOnlyMapping(attrs), ReadOnlyMapping(tensors))

    # --- episodes --------------------------------------------------------------------------
    def load_episode(self, video_id: str, *, sections: Sequence[str] | None = None) -> VideoEpisode:
        """Read one whole video (ground truth and section arrays) into numpy in one go.

        Args:
            video_id: A video of the index.
            sections: Sections to load (default: the ones given at open, else all).

        Raises:
            CacheError: No such video, or its data is unreadable.
            CacheIncompleteError: The video group has no completion mark.
            CacheDataError: A feature holds NaN or inf (names the video, dataset and frame).
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
        gt = handle.read_datasets(group, schema.GT_DATASETS, video=video_id)
        loaded: dict[str, Mapping[str, np.ndarray]] = {}
        for s in wanted:
            arrays = handle.read_group(f"{group}/{s}", video=video_id)
            if self.check_finite:
                for name, a in arrays.items():
                    n, first = _nonfinite_count(a)
                    if n:
                        raise CacheDataError(
                            self.path,
                            f"{n} NaN/inf values in the features of video {video_id!r} (first at frame {first}); "
                            f"{REBUILD_HINT}",
                            field=f"{group}/{s}/{name}",
                            video=video_id,
                        )
            loaded[s] = ReadOnlyMapping({k: _frozen_array(v) for k, v in arrays.items()})
        offsets = gt[schema.GT_FRAME_OFFSETS]
        if offsets.shape != (entry.num_frames + 1,):
            raise CacheError(
                self.path,
                f"frame_offsets has shape {offsets.shape}, expected ({entry.num_frames + 1},)",
                field=f"{group}/{schema.GT_FRAME_OFFSETS}",
                video=video_id,
            )
        return VideoEpisode(
            video_id=video_id,
            split=entry.split,
            label=entry.label,
            num_frames=entry.num_frames,
            sections=ReadOnlyMapping(loaded),
            frame_offsets=_frozen_array(offsets),
            boxes=_frozen_array(gt[schema.GT_BOXES]),
            labels=_frozen_array(gt[schema.GT_LABELS]),
            track_ids=_frozen_array(gt[schema.GT_TRACK_IDS]),
            speeds=_frozen_array(gt[schema.GT_SPEEDS]),
            segments=tuple(s.decode() for s in gt[schema.GT_SEGMENTS].tolist()),
            cache_path=self.path,
        )


def open_cache(path: str | Path, **kwargs: Any) -> FeatureCache:
    """Open and validate a cache file (same arguments as :class:`FeatureCache`)."""
    return FeatureCache(path, **kwargs)
