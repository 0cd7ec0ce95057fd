"""Annotations (issue 19, item 5): a frame count or size that disagrees with the video is an error naming both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gistgym.errors import AnnotationError
from gistgym.scripts.cli import main
from gistgym.videos import dataset
from gistgym.videos.dataset import ANNOTATION_FILE, VIDEO_FILE, load_dataset

FRAMES = 24  # conftest's tiny_bench: 24 frames of 64x64


def edit_json(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def keep_first(n: int) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["num_frames"] = n
        doc["frames"] = doc["frames"][:n]

    return change


def test_annotations_of_fewer_frames_than_the_video_are_refused(bench: Path) -> None:
    ann = bench / "val_0000" / ANNOTATION_FILE
    edit_json(ann, keep_first(12))
    with pytest.raises(AnnotationError) as exc:
        load_dataset(bench).video("val_0000")
    assert exc.value.path == ann and exc.value.field == "num_frames"
    assert f"annotations claim num_frames=12 but the video {VIDEO_FILE} has {FRAMES} frames" in str(exc.value)
    assert str(ann) in str(exc.value) and "\n" not in str(exc.value)


def test_annotations_of_more_frames_than_the_video_are_refused(bench: Path) -> None:
    ann = bench / "val_0000" / ANNOTATION_FILE

    def lengthen(doc: dict[str, Any]) -> None:
        doc["num_frames"] += 6
        doc["frames"] += [{"boxes": [], "labels": [], "segment": "calm"}] * 6

    edit_json(ann, lengthen)
    with pytest.raises(AnnotationError, match=f"claim num_frames={FRAMES + 6} but the video {VIDEO_FILE} has {FRAMES}"):
        load_dataset(bench).video("val_0000")


def test_decoding_catches_a_count_the_container_does_not_tell(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some containers do not record their frame count: decoding the whole video then checks it."""
    ann = bench / "val_0000" / ANNOTATION_FILE
    edit_json(ann, keep_first(12))
    real = dataset.probe_video_file
    monkeypatch.setattr(dataset, "probe_video_file", lambda path: real(path)._replace(num_frames=None))
    record = load_dataset(bench).video("val_0000")  # the header alone cannot tell
    with pytest.raises(AnnotationError) as exc:
        record.read_frames()
    assert exc.value.path == ann
    assert f"annotations claim num_frames=12 but the video {VIDEO_FILE} has {FRAMES} frames" in str(exc.value)
    assert len(record.read_frames(num_frames=12)) == 12  # asking for fewer frames is still fine


def test_annotations_claiming_another_frame_size_are_refused(bench: Path) -> None:
    ann = bench / "val_0000" / ANNOTATION_FILE
    edit_json(ann, lambda d: d.update(width=128, height=128))
    with pytest.raises(AnnotationError) as exc:
        load_dataset(bench).video("val_0000")
    assert exc.value.path == ann and exc.value.field == "width/height"
    assert f"annotations claim 128x128 frames (width x height) but the video {VIDEO_FILE} is 64x64" in str(exc.value)


def test_cache_build_names_the_claim_and_the_video_size(
    bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = bench / "val_0000" / ANNOTATION_FILE
    edit_json(ann, lambda d: d.update(width=128, height=128))
    out = tmp_path / "c.h5"
    assert main(["cache", "build", "--videos", str(bench), "--out", str(out), "--sections", "interleave"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "claim 128x128" in err and "is 64x64" in err, err
    assert "val_0000 of" not in err  # not the old "video val_0000 of DIR is 128x128 but the detector ..."
    assert not out.exists()


def test_cache_build_refuses_a_partly_annotated_video(
    bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_json(bench / "train_0001" / ANNOTATION_FILE, keep_first(10))
    out = tmp_path / "c.h5"
    assert main(["cache", "build", "--videos", str(bench), "--out", str(out), "--sections", "interleave"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"num_frames=10 but the video {VIDEO_FILE} has {FRAMES} frames" in err, err
    assert not out.exists()


def test_sparse_frame_lists_with_the_right_count_still_load(bench: Path) -> None:
    """Listing only some frames (each with its ``frame`` index) is the format's way to skip empty ones."""
    ann = bench / "val_0001" / ANNOTATION_FILE

    def sparse(doc: dict[str, Any]) -> None:
        doc["frames"] = [{**f, "frame": i} for i, f in enumerate(doc["frames"]) if i % 3 == 0]

    edit_json(ann, sparse)
    record = load_dataset(bench).video("val_0001")
    assert record.num_frames == FRAMES and len(record.read_frames()) == FRAMES
