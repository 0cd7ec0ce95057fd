"""The online runtime's per-frame work outside its modules, and that it changes no output.

The numpy NMS and postprocessing, the preprocessing, the observation, the fused memory + head
step and the async heavy job's background write each replaced torch code on the per-frame path
for speed. Each of them replaced torch code on the per-frame path for speed; these tests pin that the outputs
did not change: the same detections as torch's :func:`~gistgym.backbones.ssdlite.postprocess`
(ties included, by a documented rule), the same preprocessed bits, the same memory states.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gistgym.agents.baselines import FixedTauPolicy
from gistgym.backbones.convlstm import LSTMState
from gistgym.backbones.engines import PARITY_ATOL
from gistgym.backbones.ssdlite import (
    AnchorConfig,
    _nms_numpy,
    box_iou,
    make_anchors,
    nms,
    postprocess,
    postprocess_frame,
)
from gistgym.runtime.online import AsyncStats, OnlineMemory, eq1_observation, run_async

ANCHORS = make_anchors(AnchorConfig())
A = ANCHORS.shape[0]
K = 4


# --- NMS ------------------------------------------------------------------------------------------
def _clustered_boxes(rng: np.random.Generator, n: int, clusters: int) -> np.ndarray:
    """``n`` boxes around ``clusters`` centres (heavy overlap), some of zero width or height."""
    centres = rng.uniform(5, 60, size=(clusters, 2))
    c = centres[rng.integers(0, clusters, n)] + rng.normal(0, 1.5, size=(n, 2))
    wh = rng.uniform(2, 14, size=(n, 2))
    wh[rng.random(n) < 0.05, 0] = 0.0  # degenerate boxes: IoU 0 with everything, themselves included
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)


def _greedy_reference(boxes: np.ndarray, scores: np.ndarray, threshold: float, max_keep: int) -> list[int]:
    """Greedy NMS written out: score order with ties to the lower index, IoU from :func:`box_iou`."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    kept: list[int] = []
    for i in order:
        if all(not iou[k, i] > threshold for k in kept):
            kept.append(i)
            if len(kept) >= max_keep:
                break
    return kept


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_numpy_nms_is_torchs_on_many_overlapping_boxes(threshold: float) -> None:
    rng = np.random.default_rng(int(threshold * 10))
    for trial in range(40):
        n = int(rng.integers(1, 160))
        boxes = _clustered_boxes(rng, n, clusters=int(rng.integers(1, 6)))
        scores = rng.permutation(np.linspace(0.01, 1.0, n)).astype(np.float32)  # distinct
        for max_keep in (1, 5, 25, 10_000):
            want = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold, max_keep=max_keep).tolist()
            got = _nms_numpy(boxes, scores, threshold, max_keep).tolist()
            assert got == want, (trial, n, max_keep)
            assert got == _greedy_reference(boxes, scores, threshold, max_keep)


def test_numpy_nms_breaks_ties_by_the_lower_index() -> None:
    rng = np.random.default_rng(5)
    for _ in range(60):
        n = int(rng.integers(2, 120))
        boxes = _clustered_boxes(rng, n, clusters=2)
        scores = rng.choice(np.array([0.2, 0.5, 0.9], dtype=np.float32), n)  # many ties
        for max_keep in (3, 25, 1000):
            assert _nms_numpy(boxes, scores, 0.5, max_keep).tolist() == _greedy_reference(boxes, scores, 0.5, max_keep)
    twins = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40], [0, 0, 10, 10]], dtype=np.float32)
    assert _nms_numpy(twins, np.full(4, 0.7, np.float32), 0.5, 25).tolist() == [0, 2]
    # greedy: a suppressed box suppresses nothing (the chain of test_ssdlite's torch NMS)
    chain = np.array([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], dtype=np.float32)
    assert _nms_numpy(chain, np.array([0.9, 0.8, 0.7], np.float32), 0.5, 25).tolist() == [0, 2]


