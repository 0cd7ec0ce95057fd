"""``gistgym train --algo cem``: a linear scheduler on the runtime cues, found by the cross-entropy method.

The policy scores the observation with a linear function of a few features the family
chooses (its :class:`FeatureSet`; Interleave-v0's are the runtime cues of ``cues=True``,
Keyframe-v0's the flow cues and the distance to the keyframe) and takes the expensive action
(0) when the score is >= 0::

    scores = [theta . phi(obs), 0]        (one row of theta per action but the last)
    action = argmax(scores)               (first maximum on ties: the expensive action)

``theta`` is found by the cross-entropy method, a derivative-free policy search: a Gaussian
over ``theta`` is sampled (``cem_population`` candidates, the current mean among them), every
candidate is scored by its mean per-step return in the training environment itself (the
family's native batched env, the run's reward and speed reward) on ``cem_clips`` clips of
the ``train`` split drawn once (the same clips for every candidate and generation: common
random numbers), all candidates x clips stepped as one batch, and the Gaussian is refit to
the best ``cem_elite`` share. The final policy is the last mean.

Why a second learner beside Double DQN: on ``streams`` the cue rule selected on train
captured about twice the hindsight headroom the Double DQN schedulers capture on the same
observation, so their shortfall was in learning; ``benchmarks/cue_search.py`` measured this
search before it became an agent (docs/schedulers.md).

The model behaves like a Stable-Baselines3 DQN where the rest of gistgym reads one:
``predict``, ``policy.q_net`` (a :class:`LinearQNet`, so :mod:`gistgym.agents.export` exports
it as a Q-network and ``gistgym detect`` runs it), ``observation_space``, ``action_space``.
It is saved as ``model.json`` in the run directory (:attr:`LinearPolicyModel.model_file`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from tqdm.auto import tqdm

from gistgym.agents.backends import get_backend
from gistgym.agents.policy import SB3Policy
from gistgym.agents.runs import (
    CONFIG_FILE,
    EVAL_FILE,
    TENSORBOARD_DIR,
    cache_identity,
    run_config_json,
    staged_run_dir,
)
from gistgym.errors import ConfigError, RunError
from gistgym.videos.dataset import atomic_write_json, nan_to_null

LINEAR_POLICY_FORMAT = "gistgym-linear-policy"
LINEAR_POLICY_VERSION = 1


@dataclass(frozen=True)
class FeatureSet:
    """The features a family's linear policy scores (registered on its :class:`~gistgym.agents.backends.EnvBackend`).

    Attributes:
        name: Recorded in the model file; the family's backend rebuilds the set from it.
        names: One name per feature column, in order.
        inputs: The observation entries :attr:`fn` reads.
        fn: ``{entry: (B, ...) float32 tensor} -> (B, len(names))`` float32 features;
            traceable (it runs inside the exported network).
        init: The search's initial mean of ``theta``'s row (a sensible fixed schedule).
    """

    name: str
    names: tuple[str, ...]
    inputs: tuple[str, ...]
    fn: Callable[[Mapping[str, Tensor]], Tensor]
    init: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.init) != len(self.names):
            raise ValueError(f"feature set {self.name}: {len(self.init)} initial values for {len(self.names)} features")


class LinearQNet(nn.Module):
    """``obs -> [theta . phi(obs), 0]``: a linear policy's scores, shaped like a DQN's Q-values (B, A)."""

    theta: Tensor

    def __init__(self, features: FeatureSet, theta: np.ndarray) -> None:
        super().__init__()
        theta = np.asarray(theta, dtype=np.float32)
        if theta.ndim != 2 or theta.shape[1] != len(features.names):
            raise ValueError(f"theta must be (actions - 1, {len(features.names)}), got {theta.shape}")
        self.features = features
        self.register_buffer("theta", torch.from_numpy(theta.copy()))

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """(B, A) scores; the last action's is 0."""
        phi = self.features.fn(obs)
        scores = phi @ self.theta.T
        return torch.cat([scores, torch.zeros_like(scores[:, :1])], dim=1)


class _LinearPolicyHolder(nn.Module):
    """What SB3 code reads as ``model.policy``: it holds ``q_net``."""

    def __init__(self, q_net: LinearQNet) -> None:
        super().__init__()
        self.q_net = q_net


