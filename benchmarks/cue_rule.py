"""How much of the hindsight headroom does a hand-made rule on the *runtime* cues capture?

Usage::

    python benchmarks/cue_rule.py --cache data/streams.h5 --headroom runs/headroom/headroom.json
                                  [--other data/streams-2026.h5=runs/headroom/headroom-2026.json ...]
                                  [--select-split train] [--select-videos N] [--split val]
                                  [--grid full|small] [--json] [--save JSON]

``benchmarks/causal_bound.py`` measures rules that are *told* the state of every frame. This
script measures :class:`~gistgym.agents.baselines.CueRulePolicy`, which is told nothing: it
reads the Interleave-v0 runtime cues (``cues=True``; ``gistgym detect`` computes the same
online) and runs the heavy extractor

* once every ``active`` frames while the light features drift from the last heavy frame's
  (``light_change > change``: something moved), else once every ``idle`` frames;
* right after a frame whose light features jumped (``light_step > cut``: a shot cut).

The protocol of a learned scheduler: the rule's parameters are *selected* on ``--select-split``
of ``--cache`` (the training split; the grid's upper Pareto envelope of (heavy fraction,
mAP@0.5)), and only the selected rules are *reported* on ``--split`` of ``--cache`` and of
every ``--other`` cache (e.g. a benchmark made with a seed never used for selection). Each
report scores the selected rules' envelope like ``causal_bound.py`` does: the comparison's
captured share of the hindsight headroom against the fixed-tau curve and the frontier of
``--headroom`` (over the fractions the rules cover, and with fixed tau over 5-50 %), and the
gaps to fixed tau. Evaluations use ``gistgym compare``'s evaluator (real memory rollouts,
mAP@0.5 pooled over every frame of every video).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from causal_bound import READ_AT, pareto, score_curves
from tqdm.auto import tqdm

from gistgym.agents.backends import INTERLEAVE_ENV_ID, get_backend
from gistgym.agents.baselines import CueRulePolicy, FixedTauPolicy, parse_baseline
from gistgym.agents.compare import DEFAULT_TAUS, CompareConfig, load_frontier
from gistgym.errors import GistgymError
from gistgym.staging import staged_file

GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "full": {"active": (2, 3, 4, 6, 8, 11, 16), "idle": (60,), "change": (0.2, 0.35), "cut": (0.5, 1.0)},
    "small": {"active": (2, 6), "idle": (12,), "change": (0.2,), "cut": (0.5,)},
}
"""Rule parameters: ``full`` (28 rules) or ``small`` (2, for tests)."""


def grid_rules(grid: Mapping[str, Sequence[Any]]) -> list[CueRulePolicy]:
    """One rule per point of ``grid``."""
    return [
        CueRulePolicy(a, i, x, c)
        for a in grid["active"]
        for i in grid["idle"]
        for x in grid["change"]
        for c in grid["cut"]
    ]


def evaluate(evaluator: Any, policies: Sequence[Any], desc: str, progress: bool) -> list[dict[str, Any]]:
    """``{name, fraction, map50}`` of every policy."""
    rows = []
    for p in tqdm(policies, desc=desc, disable=not progress):
        r = evaluator.evaluate(p)
        rows.append({"name": p.name, "fraction": r.heavy_fraction, "map50": r.map50})
    return rows


def on_envelope(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the rows on the upper Pareto envelope of (fraction, mAP)."""
    envelope = set(pareto([(r["fraction"], r["map50"]) for r in rows]))
    return [r["name"] for r in rows if (r["fraction"], r["map50"]) in envelope]


def parse_targets(cache: str, headroom: str, other: Sequence[str]) -> list[tuple[str, str]] | str:
    """``[(cache, headroom), ...]``: the main one and each ``--other CACHE=HEADROOM``; the error line otherwise."""
    targets = [(cache, headroom)]
    for item in other:
        c, eq, h = item.partition("=")
        if not eq or not c or not h:
            return f"--other {item!r} is not CACHE=HEADROOM"
        targets.append((c, h))
    return targets


