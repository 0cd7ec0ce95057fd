"""Exported Keyframe-v0 key schedulers and the DFF runtime: parity with SB3 and the environment, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gistgym.agents.export import export_run, load_exported_policy
from gistgym.agents.export_common import sidecar_path
from gistgym.agents.keyframe_eval import KeyframeEvaluator
from gistgym.agents.keyframe_export import INPUT_NAMES, load_keyframe_policy
from gistgym.errors import ConfigError, PolicyMismatchError
from gistgym.runtime.keyframe import KeyframeDetectArgs, KeyframeFrameResult, detect_keyframe, is_keyframe_spec
from gistgym.scripts.cli import main
from gistgym.videos.dataset import load_dataset

PARITY_OBSERVATIONS = 10_240


@pytest.fixture(scope="module")
def exported(keyframe_run: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("kf-export")
    return {
        fmt: export_run(keyframe_run[1], folder / f"policy.{ext}", fmt).path
        for fmt, ext in (("torchscript", "pt"), ("onnx", "onnx"))
    }


def _observations(cache: Path) -> dict[str, np.ndarray]:
    from gistgym.envs.keyframe_vector import KeyframeVectorEnv

    env = KeyframeVectorEnv(cache_path=str(cache), num_envs=64, split="val", clip_len=12)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in INPUT_NAMES}
    while sum(len(x) for x in rows["cues"]) < PARITY_OBSERVATIONS:
        for k in INPUT_NAMES:
            rows[k].append(np.asarray(obs[k]))
        obs, *_ = env.step(rng.integers(0, 2, 64))
    env.close()
    return {k: np.concatenate(v) for k, v in rows.items()}


def test_exported_scheduler_matches_the_python_network_on_10k_env_observations(
    keyframe_run: tuple[Any, Path], exported: dict[str, Path], keyframe_cache: Path
) -> None:
    from gistgym.agents.algorithms import load_run

    obs = _observations(keyframe_cache)
    assert len(obs["cues"]) >= PARITY_OBSERVATIONS and len(np.unique(obs["cues"][:, 0])) > 100
    model = load_run(keyframe_run[1]).model
    with torch.no_grad():
        q = model.q_net({k: torch.as_tensor(v).float() for k, v in obs.items()}).numpy()
    for path in exported.values():
        policy = load_keyframe_policy(path)
        scores, actions = policy.scores_and_actions(obs["cues"], obs["since_key"], obs["history"])
        np.testing.assert_allclose(scores, q, atol=1e-5)
        np.testing.assert_array_equal(actions, q.argmax(1))
        np.testing.assert_array_equal(policy.act(obs, [{}] * len(actions)), actions)


def test_sidecar_records_the_keyframe_signature_and_cache(
    keyframe_run: tuple[Any, Path], exported: dict[str, Path]
) -> None:
    run = json.loads((keyframe_run[1] / "config.json").read_text())
    for path in exported.values():
        meta = json.loads(sidecar_path(path).read_text())
        assert meta["env"]["id"] == "gistgym/Keyframe-v0" and meta["algorithm"] == "DoubleDQN"
        assert meta["cache"]["dff_sha256"] == run["cache_identity"]["model_weights"]["dff"]
        assert meta["inputs"] == ["cues", "since_key", "history"] and meta["action_meanings"] == [
            "keyframe",
            "propagate",
        ]
        assert meta["max_distance"] == 20 and len(meta["cue_names"]) == 4
        assert meta["observation_layout"]["history"]["shape"] == ["B", 20]


def _runtime(video: Path, spec: str, out: Path) -> tuple[dict[str, Any], list[KeyframeFrameResult]]:
    results: list[KeyframeFrameResult] = []
    args = KeyframeDetectArgs(
        video=str(video), policy=spec, out=str(out), annotate="none", progress=False, overwrite=True
    )
    return detect_keyframe(args, on_frame=results.append), results


def test_runtime_reproduces_the_environments_schedule_and_the_cached_detections(
    exported: dict[str, Path], keyframe_cache: Path, tiny_bench: Path, tmp_path: Path
) -> None:
    from gistgym.agents.keyframe_baselines import FlowThresholdPolicy, parse_keyframe_baseline
    from gistgym.feature_cache import FeatureCache

    evaluator = KeyframeEvaluator(keyframe_cache, "val")
    records = {r.video_id: r for r in load_dataset(tiny_bench).split("val")}
    # a threshold inside the cached mean-flow cues' range (distances 1-3), so the flow rule really chooses
    with FeatureCache(keyframe_cache) as cache:
        tables = [cache.load_episode(v, sections=("keyframe",)).sections["keyframe"] for v in records]
        cues = np.concatenate([np.asarray(t["cues"])[3:, 1:4, 0].ravel() for t in tables])
    threshold = float(np.round(np.median(cues), 2))
    specs: dict[str, Any] = {
        str(exported["onnx"]): load_keyframe_policy(exported["onnx"]),
        "key=3": None,
        f"flow-threshold@{threshold:g}": FlowThresholdPolicy(threshold),
    }
    chose = False
    for spec, policy in specs.items():
        policy = policy or parse_keyframe_baseline(spec, (0.0, 0.3))
        for rollout in evaluator.rollout(policy):
            summary, results = _runtime(records[rollout.video_id].path, spec, tmp_path / "out")
            assert [0 if r.keyframe else 1 for r in results] == rollout.actions.tolist(), spec
            assert [r.distance for r in results] == rollout.distances.tolist()
            assert summary["key_fraction"] == pytest.approx(float(np.mean(rollout.actions == 0)))
            chose |= any(r.keyframe and not r.forced for r in results) and any(not r.keyframe for r in results)
            for got, want in zip(results, evaluator.detections(rollout), strict=True):
                np.testing.assert_array_equal(got.detections.labels, want.labels)
                np.testing.assert_allclose(got.detections.boxes, want.boxes, atol=1e-3)
                np.testing.assert_allclose(got.detections.scores, want.scores, atol=1e-4)
    assert chose  # at least one scheduler made unforced keyframes and propagated frames


def test_detect_command_routes_key_schedulers_to_dff(
    tiny_bench: Path, exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = load_dataset(tiny_bench).split("val")[0].path
    assert is_keyframe_spec("key=3") and is_keyframe_spec(str(exported["onnx"]))
    assert not is_keyframe_spec("fixed:3") and not is_keyframe_spec("heavy")
    out = tmp_path / "kf"
    assert main(["detect", str(video), "--policy", "key=3", "--out", str(out), "--json", "--annotate", "gif"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runtime"] == "keyframe" and summary["key_fraction"] == pytest.approx(8 / 24)
    assert sorted(p.name for p in out.iterdir()) == ["annotated.gif", "detections.jsonl", "summary.json"]
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    assert [x["distance"] for x in lines[:4]] == [0, 1, 2, 0] and lines[3]["keyframe"] is True
    # interleave-only options are refused with one line and exit 2; so is the other way round
    assert main(["detect", str(video), "--policy", "key=3", "--async", "--out", str(tmp_path / "x")]) == 2
    assert "--async" in capsys.readouterr().err
    assert main(["detect", str(video), "--policy", "fixed:3", "--max-distance", "5", "--out", str(tmp_path / "y")]) == 2
    assert "--max-distance" in capsys.readouterr().err
    assert main(["detect", str(video), "--policy", "key=3", "--mu", "0.3", "--out", str(tmp_path / "z")]) == 2
    assert "--mu does not apply" in capsys.readouterr().err  # a glimpse option is not silently ignored either
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_mismatched_or_foreign_schedulers_are_typed_errors(
    exported: dict[str, Path], tiny_bench: Path, tmp_path: Path
) -> None:
    path = tmp_path / "p.onnx"
    shutil.copy(exported["onnx"], path)
    meta = json.loads(sidecar_path(exported["onnx"]).read_text())
    meta["cache"]["dff_sha256"] = "0" * 64
    sidecar_path(path).write_text(json.dumps(meta))
    video = load_dataset(tiny_bench).split("val")[0].path
    with pytest.raises(PolicyMismatchError, match="dff_sha256") as err:
        _runtime(video, str(path), tmp_path / "out")
    assert err.value.field == "cache.dff_sha256"
    assert not (tmp_path / "out").exists()
    with pytest.raises(PolicyMismatchError, match="Keyframe-v0"):
        load_exported_policy(exported["onnx"])  # an interleave loader refuses a key scheduler
    with pytest.raises(ConfigError, match="oracle"):
        from gistgym.runtime.keyframe import keyframe_scheduler

        keyframe_scheduler("oracle", "")


def test_frozen_dff_networks_match_the_eager_ones(tiny_bench: Path, tmp_path: Path) -> None:
    from gistgym.agents.keyframe_baselines import FlowThresholdPolicy
    from gistgym.backbones.dff import load_dff
    from gistgym.runtime.frozen import frozen_dff
    from gistgym.runtime.keyframe import run_keyframe

    model = load_dff()[0]
    assert frozen_dff(model) is frozen_dff(model)  # built once per model
    frames = load_dataset(tiny_bench).split("val")[0].read_frames()
    runs = [
        list(run_keyframe(model, iter(frames), FlowThresholdPolicy(1.0), max_distance=6, history_len=20, frozen=f))
        for f in (True, False)
    ]
    assert [r.keyframe for r in runs[0]] == [r.keyframe for r in runs[1]]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a.detections.labels, b.detections.labels)
        np.testing.assert_allclose(a.detections.boxes, b.detections.boxes, atol=1e-3)
        np.testing.assert_allclose(a.detections.scores, b.detections.scores, atol=1e-4)
        if a.cues is not None:
            assert b.cues is not None
            np.testing.assert_allclose(a.cues, b.cues, atol=1e-4)
    with pytest.raises(ConfigError, match="eval"):
        frozen_dff(load_dff()[0].train())


@pytest.mark.parametrize("content", [b"", "truncated"])
def test_bad_video_is_one_line_exit_2_and_writes_nothing(
    content: bytes | str, tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = load_dataset(tiny_bench).split("val")[0].path
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(video.read_bytes()[:2000] if content == "truncated" else content)
    out = tmp_path / "out"
    assert main(["detect", str(bad), "--policy", "key=3", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
