"""Deterministic evaluation of ``Interleave`` policies on whole held-out videos.

:class:`InterleaveEvaluator` runs a :class:`~gistgym.agents.policy.Policy` over **every
frame of every video** of a split (not random clips), in the environment's exact semantics
(:class:`~gistgym.envs.interleave_core.InterleaveCore`, batched over the videos of equal
length), and scores the schedule it produced the way the detector would be scored:

* ``map50``: detection mAP@0.5 (COCO's AP50, faster-coco-eval) of the detections the frozen
  head produces from the memory state under that schedule, the same decoding and NMS as
  ``gistgym backbones eval`` (so ``heavy``, ``light`` and ``tau=N`` reproduce its table up
  to the cache's float16 features);
* ``heavy_fraction``: the fraction of frames the heavy extractor (action 0) ran on;
* ``gflops_per_frame``: counted FLOPs of the executed steps (extractor + memory + head);
* ``mean_reward``: mean reward over the steps (every frame but each video's first): Eq. 2,
  or the signal reward of the environment's ``reward`` argument when one is given;
* ``latency_ms_per_frame``: the expected latency, the mean over frames of the executed
  step's latency as measured when the cache was built (0 if it was built with
  ``--no-latency``).

Frame 0 of every video runs the heavy extractor, as in the environment. Policies with
``lookahead = True`` (the myopic oracle) also get ``info["next_losses"]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from gistgym.agents.baselines import NEXT_LOSSES
from gistgym.agents.policy import Policy
from gistgym.backbones.ssdlite import Detections, postprocess
from gistgym.envs.common import check_no_unknown_kwargs, check_reward
from gistgym.envs.interleave import single_info
from gistgym.envs.interleave_core import (
    DEFAULT_CUES,
    DEFAULT_EXTRACTORS,
    DEFAULT_HISTORY_LEN,
    DEFAULT_REWARD,
    DEFAULT_SPEED_REWARD,
    InterleaveCore,
)
from gistgym.envs.interleave_vector import check_actions
from gistgym.errors import ConfigError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.reader import FrameAnnotation
from gistgym.feature_cache.schema import SECTION_INTERLEAVE
from gistgym.metrics import detection_map50

EVAL_ENV_ARGUMENTS = ("extractors", "speed_reward", "skip_light_updates", "history_len", "reward", "cues")
"""The environment arguments an Interleave evaluation takes (the split is its own; clips are whole videos)."""


@dataclass
class VideoRollout:
    """What a policy did on one video."""

    video_id: str
    actions: np.ndarray
    """(T,) int64 extractor executed on each frame (0 on frame 0)."""
    rewards: np.ndarray
    """(T - 1,) float64 reward of each step (Eq. 2 or the signal reward)."""
    losses: np.ndarray
    """(T, m) float64 every extractor's loss on each frame (from the carried state)."""
    cost_flops: np.ndarray
    """(T,) int64 counted FLOPs of each executed step."""


@dataclass
class PolicyEvaluation:
    """A policy's scores on one split (see the module docstring for each number)."""

    name: str
    map50: float
    heavy_fraction: float
    gflops_per_frame: float
    mean_reward: float
    latency_ms_per_frame: float
    frames: int
    videos: list[VideoRollout] = field(repr=False)

    def summary(self) -> dict[str, float | int]:
        """The JSON-ready numbers (``gistgym compare --json`` prints one of these per policy)."""
        return {
            "map50": self.map50,
            "heavy_fraction": self.heavy_fraction,
            "gflops_per_frame": self.gflops_per_frame,
            "mean_reward": self.mean_reward,
            "latency_ms_per_frame": self.latency_ms_per_frame,
            "frames": self.frames,
        }


EvaluatorT = TypeVar("EvaluatorT", bound="SplitEvaluator")


