"""Aggregate statistics over seeds, as the RL field reports them (rliable, Agarwal et al. 2021).

A learned result is several runs (seeds) per setting, summarised by the interquartile mean
(:func:`iqm`) with a stratified bootstrap confidence interval
(:func:`stratified_bootstrap_ci`), never one run's number. Both follow ``rliable`` exactly
(``metrics.aggregate_iqm`` and ``library.get_interval_estimates`` with the percentile
method), with numpy alone: ``rliable`` needs scipy, pandas and ``arch``, which gistgym does
not depend on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

IQM_CUT = 0.25
"""Share of the sorted values trimmed from each end for the interquartile mean."""
BOOTSTRAP_REPS = 2000
"""Bootstrap replications of a confidence interval (rliable's default for performance profiles)."""
CI_ALPHA = 0.05
"""1 - the coverage of a confidence interval (95 %)."""


def trimmed_mean(values: Any, proportion: float) -> float:
    """Mean of ``values`` (flattened) without ``floor(proportion * n)`` values at each end.

    The semantics of ``scipy.stats.trim_mean(values, proportion, axis=None)``: with ``n``
    values, ``int(proportion * n)`` of the smallest and as many of the largest are dropped,
    so fewer than ``1 / proportion`` values are not trimmed at all.

    Raises:
        ValueError: No values, or ``proportion`` outside ``[0, 0.5)``.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("the trimmed mean of no values is undefined")
    if not 0.0 <= proportion < 0.5:
        raise ValueError(f"proportion must be in [0, 0.5), got {proportion}")
    cut = int(proportion * x.size)
    return float(x[cut : x.size - cut].mean())


def iqm(values: Any) -> float:
    """Interquartile mean: the mean of the middle half of ``values`` (all of them, flattened).

    rliable's ``aggregate_iqm`` (``scipy.stats.trim_mean(scores, 0.25, axis=None)``): the
    ``floor(n / 4)`` smallest and largest values are dropped. IQM of ``[1, 2, 3, 4]`` is
    2.5; of three values, their mean.

    Raises:
        ValueError: No values.
    """
    return trimmed_mean(values, IQM_CUT)


def stratified_bootstrap_ci(
    scores: Any,
    statistic: Callable[[np.ndarray], float],
    *,
    reps: int = BOOTSTRAP_REPS,
    alpha: float = CI_ALPHA,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic(scores)`` by stratified bootstrap.

    rliable's protocol (``StratifiedBootstrap`` without task bootstrap): every replicate
    resamples the runs with replacement independently within each task (column), so each
    task keeps its number of runs; the interval is the ``alpha / 2`` and ``1 - alpha / 2``
    quantiles (linear interpolation) of the statistic over ``reps`` replicates. With one run
    per task, or equal runs, the interval is a point.

    Args:
        scores: ``(runs, tasks)`` array (a 1-D array is one task).
        statistic: ``(runs, tasks) array -> float``, e.g. :func:`iqm`.
        reps: Bootstrap replicates.
        alpha: 1 - the coverage (0.05: a 95 % interval).
        seed: Seed of the resampling (the same seed gives the same interval).

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: No runs, ``reps < 1`` or ``alpha`` outside ``(0, 1)``.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (runs, tasks) array, got shape {x.shape}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    runs, tasks = x.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, runs, size=(reps, runs, tasks))  # per replicate and task, runs drawn anew
    resampled = x[rows, np.arange(tasks)]
    values = np.array([statistic(r) for r in resampled], dtype=np.float64)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
