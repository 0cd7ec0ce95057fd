"""Glimpse-v0 runs: the AdaFrame agent's run directories, and evaluating any Glimpse policy.

``gistgym train --env gistgym/Glimpse-v0 --algo adaframe`` trains
:class:`~gistgym.agents.adaframe.AdaFrameNet` on the train split with the rewards of the
cache's frozen classifier (the environment's Eq. 3) and writes a run directory like the SB3
runs (:mod:`gistgym.agents.runs`) with ``model.pt`` (a ``state_dict``) in place of
``model.zip`` and the :class:`~gistgym.agents.adaframe.AdaFrameConfig` in ``config.json``.
``--algo ppo`` trains Stable-Baselines3's PPO on the batched environment through the shared
trainer; :class:`GlimpseEnvEvaluator` runs such a policy over whole videos of a split.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import gistgym
from gistgym.agents.adaframe import AdaFrameConfig, AdaFrameNet, adaframe_state, adaptive_lookahead, train_adaframe
from gistgym.agents.algorithms import load_run
from gistgym.agents.glimpse_eval import GlimpseEvaluation, video_gflops
from gistgym.agents.policy import Policy, SB3Policy
from gistgym.agents.runs import (
    CONFIG_FILE,
    EVAL_FILE,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    TENSORBOARD_DIR,
    cache_identity,
    check_cache_identity,
    read_run_config,
    staged_run_dir,
)
from gistgym.errors import RunError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.glimpse import SECTION_GLIMPSE, GlimpseSection, GlimpseVideos, read_glimpse_section
from gistgym.videos.dataset import atomic_write_json, nan_to_null

ADAFRAME_MODEL_FILE = "model.pt"
"""The AdaFrame agent's weights in a run directory (a ``state_dict`` of tensors)."""


class GlimpseEnvEvaluator:
    """Any :class:`~gistgym.agents.policy.Policy` on Glimpse-v0, over whole videos of a split.

    Every video of the split (or the first ``max_videos``) is one slot of a
    :class:`~gistgym.envs.glimpse.GlimpseCore`; the policy acts K times, deterministically,
    and the prediction is the frozen classifier's after the K-th glimpse.
    """

    def __init__(
        self, cache: str | os.PathLike[str], split: str, kwargs: Mapping[str, Any], *, max_videos: int | None
    ) -> None:
        from gistgym.envs.glimpse import GlimpseCore

        probe = FeatureCache(Path(cache), sections=(SECTION_GLIMPSE,))
        try:
            self.section = read_glimpse_section(probe)
            ids = probe.video_ids(split)
        finally:
            probe.close()
        self.video_ids = tuple(ids[:max_videos] if max_videos else ids)
        self.num_glimpses = int(kwargs.get("num_glimpses", 10))
        self.core = GlimpseCore(len(self.video_ids), cache, split=split, num_glimpses=self.num_glimpses)

    def evaluate(self, policy: Policy, *, seed: int = 0) -> GlimpseEvaluation:
        """Run ``policy`` over every video; the result's ``summary()`` has map, top1, frames_used, gflops."""
        from gistgym.envs.glimpse import GlimpseCore, single_info

        n = len(self.video_ids)
        slots = np.arange(n, dtype=np.int64)
        for i, vid in enumerate(self.video_ids):
            self.core.load(i, vid)
        out = self.core.advance(slots, np.zeros(n))
        policy.reset(n, seed=seed)
        policy.episode_started(slots)
        frames: list[list[int]] = [[] for _ in range(n)]
        for _ in range(self.num_glimpses):
            infos = [single_info(out, r) for r in range(n)]
            actions = np.asarray(policy.act(out["obs"], infos), dtype=np.float64).reshape(n, 1)
            out = self.core.advance(slots, GlimpseCore.check_actions(np.clip(actions, 0.0, 1.0), n))
            for r, f in enumerate(out["frame_index"].tolist()):
                frames[r].append(f)
        indices = [np.asarray(f, dtype=np.int64) for f in frames]
        return GlimpseEvaluation(
            policy.name,
            np.asarray(out["obs"]["probs"], dtype=np.float64),
            np.asarray(out["label"]),
            indices,
            video_gflops(self.section, indices, with_memory=True),
            uses_memory=True,
        )

    def evaluate_many(
        self, policies: Sequence[Policy], *, seed: int = 0, progress: bool = True
    ) -> dict[str, GlimpseEvaluation]:
        """:meth:`evaluate` every policy."""
        return {p.name: self.evaluate(p, seed=seed) for p in tqdm(policies, disable=not progress, desc="policies")}

    def close(self) -> None:
        """Release the cache."""
        self.core.close()


