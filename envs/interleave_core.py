"""The batched simulator behind every ``Interleave`` environment (Algorithm 1 of *Looking Fast and Slow*).

One :class:`InterleaveCore` holds ``num_slots`` episodes side by side and advances any
subset of them with **one** batched torch call: for each advancing slot it runs the frozen
memory and head on the cached features of the slot's next frame with **every** extractor
(``len(slots) * m`` rows), scores each row with the detector's own per-frame loss (and,
with a signal reward, decodes each row's detections and scores them against the frame's
ground truth), keeps the executed extractor's state according to the skip rule and
builds the observations. The single environment is a core with one slot, the vector
environments cores with N, so both run the same code (see
:class:`~gistgym.envs.interleave.InterleaveEnv` for the MDP).

Prepared videos (features of the chosen extractors stacked in action order, the detection
targets of every frame matched to the anchors once, and the raw ground truth) are kept in
a process-wide memo, :data:`EPISODE_MEMO`, bounded in bytes: a video is read from the
cache file (one ``load_episode``) and matched to the anchors the first time any
environment of the process starts a clip in it, and later resets copy the clip from
memory. Matching targets costs about as much as reading the episode, and both together
would otherwise dominate a batched step.

The memory and head run as one graph on the faster engine for the step's number of rows
(:class:`gistgym.backbones.engines.BatchedMemoryHead`: ONNX Runtime where it was measured
faster, eager torch elsewhere); the engines agree to about 1e-6.
"""

from __future__ import annotations

import math
import numbers
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from gistgym.backbones.convlstm import LSTMState
from gistgym.backbones.engines import BatchedMemoryHead
from gistgym.backbones.ssdlite import DetectionTargets, build_targets, frame_detection_loss, postprocess
from gistgym.envs.common import ClipSource, check_int, check_reward
from gistgym.envs.rewards import EQ2, interleave_reward, signal_reward
from gistgym.errors import CacheError, EnvArgumentError, EnvStateError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.schema import SECTION_INTERLEAVE
from gistgym.feature_cache.sections import interleave_modules
from gistgym.metrics import frame_signals
from gistgym.videos.synthetic import FrameAnnotation

DEFAULT_CLIP_LEN = 40
DEFAULT_EXTRACTORS = ("heavy", "light")
DEFAULT_GAMMA = 1.0
DEFAULT_SPEED_REWARD = (0.0, DEFAULT_GAMMA)
DEFAULT_HISTORY_LEN = 20
DEFAULT_REWARD = EQ2
DEFAULT_CUES = False

CUE_NAMES = ("since_heavy", "light_change", "light_step", "memory_change")
"""The entries of the optional ``cues`` observation (see :func:`runtime_cues`)."""
SINCE_HEAVY_SCALE = 64
"""``since_heavy`` is ``min(k, 64) / 64`` for k frames since the last heavy one."""
CUE_HIGH = np.array([1.0, 4.0, 4.0, 6.0], dtype=np.float32)
"""Upper bounds of the cues (values are clipped to them); the lower bounds are 0."""
CUE_EPS = 1e-6

MEMO_BYTES = 512 * 2**20
"""Default byte budget of :data:`EPISODE_MEMO`."""


# --- prepared videos and their memo ---------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PreparedVideo:
    """One video's environment inputs: features of the chosen extractors, matched targets and ground truth."""

    video_id: str
    features: Tensor
    """(T, m, C, g, g) float16 projected features, extractors in action order."""
    labels: Tensor
    """(T, A) int64 class per anchor (0 = background), as :func:`build_targets` matches them."""
    offsets: Tensor
    """(T, A, 4) float32 encoded box targets."""
    ground_truth: tuple[FrameAnnotation, ...] = ()
    """The raw per-frame ground truth (boxes and labels) a signal reward scores detections against."""

    @property
    def nbytes(self) -> int:
        """Memory held by the tensors and the ground truth's arrays."""
        tensors = sum(t.element_size() * t.nelement() for t in (self.features, self.labels, self.offsets))
        arrays = (a for f in self.ground_truth for a in (f.boxes, f.labels, f.track_ids, f.speeds))
        return tensors + sum(int(a.nbytes) for a in arrays)

    def __repr__(self) -> str:
        return f"PreparedVideo({self.video_id!r}, features={tuple(self.features.shape)}, nbytes={self.nbytes})"


