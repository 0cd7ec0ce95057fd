"""gistgym/Keyframe-v0: API checkers, determinism, reward from info, forced keys, vector and SB3 versions, errors."""

from __future__ import annotations

import inspect
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import gistgym.envs  # noqa: F401  (registers the ids)
from gistgym.envs.keyframe import INFO_KEYS, KeyframeEnv
from gistgym.envs.keyframe_vector import KeyframeSB3VecEnv, KeyframeVectorEnv
from gistgym.errors import (
    CacheError,
    CacheSectionError,
    EnvArgumentError,
    EnvStateError,
    InvalidActionError,
    UnknownEnvArgumentError,
)
from gistgym.feature_cache import FeatureCache

ENV_ID = "gistgym/Keyframe-v0"
CLIP = 12
"""Clip length for the tiny cache (its videos have 24 frames)."""


@pytest.fixture
def kwargs(keyframe_cache: Path) -> dict[str, Any]:
    return {"cache_path": str(keyframe_cache), "clip_len": CLIP, "max_distance": 5}


def rollout(env: gym.Env, seed: int, steps: int) -> Iterator[tuple[Any, ...]]:
    """(obs, reward, terminated, truncated, info, action) for ``steps`` steps with resets, seeded."""
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    yield obs, 0.0, False, False, info, None
    for _ in range(steps):
        a = int(env.action_space.sample())
        obs, r, term, trunc, info = env.step(a)
        yield obs, r, term, trunc, info, a
        if term or trunc:
            obs, info = env.reset()
            yield obs, 0.0, False, False, info, None


def tables(cache_path: str, video_id: str) -> dict[str, np.ndarray]:
    return dict(FeatureCache(cache_path).load_episode(video_id, sections=("keyframe",)).sections["keyframe"])