def test_numpy_nms_of_no_box_one_box_and_max_keep() -> None:
    assert _nms_numpy(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5, 25).tolist() == []
    assert _nms_numpy(np.array([[1, 1, 2, 2]], np.float32), np.array([0.3], np.float32), 0.5, 25).tolist() == [0]
    apart = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], dtype=np.float32)
    scores = np.array([0.1, 0.6, 0.3, 0.9, 0.5, 0.2], np.float32)
    assert _nms_numpy(apart, scores, 0.5, 4).tolist() == [3, 1, 4, 2]
    # as torch's nms (and postprocess, whose max_detections is never 0): the first box is always kept
    assert (
        _nms_numpy(apart, scores, 0.5, 0).tolist()
        == nms(torch.from_numpy(apart), torch.from_numpy(scores), 0.5, 0).tolist()
    )


# --- postprocessing -------------------------------------------------------------------------------
def _assert_same(got: Any, want: Any) -> None:
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=1e-5, atol=1e-4)
    assert got.boxes.dtype == np.float32 and got.boxes.shape == (len(got.labels), 4) and got.boxes.flags.c_contiguous
    assert got.scores.dtype == np.float32 and got.labels.dtype == np.int64


def _distinct_candidate_scores(conf: torch.Tensor, threshold: float = 0.01) -> bool:
    p = torch.softmax(conf, dim=-1)[..., 1:].reshape(-1)
    cand = p[p > threshold]
    return len(torch.unique(cand)) == len(cand)


def _frames(rng: np.random.Generator) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    out = []
    common = torch.tensor([20.0, 24.0, 36.0, 40.0])  # one box for all anchors: every pair of a class overlaps
    for name, background in [("many candidates", -3.0), ("some", 4.0), ("few", 9.0), ("none", 30.0)]:
        loc = torch.from_numpy(rng.normal(0, 0.7, size=(A, 4)).astype(np.float32))
        conf = torch.from_numpy(rng.normal(0, 2, size=(A, K + 1)).astype(np.float32))
        conf[:, 0] += background
        out.append((name, loc, conf))
    # offsets that put every anchor's box on (almost) the same box, all classes likely
    centre, size = (common[:2] + common[2:]) / 2, common[2:] - common[:2]
    jitter = torch.from_numpy(rng.normal(0, 0.02, size=(A, 4)).astype(np.float32))
    loc = torch.cat([(centre - ANCHORS[:, :2]) / (0.1 * ANCHORS[:, 2:]), torch.log(size / ANCHORS[:, 2:]) / 0.2], dim=1)
    loc = loc + jitter
    conf = torch.from_numpy(rng.normal(0, 1.5, size=(A, K + 1)).astype(np.float32))
    out.append(("one box everywhere", loc, conf))
    # exactly one candidate
    conf = torch.full((A, K + 1), -20.0)
    conf[:, 0] = 20.0
    conf[137] = torch.tensor([0.0, -5.0, 3.0, -5.0, -5.0])
    out.append(("one candidate", torch.zeros(A, 4), conf))
    return out


@pytest.mark.parametrize("image_size", [(64, 64), (48, 64), None])
def test_numpy_postprocessing_is_torchs_on_hard_frames(image_size: tuple[int, int] | None) -> None:
    rng = np.random.default_rng(11)
    anchors = ANCHORS.numpy()
    counts = {}
    for name, loc, conf in _frames(rng):
        assert _distinct_candidate_scores(conf), name  # with equal scores torch's order is unspecified
        for kw in ({}, {"pre_nms_top_k": 30}, {"iou_threshold": 0.2, "max_detections": 8}, {"iou_threshold": 0.95}):
            (want,) = postprocess(loc[None], conf[None], ANCHORS, image_size=image_size, **kw)
            got = postprocess_frame(loc.numpy(), conf.numpy(), anchors, image_size=image_size, **kw)
            _assert_same(got, want)
            counts[name, tuple(kw)] = len(got.labels)
    assert counts["none", ()] == 0 and counts["one candidate", ()] == 1
    assert counts["many candidates", ()] == 25  # max_detections reached after the top-k cut
    assert counts["one box everywhere", ()] <= K  # one box per class survives
    assert counts["many candidates", ("iou_threshold", "max_detections")] == 8