MemoKey = tuple[str, int, int, str, tuple[str, ...], str]


class EpisodeMemo:
    """A least-recently-used store of :class:`PreparedVideo`, bounded in bytes.

    Keys carry the cache file's identity (resolved path, size, modification time, weights
    checksum), so a rebuilt file is never served from stale entries.

    Args:
        max_bytes: Budget; 0 disables the memo (every reset reads the file).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[MemoKey, PreparedVideo] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: MemoKey) -> PreparedVideo | None:
        """The entry for ``key`` (marked as recently used), or ``None``."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: MemoKey, video: PreparedVideo) -> None:
        """Store ``video``, evicting the least recently used entries beyond the budget."""
        if video.nbytes > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._entries[key] = video
        self._bytes += video.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._bytes = 0


EPISODE_MEMO = EpisodeMemo(MEMO_BYTES)
"""The process-wide memo every Interleave environment shares (set ``max_bytes`` to resize)."""


# --- argument validation --------------------------------------------------------------------
def _check_extractors(value: object, available: tuple[str, ...], path: Path) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise EnvArgumentError(
            f"extractors must be a sequence of extractor names such as {available[:2]!r}, got {value!r}"
        )
    names = tuple(value)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise EnvArgumentError(
            f"extractors {unknown!r} are not in the cache {path} (it has {list(available)}); "
            f"pass names from that list, e.g. extractors={available[:2]!r}"
        )
    if len(names) < 2:
        raise EnvArgumentError(f"extractors needs at least two names (heavy first), got {names!r}")
    if len(set(names)) != len(names):
        raise EnvArgumentError(f"extractors must not repeat a name, got {names!r}")
    if names[0] != available[0]:
        raise EnvArgumentError(
            f"extractors[0] must be the cache's heavy extractor {available[0]!r} (action 0 runs it and frame 0 "
            f"always does), got {names!r}; e.g. extractors={(available[0], *[n for n in names if n != available[0]])!r}"
        )
    return names


def _check_speed_reward(value: object, extractors: tuple[str, ...]) -> tuple[float, ...]:
    m = len(extractors)
    example = (0.0, *([DEFAULT_GAMMA] * (m - 1)))
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise EnvArgumentError(
            f"speed_reward must be a sequence of {m} numbers (one per extractor {extractors!r}), got {value!r}; "
            f"e.g. speed_reward={example!r}"
        )
    items = list(value)
    if len(items) != m:
        raise EnvArgumentError(
            f"speed_reward has {len(items)} entries but there are {m} extractors {extractors!r}; "
            f"pass one per extractor, e.g. speed_reward={example!r}"
        )
    out = []
    for x in items:
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(float(x)):
            raise EnvArgumentError(f"speed_reward entries must be finite numbers, got {value!r}")
        out.append(float(x))
    return tuple(out)


# --- the runtime cues -----------------------------------------------------------------------
def relative_change(x: Tensor, ref: Tensor) -> Tensor:
    """``||x - ref|| / (||ref|| + 1e-6)`` per row of two (n, ...) feature batches, float32."""
    x, ref = x.flatten(1).float(), ref.flatten(1).float()
    return torch.linalg.vector_norm(x - ref, dim=1) / (torch.linalg.vector_norm(ref, dim=1) + CUE_EPS)


