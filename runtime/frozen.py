"""The detector's per-frame modules on an execution engine, for the online runtime.

At 64x64 and batch one the detector's cost is mostly per-operator overhead, not arithmetic:
a MobileNetV2 block is nine eager ops each paying Python dispatch, and a BatchNorm after every
convolution. :func:`engine_modules` compiles each per-frame extractor, the ConvLSTM memory step,
the SSDLite head and the memory step and head as one graph (what the online runtime calls on
every frame) once on an engine of :mod:`gistgym.backbones.engines`:

* ``onnxruntime`` (the default): exported once per set of weights (cached on disk, keyed by
  their sha256) and run in single-threaded ONNX Runtime sessions; a light step (extractor +
  memory + head) then costs about 0.3 ms against 1.7 ms for a heavy one, close to their FLOPs
  ratio;
* ``torchscript``: traced and frozen (``torch.jit.freeze`` folds every BatchNorm into its
  convolution and inlines the weights), about 2x (light) and 1.6x (heavy) faster than eager;
* ``eager``: the torch modules themselves.

Every engine gives the eager modules' outputs to :data:`PARITY_ATOL` (:func:`check_frozen_parity`).

Compiled modules also matter for the asynchronous mode: an ONNX Runtime or TorchScript call runs
without the Python GIL, so the heavy job in the background thread no longer takes turns with
the light frames of the main thread on every operator (in eager mode it does, and the light
frames' latency doubles while a heavy job runs).

:func:`engine_dff` does the same for Deep Feature Flow's N_feat, F and N_task (the DFF runtime,
:mod:`gistgym.runtime.keyframe`); the warp W stays eager. :func:`frozen_modules` and
:func:`frozen_dff` are the TorchScript versions.

Extractors that carry temporal-shift buffers (``uses_shift``) stay eager: their state is a
Python object per block. The compiled modules are built once per detector object and engine
and reused; they hold a copy of the weights, so a detector whose weights change afterwards
(further training) needs a new object to be compiled again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gistgym.backbones.convlstm import LSTMState
from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.dff import DeepFeatureFlow, FlowOutput
from gistgym.backbones.engines import (
    DEFAULT_ENGINE,
    PARITY_ATOL,
    Compiled,
    MemoryHeadStep,
    OrtModule,
    check_engine,
    check_threads,
    compile_extractors,
    compile_module,
    freeze_torchscript,
)
from gistgym.errors import ConfigError

__all__ = [
    "PARITY_ATOL",
    "ArrayCall",
    "FrozenDFF",
    "FrozenModules",
    "array_call",
    "check_frozen_parity",
    "engine_dff",
    "engine_modules",
    "frozen_dff",
    "frozen_modules",
]

_freeze = freeze_torchscript  # the name other modules of the project used


class _MemoryStep(nn.Module):
    """The ConvLSTM step with plain tensors in and out (what tracing and export need)."""

    def __init__(self, detector: InterleavedDetector) -> None:
        super().__init__()
        self.memory = detector.memory

    def forward(self, features: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, new = self.memory(features, LSTMState(c, h))
        return out, new.c, new.h


@dataclass(frozen=True)
class FrozenModules:
    """One detector's per-frame modules on one engine (any batch size on ONNX Runtime, batch one on TorchScript)."""

    extractors: tuple[Compiled | None, ...]
    """Per detector extractor: normalised (B, 3, S, S) -> (B, C, g, g), or ``None`` for one that
    carries temporal-shift buffers (it runs eagerly through the detector)."""
    memory: Compiled
    """``(features, c, h) -> (output, c', h')``: one ConvLSTM step."""
    head: Compiled
    """``memory output -> (loc, conf)``: the SSDLite head."""
    engine: str = "torchscript"
    """The engine they run on."""
    memory_head: Compiled | None = None
    """``(features, c, h) -> (c', h', loc, conf)``: the memory step and the head in one graph
    (:class:`~gistgym.backbones.engines.MemoryHeadStep`, the environment's fused step): what the
    online runtime calls on every frame, one engine call instead of two."""

    def memory_step(self, features: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """The memory step with the detector's calling convention."""
        out, c, h = self.memory(features, state.c, state.h)
        return out, LSTMState(c, h)


ArrayCall = Callable[..., tuple[np.ndarray, ...]]
"""A compiled module called on float32 numpy arrays, returning a tuple of numpy arrays."""


def array_call(compiled: Compiled) -> ArrayCall:
    """``compiled`` with numpy arrays in and a tuple of numpy arrays out (the online runtime's per-frame calls).

    An ONNX Runtime module is called on the arrays directly (:meth:`OrtModule.run_arrays`: no
    tensor on either side); a TorchScript or eager module gets tensors sharing the arrays'
    memory and returns its outputs' arrays (each call in inference mode). Inputs must be
    C-contiguous float32 arrays.
    """
    if isinstance(compiled, OrtModule):
        return compiled.run_arrays

    def call(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = compiled(*(torch.from_numpy(a) for a in arrays))
        return tuple(o.numpy() for o in (out if isinstance(out, tuple | list) else (out,)))

    return call


_CACHE: weakref.WeakKeyDictionary[InterleavedDetector, dict[tuple[str, int], FrozenModules]] = (
    weakref.WeakKeyDictionary()
)


def _example_images(size: int) -> Tensor:
    """Normalised-looking images (the parity check and the export's example inputs)."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2


@torch.no_grad()
def engine_modules(detector: InterleavedDetector, engine: str = DEFAULT_ENGINE, threads: int = 1) -> FrozenModules:
    """The per-frame modules of ``detector`` on ``engine`` (built on first use, then cached per detector).

    Args:
        detector: The detector (eval mode).
        engine: One of :data:`gistgym.backbones.engines.ENGINES`.
        threads: ONNX Runtime intra-op threads per session.

    Raises:
        ConfigError: The detector is in training mode (compiled graphs would bake in batch statistics).
        EngineError: Unknown engine, bad ``threads``, onnxruntime missing, an export failing.
        ExportMismatchError: A cached export that records other weights.
    """
    check_engine(engine)
    check_threads(threads)
    per_detector = _CACHE.setdefault(detector, {})
    cached = per_detector.get((engine, threads))
    if cached is not None:
        return cached
    if detector.training:
        raise ConfigError("the online runtime compiles the detector's modules; call detector.eval() first")
    size = detector.config.image_size
    images = _example_images(size)
    extractors = compile_extractors(detector, images, engine=engine, threads=threads)
    features = next((detector.extractor(i)(images) for i, c in enumerate(extractors) if c is not None), None)
    if features is None:  # every extractor shifts: compile the memory on the first one's features
        features = detector.extract(0, images)[0]
    state = detector.memory.initial_state(1, detector.grid, detector.grid)
    state = LSTMState(state.c + 1.0, state.h + 0.5)  # a written-looking state (zeros hide mistakes)
    memory = compile_module(
        _MemoryStep(detector).eval(),
        (features, state.c, state.h),
        engine=engine,
        kind="memory-step",
        input_names=("features", "c", "h"),
        output_names=("output", "c_new", "h_new"),
        threads=threads,
    )
    out = detector.memory(features, state)[0]
    head = compile_module(
        detector.head, (out,), engine=engine, kind="head", input_names=("memory",), output_names=("loc", "conf"),
        threads=threads,
    )  # fmt: skip
    # the names and kind of the environment's fused step (BatchedMemoryHead): one export serves both
    memory_head = compile_module(
        MemoryHeadStep(detector.memory, detector.head).eval(), (features, state.c, state.h), engine=engine,
        kind="memory-head", input_names=("x", "c", "h"), output_names=("c_new", "h_new", "loc", "conf"),
        threads=threads,
    )  # fmt: skip
    modules = FrozenModules(extractors, memory, head, engine, memory_head)
    per_detector[(engine, threads)] = modules
    return modules


def frozen_modules(detector: InterleavedDetector) -> FrozenModules:
    """The frozen TorchScript per-frame modules of ``detector`` (:func:`engine_modules` with ``torchscript``)."""
    return engine_modules(detector, "torchscript")


@torch.no_grad()
def check_frozen_parity(detector: InterleavedDetector, images: Tensor, engine: str = "torchscript") -> float:
    """Largest absolute difference between the ``engine`` and the eager modules on ``images``.

    Runs every compiled extractor, then the memory and the head over the frames one by one
    (the memory carried), comparing features, memory state, box offsets and logits, and the
    fused memory + head step's outputs.

    Args:
        detector: The detector (eval mode).
        images: (T, 3, S, S) normalised frames.
        engine: The engine to compare with eager.

    Raises:
        ConfigError: A difference above :data:`PARITY_ATOL`.
    """
    modules = engine_modules(detector, engine)
    worst = 0.0
    for index, compiled in enumerate(modules.extractors):
        if compiled is None:
            continue
        eager_state = engine_state = detector.memory.initial_state(1, detector.grid, detector.grid)
        for t in range(len(images)):
            x = images[t : t + 1]
            feats = detector.extract(index, x)[0]
            fused = () if modules.memory_head is None else modules.memory_head(compiled(x), *engine_state)
            eager_out, eager_state = detector.memory(feats, eager_state)
            engine_out, engine_state = modules.memory_step(compiled(x), engine_state)
            eager_head = detector.head(eager_out)
            pairs = [
                (feats, compiled(x)),
                (eager_out, engine_out),
                (eager_state.c, engine_state.c),
                (eager_state.h, engine_state.h),
                *zip(eager_head, modules.head(engine_out), strict=True),
                *(zip((eager_state.c, eager_state.h, *eager_head), fused, strict=True) if fused else ()),
            ]
            worst = max(worst, *(float((a - b).abs().max()) for a, b in pairs))
    if worst > PARITY_ATOL:
        raise ConfigError(
            f"{engine} modules differ from the eager detector by {worst:.3g} (> {PARITY_ATOL:g}); "
            "run with the eager modules (--engine eager)"
        )
    return worst


class _FlowStep(nn.Module):
    """DFF's flow network with plain tensors out (what tracing and export need)."""

    def __init__(self, model: DeepFeatureFlow) -> None:
        super().__init__()
        self.flow_net = model.flow_net

    def forward(self, key_images: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.flow_net(key_images, images)
        return out.flow, out.scale


@dataclass(frozen=True)
class FrozenDFF:
    """A Deep Feature Flow model's per-frame networks on one engine; W stays eager."""

    features: Compiled
    """N_feat: normalised (B, 3, S, S) -> (B, C, g, g)."""
    flow_net: Compiled
    """F: ``(key_images, images) -> (flow, scale)``."""
    task: Compiled
    """N_task: features -> (loc, conf)."""
    engine: str = "torchscript"

    def flow(self, key_images: Tensor, images: Tensor) -> FlowOutput:
        """F with :class:`~gistgym.backbones.dff.FlowOutput` out, as the eager model returns it."""
        flow, scale = self.flow_net(key_images, images)
        return FlowOutput(flow, scale)


_DFF_CACHE: weakref.WeakKeyDictionary[DeepFeatureFlow, dict[tuple[str, int], FrozenDFF]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def engine_dff(model: DeepFeatureFlow, engine: str = DEFAULT_ENGINE, threads: int = 1) -> FrozenDFF:
    """The per-frame networks of a DFF model on ``engine`` (built on first use, then cached per model).

    Raises:
        ConfigError: The model is in training mode.
        EngineError, ExportMismatchError: As :func:`engine_modules`.
    """
    check_engine(engine)
    check_threads(threads)
    per_model = _DFF_CACHE.setdefault(model, {})
    cached = per_model.get((engine, threads))
    if cached is not None:
        return cached
    if model.training:
        raise ConfigError("the DFF runtime compiles the model's networks; call model.eval() first")
    size = model.config.image_size
    images = _example_images(size)
    other = images.flip(-1) * 0.5
    features = model.features(images)
    feature_net = compile_module(
        model.feature_net, (images,), engine=engine, kind="dff-feature", input_names=("images",),
        output_names=("features",), threads=threads,
    )  # fmt: skip
    flow_net = compile_module(
        _FlowStep(model).eval(), (images, other), engine=engine, kind="dff-flow", input_names=("key_images", "images"),
        output_names=("flow", "scale"), threads=threads,
    )  # fmt: skip
    task_net = compile_module(
        model.task_net, (features,), engine=engine, kind="dff-task", input_names=("features",),
        output_names=("loc", "conf"), threads=threads,
    )  # fmt: skip
    frozen = FrozenDFF(feature_net, flow_net, task_net, engine)
    per_model[(engine, threads)] = frozen
    return frozen


def frozen_dff(model: DeepFeatureFlow) -> FrozenDFF:
    """The frozen TorchScript networks of a DFF model (:func:`engine_dff` with ``torchscript``)."""
    return engine_dff(model, "torchscript")
