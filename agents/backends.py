"""The agents' registry of task families: what ``train``, ``compare`` and ``export`` know of each.

One :class:`EnvBackend` per registered environment id: how to build its SB3 vector env and
its whole-video evaluator, which environment arguments a run records, which algorithms and
policy networks fit it, its baselines and their parser, its reference curves, and, where the
generic machinery does not fit, its own trainer, comparison and export. ``gistgym train``,
``compare`` and ``export`` dispatch through :func:`get_backend` and nothing else; adding a
family to the agents is one :func:`register_backend` call (``docs/adding-a-task-family.md``).
"""

from __future__ import annotations

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


def _interleave_extractor(name: str) -> Callable[[str], dict[str, Any]]:
    def kwargs(algo: str) -> dict[str, Any]:
        from gistgym.agents.policy_nets import CueExtractor, InterleavePolicyNet, MLPExtractor

        cls = {"paper": InterleavePolicyNet, "mlp": MLPExtractor, "cues": CueExtractor}[name]
        # The paper's Q head is one fully connected layer on the extractor's features.
        net_arch: Any = {"pi": [64], "vf": [64]} if algo == "ppo" else []
        return {"features_extractor_class": cls, "net_arch": net_arch, "normalize_images": False}

    return kwargs


def _flat_mlp(algo: str) -> dict[str, Any]:
    net_arch: Any = {"pi": [64, 64], "vf": [64, 64]} if algo == "ppo" else [64, 64]
    return {"net_arch": net_arch}


def _interleave_vec(cache: str, num_envs: int, **kwargs: Any) -> Any:
    from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv

    return InterleaveSB3VecEnv(cache, num_envs=num_envs, **kwargs)


def _interleave_evaluator(cache: str, split: str, kwargs: Mapping[str, Any], *, max_videos: int | None) -> Any:
    from gistgym.agents.evaluation import InterleaveEvaluator

    return InterleaveEvaluator(cache, split, kwargs, max_videos=max_videos)


def _keyframe_vec(cache: str, num_envs: int, **kwargs: Any) -> Any:
    from gistgym.envs.keyframe_vector import KeyframeSB3VecEnv

    return KeyframeSB3VecEnv(cache, num_envs=num_envs, **kwargs)


def _keyframe_evaluator(cache: str, split: str, kwargs: Mapping[str, Any], *, max_videos: int | None) -> Any:
    from gistgym.agents.keyframe_eval import KeyframeEvaluator

    return KeyframeEvaluator(cache, split, kwargs, max_videos=max_videos)


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


def _is_glimpse_baseline(spec: str) -> bool:
    from gistgym.agents.glimpse_eval import is_glimpse_baseline

    return bool(is_glimpse_baseline(spec))


def _interleave_baseline(spec: str, speed: tuple[float, ...]) -> Any:
    from gistgym.agents.baselines import parse_baseline

    return parse_baseline(spec, speed)


def _keyframe_baseline(spec: str, speed: tuple[float, ...]) -> Any:
    from gistgym.agents.keyframe_baselines import parse_keyframe_baseline

    return parse_keyframe_baseline(spec, speed)


def _interleave_export(run_dir: Any, out: Any, export_format: str) -> Any:
    from gistgym.agents.export import export_interleave_run

    return export_interleave_run(run_dir, out, export_format)


def _keyframe_export(run_dir: Any, out: Any, export_format: str) -> Any:
    from gistgym.agents.keyframe_export import export_keyframe_run

    return export_keyframe_run(run_dir, out, export_format)


def _glimpse_export(run_dir: Any, out: Any, export_format: str) -> Any:
    from gistgym.agents.glimpse_export import export_glimpse_run

    return export_glimpse_run(run_dir, out, export_format)


def _train_adaframe(config: Any, target: Any, *, command: Any = ()) -> Any:
    from gistgym.agents.glimpse_runs import train_adaframe_run

    return train_adaframe_run(config, target, command=command)


def _compare_glimpse(config: Any) -> Any:
    from gistgym.agents.glimpse_compare import compare_glimpse_config

    return compare_glimpse_config(config)


def _interleave_features(env_kwargs: Mapping[str, Any]) -> Any:
    from gistgym.agents.baselines import interleave_policy_features

    return interleave_policy_features(env_kwargs)


