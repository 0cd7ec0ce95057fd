"""The only module that imports h5py: writing shards, combining them, reading a cache.

Everything above this module sees numpy arrays, plain attribute dicts and
:class:`~gistgym.errors.CacheError`; no h5py object or exception leaves it.

Durability. A file is written in this order: datasets, ``flush`` + ``fsync``, then the
completion attribute, ``flush``, close, ``fsync`` again. If the completion mark is on
disk, so is the data it vouches for. The caller then renames the temporary file into
place (see :mod:`gistgym.feature_cache.build`).

Storage choice (measured, not guessed). Real ``interleave`` features (3 extractors x
(96, 64, 8, 8) float16 per video, 8 val videos of ``data/bench``, a partially trained
detector; about half the values are exact zeros from ReLU6), one thread, warm page cache::

    option            chunk    bytes/frame  ratio  write ms/video  load ms/video
    none (contiguous)  whole      24 598    1.00        8.6            0.35
    none               16 fr      24 711    0.99        2.8            0.53
    none               1 fr       24 939    0.99        4.2            1.11
    lzf                16 fr      18 030    1.36       17.6            7.78
    lzf + shuffle      16 fr      18 403    1.34       26.2            9.08
    gzip 1             16 fr      14 968    1.64       40.9           12.80
    gzip 1             1 fr       15 275    1.61       40.5           13.92
    gzip 4             16 fr      14 446    1.70       50.3           11.41
    gzip 4 + shuffle   16 fr      14 903    1.65       63.6           12.74

Float16 features that are half zeros compress by at most 1.7x (shuffle does not help:
the non-zero halves are close to random), while decompression makes an episode load
15-35x slower. An environment loads one whole episode at every reset, so the default is
**no compression, contiguous storage** (fastest load; 24.6 kB per frame for the three
extractors, 530 MB for the whole 224-video benchmark). ``compression="gzip"`` (level 1,
16-frame chunks: the best size for the time) or ``"lzf"`` are available for datasets
where disk space matters more than reset time; readers handle every option unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gistgym.errors import CacheError
from gistgym.feature_cache import schema

COMPRESSIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "gzip": {"compression": "gzip", "compression_opts": 1},
}
"""Compression choices for section arrays (ground truth is tiny and never compressed)."""
DEFAULT_COMPRESSION = "none"
CHUNK_FRAMES = 16
"""Frames per chunk when a compression filter is used (filters need chunked storage)."""


def storage_description(compression: str) -> dict[str, Any]:
    """The JSON-ready ``storage`` attribute for a compression choice."""
    return {
        "compression": compression,
        "chunk_frames": CHUNK_FRAMES if COMPRESSIONS[compression] else None,
        "layout": "chunked" if COMPRESSIONS[compression] else "contiguous",
    }


H5_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    RuntimeError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
    AttributeError,
    MemoryError,
    OverflowError,
    SystemError,
)
"""What h5py raises on a damaged file: ``OSError: Can't synchronously read data``,
``RuntimeError: Object visitation failed``, ``KeyError`` for a group whose link was damaged,
``ValueError``/``UnicodeDecodeError`` for a mangled attribute, ``TypeError`` for an object of the
wrong kind, ``MemoryError`` for a header claiming an absurd shape, ... Every h5py call of
:class:`CacheFile` turns them into one :class:`CacheError` naming the file."""

MAX_EXPANSION = 1024
"""A compressed dataset may decode to at most this many times the file's size (a damaged
header claiming more is refused before numpy tries to allocate it); an uncompressed one to
at most the file's size."""

Layout = tuple[str, tuple[int, ...]]
"""(numpy dtype string, shape) of a dataset, as recorded in the seal."""


def _dataset_kwargs(array: np.ndarray, compression: str) -> dict[str, Any]:
    filters = COMPRESSIONS[compression]
    if not filters or array.ndim == 0 or array.shape[0] == 0:
        return {}
    return {"chunks": (min(CHUNK_FRAMES, array.shape[0]), *array.shape[1:]), **filters}