def _reference(loc: np.ndarray, conf: np.ndarray, *, top_k: int, max_keep: int, image_size: Any) -> Any:
    """:func:`postprocess` written out with the documented tie rule: equal scores to the lower candidate index."""
    from gistgym.backbones.ssdlite import Detections, decode_boxes

    p = torch.softmax(torch.from_numpy(conf), dim=-1)[:, 1:].reshape(-1).numpy()
    boxes = decode_boxes(torch.from_numpy(loc), ANCHORS).numpy()
    if image_size is not None:
        h, w = image_size
        boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
    cand = [int(i) for i in np.flatnonzero(p > 0.01)]
    cand = sorted(sorted(cand, key=lambda i: (-float(p[i]), i))[:top_k])
    anchor, cls = np.divmod(np.array(cand, dtype=np.int64), K)
    shifted = boxes[anchor] + (cls[:, None] * 1e4).astype(np.float32)
    kept = _greedy_reference(shifted, p[cand], 0.5, max_keep)
    return Detections(boxes[anchor[kept]], p[cand][kept], cls[kept])


def test_equal_scores_fall_to_the_lower_candidate_index() -> None:
    anchors = ANCHORS.numpy()
    zeros = np.zeros((A, 4), np.float32)
    # every logit 0: all A * K candidates score exactly 0.2; the cut keeps the first 100 (anchors 0..24),
    # the NMS order is the candidate order, so of each cell's overlapping anchors the first one wins
    flat = np.zeros((A, K + 1), np.float32)
    got = postprocess_frame(zeros, flat, anchors, image_size=(64, 64))
    assert set(got.scores.tolist()) == {np.float32(0.2)}
    _assert_same(got, _reference(zeros, flat, top_k=100, max_keep=25, image_size=(64, 64)))
    assert got.labels[:4].tolist() == [0, 1, 2, 3]  # anchor 0 of every class first
    cx, cy, w, h = anchors[0]
    np.testing.assert_array_equal(
        got.boxes[:4], np.tile(np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, 64), (4, 1))
    )
    again = postprocess_frame(zeros, flat, anchors, image_size=(64, 64))  # no state, no randomness
    np.testing.assert_array_equal(again.boxes, got.boxes)
    np.testing.assert_array_equal(again.labels, got.labels)
    # ties at the top-k boundary only: distinct scores above it, equal ones at the k-th place
    rng = np.random.default_rng(3)
    conf = np.full((A, K + 1), -30.0, np.float32)
    conf[:, 0] = 0.0
    conf[:60, 2] = rng.permutation(np.linspace(1.0, 3.0, 60)).astype(np.float32)
    conf[100:200, 3] = 0.5  # 100 equal scores below the 60 distinct ones: the cut takes the first of them
    for top_k in (100, 75):
        got = postprocess_frame(zeros, conf, anchors, pre_nms_top_k=top_k, max_detections=1000)
        _assert_same(got, _reference(zeros, conf, top_k=top_k, max_keep=1000, image_size=None))
        assert 0 < int(np.sum(got.labels == 2)) <= top_k - 60


