"""Numbers (issue 19, item 4): options range-checked when parsed; no JSON holds NaN; no verdict prints nan."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest

from gistgym.agents.backends import INTERLEAVE_ENV_ID, get_backend
from gistgym.agents.compare import (
    Comparison,
    dominance,
    format_headroom_verdict,
    format_verdict,
    verdicts,
)
from gistgym.agents.glimpse_compare import format_glimpse_verdict
from gistgym.agents.report import write_report
from gistgym.agents.train import TrainConfig, train
from gistgym.errors import ConfigError
from gistgym.scripts.args import NumberType
from gistgym.scripts.cli import build_parser, main
from gistgym.videos.dataset import atomic_write_json, nan_to_null

BAD_NUMBERS = [
    (["train", "--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got nan"),
    (["train", "--learning-rate", "-1"], "--learning-rate must be > 0, got -1"),
    (["train", "--exploration-fraction", "nan"], "--exploration-fraction must be a finite number in [0, 1], got nan"),
    (["train", "--exploration-fraction", "1.5"], "--exploration-fraction must be in [0, 1], got 1.5"),
    (["train", "--exploration-final-eps", "-0.1"], "--exploration-final-eps must be in [0, 1], got -0.1"),
    (["train", "--gamma", "inf"], "--gamma must be a finite number, got inf"),
    (["train", "--gammas", "0.5", "nan"], "--gammas must be a finite number, got nan"),
    (["train", "--discount", "0"], "--discount must be in (0, 1], got 0"),
    (["train", "--adaframe-lr", "0"], "--adaframe-lr must be > 0, got 0"),
    (["train", "--glimpse-sigma=-inf"], "--glimpse-sigma must be a finite number > 0, got -inf"),
    (["train", "--utility-weight", "-1"], "--utility-weight must be >= 0, got -1"),
    (["train", "--clip-len", "1"], "--clip-len must be >= 2, got 1"),
    (["train", "--total-timesteps", "1e5"], "--total-timesteps must be an integer >= 1, got '1e5'"),
    (["train", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["train", "--eval-every", "-5"], "--eval-every must be >= 0, got -5"),
    (["compare", "--taus", "9", "0"], "--taus must be >= 1, got 0"),
    (["compare", "--durations", "-2"], "--durations must be >= 1, got -2"),
    (["compare", "--flow-thresholds", "1", "-0.5"], "--flow-thresholds must be >= 0, got -0.5"),
    (["compare", "--gamma", "nan"], "--gamma must be a finite number, got nan"),
    (["compare", "--mus", "0.1", "inf"], "--mus must be a finite number, got inf"),
    (["compare", "--glimpse-counts", "0"], "--glimpse-counts must be >= 1, got 0"),
    (["compare", "--patience", "0"], "--patience must be >= 1, got 0"),
    (["compare", "--max-videos", "-1"], "--max-videos must be >= 0, got -1"),
    (["detect", "v.mp4", "--draw-threshold", "1.5"], "--draw-threshold must be in [0, 1], got 1.5"),
    (["detect", "v.mp4", "--mu", "nan"], "--mu must be a number (or -inf / inf), got nan"),
    (["detect", "v.mp4", "--patience", "0"], "--patience must be >= 1, got 0"),
    (["detect", "v.mp4", "--max-frames", "-3"], "--max-frames must be >= 0, got -3"),
    (["detect", "v.mp4", "--heavy-delay-frames", "-1"], "--heavy-delay-frames must be >= 0, got -1"),
    (["detect", "v.mp4", "--num-glimpses", "x"], "--num-glimpses must be an integer >= 0, got 'x'"),
    (["videos", "make", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["videos", "make", "--train", "-2"], "--train must be >= -1, got -2"),
    (["backbones", "train", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["backbones", "train", "--clip-mix", "0.5", "0.5", "-0.1"], "--clip-mix must be in [0, 1], got -0.1"),
    (["backbones", "train", "--max-heavy-prob", "2"], "--max-heavy-prob must be in [0, 1], got 2"),
    (["backbones", "train", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["backbones", "eval", "--max-videos", "-1"], "--max-videos must be >= 0, got -1"),
    (
        ["backbones", "train-dff", "--flow-supervision", "inf"],
        "--flow-supervision must be a finite number >= 0, got inf",
    ),
    (["backbones", "train-dff", "--weight-decay=-1e-4"], "--weight-decay must be >= 0, got -1e-4"),
    (["backbones", "eval-dff", "--durations", "0"], "--durations must be >= 1, got 0"),
    (["backbones", "train-glimpse", "--hidden", "0"], "--hidden must be >= 1, got 0"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_in_one_line_when_parsed(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before any work


def _numeric_options(parser: argparse.ArgumentParser, prefix: list[str]) -> list[tuple[list[str], argparse.Action]]:
    """(argv prefix with placeholder positionals, action) of every option that takes numbers."""
    found = []
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _numeric_options(sub, [*prefix, name])
        elif action.option_strings and (
            isinstance(action.type, NumberType) or action.type in (int, float) or _is_number(action.default)
        ):
            found.append(([*prefix, *("X" for _ in positionals)], action))
    return found


def _is_number(value: Any) -> bool:
    values = value if isinstance(value, tuple | list) else (value,)
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


NOT_MINE = {"cache build --workers", "detect --threads"}
"""Options of other work: ``cache build --workers`` (scripts/cache_commands.py; ``build_cache`` refuses < 1 in one
line) and ``detect --threads`` (the ONNX Runtime engine's, checked by ``check_threads``)."""


def test_every_numeric_option_has_a_range_and_its_default_is_in_it() -> None:
    options = _numeric_options(build_parser(), [])
    assert len(options) > 70
    unchecked = []
    for prefix, action in options:
        label = " ".join([*prefix[:2], action.option_strings[0]]).replace(" X", "")
        if not isinstance(action.type, NumberType):
            if label not in NOT_MINE and " ".join([prefix[0], action.option_strings[0]]) not in NOT_MINE:
                unchecked.append(label)
            continue
        defaults = action.default if isinstance(action.default, tuple | list) else (action.default,)
        for value in defaults:
            action.type(repr(value) if isinstance(value, float) else str(value))  # the default passes its own check
    assert not unchecked, f"numeric options without a range: {unchecked}"


def test_every_numeric_option_refuses_nan(capsys: pytest.CaptureFixture[str]) -> None:
    for prefix, action in _numeric_options(build_parser(), []):
        if not isinstance(action.type, NumberType):
            continue
        flag = action.option_strings[0]
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([*prefix, flag, "nan"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag} must be" in err and "nan" in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["detect", "v.mp4", "--mu=-inf"],  # documented: never stop early
        ["detect", "v.mp4", "--mu", "inf", "--draw-threshold", "0"],
        ["train", "--exploration-fraction", "0", "--exploration-final-eps", "1", "--discount", "1"],
        ["train", "--gamma", "-0.5", "--gammas", "-1", "0", "2.5"],  # speed rewards may be negative
        ["train", "--learning-starts", "0", "--eval-every", "0", "--checkpoint-every", "0"],
        ["videos", "make", "--train", "-1", "--test", "0"],
        ["compare", "--flow-thresholds", "0", "--mus", "-0.5", "0"],
    ],
)
def test_values_at_the_ends_of_their_ranges_parse(argv: list[str]) -> None:
    build_parser().parse_args(argv)


