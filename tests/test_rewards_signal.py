"""The ``reward=`` option of Interleave-v0 and Keyframe-v0: per-frame detection signals paid in Eq. 2's form.

Keyframe tests use ``keyframe_cache`` (its DFF model is the shipped one, so its detections
score differently frame by frame). The session's ``nontrivial_model`` detector detects
nothing, so every Interleave signal of ``tiny_cache`` would be constant; the Interleave
tests use ``shipped_cache``, the same videos cached with the shipped detector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

import gistgym.envs  # noqa: F401 (registers the ids)
from gistgym.agents.algorithms import load_run
from gistgym.agents.backends import KEYFRAME_ENV_ID, get_backend
from gistgym.agents.baselines import FixedTauPolicy
from gistgym.agents.evaluation import InterleaveEvaluator
from gistgym.agents.keyframe_eval import KeyframeEvaluator
from gistgym.agents.policy import SB3Policy
from gistgym.agents.runs import CONFIG_FILE, EVAL_FILE
from gistgym.agents.train import TrainConfig, check_config, env_kwargs
from gistgym.envs.interleave import InterleaveEnv
from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv
from gistgym.envs.interleave_vector import INFO_KEYS as INTERLEAVE_INFO_KEYS
from gistgym.envs.interleave_vector import InterleaveVectorEnv
from gistgym.envs.keyframe import INFO_KEYS, SIGNAL_INFO_KEYS, KeyframeEnv
from gistgym.envs.keyframe_vector import KeyframeSB3VecEnv, KeyframeVectorEnv
from gistgym.envs.rewards import REWARDS, signal_reward
from gistgym.errors import ConfigError, EnvArgumentError, EnvStateError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.keyframe import INVALID_SIGNAL, schedule_detections, signal_table
from gistgym.metrics import FRAME_SIGNALS, frame_signals
from gistgym.scripts.cli import main

INTERLEAVE = "gistgym/Interleave-v0"
KEYFRAME = "gistgym/Keyframe-v0"
TOL = {"rtol": 1e-5, "atol": 1e-5}
"""Batched vs single Interleave steps agree to float32 rounding (see InterleaveEnv's Notes)."""


def episode(cache: Path, video_id: str) -> Any:
    with FeatureCache(cache) as c:
        return c.load_episode(video_id, sections=("keyframe",))


# --- the pure function ------------------------------------------------------------------------
def test_signal_reward_by_hand() -> None:
    signals = np.array([[0.5, 0.75], [1.0, 0.25], [-3.0, -1.0], [2.0, 2.0]])
    actions = np.array([0, 0, 1, 1])
    speed = np.array([0.0, 0.25])
    # S^a - max_i S^i + speed[a]: -0.25 + 0, 0 + 0, 0 + 0.25, 0 + 0.25 (a tie is the best)
    assert signal_reward(signals, actions, speed).tolist() == [-0.25, 0.0, 0.25, 0.25]
    three = signal_reward(np.array([[0.1, 0.7, 0.4]]), np.array([2]), np.array([0.0, 0.5, 0.625]))
    assert three[0] == (0.4 - 0.7) + 0.625  # the same operations on Python floats
    assert three.dtype == np.float64


def test_signal_table_is_frame_signals_of_the_cached_detections(keyframe_cache: Path) -> None:
    video_id = FeatureCache(keyframe_cache).video_ids("val")[0]
    ep = episode(keyframe_cache, video_id)
    tables = {k: np.asarray(v) for k, v in ep.sections["keyframe"].items()}
    truth = [ep.ground_truth(t) for t in range(ep.num_frames)]
    D = 4
    for signal in FRAME_SIGNALS:
        tab = signal_table(tables, truth, signal, D)
        assert tab.shape == (ep.num_frames, D + 1) and tab.dtype == np.float64
        for d in range(D + 1):
            distances = np.minimum(np.arange(ep.num_frames), d)  # key every frame up to d, then at d
            dets = schedule_detections(tables, distances)
            expected = [frame_signals(truth[t], dets[t])[signal] for t in range(ep.num_frames)]
            assert tab[np.arange(ep.num_frames), distances].tolist() == expected, (signal, d)
        assert (tab[np.triu_indices(D + 1, k=1)] == INVALID_SIGNAL).all()  # d > t: no such keyframe
        assert np.isfinite(tab[D:]).all()
    assert len(set(signal_table(tables, truth, "matched", D).ravel().tolist())) > 2  # not a constant table
    with pytest.raises(ValueError, match="signal must be one of 'f1', 'errors', 'matched', got 'loss'"):
        signal_table(tables, truth, "loss", D)
    with pytest.raises(ValueError, match=r"max_distance must lie in \[0, 20\]"):
        signal_table(tables, truth, "f1", 21)
    with pytest.raises(ValueError, match="ground truth has 3 frames"):
        signal_table(tables, truth[:3], "f1", D)


# --- bad values -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda c, r: InterleaveEnv(c, reward=r),
        lambda c, r: InterleaveVectorEnv(c, num_envs=2, reward=r),
        lambda c, r: InterleaveSB3VecEnv(c, num_envs=2, reward=r),
        lambda c, r: gym.make(INTERLEAVE, cache_path=c, reward=r),
        lambda c, r: KeyframeEnv(c, reward=r),
        lambda c, r: KeyframeVectorEnv(c, num_envs=2, reward=r),
        lambda c, r: KeyframeSB3VecEnv(c, num_envs=2, reward=r),
        lambda c, r: InterleaveEvaluator(c, "val", {"reward": r}),
        lambda c, r: KeyframeEvaluator(c, "val", {"reward": r}),
    ],
)
@pytest.mark.parametrize("bad", ["F1", "loss", None, 1])
def test_bad_reward_is_an_env_argument_error(make: Any, bad: object, keyframe_cache: Path) -> None:
    expected = rf"reward must be one of 'eq2', 'f1', 'errors', 'matched', got reward={bad!r}$"
    with pytest.raises(EnvArgumentError, match=expected):
        make(str(keyframe_cache), bad)