def test_postprocess_frame_of_the_real_head_is_torchs(nontrivial_model: Any) -> None:
    """The detector's own head on random memory outputs (its logits, its anchors)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        loc, conf = nontrivial_model.head(torch.rand(6, nontrivial_model.memory.out_channels, 8, 8, generator=g) * 3)
    want = nontrivial_model.detect(loc, conf)
    anchors = nontrivial_model.head.anchors.numpy()
    for b in range(6):
        assert _distinct_candidate_scores(conf[b])
        _assert_same(postprocess_frame(loc[b].numpy(), conf[b].numpy(), anchors, image_size=(64, 64)), want[b])


# --- preprocessing, observation, fused step ---------------------------------------------------------
def test_online_preprocessing_is_the_detectors_bit_for_bit(nontrivial_model: Any) -> None:
    memory = OnlineMemory(nontrivial_model, (0, 1), engine="eager")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    for image in images:
        want = nontrivial_model.preprocess(torch.from_numpy(image)[None]).numpy()
        got = memory.preprocess(image)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (1, 3, 64, 64)
        np.testing.assert_array_equal(got, want)
    # a strided view (a crop) is read as it is
    crop = np.ascontiguousarray(rng.integers(0, 256, size=(80, 80, 3), dtype=np.uint8))[8:72, 8:72]
    np.testing.assert_array_equal(
        memory.preprocess(crop), nontrivial_model.preprocess(torch.from_numpy(crop.copy())[None])
    )


def test_eq1_observation_is_the_environments_concatenation() -> None:
    g = torch.Generator().manual_seed(0)
    c, h, cp, hp = (torch.randn(1, 16, 8, 8, generator=g) for _ in range(4))
    want = torch.cat([c, h, c - cp, h - hp], dim=1).numpy()
    np.testing.assert_array_equal(eq1_observation(c.numpy(), h.numpy(), cp.numpy(), hp.numpy()), want)
    np.testing.assert_array_equal(eq1_observation(c, h, cp, hp), want)


@pytest.mark.parametrize("engine", ["onnxruntime", "torchscript", "eager"])
def test_fused_memory_head_step_is_the_memory_then_the_head(engine: str, nontrivial_model: Any) -> None:
    from gistgym.runtime.frozen import array_call, engine_modules

    modules = engine_modules(nontrivial_model, engine)
    assert modules.memory_head is not None
    step = array_call(modules.memory_head)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 64, 8, 8, generator=g) * 4
    c, h = torch.rand(1, 64, 8, 8, generator=g) * 2, torch.rand(1, 64, 8, 8, generator=g)
    got = step(x.numpy(), c.numpy(), h.numpy())
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in got)
    with torch.no_grad():
        out, new = nontrivial_model.memory(x, LSTMState(c, h))
        want = (new.c, new.h, *nontrivial_model.head(out))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=PARITY_ATOL, rtol=0)


# --- the async heavy job's background write ---------------------------------------------------------
def _frames_of(n: int) -> np.ndarray:
    rng = np.random.default_rng(9)
    base = rng.integers(0, 256, size=(64, 64, 3))
    return np.stack([np.roll(base, 2 * t, axis=1) for t in range(n)]).astype(np.uint8)


def _run_async(memory: OnlineMemory, frames: np.ndarray, delay: int) -> tuple[list[Any], AsyncStats]:
    stats = AsyncStats()
    results = list(
        run_async(memory, iter(frames), FixedTauPolicy(3), action_names=("heavy", "light"),
                  heavy_delay_frames=delay, stats=stats)
    )  # fmt: skip
    return results, stats


@pytest.mark.parametrize("engine", ["onnxruntime", "eager"])
def test_background_write_is_the_write_the_fuse_would_make(engine: str, nontrivial_model: Any) -> None:
    """With skip_light_updates the heavy job makes the write step: the same, bit for bit, as the main thread's."""
    frames = _frames_of(20)
    background = OnlineMemory(nontrivial_model, (0, 1), engine=engine, skip_light_updates=True)
    main_thread = OnlineMemory(nontrivial_model, (0, 1), engine=engine, skip_light_updates=True)
    adopted: list[bool] = []
    fuse = background.fuse

    def spy(feats: np.ndarray, computed: Any = None) -> None:
        adopted.append(computed is not None and computed[0][0] is background.state[0])
        fuse(feats, computed)

    background.fuse = spy  # type: ignore[method-assign]
    main_thread.fuse = lambda feats, computed=None: main_thread.write(feats)  # type: ignore[method-assign]
    got, stats = _run_async(background, frames, 2)
    want, _ = _run_async(main_thread, frames, 2)
    assert stats.fused >= 3 and adopted == [True] * stats.fused
    assert [(r.heavy, r.fused_from) for r in got] == [(r.heavy, r.fused_from) for r in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.observation["state"], b.observation["state"])
        np.testing.assert_array_equal(a.detections.boxes, b.detections.boxes)
        np.testing.assert_array_equal(a.detections.labels, b.detections.labels)


