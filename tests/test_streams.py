"""The streams benchmark: long videos with idle stretches, cuts and bursts (``gistgym videos make --kind streams``)."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gistgym.errors import AnnotationError, ConfigError
from gistgym.scripts.cli import main
from gistgym.videos.benchmark import make_benchmark
from gistgym.videos.dataset import ANNOTATION_FILE, DATASET_FILE, VIDEO_FILE, load_dataset
from gistgym.videos.streams import (
    ACTIVE,
    EDITED,
    EMPTY,
    FIXED,
    IDLE,
    IDLE_FRACTION,
    MIN_FRAMES,
    SHOT_MEAN_SECONDS,
    SHOT_SD_RATIO,
    SPEED_CLASSES,
    SPEED_SPLIT,
    STREAMS_GENERATOR,
    StreamsConfig,
    StreamVideo,
    _StreamSimulator,
    generate_stream_video,
    plan_stream,
)
from gistgym.videos.synthetic import _SEGMENT_PARAMS, CLASS_NAMES

SHORT = StreamsConfig(num_frames=MIN_FRAMES)
BENCH_SEED = 3  # what conftest's streams_bench is made with
PLANS = 2000  # timelines drawn (no scene) for the family, idle and shot statistics
SAMPLE_SEED, SAMPLE_PER_FAMILY = 1, 4  # videos simulated for the statistics that need a scene


@pytest.fixture(scope="module")
def sample() -> dict[int, StreamVideo]:
    """The first four edited and four fixed-camera streams of seed 1's val split (300 frames, in memory), by index."""
    chosen: dict[str, list[int]] = {EDITED: [], FIXED: []}
    i = 0
    while min(len(v) for v in chosen.values()) < SAMPLE_PER_FAMILY:
        family = plan_stream(SAMPLE_SEED, "val", i, SHORT).family
        if len(chosen[family]) < SAMPLE_PER_FAMILY:
            chosen[family].append(i)
        i += 1
    return {i: generate_stream_video(SAMPLE_SEED, "val", i, SHORT) for i in sorted(chosen[EDITED] + chosen[FIXED])}


def of_family(videos: dict[int, StreamVideo], family: str) -> list[StreamVideo]:
    return [v for v in videos.values() if v.stream.family == family]


def edit_json(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(streams_bench: Path, tmp_path: Path) -> None:
    again = make_benchmark(tmp_path / "again", seed=BENCH_SEED, split_sizes={"train": 1}, config=SHORT, progress=False)
    for name in (VIDEO_FILE, ANNOTATION_FILE):
        assert (again / "train_0000" / name).read_bytes() == (streams_bench / "train_0000" / name).read_bytes()
    generator = json.loads((again / DATASET_FILE).read_text())["generator"]
    assert generator == json.loads((streams_bench / DATASET_FILE).read_text())["generator"]
    assert generator["name"] == STREAMS_GENERATOR and generator["config"] == json.loads(json.dumps(SHORT.to_dict()))


def test_another_seed_gives_another_stream(streams_bench: Path) -> None:
    record = load_dataset(streams_bench).video("train_0000")
    other = generate_stream_video(BENCH_SEED + 1, "train", 0, SHORT)
    assert not np.array_equal(record.read_frames(), other.frames)
    assert not all(np.array_equal(a.boxes, b.boxes) for a, b in zip(record.annotations, other.annotations, strict=True))


def test_round_trip_matches_the_generator(streams_bench: Path) -> None:
    ds = load_dataset(streams_bench)
    assert ds.classes == CLASS_NAMES
    for split, ids in ds.splits.items():
        for i, vid in enumerate(ids):
            record, truth = ds.video(vid), generate_stream_video(BENCH_SEED, split, i, SHORT)
            assert record.stream == truth.stream and record.label == truth.label
            np.testing.assert_array_equal(record.read_frames(), truth.frames)
            for got, want in zip(record.annotations, truth.annotations, strict=True):
                np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3, rtol=0)
                np.testing.assert_array_equal(got.track_ids, want.track_ids)
                assert (got.segment, got.shot) == (want.segment, want.shot)
    families = {ds.video(v).stream.family for v in ds.splits["train"]}
    assert families == {EDITED, FIXED}  # the fixture covers both


def test_a_streams_dataset_gets_the_detection_sections(streams_bench: Path) -> None:
    from gistgym.feature_cache.build import _resolve_sections
    from gistgym.feature_cache.sections import dataset_kind

    kind = dataset_kind(load_dataset(streams_bench).generator)
    assert kind == "detection"
    assert set(_resolve_sections((), kind)) == {"interleave", "keyframe"}