def test_help_says_the_range_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.0005; a finite number > 0)" in out and "(default: 0.3; a finite number in [0, 1])" in out


# ------------------------------------------------------------------ config.json and every JSON written


def test_library_train_refuses_non_finite_numbers_before_any_work(tmp_path: Path) -> None:
    for field, value in (("exploration_fraction", math.nan), ("learning_rate", math.inf), ("gammas", (1.0, math.nan))):
        config = TrainConfig.of(cache=str(tmp_path / "c.h5"), out=str(tmp_path / "runs"), **{field: value})
        if field == "gammas":
            config = config.replace(gamma_sweep=True)
        with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}"):
            train(config)
    assert not list(tmp_path.iterdir())


def test_json_writer_refuses_nan_and_names_where(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    with pytest.raises(ValueError, match=r"x\.json.*a\.b\[1\].*nan"):
        atomic_write_json(path, {"a": {"b": [1.0, math.nan]}})
    with pytest.raises(ValueError, match="inf"):
        atomic_write_json(path, {"lr": math.inf})
    assert not list(tmp_path.iterdir())


def test_nan_to_null_marks_missing_values() -> None:
    assert nan_to_null({"a": [math.nan, 1.0, -math.inf], "b": (2, math.nan), "c": "nan"}) == {
        "a": [None, 1.0, None],
        "b": [2, None],
        "c": "nan",
    }


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_results_json_has_null_where_a_number_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    results = {"policies": {"a": {"map50": math.nan}}, "verdict": {"fixed tau": {"best_margin": math.nan}}}
    write_report(out, title="t", table="|", verdict="v", csv=b"", results=results, plots={})
    doc = _strict((out / "results.json").read_text())
    assert doc["policies"]["a"]["map50"] is None and doc["verdict"]["fixed tau"]["best_margin"] is None


# ------------------------------------------------------------------ verdicts never print nan


class _Eval:
    def __init__(self, fraction: float, map50: float) -> None:
        self.heavy_fraction, self.map50 = fraction, map50

    def summary(self) -> dict[str, float]:
        return {"map50": self.map50, "heavy_fraction": self.heavy_fraction}


def test_verdict_without_a_run_inside_the_span_says_so() -> None:
    results = {"tau=1": _Eval(0.5, 0.8), "tau=29": _Eval(0.04, 0.5), "run": _Eval(0.04, 0.55)}
    comparison = Comparison(results, ["run"], get_backend(INTERLEAVE_ENV_ID))
    text = format_verdict(verdicts(comparison))
    assert "nan" not in text.lower()
    assert "no run inside heavy fraction 5%-50%" in text and "run at 4.0%" in text


def test_verdict_with_a_missing_map_says_what_is_missing() -> None:
    v = dominance([(0.1, 0.6), (0.5, 0.8)], [(0.2, math.nan, "run")])
    text = format_verdict({"fixed tau": v})
    assert "nan" not in text.lower() and "mAP" in text and "missing" in text


def test_headroom_verdict_without_random_overlap_says_so() -> None:
    learned = {"captured": 0.4, "mean_gap": 0.01, "max_gap": 0.02, "max_gap_at": 0.1, "covered": [0.05, 0.3]}
    random = {"captured": math.nan, "mean_gap": math.nan, "max_gap": math.nan, "max_gap_at": math.nan,
              "covered": None}  # fmt: skip
    text = format_headroom_verdict({"learned": learned, "random": random, "reference": "fixed tau"})
    assert "nan" not in text.lower() and "random" in text and "no heavy fraction" in text


def test_glimpse_verdict_without_a_point_in_the_budget_says_so() -> None:
    nan = math.nan
    verdict = {
        "all_map": 0.8,
        "budget_frames": 16.0,
        "reaches_all": {"ok": False, "point": "", "frames_used": nan, "map": nan, "gap_to_all": nan},
        "beats": {
            "uniform": {"ok": False, "point": "", "margin": nan, "points_above": 0, "points": 2, "min_margin": -0.1}
        },
    }
    text = format_glimpse_verdict(verdict)
    assert "nan" not in text.lower() and "no adaptive point uses <= 16.0 frames" in text


# ------------------------------------------------------------------ --out collisions (item 1 already checks first)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--cache", "missing.h5", "--out", "afile"], "afile: exists and is a file"),
        (["train", "--cache", "missing.h5", "--out", "afile"], "afile: exists and is a file"),
        (["export", "--run", "missing-run", "--out", "adir"], "adir: exists and is a folder"),
    ],
)
def test_out_collisions_are_refused_before_any_work(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "adir").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "missing" not in err  # --out fails first, not the input
    assert (tmp_path / "afile").read_text() == "mine" and not list((tmp_path / "adir").iterdir())
