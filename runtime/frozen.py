"""The detector's per-frame modules as frozen TorchScript graphs, for the online runtime.

At 64x64 and batch one the detector's cost is mostly per-operator overhead, not arithmetic:
a MobileNetV2 block is nine eager ops each paying Python dispatch, and a BatchNorm after every
convolution. :func:`frozen_modules` traces each per-frame extractor, the ConvLSTM memory step
and the SSDLite head once and freezes them (``torch.jit.freeze`` folds every BatchNorm into
its convolution and inlines the weights), which on this machine makes the light extractor
about 2x and the heavy one about 1.6x faster at batch one, with outputs equal to the eager
modules to about 1e-5 (:func:`check_frozen_parity`).

Frozen graphs also matter for the asynchronous mode: a TorchScript call runs without the
Python GIL, so the heavy job in the background thread no longer takes turns with the light
frames of the main thread on every operator (in eager mode it does, and the light frames'
latency doubles while a heavy job runs).

:func:`frozen_dff` does the same for Deep Feature Flow's N_feat, F and N_task (the DFF runtime,
:mod:`gistgym.runtime.keyframe`); the warp W stays eager.

Extractors that carry temporal-shift buffers (``uses_shift``) stay eager: their state is a
Python object per block. The frozen modules are built once per detector object and reused
(building them takes about a second); they hold a copy of the weights, so a detector whose
weights change afterwards (further training) needs a new object to be frozen again.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gistgym.backbones.convlstm import LSTMState
from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.dff import DeepFeatureFlow, FlowOutput
from gistgym.errors import ConfigError

WARMUP_CALLS = 3
"""Calls of each frozen graph at build time (the executor's profiling runs)."""
PARITY_ATOL = 1e-4
"""Largest absolute difference :func:`check_frozen_parity` accepts between frozen and eager outputs."""


class _MemoryStep(nn.Module):
    """The ConvLSTM step with plain tensors in and out (what tracing needs)."""

    def __init__(self, detector: InterleavedDetector) -> None:
        super().__init__()
        self.memory = detector.memory

    def forward(self, features: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, new = self.memory(features, LSTMState(c, h))
        return out, new.c, new.h


@dataclass(frozen=True)
class FrozenModules:
    """Frozen graphs of one detector's per-frame modules (batch one)."""

    extractors: tuple[torch.jit.ScriptModule | None, ...]
    """Per detector extractor: its frozen graph (normalised (1, 3, S, S) -> (1, C, g, g)), or
    ``None`` for one that carries temporal-shift buffers (it runs eagerly)."""
    memory: torch.jit.ScriptModule
    """``(features, c, h) -> (output, c', h')``: one ConvLSTM step."""
    head: torch.jit.ScriptModule
    """``memory output -> (loc, conf)``: the SSDLite head."""

    def memory_step(self, features: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """The memory step with the detector's calling convention."""
        out, c, h = self.memory(features, state.c, state.h)
        return out, LSTMState(c, h)


def _freeze(module: nn.Module, *example: Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # tracing warns about Python numbers (the input scale, the groups) becoming constants,
        # which is exactly what is wanted for a fixed input signature
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
        frozen = torch.jit.freeze(traced)
        # TorchScript's executor profiles and optimises a graph on its first calls (tens of ms):
        # do that here, not on the first frames of a video, whose latency would show it
        for _ in range(WARMUP_CALLS):
            frozen(*example)
    return frozen


_CACHE: weakref.WeakKeyDictionary[InterleavedDetector, FrozenModules] = weakref.WeakKeyDictionary()


@torch.no_grad()
def frozen_modules(detector: InterleavedDetector) -> FrozenModules:
    """The frozen per-frame modules of ``detector`` (built on first use, then cached per detector).

    Raises:
        ConfigError: The detector is in training mode (frozen graphs would bake in batch statistics).
    """
    cached = _CACHE.get(detector)
    if cached is not None:
        return cached
    if detector.training:
        raise ConfigError("the online runtime freezes the detector's modules; call detector.eval() first")
    size = detector.config.image_size
    images = torch.zeros(1, 3, size, size)
    extractors: list[torch.jit.ScriptModule | None] = []
    features = None
    for index in range(len(detector.extractors)):
        extractor = detector.extractor(index)
        if extractor.uses_shift:
            extractors.append(None)
            continue
        extractors.append(_freeze(extractor, images))
        if features is None:
            features = extractor(images)
    if features is None:  # every extractor shifts: trace the memory on the first one's features
        features = detector.extract(0, images)[0]
    state = detector.memory.initial_state(1, detector.grid, detector.grid)
    memory = _freeze(_MemoryStep(detector), features, state.c, state.h)
    out = detector.memory(features, state)[0]
    head = _freeze(detector.head, out)
    modules = FrozenModules(tuple(extractors), memory, head)
    _CACHE[detector] = modules
    return modules


@torch.no_grad()
def check_frozen_parity(detector: InterleavedDetector, images: Tensor) -> float:
    """Largest absolute difference between the frozen and the eager modules on ``images``.

    Runs every frozen extractor, then the memory and the head over the frames one by one
    (the memory carried), comparing features, memory state, box offsets and logits.

    Args:
        detector: The detector (eval mode).
        images: (T, 3, S, S) normalised frames.

    Raises:
        ConfigError: A difference above :data:`PARITY_ATOL`.
    """
    modules = frozen_modules(detector)
    worst = 0.0
    for index, frozen in enumerate(modules.extractors):
        if frozen is None:
            continue
        eager_state = frozen_state = detector.memory.initial_state(1, detector.grid, detector.grid)
        for t in range(len(images)):
            x = images[t : t + 1]
            feats = detector.extract(index, x)[0]
            eager_out, eager_state = detector.memory(feats, eager_state)
            frozen_out, frozen_state = modules.memory_step(frozen(x), frozen_state)
            pairs = [
                (feats, frozen(x)),
                (eager_out, frozen_out),
                (eager_state.c, frozen_state.c),
                (eager_state.h, frozen_state.h),
                *zip(detector.head(eager_out), modules.head(frozen_out), strict=True),
            ]
            worst = max(worst, *(float((a - b).abs().max()) for a, b in pairs))
    if worst > PARITY_ATOL:
        raise ConfigError(
            f"frozen TorchScript modules differ from the eager detector by {worst:.3g} (> {PARITY_ATOL:g}); "
            "run with the eager modules (frozen=False)"
        )
    return worst


class _FlowStep(nn.Module):
    """DFF's flow network with plain tensors out (what tracing needs)."""

    def __init__(self, model: DeepFeatureFlow) -> None:
        super().__init__()
        self.flow_net = model.flow_net

    def forward(self, key_images: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.flow_net(key_images, images)
        return out.flow, out.scale


@dataclass(frozen=True)
class FrozenDFF:
    """Frozen graphs of a Deep Feature Flow model's per-frame networks (batch one); W stays eager."""

    features: torch.jit.ScriptModule
    """N_feat: normalised (1, 3, S, S) -> (1, C, g, g)."""
    flow_net: torch.jit.ScriptModule
    """F: ``(key_images, images) -> (flow, scale)``."""
    task: torch.jit.ScriptModule
    """N_task: features -> (loc, conf)."""

    def flow(self, key_images: Tensor, images: Tensor) -> FlowOutput:
        """F with :class:`~gistgym.backbones.dff.FlowOutput` out, as the eager model returns it."""
        flow, scale = self.flow_net(key_images, images)
        return FlowOutput(flow, scale)


_DFF_CACHE: weakref.WeakKeyDictionary[DeepFeatureFlow, FrozenDFF] = weakref.WeakKeyDictionary()


@torch.no_grad()
def frozen_dff(model: DeepFeatureFlow) -> FrozenDFF:
    """The frozen per-frame networks of a DFF model (built on first use, then cached per model).

    Raises:
        ConfigError: The model is in training mode.
    """
    cached = _DFF_CACHE.get(model)
    if cached is not None:
        return cached
    if model.training:
        raise ConfigError("the DFF runtime freezes the model's networks; call model.eval() first")
    size = model.config.image_size
    images = torch.zeros(1, 3, size, size)
    features = model.features(images)
    frozen = FrozenDFF(
        _freeze(model.feature_net, images), _freeze(_FlowStep(model), images, images), _freeze(model.task_net, features)
    )
    _DFF_CACHE[model] = frozen
    return frozen
