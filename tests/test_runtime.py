"""The online runtime: parity with the environment and the evaluation, async semantics, outputs, bad input."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gistgym.agents.baselines import FixedTauPolicy
from gistgym.backbones.weights import load_detector
from gistgym.errors import OutputDirError, PolicyMismatchError, VideoError
from gistgym.runtime.detect import DetectArgs, detect_video
from gistgym.runtime.online import AsyncStats, FrameResult, OnlineMemory, run_async, run_sync
from gistgym.scripts.cli import main
from gistgym.videos.dataset import load_dataset, write_video_file

OBS_TOLERANCE = 2e-3
"""The environment steps over float16 cached features, the runtime computes float32 ones:
observations (memory states in [0, ~6]) agree to ~4e-4 on the benchmark, asserted to 2e-3."""
CUE_TOLERANCE = 5e-3
"""The cues are relative changes of those features (float16 in the cache: relative error ~1e-3)."""


@pytest.fixture(scope="module")
def weights(tiny_cache: Path) -> Path:
    return tiny_cache.parent / "detector.pt"


@pytest.fixture(scope="module")
def model(weights: Path) -> Any:
    return load_detector(weights)[0]


@pytest.fixture(scope="module")
def record(tiny_bench: Path) -> Any:
    return load_dataset(tiny_bench).split("val")[0]


def _detect(video: Path | str, out: Path, weights: Path, policy: str = "fixed:3", **kw: Any) -> tuple[dict, list]:
    results: list[FrameResult] = []
    args = DetectArgs(
        video=str(video), policy=policy, out=str(out), weights=str(weights), annotate="none", progress=False, **kw
    )
    summary = detect_video(args, on_frame=results.append)
    return summary, results


# --- parity with the evaluation and the environment ------------------------------------------
def test_fixed_tau_reproduces_the_evaluation_schedule_and_detections(
    model: Any, record: Any, weights: Path, tmp_path: Path
) -> None:
    from gistgym.backbones.evaluation import build_schedule, extract_all, run_schedule

    summary, results = _detect(record.path, tmp_path / "out", weights, "fixed:3")
    T = record.num_frames
    schedule = build_schedule("tau=3", T, model.config.skip_light_updates, len(model.extractors))
    expected = run_schedule(model, extract_all(model, [record]), schedule)[0]
    assert [r.heavy for r in results] == list(schedule.actions == 0)
    assert summary["heavy_fraction"] == pytest.approx(float(np.mean(schedule.actions == 0)))
    lines = [json.loads(x) for x in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    assert len(lines) == T
    for r, want, line in zip(results, expected, lines, strict=True):
        # same detections up to batch-size float rounding (the evaluation runs all frames at once)
        assert len(r.detections.scores) == len(want.scores)
        np.testing.assert_array_equal(r.detections.labels, want.labels)
        np.testing.assert_allclose(r.detections.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(r.detections.scores, want.scores, atol=1e-4)
        assert line["extractor"] == ("heavy" if r.heavy else "light")
        np.testing.assert_allclose(np.array(line["boxes"]).reshape(-1, 4), want.boxes, atol=0.01)


def _env_rollout(tiny_cache: Path, video_id: str, T: int, policy: Any, cues: bool = False) -> tuple[list, list]:
    import gymnasium as gym

    import gistgym.envs  # noqa: F401

    env = gym.make("gistgym/Interleave-v0", cache_path=str(tiny_cache), split="val", clip_len=T, cues=cues)
    obs, info = env.reset(options={"video_id": video_id, "start": 0})
    policy.reset(1)
    observations, actions = [obs], [0]
    for _ in range(T - 1):
        a = int(policy.act({k: np.asarray(v)[None] for k, v in obs.items()}, [info])[0])
        obs, _, _, _, info = env.step(a)
        observations.append(obs)
        actions.append(info["action"])
    env.close()
    return observations, actions


def _runtime_rollout(model: Any, record: Any, policy: Any, cues: bool = False) -> list[FrameResult]:
    memory = OnlineMemory(model, (0, 1), cues=cues)
    return list(run_sync(memory, iter(record.read_frames()), policy, action_names=("heavy", "light")))


def _assert_same_observations(results: list[FrameResult], observations: list, actions: list) -> None:
    assert [0 if r.heavy else 1 for r in results] == actions
    for r, obs in zip(results, observations, strict=True):
        np.testing.assert_array_equal(r.observation["history"][0], obs["history"])
        np.testing.assert_allclose(r.observation["state"][0], obs["state"], rtol=0, atol=OBS_TOLERANCE)
        assert ("cues" in r.observation) == ("cues" in obs)
        if "cues" in obs:
            np.testing.assert_allclose(r.observation["cues"][0], obs["cues"], rtol=0, atol=CUE_TOLERANCE)


def test_frozen_modules_match_the_eager_detector_frame_by_frame(model: Any, record: Any) -> None:
    from gistgym.runtime.frozen import PARITY_ATOL, check_frozen_parity, frozen_modules

    frames = record.read_frames()
    images = model.preprocess(torch.from_numpy(frames[:12]))
    assert check_frozen_parity(model, images) <= PARITY_ATOL
    assert frozen_modules(model) is frozen_modules(model)  # built once per detector
    eager = list(
        run_sync(
            OnlineMemory(model, (0, 1), frozen=False), iter(frames), FixedTauPolicy(3), action_names=("heavy", "light")
        )
    )
    frozen = list(
        run_sync(OnlineMemory(model, (0, 1)), iter(frames), FixedTauPolicy(3), action_names=("heavy", "light"))
    )
    assert [r.heavy for r in frozen] == [r.heavy for r in eager]
    for f, e in zip(frozen, eager, strict=True):
        np.testing.assert_array_equal(f.detections.labels, e.detections.labels)
        np.testing.assert_allclose(f.detections.boxes, e.detections.boxes, atol=1e-3)
        np.testing.assert_allclose(f.detections.scores, e.detections.scores, atol=1e-4)
        np.testing.assert_allclose(f.observation["state"], e.observation["state"], atol=1e-4)


def test_frozen_modules_refuse_a_detector_in_training_mode(weights: Path) -> None:
    from gistgym.errors import ConfigError
    from gistgym.runtime.frozen import frozen_modules

    detector = load_detector(weights)[0].train()
    with pytest.raises(ConfigError, match="eval"):
        frozen_modules(detector)


def test_sync_runtime_builds_the_environments_observation_from_the_live_memory(
    model: Any, record: Any, tiny_cache: Path
) -> None:
    observations, actions = _env_rollout(tiny_cache, record.video_id, record.num_frames, FixedTauPolicy(3))
    results = _runtime_rollout(model, record, FixedTauPolicy(3))
    _assert_same_observations(results, observations, actions)
    # the observation is not trivially equal to something else: differences are non-zero on light frames
    assert np.abs(results[2].observation["state"][0, 128:]).max() > 1e-3


def test_exported_policy_gives_the_environments_schedule(
    model: Any, record: Any, tiny_cache: Path, tmp_path: Path, weights: Path
) -> None:
    """A learned-style policy (exported, ONNX) picks the same extractors online as in the environment."""
    policy_file = _export_balanced_dqn(tiny_cache, tmp_path / "p.onnx")
    from gistgym.agents.export import load_exported_policy

    policy = load_exported_policy(policy_file, cache=tiny_cache)
    observations, actions = _env_rollout(tiny_cache, record.video_id, record.num_frames, policy)
    assert 0 < sum(actions[1:]) < len(actions) - 1  # it mixes heavy and light
    results = _runtime_rollout(model, record, policy)
    _assert_same_observations(results, observations, actions)
    # and through the command line, with the policy file
    summary, cli_results = _detect(record.path, tmp_path / "out", weights, str(policy_file))
    assert [0 if r.heavy else 1 for r in cli_results] == actions
    assert summary["policy"] == str(policy_file)


def test_sync_runtime_computes_the_environments_cues(model: Any, record: Any, tiny_cache: Path) -> None:
    observations, actions = _env_rollout(tiny_cache, record.video_id, record.num_frames, FixedTauPolicy(3), cues=True)
    results = _runtime_rollout(model, record, FixedTauPolicy(3), cues=True)
    _assert_same_observations(results, observations, actions)
    cues = np.concatenate([r.observation["cues"] for r in results])
    heavy = np.array([r.heavy for r in results])
    np.testing.assert_array_equal(cues[heavy, :2], 0.0)  # a heavy frame restarts the count and the reference
    assert (cues[~heavy, :2] > 0).all() and (cues[:, 3] > 0).all()


def test_exported_cue_policy_gives_the_environments_schedule(
    model: Any, record: Any, tiny_cache: Path, tmp_path: Path, weights: Path
) -> None:
    """A policy reading the runtime cues (exported, TorchScript) schedules the same online as in the environment."""
    from gistgym.agents.policy_nets import CueExtractor

    policy_file = _export_balanced_dqn(
        tiny_cache, tmp_path / "p.pt", cues=True, export_format="torchscript", extractor=CueExtractor
    )
    from gistgym.agents.export import load_exported_policy

    policy = load_exported_policy(policy_file, cache=tiny_cache)
    assert policy.inputs == ("state", "history", "cues")
    observations, actions = _env_rollout(tiny_cache, record.video_id, record.num_frames, policy, cues=True)
    assert 0 < sum(actions[1:]) < len(actions) - 1
    results = _runtime_rollout(model, record, policy, cues=True)
    _assert_same_observations(results, observations, actions)
    _, cli_results = _detect(record.path, tmp_path / "out", weights, str(policy_file))
    assert [0 if r.heavy else 1 for r in cli_results] == actions
    assert "cues" in cli_results[0].observation


def test_exported_linear_cem_scheduler_gives_the_environments_schedule(
    model: Any, record: Any, tiny_cache: Path, tmp_path: Path, weights: Path
) -> None:
    """``--algo cem``'s linear scheduler, exported to ONNX, schedules online as in the environment and the CLI."""
    from gistgym.agents.backends import get_backend
    from gistgym.agents.cem import LinearPolicyModel
    from gistgym.agents.export import context_from_cache, export_policy, load_exported_policy
    from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv

    kwargs = {"clip_len": 12, "cues": True}
    features = get_backend("gistgym/Interleave-v0").policy_features(kwargs)
    space = InterleaveSB3VecEnv(tiny_cache, num_envs=1, split="val", clip_len=12, cues=True).observation_space
    # heavy once 3 frames passed since the last heavy one (3/64 * 40 - 1.6 >= 0 ... 2/64 * 40 < 1.6), or on a jump
    linear = LinearPolicyModel(features, np.array([[40.0, 0.0, 50.0, 0.0, 0.0, -1.6]]), space,
                               env_id="gistgym/Interleave-v0", env_kwargs=kwargs)  # fmt: skip
    ctx = context_from_cache(tiny_cache, kwargs, algorithm="CEM")
    policy_file = export_policy(linear, tmp_path / "cem.onnx", "onnx", ctx).path
    policy = load_exported_policy(policy_file, cache=tiny_cache)
    observations, actions = _env_rollout(tiny_cache, record.video_id, record.num_frames, policy, cues=True)
    assert 0 < sum(actions[1:]) < len(actions) - 1
    results = _runtime_rollout(model, record, policy, cues=True)
    _assert_same_observations(results, observations, actions)
    _, cli_results = _detect(record.path, tmp_path / "out", weights, str(policy_file))
    assert [0 if r.heavy else 1 for r in cli_results] == actions