def test_fuse_recomputes_when_the_memory_was_written_since_the_launch(nontrivial_model: Any) -> None:
    memory = OnlineMemory(nontrivial_model, (0, 1), engine="eager")
    frames = _frames_of(3)
    heavy = memory.heavy_features(memory.preprocess(frames[0]))
    launch_state = memory.state
    bogus = (np.full_like(launch_state[0], 7.0), np.full_like(launch_state[1], 7.0))
    memory.write(memory.heavy_features(memory.preprocess(frames[1])))  # the state changed since the launch
    want = memory.written_state(heavy, memory.state)
    memory.fuse(heavy, (launch_state, bogus))
    np.testing.assert_array_equal(memory.state[0], want[0])
    np.testing.assert_array_equal(memory.state[1], want[1])
    memory.fuse(heavy, (memory.state, bogus))  # unchanged: the job's result is adopted as it is
    assert memory.state[0] is bogus[0] and memory.state[1] is bogus[1]


def test_async_with_light_writes_fuses_into_the_current_state(nontrivial_model: Any) -> None:
    """skip_light_updates=False: light frames write, so a fuse steps from the state of its frame, not its launch."""
    frames = _frames_of(16)
    memory = OnlineMemory(nontrivial_model, (0, 1), engine="eager", skip_light_updates=False)
    results, stats = _run_async(memory, frames, 2)
    fuses = {r.fused_from: r.index for r in results if r.fused_from is not None}
    assert stats.fused >= 3 and all(r.state_written for r in results)
    m = nontrivial_model
    lstm = m.memory.initial_state(1, m.grid, m.grid)
    with torch.no_grad():
        for t, r in enumerate(results):
            for u, at in fuses.items():
                if at == t:
                    _, lstm = m.memory(m.extract(0, m.preprocess(torch.from_numpy(frames[u : u + 1])))[0], lstm)
            out, lstm = m.memory(m.extract(1, m.preprocess(torch.from_numpy(frames[t : t + 1])))[0], lstm)
            (want,) = m.detect(*m.head(out))
            np.testing.assert_array_equal(r.detections.labels, want.labels)
            np.testing.assert_allclose(r.detections.boxes, want.boxes, atol=1e-4)


# --- the whole frame as one ONNX Runtime graph ------------------------------------------------------
def _postprocess_session(image_size: tuple[int, int], **kw: Any) -> Any:
    from gistgym.backbones.engines import ort_session
    from gistgym.backbones.onnx_graphs import postprocess_graph

    return ort_session(postprocess_graph(ANCHORS.numpy(), K, image_size, **kw).SerializeToString(), 1, "postprocess")


def _graph_detections(session: Any, loc: np.ndarray, conf: np.ndarray) -> Any:
    from gistgym.backbones.ssdlite import Detections

    feed = {"loc": loc[None].astype(np.float32), "conf": conf[None].astype(np.float32)}
    boxes, scores, labels = session.run(None, feed)
    return Detections(np.ascontiguousarray(boxes), scores, labels)