def test_registered_default_is_eq2() -> None:
    assert ("eq2", *FRAME_SIGNALS) == REWARDS
    assert gym.spec(INTERLEAVE).kwargs["reward"] == gym.spec(KEYFRAME).kwargs["reward"] == "eq2"


# --- Interleave -------------------------------------------------------------------------------
@pytest.mark.parametrize("signal", FRAME_SIGNALS)
def test_interleave_reward_is_the_signal_formula_from_info_every_step(signal: str, shipped_cache: Path) -> None:
    kwargs = {"cache_path": str(shipped_cache), "clip_len": 8, "speed_reward": (0.125, 0.5)}
    env = gym.make(INTERLEAVE, **kwargs, reward=signal)
    base = gym.make(INTERLEAVE, **kwargs)  # the default: same clips, losses and observations
    assert env.unwrapped.reward == signal and env.spec is not None and env.spec.kwargs["reward"] == signal
    speed = np.array(kwargs["speed_reward"])
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=3)
    obs0, info0 = base.reset(seed=3)
    resets = steps = 0
    seen = set()
    for _ in range(3 * 8):
        assert set(info) == {*INTERLEAVE_INFO_KEYS, "signals"} and set(info0) == set(INTERLEAVE_INFO_KEYS)
        assert info["signals"].shape == (2,) and info["signals"].dtype == np.float64
        assert np.array_equal(info["losses"], info0["losses"]) and np.array_equal(obs["state"], obs0["state"])
        a = int(rng.integers(2))
        obs, r, term, trunc, info = env.step(a)
        obs0, r0, _, trunc0, info0 = base.step(a)
        s = info["signals"]
        assert r == s[a] - max(s) + speed[a]  # exactly
        seen.add(r)
        assert r0 == min(info0["losses"]) - info0["losses"][a] + speed[a]  # the default pays Eq. 2 as before
        assert not term and trunc == trunc0
        steps += 1
        if trunc:
            (obs, info), (obs0, info0) = env.reset(), base.reset()
            resets += 1
    assert resets >= 2 and steps == 24
    if signal == "matched":  # threshold-free, so it differs between extractors on some frame (f1 and
        assert len(seen) > 2  # errors can tie on every frame of these clips: the formula is checked anyway)


