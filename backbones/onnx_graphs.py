"""ONNX graphs around the exported modules: preprocessing, SSDLite postprocessing, and a whole frame as one graph.

At batch one the online runtime's light frame costs a few hundred microseconds on ONNX Runtime,
and before these graphs the numpy around the engine calls took as long as the modules:
preprocessing (about 0.04 ms), the softmax, top-k and decoding of the candidates and the NMS
(0.15-0.3 ms, some thirty numpy calls on arrays of a hundred rows), and one engine call per
module. :func:`frame_step_graph` chains, in one ONNX Runtime session,

    uint8 frame --preprocess--> extractor --> ConvLSTM step + SSDLite head --postprocess--> detections

so a frame is one ``InferenceSession.run`` (which releases the GIL, as each module call did).
The pieces:

* :func:`preprocess_graph`: ``detector.preprocess`` (``x / 255``, ``- mean``, ``/ std`` on the
  channels-first float32 image, the same operations in the same order);
* :func:`postprocess_graph`: :func:`gistgym.backbones.ssdlite.postprocess_frame` for one frame:
  softmax, the candidates above the score threshold, the ``pre_nms_top_k`` best of them, box
  decoding and clamping, and class-wise greedy NMS (ONNX ``NonMaxSuppression`` on boxes shifted
  by ``class * 1e4``, the same trick) keeping ``max_detections``. Ties of equal scores fall to the
  lower candidate index (``anchor * K + class``) in both ONNX ``TopK`` and ONNX Runtime's NMS, as
  in :func:`~gistgym.backbones.ssdlite.postprocess_frame`; scores and boxes agree with it to
  float32 rounding (ONNX Runtime's ``Exp`` and ``Softmax`` are not numpy's to the last bit);
* the extractor and the memory + head graphs are the engine's cached exports
  (:mod:`gistgym.backbones.engines`), joined with :func:`onnx.compose.merge_models`.

Deep Feature Flow's frames get the same: :func:`dff_key_graph` (a keyframe: preprocessing,
N_feat, N_task, postprocessing), :func:`dff_flow_graph` (F and the four flow cues a key scheduler
reads, :func:`flow_cues_graph`) and :func:`dff_propagate_graph` (the warp W,
:func:`warp_graph`, then N_task and the postprocessing). :func:`chain_graphs` joins the stages
of each.

The graphs are built in memory in milliseconds from the exports and a few constants (the
anchors, the thresholds), so they need no cache of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from gistgym.backbones.engines import ONNX_OPSET
from gistgym.backbones.ssdlite import BOX_VARIANCES, MAX_LOG_SCALE

__all__ = [
    "DFF_FLOW_INPUTS",
    "DFF_FLOW_OUTPUTS",
    "DFF_KEY_OUTPUTS",
    "DFF_PROPAGATE_INPUTS",
    "DFF_PROPAGATE_OUTPUTS",
    "FRAME_STEP_INPUTS",
    "FRAME_STEP_OUTPUTS",
    "chain_graphs",
    "dff_flow_graph",
    "dff_key_graph",
    "dff_propagate_graph",
    "flow_cues_graph",
    "frame_step_graph",
    "postprocess_graph",
    "preprocess_graph",
    "warp_graph",
]

FRAME_STEP_INPUTS = ("image", "c", "h")
"""Inputs of :func:`frame_step_graph`: the (1, S, S, 3) uint8 RGB frame and the carried (1, H, g, g) memory state."""
FRAME_STEP_OUTPUTS = ("features", "c_new", "h_new", "loc", "conf", "boxes", "scores", "labels")
"""Outputs of :func:`frame_step_graph`: the extractor's features, the memory step's new state, the head's
box offsets and logits, and the frame's detections (N, 4) float32 pixels, (N,) float32, (N,) int64."""


