"""The synthetic generator, the on-disk video format and its reader, and ``gistgym videos``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gistgym.errors import AnnotationError, ConfigError, InputFileError, VideoError
from gistgym.scripts.cli import main
from gistgym.videos import dataset
from gistgym.videos.benchmark import make_benchmark, video_id
from gistgym.videos.dataset import (
    ANNOTATION_FILE,
    DATASET_FILE,
    VIDEO_FILE,
    load_dataset,
    read_video_file,
    write_dataset_index,
    write_video,
)
from gistgym.videos.synthetic import (
    _CLASS_TEXTURE,
    CLASS_NAMES,
    FrameAnnotation,
    SyntheticConfig,
    _texture,
    generate_video,
)

TINY = SyntheticConfig(num_frames=8)
TINY_SPLITS = {"train": 1, "val": 1, "test": 0}
BENCH_SEED, BENCH_FRAMES = 3, 24  # what conftest's tiny_bench is made with


def assert_annotations_equal(a: FrameAnnotation, b: FrameAnnotation, *, atol: float = 0.0) -> None:
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol, rtol=0)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.track_ids, b.track_ids)
    np.testing.assert_allclose(a.speeds, b.speeds, atol=atol, rtol=0)
    assert a.segment == b.segment


def assert_names(exc: InputFileError, path: Path) -> None:
    assert exc.path == path
    assert str(path) in str(exc)


def edit_json(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def first_frame_with_boxes(ann_file: Path) -> int:
    frames = json.loads(ann_file.read_text())["frames"]
    return next(i for i, f in enumerate(frames) if f["boxes"])


# ---------------------------------------------------------------------------- determinism


def test_generator_same_seed_same_video() -> None:
    a = generate_video(11, "train", 2, TINY)
    b = generate_video(11, "train", 2, TINY)
    assert a.frames.shape == (8, 64, 64, 3) and a.frames.dtype == np.uint8
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.label == b.label
    assert len(a.annotations) == len(b.annotations) == 8
    assert sum(len(x.labels) for x in a.annotations) > 0  # something to compare
    for x, y in zip(a.annotations, b.annotations, strict=True):
        assert_annotations_equal(x, y)


def test_generator_seed_split_and_index_change_the_video() -> None:
    base = generate_video(11, "train", 2, TINY).frames
    for other in (
        generate_video(12, "train", 2, TINY),
        generate_video(11, "val", 2, TINY),
        generate_video(11, "train", 3, TINY),
    ):
        assert not np.array_equal(base, other.frames)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_benchmark_twice_gives_byte_identical_files(tmp_path: Path) -> None:
    one = make_benchmark(tmp_path / "one", seed=5, split_sizes=TINY_SPLITS, config=TINY, progress=False)
    two = make_benchmark(tmp_path / "two", seed=5, split_sizes=TINY_SPLITS, config=TINY, progress=False)
    files_one, files_two = _files(one), _files(two)
    expected = {
        DATASET_FILE,
        *(f"{v}/{f}" for v in ("train_0000", "val_0000") for f in (VIDEO_FILE, ANNOTATION_FILE)),
    }
    assert set(files_one) == set(files_two) == expected  # no temporary files left behind
    for name in expected:
        assert files_one[name] == files_two[name], name
    other = make_benchmark(tmp_path / "other", seed=6, split_sizes=TINY_SPLITS, config=TINY, progress=False)
    files_other = _files(other)
    for v in ("train_0000", "val_0000"):
        assert files_other[f"{v}/{VIDEO_FILE}"] != files_one[f"{v}/{VIDEO_FILE}"]
        assert files_other[f"{v}/{ANNOTATION_FILE}"] != files_one[f"{v}/{ANNOTATION_FILE}"]


def test_make_benchmark_regenerates_when_the_seed_changes(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    make_benchmark(out, seed=5, split_sizes=TINY_SPLITS, config=TINY, progress=False)
    make_benchmark(out, seed=6, split_sizes=TINY_SPLITS, config=TINY, progress=False)
    fresh = make_benchmark(tmp_path / "fresh", seed=6, split_sizes=TINY_SPLITS, config=TINY, progress=False)
    assert _files(out) == _files(fresh)
    generator = load_dataset(out).generator
    assert generator is not None and generator["seed"] == 6


# ---------------------------------------------------------------------------- round trip


def test_benchmark_round_trip_matches_the_generator(tiny_bench: Path) -> None:
    ds = load_dataset(tiny_bench)
    assert ds.classes == CLASS_NAMES
    assert ds.splits == {"train": ("train_0000", "train_0001"), "val": ("val_0000", "val_0001"), "test": ("test_0000",)}
    cfg = SyntheticConfig(num_frames=BENCH_FRAMES)
    for split, ids in ds.splits.items():
        for i, vid in enumerate(ids):
            record = ds.video(vid)
            truth = generate_video(BENCH_SEED, split, i, cfg)
            assert (record.num_frames, record.height, record.width) == (BENCH_FRAMES, 64, 64)
            assert record.label == truth.label
            np.testing.assert_array_equal(record.read_frames(), truth.frames)  # lossless codec
            assert len(record.annotations) == BENCH_FRAMES
            for got, want in zip(record.annotations, truth.annotations, strict=True):
                # the writer rounds boxes to 1e-3 px and speeds to 1e-4 px/frame
                assert_annotations_equal(got, want, atol=1e-3)


def test_write_video_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 32, 48, 3), dtype=np.uint8)  # noise: hardest to code
    segments = ("calm", "fast", "small", "arrivals", "medium")
    annotations = [
        FrameAnnotation(
            boxes=np.array([[1.5 + t, 2.25, 20.0, 30.0 + t / 2], [0.0, 0.0, 48.0, 32.0]], np.float32),
            labels=np.array([t % 4, 3], np.int64),
            track_ids=np.array([7, 9], np.int64),
            speeds=np.array([0.25 * t, 1.5], np.float32),
            segment=segments[t],
        )
        for t in range(4)
    ]
    empty = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    annotations.append(FrameAnnotation(*empty, np.zeros(0, np.float32), segment="medium"))
    write_video(tmp_path, "mine", frames, annotations, label=2, fps=10)
    write_dataset_index(tmp_path, CLASS_NAMES, {"val": ["mine"]}, None)
    ds = load_dataset(tmp_path)
    assert ds.generator is None
    (record,) = ds.split("val")
    assert (record.video_id, record.num_frames, record.height, record.width) == ("mine", 5, 32, 48)
    assert (record.fps, record.label) == (10.0, 2)
    np.testing.assert_array_equal(record.read_frames(), frames)
    np.testing.assert_array_equal(record.read_frames(num_frames=2), frames[:2])
    for got, want in zip(record.annotations, annotations, strict=True):
        assert got.boxes.dtype == np.float32 and got.labels.dtype == np.int64
        assert_annotations_equal(got, want)


def test_sparse_frame_entries_fill_the_rest_with_empty_frames(bench: Path) -> None:
    ann = bench / "val_0000" / ANNOTATION_FILE
    edit_json(ann, lambda d: d.update(frames=[{"frame": 3, "boxes": [[1, 2, 10, 12]], "labels": [1]}]))
    record = load_dataset(bench).video("val_0000")
    assert len(record.annotations) == BENCH_FRAMES
    assert [len(a.labels) for a in record.annotations] == [0, 0, 0, 1] + [0] * (BENCH_FRAMES - 4)
    np.testing.assert_array_equal(record.annotations[3].boxes, [[1, 2, 10, 12]])
    assert record.annotations[3].track_ids.tolist() == [0]
    assert np.isnan(record.annotations[3].speeds).all()


# ---------------------------------------------------------------------------- texture


def _half_res(x: np.ndarray) -> np.ndarray:
    """2x2 area average, as the light extractor's ``avg_pool2d(images, 2)``."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    return x[:h, :w].reshape(h // 2, 2, w // 2, 2, *x.shape[2:]).mean(axis=(1, 3))


