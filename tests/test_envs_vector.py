"""The batched Interleave env: make_vec, NEXT_STEP autoreset, equality with single envs, the SB3 VecEnv adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import gistgym.envs  # noqa: F401 (registers the ids)
from gistgym.envs.interleave import InterleaveEnv
from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv
from gistgym.envs.interleave_vector import InterleaveVectorEnv
from gistgym.errors import EnvArgumentError, EnvStateError, InvalidActionError, UnknownEnvArgumentError

CLIP = 6
N = 3
ENV_ID = "gistgym/Interleave-v0"
# The batched env runs N * m rows through torch, a single env m rows: torch's CPU matmul
# kernels choose batch-size-dependent paths, so floats agree to rounding, not bit for bit.
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def kwargs(tiny_cache: Path) -> dict[str, Any]:
    return {"cache_path": str(tiny_cache), "clip_len": CLIP}


def actions_for(steps: int, seed: int = 0, m: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, m, size=(steps, N))


def assert_close_obs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(a["state"], b["state"], **TOL)
    np.testing.assert_array_equal(a["history"], b["history"])


def test_make_vec_returns_the_native_vector_env(kwargs: dict[str, Any]) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=N, vectorization_mode="vector_entry_point", **kwargs)
    assert isinstance(envs.unwrapped, InterleaveVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.num_envs == N and envs.action_space == gym.spaces.MultiDiscrete([2] * N)
    assert envs.single_observation_space == InterleaveEnv(**kwargs).observation_space
    assert envs.spec is not None and envs.spec.kwargs["clip_len"] == CLIP
    obs, info = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    assert info["losses"].shape == (N, 2) and info["video_id"].shape == (N,) and info["_losses"].all()
    for a in actions_for(3 * CLIP):
        obs, reward, term, _, info = envs.step(a)
        assert envs.observation_space.contains(obs)
        assert reward.dtype == np.float64 and not term.any()
    envs.close()


def test_vector_env_equals_a_sync_vector_env_of_single_envs(kwargs: dict[str, Any]) -> None:
    """Same seed -> same clips, across two autoresets; same rewards, observations and infos."""
    kwargs = {**kwargs, "speed_reward": (0.25, 1.0)}
    native = gym.make_vec(ENV_ID, num_envs=N, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.make_vec(ENV_ID, num_envs=N, vectorization_mode="sync", **kwargs)
    assert isinstance(sync.unwrapped, SyncVectorEnv)
    speed = np.array(native.unwrapped.core.speed_reward)
    obs_n, info_n = native.reset(seed=42)
    obs_s, info_s = sync.reset(seed=42)
    assert_close_obs(obs_n, obs_s)
    truncations = 0
    restarting = np.zeros(N, dtype=bool)
    for a in actions_for(2 * CLIP + 2, seed=1):
        obs_n, r_n, te_n, tr_n, info_n = native.step(a)
        obs_s, r_s, te_s, tr_s, info_s = sync.step(a)
        assert_close_obs(obs_n, obs_s)
        np.testing.assert_allclose(r_n, r_s, **TOL)
        assert np.array_equal(te_n, te_s) and np.array_equal(tr_n, tr_s)
        for key in ("video_id", "frame_index", "action", "cost_flops", "state_written"):
            assert np.array_equal(info_n[key], info_s[key]), key
        np.testing.assert_allclose(info_n["losses"], info_s["losses"], **TOL)
        # Eq. 2 holds exactly on the batched infos too; slots that restart this step pay 0
        losses = info_n["losses"]
        eq2 = losses.min(axis=1) - losses[np.arange(N), a] + speed[a]
        assert np.array_equal(r_n, np.where(restarting, 0.0, eq2))
        restarting = tr_n
        truncations += int(tr_n.sum())
    assert truncations == 2 * N


def test_next_step_autoreset(kwargs: dict[str, Any]) -> None:
    # a non-zero heavy speed reward, so a restarting slot's 0 is not Eq. 2 by coincidence
    envs = InterleaveVectorEnv(**kwargs, num_envs=N, speed_reward=(0.25, 1.0))
    _, reset_info = envs.reset(seed=7)
    ones = np.ones(N, dtype=np.int64)
    for _ in range(CLIP - 2):
        _, _, _, trunc, _ = envs.step(ones)
        assert not trunc.any()
    _, _, term, trunc, last_info = envs.step(ones)
    assert trunc.all() and not term.any()
    assert np.array_equal(last_info["frame_index"], reset_info["frame_index"] + CLIP - 1)
    obs, reward, term, trunc, info = envs.step(ones)  # actions are ignored: every slot restarts
    assert np.array_equal(reward, np.zeros(N)) and not term.any() and not trunc.any()
    assert np.array_equal(info["action"], np.zeros(N)) and info["state_written"].all()
    assert not obs["history"].any()
    # the returned observation is the new clip's frame 0, as a single env's reset gives it
    for i in range(N):
        single = InterleaveEnv(**kwargs)
        first, first_info = single.reset(
            options={"video_id": info["video_id"][i], "start": int(info["frame_index"][i])}
        )
        np.testing.assert_allclose(obs["state"][i], first["state"], **TOL)
        np.testing.assert_allclose(info["losses"][i], first_info["losses"], **TOL)
    # and the next step continues that clip
    _, reward, _, trunc, nxt = envs.step(ones)
    assert np.array_equal(nxt["frame_index"], info["frame_index"] + 1) and not trunc.any()
    assert np.array_equal(nxt["video_id"], info["video_id"])


def test_vector_reset_options_and_seeds(kwargs: dict[str, Any]) -> None:
    envs = InterleaveVectorEnv(**kwargs, num_envs=2, split="val")
    _, info = envs.reset(options={"video_id": ["val_0001", "val_0000"], "start": [3, 0]})
    assert info["video_id"].tolist() == ["val_0001", "val_0000"] and info["frame_index"].tolist() == [3, 0]
    _, a = envs.reset(seed=[5, 6])
    _, b = envs.reset(seed=5)
    assert np.array_equal(a["frame_index"], b["frame_index"]) and np.array_equal(a["video_id"], b["video_id"])
    with pytest.raises(EnvArgumentError, match="sequence of 2 values"):
        envs.reset(options={"video_id": "val_0000"})
    with pytest.raises(EnvArgumentError, match="3 seeds for 2 environments"):
        envs.reset(seed=[1, 2, 3])


@pytest.mark.parametrize("bad", [np.array([0, 2, 1]), np.array([0, 1]), np.array([0.0, 1.0, 1.0]), 1])
def test_vector_bad_actions(kwargs: dict[str, Any], bad: Any) -> None:
    envs = InterleaveVectorEnv(**kwargs, num_envs=N)
    with pytest.raises((InvalidActionError, EnvStateError)):
        envs.step(np.zeros(N, dtype=np.int64) if isinstance(bad, int) else bad)  # before reset: state error
    envs.reset(seed=0)
    if not isinstance(bad, int):
        with pytest.raises(InvalidActionError, match=r"must be 3 integers in \[0, 1\]"):
            envs.step(bad)


def test_vector_unknown_kwarg(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UnknownEnvArgumentError, match="valid arguments: num_envs, cache_path"):
        gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", **kwargs, gama=1.0)


# --- SB3 -------------------------------------------------------------------------------------
def test_sb3_adapter_same_step_reset_semantics(kwargs: dict[str, Any]) -> None:
    venv = InterleaveSB3VecEnv(**kwargs, num_envs=N)
    venv.seed(0)
    venv.reset()
    for _ in range(CLIP - 2):
        _, _, dones, infos = venv.step(np.zeros(N, dtype=np.int64))
        assert not dones.any() and not any(i["TimeLimit.truncated"] for i in infos)
    obs, _, dones, infos = venv.step(np.zeros(N, dtype=np.int64))
    assert dones.all()
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True
        assert venv.observation_space.contains(info["terminal_observation"])
        # the returned observation already belongs to the next clip (frame 0: zero diffs vs a zero state)
        assert venv.reset_infos[i]["action"] == 0
        hid = obs["state"].shape[1] // 4
        np.testing.assert_array_equal(obs["state"][i, 2 * hid :], obs["state"][i, : 2 * hid])
        assert not np.array_equal(obs["state"][i], info["terminal_observation"]["state"])
