"""Training run directories: what ``gistgym train`` writes and ``compare``/``export`` read.

A run directory ``RUNS/NAME`` holds::

    config.json        the resolved configuration: env id and arguments, the cache path and
                       identity, the algorithm and every hyperparameter, the command
    model.zip          the final model (Stable-Baselines3 format)
    checkpoints/       model_<steps>_steps.zip every ``checkpoint_every`` env steps
    tb/                TensorBoard logs (train/q_mean, eval/map50, eval/heavy_fraction, ...)
    eval.json          the evaluations made during training (the data of the Fig. 8 plot)
    training.png       eval mAP and heavy fraction over training steps

A run is trained in ``RUNS/.NAME.partial-HOST-PID-XXXXXXXX`` and renamed to ``RUNS/NAME`` only
once everything is written, so a directory named like a run is always a complete one; the
next run on the same target removes a partial folder whose process died (see
:mod:`gistgym.staging`). ``--overwrite`` replaces only a folder that is a complete run
(:func:`is_run_dir`), never anything else.

The cache identity recorded is what the observations depend on: the schema version and the
sha256 of the detector weights the cache was built from (its memory and head produce the
observations and rewards). A run may be evaluated on another cache with the same identity
(other videos of the same benchmark, another seed); another detector is refused with
:class:`~gistgym.errors.CacheMismatchError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gistgym
from gistgym.errors import CacheMismatchError, OutputDirError, RunError
from gistgym.feature_cache import FeatureCache
from gistgym.staging import check_name, check_output, has_format, staged_dir

RUN_FORMAT = "gistgym-run"
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.zip"
EVAL_FILE = "eval.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tb"


def cache_identity(cache_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The identity of a cache a run records: schema version, detector sha256, dataset, size.

    Raises:
        CacheError: The cache is missing or unreadable.
    """
    cache = FeatureCache(Path(cache_path))
    try:
        info = cache.info
        return {
            "schema_version": int(info.schema_version),
            "weights_sha256": str(info.weights_sha256),
            "model_weights": dict(info.model_weights),
            "sections": list(info.sections),
            "dataset": json.loads(json.dumps(dict(info.dataset), default=str)),
            "num_videos": info.num_videos,
        }
    finally:
        cache.close()


IDENTITY_KEYS = (("schema_version", "schema version"), ("weights_sha256", "detector weights sha256"))


def check_cache_identity(recorded: Mapping[str, Any], cache_path: str | os.PathLike[str], *, what: str) -> None:
    """Refuse a cache whose observations differ from the ones ``what`` was trained on.

    Raises:
        CacheMismatchError: Other schema version, other detector weights, or other weights
            of a frozen model the run's cache recorded (``model_weights``).
    """
    actual = cache_identity(cache_path)
    checks = [(key, label, recorded.get(key), actual[key]) for key, label in IDENTITY_KEYS]
    # the sections' other frozen models (DFF, the glimpse models) shape observations too
    for role, sha in sorted(dict(recorded.get("model_weights") or {}).items()):
        checks.append((f"model_weights.{role}", f"{role} weights sha256", sha, actual["model_weights"].get(role)))
    for key, label, expected, found in checks:
        if expected != found:
            raise CacheMismatchError(
                Path(cache_path),
                f"{what} was trained on a cache with {label} {expected!r}, this one has {found!r}; "
                "its observations come from other frozen models. Evaluate it on the cache it was trained on, "
                "or retrain it on this one",
                field=key,
            )


