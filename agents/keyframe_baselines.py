"""The baseline keyframe schedules for ``gistgym/Keyframe-v0`` (Deep Feature Flow).

All implement :class:`~gistgym.agents.policy.Policy` over the environment's observation and
``info`` (action 0 = keyframe, 1 = propagate; frame 0 and a frame at ``max_distance`` are
keyframes whatever the policy says):

* :class:`EveryFramePolicy`: ``every-frame``, N_feat on every frame (no propagation);
* :class:`FixedDurationPolicy`: ``key=L``, DFF's fixed key duration l: keyframes on the
  frames t with ``t % l == 0`` of a video (for ``l <= max_distance``);
* :class:`FlowThresholdPolicy`: ``flow-threshold@X``, a keyframe when the mean flow
  magnitude between the keyframe and the frame about to be decided exceeds X pixels;
* :class:`KeyframeOraclePolicy`: ``oracle``, the myopic oracle on the next frame's cached
  losses (``info["next_losses"] = (L_key, L_prop)``, supplied by
  :class:`~gistgym.agents.keyframe_eval.KeyframeEvaluator`);
* ``hindsight``, ``hindsight@F``, ``hindsight:lambda=X``: the exact hindsight oracle
  (:class:`~gistgym.agents.hindsight.KeyframeHindsightPolicy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gistgym.agents.baselines import NEXT_LOSSES, ConstantPolicy, OraclePolicy, RandomPolicy
from gistgym.envs.keyframe import KEY, PROPAGATE
from gistgym.errors import ConfigError
from gistgym.feature_cache.keyframe import CUE_NAMES

__all__ = [
    "NEXT_LOSSES",
    "EveryFramePolicy",
    "FixedDurationPolicy",
    "FlowThresholdPolicy",
    "KeyframeOraclePolicy",
    "parse_keyframe_baseline",
]

MEAN_FLOW_CUE = CUE_NAMES.index("mean_flow_px")
"""Index of the mean flow magnitude (pixels) in ``obs["cues"]``."""


def next_distances(infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(n,) distance of the frame about to be decided to its keyframe, from each row's ``info``.

    The frame just processed sat at ``info["distance"]`` and ran ``info["action"]``: the next
    frame is at distance 1 after a keyframe, else one further than the frame just processed.
    """
    action = np.array([int(i["action"]) for i in infos], dtype=np.int64)
    distance = np.array([int(i["distance"]) for i in infos], dtype=np.int64)
    return np.where(action == KEY, 1, distance + 1)


@dataclass
class EveryFramePolicy(ConstantPolicy):
    """A keyframe on every frame: DFF's per-frame baseline (N_feat + N_task everywhere)."""

    action: int = KEY
    name: str = "every-frame"


