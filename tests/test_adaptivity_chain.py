"""Double DQN must beat every fixed period on a chain where adaptivity pays by construction.

The environment (:class:`IdleActiveChain`) is a two-regime hidden Markov chain in the style of
Keyframe-v0: each step the agent runs the expensive action (0, a keyframe / the heavy
extractor) or the cheap one (1, propagate / light). The regime, idle or active, is sticky
(it stays with probability ``P_STAY`` per step) and does not depend on the actions. The
cheap action's per-frame accuracy decays with the frames since the last expensive step
``d`` in the active regime and not at all in the idle one::

    S^0 = 1,    S^1 = max(0, 1 - SLOPE[regime] * min(d, D)),    SLOPE = (0, 0.3)
    R(a) = S^a - max_i S^i + speed_reward[a],                   speed_reward = (0, GAMMA)

(:func:`gistgym.envs.rewards.signal_reward`, Eq. 2's difference form). With ``GAMMA = 0.5``
the optimal policy is known: cheap whenever idle; when active, cheap only right after an
expensive step (``d = 1``: gain 0.5 - 0.3 = 0.2 > 0; ``d >= 2``: 0.5 - 0.6 < 0, and an
expensive step now also makes the next cheap step worth 0.2). A fixed period cannot follow the
regime: idle frames want no expensive step, active ones want one every other frame. Exactly
(backward induction, ``exact_optimum``), the optimal policy earns 0.297 per step and the best
fixed period, 3, earns 0.180 (``exact_fixed_period_reward``; periods 1..20 searched).

The observation exposes what the optimal policy needs, noisily for the regime: ``cue`` (1 when
active, 0 when idle, plus Gaussian noise ``CUE_NOISE``), ``since_key`` (``min(d, D) / D``) and
``history`` (the last actions, 1 = expensive), the Keyframe-v0 layout.

``test_ddqn_beats_every_fixed_period`` trains the project's Double DQN, configured by
:func:`gistgym.agents.train.make_model` with the Keyframe-v0 MLP, for a few thousand steps and
asserts its greedy policy beats the best fixed period by at least half the gap between that
period and the optimal policy, in mean reward at the same speed reward and in accuracy at a
matched expensive fraction. ``test_broken_learners_fail_the_criterion`` shows the criterion
discriminates: the same run with learning rate 0, or with the Double DQN target's rewards
negated, fails it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from gistgym.agents import ddqn
from gistgym.agents.backends import KEYFRAME_ENV_ID, speed_rewards
from gistgym.agents.ddqn import DoubleDQN
from gistgym.agents.train import TrainConfig, make_model
from gistgym.envs.rewards import signal_reward

torch.set_num_threads(1)

IDLE, ACTIVE = 0, 1
GAMMA = 0.5
"""Speed reward of the cheap action (the paper's gamma)."""
SLOPE = (0.0, 0.3)
"""Accuracy the cheap action loses per frame since the expensive step, idle and active."""
P_STAY = 0.9
"""Probability the regime stays the same from one step to the next (mean dwell 10 steps)."""
CUE_NOISE = 0.1
"""Standard deviation of the Gaussian noise on the regime cue (0 idle, 1 active)."""
D = 20
"""Cap of the distance in ``since_key`` and in the staleness (the Keyframe-v0 default D_max)."""
CLIP_LEN = 64
"""Steps per episode (truncated, so the agent bootstraps)."""
HISTORY_LEN = 8
PERIODS = range(1, 21)
"""Fixed periods searched for the best one (an expensive step at t = 0, p, 2p, ...)."""

EVAL_EPISODES = 200
EVAL_SEED = 10_000
"""Evaluation episodes are seeded EVAL_SEED + i: every policy sees the same regime paths."""
NUM_ENVS = 8
TRAIN_STEPS = 8_000
SEED = 0


class ChainBatch:
    """``n`` episodes of the idle/active chain of the module docstring, stepped together (numpy).

    An episode (``CLIP_LEN`` steps) starts in a regime drawn from the chain's stationary
    distribution (1/2, 1/2) with the last expensive step far away (``d = D``). Its regime path
    and cue noise are drawn at reset from its seed alone, so they do not depend on the actions.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.speed = np.array(speed_rewards(2, GAMMA), dtype=np.float64)
        self.regime = np.zeros((n, CLIP_LEN + 1), dtype=np.int64)
        self.cue = np.zeros((n, CLIP_LEN + 1), dtype=np.float32)
        self.history = np.zeros((n, HISTORY_LEN), dtype=np.int8)
        self.d = np.full(n, D, dtype=np.int64)
        self.t = 0

    def reset(self, rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
        """Start one episode per generator; returns the batched first observation."""
        for i, rng in enumerate(rngs):
            stay = rng.random(CLIP_LEN) < P_STAY
            self.regime[i, 0] = rng.integers(2)
            for t in range(1, CLIP_LEN + 1):
                self.regime[i, t] = self.regime[i, t - 1] if stay[t - 1] else 1 - self.regime[i, t - 1]
            noise = CUE_NOISE * rng.standard_normal(CLIP_LEN + 1)
            self.cue[i] = np.clip(self.regime[i] + noise, -1.0, 2.0)
        self.history[:] = 0
        self.d[:] = D
        self.t = 0
        return self.obs()

    def obs(self) -> dict[str, np.ndarray]:
        return {
            "cue": self.cue[:, self.t : self.t + 1].copy(),
            "since_key": (np.minimum(self.d, D) / D).astype(np.float32)[:, None],
            "history": self.history.copy(),
        }

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, bool, dict[str, np.ndarray]]:
        """``(obs, rewards, truncated, info)``; ``info`` has the ``regime``, ``distance`` and ``accuracy`` (S^a)."""
        a = np.asarray(actions, dtype=np.int64).reshape(self.n)
        regime, d = self.regime[:, self.t], self.d
        light = np.maximum(0.0, 1.0 - np.array(SLOPE)[regime] * np.minimum(d, D))
        signals = np.stack([np.ones(self.n), light], axis=1)
        rewards = signal_reward(signals, a, self.speed)
        info = {"regime": regime, "distance": d.copy(), "accuracy": signals[np.arange(self.n), a]}
        self.d = np.where(a == 0, 1, d + 1)
        self.history[:, 1:] = self.history[:, :-1]
        self.history[:, 0] = a == 0
        self.t += 1
        return self.obs(), rewards, self.t >= CLIP_LEN, info


class IdleActiveChain(gym.Env[dict[str, np.ndarray], np.int64]):
    """One episode of :class:`ChainBatch` as a Gymnasium environment (for SB3's DummyVecEnv).

    Actions: ``Discrete(2)``, 0 = expensive, 1 = cheap. Observation: ``cue`` Box((1,)),
    ``since_key`` Box((1,)) in [0, 1], ``history`` MultiBinary(HISTORY_LEN) (entry j = 1 iff
    the step j back was expensive). Episodes are truncated after ``CLIP_LEN`` steps.
    """

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {
                "cue": spaces.Box(low=-1.0, high=2.0, shape=(1,), dtype=np.float32),
                "since_key": spaces.Box(low=0.0, high=1.0, shape=(1,), dtype=np.float32),
                "history": spaces.MultiBinary(HISTORY_LEN),
            }
        )
        self.action_space = spaces.Discrete(2)
        self.chain = ChainBatch(1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        obs = self.chain.reset([self.np_random])
        return {k: v[0] for k, v in obs.items()}, {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        obs, rewards, truncated, info = self.chain.step(np.array([action]))
        return (
            {k: v[0] for k, v in obs.items()},
            float(rewards[0]),
            False,
            truncated,
            {k: v[0] for k, v in info.items()},
        )


@dataclass(frozen=True)
class Score:
    """A policy's means per step over the evaluation episodes."""

    reward: float
    accuracy: float
    """Mean ``S^a``."""
    expensive: float
    """Fraction of steps with the expensive action."""


Policy = Callable[[dict[str, np.ndarray], int], np.ndarray]
"""``(batched observation, step t) -> (n,) actions``."""


def evaluate(policy: Policy, episodes: int = EVAL_EPISODES) -> Score:
    """Run ``policy`` on the evaluation episodes (seeded like ``IdleActiveChain.reset(seed=EVAL_SEED + i)``)."""
    chain = ChainBatch(episodes)
    obs = chain.reset([np.random.default_rng(EVAL_SEED + i) for i in range(episodes)])
    reward = accuracy = expensive = 0.0
    for t in range(CLIP_LEN):
        actions = np.asarray(policy(obs, t)).reshape(episodes)
        obs, r, _, info = chain.step(actions)
        reward += r.sum()
        accuracy += info["accuracy"].sum()
        expensive += (actions == 0).sum()
    n = episodes * CLIP_LEN
    return Score(float(reward / n), float(accuracy / n), float(expensive / n))


def fixed_period(p: int) -> Policy:
    """The expensive action at t = 0, p, 2p, ... of every episode."""
    return lambda obs, t: np.full(len(obs["cue"]), 0 if t % p == 0 else 1)


def never_expensive(obs: dict[str, np.ndarray], t: int) -> np.ndarray:
    return np.ones(len(obs["cue"]), dtype=np.int64)


def optimal(obs: dict[str, np.ndarray], t: int) -> np.ndarray:
    """The known optimal policy, from the observation: cheap iff its accuracy loss is below GAMMA."""
    regime = (obs["cue"][:, 0] > 0.5).astype(np.int64)
    d = np.rint(obs["since_key"][:, 0] * D)
    loss = np.minimum(1.0, np.array(SLOPE)[regime] * d)
    return np.where(loss < GAMMA, 1, 0)


def model_policy(model: Any) -> Policy:
    return lambda obs, t: model.predict(obs, deterministic=True)[0]


def exact_fixed_period_reward(p: int) -> float:
    """Expected reward per step of period ``p`` (the regime is stationary and independent of the schedule)."""
    active = 0.5  # stationary probability of the active regime of the symmetric chain
    total = 0.0
    for t in range(CLIP_LEN):
        if t % p:
            total += GAMMA - active * min(1.0, SLOPE[ACTIVE] * (t % p))
    return total / CLIP_LEN


def exact_optimum() -> tuple[float, np.ndarray]:
    """Backward induction on (step, regime, distance) with the regime known.

    Returns:
        The optimal expected reward per step and the optimal actions, (CLIP_LEN, 2, D + 1)
        indexed by step, regime and ``min(d, D)`` (distance 0 never occurs).
    """
    transition = np.array([[P_STAY, 1 - P_STAY], [1 - P_STAY, P_STAY]])
    d = np.arange(D + 1)
    cheap = np.array([GAMMA - np.minimum(1.0, SLOPE[z] * d) for z in (IDLE, ACTIVE)])  # (2, D + 1)
    after_cheap = np.minimum(d + 1, D)
    value = np.zeros((2, D + 1))
    actions = np.zeros((CLIP_LEN, 2, D + 1), dtype=np.int64)
    for t in reversed(range(CLIP_LEN)):
        future = transition @ value  # future[z, d'] = E[V_{t+1}(z', d') | z]
        q = np.stack([np.repeat(future[:, 1:2], D + 1, axis=1), cheap + future[:, after_cheap]])
        actions[t] = q.argmax(axis=0)
        value = q.max(axis=0)
    return float(value[:, D].mean() / CLIP_LEN), actions


@pytest.fixture(scope="module")
def references() -> dict[str, Any]:
    """Scores of the fixed periods, never-expensive and the optimal policy on the evaluation episodes."""
    fixed = {p: evaluate(fixed_period(p)) for p in PERIODS}
    best = max(fixed, key=lambda p: fixed[p].reward)
    return {"fixed": fixed, "best": best, "never": evaluate(never_expensive), "optimal": evaluate(optimal)}


def frontier_accuracy(references: dict[str, Any], fraction: float) -> float:
    """The best accuracy fixed schedules reach at expensive ``fraction``, sharing time between two of them.

    The upper concave envelope of the (expensive fraction, accuracy) points of the fixed periods
    and of never-expensive, at ``fraction``.
    """
    points = sorted({(s.expensive, s.accuracy) for s in (*references["fixed"].values(), references["never"])})
    hull: list[tuple[float, float]] = []
    for x, y in points:
        # pop the last point while it lies on or below the chord from the one before it to (x, y)
        while len(hull) >= 2 and (hull[-1][0] - hull[-2][0]) * (y - hull[-2][1]) >= (x - hull[-2][0]) * (
            hull[-1][1] - hull[-2][1]
        ):
            hull.pop()
        hull.append((x, y))
    xs, ys = zip(*hull, strict=True)
    return float(np.interp(fraction, xs, ys))


def passes(score: Score, references: dict[str, Any]) -> tuple[bool, str]:
    """The criterion: beat the best fixed period by half its gap to the optimum, in reward and at matched cost."""
    best, opt = references["fixed"][references["best"]], references["optimal"]
    reward_margin = 0.5 * (opt.reward - best.reward)
    frontier = frontier_accuracy(references, score.expensive)
    accuracy_margin = 0.5 * (opt.accuracy - frontier_accuracy(references, opt.expensive))
    ok = score.reward >= best.reward + reward_margin and score.accuracy >= frontier + accuracy_margin
    why = (
        f"{score}: reward {score.reward:.4f} vs best fixed period {references['best']} {best.reward:.4f} "
        f"+ margin {reward_margin:.4f} (optimal {opt.reward:.4f}); accuracy {score.accuracy:.4f} at expensive "
        f"fraction {score.expensive:.4f} vs fixed frontier {frontier:.4f} + margin {accuracy_margin:.4f}"
    )
    return ok, why


def train(learning_rate: float = 5e-4) -> DoubleDQN:
    """Double DQN as ``gistgym train --env gistgym/Keyframe-v0`` makes it, trained on the chain."""
    config = TrainConfig.of(
        env=KEYFRAME_ENV_ID,
        seed=SEED,
        gamma=GAMMA,
        learning_rate=learning_rate,
        num_envs=NUM_ENVS,
        total_timesteps=TRAIN_STEPS,
        discount=0.9,
        batch_size=64,
        buffer_size=TRAIN_STEPS,
        learning_starts=1_000,
        train_freq=1,
        gradient_steps=1,
        target_update_interval=1_000,
        exploration_fraction=0.3,
        exploration_final_eps=0.02,
        progress=False,
    )
    venv = DummyVecEnv([IdleActiveChain for _ in range(NUM_ENVS)])
    venv.seed(SEED)
    model = make_model(config, venv)
    assert type(model) is DoubleDQN
    model.learn(TRAIN_STEPS)
    venv.close()
    return model


@contextmanager
def spy_targets(monkeypatch: pytest.MonkeyPatch, negate_rewards: bool = False) -> Iterator[list[int]]:
    """Count DoubleDQN.train's calls of ``double_dqn_targets`` (optionally with the rewards negated)."""
    calls: list[int] = []
    real = ddqn.double_dqn_targets

    def spy(q_online_next: Any, q_target_next: Any, rewards: Any, dones: Any, gamma: Any) -> Any:
        calls.append(len(rewards))
        return real(q_online_next, q_target_next, -rewards if negate_rewards else rewards, dones, gamma)

    def vanilla(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("DoubleDQN used the vanilla DQN target")

    with monkeypatch.context() as m:
        m.setattr(ddqn, "double_dqn_targets", spy)
        m.setattr(ddqn, "vanilla_dqn_targets", vanilla)
        yield calls


def test_chain_construction_makes_adaptivity_pay(references: dict[str, Any]) -> None:
    fixed, best, opt = references["fixed"], references["best"], references["optimal"]
    # the simulated fixed periods match their exact expectation (up to the sampling error of
    # 200 episodes of correlated regimes), and the best one is the exact best
    for p in PERIODS:
        assert fixed[p].reward == pytest.approx(exact_fixed_period_reward(p), abs=0.03), p
        assert fixed[p].expensive == pytest.approx(len(range(0, CLIP_LEN, p)) / CLIP_LEN)
    assert best == max(PERIODS, key=exact_fixed_period_reward) == 3
    # the optimal policy (regime known) is the rule of `optimal`: cheap when idle, or when active
    # right after an expensive step; its exact value is far above the best fixed period's
    value, actions = exact_optimum()
    rule = np.ones((2, D + 1), dtype=np.int64)
    rule[ACTIVE, 2:] = 0
    np.testing.assert_array_equal(actions[:, :, 1:], np.broadcast_to(rule[:, 1:], (CLIP_LEN, 2, D)))
    assert value > exact_fixed_period_reward(best) + 0.1
    assert opt.reward == pytest.approx(value, abs=0.03)
    # the gap the learner has to close is large, in reward and at matched expensive fraction
    assert opt.reward > fixed[best].reward + 0.1
    assert opt.expensive < fixed[best].expensive
    assert opt.accuracy > frontier_accuracy(references, opt.expensive) + 0.1
    assert passes(opt, references)[0]
    for score in (*fixed.values(), references["never"], evaluate(fixed_period(CLIP_LEN))):
        assert not passes(score, references)[0], score


def test_gym_env_steps_like_the_evaluation_batch() -> None:
    """The environment DQN trains on and the batch the policies are scored on are the same chain."""
    rng = np.random.default_rng(1)
    actions = rng.integers(2, size=(3, CLIP_LEN))
    chain = ChainBatch(3)
    batch_obs = chain.reset([np.random.default_rng(EVAL_SEED + i) for i in range(3)])
    envs = [IdleActiveChain() for _ in range(3)]
    single = [env.reset(seed=EVAL_SEED + i)[0] for i, env in enumerate(envs)]
    for t in range(CLIP_LEN):
        for i, env in enumerate(envs):
            assert env.observation_space.contains(single[i])
            for k, v in single[i].items():
                np.testing.assert_array_equal(v, batch_obs[k][i])
        batch_obs, rewards, truncated, info = chain.step(actions[:, t])
        for i, env in enumerate(envs):
            single[i], r, terminated, trunc, step_info = env.step(actions[i, t])
            assert r == rewards[i] and not terminated and trunc == truncated == (t == CLIP_LEN - 1)
            assert step_info["regime"] == info["regime"][i] and step_info["distance"] == info["distance"][i]
            # Eq. 2's difference form: 0 for the expensive action, GAMMA minus the staleness for the cheap one
            staleness = min(1.0, SLOPE[step_info["regime"]] * min(step_info["distance"], D))
            assert r == pytest.approx(GAMMA - staleness if actions[i, t] == 1 else 0.0)


def test_ddqn_beats_every_fixed_period(references: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    with spy_targets(monkeypatch) as calls:
        model = train()
    # the Double DQN target made every update, on full batches
    assert model._n_updates > 0
    assert len(calls) == model._n_updates
    assert set(calls) == {model.batch_size}
    ok, why = passes(evaluate(model_policy(model)), references)
    assert ok, why


@pytest.mark.parametrize("broken", ["learning_rate=0", "negated_target_rewards"])
def test_broken_learners_fail_the_criterion(
    broken: str, references: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with spy_targets(monkeypatch, negate_rewards=broken == "negated_target_rewards") as calls:
        model = train(learning_rate=0.0 if broken == "learning_rate=0" else 5e-4)
    assert len(calls) == model._n_updates > 0
    ok, why = passes(evaluate(model_policy(model)), references)
    assert not ok, why
