"""The baseline schedules every learned ``Interleave`` policy is compared against.

All implement :class:`~gistgym.agents.policy.Policy` over the environment's observation and
``info`` (action 0 = the heavy extractor, 1 = the light one the fixed schedules use):

* :class:`ConstantPolicy`: ``heavy`` (always 0) or ``light`` (always 1);
* :class:`FixedTauPolicy`: ``tau=N``, the heavy extractor on every (N + 1)-th frame
  (frame 0 and then after N light frames), the paper's fixed interleaving;
* :class:`RandomPolicy`: ``random@F``, the heavy extractor with probability F on every frame,
  seeded: the control for a learned policy that runs the heavy model on a fraction F of
  the frames, but without choosing *which* frames;
* :class:`CueRulePolicy`: ``cue-rule:active=A,idle=I,change=X,cut=C``, a hand-made adaptive
  schedule on the environment's runtime cues (``cues=True``): a short period while the light
  features drift from the last heavy frame's (objects move), a long one while they do not,
  and the heavy extractor right after a shot cut. The baseline a learned scheduler on the
  same cues has to beat;
* :class:`OraclePolicy`: ``oracle``, the myopic oracle: it looks at every extractor's loss
  on the next frame (which the cached features give away) and takes the action with the
  best Eq. 2 reward, ``argmax_a speed_reward[a] - L^a``. It is greedy, not optimal over the
  episode: it ignores what an action does to the memory for later frames.

:class:`SegmentPeriodPolicy` is a diagnostic rather than a baseline: a fixed schedule whose
period depends on the ground-truth difficulty segment of the frame about to be decided (the
synthetic benchmark's ``calm``, ``fast``, ... segments, stored in the cache). It knows what
no real scheduler knows, so it bounds what content-adaptive scheduling can gain on a cache
(``benchmarks/headroom.py``). It drives ``Keyframe-v0`` too (action 0 there is the keyframe).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gistgym.envs.interleave_core import CUE_NAMES
from gistgym.errors import ConfigError

NEXT_LOSSES = "next_losses"
"""``info`` key a lookahead policy reads: (m,) losses of every extractor on the next frame."""


@dataclass
class ConstantPolicy:
    """Always the same action."""

    action: int
    name: str

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Stateless."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Stateless."""

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``action`` for every row."""
        return np.full(len(infos), self.action, dtype=np.int64)


@dataclass
class SinceExpensive:
    """Counts, per row, the frames since the expensive action 0 last ran (from ``info["action"]``).

    Needs no frame indices, so a policy built on it behaves the same in the environment and in
    the online runtime. :meth:`advance` is called once per decision with the infos of the step.
    """

    since: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64), repr=False, kw_only=True)

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Zero counters for ``num_envs`` rows."""
        self.since = np.zeros(num_envs, dtype=np.int64)

    def episode_started(self, rows: np.ndarray) -> None:
        """Zero those rows' counters (their first frame runs action 0)."""
        self.since[rows] = 0

    def advance(self, infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Count the frame each row just executed; the frames since the last action 0, per row."""
        if len(self.since) != len(infos):
            self.reset(len(infos))
        executed = np.array([int(i["action"]) for i in infos], dtype=np.int64)
        self.since = np.where(executed == 0, 0, self.since + 1)
        return self.since


@dataclass
class FixedTauPolicy(SinceExpensive):
    """Heavy (action 0) after the light extractor (action ``light``) ran ``tau`` times in a row.

    The schedule ``tau=N`` of :mod:`gistgym.backbones.evaluation`: heavy on frames t with
    ``t % (N + 1) == 0`` of an episode. It counts the light frames since the last heavy one
    from ``info["action"]``, so it needs no frame indices and behaves the same in the
    environment and the online runtime.
    """

    tau: int
    light: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        if self.tau < 0:
            raise ConfigError(f"a fixed schedule needs tau >= 0, got {self.tau}")
        self.name = self.name or f"tau={self.tau}"

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Count the light frames since the last heavy one (from ``info["action"]``) and decide."""
        return np.where(self.advance(infos) >= self.tau, 0, self.light).astype(np.int64)


@dataclass
class RandomPolicy:
    """The heavy extractor with probability ``fraction`` on every frame, else action ``light``."""

    fraction: float
    light: int = 1
    name: str = ""
    _rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0), repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"random@F needs 0 <= F <= 1, got {self.fraction}")
        self.name = self.name or f"random@{self.fraction:.2f}"

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Seed the draws (``None``: seed 0, so evaluations repeat)."""
        self._rng = np.random.default_rng(0 if seed is None else seed)

    def episode_started(self, rows: np.ndarray) -> None:
        """Stateless per row."""

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """One Bernoulli draw per row."""
        heavy = self._rng.random(len(infos)) < self.fraction
        return np.where(heavy, 0, self.light).astype(np.int64)


@dataclass
class OraclePolicy:
    """The myopic oracle: ``argmax_a speed_reward[a] - L^a`` on the next frame's cached losses.

    Needs ``info["next_losses"]`` (:data:`NEXT_LOSSES`), which the evaluation loop adds for
    policies with ``lookahead = True``. Ties go to the lower action (the heavier extractor).
    """

    speed_reward: Sequence[float]
    name: str = "oracle"
    lookahead: bool = True

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Stateless."""

    def episode_started(self, rows: np.ndarray) -> None:
        """Stateless."""

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Greedy on the next frame's losses."""
        try:
            losses = np.stack([np.asarray(i[NEXT_LOSSES], dtype=np.float64) for i in infos])
        except KeyError as exc:
            raise ConfigError(
                "the oracle needs info['next_losses'] (every extractor's loss on the next frame); "
                "evaluate it with InterleaveEvaluator or KeyframeEvaluator (gistgym compare does)"
            ) from exc
        speed = np.asarray(self.speed_reward, dtype=np.float64)
        if losses.shape[1] != len(speed):
            raise ConfigError(f"the oracle has {len(speed)} speed rewards but the losses have {losses.shape[1]}")
        return np.argmax(speed[None, :] - losses, axis=1).astype(np.int64)


