"""The Ray build path on a local Ray instance gives the same datasets as the local build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from gistgym.feature_cache import FeatureCache, verify_cache
from gistgym.feature_cache.build import build_cache

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'gistgym[ray]'); the Ray path is untested")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


def test_ray_build_equals_local_build(local_ray: Any, tiny_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray.h5"
    report = build_cache(
        tiny_bench,
        out,
        weights=tiny_cache.parent / "detector.pt",
        sections=("interleave",),  # like the session's tiny_cache it is compared with
        ray="local",
        measure_latency=False,
        progress=False,
    )
    assert report.computed == 5
    assert local_ray.is_initialized()  # an instance the caller started is left running
    got, want = datasets(out), datasets(tiny_cache)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes(), key
    assert FeatureCache(out).checksums() == FeatureCache(tiny_cache).checksums()
    assert verify_cache(out).ok


def test_ray_task_reports_a_bad_video_as_a_typed_error(
    local_ray: Any, tiny_cache: Path, tiny_bench: Path, tmp_path: Path
) -> None:
    """A task that cannot decode its video fails the build with the VideoError, not a Ray traceback."""
    import shutil

    from gistgym.errors import VideoError

    bench = tmp_path / "bench"
    shutil.copytree(tiny_bench, bench)
    video = bench / "val_0001" / "video.mp4"
    video.write_bytes(video.read_bytes()[:300])
    with pytest.raises(VideoError) as err:
        build_cache(
            bench,
            tmp_path / "bad.h5",
            splits=("val",),
            weights=tiny_cache.parent / "detector.pt",
            ray="local",
            measure_latency=False,
            progress=False,
        )
    assert err.value.path == video
    assert not (tmp_path / "bad.h5").exists()
