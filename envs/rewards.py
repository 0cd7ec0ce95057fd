"""Pure reward functions of the environments (numpy in, numpy out, no state).

Kept apart from the environments so a test, an agent or an analysis script computes
exactly the number the environment paid, from what the environment reported in ``info``.
"""

from __future__ import annotations

import numpy as np

from gistgym.metrics import FRAME_SIGNALS

EQ2 = "eq2"
"""The default reward: Eq. 2 of *Looking Fast and Slow* from the detector's per-frame losses."""
REWARDS = (EQ2, *FRAME_SIGNALS)
"""Valid values of the Interleave and Keyframe environments' ``reward`` argument: Eq. 2, or
one of :data:`gistgym.metrics.FRAME_SIGNALS` paid by :func:`signal_reward`."""


def interleave_reward(losses: np.ndarray, actions: np.ndarray, speed_reward: np.ndarray) -> np.ndarray:
    """Eq. 2 of *Looking Fast and Slow*: ``R(a) = min_i L^i - L^a + speed_reward[a]``.

    The first two terms are the accuracy reward (<= 0, zero when the chosen extractor had
    the lowest loss on this frame), the last one the per-action speed reward.

    Args:
        losses: (B, m) float64 per-extractor detection losses ``L^i`` of one frame per row.
        actions: (B,) integer extractor that was executed in each row.
        speed_reward: (m,) float64 speed reward of each action.

    Returns:
        (B,) float64 rewards, computed as ``(min - L^a) + speed_reward[a]`` in float64, the
        same operations in the same order as ``min(info["losses"]) - info["losses"][a] +
        speed_reward[a]`` on Python floats, so the two agree exactly.
    """
    rows = np.arange(len(actions))
    return (losses.min(axis=1) - losses[rows, actions]) + speed_reward[actions]


def keyframe_reward(
    loss_key: np.ndarray, loss_prop: np.ndarray, actions: np.ndarray, speed_reward: np.ndarray
) -> np.ndarray:
    """Eq. 2's form for Deep Feature Flow: ``R(a) = min(L_key, L_prop) - L_a + speed_reward[a]``.

    Args:
        loss_key: (B,) float64 loss of the frame as a keyframe, ``L(t, 0)``.
        loss_prop: (B,) float64 loss of the frame propagated from its keyframe, ``L(t, d)``.
        actions: (B,) integer action that ran (0 = keyframe, 1 = propagate).
        speed_reward: (2,) float64 speed reward of each action.

    Returns:
        (B,) float64 rewards, computed as ``(min - L_a) + speed_reward[a]`` in float64, the
        same operations in the same order as ``min(info["loss_key"], info["loss_prop"]) -
        L_a + speed_reward[a]`` on Python floats, so the two agree exactly.
    """
    chosen = np.where(actions == 0, loss_key, loss_prop)
    return (np.minimum(loss_key, loss_prop) - chosen) + speed_reward[actions]


def signal_reward(signals: np.ndarray, actions: np.ndarray, speed_reward: np.ndarray) -> np.ndarray:
    """Eq. 2's difference form for a higher-is-better per-frame signal: ``R(a) = S^a - max_i S^i + speed_reward[a]``.

    ``S^i`` is a per-frame quality signal of the detections action ``i`` would have produced
    on the frame (:func:`gistgym.metrics.frame_signals`: ``f1``, ``errors``, ``matched``,
    each higher-is-better). As in Eq. 2 the accuracy part is <= 0 and zero when the chosen
    action's detections were (one of) the best on this frame.

    Args:
        signals: (B, m) float64 per-action signals ``S^i`` of one frame per row.
        actions: (B,) integer action that was executed in each row.
        speed_reward: (m,) float64 speed reward of each action.

    Returns:
        (B,) float64 rewards, computed as ``(S^a - max) + speed_reward[a]`` in float64, the
        same operations in the same order as ``info_signals[a] - max(info_signals) +
        speed_reward[a]`` on Python floats, so the two agree exactly.
    """
    rows = np.arange(len(actions))
    return (signals[rows, actions] - signals.max(axis=1)) + speed_reward[actions]


def glimpse_reward(margin: np.ndarray, best_before: np.ndarray) -> np.ndarray:
    """Eq. 3 of *AdaFrame*: ``r_t = max(0, m_t - max_{t' < t} m_t')``.

    The margin ``m_t = p_t[label] - max_{c != label} p_t[c]`` of the classifier's prediction
    after glimpse ``t``; a glimpse is paid only for how much it raises the best margin so
    far. At ``t = 0`` the maximum over no glimpses is taken as 0, the margin of the uniform
    prediction the episode starts from.

    Args:
        margin: (B,) float64 margins ``m_t`` after this glimpse.
        best_before: (B,) float64 ``max_{t' < t} m_t'`` (0 for the first glimpse).

    Returns:
        (B,) float64 rewards, computed as ``max(0, margin - best_before)`` in float64, the
        same operation as on the Python floats ``info["margin"]`` and the previous
        ``info["best_margin"]``, so the two agree exactly.
    """
    return np.maximum(0.0, np.asarray(margin, dtype=np.float64) - np.asarray(best_before, dtype=np.float64))
