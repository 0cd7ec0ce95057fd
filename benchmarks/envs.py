"""Interleave environment throughput, every number measured in this run on one torch thread.

Usage::

    python benchmarks/envs.py [--cache FILE] [--videos data/bench] [--count 4] [--rounds 3]
                              [--glimpse-cache data/glimpse.h5]

Without ``--cache`` it builds a small cache from the first ``--count`` val videos of
``--videos`` (generated into a temporary folder when the dataset is absent) with the
shipped detector weights, into a temporary folder. Prints:

* native batched env steps/s (``InterleaveVectorEnv``, random actions, autoresets
  included) at N = 1, 16, 64, where one env step is one episode advancing one frame, with
  the batched memory + head on each engine (``onnxruntime``, ``eager``; the default ``auto``
  picks per batch size, :class:`gistgym.backbones.engines.BatchedMemoryHead`), the engines
  timed next to each other and their ratio;
* each as a ratio of the bare memory + head throughput on the same ``N * m`` rows and
  engine (one call per step, nothing else; goal >= 0.5), and of memory + head + the
  per-frame detection loss, the torch work Eq. 2 cannot do without;
* at N = 64, the native env against a ``SyncVectorEnv`` of 64 single environments as
  ``gymnasium.make_vec(..., vectorization_mode="sync")`` builds it (goal >= 5x), both on
  the default engine choice (``auto``) and both in eager torch.

Env and bare compute are timed next to each other in ``--rounds`` rounds and each ratio is
the median of the rounds' ratios: on a shared machine speed drifts by tens of percent from
minute to minute, which adjacent measurements cancel. Videos are prepared (read and
matched to the anchors) before timing, as they are after an environment's first pass over
its split.

* Double DQN training throughput (``gistgym train``'s defaults: Fig. 4 policy net, N = 16,
  2 gradient steps of batch 64 per vector step) in env steps/s and gradient steps/s, and as
  a ratio of the bare native env at N = 16 measured just before it (how much of training
  time the environment is not).
* Keyframe-v0 (``benchmarks/keyframe.py``): batched env steps/s at N = 1 ... 4096 and the
  ratios to a ``SyncVectorEnv`` and to Interleave-v0.
* Glimpse-v0: native batched env steps/s (``GlimpseVectorEnv``, random locations, autoresets
  included) at N = 1, 16, 64 on the glimpse cache ``--glimpse-cache`` (default
  ``data/glimpse.h5``; the section is skipped with a one-line message when it is missing),
  and AdaFrame training videos/s (whole training steps) next to the env's episodes/s.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import functools
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from bench_common import env_stepper, rate, small_cache  # beside this script

import gistgym.envs  # noqa: F401 (registers the ids)
from gistgym.backbones.engines import BatchedMemoryHead
from gistgym.backbones.ssdlite import DetectionTargets, frame_detection_loss
from gistgym.envs import INTERLEAVE_ENV_ID
from gistgym.envs.interleave_core import InterleaveCore
from gistgym.envs.interleave_vector import InterleaveVectorEnv
from gistgym.errors import GistgymError

SIZES = (1, 16, 64)
STEP_ENGINES = ("onnxruntime", "eager")


def bare_calls(core: InterleaveCore, engine: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """Bare memory + head (and + loss) on ``engine``, on the ``N * m`` rows of inputs the core's next step would run.

    Taken mid-episode: right after a reset half the state is exactly zero, which runs at
    another speed than the states an episode spends most of its steps in.
    """
    n, m = core.num_slots, core.num_actions
    C, g = core.channels, core.grid
    frames = torch.from_numpy(np.arange(n) * core.clip_len + np.minimum(core._t + 1, core.clip_len - 1))
    x = core._features.view(-1, m * C, g, g).index_select(0, frames).view(n * m, C, g, g).float()
    c, h = core._c.repeat_interleave(m, dim=0), core._h.repeat_interleave(m, dim=0)
    step = BatchedMemoryHead(core.memory, core.head, grid=core.grid, engine=engine)
    labels = core._labels.view(-1, core._labels.shape[-1]).index_select(0, frames).repeat_interleave(m, dim=0)
    offsets = core._offsets.view(-1, *core._offsets.shape[-2:]).index_select(0, frames).repeat_interleave(m, dim=0)
    targets = DetectionTargets(labels, offsets)

    def memory_head() -> object:
        with torch.inference_mode():
            return step(x, c, h)

    def memory_head_loss() -> object:
        with torch.inference_mode():
            _, _, loc, conf = step(x, c, h)
            return frame_detection_loss(loc, conf, targets)

    return memory_head, memory_head_loss


def ddqn_benchmark(cache: Path, args: argparse.Namespace) -> None:
    """Double DQN training env steps/s with gistgym train's defaults, against the bare env at N = 16."""
    from stable_baselines3.common.logger import Logger

    from gistgym.agents.train import TrainConfig, env_kwargs, make_model
    from gistgym.envs.interleave_sb3 import InterleaveSB3VecEnv

    config = TrainConfig.of(cache=str(cache), split=args.split, clip_len=args.clip_len, learning_starts=256)
    kwargs = env_kwargs(config)
    venv = InterleaveSB3VecEnv(str(cache), num_envs=config.num_envs, **kwargs)
    venv.seed(0)
    model = make_model(config, venv)
    model.set_logger(Logger(None, []))  # SB3's default logger would create a /tmp/SB3-* folder per run
    model.learn(config.learning_starts + 16 * config.num_envs)  # fill the buffer past learning_starts, warm up
    env = InterleaveVectorEnv(cache_path=str(cache), num_envs=config.num_envs, **kwargs)
    env.reset(seed=0)
    step = env_stepper(env, seed=0)
    pairs = []
    for _ in range(args.rounds):
        env_rate = rate(step, args.seconds) * config.num_envs
        before, t0 = model.num_timesteps, time.perf_counter()
        model.learn(64 * config.num_envs, reset_num_timesteps=False)
        pairs.append(((model.num_timesteps - before) / (time.perf_counter() - t0), env_rate))
    train_rate = statistics.median(a for a, _ in pairs)
    grad_rate = train_rate / config.num_envs * config.gradient_steps / config.train_freq
    print(
        f"\nDouble DQN training (gistgym train defaults, N = {config.num_envs}): {train_rate:.0f} env steps/s, "
        f"{grad_rate:.0f} gradient steps/s (batch {config.batch_size}); "
        f"{statistics.median(a / b for a, b in pairs):.2f}x the bare native env at N = {config.num_envs}"
    )
    env.close()
    venv.close()