def runtime_cues(since_heavy: Tensor, light: Tensor, light_ref: Tensor, light_prev: Tensor, dh: Tensor) -> Tensor:
    """The ``cues`` observation of n frames, from what an interleaved detector has at run time.

    Args:
        since_heavy: (n,) frames since the last heavy frame (0 on a heavy frame).
        light: (n, C, g, g) the cue extractor's features of the frame just processed.
        light_ref: Its features of the last heavy frame (the frame itself on a heavy frame).
        light_prev: Its features of the previous frame (the frame itself on a clip's first).
        dh: (n, H, g, g) ``ĥ_t - h_{t-1}``, the memory output's change (Eq. 1's last block).

    Returns:
        (n, 4) float32, :data:`CUE_NAMES` in order, clipped to ``[0, CUE_HIGH]``:
        ``min(k, 64) / 64``; the relative L2 change of the light features since the last
        heavy frame and since the previous frame; the RMS of ``ĥ_t - h_{t-1}``.
    """
    since = since_heavy.float().clamp(max=SINCE_HEAVY_SCALE) / SINCE_HEAVY_SCALE
    rms = dh.flatten(1).float().pow(2).mean(dim=1).sqrt()
    cues = torch.stack([since, relative_change(light, light_ref), relative_change(light, light_prev), rms], dim=1)
    return torch.minimum(cues.clamp(min=0.0), torch.from_numpy(CUE_HIGH))


def cue_space() -> spaces.Box:
    """The ``cues`` entry of the observation space."""
    return spaces.Box(low=np.zeros(len(CUE_NAMES), np.float32), high=CUE_HIGH.copy(), dtype=np.float32)


# --- the batched simulator ------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Transition:
    """What one :meth:`InterleaveCore.advance` produced, one row per advanced slot."""

    state: np.ndarray
    """(n, 4 * hidden, g, g) float32 observation maps ``[c, h, c - c_prev, h - h_prev]``."""
    history: np.ndarray
    """(n, history_len) int8 light-extractor history."""
    losses: np.ndarray
    """(n, m) float64 per-extractor losses of the frame just processed."""
    rewards: np.ndarray
    """(n,) float64 rewards, Eq. 2 or the signal reward (0 for a clip's first frame, which no action chose)."""
    truncated: np.ndarray
    """(n,) bool: the frame just processed was the clip's last."""
    actions: np.ndarray
    """(n,) int64 executed extractor (0 on a clip's first frame)."""
    cost_flops: np.ndarray
    """(n,) int64 counted FLOPs of the executed extractor's whole step."""
    frame_index: np.ndarray
    """(n,) int64 frame index in the video."""
    video_ids: tuple[str, ...]
    state_written: np.ndarray
    """(n,) bool: the carried memory state was replaced by this step's."""
    first: np.ndarray
    """(n,) bool: the row processed a clip's first frame (a reset)."""
    signals: np.ndarray | None = None
    """(n, m) float64 every extractor's per-frame signal ``S^i`` (``None`` with ``reward="eq2"``)."""
    cues: np.ndarray | None = None
    """(n, 4) float32 runtime cues (``None`` unless the core was made with ``cues=True``)."""

    def observation(self) -> dict[str, np.ndarray]:
        """The batched observation: ``state``, ``history`` and, with cues, ``cues``."""
        obs = {"state": self.state, "history": self.history}
        if self.cues is not None:
            obs["cues"] = self.cues
        return obs


