"""Hindsight oracles: the schedules a scheduler that sees the whole video in advance would pick.

A learned scheduler is judged against two curves: the fixed-period schedules (``tau=N``,
``key=L``) and a hindsight oracle, which knows every frame's outcome under every schedule.
The share of the gap between them that a scheduler captures reads the same on every
environment and benchmark (DESIGN.md, "Metrics and comparisons"). This module plans the
oracles' schedules and replays them through the ordinary evaluators
(:class:`SchedulePolicy`), so their mAP@0.5 is pooled exactly like every other policy's.

Guarantees and cost
-------------------

**Keyframe-v0: exact.** The loss of frame ``t`` depends only on its distance ``d`` to its
keyframe (the ``keyframe`` section caches ``L(t, d)``), so a schedule is a path through the
states ``(t, d)``, ``d = 0..D-1`` (``D = max_distance``: a frame that would sit at distance
``D`` is a keyframe, as in the environment; frame 0 always is), and any per-frame cost table
``C[t, d]`` is minimised exactly (Li, Schuster, Katsaggelos & Gandhi, *Rate-distortion
optimal video summary generation*, IEEE TIP 2005):

* :func:`keyframe_lagrangian`: ``min sum_t C[t, d_t] + lambda * #keys`` by dynamic
  programming over ``(t, d)``, O(T D) per lambda. Its solutions are the vertices of the
  lower convex hull of ``(#keys, cost)``; :func:`keyframe_hull` finds every vertex by a
  lambda sweep (O(T D) per vertex).
* :func:`keyframe_cost_curve` / :func:`keyframe_exact_budget`: the minimum cost with
  **exactly** K keys, for every K at once (so also between hull vertices), O(T D K).
* :func:`plan_keyframe`: a whole split at one lambda, or at a key budget ``F`` in [0, 1]
  **pooled over the split**: ``B = round(F x frames)`` keys, shared among the videos by an
  exact min-plus allocation over the per-video curves (O(V B T) on top of the curves). The
  result is the minimum total cost over every schedule of the split with B keys. Budgets go
  straight to the exact curves: for every K at once they cost O(T^2 D), which at T = 360 is
  cheaper than sweeping lambda over the whole hull (measured 9 ms against 0.55 s a video).

Costs are per-frame tables (:func:`keyframe_cost_table` turns the cached ``keyframe/loss``
into one); any other per-frame signal of the same shape plugs in. Measured on 24 videos x
360 frames (D = 20): 0.04 s per lambda, 0.2 s for every budget's curve, under 1 s to plan
seven oracles.

**Interleave-v0: a lower bound on the optimum.** The memory makes a frame's loss depend on
the whole past schedule (its state is carried), so there is no exact dynamic program.
:class:`BeamSearch` keeps, for every video, the W partial schedules with the lowest
``sum_t cost_t(a_t) + lambda * #heavy`` frame by frame, each with its own carried LSTM state,
and expands them with **real rollouts** of the cache's frozen memory and head (the
computation of :class:`~gistgym.envs.interleave_core.InterleaveCore`, checked against it by
brute force in the tests). The best of the final W is a feasible schedule, so its objective
is an upper bound on the optimal objective and what it achieves is a lower bound on what
the true hindsight optimum achieves; W = 1 is greedy with real rollouts, and a W of at least
``m^(T-1)`` keeps every schedule (exact). Cost: every frame, one batched pass of memory +
head + loss over the distinct beam states times m extractors, i.e. O(T x sum(W) x m) rows
per video for all the searched (width, lambda) pairs together; beams that share a state
(the same heavy frames so far, under the skip rule) are computed once. Measured: widths 1,
4 and 16 at six lambdas together (126 beams a video) on 24 videos x 360 frames in 6.5
minutes on this 2-core machine (one thread, other jobs running).

Names in ``gistgym compare`` (parsed by :func:`parse_keyframe_hindsight` and
:func:`parse_interleave_hindsight` through the environments' baseline parsers; the name is
also the ``--json`` key):

* Keyframe-v0 (exact):

  * ``hindsight@F``: key budget F in [0, 1] pooled over the split (``hindsight@0.10``: a
    tenth of the split's frames are keys, as few as the forced ones allow);
  * ``hindsight:lambda=X``: each video's Lagrangian optimum at key price X (a hull vertex);
  * ``hindsight``: lambda = the comparison's gamma (the propagate speed reward).

* Interleave-v0 (beam search, a lower bound on the optimum):

  * ``hindsight@W:lambda=X``: beam width W, heavy-step price X;
  * ``hindsight@W``: lambda = the comparison's gamma (the light speed reward).

Lambda is in the cost's units (loss) per expensive step. With lambda = gamma the oracle
trades loss against the speed reward at Eq. 2's exchange rate; it does not maximise Eq. 2's
return (its ``min_i L^i`` term depends on the path). Frame 0's forced expensive step and
Keyframe's forced keys count as expensive steps (they are in every schedule). Ties go to the
more expensive action (Interleave) and to the nearer previous keyframe (Keyframe), so the
plans are deterministic.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from gistgym.backbones.convlstm import LSTMState
from gistgym.backbones.ssdlite import DetectionTargets, frame_detection_loss
from gistgym.envs.interleave_core import DEFAULT_EXTRACTORS, InterleaveCore, PreparedVideo
from gistgym.errors import ConfigError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.keyframe import ATTR_MAX_DISTANCE, LOSS, SECTION_KEYFRAME

HINDSIGHT = "hindsight"
"""Name family of every hindsight oracle in comparisons."""
KEY, CHEAP = 0, 1
"""Keyframe actions (0 = keyframe, 1 = propagate); Interleave's heavy extractor is also action 0."""


