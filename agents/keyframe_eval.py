"""Deterministic evaluation of ``Keyframe`` policies on whole held-out videos.

:class:`KeyframeEvaluator` runs a :class:`~gistgym.agents.policy.Policy` over **every frame
of every video** of a split, in the environment's exact semantics
(:class:`~gistgym.envs.keyframe.KeyframeCore`, batched over the videos of equal length;
frame 0 and a frame at ``max_distance`` are keyframes whatever the policy says), and
scores the schedule it produced:

* ``map50``: detection mAP@0.5 of the cached DFF detections under that schedule
  (:func:`~gistgym.feature_cache.keyframe.schedule_detections`), the same as running DFF
  with it;
* ``key_fraction``: the fraction of frames that were keyframes;
* ``gflops_per_frame``: mean counted FLOPs of what ran (``info["cost_flops"]``: N_feat +
  N_task on a keyframe, F + W + N_task on a propagated frame);
* ``mean_reward``: mean reward over the steps (every frame but each video's first), of the
  environment's ``reward`` argument (Eq. 2's form on the losses by default);
* ``speedup_flops``: every-frame GFLOPs over the policy's (the measured FLOP ratio), next to
  ``speedup_eq7``, DFF's Eq. 7 at the same key fraction (:func:`speedup_eq7`, N_task neglected).

Policies with ``lookahead = True`` (the myopic oracle) also get ``info["next_losses"] =
(L_key, L_prop)`` of the next frame, read from the cached loss table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gistgym.agents.baselines import NEXT_LOSSES
from gistgym.agents.evaluation import SplitEvaluator
from gistgym.agents.policy import Policy
from gistgym.backbones.ssdlite import Detections
from gistgym.envs.interleave_vector import check_actions
from gistgym.envs.keyframe import (
    DEFAULT_HISTORY_LEN,
    DEFAULT_MAX_DISTANCE,
    DEFAULT_REWARD,
    DEFAULT_SPEED_REWARD,
    KEY,
    KeyframeCore,
    single_info,
)
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.keyframe import ATTR_DFF_COSTS, SECTION_KEYFRAME, schedule_detections
from gistgym.metrics import detection_map50

EVAL_ENV_ARGUMENTS = ("max_distance", "speed_reward", "history_len", "reward")
"""The environment arguments an evaluation takes (the split is its own; clips are whole videos)."""


def speedup_eq7(key_fraction: float, r: float) -> float:
    """DFF Eq. 7 at a key fraction f: ``1 / (f + r (1 - f))``, N_task neglected.

    With a fixed key duration l (``f = 1 / l``) this is the paper's ``l / (1 + r (l - 1))``
    (:func:`gistgym.backbones.dff.speedup_fixed`); ``r`` is Eq. 5's ``(O(F) + O(W)) / O(N_feat)``.
    """
    return 1.0 / (key_fraction + r * (1.0 - key_fraction))


@dataclass
class KeyframeVideoRollout:
    """What a policy did on one video."""

    video_id: str
    actions: np.ndarray
    """(T,) int64 executed action per frame (0 = keyframe; 0 on frame 0)."""
    distances: np.ndarray
    """(T,) int64 distance of each frame to the keyframe its detections came from (0 on keyframes)."""
    rewards: np.ndarray
    """(T - 1,) float64 reward of each step."""
    losses: np.ndarray
    """(T, 2) float64 ``(L_key, L_prop)`` of each frame (``info["loss_key"]``, ``info["loss_prop"]``)."""
    cost_flops: np.ndarray
    """(T,) int64 counted FLOPs of each frame."""


@dataclass
class KeyframeEvaluation:
    """A policy's scores on one split (see the module docstring for each number)."""

    name: str
    map50: float
    key_fraction: float
    gflops_per_frame: float
    mean_reward: float
    frames: int
    videos: list[KeyframeVideoRollout] = field(repr=False)
    speedup_flops: float = float("nan")
    speedup_eq7: float = float("nan")

    def summary(self) -> dict[str, float | int]:
        """The JSON-ready numbers."""
        return {
            "map50": self.map50,
            "key_fraction": self.key_fraction,
            "gflops_per_frame": self.gflops_per_frame,
            "mean_reward": self.mean_reward,
            "speedup_flops": self.speedup_flops,
            "speedup_eq7": self.speedup_eq7,
            "frames": self.frames,
        }


