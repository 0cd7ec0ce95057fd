"""Several seeds per setting: ``train --seeds``, settings in ``compare`` (IQM, CIs), ``--frontier``'s headroom."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gistgym.agents.backends import INTERLEAVE_ENV_ID, get_backend
from gistgym.agents.compare import (
    CompareConfig,
    Comparison,
    Frontier,
    compare,
    group_settings,
    headroom_report,
    load_frontier,
    summarize_settings,
)
from gistgym.agents.runs import CONFIG_FILE, find_runs
from gistgym.agents.train import TrainConfig, run_configs, run_name, train
from gistgym.errors import ConfigError, InputFileError, OutputDirError
from gistgym.scripts.cli import main


def test_run_names_per_gamma_and_seed() -> None:
    config = TrainConfig.of(cache="c.h5", seed=5, seeds=3, gamma_sweep=True, gammas=(0.5, 1.0))
    configs = run_configs(config)
    assert [run_name(c) for c in configs] == [
        "ddqn-g0.5-s5", "ddqn-g0.5-s6", "ddqn-g0.5-s7", "ddqn-g1-s5", "ddqn-g1-s6", "ddqn-g1-s7",
    ]  # fmt: skip
    assert [c.seed for c in configs] == [5, 6, 7, 5, 6, 7] and not any(c.gamma_sweep for c in configs)
    named = run_configs(TrainConfig.of(cache="c.h5", name="mine", seeds=2))
    assert [run_name(c) for c in named] == ["mine-s0", "mine-s1"]
    # one seed: the names are the settings' own, as before seeds existed
    assert [run_name(c) for c in run_configs(TrainConfig.of(cache="c.h5", gamma=2.0, seed=4))] == ["ddqn-g2"]


def test_seeds_below_one_are_refused(tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--seeds must be >= 1, got 0"):
        train(TrainConfig.of(cache=str(tiny_cache), out=str(tmp_path), seeds=0))
    for n in ("0", "-2"):
        assert main(["train", "--cache", str(tiny_cache), "--out", str(tmp_path), "--seeds", n]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--seeds must be >= 1, got {n}" in err
    assert not list(tmp_path.iterdir())


def tiny_config(cache: Path, out: Path, **overrides: Any) -> TrainConfig:
    base = TrainConfig.of(
        cache=str(cache),
        out=str(out),
        clip_len=8,
        num_envs=4,
        total_timesteps=48,
        learning_starts=16,
        buffer_size=100,
        batch_size=8,
        eval_every=0,
        eval_videos=1,
        checkpoint_every=0,
        progress=False,
    )
    return base.replace(**overrides)


def test_every_target_is_checked_before_the_first_seed_trains(tiny_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "ddqn-g1-s1").mkdir()  # not a run: never replaced
    (tmp_path / "ddqn-g1-s1" / "notes.txt").write_text("keep")
    with pytest.raises(OutputDirError, match="ddqn-g1-s1"):
        train(tiny_config(tiny_cache, tmp_path, seeds=2, overwrite=True), log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddqn-g1-s1"]


@pytest.fixture(scope="module")
def seeded_runs(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two settings (gamma 0.5 and 2) x two seeds (3, 4) of a tiny Double DQN run."""
    out = tmp_path_factory.mktemp("seeded")
    train(tiny_config(tiny_cache, out, seed=3, seeds=2, gamma_sweep=True, gammas=(0.5, 2.0)), log=lambda _: None)
    return out


def test_seeded_runs_record_their_seed_and_setting(seeded_runs: Path, tmp_path: Path) -> None:
    names = [p.name for p in find_runs(seeded_runs)]
    assert names == ["ddqn-g0.5-s3", "ddqn-g0.5-s4", "ddqn-g2-s3", "ddqn-g2-s4"]
    for name in names:
        cfg = json.loads((seeded_runs / name / CONFIG_FILE).read_text())
        setting, seed = name.rsplit("-s", 1)
        assert cfg["name"] == name and cfg["setting"] == setting
        assert cfg["train"]["seed"] == int(seed) and cfg["train"]["seeds"] == 2
        # the train record is this run: its name and setting again
        again = TrainConfig.of(**{**cfg["train"], "gammas": tuple(cfg["train"]["gammas"]),
                               "extractors": tuple(cfg["train"]["extractors"])})  # fmt: skip
        assert run_name(again) == name
    a, b = (json.loads((seeded_runs / n / "eval.json").read_text())["history"] for n in names[:2])
    assert a != b  # two seeds, two trainings


