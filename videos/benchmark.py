"""Write the synthetic benchmark to disk in the gistgym video format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gistgym.errors import ConfigError
from gistgym.videos.dataset import ANNOTATION_FILE, DATASET_FILE, VIDEO_FILE, write_dataset_index, write_video
from gistgym.videos.streams import STREAMS_GENERATOR, StreamsConfig, StreamVideo, generate_stream_video
from gistgym.videos.synthetic import CLASS_NAMES, SyntheticConfig, SyntheticVideo, generate_video
from gistgym.videos.untrimmed import UntrimmedConfig, generate_untrimmed_video

DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 160, "val": 32, "test": 32}
"""Videos per split of the embedded detection benchmark."""

UNTRIMMED_SPLIT_SIZES: dict[str, int] = {"train": 800, "val": 400, "test": 200}
"""Videos per split of the embedded untrimmed (frame selection) benchmark."""

STREAMS_SPLIT_SIZES: dict[str, int] = {"train": 80, "val": 24, "test": 24}
"""Videos per split of the embedded streams benchmark (360 frames each: 46,080 frames)."""

GENERATORS: dict[str, str] = {
    "detection": "gistgym.synthetic",
    "untrimmed": "gistgym.untrimmed",
    "streams": STREAMS_GENERATOR,
}
# (gistgym.feature_cache.sections.UNTRIMMED_GENERATOR names the second one for the cache build)
"""Benchmark kind -> generator name recorded in ``dataset.json``."""

GENERATOR_VERSION = 1
"""Bumped whenever the generator's output for a given seed changes."""


def video_id(split: str, index: int) -> str:
    """The folder name of video ``index`` of ``split``."""
    return f"{split}_{index:04d}"


def _is_current(folder: Path, source: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a complete video generated from exactly ``source``."""
    try:
        doc = json.loads((folder / ANNOTATION_FILE).read_text())
    except (OSError, ValueError):
        return False
    # compare through JSON so tuples in the config equal the lists read back
    return (folder / VIDEO_FILE).is_file() and doc.get("source") == json.loads(json.dumps(source))


def make_benchmark(
    out: str | Path,
    *,
    seed: int = 0,
    split_sizes: dict[str, int] | None = None,
    config: SyntheticConfig | UntrimmedConfig | StreamsConfig | None = None,
    progress: bool = True,
) -> Path:
    """Generate the benchmark into ``out`` (one folder per video plus ``dataset.json``).

    Videos already written by an identical earlier call are kept (a video folder is complete
    once its annotations file, written last, records the same generator, seed, config, split
    and index), so an interrupted run resumes and a changed seed regenerates everything.

    Args:
        out: Output folder.
        seed: Benchmark seed; the same seed gives byte-identical files.
        split_sizes: Videos per split (defaults to ``DEFAULT_SPLIT_SIZES``,
            ``UNTRIMMED_SPLIT_SIZES`` for an :class:`UntrimmedConfig` or
            ``STREAMS_SPLIT_SIZES`` for a :class:`StreamsConfig`).
        config: Generator settings: a :class:`SyntheticConfig` (the detection benchmark, the
            default), an :class:`UntrimmedConfig` (untrimmed videos for frame selection) or a
            :class:`StreamsConfig` (long streams with idle stretches, cuts and bursts).
        progress: Show a progress bar.

    Returns:
        The output folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    cfg = config or SyntheticConfig()
    kind = "untrimmed" if isinstance(cfg, UntrimmedConfig) else "detection"
    kind = "streams" if isinstance(cfg, StreamsConfig) else kind
    default_sizes = {"untrimmed": UNTRIMMED_SPLIT_SIZES, "streams": STREAMS_SPLIT_SIZES}.get(kind, DEFAULT_SPLIT_SIZES)
    sizes = dict(default_sizes if split_sizes is None else split_sizes)
    generator = {"name": GENERATORS[kind], "version": GENERATOR_VERSION, "seed": seed, "config": cfg.to_dict()}
    # dataset.json is written last: while it is missing or stale nobody reads the folder as done
    (out / DATASET_FILE).unlink(missing_ok=True)
    todo = [(s, i) for s, n in sizes.items() for i in range(n)]
    splits: dict[str, list[str]] = {s: [video_id(s, i) for i in range(n)] for s, n in sizes.items()}
    for split, i in tqdm(todo, desc=f"videos -> {out}", disable=not progress, unit="video"):
        source = {"generator": generator, "split": split, "index": i}
        if _is_current(out / video_id(split, i), source):
            continue
        video = _generate(cfg, seed, split, i)
        stream = video.stream if isinstance(video, StreamVideo) else None
        vid = video_id(split, i)
        write_video(out, vid, video.frames, video.annotations, video.label, fps=cfg.fps, source=source, stream=stream)
    write_dataset_index(out, CLASS_NAMES, splits, generator)
    return out


def _generate(
    cfg: SyntheticConfig | UntrimmedConfig | StreamsConfig, seed: int, split: str, index: int
) -> SyntheticVideo:
    if isinstance(cfg, UntrimmedConfig):
        return generate_untrimmed_video(seed, split, index, cfg)
    if isinstance(cfg, StreamsConfig):
        return generate_stream_video(seed, split, index, cfg)
    return generate_video(seed, split, index, cfg)
