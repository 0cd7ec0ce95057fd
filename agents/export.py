"""Export a trained scheduling policy (the network alone) to TorchScript or ONNX, and load it back.

An exported policy is two files:

* ``FILE`` (``.pt`` TorchScript or ``.onnx``): the policy network with one fixed signature::

      scores, action = policy(state, history)

      state    (B, 4H, g, g) float32   Eq. 1 maps [c, h, c - c_prev, h - h_prev] (see
                                       gistgym.envs.interleave.InterleaveEnv, "Observation Space")
      history  (B, L) float32          eta: entry k = 1.0 iff a light extractor ran k frames ago
      cues     (B, 4) float32          only for a policy trained with the environment's cues=True:
                                       the runtime cues (gistgym.envs.interleave_core.runtime_cues);
                                       the signature is then policy(state, history, cues)
      scores   (B, m) float32          Q-values (DQN / Double DQN) or action logits (PPO)
      action   (B,) int64              argmax of scores (the first maximum on ties), the extractor
                                       for the next frame in the order of ``action_meanings``

  B is dynamic (1 in the online runtime). The network includes SB3's observation
  preprocessing (``preprocess_obs``), so it takes the environment's observation as is
  (history cast to float32).
* ``FILE.json``, the sidecar: the environment id and version, the environment arguments,
  the cache identity (schema version, detector weights sha256), the observation layout,
  history length, action meanings (extractor names), the algorithm, the gistgym version,
  the format (and ONNX opset) and the sha256 of ``FILE``.

Nothing is pickled: TorchScript archives hold a graph and tensors, ONNX files a protobuf,
the sidecar is JSON. :func:`load_exported_policy` refuses a missing or foreign sidecar, a
file changed since export, a policy made for another environment version, cache or
detector, and an ONNX file of another opset, each with a typed error naming the file and
the mismatch (:mod:`gistgym.errors`).
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
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

import gistgym
from gistgym.backbones.weights import sha256_file
from gistgym.envs.interleave_core import CUE_HIGH, CUE_NAMES
from gistgym.errors import ConfigError, OnnxOpsetError, PolicyFileError, PolicyMismatchError
from gistgym.staging import check_output, has_format, new_staging_file
from gistgym.videos.dataset import atomic_write_bytes, atomic_write_json

SIDECAR_FORMAT = "gistgym-policy"
SIDECAR_FORMAT_VERSION = 1
ONNX_OPSET = 18
"""The ONNX opset this gistgym exports and loads (another opset is refused: re-export)."""
FORMATS = ("torchscript", "onnx")
ExportFormat = Literal["torchscript", "onnx"]
INTERLEAVE_ENV_ID = "gistgym/Interleave-v0"


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


# --- what a policy was trained on -------------------------------------------------------------
@dataclass(frozen=True)
class PolicyContext:
    """What an exported policy expects of its inputs: the environment, cache and observation layout.

    Attributes:
        env_id: Registered Gymnasium id, e.g. ``"gistgym/Interleave-v0"``.
        env_kwargs: The environment arguments the policy was trained with (JSON-ready).
        cache_schema_version: Schema version of the feature cache it was trained on.
        weights_sha256: sha256 of the detector weights that cache was built from: the
            detector whose memory produced the observations.
        hidden_channels: H, the memory's hidden channels (``state`` has 4H channels).
        grid: g, the memory's grid size.
        history_len: L, length of ``history``.
        action_meanings: Extractor name of each action, in action order (0 = heavy).
        algorithm: ``"DQN"``, ``"DoubleDQN"``, ``"PPO"``, ...
        source: Where the policy came from (a run directory), for people.
    """

    env_id: str
    env_kwargs: Mapping[str, Any]
    cache_schema_version: int
    weights_sha256: str
    hidden_channels: int
    grid: int
    history_len: int
    action_meanings: tuple[str, ...]
    algorithm: str
    source: str = ""
    cues: bool = False
    """The observation has the runtime cues (the environment's ``cues=True``)."""

    @property
    def input_names(self) -> tuple[str, ...]:
        """The exported network's inputs, in signature order."""
        return ("state", "history", "cues") if self.cues else ("state", "history")

    def observation_layout(self) -> dict[str, Any]:
        """The observation layout as the sidecar records it."""
        H, g = self.hidden_channels, self.grid
        return {
            "state": {
                "shape": ["B", 4 * H, g, g],
                "dtype": "float32",
                "channels": {
                    "c_hat": [0, H],
                    "h_hat": [H, 2 * H],
                    "c_hat - c_prev": [2 * H, 3 * H],
                    "h_hat - h_prev": [3 * H, 4 * H],
                },
                "meaning": "memory state the executed extractor's step computed for the frame just processed, "
                "and its difference to the state that step consumed (Eq. 1)",
            },
            "history": {
                "shape": ["B", self.history_len],
                "dtype": "float32",
                "meaning": "entry k = 1 iff a light extractor ran k frames ago (k = 0: the frame just processed)",
            },
            **(
                {
                    "cues": {
                        "shape": ["B", len(CUE_NAMES)],
                        "dtype": "float32",
                        "names": list(CUE_NAMES),
                        "meaning": "runtime cues of the frame just processed (envs.interleave_core.runtime_cues)",
                    }
                }
                if self.cues
                else {}
            ),
        }


def context_from_cache(
    cache_path: str | os.PathLike[str],
    env_kwargs: Mapping[str, Any],
    *,
    algorithm: str,
    env_id: str = INTERLEAVE_ENV_ID,
    source: str = "",
) -> PolicyContext:
    """The :class:`PolicyContext` of a policy trained on ``env_id`` over the cache ``cache_path``.

    Args:
        cache_path: The feature cache the policy was trained on.
        env_kwargs: The environment arguments (``extractors``, ``history_len``, ...); missing
            ones take the registered defaults.
        algorithm: Name of the training algorithm.
        env_id: The environment id.
        source: Where the policy came from.
    """
    import gymnasium as gym

    import gistgym.envs  # noqa: F401  (registers the ids)
    from gistgym.feature_cache import FeatureCache
    from gistgym.feature_cache.schema import SECTION_INTERLEAVE
    from gistgym.feature_cache.sections import interleave_modules

    spec = gym.spec(env_id)
    kwargs = {**dict(spec.kwargs), **{k: v for k, v in env_kwargs.items() if k != "cache_path"}}
    cache = FeatureCache(Path(cache_path), sections=(SECTION_INTERLEAVE,))
    try:
        section = cache.section(SECTION_INTERLEAVE)
        modules = interleave_modules(section.attrs, section.tensors)
        info = cache.info
    finally:
        cache.close()
    return PolicyContext(
        env_id=env_id,
        env_kwargs=_jsonable(kwargs),
        cache_schema_version=int(info.schema_version),
        weights_sha256=str(info.weights_sha256),
        hidden_channels=int(modules.config.hidden_channels),
        grid=int(modules.config.anchors.grid),
        history_len=int(kwargs["history_len"]),
        action_meanings=tuple(str(x) for x in kwargs["extractors"]),
        algorithm=algorithm,
        source=source,
        cues=bool(kwargs.get("cues", False)),
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


# --- the exported networks --------------------------------------------------------------------
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

    def forward(self, state: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        """Q-values (B, m) and their argmax (B,)."""
        return self.scores({"state": state, "history": history})


class CueQValuePolicyModule(QValuePolicyModule):
    """:class:`QValuePolicyModule` for observations with the runtime cues."""

    def forward(self, state: Tensor, history: Tensor, cues: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Q-values (B, m) and their argmax (B,)."""
        return self.scores({"state": state, "history": history, "cues": cues})


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

    def forward(self, state: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        """Action logits (B, m) and their argmax (B,)."""
        return self.scores({"state": state, "history": history})


class CueLogitsPolicyModule(LogitsPolicyModule):
    """:class:`LogitsPolicyModule` for observations with the runtime cues."""

    def forward(self, state: Tensor, history: Tensor, cues: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Action logits (B, m) and their argmax (B,)."""
        return self.scores({"state": state, "history": history, "cues": cues})


def policy_module(
    model: Any,
    q_module: type[QValuePolicyModule] = QValuePolicyModule,
    logits_module: type[LogitsPolicyModule] = LogitsPolicyModule,
) -> tuple[nn.Module, str]:
    """The exportable network of an SB3 model and the meaning of its scores.

    Args:
        model: An SB3 ``DQN`` (or subclass, e.g. Double DQN) or an on-policy model with a
            discrete action space (``PPO``, ``A2C``).
        q_module: The wrapper of a Q-network, which gives the signature (default:
            Interleave's ``state, history``).
        logits_module: The wrapper of an actor-critic policy, likewise.

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


def _example_inputs(ctx: PolicyContext, batch: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    state = torch.rand(batch, 4 * ctx.hidden_channels, ctx.grid, ctx.grid, generator=g)
    history = (torch.rand(batch, ctx.history_len, generator=g) > 0.5).float()
    if not ctx.cues:
        return state, history
    return state, history, torch.rand(batch, len(CUE_NAMES), generator=g) * torch.from_numpy(CUE_HIGH)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_policy` wrote."""

    path: Path
    sidecar: Path
    sha256: str
    format: str


def export_policy(
    model: Any,
    out: str | os.PathLike[str],
    export_format: str,
    context: PolicyContext,
) -> ExportResult:
    """Write ``model``'s policy network to ``out`` (TorchScript or ONNX) and its sidecar ``out.json``.

    Both files are written through a temporary name and renamed into place (sidecar last).

    Args:
        model: An SB3 model (see :func:`policy_module`).
        out: The file to write (``.pt`` for TorchScript, ``.onnx`` for ONNX by convention).
        export_format: ``"torchscript"`` or ``"onnx"``.
        context: What the policy was trained on (:func:`context_from_cache`).

    Raises:
        ConfigError: Unknown format, or the model's spaces do not match ``context``.
    """
    if export_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    if context.cues:
        module, scores_meaning = policy_module(model, CueQValuePolicyModule, CueLogitsPolicyModule)
    else:
        module, scores_meaning = policy_module(model)
    _check_model_spaces(model, context)
    return write_exported_module(
        module.cpu(),
        _example_inputs(context, 2),
        out,
        export_format,
        input_names=context.input_names,
        output_names=("scores", "action"),
        sidecar_for=lambda digest: build_sidecar(context, export_format, digest, scores_meaning),
    )


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
                _export_onnx(module, args, tmp, input_names=input_names, output_names=output_names)
        data = tmp.read_bytes()
        atomic_write_bytes(out, data)
    finally:
        tmp.unlink(missing_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    side = sidecar_path(out)
    atomic_write_json(side, sidecar_for(digest))
    return ExportResult(out, side, digest, export_format)


def _export_onnx(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> None:
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


def _check_model_spaces(model: Any, ctx: PolicyContext) -> None:
    obs_space = getattr(model, "observation_space", None)
    act_space = getattr(model, "action_space", None)
    if obs_space is None:
        return
    want_state = (4 * ctx.hidden_channels, ctx.grid, ctx.grid)
    try:
        state_shape = tuple(obs_space["state"].shape)
        hist_shape = tuple(obs_space["history"].shape)
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"the model's observation space {obs_space} is not the Interleave Dict(state, history)"
        ) from exc
    if state_shape != want_state or hist_shape != (ctx.history_len,):
        raise ConfigError(
            f"the model's observation space (state {state_shape}, history {hist_shape}) does not match the "
            f"environment's (state {want_state}, history ({ctx.history_len},))"
        )
    has_cues = "cues" in getattr(obs_space, "spaces", {})
    if has_cues != ctx.cues:
        raise ConfigError(
            f"the model's observation {'has' if has_cues else 'has no'} 'cues' but the run's environment arguments "
            f"say cues={ctx.cues}"
        )
    n = getattr(act_space, "n", None)
    if n is not None and int(n) != len(ctx.action_meanings):
        raise ConfigError(
            f"the model has {int(n)} actions but the environment has {len(ctx.action_meanings)} extractors "
            f"{list(ctx.action_meanings)}"
        )


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


def build_sidecar(ctx: PolicyContext, export_format: str, file_sha256: str, scores: str) -> dict[str, Any]:
    """The JSON sidecar of an exported policy (see the module docstring)."""
    return {
        **sidecar_header(
            export_format,
            file_sha256,
            algorithm=ctx.algorithm,
            source=ctx.source,
            env_id=ctx.env_id,
            env_kwargs=_jsonable(dict(ctx.env_kwargs)),
        ),
        "cache": {"schema_version": ctx.cache_schema_version, "weights_sha256": ctx.weights_sha256},
        "memory": {"hidden_channels": ctx.hidden_channels, "grid": ctx.grid},
        "history_len": ctx.history_len,
        "action_meanings": list(ctx.action_meanings),
        "inputs": list(ctx.input_names),
        "outputs": {"scores": scores, "action": "argmax of scores (first maximum on ties)"},
        "observation_layout": ctx.observation_layout(),
    }


# --- loading ------------------------------------------------------------------------------------
@dataclass
class ExportedPolicy:
    """An exported policy network driving the :class:`~gistgym.agents.policy.Policy` protocol.

    Stateless (the observation carries the history), deterministic: the action is the
    argmax of the scores. Load with :func:`load_exported_policy`.
    """

    path: Path
    sidecar: dict[str, Any] = field(repr=False)
    name: str = ""
    _run: Any = field(default=None, repr=False)

    @property
    def export_format(self) -> str:
        """``"torchscript"`` or ``"onnx"``."""
        return str(self.sidecar["export_format"])

    @property
    def action_meanings(self) -> tuple[str, ...]:
        """Extractor name of each action (0 = heavy)."""
        return tuple(self.sidecar["action_meanings"])

    @property
    def history_len(self) -> int:
        """Length of the history input."""
        return int(self.sidecar["history_len"])

    @property
    def weights_sha256(self) -> str:
        """sha256 of the detector weights the training cache was built from."""
        return str(self.sidecar["cache"]["weights_sha256"])

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Nothing to forget: the policy is a function of the observation."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Nothing to forget: the policy is a function of the observation."""

    @property
    def inputs(self) -> tuple[str, ...]:
        """The observation entries the network takes, in order (``state``, ``history`` [, ``cues``])."""
        return tuple(self.sidecar.get("inputs", ("state", "history")))

    @property
    def cues(self) -> bool:
        """Whether the policy reads the runtime cues (the runtime must compute them)."""
        return "cues" in self.inputs

    def scores_and_actions(
        self, state: np.ndarray, history: np.ndarray, cues: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B, m) float32 and actions (B,) int64 of a batch of observations."""
        args = [np.ascontiguousarray(state, dtype=np.float32), np.ascontiguousarray(history, dtype=np.float32)]
        if self.cues:
            if cues is None:
                raise ConfigError(f"policy {self.name!r} reads the runtime cues; the observation has no 'cues'")
            args.append(np.ascontiguousarray(cues, dtype=np.float32))
        scores, actions = self._run(*args)
        return np.asarray(scores, dtype=np.float32), np.asarray(actions, dtype=np.int64)

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The argmax action of every row."""
        return self.scores_and_actions(obs["state"], obs["history"], obs.get("cues"))[1]


def read_policy_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the structure of ``path``'s sidecar ``path.json``.

    Raises:
        PolicyFileError: Missing, not JSON, not a gistgym policy sidecar, or missing fields.
        PolicyMismatchError: The sidecar of an exported AdaFrame agent.
    """
    side, meta = read_policy_sidecar_json(path)
    env = meta.get("env")
    env_id = str(env.get("id", "")) if isinstance(env, dict) else ""
    for prefix, what, loader in (
        ("gistgym/Glimpse-v", "an AdaFrame agent", "gistgym.agents.glimpse_export.load_glimpse_policy"),
        ("gistgym/Keyframe-v", "a DFF key scheduler", "gistgym.agents.keyframe_export.load_keyframe_policy"),
    ):
        if env_id.startswith(prefix):
            raise PolicyMismatchError(
                side,
                f"policy was exported for {env_id!r} ({what}), not an interleave schedule; run it with "
                f"`gistgym detect VIDEO --policy FILE` or load it with {loader}",
                field="env.id",
            )
    check_sidecar_fields(
        side, meta, ("export_format", "file_sha256", "env", "cache", "history_len", "action_meanings", "memory")
    )
    return meta


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


def check_policy_matches(
    path: Path,
    meta: Mapping[str, Any],
    *,
    env_id: str | None = None,
    cache_schema_version: int | None = None,
    weights_sha256: str | None = None,
    hidden_channels: int | None = None,
    grid: int | None = None,
    extractor_names: Sequence[str] | None = None,
) -> None:
    """Refuse a policy whose sidecar does not match what the caller will feed it.

    Every argument left ``None`` is not checked. The environment id is always checked
    against the registered environments of this gistgym.

    Raises:
        PolicyMismatchError: Names the sidecar field, its value and the expected one.
    """
    import gymnasium as gym

    import gistgym.envs  # registers the ids

    side = sidecar_path(path)
    policy_env = str(meta["env"].get("id"))
    if policy_env not in gym.registry:
        try:
            name, _ = parse_env_id(policy_env)
        except ConfigError:
            name = policy_env
        have = sorted(k for k in gym.registry if k.startswith(name + "-v"))
        raise PolicyMismatchError(
            side,
            f"policy was exported for environment {policy_env!r}, which this gistgym {gistgym.__version__} does not "
            f"have (it has {have or 'no version of it'}); retrain and re-export for the current version",
            field="env.id",
        )
    checks: list[tuple[str, Any, Any]] = [
        ("env.id", policy_env, env_id),
        ("cache.schema_version", meta["cache"].get("schema_version"), cache_schema_version),
        ("cache.weights_sha256", meta["cache"].get("weights_sha256"), weights_sha256),
        ("memory.hidden_channels", meta["memory"].get("hidden_channels"), hidden_channels),
        ("memory.grid", meta["memory"].get("grid"), grid),
    ]
    for key, have_value, want in checks:
        if want is not None and have_value != want:
            raise PolicyMismatchError(
                side,
                f"policy was exported for {key} = {have_value!r} but is used with {want!r}; export a policy trained "
                "on a cache of this detector",
                field=key,
            )
    if extractor_names is not None:
        unknown = [a for a in meta["action_meanings"] if a not in extractor_names]
        if unknown:
            raise PolicyMismatchError(
                side,
                f"policy actions {meta['action_meanings']} name extractors {unknown} the detector does not have "
                f"(it has {list(extractor_names)})",
                field="action_meanings",
            )


def load_exported_policy(
    path: str | os.PathLike[str],
    *,
    env_id: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    weights_sha256: str | None = None,
    name: str | None = None,
) -> ExportedPolicy:
    """Load an exported policy after validating its sidecar.

    Args:
        path: The exported file (its sidecar ``path.json`` beside it).
        env_id: Require the policy to be exported for this environment id.
        cache: Require it to have been trained on a cache with this file's schema version
            and detector weights (and memory layout).
        weights_sha256: Require the cache it was trained on to come from these detector weights.
        name: Policy name in tables (default: the file name).

    Raises:
        PolicyFileError: Missing file or sidecar, corrupt file, or a file that changed since export.
        PolicyMismatchError: Another environment (version), cache or detector than required.
        OnnxOpsetError: An ONNX file of another opset than its sidecar's or :data:`ONNX_OPSET`.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(path, "exported policy file does not exist")
    meta = read_policy_sidecar(path)
    check_file_sha256(path, meta)
    expected: dict[str, Any] = {"env_id": env_id, "weights_sha256": weights_sha256}
    if cache is not None:
        expected.update(_cache_expectations(Path(cache)))
        if weights_sha256 is not None and expected["weights_sha256"] != weights_sha256:
            raise ConfigError(
                f"cache {cache} was built from weights {expected['weights_sha256']}, not {weights_sha256}"
            )
    check_policy_matches(path, meta, **expected)
    inputs = meta.get("inputs", ["state", "history"])
    if inputs not in (["state", "history"], ["state", "history", "cues"]):
        raise PolicyFileError(
            sidecar_path(path), f"inputs {inputs!r} are not [state, history] or [state, history, cues]", field="inputs"
        )
    run = module_runner(path, meta, tuple(inputs), ("scores", "action"))
    return ExportedPolicy(path=path, sidecar=meta, name=name or path.name, _run=run)


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


def _cache_expectations(cache_path: Path) -> dict[str, Any]:
    from gistgym.feature_cache import FeatureCache
    from gistgym.feature_cache.schema import SECTION_INTERLEAVE
    from gistgym.feature_cache.sections import interleave_modules

    cache = FeatureCache(cache_path, sections=(SECTION_INTERLEAVE,))
    try:
        section = cache.section(SECTION_INTERLEAVE)
        modules = interleave_modules(section.attrs, section.tensors)
        return {
            "cache_schema_version": int(cache.info.schema_version),
            "weights_sha256": str(cache.info.weights_sha256),
            "hidden_channels": int(modules.config.hidden_channels),
            "grid": int(modules.config.anchors.grid),
            "extractor_names": modules.extractor_names,
        }
    finally:
        cache.close()


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


def _config_dict(config: Any) -> dict[str, Any]:
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    return dict(vars(config))


def run_context(run_dir: str | os.PathLike[str], config: Any, model: Any) -> PolicyContext:
    """The :class:`PolicyContext` of a training run, from its resolved config.

    The config names the environment (``env_id``, default ``gistgym/Interleave-v0``), the
    cache it trained on (``cache_path``) and the environment arguments, either as
    ``env_kwargs`` or as top-level fields of the same names.

    Raises:
        ConfigError: The config names no cache.
    """
    from gistgym.envs.interleave import ENV_ARGUMENTS

    cfg = _config_dict(config)
    env_kwargs = dict(cfg.get("env_kwargs") or {})
    for key in ENV_ARGUMENTS:
        if key in cfg and key not in env_kwargs and key != "render_mode":
            env_kwargs[key] = cfg[key]
    cache = env_kwargs.pop("cache_path", None) or cfg.get("cache_path") or cfg.get("cache")
    if not cache:
        raise ConfigError(f"the config of run {run_dir} names no cache_path; cannot tell which cache it trained on")
    return context_from_cache(
        cache,
        env_kwargs,
        algorithm=str(cfg.get("algorithm") or cfg.get("algo") or type(model).__name__),
        env_id=str(cfg.get("env_id") or INTERLEAVE_ENV_ID),
        source=str(run_dir),
    )


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
    """``gistgym export --run DIR``: export a training run's policy network.

    Args:
        run_dir: A run directory that :func:`gistgym.agents.runs.load_run` reads.
        out: The file to write (sidecar ``out.json`` beside it).
        export_format: ``"torchscript"`` or ``"onnx"``.
        overwrite: Replace a previous export at ``out`` (anything else there is refused).

    Raises:
        OutputDirError: ``out`` is a folder, a foreign file, or a previous export without ``overwrite``.
    """
    from gistgym.agents.runs import load_run, read_run_config  # type: ignore[import-not-found,unused-ignore]

    check_export_target(out, overwrite)

    config = read_run_config(Path(run_dir))
    if config.get("algo") == "adaframe":
        from gistgym.agents.glimpse_export import export_adaframe_run

        return export_adaframe_run(run_dir, out, export_format)
    if str(config.get("env_id", "")).startswith("gistgym/Keyframe-v"):
        from gistgym.agents.keyframe_export import export_keyframe_run

        return export_keyframe_run(run_dir, out, export_format)
    run = load_run(run_dir)
    return export_policy(run.model, out, export_format, run_context(run_dir, run.config, run.model))
