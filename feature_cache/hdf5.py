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
    except (OSError, KeyError, ValueError):
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
    """A read-only h5py handle with numpy-only accessors; errors become :class:`CacheError`.

    Args:
        path: The HDF5 file.

    Raises:
        CacheError: The file does not open as HDF5 (not HDF5, truncated, unreadable).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise CacheError(
                self.path,
                f"not a readable HDF5 file (not HDF5, truncated or corrupt): {exc}; "
                "rebuild it with `gistgym cache build`",
            ) from exc

    def close(self) -> None:
        """Close the handle (idempotent)."""
        if self._file.id.valid:
            self._file.close()

    def file_attrs(self) -> dict[str, Any]:
        """All file attributes, JSON ones still as strings."""
        return {k: _from_attr(v) for k, v in self._file.attrs.items()}

    def group_attrs(self, group: str) -> dict[str, Any] | None:
        """Attributes of a group, or ``None`` if there is no such group."""
        obj = self._file.get(group)
        if not isinstance(obj, h5py.Group):
            return None
        return {k: _from_attr(v) for k, v in obj.attrs.items()}

    def group_attr(self, group: str, name: str) -> Any:
        """One attribute of a group; ``None`` if the group or the attribute is absent."""
        obj = self._file.get(group)
        if not isinstance(obj, h5py.Group):
            return None
        return _from_attr(obj.attrs.get(name))

    def has_group(self, group: str) -> bool:
        """Whether ``group`` exists and is a group."""
        return isinstance(self._file.get(group), h5py.Group)

    def read_group(self, group: str, *, video: str | None = None) -> dict[str, np.ndarray]:
        """Every dataset under ``group`` (recursively), keyed by path relative to it, in one go."""
        out: dict[str, np.ndarray] = {}
        try:
            obj = self._file[group]

            def visit(name: str, item: Any) -> None:
                if isinstance(item, h5py.Dataset):
                    out[name] = item[()]

            obj.visititems(visit)
        except (OSError, KeyError, ValueError) as exc:
            raise CacheError(
                self.path, f"cannot read (corrupt or truncated file?): {exc}", field=group, video=video
            ) from exc
        return out

    def read_datasets(self, group: str, names: Sequence[str], *, video: str | None = None) -> dict[str, np.ndarray]:
        """The named datasets under ``group``.

        Raises:
            CacheError: A dataset is missing or unreadable (names the dataset).
        """
        out: dict[str, np.ndarray] = {}
        for name in names:
            where = f"{group}/{name}"
            try:
                out[name] = self._file[where][()]
            except KeyError as exc:
                raise CacheError(self.path, "dataset missing", field=where, video=video) from exc
            except (OSError, ValueError) as exc:
                raise CacheError(self.path, f"cannot read (corrupt?): {exc}", field=where, video=video) from exc
        return out

    def dataset_names(self, group: str) -> list[str]:
        """Paths of every dataset under ``group``, relative to it (empty if no such group)."""
        obj = self._file.get(group)
        if not isinstance(obj, h5py.Group):
            return []
        names: list[str] = []
        obj.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        return names

    def iter_storage(self) -> Iterator[DatasetStorage]:
        """Size on disk of every dataset in the file."""
        items: list[tuple[str, h5py.Dataset]] = []
        self._file.visititems(lambda name, item: items.append((name, item)) if isinstance(item, h5py.Dataset) else None)
        for name, ds in items:
            yield DatasetStorage(
                path=name,
                shape=tuple(ds.shape),
                dtype=str(ds.dtype),
                nbytes=int(ds.size * ds.dtype.itemsize),
                stored_bytes=int(ds.id.get_storage_size()),
                compression=ds.compression,
            )