def test_cue_rule_gives_the_environments_schedule_online_and_from_the_cli(
    model: Any, record: Any, tiny_cache: Path, tmp_path: Path, weights: Path
) -> None:
    """The cue rule reads only runtime cues: ``detect --policy cue-rule:...`` schedules as the environment does."""
    from gistgym.agents.baselines import CueRulePolicy

    # The tiny videos barely move (light_change ~2e-4, at the float16 cache's resolution), so the thresholds
    # sit where no rounding can flip them: light_change is exactly 0 on a heavy frame (idle period 6) and
    # above 0 on a light one (active period 2); the branches themselves are tested by hand in test_agents.
    spec = "cue-rule:active=2,idle=6,change=0,cut=100"
    rule = CueRulePolicy(2, 6, 0.0, 100.0)
    assert rule.name == spec
    observations, actions = _env_rollout(tiny_cache, record.video_id, record.num_frames, rule, cues=True)
    assert actions == [t % 2 for t in range(record.num_frames)]
    results = _runtime_rollout(model, record, rule, cues=True)
    _assert_same_observations(results, observations, actions)
    summary, cli_results = _detect(record.path, tmp_path / "out", weights, spec)
    assert [0 if r.heavy else 1 for r in cli_results] == actions
    assert summary["policy"] == spec and "cues" in cli_results[0].observation