def _as_tensors(obs: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Tensor]:
    return {k: torch.as_tensor(np.asarray(obs[k]), dtype=torch.float32) for k in keys}


class LinearPolicyModel:
    """A trained linear scheduler (see the module docstring), loadable like an SB3 model.

    Args:
        features: The family's feature set.
        theta: (A - 1, len(features.names)) weights.
        observation_space: The environment's observation space (shapes are checked on export).
        num_timesteps: Environment steps the search took.
    """

    model_file = "model.json"
    """File name of the model in a run directory (SB3 models use model.zip)."""

    def __init__(
        self,
        features: FeatureSet,
        theta: np.ndarray,
        observation_space: spaces.Dict,
        *,
        env_id: str,
        env_kwargs: Mapping[str, Any],
        num_timesteps: int = 0,
    ) -> None:
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        self.theta = theta
        self.features = features
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs)
        self.observation_space = observation_space
        self.action_space = spaces.Discrete(theta.shape[0] + 1)
        self.policy = _LinearPolicyHolder(LinearQNet(features, theta)).eval()
        self.num_timesteps = int(num_timesteps)

    @property
    def q_net(self) -> LinearQNet:
        """The scoring network."""
        return self.policy.q_net

    def predict(self, obs: Mapping[str, Any], deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Greedy actions (N,) of a batched observation (the policy is deterministic)."""
        with torch.no_grad():
            scores = self.q_net(_as_tensors(obs, self.features.inputs))
        return scores.argmax(dim=1).numpy().astype(np.int64), None

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of :attr:`model_file`."""
        return {
            "format": LINEAR_POLICY_FORMAT,
            "format_version": LINEAR_POLICY_VERSION,
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "features": self.features.name,
            "feature_names": list(self.features.names),
            "theta": self.theta.tolist(),
            "observation_shapes": {k: list(s.shape or ()) for k, s in self.observation_space.spaces.items()},
            "num_timesteps": self.num_timesteps,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` to ``path`` atomically."""
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> LinearPolicyModel:
        """Read a model file written by :meth:`save` (``device`` is accepted for SB3's signature).

        Raises:
            RunError: Unreadable file, another format, or weights that do not fit the feature set.
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(p, f"unreadable linear policy ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != LINEAR_POLICY_FORMAT:
            raise RunError(p, f"not a linear policy file (expected format {LINEAR_POLICY_FORMAT!r})", field="format")
        if data.get("format_version") != LINEAR_POLICY_VERSION:
            raise RunError(p, f"version {data.get('format_version')!r}, this gistgym reads {LINEAR_POLICY_VERSION}",
                           field="format_version")  # fmt: skip
        try:
            env_kwargs = dict(data["env_kwargs"])
            features = get_backend(str(data["env_id"])).policy_features(env_kwargs)
            if features.name != data["features"] or list(features.names) != list(data["feature_names"]):
                raise RunError(p, f"feature set {data['features']!r} {data['feature_names']} is not this gistgym's "
                                  f"{features.name!r} {list(features.names)}", field="features")  # fmt: skip
            theta = np.asarray(data["theta"], dtype=np.float64)
            if theta.ndim != 2 or theta.shape[1] != len(features.names) or not np.isfinite(theta).all():
                raise RunError(p, f"theta must be finite (actions - 1, {len(features.names)}), got {theta.shape}",
                               field="theta")  # fmt: skip
            obs_space = spaces.Dict(
                {k: spaces.Box(-np.inf, np.inf, shape=tuple(int(x) for x in s), dtype=np.float32)
                 for k, s in dict(data["observation_shapes"]).items()}
            )  # fmt: skip
            return cls(features, theta, obs_space, env_id=str(data["env_id"]), env_kwargs=env_kwargs,
                       num_timesteps=int(data.get("num_timesteps", 0)))  # fmt: skip
        except RunError:
            raise
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise RunError(p, f"cannot read the linear policy ({type(exc).__name__}: {exc})") from exc


# --- the search ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CEMConfig:
    """The cross-entropy method's settings (``gistgym train --cem-*``)."""

    population: int = 20
    clips: int = 48
    iterations: int = 10
    elite: float = 0.25
    init_std: float = 4.0
    min_std: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("clips", "iterations"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--cem-{key} must be >= 1, got {getattr(self, key)}")
        if self.population < 2:
            raise ConfigError(f"--cem-population must be >= 2 (the mean and one sample), got {self.population}")
        if not 0.0 < self.elite <= 1.0:
            raise ConfigError(f"--cem-elite must be in (0, 1], got {self.elite}")
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ConfigError(f"--cem-init-std must be > 0, got {self.init_std}")

    @property
    def num_elite(self) -> int:
        """Candidates the Gaussian is refit to (at least 2)."""
        return max(2, round(self.elite * self.population))


def candidate_returns(
    venv: Any, features: FeatureSet, thetas: np.ndarray, clips: Sequence[tuple[str, int]]
) -> tuple[np.ndarray, int]:
    """Mean per-step return of each candidate (P, A - 1, k) on ``clips``, one episode per slot, and the env steps.

    ``venv`` is a family's native SB3 vector env with ``P * len(clips)`` slots
    (:meth:`~gistgym.envs.vector_common.SlotSB3VecEnv.play_clips`); slot ``p * len(clips) + i``
    plays clip ``i`` with candidate ``p``.
    """
    P, n = len(thetas), len(clips)
    if venv.num_envs != P * n:
        raise ValueError(f"the vector env has {venv.num_envs} slots, the search needs {P} x {n}")
    rows = torch.from_numpy(np.repeat(np.asarray(thetas, dtype=np.float32), n, axis=0))  # (P n, A - 1, k)

    def act(obs: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            phi = features.fn(_as_tensors(obs, features.inputs))  # (P n, k)
            scores = torch.einsum("bk,bak->ba", phi, rows)
            scores = torch.cat([scores, torch.zeros_like(scores[:, :1])], dim=1)
        return scores.argmax(dim=1).numpy().astype(np.int64)

    total, steps = venv.play_clips([clip for _ in range(P) for clip in clips], act)
    return (total / np.maximum(steps, 1)).reshape(P, n).mean(axis=1), int(steps.sum())


@dataclass
class CEMHistory:
    """Per generation: best and elite-mean candidate return, mean std of the Gaussian, env steps so far."""

    best: list[float]
    elite: list[float]
    std: list[float]
    timesteps: list[int]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def cross_entropy_search(
    venv: Any,
    features: FeatureSet,
    num_actions: int,
    cfg: CEMConfig,
    *,
    progress: bool = False,
    desc: str = "cem",
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, CEMHistory]:
    """The search of the module docstring on ``venv`` (``population x clips`` slots).

    Returns:
        The final mean ``theta`` (A - 1, k) and the per-generation history. ``callback(step,
        theta)`` is called after every generation with the env steps so far and the new mean.
    """
    rng = np.random.default_rng(cfg.seed)
    shape = (num_actions - 1, len(features.names))
    clips = [venv.core.choose_clip(rng) for _ in range(cfg.clips)]
    mu = np.tile(np.asarray(features.init, dtype=np.float64), (shape[0], 1))
    std = np.full(shape, cfg.init_std)
    history = CEMHistory([], [], [], [])
    steps = 0
    started = time.perf_counter()
    bar = tqdm(range(cfg.iterations), desc=desc, unit="gen", disable=not progress)
    for _ in bar:
        thetas = mu + std * rng.standard_normal((cfg.population, *shape))
        thetas[0] = mu  # the current mean stays in the running
        returns, taken = candidate_returns(venv, features, thetas, clips)
        steps += taken
        order = np.argsort(-returns, kind="stable")[: cfg.num_elite]
        mu, std = thetas[order].mean(axis=0), thetas[order].std(axis=0) + cfg.min_std
        history.best.append(float(returns[order[0]]))
        history.elite.append(float(returns[order].mean()))
        history.std.append(float(std.mean()))
        history.timesteps.append(steps)
        bar.set_postfix({"best": f"{history.best[-1]:.4f}", "std": f"{history.std[-1]:.2f}"})
        if callback is not None:
            callback(steps, mu)
    history.seconds = time.perf_counter() - started
    return mu, history


def train_cem_run(
    config: Any,
    target: Path,
    *,
    setting: str,
    plot: Callable[..., None],
    command: Sequence[str] = (),
) -> Path:
    """Train a linear scheduler per ``config`` (a :class:`~gistgym.agents.train.TrainConfig`) into ``target``.

    The run directory is laid out like an SB3 run's (:mod:`gistgym.agents.runs`) with
    ``model.json`` in place of ``model.zip``; it is written into a hidden partial folder and
    renamed once complete. ``setting`` is the run's name without its seed suffix, ``plot``
    draws ``training.png`` (:func:`gistgym.agents.train.plot_training`).
    """
    from torch.utils.tensorboard import SummaryWriter  # optional heavy dependency

    backend = get_backend(config.env)
    kwargs = backend.run_env_kwargs(config)
    features = backend.policy_features(kwargs)
    cfg = cem_config(config)
    identity = cache_identity(config.cache)
    venv = backend.make_vec(config.cache, cfg.population * cfg.clips, **kwargs)
    evaluator = backend.make_evaluator(
        config.cache, config.eval_split, backend.eval_kwargs(kwargs), max_videos=config.eval_videos
    )
    num_actions = int(venv.action_space.n)
    obs_space = venv.observation_space

    def model_of(theta: np.ndarray, steps: int) -> LinearPolicyModel:
        return LinearPolicyModel(features, theta, obs_space, env_id=config.env, env_kwargs=kwargs,
                                 num_timesteps=steps)  # fmt: skip

    try:
        with staged_run_dir(target) as partial:
            writer = SummaryWriter(str(partial / TENSORBOARD_DIR))
            history: list[dict[str, Any]] = []
            next_eval = [config.eval_every if config.eval_every > 0 else math.inf]

            def evaluate(steps: int, theta: np.ndarray) -> None:
                result = evaluator.evaluate(SB3Policy(model_of(theta, steps), target.name), seed=config.seed)
                row = {"timesteps": steps, **result.summary()}
                for key, value in result.summary().items():
                    if key != "frames":
                        writer.add_scalar(f"eval/{key}", value, steps)
                history.append(row)

            def after_generation(steps: int, theta: np.ndarray) -> None:
                if steps >= next_eval[0]:
                    evaluate(steps, theta)
                    while next_eval[0] <= steps:
                        next_eval[0] += config.eval_every

            theta, hist = cross_entropy_search(venv, features, num_actions, cfg, progress=config.progress,
                                               desc=f"train {target.name}", callback=after_generation)  # fmt: skip
            steps = hist.timesteps[-1] if hist.timesteps else 0
            if not history or history[-1]["timesteps"] != steps:
                evaluate(steps, theta)
            for i, s in enumerate(hist.timesteps):
                writer.add_scalar("train/best_return", hist.best[i], s)
                writer.add_scalar("train/elite_return", hist.elite[i], s)
                writer.add_scalar("train/std", hist.std[i], s)
            writer.close()
            model = model_of(theta, steps)
            model.save(partial / LinearPolicyModel.model_file)
            atomic_write_json(
                partial / EVAL_FILE,
                nan_to_null({"split": config.eval_split, "videos": list(evaluator.video_ids), "history": history}),
            )
            title = f"{target.name} on {config.eval_split}"
            plot(history, partial / "training.png", title, backend.fraction, backend.score,
                 fraction_max=float(backend.fraction_max(kwargs)))  # fmt: skip
            atomic_write_json(
                partial / CONFIG_FILE,
                run_config_json(
                    config,
                    name=target.name,
                    setting=setting,
                    algorithm="CEM",
                    env_kwargs=kwargs,
                    identity=identity,
                    command=command,
                    policy_network={
                        "extractor": features.name,
                        "features": list(features.names),
                        "parameters": int(theta.size),
                        "macs": int(theta.size),
                    },
                    cem={**asdict(cfg), "history": hist.to_dict(), "theta": theta.tolist()},
                    train_seconds=round(hist.seconds, 2),
                    timesteps=steps,
                ),
            )
    finally:
        venv.close()
        evaluator.close()
    return target


def cem_config(config: Any) -> CEMConfig:
    """The :class:`CEMConfig` of a ``gistgym train --algo cem`` configuration."""
    return CEMConfig(
        population=config.cem_population,
        clips=config.cem_clips,
        iterations=config.cem_iterations,
        elite=config.cem_elite,
        init_std=config.cem_init_std,
        seed=config.seed,
    )
