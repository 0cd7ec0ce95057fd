"""Nested option groups addressed by flat names: TrainConfig / CompareConfig, the command line, config.json."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from gistgym.agents.compare import CompareConfig
from gistgym.agents.train import KeyframeTrainOptions, TrainConfig
from gistgym.options import NestedOptions, leaf_fields
from gistgym.scripts.agent_commands import TRAIN_NUMBERS
from gistgym.scripts.args import add_dataclass_arguments, dataclass_from_args


def test_flat_names_reach_the_families_groups() -> None:
    config = TrainConfig.of(cache="c.h5", max_distance=7, cues=True, num_glimpses=3, gamma=0.5)
    assert config.keyframe == KeyframeTrainOptions(max_distance=7)
    assert config.interleave.cues and config.glimpse.num_glimpses == 3 and config.gamma == 0.5
    changed = config.replace(max_distance=9, seed=4)
    assert changed.keyframe.max_distance == 9 and changed.seed == 4 and changed.interleave.cues
    assert config.keyframe.max_distance == 7  # frozen: replace copies
    flat = changed.flat()
    assert flat["max_distance"] == 9 and flat["cues"] is True and "keyframe" not in flat
    assert TrainConfig.of(**flat) == changed  # the flat view rebuilds the config
    assert CompareConfig.of(durations=(3, 5)).keyframe.durations == (3, 5)
    with pytest.raises(TypeError, match="TrainConfig has no option 'max_distanc'"):
        TrainConfig.of(max_distanc=3)
    with pytest.raises(TypeError, match="has no option 'keyframe'"):
        config.replace(keyframe=KeyframeTrainOptions())


def test_flat_names_must_be_unique() -> None:
    @dataclasses.dataclass(frozen=True)
    class Group:
        seed: int = 0

    @dataclasses.dataclass(frozen=True)
    class Clash(NestedOptions):
        seed: int = 0
        group: Group = dataclasses.field(default_factory=Group)

    with pytest.raises(TypeError, match="option 'seed' is declared twice"):
        leaf_fields(Clash)


def test_the_command_line_fills_the_groups(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="train")
    add_dataclass_arguments(parser, TrainConfig, TRAIN_NUMBERS)
    ns = parser.parse_args(["--cache", "c.h5", "--max-distance", "12", "--cues", "--extractors", "heavy", "light"])
    config = dataclass_from_args(TrainConfig, ns)
    assert config == TrainConfig.of(cache="c.h5", max_distance=12, cues=True)
    parser.print_help()
    text = capsys.readouterr().out
    assert "Keyframe-v0's options:" in text and "--max-distance MAX_DISTANCE" in text
    with pytest.raises(SystemExit):  # ranges still checked per option
        parser.parse_args(["--max-distance", "0"])


def test_a_runs_config_json_trains_it_again(tmp_path: Path) -> None:
    from gistgym.agents.runs import run_config_json

    config = TrainConfig.of(cache=str(tmp_path / "c.h5"), max_distance=6, env="gistgym/Keyframe-v0", seed=3)
    record = json.loads(json.dumps(run_config_json(
        config, name="x", setting="x", algorithm="DQN", env_kwargs={}, identity={}, command=(),
    )))  # fmt: skip
    again = TrainConfig.of(**record["train"])
    assert again.keyframe.max_distance == 6 and again.seed == 3 and again.name == "x"
    assert again.replace(name="") == config
