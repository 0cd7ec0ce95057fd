"""Export a trained AdaFrame agent (``gistgym/Glimpse-v0``) to TorchScript or ONNX, and load it back.

An exported AdaFrame agent is two files, like an exported interleave policy
(:mod:`gistgym.agents.export`):

* ``FILE`` (``.pt`` TorchScript or ``.onnx``): the whole agent as **one** module with one
  fixed signature, one glimpse step per call::

      logits, location, utility, h_out, c_out = agent(frame_feature, memory, h, c, started)

      frame_feature (B, F) float32       pooled heavy feature of the frame just glimpsed
                                         (ignored when started = 0: pass zeros)
      memory        (B, T_d, F + P)      the global memory: T_d pooled light features with
                    float32              their positional encoding appended
                                         (gistgym.backbones.glimpse.memory_with_positions)
      h, c          (B, H) float32       the agent's LSTM state after the previous step
                                         (ignored when started = 0: pass zeros)
      started       (B, 1) float32       0: no frame seen yet -- the memory-only initial step
                                         (AdaFrameNet.initial); 1: a normal glimpse step
                                         (AdaFrameNet.step on frame_feature and (h, c))
      logits        (B, C) float32       prediction head at the new state (meaningless after
                                         the initial step)
      location      (B,) float32         mean location in [0, 1] of the next glimpse
                                         (frame index = round(location * (T - 1)))
      utility       (B,) float32         V, the reward the agent still expects from looking on
      h_out, c_out  (B, H) float32       the new LSTM state (feed back as h, c)

  One entry point rather than two: both ONNX and TorchScript keep one graph with a fixed
  signature, and a caller drives both kinds of step the same way. The module computes both
  branches with the network's own ``initial`` and ``step`` and selects per row with
  ``started > 0.5`` (``torch.where``), so either branch is exactly the Python network's
  (the unused branch costs one small LSTM step). The memory's keys and values are
  re-encoded on every call (``T_d`` x ``(F + P)`` x ``E`` multiply-adds, negligible next to the
  heavy extractor) so the module stays stateless. ``B`` is dynamic (1 online), ``T_d`` is
  fixed to the training cache's ``memory_frames``. Locations are deterministic (the mean of
  the Gaussian policy), as in :func:`gistgym.agents.adaframe.adaptive_lookahead`.
* ``FILE.json``, the sidecar (format ``gistgym-policy``, like the interleave sidecar): the
  environment id and version, the cache identity (schema version, dataset, the glimpse
  models' weights sha256 ``cache.glimpse_weights_sha256``), the AdaFrame configuration
  (K, feature / memory widths, classes, ...), the memory layout (``T_d``, ``P``), class names,
  the observation layout, the gistgym and torch versions, the format (and ONNX opset) and the
  sha256 of ``FILE``.

Nothing is pickled. :func:`load_glimpse_policy` refuses a missing or foreign sidecar, a file
changed since export, a policy made for another environment (version), glimpse models or
memory layout, and an ONNX file of another opset, each with a typed error naming the file
and the mismatch (:class:`~gistgym.errors.PolicyFileError`,
:class:`~gistgym.errors.PolicyMismatchError`, :class:`~gistgym.errors.OnnxOpsetError`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gistgym.agents.adaframe import AdaFrameConfig, AdaFrameNet
from gistgym.agents.export_common import (
    FORMATS,
    ExportResult,
    check_file_sha256,
    check_sidecar_fields,
    module_runner,
    read_policy_sidecar_json,
    sidecar_header,
    sidecar_path,
    write_exported_module,
)
from gistgym.agents.runs import read_run_config
from gistgym.envs import GLIMPSE_ENV_ID
from gistgym.errors import ConfigError, PolicyFileError, PolicyMismatchError

INPUT_NAMES = ("frame_feature", "memory", "h", "c", "started")
OUTPUT_NAMES = ("logits", "location", "utility", "h_out", "c_out")
GLIMPSE_ALGORITHM = "AdaFrame"

StepOutputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class AdaFrameStepModule(nn.Module):
    """An :class:`AdaFrameNet` behind the fixed one-step signature (see the module docstring)."""

    def __init__(self, net: AdaFrameNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, frame_feature: Tensor, memory: Tensor, h: Tensor, c: Tensor, started: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One glimpse step (``started`` = 1) or the memory-only initial step (``started`` = 0)."""
        keys, values = self.net.encode_memory(memory)
        first, (h0, c0) = self.net.initial(keys, values)
        then, (h1, c1) = self.net.step(frame_feature, (h, c), keys, values)
        row = started > 0.5  # (B, 1)
        flat = row[:, 0]  # (B,)
        logits = torch.where(row, then.logits, first.logits)
        location = torch.where(flat, then.mu, first.mu).clamp(0.0, 1.0)
        utility = torch.where(flat, then.utility, first.utility)
        return logits, location, utility, torch.where(row, h1, h0), torch.where(row, c1, c0)