def _to_attr(value: Any) -> Any:
    """Python value -> HDF5 attribute value (structured values as JSON strings)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return json.dumps(None)
    return value


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def attr_digest(value: Any) -> str:
    """sha256 of an attribute value as readers see it (decoded), in canonical JSON.

    The seal records it at build time and readers recompute it, so both sides must decode
    the same way: both go through this function.
    """
    value = _from_attr(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _layout(ds: h5py.Dataset) -> Layout:
    return ds.dtype.str, tuple(int(n) for n in ds.shape)


def _name(name: str | bytes) -> str:
    """A link name as text (h5py hands out ``bytes`` for a name that is not UTF-8, e.g. a damaged one)."""
    text = name if isinstance(name, str) else name.decode("utf-8", "backslashreplace")
    # no control characters in an error line (a damaged name can hold any byte)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _walk(root: h5py.Group) -> tuple[dict[str, dict[str, str]], dict[str, Layout]]:
    """Digests of every group's attributes (groups that have any) and the layout of every dataset."""
    groups: dict[str, dict[str, str]] = {}
    layouts: dict[str, Layout] = {}

    def visit(name: str | bytes, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            layouts[_name(name)] = _layout(item)
        elif isinstance(item, h5py.Group) and len(item.attrs):
            groups[_name(name)] = {_name(k): attr_digest(v) for k, v in item.attrs.items()}

    root.visititems(visit)
    return groups, layouts


def _seal_value(f: h5py.File) -> str:
    groups, layouts = _walk(f)
    return json.dumps(
        {
            "algorithm": schema.SEAL_ALGORITHM,
            "attrs": {k: attr_digest(v) for k, v in f.attrs.items() if k != schema.ATTR_SEAL},
            "groups": groups,
            "datasets": {k: [dtype, list(shape)] for k, (dtype, shape) in layouts.items()},
        },
        sort_keys=True,
    )


def write_seal(path: Path) -> None:
    """(Re)write the metadata seal of a finished cache file from what it holds now.

    :func:`combine_shards` seals every file it writes. This is for writers of files in the
    cache format other than the build (and tests that make one by hand): sealing a damaged
    or edited file vouches for the damage, so never run it on a file you did not just write.
    """
    with h5py.File(path, "a") as f:
        f.attrs[schema.ATTR_SEAL] = _seal_value(f)
        f.flush()


def _fsync_open(handle: h5py.File) -> None:
    handle.flush()
    os.fsync(handle.id.get_vfd_handle())


def fsync_path(path: Path) -> None:
    """Flush a closed file's (or a directory's) data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(
    path: Path,
    *,
    file_attrs: Mapping[str, Any],
    video_id: str,
    video_attrs: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    compression: str,
) -> None:
    """Write one video's shard file (at a temporary path; the caller renames it).

    Args:
        path: File to create (overwritten).
        file_attrs: Shard identity (see :data:`~gistgym.feature_cache.schema.SHARD_IDENTITY`).
        video_id: Name of the video group.
        video_attrs: Attributes of the video group (the completion mark is added here, last).
        arrays: Datasets relative to the video group; those outside ``gt/`` are compressed
            with ``compression``.
        compression: A key of :data:`COMPRESSIONS`.
    """
    with h5py.File(path, "w") as f:
        for key, value in file_attrs.items():
            f.attrs[key] = _to_attr(value)
        group = f.create_group(f"{schema.GROUP_VIDEOS}/{video_id}")
        for key, value in video_attrs.items():
            group.attrs[key] = _to_attr(value)
        for rel, array in arrays.items():
            kwargs = {} if rel.startswith(schema.GROUP_GT + "/") else _dataset_kwargs(array, compression)
            group.create_dataset(rel, data=array, **kwargs)
        _fsync_open(f)
        group.attrs[schema.VIDEO_COMPLETE] = True
        f.flush()
    fsync_path(path)


def read_shard_identity(path: Path, video_id: str) -> dict[str, Any] | None:
    """The identity attributes of a finished shard, or ``None`` if it is unreadable or incomplete."""
    try:
        with h5py.File(path, "r") as f:
            if _from_attr(f.attrs.get(schema.ATTR_FORMAT)) != schema.SHARD_FORMAT:
                return None
            group = f.get(f"{schema.GROUP_VIDEOS}/{video_id}")
            if not isinstance(group, h5py.Group) or not _from_attr(group.attrs.get(schema.VIDEO_COMPLETE, False)):
                return None
            return {k: _from_attr(v) for k, v in f.attrs.items()}
    except H5_ERRORS:  # any damage: the shard is recomputed
        return None


@dataclass(frozen=True)
class EmbeddedArrays:
    """What a section stores once per file: JSON-ready attributes and named tensors."""

    attrs: Mapping[str, Any]
    tensors: Mapping[str, Mapping[str, np.ndarray]]
    """``{module name: {state_dict key: array}}``."""


def combine_shards(
    path: Path,
    *,
    shards: Sequence[tuple[str, Path]],
    sections: Mapping[str, EmbeddedArrays],
    file_attrs: Mapping[str, Any],
    after_copy: Callable[[int], None] | None = None,
) -> None:
    """Copy every shard's video group into one new self-contained file.

    Groups are copied (``H5Ocopy``: raw chunks, no re-encoding), never linked, so the
    result holds all its data and can be handed to an environment alone. File identity
    attributes are written last, after the data is fsynced.

    Args:
        path: File to create (a temporary name; the caller renames it).
        shards: ``(video_id, shard file)`` in the order of the video index.
        sections: Embedded modules of each section.
        file_attrs: File identity attributes.
        after_copy: Called with the index of each copied video (a test hook).
    """
    with h5py.File(path, "w") as f:
        videos = f.create_group(schema.GROUP_VIDEOS)
        for i, (video_id, shard) in enumerate(shards):
            with h5py.File(shard, "r") as src:
                src.copy(src[f"{schema.GROUP_VIDEOS}/{video_id}"], videos, name=video_id)
            if after_copy is not None:
                after_copy(i)
        for name, embedded in sections.items():
            group = f.create_group(f"{schema.GROUP_SECTIONS}/{name}")
            for key, value in embedded.attrs.items():
                group.attrs[key] = _to_attr(value)
            for module, tensors in embedded.tensors.items():
                for key, array in tensors.items():
                    group.create_dataset(f"{module}/{key}", data=array)
        _fsync_open(f)
        for key, value in file_attrs.items():
            f.attrs[key] = _to_attr(value)
        # the seal last: digests of everything above, read back from the file as readers will
        f.attrs[schema.ATTR_SEAL] = _seal_value(f)
        f.flush()
    fsync_path(path)


@dataclass(frozen=True)
class DatasetStorage:
    """Size of one dataset: logical bytes, bytes on disk, and how it is stored."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    stored_bytes: int
    compression: str | None


class CacheFile:
    """A read-only h5py handle with numpy-only accessors; every error becomes :class:`CacheError`.

    Args:
        path: The HDF5 file.

    Raises:
        CacheError: The file does not open as HDF5 (not HDF5, truncated, unreadable).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            self.file_bytes = os.path.getsize(self.path)
        except H5_ERRORS as exc:
            raise CacheError(
                self.path,
                f"not a readable HDF5 file (not HDF5, truncated or corrupt): {_text(exc)}; "
                "rebuild it with `gistgym cache build`",
            ) from exc

    @contextlib.contextmanager
    def _reading(self, field: str | None = None, video: str | None = None) -> Iterator[None]:
        """Turn any h5py error inside the block into one :class:`CacheError` naming the file."""
        try:
            yield
        except CacheError:
            raise
        except H5_ERRORS as exc:
            raise CacheError(
                self.path,
                f"cannot read (corrupt or truncated file?): {_text(exc)}; rebuild it with `gistgym cache build`",
                field=field,
                video=video,
            ) from exc

    def close(self) -> None:
        """Close the handle (idempotent)."""
        with contextlib.suppress(*H5_ERRORS):
            if self._file.id.valid:
                self._file.close()

    def file_attrs(self) -> dict[str, Any]:
        """All file attributes, JSON ones still as strings."""
        with self._reading("attrs"):
            return {_name(k): _from_attr(v) for k, v in self._file.attrs.items()}

    def file_attr_digests(self) -> dict[str, str]:
        """:func:`attr_digest` of every file attribute but the seal."""
        with self._reading("attrs"):
            return {_name(k): attr_digest(v) for k, v in self._file.attrs.items() if k != schema.ATTR_SEAL}

    def _group(self, group: str) -> h5py.Group | None:
        obj = self._file.get(group)
        return obj if isinstance(obj, h5py.Group) else None

    def group_attrs(self, group: str) -> dict[str, Any] | None:
        """Attributes of a group, or ``None`` if there is no such group."""
        with self._reading(group):
            obj = self._group(group)
            return None if obj is None else {_name(k): _from_attr(v) for k, v in obj.attrs.items()}

    def group_attr_digests(self, group: str) -> dict[str, str] | None:
        """:func:`attr_digest` of every attribute of a group, or ``None`` if there is no such group."""
        with self._reading(group):
            obj = self._group(group)
            return None if obj is None else {_name(k): attr_digest(v) for k, v in obj.attrs.items()}

    def group_attr(self, group: str, name: str) -> Any:
        """One attribute of a group; ``None`` if the group or the attribute is absent."""
        with self._reading(f"{group}.attrs[{name}]"):
            obj = self._group(group)
            return None if obj is None else _from_attr(obj.attrs.get(name))

    def has_group(self, group: str) -> bool:
        """Whether ``group`` exists and is a group."""
        with self._reading(group):
            return self._group(group) is not None

    def _size_problem(self, ds: h5py.Dataset) -> str | None:
        """Why ``ds`` cannot be what it claims to be, judged from its header alone (or ``None``)."""
        nbytes = int(ds.size) * int(ds.dtype.itemsize)
        fits = max(self.file_bytes, 1 << 16)
        # asking for the filters costs more than the rest of the check: only when it matters
        if nbytes > fits and nbytes > fits * (MAX_EXPANSION if ds.compression else 1):
            return f"claims {nbytes} bytes ({tuple(ds.shape)} {ds.dtype}), more than the file can hold"
        return None

    def read_group(self, group: str, *, video: str | None = None) -> dict[str, np.ndarray]:
        """Every dataset under ``group`` (recursively), keyed by path relative to it, in one go."""
        arrays, problems = self.read_group_checked(group, video=video)
        if problems:
            where, problem = problems[0]
            raise CacheError(self.path, problem, field=where, video=video)
        return arrays

    def read_group_checked(
        self, group: str, *, video: str | None = None, layouts: Mapping[str, Layout] | None = None
    ) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
        """Every dataset under ``group`` whose header is sound, and the problems of the others.

        A dataset whose dtype or shape differs from ``layouts`` (keyed by full path; ``None``:
        not checked), or whose header claims more bytes than the file could hold, is not read:
        it is reported as ``(full path, problem)``. The caller decides in which order to raise.

        Raises:
            CacheError: ``group`` is missing or HDF5 cannot read it.
        """
        arrays: dict[str, np.ndarray] = {}
        problems: list[tuple[str, str]] = []
        with self._reading(group, video):
            obj = self._file.get(group)
            if not isinstance(obj, h5py.Group):
                raise CacheError(
                    self.path,
                    f"group {'missing' if obj is None else 'expected, found a dataset'}; "
                    "rebuild it with `gistgym cache build`",
                    field=group,
                    video=video,
                )
            items: list[tuple[str, h5py.Dataset]] = []
            obj.visititems(
                lambda name, item: items.append((_name(name), item)) if isinstance(item, h5py.Dataset) else None
            )
        for name, ds in items:
            where = f"{group}/{name}"
            with self._reading(where, video):
                problem = self._size_problem(ds)
                if problem is None and layouts is not None:
                    problem = _layout_problem(name, _layout(ds), layouts.get(where))
                if problem is not None:
                    problems.append((where, problem))
                    continue
                arrays[name] = ds[()]
        return arrays, problems

    def dataset_names(self, group: str) -> list[str]:
        """Paths of every dataset under ``group``, relative to it (empty if no such group)."""
        with self._reading(group):
            obj = self._group(group)
            if obj is None:
                return []
            names: list[str] = []
            obj.visititems(lambda name, item: names.append(_name(name)) if isinstance(item, h5py.Dataset) else None)
            return names

    def walk(self) -> tuple[dict[str, dict[str, str]], dict[str, Layout]]:
        """Attribute digests of every group that has attributes, and the layout of every dataset."""
        with self._reading():
            return _walk(self._file)

    def iter_storage(self) -> Iterator[DatasetStorage]:
        """Size on disk of every dataset in the file."""
        items: list[tuple[str, h5py.Dataset]] = []
        with self._reading():
            self._file.visititems(
                lambda name, item: items.append((_name(name), item)) if isinstance(item, h5py.Dataset) else None
            )
        for name, ds in items:
            with self._reading(name):
                storage = DatasetStorage(
                    path=name,
                    shape=tuple(ds.shape),
                    dtype=str(ds.dtype),
                    nbytes=int(ds.size * ds.dtype.itemsize),
                    stored_bytes=int(ds.id.get_storage_size()),
                    compression=ds.compression,
                )
            yield storage


def _text(exc: BaseException) -> str:
    """An h5py exception as one short line (``KeyError`` quotes its message)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _layout_problem(name: str, found: Layout, expected: Any) -> str | None:
    """Why a dataset's (dtype, shape) is not the recorded one (``None`` if it is)."""
    leaf = name.rsplit("/", 1)[-1]
    if expected is None:
        return f"{leaf} is not covered by the seal (added after the build?)"
    dtype, shape = found
    try:
        want_dtype, want_shape = str(expected[0]), tuple(int(n) for n in expected[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return f"the seal's record of {leaf} is damaged"
    if shape != want_shape:
        return f"{leaf} of shape {shape}, expected {want_shape} (recorded when the cache was built)"
    if dtype != want_dtype:
        return f"{leaf} has dtype {np.dtype(dtype)}, expected {want_dtype} (recorded when the cache was built)"
    return None
