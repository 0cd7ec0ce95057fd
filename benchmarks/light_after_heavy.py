"""What does the first light frame after heavy ones lose, and why? A diagnostic of the detector's memory.

Usage::

    python benchmarks/light_after_heavy.py [--videos data/bench] [--split val] [--weights A.pt B.pt ...]

For every frame t >= 1 of every video of the split, the memory is first run with the heavy
extractor on frames 0..t-1 (every step writes it), then frame t is processed four ways from
that same state:

* ``heavy``: the heavy extractor on frame t (the upper bound);
* ``light``: the light extractor on frame t (what a schedule's first light frame gets);
* ``stale heavy``: frame t-1's heavy features once more (no new information about t);
* ``light, zero memory``: the light extractor on frame t from a zero state (no memory).

Each row is mAP@0.5 pooled over all those frames, with the 4 classes, with the two class
pairs the light input can tell apart (discs, boxes) and class-agnostic (localisation only).
If ``stale heavy`` beats ``light``, the light step loses information the memory had.
``--weights`` takes several detectors (empty string: the shipped one) and prints one column
group each.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch

from gistgym.backbones.evaluation import extract_all
from gistgym.backbones.ssdlite import Detections
from gistgym.backbones.weights import load_detector
from gistgym.errors import GistgymError
from gistgym.metrics import detection_map50
from gistgym.videos.dataset import load_dataset
from gistgym.videos.synthetic import FrameAnnotation

ROWS = ("heavy", "light", "stale heavy", "light, zero memory")
GROUPINGS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    "4 classes": (4, lambda labels: labels),
    "pairs": (2, lambda labels: labels // 2),
    "agnostic": (1, lambda labels: labels * 0),
}
"""Label groupings: classes 0/1 are discs, 2/3 boxes (the benchmark's class order)."""


def diagnose(weights: str, videos: str, split: str) -> dict[str, dict[str, float]]:
    """``row -> grouping -> mAP@0.5`` for one detector (see the module docstring)."""
    model, _ = load_detector(weights or None)
    records = load_dataset(videos).split(split)
    lengths = {r.num_frames for r in records}
    if len(lengths) != 1:
        raise GistgymError(f"{videos} [{split}]: the diagnostic batches videos of one length, got {sorted(lengths)}")
    if model.config.num_classes != 4:
        raise GistgymError(f"{weights or 'the shipped detector'}: the class pairs need 4 classes")
    feats = extract_all(model, records)
    heavy, light = feats.features[0], feats.features[1]
    V, T = heavy.shape[:2]
    g, size = model.grid, model.config.image_size
    dets: dict[str, list[Detections]] = {row: [] for row in ROWS}
    truth: list[FrameAnnotation] = []
    with torch.no_grad():
        state = model.memory.initial_state(V, g, g)
        for t in range(T):
            if t >= 1:
                zero = model.memory.initial_state(V, g, g)
                for row, x, s in (
                    ("heavy", heavy[:, t], state),
                    ("light", light[:, t], state),
                    ("stale heavy", heavy[:, t - 1], state),
                    ("light, zero memory", light[:, t], zero),
                ):
                    out, _ = model.memory_step(x, s, False)
                    dets[row].extend(model.detect(*model.head(out)))
                truth.extend(r.annotations[t] for r in records)
            _, state = model.memory_step(heavy[:, t], state, True)
    result: dict[str, dict[str, float]] = {}
    for row in ROWS:
        result[row] = {}
        for name, (k, f) in GROUPINGS.items():
            gts = [FrameAnnotation(a.boxes, f(a.labels), a.track_ids, a.speeds) for a in truth]
            ds = [Detections(d.boxes, d.scores, f(d.labels)) for d in dets[row]]
            result[row][name] = float(detection_map50(gts, ds, k, image_size=(size, size)))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", default="data/bench", help="dataset folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--weights", nargs="+", default=[""], help="detector weights ('' = the shipped ones)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        results = [(w or "shipped", diagnose(w, args.videos, args.split)) for w in args.weights]
    except GistgymError as exc:
        print(f"benchmarks/light_after_heavy.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.videos} [{args.split}]: frame t after heavy frames 0..t-1, mAP@0.5 (4 classes / pairs / agnostic)\n")
    print("| frame t |" + "".join(f" {name} |" for name, _ in results))
    print("|---|" + "---:|" * len(results))
    for row in ROWS:
        cells = "".join(" " + " / ".join(f"{r[row][g]:.3f}" for g in GROUPINGS) + " |" for _, r in results)
        print(f"| {row} |{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
