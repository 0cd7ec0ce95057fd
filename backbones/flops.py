"""Counted FLOPs (``torch.utils.flop_counter``) and measured latency of detector modules.

FLOPs count a multiply-add as 2 (the counter's convention); the paper's MMAC are half of
these. Latency is the median wall time of one frame at batch 1 on one torch thread, so
ratios are comparable within a run; absolute values depend on the machine's load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from gistgym.backbones.detector import InterleavedDetector


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure_latency(fn: Callable[[], object], *, repeats: int = 30, warmup: int = 5) -> float:
    """Median seconds of one call of ``fn`` (no grad)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


@dataclass(frozen=True)
class StepCost:
    """Cost of one whole detector step with one extractor."""

    extractor: str
    extractor_flops: int
    memory_flops: int
    head_flops: int
    extractor_seconds: float
    memory_seconds: float
    head_seconds: float

    @property
    def step_flops(self) -> int:
        """Extractor + memory + head."""
        return self.extractor_flops + self.memory_flops + self.head_flops

    @property
    def step_seconds(self) -> float:
        """Extractor + memory + head latency."""
        return self.extractor_seconds + self.memory_seconds + self.head_seconds


def step_costs(model: InterleavedDetector, *, measure: bool = True, repeats: int = 30) -> list[StepCost]:
    """Counted FLOPs (and, with ``measure``, latency) of every extractor's full step."""
    size = model.config.image_size
    frame = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8)
    images = model.preprocess(frame)
    g = model.grid
    x = torch.zeros(1, model.config.memory_channels, g, g)
    state = model.memory.initial_state(1, g, g)
    out = torch.zeros(1, model.memory.out_channels, g, g)
    mem_flops = count_flops(lambda: model.memory(x, state))
    head_flops = count_flops(lambda: model.head(out))
    mem_s = measure_latency(lambda: model.memory(x, state), repeats=repeats) if measure else 0.0
    head_s = measure_latency(lambda: model.head(out), repeats=repeats) if measure else 0.0
    costs = []
    for i, name in enumerate(model.extractor_names):

        def run(i: int = i) -> object:
            return model.extract(i, images)

        ext_flops = count_flops(run)
        ext_s = measure_latency(run, repeats=repeats) if measure else 0.0
        costs.append(StepCost(name, ext_flops, mem_flops, head_flops, ext_s, mem_s, head_s))
    return costs
