from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.evaluation import DEFAULT_SCHEDULES, build_schedule, evaluate_schedules, fixed_tau_actions
from gistgym.backbones.flops import step_costs
from gistgym.backbones.weights import save_detector
from gistgym.errors import ConfigError
from gistgym.scripts.cli import main


def test_fixed_tau_runs_heavy_after_tau_light_frames() -> None:
    assert fixed_tau_actions(10, 4).tolist() == [0, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    assert fixed_tau_actions(5, 0).tolist() == [0, 0, 0, 0, 0]
    assert fixed_tau_actions(4, 1, light=2).tolist() == [0, 2, 0, 2]


def test_schedule_names() -> None:
    s = build_schedule("tau=9,no-memory", 20, trained_skip=True, num_extractors=3)
    assert s.reset_memory and s.skip_light_updates is None
    assert s.actions.tolist() == fixed_tau_actions(20, 9).tolist()
    other = build_schedule("tau=9,other-update-rule", 20, trained_skip=True, num_extractors=3)
    assert other.skip_light_updates is False
    assert build_schedule("light+shift", 3, True, 3).actions.tolist() == [2, 2, 2]
    for bad in ("tau=x", "tau=-1", "medium", "tau=3,sometimes"):
        with pytest.raises(ConfigError):
            build_schedule(bad, 10, True, 3)
    with pytest.raises(ConfigError, match="third"):
        build_schedule("light+shift", 10, True, 2)


@pytest.fixture(scope="module")
def random_model(nontrivial_model: InterleavedDetector) -> InterleavedDetector:
    return nontrivial_model


def test_evaluate_reports_every_schedule_with_costs(random_model: InterleavedDetector, tiny_bench: Path) -> None:
    costs = step_costs(random_model, measure=False)
    report = evaluate_schedules(random_model, tiny_bench, "val", costs=costs, progress=False)
    assert list(report) == list(DEFAULT_SCHEDULES)
    heavy, light = costs[0].step_flops / 1e9, costs[1].step_flops / 1e9
    assert report["heavy"]["gflops_per_frame"] == pytest.approx(heavy)
    assert report["light"]["gflops_per_frame"] == pytest.approx(light)
    # 24-frame videos: tau=9 runs heavy on frames 0, 10, 20
    assert report["tau=9"]["heavy_fraction"] == pytest.approx(3 / 24)
    assert report["tau=9"]["gflops_per_frame"] == pytest.approx((3 * heavy + 21 * light) / 24)
    for r in report.values():
        assert 0.0 <= r["map50"] <= 1.0
        assert set(r["subsets"]) == {"speed:slow", "speed:medium", "speed:fast", "size:small", "size:large"}


def test_memory_reset_and_update_rule_change_the_result(random_model: InterleavedDetector, tiny_bench: Path) -> None:
    """The ablation rows really run differently (same actions, different memory handling)."""
    from gistgym.backbones.evaluation import extract_all, run_schedule
    from gistgym.videos.dataset import load_dataset

    vf = extract_all(random_model, load_dataset(tiny_bench).split("val"))
    logits = {}
    for name in ("tau=9", "tau=9,no-memory", "tau=9,other-update-rule"):
        seen: list[torch.Tensor] = []
        hook = random_model.head.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out[1].clone()))
        run_schedule(random_model, vf, build_schedule(name, 24, True, 3))
        hook.remove()
        logits[name] = torch.stack(seen)
    # frame 0 is heavy from an empty memory in all three; the light frames after it differ
    assert torch.equal(logits["tau=9"][0], logits["tau=9,no-memory"][0])
    assert not torch.allclose(logits["tau=9"][1:10], logits["tau=9,no-memory"][1:10], atol=1e-3)
    assert not torch.allclose(logits["tau=9"][2:10], logits["tau=9,other-update-rule"][2:10], atol=1e-3)


def test_cli_eval_json(
    random_model: InterleavedDetector, tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "w.pt"
    save_detector(weights, random_model, {"command": "test"})
    code = main(
        [
            "backbones",
            "eval",
            "--videos",
            str(tiny_bench),
            "--weights",
            str(weights),
            "--out",
            str(tmp_path / "ev"),
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == list(DEFAULT_SCHEDULES)
    assert set(doc["tau=9"]) >= {"map50", "gflops_per_frame"}
    assert (tmp_path / "ev" / "table.md").is_file()
    assert (tmp_path / "ev" / "map_vs_tau_and_gflops.png").stat().st_size > 1000


def test_cli_eval_missing_weights_is_one_line(
    tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["backbones", "eval", "--videos", str(tiny_bench), "--weights", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nope.json" in err


def test_distances_since_the_last_heavy_frame() -> None:
    from gistgym.backbones.evaluation import distances_since_heavy, heavy_every

    actions = heavy_every(12, 5, 2)
    assert actions.tolist() == [0, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    assert distances_since_heavy(actions).tolist() == [0, 1, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]


def test_light_by_distance_buckets_every_frame_of_every_phase(
    random_model: InterleavedDetector, tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gistgym.backbones.evaluation import distances_since_heavy, heavy_every, light_by_distance

    report = light_by_distance(random_model, tiny_bench, "val", max_distance=5, phase_step=2, progress=False)
    assert report["distances"] == [0, 1, 2, 3, 4, 5]
    # 2 val videos of 24 frames, phases 0, 2, 4 of period 6: each frame once per phase
    expected = [0] * 6
    for phase in (0, 2, 4):
        for d in distances_since_heavy(heavy_every(24, 6, phase)):
            expected[int(d)] += 2
    assert report["all"]["frames"] == expected
    segments = report["segments"]
    assert set(segments) <= {"calm", "medium", "fast", "small", "arrivals"} and segments
    assert [sum(c) for c in zip(*(s["frames"] for s in segments.values()), strict=True)] == expected
    for m in report["all"]["map50"]:
        assert 0.0 <= m <= 1.0
    weights = tmp_path / "w.pt"
    save_detector(weights, random_model, {"command": "test"})
    argv = ["backbones", "eval", "--videos", str(tiny_bench), "--weights", str(weights), "--out", str(tmp_path / "ev")]
    assert main([*argv, "--by-distance", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["light_by_distance"]["distances"] == list(range(21))
    for name in ("by_distance.md", "by_distance.json", "by_distance.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 0