def report_on(cache: str, headroom: str, split: str, rules: Sequence[Any], *, progress: bool) -> dict[str, Any]:
    """The policies (``rules``: any with a cue-reading ``act``) and fixed tau on ``split`` of ``cache``, scored.

    Each policy's ``(heavy fraction, mAP)`` point and the envelope of all of them against the
    fixed-tau curve and the frontier of ``headroom`` (:func:`~causal_bound.score_curves`).
    """
    backend = get_backend(INTERLEAVE_ENV_ID)
    settings = {**backend.compare_settings(CompareConfig.of(cache=cache, split=split)), "cues": True}
    evaluator = backend.make_evaluator(cache, split, settings, max_videos=None)
    try:
        frontier = load_frontier(headroom, env_id=INTERLEAVE_ENV_ID, cache=cache, split=split,
                                 videos=len(evaluator.video_ids))  # fmt: skip
        speed = evaluator.env_kwargs["speed_reward"]
        refs = [parse_baseline("heavy", speed), parse_baseline("light", speed)]
        fixed_rows = evaluate(evaluator, [*refs, *(FixedTauPolicy(t) for t in DEFAULT_TAUS)], "fixed tau", progress)
        rule_rows = evaluate(evaluator, rules, "rules", progress)
    finally:
        evaluator.close()
    fixed = [(r["fraction"], r["map50"]) for r in fixed_rows]
    scores = score_curves([[(r["fraction"], r["map50"]) for r in rule_rows]], fixed, frontier.families)
    return {
        "cache": cache,
        "split": split,
        "videos": len(evaluator.video_ids),
        "frontier": frontier.source,
        "fixed": fixed_rows,
        "rules": rule_rows,
        **scores,
    }


def format_report(report: Mapping[str, Any]) -> str:
    """Markdown: the selection and one row per reported benchmark."""
    lines = [
        f"# Runtime cue rule: selected on {report['select']['split']} of {report['select']['cache']} "
        f"({report['select']['videos']} videos, {len(report['select']['rules'])} rules), "
        f"{len(report['selected'])} on the envelope",
        "",
        "selected: " + ", ".join(f"`{n}`" for n in report["selected"]),
        "",
        "| benchmark | covered | captured | mean gap vs fixed tau | max gap (at) | "
        "captured with fixed tau (5-50 %) | " + " | ".join(f"mAP@{x:.0%}" for x in READ_AT) + " |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(READ_AT),
    ]
    for r in report["reports"]:
        c, cf = r["captured"], r["captured_with_fixed"]
        span = "-".join(f"{100 * x:.0f}" for x in c["covered"]) + " %" if c.get("covered") else "-"
        at = " | ".join("-" if v is None else f"{v:.4f}" for v in r["map50_at"].values())
        lines.append(
            f"| {r['cache']} [{r['split']}] | {span} | {c['captured']:.1%} | {100 * c['mean_gap']:+.2f} | "
            f"{100 * c['max_gap']:+.2f} ({c['max_gap_at']:.0%}) | "
            f"{cf['captured']:.1%} | {at} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="feature cache with the interleave section")
    parser.add_argument("--headroom", required=True, help="benchmarks/headroom.py --save JSON of --cache")
    parser.add_argument("--other", action="append", default=[], metavar="CACHE=HEADROOM",
                        help="also report on this cache's --split against this headroom file (repeatable)")  # fmt: skip
    parser.add_argument("--select-split", default="train", help="split the rules are selected on")
    parser.add_argument("--select-videos", type=int, default=None, help="only the first N videos of it")
    parser.add_argument("--split", default="val", help="split the selected rules are reported on")
    parser.add_argument("--grid", default="full", choices=sorted(GRIDS))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", default="", help="also write the JSON report to this file")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars on stderr")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    targets = parse_targets(args.cache, args.headroom, args.other)
    if isinstance(targets, str):
        print(f"benchmarks/cue_rule.py: error: {targets}", file=sys.stderr)
        return 2
    backend = get_backend(INTERLEAVE_ENV_ID)
    rules = grid_rules(GRIDS[args.grid])
    try:
        for cache, headroom in targets:  # a bad file fails before the long selection
            load_frontier(headroom, env_id=INTERLEAVE_ENV_ID, cache=cache, split=args.split)
        settings = {**backend.compare_settings(CompareConfig.of(cache=args.cache)), "cues": True}
        evaluator = backend.make_evaluator(args.cache, args.select_split, settings, max_videos=args.select_videos)
        try:
            select_rows = evaluate(evaluator, rules, f"select on {args.select_split}", args.progress)
            select_videos = len(evaluator.video_ids)
        finally:
            evaluator.close()
        selected = on_envelope(select_rows)
        chosen = [r for r in rules if r.name in selected]
        reports = [report_on(c, h, args.split, chosen, progress=args.progress) for c, h in targets]
    except GistgymError as exc:
        print(f"benchmarks/cue_rule.py: error: {exc}", file=sys.stderr)
        return 2
    report = {
        "select": {"cache": args.cache, "split": args.select_split, "videos": select_videos, "rules": select_rows},
        "selected": selected,
        "reports": reports,
        "grid": args.grid,
        "seconds": time.perf_counter() - start,
    }
    if args.save:
        with staged_file(args.save, ".json") as staged:
            staged.write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