@dataclass(frozen=True)
class GlimpsePolicyContext:
    """What an exported AdaFrame agent was trained on and expects of its inputs.

    Attributes:
        adaframe: The agent's configuration (K, widths, classes).
        memory_frames: T_d, entries of the global memory.
        position_dim: P, width of the positional encoding appended to each memory entry.
        cache_identity: The training run's cache identity (schema version, detector and
            frozen models' weights sha256, dataset).
        glimpse_weights_sha256: sha256 of the glimpse models' weights the cache was built from.
        class_names: Class names (empty if the dataset names none).
        env_id: The environment id.
        env_kwargs: The environment arguments of the run.
        source: Where the policy came from (a run directory), for people.
    """

    adaframe: AdaFrameConfig
    memory_frames: int
    position_dim: int
    cache_identity: Mapping[str, Any]
    glimpse_weights_sha256: str
    class_names: tuple[str, ...] = ()
    env_id: str = GLIMPSE_ENV_ID
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def observation_layout(self) -> dict[str, Any]:
        """The inputs as the sidecar records them."""
        a = self.adaframe
        f, p = a.feature_dim, self.position_dim
        return {
            "frame_feature": {
                "shape": ["B", f],
                "dtype": "float32",
                "channels": {"average_pool": [0, f // 2], "max_pool": [f // 2, f]},
                "meaning": "heavy extractor on the glimpsed frame (full resolution), pooled over space; "
                "zeros when started = 0",
            },
            "memory": {
                "shape": ["B", self.memory_frames, a.memory_dim],
                "dtype": "float32",
                "channels": {
                    "average_pool": [0, f // 2],
                    "max_pool": [f // 2, f],
                    "sin(pi k x), k=1..P/2": [f, f + p // 2],
                    "cos(pi k x), k=1..P/2": [f + p // 2, f + p],
                },
                "meaning": "light extractor on T_d frames at the centres of T_d equal parts of the video, pooled, "
                "with the positional encoding of each frame's location x = index / (T - 1)",
            },
            "h": {"shape": ["B", a.hidden], "dtype": "float32", "meaning": "LSTM h of the previous step"},
            "c": {"shape": ["B", a.hidden], "dtype": "float32", "meaning": "LSTM c of the previous step"},
            "started": {
                "shape": ["B", 1],
                "dtype": "float32",
                "meaning": "0: initial step (memory only, zero state); 1: glimpse step on frame_feature and (h, c)",
            },
        }


def glimpse_context_from_run(run_dir: str | os.PathLike[str]) -> GlimpsePolicyContext:
    """The :class:`GlimpsePolicyContext` of an AdaFrame run directory.

    The memory layout and class names come from the run's cache, whose identity is checked
    against the one the run recorded.

    Raises:
        RunError: Not an AdaFrame run.
        ConfigError: The run names no cache or recorded no glimpse weights.
        CacheError, CacheMismatchError: The cache is unreadable or not the run's.
    """
    from gistgym.agents.runs import check_cache_identity, read_run_config
    from gistgym.errors import RunError
    from gistgym.feature_cache import FeatureCache
    from gistgym.feature_cache.glimpse import SECTION_GLIMPSE, read_glimpse_section

    path = Path(run_dir)
    config = read_run_config(path)
    if config.get("algo") != "adaframe":
        raise RunError(path / "config.json", f"not an AdaFrame run (algo {config.get('algo')!r})", field="algo")
    identity = dict(config.get("cache_identity") or {})
    glimpse_sha = (identity.get("model_weights") or {}).get("glimpse")
    if not glimpse_sha:
        raise ConfigError(f"run {path} recorded no glimpse weights sha256 in cache_identity.model_weights")
    cache_path = config.get("cache_path")
    if not cache_path:
        raise ConfigError(f"the config of run {path} names no cache_path; cannot read the memory layout")
    check_cache_identity(identity, cache_path, what=f"run {path}")
    cache = FeatureCache(Path(cache_path), sections=(SECTION_GLIMPSE,))
    try:
        section = read_glimpse_section(cache)
    finally:
        cache.close()
    cfg = AdaFrameConfig.from_dict(config["adaframe"])
    names = section.class_names or tuple((identity.get("dataset") or {}).get("classes") or ())
    return GlimpsePolicyContext(
        adaframe=cfg,
        memory_frames=int(section.config.memory_frames),
        position_dim=int(section.config.position_dim),
        cache_identity=identity,
        glimpse_weights_sha256=str(glimpse_sha),
        class_names=tuple(str(n) for n in names) if len(names) == cfg.num_classes else (),
        env_id=str(config.get("env_id") or GLIMPSE_ENV_ID),
        env_kwargs=dict(config.get("env_kwargs") or {}),
        source=str(path),
    )


def example_inputs(ctx: GlimpsePolicyContext, batch: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Random inputs of the module's signature (``started`` alternating 0, 1)."""
    a = ctx.adaframe
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, a.feature_dim, generator=g),
        torch.randn(batch, ctx.memory_frames, a.memory_dim, generator=g),
        torch.randn(batch, a.hidden, generator=g) * 0.1,
        torch.randn(batch, a.hidden, generator=g) * 0.1,
        (torch.arange(batch) % 2).float()[:, None],
    )


def export_adaframe(
    net: AdaFrameNet, out: str | os.PathLike[str], export_format: str, context: GlimpsePolicyContext
) -> ExportResult:
    """Write ``net`` behind the one-step signature to ``out`` and its sidecar ``out.json``.

    Both files are written through a temporary name and renamed into place (sidecar last).

    Raises:
        ConfigError: Unknown format, or ``net``'s configuration differs from ``context``'s.
    """
    if export_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    if net.config != context.adaframe:
        raise ConfigError(f"the network's configuration {net.config} differs from the run's {context.adaframe}")
    return write_exported_module(
        AdaFrameStepModule(net).cpu().eval(),
        example_inputs(context, 2),
        out,
        export_format,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        sidecar_for=lambda digest: build_glimpse_sidecar(context, export_format, digest),
    )


def build_glimpse_sidecar(ctx: GlimpsePolicyContext, export_format: str, file_sha256: str) -> dict[str, Any]:
    """The JSON sidecar of an exported AdaFrame agent (see the module docstring)."""
    header = sidecar_header(
        export_format,
        file_sha256,
        algorithm=GLIMPSE_ALGORITHM,
        source=ctx.source,
        env_id=ctx.env_id,
        env_kwargs=dict(ctx.env_kwargs),
    )
    a = ctx.adaframe
    identity = json.loads(json.dumps(dict(ctx.cache_identity), default=str))
    return {
        **header,
        "cache": {
            "schema_version": identity.get("schema_version"),
            "weights_sha256": identity.get("weights_sha256"),
            "glimpse_weights_sha256": ctx.glimpse_weights_sha256,
            "identity": identity,
        },
        "adaframe": a.to_dict(),
        "num_glimpses": a.num_glimpses,
        "feature_dim": a.feature_dim,
        "memory_dim": a.memory_dim,
        "hidden": a.hidden,
        "num_classes": a.num_classes,
        "memory": {"frames": ctx.memory_frames, "position_dim": ctx.position_dim},
        "class_names": list(ctx.class_names),
        "inputs": list(INPUT_NAMES),
        "outputs": {
            "logits": "prediction head (B, C) at the new state; softmax = the class probabilities",
            "location": "(B,) mean location in [0, 1] of the next glimpse; frame = round(location * (T - 1))",
            "utility": "(B,) V of the new state; adaptive lookahead stops after patience consecutive V < mu",
            "h_out": "(B, H) new LSTM h",
            "c_out": "(B, H) new LSTM c",
        },
        "observation_layout": ctx.observation_layout(),
    }


def export_adaframe_run(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], export_format: str
) -> ExportResult:
    """``gistgym export --run DIR`` for an AdaFrame run."""
    from gistgym.agents.glimpse_runs import load_adaframe_run

    ctx = glimpse_context_from_run(run_dir)
    return export_adaframe(load_adaframe_run(run_dir), out, export_format, ctx)


def export_glimpse_run(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], export_format: str
) -> ExportResult:
    """``gistgym export --run DIR`` for a Glimpse-v0 run (its registered export): AdaFrame runs.

    Raises:
        ConfigError: A PPO run (the glimpse runtime runs AdaFrame's recurrent agent only).
    """
    algo = read_run_config(Path(run_dir)).get("algo")
    if algo != "adaframe":
        raise ConfigError(
            f"run {run_dir} is a {algo} run on {GLIMPSE_ENV_ID}; only AdaFrame runs export (the glimpse runtime "
            "runs AdaFrame's recurrent agent)"
        )
    return export_adaframe_run(run_dir, out, export_format)


# --- loading ------------------------------------------------------------------------------------

_REQUIRED = ("export_format", "file_sha256", "env", "cache", "adaframe", "memory", "num_glimpses")


@dataclass
class GlimpsePolicy:
    """An exported AdaFrame agent (load with :func:`load_glimpse_policy`)."""

    path: Path
    sidecar: dict[str, Any] = field(repr=False)
    _run: Callable[..., tuple[np.ndarray, ...]] = field(repr=False)

    @property
    def export_format(self) -> str:
        """``"torchscript"`` or ``"onnx"``."""
        return str(self.sidecar["export_format"])

    @property
    def config(self) -> AdaFrameConfig:
        """The agent's configuration."""
        return AdaFrameConfig.from_dict(self.sidecar["adaframe"])

    @property
    def num_glimpses(self) -> int:
        """K, the training budget (the default budget at inference)."""
        return int(self.sidecar["num_glimpses"])

    @property
    def hidden(self) -> int:
        """H."""
        return int(self.sidecar["adaframe"]["hidden"])

    @property
    def feature_dim(self) -> int:
        """F."""
        return int(self.sidecar["adaframe"]["feature_dim"])

    @property
    def memory_frames(self) -> int:
        """T_d."""
        return int(self.sidecar["memory"]["frames"])

    @property
    def glimpse_weights_sha256(self) -> str:
        """sha256 of the glimpse models the training cache was built from."""
        return str(self.sidecar["cache"]["glimpse_weights_sha256"])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names (empty if unknown)."""
        return tuple(str(n) for n in self.sidecar.get("class_names") or ())

    def initial_state(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Zero (h, c)."""
        z = np.zeros((batch, self.hidden), dtype=np.float32)
        return z, z.copy()

    def step(
        self, frame_feature: np.ndarray, memory: np.ndarray, h: np.ndarray, c: np.ndarray, started: np.ndarray
    ) -> StepOutputs:
        """One call of the exported module (float32 numpy in and out, see the module docstring)."""
        args = [np.ascontiguousarray(x, dtype=np.float32) for x in (frame_feature, memory, h, c, started)]
        logits, location, utility, h_out, c_out = self._run(*args)
        return logits, location, utility, h_out, c_out


def read_glimpse_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the structure of an exported AdaFrame agent's sidecar ``path.json``.

    Raises:
        PolicyFileError: Missing, not JSON, not a gistgym policy sidecar, or missing fields.
        PolicyMismatchError: A policy sidecar of another environment.
    """
    side, meta = read_policy_sidecar_json(path)
    env = meta.get("env")
    env_id = env.get("id") if isinstance(env, dict) else None
    if env_id != GLIMPSE_ENV_ID:
        import gymnasium as gym

        import gistgym.envs  # registers the ids

        if isinstance(env_id, str) and env_id.startswith("gistgym/Glimpse-v") and env_id not in gym.registry:
            problem = (
                f"policy was exported for environment {env_id!r}, which this gistgym {gistgym.__version__} does not "
                f"have (it runs {GLIMPSE_ENV_ID!r}); retrain and re-export for the current version"
            )
        else:
            problem = f"policy was exported for environment {env_id!r}, not {GLIMPSE_ENV_ID!r} (an AdaFrame agent)"
        raise PolicyMismatchError(side, problem, field="env.id")
    check_sidecar_fields(side, meta, _REQUIRED)
    try:
        AdaFrameConfig.from_dict(meta["adaframe"])
        int(meta["memory"]["frames"])
        str(meta["cache"]["glimpse_weights_sha256"])
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise PolicyFileError(side, f"bad AdaFrame configuration or memory layout: {exc}", field="adaframe") from exc
    return meta


def load_glimpse_policy(
    path: str | os.PathLike[str],
    *,
    glimpse_weights_sha256: str | None = None,
    memory_frames: int | None = None,
    feature_dim: int | None = None,
    memory_dim: int | None = None,
    num_classes: int | None = None,
) -> GlimpsePolicy:
    """Load an exported AdaFrame agent after validating its sidecar.

    Args:
        path: The exported file (its sidecar ``path.json`` beside it).
        glimpse_weights_sha256: Require the training cache to come from these glimpse models.
        memory_frames: Require this memory length T_d (``None``: not checked, as below).
        feature_dim: Require this frame feature width F (of the glimpse models that feed it).
        memory_dim: Require this memory entry width F + P.
        num_classes: Require this number of classes.

    Raises:
        PolicyFileError: Missing file or sidecar, corrupt file, or a file changed since export.
        PolicyMismatchError: Another environment (version), glimpse models or sizes than required.
        OnnxOpsetError: An ONNX file of another opset than its sidecar's or :data:`ONNX_OPSET`.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(path, "exported policy file does not exist")
    meta = read_glimpse_sidecar(path)
    check_file_sha256(path, meta)
    check_glimpse_policy_matches(
        path,
        meta,
        glimpse_weights_sha256=glimpse_weights_sha256,
        memory_frames=memory_frames,
        feature_dim=feature_dim,
        memory_dim=memory_dim,
        num_classes=num_classes,
    )
    run = module_runner(path, meta, INPUT_NAMES, OUTPUT_NAMES)
    return GlimpsePolicy(path=path, sidecar=meta, _run=run)


def check_glimpse_policy_matches(
    path: Path,
    meta: Mapping[str, Any],
    *,
    glimpse_weights_sha256: str | None = None,
    memory_frames: int | None = None,
    feature_dim: int | None = None,
    memory_dim: int | None = None,
    num_classes: int | None = None,
) -> None:
    """Refuse an AdaFrame sidecar that does not fit what the caller will feed it (``None``: not checked).

    Raises:
        PolicyMismatchError: Names the sidecar field, its value and the expected one.
    """
    a = meta["adaframe"]
    checks: list[tuple[str, Any, Any, str]] = [
        (
            "cache.glimpse_weights_sha256",
            meta["cache"].get("glimpse_weights_sha256"),
            glimpse_weights_sha256,
            "the policy was trained on features of other glimpse models; pass the glimpse weights its cache was "
            "built from (--glimpse-weights) or export a policy trained on a cache of these",
        ),
        ("memory.frames", meta["memory"].get("frames"), memory_frames, "the global memory has another length"),
        ("adaframe.feature_dim", a.get("feature_dim"), feature_dim, "frame features of another width"),
        ("adaframe.memory_dim", a.get("memory_dim"), memory_dim, "memory entries of another width"),
        ("adaframe.num_classes", a.get("num_classes"), num_classes, "another number of classes"),
    ]
    for key, have, want, why in checks:
        if want is not None and have != want:
            raise PolicyMismatchError(
                sidecar_path(path),
                f"policy was exported for {key} = {have!r} but is used with {want!r}: {why}",
                field=key,
            )
