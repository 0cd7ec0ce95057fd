"""Every environment through the clients users reach for first, and what ``render_mode="rgb_array"`` draws.

``import gistgym`` registers the ids; SB3's ``make_vec_env`` (which first tries
``render_mode="rgb_array"``), its ``SubprocVecEnv``, Gymnasium's ``AsyncVectorEnv`` and
``RecordVideo`` work on each of them.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import gymnasium as gym
import numpy as np
import pytest

import gistgym
from gistgym.envs.render import ACTION_COLORS, NOT_YET, EpisodeCanvas
from gistgym.errors import EnvArgumentError

ENV_IDS = ("gistgym/Interleave-v0", "gistgym/Keyframe-v0", "gistgym/Glimpse-v0")


@pytest.fixture
def env_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Small episodes of ``request.param`` on the tiny caches."""
    env_id = request.param
    if env_id == "gistgym/Glimpse-v0":
        return {"cache_path": str(request.getfixturevalue("glimpse_cache")), "split": "val", "num_glimpses": 3}
    return {"cache_path": str(request.getfixturevalue("keyframe_cache")), "split": "val", "clip_len": 6}


def _act(env: Any, i: int) -> Any:
    """A fixed, valid action sequence for anything with an ``action_space``: expensive on every third step."""
    if isinstance(env.action_space, gym.spaces.Box):
        return np.array([0.2 + 0.3 * (i % 3)], dtype=np.float32)
    return 0 if i % 3 == 2 else 1


def test_import_gistgym_alone_registers_every_env_without_torch(keyframe_cache: Path, glimpse_cache: Path) -> None:
    code = f"""
import sys
import gistgym, gymnasium as gym
assert "torch" not in sys.modules, "import gistgym imported torch"
cases = [
    ("gistgym/Interleave-v0", {{"cache_path": {str(keyframe_cache)!r}, "clip_len": 6}}),
    ("gistgym/Keyframe-v0", {{"cache_path": {str(keyframe_cache)!r}, "clip_len": 6}}),
    ("gistgym/Glimpse-v0", {{"cache_path": {str(glimpse_cache)!r}}}),
]
for env_id, kwargs in cases:
    env = gym.make(env_id, split="val", **kwargs)
    env.reset(seed=0)
    env.close()
print("ok")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert gistgym.envs.__name__ == "gistgym.envs"


@pytest.mark.parametrize("env_kwargs", ENV_IDS, indirect=True)
def test_rgb_array_draws_the_schedule_so_far(env_kwargs: dict[str, Any], request: pytest.FixtureRequest) -> None:
    env_id = request.node.callspec.params["env_kwargs"]
    env = gym.make(env_id, render_mode="rgb_array", **env_kwargs)
    assert env.metadata["render_modes"] == ["rgb_array"] and env.metadata["render_fps"] > 0
    env.reset(seed=0)
    first = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert first.shape[0] % 2 == 0 and first.shape[1] % 2 == 0  # what yuv420p encoders need
    canvas: EpisodeCanvas = env.unwrapped._canvas
    images, actions = [first], []
    for i in range(3):
        a = _act(env, i)
        info = env.step(a)[-1]
        images.append(env.render())
        actions.append(info.get("action", 0))
    assert {im.shape for im in images} == {first.shape}
    assert all((a != b).any() for a, b in itertools.pairwise(images))  # every step changes the picture
    last = images[-1]
    assert len(np.unique(last.reshape(-1, 3), axis=0)) > 4  # not blank
    # the action band: the color of the action that ran in the column of the last step, none yet after it
    col = canvas.last
    assert col is not None
    assert tuple(last[5, col * canvas.px]) == ACTION_COLORS[actions[-1]]
    if env_id != "gistgym/Glimpse-v0":
        assert col == 3 and tuple(last[5, (col + 1) * canvas.px]) == NOT_YET
    # a new episode starts a new picture
    env.reset(seed=1)
    assert (env.render() != last).any()
    env.close()


@pytest.mark.parametrize("env_kwargs", ENV_IDS, indirect=True)
def test_gymnasium_checker_passes_with_rendering(env_kwargs: dict[str, Any], request: pytest.FixtureRequest) -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make(request.node.callspec.params["env_kwargs"], render_mode="rgb_array", **env_kwargs)
    check_env(env.unwrapped)  # render check included
    env.close()


@pytest.mark.parametrize("env_kwargs", ENV_IDS, indirect=True)
def test_render_mode_errors(env_kwargs: dict[str, Any], request: pytest.FixtureRequest) -> None:
    env_id = request.node.callspec.params["env_kwargs"]
    with pytest.raises(EnvArgumentError, match="render_mode='ansi' is not supported; use None or 'rgb_array'"):
        gym.make(env_id, render_mode="ansi", **env_kwargs)
    env = gym.make(env_id, **env_kwargs).unwrapped
    assert env.render() is None  # nothing asked, nothing drawn
    env.close()
    with pytest.raises(EnvArgumentError, match="batched environments do not render"):
        gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", render_mode="rgb_array", **env_kwargs)


@pytest.mark.parametrize("env_kwargs", ENV_IDS, indirect=True)
def test_sb3_make_vec_env(env_kwargs: dict[str, Any], request: pytest.FixtureRequest) -> None:
    """SB3 first asks for render_mode="rgb_array" (and falls back only on TypeError): it must simply work."""
    from stable_baselines3.common.env_util import make_vec_env

    env_id = request.node.callspec.params["env_kwargs"]
    venv = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs=env_kwargs)
    try:
        obs = venv.reset()
        assert all(v.shape[0] == 2 for v in obs.values())
        for i in range(3):
            a = _act(venv, i)
            obs, rewards, _, _ = venv.step(np.stack([a, a]))
            assert rewards.shape == (2,) and np.isfinite(rewards).all()
        frames = venv.get_images()
        assert len(frames) == 2 and frames[0].dtype == np.uint8 and frames[0].ndim == 3
    finally:
        venv.close()


SUBPROC_SCRIPT = """
import sys

