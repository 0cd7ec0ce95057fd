"""gistgym/Glimpse-v0: API checkers, determinism, Eq. 3 from info, numpy classifier, vector and SB3 versions, errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import gistgym.envs  # noqa: F401  (registers the ids)
from gistgym.backbones.glimpse import location_to_index
from gistgym.envs.glimpse import INFO_KEYS, GlimpseEnv, NumpyGlimpseClassifier
from gistgym.envs.glimpse_vector import GlimpseSB3VecEnv, GlimpseVectorEnv
from gistgym.envs.rewards import glimpse_reward
from gistgym.errors import (
    CacheError,
    CacheSectionError,
    EnvArgumentError,
    EnvStateError,
    InvalidActionError,
    UnknownEnvArgumentError,
)
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.glimpse import GlimpseSection, GlimpseVideos, read_glimpse_section

ENV_ID = "gistgym/Glimpse-v0"
K = 4
"""Glimpses per episode in most tests (the tiny cache's videos have 20 frames)."""


@pytest.fixture
def kwargs(glimpse_cache: Path) -> dict[str, Any]:
    return {"cache_path": str(glimpse_cache), "num_glimpses": K}


@pytest.fixture(scope="module")
def section(glimpse_cache: Path) -> GlimpseSection:
    return read_glimpse_section(FeatureCache(glimpse_cache))


@pytest.fixture(scope="module")
def train_videos(glimpse_cache: Path, section: GlimpseSection) -> GlimpseVideos:
    return section.load_split(FeatureCache(glimpse_cache), "train")


def random_location(rng: np.random.Generator) -> np.ndarray:
    return rng.random(1).astype(np.float32)


def rollout(env: gym.Env, seed: int, steps: int) -> Iterator[tuple[Any, ...]]:
    """(obs, reward, terminated, truncated, info, action) for ``steps`` steps with resets, seeded."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    yield obs, 0.0, False, False, info, None
    for _ in range(steps):
        a = random_location(rng)
        obs, r, term, trunc, info = env.step(a)
        yield obs, r, term, trunc, info, a
        if term or trunc:
            obs, info = env.reset()
            yield obs, 0.0, False, False, info, None


def test_registered_defaults() -> None:
    """The contract suite (tests/test_env_contract.py) checks them against the signature; these are their values."""
    assert gym.spec(ENV_ID).kwargs == {"split": "train", "num_glimpses": 10}


def test_reward_is_eq3_margin_from_probs_and_obs_from_the_cache(
    kwargs: dict[str, Any], section: GlimpseSection, train_videos: GlimpseVideos
) -> None:
    env = gym.make(ENV_ID, **kwargs)
    costs = section.costs
    index = {v: i for i, v in enumerate(train_videos.video_ids)}
    episodes = positive = 0
    margins: list[float] = []
    for obs, r, term, trunc, info, a in rollout(env, 11, 8 * K):
        assert env.observation_space.contains(obs)
        assert tuple(info) == INFO_KEYS and trunc is False
        v = index[info["video_id"]]
        assert info["label"] == train_videos.labels[v]
        assert np.array_equal(obs["memory"], train_videos.memory[v])
        p = obs["probs"].astype(np.float64)
        assert info["correct"] == (int(np.argmax(p)) == info["label"])
        if a is None:  # reset: nothing glimpsed, uniform prediction, the memory's cost
            assert np.array_equal(obs["probs"], np.full(4, 0.25, np.float32))
            assert not obs["frame"].any() and obs["step"][0] == 0.0 and obs["location"][0] == 0.0
            assert (info["margin"], info["best_margin"], info["frame_index"], info["location"]) == (0.0, 0.0, -1, 0.0)
            assert (info["frames_used"], info["cost_flops"], info["step"]) == (0, costs.memory_flops, 0)
            assert r == 0.0 and term is False
            margins = []
            episodes += 1
            continue
        t = len(margins)
        # the margin from the observed probabilities, Eq. 3 from the margins of the episode
        others = np.delete(p, info["label"])
        assert info["margin"] == p[info["label"]] - others.max()
        best_before = 0.0 if t == 0 else max(margins)
        assert r == max(0.0, info["margin"] - best_before)  # exactly
        assert r == glimpse_reward(np.array([info["margin"]]), np.array([best_before]))[0]
        margins.append(info["margin"])
        assert info["best_margin"] == max(margins)
        positive += r > 0
        # the glimpsed frame
        T = int(train_videos.num_frames[v])
        assert obs["location"][0] == a[0] and info["location"] == float(a[0])
        assert info["frame_index"] == round(float(a[0]) * (T - 1)) == int(location_to_index(a[0], T))
        assert np.array_equal(obs["frame"], train_videos.frame_features[v, info["frame_index"]])
        assert obs["step"][0] == np.float32((t + 1) / K) and info["step"] == t + 1
        assert term == (t + 1 == K)
    assert episodes == 9 and 0 < positive < 8 * K


def test_margin_can_be_negative_and_the_reward_then_compares_with_earlier_margins() -> None:
    # max over previous margins, not floored at 0 after the first glimpse
    margins = np.array([-0.5, -0.25, -0.375, 0.125])
    best_before = np.array([0.0, -0.5, -0.25, -0.25])
    assert glimpse_reward(margins, best_before).tolist() == [0.0, 0.25, 0.0, 0.375]


def test_numpy_classifier_equals_torch(section: GlimpseSection, train_videos: GlimpseVideos) -> None:
    torch_clf = section.classifier
    np_clf = NumpyGlimpseClassifier.from_torch(torch_clf)
    rng = np.random.default_rng(0)
    # real frame features (in random order) and wider random inputs, 8 steps, batch 5
    seq = np.concatenate(
        [
            train_videos.frame_features[rng.integers(0, 6, 3)[:, None], rng.integers(0, 20, (3, 8))],
            rng.normal(0.0, 3.0, (2, 8, np_clf.feature_dim)).astype(np.float32),
        ]
    )
    state = np_clf.initial_state(5)
    with torch.no_grad():
        expected = torch_clf(torch.from_numpy(seq)).numpy()
    for k in range(8):
        logits, state = np_clf.step(seq[:, k], state)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected[:, k], rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1  # the comparison is not between near-zero numbers


def test_env_probs_equal_the_torch_classifier_on_the_glimpsed_frames(
    kwargs: dict[str, Any], section: GlimpseSection, train_videos: GlimpseVideos
) -> None:
    env = GlimpseEnv(**kwargs)
    _, info = env.reset(seed=3)
    v = list(train_videos.video_ids).index(info["video_id"])
    frames, probs = [], []
    for loc in (0.9, 0.1, 0.5, 0.9):
        obs, *_, info = env.step(np.array([loc], np.float32))
        frames.append(info["frame_index"])
        probs.append(obs["probs"])
    with torch.no_grad():
        logits = section.classifier(torch.from_numpy(train_videos.frame_features[v, frames][None]))[0]
    np.testing.assert_allclose(np.stack(probs), torch.softmax(logits, dim=1).numpy(), rtol=1e-5, atol=1e-6)


def test_frames_used_and_cost_flops_with_repeated_frames(kwargs: dict[str, Any], section: GlimpseSection) -> None:
    env = GlimpseEnv(**{**kwargs, "num_glimpses": 6})
    _, info = env.reset(options={"video_id": "train_0001"})
    frame, memory = section.costs.frame_flops, section.costs.memory_flops
    assert frame > 0 and memory > 0 and info["cost_flops"] == memory and info["video_id"] == "train_0001"
    # 20 frames: 0.25 -> 4.75 -> 5 and 0.26 -> 4.94 -> 5 (the same frame from another location)
    locations = (0.0, 1.0, 0.0, 0.25, 0.26, 0.5 + 0.5 / 19)
    seen = []
    total = info["cost_flops"]
    for loc in locations:
        _, _, term, _, info = env.step(np.array([loc], np.float32))
        seen.append((info["frame_index"], info["frames_used"], info["cost_flops"]))
        total += info["cost_flops"]
    assert seen == [(0, 1, frame), (19, 2, frame), (0, 2, 0), (5, 3, frame), (5, 3, 0), (10, 4, frame)]
    assert term and total == memory + 4 * frame
    # a new episode forgets the frames seen
    _, info = env.reset(options={"video_id": "train_0001"})
    _, _, _, _, info = env.step(np.array([0.0], np.float32))
    assert (info["frames_used"], info["cost_flops"]) == (1, frame)


def test_make_vec_returns_the_native_vector_env(kwargs: dict[str, Any]) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=3, vectorization_mode="vector_entry_point", **kwargs)
    assert isinstance(envs.unwrapped, GlimpseVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.action_space == gym.spaces.Box(0.0, 1.0, (3, 1), np.float32)
    assert envs.single_observation_space == GlimpseEnv(**kwargs).observation_space
    assert envs.spec is not None and envs.spec.kwargs["num_glimpses"] == K
    obs, info = envs.reset(seed=0)
    assert envs.observation_space.contains(obs) and info["_margin"].all() and info["video_id"].shape == (3,)
    rng = np.random.default_rng(0)
    terminations = 0
    for _ in range(3 * K):
        obs, reward, term, trunc, info = envs.step(rng.random((3, 1)).astype(np.float32))
        assert envs.observation_space.contains(obs)
        assert reward.dtype == np.float64 and not trunc.any()
        terminations += int(term.sum())
    assert terminations == 2 * 3  # K glimpses, then a reset step: episodes end at steps K and 2K + 1
    envs.close()


def test_vector_env_equals_single_envs_on_given_videos_and_actions(kwargs: dict[str, Any]) -> None:
    ids = ["train_0004", "train_0000", "train_0004"]
    venv = GlimpseVectorEnv(num_envs=3, **kwargs)
    singles = [GlimpseEnv(**kwargs) for _ in ids]
    obs, info = venv.reset(options={"video_id": ids})
    firsts = [env.reset(options={"video_id": v}) for env, v in zip(singles, ids, strict=True)]
    assert info["video_id"].tolist() == ids
    for i, (o, inf) in enumerate(firsts):
        assert all(np.array_equal(obs[k][i], o[k]) for k in o) and inf["cost_flops"] == info["cost_flops"][i]
    actions = np.random.default_rng(1).random((K, 3, 1)).astype(np.float32)
    actions[:, 2] = actions[:, 0]  # slots 0 and 2: same video, same actions
    for a in actions:
        obs, reward, term, _, info = venv.step(a)
        for i, env in enumerate(singles):
            o, r, te, _, inf = env.step(a[i])
            for k in o:
                np.testing.assert_allclose(obs[k][i], o[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(reward[i], r, rtol=1e-5, atol=1e-6)
            assert term[i] == te
            assert {k: info[k][i] for k in ("frame_index", "frames_used", "cost_flops", "label", "step")} == {
                k: inf[k] for k in ("frame_index", "frames_used", "cost_flops", "label", "step")
            }
        # one batch, same inputs in two rows: the same numbers
        assert all(np.array_equal(obs[k][0], obs[k][2]) for k in obs) and reward[0] == reward[2]
    assert term.all()


def test_next_step_autoreset(kwargs: dict[str, Any]) -> None:
    envs = GlimpseVectorEnv(**kwargs, num_envs=2)
    envs.reset(seed=7)
    a = np.full((2, 1), 0.5, np.float32)
    for _ in range(K - 1):
        _, _, term, _, _ = envs.step(a)
        assert not term.any()
    _, _, term, trunc, last = envs.step(a)
    assert term.all() and not trunc.any() and last["step"].tolist() == [K, K]
    obs, reward, term, trunc, info = envs.step(a)  # actions ignored: every slot restarts
    assert reward.tolist() == [0.0, 0.0] and not term.any() and not trunc.any()
    assert info["step"].tolist() == [0, 0] and info["frame_index"].tolist() == [-1, -1]
    assert (obs["probs"] == np.float32(0.25)).all() and not obs["frame"].any()
    _, _, _, _, nxt = envs.step(a)
    assert nxt["step"].tolist() == [1, 1] and np.array_equal(nxt["video_id"], info["video_id"])


def test_sb3_adapter_ends_episodes_as_terminated_and_takes_reset_options(kwargs: dict[str, Any]) -> None:
    """After K glimpses an episode is *terminated* (not a time limit); the next observation is a new video's reset."""
    n = 3
    ours = GlimpseSB3VecEnv(num_envs=n, **kwargs)
    ours.seed(7)
    ours.reset()
    rng = np.random.default_rng(1)
    dones_seen = 0
    for _ in range(3 * K):
        ox, _, dx, infx = ours.step(rng.random((n, 1)).astype(np.float32))
        for i in np.flatnonzero(dx):
            dones_seen += 1
            assert not infx[i]["TimeLimit.truncated"]
            assert infx[i]["step"] == K and ox["step"][i, 0] == 0.0  # the next episode's reset observation
    assert dones_seen == 3 * n
    ours.set_options({"video_id": "train_0002"})
    ours.reset()
    assert [info["video_id"] for info in ours.reset_infos] == ["train_0002"] * n


def test_errors(kwargs: dict[str, Any], glimpse_cache: Path, tiny_cache: Path) -> None:
    with pytest.raises(
        UnknownEnvArgumentError, match=r"unknown keyword argument.*clip_len.*valid arguments: cache_path"
    ):
        gym.make(ENV_ID, **kwargs, clip_len=8)
    with pytest.raises(UnknownEnvArgumentError):
        GlimpseVectorEnv(num_envs=2, **kwargs, gamma=0.5)
    with pytest.raises(UnknownEnvArgumentError):
        GlimpseSB3VecEnv(num_envs=2, **kwargs, gamma=0.5)
    for bad, match in (
        ({"num_glimpses": 0}, "num_glimpses must be an integer >= 1, got 0"),
        ({"num_glimpses": 2.5}, "num_glimpses must be an integer >= 1"),
        ({"split": 3}, "split must be a split name"),
        ({"cache_path": 3}, "cache_path must be the path"),
    ):
        with pytest.raises(EnvArgumentError, match=match):
            gym.make(ENV_ID, **{**kwargs, **bad})
    with pytest.raises(EnvArgumentError, match="render_mode='human' is not supported"):
        GlimpseEnv(**kwargs, render_mode="human")
    with pytest.raises(EnvArgumentError, match="num_envs must be an integer >= 1"):
        GlimpseVectorEnv(num_envs=0, **kwargs)
    with pytest.raises(CacheError, match=r"\[splits\]: no split 'nope' in the cache"):
        gym.make(ENV_ID, **{**kwargs, "split": "nope"})
    with pytest.raises(CacheSectionError, match=r"\['glimpse'\] not in the cache.*--sections interleave glimpse"):
        gym.make(ENV_ID, **{**kwargs, "cache_path": str(tiny_cache)})
    env = GlimpseEnv(**kwargs)
    with pytest.raises(EnvStateError, match="call reset"):
        env.step(np.array([0.5], np.float32))
    with pytest.raises(
        EnvArgumentError,
        match=rf"video_id='val_0000' is not a video of split 'train' in {re.escape(str(glimpse_cache))}",
    ):
        env.reset(options={"video_id": "val_0000"})
    with pytest.raises(EnvArgumentError, match=r"unknown reset option\(s\) \['start'\]; valid options: video_id"):
        env.reset(options={"video_id": "train_0000", "start": 0})
    env.reset(seed=0)
    for bad_action in (np.array([np.nan]), np.array([np.inf]), np.array([1.5]), np.array([-0.01]), [1.5]):
        with pytest.raises(InvalidActionError, match=r"outside the valid range \[0, 1\]"):
            env.step(bad_action)
    for bad_action in (0.5, np.array(0.5), np.array([0.5, 0.5]), np.array([[0.5]]), np.array([True]), "0.5", None):
        with pytest.raises(InvalidActionError, match=r"action must be a location in \[0, 1\] of shape \(1,\)"):
            env.step(bad_action)
    assert env.unwrapped.core.video(0)[1] == 0  # no bad action took a glimpse
    for _ in range(K):
        env.step(np.array([1.0], np.float32))
    with pytest.raises(EnvStateError, match="episode is over"):
        env.step(np.array([0.5], np.float32))
    venv = GlimpseVectorEnv(num_envs=2, **kwargs)
    with pytest.raises(EnvStateError, match="call reset"):
        venv.step(np.zeros((2, 1), np.float32))
    venv.reset(seed=0)
    for bad_actions in (np.array([[0.5], [np.nan]]), np.array([[0.5], [2.0]])):
        with pytest.raises(InvalidActionError, match=r"outside the valid range \[0, 1\]"):
            venv.step(bad_actions)
    for bad_actions in (np.array([0.5, 0.5]), np.zeros((3, 1)), np.array([0, 1])):
        with pytest.raises(InvalidActionError, match=r"action must be 2 locations in \[0, 1\]"):
            venv.step(bad_actions)
    with pytest.raises(EnvArgumentError, match="is not a video of split 'train'"):
        venv.reset(options={"video_id": ["train_0000", "nope"]})
    sb3 = GlimpseSB3VecEnv(num_envs=2, **kwargs)
    sb3.reset()
    with pytest.raises(InvalidActionError):
        sb3.step(np.array([[0.5], [1.5]]))