@pytest.mark.parametrize("image_size", [(64, 64), (48, 64)])
def test_postprocess_graph_gives_postprocess_frames_detections(image_size: tuple[int, int]) -> None:
    rng = np.random.default_rng(11)
    anchors = ANCHORS.numpy()
    counts = {}
    for kw in ({}, {"pre_nms_top_k": 30}, {"iou_threshold": 0.2, "max_detections": 8}, {"iou_threshold": 0.95}):
        session = _postprocess_session(image_size, **kw)
        for name, loc, conf in _frames(rng):
            want = postprocess_frame(loc.numpy(), conf.numpy(), anchors, image_size=image_size, **kw)
            got = _graph_detections(session, loc.numpy(), conf.numpy())
            _assert_same(got, want)
            counts[name, tuple(kw)] = len(got.labels)
    assert counts["none", ()] == 0 and counts["one candidate", ()] == 1 and counts["many candidates", ()] == 25
    assert counts["many candidates", ("iou_threshold", "max_detections")] == 8


def test_postprocess_graph_breaks_equal_scores_as_postprocess_frame() -> None:
    """ONNX TopK and ONNX Runtime's NMS also give equal scores to the lower candidate index."""
    anchors = ANCHORS.numpy()
    zeros = np.zeros((A, 4), np.float32)
    flat = np.zeros((A, K + 1), np.float32)  # every candidate scores exactly 0.2
    got = _graph_detections(_postprocess_session((64, 64)), zeros, flat)
    want = postprocess_frame(zeros, flat, anchors, image_size=(64, 64))
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    conf = np.full((A, K + 1), -30.0, np.float32)
    conf[:, 0] = 0.0
    conf[:60, 2] = np.random.default_rng(3).permutation(np.linspace(1.0, 3.0, 60)).astype(np.float32)
    conf[100:200, 3] = 0.5  # 100 equal scores at the top-k boundary
    for top_k in (100, 75):
        session = _postprocess_session((64, 64), pre_nms_top_k=top_k, max_detections=1000)
        want = postprocess_frame(zeros, conf, anchors, pre_nms_top_k=top_k, max_detections=1000, image_size=(64, 64))
        _assert_same(_graph_detections(session, zeros, conf), want)


