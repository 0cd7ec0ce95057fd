"""Recompute a cache's per-dataset checksums and compare them with the ones recorded at write time.

Every dataset's sha256 (over its raw bytes, C order, as stored) is recorded by the build
when the array is computed, before it is written; ``verify`` reads every dataset back and
hashes it again. Structural problems (missing or truncated file, unknown schema version,
a video without its completion mark, NaN/inf features, other weights than expected) raise
the reader's typed :class:`~gistgym.errors.CacheError`; byte-level differences are
collected into a :class:`VerifyReport`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gistgym.feature_cache import schema
from gistgym.feature_cache.reader import FeatureCache


def array_sha256(array: np.ndarray) -> str:
    """Hex sha256 of an array's raw bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@dataclass(frozen=True)
class Mismatch:
    """One dataset whose bytes do not match the record."""

    where: str
    """HDF5 path of the dataset (``videos/<id>/...`` or ``sections/<name>/...``)."""
    problem: str
    """``checksum differs``, ``missing`` or ``not recorded``."""
    video: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify_cache`."""

    path: Path
    videos: int
    datasets: int
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        """No mismatch at all."""
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "ok": self.ok,
            "videos": self.videos,
            "datasets": self.datasets,
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
    """Check every dataset of a cache against its recorded checksum.

    Args:
        path: Cache file.
        expected_weights_sha256: Also require the cache to come from these weights.
        sections: Also require these sections.
        progress: Show a progress bar.

    Raises:
        CacheError: (and subclasses) for a file the reader refuses, a video group without
            its completion mark, or NaN/inf features.
    """
    cache = FeatureCache(path, sections=sections, expected_weights_sha256=expected_weights_sha256)
    try:
        recorded = cache.checksums()
        rec_videos: dict[str, dict[str, str]] = recorded.get("videos", {})
        rec_sections: dict[str, dict[str, str]] = recorded.get("sections", {})
        mismatches: list[Mismatch] = []
        datasets = 0
        for name in cache.info.sections:
            group = f"{schema.GROUP_SECTIONS}/{name}"
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
        return VerifyReport(cache.path, len(ids), datasets, tuple(mismatches))
    finally:
        cache.close()