def test_interleave_signals_equal_frame_signals_of_the_evaluators_detections(shipped_cache: Path) -> None:
    """The env's signals are ``frame_signals`` of the detections an evaluator rollout of the same schedule draws.

    tau=15 (heavy on frames 0 and 16): long light runs, so the shipped detector misses on some frames.
    """
    with InterleaveEvaluator(shipped_cache, "val", {"reward": "f1"}, max_videos=1) as ev:
        (rollout,), (dets,) = ev.rollout(FixedTauPolicy(15))
        f1_eval = ev.evaluate(FixedTauPolicy(15))
        truth = ev.ground_truth[rollout.video_id]
    with InterleaveEvaluator(shipped_cache, "val", max_videos=1) as ev:
        eq2_eval = ev.evaluate(FixedTauPolicy(15))
    T = len(rollout.actions)
    assert 0 < (rollout.actions == 0).sum() < T
    for signal in FRAME_SIGNALS:
        env = InterleaveEnv(shipped_cache, split="val", clip_len=T, reward=signal)
        _, info = env.reset(options={"video_id": rollout.video_id, "start": 0})
        got, rewards = [info["signals"][0]], []
        for a in rollout.actions[1:]:
            _, r, _, _, info = env.step(int(a))
            got.append(info["signals"][info["action"]])
            rewards.append(r)
        expected = [frame_signals(truth[t], dets[t])[signal] for t in range(T)]
        assert got == expected and len(set(expected)) > 1, signal
        if signal == "f1":  # the evaluator pays the reward it was given
            assert rewards == rollout.rewards.tolist()
            assert f1_eval.mean_reward == float(np.mean(rewards))
    assert f1_eval.map50 == eq2_eval.map50 and f1_eval.mean_reward != eq2_eval.mean_reward


