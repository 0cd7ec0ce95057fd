"""``gistgym train``: Double DQN (or DQN, PPO) on a gistgym environment, one run directory per gamma.

The agent of *Looking Fast and Slow* is Double DQN with the Fig. 4 policy network
(:class:`~gistgym.agents.policy_nets.InterleavePolicyNet`) on Eq. 1 observations and the
Eq. 2 reward with speed reward ``gamma`` for the light extractor(s). ``--gamma-sweep``
trains one run per gamma of ``--gammas``: larger gamma pays more for skipping the heavy
extractor, so the runs span the accuracy/cost trade-off (the adaptive curve of Fig. 7).

``--seeds N`` trains every setting (one gamma, or each of a sweep) with the seeds ``seed,
seed + 1, ..., seed + N - 1``; the runs are then named ``NAME-sSEED`` (e.g. ``ddqn-g1-s0``),
config.json records each run's own seed and its ``setting`` (the name without the seed
suffix), and ``gistgym compare`` summarises each setting over its seeds.

``--env gistgym/Keyframe-v0`` trains the same agents on Deep Feature Flow's keyframe
decision (gamma is then the speed reward of propagating; the observation is the flow cues,
so the policy network is an MLP). Environment specifics live in :mod:`gistgym.agents.backends`.
``--reward f1`` (or ``errors``, ``matched``) pays Eq. 2's difference form on a per-frame
detection signal instead of the losses (the environments' ``reward`` argument); the run's
config.json records it and its evaluations during training use it for ``mean_reward``.

Training steps a batch of ``num_envs`` episodes of the ``train`` split with the native
batched environment (e.g. :class:`~gistgym.envs.interleave_sb3.InterleaveSB3VecEnv`). Every
``eval_every`` env steps the greedy policy runs over the first ``eval_videos`` whole videos
of ``eval_split`` (:class:`~gistgym.agents.evaluation.InterleaveEvaluator`) and
``eval/map50``, ``eval/heavy_fraction`` (or ``eval/key_fraction``), ``eval/mean_reward`` go to TensorBoard and
``eval.json`` beside ``train/q_mean`` (Fig. 8). The final model is the last one: there is no
selection on the evaluation split, so comparing runs on it stays fair.

Several runs (seeds, a gamma sweep) go through :func:`~gistgym.agents.sweep.run_sweep`: here
one after another, or with ``--ray`` as Ray tasks on a local instance or a cluster, with
retries, ``--resume`` and ``OUT/sweep.json``.

The run directory layout is in :mod:`gistgym.agents.runs`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.logger import configure
from tqdm.auto import tqdm

from gistgym.agents.algorithms import ALGORITHMS
from gistgym.agents.backends import INTERLEAVE_ENV_ID, EnvBackend, get_backend
from gistgym.agents.cem import cem_config, train_cem_run
from gistgym.agents.policy import SB3Policy
from gistgym.agents.policy_nets import count_macs, count_parameters
from gistgym.agents.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVAL_FILE,
    MODEL_FILE,
    TENSORBOARD_DIR,
    cache_identity,
    prepare_run_target,
    run_config_json,
    staged_run_dir,
)
from gistgym.agents.sweep import SweepJob, SweepOptions, run_sweep
from gistgym.envs.rewards import EQ2, REWARDS
from gistgym.errors import ConfigError
from gistgym.options import NestedOptions
from gistgym.staging import check_name
from gistgym.videos.dataset import atomic_write_json, nan_to_null

CEM = "cem"
"""``--algo`` of the linear scheduler found by the cross-entropy method (:mod:`gistgym.agents.cem`)."""


@dataclass(frozen=True)
class InterleaveTrainOptions:
    """``gistgym train`` options of Interleave-v0 (``TrainConfig.interleave``)."""

    extractors: tuple[str, ...] = ("heavy", "light")
    """Interleave: cache extractors in action order, heavy first (e.g. heavy light light+shift)."""
    cues: bool = False
    """Interleave: add the runtime cues (frames since heavy, light-feature change, memory change) to the observation."""


@dataclass(frozen=True)
class KeyframeTrainOptions:
    """``gistgym train`` options of Keyframe-v0 (``TrainConfig.keyframe``)."""

    max_distance: int = 20
    """Keyframe: a keyframe is forced at this distance (D_max)."""


@dataclass(frozen=True)
class GlimpseTrainOptions:
    """``gistgym train`` options of Glimpse-v0 and AdaFrame (``TrainConfig.glimpse``)."""

    num_glimpses: int = 10
    """Glimpse: glimpses per video (K)."""
    adaframe_hidden: int = 256
    """Glimpse, AdaFrame: width of the agent's LSTM."""
    glimpse_sigma: float = 0.1
    """Glimpse, AdaFrame: fixed standard deviation of the Gaussian location policy."""
    utility_weight: float = 1.0
    """Glimpse, AdaFrame: lambda in L_cls + lambda L_utl - lambda J_sel."""
    cls_loss: str = "last"
    """Glimpse, AdaFrame: cross-entropy after the last glimpse (`last`, the paper) or after every one (`all`)."""
    adaframe_steps: int = 4000
    """Glimpse, AdaFrame: optimiser steps of batch_size videos x num_glimpses glimpses (replaces --total-timesteps)."""
    adaframe_lr: float = 1e-3
    """Glimpse, AdaFrame: Adam learning rate (replaces --learning-rate)."""