def next_frames(infos: Sequence[Mapping[str, Any]], per_video: Mapping[str, Any]) -> list[Any]:
    """Per row, the entry of ``per_video[video id]`` for the frame about to be decided (``frame_index + 1``)."""
    out = []
    for info in infos:
        per_frame = per_video[str(info["video_id"])]
        out.append(per_frame[min(int(info["frame_index"]) + 1, len(per_frame) - 1)])
    return out


@dataclass
class FramePeriodPolicy(SinceExpensive):
    """Action 0 once every ``periods[video][t]`` frames, and on every frame where ``triggers[video][t]``.

    Counts the frames since the last action 0 (:class:`SinceExpensive`) and takes action 0 when
    the frame about to be decided, ``t = info["frame_index"] + 1`` of ``info["video_id"]``, is
    at least its period away from it, or is a trigger. Any other frame gets action ``cheap``.
    A per-frame ground truth (the segment, a cut, an object's speed) makes it a privileged
    schedule: a reference of what knowing the state is worth (benchmarks/causal_bound.py).
    """

    periods: Mapping[str, Sequence[int] | np.ndarray] = field(repr=False)
    triggers: Mapping[str, Sequence[bool] | np.ndarray] | None = field(default=None, repr=False)
    name: str = "frame-period"
    cheap: int = 1

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Action 0 where the next frame is a full period after the last action 0, or a trigger."""
        since = self.advance(infos)
        heavy = since + 1 >= np.asarray(next_frames(infos, self.periods), dtype=np.int64)
        if self.triggers is not None:
            heavy |= np.asarray(next_frames(infos, self.triggers), dtype=bool)
        return np.where(heavy, 0, self.cheap).astype(np.int64)


@dataclass
class SegmentPeriodPolicy(SinceExpensive):
    """The expensive action 0 once every ``periods[segment]`` frames, by the next frame's segment.

    Counts the frames since the last action 0 from ``info["action"]`` (like
    :class:`FixedTauPolicy`) and takes action 0 when the frame about to be decided,
    ``info["frame_index"] + 1`` of video ``info["video_id"]``, is at least the period of its
    segment away from it: with one period P for every segment this is ``tau=P-1`` on
    Interleave and ``key=P`` on Keyframe. Any other frame gets action ``cheap``.

    Args:
        periods: Period (>= 1 frames) of each segment name.
        segments: Per video id, the segment name of every frame (the cache's ground truth).
        cheap: The action between expensive ones.
        default_period: Period of a segment not in ``periods``.
    """

    periods: Mapping[str, int]
    segments: Mapping[str, Sequence[str]] = field(repr=False)
    cheap: int = 1
    default_period: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.periods.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad or self.default_period < 1:
            raise ConfigError(f"segment periods must be integers >= 1 frames, got {dict(self.periods)}")
        self.name = self.name or "segment:" + ",".join(f"{k}={v}" for k, v in sorted(self.periods.items()))

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Action 0 where the next frame is a full period of its segment after the last action 0."""
        since = self.advance(infos)
        period = np.array([self.periods.get(s, self.default_period) for s in next_frames(infos, self.segments)])
        return np.where(since + 1 >= period, 0, self.cheap).astype(np.int64)


CUE_RULE = "cue-rule"
"""Prefix of :class:`CueRulePolicy` names: ``cue-rule:active=A,idle=I,change=X,cut=C``."""


@dataclass
class CueRulePolicy(SinceExpensive):
    """The heavy extractor by a rule on the runtime cues: a motion-dependent period plus shot cuts.

    After each frame the environment's ``cues`` (``cues=True``,
    :func:`~gistgym.envs.interleave_core.runtime_cues`) give ``light_change``, the relative
    change of the light features since the last heavy frame, and ``light_step``, their change
    since the previous frame. The next frame gets the heavy extractor (action 0) when

    * ``light_step > cut`` (the frame just processed started a new shot), or
    * the frames since the last heavy one reach the period: ``active`` while
      ``light_change > change`` (the scene moved since the heavy frame), else ``idle``.

    Any other frame gets action ``cheap``. Like :class:`FixedTauPolicy` a period P means one
    heavy frame in P; the rule needs nothing but what an interleaved detector computes at run
    time, so it runs unchanged in ``gistgym detect``.

    Raises:
        ConfigError: A period below 1 or a threshold that is negative or not finite.
    """

    active: int
    idle: int
    change: float
    cut: float
    cheap: int = 1
    name: str = ""
    env_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"cues": True}, repr=False)
    """What the evaluator's environment needs: the cues."""

    def __post_init__(self) -> None:
        for key in ("active", "idle"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"{CUE_RULE}: {key} must be a period of >= 1 frames, got {value!r}")
        for key in ("change", "cut"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
                raise ConfigError(f"{CUE_RULE}: {key} must be a finite threshold >= 0, got {value!r}")
        self.name = self.name or (
            f"{CUE_RULE}:active={self.active},idle={self.idle},change={self.change:g},cut={self.cut:g}"
        )

    def act(self, obs: Mapping[str, np.ndarray], infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Action 0 after a cut or a full period (short while the scene moved), else ``cheap``."""
        since = self.advance(infos)
        if "cues" not in obs:
            raise ConfigError(f"{self.name} reads the runtime cues: evaluate it on an environment made with cues=True")
        cues = np.asarray(obs["cues"], dtype=np.float64).reshape(len(infos), -1)
        change = cues[:, CUE_NAMES.index("light_change")]
        step = cues[:, CUE_NAMES.index("light_step")]
        period = np.where(change > self.change, self.active, self.idle)
        heavy = (since + 1 >= period) | (step > self.cut)
        return np.where(heavy, 0, self.cheap).astype(np.int64)


def parse_cue_rule(spec: str) -> CueRulePolicy:
    """``cue-rule:active=A,idle=I,change=X,cut=C`` (all four, any order) as a :class:`CueRulePolicy`.

    Raises:
        ConfigError: Another form, a missing, repeated or unknown key, or a bad number.
    """
    form = f"{CUE_RULE}:active=A,idle=I,change=X,cut=C"
    body = spec[len(CUE_RULE) + 1 :] if spec.startswith(CUE_RULE + ":") else None
    if not body:
        raise ConfigError(f"baseline {spec!r}: expected {form}")
    values: dict[str, str] = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        if not eq or key not in ("active", "idle", "change", "cut") or key in values:
            raise ConfigError(
                f"baseline {spec!r}: {item!r} is not one of active=, idle=, change=, cut= (once each); expected {form}"
            )
        values[key] = value
    missing = [k for k in ("active", "idle", "change", "cut") if k not in values]
    if missing:
        raise ConfigError(f"baseline {spec!r} lacks {', '.join(missing)}; expected {form}")
    try:
        active, idle = int(values["active"]), int(values["idle"])
        change, cut = float(values["change"]), float(values["cut"])
    except ValueError as exc:
        raise ConfigError(f"baseline {spec!r}: {exc}; expected {form} with integer periods") from exc
    return CueRulePolicy(active, idle, change, cut)


def parse_baseline(spec: str, speed_reward: Sequence[float]) -> Any:
    """A baseline by its comparison name: ``heavy``, ``light``, ``tau=N``, ``random@F``, ``oracle``, ``hindsight@W``.

    ``cue-rule:active=A,idle=I,change=X,cut=C`` is :class:`CueRulePolicy` (:func:`parse_cue_rule`).

    ``hindsight@W`` and ``hindsight@W:lambda=X`` are the beam-search hindsight oracle
    (:class:`~gistgym.agents.hindsight.InterleaveHindsightPolicy`).

    Raises:
        ConfigError: Anything else, or a bad number.
    """
    if spec == "hindsight" or spec.startswith(("hindsight@", "hindsight:")):
        from gistgym.agents.hindsight import parse_interleave_hindsight

        return parse_interleave_hindsight(spec)
    if spec == "heavy":
        return ConstantPolicy(0, "heavy")
    if spec == "light":
        return ConstantPolicy(1, "light")
    if spec == "oracle":
        return OraclePolicy(tuple(speed_reward))
    if spec.startswith(CUE_RULE):
        return parse_cue_rule(spec)
    for prefix, make in (("tau=", lambda x: FixedTauPolicy(int(x))), ("random@", lambda x: RandomPolicy(float(x)))):
        if spec.startswith(prefix):
            try:
                return make(spec[len(prefix) :])
            except ValueError as exc:
                raise ConfigError(f"baseline {spec!r}: {spec[len(prefix) :]!r} is not a number") from exc
    raise ConfigError(
        f"unknown baseline {spec!r}; expected heavy, light, tau=N, random@F, oracle, hindsight@W[:lambda=X] "
        f"or {CUE_RULE}:active=A,idle=I,change=X,cut=C"
    )


# --- the linear scheduler's features (gistgym train --algo cem) --------------------------------
_SINCE, _CHANGE, _STEP, _MEMORY = (CUE_NAMES.index(k) for k in ("since_heavy", "light_change", "light_step",
                                                              "memory_change"))  # fmt: skip


def _cue_features(obs: Mapping[str, Any]) -> Any:
    import torch

    c = obs["cues"]
    since, change = c[:, _SINCE], c[:, _CHANGE]
    return torch.stack([since, change, c[:, _STEP], c[:, _MEMORY], since * change, torch.ones_like(since)], dim=1)


def interleave_policy_features(env_kwargs: Mapping[str, Any]) -> Any:
    """Interleave-v0's :class:`~gistgym.agents.cem.FeatureSet`: the runtime cues, their product, a bias.

    ``since`` (frames since the heavy step / 64), ``light_change``, ``light_step``,
    ``memory_change``, ``since x light_change`` and 1: the state the cue rule reads, plus the
    interaction that lets the period shorten as the scene drifts. The search starts at a
    period of 8 frames (``8 since - 1 >= 0``).

    Raises:
        ConfigError: The run's environment has no cues (``cues=True`` / ``--cues``).
    """
    from gistgym.agents.cem import FeatureSet

    if not env_kwargs.get("cues"):
        raise ConfigError("--algo cem on gistgym/Interleave-v0 scores the runtime cues: pass --cues")
    return FeatureSet(
        name="interleave-cues",
        names=("since", "light_change", "light_step", "memory_change", "since*light_change", "bias"),
        inputs=("cues",),
        fn=_cue_features,
        init=(8.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    )


def interleave_compare_baselines(config: Any, speed_reward: Sequence[float]) -> list[Any]:
    """The baselines of every Interleave-v0 comparison: heavy, light, ``tau=N`` for each of ``--taus``, oracle.

    Args:
        config: A :class:`~gistgym.agents.compare.CompareConfig`.
        speed_reward: The comparison's speed reward per action.
    """
    out: list[Any] = [parse_baseline(s, speed_reward) for s in ("heavy", "light")]
    out += [FixedTauPolicy(int(t)) for t in config.interleave.taus]
    return [*out, parse_baseline("oracle", speed_reward)]