def test_interleave_vector_envs_agree_with_single_envs(shipped_cache: Path) -> None:
    n, clip = 3, 6
    kwargs = {"cache_path": str(shipped_cache), "clip_len": clip, "speed_reward": (0.25, 0.5), "reward": "matched"}
    native = gym.make_vec(INTERLEAVE, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.make_vec(INTERLEAVE, num_envs=n, vectorization_mode="sync", **kwargs)
    _, info_n = native.reset(seed=4)
    _, info_s = sync.reset(seed=4)
    speed = np.array(kwargs["speed_reward"])
    restarting = np.zeros(n, dtype=bool)
    rng = np.random.default_rng(1)
    for _ in range(2 * clip + 1):
        assert info_n["signals"].shape == (n, 2) and info_n["_signals"].all()
        np.testing.assert_allclose(info_n["signals"], info_s["signals"], **TOL)
        a = rng.integers(0, 2, n)
        _, r_n, _, tr_n, info_n = native.step(a)
        _, r_s, _, tr_s, info_s = sync.step(a)
        np.testing.assert_allclose(r_n, r_s, **TOL)
        assert np.array_equal(tr_n, tr_s) and np.array_equal(info_n["video_id"], info_s["video_id"])
        s = info_n["signals"]
        expected = s[np.arange(n), a] - s.max(axis=1) + speed[a]
        assert np.array_equal(r_n, np.where(restarting, 0.0, expected))
        restarting = tr_n
    ours = InterleaveSB3VecEnv(num_envs=n, **kwargs)
    theirs = DummyVecEnv([lambda: InterleaveEnv(**kwargs) for _ in range(n)])
    ours.seed(2)
    theirs.seed(2)
    ours.reset()
    theirs.reset()
    for _ in range(clip):
        a = rng.integers(0, 2, n)
        _, r_o, d_o, inf_o = ours.step(a)
        _, r_t, d_t, inf_t = theirs.step(a)
        np.testing.assert_allclose(r_o, r_t, **TOL)
        assert np.array_equal(d_o, d_t)
        for io, it in zip(inf_o, inf_t, strict=True):
            assert io.keys() == it.keys() and "signals" in io
            np.testing.assert_allclose(io["signals"], it["signals"], **TOL)
    native.close()
    sync.close()


def test_interleave_eq2_has_no_signals_and_no_ground_truth_copy(keyframe_cache: Path) -> None:
    default = InterleaveEnv(keyframe_cache, clip_len=6)
    explicit = InterleaveEnv(keyframe_cache, clip_len=6, reward="eq2")
    a, ia = default.reset(seed=1)
    b, ib = explicit.reset(seed=1)
    assert set(ia) == set(INTERLEAVE_INFO_KEYS) and default.core._ground_truth == [()]
    for action in (1, 0, 1, 1):
        a, ra, *_, ia = default.step(action)
        b, rb, *_, ib = explicit.step(action)
        assert ra == rb and np.array_equal(a["state"], b["state"]) and "signals" not in ia and ia.keys() == ib.keys()
    assert default.core.prepared(ia["video_id"]).ground_truth  # the memo keeps it for any reward


# --- Keyframe ---------------------------------------------------------------------------------
@pytest.mark.parametrize("signal", FRAME_SIGNALS)
def test_keyframe_reward_and_signals_equal_frame_signals_of_schedule_detections(
    signal: str, keyframe_cache: Path
) -> None:
    video_id = FeatureCache(keyframe_cache).video_ids("val")[0]
    ep = episode(keyframe_cache, video_id)
    tables = {k: np.asarray(v) for k, v in ep.sections["keyframe"].items()}
    truth = [ep.ground_truth(t) for t in range(ep.num_frames)]
    T, D, speed = ep.num_frames, 5, (0.125, 0.5)
    env = KeyframeEnv(keyframe_cache, split="val", clip_len=T, max_distance=D, speed_reward=speed, reward=signal)
    _, info = env.reset(options={"video_id": video_id, "start": 0})
    infos, actions, rewards = [info], [0], [0.0]
    rng = np.random.default_rng(5)
    for _ in range(T - 1):
        _, r, _, trunc, info = env.step(int(rng.integers(2)))
        infos.append(info)
        actions.append(info["action"])
        rewards.append(r)
    assert trunc
    for info, r in zip(infos[1:], rewards[1:], strict=True):
        assert tuple(info) == (*INFO_KEYS, *SIGNAL_INFO_KEYS) and set(info) == {*INFO_KEYS, *SIGNAL_INFO_KEYS}
        chosen = info["signal_key"] if info["action"] == 0 else info["signal_prop"]
        assert r == chosen - max(info["signal_key"], info["signal_prop"]) + speed[info["action"]]  # exactly
    executed = [0 if i["action"] == 0 else i["distance"] for i in infos]
    schedule = schedule_detections(tables, executed)
    keyed = schedule_detections(tables, np.zeros(T, dtype=np.int64))
    for t, info in enumerate(infos):
        assert info["signal_key"] == frame_signals(truth[t], keyed[t])[signal]
        ran = info["signal_key"] if info["action"] == 0 else info["signal_prop"]
        assert ran == frame_signals(truth[t], schedule[t])[signal]
    assert 0 < sum(a == 0 for a in actions[1:]) < T - 1
    if signal == "matched":  # (f1 and errors are perfect on this video for D <= 5)
        assert len({i["signal_prop"] for i in infos}) > 2


def test_keyframe_vector_envs_agree_with_single_envs(keyframe_cache: Path) -> None:
    n, clip = 4, 10
    kwargs = {"cache_path": str(keyframe_cache), "clip_len": clip, "max_distance": 4, "reward": "matched"}
    native = gym.make_vec(KEYFRAME, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.vector.SyncVectorEnv([lambda: gym.make(KEYFRAME, **kwargs) for _ in range(n)])
    _, ix = native.reset(seed=3)
    _, iy = sync.reset(seed=3)
    keys = (*INFO_KEYS, *SIGNAL_INFO_KEYS)
    rng = np.random.default_rng(0)
    for _ in range(2 * clip + 1):
        for k in keys:
            assert np.array_equal(ix[k], iy[k]), k
            assert ix[f"_{k}"].all()
        a = rng.integers(0, 2, n)
        _, rx, _, ux, ix = native.step(a)
        _, ry, _, uy, iy = sync.step(a)
        assert np.array_equal(rx, ry) and np.array_equal(ux, uy)
    ours = KeyframeSB3VecEnv(num_envs=n, **kwargs)
    dummy = DummyVecEnv([lambda: gym.make(KEYFRAME, **kwargs) for _ in range(n)])
    ours.seed(7)
    dummy.seed(7)
    ours.reset()
    dummy.reset()
    for _ in range(clip + 1):
        a = rng.integers(0, 2, n)
        _, rx, dx, infx = ours.step(a)
        _, ry, dy, infy = dummy.step(a)
        assert np.array_equal(rx, ry) and np.array_equal(dx, dy)
        for p, q in zip(infx, infy, strict=True):
            assert all(p[k] == q[k] for k in keys)
    native.close()
    sync.close()


def test_keyframe_eq2_is_unchanged(keyframe_cache: Path) -> None:
    kwargs = {"cache_path": str(keyframe_cache), "clip_len": 8, "max_distance": 4}
    a, b = KeyframeEnv(**kwargs), KeyframeEnv(**kwargs, reward="eq2")
    assert a.core._signal is None and a.reward == "eq2"
    _, ia = a.reset(seed=2)
    _, ib = b.reset(seed=2)
    assert tuple(ia) == INFO_KEYS and ia == ib
    with pytest.raises(EnvStateError, match="tabulates no signal"):
        a.core.signals(ia["video_id"])
    for action in (1, 1, 0, 1):
        *_, ra, _, _, ia = a.step(action)
        *_, rb, _, _, ib = b.step(action)
        assert ra == rb and tuple(ia) == INFO_KEYS and ia == ib


def test_keyframe_evaluator_pays_the_signal_reward(keyframe_cache: Path) -> None:
    from gistgym.agents.keyframe_baselines import parse_keyframe_baseline

    policy = parse_keyframe_baseline("key=3", (0.0, 0.3))
    with KeyframeEvaluator(keyframe_cache, "val", {"reward": "matched", "max_distance": 5}, max_videos=1) as ev:
        matched = ev.evaluate(policy)
        table = next(iter(ev._cores.values())).signals(matched.videos[0].video_id)
    with KeyframeEvaluator(keyframe_cache, "val", {"max_distance": 5}, max_videos=1) as ev:
        eq2 = ev.evaluate(policy)
    assert matched.map50 == eq2.map50 and matched.key_fraction == eq2.key_fraction
    v = matched.videos[0]
    assert 0 < (v.actions[1:] == 0).sum() < len(v.actions) - 1
    expected, last_key = [], 0
    for t in range(1, len(v.actions)):
        a = int(v.actions[t])
        key, prop = table[t, 0], table[t, t - last_key]  # prop: from the last keyframe, had it propagated
        expected.append((key if a == 0 else prop) - max(key, prop) + (0.0, 0.3)[a])
        last_key = t if a == 0 else last_key
    assert v.rewards.tolist() == expected and len(set(expected)) > 2
    assert matched.mean_reward != eq2.mean_reward


# --- training -----------------------------------------------------------------------------------
def test_train_reward_f1_is_recorded_and_evaluated_with(
    shipped_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--cache", str(shipped_cache), "--out", str(tmp_path), "--name", "f1", "--reward", "f1"]
    args += ["--clip-len", "6", "--num-envs", "2", "--total-timesteps", "16", "--learning-starts", "8"]
    args += ["--buffer-size", "50", "--batch-size", "4", "--eval-every", "0", "--eval-videos", "1"]
    args += ["--checkpoint-every", "0", "--no-progress"]
    assert main(args) == 0
    run = tmp_path / "f1"
    config = json.loads((run / CONFIG_FILE).read_text())
    assert config["env_kwargs"]["reward"] == "f1" and config["train"]["reward"] == "f1"
    backend = get_backend(INTERLEAVE)
    assert backend.eval_kwargs(config["env_kwargs"])["reward"] == "f1"
    (last,) = json.loads((run / EVAL_FILE).read_text())["history"]
    model = load_run(run, cache=shipped_cache).model
    with InterleaveEvaluator(shipped_cache, "val", backend.eval_kwargs(config["env_kwargs"]), max_videos=1) as ev:
        assert ev.evaluate(SB3Policy(model, "f1")).mean_reward == last["mean_reward"]
    with InterleaveEvaluator(shipped_cache, "val", max_videos=1) as ev:  # the default reward pays otherwise
        assert ev.evaluate(SB3Policy(model, "f1")).mean_reward != last["mean_reward"]
    # bad values are refused before anything is built
    assert main([*args[:7], "--reward", "loss"]) == 2
    assert "--reward 'loss': expected one of eq2, f1, errors, matched" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"--reward f1 does not fit gistgym/Glimpse-v0: it takes eq2"):
        check_config(TrainConfig.of(cache="x", env="gistgym/Glimpse-v0", algo="ppo", reward="f1"))
    assert env_kwargs(TrainConfig.of(cache="x", env=KEYFRAME_ENV_ID, reward="errors"))["reward"] == "errors"
    assert env_kwargs(TrainConfig.of(cache="x"))["reward"] == "eq2"
