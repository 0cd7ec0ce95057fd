"""What every task family's policy export shares: the two-file format, writing and loading.

An exported policy is the network alone (TorchScript ``.pt`` or ONNX ``.onnx``, one fixed
signature per family) and its JSON sidecar ``FILE.json`` (:func:`sidecar_header`: format,
version, algorithm, source, environment; then the family's fields). This module writes both
atomically (:func:`write_exported_module`), reads and checks a sidecar
(:func:`read_policy_sidecar_json`, :func:`check_sidecar_fields`, :func:`check_file_sha256`)
and loads a file as a function of numpy arrays (:func:`module_runner`). The families'
exports: :mod:`gistgym.agents.export` (Interleave-v0), :mod:`gistgym.agents.keyframe_export`,
:mod:`gistgym.agents.glimpse_export`; :func:`export_run` dispatches a run to its family's
(the ``export_run`` of its :class:`~gistgym.agents.backends.EnvBackend`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

import gistgym
from gistgym.agents.backends import family_backend
from gistgym.agents.runs import CONFIG_FILE, read_run_config
from gistgym.backbones.weights import sha256_file
from gistgym.errors import ConfigError, OnnxOpsetError, PolicyFileError, RunError
from gistgym.staging import check_output, has_format, new_staging_file
from gistgym.videos.dataset import atomic_write_bytes, atomic_write_json

SIDECAR_FORMAT = "gistgym-policy"
SIDECAR_FORMAT_VERSION = 1
ONNX_OPSET = 18
"""The ONNX opset this gistgym exports and loads (another opset is refused: re-export)."""
FORMATS = ("torchscript", "onnx")
ExportFormat = Literal["torchscript", "onnx"]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``FILE.json`` beside an exported policy ``FILE``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def parse_env_id(env_id: str) -> tuple[str, int]:
    """``"gistgym/Interleave-v0"`` -> ``("gistgym/Interleave", 0)``.

    Raises:
        ConfigError: Not of the form ``namespace/Name-vN``.
    """
    m = re.fullmatch(r"(.+)-v(\d+)", env_id)
    if m is None:
        raise ConfigError(f"environment id {env_id!r} is not of the form 'gistgym/Name-vN'")
    return m.group(1), int(m.group(2))


def jsonable(x: Any) -> Any:
    """``x`` JSON-ready: mappings with string keys, tuples as lists, numpy scalars as numbers, paths as strings."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


class QValuePolicyModule(nn.Module):
    """An SB3 DQN's ``q_net`` (features extractor + Q head) behind the fixed signature.

    Subclasses with another observation override :meth:`forward` only (its parameter names
    are the exported inputs' names) and pass the observation dict to :meth:`scores`.
    """

    def __init__(self, q_net: nn.Module) -> None:
        super().__init__()
        self.q_net = q_net

    def scores(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Q-values (B, m) of a (batched) observation dict and their argmax (B,)."""
        scores = self.q_net(obs)
        return scores, scores.argmax(dim=1)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The family's subclass names the inputs (they become the exported graph's input names)."""
        raise NotImplementedError(f"{type(self).__name__} must define forward(<its observation entries>)")


class LogitsPolicyModule(nn.Module):
    """An SB3 ``ActorCriticPolicy``'s actor (features extractor, actor MLP, action head)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def scores(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Action logits (B, m) of a (batched) observation dict and their argmax (B,)."""
        p: Any = self.policy
        features = p.extract_features(obs, p.pi_features_extractor)
        logits = p.action_net(p.mlp_extractor.forward_actor(features))
        return logits, logits.argmax(dim=1)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The family's subclass names the inputs (they become the exported graph's input names)."""
        raise NotImplementedError(f"{type(self).__name__} must define forward(<its observation entries>)")


def policy_module(
    model: Any, q_module: type[QValuePolicyModule], logits_module: type[LogitsPolicyModule]
) -> tuple[nn.Module, str]:
    """The exportable network of an SB3 model and the meaning of its scores.

    Args:
        model: An SB3 ``DQN`` (or subclass, e.g. Double DQN) or an on-policy model with a
            discrete action space (``PPO``, ``A2C``).
        q_module: The family's wrapper of a Q-network, which gives the signature.
        logits_module: The family's wrapper of an actor-critic policy, likewise.

    Returns:
        ``(module, "q_values" | "logits")``, the module in eval mode.

    Raises:
        ConfigError: Neither a Q-network nor an actor-critic policy over a discrete action space.
    """
    policy = getattr(model, "policy", model)
    q_net = getattr(policy, "q_net", None)
    if isinstance(q_net, nn.Module):
        return q_module(q_net).eval(), "q_values"
    if all(hasattr(policy, a) for a in ("action_net", "mlp_extractor", "pi_features_extractor")):
        return logits_module(policy).eval(), "logits"
    raise ConfigError(
        f"cannot export {type(model).__name__}: expected an SB3 DQN (policy.q_net) or an actor-critic policy "
        "(PPO/A2C with action_net, mlp_extractor)"
    )


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_policy` wrote."""

    path: Path
    sidecar: Path
    sha256: str
    format: str


