"""Feature cache bad input: each raises a typed error naming file, video and field; the CLI exits 2 with one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from gistgym.errors import (
    CacheDataError,
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheSectionError,
    CacheVersionError,
    GistgymError,
)
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.hdf5 import write_seal
from gistgym.scripts.cli import main


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    # a progress bar may have been drawn and erased in place ('\r'); what remains visible is one line
    erased, _, visible = err.rpartition("\r")
    assert "\n" not in erased, err
    assert visible.count("\n") == 1 and visible.startswith("gistgym: error: "), err
    return visible


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.h5"
    with pytest.raises(CacheError, match=r"does not exist.*gistgym cache build") as err:
        FeatureCache(path)
    assert err.value.path == path
    for command in ("info", "verify"):
        assert "nowhere.h5" in cli_error(["cache", command, str(path)], capsys)


def test_not_hdf5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("these are not the features you are looking for\n")
    with pytest.raises(CacheError, match="not a readable HDF5 file"):
        FeatureCache(path)
    assert "notes.h5" in cli_error(["cache", "info", str(path)], capsys)


def test_truncated_file(copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = copy_of("truncated.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="truncated") as err:
        FeatureCache(path)
    assert err.value.path == path
    assert "truncated.h5" in cli_error(["cache", "verify", str(path)], capsys)


def test_hdf5_that_is_not_a_cache(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CacheError, match="not a gistgym feature cache") as err:
        FeatureCache(path)
    assert err.value.field == "format"


@pytest.mark.parametrize(
    ("version", "needle"),
    [(2, "newer than this gistgym reads.*upgrade gistgym.*gistgym cache build"), (0, "unknown schema version 0")],
)
def test_schema_version(
    version: int, needle: str, copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of(f"v{version}.h5")
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = version
    with pytest.raises(CacheVersionError, match=needle) as err:
        FeatureCache(path)
    assert err.value.field == "schema_version" and err.value.path == path
    line = cli_error(["cache", "info", str(path)], capsys)
    assert f"v{version}.h5 [schema_version]" in line and "rebuild" in line


def test_missing_section(copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = copy_of("sections.h5")
    with pytest.raises(
        CacheSectionError, match=r"\['segmentation'\] not in the cache \(present: \['interleave'\]\)"
    ) as err:
        FeatureCache(path, sections=("interleave", "segmentation"))
    assert "--sections interleave segmentation" in str(err.value)
    with h5py.File(path, "a") as f:
        f.attrs["sections"] = json.dumps([])
    with pytest.raises(CacheSectionError, match=r"present: \[\]"):
        FeatureCache(path, sections=("interleave",))
    line = cli_error(["cache", "verify", str(path), "--sections", "interleave"], capsys)
    assert "sections.h5 [sections]" in line and "--sections interleave" in line


def test_extra_unknown_sections_are_accepted(copy_of: Callable[[str], Path]) -> None:
    """A v1 reader opens files that also hold sections added by later versions."""
    path = copy_of("future.h5")
    with h5py.File(path, "a") as f:
        f.attrs["sections"] = json.dumps(["interleave", "segmentation"])
        f.create_group("sections/segmentation").attrs["note"] = "added later"
        f["videos/val_0000/segmentation/loss"] = np.zeros((24, 8), np.float32)
    write_seal(path)  # the later version that wrote the file sealed it
    cache = FeatureCache(path, sections=("interleave",))
    assert cache.info.sections == ("interleave", "segmentation")
    assert cache.load_episode("val_0000").features["heavy"].shape == (24, 64, 8, 8)


def test_video_without_completion_mark(copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = copy_of("partial.h5")
    with h5py.File(path, "a") as f:
        del f["videos/val_0001"].attrs["complete"]
    cache = FeatureCache(path)
    assert cache.load_episode("val_0000").num_frames == 24  # the others still load
    with pytest.raises(CacheIncompleteError, match="'val_0001' has no completion mark") as err:
        cache.load_episode("val_0001")
    assert err.value.video == "val_0001" and err.value.field == "videos/val_0001.attrs[complete]"
    line = cli_error(["cache", "verify", str(path)], capsys)
    assert "partial.h5 [videos/val_0001.attrs[complete]]" in line


def test_weights_sha_mismatch(
    tiny_cache: Path, copy_of: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of("weights.h5")
    with pytest.raises(CacheMismatchError, match=r"built from weights with sha256 .* expected 000") as err:
        FeatureCache(path, expected_weights_sha256="0" * 64)
    assert err.value.field == "weights_sha256"
    other = tmp_path / "other.pt"
    sidecar = json.loads((tiny_cache.parent / "detector.json").read_text())
    sidecar["sha256"] = "f" * 64
    (tmp_path / "other.json").write_text(json.dumps(sidecar))
    line = cli_error(["cache", "verify", str(path), "--weights", str(other)], capsys)
    assert "weights.h5 [weights_sha256]" in line and "f" * 64 in line
    assert main(["cache", "info", str(path), "--weights", str(tiny_cache.parent / "detector.pt"), "--json"]) == 0


@pytest.mark.parametrize(("value", "name"), [(np.nan, "heavy"), (np.inf, "light+shift"), (-np.inf, "light")])
def test_nonfinite_features(
    value: float, name: str, copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of("nan.h5")
    with h5py.File(path, "a") as f:
        f[f"videos/train_0001/interleave/{name}"][7, 3, 2, 1] = value
    cache = FeatureCache(path)
    cache.load_episode("train_0000")
    with pytest.raises(CacheDataError, match=r"1 NaN/inf values .* 'train_0001' \(first at frame 7\)") as err:
        cache.load_episode("train_0001")
    assert err.value.video == "train_0001" and err.value.field == f"videos/train_0001/interleave/{name}"
    unchecked = FeatureCache(path, check_finite=False, check_checksums=False).load_episode("train_0001")
    assert not np.isfinite(unchecked.features[name][7, 3, 2, 1])
    line = cli_error(["cache", "verify", str(path)], capsys)
    assert f"nan.h5 [videos/train_0001/interleave/{name}]" in line


def test_unknown_video_and_split(tiny_cache: Path) -> None:
    cache = FeatureCache(tiny_cache)
    with pytest.raises(CacheError, match="no video 'val_0099'") as err:
        cache.load_episode("val_0099")
    assert err.value.video == "val_0099"
    with pytest.raises(CacheError, match="no split 'holdout'"):
        cache.video_ids("holdout")
    with pytest.raises(CacheSectionError):
        cache.section("glimpse")


def test_a_shard_is_not_a_cache(tiny_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    from gistgym.feature_cache.hdf5 import write_shard

    shard = tmp_path / "x.h5"
    write_shard(
        shard,
        file_attrs={"format": "gistgym-feature-cache-shard", "schema_version": 1},
        video_id="v",
        video_attrs={},
        arrays={"gt/labels": np.zeros(0, np.int64)},
        compression="none",
    )
    with pytest.raises(CacheError, match="shard of an unfinished build"):
        FeatureCache(shard)


def test_every_cache_error_is_a_gistgym_error() -> None:
    for cls in (
        CacheError,
        CacheVersionError,
        CacheSectionError,
        CacheIncompleteError,
        CacheMismatchError,
        CacheDataError,
    ):
        assert issubclass(cls, GistgymError)
    err = CacheDataError("f.h5", "bad", field="videos/a/interleave/heavy", video="a")
    assert str(err) == "f.h5 [videos/a/interleave/heavy]: bad" and err.video == "a"