@pytest.mark.parametrize("kind", _CLASS_TEXTURE)
@pytest.mark.parametrize("offset", [(0, 0), (0, 1), (1, 0), (1, 1), (3, 6)])
def test_texture_vanishes_at_half_resolution(kind: str, offset: tuple[int, int]) -> None:
    rr, cc = np.mgrid[0:20, 0:24]
    # the renderer anchors the texture at the object's corner, which may be at any parity
    tex = _texture(kind, rr - offset[0], cc - offset[1])
    assert tex.std() >= 1.0  # clearly visible at full resolution
    np.testing.assert_array_equal(_half_res(tex), 0.0)


@pytest.mark.parametrize("label", range(len(CLASS_NAMES)))
def test_object_interior_is_flat_at_half_resolution(label: int) -> None:
    rng = np.random.default_rng(label)
    sigma, amplitude = 3.0, 35.0  # the generator's noise and its weakest texture
    rr, cc = np.mgrid[0:16, 0:16]
    colour = rng.uniform(50, 205, size=3)
    patch = colour + amplitude * _texture(_CLASS_TEXTURE[label], rr - 1, cc)[..., None]
    patch = patch + rng.normal(0, sigma, size=patch.shape)
    assert patch[..., 0].std() > 5 * sigma  # the class texture dominates at full resolution
    half = _half_res(patch)
    # only the noise is left, averaged over 4 pixels: std sigma / 2
    assert half[..., 0].std() < 1.5 * sigma / 2
    np.testing.assert_allclose(half.mean(axis=(0, 1)), colour, atol=1.0)


