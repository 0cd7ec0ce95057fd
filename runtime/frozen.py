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
:mod:`gistgym.runtime.keyframe`); on ONNX Runtime it also chains a DFF frame's work into whole
graphs (:class:`DFFSteps`, the warp W included). :func:`frozen_modules` and
:func:`frozen_dff` are the TorchScript versions.

An extractor that carries temporal-shift buffers (``uses_shift``) has no stateless compiled
form (:attr:`FrozenModules.extractors` holds ``None`` for it); it is compiled as its frame step
with the buffers passed in and out (:attr:`FrozenModules.shift_steps`), which the online
runtime carries from frame to frame. The compiled modules are built once per detector object and engine
and reused; they hold a copy of the weights, so a detector whose weights change afterwards
(further training) needs a new object to be compiled again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from gistgym.backbones.convlstm import LSTMState
from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.dff import DeepFeatureFlow, FlowOutput, warp
from gistgym.backbones.engines import (
    DEFAULT_ENGINE,
    PARITY_ATOL,
    Compiled,
    EngineError,
    MemoryHeadStep,
    OrtModule,
    ShiftExtractorStep,
    check_engine,
    check_threads,
    compile_extractors,
    compile_module,
    compile_shift_steps,
    freeze_torchscript,
    ort_session,
)
from gistgym.backbones.onnx_graphs import (
    DFF_FLOW_INPUTS,
    DFF_FLOW_OUTPUTS,
    DFF_KEY_OUTPUTS,
    DFF_PROPAGATE_INPUTS,
    DFF_PROPAGATE_OUTPUTS,
    FRAME_STEP_INPUTS,
    FRAME_STEP_OUTPUTS,
    dff_flow_graph,
    dff_key_graph,
    dff_propagate_graph,
    flow_cues_graph,
    frame_step_graph,
    postprocess_graph,
    preprocess_graph,
    warp_graph,
)
from gistgym.backbones.ssdlite import postprocess_frame
from gistgym.errors import ConfigError
from gistgym.feature_cache.keyframe import LARGE_DISPLACEMENT_PX, flow_cues