import numpy as np
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import gistgym  # registers the ids, here and in the workers (the forkserver imports this __main__)

if __name__ == "__main__":
    for env_id, kwargs, algo in [
        ("gistgym/Interleave-v0", {"cache_path": sys.argv[1], "clip_len": 6}, DQN),
        ("gistgym/Keyframe-v0", {"cache_path": sys.argv[1], "clip_len": 6}, DQN),
        ("gistgym/Glimpse-v0", {"cache_path": sys.argv[2], "num_glimpses": 3}, PPO),
    ]:
        venv = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs=kwargs, vec_env_cls=SubprocVecEnv)
        extra = {"learning_starts": 8, "buffer_size": 64} if algo is DQN else {"n_steps": 8, "batch_size": 8}
        model = algo("MultiInputPolicy", venv, seed=0, device="cpu", **extra)
        model.learn(32)
        obs = venv.reset()
        action, _ = model.predict(obs, deterministic=True)
        venv.step(action)
        assert len(venv.get_images()) == 2
        venv.close()
        print(env_id, "ok")
"""


def test_sb3_subproc_vec_env_trains_in_a_users_script(
    keyframe_cache: Path, glimpse_cache: Path, tmp_path: Path
) -> None:
    """A user's script: ``import gistgym``, then SB3's SubprocVecEnv (forkserver workers) and DQN / PPO."""
    script = tmp_path / "train.py"
    script.write_text(SUBPROC_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(script), str(keyframe_cache), str(glimpse_cache)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [w for e in ENV_IDS for w in (e, "ok")]


@pytest.mark.parametrize("env_kwargs", ENV_IDS, indirect=True)
def test_gymnasium_async_vector_env(env_kwargs: dict[str, Any], request: pytest.FixtureRequest) -> None:
    env_id = request.node.callspec.params["env_kwargs"]
    sync = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **env_kwargs)] * 2)
    envs = gym.vector.AsyncVectorEnv([lambda: gym.make(env_id, **env_kwargs)] * 2)
    try:
        obs, _ = envs.reset(seed=[3, 4])
        want, _ = sync.reset(seed=[3, 4])
        for i in range(3):
            a = _act(sync.envs[0], i)
            actions = np.stack([a, a])
            obs, rewards, *_ = envs.step(actions)
            want, want_rewards, *_ = sync.step(actions)
            np.testing.assert_allclose(rewards, want_rewards, rtol=0, atol=1e-6)
            for k in want:
                np.testing.assert_allclose(obs[k], want[k], rtol=0, atol=1e-5)
    finally:
        envs.close()
        sync.close()


@pytest.mark.parametrize("env_kwargs", ENV_IDS, indirect=True)
def test_record_video_writes_one_frame_per_step(
    env_kwargs: dict[str, Any], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from gymnasium.wrappers import RecordVideo

    env_id = request.node.callspec.params["env_kwargs"]
    env = RecordVideo(
        gym.make(env_id, render_mode="rgb_array", **env_kwargs),
        str(tmp_path / "videos"),
        episode_trigger=lambda _: True,
        disable_logger=True,
    )
    env.reset(seed=0)
    size = env.render().shape
    steps, done = 0, False
    while not done:
        _, _, term, trunc, _ = env.step(_act(env, steps))
        steps += 1
        done = term or trunc
    env.close()
    (video,) = (tmp_path / "videos").glob("*.mp4")
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # the reset's picture and one per step (the encoder may drop the last one of a clip)
    assert steps <= len(frames) <= steps + 1 and frames[0].shape == size