@dataclass(frozen=True)
class TrainConfig(NestedOptions):
    """Arguments of ``gistgym train`` (every hyperparameter of a run; saved in its config.json).

    Each family's options are a group of their own (``config.keyframe.max_distance``); build
    and change a config by flat option names with :meth:`of` and :meth:`replace`
    (:class:`~gistgym.options.NestedOptions`), as the command line names them.
    """

    cache: str = ""
    """Feature cache file (gistgym cache build). Required."""
    out: str = "runs/train"
    """Folder the run directories go into (OUT/NAME)."""
    env: str = INTERLEAVE_ENV_ID
    """Environment id (gistgym/Interleave-v0, gistgym/Keyframe-v0 or gistgym/Glimpse-v0)."""
    algo: str = "ddqn"
    """ddqn (Double DQN, the paper's), dqn (SB3's vanilla DQN), ppo, cem (a linear scheduler on the cues found by
    the cross-entropy method; Interleave with --cues, Keyframe), or adaframe (Glimpse-v0 only)."""
    extractor: str = ""
    """Policy network (default: the env's first): Interleave paper (Fig. 4) or mlp; Keyframe mlp."""
    name: str = ""
    """Run name (default: ALGO-gGAMMA, e.g. ddqn-g1); with --seeds N > 1 the runs are NAME-sSEED."""
    gamma: float = 1.0
    """Speed reward of the cheap action(s) in Eq. 2 (the paper's gamma): light extractors, propagation."""
    reward: str = EQ2
    """Interleave/Keyframe: eq2 (Eq. 2 on losses) or a frame signal f1, errors, matched (S^a - max_i S^i + gamma)."""
    gamma_sweep: bool = False
    """Train one run per gamma of --gammas (names ALGO-gGAMMA)."""
    gammas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.5)
    """The gammas of --gamma-sweep."""
    seeds: int = 1
    """Seeds per setting: SEED, SEED+1, ..., SEED+N-1; with N > 1 runs are named NAME-sSEED."""
    cem_population: int = 20
    """CEM: candidates per generation (the current mean among them)."""
    cem_clips: int = 48
    """CEM: train clips every candidate is scored on (the same clips throughout; replaces --num-envs)."""
    cem_iterations: int = 10
    """CEM: generations (replaces --total-timesteps)."""
    cem_elite: float = 0.25
    """CEM: share of the candidates the Gaussian is refit to."""
    cem_init_std: float = 4.0
    """CEM: initial standard deviation of every weight."""
    clip_len: int = 40
    """Frames per training episode."""
    history_len: int = 20
    """Length of the action history in the observation."""
    split: str = "train"
    """Split the training clips come from."""
    num_envs: int = 16
    """Episodes stepped side by side (one batched torch call per step)."""
    total_timesteps: int = 60_000
    """Environment steps to train for."""
    seed: int = 0
    """Seed of the agent, the environment and the evaluations."""
    learning_rate: float = 5e-4
    """Adam learning rate."""
    discount: float = 0.9
    """RL discount factor of returns (SB3's gamma; named so to keep gamma for the speed reward)."""
    batch_size: int = 64
    """Minibatch size (DQN) or PPO minibatch size."""
    buffer_size: int = 20_000
    """Replay buffer transitions (DQN); one observation is 4H x g x g float32 (64 kB by default)."""
    learning_starts: int = 2_000
    """Env steps of random actions before DQN learns."""
    train_freq: int = 1
    """DQN: update every this many vector steps (of num_envs env steps)."""
    gradient_steps: int = 2
    """DQN: gradient steps per update."""
    target_update_interval: int = 2_000
    """DQN: env steps between target network updates."""
    exploration_fraction: float = 0.3
    """DQN: fraction of training over which epsilon decays from 1."""
    exploration_final_eps: float = 0.02
    """DQN: final epsilon."""
    n_steps: int = 64
    """PPO: steps per env per rollout."""
    eval_every: int = 10_000
    """Env steps between evaluations (0: only at the end)."""
    eval_videos: int = 8
    """Whole videos of --eval-split per evaluation during training."""
    eval_split: str = "val"
    """Split of the evaluations during training."""
    checkpoint_every: int = 20_000
    """Env steps between checkpoints (0: none)."""
    overwrite: bool = False
    """Replace an existing run directory of the same name."""
    progress: bool = True
    """Show a progress bar."""
    interleave: InterleaveTrainOptions = field(default_factory=InterleaveTrainOptions)
    """Interleave-v0's options."""
    keyframe: KeyframeTrainOptions = field(default_factory=KeyframeTrainOptions)
    """Keyframe-v0's options."""
    glimpse: GlimpseTrainOptions = field(default_factory=GlimpseTrainOptions)
    """Glimpse-v0's options (and AdaFrame's)."""


