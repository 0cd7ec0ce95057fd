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

The graphs are built in memory in milliseconds from the exports and a few constants (the
anchors, the thresholds), so they need no cache of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from gistgym.backbones.engines import ONNX_OPSET
from gistgym.backbones.ssdlite import BOX_VARIANCES, MAX_LOG_SCALE

__all__ = ["FRAME_STEP_INPUTS", "FRAME_STEP_OUTPUTS", "frame_step_graph", "postprocess_graph", "preprocess_graph"]

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


def _output(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    return next(o for o in model.graph.output if o.name == name)


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
    ir = max(m.ir_version for m in (preprocess, extractor, memory_head, postprocess))
    preprocess, extractor, memory_head, postprocess = (
        _with_ir(m, ir) for m in (preprocess, extractor, memory_head, postprocess)
    )
    model = compose.merge_models(preprocess, extractor, io_map=[("images", "images")], prefix1="pre/", prefix2="ext/")
    model = compose.merge_models(model, memory_head, io_map=[("ext/features", "x")], prefix2="mem/")
    model = compose.merge_models(model, postprocess, io_map=[("mem/loc", "loc"), ("mem/conf", "conf")], prefix2="post/")
    # the intermediate values the runtime also needs become outputs again (merging consumed them)
    for name, source, inner in (
        ("ext/features", extractor, "features"),
        ("mem/loc", memory_head, "loc"),
        ("mem/conf", memory_head, "conf"),
    ):
        info = onnx.ValueInfoProto()
        info.CopyFrom(_output(source, inner))
        info.name = name
        model.graph.output.append(info)
    # public names: FRAME_STEP_INPUTS / FRAME_STEP_OUTPUTS
    rename = {
        "pre/image": "image",
        "mem/c": "c",
        "mem/h": "h",
        "ext/features": "features",
        "mem/c_new": "c_new",
        "mem/h_new": "h_new",
        "mem/loc": "loc",
        "mem/conf": "conf",
        "post/boxes": "boxes",
        "post/scores": "scores",
        "post/labels": "labels",
    }
    for value in [*model.graph.input, *model.graph.output]:
        value.name = rename.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    order = {name: i for i, name in enumerate(FRAME_STEP_OUTPUTS)}
    outputs = sorted(model.graph.output, key=lambda o: order[o.name])
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    onnx.checker.check_model(model)
    return model