class _Nodes:
    """A list of ONNX nodes with constants named as they are added."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def const(self, value: np.ndarray | np.generic) -> str:
        self._count += 1
        name = f"const_{self._count}"
        tensor = numpy_helper.from_array(np.asarray(value), f"{name}_value")
        self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output


def _model(
    nodes: _Nodes, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], ir: int
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes.nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ir)
    onnx.checker.check_model(model)
    return model


def preprocess_graph(
    image_size: int, mean: Sequence[float], std: Sequence[float], *, ir_version: int = onnx.IR_VERSION
) -> onnx.ModelProto:
    """``images = (float(image) / 255 - mean) / std``: (B, S, S, 3) uint8 ``image`` -> (B, 3, S, S) float32."""
    g = _Nodes()
    chw = g.op("Transpose", ["image"], "image_chw", perm=[0, 3, 1, 2])
    x = g.op("Cast", [chw], "image_float", to=TensorProto.FLOAT)
    x = g.op("Div", [x, g.const(np.float32(255.0))], "unit")
    x = g.op("Sub", [x, g.const(np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1))], "centred")
    g.op("Div", [x, g.const(np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1))], "images")
    return _model(
        g,
        "preprocess",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", image_size, image_size, 3])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        ir_version,
    )


def postprocess_graph(
    anchors: np.ndarray,
    num_classes: int,
    image_size: tuple[int, int],
    *,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.5,
    max_detections: int = 25,
    pre_nms_top_k: int = 100,
    ir_version: int = onnx.IR_VERSION,
) -> onnx.ModelProto:
    """:func:`~gistgym.backbones.ssdlite.postprocess_frame` as a graph: ``loc`` (1, A, 4), ``conf`` (1, A, K + 1).

    Outputs ``boxes`` (N, 4) float32 ``[x0, y0, x1, y1]`` clamped to ``image_size = (h, w)``,
    ``scores`` (N,) and ``labels`` (N,) int64 (0-based foreground class), highest score first.

    Args:
        anchors: (A, 4) anchors ``[cx, cy, w, h]`` in pixels.
        num_classes: K, the foreground classes (``conf`` has K + 1 logits, 0 = background).
        image_size: ``(h, w)`` of the frame the boxes are clamped to.
        score_threshold: As ``postprocess_frame``.
        iou_threshold: As ``postprocess_frame``.
        max_detections: As ``postprocess_frame``.
        pre_nms_top_k: As ``postprocess_frame``.
        ir_version: The ONNX IR version of the model (that of the exports it is merged with).
    """
    anchors = np.asarray(anchors, dtype=np.float32)
    A, K = int(anchors.shape[0]), int(num_classes)
    k = min(int(pre_nms_top_k), A * K)
    h, w = image_size
    f32 = np.float32
    i64 = np.int64
    g = _Nodes()
    # per-class probabilities, flattened anchor-major (index = anchor * K + class), as the numpy version;
    # the top k of all of them, of which NMS keeps only those above the score threshold (the candidates:
    # ONNX Runtime's NMS keeps a box whose score is > the threshold)
    probs = g.op("Softmax", ["conf"], "probs_all", axis=-1)
    probs = g.op("Slice", [probs, *(g.const(np.array([v], i64)) for v in (1, K + 1, 2))], "probs")
    flat = g.op("Reshape", [probs, g.const(np.array([A * K], i64))], "flat")
    g.nodes.append(
        helper.make_node(
            "TopK", [flat, g.const(np.array([k], i64))], ["top_scores", "top_index"], axis=0, largest=1, sorted=1
        )
    )
    anchor_index = g.op("Div", ["top_index", g.const(np.array(K, i64))], "anchor_index")
    labels = g.op("Mod", ["top_index", g.const(np.array(K, i64))], "candidate_labels")
    # decoding (decode_boxes' operations and order) and clamping
    a_centre = g.op("Gather", [g.const(np.ascontiguousarray(anchors[:, :2])), anchor_index], "a_centre", axis=0)
    a_size = g.op("Gather", [g.const(np.ascontiguousarray(anchors[:, 2:])), anchor_index], "a_size", axis=0)
    off = g.op("Gather", [g.op("Reshape", ["loc", g.const(np.array([A, 4], i64))], "loc_rows"), anchor_index], "off")
    g.nodes.append(helper.make_node("Split", [off], ["o_centre", "o_size"], axis=1))
    v0, v1 = BOX_VARIANCES
    shift = g.op("Mul", [g.op("Mul", ["o_centre", g.const(f32(v0))], "o_centre_v"), a_size], "shift")
    centre = g.op("Add", [a_centre, shift], "centre")
    log_scale = g.op("Min", [g.op("Mul", ["o_size", g.const(f32(v1))], "o_size_v"), g.const(f32(MAX_LOG_SCALE))], "ls")
    half = g.op("Div", [g.op("Mul", [a_size, g.op("Exp", [log_scale], "scale")], "size"), g.const(f32(2.0))], "half")
    corners = g.op("Concat", [g.op("Sub", [centre, half], "lo"), g.op("Add", [centre, half], "hi")], "raw", axis=1)
    if h == w:
        corners = g.op("Clip", [corners, g.const(f32(0.0)), g.const(f32(w))], "corners")
    else:
        corners = g.op("Max", [corners, g.const(f32(0.0))], "corners_low")
        corners = g.op("Min", [corners, g.const(np.array([[w, h, w, h]], f32))], "corners")
    # class-wise NMS: boxes of different classes moved 1e4 pixels apart never overlap
    class_shift = g.op("Gather", [g.const((np.arange(K) * 1e4).astype(f32).reshape(K, 1)), labels], "class_shift")
    selected = g.op(
        "NonMaxSuppression",
        [
            g.op("Unsqueeze", [g.op("Add", [corners, class_shift], "nms_boxes"), g.const(np.array([0], i64))], "nb"),
            g.op("Reshape", ["top_scores", g.const(np.array([1, 1, k], i64))], "nms_scores"),
            g.const(np.array([max_detections], i64)),
            g.const(np.array([iou_threshold], f32)),
            g.const(np.array([score_threshold], f32)),
        ],
        "selected",
    )
    keep = g.op("Gather", [selected, g.const(np.array(2, i64))], "keep", axis=1)
    g.op("Gather", [corners, keep], "boxes")
    g.op("Gather", ["top_scores", keep], "scores")
    g.op("Gather", [labels, keep], "labels")
    return _model(
        g,
        "postprocess",
        [
            helper.make_tensor_value_info("loc", TensorProto.FLOAT, [1, A, 4]),
            helper.make_tensor_value_info("conf", TensorProto.FLOAT, [1, A, K + 1]),
        ],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["detections", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["detections"]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["detections"]),
        ],
        ir_version,
    )


def _with_ir(model: onnx.ModelProto, ir: int) -> onnx.ModelProto:
    """A copy of ``model`` with IR version ``ir`` (merging needs one version; the caller's model is left alone)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.ir_version = ir
    return copy


def chain_graphs(
    stages: Sequence[tuple[str, onnx.ModelProto]],
    links: Mapping[str, Sequence[tuple[str, str]]],
    outputs: Sequence[str],
) -> onnx.ModelProto:
    """Graphs joined in order into one: each stage's inputs fed by earlier stages' outputs.

    Every stage's values are prefixed with ``"<stage>/"``; ``links[stage]`` lists ``(earlier
    "<stage>/<output>", this stage's input)`` pairs (the inputs no link feeds stay graph
    inputs). The result has exactly ``outputs`` (prefixed stage outputs, linked or not), in
    that order; it names them and its inputs without their prefix.

    Raises:
        ValueError: An output that no stage has, or two inputs or outputs of one name.
    """
    ir = max(m.ir_version for _, m in stages)
    produced = {f"{prefix}/{o.name}": o for prefix, m in stages for o in m.graph.output}
    (first_prefix, first), *rest = stages
    model = compose.add_prefix(_with_ir(first, ir), f"{first_prefix}/")
    for prefix, stage in rest:
        model = compose.merge_models(model, _with_ir(stage, ir), io_map=list(links[prefix]), prefix2=f"{prefix}/")
    missing = [name for name in outputs if name not in produced]
    if missing:
        raise ValueError(f"chain_graphs: no stage outputs {', '.join(map(repr, missing))}")
    public = {inner: inner.split("/", 1)[1] for inner in [*(v.name for v in model.graph.input), *outputs]}
    if len(set(public.values())) != len(public):
        raise ValueError(f"chain_graphs: inputs and outputs {sorted(public)} do not have one name each")
    kept = []
    for inner in outputs:
        info = onnx.ValueInfoProto()
        info.CopyFrom(produced[inner])
        info.name = public[inner]
        kept.append(info)
    del model.graph.output[:]
    model.graph.output.extend(kept)
    for value in model.graph.input:
        value.name = public[value.name]
    for node in model.graph.node:
        node.input[:] = [public.get(n, n) for n in node.input]
        node.output[:] = [public.get(n, n) for n in node.output]
    onnx.checker.check_model(model)
    return model


def frame_step_graph(
    preprocess: onnx.ModelProto,
    extractor: onnx.ModelProto,
    memory_head: onnx.ModelProto,
    postprocess: onnx.ModelProto,
) -> onnx.ModelProto:
    """One frame as one graph: :data:`FRAME_STEP_INPUTS` -> :data:`FRAME_STEP_OUTPUTS`.

    Args:
        preprocess: :func:`preprocess_graph` (``image`` -> ``images``).
        extractor: An extractor export (``images`` -> ``features``).
        memory_head: The memory + head export (``(x, c, h)`` -> ``(c_new, h_new, loc, conf)``).
        postprocess: :func:`postprocess_graph` (``(loc, conf)`` -> ``(boxes, scores, labels)``).
    """
    return chain_graphs(
        [("pre", preprocess), ("ext", extractor), ("mem", memory_head), ("post", postprocess)],
        {
            "ext": [("pre/images", "images")],
            "mem": [("ext/features", "x")],
            "post": [("mem/loc", "loc"), ("mem/conf", "conf")],
        },
        ["ext/features", "mem/c_new", "mem/h_new", "mem/loc", "mem/conf", "post/boxes", "post/scores", "post/labels"],
    )


# --- Deep Feature Flow -----------------------------------------------------------------------

DFF_KEY_OUTPUTS = ("images", "features", "loc", "conf", "boxes", "scores", "labels")
"""Outputs of :func:`dff_key_graph` on the (1, S, S, 3) uint8 ``image``: the normalised frame (the next
flows' keyframe), N_feat's features, N_task's box offsets and logits, and the frame's detections."""
DFF_FLOW_INPUTS = ("key_images", "image")
"""Inputs of :func:`dff_flow_graph`: the keyframe's normalised (1, 3, S, S) image and the uint8 frame."""
DFF_FLOW_OUTPUTS = ("images", "flow", "scale", "cues")
"""Outputs of :func:`dff_flow_graph`: the normalised frame, F's flow and scale, and their four cues (1, 4)."""
DFF_PROPAGATE_INPUTS = ("features", "flow", "scale")
"""Inputs of :func:`dff_propagate_graph`: the keyframe's features and F's flow and scale of the frame."""
DFF_PROPAGATE_OUTPUTS = ("loc", "conf", "boxes", "scores", "labels")
"""Outputs of :func:`dff_propagate_graph`: N_task's box offsets and logits and the frame's detections."""


def warp_graph(channels: int, grid: int, *, ir_version: int = onnx.IR_VERSION) -> onnx.ModelProto:
    """:func:`gistgym.backbones.dff.warp` as a graph: ``(features, flow, scale)`` -> ``warped`` (B, C, g, g).

    The sampling grid is built with the same operations in the same order (pixel centres moved
    by the flow, to ``[-1, 1]`` with ``align_corners=False``), then ONNX ``GridSample``
    (bilinear, border padding), times the scale field.
    """
    f32, i64 = np.float32, np.int64
    g = _Nodes()
    coords = np.arange(grid, dtype=f32)
    for axis, name, shape in ((0, "gx", (1, 1, grid)), (1, "gy", (1, grid, 1))):
        along = g.op("Gather", ["flow", g.const(i64(axis))], f"flow_{name}", axis=1)
        shifted = g.op("Add", [g.const(coords.reshape(shape)), along], f"{name}_px")
        unit = g.op("Add", [g.op("Mul", [g.const(f32(2.0)), shifted], f"{name}_2"), g.const(f32(1.0))], f"{name}_c")
        norm = g.op("Sub", [g.op("Div", [unit, g.const(f32(grid))], f"{name}_n"), g.const(f32(1.0))], name)
        g.op("Unsqueeze", [norm, g.const(np.array([-1], i64))], f"{name}_last")
    g.op("Concat", ["gx_last", "gy_last"], "sample_grid", axis=-1)
    g.op("GridSample", ["features", "sample_grid"], "sampled", mode="bilinear", padding_mode="border", align_corners=0)
    g.op("Mul", ["sampled", "scale"], "warped")
    fmap: list[str | int] = ["batch", channels, grid, grid]
    return _model(
        g,
        "warp",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, fmap),
            helper.make_tensor_value_info("flow", TensorProto.FLOAT, ["batch", 2, grid, grid]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, fmap),
        ],
        [helper.make_tensor_value_info("warped", TensorProto.FLOAT, fmap)],
        ir_version,
    )