def env_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The environment arguments of a run (without the cache path)."""
    return get_backend(config.env).run_env_kwargs(config)


def extractor_name(config: TrainConfig, backend: EnvBackend) -> str:
    """``--extractor``, or the environment's default."""
    return config.extractor or next(iter(backend.extractors))


def setting_name(config: TrainConfig) -> str:
    """The name of a run's setting: ``NAME`` or ``ALGO-gGAMMA`` (a run's name without its seed suffix)."""
    return config.name or f"{config.algo}-g{config.gamma:g}"


def run_name(config: TrainConfig) -> str:
    """``NAME`` or ``ALGO-gGAMMA``, with ``-sSEED`` when ``config`` trains several seeds."""
    setting = setting_name(config)
    return f"{setting}-s{config.seed}" if config.seeds > 1 else setting


def check_config(config: TrainConfig) -> None:
    """Refuse bad arguments before anything is built.

    Raises:
        ConfigError: Which argument and what it should be.
    """
    if not config.cache:
        raise ConfigError("--cache is required (a feature cache file made by `gistgym cache build`)")
    options = config.flat()
    for name, value in options.items():  # the command line checks ranges when parsing; a library caller gets this
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
    backend = get_backend(config.env)
    backend.check_algorithm(config.algo)  # a family's own trainer (AdaFrame) checks its own arguments
    if config.algo == CEM:
        cem_config(config)  # raises for bad --cem-* values
        backend.policy_features(env_kwargs(config))  # raises where the family has no features or lacks cues
    elif config.algo not in backend.trainers:
        backend.policy_kwargs(extractor_name(config, backend), config.algo)  # raises for a misfit extractor
    for field_name in (
        "total_timesteps",
        "num_envs",
        "batch_size",
        "buffer_size",
        "n_steps",
        "eval_videos",
        "num_glimpses",
        "adaframe_steps",
        "seeds",
    ):
        if options[field_name] < 1:
            raise ConfigError(f"--{field_name.replace('_', '-')} must be >= 1, got {options[field_name]}")
    if config.reward not in REWARDS:
        raise ConfigError(f"--reward {config.reward!r}: expected one of {', '.join(REWARDS)}")
    if config.reward not in backend.rewards:
        raise ConfigError(f"--reward {config.reward} does not fit {config.env}: it takes {', '.join(backend.rewards)}")
    if not 0.0 < config.discount <= 1.0:
        raise ConfigError(f"--discount must be in (0, 1], got {config.discount}")
    gammas = config.gammas if config.gamma_sweep else (config.gamma,)
    if not gammas or not all(math.isfinite(g) for g in gammas):
        raise ConfigError(f"gammas must be finite numbers, got {list(gammas)}")
    if config.gamma_sweep and config.name:
        raise ConfigError("--name names one run; --gamma-sweep names its runs ALGO-gGAMMA")
    if config.name:
        check_name(config.name)