def test_a_bad_cue_rule_is_one_line(
    weights: Path, record: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["detect", str(record.path), "--weights", str(weights), "--out", str(tmp_path / "o")]
    assert main([*argv, "--policy", "cue-rule:active=2,idle=6,change=0.3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks cut" in err
    assert not (tmp_path / "o").exists()


def _export_balanced_dqn(
    tiny_cache: Path, out: Path, *, cues: bool = False, export_format: str = "onnx", extractor: Any = None
) -> Path:
    from stable_baselines3 import DQN

    from gistgym.agents.export import context_from_cache, export_policy
    from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv

    venv = InterleaveSB3VecEnv(tiny_cache, num_envs=8, split="val", clip_len=12, cues=cues)
    torch.manual_seed(1)
    policy_kwargs: dict[str, Any] = {"net_arch": [32]}
    if extractor is not None:
        policy_kwargs.update(features_extractor_class=extractor, normalize_images=False)
    model = DQN("MultiInputPolicy", venv, policy_kwargs=policy_kwargs, buffer_size=10, seed=1, device="cpu")
    venv.seed(0)
    obs = venv.reset()
    states = [obs]
    rng = np.random.default_rng(0)
    for _ in range(11):
        obs, *_ = venv.step(rng.integers(0, 2, 8))
        states.append(obs)
    batch = {k: np.concatenate([s[k] for s in states]) for k in states[0]}
    with torch.no_grad():
        q = model.policy.q_net(model.policy.obs_to_tensor(batch)[0]).numpy()
        gaps = np.unique(q[:, 0] - q[:, 1])
        head = [m for m in model.policy.q_net.q_net.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.bias[1] += float((gaps[len(gaps) // 2 - 1] + gaps[len(gaps) // 2]) / 2)
    ctx = context_from_cache(tiny_cache, {"clip_len": 12, "cues": cues}, algorithm="DQN")
    return export_policy(model, out, export_format, ctx).path


# --- asynchronous mode -----------------------------------------------------------------------
def _hand_async(model: Any, frames: np.ndarray, launches: list[int], fuses: dict[int, int]) -> list[Any]:
    """Detections of the async mode computed by hand: light on every frame, heavy of frame u fused at fuses[u]."""
    g = model.grid
    lstm = model.memory.initial_state(1, g, g)
    out = []
    with torch.inference_mode():
        for t in range(len(frames)):
            images = model.preprocess(torch.from_numpy(frames[t : t + 1]))
            for u, at in fuses.items():
                if at == t:
                    heavy = model.extract(0, model.preprocess(torch.from_numpy(frames[u : u + 1])))[0]
                    _, lstm = model.memory(heavy, lstm)
            m, _ = model.memory(model.extract(1, images)[0], lstm)  # light: read, never write
            out.append(model.detect(*model.head(m))[0])
    return out


@pytest.mark.parametrize(
    ("delay", "launches", "fuses"),
    [
        # tau = 3, heavy takes 2 frames: launched on 0, 4, 8, ... and fused 2 frames later
        (2, [0, 4, 8, 12, 16, 20], {0: 2, 4: 6, 8: 10, 12: 14, 16: 18, 20: 22}),
        # heavy takes 6 frames > tau + 1: the request after frame 3 waits for the job in flight,
        # which is fused at frame 6, where the next job starts at once
        (6, [0, 6, 12, 18], {0: 6, 6: 12, 12: 18}),
    ],
)
def test_async_mode_with_a_deterministic_delay(
    model: Any, record: Any, delay: int, launches: list[int], fuses: dict[int, int]
) -> None:
    frames = record.read_frames()
    stats = AsyncStats()
    memory = OnlineMemory(model, (0, 1))
    results = list(
        run_async(
            memory, iter(frames), FixedTauPolicy(3), action_names=("heavy", "light"),
            heavy_delay_frames=delay, stats=stats,
        )
    )  # fmt: skip
    assert [r.index for r in results if r.heavy] == launches
    assert {r.fused_from: r.index for r in results if r.fused_from is not None} == fuses
    assert all(r.extractor == "light" for r in results)  # light produces every frame's detections
    assert stats.launched == len(launches) and stats.fused == len(fuses)
    assert stats.dropped_at_end == len(launches) - len(fuses)
    expected = _hand_async(model, frames, launches, fuses)
    for r, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(r.detections.labels, want.labels)
        np.testing.assert_allclose(r.detections.boxes, want.boxes, atol=1e-5)
        np.testing.assert_allclose(r.detections.scores, want.scores, atol=1e-6)
    # the history records the launch frames as heavy, as the policy saw them
    last = results[-1].observation["history"][0]
    ago = sorted(len(frames) - 1 - u for u in launches)
    assert [k for k in range(len(last)) if last[k] == 0] == [k for k in ago if k < len(last)]


def test_async_mode_fuses_a_heavy_job_when_it_finishes(model: Any, record: Any) -> None:
    """Real threads: the heavy job is held until frame 5 is out, so it can only be fused afterwards."""
    frames = record.read_frames()
    gate, finished = threading.Event(), threading.Event()
    calls: list[str] = []

    def held_heavy(images: torch.Tensor) -> torch.Tensor:
        calls.append(threading.current_thread().name)
        assert gate.wait(timeout=60)
        feats = model.extract(0, images)[0]
        finished.set()
        return feats

    stats = AsyncStats()
    results = []
    runner = run_async(
        OnlineMemory(model, (0, 1)), iter(frames), FixedTauPolicy(3), action_names=("heavy", "light"),
        stats=stats, heavy_extract=held_heavy,
    )  # fmt: skip
    for r in runner:
        results.append(r)
        if r.index == 5:
            gate.set()
            assert finished.wait(timeout=60)
    fused = [r.index for r in results if r.fused_from == 0]
    assert len(fused) == 1 and fused[0] >= 6
    assert all(r.fused_from is None for r in results[: fused[0]])
    # the request the policy made after frame 3 waited for the busy worker and starts on the fuse frame
    assert [r.index for r in results if r.heavy][:2] == [0, fused[0]]
    assert all(name.startswith("gistgym-heavy") for name in calls)
    assert all(r.extractor == "light" for r in results)
    assert stats.fused + stats.dropped_at_end == stats.launched


# --- outputs ---------------------------------------------------------------------------------
def test_detect_command_writes_jsonl_annotated_video_and_summary(
    record: Any, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "detect"
    code = main(
        ["detect", str(record.path), "--policy", "fixed:3", "--weights", str(weights), "--out", str(out),
         "--annotate", "gif", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "p95" in printed and str(out) in printed
    assert sorted(p.name for p in out.iterdir()) == ["annotated.gif", "detections.jsonl", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == record.num_frames
    assert summary["modules"] == "onnxruntime"  # the default engine
    assert summary["heavy_fraction"] == pytest.approx(6 / 24)
    assert summary["detections_from"] == {"heavy": 6, "light": 18}
    for key in ("fps", "p50_ms", "p95_ms", "max_ms"):
        assert summary[key] > 0
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["max_ms"]
    lines = (out / "detections.jsonl").read_text().splitlines()
    assert [json.loads(x)["frame"] for x in lines] == list(range(record.num_frames))
    from PIL import Image

    with Image.open(out / "annotated.gif") as gif:
        assert gif.n_frames == record.num_frames
    # mp4 and async through the command line too
    code = main(
        ["detect", str(record.path), "--policy", "fixed:3", "--async", "--weights", str(weights),
         "--out", str(out), "--no-progress", "--json", "--eager", "--overwrite"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "async" and summary["async"]["heavy_jobs_launched"] >= 1
    assert summary["modules"] == "eager"
    assert (out / "annotated.mp4").is_file() and not (out / "annotated.gif").exists()


def test_boxes_are_reported_in_the_original_videos_pixels(record: Any, weights: Path, tmp_path: Path) -> None:
    wide = np.repeat(record.read_frames(), 2, axis=2)  # 128 x 64: every column twice
    video = tmp_path / "wide.mp4"
    write_video_file(video, wide)
    summary, results = _detect(video, tmp_path / "out", weights, "heavy")
    assert summary["video"]["width"] == 128 and summary["video"]["resized_to"] == [64, 64]
    lines = [json.loads(x) for x in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    for r, line in zip(results, lines, strict=True):
        boxes = np.array(line["boxes"]).reshape(-1, 4)
        np.testing.assert_allclose(boxes, r.detections.boxes * np.array([2, 1, 2, 1]), atol=0.01)
        assert (boxes[:, [0, 2]] <= 128).all() and (boxes[:, [1, 3]] <= 64).all()


# --- bad input -------------------------------------------------------------------------------
def _no_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("content", [b"", b"this is not a video at all" * 50, "truncated"])
def test_bad_video_is_one_line_exit_2_and_writes_nothing(
    content: bytes | str, record: Any, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(record.path.read_bytes()[:2000] if content == "truncated" else content)
    out = tmp_path / "out"
    code = main(["detect", str(bad), "--weights", str(weights), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not out.exists() and _no_leftovers(tmp_path) == []
    with pytest.raises(VideoError, match=r"bad\.mp4"):
        _detect(bad, out, weights)


def test_failure_mid_run_leaves_the_previous_output_untouched(record: Any, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _detect(record.path, out, weights, "heavy")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def explode(r: FrameResult) -> None:
        if r.index == 5:
            raise RuntimeError("disk full")

    args = DetectArgs(
        video=str(record.path), policy="light", out=str(out), weights=str(weights), progress=False, overwrite=True
    )
    with pytest.raises(RuntimeError, match="disk full"):
        detect_video(args, on_frame=explode)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _no_leftovers(tmp_path) == []


def test_output_folder_that_is_not_a_detect_output_is_refused(record: Any, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(OutputDirError, match=r"precious: exists and is not a previous `gistgym detect` output"):
        _detect(record.path, out, weights)
    assert (out / "thesis.tex").read_text() == "do not delete"


def test_policy_for_another_detector_is_refused(
    record: Any, tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_file = _export_balanced_dqn(tiny_cache, tmp_path / "p.onnx")
    out = tmp_path / "out"
    # the shipped detector is not the one the tiny cache was built from
    code = main(["detect", str(record.path), "--policy", str(policy_file), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "p.onnx.json [cache.weights_sha256]" in err
    assert not out.exists()
    with pytest.raises(PolicyMismatchError):
        detect_video(DetectArgs(video=str(record.path), policy=str(policy_file), out=str(out), progress=False))