# ---------------------------------------------------------------------------- the timeline's statistics


def test_family_split_is_half_and_half() -> None:
    families = [plan_stream(0, "train", i).family for i in range(PLANS)]
    assert abs(families.count(EDITED) / PLANS - 0.5) < 0.04  # 3.6 standard errors


def test_fixed_idle_fraction_is_drawn_uniformly_in_the_published_range() -> None:
    cfg = StreamsConfig()
    T = cfg.num_frames
    plans = [p for p in (plan_stream(0, "train", i) for i in range(PLANS)) if p.family == FIXED]
    drawn = np.array([p.idle_fraction for p in plans])
    assert drawn.min() >= IDLE_FRACTION[0] and drawn.max() <= IDLE_FRACTION[1]
    assert abs(drawn.mean() - 0.7) < 0.02 and abs(drawn.std() - 0.4 / np.sqrt(12)) < 0.01  # uniform
    for p in plans:
        # exact up to rounding: round(f T) idle frames, the rest in bursts of at least min_active
        assert abs(p.idle_frames / T - p.idle_fraction) <= 1 / (2 * T)
        assert sum(p.gaps) == p.idle_frames and sum(p.bursts) == T - p.idle_frames
        assert len(p.gaps) == len(p.bursts) + 1 and min(p.bursts) >= cfg.min_active


def test_edited_shot_lengths_are_lognormal_with_the_published_mean_and_sd() -> None:
    """First shots only: a later shot is complete only if it ends before the video does, which favours short ones."""
    cfg = StreamsConfig()
    plans = [p for p in (plan_stream(0, "train", i) for i in range(PLANS)) if p.family == EDITED]
    first = np.array([p.shot_starts[1] if len(p.shot_starts) > 1 else cfg.num_frames for p in plans], float)
    mean = SHOT_MEAN_SECONDS * cfg.fps  # 60 frames
    assert len(first) > 900
    assert abs(first.mean() - mean) < 7  # standard error ~2.3 frames
    assert 0.9 < first.std() / first.mean() < 1.5  # heavy tail: the sample sd is noisy
    # in log space the estimates are tight: sigma^2 = ln(1 + 1.2^2), mu = ln(60) - sigma^2 / 2
    sigma = np.sqrt(np.log1p(SHOT_SD_RATIO**2))
    logs = np.log(first)
    assert abs(logs.std() - sigma) < 0.07 and abs(logs.mean() - (np.log(mean) - sigma**2 / 2)) < 0.1
    # and over every shot of every video (the last one cut by the video's end), a few per video
    shots = np.array([len(p.shot_starts) for p in plans])
    assert 4 < shots.mean() < 9


def test_generated_videos_follow_their_plan(sample: dict[int, StreamVideo]) -> None:
    T = SHORT.num_frames
    for i, video in sample.items():
        plan = plan_stream(SAMPLE_SEED, "val", i, SHORT)
        assert (video.stream.family, video.stream.shot_starts) == (plan.family, plan.shot_starts)
        segments = [a.segment for a in video.annotations]
        shots = np.array([a.shot for a in video.annotations])
        starts = np.array(video.stream.shot_starts)
        np.testing.assert_array_equal(shots, np.searchsorted(starts, np.arange(T), side="right") - 1)
        if video.stream.family == EDITED:
            assert set(segments) == {ACTIVE} and len(starts) > 1
        else:
            # the idle fraction measured on the video is the planned one, exactly
            idle = sum(s in (IDLE, EMPTY) for s in segments)
            assert tuple(starts) == (0,) and idle == plan.idle_frames
            assert IDLE_FRACTION[0] - 1 / (2 * T) <= idle / T <= IDLE_FRACTION[1] + 1 / (2 * T)


def test_spawned_objects_draw_the_imagenet_vid_speed_classes() -> None:
    """Many objects, no rendering: the on-screen speed of each new object, inside or entering, edited or fixed."""
    ranges: list[Any] = [_SEGMENT_PARAMS[k]["speed"] for k in SPEED_CLASSES]
    counts = np.zeros(3)
    for seed in range(4):
        sim = _StreamSimulator(StreamsConfig(), np.random.default_rng(seed))
        for k in range(1000):
            sim.objects = []
            sim._spawn_object(from_edge=k % 2 == 1)
            obj = sim.objects[0]
            speed = np.hypot(obj.vx - sim.pan[0], obj.vy - sim.pan[1])
            (c,) = [c for c, (lo, hi) in enumerate(ranges) if lo <= speed <= hi]
            assert SPEED_CLASSES[c] == sim.speed_class[obj.track_id]
            counts[c] += 1
    np.testing.assert_allclose(counts / counts.sum(), SPEED_SPLIT, atol=0.025)  # standard error <= 0.008


