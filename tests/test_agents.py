"""Baselines, whole-video evaluation, training runs and the comparison on the tiny cache."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gistgym.agents.algorithms import load_run
from gistgym.agents.baselines import (
    NEXT_LOSSES,
    ConstantPolicy,
    CueRulePolicy,
    FixedTauPolicy,
    OraclePolicy,
    RandomPolicy,
    parse_baseline,
)
from gistgym.agents.compare import CompareConfig, compare, dominance
from gistgym.agents.evaluation import InterleaveEvaluator
from gistgym.agents.runs import CONFIG_FILE, find_runs
from gistgym.agents.train import TrainConfig, train
from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.evaluation import evaluate_schedules
from gistgym.errors import CacheMismatchError, ConfigError, OutputDirError, RunError, UnknownEnvArgumentError
from gistgym.scripts.cli import main


def infos(actions: list[int]) -> list[dict[str, Any]]:
    return [{"action": a} for a in actions]


def test_fixed_tau_runs_heavy_every_tau_plus_one_frames() -> None:
    p = FixedTauPolicy(3)
    p.reset(2)
    executed = np.zeros(2, dtype=np.int64)  # frame 0: heavy
    schedule = [executed.copy()]
    for _ in range(11):
        executed = p.act({}, infos(list(executed)))
        schedule.append(executed)
    got = np.stack(schedule)[:, 0]
    assert got.tolist() == [0 if t % 4 == 0 else 1 for t in range(12)]
    p.episode_started(np.array([1]))
    assert p.name == "tau=3"
    with pytest.raises(ConfigError, match="tau >= 0"):
        FixedTauPolicy(-1)


def test_cue_rule_by_hand() -> None:
    """Periods by light_change (index 1), heavy right after a cut (light_step, index 2)."""
    rule = parse_baseline("cue-rule:active=2,idle=4,change=0.5,cut=1", (0.0, 1.0))
    assert isinstance(rule, CueRulePolicy) and (rule.active, rule.idle, rule.change, rule.cut) == (2, 4, 0.5, 1.0)
    assert rule.name == "cue-rule:active=2,idle=4,change=0.5,cut=1" and rule.env_kwargs == {"cues": True}
    rule.reset(1)

    def step(action: int, change: float, light_step: float = 0.0) -> int:
        obs = {"cues": np.array([[0.0, change, light_step, 0.0]], dtype=np.float32)}
        return int(rule.act(obs, infos([action]))[0])

    # still scene: heavy once every 4 frames
    assert [step(0, 0.0), step(1, 0.1), step(1, 0.2), step(1, 0.3)] == [1, 1, 1, 0]
    assert [step(0, 0.0), step(1, 0.6)] == [1, 0]  # moving: one frame in 2
    assert step(0, 0.0) == 1
    assert step(1, 0.0, light_step=1.5) == 0  # a cut on the frame just processed
    assert step(0, 0.0, light_step=1.0) == 1  # the threshold is strict
    with pytest.raises(ConfigError, match="cues=True"):
        rule.act({"state": np.zeros((1, 1))}, infos([1]))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cue-rule", "expected cue-rule:active=A"),
        ("cue-rule:", "expected cue-rule:active=A"),
        ("cue-rule:active=2,idle=4,change=0.5", "lacks cut"),
        ("cue-rule:active=2,idle=4,change=0.5,cut=1,speed=3", "'speed=3'"),
        ("cue-rule:active=2,active=3,idle=4,change=0.5,cut=1", "once each"),
        ("cue-rule:active=2.5,idle=4,change=0.5,cut=1", "integer periods"),
        ("cue-rule:active=0,idle=4,change=0.5,cut=1", "active must be a period of >= 1"),
        ("cue-rule:active=2,idle=4,change=-1,cut=1", "change must be a finite threshold"),
        ("cue-rule:active=2,idle=4,change=0.5,cut=nan", "cut must be a finite threshold"),
    ],
)
def test_bad_cue_rules_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_baseline(spec, (0.0, 1.0))


def test_random_policy_fraction_and_seed() -> None:
    a, b = RandomPolicy(0.25), RandomPolicy(0.25)
    a.reset(1000, seed=5)
    b.reset(1000, seed=5)
    x, y = a.act({}, infos([0] * 1000)), b.act({}, infos([0] * 1000))
    assert np.array_equal(x, y)
    assert 0.2 < (x == 0).mean() < 0.3
    b.reset(1000, seed=6)
    assert not np.array_equal(x, b.act({}, infos([0] * 1000)))
    assert a.name == "random@0.25"


def test_oracle_takes_the_best_eq2_action() -> None:
    p = OraclePolicy((0.0, 0.5))
    rows = [{NEXT_LOSSES: np.array([1.0, 1.2])}, {NEXT_LOSSES: np.array([1.0, 1.7])}, {NEXT_LOSSES: [2.0, 2.5]}]
    # speed - L: (-1.0, -0.7) -> light; (-1.0, -1.2) -> heavy; (-2.0, -2.0) tie -> heavy
    assert p.act({}, rows).tolist() == [1, 0, 0]
    with pytest.raises(ConfigError, match="next_losses"):
        p.act({}, infos([0]))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("heavy", ConstantPolicy(0, "heavy")), ("light", ConstantPolicy(1, "light")), ("tau=4", FixedTauPolicy(4))],
)
def test_parse_baseline(spec: str, expected: object) -> None:
    assert parse_baseline(spec, (0.0, 1.0)) == expected


@pytest.mark.parametrize("spec", ["tau=x", "random@lots", "greedy"])
def test_parse_baseline_refuses(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_baseline(spec, (0.0, 1.0))


def test_evaluator_reproduces_the_detector_evaluation(
    tiny_cache: Path, tiny_bench: Path, nontrivial_model: InterleavedDetector
) -> None:
    report = evaluate_schedules(nontrivial_model, tiny_bench, "val", ("heavy", "tau=3"), progress=False)
    with InterleaveEvaluator(tiny_cache, "val") as ev:
        heavy = ev.evaluate(ConstantPolicy(0, "heavy"))
        tau = ev.evaluate(FixedTauPolicy(3))
    assert heavy.heavy_fraction == 1.0 and heavy.frames == 48
    assert tau.heavy_fraction == report["tau=3"]["heavy_fraction"] == 12 / 48
    for mine, theirs in ((heavy, report["heavy"]), (tau, report["tau=3"])):
        assert mine.map50 == pytest.approx(theirs["map50"], abs=0.02)  # float16 features in the cache
        assert mine.gflops_per_frame == pytest.approx(theirs["gflops_per_frame"], rel=1e-9)


def test_evaluation_rewards_are_eq2_and_the_oracle_is_greedy(tiny_cache: Path) -> None:
    speed = (0.0, 0.3)
    with InterleaveEvaluator(tiny_cache, "val", {"speed_reward": speed}) as ev:
        oracle = ev.evaluate(OraclePolicy(speed))
        again = ev.evaluate(OraclePolicy(speed))
    assert oracle.summary() == again.summary()
    for v in oracle.videos:
        assert v.actions[0] == 0 and len(v.rewards) == len(v.actions) - 1
        a = v.actions[1:]
        best = np.argmax(np.asarray(speed)[None, :] - v.losses[1:], axis=1)
        assert np.array_equal(a, best)  # greedy on exactly the losses the step then reports
        eq2 = v.losses[1:].min(axis=1) - v.losses[1:][np.arange(len(a)), a] + np.asarray(speed)[a]
        assert np.array_equal(v.rewards, eq2)
    assert 0.0 < oracle.heavy_fraction < 1.0


def test_evaluator_refuses_unknown_arguments(tiny_cache: Path) -> None:
    with pytest.raises(UnknownEnvArgumentError, match="clip_lenn"):
        InterleaveEvaluator(tiny_cache, "val", {"clip_lenn": 4})
    with pytest.raises(ConfigError, match="no video of at least 2 frames"):
        InterleaveEvaluator(tiny_cache, "val", max_videos=0)


def test_dominance_on_hand_made_curves() -> None:
    fixed = [(1.0, 0.90), (0.0, 0.40), (0.5, 0.80), (0.1, 0.70)]  # heavy, light, tau=1, tau=9
    good = [(0.04, 0.66, "a"), (0.10, 0.74, "b"), (0.5, 0.81, "c")]
    v = dominance(fixed, good)
    assert v["dominates"] and v["covered"]
    assert v["best_run"] == "b" and v["best_margin"] == pytest.approx(0.04)
    # smallest gap at 0.5: adaptive 0.81 (run c) against tau=1's 0.80
    assert v["min_gap"] == pytest.approx(0.01) and v["at_fraction"] == 0.5
    bad = [(0.04, 0.66, "a"), (0.10, 0.60, "b"), (0.5, 0.81, "c")]
    v = dominance(fixed, bad)
    assert not v["dominates"] and v["min_gap"] == pytest.approx(-0.10, abs=1e-9) and v["at_fraction"] == 0.1
    short = dominance(fixed, [(0.10, 0.74, "b")])  # one run at 0.10: the curve does not reach 5% or 50%
    assert not short["covered"] and not short["dominates"]
    assert dominance(fixed, []) == {} and dominance([], good) == {}


@pytest.fixture(scope="module")
def trained_runs(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig.of(
        cache=str(tiny_cache),
        out=str(out),
        clip_len=8,
        num_envs=4,
        total_timesteps=96,
        learning_starts=32,
        buffer_size=200,
        batch_size=8,
        eval_every=48,
        eval_videos=1,
        checkpoint_every=48,
        gamma_sweep=True,
        gammas=(0.5, 2.0),
        progress=False,
    )
    train(config, log=lambda _: None)
    return out


def test_train_writes_complete_runs(trained_runs: Path, tiny_cache: Path) -> None:
    runs = find_runs(trained_runs)
    assert [r.name for r in runs] == ["ddqn-g0.5", "ddqn-g2"]
    assert not [p for p in trained_runs.iterdir() if p.name.startswith(".")]  # no partial left
    run = load_run(runs[1], cache=tiny_cache)
    cfg = run.config
    assert cfg["algorithm"] == "DoubleDQN" and cfg["env_kwargs"]["speed_reward"] == [0.0, 2.0]
    assert cfg["cache_identity"]["weights_sha256"] and cfg["timesteps"] == 96
    assert cfg["policy_network"]["parameters"] > 0
    history = json.loads((runs[1] / "eval.json").read_text())["history"]
    assert [h["timesteps"] for h in history] == [48, 96]
    assert {"map50", "heavy_fraction", "mean_reward"} <= history[0].keys()
    assert sorted(p.name for p in (runs[1] / "checkpoints").iterdir()) == [
        "model_48_steps.zip",
        "model_96_steps.zip",
    ]
    assert any((runs[1] / "tb").glob("events.out.tfevents.*"))
    assert (runs[1] / "training.png").stat().st_size > 0


def test_same_seed_training_is_identical(trained_runs: Path, tiny_cache: Path, tmp_path: Path) -> None:
    cfg = json.loads((trained_runs / "ddqn-g2" / CONFIG_FILE).read_text())["train"]
    again = TrainConfig.of(
        **{**cfg, "out": str(tmp_path), "gammas": tuple(cfg["gammas"]), "extractors": ("heavy", "light")}
    )
    train(again, log=lambda _: None)
    a = load_run(trained_runs / "ddqn-g2").model.policy.state_dict()
    b = load_run(tmp_path / "ddqn-g2").model.policy.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    with pytest.raises(OutputDirError, match="--overwrite"):
        train(again, log=lambda _: None)


def test_run_trained_for_another_cache_is_refused(trained_runs: Path, tiny_cache: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "moved"
    shutil.copytree(trained_runs / "ddqn-g2", run)
    cfg = json.loads((run / CONFIG_FILE).read_text())
    cfg["cache_identity"]["weights_sha256"] = "0" * 64
    (run / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CacheMismatchError, match="detector weights sha256"):
        load_run(run, cache=tiny_cache)
    (run / "model.zip").write_bytes(b"not a zip")
    with pytest.raises(RunError, match="cannot load the model"):
        load_run(run)
    with pytest.raises(RunError, match="no such run directory"):
        load_run(tmp_path / "absent")


def test_compare_reports_every_policy_and_writes_outputs(trained_runs: Path, tiny_cache: Path, tmp_path: Path) -> None:
    config = CompareConfig.of(
        cache=str(tiny_cache), runs=str(trained_runs), taus=(1, 3), out=str(tmp_path), progress=False
    )
    result = compare(config)
    keys = set(result.as_json())
    assert {"heavy", "light", "tau=1", "tau=3", "oracle", "ddqn-g0.5", "ddqn-g2"} <= keys
    randoms = {k for k in keys if k.startswith("random@")}
    fractions = {round(result.results[r].heavy_fraction, 2) for r in ("ddqn-g0.5", "ddqn-g2")} - {0.0, 1.0}
    assert randoms == {f"random@{f:.2f}" for f in fractions}
    for name in ("table.md", "results.csv", "results.json", "pareto.png", "timeline.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    assert "| tau=3 |" in table and "**ddqn-g2**" in table and "verdict:" in table
    # a baseline's numbers do not depend on which runs it is compared with
    alone = compare(replace(config, runs="", out=str(tmp_path / "alone")))
    assert alone.results["tau=3"].summary() == result.results["tau=3"].summary()


def test_compare_evaluates_a_cue_rule_on_an_environment_with_cues(tiny_cache: Path, tmp_path: Path) -> None:
    spec = "cue-rule:active=2,idle=5,change=0.2,cut=0.6"
    config = CompareConfig.of(cache=str(tiny_cache), taus=(3,), policies=(spec,), out=str(tmp_path), progress=False)
    result = compare(config)
    with InterleaveEvaluator(tiny_cache, "val", {"cues": True}) as evaluator:
        direct = evaluator.evaluate(parse_baseline(spec, (0.0, 1.0)))
    assert result.results[spec].summary() == direct.summary()
    assert 0.2 < direct.heavy_fraction < 0.5  # between its two periods
    assert f"| {spec} |" in (tmp_path / "table.md").read_text()


def test_cli_compare_json_and_bad_input(
    trained_runs: Path, tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare", "--cache", str(tiny_cache), "--runs", str(trained_runs), "--taus", "3"]
    assert main([*argv, "--out", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for name in ("heavy", "light", "tau=3", "oracle", "ddqn-g2"):
        assert {"map50", "heavy_fraction", "gflops_per_frame", "mean_reward"} <= data[name].keys()
    assert main(["compare", "--cache", str(tmp_path / "none.h5"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.h5" in err
    assert main(["compare", "--cache", str(tiny_cache), "--policies", "greedy", "--out", str(tmp_path / "b")]) == 2
    assert "greedy" in capsys.readouterr().err
    assert main(["train", "--cache", str(tiny_cache), "--algo", "sarsa", "--out", str(tmp_path)]) == 2
    assert "--algo 'sarsa'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cli_export_of_a_trained_run_matches_its_policy(
    fmt: str, trained_runs: Path, tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gistgym.agents.export import load_exported_policy
    from gistgym.agents.policy import SB3Policy

    out = tmp_path / ("policy.onnx" if fmt == "onnx" else "policy.pt")
    assert main(["export", "--run", str(trained_runs / "ddqn-g2"), "--format", fmt, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    exported = load_exported_policy(out, cache=tiny_cache)
    assert exported.sidecar["algorithm"] == "DoubleDQN"
    run = load_run(trained_runs / "ddqn-g2")
    with InterleaveEvaluator(tiny_cache, "train") as ev:  # states a policy meets, not random ones
        rollouts, _ = ev.rollout(RandomPolicy(0.5))
        core = next(iter(ev._cores.values()))
        core.load(0, rollouts[0].video_id, 0)
        core.load(1, rollouts[1].video_id, 0)
        states, histories = [], []
        tr = core.advance(np.array([0, 1]), np.zeros(2, dtype=np.int64))
        for a in rollouts[0].actions[1:]:
            states.append(tr.state)
            histories.append(tr.history)
            tr = core.advance(np.array([0, 1]), np.array([a, 1 - a]))
    obs = {"state": np.concatenate(states), "history": np.concatenate(histories)}
    q_python = run.model.q_net(run.model.policy.obs_to_tensor(obs)[0]).detach().numpy()
    q_exported, actions = exported.scores_and_actions(obs["state"], obs["history"])
    np.testing.assert_allclose(q_exported, q_python, atol=1e-5)
    assert np.array_equal(actions, SB3Policy(run.model, "x").act(obs, [{}] * len(actions)))


def test_sigterm_during_training_leaves_no_partial_run(tiny_cache: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "gistgym.scripts.cli", "train", "--cache", str(tiny_cache), "--out", str(out)]
    cmd += ["--clip-len", "8", "--num-envs", "2", "--total-timesteps", "10000000", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(out.iterdir())):  # the hidden .partial directory appears
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        time.sleep(1.0)  # training is under way
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert list(out.iterdir()) == []