def keyframe_benchmark(cache: Path, args: argparse.Namespace) -> None:
    """Keyframe-v0's numbers (benchmarks/keyframe.py, beside this script) on the same cache if it can."""
    from keyframe import main as keyframe_main  # the script's folder is on sys.path

    from gistgym.feature_cache import FeatureCache
    from gistgym.feature_cache.keyframe import SECTION_KEYFRAME

    with FeatureCache(cache) as c:
        has_section = SECTION_KEYFRAME in c.info.sections
    rest = ["--rounds", str(args.rounds), "--seconds", str(args.seconds)]
    if has_section:
        keyframe_main(["--cache", str(cache), "--split", args.split, *rest])
    else:  # it builds its own small cache with both sections
        keyframe_main(["--videos", args.videos, "--count", str(args.count), *rest])


def location_stepper(env: gym.vector.VectorEnv, seed: int) -> Callable[[], object]:
    """One ``env.step`` with uniformly random locations in [0, 1] per call (autoresets happen inside)."""
    rng = np.random.default_rng(seed)
    actions = rng.random((4096, env.num_envs, 1), dtype=np.float32)
    counter = iter(range(10**12))

    def step() -> object:
        return env.step(actions[next(counter) % len(actions)])

    return step


def glimpse_benchmark(cache: Path, args: argparse.Namespace) -> None:
    """Glimpse-v0: native batched env steps/s at N = 1, 16, 64 with random locations."""
    from gistgym.envs.glimpse_vector import GlimpseVectorEnv

    if not cache.is_file():
        print(
            f"Glimpse-v0: skipped (no glimpse cache at {cache}; build one with `gistgym cache build "
            f"--videos data/glimpse --out {cache} --sections glimpse` or pass --glimpse-cache FILE)"
        )
        return
    try:
        envs = {n: GlimpseVectorEnv(cache_path=str(cache), num_envs=n, split=args.glimpse_split) for n in SIZES}
    except GistgymError as exc:
        print(f"Glimpse-v0: skipped ({exc})")
        return
    core = envs[SIZES[0]].core
    print(
        f"Glimpse-v0 throughput, cache {cache} [{args.glimpse_split}]: {len(core.videos.video_ids)} videos, "
        f"K = {core.num_glimpses} glimpses, frame features {core.feature_dim}, memory {core.memory_shape}, "
        f"classifier hidden {core.classifier.hidden}"
    )
    print("\nnative batched env (GlimpseVectorEnv), env steps/s = N x vector steps/s (one step = one glimpse):")
    print(f"{'N':>4} {'env steps/s':>12} {'vector steps/s':>15} {'bare clf':>10} {'ratio':>6}")
    for n in SIZES:
        env = envs[n]
        env.reset(seed=0)
        step = location_stepper(env, seed=n)
        classifier = env.core.classifier
        features = env.core.videos.frame_features[np.arange(n) % len(core.videos.video_ids), 0]
        h, c = classifier.initial_state(n)
        bare = functools.partial(classifier.step, features, (h + 0.1, c + 0.1))  # a mid-episode-like state
        rows = [(rate(step, args.seconds), rate(bare, args.seconds)) for _ in range(args.rounds)]
        vector_rate = statistics.median(a for a, _ in rows)
        bare_rate = statistics.median(b for _, b in rows)
        ratio = statistics.median(a / b for a, b in rows)
        print(f"{n:>4} {vector_rate * n:>12.0f} {vector_rate:>15.0f} {bare_rate * n:>10.0f} {ratio:>6.2f}")
        env.close()
    print("(bare clf = one step of the frozen numpy classifier on the same N rows, nothing else)")
    adaframe_benchmark(cache, args, env_episodes=vector_rate * SIZES[-1] / core.num_glimpses)


