"""The interleaved detector run online, one frame at a time, with a policy choosing the extractors.

**Synchronous mode** (:func:`run_sync`) is Algorithm 1 of *Looking Fast and Slow* as the
``gistgym/Interleave-v0`` environment simulates it, but on live frames. For frame t with
extractor a_t (a_0 = heavy, always)::

    x_t      = f_{a_t}(I_t)                          features of the frame
    M_t, ŝ_t = m(x_t, s_{t-1})                       memory step from the carried state
    D_t      = d(M_t)                                the frame's detections
    s_t      = ŝ_t if a_t == 0 (or t == 0, or not skip_light_updates) else s_{t-1}
    obs_t    = [ĉ_t, ĥ_t, ĉ_t - c_{t-1}, ĥ_t - h_{t-1}], η_t (η_t[0] = a_t != 0, shifted history)
    a_{t+1}  = policy(obs_t, info_t)

exactly the environment's observation (the executed extractor's state and its difference
to the consumed state, see :class:`gistgym.envs.interleave.InterleaveEnv`), built from the
live memory instead of cached features. The only difference to the environment is the
features' precision: the cache stores them as float16, the runtime computes them in
float32 (and at batch 1), so observations agree to about 1e-2 absolute, not bit for bit.

**Asynchronous mode** (:func:`run_async`), the paper's: the light extractor runs on every
frame and produces every frame's detections; the heavy extractor runs in one background
thread and only writes the memory. Per frame t, in this order:

1. *fuse*: if a heavy job is finished (real mode: polled, never waited for) or due
   (deterministic mode, ``heavy_delay_frames = d``: the job launched on frame u is fused at
   the start of frame u + d, waiting for it if it is not done), the memory takes a write
   step with its features from the carried state: ``s = m(f_0(I_u), s)[1]``; its head is
   not run (no detections of stale frames). With ``skip_light_updates`` nothing else writes
   the memory, so ``s`` is still the state of frame u's launch and the job has made this
   step in the background already; the fuse then only adopts its result;
2. *launch*: if the heavy extractor is wanted (frame 0, or the policy asked for it after
   frame t - 1, or an earlier request is still waiting) and no job is in flight, a job
   computing ``f_0(I_t)`` starts in the background thread; a request made while a job is in
   flight waits for it to finish and is then launched on the next frame's image;
3. *light step* on frame t from the carried state (with ``skip_light_updates`` it does not
   write the memory), giving the frame's detections and the observation;
4. *decide*: the policy sees that observation with ``info["action"] = 0`` if a heavy job
   was launched on this frame (1 otherwise, also ``η_t[0]``) and chooses for frame t + 1:
   0 requests the heavy extractor, any other action names the light extractor to run.

A job still in flight after the last frame is waited for and dropped (counted in the
summary).

Both modes run the extractors, the memory and the head on ONNX Runtime by default
(:mod:`gistgym.runtime.frozen`; ``OnlineMemory(engine="torchscript")`` or ``gistgym detect --engine
torchscript`` for frozen TorchScript graphs, ``engine="eager"`` / ``--engine eager`` for the eager
modules): the same outputs to about 1e-5, faster per frame, and in async mode the background heavy
job no longer holds the GIL between operators (``InferenceSession.run`` and TorchScript calls
release it), which is what made light frames slow while a heavy job ran. On ONNX Runtime a frame is
one engine call (:meth:`OnlineMemory.frame`: preprocessing, extractor, memory step, head, decoding
and NMS in one graph, :mod:`gistgym.backbones.onnx_graphs`); on the other engines the extractor and
the memory step + head are two calls with the pre- and postprocessing in numpy. Only the
observation's bookkeeping stays in Python. Per-frame latency in both
modes is the main thread's time from the resized frame to its detections and the next decision
(fuse + launch + step + NMS + policy); decoding and writing outputs are excluded and reported
separately as wall-clock frames/s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gistgym.agents.policy import Policy
from gistgym.backbones.convlstm import LSTMState
from gistgym.backbones.detector import InterleavedDetector
from gistgym.backbones.engines import DEFAULT_ENGINE, MemoryHeadStep, ShiftExtractorStep
from gistgym.backbones.ssdlite import Detections, postprocess_frame
from gistgym.envs.interleave_core import runtime_cues
from gistgym.errors import ConfigError, InvalidActionError
from gistgym.runtime.frozen import ArrayCall, FrozenModules, array_call, engine_modules

DEFAULT_HISTORY_LEN = 20


def eq1_observation(
    c_hat: np.ndarray | Tensor, h_hat: np.ndarray | Tensor, c_prev: np.ndarray | Tensor, h_prev: np.ndarray | Tensor
) -> np.ndarray:
    """The Eq. 1 state maps ``[ĉ, ĥ, ĉ - c_prev, ĥ - h_prev]`` (B, 4H, g, g) float32, as the environment builds them.

    In numpy (arrays, or CPU tensors viewed as arrays): the same float32 subtractions as the
    environment's torch ones, so the same bits, without four torch ops per frame.
    """
    c_hat, h_hat, c_prev, h_prev = (np.asarray(x, dtype=np.float32) for x in (c_hat, h_hat, c_prev, h_prev))
    return np.concatenate([c_hat, h_hat, c_hat - c_prev, h_hat - h_prev], axis=1)


HeavyResult = tuple[np.ndarray, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None]
"""An async heavy job's features and, if it made the write step too, ``(from_state, new_state)``."""