def test_preprocess_graph_is_the_detectors_preprocessing(nontrivial_model: Any) -> None:
    from gistgym.backbones.engines import ort_session
    from gistgym.backbones.onnx_graphs import preprocess_graph

    cfg = nontrivial_model.config
    session = ort_session(preprocess_graph(64, cfg.mean, cfg.std).SerializeToString(), 1, "preprocess")
    images = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    images[0] = 255
    (got,) = session.run(None, {"image": images})
    want = nontrivial_model.preprocess(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_onnxruntime_runtime_runs_a_frame_as_one_graph(nontrivial_model: Any) -> None:
    """On ONNX Runtime each extractor has a whole-frame graph and the runtime uses it; it gives the eager frame."""
    from gistgym.runtime.frozen import engine_modules

    ort_memory = OnlineMemory(nontrivial_model, (0, 1), engine="onnxruntime")
    steps = ort_memory.frozen.frame_steps
    shifting = [nontrivial_model.extractor(i).uses_shift for i in range(len(nontrivial_model.extractor_names))]
    assert [s is None for s in steps] == shifting and shifting[:2] == [False, False]  # shift buffers stay eager
    assert engine_modules(nontrivial_model, "torchscript").frame_steps == ()
    calls = []
    step = ort_memory._frame_steps[1]
    ort_memory._frame_steps = (ort_memory._frame_steps[0], lambda *a: calls.append(1) or step(*a))
    eager = OnlineMemory(nontrivial_model, (0, 1), engine="eager")
    for t, image in enumerate(_frames_of(6)):
        action = 0 if t % 3 == 0 else 1
        rec, dets = ort_memory.frame(action, image)
        want_rec, want = eager.frame(action, image)
        np.testing.assert_array_equal(dets.labels, want.labels)
        np.testing.assert_allclose(dets.boxes, want.boxes, atol=PARITY_ATOL, rtol=0)
        np.testing.assert_allclose(rec.observation["state"], want_rec.observation["state"], atol=PARITY_ATOL, rtol=0)
        np.testing.assert_array_equal(rec.observation["history"], want_rec.observation["history"])
        assert rec.state_written == want_rec.state_written
    assert len(calls) == 4  # every light frame went through the graph
    # a float frame (not what decoding gives) takes the module path, with the same result
    image = _frames_of(1)[0]
    rec, dets = ort_memory.frame(1, image.astype(np.float32))
    want_rec, want = eager.frame(1, image)
    assert len(calls) == 4
    np.testing.assert_array_equal(dets.labels, want.labels)
    np.testing.assert_allclose(rec.observation["state"], want_rec.observation["state"], atol=PARITY_ATOL, rtol=0)


def test_a_frame_graph_that_disagrees_with_its_modules_is_refused(
    nontrivial_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from gistgym.backbones.engines import EngineError
    from gistgym.backbones.onnx_graphs import preprocess_graph
    from gistgym.runtime import frozen

    def wrong(size: int, mean: Any, std: Any, **kw: Any) -> Any:
        return preprocess_graph(size, mean, [2 * s for s in std], **kw)  # not the detector's normalisation

    monkeypatch.setattr(frozen, "preprocess_graph", wrong)
    with pytest.raises(EngineError, match=r"frame-step-.*differs from its modules"):
        frozen.engine_modules(copy.deepcopy(nontrivial_model), "onnxruntime")


# --- Deep Feature Flow frames as ONNX Runtime graphs --------------------------------------------------
def _session(model: Any, kind: str) -> Any:
    from gistgym.backbones.engines import ort_session

    return ort_session(model.SerializeToString(), 1, kind)


def test_warp_graph_is_dffs_warp_with_reads_outside_the_map() -> None:
    from gistgym.backbones.dff import warp
    from gistgym.backbones.onnx_graphs import warp_graph

    rng = np.random.default_rng(5)
    C, g = 6, 8
    session = _session(warp_graph(C, g), "warp")
    features = rng.normal(size=(2, C, g, g)).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, size=(2, C, g, g)).astype(np.float32)
    for flow in (
        rng.normal(0, 1.5, size=(2, 2, g, g)),  # fractional moves, some past the border (border values)
        np.full((2, 2, g, g), 20.0),  # everything read from outside the map
        np.zeros((2, 2, g, g)),  # the identity: the features times the scale
    ):
        flow = flow.astype(np.float32)
        (got,) = session.run(None, {"features": features, "flow": flow, "scale": scale})
        want = warp(*(torch.from_numpy(x) for x in (features, flow, scale))).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, features * scale, rtol=0, atol=1e-6)


def test_flow_cues_graph_is_the_environments_cues() -> None:
    from gistgym.backbones.onnx_graphs import flow_cues_graph
    from gistgym.feature_cache.keyframe import LARGE_DISPLACEMENT_PX, flow_cues

    rng = np.random.default_rng(6)
    C, g, cell = 6, 4, 16.0
    session = _session(flow_cues_graph(C, g, cell, LARGE_DISPLACEMENT_PX), "cues")
    # cells well below and above the large-displacement threshold (none within rounding of it)
    length = rng.choice([0.02, 0.1, 0.5, 0.8, 3.0], size=(3, g, g)) * LARGE_DISPLACEMENT_PX / cell
    angle = rng.uniform(0, 2 * np.pi, size=(3, g, g))
    flow = np.stack([length * np.cos(angle), length * np.sin(angle)], 1).astype(np.float32)
    scale = rng.uniform(0.2, 1.8, size=(3, C, g, g)).astype(np.float32)
    (got,) = session.run(None, {"flow": flow, "scale": scale})
    want = flow_cues(torch.from_numpy(flow), torch.from_numpy(scale), cell).numpy()
    assert got.shape == (3, 4) and want[:, 2].min() > 0 and want[:, 2].max() < 1  # some cells large, not all
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_chain_graphs_refuses_an_output_no_stage_has_and_two_values_of_one_name() -> None:
    from gistgym.backbones.onnx_graphs import chain_graphs, flow_cues_graph, warp_graph

    stages = [("cues", flow_cues_graph(6, 4, 16.0, 4.0)), ("warp", warp_graph(6, 4))]
    links = {"warp": [("cues/cues", "features")]}
    with pytest.raises(ValueError, match="warp/nothing"):
        chain_graphs(stages, links, ["warp/nothing"])
    # both stages read an unlinked "flow" and "scale": the joined graph would have two inputs named flow
    with pytest.raises(ValueError, match="one name each"):
        chain_graphs(stages, links, ["warp/warped"])


