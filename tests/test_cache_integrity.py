"""Feature cache integrity: every byte a result depends on is checked, every damage is one typed line.

Each test damages a copy of the session's ``tiny_cache`` the way a user (or a disk) would, and
checks what the reader, ``gym.make``, ``gistgym cache info`` and ``gistgym cache verify`` do:
metadata edits (issue 19, item 3), data the reader loads (shapes, labels, boxes, flipped bytes),
raw HDF5 errors, and the small defects of the command line (directory as cache, missing video
groups, the progress bar when stderr is not a terminal).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest

import gistgym.envs  # noqa: F401 (registers the ids)
from gistgym.errors import CacheDataError, CacheError, CacheIncompleteError
from gistgym.feature_cache import FeatureCache, schema, verify_cache
from gistgym.scripts.cli import main

ENV = "gistgym/Interleave-v0"
SECTION = "sections/interleave"


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr (nothing drawn and erased); return it."""
    code, _, err = cli(argv, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("gistgym: error: ") and "\r" not in err, err
    return err


def edit_json_attr(path: Path, group: str, name: str, change: Callable[[Any], Any]) -> None:
    with h5py.File(path, "a") as f:
        obj = f[group] if group else f
        obj.attrs[name] = json.dumps(change(json.loads(obj.attrs[name])), sort_keys=True)


def unseal(path: Path) -> None:
    """Make ``path`` look like a cache built before the metadata seal existed."""
    with h5py.File(path, "a") as f:
        del f.attrs[schema.ATTR_SEAL]


def make_env(path: Path, **kwargs: Any) -> gym.Env:
    return gym.make(ENV, cache_path=str(path), clip_len=8, **kwargs)


def flip_skip_light_updates(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "skip_light_updates": not config["skip_light_updates"]}


def scale_costs(costs: dict[str, Any]) -> dict[str, Any]:
    for c in costs["per_extractor"].values():
        for key in ("step_flops", "extractor_flops"):
            c[key] *= 1000
    return costs


def rename_a_key(config: dict[str, Any]) -> dict[str, Any]:
    config = dict(config)
    config["skip_light_update"] = config.pop("skip_light_updates")
    return config


# --- 3a: metadata is inside the integrity check ---------------------------------------------------------


def test_a_new_cache_is_sealed_and_verifies(tiny_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = FeatureCache(tiny_cache)
    assert cache.sealed
    report = verify_cache(tiny_cache)
    assert report.ok and report.sealed and report.attributes > 10
    code, out, err = cli(["cache", "info", str(tiny_cache)], capsys)
    assert code == 0 and "metadata: sealed" in out and err == ""


@pytest.mark.parametrize(
    ("group", "name", "change"),
    [
        (SECTION, "detector_config", flip_skip_light_updates),
        (SECTION, "detector_config", rename_a_key),
        ("", "costs", scale_costs),
    ],
    ids=["skip_light_updates", "renamed-key", "costs-x1000"],
)
def test_edited_metadata_is_refused_everywhere(
    group: str,
    name: str,
    change: Callable[[Any], Any],
    copy_of: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = copy_of("edited.h5")
    edit_json_attr(path, group, name, change)
    where = f"{group}.attrs[{name}]" if group else f"attrs[{name}]"
    with pytest.raises(CacheDataError, match="differs from the checksum recorded when the cache was built") as err:
        make_env(path)
    assert err.value.path == path and err.value.field == where
    code, out, _ = cli(["cache", "verify", str(path)], capsys)
    assert code == 1 and f"{where}: checksum differs" in out and "FAILED" in out
    assert f"edited.h5 [{where}]" in cli_error(["cache", "info", str(path)], capsys)


def test_edited_metadata_breaks_no_comparison_silently(copy_of: Callable[[str], Path], tmp_path: Path) -> None:
    from gistgym.agents.compare import CompareConfig, compare

    path = copy_of("edited.h5")
    edit_json_attr(path, SECTION, "detector_config", flip_skip_light_updates)
    config = CompareConfig.of(cache=str(path), split="val", taus=(3,), out=str(tmp_path / "cmp"), progress=False)
    with pytest.raises(CacheDataError, match=r"edited.h5 \[sections/interleave.attrs\[detector_config\]\]"):
        compare(config)


def test_an_unsealed_cache_opens_with_one_warning_line_and_verify_says_so(
    copy_of: Callable[[str], Path], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of("old.h5")
    unseal(path)
    with caplog.at_level(logging.WARNING, logger="gistgym.feature_cache"):
        env = make_env(path)
        env.reset(seed=0)
        env.step(0)
        FeatureCache(path)  # once per file and process
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "old.h5" in lines[0] and "unsealed" in lines[0] and "rebuild" in lines[0]
    report = verify_cache(path)
    assert report.ok and not report.sealed
    code, out, _ = cli(["cache", "verify", str(path)], capsys)
    assert code == 0 and "metadata unsealed" in out
    code, out, _ = cli(["cache", "verify", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out)["sealed"] is False
    code, out, _ = cli(["cache", "info", str(path)], capsys)
    assert code == 0 and "metadata: unsealed" in out


def test_an_unsealed_cache_with_a_renamed_config_key_is_a_typed_error(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("old.h5")
    unseal(path)
    edit_json_attr(path, SECTION, "detector_config", rename_a_key)
    with pytest.raises(CacheDataError, match="skip_light_update") as err:
        make_env(path)
    assert err.value.path == path and err.value.field == f"{SECTION}.attrs[detector_config]"


def test_a_sealed_attribute_that_disappears_or_appears_is_refused(
    copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gone = copy_of("gone.h5")
    with h5py.File(gone, "a") as f:
        del f[SECTION].attrs["feature_shape"]
    with pytest.raises(CacheDataError, match="missing") as err:
        FeatureCache(gone).section("interleave")
    assert err.value.field == f"{SECTION}.attrs[feature_shape]"
    extra = copy_of("extra.h5")
    with h5py.File(extra, "a") as f:
        f.attrs["note"] = "added later"
    with pytest.raises(CacheDataError, match="not covered by the seal") as err:
        FeatureCache(extra)
    assert err.value.field == "attrs[note]"
    code, out, _ = cli(["cache", "verify", str(gone)], capsys)
    assert code == 1 and f"{SECTION}.attrs[feature_shape]: missing" in out


# --- 3b: what the reader loads is validated -------------------------------------------------------------


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "unsealed"])
def test_a_shortened_feature_dataset_is_a_data_error(
    sealed: bool, copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of("short.h5")
    if not sealed:
        unseal(path)
    where = "videos/train_0001/interleave/light"
    with h5py.File(path, "a") as f:
        data = f[where][()]
        del f[where]
        f[where] = data[:20]
    cache = FeatureCache(path)
    cache.load_episode("train_0000")
    with pytest.raises(CacheDataError, match=r"light of shape \(20, 64, 8, 8\), expected \(24, 64, 8, 8\)") as err:
        cache.load_episode("train_0001")
    assert err.value.video == "train_0001" and err.value.field == where
    assert f"short.h5 [{where}]" in cli_error(["cache", "verify", str(path)], capsys)


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no-checksums"])
def test_a_ground_truth_label_out_of_range_is_a_data_error(checksums: bool, copy_of: Callable[[str], Path]) -> None:
    path = copy_of("label.h5")
    with h5py.File(path, "a") as f:
        f["videos/val_0000/gt/labels"][3] = 9
    with pytest.raises(CacheDataError, match=r"label 9 outside 0\.\.3") as err:
        FeatureCache(path, check_checksums=checksums).load_episode("val_0000")
    assert err.value.video == "val_0000" and err.value.field == "videos/val_0000/gt/labels"


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no-checksums"])
def test_nan_ground_truth_boxes_are_a_data_error(checksums: bool, copy_of: Callable[[str], Path]) -> None:
    path = copy_of("boxes.h5")
    with h5py.File(path, "a") as f:
        f["videos/val_0001/gt/boxes"][2, 1] = np.nan
    with pytest.raises(CacheDataError, match="1 NaN/inf values") as err:
        FeatureCache(path, check_checksums=checksums).load_episode("val_0001")
    assert err.value.video == "val_0001" and err.value.field == "videos/val_0001/gt/boxes"


def test_frame_offsets_that_do_not_add_up_are_a_data_error(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("offsets.h5")
    with h5py.File(path, "a") as f:
        f["videos/val_0000/gt/frame_offsets"][5] = 10**6
    with pytest.raises(CacheDataError, match="frame_offsets") as err:
        FeatureCache(path, check_checksums=False).load_episode("val_0000")
    assert err.value.field == "videos/val_0000/gt/frame_offsets"


def test_a_small_flip_in_feature_data_is_caught_when_it_is_read(
    copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of("flip.h5")
    where = "videos/train_0000/interleave/heavy"
    with h5py.File(path, "a") as f:
        f[where][5, 0, 0, 0] += np.float16(0.5)  # finite, plausible, wrong
    cache = FeatureCache(path)
    with pytest.raises(CacheDataError, match="does not match the checksum recorded when it was computed") as err:
        cache.load_episode("train_0000")
    assert err.value.video == "train_0000" and err.value.field == where
    env = make_env(path, split="train")
    with pytest.raises(CacheDataError, match=r"flip.h5 \[videos/train_0000/interleave/heavy\]"):
        for seed in range(8):  # some seed picks train_0000
            env.reset(seed=seed)
    unchecked = FeatureCache(path, check_checksums=False).load_episode("train_0000")
    assert unchecked.features["heavy"].shape == (24, 64, 8, 8)
    code, out, _ = cli(["cache", "verify", str(path)], capsys)
    assert code == 1 and f"{where}: checksum differs" in out


def test_a_flipped_embedded_tensor_is_caught_when_the_section_is_read(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("tensor.h5")
    with h5py.File(path, "a") as f:
        f[f"{SECTION}/head/predict.bias"][0] += 1.0
    with pytest.raises(CacheDataError, match="checksum") as err:
        make_env(path)
    assert err.value.field == f"{SECTION}/head/predict.bias"


# --- 3c: raw HDF5 errors become one line ------------------------------------------------------------------


@pytest.mark.parametrize("signature", [b"SNOD", b"TREE", b"HEAP"])
def test_damaged_hdf5_structures_are_one_line_errors(
    signature: bytes, copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every group-index node (symbol table node, B-tree, local heap) of the file is overwritten in turn."""
    pristine = copy_of("pristine.h5").read_bytes()
    offsets = [m.start() for m in re.finditer(re.escape(signature), pristine)]
    assert offsets
    for n, offset in enumerate(offsets[:6]):
        path = copy_of(f"damaged{n}.h5")
        data = bytearray(pristine)
        data[offset : offset + 16] = bytes(range(200, 216))
        path.write_bytes(bytes(data))
        for command in ("info", "verify"):
            code, _, err = cli(["cache", command, str(path)], capsys)
            if code == 2:
                assert err.count("\n") == 1 and err.startswith("gistgym: error: ") and f"damaged{n}.h5" in err
            else:  # the node was not needed, or verify saw the damage in its checksums
                assert err == "" and code in (0, 1)
        try:
            env = make_env(path, split="val")
            env.reset(seed=0)
            env.close()
        except CacheError as exc:
            assert exc.path == path


def test_the_h5py_errors_named_in_the_issue_become_cache_errors(
    copy_of: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = copy_of("raw.h5")
    cache = FeatureCache(path)

    def visit_fails(self: h5py.Group, func: Any) -> None:
        raise RuntimeError("Object visitation failed (wrong B-tree signature)")

    def read_fails(self: h5py.Dataset, args: Any) -> None:
        raise OSError("Can't synchronously read data (addr overflow)")

    monkeypatch.setattr(h5py.Group, "visititems", visit_fails)
    with pytest.raises(CacheError, match="Object visitation failed") as err:
        cache.load_episode("val_0000")
    assert err.value.path == path and err.value.video == "val_0000"
    with pytest.raises(CacheError, match="Object visitation failed"):
        cache.dataset_storage()
    monkeypatch.undo()
    monkeypatch.setattr(h5py.Dataset, "__getitem__", read_fails)
    with pytest.raises(CacheError, match="Can't synchronously read data") as err:
        FeatureCache(path).load_episode("val_0000")
    assert err.value.path == path


# --- 6: the small defects -----------------------------------------------------------------------------------


def test_a_directory_given_as_the_cache_is_called_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CacheError, match="is a directory, not a cache file") as err:
        FeatureCache(tmp_path)
    assert "does not exist" not in str(err.value)
    assert "is a directory" in cli_error(["cache", "info", str(tmp_path)], capsys)


@pytest.mark.parametrize("damage", ["deleted", "incomplete"])
def test_cache_info_exits_non_zero_when_video_groups_are_missing(
    damage: str, copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of("missing.h5")
    with h5py.File(path, "a") as f:
        if damage == "deleted":
            del f["videos/val_0001"]
        else:
            del f["videos/val_0001"].attrs["complete"]
    line = cli_error(["cache", "info", str(path)], capsys)
    assert "missing.h5 [videos/val_0001" in line and "1 of 5 videos" in line
    assert main(["cache", "info", str(path), "--json"]) == 2
    with pytest.raises((CacheIncompleteError, CacheError)):
        verify_cache(path)


def test_verify_draws_no_progress_bar_when_stderr_is_not_a_terminal(
    tiny_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["cache", "verify", str(tiny_cache)], capsys)
    assert code == 0 and out.startswith("OK") and err == ""
