"""A fourth task family, registered only here, goes through ``train``, ``compare`` and ``export``.

``testfamily/Parity-v0`` is the smallest family the registries accept: over the frames of
a cached video, the expensive action 0 pays 1 on even frames and the cheap action 1 pays 1
on odd ones (the observation says which). It brings its own environment, evaluator,
baselines (``every=K``: action 0 on every K-th frame) and export, and registers one entry
per layer (Gymnasium's registry, :func:`~gistgym.agents.backends.register_backend`); the
CLI's ``train``, ``compare`` and ``export`` then run it without knowing it
(``docs/adding-a-task-family.md`` walks through the same steps).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import Tensor

from gistgym.agents.algorithms import load_run
from gistgym.agents.backends import BACKENDS, EnvBackend, family_backend, get_backend, register_backend
from gistgym.agents.export_common import (
    ExportResult,
    LogitsPolicyModule,
    QValuePolicyModule,
    policy_module,
    read_policy_sidecar_json,
    sidecar_header,
    write_exported_module,
)
from gistgym.agents.policy import Policy
from gistgym.errors import ConfigError
from gistgym.feature_cache import FeatureCache
from gistgym.scripts.cli import main

ENV_ID = "testfamily/Parity-v0"


def _lengths(cache: str | Path, split: str) -> dict[str, int]:
    with FeatureCache(Path(cache)) as fc:
        return {v: fc.entry(v).num_frames for v in fc.video_ids(split)}


def _obs(t: np.ndarray, length: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "parity": (t % 2).astype(np.float32).reshape(-1, 1),
        "progress": (t / np.maximum(length - 1, 1)).astype(np.float32).reshape(-1, 1),
    }


class ParityEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """Clips of ``clip_len`` frames of a random video of ``split``; reward 1 when the action is the frame's parity."""

    observation_space = spaces.Dict(
        {"parity": spaces.Box(0.0, 1.0, (1,), np.float32), "progress": spaces.Box(0.0, 1.0, (1,), np.float32)}
    )
    action_space = spaces.Discrete(2)

    def __init__(self, cache_path: str, split: str = "train", clip_len: int = 6) -> None:
        self.lengths = list(_lengths(cache_path, split).values())
        self.clip_len = clip_len
        self.t = 0
        self.end = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        length = self.lengths[int(self.np_random.integers(len(self.lengths)))]
        self.t = int(self.np_random.integers(max(1, length - self.clip_len)))
        self.end = min(length, self.t + self.clip_len)
        return self._observe(), {}

    def _observe(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in _obs(np.array([self.t]), np.array([self.end])).items()}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        reward = float(int(action) == self.t % 2)
        self.t += 1
        return self._observe(), reward, self.t >= self.end - 1, False, {}


@dataclass
class VideoActions:
    video_id: str
    actions: np.ndarray


@dataclass
class ParityEvaluation:
    name: str
    accuracy: float
    expensive_fraction: float
    mean_reward: float
    videos: list[VideoActions]

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "expensive_fraction": self.expensive_fraction,
                "mean_reward": self.mean_reward}  # fmt: skip


class ParityEvaluator:
    """Every frame of every video of ``split``, all videos in one batch per frame index."""

    def __init__(self, cache: str, split: str, kwargs: Mapping[str, Any], *, max_videos: int | None) -> None:
        lengths = _lengths(cache, split)
        self.video_ids = tuple(lengths)[:max_videos]
        self.lengths = np.array([lengths[v] for v in self.video_ids])
        self.speed = tuple(kwargs.get("speed_reward") or (0.0, 0.0))

    def evaluate(self, policy: Policy, *, seed: int = 0, name: str | None = None) -> ParityEvaluation:
        n = len(self.video_ids)
        policy.reset(n, seed=seed)
        policy.episode_started(np.arange(n))
        actions = np.zeros((n, int(self.lengths.max())), np.int64)
        for t in range(actions.shape[1]):
            actions[:, t] = policy.act(_obs(np.full(n, t), self.lengths), [{} for _ in range(n)])
        per_video = [a[:length] for a, length in zip(actions, self.lengths, strict=True)]
        flat = np.concatenate(per_video)
        parity = np.concatenate([np.arange(length) % 2 for length in self.lengths])
        rewards = (flat == parity) + np.asarray(self.speed, np.float64)[flat]
        return ParityEvaluation(
            name or policy.name,
            accuracy=float((flat == parity).mean()),
            expensive_fraction=float((flat == 0).mean()),
            mean_reward=float(rewards.mean()),
            videos=[VideoActions(v, a) for v, a in zip(self.video_ids, per_video, strict=True)],
        )

    def evaluate_many(self, policies: Sequence[Policy], *, seed: int = 0, progress: bool = False) -> dict[str, Any]:
        return {p.name: self.evaluate(p, seed=seed) for p in policies}

    def close(self) -> None:
        pass


