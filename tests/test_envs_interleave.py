"""gistgym/Interleave-v0 (single environment): API checks, determinism, Eq. 1/2 against hand computation."""

from __future__ import annotations

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
import torch
from gymnasium.utils.env_checker import check_env

import gistgym.envs  # noqa: F401 (registers the ids)
from gistgym.backbones.convlstm import LSTMState
from gistgym.backbones.ssdlite import build_targets, frame_detection_loss
from gistgym.envs.interleave import InterleaveEnv
from gistgym.errors import (
    CacheError,
    CacheSectionError,
    EnvArgumentError,
    EnvStateError,
    InvalidActionError,
    UnknownEnvArgumentError,
)
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.sections import interleave_modules

CLIP = 8
"""Clip length for the tiny cache (its videos have 24 frames)."""

GISTGYM_IDS = sorted(i for i in gym.registry if i.startswith("gistgym/Interleave"))
"""The Interleave ids (the other environments have their own test modules and caches)."""


@pytest.fixture
def kwargs(tiny_cache: Path) -> dict[str, Any]:
    return {"cache_path": str(tiny_cache), "clip_len": CLIP}


def make(env_id: str, **kw: Any) -> gym.Env:
    return gym.make(env_id, **kw)


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


@pytest.mark.parametrize("env_id", GISTGYM_IDS)
def test_observations_in_space_and_reward_is_eq2_from_info(env_id: str, kwargs: dict[str, Any]) -> None:
    env = make(env_id, **kwargs)
    speed = np.array(env.unwrapped.speed_reward)
    costs = FeatureCache(kwargs["cache_path"]).info.costs["per_extractor"]
    flops = [costs[name]["step_flops"] for name in env.unwrapped.extractors]
    keys = None
    steps_in_episode = 0
    episodes = 0
    for obs, r, term, trunc, info, a in rollout(env, 11, 4 * CLIP):
        assert env.observation_space.contains(obs)
        keys = keys or set(info)
        assert set(info) == keys == {"losses", "cost_flops", "frame_index", "video_id", "action", "state_written"}
        assert info["losses"].shape == (2,) and info["losses"].dtype == np.float64
        assert info["cost_flops"] == flops[info["action"]]
        assert term is False
        if a is None:  # reset: frame 0 runs the heavy extractor, no reward
            assert info["action"] == 0 and info["state_written"] and not obs["history"].any()
            start, video = info["frame_index"], info["video_id"]
            steps_in_episode = 0
            episodes += 1
            continue
        steps_in_episode += 1
        assert r == min(info["losses"]) - info["losses"][a] + speed[a]  # exactly
        assert info["action"] == a and obs["history"][0] == (a != 0)
        assert info["frame_index"] == start + steps_in_episode and info["video_id"] == video
        assert trunc == (steps_in_episode == CLIP - 1)
    assert episodes >= 4


def test_history_is_the_light_action_record(kwargs: dict[str, Any]) -> None:
    env = InterleaveEnv(**kwargs, history_len=4)
    obs, _ = env.reset(seed=0)
    assert obs["history"].tolist() == [0, 0, 0, 0]
    seen = []
    for a in (1, 1, 0, 1, 0, 0):
        obs, *_ = env.step(a)
        seen.insert(0, int(a != 0))
        assert obs["history"].tolist() == [*seen, 0, 0, 0, 0][:4]


def manual_algorithm_1(cache_path: str, video_id: str, start: int, actions: list[int], skip: bool) -> list[dict]:
    """Algorithm 1 written out frame by frame, one extractor at a time, from the cache alone."""
    cache = FeatureCache(cache_path)
    section = cache.section("interleave")
    mods = interleave_modules(section.attrs, section.tensors)
    ep = cache.load_episode(video_id)
    names = ("heavy", "light")
    hid, g = mods.config.hidden_channels, mods.config.anchors.grid
    carried = LSTMState(torch.zeros(1, hid, g, g), torch.zeros(1, hid, g, g))
    out = []
    with torch.no_grad():
        for t, a in enumerate([0, *actions]):
            frame = start + t
            gt = ep.ground_truth(frame)
            targets = build_targets(
                [torch.tensor(gt.boxes).reshape(-1, 4)], [torch.tensor(gt.labels)], mods.head.anchors
            )
            losses, states = [], []
            for name in names:
                x = torch.tensor(ep.features[name][frame : frame + 1], dtype=torch.float32)
                m_out, s = mods.memory(x, carried)
                loc, conf = mods.head(m_out)
                losses.append(float(frame_detection_loss(loc, conf, targets)[0]))
                states.append(s)
            chosen = states[a]
            obs = torch.cat([chosen.c, chosen.h, chosen.c - carried.c, chosen.h - carried.h], dim=1)[0].numpy()
            if a == 0 or not skip:
                carried = chosen
            out.append({"losses": np.array(losses), "state": obs, "carried": carried})
    return out


