"""Keyframe baselines and whole-video evaluation on a tiny keyframe cache."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gistgym.agents.keyframe_baselines import (
    NEXT_LOSSES,
    EveryFramePolicy,
    FixedDurationPolicy,
    FlowThresholdPolicy,
    KeyframeOraclePolicy,
    parse_keyframe_baseline,
)
from gistgym.agents.keyframe_eval import KeyframeEvaluation, KeyframeEvaluator, speedup_eq7
from gistgym.backbones.dff import speedup_fixed
from gistgym.errors import ConfigError, EnvArgumentError, UnknownEnvArgumentError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.keyframe import schedule_detections
from gistgym.metrics import detection_map50

D = 5
"""max_distance of the evaluations (the tiny videos have 24 frames)."""


@pytest.fixture(scope="module")
def evaluator(keyframe_cache: Path) -> Any:
    with KeyframeEvaluator(keyframe_cache, env_kwargs={"max_distance": D, "speed_reward": (0.1, 0.7)}) as ev:
        yield ev


def step_infos(actions: np.ndarray, distances: np.ndarray) -> list[dict[str, Any]]:
    return [{"action": int(a), "distance": int(d)} for a, d in zip(actions, distances, strict=True)]


def simulate(policy: Any, frames: int, max_distance: int) -> list[int]:
    """The env's schedule by hand: key on frame 0 and at max_distance, else the policy's action."""
    policy.reset(1)
    d, a, out = 0, 0, [0]  # frame 0: a forced key at distance 0
    for _ in range(1, frames):
        wanted = int(policy.act({}, [{"action": a, "distance": d}])[0])
        d = 1 if a == 0 else d + 1
        a = 0 if d >= max_distance else wanted
        out.append(a)
    return out


def test_fixed_duration_keys_every_l_frames_and_forced_at_max_distance() -> None:
    for l_ in (1, 2, 3, 7):
        got = simulate(FixedDurationPolicy(l_), 30, max_distance=20)
        assert got == [0 if t % l_ == 0 else 1 for t in range(30)], l_
    assert simulate(FixedDurationPolicy(30), 45, max_distance=20) == [0 if t % 20 == 0 else 1 for t in range(45)]
    # straight from info: the frame after a key is at distance 1; after a propagated frame at d, d + 1
    p = FixedDurationPolicy(3)
    assert p.act({}, step_infos(np.array([0, 1, 1, 1]), np.array([4, 1, 2, 3]))).tolist() == [1, 1, 0, 0]
    assert p.name == "key=3" and EveryFramePolicy().name == "every-frame"
    assert EveryFramePolicy().act({}, step_infos(np.array([1, 1]), np.array([3, 4]))).tolist() == [0, 0]
    with pytest.raises(ConfigError, match="l >= 1"):
        FixedDurationPolicy(0)


def test_flow_threshold_reads_the_mean_flow_cue() -> None:
    p = FlowThresholdPolicy(1.5)
    assert p.name == "flow-threshold@1.5" and FlowThresholdPolicy(2.0).name == "flow-threshold@2"
    cues = np.array([[1.0, 60.0, 1.0, 9.0], [1.5, 0, 0, 0], [1.6, 0, 0, 0], [0.0, 0, 0, 0]], dtype=np.float32)
    acts = p.act({"cues": cues}, step_infos(np.ones(4), np.ones(4)))
    assert acts.dtype == np.int64 and acts.tolist() == [1, 1, 0, 1]  # only the mean (index 0) counts, strictly above


def test_oracle_takes_the_best_eq2_action_on_the_next_frame() -> None:
    p = KeyframeOraclePolicy((0.0, 0.5))
    assert p.lookahead and p.name == "oracle"
    infos = [{NEXT_LOSSES: np.array(x)} for x in ((1.0, 1.4), (1.0, 1.6), (1.0, 1.5), (2.0, 0.1))]
    assert p.act({}, infos).tolist() == [1, 0, 0, 1]  # a tie goes to the keyframe
    with pytest.raises(ConfigError, match="next_losses"):
        p.act({}, [{"action": 0}])


def test_parse_keyframe_baseline() -> None:
    assert isinstance(parse_keyframe_baseline("every-frame", (0, 0.3)), EveryFramePolicy)
    assert parse_keyframe_baseline("key=10", (0, 0.3)).key_duration == 10
    assert parse_keyframe_baseline("flow-threshold@2.5", (0, 0.3)).threshold == 2.5
    assert parse_keyframe_baseline("oracle", (0, 0.3)).speed_reward == (0.0, 0.3)
    assert parse_keyframe_baseline("random@0.25", (0, 0.3)).fraction == 0.25
    for bad in ("key=x", "flow-threshold@", "heavy", "tau=3", "random@2"):
        with pytest.raises(ConfigError):
            parse_keyframe_baseline(bad, (0, 0.3))


def test_every_frame_equals_key_1_and_evaluation_is_deterministic(
    evaluator: KeyframeEvaluator, keyframe_cache: Path
) -> None:
    every = evaluator.evaluate(EveryFramePolicy())
    one = evaluator.evaluate(FixedDurationPolicy(1))
    assert every.key_fraction == 1.0 and every.summary() == one.summary() and every.frames == 2 * 24
    keys = ["map50", "key_fraction", "gflops_per_frame", "mean_reward", "speedup_flops", "speedup_eq7", "frames"]
    assert list(every.summary()) == keys
    assert every.gflops_per_frame == evaluator.key_flops / 1e9 and every.speedup_flops == 1.0
    p = FlowThresholdPolicy(0.9)
    a, b = evaluator.evaluate(p), evaluator.evaluate(p)
    with KeyframeEvaluator(keyframe_cache, env_kwargs={"max_distance": D, "speed_reward": (0.1, 0.7)}) as fresh:
        c = fresh.evaluate(p)
    assert a.summary() == b.summary() == c.summary()
    assert all(np.array_equal(x.actions, y.actions) for x, y in zip(a.videos, c.videos, strict=True))
    assert 0 < a.key_fraction < 1  # the threshold makes a real choice on these videos


def test_key_l_schedule_and_map_equal_schedule_detections(evaluator: KeyframeEvaluator, keyframe_cache: Path) -> None:
    cache = FeatureCache(keyframe_cache)
    for l_, period in ((3, 3), (D, D), (8, D)):  # l beyond max_distance: forced keys every D
        ev = evaluator.evaluate(FixedDurationPolicy(l_))
        t = np.arange(24)
        gts: list[Any] = []
        dets: list[Any] = []
        for r in ev.videos:
            assert r.actions.tolist() == [0 if i % period == 0 else 1 for i in t]
            assert r.distances.tolist() == (t % period).tolist()
            ep = cache.load_episode(r.video_id, sections=("keyframe",))
            gts.extend(ep.ground_truth(i) for i in range(24))
            dets.extend(schedule_detections(ep.sections["keyframe"], t % period))
        assert ev.map50 == detection_map50(gts, dets, 4)
        assert ev.key_fraction == pytest.approx(np.mean(t % period == 0))
    cache.close()


def test_rewards_and_losses_follow_the_tables_and_the_oracle_is_greedy(
    evaluator: KeyframeEvaluator, keyframe_cache: Path
) -> None:
    cache = FeatureCache(keyframe_cache)
    speed = np.array([0.1, 0.7])
    for policy in (FlowThresholdPolicy(0.9), KeyframeOraclePolicy(tuple(speed))):
        ev = evaluator.evaluate(policy)
        for r in ev.videos:
            loss = np.asarray(cache.load_episode(r.video_id, sections=("keyframe",)).sections["keyframe"]["loss"])
            a = r.actions
            before = np.zeros(24, dtype=np.int64)  # distance before the decision
            before[1:] = np.where(a[:-1] == 0, 1, r.distances[:-1] + 1)
            assert np.array_equal(r.distances, np.where(a == 0, 0, before))
            assert np.array_equal(r.losses[:, 0], loss[:, 0].astype(np.float64))
            assert np.array_equal(r.losses[:, 1], loss[np.arange(24), before].astype(np.float64))
            lk, lp = r.losses[1:, 0], r.losses[1:, 1]
            chosen = np.where(a[1:] == 0, lk, lp)
            assert np.array_equal(r.rewards, (np.minimum(lk, lp) - chosen) + speed[a[1:]])
            flops = [evaluator.costs["key_flops"], evaluator.costs["propagate_flops"]]
            assert r.cost_flops.tolist() == [flops[x] for x in a]
            if isinstance(policy, KeyframeOraclePolicy):
                free = before[1:] < D  # not forced: the oracle's pick is the better of the two rewards
                best = np.minimum(lk, lp) + np.maximum(speed[0] - lk, speed[1] - lp)
                assert free.any() and np.allclose(r.rewards[free], best[free], rtol=0, atol=1e-12)
        assert ev.mean_reward == pytest.approx(np.concatenate([r.rewards for r in ev.videos]).mean())
    cache.close()


class RecordingOracle(KeyframeOraclePolicy):
    """The oracle, keeping every ``next_losses`` it was given (per step, (n, 2))."""

    seen: list[np.ndarray]

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        self.seen = []

    def act(self, obs: Any, infos: Any) -> np.ndarray:
        self.seen.append(np.stack([i[NEXT_LOSSES] for i in infos]))
        return super().act(obs, infos)


def test_next_losses_are_the_next_frames_losses(evaluator: KeyframeEvaluator) -> None:
    oracle = RecordingOracle((0.0, 0.05))
    ev = evaluator.evaluate(oracle)
    seen = np.stack(oracle.seen, axis=1)  # (videos, T - 1, 2): one evaluation group of equal-length videos
    assert 0 < ev.key_fraction < 1
    for i, r in enumerate(ev.videos):
        assert np.array_equal(seen[i], r.losses[1:])  # (L(t+1, 0), L(t+1, distance it is decided at))


def test_speedups(evaluator: KeyframeEvaluator) -> None:
    r = 0.035
    for l_ in (1, 5, 10, 20):
        assert speedup_eq7(1 / l_, r) == pytest.approx(speedup_fixed(r, l_))
    every = evaluator.evaluate(EveryFramePolicy())
    ev: KeyframeEvaluation = evaluator.evaluate(FixedDurationPolicy(3))
    assert ev.speedup_flops == pytest.approx(every.gflops_per_frame / ev.gflops_per_frame)
    assert ev.speedup_eq7 == pytest.approx(speedup_eq7(ev.key_fraction, evaluator.cost_ratio))
    assert 1 < ev.speedup_flops < ev.speedup_eq7  # Eq. 7 neglects N_task


def test_bad_arguments(keyframe_cache: Path, evaluator: KeyframeEvaluator) -> None:
    with pytest.raises(UnknownEnvArgumentError, match="clip_len"):
        KeyframeEvaluator(keyframe_cache, env_kwargs={"clip_len": 5})
    with pytest.raises(EnvArgumentError, match="max_distance"):
        KeyframeEvaluator(keyframe_cache, env_kwargs={"max_distance": 50})
    with pytest.raises(ConfigError, match="distinct"):
        evaluator.evaluate_many([FixedDurationPolicy(2), FixedDurationPolicy(2)])
    out = evaluator.evaluate_many([EveryFramePolicy(), FixedDurationPolicy(2)])
    assert list(out) == ["every-frame", "key=2"]


def test_train_and_compare_on_keyframe(keyframe_cache: Path, keyframe_run: tuple[Any, Path], tmp_path: Path) -> None:
    from gistgym.agents.algorithms import load_run
    from gistgym.agents.compare import CompareConfig, compare
    from gistgym.agents.train import train

    config, run_dir = keyframe_run
    runs = run_dir.parent
    run = load_run(run_dir, cache=keyframe_cache)
    assert run.config["env_kwargs"]["speed_reward"] == [0.0, 0.4] and run.config["env_kwargs"]["max_distance"] == 20
    assert "key_fraction" in json.loads((run_dir / "eval.json").read_text())["history"][-1]
    result = compare(
        CompareConfig.of(
            cache=str(keyframe_cache),
            env="gistgym/Keyframe-v0",
            runs=str(runs),
            durations=(2, 5),
            flow_thresholds=(1.0,),
            out=str(tmp_path / "cmp"),
            progress=False,
        )
    )
    data = result.as_json()
    assert {"every-frame", "key=2", "key=5", "flow-threshold@1", "oracle", run_dir.name} <= data.keys()
    # random keyframes at the run's key fraction, as for Interleave-v0's heavy fraction
    assert f"random@{data[run_dir.name]['key_fraction']:.2f}" in data
    for name in data:
        assert {"map50", "key_fraction", "gflops_per_frame", "mean_reward"} <= data[name].keys()
    assert set(result.verdict) <= {"fixed l", "flow threshold"}
    assert (tmp_path / "cmp" / "pareto.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="does not fit"):
        train(replace(config, extractor="paper"), log=lambda _: None)


def test_segment_period_policy_follows_each_frames_segment(evaluator: KeyframeEvaluator, keyframe_cache: Path) -> None:
    from gistgym.agents.baselines import FixedTauPolicy, SegmentPeriodPolicy
    from gistgym.agents.evaluation import InterleaveEvaluator

    segments = {v: [a.segment for a in gt] for v, gt in evaluator.ground_truth.items()}
    names = sorted({s for per in segments.values() for s in per})
    assert len(names) >= 2  # the tiny videos switch segments, so the periods below differ within a video
    # one period everywhere is the fixed schedule, on both environments
    uniform = evaluator.evaluate(SegmentPeriodPolicy(dict.fromkeys(names, 3), segments))
    assert uniform.summary() == evaluator.evaluate(FixedDurationPolicy(3)).summary()
    with InterleaveEvaluator(keyframe_cache) as interleave:
        a = interleave.evaluate(SegmentPeriodPolicy(dict.fromkeys(names, 4), segments))
        b = interleave.evaluate(FixedTauPolicy(3))
        assert [r.actions.tolist() for r in a.videos] == [r.actions.tolist() for r in b.videos]
    # per-segment periods: the keyframe a frame gets depends on its own segment
    periods = {name: 1 + i % D for i, name in enumerate(names)}
    result = evaluator.evaluate(SegmentPeriodPolicy(periods, segments))
    for r in result.videos:
        expected, since = [0], 0
        for t in range(1, len(r.actions)):
            key = since + 1 >= min(periods[segments[r.video_id][t]], D)
            expected.append(0 if key else 1)
            since = 0 if key else since + 1
        assert r.actions.tolist() == expected
    with pytest.raises(ConfigError, match="integers >= 1"):
        SegmentPeriodPolicy({"calm": 0}, segments)


def test_frame_period_policy_takes_per_frame_periods_and_triggers(evaluator: KeyframeEvaluator) -> None:
    from gistgym.agents.baselines import FramePeriodPolicy, SegmentPeriodPolicy

    segments = {v: [a.segment for a in gt] for v, gt in evaluator.ground_truth.items()}
    names = sorted({s for per in segments.values() for s in per})
    periods = {name: 2 + i for i, name in enumerate(names)}
    per_frame = {v: np.array([periods[s] for s in segs]) for v, segs in segments.items()}
    by_segment = evaluator.evaluate(SegmentPeriodPolicy(periods, segments))
    by_frame = evaluator.evaluate(FramePeriodPolicy(per_frame))
    assert [r.actions.tolist() for r in by_frame.videos] == [r.actions.tolist() for r in by_segment.videos]
    # a trigger forces the expensive action on its frame and restarts the count there
    triggers = {v: np.arange(len(segs)) % 7 == 5 for v, segs in segments.items()}
    result = evaluator.evaluate(FramePeriodPolicy(per_frame, triggers))
    for r in result.videos:
        expected, since = [0], 0
        for t in range(1, len(r.actions)):
            key = since + 1 >= min(per_frame[r.video_id][t], D) or bool(triggers[r.video_id][t])
            expected.append(0 if key else 1)
            since = 0 if key else since + 1
        assert r.actions.tolist() == expected
        assert all(r.actions[t] == 0 for t in range(len(r.actions)) if triggers[r.video_id][t])