def test_object_speed_classes_follow_imagenet_vid(sample: dict[int, StreamVideo]) -> None:
    """Measured on the annotations: each object's median on-screen speed over active frames, by class.

    Some 130 objects, so only a coarse check of the split (the test above counts thousands).
    """
    ranges: list[Any] = [_SEGMENT_PARAMS[k]["speed"] for k in SPEED_CLASSES]
    counts = np.zeros(3)
    for video in sample.values():
        speeds: dict[int, list[float]] = defaultdict(list)
        for a in video.annotations:
            if a.segment == ACTIVE:
                for track, speed in zip(a.track_ids.tolist(), a.speeds.tolist(), strict=True):
                    speeds[track].append(speed)
        for track, values in speeds.items():
            if video.stream.family == FIXED:  # no camera: every moving frame is exactly in the class's range
                moving = [v for v in values if v > 0]
                classes = {next(c for c, (lo, hi) in enumerate(ranges) if lo <= v <= hi) for v in moving}
                assert len(classes) <= 1, (track, values)
            median = float(np.median(values))
            counts[0 if median < 0.4 else 1 if median < 1.1 else 2] += 1
    assert counts.sum() > 100
    np.testing.assert_allclose(counts / counts.sum(), SPEED_SPLIT, atol=0.1)


# ---------------------------------------------------------------------------- cuts and idle stretches


def _median_change(frames: np.ndarray) -> np.ndarray:
    """Per frame t >= 1: the median over pixels of |frame t - frame t-1| (robust to the few object pixels)."""
    f = frames.astype(np.int16)
    return np.median(np.abs(f[1:] - f[:-1]).reshape(len(f) - 1, -1), axis=1)


def test_a_cut_changes_background_and_objects_at_once(sample: dict[int, StreamVideo]) -> None:
    cuts = within = 0
    for video in of_family(sample, EDITED):
        change = _median_change(video.frames)
        starts = set(video.stream.shot_starts[1:])
        seen: set[int] = set()
        for t in range(1, len(video.frames)):
            ids = set(video.annotations[t].track_ids.tolist())
            if t in starts:
                cuts += 1
                assert change[t - 1] >= 8, (t, change[t - 1])  # a new background
                assert not ids & seen, t  # only fresh objects
            else:
                within += 1
                assert change[t - 1] <= 5, (t, change[t - 1])  # pan, jitter and noise
            seen |= set(video.annotations[t - 1].track_ids.tolist())
    assert cuts > 10 and within > 1000


def test_idle_frames_differ_only_by_sensor_noise(sample: dict[int, StreamVideo]) -> None:
    pairs = 0
    for video in of_family(sample, FIXED):
        frames = video.frames.astype(np.float64)
        for t in range(1, len(frames)):
            before, now = video.annotations[t - 1], video.annotations[t]
            if now.segment == ACTIVE:
                continue
            assert not now.speeds.any()
            # nothing moves: every box stays where the previous frame had it
            for j, track in enumerate(now.track_ids.tolist()):
                if track in before.track_ids:
                    np.testing.assert_array_equal(now.boxes[j], before.boxes[before.track_ids.tolist().index(track)])
            if before.segment == ACTIVE:
                continue  # an object that just stopped loses its motion blur (and may cross the visibility rule)
            np.testing.assert_array_equal(now.boxes, before.boxes)
            np.testing.assert_array_equal(now.track_ids, before.track_ids)
            pairs += 1
            diff = frames[t] - frames[t - 1]
            sd = np.sqrt(2) * SHORT.noise_sigma  # the difference of two independent noise draws
            assert abs(diff.mean()) < 0.3 and 0.85 * sd < diff.std() < 1.1 * sd
            assert np.abs(diff).max() <= 7 * sd
    assert pairs > 500


def test_empty_stretches_have_no_object_and_idle_ones_do(sample: dict[int, StreamVideo]) -> None:
    kinds = set()
    for video in of_family(sample, FIXED):
        for a in video.annotations:
            kinds.add(a.segment)
            if a.segment == EMPTY:
                assert len(a.labels) == 0
    assert kinds >= {ACTIVE, IDLE}