def test_textures_differ_at_full_resolution() -> None:
    rr, cc = np.mgrid[0:8, 0:8]
    textures = [_texture(k, rr, cc) for k in _CLASS_TEXTURE]
    for i in range(len(textures)):
        for j in range(i + 1, len(textures)):
            assert not np.array_equal(textures[i], textures[j])


# ---------------------------------------------------------------------------- bad input


def test_missing_video_file(bench: Path) -> None:
    video = bench / "val_0001" / VIDEO_FILE
    video.unlink()
    with pytest.raises(VideoError, match="does not exist") as exc:
        load_dataset(bench).video("val_0001")
    assert_names(exc.value, video)
    with pytest.raises(VideoError) as exc:
        read_video_file(video)
    assert_names(exc.value, video)


def test_corrupt_video_file(bench: Path) -> None:
    video = bench / "train_0000" / VIDEO_FILE
    video.write_bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    record = load_dataset(bench).video("train_0000")  # the annotations alone still load
    with pytest.raises(VideoError) as exc:
        record.read_frames()
    assert_names(exc.value, video)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_video_file(bench: Path, fraction: float) -> None:
    video = bench / "train_0001" / VIDEO_FILE
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * fraction)])
    record = load_dataset(bench).video("train_0001")
    with pytest.raises(VideoError) as exc:
        record.read_frames()
    assert_names(exc.value, video)


def test_empty_video_file(bench: Path) -> None:
    video = bench / "train_0001" / VIDEO_FILE
    video.write_bytes(b"")
    with pytest.raises(VideoError) as exc:
        load_dataset(bench).video("train_0001").read_frames()
    assert_names(exc.value, video)


def test_video_shorter_than_requested(tiny_bench: Path) -> None:
    record = load_dataset(tiny_bench).video("test_0000")
    with pytest.raises(VideoError, match=f"requested {BENCH_FRAMES + 1} frames") as exc:
        record.read_frames(num_frames=BENCH_FRAMES + 1)
    assert_names(exc.value, tiny_bench / "test_0000" / VIDEO_FILE)


@pytest.mark.parametrize("num_frames", [0, -1])
def test_nonpositive_frame_count_requested(tiny_bench: Path, num_frames: int) -> None:
    record = load_dataset(tiny_bench).video("test_0000")
    with pytest.raises(VideoError) as exc:
        record.read_frames(num_frames=num_frames)
    assert_names(exc.value, tiny_bench / "test_0000" / VIDEO_FILE)