# --- clips ----------------------------------------------------------------------------------
class InterleaveCore(ClipSource):
    """``num_slots`` Interleave episodes advanced together with one torch call per step.

    Args:
        num_slots: Episodes held side by side.
        cache_path: Feature cache with the ``interleave`` section.
        split: Split whose videos episodes are drawn from.
        clip_len: Frames per episode.
        extractors: Extractor names in action order (index 0 must be the cache's heavy one).
        speed_reward: One speed reward per extractor.
        skip_light_updates: Whether light steps leave the carried state alone (``None``: the
            rule the cached detector was trained with).
        history_len: Length of the action-history vector.
        reward: ``"eq2"`` (Eq. 2 from the per-frame losses) or a per-frame signal of
            :data:`gistgym.metrics.FRAME_SIGNALS` (every extractor's head outputs are then
            decoded and scored against the frame's ground truth each step).
        cues: Add the runtime cues (:func:`runtime_cues`, computed from the features of
            the first light extractor, ``extractors[1]``) to the observation; that
            extractor then also runs on every frame where another one runs, and its FLOPs
            are counted in ``cost_flops``.
        engine: Engine of the batched memory + head: ``auto`` (the faster one for each
            step's number of rows, :class:`~gistgym.backbones.engines.BatchedMemoryHead`),
            ``onnxruntime``, ``torchscript`` or ``eager``.

    Raises:
        CacheError: Missing or unreadable cache, unknown split, no FLOP counts.
        CacheSectionError: The cache has no ``interleave`` section.
        EnvArgumentError: Any other bad argument.
    """

    def __init__(
        self,
        num_slots: int,
        cache_path: str | os.PathLike[str],
        *,
        split: str,
        clip_len: int,
        extractors: Sequence[str],
        speed_reward: Sequence[float],
        skip_light_updates: bool | None,
        history_len: int,
        reward: str = DEFAULT_REWARD,
        cues: bool = DEFAULT_CUES,
        engine: str = "auto",
    ) -> None:
        self.num_slots = check_int("num_envs", num_slots, 1)
        self.reward = check_reward(reward)
        if not isinstance(cues, bool):
            raise EnvArgumentError(f"cues must be True or False, got {cues!r}")
        self.cues = cues
        if not isinstance(cache_path, str | os.PathLike):
            raise EnvArgumentError(f"cache_path must be the path of a feature cache file, got {cache_path!r}")
        self.cache = FeatureCache(Path(cache_path), sections=(SECTION_INTERLEAVE,))
        path = self.cache.path
        section = self.cache.section(SECTION_INTERLEAVE)
        modules = interleave_modules(section.attrs, section.tensors)
        self.available_extractors = modules.extractor_names
        self.extractors = _check_extractors(extractors, modules.extractor_names, path)
        self.speed_reward = _check_speed_reward(speed_reward, self.extractors)
        self.clip_len = check_int("clip_len", clip_len, 2)
        self.history_len = check_int("history_len", history_len, 1)
        if skip_light_updates is not None and not isinstance(skip_light_updates, bool):
            raise EnvArgumentError(f"skip_light_updates must be True, False or None, got {skip_light_updates!r}")
        self.trained_skip_light_updates = modules.config.skip_light_updates
        self.skip_light_updates = (
            self.trained_skip_light_updates if skip_light_updates is None else bool(skip_light_updates)
        )
        self._set_split(split, path)
        per_extractor = dict(self.cache.info.costs).get("per_extractor", {})
        try:
            self.step_flops = np.array([int(per_extractor[n]["step_flops"]) for n in self.extractors], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(
                path,
                f"no counted step FLOPs for extractors {list(self.extractors)} ({exc!r}); rebuild it with "
                f"`gistgym cache build --videos DIR --out {path}`",
                field="costs",
            ) from exc
        if self.cues:
            # the cue extractor (action 1) also runs wherever another action runs
            cue_flops = int(per_extractor[self.extractors[1]]["extractor_flops"])
            self.step_flops = self.step_flops + np.where(np.arange(len(self.extractors)) == 1, 0, cue_flops)
        self.speed_reward_array = np.array(self.speed_reward, dtype=np.float64)

        self.memory = modules.memory
        self.head = modules.head
        self.step_engine = BatchedMemoryHead(self.memory, self.head, grid=modules.config.anchors.grid, engine=engine)
        cfg = modules.config
        self.image_size = cfg.image_size
        self.num_classes = cfg.num_classes
        self.hidden = cfg.hidden_channels
        self.grid = cfg.anchors.grid
        self.channels = cfg.memory_channels
        stat = path.stat()
        self._identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, self.cache.info.weights_sha256)

        n, L, m, C, g = self.num_slots, self.clip_len, len(self.extractors), self.channels, self.grid
        A = int(self.head.anchors.shape[0])
        # One clip per slot, copied in at load time so a step gathers every slot's frame with
        # one indexing op per array (features stay float16, as cached; the cast is exact).
        self._features = torch.zeros(n, L, m, C, g, g, dtype=torch.float16)
        self._labels = torch.zeros(n, L, A, dtype=torch.int64)
        self._offsets = torch.zeros(n, L, A, 4, dtype=torch.float32)
        self._c = torch.zeros(n, self.hidden, g, g)
        self._h = torch.zeros(n, self.hidden, g, g)
        self._t = np.full(n, -1, dtype=np.int64)
        self._loaded = np.zeros(n, dtype=bool)
        self._start = np.zeros(n, dtype=np.int64)
        self._video: list[str] = [""] * n
        # each slot's clip ground truth, kept only for a signal reward (the only reader)
        self._ground_truth: list[tuple[FrameAnnotation, ...]] = [()] * n
        self._history = np.zeros((n, self.history_len), dtype=np.int8)
        # runtime cues: the cue extractor's features of each slot's last heavy and previous frame
        self._cue_ref = torch.zeros(n, C, g, g) if self.cues else None
        self._cue_prev = torch.zeros(n, C, g, g) if self.cues else None
        self._since_heavy = np.zeros(n, dtype=np.int64)
        self.record_outputs = False
        """When True, :meth:`advance` keeps the executed extractor's head outputs in ``last_outputs``."""
        self.last_outputs: tuple[Tensor, Tensor] | None = None
        """(loc (n, A, 4), conf (n, A, K + 1)) of the last :meth:`advance`, if ``record_outputs``."""

    # --- spaces -----------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        """m, the number of extractors."""
        return len(self.extractors)

    def observation_space(self) -> spaces.Dict:
        """The single-episode observation space (see the environment's docstring)."""
        hid, g = self.hidden, self.grid
        # Exact bounds from the ConvLSTM's structure: c starts at 0 and each step adds
        # i * relu6(.) in [0, 6] to f * c with f in [0, 1], so 0 <= c <= 6 * (frames so far)
        # <= 6 * clip_len (float rounding is monotonic and these integers are exact), and
        # h = o * relu6(c) lies in [0, 6].
        c_max = 6.0 * self.clip_len
        low = np.empty((4 * hid, g, g), dtype=np.float32)
        high = np.empty_like(low)
        low[:hid], high[:hid] = 0.0, c_max
        low[hid : 2 * hid], high[hid : 2 * hid] = 0.0, 6.0
        low[2 * hid : 3 * hid], high[2 * hid : 3 * hid] = -c_max, c_max
        low[3 * hid :], high[3 * hid :] = -6.0, 6.0
        entries: dict[str, spaces.Space[Any]] = {
            "state": spaces.Box(low=low, high=high, dtype=np.float32),
            "history": spaces.MultiBinary(self.history_len),
        }
        if self.cues:
            entries["cues"] = cue_space()
        return spaces.Dict(entries)

    def action_space(self) -> spaces.Discrete:
        """Discrete(m)."""
        return spaces.Discrete(self.num_actions)

    # --- episodes ---------------------------------------------------------------------------
    def prepared(self, video_id: str) -> PreparedVideo:
        """The video's features and targets, from the memo or read and matched now."""
        key: MemoKey = (*self._identity, self.extractors, video_id)
        video = EPISODE_MEMO.get(key)
        if video is None:
            episode = self.cache.load_episode(video_id)
            feats = np.stack([episode.features[n] for n in self.extractors], axis=1)
            frames = [episode.ground_truth(t) for t in range(episode.num_frames)]
            targets = build_targets(
                [torch.tensor(f.boxes, dtype=torch.float32).reshape(-1, 4) for f in frames],
                [torch.tensor(f.labels, dtype=torch.int64) for f in frames],
                self.head.anchors,
            )
            video = PreparedVideo(video_id, torch.from_numpy(feats), targets.labels, targets.offsets, tuple(frames))
            EPISODE_MEMO.put(key, video)
        return video

    def load(self, slot: int, video_id: str, start: int) -> None:
        """Put the clip ``video_id[start : start + clip_len]`` into ``slot`` with a zero memory state."""
        video = self.prepared(video_id)
        end = start + self.clip_len
        self._features[slot] = video.features[start:end]
        self._labels[slot] = video.labels[start:end]
        self._offsets[slot] = video.offsets[start:end]
        if self.reward != EQ2:
            self._ground_truth[slot] = video.ground_truth[start:end]
        self._c[slot] = 0.0
        self._h[slot] = 0.0
        self._history[slot] = 0
        self._t[slot] = -1
        self._start[slot] = start
        self._video[slot] = video_id
        self._loaded[slot] = True

    def carried_state(self, slot: int) -> LSTMState:
        """A copy of the memory state ``slot`` carries into its next step."""
        return LSTMState(self._c[slot].clone(), self._h[slot].clone())

    def clip(self, slot: int) -> tuple[str, int, int]:
        """``(video_id, start, clip step of the frame last processed)`` of ``slot``."""
        return self._video[slot], int(self._start[slot]), int(self._t[slot])

    def _next_frame(self, slots: np.ndarray) -> np.ndarray:
        """Clip step of every slot's next frame.

        Raises:
            EnvStateError: A slot was never loaded or its clip is over.
        """
        t = self._t[slots] + 1
        if not self._loaded[slots].all() or (t >= self.clip_len).any():
            raise EnvStateError("the episode is over (or never started); call reset() before step()")
        return t

    def _every_extractor(
        self, slots: np.ndarray, t: np.ndarray
    ) -> tuple[Tensor, Tensor, LSTMState, Tensor, Tensor, Tensor]:
        """Frame ``t`` of every slot through the memory (from the carried state) and the head, per extractor.

        Returns:
            ``(c_prev, h_prev, new, loc, conf, losses)``: the consumed state (n, H, g, g), the
            new states, box offsets and class logits (n * m rows, slot-major) and the (n, m)
            float32 losses.
        """
        n, m = len(slots), self.num_actions
        sl = torch.from_numpy(slots)
        # one flat index per (slot, clip step): index_select is much cheaper than 2-D fancy indexing
        frame = torch.from_numpy(slots * self.clip_len + t)
        C, g = self.channels, self.grid
        x = self._features.view(-1, m * C, g, g).index_select(0, frame).view(n * m, C, g, g).float()
        c_prev, h_prev = self._c.index_select(0, sl), self._h.index_select(0, sl)
        c_new, h_new, loc, conf = self.step_engine(
            x, c_prev.repeat_interleave(m, dim=0), h_prev.repeat_interleave(m, dim=0)
        )
        new = LSTMState(c_new, h_new)
        labels = self._labels.view(-1, self._labels.shape[-1]).index_select(0, frame)
        offsets = self._offsets.view(-1, *self._offsets.shape[-2:]).index_select(0, frame)
        targets = DetectionTargets(labels.repeat_interleave(m, dim=0), offsets.repeat_interleave(m, dim=0))
        losses = frame_detection_loss(loc, conf, targets).view(n, m)
        return c_prev, h_prev, new, loc, conf, losses

    def _signals(self, slots: np.ndarray, t: np.ndarray, loc: Tensor, conf: Tensor) -> np.ndarray:
        """Every extractor's signal on frame ``t`` of every slot, from its head outputs (n * m rows).

        The rows are decoded with the evaluation's decoding and NMS
        (:func:`~gistgym.backbones.ssdlite.postprocess`, boxes clipped to the image) and
        scored against the frame's ground truth with :func:`~gistgym.metrics.frame_signals`.

        Returns:
            (n, m) float64.
        """
        m = self.num_actions
        detections = postprocess(loc, conf, self.head.anchors, image_size=(self.image_size,) * 2)
        frames = [self._ground_truth[s][k] for s, k in zip(slots.tolist(), t.tolist(), strict=True)]
        out = np.array(
            [frame_signals(frames[r // m], det)[self.reward] for r, det in enumerate(detections)], dtype=np.float64
        )
        return out.reshape(len(slots), m)

    def peek_losses(self, slots: np.ndarray) -> np.ndarray:
        """Every extractor's loss on each slot's **next** frame, without advancing anything.

        What a myopic oracle looks at: the losses :meth:`advance` will report for that frame,
        whatever the action (they all start from the same carried state).

        Returns:
            (n, m) float64 losses.

        Raises:
            EnvStateError: A slot was never loaded or its clip is over.
        """
        t = self._next_frame(slots)
        with torch.inference_mode():
            losses = self._every_extractor(slots, t)[-1]
        return losses.numpy().astype(np.float64)

    def advance(self, slots: np.ndarray, actions: np.ndarray) -> Transition:
        """Process the next frame of every slot in ``slots`` (one batched torch call).

        A slot that was just loaded processes its clip's first frame with the heavy
        extractor from a zero state and ignores its action.

        Args:
            slots: (n,) int64 distinct slot indices.
            actions: (n,) int64 extractor for each slot's next frame, already validated.

        Raises:
            EnvStateError: A slot was never loaded or its clip is over.
        """
        t = self._next_frame(slots)
        first = t == 0
        executed = np.where(first, 0, actions).astype(np.int64)
        n = len(slots)
        sl = torch.from_numpy(slots)
        with torch.inference_mode():
            c_prev, h_prev, new, loc, conf, losses = self._every_extractor(slots, t)
            rows = torch.from_numpy(np.arange(n) * self.num_actions + executed)
            c_hat, h_hat = new.c.index_select(0, rows), new.h.index_select(0, rows)
            if self.record_outputs:
                self.last_outputs = (loc.index_select(0, rows), conf.index_select(0, rows))
            signals = None if self.reward == EQ2 else self._signals(slots, t, loc, conf)
            written = first | (executed == 0) | (not self.skip_light_updates)
            if written.all():
                self._c.index_copy_(0, sl, c_hat)
                self._h.index_copy_(0, sl, h_hat)
            elif written.any():  # else every slot keeps its state: nothing to write
                w = torch.from_numpy(written).view(n, 1, 1, 1)
                self._c.index_copy_(0, sl, torch.where(w, c_hat, c_prev))
                self._h.index_copy_(0, sl, torch.where(w, h_hat, h_prev))
            obs = torch.cat([c_hat, h_hat, c_hat - c_prev, h_hat - h_prev], dim=1).numpy()
            cues = self._advance_cues(slots, t, executed, first, h_hat - h_prev) if self.cues else None
        history = self._history[slots]
        history[:, 1:] = history[:, :-1]
        history[:, 0] = executed != 0
        self._history[slots] = history
        self._t[slots] = t
        losses64 = losses.numpy().astype(np.float64)
        if signals is None:
            rewards = interleave_reward(losses64, executed, self.speed_reward_array)
        else:
            rewards = signal_reward(signals, executed, self.speed_reward_array)
        rewards[first] = 0.0
        return Transition(
            state=obs,
            history=history,
            losses=losses64,
            rewards=rewards,
            truncated=t == self.clip_len - 1,
            actions=executed,
            cost_flops=self.step_flops[executed],
            frame_index=self._start[slots] + t,
            video_ids=tuple(self._video[s] for s in slots.tolist()),
            state_written=written,
            first=first,
            signals=signals,
            cues=cues,
        )

    def _advance_cues(
        self, slots: np.ndarray, t: np.ndarray, executed: np.ndarray, first: np.ndarray, dh: Tensor
    ) -> np.ndarray:
        """The runtime cues of frame ``t`` of every slot (and the per-slot bookkeeping they need)."""
        assert self._cue_ref is not None and self._cue_prev is not None
        n = len(slots)
        sl = torch.from_numpy(slots)
        light = self._features[sl, torch.from_numpy(t), 1].float()
        heavy = torch.from_numpy(executed == 0).view(n, 1, 1, 1)
        ref = torch.where(heavy, light, self._cue_ref.index_select(0, sl))
        prev = torch.where(torch.from_numpy(first).view(n, 1, 1, 1), light, self._cue_prev.index_select(0, sl))
        since = np.where(executed == 0, 0, self._since_heavy[slots] + 1)
        cues = runtime_cues(torch.from_numpy(since), light, ref, prev, dh).numpy()
        self._cue_ref.index_copy_(0, sl, ref)
        self._cue_prev.index_copy_(0, sl, light)
        self._since_heavy[slots] = since
        return cues

    def close(self) -> None:
        """Release the cache file handle."""
        self.cache.close()