@pytest.mark.parametrize("skip", [True, False])
def test_losses_observation_and_reward_match_a_hand_computation(kwargs: dict[str, Any], skip: bool) -> None:
    actions = [1, 1, 0, 1, 1, 1, 0]
    env = InterleaveEnv(**kwargs, split="val", skip_light_updates=skip, speed_reward=(0.0, 0.25))
    obs, info = env.reset(options={"video_id": "val_0001", "start": 5})
    assert (info["video_id"], info["frame_index"]) == ("val_0001", 5)
    expected = manual_algorithm_1(kwargs["cache_path"], "val_0001", 5, actions, skip)
    for t, want in enumerate(expected):
        if t > 0:
            a = actions[t - 1]
            obs, r, _, trunc, info = env.step(a)
            hand = want["losses"].min() - want["losses"][a] + (0.25 if a else 0.0)
            np.testing.assert_allclose(r, hand, rtol=1e-5, atol=1e-5)
        # batch of 2 rows in the env vs 1 row here: torch's matmul kernels differ in the last bits
        np.testing.assert_allclose(info["losses"], want["losses"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(obs["state"], want["state"], rtol=1e-5, atol=1e-6)
        carried = env.core.carried_state(0)
        np.testing.assert_allclose(carried.c.numpy(), want["carried"].c[0].numpy(), rtol=1e-5, atol=1e-6)
    assert trunc  # 7 steps = clip_len - 1


def test_skip_rule_keeps_the_carried_state_on_light_steps(kwargs: dict[str, Any]) -> None:
    env = InterleaveEnv(**kwargs, skip_light_updates=True)
    env.reset(seed=1)
    before = env.core.carried_state(0)
    obs, _, _, _, info = env.step(1)
    after = env.core.carried_state(0)
    assert not info["state_written"]
    assert torch.equal(before.c, after.c) and torch.equal(before.h, after.h)
    # the observation still shows the light frame: its state differs from the carried one
    hid = before.c.shape[0]
    assert np.abs(obs["state"][2 * hid :]).max() > 0
    _, _, _, _, info = env.step(0)
    assert info["state_written"] and not torch.equal(env.core.carried_state(0).c, after.c)

    free = InterleaveEnv(**kwargs, skip_light_updates=False)
    free.reset(seed=1)
    before = free.core.carried_state(0)
    obs, _, _, _, info = free.step(1)
    assert info["state_written"] and not torch.equal(free.core.carried_state(0).c, before.c)
    np.testing.assert_array_equal(free.core.carried_state(0).c.numpy(), obs["state"][:hid])


def test_skip_rule_defaults_to_the_cached_detectors(kwargs: dict[str, Any], tiny_cache: Path) -> None:
    trained = FeatureCache(tiny_cache).section("interleave").attrs["detector_config"]["skip_light_updates"]
    assert InterleaveEnv(**kwargs).skip_light_updates is trained
    assert InterleaveEnv(**kwargs, skip_light_updates=not trained).skip_light_updates is (not trained)


def test_three_extractors_with_a_speed_reward_vector(kwargs: dict[str, Any]) -> None:
    speed = (0.0, 0.5, 0.75)
    env = make("gistgym/Interleave-v0", **kwargs, extractors=("heavy", "light", "light+shift"), speed_reward=speed)
    assert env.action_space == gym.spaces.Discrete(3)
    assert env.spec is not None and env.spec.kwargs["speed_reward"] == speed
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=2)
    assert info["losses"].shape == (3,)
    for a in (2, 1, 0, 2, 2, 0, 1):
        obs, r, _, _, info = env.step(a)
        assert r == min(info["losses"]) - info["losses"][a] + speed[a]
        assert obs["history"][0] == (a != 0)  # both light extractors count as "f1 ran"
        assert info["action"] == a
    costs = FeatureCache(kwargs["cache_path"]).info.costs["per_extractor"]
    assert info["cost_flops"] == costs["light"]["step_flops"]


def test_reset_options_fix_the_clip(kwargs: dict[str, Any]) -> None:
    env = InterleaveEnv(**kwargs, split="val")
    _, info = env.reset(options={"video_id": "val_0000", "start": 16})
    assert (info["video_id"], info["frame_index"]) == ("val_0000", 16)
    _, info = env.reset(seed=3, options={"video_id": "val_0001"})
    assert info["video_id"] == "val_0001" and 0 <= info["frame_index"] <= 24 - CLIP
    for bad, match in (
        ({"video_id": "train_0000"}, "not a video of split 'val'"),
        ({"video_id": "val_0000", "start": 17}, r"start=17 must be an integer in \[0, 16\]"),
        ({"start": 0}, "needs video_id"),
        ({"clip": 1}, "unknown reset option"),
    ):
        with pytest.raises(EnvArgumentError, match=match):
            env.reset(options=bad)


# --- bad input --------------------------------------------------------------------------------
def test_unknown_kwarg_is_a_typed_error_listing_the_valid_ones(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UnknownEnvArgumentError, match=r"unknown keyword argument.*gamma.*valid arguments: cache_path"):
        make("gistgym/Interleave-v0", **kwargs, gamma=0.5)
    with pytest.raises(TypeError):  # also what Python itself would raise
        InterleaveEnv(**kwargs, clip_length=4)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"extractors": ("heavy", "tiny")}, r"extractors \['tiny'\] are not in the cache .*it has \['heavy', 'light'"),
        ({"extractors": ("light", "heavy")}, "extractors\\[0\\] must be the cache's heavy extractor 'heavy'"),
        ({"extractors": ("heavy",)}, "at least two"),
        ({"extractors": "heavy"}, "sequence of extractor names"),
        ({"speed_reward": (0.0, 0.1, 0.1)}, r"3 entries but there are 2 extractors.*speed_reward=\(0.0, 1.0\)"),
        ({"extractors": ("heavy", "light", "light+shift")}, r"2 entries but there are 3.*\(0.0, 1.0, 1.0\)"),
        ({"speed_reward": (0.0, float("nan"))}, "finite numbers"),
        ({"clip_len": 25}, r"clip_len=25 is longer than every video of split 'train'.*24 frames.*clip_len <= 24"),
        ({"clip_len": 1}, "clip_len must be an integer >= 2"),
        ({"history_len": 0}, "history_len must be an integer >= 1"),
        ({"skip_light_updates": "yes"}, "skip_light_updates must be True, False or None"),
        ({"render_mode": "human"}, "render_mode='human' is not supported"),
    ],
)
def test_bad_arguments_raise_typed_errors(kwargs: dict[str, Any], override: dict[str, Any], match: str) -> None:
    with pytest.raises(EnvArgumentError, match=match):
        InterleaveEnv(**{**kwargs, **override})