def test_video_shorter_than_its_annotations(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ann = bench / "val_0000" / ANNOTATION_FILE
    extra = 6

    def lengthen(d: dict[str, Any]) -> None:
        d["num_frames"] += extra
        d["frames"] += [{"boxes": [], "labels": [], "segment": "calm"}] * extra

    edit_json(ann, lengthen)
    with pytest.raises(AnnotationError, match=f"claim num_frames={BENCH_FRAMES + extra} but the video") as exc:
        load_dataset(bench).video("val_0000")  # the video's header records its count
    assert_names(exc.value, ann)
    real = dataset.probe_video_file  # a container without a recorded count: decoding finds it
    monkeypatch.setattr(dataset, "probe_video_file", lambda path: real(path)._replace(num_frames=None))
    record = load_dataset(bench).video("val_0000")
    assert record.num_frames == BENCH_FRAMES + extra
    with pytest.raises(VideoError, match=f"decoded only {BENCH_FRAMES} frames") as exc:
        record.read_frames()
    assert_names(exc.value, bench / "val_0000" / VIDEO_FILE)


def test_video_of_another_size_than_annotated(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    edit_json(bench / "val_0000" / ANNOTATION_FILE, lambda d: d.update(width=96))
    claim = r"claim 96x64 frames \(width x height\) but the video video.mp4 is 64x64"
    with pytest.raises(AnnotationError, match=claim):
        load_dataset(bench).video("val_0000")  # the video's header records its size
    monkeypatch.setattr(dataset, "probe_video_file", lambda path: None)  # an unreadable header: decoding finds it
    record = load_dataset(bench).video("val_0000")
    with pytest.raises(VideoError, match="64x64 does not match the annotated 96x64"):
        record.read_frames()


def test_annotation_naming_a_frame_that_does_not_exist(bench: Path) -> None:
    ann = bench / "val_0001" / ANNOTATION_FILE
    edit_json(ann, lambda d: d["frames"][0].update(frame=999))
    with pytest.raises(AnnotationError, match="999") as exc:
        load_dataset(bench).video("val_0001")
    assert_names(exc.value, ann)
    assert exc.value.field == "frames[0].frame"


@pytest.mark.parametrize(
    ("box", "message", "where"),
    [
        ([60.0, 10.0, 70.0, 20.0], "outside the 64x64 frame", "boxes[0]"),
        ([-3.0, 10.0, 20.0, 20.0], "outside the 64x64 frame", "boxes[0]"),
        ([10.0, 10.0, 20.0, 65.0], "outside the 64x64 frame", "boxes[0]"),
        ([10.0, 10.0, 10.0, 20.0], "x1 <= x0 or y1 <= y0", "boxes[0]"),  # zero width
        ([10.0, 20.0, 30.0, 5.0], "x1 <= x0 or y1 <= y0", "boxes[0]"),  # negative height
        ([10.0, float("nan"), 30.0, 40.0], "finite", "boxes"),
    ],
)
def test_bad_boxes(bench: Path, box: list[float], message: str, where: str) -> None:
    ann = bench / "train_0000" / ANNOTATION_FILE
    k = first_frame_with_boxes(ann)
    edit_json(ann, lambda d: d["frames"][k]["boxes"].__setitem__(0, box))
    with pytest.raises(AnnotationError, match=message) as exc:
        load_dataset(bench).video("train_0000")
    assert_names(exc.value, ann)
    assert exc.value.field == f"frames[{k}].{where}"


GOOD_BOX = [1, 2, 10, 12]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"boxes": [[1, 2, 3]], "labels": [0]}, "boxes"),
        ({"boxes": [GOOD_BOX, [1, 2]], "labels": [0, 1]}, "boxes"),
        ({"boxes": [[1, 2, 10, "x"]], "labels": [0]}, "boxes"),
        ({"boxes": "1 2 10 12", "labels": [0]}, "boxes"),
        ({"boxes": [GOOD_BOX], "labels": ["cat"]}, "labels"),
        ({"boxes": [GOOD_BOX], "labels": [0.5]}, "labels"),
        ({"boxes": [GOOD_BOX], "labels": [4]}, "labels"),
        ({"boxes": [GOOD_BOX], "labels": [0, 1]}, "labels"),
        ({"boxes": [GOOD_BOX], "labels": [0], "track_ids": [1, 2]}, "track_ids"),
        ({"boxes": [GOOD_BOX], "labels": [0], "track_ids": ["a"]}, "track_ids"),
        ({"boxes": [GOOD_BOX], "labels": [0], "speeds": []}, "speeds"),
        ({"boxes": [GOOD_BOX], "labels": [0], "speeds": ["fast"]}, "speeds"),
    ],
)
def test_malformed_frame_entry(bench: Path, entry: dict[str, Any], field: str) -> None:
    ann = bench / "train_0000" / ANNOTATION_FILE
    edit_json(ann, lambda d: d["frames"].__setitem__(2, entry))
    with pytest.raises(AnnotationError) as exc:
        load_dataset(bench).video("train_0000")
    assert_names(exc.value, ann)
    assert exc.value.field == f"frames[2].{field}"