def test_onnxruntime_dff_runs_frames_as_graphs_and_gives_the_eager_frames() -> None:
    """Keyframes take the key graph, propagated frames the flow and propagation graphs; float frames the modules."""
    from gistgym.agents.keyframe_baselines import FlowThresholdPolicy
    from gistgym.backbones.dff import load_dff
    from gistgym.runtime.frozen import engine_dff
    from gistgym.runtime.keyframe import run_keyframe

    model = load_dff()[0]
    steps = engine_dff(model, "onnxruntime").steps
    assert steps is not None and engine_dff(model, "torchscript").steps is None
    calls = {"key": 0, "flow": 0, "propagate": 0}
    for name in calls:
        graph = getattr(steps, name)
        run = graph.run_arrays
        graph.run_arrays = lambda *a, _n=name, _run=run: calls.__setitem__(_n, calls[_n] + 1) or _run(*a)
    size = model.config.image_size
    rng = np.random.default_rng(8)
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    frames = [np.roll(base, (t // 3) * 5, axis=1) if t < 12 else base[::-1] for t in range(16)]  # moves, then a cut

    def run(engine: str, images: list[np.ndarray]) -> list[Any]:
        policy = FlowThresholdPolicy(1.0)
        return list(run_keyframe(model, iter(images), policy, max_distance=6, history_len=20, engine=engine))

    try:
        got, want = run("onnxruntime", frames), run("eager", frames)
        keys = sum(r.keyframe for r in got)
        assert [r.keyframe for r in got] == [r.keyframe for r in want] and 1 < keys < len(got)
        assert calls == {"key": keys, "flow": len(got) - 1 - sum(r.forced for r in got[1:]), "propagate": 16 - keys}
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a.detections.labels, b.detections.labels)
            np.testing.assert_allclose(a.detections.boxes, b.detections.boxes, atol=PARITY_ATOL, rtol=0)
            np.testing.assert_allclose(a.detections.scores, b.detections.scores, atol=PARITY_ATOL, rtol=0)
            assert (a.cues is None) == (b.cues is None)
            if a.cues is not None:
                np.testing.assert_allclose(a.cues, b.cues, atol=PARITY_ATOL, rtol=0)
        before = dict(calls)
        floats = run("onnxruntime", [f.astype(np.float32) for f in frames])  # not what decoding gives: the modules
        assert calls == before and [r.keyframe for r in floats] == [r.keyframe for r in want]
    finally:
        for name in calls:
            vars(getattr(steps, name)).pop("run_arrays", None)


def test_dff_graphs_that_disagree_with_the_model_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from gistgym.backbones.dff import load_dff
    from gistgym.backbones.engines import EngineError
    from gistgym.backbones.onnx_graphs import warp_graph
    from gistgym.runtime import frozen

    def wrong(channels: int, grid: int, **kw: Any) -> Any:
        return _without_scale(warp_graph(channels, grid, **kw))

    monkeypatch.setattr(frozen, "warp_graph", wrong)
    with pytest.raises(EngineError, match="DFF frame graphs differ from the eager model"):
        frozen.engine_dff(load_dff()[0], "onnxruntime")


def _without_scale(model: Any) -> Any:
    """``warp_graph`` whose last node passes the sampled features through (no scale)."""
    last = model.graph.node[-1]
    assert last.op_type == "Mul" and list(last.input) == ["sampled", "scale"]
    last.op_type = "Max"
    last.input[:] = ["sampled", "sampled"]
    return model