class EveryK:
    """Baseline ``every=K``: action 0 on every K-th frame of a video, 1 elsewhere."""

    def __init__(self, k: int) -> None:
        self.k, self.name = k, f"every={k}"
        self.t = np.zeros(0, np.int64)

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        self.t = np.zeros(num_envs, np.int64)

    def episode_started(self, rows: np.ndarray) -> None:
        self.t[rows] = 0

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        actions = np.where(self.t % self.k == 0, 0, 1).astype(np.int64)
        self.t += 1
        return actions


def parse_every(spec: str, speed: tuple[float, ...]) -> EveryK:
    if not spec.startswith("every=") or not spec[6:].isdigit() or int(spec[6:]) < 1:
        raise ConfigError(f"unknown parity baseline {spec!r}; expected every=K (K >= 1)")
    return EveryK(int(spec[6:]))


class ParityQModule(QValuePolicyModule):
    def forward(self, parity: Tensor, progress: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.scores({"parity": parity, "progress": progress})


class ParityLogitsModule(LogitsPolicyModule):
    def forward(self, parity: Tensor, progress: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.scores({"parity": parity, "progress": progress})


def export_parity_run(run_dir: str | Path, out: str | Path, export_format: str) -> ExportResult:
    run = load_run(run_dir)
    module, meaning = policy_module(run.model, ParityQModule, ParityLogitsModule)
    example = (torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5]]))

    def sidecar(digest: str) -> dict[str, Any]:
        head = sidecar_header(
            export_format, digest, algorithm=run.config["algorithm"], source=str(run_dir), env_id=ENV_ID,
            env_kwargs=run.config["env_kwargs"],
        )  # fmt: skip
        return {**head, "scores": meaning}

    return write_exported_module(
        module, example, out, export_format, input_names=("parity", "progress"), output_names=("scores", "action"),
        sidecar_for=sidecar,
    )  # fmt: skip


PARITY = EnvBackend(
    env_id=ENV_ID,
    fraction="expensive_fraction",
    fraction_label="expensive fraction",
    make_vec=lambda cache, num_envs, **kw: DummyVecEnv([lambda: ParityEnv(cache, **kw)] * num_envs),
    make_evaluator=ParityEvaluator,
    eval_arguments=("speed_reward",),
    extractors={"mlp": lambda algo: {"net_arch": [16]}},
    ends=(),
    references={"fixed": "every="},
    run_env_kwargs=lambda config: {"split": config.split, "clip_len": config.clip_len},
    compare_settings=lambda config: {"speed_reward": (0.0, 0.0)},
    baselines=lambda config, speed: [EveryK(k) for k in (1, 2, 4)],
    matched_random=False,
    score="accuracy",
    score_label="accuracy",
    algorithms=("dqn", "ppo"),
    is_baseline=lambda spec: spec.startswith("every="),
    parse_baseline=parse_every,
    export_run=export_parity_run,
)


@pytest.fixture
def parity_family() -> Iterator[None]:
    gym.register(id=ENV_ID, entry_point=ParityEnv, kwargs={"split": "train", "clip_len": 6})
    register_backend(PARITY)
    try:
        yield
    finally:
        BACKENDS.pop(ENV_ID, None)
        gym.registry.pop(ENV_ID, None)