@dataclass
class FixedDurationPolicy:
    """DFF's fixed key duration l: a keyframe once the next frame is ``l`` frames from the last one.

    Stateless: the distance comes from ``info["action"]`` and ``info["distance"]`` of the frame
    just processed (as :class:`~gistgym.agents.baselines.FixedTauPolicy` counts from
    ``info["action"]``), so it behaves the same in the environment and the evaluator. From a
    keyframe on frame 0, keyframes fall on ``t % l == 0``; ``l = 1`` is ``every-frame``.
    The environment's forced keyframe at ``max_distance`` caps l in effect.
    """

    key_duration: int
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.key_duration, bool) or not isinstance(self.key_duration, int) or self.key_duration < 1:
            raise ConfigError(f"a fixed key duration needs an integer l >= 1, got {self.key_duration!r}")
        self.name = self.name or f"key={self.key_duration}"

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Stateless."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Stateless."""

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Keyframe iff the next frame is at distance >= l from the last keyframe."""
        return np.where(next_distances(infos) >= self.key_duration, KEY, PROPAGATE).astype(np.int64)


@dataclass
class FlowThresholdPolicy:
    """A keyframe when the mean flow magnitude (px) to the frame about to be decided exceeds ``threshold``.

    Reads ``obs["cues"][:, MEAN_FLOW_CUE]``: F(keyframe, current frame)'s mean magnitude,
    which a DFF scheduler has after running F and before deciding (the cue is clipped to
    the observation bound, 64 px).
    """

    threshold: float
    name: str = ""

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or self.threshold < 0:
            raise ConfigError(f"flow-threshold@X needs a finite X >= 0 (pixels), got {self.threshold!r}")
        self.name = self.name or f"flow-threshold@{self.threshold:g}"

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Stateless."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Stateless."""

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Keyframe iff the mean flow cue exceeds the threshold."""
        flow = np.asarray(obs["cues"], dtype=np.float64).reshape(len(infos), -1)[:, MEAN_FLOW_CUE]
        return np.where(flow > self.threshold, KEY, PROPAGATE).astype(np.int64)


@dataclass
class KeyframeOraclePolicy(OraclePolicy):
    """The myopic oracle: ``argmax_a speed_reward[a] - L_a`` over ``info["next_losses"] = (L_key, L_prop)``.

    ``L_prop`` is the next frame's loss at the distance it would have if propagated. Greedy,
    not optimal: it ignores that propagating now lengthens later distances. Ties go to the
    keyframe. Needs ``lookahead = True`` evaluation (:class:`~gistgym.agents.keyframe_eval.KeyframeEvaluator`).
    """


def parse_keyframe_baseline(spec: str, speed_reward: Sequence[float]) -> Any:
    """A baseline by name: ``every-frame``, ``key=L``, ``flow-threshold@X``, ``random@F``, ``oracle``, ``hindsight...``.

    ``random@F`` makes a keyframe with probability F on every frame (plus the forced ones at
    ``max_distance``), :class:`~gistgym.agents.baselines.RandomPolicy`.

    ``hindsight``, ``hindsight@F`` and ``hindsight:lambda=X`` are the exact hindsight oracle
    (:class:`~gistgym.agents.hindsight.KeyframeHindsightPolicy`).

    Raises:
        ConfigError: Anything else, or a bad number.
    """
    if spec == "hindsight" or spec.startswith(("hindsight@", "hindsight:")):
        from gistgym.agents.hindsight import parse_keyframe_hindsight

        return parse_keyframe_hindsight(spec)
    if spec == "every-frame":
        return EveryFramePolicy()
    if spec == "oracle":
        return KeyframeOraclePolicy(tuple(float(x) for x in speed_reward))
    makers = (
        ("key=", lambda x: FixedDurationPolicy(int(x))),
        ("flow-threshold@", lambda x: FlowThresholdPolicy(float(x))),
        ("random@", lambda x: RandomPolicy(float(x))),
    )
    for prefix, make in makers:
        if spec.startswith(prefix):
            try:
                return make(spec[len(prefix) :])
            except ValueError as exc:
                raise ConfigError(f"baseline {spec!r}: {spec[len(prefix) :]!r} is not a number") from exc
    raise ConfigError(
        f"unknown keyframe baseline {spec!r}; expected every-frame, key=L, flow-threshold@X, random@F, oracle or "
        "hindsight[@F | :lambda=X]"
    )


# --- the linear scheduler's features (gistgym train --algo cem) --------------------------------
def _flow_features(obs: Mapping[str, Any]) -> Any:
    import torch

    c, since = obs["cues"], obs["since_key"][:, 0]
    flow = c[:, MEAN_FLOW_CUE]
    return torch.cat([c, since[:, None], (since * flow)[:, None], torch.ones_like(since)[:, None]], dim=1)


def keyframe_policy_features(env_kwargs: Mapping[str, Any]) -> Any:
    """Keyframe-v0's :class:`~gistgym.agents.cem.FeatureSet`: the flow cues, the distance, their product, a bias.

    The four flow cues of F(keyframe, frame), ``since_key`` (``d / max_distance``),
    ``since_key x mean_flow_px`` and 1. The search starts at a keyframe once the distance
    reaches 40 % of ``max_distance``.
    """
    from gistgym.agents.cem import FeatureSet

    return FeatureSet(
        name="keyframe-flow",
        names=(*CUE_NAMES, "since_key", "since_key*mean_flow_px", "bias"),
        inputs=("cues", "since_key"),
        fn=_flow_features,
        init=(0.0,) * len(CUE_NAMES) + (5.0, 0.0, -2.0),
    )


def keyframe_compare_baselines(config: Any, speed_reward: Sequence[float]) -> list[Any]:
    """The baselines of every Keyframe-v0 comparison: every-frame, ``key=L``, ``flow-threshold@X``, oracle.

    Args:
        config: A :class:`~gistgym.agents.compare.CompareConfig` (``--durations``, ``--flow-thresholds``).
        speed_reward: The comparison's speed reward per action.
    """
    specs = ["every-frame", *(f"key={int(x)}" for x in config.keyframe.durations)]
    specs += [f"flow-threshold@{x:g}" for x in config.keyframe.flow_thresholds] + ["oracle"]
    return [parse_keyframe_baseline(s, speed_reward) for s in specs]