def test_group_settings_by_recorded_setting_and_env() -> None:
    def cfg(setting: str | None, seed: int, env: str = INTERLEAVE_ENV_ID) -> dict[str, Any]:
        out: dict[str, Any] = {"env_id": env, "train": {"seed": seed}}
        if setting:
            out["setting"] = setting
        return out

    configs = {
        "ddqn-g1-s10": cfg("ddqn-g1", 10),
        "ddqn-g1-s2": cfg("ddqn-g1", 2),
        "old-run": cfg(None, 0),  # trained before --seeds: its own setting
        "ddqn-g2": cfg("ddqn-g2", 0),
        "k": cfg("ddqn-g2", 1, env="gistgym/Keyframe-v0"),
    }
    assert group_settings(configs) == {
        "ddqn-g1": ["ddqn-g1-s2", "ddqn-g1-s10"],  # by seed
        "old-run": ["old-run"],
        f"ddqn-g2 [{INTERLEAVE_ENV_ID}]": ["ddqn-g2"],
        "ddqn-g2 [gistgym/Keyframe-v0]": ["k"],
    }


class FakeEval:
    """What a comparison reads of an evaluation."""

    def __init__(self, fraction: float, map50: float) -> None:
        self.heavy_fraction = fraction
        self.map50 = map50

    def summary(self) -> dict[str, float]:
        return {"map50": self.map50, "heavy_fraction": self.heavy_fraction}


def test_settings_summary_and_headroom_on_hand_made_results() -> None:
    results = {
        "light": FakeEval(0.0, 0.40),
        "heavy": FakeEval(1.0, 0.90),
        "tau=1": FakeEval(0.5, 0.80),
        "tau=9": FakeEval(0.1, 0.60),
        # setting a: four seeds; IQM drops the lowest and highest of each
        "a-s0": FakeEval(0.10, 0.60),
        "a-s1": FakeEval(0.20, 0.70),
        "a-s2": FakeEval(0.30, 0.72),
        "a-s3": FakeEval(0.90, 0.10),
        "b": FakeEval(0.50, 0.85),  # one seed
        "random@0.25": FakeEval(0.25, 0.62),
    }
    configs = {n: {"env_id": INTERLEAVE_ENV_ID, "setting": "a", "train": {"seed": int(n[-1])}} for n in results
               if n.startswith("a-")}  # fmt: skip
    configs["b"] = {"env_id": INTERLEAVE_ENV_ID, "setting": "b", "train": {"seed": 0}}
    comparison = Comparison(results, list(configs), get_backend(INTERLEAVE_ENV_ID))
    groups = group_settings(configs)
    comparison.settings = summarize_settings(comparison, groups, configs, seed=0)
    a, b = comparison.settings["a"], comparison.settings["b"]
    assert a["n_seeds"] == 4 and a["seeds"] == [0, 1, 2, 3] and b["n_seeds"] == 1
    assert a["heavy_fraction"]["iqm"] == pytest.approx(0.25) and a["map50"]["iqm"] == pytest.approx(0.65)
    lo, hi = a["map50"]["ci"]
    assert 0.10 <= lo <= 0.65 <= hi <= 0.72
    assert b["map50"] == {"iqm": 0.85, "ci": [0.85, 0.85]}
    # fixed tau at 0.25: between tau=9 (0.1, 0.6) and tau=1 (0.5, 0.8) -> 0.675
    assert a["gap_vs"]["fixed tau"] == pytest.approx(0.65 - 0.675)
    assert a["random"]["policy"] == "random@0.25" and a["random"]["gap"] == pytest.approx(0.65 - 0.62)
    assert b["random"] is None  # random@0.50 was not evaluated here
    # a frontier 0.1 over the fixed curve everywhere: B(x) + 0.1 at the fixed curve's points
    frontier = Frontier([[(0.1, 0.7), (0.5, 0.9)]], {"path": "f.json"})
    h = headroom_report(comparison, frontier)
    assert h["reference"] == "fixed tau" and h["frontier"] == {"path": "f.json"}
    assert a["headroom"]["headroom"] == pytest.approx(0.1)
    assert a["headroom"]["captured"] == pytest.approx((0.65 - 0.675) / 0.1)
    assert b["headroom"]["captured"] == pytest.approx(0.5)
    # learned curve: a (0.25, 0.65) to b (0.5, 0.85) against fixed 0.675..0.8 and headroom 0.1
    learned = h["learned"]
    assert learned["covered"] == [0.25, 0.5] and learned["fractions"] == 26
    xs = np.round(np.arange(0.25, 0.505, 0.01), 2)
    gaps = np.interp(xs, [0.25, 0.5], [0.65, 0.85]) - np.interp(xs, [0.1, 0.5], [0.6, 0.8])
    assert learned["captured"] == pytest.approx(gaps.mean() / 0.1)
    assert learned["max_gap"] == pytest.approx(0.05) and learned["max_gap_at"] == pytest.approx(0.5)
    # random's curve is its one point: it covers the fraction 0.25 alone
    assert h["random"]["fractions"] == 1 and h["random"]["captured"] == pytest.approx((0.62 - 0.675) / 0.1)