# --- argument checks ------------------------------------------------------------------------
def check_budget(budget: object) -> float:
    """A key budget: a fraction of frames in [0, 1].

    Raises:
        ConfigError: Not a number in [0, 1] (the message names ``budget``).
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0.0 <= float(budget) <= 1.0:
        raise ConfigError(f"budget must be a key fraction in [0, 1] (e.g. 0.10), got {budget!r}")
    return float(budget)


def check_lambda(lam: object) -> float:
    """A Lagrange multiplier: a finite number (cost units per expensive step).

    Raises:
        ConfigError: Not a finite number (the message names ``lambda``).
    """
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(float(lam)):
        raise ConfigError(f"lambda must be a finite number (cost per expensive step, e.g. 0.5), got {lam!r}")
    return float(lam)


def check_width(width: object) -> int:
    """A beam width: an integer >= 1.

    Raises:
        ConfigError: Anything else (the message names the beam width).
    """
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or int(width) < 1:
        raise ConfigError(f"beam width must be an integer >= 1 (e.g. 4), got {width!r}")
    return int(width)


def _check_max_distance(max_distance: object) -> int:
    if isinstance(max_distance, bool) or not isinstance(max_distance, numbers.Integral) or int(max_distance) < 1:
        raise ConfigError(f"max_distance must be an integer >= 1, got {max_distance!r}")
    return int(max_distance)


def _number(x: float) -> str:
    """``x`` for a name: two decimals when that is exact (``0.10``), else the shortest form."""
    two = f"{x:.2f}"
    return two if float(two) == x else f"{x:g}"


# --- Keyframe-v0: exact dynamic programs ----------------------------------------------------
@dataclass(frozen=True, eq=False)
class KeyframeSchedule:
    """One video's keyframe schedule and its cost."""

    keys: np.ndarray
    """(T,) bool: frame t is a keyframe (frame 0 always is)."""
    cost: float
    """``sum_t C[t, d_t]`` over the frames, in the cost table's units."""
    lam: float | None = None
    """The multiplier it is optimal for (a hull vertex), or None (found for an exact key count)."""

    @property
    def num_keys(self) -> int:
        """Number of keyframes."""
        return int(self.keys.sum())

    @property
    def distances(self) -> np.ndarray:
        """(T,) int64 distance of every frame to its keyframe (0 on keyframes)."""
        t = np.arange(len(self.keys))
        return t - np.maximum.accumulate(np.where(self.keys, t, 0))

    @property
    def actions(self) -> np.ndarray:
        """(T,) int64 environment actions: 0 (keyframe) on keys, 1 (propagate) elsewhere."""
        return np.where(self.keys, KEY, CHEAP).astype(np.int64)

    def objective(self, lam: float) -> float:
        """``cost + lam * num_keys``."""
        return self.cost + lam * self.num_keys

    def __repr__(self) -> str:
        return f"KeyframeSchedule(frames={len(self.keys)}, keys={self.num_keys}, cost={self.cost:.6g})"