class KeyframeEvaluator(SplitEvaluator):
    """Every video of one split, ready to evaluate any number of keyframe policies on.

    Args:
        cache_path: Feature cache with the ``keyframe`` section.
        split: Split to evaluate on.
        env_kwargs: ``max_distance``, ``speed_reward``, ``history_len`` and ``reward`` as the
            environment takes them (defaults: the registered ones); ``reward`` decides what
            ``mean_reward`` averages.
        max_videos: Only the first N videos of the split (``None``: all).

    Raises:
        CacheError, CacheSectionError: Missing or unreadable cache, unknown split, no keyframe section.
        UnknownEnvArgumentError: ``env_kwargs`` names something else.
        EnvArgumentError: A bad environment argument.
        ConfigError: The split has no videos of at least 2 frames.
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
            "max_distance": kwargs.get("max_distance", DEFAULT_MAX_DISTANCE),
            "speed_reward": kwargs.get("speed_reward", DEFAULT_SPEED_REWARD),
            "history_len": kwargs.get("history_len", DEFAULT_HISTORY_LEN),
            "reward": kwargs.get("reward", DEFAULT_REWARD),
        }
        with FeatureCache(self.cache_path, sections=(SECTION_KEYFRAME,)) as cache:
            self._read_split(cache, split, max_videos)
            info = cache.info
            self.num_classes = len(info.dataset["classes"])
            size = int(dict(info.modules.get("models", {}).get("dff", {}).get("config", {})).get("image_size", 0))
            self.image_size = size or int(info.preprocessing["image_size"])
            self.costs: dict[str, Any] = dict(cache.section(SECTION_KEYFRAME).attrs.get(ATTR_DFF_COSTS, {}))
        self._det_tables: dict[str, dict[str, np.ndarray]] = {}
        first = self._core(*self.groups[0])  # bad environment arguments fail here, not mid-evaluation
        self.speed_reward = first.speed_reward
        self.max_distance = first.max_distance
        self.key_flops = int(first.action_flops[KEY])
        self.cost_ratio = float(self.costs.get("cost_ratio_r", float("nan")))

    def _core(self, T: int, vids: Sequence[str]) -> KeyframeCore:
        core = self._cores.get(T)
        if core is None:
            core = KeyframeCore(len(vids), self.cache_path, split=self.split, clip_len=T, **self.env_kwargs)
            self._cores[T] = core
        return core

    def rollout(self, policy: Policy, *, seed: int = 0) -> list[KeyframeVideoRollout]:
        """Run ``policy`` over every frame of every video (deterministic for a deterministic policy and seed)."""
        rollouts: list[KeyframeVideoRollout] = []
        lookahead = bool(getattr(policy, "lookahead", False))
        for group_index, (T, vids) in enumerate(self.groups):
            n = len(vids)
            core = self._core(T, vids)
            slots = np.arange(n, dtype=np.int64)
            for i, v in enumerate(vids):
                core.load(i, v, 0)
            loss_tables = [core.tables(v)[0] for v in vids] if lookahead else []
            policy.reset(n, seed=seed + group_index)
            policy.episode_started(slots)
            actions = np.zeros((n, T), dtype=np.int64)
            distances = np.zeros((n, T), dtype=np.int64)
            rewards = np.zeros((n, T - 1), dtype=np.float64)
            losses = np.zeros((n, T, 2), dtype=np.float64)
            flops = np.zeros((n, T), dtype=np.int64)
            step = np.zeros(n, dtype=np.int64)
            for t in range(T):
                out = core.advance(slots, step)
                actions[:, t] = out["action"]
                distances[:, t] = np.where(out["action"] == KEY, 0, out["distance"])
                losses[:, t, 0], losses[:, t, 1] = out["loss_key"], out["loss_prop"]
                flops[:, t] = out["cost_flops"]
                if t > 0:
                    rewards[:, t - 1] = out["reward"]
                if t == T - 1:
                    break
                infos = [single_info(out, i) for i in range(n)]
                if lookahead:
                    # the next frame's distance if propagated (the core keeps it private)
                    next_d = np.where(out["action"] == KEY, 1, out["distance"] + 1)
                    for i, info in enumerate(infos):
                        info[NEXT_LOSSES] = loss_tables[i][t + 1, [0, int(next_d[i])]]
                step = check_actions(policy.act(out["obs"], infos), n, 2)
            for i, v in enumerate(vids):
                rollouts.append(KeyframeVideoRollout(v, actions[i], distances[i], rewards[i], losses[i], flops[i]))
        return rollouts

    def detections(self, rollout: KeyframeVideoRollout) -> list[Detections]:
        """The cached DFF detections of one video under the rollout's schedule."""
        tables = self._det_tables.get(rollout.video_id)
        if tables is None:
            with FeatureCache(self.cache_path, sections=(SECTION_KEYFRAME,)) as cache:
                ep = cache.load_episode(rollout.video_id, sections=(SECTION_KEYFRAME,))
                tables = {k: np.asarray(a) for k, a in ep.sections[SECTION_KEYFRAME].items()}
            self._det_tables[rollout.video_id] = tables
        return schedule_detections(tables, rollout.distances)

    def evaluate(self, policy: Policy, *, seed: int = 0, name: str | None = None) -> KeyframeEvaluation:
        """Scores of ``policy`` on the split (deterministic for a deterministic policy and seed)."""
        rollouts = self.rollout(policy, seed=seed)
        gts = [gt for r in rollouts for gt in self.ground_truth[r.video_id]]
        dets = [d for r in rollouts for d in self.detections(r)]
        acts = np.concatenate([r.actions for r in rollouts])
        key_fraction = float((acts == KEY).mean())
        mean_flops = float(np.concatenate([r.cost_flops for r in rollouts]).mean())
        return KeyframeEvaluation(
            name=name or policy.name,
            map50=float(detection_map50(gts, dets, self.num_classes, image_size=(self.image_size,) * 2)),
            key_fraction=key_fraction,
            gflops_per_frame=mean_flops / 1e9,
            mean_reward=float(np.concatenate([r.rewards for r in rollouts]).mean()),
            frames=len(acts),
            videos=rollouts,
            speedup_flops=self.key_flops / mean_flops,
            speedup_eq7=speedup_eq7(key_fraction, self.cost_ratio),
        )
