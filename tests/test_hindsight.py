"""Hindsight oracles: exact keyframe DPs and interleave beam search against brute force, replay, names."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from gistgym.agents.backends import is_baseline
from gistgym.agents.baselines import parse_baseline
from gistgym.agents.compare import CompareConfig, compare
from gistgym.agents.evaluation import InterleaveEvaluator
from gistgym.agents.hindsight import (
    BeamSearch,
    InterleaveHindsightPolicy,
    KeyframeHindsightPolicy,
    RowOutputs,
    SchedulePolicy,
    allocate_keys,
    budget_keys,
    keyframe_cost_curve,
    keyframe_cost_table,
    keyframe_exact_budget,
    keyframe_hull,
    keyframe_lagrangian,
    keyframe_loss_tables,
    min_keys,
    plan_keyframe,
    prepare_policies,
)
from gistgym.agents.keyframe_baselines import FixedDurationPolicy, parse_keyframe_baseline
from gistgym.agents.keyframe_eval import KeyframeEvaluator
from gistgym.envs.interleave_core import DEFAULT_EXTRACTORS, DEFAULT_SPEED_REWARD, InterleaveCore
from gistgym.errors import CacheSectionError, ConfigError
from gistgym.feature_cache import FeatureCache

D = 4
"""max_distance of the keyframe brute-force checks (small, so the forced keys matter)."""
T_KEY = 12
"""Frames of the keyframe brute force: 2^11 schedules."""
T_BEAM = 9
"""Frames of the interleave brute force: 2^8 = 256 schedules."""
LAMBDAS = (0.03, 0.07)
"""Heavy-step prices of the interleave checks: the tiny detector's light-heavy loss gaps are ~0-0.14
per frame, so these give schedules that mix both extractors."""


@pytest.fixture(scope="module")
def val_ids(keyframe_cache: Path) -> tuple[str, ...]:
    with FeatureCache(keyframe_cache) as cache:
        return cache.video_ids("val")


@pytest.fixture(scope="module")
def loss_tables(keyframe_cache: Path, val_ids: tuple[str, ...]) -> dict[str, np.ndarray]:
    return keyframe_loss_tables(keyframe_cache, val_ids, max_distance=D)


# --- Keyframe-v0 -------------------------------------------------------------------------------
def all_key_schedules(T: int, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Every key set with frame 0 a key and no frame at distance >= max_distance: (keys (S, T) bool, distances)."""
    bits = np.array(list(itertools.product([False, True], repeat=T - 1)), dtype=bool).reshape(-1, T - 1)
    keys = np.concatenate([np.ones((len(bits), 1), dtype=bool), bits], axis=1)
    t = np.arange(T)
    distances = t - np.maximum.accumulate(np.where(keys, t, 0), axis=1)
    valid = (distances < max_distance).all(axis=1)
    return keys[valid], distances[valid]