def test_registered_with_the_constructor_defaults() -> None:
    spec = gym.spec(ENV_ID)
    assert spec.entry_point == "gistgym.envs.keyframe:KeyframeEnv"
    assert spec.vector_entry_point == "gistgym.envs.keyframe_vector:KeyframeVectorEnv"
    params = inspect.signature(KeyframeEnv.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    defaults.pop("render_mode")
    assert spec.kwargs == defaults


def test_gymnasium_and_sb3_env_checkers_pass(kwargs: dict[str, Any]) -> None:
    env = gym.make(ENV_ID, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env.unwrapped, warn=True)
    env.close()


def test_same_seed_rollouts_are_identical(kwargs: dict[str, Any]) -> None:
    a, b = gym.make(ENV_ID, **kwargs), gym.make(ENV_ID, **kwargs)
    n = 0
    for x, y in zip(rollout(a, 5, 3 * CLIP), rollout(b, 5, 3 * CLIP), strict=True):
        (ox, rx, tx, ux, ix, ax), (oy, ry, ty, uy, iy, ay) = x, y
        assert ox.keys() == oy.keys() and all(np.array_equal(ox[k], oy[k]) for k in ox)
        assert (rx, tx, ux, ax) == (ry, ty, uy, ay) and ix == iy
        n += 1
    assert n > 3 * CLIP
    c = gym.make(ENV_ID, **kwargs)
    firsts = {(c.reset(seed=s)[1]["video_id"], c.unwrapped.core.clip(0)[1]) for s in range(8)}
    assert len(firsts) > 1


def test_reward_and_observation_equal_the_cached_tables_every_step(kwargs: dict[str, Any]) -> None:
    env = gym.make(ENV_ID, **kwargs, speed_reward=(0.1, 0.7))
    speed = (0.1, 0.7)
    D = kwargs["max_distance"]
    costs = FeatureCache(kwargs["cache_path"]).section("keyframe").attrs["dff_costs"]
    flops = (costs["key_flops"], costs["propagate_flops"])
    episodes = steps = 0
    last_key = 0
    for obs, r, term, trunc, info, a in rollout(env, 11, 6 * CLIP):
        assert env.observation_space.contains(obs)
        assert tuple(info) == INFO_KEYS
        assert isinstance(info["loss_key"], float) and isinstance(info["loss_prop"], float)
        assert term is False and info["cost_flops"] == flops[info["action"]]
        tab = tables(kwargs["cache_path"], info["video_id"])
        t = info["frame_index"]
        if a is None:  # reset: frame 0 of the clip is a keyframe, no reward
            assert info["action"] == 0 and info["forced"] and info["distance"] == 0
            assert info["loss_key"] == info["loss_prop"] == float(tab["loss"][t, 0])
            start, video, steps, last_key = t, info["video_id"], 0, t
            episodes += 1
        else:
            steps += 1
            d = t - last_key
            assert info["frame_index"] == start + steps and info["video_id"] == video and info["distance"] == d
            assert info["forced"] == (d == D) and info["action"] == (0 if d == D else a)
            assert info["loss_key"] == float(tab["loss"][t, 0]) and info["loss_prop"] == float(tab["loss"][t, d])
            chosen = info["loss_key"] if info["action"] == 0 else info["loss_prop"]
            assert r == min(info["loss_key"], info["loss_prop"]) - chosen + speed[info["action"]]  # exactly
            assert trunc == (steps == CLIP - 1)
            if info["action"] == 0:
                last_key = t
        # the observation describes the next frame at its distance from the last keyframe
        nd = t + 1 - last_key
        assert obs["since_key"][0] == np.float32(nd / D)
        assert obs["history"][0] == (info["action"] == 0)
        if t + 1 < len(tab["loss"]):
            assert np.array_equal(obs["cues"], np.clip(tab["cues"][t + 1, nd], 0, [64, 64, 1, 10]))
        else:
            assert not obs["cues"].any()  # the video ends here
    assert episodes >= 5


def test_propagating_forever_keys_every_max_distance_frames(kwargs: dict[str, Any]) -> None:
    env = gym.make(ENV_ID, **{**kwargs, "clip_len": 24, "max_distance": 4})
    env.reset(seed=0, options={"video_id": FeatureCache(kwargs["cache_path"]).video_ids("train")[0], "start": 0})
    actions, history = [0], None
    for _ in range(23):
        obs, _, _, trunc, info = env.step(1)
        actions.append(info["action"])
        history = obs["history"]
    assert actions == [0 if t % 4 == 0 else 1 for t in range(24)] and trunc
    # entry j: frame 23 - j was a keyframe (frames 20 and 16)
    assert history is not None and history[:8].tolist() == [0, 0, 0, 1, 0, 0, 0, 1]
    # always keying: every frame a keyframe, zero accuracy reward, speed reward of the keyframe action
    env2 = gym.make(ENV_ID, **kwargs, speed_reward=(0.25, 1.0))
    env2.reset(seed=1)
    for _ in range(CLIP - 1):
        _, r, _, _, info = env2.step(0)
        assert info["distance"] == 1 and r == min(info["loss_key"], info["loss_prop"]) - info["loss_key"] + 0.25


def test_vector_env_equals_a_sync_vector_env_of_single_envs(kwargs: dict[str, Any]) -> None:
    n = 4
    native = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    assert isinstance(native.unwrapped, KeyframeVectorEnv)
    sync = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID, **kwargs) for _ in range(n)])
    ox, ix = native.reset(seed=3)
    oy, iy = sync.reset(seed=3)
    rng = np.random.default_rng(0)
    for step in range(3 * CLIP):
        for k in ox:
            assert np.array_equal(ox[k], oy[k]), (step, k)
        for k in INFO_KEYS:
            assert np.array_equal(ix[k], iy[k]), (step, k)
        a = rng.integers(0, 2, n)
        ox, rx, tx, ux, ix = native.step(a)
        oy, ry, ty, uy, iy = sync.step(a)
        assert np.array_equal(rx, ry) and np.array_equal(tx, ty) and np.array_equal(ux, uy)
    native.close()
    sync.close()


