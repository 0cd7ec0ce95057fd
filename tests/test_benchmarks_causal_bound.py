"""``benchmarks/causal_bound.py``: the privileged rules on either environment, on a tiny cache.

The script is not a package; it is loaded from its file as a user runs it (with the
``benchmarks`` folder on the path, where ``python benchmarks/X.py`` puts it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_script

causal_bound = load_script("causal_bound")

GRID = {"segment": {"active": (1, 3), "idle": (3, 6)}, "events": {"active": (4,), "idle": (6,), "delay": (0,)},
        "oracle": {"g": (0.5,)}}  # fmt: skip


def _run(cache: Path, tmp_path: Path, env: str, capsys: pytest.CaptureFixture[str]) -> dict:
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps({"points": [[0.05, 1.0], [1.0, 1.0]]}))
    saved = tmp_path / f"bound-{env.split('/')[-1]}.json"
    argv = ["--cache", str(cache), "--headroom", str(frontier), "--env", env, "--grid", "test"]
    argv += ["--families", *GRID, "--json", "--save", str(saved), "--no-progress"]
    assert causal_bound.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(saved.read_text()) == report
    return report


@pytest.mark.parametrize(
    ("env", "reference", "ends"),
    [("gistgym/Interleave-v0", "fixed tau", ["heavy", "light"]), ("gistgym/Keyframe-v0", "fixed l", ["every-frame"])],
)
def test_the_bound_runs_the_rules_against_the_environments_own_reference(
    shipped_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: str,
    reference: str,
    ends: list[str],
) -> None:
    monkeypatch.setitem(causal_bound.GRIDS, "test", GRID)
    report = _run(shipped_cache, tmp_path, env, capsys)
    assert report["env"] == env and report["reference"] == reference
    fixed = {r["name"]: r for r in report["fixed"]}
    periods = "tau=" if reference == "fixed tau" else "key="
    assert list(fixed)[: len(ends)] == ends
    assert len(fixed) > len(ends) and all(n.startswith(periods) for n in list(fixed)[len(ends) :])
    assert report["check_frame_period_equals_segment_period"] is True
    # the frontier capped at the expensive action on every frame (a perfect one: capped everywhere)
    cap = report["frontier_capped"]
    assert cap["at"] == ends[0] and cap["map50"] == fixed[ends[0]]["map50"] < 1
    assert cap["captured"] < 1
    points = {f: report["families"][f]["points"] for f in GRID}
    assert len(points["segment"]) == 4 and len(points["events"]) == 1 and len(points["oracle"]) == 1
    assert all(0 < p["fraction"] <= 1 and 0 <= p["map50"] <= 1 for rows in points.values() for p in rows)
    # one period P for every stretch is the fixed schedule of P frames: tau=P-1 on Interleave, key=P on Keyframe
    every = next(p for p in points["segment"] if p["active"] == p["idle"] == 3)
    same = fixed["tau=2" if env.endswith("Interleave-v0") else "key=3"]
    assert (every["fraction"], every["map50"]) == (same["fraction"], same["map50"])
    # a resumed run reuses every point and adds its time to the earlier run's
    saved = tmp_path / f"bound-{env.split('/')[-1]}.json"
    frontier = tmp_path / "frontier.json"
    argv = ["--cache", str(shipped_cache), "--headroom", str(frontier), "--env", env, "--grid", "test", "--json"]
    assert causal_bound.main([*argv, "--families", *GRID, "--resume", str(saved), "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["families"] == report["families"] and again["seconds"] >= report["seconds"]
    other = "gistgym/Keyframe-v0" if env.endswith("Interleave-v0") else "gistgym/Interleave-v0"
    argv[argv.index(env)] = other
    assert causal_bound.main([*argv, "--resume", str(saved), "--no-progress"]) == 2
    assert "another env" in capsys.readouterr().err


def test_the_bound_refuses_an_environment_without_the_generic_comparison(
    shipped_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps({"points": [[0.05, 1.0], [1.0, 1.0]]}))
    for env, says in (("gistgym/Glimpse-v0", "its own comparison"), ("gistgym/Nope-v0", "the agents support")):
        argv = ["--cache", str(shipped_cache), "--headroom", str(frontier), "--env", env, "--no-progress"]
        assert causal_bound.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err