def brute_costs(cost: np.ndarray, T: int, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys, distances = all_key_schedules(T, max_distance)
    table = keyframe_cost_table(cost[:T], max_distance)
    totals = table[np.arange(T), distances].sum(axis=1)
    return keys, keys.sum(axis=1), totals


def cost_tables(loss_tables: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The first T_KEY frames of the cached losses and a random table (real ties are rare in both)."""
    first = next(iter(loss_tables.values()))[:T_KEY]
    rng = np.random.default_rng(0)
    return [first, rng.random((T_KEY, D + 2))]


def test_keyframe_lagrangian_is_the_brute_force_optimum(loss_tables: dict[str, np.ndarray]) -> None:
    for cost in cost_tables(loss_tables):
        keys, counts, totals = brute_costs(cost, T_KEY, D)
        for lam in (-0.5, 0.0, 0.05, 0.3, 1.0, 5.0):
            got = keyframe_lagrangian(cost, lam, max_distance=D)
            best = (totals + lam * counts).min()
            assert got.objective(lam) == pytest.approx(best, abs=1e-9), lam
            assert (got.distances < D).all() and got.keys[0]  # a schedule the environment runs as is
            assert got.cost == pytest.approx(totals[(keys == got.keys).all(axis=1)][0], abs=1e-12)
            assert got.lam == lam and got.actions.tolist() == [0 if k else 1 for k in got.keys]


def test_keyframe_exact_budget_is_the_brute_force_optimum_for_every_budget(
    loss_tables: dict[str, np.ndarray],
) -> None:
    for cost in cost_tables(loss_tables):
        _, counts, totals = brute_costs(cost, T_KEY, D)
        curve = keyframe_cost_curve(cost, max_distance=D)
        lo = min_keys(T_KEY, D)
        assert lo == 3 and curve.min_keys == lo and curve.max_keys == T_KEY
        assert np.isinf(curve.costs[:lo]).all()
        for k in range(lo, T_KEY + 1):
            best = totals[counts == k].min()
            assert curve.costs[k] == pytest.approx(best, abs=1e-9), k
            for schedule in (curve.schedule(k), keyframe_exact_budget(cost, k, max_distance=D)):
                assert schedule.num_keys == k and schedule.cost == pytest.approx(best, abs=1e-9)
                assert (schedule.distances < D).all()
        with pytest.raises(ConfigError, match="keys must be an integer in"):
            keyframe_exact_budget(cost, lo - 1, max_distance=D)


def test_keyframe_hull_is_the_lower_convex_hull_of_the_exact_curve(loss_tables: dict[str, np.ndarray]) -> None:
    for cost in cost_tables(loss_tables):
        curve = keyframe_cost_curve(cost, max_distance=D)
        points = [(k, float(curve.costs[k])) for k in range(curve.min_keys, T_KEY + 1)]
        hull: list[tuple[int, float]] = []  # monotone chain, lower hull
        for p in points:
            while len(hull) >= 2:
                (x1, y1), (x2, y2) = hull[-2], hull[-1]
                if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 1e-12:
                    hull.pop()
                else:
                    break
            hull.append(p)
        got = keyframe_hull(cost, max_distance=D)
        assert [s.num_keys for s in got] == [k for k, _ in hull]
        assert [s.cost for s in got] == pytest.approx([c for _, c in hull], abs=1e-9)
        for s in got[1:-1]:  # each inner vertex is the Lagrangian optimum at its own lambda
            assert s.lam is not None
            assert keyframe_lagrangian(cost, s.lam, max_distance=D).objective(s.lam) == pytest.approx(
                s.objective(s.lam), abs=1e-9
            )


def test_pooled_budget_is_the_exact_split_optimum(loss_tables: dict[str, np.ndarray]) -> None:
    a, b = (t for t in loss_tables.values())
    costs = {"a": a[:10], "b": b[:T_KEY]}
    per_video = [brute_costs(c, len(c), D) for c in costs.values()]
    best_k = [
        np.array([tot[cnt == k].min() if (cnt == k).any() else np.inf for k in range(len(c) + 1)])
        for c, (_, cnt, tot) in zip(costs.values(), per_video, strict=True)
    ]
    for budget in (0.0, 0.2, 0.3, 0.5, 0.77, 1.0):
        total = budget_keys([10, T_KEY], budget, D)
        assert total == min(max(round(budget * 22), min_keys(10, D) + min_keys(T_KEY, D)), 22)
        plan = plan_keyframe(costs, max_distance=D, budget=budget)
        assert sum(s.num_keys for s in plan.values()) == total
        brute = min(best_k[0][k] + best_k[1][total - k] for k in range(min(total, 10) + 1) if total - k <= T_KEY)
        assert sum(s.cost for s in plan.values()) == pytest.approx(brute, abs=1e-9), budget
    assert allocate_keys([np.array([np.inf, 1.0, 0.5]), np.array([np.inf, 2.0, 0.0])], 3) == [1, 2]
    with pytest.raises(ConfigError, match="exactly 9 keys"):
        allocate_keys([np.array([np.inf, 1.0, 0.5])], 9)


def test_keyframe_oracle_replays_exactly_and_beats_the_fixed_schedule(keyframe_cache: Path) -> None:
    with KeyframeEvaluator(keyframe_cache, env_kwargs={"max_distance": 5, "speed_reward": (0.0, 0.3)}) as ev:
        budget = parse_keyframe_baseline("hindsight@0.25", (0.0, 0.3))
        lam = parse_keyframe_baseline("hindsight:lambda=0.3", (0.0, 0.3))
        gamma = parse_keyframe_baseline("hindsight", (0.0, 0.3))
        assert (budget.name, lam.name, gamma.name) == ("hindsight@0.25", "hindsight:lambda=0.3", "hindsight")
        prepare_policies([budget, lam, gamma, FixedDurationPolicy(4)], ev)
        frames = sum(len(s.keys) for s in budget.plan.values())
        results = {p.name: ev.evaluate(p) for p in (budget, lam, gamma, FixedDurationPolicy(4))}
        for p in (budget, lam, gamma):
            r = results[p.name]
            for v in r.videos:
                assert v.distances.tolist() == p.plan[v.video_id].distances.tolist()
                executed = v.losses[np.arange(len(v.actions)), (v.actions != 0).astype(int)].sum()
                assert executed == pytest.approx(p.plan[v.video_id].cost, abs=1e-9)
        # lambda = gamma by default: the same schedules as hindsight:lambda=0.3
        assert all((gamma.schedules[v] == lam.schedules[v]).all() for v in lam.schedules)
        assert results["hindsight@0.25"].key_fraction == round(0.25 * frames) / frames == 0.25
        assert results["key=4"].key_fraction == 0.25

        def total_loss(name: str) -> float:
            return sum(
                float(v.losses[np.arange(len(v.actions)), (v.actions != 0).astype(int)].sum())
                for v in results[name].videos
            )

        assert total_loss("hindsight@0.25") <= total_loss("key=4") + 1e-9  # the optimum at that key count
        # deterministic: planned again, the same schedules and scores
        again = KeyframeHindsightPolicy(budget=0.25)
        again.prepare(ev)
        assert all((again.schedules[v] == budget.schedules[v]).all() for v in budget.schedules)
        assert ev.evaluate(again).summary() == results["hindsight@0.25"].summary()


# --- Interleave-v0 -----------------------------------------------------------------------------
def brute_force_interleave(cache: Path, video_id: str, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every schedule of the first T frames rolled out by the environment's core: (actions, cost, heavy)."""
    bits = np.array(list(itertools.product([0, 1], repeat=T - 1)), dtype=np.int64)
    actions = np.concatenate([np.zeros((len(bits), 1), dtype=np.int64), bits], axis=1)
    n = len(actions)
    core = InterleaveCore(
        n,
        cache,
        split="val",
        clip_len=T,
        extractors=DEFAULT_EXTRACTORS,
        speed_reward=DEFAULT_SPEED_REWARD,
        skip_light_updates=None,
        history_len=20,
    )
    slots = np.arange(n, dtype=np.int64)
    for s in slots:
        core.load(int(s), video_id, 0)
    cost = np.zeros(n)
    for t in range(T):
        tr = core.advance(slots, actions[:, t])
        assert (tr.actions == actions[:, t]).all()
        cost += tr.losses[slots, actions[:, t]]
    core.close()
    return actions, cost, (actions == 0).sum(axis=1)


def test_beam_search_keeping_every_schedule_is_the_brute_force_optimum(
    keyframe_cache: Path, val_ids: tuple[str, ...]
) -> None:
    width = 2 ** (T_BEAM - 1)
    lambdas = LAMBDAS
    with BeamSearch(keyframe_cache, split="val") as search:
        found = search.search(val_ids, [(width, lam) for lam in lambdas], frames=T_BEAM)
        # beams of both lambdas that share their heavy frames share one state
        assert search.stats["states"] < search.stats["beam_steps"]
    mixed = 0
    for v in val_ids:
        actions, cost, heavy = brute_force_interleave(keyframe_cache, v, T_BEAM)
        for lam, per_video in zip(lambdas, found, strict=True):
            got = per_video[v]
            objective = cost + lam * heavy
            mine = int(np.flatnonzero((actions == got.actions).all(axis=1))[0])
            assert got.objective == pytest.approx(objective.min(), abs=1e-4)
            assert objective[mine] == pytest.approx(objective.min(), abs=1e-5)  # an optimal schedule
            assert got.cost == pytest.approx(cost[mine], abs=1e-4)  # the search's rollout is the core's
            mixed += 1 < heavy[mine] < T_BEAM
    assert mixed >= 2  # not the trivial all-light or all-heavy optimum


def greedy_schedule(cache: Path, video_ids: tuple[str, ...], lam: float) -> np.ndarray:
    """Greedy with real rollouts by the environment's core: each frame argmin_a L^a + lam [a == 0]."""
    with FeatureCache(cache) as c:
        T = c.entry(video_ids[0]).num_frames
    n = len(video_ids)
    core = InterleaveCore(
        n,
        cache,
        split="val",
        clip_len=T,
        extractors=DEFAULT_EXTRACTORS,
        speed_reward=DEFAULT_SPEED_REWARD,
        skip_light_updates=None,
        history_len=20,
    )
    slots = np.arange(n, dtype=np.int64)
    for i, v in enumerate(video_ids):
        core.load(i, v, 0)
    out = np.zeros((n, T), dtype=np.int64)
    core.advance(slots, out[:, 0])
    for t in range(1, T):
        price = np.array([lam, 0.0])
        out[:, t] = np.argmin(core.peek_losses(slots) + price, axis=1)
        core.advance(slots, out[:, t])
    core.close()
    return out


def test_width_one_is_greedy_and_wider_beams_are_deterministic(keyframe_cache: Path, val_ids: tuple[str, ...]) -> None:
    lambdas = LAMBDAS
    with BeamSearch(keyframe_cache, split="val") as search:
        first = search.search(val_ids, [(w, lam) for lam in lambdas for w in (1, 4)])
        second = search.search(val_ids, [(w, lam) for lam in lambdas for w in (1, 4)])
    for a, b in zip(first, second, strict=True):
        for v in val_ids:
            assert a[v].actions.tolist() == b[v].actions.tolist() and a[v].cost == b[v].cost
    for k, lam in enumerate(lambdas):
        greedy = greedy_schedule(keyframe_cache, val_ids, lam)
        for i, v in enumerate(val_ids):
            assert first[2 * k][v].actions.tolist() == greedy[i].tolist(), (lam, v)
            assert first[2 * k][v].width == 1 and first[2 * k + 1][v].width == 4
            assert 1 < first[2 * k][v].heavy < len(greedy[i])  # a mixed schedule


def test_row_cost_is_pluggable(keyframe_cache: Path, val_ids: tuple[str, ...]) -> None:
    seen: list[RowOutputs] = []

    def light_costs_double(rows: RowOutputs) -> np.ndarray:
        seen.append(rows)
        return rows.losses * np.array([1.0, 2.0])

    with BeamSearch(keyframe_cache, split="val", cost=light_costs_double) as search:
        (found,) = search.search(val_ids[:1], [(2, 0.1)], frames=6)
    rows = seen[0]
    assert rows.losses.shape == (1, 2) and rows.loc.shape[:2] == (1, 2) and rows.loc.shape[-1] == 4
    assert rows.conf.shape[:2] == (1, 2) and rows.video_ids == val_ids[:1] and rows.frame_index == 0
    assert [r.frame_index for r in seen] == list(range(6))
    with (
        BeamSearch(keyframe_cache, split="val", cost=lambda rows: rows.losses[:, :1]) as search,
        pytest.raises(ConfigError, match="row cost must return"),
    ):
        search.search(val_ids[:1], [(1, 0.0)], frames=3)
    assert found[val_ids[0]].cost > 0


def test_interleave_oracle_replays_in_the_evaluator(keyframe_cache: Path) -> None:
    with InterleaveEvaluator(keyframe_cache, "val") as ev:
        policies = [parse_baseline(s, (0.0, 0.5)) for s in ("hindsight@1:lambda=0.07", "hindsight@4:lambda=0.07")]
        default = parse_baseline("hindsight@4", (0.0, 0.5))  # lambda = the evaluator's gamma (1.0)
        assert [p.name for p in (*policies, default)] == [
            "hindsight@1:lambda=0.07",
            "hindsight@4:lambda=0.07",
            "hindsight@4",
        ]
        prepare_policies([*policies, default], ev)
        assert all(s.lam == 1.0 for s in default.plan.values())
        for p in policies:
            r = ev.evaluate(p)
            for v in r.videos:
                plan = p.plan[v.video_id]
                assert v.actions.tolist() == plan.actions.tolist()
                executed = v.losses[np.arange(len(v.actions)), v.actions].sum()
                assert executed == pytest.approx(plan.cost, abs=1e-4)
            assert r.heavy_fraction == sum(s.heavy for s in p.plan.values()) / r.frames
            assert 0.1 < r.heavy_fraction < 0.9


# --- bad input, names, compare -----------------------------------------------------------------
def test_bad_input_raises_typed_errors(keyframe_cache: Path, tmp_path: Path, val_ids: tuple[str, ...]) -> None:
    no_keyframe = tmp_path / "no_keyframe.h5"
    no_interleave = tmp_path / "no_interleave.h5"
    for path, sections in ((no_keyframe, ["interleave"]), (no_interleave, ["keyframe"])):
        shutil.copy(keyframe_cache, path)
        with h5py.File(path, "r+") as f:
            f.attrs["sections"] = json.dumps(sections)
    with pytest.raises(CacheSectionError, match=r"\['keyframe'\] not in the cache"):
        keyframe_loss_tables(no_keyframe, val_ids, max_distance=5)
    with pytest.raises(CacheSectionError, match=r"\['interleave'\] not in the cache"):
        BeamSearch(no_interleave, split="val")
    cost = np.ones((6, 5))
    for bad in (-0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ConfigError, match="budget"):
            KeyframeHindsightPolicy(budget=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="budget"):
            plan_keyframe({"a": cost}, max_distance=3, budget=bad)  # type: ignore[arg-type]
    for bad_lam in (float("nan"), float("inf"), -float("inf"), "1"):
        with pytest.raises(ConfigError, match="lambda"):
            keyframe_lagrangian(cost, bad_lam, max_distance=3)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="lambda"):
            InterleaveHindsightPolicy(2, lam=bad_lam)  # type: ignore[arg-type]
    with BeamSearch(keyframe_cache, split="val") as search:
        for bad_width in (0, -1, 1.5, True):
            with pytest.raises(ConfigError, match="beam width"):
                search.search(val_ids, [(bad_width, 0.5)])  # type: ignore[list-item]
        with pytest.raises(ConfigError, match="lambda"):
            search.search(val_ids, [(2, float("nan"))])
    with pytest.raises(ConfigError, match="beam width"):
        InterleaveHindsightPolicy(0)
    with pytest.raises(ConfigError, match="exactly one of budget"):
        plan_keyframe({"a": cost}, max_distance=3)
    with pytest.raises(ConfigError, match="not both"):
        KeyframeHindsightPolicy(budget=0.1, lam=1.0)
    holes = np.ones((6, 5))
    holes[0, 2] = np.inf  # d > t: never read
    holes[2, 1] = np.nan
    with pytest.raises(ConfigError, match=r"cost\[2, 1\] = nan is not finite"):
        keyframe_lagrangian(holes, 0.5, max_distance=3)
    with pytest.raises(ConfigError, match="table"):
        keyframe_lagrangian(np.ones((6, 2)), 0.5, max_distance=3)
    with pytest.raises(ConfigError, match="call prepare"):
        InterleaveHindsightPolicy(2).act({}, [{"video_id": "v", "frame_index": 0}])
    replay = SchedulePolicy({"v": [0, 1, 1]}, "mine")
    assert replay.act({}, [{"video_id": "v", "frame_index": 0}, {"video_id": "v", "frame_index": 1}]).tolist() == [1, 1]
    with pytest.raises(ConfigError, match="no schedule for video 'w'"):
        replay.act({}, [{"video_id": "w", "frame_index": 0}])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("hindsight@abc", "budget"),
        ("hindsight@1.5", "budget"),
        ("hindsight:lambda=inf", "lambda"),
        ("hindsight:lambda=x", "lambda"),
        ("hindsight@0.1:lambda=1", "not both"),
        ("hindsight:beam=3", "lambda=X"),
    ],
)
def test_keyframe_names_refused(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_keyframe_baseline(spec, (0.0, 0.3))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("hindsight", "beam width"),
        ("hindsight@0", "beam width"),
        ("hindsight@0.5", "beam width"),
        ("hindsight@4:lambda=nan", "lambda"),
        ("hindsight:lambda=1", "beam width"),
    ],
)
def test_interleave_names_refused(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_baseline(spec, (0.0, 1.0))


def test_names_and_compare_keys(keyframe_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gistgym.scripts.cli import main

    assert parse_keyframe_baseline("hindsight@0.1", (0.0, 0.3)).name == "hindsight@0.10"
    assert parse_keyframe_baseline("hindsight@0.125", (0.0, 0.3)).name == "hindsight@0.125"
    assert parse_baseline("hindsight@16:lambda=0.50", (0.0, 1.0)).name == "hindsight@16:lambda=0.5"
    for spec in ("hindsight", "hindsight@0.1", "hindsight:lambda=2", "hindsight@4:lambda=0.5"):
        assert is_baseline(spec)
    assert not is_baseline("hindsight-runs")
    kf: dict[str, Any] = {"env": "gistgym/Keyframe-v0", "durations": (4,), "flow_thresholds": (1.0,)}
    result = compare(
        CompareConfig.of(
            cache=str(keyframe_cache),
            policies=("hindsight@0.25", "hindsight:lambda=0.3"),
            out=str(tmp_path / "kf"),
            progress=False,
            **kf,
        )
    )
    data = result.as_json()
    assert {"hindsight@0.25", "hindsight:lambda=0.3", "key=4", "oracle"} <= data.keys()
    assert data["hindsight@0.25"]["key_fraction"] == 0.25
    argv = ["compare", "--cache", str(keyframe_cache), "--taus", "3", "--policies", "hindsight@2:lambda=0.07"]
    assert main([*argv, "--out", str(tmp_path / "il"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"hindsight@2:lambda=0.07", "tau=3", "heavy", "oracle"} <= out.keys()
    assert 0.0 < out["hindsight@2:lambda=0.07"]["heavy_fraction"] < 1.0
    assert (tmp_path / "il" / "pareto.png").stat().st_size > 0