def adaframe_config(train: Any) -> AdaFrameConfig:
    """The :class:`AdaFrameConfig` of a ``gistgym train --algo adaframe`` configuration.

    The agent trains for ``adaframe_steps`` optimiser steps at ``adaframe_lr`` (not
    ``total_timesteps`` and ``learning_rate``, whose defaults suit the SB3 agents);
    ``eval_every`` still counts environment steps (glimpses). Settings without a flag
    (dropout, distillation, weight decay) keep :class:`AdaFrameConfig`'s defaults.
    """
    per_step = train.batch_size * train.glimpse.num_glimpses
    return AdaFrameConfig(
        num_glimpses=train.glimpse.num_glimpses,
        hidden=train.glimpse.adaframe_hidden,
        sigma=train.glimpse.glimpse_sigma,
        gamma=train.discount,
        utility_weight=train.glimpse.utility_weight,
        cls_loss=train.glimpse.cls_loss,
        lr=train.glimpse.adaframe_lr,
        batch_size=train.batch_size,
        train_steps=train.glimpse.adaframe_steps,
        eval_every=max(1, train.eval_every // per_step) if train.eval_every > 0 else 0,
        seed=train.seed,
    )


def _load_split(cache_path: str, split: str, max_videos: int | None = None) -> tuple[GlimpseSection, GlimpseVideos]:
    cache = FeatureCache(Path(cache_path), sections=(SECTION_GLIMPSE,))
    try:
        section = read_glimpse_section(cache)
        videos = section.load_split(cache, split)
    finally:
        cache.close()
    if max_videos:
        videos = videos.first(max_videos)
    return section, videos


def evaluate_adaframe(
    net: AdaFrameNet, section: GlimpseSection, videos: GlimpseVideos, name: str, *, mu: float, patience: int
) -> GlimpseEvaluation:
    """AdaFrame with adaptive lookahead (``mu = -inf``: every glimpse of its budget)."""
    res = adaptive_lookahead(net, videos, mu=mu, patience=patience)
    frames = [row[: int(n)] for row, n in zip(res.indices, res.glimpses, strict=True)]
    extra = {"glimpses": float(np.mean(res.glimpses))}
    if np.isfinite(mu):  # (JSON has no infinity: the all-glimpses evaluation carries no threshold)
        extra.update(mu=float(mu), patience=float(patience))
    return GlimpseEvaluation(
        name,
        res.probabilities.astype(np.float64),
        videos.labels,
        frames,
        video_gflops(section, frames, with_memory=True),
        uses_memory=True,
        extra=extra,
    )


def train_adaframe_run(config: Any, target: Path, *, command: Sequence[str] = ()) -> Path:
    """Train AdaFrame per ``config`` (a :class:`~gistgym.agents.train.TrainConfig`) into ``target``.

    The run is written into a hidden ``.NAME.partial-*`` directory beside ``target`` and renamed
    once complete.
    """
    from torch.utils.tensorboard import SummaryWriter

    from gistgym.agents.train import plot_training

    cfg = adaframe_config(config)
    identity = cache_identity(config.cache)
    section, train_videos = _load_split(config.cache, config.split)
    _, eval_videos = _load_split(config.cache, config.eval_split, config.eval_videos)
    with staged_run_dir(target) as partial:
        writer = SummaryWriter(str(partial / TENSORBOARD_DIR))
        history: list[dict[str, Any]] = []

        def evaluate(step: int, net: AdaFrameNet) -> dict[str, float]:
            ev = evaluate_adaframe(net, section, eval_videos, target.name, mu=-np.inf, patience=1)
            row = {"timesteps": step * cfg.batch_size * cfg.num_glimpses, **ev.summary()}  # step counts from 1
            for key in ("map", "top1", "frames_used", "gflops_per_video"):
                writer.add_scalar(f"eval/{key}", row[key], row["timesteps"])
            history.append(row)
            return {k: float(v) for k, v in row.items()}

        started = time.perf_counter()
        net, hist = train_adaframe(train_videos, section, cfg, progress=config.progress, callback=evaluate)
        seconds = time.perf_counter() - started
        for step, values in enumerate(_loss_rows(hist.to_dict())):
            for key, value in values.items():
                writer.add_scalar(f"train/{key}", value, (step + 1) * cfg.batch_size * cfg.num_glimpses)
        writer.close()
        torch.save(adaframe_state(net), partial / ADAFRAME_MODEL_FILE)
        atomic_write_json(
            partial / EVAL_FILE,
            nan_to_null({"split": config.eval_split, "videos": list(eval_videos.video_ids), "history": history}),
        )
        plot_training(
            history,
            partial / "training.png",
            f"{target.name} on {config.eval_split} (all {cfg.num_glimpses} glimpses)",
            "frames_used",
            "map",
            fraction_max=float(cfg.num_glimpses),
        )
        atomic_write_json(
            partial / CONFIG_FILE,
            {
                "format": RUN_FORMAT,
                "format_version": RUN_FORMAT_VERSION,
                "name": target.name,
                "env_id": config.env,
                "algo": "adaframe",
                "algorithm": "AdaFrame",
                "env_kwargs": {"split": config.split, "num_glimpses": cfg.num_glimpses},
                "cache_path": str(Path(config.cache).resolve()),
                "cache_identity": identity,
                "adaframe": net.config.to_dict(),
                "train": {**config.flat(), "gamma_sweep": False, "name": target.name},
                "policy_network": {"parameters": int(sum(p.numel() for p in net.parameters()))},
                "train_seconds": round(seconds, 2),
                "train_videos_per_second": round(hist.videos_per_second, 1),
                "timesteps": cfg.train_steps * cfg.batch_size * cfg.num_glimpses,
                "gistgym_version": gistgym.__version__,
                "command": list(command),
            },
        )
    return target


def _loss_rows(history: Mapping[str, Any]) -> list[dict[str, float]]:
    """Per optimiser step, the scalar series of an AdaFrame history (``{name: [values]}``)."""
    series = {k: v for k, v in history.items() if isinstance(v, list) and v and isinstance(v[0], int | float)}
    steps = min((len(v) for v in series.values()), default=0)
    return [{k: float(v[i]) for k, v in series.items()} for i in range(steps)]


def load_adaframe_run(run_dir: str | os.PathLike[str], *, cache: str | os.PathLike[str] | None = None) -> AdaFrameNet:
    """The AdaFrame agent of a run directory (eval mode).

    Raises:
        RunError: Not a complete AdaFrame run, or weights that do not fit its configuration.
        CacheMismatchError: ``cache`` has another identity than the run's.
    """
    path = Path(run_dir)
    config = read_run_config(path)
    if config.get("algo") != "adaframe":
        raise RunError(path / CONFIG_FILE, f"not an AdaFrame run (algo {config.get('algo')!r})", field="algo")
    if cache is not None:
        check_cache_identity(config.get("cache_identity", {}), cache, what=f"run {path}")
    weights = path / ADAFRAME_MODEL_FILE
    if not weights.is_file():
        raise RunError(weights, "missing: the run did not finish")
    try:
        cfg = AdaFrameConfig.from_dict(config["adaframe"])
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net = AdaFrameNet.from_config(cfg)
        net.load_state_dict(state, strict=True)
    except Exception as exc:  # a damaged file raises many types
        raise RunError(weights, f"cannot load the AdaFrame agent ({type(exc).__name__}: {exc})") from exc
    return net.eval()


def glimpse_run_evaluator(cache: str, split: str, mus: Sequence[float], patience: int, seed: int) -> Any:
    """A :data:`~gistgym.agents.glimpse_compare.RunEvaluator` for ``gistgym compare``.

    An AdaFrame run gives its name (all K glimpses) and ``NAME@MU`` per threshold; an SB3 run
    (PPO) its name, through the environment.
    """

    def evaluate(run_dir: Path, section: GlimpseSection, videos: GlimpseVideos) -> list[GlimpseEvaluation]:
        config = read_run_config(run_dir)
        name = run_dir.name
        if config.get("algo") == "adaframe":
            net = load_adaframe_run(run_dir, cache=cache)
            out = [evaluate_adaframe(net, section, videos, name, mu=-np.inf, patience=patience)]
            out += [evaluate_adaframe(net, section, videos, f"{name}@{mu:g}", mu=mu, patience=patience) for mu in mus]
            return out
        run = load_run(run_dir, cache=cache)
        kwargs = dict(run.config.get("env_kwargs") or {})
        ev = GlimpseEnvEvaluator(cache, split, kwargs, max_videos=len(videos.video_ids))
        try:
            return [ev.evaluate(SB3Policy(run.model, name), seed=seed)]
        finally:
            ev.close()

    return evaluate