def test_a_fourth_family_trains_compares_and_exports_through_the_cli(
    parity_family: None, tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    train = ["train", "--cache", str(tiny_cache), "--env", ENV_ID, "--algo", "dqn", "--clip-len", "6",
             "--num-envs", "2", "--total-timesteps", "400", "--learning-starts", "64", "--batch-size", "16",
             "--buffer-size", "1000", "--eval-every", "0", "--eval-videos", "2", "--checkpoint-every", "0",
             "--gamma-sweep", "--gammas", "0", "0.5", "--out", str(runs), "--no-progress"]  # fmt: skip
    assert main(train) == 0
    names = sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == ["dqn-g0", "dqn-g0.5"]
    config = json.loads((runs / "dqn-g0" / "config.json").read_text())
    assert config["env_id"] == ENV_ID and config["env_kwargs"] == {"split": "train", "clip_len": 6}
    history = json.loads((runs / "dqn-g0" / "eval.json").read_text())["history"]
    assert set(history[-1]) >= {"accuracy", "expensive_fraction", "mean_reward"}

    cmp = tmp_path / "cmp"
    argv = ["compare", "--cache", str(tiny_cache), "--env", ENV_ID, "--runs", str(runs), "--policies", "every=3",
            "--out", str(cmp), "--no-progress", "--json"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"every=1", "every=2", "every=3", "every=4", "dqn-g0", "dqn-g0.5"} <= set(printed)
    # every=2 runs action 0 on exactly the even frames: the right action everywhere, by construction
    assert printed["every=2"]["accuracy"] == 1.0 and printed["every=1"]["expensive_fraction"] == 1.0
    assert printed["dqn-g0"]["adaptive"] and not printed["every=2"]["adaptive"]
    assert "fixed" in printed["verdict"]
    for name in ("table.md", "results.json", "pareto.png", "timeline.png"):
        assert (cmp / name).stat().st_size > 0

    out = tmp_path / "parity.onnx"
    assert main(["export", "--run", str(runs / "dqn-g0"), "--format", "onnx", "--out", str(out)]) == 0
    _, meta = read_policy_sidecar_json(out)
    assert meta["env"]["id"] == ENV_ID and meta["scores"] == "q_values"
    import onnxruntime as ort

    parity = np.array([[0.0], [1.0], [0.0]], np.float32)
    progress = np.array([[0.0], [0.3], [0.9]], np.float32)
    _, action = ort.InferenceSession(str(out)).run(None, {"parity": parity, "progress": progress})
    model = load_run(runs / "dqn-g0").model
    expected, _ = model.predict({"parity": parity, "progress": progress}, deterministic=True)
    np.testing.assert_array_equal(action, expected)


def test_registries_refuse_what_they_cannot_dispatch(parity_family: None, tiny_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="registered twice"):
        register_backend(PARITY)
    assert family_backend("testfamily/Parity-v3") is PARITY and family_backend("testfamily/Other-v0") is None
    assert get_backend(ENV_ID).baseline("every=5", ()).k == 5
    with pytest.raises(ConfigError, match=r"does not fit testfamily/Parity-v0: use --algo dqn or --algo ppo"):
        get_backend(ENV_ID).check_algorithm("cem")
    with pytest.raises(ConfigError, match="--algo adaframe trains on gistgym/Glimpse-v0"):
        get_backend(ENV_ID).check_algorithm("adaframe")
    # the CLI says it in one line, exit 2
    argv = ["train", "--cache", str(tiny_cache), "--env", ENV_ID, "--algo", "cem", "--out", str(tmp_path)]
    assert main(argv) == 2


def test_detect_routes_a_policy_to_its_familys_runtime(tmp_path: Path) -> None:
    from gistgym.scripts.cli import build_parser
    from gistgym.scripts.runtime_commands import DETECT_RUNTIMES, detect_runtime, register_detect_runtime

    build_parser()  # imports the families' command modules, which register their runtimes
    assert {"interleave", "keyframe", "glimpse"} <= set(DETECT_RUNTIMES)
    assert detect_runtime("key=3").name == "keyframe" and detect_runtime("every-frame").name == "keyframe"
    assert detect_runtime("fixed:4").name == "interleave" and detect_runtime("heavy").name == "interleave"

    def exported(name: str, env_id: str) -> str:
        path = tmp_path / name
        path.write_bytes(b"x")
        (tmp_path / f"{name}.json").write_text(json.dumps({"env": {"id": env_id}}))
        return str(path)

    # by the family the sidecar names, at any version (that runtime reports the version mismatch)
    assert detect_runtime(exported("k.onnx", "gistgym/Keyframe-v7")).name == "keyframe"
    assert detect_runtime(exported("g.onnx", "gistgym/Glimpse-v0")).name == "glimpse"
    assert detect_runtime(exported("i.onnx", "gistgym/Interleave-v0")).name == "interleave"
    # no sidecar, or an unknown family: the default runtime, whose loader reports the bad file
    assert detect_runtime(str(tmp_path / "missing.onnx")).name == "interleave"
    assert detect_runtime(exported("u.onnx", "other/Thing-v0")).name == "interleave"
    keyframe = DETECT_RUNTIMES["keyframe"]
    register_detect_runtime(keyframe)  # the same object again (a module imported twice): a no-op
    with pytest.raises(ConfigError, match="registered twice"):
        register_detect_runtime(dataclasses.replace(keyframe, takes_name=lambda spec: False))
    with pytest.raises(ConfigError, match="a default runtime is registered already"):
        register_detect_runtime(dataclasses.replace(keyframe, name="another", default=True))
    assert "another" not in DETECT_RUNTIMES