def headroom_file(path: Path, cache: Path, **entry: Any) -> Path:
    """A file like ``benchmarks/headroom.py --save``'s, with a detection and a streams entry per env."""
    rows = [{"width": 1, "lambda": 1.0, "fraction": f, "map50": m} for f, m in ((0.05, 0.5), (0.5, 0.9))]
    report = {"env": "interleave", "cache": str(cache), "split": "val", "videos": 2, "hindsight": {"1": rows}}
    doc = {
        "detection/interleave": {**report, **entry},
        "detection/keyframe": {**report, "env": "keyframe"},
        "streams/interleave": {**report, "cache": "data/streams.h5"},
    }
    path.write_text(json.dumps(doc))
    return path


def test_load_frontier_picks_the_entry_of_this_env_and_cache(tiny_cache: Path, tmp_path: Path) -> None:
    path = headroom_file(tmp_path / "h.json", tiny_cache)
    got = load_frontier(path, env_id=INTERLEAVE_ENV_ID, cache=tiny_cache, split="val", videos=2)
    assert got.source["entry"] == "detection/interleave" and got.families == [[(0.05, 0.5), (0.5, 0.9)]]
    other = load_frontier(path, env_id=INTERLEAVE_ENV_ID, cache=tiny_cache, split="val", kind="streams")
    assert other.source["entry"] == "streams/interleave"
    simple = tmp_path / "p.json"
    simple.write_text(json.dumps({"points": [[0.1, 0.5], [0.3, 0.7]]}))
    assert load_frontier(simple, env_id=INTERLEAVE_ENV_ID, cache="x", split="val").families == [
        [(0.1, 0.5), (0.3, 0.7)]
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such frontier file"),
        ("{not json", "unreadable JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"a": 1}', "neither"),
        ('{"points": []}', r"\[points\]: expected a non-empty list"),
        ('{"points": [[0.1, 0.5], [0.2, NaN]]}', r"\[points\[1\]\]: expected a \[fraction, map50\] pair"),
    ],
)
def test_bad_frontier_files_name_the_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "frontier.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputFileError, match=message) as info:
        load_frontier(path, env_id=INTERLEAVE_ENV_ID, cache="c.h5", split="val")
    assert info.value.path == path


def test_frontier_entries_that_do_not_fit_are_refused(tiny_cache: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"env_id": INTERLEAVE_ENV_ID, "cache": tiny_cache, "split": "val"}
    path = headroom_file(tmp_path / "h.json", tmp_path / "elsewhere.h5")
    with pytest.raises(InputFileError, match=r"no interleave entry on cache .*--frontier-kind"):
        load_frontier(path, **kw)
    with pytest.raises(InputFileError, match="no interleave entry of kind 'night'"):
        load_frontier(path, **kw, kind="night")
    path = headroom_file(tmp_path / "h.json", tiny_cache, split="test")
    with pytest.raises(InputFileError, match=r"\[detection/interleave.split\]: measured on split 'test'"):
        load_frontier(path, **kw)
    path = headroom_file(tmp_path / "h.json", tiny_cache)
    with pytest.raises(InputFileError, match=r"measured on 2 videos, this comparison on 1"):
        load_frontier(path, **kw, videos=1)
    doc = json.loads(path.read_text())
    doc["again/interleave"] = doc["detection/interleave"]
    path.write_text(json.dumps(doc))
    with pytest.raises(InputFileError, match="several interleave entries match"):
        load_frontier(path, **kw)


