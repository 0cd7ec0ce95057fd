"""What ``gistgym train`` and ``gistgym compare`` need to know about each environment.

One :class:`EnvBackend` per registered id: how to build its SB3 vector env and its
whole-video evaluator, which environment arguments a run records, which policy networks
fit its observation, and, for comparisons, its baselines and reference curves. Adding an
environment to the agents' machinery is adding one entry to :data:`BACKENDS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gistgym.errors import ConfigError

INTERLEAVE_ENV_ID = "gistgym/Interleave-v0"
KEYFRAME_ENV_ID = "gistgym/Keyframe-v0"
GLIMPSE_ENV_ID = "gistgym/Glimpse-v0"


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
        references: Reference curve name -> name prefix of its baselines.
        run_env_kwargs: ``(TrainConfig) -> env kwargs`` a run trains with (cache path aside).
        compare_settings: ``(CompareConfig) -> evaluator kwargs`` of the baselines (incl. speed_reward).
        baselines: ``(CompareConfig, speed_reward) -> policies`` of a comparison.
        matched_random: Also compare ``random@F`` at each run's expensive fraction.
        score: Summary key of the accuracy an evaluation reports (``map50``; ``map`` for Glimpse).
        fraction_max: ``(env kwargs) -> `` the largest value ``fraction`` can take (its plot axis).
        linear_features: ``(env kwargs) -> FeatureSet`` of ``--algo cem``'s linear scheduler
            (:mod:`gistgym.agents.cem`); None: the family has none.
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
    fraction_max: Callable[[Mapping[str, Any]], float] = lambda kwargs: 1.0
    linear_features: Callable[[Mapping[str, Any]], Any] | None = None

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


def _named_baselines(config: Any) -> list[str]:
    return [s for s in config.policies if is_baseline(s)]


def is_baseline(spec: str) -> bool:
    """Whether a ``--policies`` entry names a baseline (else it is a run directory)."""
    return spec in ("heavy", "light", "oracle", "every-frame", "hindsight") or spec.startswith(
        ("tau=", "random@", "key=", "flow-threshold@", "hindsight@", "hindsight:", "cue-rule")
    )


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
        "extractors": list(config.extractors),
        "speed_reward": list(speed_rewards(len(config.extractors), config.gamma)),
        "skip_light_updates": None,
        "reward": config.reward,
        "cues": config.cues,
    }


def _interleave_compare_settings(config: Any) -> dict[str, Any]:
    if len(config.extractors) < 2:
        raise ConfigError(f"--extractors needs the heavy one and at least one light one, got {config.extractors}")
    return {
        "extractors": tuple(config.extractors),
        "speed_reward": speed_rewards(len(config.extractors), config.gamma),
    }


def _interleave_baselines(config: Any, speed: tuple[float, ...]) -> list[Any]:
    from gistgym.agents.baselines import FixedTauPolicy, parse_baseline

    out: list[Any] = [parse_baseline(s, speed) for s in ("heavy", "light")]
    out += [FixedTauPolicy(int(t)) for t in config.taus]
    return out + [parse_baseline(s, speed) for s in ("oracle", *_named_baselines(config))]


def _keyframe_run_kwargs(config: Any) -> dict[str, Any]:
    return {
        "split": config.split,
        "clip_len": config.clip_len,
        "history_len": config.history_len,
        "max_distance": config.max_distance,
        "speed_reward": list(speed_rewards(2, config.gamma)),
        "reward": config.reward,
    }


def _keyframe_compare_settings(config: Any) -> dict[str, Any]:
    return {"speed_reward": speed_rewards(2, config.gamma)}


def _keyframe_baselines(config: Any, speed: tuple[float, ...]) -> list[Any]:
    from gistgym.agents.keyframe_baselines import parse_keyframe_baseline

    specs = ["every-frame", *(f"key={int(x)}" for x in config.durations)]
    specs += [f"flow-threshold@{x:g}" for x in config.flow_thresholds] + ["oracle", *_named_baselines(config)]
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
    return {"split": config.split, "num_glimpses": config.num_glimpses}


BACKENDS: dict[str, EnvBackend] = {
    INTERLEAVE_ENV_ID: EnvBackend(
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
    ),
    KEYFRAME_ENV_ID: EnvBackend(
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
    ),
    # Glimpse comparisons have their own metrics and baselines (gistgym.agents.glimpse_compare);
    # this entry serves SB3 training (PPO) on the batched environment.
    GLIMPSE_ENV_ID: EnvBackend(
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
        fraction_max=lambda kwargs: float(kwargs.get("num_glimpses", 10)),
    ),
}


def get_backend(env_id: str) -> EnvBackend:
    """The backend of ``env_id``.

    Raises:
        ConfigError: gistgym's agents do not support that environment.
    """
    if env_id not in BACKENDS:
        raise ConfigError(f"--env {env_id!r}: the agents support {', '.join(BACKENDS)}")
    return BACKENDS[env_id]


def speed_rewards(num_actions: int, gamma: float) -> tuple[float, ...]:
    """Per-action speed reward: 0 for the expensive action 0, gamma for every cheaper one."""
    return (0.0,) + (float(gamma),) * (num_actions - 1)