# ---------------------------------------------------------------------------- configuration and command line


def test_streams_must_be_long() -> None:
    with pytest.raises(ConfigError, match="num_frames must be >= 300"):
        StreamsConfig(num_frames=299)


def test_cli_refuses_short_streams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    code = main(["videos", "make", "--kind", "streams", "--out", str(out), "--frames", "120"])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.splitlines()
    assert "--frames" in line and str(MIN_FRAMES) in line and "120" in line
    assert not out.exists()


def test_cli_unknown_kind_lists_the_three_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["videos", "make", "--kind", "movies", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.splitlines()
    assert all(k in line for k in ("detection", "untrimmed", "streams", "'movies'"))


def test_cli_makes_streams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "made"
    sizes = ["--train", "1", "--val", "0", "--test", "0", "--frames", "300"]
    code = main(["videos", "make", "--kind", "streams", "--out", str(out), "--seed", "3", *sizes])
    assert code == 0
    assert "wrote 1 videos" in capsys.readouterr().out
    ds = load_dataset(out)
    assert ds.generator is not None and ds.generator["name"] == STREAMS_GENERATOR
    record = ds.video("train_0000")
    assert record.num_frames == 300 and record.stream == generate_stream_video(3, "train", 0, SHORT).stream


# ---------------------------------------------------------------------------- the reader


@pytest.fixture
def bench(streams_bench: Path, tmp_path: Path) -> Path:
    """A private copy of the session streams benchmark, for tests that break it."""
    return Path(shutil.copytree(streams_bench, tmp_path / "bench"))


def _video_of(bench: Path, family: str) -> str:
    ds = load_dataset(bench)
    return next(v for v in ds.splits["train"] if ds.video(v).stream.family == family)


@pytest.mark.parametrize(
    ("family", "change", "field", "message"),
    [
        (FIXED, lambda d: d["frames"][7].update(segment="calm"), "frames[7].segment", "unknown stretch 'calm'"),
        (FIXED, lambda d: d["frames"][7].pop("segment"), "frames[7].segment", "unknown stretch ''"),
        (EDITED, lambda d: d["frames"][3].update(shot=99), "frames[3].shot", "outside the video's"),
        (EDITED, lambda d: d["frames"][3].update(shot=-1), "frames[3].shot", "outside the video's"),
        (EDITED, lambda d: d["frames"][3].update(shot=1), "frames[3].shot", "lies in shot 0"),
        (EDITED, lambda d: d["frames"][3].pop("shot"), "frames[3].shot", "missing"),
        (EDITED, lambda d: d["stream"]["shot_starts"].append(300), "stream.shot_starts[", "inside the video"),
        (EDITED, lambda d: d["stream"]["shot_starts"].__setitem__(0, 5), "stream.shot_starts", "frame 0"),
        (EDITED, lambda d: d["stream"].update(family="vlog"), "stream.family", "unknown family 'vlog'"),
        (FIXED, lambda d: d.pop("stream"), "stream", "missing"),
        (
            FIXED,
            lambda d: d.update(frames=d["frames"][:5] + [dict(f, frame=i) for i, f in enumerate(d["frames"]) if i > 5]),
            "frames",
            "frame 5 is not listed",
        ),
    ],
)
def test_reader_refuses_bad_stream_annotations(bench: Path, family: str, change: Any, field: str, message: str) -> None:
    vid = _video_of(bench, family)
    ann = bench / vid / ANNOTATION_FILE
    edit_json(ann, change)
    with pytest.raises(AnnotationError, match=message) as exc:
        load_dataset(bench).video(vid)
    assert exc.value.path == ann and str(ann) in str(exc.value)
    assert exc.value.field is not None and exc.value.field.startswith(field)


def test_reader_outside_a_streams_dataset_keeps_stretches_optional(bench: Path) -> None:
    """Another dataset may name its segments freely; its shots are still checked when it gives them."""
    vid = _video_of(bench, EDITED)
    edit_json(bench / DATASET_FILE, lambda d: d.update(generator=None))
    edit_json(bench / vid / ANNOTATION_FILE, lambda d: d["frames"][0].update(segment="calm"))
    record = load_dataset(bench).video(vid)
    assert record.annotations[0].segment == "calm" and record.stream is not None
    edit_json(bench / vid / ANNOTATION_FILE, lambda d: d["frames"][3].update(shot=99))
    with pytest.raises(AnnotationError, match="outside the video's") as exc:
        load_dataset(bench).video(vid)
    assert exc.value.field == "frames[3].shot"