@dataclass(frozen=True)
class StepRecord:
    """One processed frame of the online detector."""

    loc: np.ndarray
    """(1, A, 4) box offsets."""
    conf: np.ndarray
    """(1, A, K + 1) class logits."""
    observation: dict[str, np.ndarray]
    """Batch-of-one Eq. 1 observation: ``state`` (1, 4H, g, g) float32, ``history`` (1, L) int8."""
    state_written: bool


class OnlineMemory:
    """The detector's memory, head and observation bookkeeping for one stream.

    Per frame the runtime makes one engine call on ONNX Runtime (:meth:`frame`, the whole frame
    as one graph, :attr:`FrozenModules.frame_steps <gistgym.runtime.frozen.FrozenModules>`) and
    two on the other engines (the extractor, then the memory step and the head as one graph,
    :attr:`FrozenModules.memory_head <gistgym.runtime.frozen.FrozenModules>`), keeping
    everything between them in numpy: images, features, the carried memory state and the
    head's outputs are float32 arrays (on ONNX Runtime no tensor is made at all; on
    TorchScript and eager the tensors share the arrays' memory). At batch one the per-frame
    work outside the modules (conversions, preprocessing, postprocessing) was what made a
    light frame cost four times its modules.

    Args:
        detector: The frozen interleaved detector.
        action_extractors: Detector extractor index of each policy action (0 = heavy).
        history_len: Length of the history vector η.
        skip_light_updates: Override the update rule (``None``: the one stored with the weights).
        cues: Add the runtime cues (:func:`gistgym.envs.interleave_core.runtime_cues`) to the
            observation, as the environment's ``cues=True`` does: the features of action 1's
            extractor are then needed on every frame (:meth:`step`'s ``cue_feats``).
        frozen: ``False`` runs the eager modules whatever ``engine`` says.
        engine: The engine of the extractors, memory and head (:mod:`gistgym.runtime.frozen`:
            ``onnxruntime``, ``torchscript`` or ``eager``; the compiled ones give the same
            outputs to about 1e-5, are faster per frame and free of the GIL in async mode).
        threads: ONNX Runtime intra-op threads per session.
    """

    def __init__(
        self,
        detector: InterleavedDetector,
        action_extractors: Sequence[int],
        *,
        history_len: int = DEFAULT_HISTORY_LEN,
        skip_light_updates: bool | None = None,
        cues: bool = False,
        frozen: bool = True,
        engine: str = DEFAULT_ENGINE,
        threads: int = 1,
    ) -> None:
        if not action_extractors or action_extractors[0] != 0:
            raise ConfigError(
                f"action 0 must run the heavy extractor 0, got action extractors {list(action_extractors)}"
            )
        self.detector = detector
        self.action_extractors = tuple(int(i) for i in action_extractors)
        self.history_len = int(history_len)
        self.skip_light_updates = (
            detector.config.skip_light_updates if skip_light_updates is None else bool(skip_light_updates)
        )
        self.cues = bool(cues)
        if self.cues and len(self.action_extractors) < 2:
            raise ConfigError("cues need a light action (action 1) besides the heavy one")
        self.engine = engine if frozen else "eager"
        self.frozen: FrozenModules = engine_modules(detector, self.engine, threads)
        self._extractors = tuple(None if g is None else array_call(g) for g in self.frozen.extractors)
        shift_steps = self.frozen.shift_steps or (None,) * len(self.frozen.extractors)
        self._shift_steps = tuple(None if g is None else array_call(g) for g in shift_steps)
        example = torch.zeros(1, 3, detector.config.image_size, detector.config.image_size)
        self._zero_buffers = tuple(
            None
            if g is None
            else tuple(b.numpy() for b in ShiftExtractorStep(detector.extractor(i)).zero_buffers(example))
            for i, g in enumerate(shift_steps)
        )
        fused = self.frozen.memory_head
        self._memory_head = array_call(MemoryHeadStep(detector.memory, detector.head) if fused is None else fused)
        self._memory_step = array_call(self.frozen.memory)
        steps = self.frozen.frame_steps or (None,) * len(self.frozen.extractors)
        self._frame_steps = tuple(None if s is None else s.run_arrays for s in steps)
        self._anchors = np.ascontiguousarray(detector.head.anchors.numpy(), dtype=np.float32)
        self._image_size = (detector.config.image_size, detector.config.image_size)
        # the normalisation as per-channel float32 scalars: x / 255, - mean, / std, the detector's order
        self._mean = [np.float32(v) for v in detector.mean.reshape(-1).tolist()]
        self._std = [np.float32(v) for v in detector.std.reshape(-1).tolist()]
        self.reset()

    def reset(self) -> None:
        """Zero memory, empty shift buffers and history (a new stream)."""
        zero = self.detector.memory.initial_state(1, self.detector.grid, self.detector.grid)
        self._c = np.ascontiguousarray(zero.c.numpy(), dtype=np.float32)
        self._h = np.ascontiguousarray(zero.h.numpy(), dtype=np.float32)
        self.shift: list[Any] = [None] * len(self.detector.extractors)
        self.history = np.zeros((1, self.history_len), dtype=np.int8)
        self.frames_seen = 0
        self.cue_ref: Tensor | None = None
        self.cue_prev: Tensor | None = None
        self.since_heavy = 0

    @property
    def lstm(self) -> LSTMState:
        """The carried memory state (tensors sharing the arrays the runtime keeps)."""
        return LSTMState(torch.from_numpy(self._c), torch.from_numpy(self._h))

    @lstm.setter
    def lstm(self, state: LSTMState) -> None:
        self._c = np.ascontiguousarray(np.asarray(state.c), dtype=np.float32)
        self._h = np.ascontiguousarray(np.asarray(state.h), dtype=np.float32)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 RGB -> (1, 3, S, S) normalised float32, a new array.

        Bit for bit ``detector.preprocess`` (the same float32 operations in the same order, per
        channel plane), at less than half its cost at batch one.
        """
        image = np.asarray(image)
        out = np.empty((1, 3, *image.shape[:2]), dtype=np.float32)
        for ch in range(3):
            plane = out[0, ch]
            np.copyto(plane, image[:, :, ch])  # uint8 -> float32 is exact
            np.divide(plane, np.float32(255.0), out=plane)
            np.subtract(plane, self._mean[ch], out=plane)
            np.divide(plane, self._std[ch], out=plane)
        return out

    def extract(self, action: int, images: np.ndarray) -> np.ndarray:
        """Features (1, C, g, g) of action ``action``'s extractor (advancing its shift buffer if it has one)."""
        index = self.action_extractors[action]
        run = self._extractors[index]
        if run is not None:
            return run(images)[0]
        step = self._shift_steps[index]
        if step is not None:  # compiled, the buffers as arrays in and out
            buffers = self.shift[index] or self._zero_buffers[index]
            assert buffers is not None
            out = step(images, *buffers)
            self.shift[index] = out[1:]
            return out[0]
        with torch.inference_mode():
            feats, shift = self.detector.extract(index, torch.from_numpy(images), self.shift[index])
        if self.detector.extractor(index).uses_shift:
            self.shift[index] = shift
        return feats.numpy()

    def heavy_features(self, images: np.ndarray) -> np.ndarray:
        """Features of the heavy extractor (action 0) without touching any carried state (async jobs)."""
        index = self.action_extractors[0]
        run = self._extractors[index]
        if run is not None:
            return run(images)[0]
        with torch.inference_mode():
            return self.detector.extract(index, torch.from_numpy(images))[0].numpy()

    def step(
        self,
        action: int,
        feats: np.ndarray,
        *,
        history_action: int | None = None,
        cue_feats: np.ndarray | None = None,
    ) -> StepRecord:
        """Memory step with features ``feats`` of action ``action``, head, observation, history.

        Args:
            action: The policy action that produced ``feats`` (0 = heavy writes the memory).
            feats: (1, C, g, g) float32 features.
            history_action: What the history records for this frame (default ``action``); its
                being 0 also makes the frame the cues' last heavy frame.
            cue_feats: With ``cues``: action 1's features of this frame (default ``feats``
                when ``action`` is 1).
        """
        c_prev, h_prev = self._c, self._h
        c, h, loc, conf = self._memory_head(feats, c_prev, h_prev)
        return self._record(action, feats, (c, h, loc, conf), (c_prev, h_prev), history_action, cue_feats)

    def frame(
        self, action: int, image: np.ndarray, *, history_action: int | None = None
    ) -> tuple[StepRecord, Detections]:
        """One frame: action ``action``'s extractor on the (S, S, 3) uint8 ``image``, :meth:`step`, :meth:`detect`.

        On ONNX Runtime the whole frame (preprocessing, extractor, memory + head, decoding and
        NMS) is one engine call (:attr:`FrozenModules.frame_steps
        <gistgym.runtime.frozen.FrozenModules>`); elsewhere, and for an extractor with shift
        buffers, it is :meth:`preprocess`, :meth:`extract`, :meth:`step` and :meth:`detect`.
        With ``cues`` and an action other than 1, action 1's extractor runs on the frame too.

        Args:
            action: The policy action whose extractor runs (0 = heavy, writes the memory).
            image: The resized frame.
            history_action: As :meth:`step`.
        """
        fused = self._frame_graph(action, image)
        if fused is None:
            images = self.preprocess(image)
            cue_feats = self.extract(1, images) if self.cues and action != 1 else None
            rec = self.step(action, self.extract(action, images), history_action=history_action, cue_feats=cue_feats)
            return rec, self.detect(rec.loc, rec.conf)
        c_prev, h_prev = self._c, self._h
        feats, c, h, loc, conf, boxes, scores, labels = fused(np.ascontiguousarray(image)[None], c_prev, h_prev)
        cue_feats = self.extract(1, self.preprocess(image)) if self.cues and action != 1 else None
        rec = self._record(action, feats, (c, h, loc, conf), (c_prev, h_prev), history_action, cue_feats)
        return rec, Detections(boxes, scores, labels)

    def heavy_job(
        self,
        image: np.ndarray,
        state: tuple[np.ndarray, np.ndarray],
        *,
        write: bool,
        extract: Callable[[Tensor], Tensor] | None = None,
    ) -> HeavyResult:
        """An async heavy job on the uint8 ``image``: heavy features and, if ``write``, the write step from ``state``.

        Touches no carried state (it runs in the background thread); the result goes to :meth:`fuse`.
        ``extract`` replaces the heavy extractor (normalised (1, 3, S, S) -> (1, C, g, g)).
        """
        fused = None if extract is not None else self._frame_graph(0, image)
        if fused is not None:  # one call: its memory step from ``state`` is the write step
            feats, c, h = fused(np.ascontiguousarray(image)[None], *state)[:3]
            return feats, ((state, (c, h)) if write else None)
        if extract is None:
            feats = self.heavy_features(self.preprocess(image))
        else:
            with torch.inference_mode():
                feats = np.ascontiguousarray(
                    extract(torch.from_numpy(self.preprocess(image))).numpy(), dtype=np.float32
                )
        return feats, ((state, self.written_state(feats, state)) if write else None)

    def _frame_graph(self, action: int, image: np.ndarray) -> ArrayCall | None:
        """The whole-frame graph of action ``action``'s extractor, if it has one and ``image`` is uint8 (as decoded)."""
        graph = self._frame_steps[self.action_extractors[action]]
        return graph if graph is not None and image.dtype == np.uint8 else None

    def _record(
        self,
        action: int,
        feats: np.ndarray,
        outputs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        previous: tuple[np.ndarray, np.ndarray],
        history_action: int | None,
        cue_feats: np.ndarray | None,
    ) -> StepRecord:
        """The bookkeeping of a memory step whose ``(c, h, loc, conf)`` are ``outputs``, from state ``previous``."""
        c, h, loc, conf = outputs
        c_prev, h_prev = previous
        # (the environment's "frame 0 is always written" holds because frame 0 is heavy in sync mode;
        # in async mode a light frame 0 must not write: the heavy job of frame 0 initialises the memory)
        written = action == 0 or not self.skip_light_updates
        if written:
            self._c, self._h = c, h
        recorded = action if history_action is None else history_action
        self.history[:, 1:] = self.history[:, :-1]
        self.history[:, 0] = recorded != 0
        self.frames_seen += 1
        obs = {"state": eq1_observation(c, h, c_prev, h_prev), "history": self.history.copy()}
        if self.cues:
            light = feats if cue_feats is None and action == 1 else cue_feats
            obs["cues"] = self._cues(light, recorded == 0, h - h_prev)
        return StepRecord(loc, conf, obs, written)

    def _cues(self, light_feats: np.ndarray | None, heavy: bool, dh: np.ndarray) -> np.ndarray:
        """The (1, 4) cues of the frame just stepped (the environment's bookkeeping, one stream)."""
        if light_feats is None:
            raise ConfigError("cues need action 1's features of every frame: pass cue_feats to OnlineMemory.step")
        light = torch.from_numpy(np.asarray(light_feats)).float()
        first = self.cue_prev is None
        self.since_heavy = 0 if heavy else self.since_heavy + 1
        ref = light if heavy or self.cue_ref is None else self.cue_ref
        prev = light if first or self.cue_prev is None else self.cue_prev
        cues = runtime_cues(torch.tensor([self.since_heavy]), light, ref, prev, torch.from_numpy(dh)).numpy()
        self.cue_ref, self.cue_prev = ref, light
        return cues

    def detect(self, loc: np.ndarray, conf: np.ndarray) -> Detections:
        """The frame's decoded, NMS-filtered detections in pixels, as ``detector.detect`` gives them.

        Postprocessed in numpy (:func:`~gistgym.backbones.ssdlite.postprocess_frame`): at batch
        one torch's per-op overhead made it cost as much as a whole light step.
        """
        return postprocess_frame(np.asarray(loc)[0], np.asarray(conf)[0], self._anchors, image_size=self._image_size)

    def write(self, feats: np.ndarray) -> None:
        """A heavy write step without detections (async fusion of background features)."""
        self._c, self._h = self.written_state(feats, (self._c, self._h))

    @property
    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """The carried ``(c, h)`` arrays; a write replaces them (they are never changed in place)."""
        return self._c, self._h

    def written_state(self, feats: np.ndarray, state: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The ``(c, h)`` a write step with ``feats`` makes from ``state``, without touching the carried one."""
        _, c, h = self._memory_step(feats, *state)
        return c, h

    def fuse(self, feats: np.ndarray, computed: tuple[Any, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        """:meth:`write`, or adopt ``computed = (from_state, new_state)`` if ``from_state`` is still the carried state.

        The async heavy job computes the write step from the state of its launch frame in the
        background; it is the very step :meth:`write` would make only if nothing wrote the
        memory since (the identity of the carried arrays tells).
        """
        if computed is not None and computed[0][0] is self._c and computed[0][1] is self._h:
            self._c, self._h = computed[1]
        else:
            self.write(feats)


@dataclass(frozen=True)
class FrameResult:
    """What the runtime produced for one frame."""

    index: int
    extractor: str
    """Extractor whose features gave the detections."""
    heavy: bool
    """Sync: the heavy extractor ran on this frame. Async: a heavy job was launched on it."""
    fused_from: int | None
    """Async: the frame whose heavy features were fused into the memory before this frame's step."""
    state_written: bool
    detections: Detections
    """In the detector's S x S pixels."""
    latency_s: float
    observation: dict[str, np.ndarray]


@dataclass
class AsyncStats:
    """Bookkeeping of the heavy jobs in asynchronous mode."""

    launched: int = 0
    fused: int = 0
    dropped_at_end: int = 0
    fuse_delays: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = self.fuse_delays or []
        return {
            "heavy_jobs_launched": self.launched,
            "heavy_jobs_fused": self.fused,
            "heavy_jobs_dropped_at_end": self.dropped_at_end,
            "fuse_delay_frames_mean": float(np.mean(d)) if d else None,
            "fuse_delay_frames_max": int(max(d)) if d else None,
        }


def _check_action(action: Any, num_actions: int, policy: Policy) -> int:
    a = int(np.asarray(action).reshape(-1)[0])
    if not 0 <= a < num_actions:
        raise InvalidActionError(
            f"policy {policy.name!r} chose action {a}, outside Discrete({num_actions}); the runtime's actions are "
            f"0..{num_actions - 1}"
        )
    return a


def _info(t: int, action: int, written: bool) -> dict[str, Any]:
    return {"frame_index": t, "action": action, "state_written": written}


@torch.inference_mode()
def run_sync(
    memory: OnlineMemory,
    frames: Iterable[np.ndarray],
    policy: Policy,
    *,
    action_names: Sequence[str],
) -> Iterator[FrameResult]:
    """Run the detector on resized frames with ``policy`` choosing each next extractor (see the module docstring).

    Args:
        memory: A fresh (or reset) :class:`OnlineMemory`.
        frames: (S, S, 3) uint8 RGB frames.
        policy: Chooses the next action from the observation (batch of one).
        action_names: Extractor name of each action, for the results.

    Yields:
        One :class:`FrameResult` per frame, as soon as it is processed.
    """
    memory.reset()
    policy.reset(1)
    num_actions = len(memory.action_extractors)
    action = 0
    for t, image in enumerate(frames):
        start = time.perf_counter()
        a = 0 if t == 0 else action
        rec, dets = memory.frame(a, image)
        action = _check_action(policy.act(rec.observation, [_info(t, a, rec.state_written)]), num_actions, policy)
        latency = time.perf_counter() - start
        yield FrameResult(t, action_names[a], a == 0, None, rec.state_written, dets, latency, rec.observation)


def _worker_threads() -> int:
    return torch.get_num_threads()


@torch.inference_mode()
def run_async(
    memory: OnlineMemory,
    frames: Iterable[np.ndarray],
    policy: Policy,
    *,
    action_names: Sequence[str],
    heavy_delay_frames: int | None = None,
    stats: AsyncStats | None = None,
    heavy_extract: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[FrameResult]:
    """The paper's asynchronous mode (see the module docstring for the exact order of events).

    Args:
        memory: A fresh (or reset) :class:`OnlineMemory`.
        frames: (S, S, 3) uint8 RGB frames.
        policy: Chooses, after each frame, heavy (0) or which light action runs next.
        action_names: Extractor name of each action.
        heavy_delay_frames: ``None``: fuse a heavy job as soon as a frame starts after it
            finished (real asynchrony). ``d >= 1``: fuse the job launched on frame u exactly at
            the start of frame u + d, waiting for it if needed (deterministic, for tests and
            for simulating a heavy extractor that takes d frame periods).
        stats: Filled with the heavy jobs' bookkeeping.
        heavy_extract: Replaces the heavy extractor's features function (normalised
            (1, 3, S, S) -> (1, C, g, g)); default the detector's extractor 0.

    Yields:
        One :class:`FrameResult` per frame; ``heavy`` marks frames a job was launched on and
        ``fused_from`` the frame whose heavy features were fused before this frame's step.
    """
    if heavy_delay_frames is not None and heavy_delay_frames < 1:
        raise ConfigError(f"heavy_delay_frames must be >= 1 (or None for real asynchrony), got {heavy_delay_frames}")
    if len(memory.action_extractors) < 2:
        raise ConfigError("asynchronous mode needs a light action besides the heavy one")
    stats = stats if stats is not None else AsyncStats()
    stats.fuse_delays = []
    memory.reset()
    policy.reset(1)
    num_actions = len(memory.action_extractors)
    threads = _worker_threads()

    def init_worker() -> None:
        torch.set_num_threads(threads)

    # with skip_light_updates only the fusions write the memory, and one job is in flight at a time:
    # the state a job is fused into is the one of its launch, so the job makes the write step too
    # (in the background, off the light frames' latency); OnlineMemory.fuse checks that it still is
    precompute = memory.skip_light_updates

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gistgym-heavy", initializer=init_worker)
    job: Future[HeavyResult] | None = None
    job_frame = -1
    want_heavy = True  # frame 0 always asks for the heavy extractor
    light_action = 1
    try:
        for t, image in enumerate(frames):
            start = time.perf_counter()
            fused_from: int | None = None
            if job is not None:
                due = job.done() if heavy_delay_frames is None else t >= job_frame + heavy_delay_frames
                if due:
                    memory.fuse(*job.result())
                    fused_from = job_frame
                    stats.fused += 1
                    stats.fuse_delays.append(t - job_frame)
                    job = None
            launched = False
            if want_heavy and job is None:
                job = pool.submit(  # the state's arrays are never written to
                    memory.heavy_job, image, memory.state, write=precompute, extract=heavy_extract
                )
                job_frame = t
                launched = True
                want_heavy = False
                stats.launched += 1
            used = light_action
            rec, dets = memory.frame(used, image, history_action=0 if launched else 1)
            info = _info(t, 0 if launched else used, rec.state_written)
            choice = _check_action(policy.act(rec.observation, [info]), num_actions, policy)
            if choice == 0:
                want_heavy = True
            else:
                light_action = choice
            latency = time.perf_counter() - start
            yield FrameResult(
                t, action_names[used], launched, fused_from, rec.state_written, dets, latency, rec.observation
            )
        if job is not None:
            job.result()
            stats.dropped_at_end += 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def percentiles_ms(latencies: Sequence[float]) -> dict[str, float]:
    """p50, p95, max and mean of per-frame latencies (seconds) in milliseconds."""
    a = np.asarray(latencies, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "max_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "max_ms": float(a.max()),
        "mean_ms": float(a.mean()),
    }


def summarise(results: Sequence[FrameResult], *, mode: str, seconds_wall: float) -> dict[str, Any]:
    """Frames/s, heavy fraction, latency percentiles and extractor counts of a run."""
    lat = [r.latency_s for r in results]
    n = len(results)
    busy = float(np.sum(lat)) if lat else 0.0
    counts: dict[str, int] = {}
    for r in results:
        counts[r.extractor] = counts.get(r.extractor, 0) + 1
    return {
        "mode": mode,
        "frames": n,
        "fps": n / busy if busy > 0 else float("nan"),
        "fps_wall": n / seconds_wall if seconds_wall > 0 else float("nan"),
        "heavy_fraction": float(np.mean([r.heavy for r in results])) if n else float("nan"),
        **percentiles_ms(lat),
        "detections_from": counts,
    }


def as_mapping(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A plain dict copy of an observation."""
    return {k: np.array(v) for k, v in obs.items()}