def write_exported_module(
    module: nn.Module,
    args: tuple[Tensor, ...],
    out: str | os.PathLike[str],
    export_format: str,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    sidecar_for: Callable[[str], Mapping[str, Any]],
) -> ExportResult:
    """Trace ``module`` to ``out`` (TorchScript or ONNX), then write its sidecar ``out.json``.

    Both files are written through a temporary name and renamed into place (sidecar last).

    Args:
        module: The network to export, on the CPU and in eval mode.
        args: Example inputs of its signature (batch 2: torch.export specialises dimensions
            of size 1).
        out: The file to write.
        export_format: ``"torchscript"`` or ``"onnx"`` (already checked by the caller).
        input_names: Names of the inputs, in signature order (ONNX graph inputs; the batch
            dimension of each is dynamic).
        output_names: Names of the outputs, in order (ONNX graph outputs).
        sidecar_for: Builds the sidecar from the sha256 of the written file.

    Returns:
        What was written.
    """
    out = Path(out)
    tmp = new_staging_file(out)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit and the exporter warn about their own deprecations and about
            # torchvision ops; none of that concerns these small networks.
            warnings.simplefilter("ignore")
            if export_format == "torchscript":
                traced = torch.jit.trace(module, args, check_trace=False)
                traced.save(str(tmp))
            else:
                export_onnx(module, args, tmp, input_names=input_names, output_names=output_names)
        data = tmp.read_bytes()
        atomic_write_bytes(out, data)
    finally:
        tmp.unlink(missing_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    side = sidecar_path(out)
    atomic_write_json(side, sidecar_for(digest))
    return ExportResult(out, side, digest, export_format)


def export_onnx(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> None:
    """Export ``module`` with the dynamo exporter at :data:`ONNX_OPSET`, the batch dimension of every input dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(
            module,
            args,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes={name: {0: batch} for name in input_names},
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise ConfigError("the ONNX exporter returned no program")
    program.save(str(path), external_data=False)


def sidecar_header(
    export_format: str,
    file_sha256: str,
    *,
    algorithm: str,
    source: str,
    env_id: str,
    env_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """The fields every exported policy's sidecar starts with, in order (format to ``env``).

    Args:
        export_format: ``"torchscript"`` or ``"onnx"``.
        file_sha256: sha256 of the exported file.
        algorithm: Name of the training algorithm.
        source: Where the policy came from.
        env_id: The environment id (``namespace/Name-vN``).
        env_kwargs: The environment arguments, JSON-ready.

    Raises:
        ConfigError: ``env_id`` is not of the form ``namespace/Name-vN``.
    """
    name, version = parse_env_id(env_id)
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "gistgym_version": gistgym.__version__,
        "export_format": export_format,
        "onnx_opset": ONNX_OPSET if export_format == "onnx" else None,
        "torch_version": torch.__version__,
        "file_sha256": file_sha256,
        "algorithm": algorithm,
        "source": source,
        "env": {"id": env_id, "name": name, "version": version, "kwargs": env_kwargs},
    }


def read_policy_sidecar_json(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Read ``path``'s sidecar ``path.json`` and check it is a policy sidecar of this format version.

    Args:
        path: The exported file.

    Returns:
        The sidecar's path and its contents (fields beyond the format not checked yet).

    Raises:
        PolicyFileError: Missing, not JSON, not a gistgym policy sidecar, or another format version.
    """
    side = sidecar_path(path)
    if not side.is_file():
        raise PolicyFileError(
            side,
            f"sidecar JSON missing: an exported policy {Path(path).name} needs its {side.name} (env, cache identity, "
            "observation layout); re-export it with `gistgym export --run DIR --out FILE`",
        )
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyFileError(side, f"not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise PolicyFileError(side, f"expected a {SIDECAR_FORMAT!r} sidecar", field="format")
    if meta.get("format_version") != SIDECAR_FORMAT_VERSION:
        raise PolicyFileError(
            side,
            f"format_version {meta.get('format_version')!r} is not supported (expected {SIDECAR_FORMAT_VERSION}); "
            "re-export the policy with this gistgym",
            field="format_version",
        )
    return side, meta


def check_sidecar_fields(side: Path, meta: Mapping[str, Any], required: Sequence[str]) -> None:
    """Refuse a policy sidecar that lacks a required field or names an unknown export format.

    Args:
        side: The sidecar file (for error messages).
        meta: Its contents.
        required: The fields it must have (``export_format`` among them).

    Raises:
        PolicyFileError: A missing field, or an ``export_format`` not in :data:`FORMATS`.
    """
    for key in required:
        if key not in meta:
            raise PolicyFileError(side, "missing required field", field=key)
    if meta["export_format"] not in FORMATS:
        raise PolicyFileError(
            side, f"export_format {meta['export_format']!r} is not one of {FORMATS}", field="export_format"
        )


def check_file_sha256(path: Path, meta: Mapping[str, Any]) -> None:
    """Refuse an exported file whose bytes are not those its sidecar records.

    Args:
        path: The exported file.
        meta: Its sidecar (``file_sha256``).

    Raises:
        PolicyFileError: The file was changed or replaced after export.
    """
    digest = sha256_file(path)
    if digest != meta["file_sha256"]:
        raise PolicyFileError(
            path,
            f"sha256 {digest[:12]}... differs from the sidecar's {str(meta['file_sha256'])[:12]}... (the file was "
            "changed or replaced after export); re-export it",
            field="file_sha256",
        )


def load_torchscript_module(path: Path) -> Any:
    """Load an exported TorchScript archive onto the CPU, in eval mode.

    Args:
        path: The archive.

    Returns:
        The ``torch.jit.ScriptModule``.

    Raises:
        PolicyFileError: Not a readable TorchScript archive.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors for a bad archive
        raise PolicyFileError(path, f"not a readable TorchScript archive (corrupt or truncated?): {exc}") from exc
    module.eval()
    return module


def module_runner(
    path: Path, meta: Mapping[str, Any], input_names: Sequence[str], output_names: Sequence[str]
) -> Callable[..., tuple[np.ndarray, ...]]:
    """Load an exported file (its sidecar's format) as a function of numpy inputs, in signature order.

    Raises:
        PolicyFileError: A corrupt TorchScript archive or ONNX file, or other inputs than ``input_names``.
        OnnxOpsetError: An ONNX file of another opset.
    """
    if meta["export_format"] == "torchscript":
        module = load_torchscript_module(path)

        def run_torchscript(*args: np.ndarray) -> tuple[np.ndarray, ...]:
            with torch.inference_mode():
                outs = module(*(torch.from_numpy(a) for a in args))
            return tuple(o.numpy() for o in outs)

        return run_torchscript
    session = onnx_session(path, meta, input_names)

    def run_onnx(*args: np.ndarray) -> tuple[np.ndarray, ...]:
        outs = session.run(list(output_names), dict(zip(input_names, args, strict=True)))
        return tuple(np.asarray(o) for o in outs)

    return run_onnx


def onnx_session(path: Path, meta: Mapping[str, Any], expected_inputs: Sequence[str]) -> Any:
    """An onnxruntime session (CPU, one thread) of an exported ONNX file, after checking its opset and inputs.

    Args:
        path: The ONNX file.
        meta: Its sidecar (``onnx_opset``).
        expected_inputs: The graph's input names, in order.

    Returns:
        The ``onnxruntime.InferenceSession``.

    Raises:
        PolicyFileError: Not a readable ONNX model, one onnxruntime cannot load, or other inputs.
        OnnxOpsetError: An opset other than the sidecar's or :data:`ONNX_OPSET`.
    """
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise PolicyFileError(path, f"not a readable ONNX model (corrupt or truncated?): {exc}") from exc
    opsets = {imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import}
    opset = opsets.get("ai.onnx")
    recorded = meta.get("onnx_opset")
    if opset != recorded:
        raise OnnxOpsetError(
            path,
            f"file uses ONNX opset {opset} but its sidecar records opset {recorded} (file replaced after export?)",
            field="opset_import",
        )
    if opset != ONNX_OPSET:
        raise OnnxOpsetError(
            path,
            f"ONNX opset {opset} is not the opset this gistgym {gistgym.__version__} exports and loads "
            f"({ONNX_OPSET}); re-export the policy with `gistgym export --format onnx`",
            field="opset_import",
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise PolicyFileError(path, f"onnxruntime cannot load the model: {exc}") from exc
    names = [i.name for i in session.get_inputs()]
    if names != list(expected_inputs):
        raise PolicyFileError(path, f"inputs are {names}, expected {list(expected_inputs)}", field="graph.input")
    return session


def config_dict(config: Any) -> dict[str, Any]:
    """A run configuration (dataclass, mapping or object) as a dict."""
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    return dict(vars(config))


def policy_env_id(path: str | os.PathLike[str]) -> str | None:
    """The environment id an exported policy's sidecar names, or ``None`` (no or unreadable sidecar).

    Used to route ``gistgym detect --policy FILE`` to its family's runtime: no error here, the loader reports them.
    """
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    env = meta.get("env") if isinstance(meta, dict) else None
    env_id = env.get("id") if isinstance(env, dict) else None
    return env_id if isinstance(env_id, str) else None


def is_exported_policy(path: Path) -> bool:
    """Whether ``path`` is a gistgym export: its sidecar ``path.json`` carries the policy format marker."""
    return has_format(sidecar_path(path), SIDECAR_FORMAT)


def check_export_target(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check ``--out`` of ``gistgym export`` before any work.

    An existing file (or sidecar ``FILE.json``) is replaced only with ``overwrite`` and only
    if it is a previous export; a folder or a foreign file is refused.

    Raises:
        OutputDirError: What is in the way, and what to do.
    """
    path = Path(out)
    marker = f"no sidecar {sidecar_path(path).name} of format {SIDECAR_FORMAT!r} beside it"
    what = "an exported gistgym policy"
    check_output(path, overwrite=overwrite, is_ours=is_exported_policy, what=what, marker=marker, kind="file")
    side = sidecar_path(path)
    check_output(
        side, overwrite=overwrite, is_ours=lambda p: has_format(p, SIDECAR_FORMAT), what="a policy sidecar", kind="file"
    )
    return path


def export_run(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], export_format: str, *, overwrite: bool = False
) -> ExportResult:
    """``gistgym export --run DIR``: export a training run's policy with its family's export.

    Args:
        run_dir: A run directory (``gistgym train --out``).
        out: The file to write (sidecar ``out.json`` beside it).
        export_format: ``"torchscript"`` or ``"onnx"``.
        overwrite: Replace a previous export at ``out`` (anything else there is refused).

    Raises:
        OutputDirError: ``out`` is a folder, a foreign file, or a previous export without ``overwrite``.
        RunError: Not a run, or its config.json names no environment this gistgym registered.
        ConfigError: Its family exports no runs, or the format is unknown.
    """
    check_export_target(out, overwrite)
    if export_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    config = read_run_config(Path(run_dir))
    env_id = str(config.get("env_id") or "")
    backend = family_backend(env_id)
    if backend is None:
        raise RunError(Path(run_dir) / CONFIG_FILE, f"names environment {env_id!r}, which no family registered",
                       field="env_id")  # fmt: skip
    if backend.export_run is None:
        raise ConfigError(f"{backend.env_id} registered no export; its runs cannot be exported")
    result: ExportResult = backend.export_run(run_dir, out, export_format)
    return result
