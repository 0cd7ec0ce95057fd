"""Exported policies: parity with the Python policy on >= 10,000 environment observations, sidecar checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gistgym.agents.export import ExportedPolicy, context_from_cache, export_policy, load_exported_policy
from gistgym.agents.export_common import ONNX_OPSET, sidecar_path
from gistgym.agents.policy import Policy
from gistgym.errors import OnnxOpsetError, PolicyFileError, PolicyMismatchError

NUM_ENVS = 64
CLIP = 12
PARITY_OBSERVATIONS = 10_240
ENV_KWARGS: dict[str, Any] = {"clip_len": CLIP, "extractors": ("heavy", "light")}


def _sb3_env(cache: Path, num_envs: int = NUM_ENVS) -> Any:
    from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv

    return InterleaveSB3VecEnv(cache, num_envs=num_envs, split="train", **ENV_KWARGS)


def make_dqn(cache: Path) -> Any:
    from stable_baselines3 import DQN

    torch.manual_seed(0)
    return DQN(
        "MultiInputPolicy",
        _sb3_env(cache, 1),
        policy_kwargs={"net_arch": [64]},
        buffer_size=100,
        learning_starts=0,
        seed=0,
        device="cpu",
    )


def make_ppo(cache: Path) -> Any:
    from stable_baselines3 import PPO

    torch.manual_seed(0)
    return PPO("MultiInputPolicy", _sb3_env(cache, 1), n_steps=16, batch_size=16, seed=0, device="cpu")


@pytest.fixture(scope="module")
def env_observations(tiny_cache: Path) -> dict[str, np.ndarray]:
    """>= 10,000 observations of the SB3 vector env under varied random schedules."""
    venv = _sb3_env(tiny_cache)
    venv.seed(0)
    obs = venv.reset()
    rng = np.random.default_rng(0)
    p_heavy = rng.uniform(0.02, 0.9, size=NUM_ENVS)  # each slot its own heavy rate
    states, histories = [obs["state"]], [obs["history"]]
    while sum(len(s) for s in states) < PARITY_OBSERVATIONS:
        actions = (rng.random(NUM_ENVS) >= p_heavy).astype(np.int64)
        obs, _, _, _ = venv.step(actions)
        states.append(obs["state"])
        histories.append(obs["history"])
    venv.close()
    return {"state": np.concatenate(states), "history": np.concatenate(histories)}


@pytest.fixture(scope="module")
def dqn(tiny_cache: Path, env_observations: dict[str, np.ndarray]) -> Any:
    """A DQN whose decision depends on the observation.

    A freshly initialised network prefers one action everywhere; shifting the light
    action's output bias to the median Q-value gap makes it pick each action on about half
    of the recorded observations, so action parity is a real test.
    """
    model = make_dqn(tiny_cache)
    q = _python_q_values(model, env_observations)
    gaps = np.unique(q[:, 0] - q[:, 1])  # sorted; observations repeat (clip starts), so do their gaps
    k = len(gaps) // 2
    head = [m for m in model.policy.q_net.q_net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        # halfway between two neighbouring gaps, so the shift itself creates no exact tie
        head.bias[1] += float((gaps[k - 1] + gaps[k]) / 2)
    return model


@pytest.fixture(scope="module")
def exported(dqn: Any, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    ctx = context_from_cache(tiny_cache, ENV_KWARGS, algorithm="DQN", source="tests/test_export.py")
    out = {}
    for fmt, name in (("torchscript", "policy.pt"), ("onnx", "policy.onnx")):
        out[fmt] = export_policy(dqn, folder / name, fmt, ctx).path
    return out


def _python_q_values(model: Any, obs: dict[str, np.ndarray], batch: int = 2048) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(obs["state"]), batch):
            part = {k: v[s : s + batch] for k, v in obs.items()}
            tensor, _ = model.policy.obs_to_tensor(part)
            out.append(model.policy.q_net(tensor).numpy())
    return np.concatenate(out)


def _exported_scores(policy: ExportedPolicy, obs: dict[str, np.ndarray], batch: int = 2048) -> np.ndarray:
    out = []
    for s in range(0, len(obs["state"]), batch):
        scores, actions = policy.scores_and_actions(obs["state"][s : s + batch], obs["history"][s : s + batch])
        np.testing.assert_array_equal(actions, scores.argmax(axis=1))
        out.append(scores)
    return np.concatenate(out)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_policy_matches_the_python_policy_on_10k_env_observations(
    fmt: str, exported: dict[str, Path], dqn: Any, env_observations: dict[str, np.ndarray], tiny_cache: Path
) -> None:
    n = len(env_observations["state"])
    assert n >= 10_000
    policy = load_exported_policy(exported[fmt], cache=tiny_cache, env_id="gistgym/Interleave-v0")
    assert isinstance(policy, Policy)
    q_python = _python_q_values(dqn, env_observations)
    q_exported = _exported_scores(policy, env_observations)
    np.testing.assert_allclose(q_exported, q_python, rtol=0, atol=1e-5)
    # the Python policy's own decision (SB3 predict, deterministic) against the exported argmax
    python_actions = np.concatenate(
        [
            dqn.predict({k: v[s : s + 2048] for k, v in env_observations.items()}, deterministic=True)[0]
            for s in range(0, n, 2048)
        ]
    )
    exported_actions = policy.act(env_observations, [{}] * n)
    assert exported_actions.dtype == np.int64
    np.testing.assert_array_equal(python_actions, q_python.argmax(axis=1))
    gap = np.abs(q_python[:, 0] - q_python[:, 1])
    differ = exported_actions != python_actions
    print(f"{fmt}: {differ.sum()} of {n} actions differ; Q-gaps there {gap[differ]}; smallest gap {gap.min():.3g}")
    np.testing.assert_array_equal(exported_actions, python_actions)
    # a non-trivial test: both extractors are chosen on these observations
    assert 0.01 < python_actions.mean() < 0.99
    # the observations really are varied schedules (light runs of many lengths)
    assert 0.05 < env_observations["history"].mean() < 0.95


def test_batch_of_one_matches_the_batch(exported: dict[str, Path], env_observations: dict[str, np.ndarray]) -> None:
    for fmt in ("torchscript", "onnx"):
        policy = load_exported_policy(exported[fmt])
        s, h = env_observations["state"][:5], env_observations["history"][:5]
        batch, _ = policy.scores_and_actions(s, h)
        ones = np.concatenate([policy.scores_and_actions(s[i : i + 1], h[i : i + 1])[0] for i in range(5)])
        np.testing.assert_allclose(ones, batch, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_ppo_logits_export_matches(
    fmt: str, tiny_cache: Path, tmp_path: Path, env_observations: dict[str, np.ndarray]
) -> None:
    model = make_ppo(tiny_cache)
    ctx = context_from_cache(tiny_cache, ENV_KWARGS, algorithm="PPO")
    result = export_policy(model, tmp_path / f"ppo.{'onnx' if fmt == 'onnx' else 'pt'}", fmt, ctx)
    policy = load_exported_policy(result.path, cache=tiny_cache)
    obs = {k: v[:2000] for k, v in env_observations.items()}
    with torch.no_grad():
        tensor, _ = model.policy.obs_to_tensor(obs)
        features = model.policy.extract_features(tensor, model.policy.pi_features_extractor)
        logits = model.policy.action_net(model.policy.mlp_extractor.forward_actor(features)).numpy()
    scores, actions = policy.scores_and_actions(obs["state"], obs["history"])
    np.testing.assert_allclose(scores, logits, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(actions, model.predict(obs, deterministic=True)[0])
    assert json.loads(sidecar_path(result.path).read_text())["outputs"]["scores"] == "logits"


def test_sidecar_describes_env_cache_and_layout(exported: dict[str, Path], tiny_cache: Path) -> None:
    import gistgym
    from gistgym.feature_cache import FeatureCache

    info = FeatureCache(tiny_cache).info
    for fmt, path in exported.items():
        side = json.loads(sidecar_path(path).read_text())
        assert side["format"] == "gistgym-policy"
        assert side["export_format"] == fmt
        assert side["onnx_opset"] == (ONNX_OPSET if fmt == "onnx" else None)
        assert side["env"]["id"] == "gistgym/Interleave-v0" and side["env"]["version"] == 0
        assert side["env"]["kwargs"]["clip_len"] == CLIP
        assert side["cache"] == {"schema_version": info.schema_version, "weights_sha256": info.weights_sha256}
        assert side["history_len"] == 20
        assert side["action_meanings"] == ["heavy", "light"]
        assert side["gistgym_version"] == gistgym.__version__
        assert side["observation_layout"]["state"]["shape"] == ["B", 256, 8, 8]
        assert side["observation_layout"]["state"]["channels"]["h_hat - h_prev"] == [192, 256]
        assert len(side["file_sha256"]) == 64


def _copy_export(path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / path.name
    dst.write_bytes(path.read_bytes())
    sidecar_path(dst).write_text(sidecar_path(path).read_text())
    return dst


def test_missing_sidecar_is_a_typed_error(exported: dict[str, Path], tmp_path: Path) -> None:
    dst = _copy_export(exported["onnx"], tmp_path)
    sidecar_path(dst).unlink()
    with pytest.raises(PolicyFileError, match=r"policy\.onnx\.json: sidecar JSON missing"):
        load_exported_policy(dst)
    with pytest.raises(PolicyFileError, match="exported policy file does not exist"):
        load_exported_policy(tmp_path / "nope.pt")


def test_changed_file_is_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    dst = _copy_export(exported["torchscript"], tmp_path)
    dst.write_bytes(dst.read_bytes()[:-10])
    with pytest.raises(PolicyFileError, match=r"policy\.pt \[file_sha256\].*changed or replaced after export"):
        load_exported_policy(dst)


def _edit_sidecar(path: Path, **changes: Any) -> None:
    side = json.loads(sidecar_path(path).read_text())
    for dotted, value in changes.items():
        keys = dotted.split("__")
        target = side
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    sidecar_path(path).write_text(json.dumps(side))


def test_env_version_mismatch_is_a_typed_error(exported: dict[str, Path], tmp_path: Path) -> None:
    dst = _copy_export(exported["torchscript"], tmp_path)
    _edit_sidecar(dst, env__id="gistgym/Interleave-v7")
    with pytest.raises(PolicyMismatchError, match=r"\[env\.id\].*'gistgym/Interleave-v7'.*Interleave-v0"):
        load_exported_policy(dst)


def test_cache_and_weights_mismatch_are_typed_errors(
    exported: dict[str, Path], tmp_path: Path, tiny_cache: Path
) -> None:
    dst = _copy_export(exported["onnx"], tmp_path)
    with pytest.raises(PolicyMismatchError, match=r"\[cache\.weights_sha256\].*used with '0000"):
        load_exported_policy(dst, weights_sha256="0" * 64)
    _edit_sidecar(dst, cache__weights_sha256="f" * 64)
    with pytest.raises(PolicyMismatchError, match=r"policy\.onnx\.json \[cache\.weights_sha256\]: .*'ffff"):
        load_exported_policy(dst, cache=tiny_cache)
    _edit_sidecar(
        dst,
        cache__weights_sha256=json.loads(sidecar_path(exported["onnx"]).read_text())["cache"]["weights_sha256"],
        cache__schema_version=99,
    )
    with pytest.raises(PolicyMismatchError, match=r"\[cache\.schema_version\]: policy was exported for .* = 99"):
        load_exported_policy(dst, cache=tiny_cache)


def test_onnx_from_another_opset_is_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    import hashlib

    import onnx

    dst = _copy_export(exported["onnx"], tmp_path)
    model = onnx.load(str(dst))
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 17
    onnx.save(model, str(dst))
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    _edit_sidecar(dst, file_sha256=digest)
    with pytest.raises(OnnxOpsetError, match=r"policy\.onnx \[opset_import\]: file uses ONNX opset 17 but its sidecar"):
        load_exported_policy(dst)
    _edit_sidecar(dst, onnx_opset=17)
    with pytest.raises(OnnxOpsetError, match=rf"opset 17 is not the opset this gistgym .* \({ONNX_OPSET}\)"):
        load_exported_policy(dst)


def test_corrupt_model_file_is_a_typed_error(exported: dict[str, Path], tmp_path: Path) -> None:
    import hashlib

    for fmt in ("torchscript", "onnx"):
        dst = _copy_export(exported[fmt], tmp_path)
        dst.write_bytes(b"not a model at all")
        _edit_sidecar(dst, file_sha256=hashlib.sha256(dst.read_bytes()).hexdigest())
        with pytest.raises(PolicyFileError, match="corrupt or truncated"):
            load_exported_policy(dst)


def test_exported_policy_drives_the_environment(exported: dict[str, Path], tiny_cache: Path) -> None:
    import gymnasium as gym

    import gistgym.envs  # noqa: F401

    policy = load_exported_policy(exported["onnx"], cache=tiny_cache)
    env = gym.make("gistgym/Interleave-v0", cache_path=str(tiny_cache), **ENV_KWARGS)
    obs, info = env.reset(seed=0)
    policy.reset(1)
    actions = []
    for _ in range(CLIP - 1):
        a = policy.act({k: np.asarray(v)[None] for k, v in obs.items()}, [info])
        assert a.shape == (1,) and a.dtype == np.int64
        actions.append(int(a[0]))
        obs, _, _, truncated, info = env.step(a[0])
    assert truncated
    env.close()
