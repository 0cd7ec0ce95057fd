"""The contract every registered ``gistgym/`` environment keeps, one suite parametrized over the ids.

* the registered kwargs are the constructor's defaults and both entry points load;
* Gymnasium's checker (rendering included) and SB3's pass;
* the same seed gives the same rollout, other seeds other clips;
* the native vector env equals a SyncVectorEnv of single envs, across autoresets;
* the SB3 adapter (the family's ``make_vec`` in ``agents.backends``) equals a DummyVecEnv of
  single envs, and SB3 trains on it.

A new id fails :func:`test_every_registered_id_has_a_case` until it gets a :class:`Case`.
Each family's own module keeps what only it has (hand-computed rewards, episode ends).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import load_env_creator
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

import gistgym
from gistgym.agents.backends import get_backend

SB3_IMAGE_WARNINGS = (
    # SB3 reads a 3-D float Box as an image; the Interleave state maps are (4H, g, g) feature maps on
    # purpose (the paper's policy net convolves them), SB3's MultiInputPolicy flattens them
    "is an image but its `dtype`",
    "is an image but the upper and lower bounds",
    "36x36",
    "Treating image space as channels-last",
)
GLIMPSE_WARNINGS = (
    "minimum value is -infinity",
    "maximum value is infinity",
    "Your observation memory has an unconventional shape",
    "symmetric and normalized Box action space",
)
"""Glimpse-v0's feature Boxes are unbounded on purpose (pooled features have no bound), the memory is a
(T_d, F + P) table (SB3's MultiInputPolicy flattens it) and the action is a location in [0, 1], not
SB3's recommended [-1, 1]; the checkers say so."""


@dataclass(frozen=True)
class Case:
    """How the suite drives one id on the tiny caches."""

    cache: str
    """Name of the cache fixture (tests/conftest.py)."""
    kwargs: Mapping[str, Any]
    """Small episodes: the tiny videos have 24 (Glimpse: 20) frames."""
    episode_steps: int
    """Steps of one episode with these kwargs."""
    tol: Mapping[str, float] = field(default_factory=lambda: {"rtol": 0.0, "atol": 0.0})
    """Float tolerance between batched and single envs (batch-size-dependent BLAS paths)."""
    expected_warnings: tuple[str, ...] = ()


CASES = {
    "gistgym/Interleave-v0": Case(
        "tiny_cache", {"clip_len": 6, "speed_reward": (0.25, 1.0)}, 5, {"rtol": 1e-5, "atol": 1e-5},
        SB3_IMAGE_WARNINGS,
    ),
    "gistgym/Keyframe-v0": Case("keyframe_cache", {"clip_len": 8, "max_distance": 5}, 7),
    "gistgym/Glimpse-v0": Case(
        "glimpse_cache", {"num_glimpses": 4}, 4, {"rtol": 1e-5, "atol": 1e-6}, GLIMPSE_WARNINGS
    ),
}  # fmt: skip
IDS = sorted(i for i in gym.registry if i.startswith("gistgym/"))


@pytest.fixture(params=IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, Case, dict[str, Any]]:
    """``(env_id, case, kwargs)`` with the cache path filled in."""
    env_id = request.param
    c = CASES[env_id]
    return env_id, c, {"cache_path": str(request.getfixturevalue(c.cache)), **c.kwargs}


def _assert_same(a: Any, b: Any, tol: Mapping[str, float], what: str) -> None:
    """Equal mappings of arrays/scalars: floats within ``tol``, everything else exactly."""
    if isinstance(a, Mapping):
        assert a.keys() == b.keys(), what
        for k in a:
            _assert_same(a[k], b[k], tol, f"{what}.{k}")
        return
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype.kind == "f":
        np.testing.assert_allclose(x, y, err_msg=what, **tol)
    else:
        assert np.array_equal(x, y), what


def _rollout(env: gym.Env, seed: int, steps: int) -> Iterator[tuple[Any, ...]]:
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    yield obs, 0.0, False, False, info
    for _ in range(steps):
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
        yield obs, reward, term, trunc, info
        if term or trunc:
            obs, info = env.reset()
            yield obs, 0.0, False, False, info


def test_every_registered_id_has_a_case() -> None:
    assert sorted(CASES) == IDS, "add a Case for each new id (and its own tests beside this suite)"
    assert gistgym.envs is not None


def test_registered_kwargs_are_the_constructor_defaults(case: tuple[str, Case, dict[str, Any]]) -> None:
    env_id = case[0]
    spec = gym.spec(env_id)
    single = load_env_creator(spec.entry_point)
    params = inspect.signature(single.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults.pop("render_mode") is None
    assert spec.kwargs == defaults
    assert spec.vector_entry_point is not None
    vector = load_env_creator(spec.vector_entry_point)
    vparams = inspect.signature(vector.__init__).parameters
    assert "num_envs" in vparams and set(spec.kwargs) <= set(vparams)
    assert all(vparams[k].default == v for k, v in spec.kwargs.items())


def test_gymnasium_and_sb3_checkers_pass(case: tuple[str, Case, dict[str, Any]]) -> None:
    env_id, c, kwargs = case
    env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # rendering included
        sb3_check_env(env.unwrapped, warn=True)
    unexpected = [str(w.message) for w in caught if not any(s in str(w.message) for s in c.expected_warnings)]
    assert unexpected == []
    env.close()


def test_same_seed_same_rollout_other_seeds_other_clips(case: tuple[str, Case, dict[str, Any]]) -> None:
    env_id, c, kwargs = case
    a, b = gym.make(env_id, **kwargs), gym.make(env_id, **kwargs)
    steps = 3 * c.episode_steps
    rows = list(zip(_rollout(a, 5, steps), _rollout(b, 5, steps), strict=True))
    assert len(rows) == steps + 1 + 3  # three episodes, each followed by a reset
    for x, y in rows:
        _assert_same(dict(enumerate(x)), dict(enumerate(y)), {"rtol": 0.0, "atol": 0.0}, "rollout")
    firsts = {a.reset(seed=s)[1]["video_id"] for s in range(8)}
    assert len(firsts) > 1
    a.close()
    b.close()


def test_native_vector_env_equals_single_envs(case: tuple[str, Case, dict[str, Any]]) -> None:
    """Same seed -> same clips across autoresets; same observations, rewards, ends and infos."""
    env_id, c, kwargs = case
    n = 3
    native = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", **kwargs)
    assert type(native.unwrapped).__name__ != "SyncVectorEnv"
    assert native.single_observation_space == sync.single_observation_space
    assert native.single_action_space == sync.single_action_space
    ox, ix = native.reset(seed=3)
    oy, iy = sync.reset(seed=3)
    _assert_same(ox, oy, c.tol, "reset obs")
    _assert_same(ix, iy, c.tol, "reset info")
    native.action_space.seed(0)
    ends = 0
    for step in range(2 * c.episode_steps + 2):
        a = native.action_space.sample()
        ox, rx, tx, ux, ix = native.step(a)
        oy, ry, ty, uy, iy = sync.step(a)
        _assert_same({"obs": ox, "reward": rx, "info": ix}, {"obs": oy, "reward": ry, "info": iy}, c.tol, f"{step}")
        assert np.array_equal(tx, ty) and np.array_equal(ux, uy)
        ends += int((tx | ux).sum())
    assert ends == 2 * n  # two episodes each, then the next-step autoreset
    native.close()
    sync.close()


def test_sb3_adapter_equals_dummy_vec_env(case: tuple[str, Case, dict[str, Any]]) -> None:
    env_id, c, kwargs = case
    n = 3
    cache = kwargs.pop("cache_path")
    ours = get_backend(env_id).make_vec(cache, n, **kwargs)
    dummy = DummyVecEnv([lambda: gym.make(env_id, cache_path=cache, **kwargs) for _ in range(n)])
    ours.seed(7)
    dummy.seed(7)
    _assert_same(ours.reset(), dummy.reset(), c.tol, "reset")
    assert [i["video_id"] for i in ours.reset_infos] == [i["video_id"] for i in dummy.reset_infos]
    ours.action_space.seed(1)
    dones = 0
    for step in range(2 * c.episode_steps + 1):
        a = np.stack([ours.action_space.sample() for _ in range(n)])
        ox, rx, dx, infx = ours.step(a)
        oy, ry, dy, infy = dummy.step(a)
        assert rx.dtype == np.float32
        _assert_same({"obs": ox, "reward": rx}, {"obs": oy, "reward": ry}, c.tol, f"{step}")
        assert np.array_equal(dx, dy)
        for i, (p, q) in enumerate(zip(infx, infy, strict=True)):
            assert p.keys() == q.keys(), (step, i)
            _assert_same(p, q, c.tol, f"{step} info {i}")
        dones += int(dx.sum())
        assert [i["video_id"] for i in ours.reset_infos] == [i["video_id"] for i in dummy.reset_infos]
    assert dones == 2 * n
    ours.close()
    dummy.close()


def test_sb3_trains_on_the_adapter(case: tuple[str, Case, dict[str, Any]]) -> None:
    from stable_baselines3 import PPO

    env_id, _, kwargs = case
    venv = VecMonitor(get_backend(env_id).make_vec(kwargs.pop("cache_path"), 2, **kwargs))
    assert venv.get_attr("render_mode") == [None, None] and venv.env_is_wrapped(gym.Wrapper) == [False, False]
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.learn(32)
    assert model.num_timesteps == 32
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (2, *venv.action_space.shape)
    venv.close()