def test_two_entries_for_one_frame(bench: Path) -> None:
    ann = bench / "val_0000" / ANNOTATION_FILE
    empty = {"boxes": [], "labels": []}
    edit_json(ann, lambda d: d.update(frames=[{"frame": 1, **empty}, {"frame": 1, **empty}]))
    with pytest.raises(AnnotationError, match="frame 1") as exc:
        load_dataset(bench).video("val_0000")
    assert_names(exc.value, ann)
    assert exc.value.field == "frames[1].frame"


def test_wrong_frame_count_without_indices(bench: Path) -> None:
    ann = bench / "val_0000" / ANNOTATION_FILE
    edit_json(ann, lambda d: d.update(frames=d["frames"][:-1]))
    with pytest.raises(AnnotationError, match=f"{BENCH_FRAMES - 1} frame entries") as exc:
        load_dataset(bench).video("val_0000")
    assert_names(exc.value, ann)


def test_annotation_format_version(bench: Path) -> None:
    ann = bench / "test_0000" / ANNOTATION_FILE
    edit_json(ann, lambda d: d.update(format_version=2))
    with pytest.raises(AnnotationError, match="format_version 2 is not supported") as exc:
        load_dataset(bench).video("test_0000")
    assert_names(exc.value, ann)
    assert exc.value.field == "format_version"


def test_annotation_missing_field(bench: Path) -> None:
    ann = bench / "test_0000" / ANNOTATION_FILE
    edit_json(ann, lambda d: d.pop("height"))
    with pytest.raises(AnnotationError, match="missing required field") as exc:
        load_dataset(bench).video("test_0000")
    assert_names(exc.value, ann)
    assert exc.value.field == "height"


def test_annotation_invalid_json(bench: Path) -> None:
    ann = bench / "test_0000" / ANNOTATION_FILE
    ann.write_text('{"format_version": 1, "frames": [')
    with pytest.raises(AnnotationError, match="not valid JSON") as exc:
        load_dataset(bench).video("test_0000")
    assert_names(exc.value, ann)


def test_missing_annotation_file(bench: Path) -> None:
    ann = bench / "test_0000" / ANNOTATION_FILE
    ann.unlink()
    with pytest.raises(AnnotationError, match="does not exist") as exc:
        load_dataset(bench).video("test_0000")
    assert_names(exc.value, ann)


def test_dataset_wrong_format_version(bench: Path) -> None:
    index = bench / DATASET_FILE
    edit_json(index, lambda d: d.update(format_version=2))
    with pytest.raises(AnnotationError, match="format_version 2 is not supported") as exc:
        load_dataset(bench)
    assert_names(exc.value, index)
    assert exc.value.field == "format_version"


def test_dataset_wrong_format_name(bench: Path) -> None:
    index = bench / DATASET_FILE
    edit_json(index, lambda d: d.update(format="coco"))
    with pytest.raises(AnnotationError, match="gistgym-videos") as exc:
        load_dataset(bench)
    assert_names(exc.value, index)


def test_missing_dataset_json(bench: Path) -> None:
    index = bench / DATASET_FILE
    index.unlink()
    with pytest.raises(AnnotationError, match="missing dataset index") as exc:
        load_dataset(bench)
    assert_names(exc.value, index)


def test_missing_dataset_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(AnnotationError, match="does not exist") as exc:
        load_dataset(missing)
    assert_names(exc.value, missing)


def test_dataset_invalid_json(bench: Path) -> None:
    index = bench / DATASET_FILE
    index.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON") as exc:
        load_dataset(bench)
    assert_names(exc.value, index)