def adaframe_benchmark(cache: Path, args: argparse.Namespace, env_episodes: float) -> None:
    """AdaFrame training videos/s (gistgym train --algo adaframe's defaults) on ``cache``'s split."""
    from gistgym.agents.adaframe import AdaFrameConfig, train_adaframe
    from gistgym.feature_cache import FeatureCache
    from gistgym.feature_cache.glimpse import read_glimpse_section

    with FeatureCache(cache, sections=("glimpse",)) as c:
        section = read_glimpse_section(c)
        videos = section.load_split(c, args.glimpse_split)
    cfg = AdaFrameConfig(train_steps=20)
    rates = []
    for _ in range(args.rounds):
        _, history = train_adaframe(videos, section, cfg, progress=False)
        rates.append(history.videos_per_second)
    speed = statistics.median(rates)
    print(
        f"\nAdaFrame training (batch {cfg.batch_size}, K = {cfg.num_glimpses}, LSTM {cfg.hidden}; rollout, "
        f"rewards, losses, backward, Adam): {speed:.0f} videos/s = {speed * cfg.num_glimpses:.0f} glimpses/s; "
        f"the batched env alone runs {env_episodes:.0f} episodes/s at N = {SIZES[-1]} ({speed / env_episodes:.2f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=None, help="feature cache to use (default: build a small one)")
    parser.add_argument("--split", default="val", help="split of --cache to draw clips from")
    parser.add_argument("--videos", default="data/bench", help="dataset folder for the small cache (read-only)")
    parser.add_argument("--count", type=int, default=4, help="val videos in the small cache")
    parser.add_argument("--clip-len", type=int, default=40, help="frames per episode")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median ratio)")
    parser.add_argument("--seconds", type=float, default=0.6, help="seconds per timed measurement")
    parser.add_argument("--glimpse-cache", default="data/glimpse.h5", help="cache with the glimpse section")
    parser.add_argument("--glimpse-split", default="val", help="split of --glimpse-cache to draw videos from")
    args = parser.parse_args(argv)
    if args.count < 1 or args.rounds < 1 or args.seconds <= 0:
        parser.error("--count and --rounds must be >= 1, --seconds > 0")
    torch.set_num_threads(1)
    begin = time.perf_counter()
    print(
        f"Interleave-v0 throughput: python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread, {os.cpu_count()} CPUs ({platform.machine()})"
    )
    with tempfile.TemporaryDirectory(prefix="gistgym-env-bench-") as tmp_name:
        try:
            if args.cache:
                cache, line = Path(args.cache), f"cache: {args.cache}"
            else:
                cache, made = small_cache(Path(args.videos), args.count, Path(tmp_name))
                line = f"cache: {made}"
            kwargs = {"cache_path": str(cache), "split": args.split, "clip_len": args.clip_len}
            envs = {n: InterleaveVectorEnv(**kwargs, num_envs=n) for n in SIZES}
        except GistgymError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        core = envs[SIZES[-1]].core
        for video_id in core.eligible:  # prepare every video once (the memo is process-wide)
            core.prepared(video_id)
        print(
            f"{line}; {len(core.eligible)} videos, extractors {core.extractors} (m = {core.num_actions}), "
            f"clip_len {args.clip_len}, skip_light_updates={core.skip_light_updates}"
        )

        print("\nnative batched env (InterleaveVectorEnv), env steps/s = N x vector steps/s, per step engine:")
        header = ("N", "rows", "engine", "env steps/s", "bare m+h", "ratio", "bare m+h+loss", "ratio", "vs eager")
        widths = (4, 5, 12, 12, 10, 6, 14, 6, 9)
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
        for n in SIZES:
            env = envs[n]
            env.reset(seed=0)
            step = env_stepper(env, seed=n)
            for _ in range(args.clip_len // 2):
                step()
            bare = {e: bare_calls(env.core, e) for e in STEP_ENGINES}
            rows: dict[str, list[tuple[float, float, float]]] = {e: [] for e in STEP_ENGINES}
            for _ in range(args.rounds):
                for e in STEP_ENGINES:
                    env.core.step_engine.set_engine(e)
                    memory_head, memory_head_loss = bare[e]
                    rows[e].append(
                        (
                            rate(step, args.seconds),
                            rate(memory_head, args.seconds),
                            rate(memory_head_loss, args.seconds),
                        )
                    )
            env.core.step_engine.set_engine("auto")
            for e in STEP_ENGINES:
                r = rows[e]
                env_rate = statistics.median(x[0] for x in r) * n
                vs_eager = statistics.median(a[0] / b[0] for a, b in zip(r, rows["eager"], strict=True))
                bare_rate, bare_loss = (statistics.median(x[k] for x in r) * n for k in (1, 2))
                ratio, ratio_loss = (statistics.median(x[0] / x[k] for x in r) for k in (1, 2))
                print(
                    f"{n:>4} {n * env.core.num_actions:>5} {e:>12} {env_rate:>12.0f} {bare_rate:>10.0f} {ratio:>6.2f} "
                    f"{bare_loss:>14.0f} {ratio_loss:>6.2f} {vs_eager:>9.2f}"
                )
        print(
            "(bare = the same N*m rows through the memory + head [+ loss] only, same engine; goal: ratio >= 0.5; "
            "vs eager = env steps/s over the eager env's, same rounds)"
        )

        n = SIZES[-1]
        sync = gym.make_vec(INTERLEAVE_ENV_ID, num_envs=n, vectorization_mode="sync", **kwargs)
        for e in ("auto", "eager"):
            sync.reset(seed=0)
            envs[n].reset(seed=0)
            envs[n].core.step_engine.set_engine(e)
            for sub in sync.envs:  # type: ignore[attr-defined]
                sub.unwrapped.core.step_engine.set_engine(e)
            sync_step, native_step = env_stepper(sync, seed=1), env_stepper(envs[n], seed=1)
            pairs = [
                (rate(native_step, 2 * args.seconds), rate(sync_step, 2 * args.seconds)) for _ in range(args.rounds)
            ]
            speedup = statistics.median(a / b for a, b in pairs)
            print(
                f"\nN = {n}, step engine {e} (native {envs[n].core.step_engine.engine_for(n * 2)}, single envs "
                f"{sync.envs[0].unwrapped.core.step_engine.engine_for(2)}): "  # type: ignore[attr-defined]
                f"native {statistics.median(a for a, _ in pairs) * n:.0f} env steps/s, "
                f"SyncVectorEnv of {n} single envs {statistics.median(b for _, b in pairs) * n:.0f} env steps/s: "
                f"native is {speedup:.1f}x (goal >= 5x)"
            )
        envs[n].core.step_engine.set_engine("auto")
        sync.close()
        for env in envs.values():
            env.close()
        ddqn_benchmark(cache, args)
        print()
        keyframe_benchmark(cache, args)
        print()
        glimpse_benchmark(Path(args.glimpse_cache), args)
    print(f"total {time.perf_counter() - begin:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