class SplitEvaluator:
    """What every whole-video evaluator shares: the split's videos and ground truth, per-length cores.

    Subclasses set :attr:`arguments` (the environment arguments they take) and implement
    ``evaluate(policy, *, seed, name)``.
    """

    arguments: tuple[str, ...] = ()
    split: str
    video_ids: tuple[str, ...]
    groups: list[tuple[int, tuple[str, ...]]]
    """(length, video ids) of the split's videos of at least 2 frames, by length."""
    ground_truth: dict[str, list[FrameAnnotation]]
    _cores: dict[int, Any]

    def _check_kwargs(self, env_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        kwargs = dict(env_kwargs or {})
        unknown = {k: v for k, v in kwargs.items() if k not in self.arguments}
        check_no_unknown_kwargs(type(self).__name__, unknown, self.arguments)
        return kwargs

    def _read_split(self, cache: FeatureCache, split: str, max_videos: int | None) -> None:
        """Set ``video_ids``, ``groups`` and ``ground_truth`` from an open cache.

        Raises:
            CacheError: Unknown split.
            ConfigError: The split has no video of at least 2 frames.
        """
        ids = cache.video_ids(split)[:max_videos]
        by_len: dict[int, list[str]] = {}
        self.ground_truth = {}
        for v in ids:
            by_len.setdefault(cache.entry(v).num_frames, []).append(v)
            episode = cache.load_episode(v, sections=())
            self.ground_truth[v] = [episode.ground_truth(t) for t in range(episode.num_frames)]
        self.video_ids = tuple(ids)
        self.groups = [(T, tuple(vids)) for T, vids in sorted(by_len.items()) if T >= 2]
        self._cores = {}
        if not self.groups:
            raise ConfigError(f"split {split!r} of {cache.path} has no video of at least 2 frames to evaluate on")

    def evaluate(self, policy: Policy, *, seed: int = 0, name: str | None = None) -> Any:
        """A policy's scores on the split."""
        raise NotImplementedError

    def evaluate_many(self, policies: Sequence[Policy], *, seed: int = 0, progress: bool = False) -> dict[str, Any]:
        """:meth:`evaluate` for each policy, keyed by name (names must be distinct)."""
        names = [p.name for p in policies]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"two policies are named {duplicates}; give each a distinct name")
        return {
            p.name: self.evaluate(p, seed=seed)
            for p in tqdm(policies, desc=f"evaluate {self.split}", unit="policy", disable=not progress)
        }

    def close(self) -> None:
        """Release the cores' cache file handles."""
        for core in self._cores.values():
            core.close()
        self._cores.clear()

    def __enter__(self: EvaluatorT) -> EvaluatorT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InterleaveEvaluator(SplitEvaluator):
    """Every video of one split, ready to evaluate any number of Interleave policies on.

    Args:
        cache_path: Feature cache with the ``interleave`` section.
        split: Split to evaluate on (``"val"`` for model selection, ``"test"`` to report).
        env_kwargs: ``extractors``, ``speed_reward``, ``skip_light_updates``,
            ``history_len`` and ``reward`` as the environment takes them (defaults: the
            registered ones); ``reward`` decides what ``mean_reward`` averages.
        max_videos: Only the first N videos of the split (``None``: all).

    Raises:
        CacheError, CacheSectionError: Missing or unreadable cache, unknown split.
        UnknownEnvArgumentError: ``env_kwargs`` names something else.
        EnvArgumentError: A bad environment argument.
        ConfigError: The split has no videos.
    """

    arguments = EVAL_ENV_ARGUMENTS

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        split: str = "val",
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        max_videos: int | None = None,
    ) -> None:
        kwargs = self._check_kwargs(env_kwargs)
        self.cache_path = Path(cache_path)
        self.split = split
        self.env_kwargs: dict[str, Any] = {
            "extractors": tuple(kwargs.get("extractors", DEFAULT_EXTRACTORS)),
            "speed_reward": tuple(float(x) for x in kwargs.get("speed_reward", DEFAULT_SPEED_REWARD)),
            "skip_light_updates": kwargs.get("skip_light_updates"),
            "history_len": int(kwargs.get("history_len", DEFAULT_HISTORY_LEN)),
            "reward": check_reward(kwargs.get("reward", DEFAULT_REWARD)),  # refused now, not mid-evaluation
            "cues": kwargs.get("cues", DEFAULT_CUES),
        }
        with FeatureCache(self.cache_path, sections=(SECTION_INTERLEAVE,)) as cache:
            self._read_split(cache, split, max_videos)
            per_extractor = dict(cache.info.costs).get("per_extractor", {})
            self.num_classes = len(cache.info.dataset["classes"])
            self.image_size = int(cache.info.preprocessing["image_size"])
        names = self.env_kwargs["extractors"]
        self.step_seconds = np.array(
            [float(per_extractor.get(n, {}).get("step_seconds", 0.0)) for n in names], dtype=np.float64
        )

    def _core(self, T: int, n: int) -> InterleaveCore:
        core = self._cores.get(T)
        if core is None:
            core = InterleaveCore(n, self.cache_path, split=self.split, clip_len=T, **self.env_kwargs)
            core.record_outputs = True
            self._cores[T] = core
        return core

    @property
    def num_actions(self) -> int:
        """m, the number of extractors."""
        return len(self.env_kwargs["extractors"])

    def rollout(self, policy: Policy, *, seed: int = 0) -> tuple[list[VideoRollout], list[list[Detections]]]:
        """Run ``policy`` over every video; per video its rollout and per-frame detections."""
        rollouts: list[VideoRollout] = []
        detections: list[list[Detections]] = []
        lookahead = bool(getattr(policy, "lookahead", False))
        for group_index, (T, vids) in enumerate(self.groups):
            n = len(vids)
            core = self._core(T, n)
            slots = np.arange(n, dtype=np.int64)
            for i, v in enumerate(vids):
                core.load(i, v, 0)
            policy.reset(n, seed=seed + group_index)
            policy.episode_started(slots)
            actions = np.zeros((n, T), dtype=np.int64)
            rewards = np.zeros((n, T - 1), dtype=np.float64)
            losses = np.zeros((n, T, self.num_actions), dtype=np.float64)
            flops = np.zeros((n, T), dtype=np.int64)
            dets: list[list[Detections]] = [[] for _ in range(n)]
            step = np.zeros(n, dtype=np.int64)
            for t in range(T):
                tr = core.advance(slots, step)
                assert core.last_outputs is not None
                loc, conf = core.last_outputs
                for i, d in enumerate(postprocess(loc, conf, core.head.anchors, image_size=(core.image_size,) * 2)):
                    dets[i].append(d)
                actions[:, t], losses[:, t], flops[:, t] = tr.actions, tr.losses, tr.cost_flops
                if t > 0:
                    rewards[:, t - 1] = tr.rewards
                if t == T - 1:
                    break
                infos = [single_info(tr, i) for i in range(n)]
                if lookahead:
                    ahead = core.peek_losses(slots)
                    for i, info in enumerate(infos):
                        info[NEXT_LOSSES] = ahead[i]
                obs = tr.observation()
                step = check_actions(policy.act(obs, infos), n, self.num_actions)
            for i, v in enumerate(vids):
                rollouts.append(VideoRollout(v, actions[i], rewards[i], losses[i], flops[i]))
            detections.extend(dets)
        return rollouts, detections

    def evaluate(self, policy: Policy, *, seed: int = 0, name: str | None = None) -> PolicyEvaluation:
        """Scores of ``policy`` on the split (deterministic for a deterministic policy and seed)."""
        rollouts, detections = self.rollout(policy, seed=seed)
        gts = [gt for r in rollouts for gt in self.ground_truth[r.video_id]]
        dets = [d for per_video in detections for d in per_video]
        acts = np.concatenate([r.actions for r in rollouts])
        return PolicyEvaluation(
            name=name or policy.name,
            map50=float(detection_map50(gts, dets, self.num_classes, image_size=(self.image_size,) * 2)),
            heavy_fraction=float((acts == 0).mean()),
            gflops_per_frame=float(np.concatenate([r.cost_flops for r in rollouts]).mean() / 1e9),
            mean_reward=float(np.concatenate([r.rewards for r in rollouts]).mean()),
            latency_ms_per_frame=float(self.step_seconds[acts].mean() * 1e3),
            frames=len(acts),
            videos=rollouts,
        )