def test_bad_cache_raises_typed_errors(kwargs: dict[str, Any], tiny_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="does not exist"):
        InterleaveEnv(tmp_path / "missing.h5")
    with pytest.raises(CacheError, match="no split 'holdout'"):
        InterleaveEnv(**kwargs, split="holdout")
    path = tmp_path / "no_interleave.h5"
    shutil.copy(tiny_cache, path)
    with h5py.File(path, "a") as f:
        f.attrs["sections"] = json.dumps([])
    with pytest.raises(CacheSectionError, match=r"\['interleave'\] not in the cache.*--sections interleave"):
        make("gistgym/Interleave-v0", cache_path=path, clip_len=CLIP)


@pytest.mark.parametrize("action", [2, -1, 0.5, "heavy", np.array([0, 1]), True])
def test_action_outside_the_action_space(kwargs: dict[str, Any], action: Any) -> None:
    env = InterleaveEnv(**kwargs)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match=r"outside the action space Discrete\(2\).*\[0, 1\]"):
        env.step(action)
    env.step(np.int64(1))  # numpy integers are fine


def test_step_outside_an_episode(kwargs: dict[str, Any]) -> None:
    env = InterleaveEnv(**kwargs)
    with pytest.raises(EnvStateError, match="call reset"):
        env.step(0)
    env.reset(seed=0)
    for _ in range(CLIP - 1):
        *_, trunc, _ = env.step(0)
    assert trunc
    with pytest.raises(EnvStateError, match="call reset"):
        env.step(0)


def test_env_spec_kwargs_describe_the_env(kwargs: dict[str, Any]) -> None:
    env = make("gistgym/Interleave-v0", **kwargs, speed_reward=(0.0, 0.3), history_len=5)
    again = gym.make(env.spec)
    assert again.unwrapped.speed_reward == (0.0, 0.3) and again.observation_space == env.observation_space
    a, _ = env.reset(seed=4)
    b, _ = again.reset(seed=4)
    assert np.array_equal(a["state"], b["state"])