def min_keys(frames: int, max_distance: int) -> int:
    """The fewest keys a schedule of ``frames`` frames can have: ``ceil(frames / max_distance)``."""
    return -(-frames // max_distance)


def keyframe_cost_table(cost: np.ndarray, max_distance: int) -> np.ndarray:
    """A validated cost table ``C[t, d]``, ``d = 0..max_distance-1``, as the dynamic programs read it.

    Args:
        cost: (T, >= max_distance) cost of frame t with its keyframe at t - d (e.g. the
            cached ``keyframe/loss``, whose entries with d > t hold -1). Columns beyond
            ``max_distance - 1`` are ignored (a frame at distance ``max_distance`` is a key).
        max_distance: D, the environment's ``max_distance``.

    Returns:
        (T, D) float64, +inf where d > t (no such keyframe).

    Raises:
        ConfigError: Not a 2-D numeric table with at least D columns, or a non-finite entry
            at a valid (t, d <= t).
    """
    D = _check_max_distance(max_distance)
    try:
        table = np.array(cost, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cost must be a numeric (T, >= {D}) table, got {type(cost).__name__}") from exc
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < D:
        raise ConfigError(f"cost must be a (T, >= max_distance={D}) table with T >= 1, got shape {table.shape}")
    table = table[:, :D]
    valid = np.arange(D)[None, :] <= np.arange(len(table))[:, None]
    if not np.isfinite(table[valid]).all():
        t, d = np.argwhere(valid & ~np.isfinite(table))[0]
        raise ConfigError(f"cost[{t}, {d}] = {table[t, d]} is not finite (every entry with d <= t must be)")
    table[~valid] = np.inf
    return table


def schedule_cost(cost: np.ndarray, keys: np.ndarray) -> float:
    """``sum_t C[t, d_t]`` of a key schedule on a table from :func:`keyframe_cost_table` (summed in frame order)."""
    d = KeyframeSchedule(np.asarray(keys, dtype=bool), 0.0).distances
    return float(cost[np.arange(len(d)), d].sum())


def keyframe_lagrangian(cost: np.ndarray, lam: float, *, max_distance: int) -> KeyframeSchedule:
    """The schedule minimising ``sum_t C[t, d_t] + lam * #keys`` (exact; O(T D)).

    A shortest path over the states ``(t, d)``: from ``(t - 1, d)`` a frame either
    propagates to ``(t, d + 1)`` (if ``d + 1 < D``) or is a key, ``(t, 0)``, paying ``lam``.
    Ties go to the nearer previous keyframe.

    Args:
        cost: (T, >= max_distance) cost table (see :func:`keyframe_cost_table`).
        lam: Price of a keyframe, finite (negative prices favour keys).
        max_distance: D.

    Raises:
        ConfigError: A bad table, ``lam`` or ``max_distance``.
    """
    lam = check_lambda(lam)
    C = keyframe_cost_table(cost, max_distance)
    T, D = C.shape
    value = np.full(D, np.inf)
    value[0] = C[0, 0] + lam
    back = np.zeros(T, dtype=np.int64)  # back[t]: distance at t - 1 of the best path when t is a key
    for t in range(1, T):
        j = int(np.argmin(value))
        new = np.empty(D)
        new[0] = value[j] + C[t, 0] + lam
        new[1:] = value[:-1] + C[t, 1:]
        back[t] = j
        value = new
    keys = np.zeros(T, dtype=bool)
    d = int(np.argmin(value))
    for t in range(T - 1, -1, -1):
        if d == 0:
            keys[t] = True
            d = int(back[t])
        else:
            d -= 1
    return KeyframeSchedule(keys, schedule_cost(C, keys), lam)


@dataclass(frozen=True, eq=False)
class KeyframeCostCurve:
    """The exact-budget dynamic program of one video: the minimum cost for every key count.

    Made by :func:`keyframe_cost_curve`; :meth:`schedule` backtracks the optimal schedule
    with exactly ``k`` keys.
    """

    costs: np.ndarray
    """(max_keys + 1,) float64 minimum cost with exactly k keys (+inf where infeasible)."""
    max_distance: int
    table: np.ndarray
    """The validated (T, D) cost table."""
    final: np.ndarray
    """(D, max_keys + 1) minimum cost ending at the last frame at distance d with k keys."""
    back: np.ndarray
    """(T, max_keys + 1) distance at t - 1 of the best path that makes t its k-th key."""

    @property
    def frames(self) -> int:
        """T."""
        return len(self.table)

    @property
    def min_keys(self) -> int:
        """The fewest keys any schedule has."""
        return min_keys(self.frames, self.max_distance)

    @property
    def max_keys(self) -> int:
        """The largest key count this curve covers."""
        return len(self.costs) - 1

    def schedule(self, keys: int) -> KeyframeSchedule:
        """The cheapest schedule with exactly ``keys`` keys.

        Raises:
            ConfigError: ``keys`` outside ``[min_keys, max_keys]``.
        """
        if (
            isinstance(keys, bool)
            or not isinstance(keys, numbers.Integral)
            or not (self.min_keys <= int(keys) <= self.max_keys)
        ):
            raise ConfigError(
                f"keys must be an integer in [{self.min_keys}, {self.max_keys}] for {self.frames} frames at "
                f"max_distance={self.max_distance}, got {keys!r}"
            )
        k = int(keys)
        out = np.zeros(self.frames, dtype=bool)
        d = int(np.argmin(self.final[:, k]))
        for t in range(self.frames - 1, -1, -1):
            if d == 0:
                out[t] = True
                d = int(self.back[t, k])
                k -= 1
            else:
                d -= 1
        return KeyframeSchedule(out, schedule_cost(self.table, out))


def keyframe_cost_curve(cost: np.ndarray, *, max_distance: int, max_keys: int | None = None) -> KeyframeCostCurve:
    """The minimum cost with exactly k keys for every ``k <= max_keys`` (exact; O(T D K)).

    The dynamic program of :func:`keyframe_lagrangian` with the key count added to the
    state, ``(t, d, k)``, so the key budget is met exactly instead of priced.

    Args:
        cost: (T, >= max_distance) cost table (see :func:`keyframe_cost_table`).
        max_distance: D.
        max_keys: Largest key count of interest (default T: all of them).

    Raises:
        ConfigError: A bad table or ``max_distance``, or ``max_keys`` not an integer >= 1.
    """
    C = keyframe_cost_table(cost, max_distance)
    T, D = C.shape
    if max_keys is None:
        K = T
    elif isinstance(max_keys, bool) or not isinstance(max_keys, numbers.Integral) or int(max_keys) < 1:
        raise ConfigError(f"max_keys must be an integer >= 1, got {max_keys!r}")
    else:
        K = min(int(max_keys), T)
    value = np.full((D, K + 1), np.inf)
    value[0, 1] = C[0, 0]
    back = np.zeros((T, K + 1), dtype=np.int16 if np.iinfo(np.int16).max >= D else np.int64)
    for t in range(1, T):
        best = value.min(axis=0)
        arg = value.argmin(axis=0)
        new = np.empty_like(value)
        new[0, 0] = np.inf
        new[0, 1:] = best[:-1] + C[t, 0]
        back[t, 1:] = arg[:-1]
        new[1:] = value[:-1] + C[t, 1:, None]
        value = new
    return KeyframeCostCurve(value.min(axis=0), D, C, value, back)


def keyframe_exact_budget(cost: np.ndarray, keys: int, *, max_distance: int) -> KeyframeSchedule:
    """The cheapest schedule with exactly ``keys`` keys (exact; O(T D keys)).

    Raises:
        ConfigError: A bad table or ``max_distance``, or ``keys`` outside
            ``[ceil(T / max_distance), T]``.
    """
    C = keyframe_cost_table(cost, max_distance)
    lo, T = min_keys(len(C), C.shape[1]), len(C)
    if isinstance(keys, bool) or not isinstance(keys, numbers.Integral) or not lo <= int(keys) <= T:
        raise ConfigError(f"keys must be an integer in [{lo}, {T}] for {T} frames at max_distance={C.shape[1]}")
    return keyframe_cost_curve(C, max_distance=C.shape[1], max_keys=int(keys)).schedule(int(keys))


def keyframe_hull(cost: np.ndarray, *, max_distance: int) -> list[KeyframeSchedule]:
    """Every vertex of the lower convex hull of ``(#keys, cost)``, by a Lagrangian sweep.

    Starts from the two ends (fewest keys, every frame a key) and, between two vertices,
    solves :func:`keyframe_lagrangian` at the slope joining them: a schedule strictly below
    that line is a new vertex, else the two are neighbours. One O(T D) solve per vertex.

    Returns:
        The vertices by increasing key count, each with the ``lam`` it is optimal for.
    """
    C = keyframe_cost_table(cost, max_distance)
    D = C.shape[1]
    finite = np.where(np.isfinite(C), C, np.nan)
    # a price above the largest possible cost difference between two schedules forces the fewest keys
    big = float(np.nansum(np.nanmax(finite, axis=1) - np.nanmin(finite, axis=1))) + 1.0
    fewest = keyframe_lagrangian(C, big, max_distance=D)
    every = keyframe_lagrangian(C, -big, max_distance=D)
    if every.num_keys == fewest.num_keys:
        return [fewest]
    vertices = [fewest]
    stack = [(fewest, every)]
    found: list[KeyframeSchedule] = []
    while stack:
        a, b = stack.pop()
        if b.num_keys - a.num_keys < 2:
            continue
        lam = (a.cost - b.cost) / (b.num_keys - a.num_keys)
        s = keyframe_lagrangian(C, lam, max_distance=D)
        tol = 1e-9 * (abs(a.cost) + abs(b.cost) + 1.0)
        if a.num_keys < s.num_keys < b.num_keys and s.objective(lam) < a.objective(lam) - tol:
            found.append(s)
            stack += [(a, s), (s, b)]
    vertices += sorted(found, key=lambda s: s.num_keys)
    return [*vertices, every]


def allocate_keys(curves: Sequence[np.ndarray], total: int) -> list[int]:
    """Key counts ``k_v`` minimising ``sum_v curves[v][k_v]`` with ``sum_v k_v = total`` (exact min-plus DP).

    Args:
        curves: Per video, the minimum cost for every key count (+inf where infeasible).
        total: Keys to share.

    Raises:
        ConfigError: No allocation reaches ``total`` with finite cost.
    """
    best = np.zeros(1)
    choices = []
    for curve in curves:
        n = min(len(best) + len(curve) - 1, total + 1)
        new = np.full(n, np.inf)
        arg = np.zeros(n, dtype=np.int64)
        for k, ck in enumerate(np.asarray(curve, dtype=np.float64)[:n]):
            if not np.isfinite(ck):
                continue
            seg = best[: n - k] + ck
            window = new[k : k + len(seg)]
            better = seg < window  # strict: ties keep the smaller k
            window[better] = seg[better]
            arg[k : k + len(seg)][better] = k
        best = new
        choices.append(arg)
    if total >= len(best) or not np.isfinite(best[total]):
        raise ConfigError(f"no schedule of these videos has exactly {total} keys")
    out, left = [], total
    for arg in reversed(choices):
        k = int(arg[left])
        out.append(k)
        left -= k
    return out[::-1]


def budget_keys(frames: Sequence[int], budget: float, max_distance: int) -> int:
    """The pooled key count of a budget: ``round(budget x sum(frames))``, clamped to what schedules allow."""
    budget = check_budget(budget)
    total = int(sum(frames))
    lo = sum(min_keys(T, max_distance) for T in frames)
    return min(max(math.floor(budget * total + 0.5), lo), total)


def plan_keyframe(
    costs: Mapping[str, np.ndarray], *, max_distance: int, budget: float | None = None, lam: float | None = None
) -> dict[str, KeyframeSchedule]:
    """The exact hindsight schedules of a split, at one lambda or at a pooled key budget.

    Args:
        costs: Per video id, its (T, >= max_distance) cost table.
        max_distance: D.
        budget: Key fraction in [0, 1] of all the videos' frames together
            (:func:`budget_keys`): the schedules minimise the total cost with that many keys.
        lam: Price of a key: each video's :func:`keyframe_lagrangian` schedule.

    Raises:
        ConfigError: Neither or both of ``budget`` and ``lam``, or a bad value.
    """
    if (budget is None) == (lam is None):
        raise ConfigError("give exactly one of budget (a key fraction) and lambda (a price per key)")
    D = _check_max_distance(max_distance)
    if lam is not None:
        lam = check_lambda(lam)
        return {v: keyframe_lagrangian(c, lam, max_distance=D) for v, c in costs.items()}
    assert budget is not None
    total = budget_keys([len(c) for c in costs.values()], budget, D)
    curves = {v: keyframe_cost_curve(c, max_distance=D) for v, c in costs.items()}
    ks = allocate_keys([c.costs for c in curves.values()], total)
    return {v: curve.schedule(k) for (v, curve), k in zip(curves.items(), ks, strict=True)}


def keyframe_loss_tables(
    cache_path: str | os.PathLike[str], video_ids: Sequence[str], *, max_distance: int
) -> dict[str, np.ndarray]:
    """The cost tables of cached videos from their ``keyframe/loss`` (:func:`keyframe_cost_table`).

    Raises:
        CacheError: Missing or unreadable cache, unknown video.
        CacheSectionError: The cache has no ``keyframe`` section.
        ConfigError: ``max_distance`` beyond the distances cached.
    """
    D = _check_max_distance(max_distance)
    with FeatureCache(Path(cache_path), sections=(SECTION_KEYFRAME,)) as cache:
        cached = int(cache.section(SECTION_KEYFRAME).attrs[ATTR_MAX_DISTANCE])
        if cached + 1 < D:
            raise ConfigError(f"max_distance={D} needs distances up to {D - 1}; {cache.path} caches 0..{cached}")
        out = {}
        for v in video_ids:
            loss = cache.load_episode(v, sections=(SECTION_KEYFRAME,)).sections[SECTION_KEYFRAME][LOSS]
            out[v] = keyframe_cost_table(np.asarray(loss), D)
    return out


# --- Interleave-v0: beam search with real rollouts ------------------------------------------
@dataclass(frozen=True, eq=False)
class RowOutputs:
    """Every extractor's outputs on one frame for a batch of beam states: what a row cost reads."""

    losses: np.ndarray
    """(n, m) float64 the detector's per-frame loss (what the environment reports in ``info``)."""
    loc: Tensor
    """(n, m, A, 4) box offsets of the head."""
    conf: Tensor
    """(n, m, A, K + 1) class logits of the head."""
    video_ids: tuple[str, ...]
    """(n,) the video of each state."""
    frame_index: int
    """The frame (in the video) all rows process."""


RowCost = Callable[[RowOutputs], np.ndarray]
"""``(rows) -> (n, m)`` finite per-frame cost of running each extractor on each row."""


def detection_loss_cost(rows: RowOutputs) -> np.ndarray:
    """The default row cost: the detector's own per-frame loss (the environment's ``L_t^i``)."""
    return rows.losses


@dataclass(frozen=True, eq=False)
class InterleaveSchedule:
    """The best schedule one beam search found for one video."""

    video_id: str
    actions: np.ndarray
    """(T,) int64 extractor executed on each frame (0 = heavy; 0 on frame 0)."""
    cost: float
    """``sum_t cost_t(a_t)`` of the executed extractors, as the search computed it."""
    width: int
    lam: float

    @property
    def heavy(self) -> int:
        """Frames the heavy extractor ran on (frame 0 included)."""
        return int((self.actions == 0).sum())

    @property
    def objective(self) -> float:
        """``cost + lam * heavy``: what the search minimised."""
        return self.cost + self.lam * self.heavy

    def __repr__(self) -> str:
        return (
            f"InterleaveSchedule({self.video_id!r}, frames={len(self.actions)}, heavy={self.heavy}, "
            f"cost={self.cost:.6g}, width={self.width}, lam={self.lam:g})"
        )


BeamConfig = tuple[int, float]
"""``(width, lambda)`` of one beam search."""


class BeamSearch:
    """Beam searches over Interleave schedules with real rollouts of one cache's frozen memory and head.

    Each beam carries its own LSTM state; every frame, all beams of all videos of one length
    and of every searched ``(width, lambda)`` go through the memory, the head and the loss
    together (in chunks of ``chunk_rows`` rows), with every extractor, exactly as
    :meth:`InterleaveCore.advance <gistgym.envs.interleave_core.InterleaveCore.advance>`
    does for its slots; the carried state follows the skip rule. Then each search keeps its
    ``width`` best children per video (score = cumulative cost + lambda x heavy steps), the
    selected beams' states are copied into place, and identical states (beams with the same
    state-writing steps so far, in any search) are stored and computed once.

    Args:
        cache_path: Feature cache with the ``interleave`` section.
        split: A split of the cache (only used to validate the environment arguments).
        extractors: Extractor names in action order, as the environment takes them.
        skip_light_updates: The skip rule (None: the one the cached detector was trained with).
        cost: Per-row cost (default :func:`detection_loss_cost`).
        chunk_rows: Rows per batched pass (~100 keep the activations in cache: measured
            1.5-2x faster than 512 on this machine's CPUs).

    Raises:
        CacheError, CacheSectionError, EnvArgumentError: As :class:`InterleaveCore`.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
        split: str = "val",
        extractors: Sequence[str] = DEFAULT_EXTRACTORS,
        skip_light_updates: bool | None = None,
        cost: RowCost = detection_loss_cost,
        chunk_rows: int = 128,
    ) -> None:
        # a one-slot core: the validated modules and the prepared videos (its slot is unused)
        self.core = InterleaveCore(
            1,
            cache_path,
            split=split,
            clip_len=2,
            extractors=tuple(extractors),
            speed_reward=(0.0,) * len(tuple(extractors)),
            skip_light_updates=skip_light_updates,
            history_len=1,
        )
        self.cost = cost
        self.chunk_rows = max(1, int(chunk_rows))
        self._state_shape = (self.core.hidden, self.core.grid, self.core.grid)
        m = self.core.num_actions
        # the actions whose new state is carried (the others keep the consumed one)
        self.writes = (0,) if self.core.skip_light_updates else tuple(range(m))
        self.stats = {"beam_steps": 0, "states": 0}
        """Work done so far: beams expanded (one per beam and frame) and distinct states run (m rows each)."""

    def close(self) -> None:
        """Release the cache file handle."""
        self.core.close()

    def __enter__(self) -> BeamSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search(
        self,
        video_ids: Sequence[str],
        configs: Sequence[BeamConfig],
        *,
        frames: int | None = None,
        progress: bool = False,
    ) -> list[dict[str, InterleaveSchedule]]:
        """The best schedule of every video for every ``(width, lambda)`` of ``configs``, searched together.

        Args:
            video_ids: Videos of the cache.
            configs: ``(beam width, lambda)`` pairs.
            frames: Only the first N frames of every video (None: whole videos).
            progress: Show a progress bar over frames.

        Returns:
            Per config (in order), video id -> schedule.

        Raises:
            ConfigError: A bad width, lambda or ``frames``.
            CacheError: An unknown video.
        """
        checked = [(check_width(w), check_lambda(lam)) for w, lam in configs]
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise ConfigError(f"frames must be an integer >= 1 or None, got {frames!r}")
        by_len: dict[int, list[PreparedVideo]] = {}
        for v in video_ids:
            video = self.core.prepared(v)
            T = len(video.features) if frames is None else min(frames, len(video.features))
            by_len.setdefault(T, []).append(video)
        out: list[dict[str, InterleaveSchedule]] = [{} for _ in checked]
        total = sum(by_len)
        with tqdm(total=total, desc="beam search", unit="frame", disable=not progress) as bar:
            for T, videos in sorted(by_len.items()):
                for k, found in enumerate(self._search_group(videos, T, checked, bar)):
                    out[k].update(found)
        return [{v: per[v] for v in video_ids} for per in out]

    def _rows(
        self, videos: Sequence[PreparedVideo], uvideo: np.ndarray, t: int, c: Tensor, h: Tensor
    ) -> tuple[np.ndarray, Tensor, Tensor]:
        """Frame ``t`` from every state, with every extractor: ``(costs (U, m), new c, new h (U, |writes|, ...))``."""
        m = self.core.num_actions
        U, writes = len(uvideo), list(self.writes)
        feats = torch.stack([v.features[t] for v in videos])  # (V, m, C, g, g) float16
        labels = torch.stack([v.labels[t] for v in videos])
        offsets = torch.stack([v.offsets[t] for v in videos])
        costs = np.empty((U, m), dtype=np.float64)
        new_c = torch.empty(U, len(writes), *c.shape[1:])
        new_h = torch.empty_like(new_c)
        per = max(1, self.chunk_rows // m)
        for s in range(0, U, per):
            e = min(s + per, U)
            n = e - s
            vi = torch.from_numpy(uvideo[s:e])
            x = feats.index_select(0, vi).view(n * m, *feats.shape[2:]).float()
            loc, conf, c_next, h_next = self._step(
                x, c[s:e].repeat_interleave(m, dim=0), h[s:e].repeat_interleave(m, dim=0)
            )
            targets = DetectionTargets(
                labels.index_select(0, vi).repeat_interleave(m, dim=0),
                offsets.index_select(0, vi).repeat_interleave(m, dim=0),
            )
            losses = frame_detection_loss(loc, conf, targets).view(n, m).numpy().astype(np.float64)
            rows = RowOutputs(
                losses,
                loc.view(n, m, *loc.shape[1:]),
                conf.view(n, m, *conf.shape[1:]),
                tuple(videos[i].video_id for i in uvideo[s:e].tolist()),
                t,
            )
            got = np.asarray(self.cost(rows), dtype=np.float64)
            if got.shape != (n, m) or not np.isfinite(got).all():
                raise ConfigError(f"the row cost must return ({n}, {m}) finite numbers, got shape {got.shape}")
            costs[s:e] = got
            new_c[s:e] = c_next.view(n, m, *c_next.shape[1:])[:, writes]
            new_h[s:e] = h_next.view(n, m, *h_next.shape[1:])[:, writes]
        return costs, new_c, new_h

    def _step(self, x: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The frozen memory and head (their own ``forward``): x (R, C, g, g), c and h (R, hid, g, g).

        Returns:
            ``(loc (R, A, 4), conf (R, A, K + 1), new c, new h)``.
        """
        out, new = self.core.memory(x, LSTMState(c, h))
        loc, conf = self.core.head(out)
        return loc, conf, new.c, new.h

    def _search_group(
        self, videos: Sequence[PreparedVideo], T: int, configs: Sequence[BeamConfig], bar: Any
    ) -> list[dict[str, InterleaveSchedule]]:
        """Every config's search over the first ``T`` frames of ``videos``, one batched pass per frame."""
        m, V, K = self.core.num_actions, len(videos), len(configs)
        widths = np.repeat(np.array([w for w, _ in configs], dtype=np.int64), V)  # per group g = k * V + v
        prices = np.zeros((K * V, m))
        prices[:, 0] = np.repeat(np.array([lam for _, lam in configs]), V)
        column = np.full(m + 1, -1, dtype=np.int64)  # action -> its column of the new states
        for j, a in enumerate(self.writes):
            column[a] = j
        # distinct carried states (all zero at the start: one per video) and the beams pointing at them
        uvideo = np.arange(V, dtype=np.int64)
        c, h = torch.zeros(V, *self._state_shape), torch.zeros(V, *self._state_shape)
        group = np.arange(K * V, dtype=np.int64)
        uid = np.tile(np.arange(V, dtype=np.int64), K)
        score = np.zeros(K * V)
        cost = np.zeros(K * V)
        parents: list[np.ndarray] = []
        actions: list[np.ndarray] = []
        with torch.inference_mode():
            for t in range(T):
                costs, new_c, new_h = self._rows(videos, uvideo, t, c, h)
                self.stats["beam_steps"] += len(group)
                self.stats["states"] += len(uvideo)
                child = score[:, None] + costs[uid] + prices[group]  # (B, m)
                if t == 0:
                    child[:, 1:] = np.inf  # frame 0 runs the heavy extractor
                B = len(group)
                parent = np.repeat(np.arange(B), m)
                action = np.tile(np.arange(m), B)
                cgroup, cscore = group[parent], child.ravel()
                # by group, then score; ties to the better-ranked parent, then the heavier action
                order = np.lexsort((action, parent, cscore, cgroup))
                sorted_group = cgroup[order]
                first = np.searchsorted(sorted_group, sorted_group, side="left")
                rank = np.arange(len(order)) - first
                keep = order[(rank < widths[sorted_group]) & np.isfinite(cscore[order])]
                parent, action = parent[keep], action[keep]
                cost = cost[parent] + costs[uid[parent], action]
                score, group = cscore[keep], cgroup[keep]
                parents.append(parent)
                actions.append(action.astype(np.int8))
                # the children's carried states: a state-writing action's new state, else the parent's
                col = column[action]
                key = uid[parent] * (m + 1) + np.where(col >= 0, action, m)
                ukey, uid = np.unique(key, return_inverse=True)
                uid = uid.reshape(-1)
                pu, written = ukey // (m + 1), ukey % (m + 1)
                fresh = np.where(written < m, column[np.minimum(written, m - 1)], -1)
                c, h = self._gather(c, h, new_c, new_h, pu, fresh)
                uvideo = uvideo[pu]
                bar.update(1)
        # beams are sorted by (group, score): each group's first is its best
        groups, best = np.unique(group, return_index=True)
        assert len(groups) == K * V
        idx = best
        chosen = np.zeros((K * V, T), dtype=np.int64)
        for t in range(T - 1, -1, -1):
            chosen[:, t] = actions[t][idx]
            idx = parents[t][idx]
        out: list[dict[str, InterleaveSchedule]] = []
        for k, (w, lam) in enumerate(configs):
            out.append(
                {
                    videos[v].video_id: InterleaveSchedule(
                        videos[v].video_id, chosen[k * V + v], float(cost[best[k * V + v]]), w, lam
                    )
                    for v in range(V)
                }
            )
        return out

    @staticmethod
    def _gather(
        c: Tensor, h: Tensor, new_c: Tensor, new_h: Tensor, parent: np.ndarray, column: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        """States of the selected children: ``new[parent, column]`` where column >= 0, else ``old[parent]``."""
        out_c = torch.empty(len(parent), *c.shape[1:])
        out_h = torch.empty_like(out_c)
        fresh = column >= 0
        for mask, src_c, src_h, index in (
            (fresh, new_c.view(-1, *c.shape[1:]), new_h.view(-1, *c.shape[1:]), parent * new_c.shape[1] + column),
            (~fresh, c, h, parent),
        ):
            if mask.any():
                rows = torch.from_numpy(np.flatnonzero(mask))
                sel = torch.from_numpy(index[mask])
                out_c.index_copy_(0, rows, src_c.index_select(0, sel))
                out_h.index_copy_(0, rows, src_h.index_select(0, sel))
        return out_c, out_h


# --- replaying schedules ----------------------------------------------------------------------
class SchedulePolicy:
    """A :class:`~gistgym.agents.policy.Policy` that replays precomputed per-video schedules.

    The action for the frame about to be decided is ``schedules[info["video_id"]][info["frame_index"] + 1]``,
    so it works in both whole-video evaluators (the environments still force frame 0's
    expensive step and Keyframe's keys at ``max_distance``, which the oracles' schedules
    already contain).

    Args:
        schedules: Per video id, the (T,) action of every frame.
        name: The policy's name in comparisons.
    """

    def __init__(self, schedules: Mapping[str, Sequence[int] | np.ndarray], name: str) -> None:
        self.name = name
        self.schedules = {str(v): np.asarray(a, dtype=np.int64) for v, a in schedules.items()}

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Stateless."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Stateless."""

    def _missing(self, video_id: str) -> str:
        return f"{self.name}: no schedule for video {video_id!r} (it has {len(self.schedules)} videos)"

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Each row's scheduled action for its next frame.

        Raises:
            ConfigError: A row's video has no schedule, or its schedule is too short.
        """
        out = np.empty(len(infos), dtype=np.int64)
        for row, info in enumerate(infos):
            video_id, t = str(info["video_id"]), int(info["frame_index"]) + 1
            schedule = self.schedules.get(video_id)
            if schedule is None:
                raise ConfigError(self._missing(video_id))
            if t >= len(schedule):
                raise ConfigError(
                    f"{self.name}: the schedule of video {video_id!r} has {len(schedule)} frames, not {t + 1}"
                )
            out[row] = schedule[t]
        return out


class HindsightPolicy(SchedulePolicy):
    """A :class:`SchedulePolicy` whose schedules an oracle plans on an evaluator's videos (:meth:`prepare`).

    Subclasses implement :meth:`prepare_all`, which plans several policies of their kind
    together; :func:`prepare_policies` calls it for every kind in a list of policies.
    """

    def __init__(self, name: str) -> None:
        super().__init__({}, name)

    def _missing(self, video_id: str) -> str:
        if not self.schedules:
            return f"{self.name} has no schedules yet: call prepare(evaluator) first (gistgym compare does)"
        return super()._missing(video_id) + "; prepare it on the evaluator it is evaluated with"

    def prepare(self, evaluator: Any) -> None:
        """Plan the schedules on the evaluator's videos and environment settings."""
        type(self).prepare_all([self], evaluator)

    @classmethod
    def prepare_all(cls, policies: Sequence[Any], evaluator: Any) -> None:
        """Plan every policy of ``policies`` (all of this class) on ``evaluator``."""
        raise NotImplementedError


def prepare_policies(policies: Iterable[Any], evaluator: Any) -> None:
    """Plan every :class:`HindsightPolicy` among ``policies`` on ``evaluator``; others are left alone.

    Policies of one kind are planned together (the Interleave beam searches of every width
    and lambda share one batched rollout per frame).
    """
    kinds: dict[type[HindsightPolicy], list[HindsightPolicy]] = {}
    for p in policies:
        if isinstance(p, HindsightPolicy):
            kinds.setdefault(type(p), []).append(p)
    for kind, group in kinds.items():
        kind.prepare_all(group, evaluator)


def _gamma(speed_reward: Sequence[float]) -> float:
    """The default lambda: the cheap action's speed reward over the expensive one's (Eq. 2's exchange rate)."""
    speed = [float(x) for x in speed_reward]
    return speed[1] - speed[0]


class KeyframeHindsightPolicy(HindsightPolicy):
    """The exact Keyframe-v0 oracle on the cached loss, at a pooled key budget or a key price.

    Args:
        budget: Key fraction in [0, 1] of the split's frames (``hindsight@F``).
        lam: Price of a key (``hindsight:lambda=X``).
        name: Name in comparisons (default from the arguments; neither given: ``hindsight``,
            lambda = the evaluator's ``speed_reward[1] - speed_reward[0]``).

    Raises:
        ConfigError: Both given, or a bad value.
    """

    def __init__(self, *, budget: float | None = None, lam: float | None = None, name: str = "") -> None:
        if budget is not None and lam is not None:
            raise ConfigError("give a key budget or a lambda, not both")
        self.budget = None if budget is None else check_budget(budget)
        self.lam = None if lam is None else check_lambda(lam)
        if not name:
            name = HINDSIGHT
            if self.budget is not None:
                name += f"@{_number(self.budget)}"
            elif self.lam is not None:
                name += f":lambda={self.lam:g}"
        super().__init__(name)
        self.plan: dict[str, KeyframeSchedule] = {}

    @classmethod
    def prepare_all(cls, policies: Sequence[Any], evaluator: Any) -> None:
        """Plan on a :class:`~gistgym.agents.keyframe_eval.KeyframeEvaluator` (its videos, ``max_distance``, gamma)."""
        D = int(evaluator.max_distance)
        vids = [v for _, group in evaluator.groups for v in group]
        costs = keyframe_loss_tables(evaluator.cache_path, vids, max_distance=D)
        curves: dict[str, KeyframeCostCurve] = {}
        for p in policies:
            if p.budget is None:
                lam = _gamma(evaluator.speed_reward) if p.lam is None else p.lam
                p.plan = {v: keyframe_lagrangian(c, lam, max_distance=D) for v, c in costs.items()}
            else:
                if not curves:
                    curves = {v: keyframe_cost_curve(c, max_distance=D) for v, c in costs.items()}
                total = budget_keys([len(c) for c in costs.values()], p.budget, D)
                ks = allocate_keys([c.costs for c in curves.values()], total)
                p.plan = {v: curve.schedule(k) for (v, curve), k in zip(curves.items(), ks, strict=True)}
            p.schedules = {v: s.actions for v, s in p.plan.items()}


class InterleaveHindsightPolicy(HindsightPolicy):
    """The Interleave-v0 beam-search oracle (a lower bound on the optimum) on the detector's loss.

    Args:
        width: Beam width W (``hindsight@W``).
        lam: Price of a heavy step (``hindsight@W:lambda=X``; None: the evaluator's
            ``speed_reward[1] - speed_reward[0]``).
        name: Name in comparisons (default from the arguments).

    Raises:
        ConfigError: A bad width or lambda.
    """

    def __init__(self, width: int, *, lam: float | None = None, name: str = "") -> None:
        self.width = check_width(width)
        self.lam = None if lam is None else check_lambda(lam)
        if not name:
            name = f"{HINDSIGHT}@{self.width}" + ("" if self.lam is None else f":lambda={self.lam:g}")
        super().__init__(name)
        self.plan: dict[str, InterleaveSchedule] = {}

    @classmethod
    def prepare_all(cls, policies: Sequence[Any], evaluator: Any, *, progress: bool = False) -> None:
        """Plan on an :class:`~gistgym.agents.evaluation.InterleaveEvaluator`: one joint search for all policies."""
        kwargs = evaluator.env_kwargs
        configs = list(
            dict.fromkeys((p.width, _gamma(kwargs["speed_reward"]) if p.lam is None else p.lam) for p in policies)
        )
        vids = [v for _, group in evaluator.groups for v in group]
        with BeamSearch(
            evaluator.cache_path,
            split=evaluator.split,
            extractors=kwargs["extractors"],
            skip_light_updates=kwargs["skip_light_updates"],
        ) as search:
            found = dict(zip(configs, search.search(vids, configs, progress=progress), strict=True))
        for p in policies:
            p.plan = found[(p.width, _gamma(kwargs["speed_reward"]) if p.lam is None else p.lam)]
            p.schedules = {v: s.actions for v, s in p.plan.items()}


# --- names ----------------------------------------------------------------------------------
def is_hindsight(spec: str) -> bool:
    """Whether a baseline name belongs to the hindsight family."""
    return spec == HINDSIGHT or spec.startswith((HINDSIGHT + "@", HINDSIGHT + ":"))


def _parse_lambda(spec: str, param: str) -> float:
    if not param.startswith("lambda="):
        raise ConfigError(f"baseline {spec!r}: expected ':lambda=X' after the name, got {param!r}")
    text = param[len("lambda=") :]
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"baseline {spec!r}: lambda must be a finite number, got {text!r}") from exc
    return check_lambda(value)


def parse_keyframe_hindsight(spec: str) -> KeyframeHindsightPolicy:
    """``hindsight``, ``hindsight@F`` (key budget F in [0, 1]) or ``hindsight:lambda=X``.

    Raises:
        ConfigError: Anything else, or a bad number.
    """
    head, sep, param = spec.partition(":")
    lam = _parse_lambda(spec, param) if sep else None
    if head == HINDSIGHT:
        return KeyframeHindsightPolicy(lam=lam)
    if not head.startswith(HINDSIGHT + "@"):
        raise ConfigError(f"unknown hindsight baseline {spec!r}; expected hindsight, hindsight@F or hindsight:lambda=X")
    if sep:
        raise ConfigError(
            f"baseline {spec!r}: give a key budget (hindsight@F) or a lambda (hindsight:lambda=X), not both"
        )
    text = head[len(HINDSIGHT) + 1 :]
    try:
        budget = float(text)
    except ValueError as exc:
        raise ConfigError(f"baseline {spec!r}: the budget must be a key fraction in [0, 1], got {text!r}") from exc
    return KeyframeHindsightPolicy(budget=budget)


def parse_interleave_hindsight(spec: str) -> InterleaveHindsightPolicy:
    """``hindsight@W`` (beam width W) or ``hindsight@W:lambda=X``.

    Raises:
        ConfigError: Anything else, or a bad number.
    """
    head, sep, param = spec.partition(":")
    lam = _parse_lambda(spec, param) if sep else None
    if not head.startswith(HINDSIGHT + "@"):
        raise ConfigError(
            f"baseline {spec!r}: the Interleave hindsight oracle needs a beam width, e.g. hindsight@4 or "
            "hindsight@16:lambda=0.5"
        )
    text = head[len(HINDSIGHT) + 1 :]
    try:
        width = int(text)
    except ValueError as exc:
        raise ConfigError(f"baseline {spec!r}: beam width must be an integer >= 1, got {text!r}") from exc
    return InterleaveHindsightPolicy(width, lam=lam)