def run_config_json(
    config: Any,
    *,
    name: str,
    setting: str,
    algorithm: str,
    env_kwargs: Mapping[str, Any],
    identity: Mapping[str, Any],
    command: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """The ``config.json`` of a run of ``config`` (a :class:`~gistgym.agents.train.TrainConfig`).

    The format header, the environment and its arguments, the cache and its identity, the
    training configuration by flat option names (``train_one(TrainConfig.of(**train))`` trains
    the run again: its seed, name and setting), then ``extra`` (the policy network, times, an algorithm's own record),
    the gistgym version and the command.
    """
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "name": name,
        "setting": setting,
        "env_id": config.env,
        "algo": config.algo,
        "algorithm": algorithm,
        "env_kwargs": dict(env_kwargs),
        "cache_path": str(Path(config.cache).resolve()),
        "cache_identity": dict(identity),
        "train": {**config.flat(), "gamma_sweep": False, "name": setting},
        **extra,
        "gistgym_version": gistgym.__version__,
        "command": list(command),
    }


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    config: dict[str, Any]
    model: Any
    """The Stable-Baselines3 model."""

    @property
    def name(self) -> str:
        """The run's name: its directory name (the key in comparisons)."""
        return self.path.name


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a complete gistgym run (its ``config.json`` carries the run format marker)."""
    return has_format(path / CONFIG_FILE, RUN_FORMAT)


def prepare_run_target(out: str | os.PathLike[str], name: str, overwrite: bool) -> Path:
    """Check ``OUT/NAME`` before training: what ``--out``, ``--name`` and ``--overwrite`` allow.

    ``NAME`` must be one plain path component; an existing ``OUT/NAME`` is replaced only with
    ``overwrite`` and only if it is a complete run. Leftovers of dead runs beside it are removed.

    Raises:
        ConfigError: ``name`` is not a plain folder name.
        OutputDirError: ``OUT`` is a file, or ``OUT/NAME`` exists and may not be replaced.
    """
    check_name(name)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise OutputDirError(root, "exists and is a file; --out names the folder that holds the runs")
    marker = f"no {CONFIG_FILE} of format {RUN_FORMAT!r}"
    return check_output(root / name, overwrite=overwrite, is_ours=is_run_dir, what="a gistgym run", marker=marker)


@contextmanager
def staged_run_dir(target: Path) -> Iterator[Path]:
    """A hidden ``.NAME.partial-HOST-PID-*`` folder beside ``target`` to write a run into.

    When the block completes the folder is renamed to ``target`` (a replaced run is moved
    aside first, then deleted); on any exception (Ctrl-C included) it is deleted, so a reader
    never takes it for a run. Check the target with :func:`prepare_run_target` first.
    """
    with staged_dir(target, "partial") as partial:
        yield partial


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a run directory.

    Raises:
        RunError: Missing directory or config, unreadable or foreign config.
    """
    path = Path(run_dir)
    cfg_path = path / CONFIG_FILE
    if not path.is_dir():
        raise RunError(path, "no such run directory (gistgym train --out RUNS writes RUNS/NAME)")
    if not cfg_path.is_file():
        raise RunError(cfg_path, "missing: this is not a complete gistgym run directory")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(cfg_path, f"unreadable JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
        raise RunError(cfg_path, f"not a gistgym run config (expected format {RUN_FORMAT!r})", field="format")
    if config.get("format_version") != RUN_FORMAT_VERSION:
        raise RunError(
            cfg_path,
            f"run format version {config.get('format_version')!r}, this gistgym reads {RUN_FORMAT_VERSION}",
            field="format_version",
        )
    return config


def find_runs(runs_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete run directories directly under ``runs_dir``, sorted by name (partial ones skipped).

    Raises:
        RunError: ``runs_dir`` does not exist.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunError(root, "no such runs directory")
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).is_file()
    )


def comparison_runs(config: Any, named_baseline: Callable[[str], bool]) -> list[Path]:
    """Every run of ``config.env`` under ``config.runs`` plus the run directories in ``config.policies``.

    Args:
        config: A comparison's arguments (``runs``, ``env``, ``policies``).
        named_baseline: Whether a ``policies`` entry names one of the family's baselines.
    """
    found = find_runs(config.runs) if config.runs else []
    run_dirs = [d for d in found if read_run_config(d).get("env_id") == config.env]  # other envs' runs are skipped
    return run_dirs + [Path(p) for p in config.policies if not named_baseline(p)]
