"""Recompute a cache's checksums and compare them with the ones recorded at write time.

Every dataset's sha256 (over its raw bytes, C order, as stored) is recorded by the build
when the array is computed, before it is written; ``verify`` reads every dataset back and
hashes it again. The metadata seal (sha256 of every file and group attribute, dtype and
shape of every dataset) is compared the same way; a cache built before the seal existed is
reported as unsealed. Structural problems (missing or truncated file, unknown schema
version, a video without its completion mark, NaN/inf features, ground truth that does not
add up, other weights than expected, unreadable HDF5 structures) raise the reader's typed
:class:`~gistgym.errors.CacheError`; byte-level differences are collected into a
:class:`VerifyReport`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gistgym.feature_cache import schema
from gistgym.feature_cache.reader import FeatureCache, array_sha256

__all__ = ["Mismatch", "VerifyReport", "array_sha256", "verify_cache"]


@dataclass(frozen=True)
class Mismatch:
    """One dataset whose bytes do not match the record."""

    where: str
    """HDF5 path of the dataset (``videos/<id>/...`` or ``sections/<name>/...``) or of the
    attribute (``attrs[costs]``, ``sections/interleave.attrs[detector_config]``)."""
    problem: str
    """``checksum differs``, ``missing``, ``not recorded``, ``not sealed`` or ``shape or dtype differs``."""
    video: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify_cache`."""

    path: Path
    videos: int
    datasets: int
    mismatches: tuple[Mismatch, ...]
    sealed: bool = True
    """Whether the file carries a metadata seal (caches built before it existed do not: their
    attributes could not be checked)."""
    attributes: int = 0
    """Attributes compared with the seal."""

    @property
    def ok(self) -> bool:
        """No mismatch at all."""
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "ok": self.ok,
            "sealed": self.sealed,
            "videos": self.videos,
            "datasets": self.datasets,
            "attributes": self.attributes,
            "mismatches": [asdict(m) for m in self.mismatches],
        }


def _compare(
    prefix: str, recorded: dict[str, str], actual: dict[str, np.ndarray], video: str | None
) -> tuple[int, list[Mismatch]]:
    out: list[Mismatch] = []
    for name in sorted(set(recorded) | set(actual)):
        where = f"{prefix}/{name}"
        if name not in actual:
            out.append(Mismatch(where, "missing", video))
        elif name not in recorded:
            out.append(Mismatch(where, "not recorded", video))
        elif array_sha256(actual[name]) != recorded[name]:
            out.append(Mismatch(where, "checksum differs", video))
    return len(actual), out


def verify_cache(
    path: str | Path,
    *,
    expected_weights_sha256: str | None = None,
    sections: Sequence[str] = (),
    progress: bool = False,
) -> VerifyReport:
    """Check every attribute against the seal and every dataset against its recorded checksum.

    Args:
        path: Cache file.
        expected_weights_sha256: Also require the cache to come from these weights.
        sections: Also require these sections.
        progress: Show a progress bar.

    Raises:
        CacheError: (and subclasses) for a file the reader refuses, a video group without
            its completion mark, data the reader refuses (NaN/inf features, a shortened
            dataset, labels out of range), or HDF5 structures that cannot be read.
    """
    cache = FeatureCache(
        path,
        sections=sections,
        expected_weights_sha256=expected_weights_sha256,
        check_metadata=False,  # every difference goes into the report, not just the first
        check_checksums=False,
    )
    try:
        recorded = cache.checksums()
        rec_videos: dict[str, dict[str, str]] = recorded.get("videos", {})
        rec_sections: dict[str, dict[str, str]] = recorded.get("sections", {})
        mismatches = [Mismatch(where, problem, _video_of(where)) for where, problem in cache.metadata_mismatches()]
        attributes = 0
        if cache.seal is not None:
            attributes = len(cache.seal.attrs) + sum(len(a) for a in cache.seal.groups.values())
        datasets = 0
        for name in cache.info.sections:
            group = f"{schema.GROUP_SECTIONS}/{name}"
            if not cache.has_group(group):
                mismatches.append(Mismatch(group, "missing"))
                continue
            n, found = _compare(group, rec_sections.get(name, {}), cache.raw_datasets(group), None)
            datasets += n
            mismatches += found
        ids = cache.info.video_ids()
        # leave=False: an error erases the bar, so the command line ends with one error line
        with tqdm(ids, desc="verify", unit="video", disable=not progress, leave=False) as bar:
            for video_id in bar:
                # structural checks (completion mark, finite features) with the reader's typed errors
                cache.load_episode(video_id, sections=cache.info.sections)
                group = f"{schema.GROUP_VIDEOS}/{video_id}"
                arrays = cache.raw_datasets(group, video=video_id)
                n, found = _compare(group, rec_videos.get(video_id, {}), arrays, video_id)
                datasets += n
                mismatches += found
        for video_id in sorted(set(rec_videos) - set(ids)):
            mismatches.append(Mismatch(f"{schema.GROUP_VIDEOS}/{video_id}", "not in the video index", video_id))
        return VerifyReport(cache.path, len(ids), datasets, tuple(mismatches), cache.sealed, attributes)
    finally:
        cache.close()


def _video_of(where: str) -> str | None:
    parts = where.split("/")
    if parts[0] == schema.GROUP_VIDEOS and len(parts) > 1:
        return parts[1].split(".attrs[")[0]
    return None
