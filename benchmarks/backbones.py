"""Counted FLOPs and measured latency of the interleaved detector's modules, on one thread.

Usage::

    python benchmarks/backbones.py [--weights PATH] [--repeats N] [--engine NAME ...] [--json]

Loads the shipped weights (``gistgym/weights/interleaved_detector.pt``) when they exist,
else builds a randomly initialised embedded default (``default_detector_config()``); FLOPs
and latency do not depend on the weight values, only on the architecture. Prints, per
module, the FLOPs counted by ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs;
convolutions and matmuls only, element-wise ops such as the LSTM gates' products are not
counted) and the median latency of one frame at batch 1; then the whole-step totals per
extractor (extractor + memory + head), the end-to-end latency of ``InterleavedDetector.step``
(uint8 frame in, includes preprocessing and Python overhead) and the heavy/light ratios of
counted FLOPs and of measured latency, all from the same run.

Then the per-module table on every execution engine (:mod:`gistgym.backbones.engines`: eager
torch, frozen TorchScript, ONNX Runtime with one intra-op thread), measured in the same run:
for each module the engines are timed next to each other in ``--rounds`` rounds and the median
of the rounds is reported, with each engine's ratio to eager (median of the rounds' ratios).
An extractor with temporal-shift buffers is timed as its frame step with the buffers passed in
and out (:class:`~gistgym.backbones.engines.ShiftExtractorStep`, what the online runtime calls).
For them the last table compares the two ways through a video of ``--run-frames`` frames,
also timed next to each other: frame by frame (the online runtime, batch one) and as one run
of consecutive frames per pass (``steps``, what the cache build and the evaluation do).
``--json`` prints those tables as one JSON object instead of the text.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from gistgym.backbones.detector import InterleavedDetector, default_detector_config
from gistgym.backbones.engines import ShiftExtractorStep
from gistgym.backbones.flops import measure_latency, step_costs
from gistgym.backbones.weights import DEFAULT_WEIGHTS, freeze, load_detector
from gistgym.errors import GistgymError

ENGINE_ORDER = ("eager", "torchscript", "onnxruntime")


def build(weights: str | None) -> tuple[InterleavedDetector, str]:
    """The detector to measure and a line saying where it came from."""
    if weights:
        model, meta = load_detector(weights)
        return model, f"weights: {weights} (sha256 {str(meta.get('sha256'))[:12]})"
    if DEFAULT_WEIGHTS.is_file():
        model, meta = load_detector(DEFAULT_WEIGHTS)
        return model, f"weights: shipped {DEFAULT_WEIGHTS} (sha256 {str(meta.get('sha256'))[:12]})"
    torch.manual_seed(0)
    model = freeze(InterleavedDetector(default_detector_config()))
    return model, f"weights: none shipped ({DEFAULT_WEIGHTS} absent) -> random init of default_detector_config()"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="detector weights (.pt with its .json sidecar)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per module (median is reported)")
    parser.add_argument(
        "--engine", action="append", default=None, help="engine of the per-module table (repeatable; default all)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the per-module table (median)")
    parser.add_argument("--run-frames", type=int, default=256, help="frames of the shifting extractors' run table")
    parser.add_argument("--json", action="store_true", help="print the per-module table as one JSON object")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1 or args.run_frames < 1:
        parser.error("--repeats, --rounds and --run-frames must be >= 1")

    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        model, source = build(args.weights)
    except GistgymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    try:
        engines = engine_list(args.engine)
        table = engine_table(model, engines, args.repeats, args.rounds)
        table["shift_runs"] = shift_runs(model, args.run_frames, args.rounds)
    except GistgymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "source": source,
                    "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "threads": 1,
                    "batch": 1,
                    "repeats": args.repeats,
                    "rounds": args.rounds,
                    **table,
                }
            )
        )
        return 0
    print(source)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, {platform.processor() or platform.machine()}, "
        f"batch 1, {cfg.image_size}x{cfg.image_size} frames, median of {args.repeats} calls"
    )
    print(f"skip_light_updates={cfg.skip_light_updates}, memory grid {model.grid}x{model.grid}")
    print()

    costs = step_costs(model, measure=True, repeats=args.repeats)

    # end-to-end step latency per extractor (same run, same thread)
    frame = torch.randint(0, 256, (1, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    state = model.initial_state(1)
    with torch.no_grad():
        state = model.step(frame, 0, state).state  # a written memory, like mid-video
    step_s = []
    for i in range(len(model.extractors)):

        def run(i: int = i) -> object:
            return model.step(frame, i, state)

        step_s.append(measure_latency(run, repeats=args.repeats))

    rows: list[tuple[str, str, float, float]] = []
    for c in costs:
        ext = model.extractor(model.extractor_names.index(c.extractor))
        e = ext.config
        desc = f"MobileNetV2 x{e.width_mult} {e.num_blocks} blocks, in {round(cfg.image_size * e.input_scale)}px"
        if e.shift_fraction:
            desc += f", shift {e.shift_fraction:g}"
        rows.append((f"extractor {c.extractor}", desc, c.extractor_flops / 1e6, c.extractor_seconds * 1e3))
    c0 = costs[0]
    mem = model.memory
    rows.append(
        (
            "memory",
            f"ConvLSTM in {mem.in_channels} hidden {mem.hidden_channels} bottleneck {mem.bottleneck_channels} "
            f"G={mem.groups}",
            c0.memory_flops / 1e6,
            c0.memory_seconds * 1e3,
        )
    )
    rows.append(
        (
            "head",
            f"SSDLite {cfg.anchors.per_cell * model.grid**2} anchors, {cfg.num_classes} classes",
            c0.head_flops / 1e6,
            c0.head_seconds * 1e3,
        )
    )

    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print("Per module")
    print(f"| {'module':<{w0}} | {'what':<{w1}} | {'MFLOPs':>8} | {'ms (median)':>11} |")
    print(f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|{'-' * 10}|{'-' * 13}|")
    for name, desc, mflops, ms in rows:
        print(f"| {name:<{w0}} | {desc:<{w1}} | {mflops:8.2f} | {ms:11.3f} |")
    print()

    names = [c.extractor for c in costs]
    w = max(len(n) for n in [*names, "extractor"])
    print("Whole step (extractor + memory + head)")
    print(
        f"| {'extractor':<{w}} | {'MFLOPs':>8} | {'sum of modules ms':>17} | {'step() ms':>9} | "
        f"{'heavy/this FLOPs':>16} | {'heavy/this ms (sum)':>19} | {'heavy/this ms (step)':>20} |"
    )
    print(f"|{'-' * (w + 2)}|{'-' * 10}|{'-' * 19}|{'-' * 11}|{'-' * 18}|{'-' * 21}|{'-' * 22}|")
    for c, s in zip(costs, step_s, strict=True):
        print(
            f"| {c.extractor:<{w}} | {c.step_flops / 1e6:8.2f} | {c.step_seconds * 1e3:17.3f} | {s * 1e3:9.3f} | "
            f"{c0.step_flops / c.step_flops:16.2f} | {c0.step_seconds / c.step_seconds:19.2f} | "
            f"{step_s[0] / s:20.2f} |"
        )
    print()
    print(
        "heavy/light extractor alone: "
        + ", ".join(
            f"{c.extractor}: {c0.extractor_flops / c.extractor_flops:.2f}x FLOPs, "
            f"{c0.extractor_seconds / c.extractor_seconds:.2f}x latency"
            for c in costs[1:]
        )
    )
    print()
    print_engine_table(table, args.repeats, args.rounds)
    print()
    print(f"Shifting extractors through {args.run_frames} consecutive frames, eager, ms per frame (median of "
          f"{args.rounds} rounds)")  # fmt: skip
    print("| extractor | frame by frame | one run per pass | speed-up |")
    print("|---|---:|---:|---:|")
    for name, r in table["shift_runs"].items():
        print(f"| {name} | {r['frame_by_frame_ms']:.3f} | {r['run_ms']:.3f} | {r['speedup']:.1f}x |")
    print(f"(benchmark took {time.perf_counter() - start:.1f} s)")
    return 0


def shift_runs(model: InterleavedDetector, frames: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per shifting extractor: ms per frame through ``frames`` consecutive frames, frame by frame and as one run.

    The two are timed next to each other in each round; ``speedup`` is the median of the
    rounds' ratios.
    """
    cfg = model.config
    video = torch.randint(0, 256, (frames, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(model.extractor_names):
        if not model.extractor(i).uses_shift:
            continue
        images = model.preprocess(video)

        def by_frame(i: int = i, images: torch.Tensor = images) -> None:
            state = None
            for t in range(len(images)):
                _, state = model.extract(i, images[t : t + 1], state)

        def as_run(i: int = i, images: torch.Tensor = images) -> None:
            model.extract(i, images, None, len(images))

        times: list[tuple[float, float]] = []
        with torch.inference_mode():
            as_run()  # warm-up
            for r in range(rounds):
                pair = [0.0, 0.0]
                for k in (0, 1) if r % 2 == 0 else (1, 0):
                    t0 = time.perf_counter()
                    (by_frame, as_run)[k]()
                    pair[k] = time.perf_counter() - t0
                times.append((pair[0], pair[1]))
        out[name] = {
            "frame_by_frame_ms": statistics.median(a for a, _ in times) / frames * 1e3,
            "run_ms": statistics.median(b for _, b in times) / frames * 1e3,
            "speedup": statistics.median(a / b for a, b in times),
        }
    return out


def engine_list(names: list[str] | None) -> tuple[str, ...]:
    """The engines to measure (checked), eager first when present (the ratios' baseline)."""
    from gistgym.backbones.engines import check_engine

    chosen = tuple(dict.fromkeys(names or ENGINE_ORDER))
    for name in chosen:
        check_engine(name)
    return tuple(e for e in ENGINE_ORDER if e in chosen)


def engine_table(model: InterleavedDetector, engines: tuple[str, ...], repeats: int, rounds: int) -> dict[str, Any]:
    """Median latency (ms, batch 1) of every module on every engine, timed side by side in ``rounds`` rounds."""
    from gistgym.runtime.frozen import engine_modules

    cfg = model.config
    g = model.grid
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=gen) * 4 - 2
    state = model.memory.initial_state(1, g, g)
    c, h = state.c + 1.0, state.h + 0.5
    compiled = {e: engine_modules(model, e) for e in engines}
    calls: dict[str, dict[str, Callable[[], object]]] = {}
    descriptions: dict[str, str] = {}
    for index, name in enumerate(model.extractor_names):
        key = f"extractor {name}"
        ext = model.extractor(index)
        descriptions[key] = (
            f"MobileNetV2 x{ext.config.width_mult}, in {round(cfg.image_size * ext.config.input_scale)}px"
        )
        if ext.uses_shift:
            descriptions[key] += ", temporal shift (its buffers in and out)"
            buffers = ShiftExtractorStep(ext).zero_buffers(images)
            buffers = tuple(b + 0.5 for b in buffers)
        calls[key] = {}
        for e in engines:
            fn = compiled[e].extractors[index]
            if ext.uses_shift:  # the compiled shift step (eager: the module with its buffers)
                step = compiled[e].shift_steps[index] or ShiftExtractorStep(ext)
                calls[key][e] = lambda step=step, b=buffers: step(images, *b)  # type: ignore[misc]
            else:
                calls[key][e] = lambda fn=fn: fn(images)  # type: ignore[misc]
    feats = model.extract(0, images)[0]
    out = model.memory(feats, state)[0]
    descriptions["memory"] = f"ConvLSTM step, G={model.memory.groups}"
    descriptions["head"] = f"SSDLite, {cfg.anchors.per_cell * g * g} anchors"
    calls["memory"] = {e: (lambda m=compiled[e]: m.memory(feats, c, h)) for e in engines}  # type: ignore[misc]
    calls["head"] = {e: (lambda m=compiled[e]: m.head(out)) for e in engines}  # type: ignore[misc]
    modules: dict[str, Any] = {}
    with torch.inference_mode():
        for key, per_engine in calls.items():
            rows = [
                {e: measure_latency(fn, repeats=repeats) * 1e3 for e, fn in per_engine.items()} for _ in range(rounds)
            ]
            ms = {e: statistics.median(r[e] for r in rows) for e in engines}
            entry: dict[str, Any] = {"what": descriptions[key], "ms": ms}
            if "eager" in engines:
                entry["speedup_vs_eager"] = {e: statistics.median(r["eager"] / r[e] for r in rows) for e in engines}
            modules[key] = entry
    steps = {
        name: {e: modules[f"extractor {name}"]["ms"][e] + modules["memory"]["ms"][e] + modules["head"]["ms"][e]
               for e in engines}
        for name in model.extractor_names
    }  # fmt: skip
    return {"engines": list(engines), "modules": modules, "step_ms": steps}


def print_engine_table(table: dict[str, Any], repeats: int, rounds: int) -> None:
    """The per-module table as markdown."""
    engines = table["engines"]
    print(f"Per module and engine (batch 1, one thread, median of {rounds} rounds of the median of {repeats} calls)")
    head = " | ".join(f"{e} ms" for e in engines)
    ratios = [e for e in engines if e != "eager"] if "eager" in engines else []
    print(f"| module | what | {head} |" + "".join(f" eager/{e} |" for e in ratios))
    print("|---|---|" + "---|" * (len(engines) + len(ratios)))
    for key, entry in table["modules"].items():
        cells = " | ".join(f"{entry['ms'][e]:.3f}" for e in engines)
        extra = "".join(f" {entry['speedup_vs_eager'][e]:.2f} |" for e in ratios)
        print(f"| {key} | {entry['what']} | {cells} |{extra}")
    for name, per_engine in table["step_ms"].items():
        cells = " | ".join(f"{per_engine[e]:.3f}" for e in engines)
        print(f"| whole step, {name} | extractor + memory + head | {cells} |" + " |" * len(ratios))


if __name__ == "__main__":
    sys.exit(main())