def test_unknown_split(tiny_bench: Path) -> None:
    with pytest.raises(AnnotationError, match="no split 'dev'") as exc:
        load_dataset(tiny_bench).split("dev")
    assert_names(exc.value, tiny_bench / DATASET_FILE)


def test_write_video_rejects_mismatched_annotations(tmp_path: Path) -> None:
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(AnnotationError, match="2 annotations for 3 frames"):
        write_video(tmp_path, "v", frames, generate_video(0, "train", 0, SyntheticConfig(num_frames=2)).annotations, 0)
    assert not (tmp_path / "v").exists()


# ---------------------------------------------------------------------------- command line


@pytest.mark.parametrize("breakage", ["missing-folder", "missing-index", "bad-json"])
def test_cli_bad_dataset_path_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str
) -> None:
    videos = tmp_path / "videos"
    if breakage != "missing-folder":
        videos.mkdir()
    if breakage == "bad-json":
        (videos / DATASET_FILE).write_text("{")
    out = tmp_path / "weights.pt"
    code = main(["backbones", "train", "--videos", str(videos), "--out", str(out), "--iterations", "1"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("gistgym: error: ")
    assert str(videos) in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["videos", "make", "--out", str(tmp_path / "b"), "--frames", "0"])
    captured = capsys.readouterr()
    assert code == 2
    assert len(captured.err.splitlines()) == 1
    assert "num_frames must be >= 1" in captured.err


def test_cli_videos_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "made"
    sizes = ["--train", "1", "--val", "1", "--test", "0", "--frames", "8"]
    code = main(["videos", "make", "--out", str(out), "--seed", "4", *sizes])
    captured = capsys.readouterr()
    assert code == 0
    assert f"wrote 2 videos to {out}" in captured.out
    ds = load_dataset(out)
    assert ds.splits == {"train": (video_id("train", 0),), "val": (video_id("val", 0),), "test": ()}
    assert ds.generator is not None and ds.generator["seed"] == 4 and ds.generator["config"]["num_frames"] == 8
    record = ds.video("val_0000")
    frames = record.read_frames()
    assert frames.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(frames, generate_video(4, "val", 0, TINY).frames)


def test_resume_regenerates_videos_of_another_seed(tmp_path: Path) -> None:
    """An interrupted build re-run with another seed must not keep the old seed's videos."""
    sizes = {"train": 2, "val": 0, "test": 0}
    cfg = SyntheticConfig(num_frames=6)
    make_benchmark(tmp_path / "mixed", seed=1, split_sizes=sizes, config=cfg, progress=False)
    (tmp_path / "mixed" / "dataset.json").unlink()  # as if killed before the index was written
    make_benchmark(tmp_path / "mixed", seed=2, split_sizes=sizes, config=cfg, progress=False)
    make_benchmark(tmp_path / "fresh", seed=2, split_sizes=sizes, config=cfg, progress=False)
    for vid in ("train_0000", "train_0001"):
        for name in ("video.mp4", "annotations.json"):
            assert (tmp_path / "mixed" / vid / name).read_bytes() == (tmp_path / "fresh" / vid / name).read_bytes()


def test_resume_keeps_current_videos(tmp_path: Path) -> None:
    sizes = {"train": 1, "val": 0, "test": 0}
    cfg = SyntheticConfig(num_frames=6)
    make_benchmark(tmp_path, seed=1, split_sizes=sizes, config=cfg, progress=False)
    video = tmp_path / "train_0000" / "video.mp4"
    before = video.stat().st_mtime_ns
    make_benchmark(tmp_path, seed=1, split_sizes=sizes, config=cfg, progress=False)
    assert video.stat().st_mtime_ns == before


def test_make_benchmark_refuses_a_file_as_output(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        make_benchmark(target, split_sizes={"train": 1}, progress=False)


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (0600) but must land with the usual permissions."""
    from gistgym.videos.dataset import atomic_write_json, write_video_file

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
        write_video_file(tmp_path / "v.mp4", np.zeros((2, 16, 16, 3), np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "v.mp4").stat().st_mode & 0o777 == 0o644