def test_episode_memo_is_bounded_and_least_recently_used() -> None:
    from gistgym.envs.interleave_core import EpisodeMemo, PreparedVideo

    def video(name: str) -> PreparedVideo:  # 100 bytes each
        return PreparedVideo(
            name, torch.zeros(10, dtype=torch.float16), torch.zeros(5, dtype=torch.int64), torch.zeros(10)
        )

    memo = EpisodeMemo(max_bytes=250)
    key = {n: ("f", 1, 1, "w", ("heavy", "light"), n) for n in "abc"}
    memo.put(key["a"], video("a"))
    memo.put(key["b"], video("b"))
    assert memo.get(key["a"]) is not None  # a is now the most recent
    memo.put(key["c"], video("c"))
    assert memo.get(key["b"]) is None and memo.get(key["a"]) is not None and memo.nbytes == 200
    memo.max_bytes = 50
    memo.put(key["b"], video("b"))  # larger than the budget: not stored
    assert memo.get(key["b"]) is None and len(memo) == 2


# --- the runtime cues (cues=True) ------------------------------------------------------------
def hand_cues(cache_path: str, video_id: str, start: int, actions: list[int], states: list[dict]) -> list[np.ndarray]:
    """The four cues of every frame written out from the cached light features and the hand-computed states."""
    ep = FeatureCache(cache_path).load_episode(video_id)
    light = np.asarray(ep.features["light"], dtype=np.float64)
    out, ref, since = [], None, 0
    hid = states[0]["state"].shape[0] // 4
    for t, a in enumerate([0, *actions]):
        x = light[start + t]
        since = 0 if a == 0 else since + 1
        ref = x if a == 0 else ref
        prev = x if t == 0 else light[start + t - 1]
        dh = states[t]["state"][3 * hid :]
        cues = [
            min(since, 64) / 64,
            np.linalg.norm(x - ref) / (np.linalg.norm(ref) + 1e-6),
            np.linalg.norm(x - prev) / (np.linalg.norm(prev) + 1e-6),
            np.sqrt(np.mean(dh.astype(np.float64) ** 2)),
        ]
        out.append(np.minimum(np.array(cues), [1.0, 4.0, 4.0, 6.0]))
    return out


def test_cues_match_a_hand_computation_and_cost_the_light_extractor(kwargs: dict[str, Any]) -> None:
    actions = [1, 1, 0, 1, 1, 1, 0]
    env = InterleaveEnv(**kwargs, split="val", cues=True)
    plain = InterleaveEnv(**kwargs, split="val")
    assert env.observation_space["cues"].shape == (4,)
    assert "cues" not in plain.observation_space.spaces
    obs, info = env.reset(options={"video_id": "val_0001", "start": 5})
    p_obs, p_info = plain.reset(options={"video_id": "val_0001", "start": 5})
    states = manual_algorithm_1(kwargs["cache_path"], "val_0001", 5, actions, env.skip_light_updates)
    want = hand_cues(kwargs["cache_path"], "val_0001", 5, actions, states)
    costs = FeatureCache(kwargs["cache_path"]).info.costs["per_extractor"]
    light_flops = int(costs["light"]["extractor_flops"])
    for t, cues in enumerate(want):
        if t > 0:
            obs, r, _, _, info = env.step(actions[t - 1])
            p_obs, p_r, _, _, p_info = plain.step(actions[t - 1])
            assert r == p_r  # the reward and the Eq. 1 observation do not change
            np.testing.assert_array_equal(obs["state"], p_obs["state"])
        assert env.observation_space.contains(obs)
        np.testing.assert_allclose(obs["cues"], cues, rtol=1e-4, atol=1e-5)
        heavy = info["action"] == 0
        assert info["cost_flops"] == p_info["cost_flops"] + (light_flops if heavy else 0)
    # the change since the heavy frame grows on light frames and restarts at 0 on a heavy one
    assert want[3][1] == 0.0 and want[2][1] > 0.0 and want[1][0] == pytest.approx(1 / 64)


def test_cues_must_be_a_bool(kwargs: dict[str, Any]) -> None:
    with pytest.raises(EnvArgumentError, match="cues must be True or False"):
        InterleaveEnv(**kwargs, cues=1)


def test_env_checkers_pass_with_cues(kwargs: dict[str, Any]) -> None:
    env = make("gistgym/Interleave-v0", **kwargs, cues=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    env.close()