__all__ = [
    "PARITY_ATOL",
    "ArrayCall",
    "DFFSteps",
    "FrozenDFF",
    "FrozenModules",
    "array_call",
    "check_frozen_parity",
    "dff_step_parity",
    "engine_dff",
    "engine_modules",
    "frame_step_parity",
    "frozen_dff",
    "frozen_modules",
    "shift_step_parity",
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
    carries temporal-shift buffers (see :attr:`shift_steps`)."""
    memory: Compiled
    """``(features, c, h) -> (output, c', h')``: one ConvLSTM step."""
    head: Compiled
    """``memory output -> (loc, conf)``: the SSDLite head."""
    engine: str = "torchscript"
    """The engine they run on."""
    memory_head: Compiled | None = None
    """``(features, c, h) -> (c', h', loc, conf)``: the memory step and the head in one graph
    (:class:`~gistgym.backbones.engines.MemoryHeadStep`, the environment's fused step): one
    engine call instead of two."""
    frame_steps: tuple[OrtModule | None, ...] = ()
    shift_steps: tuple[Compiled | None, ...] = ()
    """Per extractor, on TorchScript and ONNX Runtime, a temporal-shift extractor's frame with its
    buffers in and out (:class:`~gistgym.backbones.engines.ShiftExtractorStep`); ``None`` for the
    others (and every extractor on eager)."""
    """ONNX Runtime only, per detector extractor (``None`` for one with shift buffers): a whole
    frame as one graph (:func:`~gistgym.backbones.onnx_graphs.frame_step_graph`, ``(image, c, h)``
    with the uint8 frame -> features, new state, head outputs and the frame's detections), what
    the online runtime runs on every frame. Empty on the other engines."""

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
    steps = _frame_steps(detector, extractors, memory_head, threads) if engine == "onnxruntime" else ()
    shift_steps = compile_shift_steps(detector, images, engine=engine, threads=threads)
    modules = FrozenModules(extractors, memory, head, engine, memory_head, steps, shift_steps)
    per_detector[(engine, threads)] = modules
    return modules


def _frame_steps(
    detector: InterleavedDetector, extractors: tuple[Compiled | None, ...], memory_head: Compiled, threads: int
) -> tuple[OrtModule | None, ...]:
    """Per extractor, the whole-frame graph on ONNX Runtime, checked against the modules it chains.

    Raises:
        EngineError: A frame step that disagrees with its modules and the numpy postprocessing.
    """
    if not isinstance(memory_head, OrtModule) or memory_head.export is None:
        return tuple(None for _ in extractors)
    size = detector.config.image_size
    joint = onnx.load_from_string(memory_head.export.data)
    pre = preprocess_graph(size, detector.config.mean, detector.config.std, ir_version=joint.ir_version)
    anchors = np.ascontiguousarray(detector.head.anchors.numpy(), dtype=np.float32)
    post = postprocess_graph(anchors, detector.config.num_classes, (size, size), ir_version=joint.ir_version)
    steps: list[OrtModule | None] = []
    for name, compiled in zip(detector.extractor_names, extractors, strict=True):
        if not isinstance(compiled, OrtModule) or compiled.export is None:
            steps.append(None)
            continue
        model = frame_step_graph(pre, onnx.load_from_string(compiled.export.data), joint, post)
        kind = f"frame-step-{name}"
        step = OrtModule(ort_session(model.SerializeToString(), threads, kind), FRAME_STEP_INPUTS, FRAME_STEP_OUTPUTS)
        worst = frame_step_parity(detector, step, compiled, memory_head, anchors)
        if not worst <= PARITY_ATOL:
            raise EngineError(
                f"the onnxruntime {kind} graph differs from its modules by {worst:.3g} (> {PARITY_ATOL:g}); "
                "pass --engine torchscript or eager (and report it)"
            )
        steps.append(step)
    return tuple(steps)


def _example_frames(size: int, count: int = 3) -> np.ndarray:
    """Uint8 frames for the frame-step checks: a colour gradient, then noise."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    frames[0] = np.stack(
        [ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), 255 - ramp[None, :].repeat(size, 0)], -1
    ).astype(np.uint8)
    return frames


def frame_step_parity(
    detector: InterleavedDetector,
    step: OrtModule,
    extractor: Compiled,
    memory_head: Compiled,
    anchors: np.ndarray,
    frames: np.ndarray | None = None,
) -> float:
    """Largest difference between a frame step and the modules it chains, over ``frames`` (memory carried).

    The reference is ``detector.preprocess``, the extractor and memory + head modules, and
    :func:`~gistgym.backbones.ssdlite.postprocess_frame` on their outputs. Detections must be the
    same boxes of the same classes in the same order (``inf`` otherwise); features, state, head
    outputs, boxes and scores are compared to the absolute difference returned.
    """
    size = detector.config.image_size
    frames = _example_frames(size) if frames is None else frames
    state = detector.memory.initial_state(1, detector.grid, detector.grid)
    c = np.ascontiguousarray(state.c.numpy() + 1.0, dtype=np.float32)  # a written-looking state
    h = np.ascontiguousarray(state.h.numpy() + 0.5, dtype=np.float32)
    extract, joint = array_call(extractor), array_call(memory_head)
    worst = 0.0
    for image in frames:
        with torch.inference_mode():
            images = detector.preprocess(torch.from_numpy(np.ascontiguousarray(image[None]))).numpy()
        feats = extract(np.ascontiguousarray(images, dtype=np.float32))[0]
        want = (feats, *joint(feats, c, h))
        dets = postprocess_frame(want[3][0], want[4][0], anchors, image_size=(size, size))
        got = step.run_arrays(np.ascontiguousarray(image[None]), c, h)
        if len(got[7]) != len(dets.labels) or not np.array_equal(got[7], dets.labels):
            return float("inf")
        pairs = [*zip(want, got[:5], strict=True), (dets.boxes, got[5]), (dets.scores, got[6])]
        worst = max(worst, *(float(np.abs(a - b).max()) if a.size else 0.0 for a, b in pairs))
        c, h = got[1], got[2]
    return worst


def frozen_modules(detector: InterleavedDetector) -> FrozenModules:
    """The frozen TorchScript per-frame modules of ``detector`` (:func:`engine_modules` with ``torchscript``)."""
    return engine_modules(detector, "torchscript")


@torch.no_grad()
def check_frozen_parity(detector: InterleavedDetector, images: Tensor, engine: str = "torchscript") -> float:
    """Largest absolute difference between the ``engine`` and the eager modules on ``images``.

    Runs every compiled extractor, then the memory and the head over the frames one by one
    (the memory carried), comparing features, memory state, box offsets and logits, and the
    fused memory + head step's outputs; each temporal-shift extractor's compiled step over the
    frames as a stream (its buffers carried) against the eager extractor's; on ONNX Runtime also
    each whole-frame graph against the eager modules and the numpy postprocessing
    (:func:`frame_step_parity`, on uint8 frames of its own).

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
    for index, step in enumerate(modules.shift_steps):
        if step is not None:
            worst = max(worst, shift_step_parity(detector, index, step, images))
    eager_joint = MemoryHeadStep(detector.memory, detector.head).eval()
    anchors = np.ascontiguousarray(detector.head.anchors.numpy(), dtype=np.float32)
    for index, step in enumerate(modules.frame_steps):
        if step is not None:
            worst = max(worst, frame_step_parity(detector, step, detector.extractor(index), eager_joint, anchors))
    if worst > PARITY_ATOL:
        raise ConfigError(
            f"{engine} modules differ from the eager detector by {worst:.3g} (> {PARITY_ATOL:g}); "
            "run with the eager modules (--engine eager)"
        )
    return worst


@torch.no_grad()
def shift_step_parity(detector: InterleavedDetector, index: int, step: Compiled, images: Tensor) -> float:
    """Largest difference between a compiled shift step and the eager extractor ``index`` over ``images`` as a stream.

    The step starts from zero buffers and carries its own; the eager extractor starts from none
    and carries its own: features and buffers are compared on every frame.
    """
    buffers = ShiftExtractorStep(detector.extractor(index)).zero_buffers(images[:1])
    state = None
    worst = 0.0
    for t in range(len(images)):
        feats, state = detector.extract(index, images[t : t + 1], state)
        out = step(images[t : t + 1], *buffers)
        got_feats, buffers = out[0], tuple(out[1:])
        pairs = [(feats, got_feats), *zip(state, buffers, strict=True)]
        worst = max(worst, *(float((a - b).abs().max()) for a, b in pairs))
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
class DFFSteps:
    """A DFF frame's work as whole graphs on ONNX Runtime (:mod:`gistgym.backbones.onnx_graphs`).

    A keyframe is one call, a propagated frame two (F and its cues, then, once the scheduler
    has decided, W, N_task and the postprocessing); the numpy between them is the scheduler's.
    """

    key: OrtModule
    """uint8 ``image`` -> :data:`~gistgym.backbones.onnx_graphs.DFF_KEY_OUTPUTS`."""
    flow: OrtModule
    """``(key_images, image)`` -> :data:`~gistgym.backbones.onnx_graphs.DFF_FLOW_OUTPUTS`."""
    propagate: OrtModule
    """``(features, flow, scale)`` -> :data:`~gistgym.backbones.onnx_graphs.DFF_PROPAGATE_OUTPUTS`."""


@dataclass(frozen=True)
class FrozenDFF:
    """A Deep Feature Flow model's per-frame networks on one engine (W is eager outside :attr:`steps`)."""

    features: Compiled
    """N_feat: normalised (B, 3, S, S) -> (B, C, g, g)."""
    flow_net: Compiled
    """F: ``(key_images, images) -> (flow, scale)``."""
    task: Compiled
    """N_task: features -> (loc, conf)."""
    engine: str = "torchscript"
    steps: DFFSteps | None = None
    """On ONNX Runtime, the frame's work as whole graphs (the runtime's path for uint8 frames)."""

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
    steps = _dff_steps(model, (feature_net, flow_net, task_net), threads) if engine == "onnxruntime" else None
    frozen = FrozenDFF(feature_net, flow_net, task_net, engine, steps)
    per_model[(engine, threads)] = frozen
    return frozen


def _dff_steps(model: DeepFeatureFlow, nets: tuple[Compiled, Compiled, Compiled], threads: int) -> DFFSteps | None:
    """N_feat, F and N_task's exports chained with the preprocessing, W, the cues and the postprocessing.

    Raises:
        EngineError: A graph that disagrees with the eager model.
    """
    exports = [n.export for n in nets if isinstance(n, OrtModule) and n.export is not None]
    if len(exports) != len(nets):
        return None
    feature, flow, task = (onnx.load_from_string(e.data) for e in exports)
    ir = max(m.ir_version for m in (feature, flow, task))
    cfg = model.config
    size, grid, channels = cfg.image_size, cfg.grid, cfg.feature_channels
    pre = preprocess_graph(size, cfg.mean, cfg.std, ir_version=ir)
    anchors = np.ascontiguousarray(model.anchors.numpy(), dtype=np.float32)
    post = postprocess_graph(anchors, cfg.num_classes, (size, size), ir_version=ir)
    cues = flow_cues_graph(channels, grid, cfg.cell_pixels, LARGE_DISPLACEMENT_PX, ir_version=ir)
    graphs = (
        ("dff-key-step", dff_key_graph(pre, feature, task, post), ("image",), DFF_KEY_OUTPUTS),
        ("dff-flow-step", dff_flow_graph(pre, flow, cues), DFF_FLOW_INPUTS, DFF_FLOW_OUTPUTS),
        ("dff-propagate-step", dff_propagate_graph(warp_graph(channels, grid, ir_version=ir), task, post),
         DFF_PROPAGATE_INPUTS, DFF_PROPAGATE_OUTPUTS),
    )  # fmt: skip
    steps = DFFSteps(*(OrtModule(ort_session(g.SerializeToString(), threads, kind), i, o) for kind, g, i, o in graphs))
    worst = dff_step_parity(model, steps)
    if not worst <= PARITY_ATOL:
        raise EngineError(
            f"the onnxruntime DFF frame graphs differ from the eager model by {worst:.3g} (> {PARITY_ATOL:g}); "
            "pass --engine torchscript or eager (and report it)"
        )
    return steps


@torch.no_grad()
def dff_step_parity(model: DeepFeatureFlow, steps: DFFSteps, frames: np.ndarray | None = None) -> float:
    """Largest difference between the DFF frame graphs and the eager model, over ``frames``.

    Every frame goes through the key graph; every frame after the first also through the flow
    and propagation graphs, with the first frame as the keyframe (the eager keyframe's image
    and features in). The reference is the eager model (preprocessing, N_feat, F,
    :func:`~gistgym.feature_cache.keyframe.flow_cues`, :func:`~gistgym.backbones.dff.warp`,
    N_task) and :func:`~gistgym.backbones.ssdlite.postprocess_frame` on the graphs' own head
    outputs: the detections must be the same boxes of the same classes in the same order
    (``inf`` otherwise); every tensor, box and score is compared to the absolute difference returned.
    """
    size = model.config.image_size
    frames = _example_frames(size) if frames is None else frames
    anchors = np.ascontiguousarray(model.anchors.numpy(), dtype=np.float32)
    worst = 0.0
    key: tuple[Tensor, Tensor] | None = None
    for image in frames:
        batch = np.ascontiguousarray(image[None])
        images = model.preprocess(torch.from_numpy(batch))
        feats = model.features(images)
        checks = [((images, feats, *model.task_net(feats)), steps.key.run_arrays(batch))]
        if key is None:
            key = (images, feats)
        else:
            out = model.flow_net(key[0], images)
            want = (images, out.flow, out.scale, flow_cues(out.flow, out.scale, model.config.cell_pixels))
            checks.append((want, steps.flow.run_arrays(key[0].numpy(), batch)))
            head = model.task_net(warp(key[1], out.flow, out.scale))
            checks.append((head, steps.propagate.run_arrays(key[1].numpy(), out.flow.numpy(), out.scale.numpy())))
        for want, got in checks:
            n = len(want)
            pairs = [(w.numpy(), g) for w, g in zip(want, got[:n], strict=True)]
            if len(got) > n:  # head outputs, then the detections postprocessed from them
                dets = postprocess_frame(got[n - 2][0], got[n - 1][0], anchors, image_size=(size, size))
                if not np.array_equal(got[n + 2], dets.labels):
                    return float("inf")
                pairs += [(dets.boxes, got[n]), (dets.scores, got[n + 1])]
            worst = max(worst, *(float(np.abs(a - b).max()) if a.size else 0.0 for a, b in pairs))
    return worst


def frozen_dff(model: DeepFeatureFlow) -> FrozenDFF:
    """The frozen TorchScript networks of a DFF model (:func:`engine_dff` with ``torchscript``)."""
    return engine_dff(model, "torchscript")
