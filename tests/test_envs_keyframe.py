"""gistgym/Keyframe-v0: API checkers, determinism, reward from info, forced keys, vector and SB3 versions, errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest

import gistgym.envs  # noqa: F401  (registers the ids)
from gistgym.envs.keyframe import INFO_KEYS, KeyframeEnv
from gistgym.envs.keyframe_vector import KeyframeVectorEnv
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