def test_sb3_vec_env_equals_dummy_vec_env_of_single_envs(kwargs: dict[str, Any]) -> None:
    n = 3
    ours = KeyframeSB3VecEnv(num_envs=n, **kwargs)
    dummy = DummyVecEnv([lambda: gym.make(ENV_ID, **kwargs) for _ in range(n)])
    ours.seed(7)
    dummy.seed(7)
    ox, oy = ours.reset(), dummy.reset()
    rng = np.random.default_rng(1)
    dones_seen = 0
    for _ in range(3 * CLIP):
        for k in ox:
            assert np.array_equal(ox[k], oy[k]), k
        a = rng.integers(0, 2, n)
        ox, rx, dx, infx = ours.step(a)
        oy, ry, dy, infy = dummy.step(a)
        assert np.array_equal(rx, ry) and np.array_equal(dx, dy)
        for i in np.flatnonzero(dx):
            dones_seen += 1
            assert infx[i]["TimeLimit.truncated"] and infy[i]["TimeLimit.truncated"]
            for k in ox:
                assert np.array_equal(infx[i]["terminal_observation"][k], infy[i]["terminal_observation"][k])
        for a_, b_ in zip(infx, infy, strict=True):
            assert all(a_[k] == b_[k] for k in INFO_KEYS)
    assert dones_seen >= n


def test_sb3_trains_on_the_vec_env(kwargs: dict[str, Any]) -> None:
    from stable_baselines3 import PPO

    venv = KeyframeSB3VecEnv(num_envs=4, **kwargs)
    model = PPO("MultiInputPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    actions, _ = model.predict(venv.reset(), deterministic=True)
    assert actions.shape == (4,)


def test_errors(kwargs: dict[str, Any], keyframe_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownEnvArgumentError, match=r"unknown keyword argument.*gamma.*valid arguments: cache_path"):
        gym.make(ENV_ID, **kwargs, gamma=0.5)
    with pytest.raises(UnknownEnvArgumentError):
        KeyframeVectorEnv(num_envs=2, **kwargs, extractors=("heavy",))
    with pytest.raises(EnvArgumentError, match=r"max_distance=21 is larger .*max_distance = 20.*<= 20"):
        gym.make(ENV_ID, **{**kwargs, "max_distance": 21})
    for bad, match in (
        ({"max_distance": 0}, "max_distance must be an integer >= 1"),
        ({"clip_len": 1}, "clip_len must be an integer >= 2"),
        ({"clip_len": 25}, "clip_len=25 is longer than every video"),
        ({"speed_reward": (0.0,)}, "speed_reward must be two numbers"),
        ({"speed_reward": (0.0, float("nan"))}, "finite"),
        ({"split": 3}, "split must be a split name"),
    ):
        with pytest.raises(EnvArgumentError, match=match):
            gym.make(ENV_ID, **{**kwargs, **bad})
    with pytest.raises(CacheError, match=r"\[splits\]: no split 'nope' in the cache"):
        gym.make(ENV_ID, **{**kwargs, "split": "nope"})
    path = tmp_path / "no_keyframe.h5"
    shutil.copy(keyframe_cache, path)
    with h5py.File(path, "r+") as f:
        f.attrs["sections"] = json.dumps(["interleave"])
    with pytest.raises(CacheSectionError, match=r"\['keyframe'\] not in the cache.*--sections interleave keyframe"):
        gym.make(ENV_ID, **{**kwargs, "cache_path": str(path)})
    env = KeyframeEnv(**kwargs)
    with pytest.raises(EnvStateError, match="call reset"):
        env.step(0)
    env.reset(seed=0)
    for bad_action in (2, -1, True, 0.5):
        with pytest.raises(InvalidActionError):
            env.step(bad_action)
    for _ in range(CLIP - 1):
        env.step(1)
    with pytest.raises(EnvStateError):
        env.step(1)
    with pytest.raises(EnvArgumentError, match="unknown reset option"):
        env.reset(options={"video": "x"})
    with pytest.raises(EnvArgumentError, match="start=30 must be an integer in"):
        env.reset(options={"video_id": FeatureCache(keyframe_cache).video_ids("train")[0], "start": 30})
    venv = KeyframeVectorEnv(num_envs=2, **kwargs)
    venv.reset(seed=0)
    with pytest.raises(InvalidActionError):
        venv.step(np.array([0, 2]))
