"""The model classes of ``gistgym train --algo`` and loading a run's final model.

``ALGORITHMS`` maps ``--algo`` to the class whose ``load`` reads the run's model file
(Stable-Baselines3's, the paper's Double DQN, the linear scheduler of ``cem``);
:func:`load_run` reads a run directory (:mod:`gistgym.agents.runs`) with it. AdaFrame runs
load through :func:`gistgym.agents.glimpse_runs.load_adaframe_run`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stable_baselines3 import DQN, PPO

from gistgym.agents.cem import LinearPolicyModel
from gistgym.agents.ddqn import DoubleDQN
from gistgym.agents.runs import CONFIG_FILE, MODEL_FILE, Run, check_cache_identity, read_run_config
from gistgym.errors import RunError

ALGORITHMS: dict[str, Any] = {"ddqn": DoubleDQN, "dqn": DQN, "ppo": PPO, "cem": LinearPolicyModel}
"""``--algo`` name -> model class (SB3's, or the linear scheduler of the cross-entropy method)."""


def load_run(run_dir: str | os.PathLike[str], *, cache: str | os.PathLike[str] | None = None) -> Run:
    """Load a run's config and final model.

    Args:
        run_dir: The run directory.
        cache: If given, check that the run was trained on a cache with this one's identity.

    Raises:
        RunError: Not a complete run, or the model does not load.
        CacheMismatchError: ``cache`` has another identity than the run's.
    """
    path = Path(run_dir)
    config = read_run_config(path)
    if cache is not None:
        check_cache_identity(config.get("cache_identity", {}), cache, what=f"run {path}")
    algo = config.get("algo")
    if algo not in ALGORITHMS:
        raise RunError(path / CONFIG_FILE, f"unknown algo {algo!r}; expected one of {sorted(ALGORITHMS)}", field="algo")
    model_path = path / getattr(ALGORITHMS[algo], "model_file", MODEL_FILE)
    if not model_path.is_file():
        raise RunError(model_path, "missing: the run did not finish")
    try:
        model = ALGORITHMS[algo].load(model_path, device="cpu")
    except RunError:
        raise
    except Exception as exc:  # SB3 raises many types for a damaged zip
        raise RunError(model_path, f"cannot load the model ({type(exc).__name__}: {exc})") from exc
    return Run(path, config, model)