def flow_cues_graph(
    channels: int, grid: int, cell_pixels: float, large_px: float, *, ir_version: int = onnx.IR_VERSION
) -> onnx.ModelProto:
    """:func:`gistgym.feature_cache.keyframe.flow_cues` as a graph: ``(flow, scale)`` -> ``cues`` (B, 4).

    Mean and largest flow magnitude in pixels, the share of cells moved more than ``large_px``
    pixels, and the mean ``|scale - 1|``, with the same operations in the same order.
    """
    f32, i64 = np.float32, np.int64
    g = _Nodes()
    squared = g.op("Mul", ["flow", "flow"], "squared")
    summed = g.op("ReduceSum", [squared, g.const(np.array([1], i64))], "summed", keepdims=0)
    flat = g.op("Reshape", [g.op("Sqrt", [summed], "cells_length"), g.const(np.array([0, -1], i64))], "cells_flat")
    px = g.op("Mul", [flat, g.const(f32(cell_pixels))], "magnitude")
    large = g.op("Cast", [g.op("Greater", [px, g.const(f32(large_px))], "large_bool")], "large", to=TensorProto.FLOAT)
    off = g.op("Abs", [g.op("Sub", ["scale", g.const(f32(1.0))], "scale_minus_one")], "scale_off")
    off = g.op("Reshape", [off, g.const(np.array([0, -1], i64))], "scale_flat")
    cues = [
        g.op("ReduceMean", [px], "mean_px", axes=[1], keepdims=1),
        g.op("ReduceMax", [px], "max_px", axes=[1], keepdims=1),
        g.op("ReduceMean", [large], "large_share", axes=[1], keepdims=1),
        g.op("ReduceMean", [off], "scale_dev", axes=[1], keepdims=1),
    ]
    g.op("Concat", cues, "cues", axis=1)
    return _model(
        g,
        "flow_cues",
        [
            helper.make_tensor_value_info("flow", TensorProto.FLOAT, ["batch", 2, grid, grid]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", channels, grid, grid]),
        ],
        [helper.make_tensor_value_info("cues", TensorProto.FLOAT, ["batch", 4])],
        ir_version,
    )


def dff_key_graph(
    preprocess: onnx.ModelProto, feature: onnx.ModelProto, task: onnx.ModelProto, postprocess: onnx.ModelProto
) -> onnx.ModelProto:
    """A DFF keyframe as one graph: uint8 ``image`` -> :data:`DFF_KEY_OUTPUTS` (preprocess, N_feat, N_task, NMS)."""
    return chain_graphs(
        [("pre", preprocess), ("feat", feature), ("task", task), ("post", postprocess)],
        {
            "feat": [("pre/images", "images")],
            "task": [("feat/features", "features")],
            "post": [("task/loc", "loc"), ("task/conf", "conf")],
        },
        ["pre/images", "feat/features", "task/loc", "task/conf", "post/boxes", "post/scores", "post/labels"],
    )


def dff_flow_graph(preprocess: onnx.ModelProto, flow: onnx.ModelProto, cues: onnx.ModelProto) -> onnx.ModelProto:
    """F on a frame as one graph: :data:`DFF_FLOW_INPUTS` -> :data:`DFF_FLOW_OUTPUTS` (preprocess, F, the cues)."""
    return chain_graphs(
        [("pre", preprocess), ("flow", flow), ("cues", cues)],
        {"flow": [("pre/images", "images")], "cues": [("flow/flow", "flow"), ("flow/scale", "scale")]},
        ["pre/images", "flow/flow", "flow/scale", "cues/cues"],
    )


def dff_propagate_graph(warp: onnx.ModelProto, task: onnx.ModelProto, postprocess: onnx.ModelProto) -> onnx.ModelProto:
    """A propagated DFF frame as one graph: :data:`DFF_PROPAGATE_INPUTS` -> :data:`DFF_PROPAGATE_OUTPUTS`.

    W, N_task and the postprocessing.
    """
    return chain_graphs(
        [("warp", warp), ("task", task), ("post", postprocess)],
        {"task": [("warp/warped", "features")], "post": [("task/loc", "loc"), ("task/conf", "conf")]},
        ["task/loc", "task/conf", "post/boxes", "post/scores", "post/labels"],
    )
