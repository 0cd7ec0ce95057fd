"""``gistgym sweep SWEEP.yaml``: settings x seeds x environments, from one file.

A sweep file (YAML, or JSON, which is YAML too)::

    cache: data/streams.h5          # required: the feature cache every run trains on
    out: runs/sweep                 # the sweep's folder (default runs/sweep)
    seeds: 3                        # seeds per setting: seed, seed+1, ... (default 1)
    seed: 0                         # the first seed (default 0)
    train:                          # gistgym train options shared by every run
      reward: matched
      total_timesteps: 60000
    grid:                           # gistgym train options to vary: every combination is a setting
      env: [gistgym/Interleave-v0, gistgym/Keyframe-v0]
      gamma: [0.5, 1, 2]

Option names are ``gistgym train``'s with ``_`` for ``-`` (``total_timesteps``). A run is
named like ``gistgym train`` names it (``ALGO-gGAMMA-sSEED``), with ``-KEYVALUE`` for each
other grid key (``ddqn-g1-discount0.97-s0``); with several environments each gets its own
folder, ``OUT/Interleave-v0/...``, which ``gistgym compare --runs`` reads as it is.

Every key and value is checked before anything runs: an unknown key, an empty grid, a value
of the wrong type or out of its range is a :class:`~gistgym.errors.ConfigError` naming the
file and the key.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, replace
from pathlib import Path
from typing import Any

from gistgym.agents.sweep import SweepJob
from gistgym.agents.train import TrainConfig, check_config, run_name, setting_name
from gistgym.errors import ConfigError
from gistgym.options import leaf_fields

TOP_KEYS = ("cache", "out", "seeds", "seed", "train", "grid")
"""The keys a sweep file may have."""
NOT_IN_FILE = ("cache", "out", "seeds", "seed", "name", "gamma_sweep", "overwrite", "progress")
"""TrainConfig fields a file may not set under ``train`` or ``grid`` (top-level keys, or the command's flags)."""
NAMED_BY_DEFAULT = ("env", "algo", "gamma")
"""Grid keys that do not add ``-KEYVALUE`` to run names (the env by folder, algo and gamma by ``ALGO-gGAMMA``)."""


def _error(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {problem}")


def _field_defaults() -> dict[str, Any]:
    out = {}
    for name, (_, f, _) in leaf_fields(TrainConfig).items():
        out[name] = f.default if f.default is not MISSING else None
    return out


def _coerce(path: Path, key: str, value: Any, default: Any, check: Callable[[str], Any] | None) -> Any:
    """``value`` as the type of the field's ``default``, range-checked by ``check`` (the command line's)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _error(path, key, f"expected true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        items = value if isinstance(value, list) else [value]
        if not items:
            raise _error(path, key, "expected at least one value")
        example = default[0] if default else ""
        return tuple(_coerce(path, key, v, example, check) for v in items)
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _error(path, key, f"expected a number, got {value!r}")
        if isinstance(default, int) and not float(value).is_integer():
            raise _error(path, key, f"expected an integer, got {value!r}")
        number = type(default)(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise _error(path, key, f"expected a finite number, got {value!r}")
        if check is not None:
            try:
                check(str(value))
            except Exception as exc:  # argparse.ArgumentTypeError: "must be > 0, got -1"
                raise _error(path, key, str(exc)) from exc
        return number
    if not isinstance(value, str):
        raise _error(path, key, f"expected a string, got {value!r}")
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "+".join(_fmt(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("/", "_")


def read_sweep_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sweep file's mapping.

    Raises:
        ConfigError: Missing, unreadable, or not a mapping.
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the sweep file ({exc.strerror or exc})") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a sweep file is a mapping with keys {', '.join(TOP_KEYS)}; got {type(data).__name__}")
    return data


def sweep_jobs_from_file(
    path: str | os.PathLike[str],
    *,
    numbers: Mapping[str, Callable[[str], Any]] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[list[SweepJob], Path]:
    """The runs a sweep file lists, and the sweep's folder.

    Args:
        path: The sweep file.
        numbers: Per TrainConfig field, the command line's range check (``gistgym train``'s types).
        overwrite: Runs may replace complete runs of the same name.
        progress: Runs show their own progress bar (here).

    Raises:
        ConfigError: The file's problem, naming the key.
    """
    p = Path(path)
    data = read_sweep_file(p)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise _error(p, unknown[0], f"unknown key; a sweep file has {', '.join(TOP_KEYS)}")
    defaults = _field_defaults()
    numbers = numbers or {}
    cache = data.get("cache")
    if not isinstance(cache, str) or not cache:
        raise _error(p, "cache", "required: the feature cache file every run trains on")
    out = data.get("out", "runs/sweep")
    if not isinstance(out, str) or not out:
        raise _error(p, "out", f"expected a folder name, got {out!r}")
    seeds = _coerce(p, "seeds", data.get("seeds", 1), 1, numbers.get("seeds"))
    if seeds < 1:
        raise _error(p, "seeds", f"must be >= 1, got {seeds}")
    seed = _coerce(p, "seed", data.get("seed", 0), 0, numbers.get("seed"))

    def options(section: str, mapping: Any, each: bool) -> dict[str, Any]:
        if not isinstance(mapping, dict):
            raise _error(p, section, f"expected a mapping of gistgym train options, got {mapping!r}")
        out: dict[str, Any] = {}
        for key, value in mapping.items():
            where = f"{section}.{key}"
            if key not in defaults:
                raise _error(p, where, "not a gistgym train option (names use _ for -, e.g. total_timesteps)")
            if key in NOT_IN_FILE:
                raise _error(p, where, "set at the top of the file or on the command line, not here")
            if each:
                if not isinstance(value, list) or not value:
                    raise _error(p, where, f"expected a non-empty list of values, got {value!r}")
                out[key] = [_coerce(p, where, v, defaults[key], numbers.get(key)) for v in value]
            else:
                out[key] = _coerce(p, where, value, defaults[key], numbers.get(key))
        return out

    train = options("train", data.get("train") or {}, each=False)
    grid = options("grid", data.get("grid", {}), each=True)
    if not grid:
        raise _error(p, "grid", "empty: list at least one gistgym train option to vary, e.g. gamma: [0.5, 1, 2]")
    clash = sorted(set(train) & set(grid))
    if clash:
        raise _error(p, f"grid.{clash[0]}", "also set under train; give it in one place")
    base = TrainConfig.of(cache=cache, out=out, seeds=seeds, seed=seed, overwrite=overwrite, progress=progress, **train)
    keys = list(grid)
    envs = grid.get("env", [base.env])
    jobs: list[SweepJob] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values, strict=True))
        config = base.replace(**setting)
        if len(set(envs)) > 1:
            config = replace(config, out=str(Path(out) / config.env.rsplit("/", 1)[-1]))
        name = setting_name(config) + "".join(
            f"-{k.replace('_', '-')}{_fmt(v)}" for k, v in setting.items() if k not in NAMED_BY_DEFAULT
        )
        config = replace(config, name=name)
        try:
            check_config(config)
        except ConfigError as exc:
            raise _error(p, "grid", str(exc)) from exc
        for k in range(seeds):
            one = replace(config, seed=seed + k)
            jobs.append(SweepJob(one, Path(one.out) / run_name(one), name))
    return jobs, Path(out)


__all__: Sequence[str] = ["NOT_IN_FILE", "TOP_KEYS", "read_sweep_file", "sweep_jobs_from_file"]
