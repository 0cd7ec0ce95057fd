"""The agents' registry of task families: what ``train``, ``compare`` and ``export`` know of each.

One :class:`EnvBackend` per registered environment id: how to build its SB3 vector env and
its whole-video evaluator, which environment arguments a run records, which algorithms and
policy networks fit it, its baselines and their parser, its reference curves, and, where the
generic machinery does not fit, its own trainer, comparison and export. ``gistgym train``,
``compare`` and ``export`` dispatch through :func:`get_backend` and nothing else; adding a
family to the agents is one :func:`register_backend` call (``docs/adding-a-task-family.md``).
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gistgym.envs import GLIMPSE_ENV_ID, INTERLEAVE_ENV_ID, KEYFRAME_ENV_ID
from gistgym.envs.rewards import EQ2, REWARDS
from gistgym.errors import ConfigError

__all__ = [
    "BACKENDS",
    "GLIMPSE_ENV_ID",
    "INTERLEAVE_ENV_ID",
    "KEYFRAME_ENV_ID",
    "EnvBackend",
    "family_backend",
    "get_backend",
    "is_baseline",
    "register_backend",
    "speed_rewards",
]

SB3_ALGORITHMS = ("ddqn", "dqn", "ppo", "cem")
"""The ``--algo`` values of the generic trainer (SB3's, and the linear scheduler of ``cem``)."""


@dataclass(frozen=True)
class EnvBackend:
    """The agents' view of one environment.

    Attributes:
        env_id: The registered id.
        fraction: Summary key of the expensive action's share (``heavy_fraction``, ``key_fraction``).
        fraction_label: The same for plots.
        make_vec: ``(cache, num_envs, **env_kwargs) -> SB3 VecEnv`` (the native batched one).
        make_evaluator: ``(cache, split, eval_kwargs, max_videos=N) -> evaluator`` over whole videos.
        eval_arguments: The environment arguments the evaluator takes.
        extractors: ``--extractor`` name -> ``(algo) -> policy_kwargs``; the first is the default.
        ends: Baselines that end the reference curves (only-expensive, only-cheap).
        references: Reference curve name -> name prefix of its baselines; the first is the fixed
            schedules, which ``ends`` complete.
        run_env_kwargs: ``(TrainConfig) -> env kwargs`` a run trains with (cache path aside).
        compare_settings: ``(CompareConfig) -> evaluator kwargs`` of the baselines (incl. speed_reward).
        baselines: ``(CompareConfig, speed_reward) -> policies``: the baselines every comparison
            has (those named in ``--policies`` are added through ``parse_baseline``).
        matched_random: Also compare ``random@F`` at each run's expensive fraction.
        score: Summary key of the accuracy an evaluation reports (``map50``; ``map`` for Glimpse).
        score_label: The same for plots.
        fraction_max: ``(env kwargs) -> `` the largest value ``fraction`` can take (its plot axis).
        linear_features: ``(env kwargs) -> FeatureSet`` of ``--algo cem``'s linear scheduler
            (:mod:`gistgym.agents.cem`); None: the family has none.
        algorithms: The ``--algo`` values that fit (of :data:`SB3_ALGORITHMS` and ``trainers``).
        algorithms_note: Why the others do not (said when one is asked for).
        trainers: The family's own ``--algo`` name -> ``(TrainConfig, target, *, command) -> run
            directory`` (AdaFrame on Glimpse-v0); the generic trainer runs the others.
        rewards: The ``--reward`` values it takes.
        is_baseline: Whether a ``--policies`` entry names one of its baselines (else a run).
        parse_baseline: ``(name, speed_reward) -> policy`` of a baseline name (``random@F`` too,
            when ``matched_random``).
        compare: The family's own comparison ``(CompareConfig) -> result`` where the generic
            one (fixed-period curves, hindsight frontier) does not fit; None: the generic one.
        export_run: ``(run_dir, out, export_format) -> ExportResult``: ``gistgym export --run``.
    """

    env_id: str
    fraction: str
    fraction_label: str
    make_vec: Callable[..., Any]
    make_evaluator: Callable[..., Any]
    eval_arguments: tuple[str, ...]
    extractors: Mapping[str, Callable[[str], dict[str, Any]]]
    ends: tuple[str, ...]
    references: Mapping[str, str]
    run_env_kwargs: Callable[[Any], dict[str, Any]]
    compare_settings: Callable[[Any], dict[str, Any]]
    baselines: Callable[[Any, tuple[float, ...]], list[Any]]
    matched_random: bool
    score: str = "map50"
    score_label: str = "mAP@0.5"
    fraction_max: Callable[[Mapping[str, Any]], float] = lambda kwargs: 1.0
    linear_features: Callable[[Mapping[str, Any]], Any] | None = None
    algorithms: tuple[str, ...] = SB3_ALGORITHMS
    algorithms_note: str = ""
    trainers: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    rewards: tuple[str, ...] = REWARDS
    is_baseline: Callable[[str], bool] = lambda spec: False
    parse_baseline: Callable[[str, tuple[float, ...]], Any] | None = None
    compare: Callable[[Any], Any] | None = None
    export_run: Callable[..., Any] | None = None

    def check_algorithm(self, algo: str) -> None:
        """Refuse an ``--algo`` this family does not train with.

        Raises:
            ConfigError: Unknown, or another family's own, or one that does not fit.
        """
        if algo in self.algorithms:
            return
        owners = [b.env_id for b in BACKENDS.values() if algo in b.trainers]
        if owners:
            raise ConfigError(f"--algo {algo} trains on {' or '.join(owners)}, not --env {self.env_id}")
        known = sorted({*SB3_ALGORITHMS, *(a for b in BACKENDS.values() for a in b.trainers)})
        if algo not in known:
            raise ConfigError(f"--algo {algo!r}: expected one of {', '.join(known)}")
        note = f" ({self.algorithms_note})" if self.algorithms_note else ""
        raise ConfigError(
            f"--algo {algo} does not fit {self.env_id}{note}: use --algo {' or --algo '.join(self.algorithms)}"
        )

    def baseline(self, spec: str, speed_reward: tuple[float, ...]) -> Any:
        """The policy of a baseline name.

        Raises:
            ConfigError: The family parses no baseline names, or not this one.
        """
        if self.parse_baseline is None:
            raise ConfigError(f"{self.env_id} has no named baselines; got {spec!r}")
        return self.parse_baseline(spec, speed_reward)

    def policy_features(self, env_kwargs: Mapping[str, Any]) -> Any:
        """The :class:`~gistgym.agents.cem.FeatureSet` of a linear scheduler on this environment.

        Raises:
            ConfigError: The family has none, or ``env_kwargs`` lack what it reads.
        """
        if self.linear_features is None:
            raise ConfigError(f"--algo cem: {self.env_id} has no linear scheduler features")
        return self.linear_features(env_kwargs)

    def eval_kwargs(self, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The evaluator's share of a run's environment arguments."""
        return {k: env_kwargs[k] for k in self.eval_arguments if k in env_kwargs}

    def policy_kwargs(self, extractor: str, algo: str) -> dict[str, Any]:
        """SB3 ``policy_kwargs`` of ``--extractor`` for ``--algo``.

        Raises:
            ConfigError: The extractor does not fit this environment's observation.
        """
        if extractor not in self.extractors:
            raise ConfigError(
                f"--extractor {extractor!r} does not fit {self.env_id}; expected one of {', '.join(self.extractors)}"
            )
        return self.extractors[extractor](algo)


def entry(ref: str) -> Callable[..., Any]:
    """The callable ``module:attr``, imported on its first call (as Gymnasium resolves ``entry_point``).

    The registry names each family's pieces this way, so registering stays light (no torch)
    and the families' modules may import the registry.
    """
    module, _, attr = ref.partition(":")
    resolved: list[Callable[..., Any]] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not resolved:
            resolved.append(getattr(importlib.import_module(module), attr))
        return resolved[0](*args, **kwargs)

    call.__qualname__ = call.__name__ = ref
    return call


def _vec(ref: str) -> Callable[..., Any]:
    """``(cache, num_envs, **env_kwargs) -> VecEnv`` of a native SB3 vector env class ``ref``."""
    cls = entry(ref)
    return lambda cache, num_envs, **kwargs: cls(cache, num_envs=num_envs, **kwargs)


def _flat_mlp(algo: str) -> dict[str, Any]:
    net_arch: Any = {"pi": [64, 64], "vf": [64, 64]} if algo == "ppo" else [64, 64]
    return {"net_arch": net_arch}


def is_baseline(spec: str) -> bool:
    """Whether a ``--policies`` entry names a baseline of any registered family (else a run directory)."""
    return any(b.is_baseline(spec) for b in BACKENDS.values())


def _is_interleave_baseline(spec: str) -> bool:
    return spec in ("heavy", "light", "oracle", "hindsight") or spec.startswith(
        ("tau=", "random@", "hindsight@", "hindsight:", "cue-rule")
    )


def _is_keyframe_baseline(spec: str) -> bool:
    return spec in ("every-frame", "oracle", "hindsight") or spec.startswith(
        ("key=", "random@", "flow-threshold@", "hindsight@", "hindsight:")
    )


def _interleave_run_kwargs(config: Any) -> dict[str, Any]:
    return {
        "split": config.split,
        "clip_len": config.clip_len,
        "history_len": config.history_len,
        "extractors": list(config.interleave.extractors),
        "speed_reward": list(speed_rewards(len(config.interleave.extractors), config.gamma)),
        "skip_light_updates": None,
        "reward": config.reward,
        "cues": config.interleave.cues,
    }


def _interleave_compare_settings(config: Any) -> dict[str, Any]:
    extractors = config.interleave.extractors
    if len(extractors) < 2:
        raise ConfigError(f"--extractors needs the heavy one and at least one light one, got {extractors}")
    return {
        "extractors": tuple(extractors),
        "speed_reward": speed_rewards(len(extractors), config.gamma),
    }


def _keyframe_run_kwargs(config: Any) -> dict[str, Any]:
    return {
        "split": config.split,
        "clip_len": config.clip_len,
        "history_len": config.history_len,
        "max_distance": config.keyframe.max_distance,
        "speed_reward": list(speed_rewards(2, config.gamma)),
        "reward": config.reward,
    }


def _keyframe_compare_settings(config: Any) -> dict[str, Any]:
    return {"speed_reward": speed_rewards(2, config.gamma)}


def _glimpse_mlp(algo: str) -> dict[str, Any]:
    # The location is a Gaussian clipped to [0, 1]: SB3's default std of 1 puts most samples
    # on the bounds (frame 0 or T - 1) and PPO collapses there; start at AdaFrame's sigma 0.1.
    return {**_flat_mlp(algo), "log_std_init": math.log(0.1)}


def _glimpse_run_kwargs(config: Any) -> dict[str, Any]:
    return {"split": config.split, "num_glimpses": config.glimpse.num_glimpses}


BACKENDS: dict[str, EnvBackend] = {}
"""Every registered family's backend, by environment id (:func:`register_backend`)."""


def register_backend(backend: EnvBackend) -> None:
    """Add a task family to the agents' registry (as cache sections are registered).

    Raises:
        ConfigError: Its id is registered already, or it names a default algorithm it has no trainer for.
    """
    if backend.env_id in BACKENDS:
        raise ConfigError(f"environment {backend.env_id!r} is registered twice with the agents")
    unknown = [a for a in backend.algorithms if a not in SB3_ALGORITHMS and a not in backend.trainers]
    if unknown:
        raise ConfigError(f"{backend.env_id}: --algo {', '.join(unknown)} has no trainer (give one in trainers)")
    BACKENDS[backend.env_id] = backend


register_backend(
    EnvBackend(
        env_id=INTERLEAVE_ENV_ID,
        fraction="heavy_fraction",
        fraction_label="heavy fraction (frames the heavy extractor ran on)",
        make_vec=_vec("gistgym.envs.interleave_sb3:InterleaveSB3VecEnv"),
        make_evaluator=entry("gistgym.agents.evaluation:InterleaveEvaluator"),
        eval_arguments=("extractors", "speed_reward", "skip_light_updates", "history_len", "reward", "cues"),
        extractors={
            name: functools.partial(entry("gistgym.agents.policy_nets:interleave_policy_kwargs"), name)
            for name in ("paper", "mlp", "cues")
        },
        ends=("heavy", "light"),
        references={"fixed tau": "tau="},
        run_env_kwargs=_interleave_run_kwargs,
        compare_settings=_interleave_compare_settings,
        baselines=entry("gistgym.agents.baselines:interleave_compare_baselines"),
        matched_random=True,
        linear_features=entry("gistgym.agents.baselines:interleave_policy_features"),
        is_baseline=_is_interleave_baseline,
        parse_baseline=entry("gistgym.agents.baselines:parse_baseline"),
        export_run=entry("gistgym.agents.export:export_interleave_run"),
    )
)
register_backend(
    EnvBackend(
        env_id=KEYFRAME_ENV_ID,
        fraction="key_fraction",
        fraction_label="keyframe fraction (frames N_feat ran on)",
        make_vec=_vec("gistgym.envs.keyframe_vector:KeyframeSB3VecEnv"),
        make_evaluator=entry("gistgym.agents.keyframe_eval:KeyframeEvaluator"),
        eval_arguments=("max_distance", "speed_reward", "history_len", "reward"),
        extractors={"mlp": _flat_mlp},
        ends=("every-frame",),
        references={"fixed l": "key=", "flow threshold": "flow-threshold@"},
        run_env_kwargs=_keyframe_run_kwargs,
        compare_settings=_keyframe_compare_settings,
        baselines=entry("gistgym.agents.keyframe_baselines:keyframe_compare_baselines"),
        matched_random=True,
        linear_features=entry("gistgym.agents.keyframe_baselines:keyframe_policy_features"),
        is_baseline=_is_keyframe_baseline,
        parse_baseline=entry("gistgym.agents.keyframe_baselines:parse_keyframe_baseline"),
        export_run=entry("gistgym.agents.keyframe_export:export_keyframe_run"),
    )
)
# Glimpse comparisons have their own metrics and baselines (gistgym.agents.glimpse_compare), and
# AdaFrame its own trainer; SB3's PPO trains on the batched environment.
register_backend(
    EnvBackend(
        env_id=GLIMPSE_ENV_ID,
        fraction="frames_used",
        fraction_label="average frames used per video",
        make_vec=_vec("gistgym.envs.glimpse_vector:GlimpseSB3VecEnv"),
        make_evaluator=entry("gistgym.agents.glimpse_runs:GlimpseEnvEvaluator"),
        eval_arguments=("num_glimpses",),
        extractors={"mlp": _glimpse_mlp},
        ends=("all",),
        references={"uniform": "uniform@", "random": "random@"},
        run_env_kwargs=_glimpse_run_kwargs,
        compare_settings=lambda config: {"speed_reward": ()},
        baselines=lambda config, speed: [],
        matched_random=False,
        score="map",
        score_label="video mAP",
        fraction_max=lambda kwargs: float(kwargs.get("num_glimpses", 10)),
        algorithms=("adaframe", "ppo"),
        algorithms_note="ddqn, dqn and cem need discrete actions; its action is a location in [0, 1]",
        trainers={"adaframe": entry("gistgym.agents.glimpse_runs:train_adaframe_run")},
        rewards=(EQ2,),
        is_baseline=entry("gistgym.agents.glimpse_eval:is_glimpse_baseline"),
        compare=entry("gistgym.agents.glimpse_compare:compare_glimpse_config"),
        export_run=entry("gistgym.agents.glimpse_export:export_glimpse_run"),
    )
)


def get_backend(env_id: str) -> EnvBackend:
    """The backend of ``env_id``.

    Raises:
        ConfigError: gistgym's agents do not support that environment.
    """
    if env_id not in BACKENDS:
        raise ConfigError(f"--env {env_id!r}: the agents support {', '.join(BACKENDS)}")
    return BACKENDS[env_id]


def family_backend(env_id: str) -> EnvBackend | None:
    """The backend of ``env_id``'s family: the same ``namespace/Name`` at any version (None: no such family).

    Routes what names another version (an old run, an exported policy) to the family that
    explains the version mismatch.
    """
    if env_id in BACKENDS:
        return BACKENDS[env_id]
    name = env_id.rpartition("-v")[0]
    return next((b for b in BACKENDS.values() if name and b.env_id.rpartition("-v")[0] == name), None)


def speed_rewards(num_actions: int, gamma: float) -> tuple[float, ...]:
    """Per-action speed reward: 0 for the expensive action 0, gamma for every cheaper one."""
    return (0.0,) + (float(gamma),) * (num_actions - 1)
