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

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gistgym.agents.export_common import (
    FORMATS,
    ExportResult,
    LogitsPolicyModule,
    QValuePolicyModule,
    check_file_sha256,
    check_sidecar_fields,
    config_dict,
    jsonable,
    module_runner,
    parse_env_id,
    policy_module,
    read_policy_sidecar_json,
    sidecar_header,
    sidecar_path,
    write_exported_module,
)
from gistgym.agents.export_common import export_run as export_run  # `gistgym export --run`, for any family
from gistgym.envs import INTERLEAVE_ENV_ID
from gistgym.envs.interleave_core import CUE_HIGH, CUE_NAMES
from gistgym.errors import ConfigError, PolicyFileError, PolicyMismatchError


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
        env_kwargs=jsonable(kwargs),
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


# --- the exported networks --------------------------------------------------------------------
class StateQValuePolicyModule(QValuePolicyModule):
    """Interleave's signature: ``scores, action = policy(state, history)``."""

    def forward(self, state: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Q-values (B, m) and their argmax (B,)."""
        return self.scores({"state": state, "history": history})


class StateLogitsPolicyModule(LogitsPolicyModule):
    """Interleave's signature for an actor-critic policy."""

    def forward(self, state: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Action logits (B, m) and their argmax (B,)."""
        return self.scores({"state": state, "history": history})


class CueQValuePolicyModule(QValuePolicyModule):
    """:class:`QValuePolicyModule` for observations with the runtime cues."""

    def forward(self, state: Tensor, history: Tensor, cues: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Q-values (B, m) and their argmax (B,)."""
        return self.scores({"state": state, "history": history, "cues": cues})


class CueLogitsPolicyModule(LogitsPolicyModule):
    """:class:`LogitsPolicyModule` for observations with the runtime cues."""

    def forward(self, state: Tensor, history: Tensor, cues: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Action logits (B, m) and their argmax (B,)."""
        return self.scores({"state": state, "history": history, "cues": cues})


def _example_inputs(ctx: PolicyContext, batch: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    state = torch.rand(batch, 4 * ctx.hidden_channels, ctx.grid, ctx.grid, generator=g)
    history = (torch.rand(batch, ctx.history_len, generator=g) > 0.5).float()
    if not ctx.cues:
        return state, history
    return state, history, torch.rand(batch, len(CUE_NAMES), generator=g) * torch.from_numpy(CUE_HIGH)


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
        module, scores_meaning = policy_module(model, StateQValuePolicyModule, StateLogitsPolicyModule)
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


def build_sidecar(ctx: PolicyContext, export_format: str, file_sha256: str, scores: str) -> dict[str, Any]:
    """The JSON sidecar of an exported policy (see the module docstring)."""
    return {
        **sidecar_header(
            export_format,
            file_sha256,
            algorithm=ctx.algorithm,
            source=ctx.source,
            env_id=ctx.env_id,
            env_kwargs=jsonable(dict(ctx.env_kwargs)),
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


def run_context(run_dir: str | os.PathLike[str], config: Any, model: Any) -> PolicyContext:
    """The :class:`PolicyContext` of a training run, from its resolved config.

    The config names the environment (``env_id``, default ``gistgym/Interleave-v0``), the
    cache it trained on (``cache_path``) and the environment arguments, either as
    ``env_kwargs`` or as top-level fields of the same names.

    Raises:
        ConfigError: The config names no cache.
    """
    from gistgym.envs.interleave import ENV_ARGUMENTS

    cfg = config_dict(config)
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


def export_interleave_run(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], export_format: str
) -> ExportResult:
    """``gistgym export --run DIR`` for an Interleave-v0 run (its registered export)."""
    from gistgym.agents.algorithms import load_run

    run = load_run(run_dir)
    return export_policy(run.model, out, export_format, run_context(run_dir, run.config, run.model))