def make_model(config: TrainConfig, venv: Any) -> BaseAlgorithm:
    """The SB3 model of ``config`` on ``venv`` (policy network, hyperparameters, seed)."""
    backend = get_backend(config.env)
    policy_kwargs = backend.policy_kwargs(extractor_name(config, backend), config.algo)
    common: dict[str, Any] = {
        "learning_rate": config.learning_rate,
        "gamma": config.discount,
        "seed": config.seed,
        "device": "cpu",
        "verbose": 0,
    }
    if config.algo in ("ddqn", "dqn"):
        dqn_class: Any = ALGORITHMS[config.algo]
        return dqn_class(
            "MultiInputPolicy",
            venv,
            policy_kwargs=policy_kwargs,
            buffer_size=config.buffer_size,
            learning_starts=config.learning_starts,
            batch_size=config.batch_size,
            train_freq=config.train_freq,
            gradient_steps=config.gradient_steps,
            target_update_interval=max(1, config.target_update_interval // config.num_envs),
            exploration_fraction=config.exploration_fraction,
            exploration_final_eps=config.exploration_final_eps,
            **common,
        )
    return PPO(
        "MultiInputPolicy",
        venv,
        policy_kwargs=policy_kwargs,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=4,
        ent_coef=0.01,
        **common,
    )


class _TrainingCallback(BaseCallback):
    """Progress bar, training heavy fraction, and periodic greedy evaluations (eval/*)."""

    def __init__(self, config: TrainConfig, evaluator: Any, name: str, backend: EnvBackend) -> None:
        super().__init__()
        self.config = config
        self.fraction = backend.fraction
        self.score = backend.score
        self.evaluator = evaluator
        self.run_name = name
        self.history: list[dict[str, Any]] = []
        self._next_eval = config.eval_every if config.eval_every > 0 else math.inf
        self._heavy = 0
        self._actions = 0
        self._bar: Any = None

    def _on_training_start(self) -> None:
        total, desc = self.config.total_timesteps, f"train {self.run_name}"
        self._bar = tqdm(total=total, desc=desc, unit="step", disable=not self.config.progress)

    def _on_step(self) -> bool:
        actions = np.asarray(self.locals.get("actions", ()))
        if actions.dtype.kind in "iu":  # the expensive action's share (discrete action spaces)
            self._heavy += int((actions == 0).sum())
            self._actions += actions.size
        if self._bar is not None:
            self._bar.update(self.training_env.num_envs)
        if self.num_timesteps >= self._next_eval:
            self.evaluate()
            while self._next_eval <= self.num_timesteps:
                self._next_eval += self.config.eval_every
        return True

    def evaluate(self) -> dict[str, Any]:
        """Greedy evaluation now; logged to TensorBoard and kept for eval.json."""
        result = self.evaluator.evaluate(SB3Policy(self.model, self.run_name), seed=self.config.seed)
        row = {"timesteps": int(self.num_timesteps), **result.summary()}
        if self._actions:
            row[f"train_{self.fraction}"] = self._heavy / self._actions
            self.logger.record(f"rollout/{self.fraction}", row[f"train_{self.fraction}"])
            self._heavy = self._actions = 0
        for key, value in result.summary().items():
            if key != "frames":
                self.logger.record(f"eval/{key}", value)
        self.logger.dump(self.num_timesteps)
        self.history.append(row)
        if self._bar is not None:
            self._bar.set_postfix({self.score: f"{row[self.score]:.3f}", self.fraction: f"{row[self.fraction]:.2f}"})
        return row

    def _on_training_end(self) -> None:
        if self._bar is not None:
            self._bar.close()


def plot_training(
    history: Sequence[dict[str, Any]],
    path: Path,
    title: str,
    fraction: str = "heavy_fraction",
    score: str = "map50",
    fraction_max: float = 1.0,
) -> None:
    """Evaluation mAP and the expensive action's share over training steps (the paper's Fig. 8), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["timesteps"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    score_label = "mAP@0.5" if score == "map50" else score
    ax.plot(steps, [h[score] for h in history], "o-", color="tab:blue", label=f"eval {score_label}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(score_label, color="tab:blue")
    ax2 = ax.twinx()
    label = fraction.replace("_", " ")
    ax2.plot(steps, [h[fraction] for h in history], "s--", color="tab:red", label=label)
    ax2.set_ylabel(label, color="tab:red")
    ax2.set_ylim(0, fraction_max)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_one(config: TrainConfig, *, command: Sequence[str] = ()) -> Path:
    """Train one run (``config.gamma``, ``config.seed``) into ``config.out/NAME``; returns the run directory.

    ``NAME`` is :func:`run_name`: with ``config.seeds > 1`` it carries the seed suffix (this
    trains that one seed; :func:`train` trains them all).

    Raises:
        ConfigError: Bad arguments.
        OutputDirError: The run exists (without ``overwrite``), or is not a run.
        CacheError, CacheSectionError, EnvArgumentError: A bad cache or environment argument.
    """
    check_config(config)
    name = run_name(config)
    out = Path(config.out)
    target = prepare_run_target(out, name, config.overwrite)
    backend = get_backend(config.env)
    if config.algo in backend.trainers:
        return Path(backend.trainers[config.algo](config, target, command=command))
    if config.algo == CEM:
        return train_cem_run(config, target, setting=setting_name(config), plot=plot_training, command=command)
    kwargs = env_kwargs(config)
    identity = cache_identity(config.cache)
    venv = backend.make_vec(config.cache, config.num_envs, **kwargs)
    evaluator = backend.make_evaluator(
        config.cache, config.eval_split, backend.eval_kwargs(kwargs), max_videos=config.eval_videos
    )
    try:
        with staged_run_dir(target) as partial:  # renamed to OUT/NAME once complete
            venv.seed(config.seed)
            model = make_model(config, venv)
            model.set_logger(configure(str(partial / TENSORBOARD_DIR), ["tensorboard", "csv"]))
            tracker = _TrainingCallback(config, evaluator, name, backend)
            callbacks: list[BaseCallback] = [tracker]
            if config.checkpoint_every > 0:
                every = max(1, config.checkpoint_every // config.num_envs)
                callbacks.append(CheckpointCallback(every, str(partial / CHECKPOINT_DIR), name_prefix="model"))
            started = time.perf_counter()
            model.learn(config.total_timesteps, callback=CallbackList(callbacks), log_interval=4 * config.num_envs)
            seconds = time.perf_counter() - started
            if not tracker.history or tracker.history[-1]["timesteps"] != model.num_timesteps:
                tracker.evaluate()
            model.save(partial / MODEL_FILE)
            history = {"split": config.eval_split, "videos": list(evaluator.video_ids), "history": tracker.history}
            atomic_write_json(partial / EVAL_FILE, nan_to_null(history))  # mAP is null without ground truth
            plot_training(
                tracker.history,
                partial / "training.png",
                f"{name} on {config.eval_split}",
                backend.fraction,
                backend.score,
                fraction_max=float(backend.fraction_max(kwargs)),
            )
            policy = model.policy
            q_net = getattr(policy, "q_net", None)
            atomic_write_json(
                partial / CONFIG_FILE,
                run_config_json(
                    config,
                    name=name,
                    setting=setting_name(config),
                    algorithm=type(model).__name__,
                    env_kwargs=kwargs,
                    identity=identity,
                    command=command,
                    policy_network={
                        "extractor": extractor_name(config, backend),
                        "parameters": count_parameters(q_net if q_net is not None else policy),
                        "macs": count_macs(q_net, venv.observation_space) if q_net is not None else None,
                    },
                    train_seconds=round(seconds, 2),
                    timesteps=int(model.num_timesteps),
                ),
            )
    finally:
        venv.close()
        evaluator.close()
    return target


def run_configs(config: TrainConfig) -> list[TrainConfig]:
    """One configuration per run of ``config``: per gamma (of a sweep), per seed (gamma-major order).

    Each keeps ``seeds`` (so :func:`run_name` adds the seed suffix when there are several)
    and has ``gamma_sweep`` off.
    """
    gammas = config.gammas if config.gamma_sweep else (config.gamma,)
    return [
        replace(config, gamma=float(g), gamma_sweep=False, seed=config.seed + k)
        for g in gammas
        for k in range(config.seeds)
    ]


def sweep_jobs(config: TrainConfig) -> list[SweepJob]:
    """The runs of ``config`` (per gamma and seed, :func:`run_configs`) as sweep jobs into ``config.out``.

    Raises:
        ConfigError: Two runs would be named alike.
    """
    configs = run_configs(config)
    names = [run_name(c) for c in configs]
    if len(set(names)) < len(names):
        raise ConfigError(f"two runs would be named alike: {names}; give --gammas distinct values")
    return [SweepJob(c, Path(c.out) / run_name(c), setting_name(c)) for c in configs]


def train(
    config: TrainConfig,
    *,
    command: Sequence[str] = (),
    log: Callable[[str], None] = print,
    cluster: SweepOptions | None = None,
) -> list[Path]:
    """``gistgym train``: one run per gamma (``gamma_sweep``) and seed (``seeds``); returns the run directories.

    One run without ``cluster`` trains here. Several runs, or any ``cluster`` (``--ray``,
    ``--resume``), go through :func:`~gistgym.agents.sweep.run_sweep`, which checks every
    target first and writes ``OUT/sweep.json``.
    """
    check_config(config)
    jobs = sweep_jobs(config)
    if len(jobs) == 1 and cluster is None:
        return [train_one(jobs[0].config, command=command)]
    options = cluster if cluster is not None else SweepOptions(progress=config.progress)
    result = run_sweep(jobs, config.out, train_one, options=options, command=command, log=log)
    return result.runs


def main_command() -> list[str]:
    """The command line, for config.json."""
    return ["gistgym", *sys.argv[1:]]
