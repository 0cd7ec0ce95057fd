"""``gistgym train --algo cem``: the linear scheduler, its search, its run directory, export and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

from gistgym.agents.backends import get_backend
from gistgym.agents.cem import CEMConfig, FeatureSet, LinearPolicyModel, candidate_returns, cross_entropy_search
from gistgym.agents.train import TrainConfig, train
from gistgym.errors import ConfigError, RunError
from gistgym.scripts.cli import main

INTERLEAVE = "gistgym/Interleave-v0"
KEYFRAME = "gistgym/Keyframe-v0"


def _config(cache: Path, out: Path, **overrides: Any) -> TrainConfig:
    base = TrainConfig.of(
        cache=str(cache), out=str(out), algo="cem", cues=True, split="val", eval_split="val", clip_len=8,
        cem_population=4, cem_clips=3, cem_iterations=2, eval_every=0, eval_videos=1, gamma=0.5, progress=False,
    )  # fmt: skip
    return base.replace(**overrides)


# --- the search on a problem with a known answer ---------------------------------------------------
class _ThresholdVecEnv:
    """A vector env where the best policy is known: reward 1 for the expensive action iff x > 0.6, else for 1.

    Each slot plays a clip of 6 steps whose x values are drawn from the clip's start, with
    observations ``{"x": (N, 1)}`` (only :meth:`play_clips`, which the search uses). The
    linear policy on ``[x, 1]`` reaches the optimum (return 1) exactly when
    ``theta_x * 0.6 + theta_b`` crosses zero between the observed x values.
    """

    class _Core:
        clip_len = 7

        def choose_clip(self, rng: np.random.Generator) -> tuple[str, int]:
            return "v", int(rng.integers(1_000_000))

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.core = self._Core()
        self.action_space = spaces.Discrete(2)

    def play_clips(self, clips: list[tuple[str, int]], act: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([np.random.default_rng(start).random(6) for _, start in clips])
        total = np.zeros(len(clips))
        for t in range(6):
            actions = act({"x": x[:, t : t + 1].astype(np.float32)})
            total += np.where((x[:, t] > 0.6) == (actions == 0), 1.0, 0.0)
        return total, np.full(len(clips), 6)


_X_FEATURES = FeatureSet(
    "x", ("x", "bias"), ("x",), lambda obs: torch.cat([obs["x"], torch.ones_like(obs["x"])], dim=1), (0.0, -1.0)
)


def test_the_search_finds_the_known_threshold_policy() -> None:
    cfg = CEMConfig(population=16, clips=8, iterations=12, init_std=2.0, seed=3)
    venv = _ThresholdVecEnv(cfg.population * cfg.clips)
    start, _ = candidate_returns(venv, _X_FEATURES, np.array([[[0.0, -1.0]]]).repeat(16, 0), [("v", 1)] * 8)
    theta, history = cross_entropy_search(venv, _X_FEATURES, 2, cfg)
    assert start[0] < 0.7  # the initial mean (never expensive) is wrong on the x > 0.6 steps
    assert history.best[-1] == pytest.approx(1.0) and history.elite[-1] > history.elite[0]
    x = np.linspace(0, 1, 101)[:, None].astype(np.float32)
    model = LinearPolicyModel(_X_FEATURES, theta, spaces.Dict({"x": spaces.Box(0, 1, (1,))}), env_id="t", env_kwargs={})
    actions, _ = model.predict({"x": x})
    # the learned boundary lies within the data's resolution of 0.6
    assert (actions[x[:, 0] > 0.7] == 0).all() and (actions[x[:, 0] < 0.5] == 1).all()
    # determinism: the same seed gives the same weights
    again, _ = cross_entropy_search(_ThresholdVecEnv(cfg.population * cfg.clips), _X_FEATURES, 2, cfg)
    np.testing.assert_array_equal(theta, again)


def test_candidates_are_scored_on_their_own_slots(keyframe_cache: Path) -> None:
    """Scoring candidates together in one batch gives each the return it has alone (same clips)."""
    backend = get_backend(INTERLEAVE)
    kwargs = {"split": "val", "clip_len": 8, "cues": True, "speed_reward": [0.0, 0.5], "reward": "matched"}
    features = backend.policy_features(kwargs)
    clips = [("val_0000", 0), ("val_0001", 3)]
    thetas = np.array([[[8.0, 0, 0, 0, 0, -1.0]], [[30.0, 0, 0, 0, 0, -1.0]], [[0, 0, 0, 0, 0, 1.0]]])
    venv = backend.make_vec(str(keyframe_cache), len(thetas) * len(clips), **kwargs)
    together, steps = candidate_returns(venv, features, thetas, clips)
    venv.close()
    assert steps == len(thetas) * len(clips) * 7
    for p, theta in enumerate(thetas):
        venv = backend.make_vec(str(keyframe_cache), len(clips), **kwargs)
        alone, _ = candidate_returns(venv, features, theta[None], clips)
        venv.close()
        assert alone[0] == pytest.approx(together[p], abs=1e-6)
    assert len(set(np.round(together, 6))) == 3  # the three schedules differ


# --- runs: train, load, compare, export -----------------------------------------------------------
@pytest.fixture(scope="module")
def cem_run(keyframe_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    (run,) = train(_config(keyframe_cache, tmp_path_factory.mktemp("cem-runs")), log=lambda _: None)
    return Path(run)


def test_a_run_records_the_search_and_reloads_as_the_same_policy(cem_run: Path, keyframe_cache: Path) -> None:
    from gistgym.agents.algorithms import load_run

    config = json.loads((cem_run / "config.json").read_text())
    assert config["algo"] == "cem" and config["algorithm"] == "CEM" and config["env_kwargs"]["cues"] is True
    assert config["policy_network"]["extractor"] == "interleave-cues" and config["policy_network"]["parameters"] == 6
    assert len(config["cem"]["history"]["best"]) == 2 and config["timesteps"] == 2 * 4 * 3 * 7
    assert (cem_run / "model.json").is_file() and not (cem_run / "model.zip").exists()
    assert (cem_run / "training.png").stat().st_size > 1000
    model = load_run(cem_run, cache=keyframe_cache).model
    assert isinstance(model, LinearPolicyModel)
    np.testing.assert_allclose(model.theta, config["cem"]["theta"])
    # the same configuration trains the same weights
    again = train(_config(keyframe_cache, cem_run.parent / "again"), log=lambda _: None)[0]
    np.testing.assert_array_equal(json.loads((Path(again) / "model.json").read_text())["theta"], model.theta.tolist())


def test_compare_evaluates_a_cem_run_like_any_learned_run(cem_run: Path, keyframe_cache: Path, tmp_path: Path) -> None:
    code = main(["compare", "--cache", str(keyframe_cache), "--split", "val", "--runs", str(cem_run.parent),
                 "--out", str(tmp_path / "cmp"), "--taus", "3", "--no-progress", "--max-videos", "2"])  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert cem_run.name in results["policies"] and results["policies"][cem_run.name]["frames"] > 0


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_gives_the_models_scores_on_environment_observations(
    cem_run: Path, keyframe_cache: Path, tmp_path: Path, fmt: str
) -> None:
    import shutil

    from gistgym.agents.algorithms import load_run
    from gistgym.agents.export import export_run, load_exported_policy
    from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv

    run = tmp_path / cem_run.name  # weights whose score changes sign on these observations
    shutil.copytree(cem_run, run)
    data = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**data, "theta": [[30.0, 300.0, 200.0, 1.0, 400.0, -2.0]]}))
    model = load_run(run).model
    policy = load_exported_policy(export_run(run, tmp_path / "policy.bin", fmt).path, cache=keyframe_cache)
    assert policy.inputs == ("state", "history", "cues")
    venv = InterleaveSB3VecEnv(keyframe_cache, num_envs=16, split="val", clip_len=8, cues=True)
    venv.seed(0)
    obs = venv.reset()
    rng = np.random.default_rng(0)
    chosen = []
    for _ in range(6):
        want, _ = model.predict(obs)
        scores, got = policy.scores_and_actions(obs["state"], obs["history"], obs["cues"])
        np.testing.assert_array_equal(got, want)
        with torch.no_grad():
            q = model.q_net({"cues": torch.as_tensor(obs["cues"])}).numpy()
        np.testing.assert_allclose(scores, q, rtol=1e-5, atol=1e-5)
        chosen += want.tolist()
        obs, *_ = venv.step(rng.integers(0, 2, 16))
    venv.close()
    assert 0 < sum(chosen) < len(chosen)  # both actions occur


def test_keyframe_cem_runs_and_exports(keyframe_cache: Path, tmp_path: Path) -> None:
    from gistgym.agents.algorithms import load_run
    from gistgym.agents.export import export_run
    from gistgym.agents.keyframe_export import load_keyframe_policy

    (run,) = train(_config(keyframe_cache, tmp_path, env=KEYFRAME, cues=False), log=lambda _: None)
    model = load_run(run).model
    assert model.features.name == "keyframe-flow" and model.theta.shape == (1, 7)
    exported = export_run(run, tmp_path / "kf.onnx", "onnx")
    policy = load_keyframe_policy(exported.path)
    rng = np.random.default_rng(0)
    obs = {
        "cues": rng.random((64, 4)).astype(np.float32) * 4,
        "since_key": rng.random((64, 1)).astype(np.float32),
        "history": (rng.random((64, 20)) > 0.5).astype(np.float32),
    }
    _, actions = policy.scores_and_actions(obs["cues"], obs["since_key"], obs["history"])
    np.testing.assert_array_equal(actions, model.predict(obs)[0])


# --- bad input -------------------------------------------------------------------------------------
def test_bad_configurations_name_the_option(keyframe_cache: Path, tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(ConfigError, match="--cues"):
        train(_config(keyframe_cache, tmp_path, cues=False))
    with pytest.raises(ConfigError, match="--cem-elite"):
        train(_config(keyframe_cache, tmp_path, cem_elite=0.0))
    code = main(["train", "--cache", str(keyframe_cache), "--algo", "cem", "--env", "gistgym/Glimpse-v0",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 2 and "discrete actions" in capsys.readouterr().err
    code = main(["train", "--cache", str(keyframe_cache), "--algo", "cem", "--cues", "--cem-population", "1",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 2 and "--cem-population" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", "unreadable"),
        (lambda d: {**d, "format": "other"}, "format"),
        (lambda d: {**d, "format_version": 99}, "version 99"),
        (lambda d: {**d, "theta": [[1.0, 2.0]]}, "theta"),
        (lambda d: {**d, "theta": [[float("nan")] * 6]}, "finite"),
        (lambda d: {**d, "features": "other"}, "feature set"),
    ],
)
def test_a_damaged_model_file_is_a_run_error_naming_it(cem_run: Path, tmp_path: Path, edit: Any, message: str) -> None:
    import shutil

    from gistgym.agents.algorithms import load_run

    run = tmp_path / cem_run.name
    shutil.copytree(cem_run, run)
    data = edit(json.loads((run / "model.json").read_text()))
    (run / "model.json").write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(RunError, match=message) as info:
        load_run(run)
    assert "model.json" in str(info.value)


@pytest.mark.parametrize("env_id", [INTERLEAVE, KEYFRAME])
def test_play_clips_sums_the_rewards_reset_and_step_give(keyframe_cache: Path, env_id: str) -> None:
    backend = get_backend(env_id)
    kwargs = {"split": "val", "clip_len": 6, "reward": "matched", "speed_reward": [0.0, 0.3]}
    clips = [("val_0001", 2), ("val_0000", 0), ("val_0001", 2)]
    policy = lambda obs: np.arange(3) % 2  # noqa: E731 (slot 1 always cheap, the others expensive)
    venv = backend.make_vec(str(keyframe_cache), 3, **kwargs)
    total, steps = venv.play_clips(clips, policy)
    venv.set_options([{"video_id": v, "start": s} for v, s in clips])
    venv.reset()
    want = np.zeros(3)
    for _ in range(5):
        _, rewards, dones, _ = venv.step(policy(None))
        want += rewards
    venv.close()
    assert dones.all() and steps.tolist() == [5, 5, 5]
    np.testing.assert_allclose(total, want, rtol=1e-6)
    assert total[0] == pytest.approx(total[2]) and total[0] != pytest.approx(total[1])
