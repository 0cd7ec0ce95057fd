"""Write the synthetic benchmark to disk in the gistgym video format."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from gistgym.videos.dataset import ANNOTATION_FILE, VIDEO_FILE, write_dataset_index, write_video
from gistgym.videos.synthetic import CLASS_NAMES, SyntheticConfig, generate_video

DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 160, "val": 32, "test": 32}
"""Videos per split of the embedded benchmark."""

GENERATOR_VERSION = 1
"""Bumped whenever the generator's output for a given seed changes."""


def video_id(split: str, index: int) -> str:
    """The folder name of video ``index`` of ``split``."""
    return f"{split}_{index:04d}"


def make_benchmark(
    out: str | Path,
    *,
    seed: int = 0,
    split_sizes: dict[str, int] | None = None,
    config: SyntheticConfig | None = None,
    progress: bool = True,
) -> Path:
    """Generate the benchmark into ``out`` (one folder per video plus ``dataset.json``).

    Videos already written by an identical earlier call are kept (a video folder is complete
    once its annotations file exists, which is written last), so an interrupted run resumes.

    Args:
        out: Output folder.
        seed: Benchmark seed; the same seed gives byte-identical files.
        split_sizes: Videos per split (defaults to ``DEFAULT_SPLIT_SIZES``).
        config: Generator settings.
        progress: Show a progress bar.

    Returns:
        The output folder.
    """
    out = Path(out)
    sizes = dict(DEFAULT_SPLIT_SIZES if split_sizes is None else split_sizes)
    cfg = config or SyntheticConfig()
    generator = {"name": "gistgym.synthetic", "version": GENERATOR_VERSION, "seed": seed, "config": cfg.to_dict()}
    index_path = out / "dataset.json"
    if index_path.exists():
        # a different generator/seed in the same folder must not mix with this one
        import json

        old = json.loads(index_path.read_text()).get("generator")
        if old != json.loads(json.dumps(generator)):
            index_path.unlink()
            for split, n in sizes.items():
                for i in range(n):
                    (out / video_id(split, i) / ANNOTATION_FILE).unlink(missing_ok=True)
    todo = [(s, i) for s, n in sizes.items() for i in range(n)]
    splits: dict[str, list[str]] = {s: [video_id(s, i) for i in range(n)] for s, n in sizes.items()}
    for split, i in tqdm(todo, desc=f"videos -> {out}", disable=not progress, unit="video"):
        folder = out / video_id(split, i)
        if (folder / ANNOTATION_FILE).is_file() and (folder / VIDEO_FILE).is_file():
            continue
        video = generate_video(seed, split, i, cfg)
        write_video(out, video_id(split, i), video.frames, video.annotations, video.label, fps=cfg.fps)
    write_dataset_index(out, CLASS_NAMES, splits, generator)
    return out
