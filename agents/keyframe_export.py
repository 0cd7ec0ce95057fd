"""Export a trained ``gistgym/Keyframe-v0`` key scheduler to TorchScript or ONNX, and load it back.

An exported key scheduler is the policy network alone behind one fixed signature::

    scores, action = policy(cues, since_key, history)

    cues       (B, Q) float32   statistics of F(keyframe, frame about to be decided), clipped to
                                the observation bounds (gistgym.envs.keyframe.CUE_HIGH); their
                                names in order are the sidecar's ``cue_names``
    since_key  (B, 1) float32   min(d, D_max) / D_max, d = the frame's distance to its keyframe
    history    (B, L) float32   entry k = 1.0 iff frame t - 1 - k was a keyframe
    scores     (B, 2) float32   Q-values (DQN / Double DQN) or action logits (PPO)
    action     (B,) int64       argmax of scores: 0 = make the frame a keyframe, 1 = propagate

exactly the environment's observation (:class:`~gistgym.envs.keyframe.KeyframeEnv`), so the
DFF runtime (:mod:`gistgym.runtime.keyframe`) computes the cues with the flow network and
feeds them in. The sidecar ``FILE.json`` records the environment id, version and arguments,
the training cache's identity (schema version, detector and DFF weights sha256), D_max, the
cue names, the history length, the action meanings, the algorithm, the gistgym version and
the file's sha256; loading refuses a foreign, changed or mismatching file with typed errors
(:mod:`gistgym.errors`), like the interleave and AdaFrame exports (:mod:`gistgym.agents.export`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
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
    module_runner,
    policy_module,
    read_policy_sidecar_json,
    sidecar_header,
    sidecar_path,
    write_exported_module,
)
from gistgym.envs import KEYFRAME_ENV_ID
from gistgym.errors import ConfigError, PolicyFileError, PolicyMismatchError

INPUT_NAMES = ("cues", "since_key", "history")
OUTPUT_NAMES = ("scores", "action")
ACTION_MEANINGS = ("keyframe", "propagate")
_REQUIRED = (
    "export_format",
    "file_sha256",
    "env",
    "cache",
    "history_len",
    "max_distance",
    "cue_names",
    "action_meanings",
)


class KeyframeQValueModule(QValuePolicyModule):
    """A DQN's ``q_net`` behind the keyframe signature."""

    def forward(self, cues: Tensor, since_key: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Q-values (B, 2) and their argmax (B,)."""
        return self.scores({"cues": cues, "since_key": since_key, "history": history})


class KeyframeLogitsModule(LogitsPolicyModule):
    """An actor-critic policy's actor behind the keyframe signature."""

    def forward(self, cues: Tensor, since_key: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Action logits (B, 2) and their argmax (B,)."""
        return self.scores({"cues": cues, "since_key": since_key, "history": history})


@dataclass(frozen=True)
class KeyframePolicyContext:
    """What a key scheduler was trained on: everything its sidecar records besides the file."""

    env_kwargs: Mapping[str, Any]
    cache_identity: Mapping[str, Any]
    dff_sha256: str
    cue_names: tuple[str, ...]
    max_distance: int
    history_len: int
    algorithm: str
    env_id: str = KEYFRAME_ENV_ID
    source: str = ""

    def observation_layout(self) -> dict[str, Any]:
        """The observation layout as the sidecar records it."""
        return {
            "cues": {
                "shape": ["B", len(self.cue_names)],
                "dtype": "float32",
                "names": list(self.cue_names),
                "meaning": "statistics of F(keyframe, frame about to be decided), clipped to the observation bounds",
            },
            "since_key": {
                "shape": ["B", 1],
                "dtype": "float32",
                "meaning": f"min(d, {self.max_distance}) / {self.max_distance}: the frame's distance to its keyframe",
            },
            "history": {
                "shape": ["B", self.history_len],
                "dtype": "float32",
                "meaning": "entry k = 1 iff the frame k + 1 frames before the one about to be decided was a keyframe",
            },
        }


def keyframe_context_from_run(
    run_dir: str | os.PathLike[str], config: Mapping[str, Any], model: Any
) -> KeyframePolicyContext:
    """The :class:`KeyframePolicyContext` of a Keyframe-v0 run (its cache is checked to be the run's).

    Raises:
        ConfigError: The run names no cache or recorded no DFF weights.
        CacheError, CacheMismatchError: The cache is unreadable or not the run's.
    """
    import gymnasium as gym

    import gistgym.envs  # noqa: F401 (registers the ids)
    from gistgym.agents.runs import check_cache_identity
    from gistgym.feature_cache import FeatureCache
    from gistgym.feature_cache.keyframe import ATTR_CUE_NAMES, SECTION_KEYFRAME

    path = Path(run_dir)
    identity = dict(config.get("cache_identity") or {})
    dff_sha = (identity.get("model_weights") or {}).get("dff")
    if not dff_sha:
        raise ConfigError(f"run {path} recorded no DFF weights sha256 in cache_identity.model_weights")
    cache_path = config.get("cache_path")
    if not cache_path:
        raise ConfigError(f"the config of run {path} names no cache_path; cannot read the cue names")
    check_cache_identity(identity, cache_path, what=f"run {path}")
    with FeatureCache(Path(cache_path), sections=(SECTION_KEYFRAME,)) as cache:
        cue_names = tuple(str(c) for c in cache.section(SECTION_KEYFRAME).attrs[ATTR_CUE_NAMES])
    env_id = str(config.get("env_id") or KEYFRAME_ENV_ID)
    kwargs = {**dict(gym.spec(env_id).kwargs), **dict(config.get("env_kwargs") or {})}
    kwargs.pop("cache_path", None)
    return KeyframePolicyContext(
        env_kwargs={k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        cache_identity=identity,
        dff_sha256=str(dff_sha),
        cue_names=cue_names,
        max_distance=int(kwargs["max_distance"]),
        history_len=int(kwargs["history_len"]),
        algorithm=str(config.get("algorithm") or config.get("algo") or type(model).__name__),
        env_id=env_id,
        source=str(path),
    )


def example_inputs(ctx: KeyframePolicyContext, batch: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random inputs of the signature (cues in a plausible pixel range, a binary history)."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, len(ctx.cue_names), generator=g) * 4.0,
        torch.rand(batch, 1, generator=g),
        (torch.rand(batch, ctx.history_len, generator=g) > 0.5).float(),
    )


def _check_spaces(model: Any, ctx: KeyframePolicyContext) -> None:
    obs_space = getattr(model, "observation_space", None)
    if obs_space is None:
        return
    try:
        shapes = {k: tuple(obs_space[k].shape) for k in INPUT_NAMES}
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"the model's observation space {obs_space} is not Keyframe-v0's Dict{INPUT_NAMES}") from exc
    want = {"cues": (len(ctx.cue_names),), "since_key": (1,), "history": (ctx.history_len,)}
    if shapes != want:
        raise ConfigError(f"the model's observation shapes {shapes} differ from the environment's {want}")
    n = getattr(getattr(model, "action_space", None), "n", None)
    if n is not None and int(n) != len(ACTION_MEANINGS):
        raise ConfigError(f"the model has {int(n)} actions; Keyframe-v0 has {len(ACTION_MEANINGS)}")


def build_keyframe_sidecar(
    ctx: KeyframePolicyContext, export_format: str, file_sha256: str, scores: str
) -> dict[str, Any]:
    """The JSON sidecar of an exported key scheduler (see the module docstring)."""
    import json

    identity = json.loads(json.dumps(dict(ctx.cache_identity), default=str))
    return {
        **sidecar_header(
            export_format,
            file_sha256,
            algorithm=ctx.algorithm,
            source=ctx.source,
            env_id=ctx.env_id,
            env_kwargs=dict(ctx.env_kwargs),
        ),
        "cache": {
            "schema_version": identity.get("schema_version"),
            "weights_sha256": identity.get("weights_sha256"),
            "dff_sha256": ctx.dff_sha256,
        },
        "max_distance": ctx.max_distance,
        "cue_names": list(ctx.cue_names),
        "history_len": ctx.history_len,
        "action_meanings": list(ACTION_MEANINGS),
        "inputs": list(INPUT_NAMES),
        "outputs": {"scores": scores, "action": "argmax of scores (first maximum on ties): 0 keyframe, 1 propagate"},
        "observation_layout": ctx.observation_layout(),
    }


def export_keyframe_policy(
    model: Any, out: str | os.PathLike[str], export_format: str, context: KeyframePolicyContext
) -> ExportResult:
    """Write ``model``'s key scheduler network to ``out`` and its sidecar ``out.json`` (both atomically).

    Raises:
        ConfigError: Unknown format, or the model's spaces are not Keyframe-v0's.
    """
    if export_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    module, scores = policy_module(model, KeyframeQValueModule, KeyframeLogitsModule)
    _check_spaces(model, context)
    return write_exported_module(
        module.cpu(),
        example_inputs(context, 2),
        out,
        export_format,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        sidecar_for=lambda digest: build_keyframe_sidecar(context, export_format, digest, scores),
    )


def export_keyframe_run(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], export_format: str
) -> ExportResult:
    """``gistgym export --run DIR`` for a Keyframe-v0 run."""
    from gistgym.agents.algorithms import load_run

    run = load_run(run_dir)
    return export_keyframe_policy(
        run.model, out, export_format, keyframe_context_from_run(run_dir, run.config, run.model)
    )


# --- loading ------------------------------------------------------------------------------------
@dataclass
class KeyframePolicy:
    """An exported key scheduler driving the :class:`~gistgym.agents.policy.Policy` protocol.

    Stateless (the observation carries the history) and deterministic. Load with
    :func:`load_keyframe_policy`.
    """

    path: Path
    sidecar: dict[str, Any] = field(repr=False)
    name: str = ""
    _run: Callable[..., tuple[np.ndarray, ...]] | None = field(default=None, repr=False)

    @property
    def max_distance(self) -> int:
        """D_max the policy was trained with (a frame this far from its keyframe is made one)."""
        return int(self.sidecar["max_distance"])

    @property
    def history_len(self) -> int:
        """Length of the history input."""
        return int(self.sidecar["history_len"])

    @property
    def cue_names(self) -> tuple[str, ...]:
        """Names of the cues, in input order."""
        return tuple(self.sidecar["cue_names"])

    @property
    def dff_sha256(self) -> str:
        """sha256 of the DFF weights whose flow network produced the training cues."""
        return str(self.sidecar["cache"]["dff_sha256"])

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Nothing to forget."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Nothing to forget."""

    def scores_and_actions(
        self, cues: np.ndarray, since_key: np.ndarray, history: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B, 2) float32 and actions (B,) int64 of a batch of observations."""
        assert self._run is not None
        args = (np.ascontiguousarray(x, dtype=np.float32) for x in (cues, since_key, history))
        scores, actions = self._run(*args)
        return np.asarray(scores, dtype=np.float32), np.asarray(actions, dtype=np.int64)

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The argmax action of every row."""
        return self.scores_and_actions(obs["cues"], obs["since_key"], obs["history"])[1]


def read_keyframe_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check an exported key scheduler's sidecar ``path.json``.

    Raises:
        PolicyFileError: Missing, not JSON, not a gistgym policy sidecar, or missing fields.
        PolicyMismatchError: A sidecar of another environment or of a Keyframe version this gistgym lacks.
    """
    import gymnasium as gym

    import gistgym
    import gistgym.envs  # registers the ids

    side, meta = read_policy_sidecar_json(path)
    env = meta.get("env")
    env_id = env.get("id") if isinstance(env, dict) else None
    if not (isinstance(env_id, str) and env_id.startswith("gistgym/Keyframe-v")):
        raise PolicyMismatchError(side, f"policy was exported for {env_id!r}, not {KEYFRAME_ENV_ID!r}", field="env.id")
    if env_id not in gym.registry:
        raise PolicyMismatchError(
            side,
            f"policy was exported for environment {env_id!r}, which this gistgym {gistgym.__version__} does not have "
            f"(it runs {KEYFRAME_ENV_ID!r}); retrain and re-export for the current version",
            field="env.id",
        )
    check_sidecar_fields(side, meta, _REQUIRED)
    try:
        int(meta["max_distance"])
        str(meta["cache"]["dff_sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyFileError(side, f"bad max_distance or cache.dff_sha256: {exc!r}", field="cache") from exc
    return meta


def load_keyframe_policy(
    path: str | os.PathLike[str],
    *,
    dff_sha256: str | None = None,
    cue_names: Sequence[str] | None = None,
    name: str | None = None,
) -> KeyframePolicy:
    """Load an exported key scheduler after validating its sidecar.

    Args:
        path: The exported file (its sidecar ``path.json`` beside it).
        dff_sha256: Require its training cues to come from these DFF weights (``None``: not checked).
        cue_names: Require these cues, in this order (``None``: not checked).
        name: Policy name in tables (default: the file name).

    Raises:
        PolicyFileError: Missing file or sidecar, corrupt file, or a file changed since export.
        PolicyMismatchError: Another environment (version), DFF weights or cues than required.
        OnnxOpsetError: An ONNX file of another opset.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(path, "exported policy file does not exist")
    meta = read_keyframe_sidecar(path)
    check_file_sha256(path, meta)
    checks = (
        ("cache.dff_sha256", meta["cache"]["dff_sha256"], dff_sha256, "the DFF weights (--dff-weights) its cache used"),
        ("cue_names", list(meta["cue_names"]), None if cue_names is None else list(cue_names), "these cues"),
    )
    for key, have, want, what in checks:
        if want is not None and have != want:
            raise PolicyMismatchError(
                sidecar_path(path),
                f"policy was exported for {key} = {have!r} but is used with {want!r}; run it with {what} or export a "
                "policy trained on a cache of these",
                field=key,
            )
    run = module_runner(path, meta, INPUT_NAMES, OUTPUT_NAMES)
    return KeyframePolicy(path=path, sidecar=meta, name=name or path.name, _run=run)