def test_compare_summarises_settings_over_seeds(seeded_runs: Path, tiny_cache: Path, tmp_path: Path) -> None:
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps({"points": [[0.0, 1.0], [1.0, 1.0]]}))
    config = CompareConfig.of(
        cache=str(tiny_cache), runs=str(seeded_runs), taus=(1, 3), frontier=str(frontier), out=str(tmp_path / "c"),
        progress=False,
    )  # fmt: skip
    result = compare(config)
    assert set(result.adaptive) == {"ddqn-g0.5-s3", "ddqn-g0.5-s4", "ddqn-g2-s3", "ddqn-g2-s4"}
    assert set(result.settings) == {"ddqn-g0.5", "ddqn-g2"}
    for setting, s in result.settings.items():
        assert s["runs"] == [f"{setting}-s3", f"{setting}-s4"] and s["seeds"] == [3, 4] and s["n_seeds"] == 2
        for key in ("map50", "heavy_fraction"):
            values = [result.results[n].summary()[key] for n in s["runs"]]
            # two runs: the IQM is their mean; the percentile CI spans both (see test_stats)
            assert s[key]["iqm"] == pytest.approx(np.mean(values))
            assert s[key]["ci"] == pytest.approx([min(values), max(values)])
        if s["random"] is not None:  # random at the setting's IQM fraction, beside each run's
            assert s["random"]["policy"] == f"random@{round(s['heavy_fraction']['iqm'], 2):.2f}"
            assert s["random"]["policy"] in result.results
        assert set(s["gap_vs"]) == {"fixed tau"}
    doc = json.loads((tmp_path / "c" / "results.json").read_text())
    assert doc["settings"].keys() == result.settings.keys() and doc["bootstrap"]["reps"] == 2000
    assert doc["headroom"]["frontier"] == {"path": str(frontier)} and doc["headroom"]["reference"] == "fixed tau"
    table = (tmp_path / "c" / "table.md").read_text()
    assert "| **ddqn-g2** | 2 |" in table and "headroom: between fixed tau" in table
    assert "| learned (settings' IQM) |" in table and "verdict: the learned curve" in table
    assert "**ddqn-g2-s3**" in table  # the runs stay in the per-policy table
    # without --frontier: one line says so, and no numbers
    plain = compare(replace(config, frontier="", out=str(tmp_path / "plain")))
    assert plain.headroom is None and all(s["headroom"] is None for s in plain.settings.values())
    assert "headroom: not computed (no --frontier" in (tmp_path / "plain" / "table.md").read_text()
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["headroom"] is None


def test_cli_compare_json_settings_and_bad_frontier(
    seeded_runs: Path, tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare", "--cache", str(tiny_cache), "--runs", str(seeded_runs), "--taus", "3"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["ddqn-g2"]["n_seeds"] == 2 and data["headroom"] is None
    assert "map50" in data["ddqn-g2-s4"]
    missing = tmp_path / "none.json"
    assert main([*argv, "--out", str(tmp_path / "b"), "--frontier", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.json" in err and "no such frontier file" in err
    corrupt = tmp_path / "bad.json"
    corrupt.write_text("{")
    assert main([*argv, "--out", str(tmp_path / "b"), "--frontier", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.json" in err and "unreadable JSON" in err
    assert not (tmp_path / "b").exists()  # refused before any evaluation


def test_frontier_is_refused_for_glimpse(tmp_path: Path) -> None:
    from gistgym.agents.compare import compare_any

    config = CompareConfig.of(cache="g.h5", env="gistgym/Glimpse-v0", frontier="f.json", out=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="--frontier"):
        compare_any(config)
