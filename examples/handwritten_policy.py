"""A scheduling policy written by hand, run on each environment with the plain Gymnasium API.

Usage (after ``make demo``)::

    python examples/handwritten_policy.py --cache data/demo.h5 --glimpse-cache data/glimpse-demo.h5

* Interleave-v0 (with ``cues=True``): the heavy extractor right after a shot cut (the light
  features jumped by more than ``--cut``), else once every ``--active`` frames while they drift
  from the last heavy frame's by more than ``--change`` (something moves) and once every
  ``--idle`` frames while they do not (``cue-rule`` of ``gistgym compare`` is the same rule);
* Keyframe-v0: a new keyframe when the mean flow from the keyframe exceeds ``--flow`` pixels;
* Glimpse-v0 (if ``--glimpse-cache``): glimpses spread evenly over the video.

Each is compared with a fixed schedule of about the same cost on the same clips, so the
printout says whether adapting to the content paid on them.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import gistgym  # noqa: F401  (registers the environment ids)
from gistgym.envs.interleave_core import CUE_NAMES
from gistgym.feature_cache.keyframe import CUE_NAMES as FLOW_CUES


def run_episodes(env: gym.Env, policy: Callable[[dict, dict, int], Any], episodes: int) -> tuple[float, float]:
    """Mean episode return and the fraction of steps that took the expensive action 0."""
    returns, expensive, steps = [], 0, 0
    for ep in range(episodes):
        obs, info = env.reset(seed=ep)  # the seed picks the clip: every policy sees the same ones
        total, t, done = 0.0, 0, False
        while not done:
            action = policy(obs, info, t)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            expensive += int(np.asarray(action).item() == 0) if env.action_space.shape == () else 0
            steps, t, done = steps + 1, t + 1, terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), expensive / max(steps, 1)


def interleave(cache: str, args: argparse.Namespace) -> None:
    """Interleave-v0: heavy after the scene drifted (or a full period), against fixed tau."""
    env = gym.make("gistgym/Interleave-v0", cache_path=cache, split="val", clip_len=args.clip_len, cues=True,
                   reward="matched", speed_reward=(0.0, 0.8))  # fmt: skip
    change, step = CUE_NAMES.index("light_change"), CUE_NAMES.index("light_step")
    since = {"k": 0}

    def adaptive(obs: dict, info: dict, t: int) -> int:
        since["k"] = 0 if info["action"] == 0 else since["k"] + 1
        moving = obs["cues"][change] > args.change  # the light features drifted from the last heavy frame's
        cut = obs["cues"][step] > args.cut  # ... or jumped since the previous frame: a new shot
        period = args.active if moving else args.idle
        return 0 if cut or since["k"] + 1 >= period else 1

    ret, frac = run_episodes(env, adaptive, args.episodes)
    tau = max(round(1 / max(frac, 1e-6)) - 1, 0)  # a fixed schedule of about the same cost
    fixed = run_episodes(env, lambda obs, info, t: 0 if (t + 1) % (tau + 1) == 0 else 1, args.episodes)
    print(f"Interleave-v0  adaptive: return {ret:7.2f}, heavy {frac:5.1%} | fixed tau={tau}: "
          f"return {fixed[0]:7.2f}, heavy {fixed[1]:5.1%}")  # fmt: skip
    env.close()


def keyframe(cache: str, args: argparse.Namespace) -> None:
    """Keyframe-v0: a keyframe when the flow from the keyframe is large, against a fixed key period."""
    env = gym.make("gistgym/Keyframe-v0", cache_path=cache, split="val", clip_len=args.clip_len)
    mean_flow = FLOW_CUES.index("mean_flow_px")  # F(keyframe, frame)'s mean magnitude, before deciding
    ret, frac = run_episodes(env, lambda obs, info, t: 0 if obs["cues"][mean_flow] > args.flow else 1, args.episodes)
    period = max(round(1 / max(frac, 1e-6)), 1)
    fixed = run_episodes(env, lambda obs, info, t: 0 if (t + 1) % period == 0 else 1, args.episodes)
    print(f"Keyframe-v0    flow > {args.flow:g} px: return {ret:7.2f}, keys {frac:5.1%} | every {period}: "
          f"return {fixed[0]:7.2f}, keys {fixed[1]:5.1%}")  # fmt: skip
    env.close()


def glimpse(cache: str, args: argparse.Namespace) -> None:
    """Glimpse-v0: evenly spread glimpses."""
    env = gym.make("gistgym/Glimpse-v0", cache_path=cache, split="val", num_glimpses=args.glimpses)
    k = args.glimpses
    spread = lambda obs, info, t: np.array([(t + 0.5) / k], np.float32)  # noqa: E731
    ret, _ = run_episodes(env, spread, args.episodes)
    print(f"Glimpse-v0     {k} evenly spread glimpses: return {ret:.3f} (the margin the classifier reached)")
    env.close()


def main() -> None:
    """Each environment in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="a cache with the interleave and keyframe sections")
    parser.add_argument("--glimpse-cache", default="", help="a cache with the glimpse section (optional)")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--clip-len", type=int, default=40)
    parser.add_argument("--change", type=float, default=0.35, help="Interleave: light-feature drift threshold")
    parser.add_argument("--cut", type=float, default=1.0, help="Interleave: light-feature jump of a shot cut")
    parser.add_argument("--active", type=int, default=6, help="Interleave: heavy period while the scene moves")
    parser.add_argument("--idle", type=int, default=60, help="Interleave: heavy period while it does not")
    parser.add_argument("--flow", type=float, default=1.0, help="Keyframe: mean flow threshold (pixels)")
    parser.add_argument("--glimpses", type=int, default=5, help="Glimpse: glimpses per video")
    args = parser.parse_args()
    interleave(args.cache, args)
    keyframe(args.cache, args)
    if args.glimpse_cache:
        glimpse(args.glimpse_cache, args)


if __name__ == "__main__":
    main()
