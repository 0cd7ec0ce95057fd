"""What chooses the next extractor in the online runtime: ``--policy FILE|fixed:TAU|cue-rule:...|heavy|light``.

Every choice is a :class:`~gistgym.agents.policy.Policy` over the runtime's observation
(the environment's Eq. 1 observation, built from the live memory state) with
``action_meanings``, the extractor name of each action (0 = heavy):

* ``heavy`` / ``light``: always that extractor;
* ``fixed:TAU``: the heavy extractor on frame 0 and again after the light one ran ``TAU``
  times, i.e. heavy on frames t with ``t % (TAU + 1) == 0``, exactly the schedule
  ``tau=TAU`` of :mod:`gistgym.backbones.evaluation` (``fixed_tau_actions``). It counts the
  light frames since the last heavy one from ``info["action"]``, so it needs no access to
  frame indices and behaves the same in the environment;
* ``cue-rule:active=A,idle=I,change=X,cut=C``: the rule on the runtime cues of
  :class:`~gistgym.agents.baselines.CueRulePolicy` (the runtime then computes the cues);
* a file: an exported policy (:func:`gistgym.agents.export.load_exported_policy`), checked
  against the detector the runtime runs (weights sha256, memory layout, extractor names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gistgym.agents.baselines import CUE_RULE, ConstantPolicy, FixedTauPolicy, parse_cue_rule
from gistgym.agents.policy import Policy
from gistgym.errors import ConfigError


@dataclass(frozen=True)
class ScheduleChoice:
    """A parsed ``--policy`` value."""

    policy: Policy
    action_meanings: tuple[str, ...]
    """Extractor name of each action of ``policy``."""
    spec: str
    """The ``--policy`` text."""
    exported: Any = None
    """The :class:`~gistgym.agents.export.ExportedPolicy` when ``spec`` is a file."""

    @property
    def cues(self) -> bool:
        """Whether the policy reads the runtime cues (the online memory must compute them)."""
        if self.exported is not None:
            return bool(self.exported.cues)
        return bool(getattr(self.policy, "env_kwargs", {}).get("cues", False))


def parse_policy(
    spec: str,
    extractor_names: Sequence[str],
    *,
    weights_sha256: str | None = None,
    hidden_channels: int | None = None,
    grid: int | None = None,
) -> ScheduleChoice:
    """Turn a ``--policy`` value into a policy over the detector's extractors.

    Args:
        spec: ``heavy``, ``light``, ``fixed:TAU``, ``cue-rule:active=A,idle=I,change=X,cut=C``
            or the path of an exported policy.
        extractor_names: The detector's extractors (0 = heavy, 1 = the light one the fixed
            schedules use).
        weights_sha256: The detector's weights checksum, required of an exported policy.
        hidden_channels: The detector memory's hidden channels, required of an exported policy.
        grid: The detector memory's grid, required of an exported policy.

    Raises:
        ConfigError: An unknown name or a bad TAU.
        PolicyFileError, PolicyMismatchError, OnnxOpsetError: A bad exported policy.
    """
    names = (extractor_names[0], extractor_names[1])
    if spec == "heavy":
        return ScheduleChoice(ConstantPolicy(0, "heavy"), names, spec)
    if spec == "light":
        return ScheduleChoice(ConstantPolicy(1, "light"), names, spec)
    if spec.startswith("fixed:"):
        try:
            tau = int(spec[len("fixed:") :])
        except ValueError as exc:
            raise ConfigError(f"--policy {spec!r}: TAU must be an integer, e.g. fixed:9") from exc
        if tau < 0:
            raise ConfigError(f"--policy {spec!r}: TAU must be >= 0, e.g. fixed:9")
        return ScheduleChoice(FixedTauPolicy(tau), names, spec)
    if spec.startswith(CUE_RULE + ":"):
        try:
            return ScheduleChoice(parse_cue_rule(spec), names, spec)
        except ConfigError as exc:
            raise ConfigError(f"--policy {exc}") from exc
    path = Path(spec)
    if not path.exists() and path.suffix not in (".pt", ".onnx", ".ts"):
        raise ConfigError(
            f"--policy {spec!r} is not heavy, light, fixed:TAU, {CUE_RULE}:active=A,idle=I,change=X,cut=C "
            "or an exported policy file"
        )
    from gistgym.agents.export import check_policy_matches, load_exported_policy

    exported = load_exported_policy(path, weights_sha256=weights_sha256)
    check_policy_matches(
        path, exported.sidecar, hidden_channels=hidden_channels, grid=grid, extractor_names=tuple(extractor_names)
    )
    return ScheduleChoice(exported, exported.action_meanings, spec, exported)