def _keyframe_features(env_kwargs: Mapping[str, Any]) -> Any:
    from gistgym.agents.keyframe_baselines import keyframe_policy_features

    return keyframe_policy_features(env_kwargs)


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


def _interleave_baselines(config: Any, speed: tuple[float, ...]) -> list[Any]:
    from gistgym.agents.baselines import FixedTauPolicy, parse_baseline

    out: list[Any] = [parse_baseline(s, speed) for s in ("heavy", "light")]
    out += [FixedTauPolicy(int(t)) for t in config.interleave.taus]
    return [*out, parse_baseline("oracle", speed)]


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


def _keyframe_baselines(config: Any, speed: tuple[float, ...]) -> list[Any]:
    from gistgym.agents.keyframe_baselines import parse_keyframe_baseline

    specs = ["every-frame", *(f"key={int(x)}" for x in config.keyframe.durations)]
    specs += [f"flow-threshold@{x:g}" for x in config.keyframe.flow_thresholds] + ["oracle"]
    return [parse_keyframe_baseline(s, speed) for s in specs]


def _glimpse_mlp(algo: str) -> dict[str, Any]:
    # The location is a Gaussian clipped to [0, 1]: SB3's default std of 1 puts most samples
    # on the bounds (frame 0 or T - 1) and PPO collapses there; start at AdaFrame's sigma 0.1.
    return {**_flat_mlp(algo), "log_std_init": math.log(0.1)}


def _glimpse_vec(cache: str, num_envs: int, **kwargs: Any) -> Any:
    from gistgym.envs.glimpse_vector import GlimpseSB3VecEnv

    return GlimpseSB3VecEnv(cache, num_envs=num_envs, **kwargs)


def _glimpse_evaluator(cache: str, split: str, kwargs: Mapping[str, Any], *, max_videos: int | None) -> Any:
    from gistgym.agents.glimpse_runs import GlimpseEnvEvaluator

    return GlimpseEnvEvaluator(cache, split, kwargs, max_videos=max_videos)


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
        make_vec=_interleave_vec,
        make_evaluator=_interleave_evaluator,
        eval_arguments=("extractors", "speed_reward", "skip_light_updates", "history_len", "reward", "cues"),
        extractors={name: _interleave_extractor(name) for name in ("paper", "mlp", "cues")},
        ends=("heavy", "light"),
        references={"fixed tau": "tau="},
        run_env_kwargs=_interleave_run_kwargs,
        compare_settings=_interleave_compare_settings,
        baselines=_interleave_baselines,
        matched_random=True,
        linear_features=_interleave_features,
        is_baseline=_is_interleave_baseline,
        parse_baseline=_interleave_baseline,
        export_run=_interleave_export,
    )
)
register_backend(
    EnvBackend(
        env_id=KEYFRAME_ENV_ID,
        fraction="key_fraction",
        fraction_label="keyframe fraction (frames N_feat ran on)",
        make_vec=_keyframe_vec,
        make_evaluator=_keyframe_evaluator,
        eval_arguments=("max_distance", "speed_reward", "history_len", "reward"),
        extractors={"mlp": _flat_mlp},
        ends=("every-frame",),
        references={"fixed l": "key=", "flow threshold": "flow-threshold@"},
        run_env_kwargs=_keyframe_run_kwargs,
        compare_settings=_keyframe_compare_settings,
        baselines=_keyframe_baselines,
        matched_random=True,
        linear_features=_keyframe_features,
        is_baseline=_is_keyframe_baseline,
        parse_baseline=_keyframe_baseline,
        export_run=_keyframe_export,
    )
)
# Glimpse comparisons have their own metrics and baselines (gistgym.agents.glimpse_compare), and
# AdaFrame its own trainer; SB3's PPO trains on the batched environment.
register_backend(
    EnvBackend(
        env_id=GLIMPSE_ENV_ID,
        fraction="frames_used",
        fraction_label="average frames used per video",
        make_vec=_glimpse_vec,
        make_evaluator=_glimpse_evaluator,
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
        trainers={"adaframe": _train_adaframe},
        rewards=(EQ2,),
        is_baseline=_is_glimpse_baseline,
        compare=_compare_glimpse,
        export_run=_glimpse_export,
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
