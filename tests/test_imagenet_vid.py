"""The ImageNet VID reader, on a small VID-layout fixture written by the test itself."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from gistgym.errors import AnnotationError, InputFileError, VideoError
from gistgym.videos.imagenet_vid import (
    VID_CLASSES,
    list_vid_snippets,
    load_vid_snippet,
)

W, H = 40, 30
AIRPLANE, CAR, DOG = "n02691156", "n02958343", "n02084071"

# (trackid, wnid, xmin, ymin, xmax, ymax, occluded, generated): inclusive VID coordinates
Obj = tuple[int, str, int, int, int, int, int, int]

SNIPPETS: dict[str, list[list[Obj]]] = {
    "snipA": [
        [(0, AIRPLANE, 2, 3, 11, 12, 0, 0), (1, CAR, 20, 5, 39, 29, 0, 0)],
        # track 0 moves 2 px right; track 1 has the common off-by-one (xmax == W, ymax == H)
        [(0, AIRPLANE, 4, 3, 13, 12, 0, 0), (1, CAR, 20, 5, 40, 30, 1, 0)],
        [],
        # track 0 comes back after a frame without it; track 2 is a one-pixel box
        [(0, AIRPLANE, 4, 7, 13, 16, 0, 0), (2, AIRPLANE, 0, 0, 0, 0, 0, 1)],
    ],
    "group/snipB": [
        [(5, DOG, 10, 10, 19, 19, 0, 0)],
        [(5, DOG, 13, 14, 22, 23, 0, 0)],
        [(5, DOG, 13, 14, 22, 23, 0, 0)],
    ],
}


def frame_xml(objects: list[Obj], *, width: int = W, height: int = H) -> str:
    parts = [
        "<annotation>",
        "  <folder>snippet</folder>",
        "  <filename>000000</filename>",
        "  <source><database>ILSVRC_2015</database></source>",
        f"  <size><width>{width}</width><height>{height}</height></size>",
    ]
    for tid, name, x0, y0, x1, y1, occ, gen in objects:
        parts += [
            "  <object>",
            f"    <trackid>{tid}</trackid>",
            f"    <name>{name}</name>",
            f"    <bndbox><xmax>{x1}</xmax><xmin>{x0}</xmin><ymax>{y1}</ymax><ymin>{y0}</ymin></bndbox>",
            f"    <occluded>{occ}</occluded>",
            f"    <generated>{gen}</generated>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def write_jpeg(path: Path, image: np.ndarray) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height = image.shape[1], image.shape[0]
        stream.pix_fmt = "yuvj420p"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def grey(t: int, height: int = H, width: int = W) -> np.ndarray:
    return np.full((height, width, 3), 40 + 50 * t, dtype=np.uint8)


def make_vid(root: Path, split: str = "val") -> Path:
    for snippet, frames in SNIPPETS.items():
        ann = root / "Annotations" / "VID" / split / snippet
        data = root / "Data" / "VID" / split / snippet
        ann.mkdir(parents=True)
        for t, objects in enumerate(frames):
            (ann / f"{t:06d}.xml").write_text(frame_xml(objects))
            write_jpeg(data / f"{t:06d}.JPEG", grey(t))
    return root


@pytest.fixture(scope="module")
def vid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only two-snippet VID fixture shared by the tests that do not break it."""
    return make_vid(tmp_path_factory.mktemp("vid"))


@pytest.fixture
def vid_copy(vid_root: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture, for tests that corrupt it."""
    return Path(shutil.copytree(vid_root, tmp_path / "vid"))


def ann_path(root: Path, snippet: str, t: int, split: str = "val") -> Path:
    return root / "Annotations" / "VID" / split / snippet / f"{t:06d}.xml"


def img_path(root: Path, snippet: str, t: int, split: str = "val") -> Path:
    return root / "Data" / "VID" / split / snippet / f"{t:06d}.JPEG"


def assert_names(exc: InputFileError, path: Path) -> None:
    assert exc.path == path
    assert str(path) in str(exc)


# ---------------------------------------------------------------------------- parsing


def test_list_snippets_finds_nested_folders(vid_root: Path) -> None:
    assert list_vid_snippets(vid_root, "val") == ["group/snipB", "snipA"]


def test_boxes_labels_tracks_parsed_exactly(vid_root: Path) -> None:
    s = load_vid_snippet(vid_root, "val", "snipA")
    assert s.video_id == "snipA"
    assert (s.height, s.width, s.num_frames) == (H, W, 4)
    assert s.classes == (AIRPLANE, CAR)  # sorted wnids found in the snippet
    assert s.frame_paths == tuple(img_path(vid_root, "snipA", t) for t in range(4))
    a = s.annotations
    assert len(a) == 4
    # inclusive -> exclusive: x1 = xmax + 1, y1 = ymax + 1, clipped to the 40x30 frame
    np.testing.assert_array_equal(a[0].boxes, np.array([[2, 3, 12, 13], [20, 5, 40, 30]], np.float32))
    np.testing.assert_array_equal(a[1].boxes, np.array([[4, 3, 14, 13], [20, 5, 40, 30]], np.float32))
    assert a[2].boxes.shape == (0, 4)
    np.testing.assert_array_equal(a[3].boxes, np.array([[4, 7, 14, 17], [0, 0, 1, 1]], np.float32))
    for ann in a:
        assert ann.boxes.dtype == np.float32
        assert ann.labels.dtype == np.int64
        assert ann.track_ids.dtype == np.int64
        assert ann.speeds.dtype == np.float32
        assert ann.segment == ""
    assert a[0].labels.tolist() == [0, 1]
    assert a[0].track_ids.tolist() == [0, 1]
    assert a[1].track_ids.tolist() == [0, 1]
    assert a[2].labels.tolist() == [] and a[2].track_ids.tolist() == []
    assert a[3].labels.tolist() == [0, 0]
    assert a[3].track_ids.tolist() == [0, 2]
    assert [o.tolist() for o in s.occluded] == [[False, False], [False, True], [], [False, False]]
    assert [g.tolist() for g in s.generated] == [[False, False], [False, False], [], [False, True]]


def test_labels_follow_the_given_class_list(vid_root: Path) -> None:
    s = load_vid_snippet(vid_root, "val", "snipA", classes=VID_CLASSES)
    assert s.classes == VID_CLASSES
    assert s.annotations[0].labels.tolist() == [0, 6]  # airplane, car in the VID order
    b = load_vid_snippet(vid_root, "val", "group/snipB", classes=VID_CLASSES)
    assert b.video_id == "group/snipB"
    assert [x.labels.tolist() for x in b.annotations] == [[8], [8], [8]]  # dog


def test_speeds_from_track_centre_displacement(vid_root: Path) -> None:
    a = load_vid_snippet(vid_root, "val", "snipA").annotations
    assert np.isnan(a[0].speeds).all()  # first appearance of both tracks
    # track 0 centre (7, 8) -> (9, 8); track 1 identical after clipping
    np.testing.assert_allclose(a[1].speeds, [2.0, 0.0])
    assert a[2].speeds.shape == (0,)
    # track 0 is back after an empty frame and track 2 is new: no previous position
    assert np.isnan(a[3].speeds).all() and a[3].speeds.shape == (2,)
    b = load_vid_snippet(vid_root, "val", "group/snipB").annotations
    assert math.isnan(float(b[0].speeds[0]))
    np.testing.assert_allclose(b[1].speeds, [5.0])  # moved (3, 4)
    np.testing.assert_allclose(b[2].speeds, [0.0])


def test_read_frames_decodes_every_frame_in_order(vid_root: Path) -> None:
    s = load_vid_snippet(vid_root, "val", "snipA")
    frames = s.read_frames()
    assert frames.shape == (4, H, W, 3) and frames.dtype == np.uint8
    means = frames.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(means, [40, 90, 140, 190], atol=3)  # JPEG is lossy
    assert s.read_frames(num_frames=2).shape == (2, H, W, 3)


# ---------------------------------------------------------------------------- bad input


def test_missing_annotations_dir(tmp_path: Path) -> None:
    expected = tmp_path / "Annotations" / "VID" / "val"
    with pytest.raises(AnnotationError) as exc:
        list_vid_snippets(tmp_path, "val")
    assert_names(exc.value, expected)
    with pytest.raises(AnnotationError) as exc:
        load_vid_snippet(tmp_path, "val", "snipA")
    assert_names(exc.value, expected)


def test_missing_split(vid_root: Path) -> None:
    with pytest.raises(AnnotationError) as exc:
        load_vid_snippet(vid_root, "train", "snipA")
    assert_names(exc.value, vid_root / "Annotations" / "VID" / "train")


def test_missing_snippet(vid_root: Path) -> None:
    with pytest.raises(AnnotationError, match="does not exist") as exc:
        load_vid_snippet(vid_root, "val", "nope")
    assert_names(exc.value, vid_root / "Annotations" / "VID" / "val" / "nope")


def test_malformed_xml(vid_copy: Path) -> None:
    bad = ann_path(vid_copy, "snipA", 1)
    bad.write_text("<annotation><size><width>40</width>")
    with pytest.raises(AnnotationError, match="malformed XML") as exc:
        load_vid_snippet(vid_copy, "val", "snipA")
    assert_names(exc.value, bad)


def test_xml_without_size(vid_copy: Path) -> None:
    bad = ann_path(vid_copy, "snipA", 2)
    bad.write_text("<annotation><folder>x</folder></annotation>")
    with pytest.raises(AnnotationError, match="size") as exc:
        load_vid_snippet(vid_copy, "val", "snipA")
    assert_names(exc.value, bad)
    assert exc.value.field == "size"


def test_xml_size_without_height(vid_copy: Path) -> None:
    bad = ann_path(vid_copy, "snipA", 0)
    bad.write_text("<annotation><size><width>40</width></size></annotation>")
    with pytest.raises(AnnotationError) as exc:
        load_vid_snippet(vid_copy, "val", "snipA")
    assert_names(exc.value, bad)
    assert exc.value.field == "size/height"


def test_box_outside_the_frame(vid_copy: Path) -> None:
    bad = ann_path(vid_copy, "group/snipB", 1)
    bad.write_text(frame_xml([(5, DOG, 30, 10, 45, 19, 0, 0)]))  # xmax 45 > width 40
    with pytest.raises(AnnotationError, match="outside the 40x30 frame") as exc:
        load_vid_snippet(vid_copy, "val", "group/snipB")
    assert_names(exc.value, bad)
    assert exc.value.field == "object[0]/bndbox"


def test_negative_box_coordinate(vid_copy: Path) -> None:
    bad = ann_path(vid_copy, "group/snipB", 0)
    bad.write_text(frame_xml([(5, DOG, 3, -2, 9, 9, 0, 0)]))
    with pytest.raises(AnnotationError, match="outside") as exc:
        load_vid_snippet(vid_copy, "val", "group/snipB")
    assert_names(exc.value, bad)


def test_inverted_box(vid_copy: Path) -> None:
    bad = ann_path(vid_copy, "group/snipB", 2)
    bad.write_text(frame_xml([(5, DOG, 20, 10, 12, 19, 0, 0)]))  # xmax < xmin
    with pytest.raises(AnnotationError, match="empty") as exc:
        load_vid_snippet(vid_copy, "val", "group/snipB")
    assert_names(exc.value, bad)


def test_box_missing_a_coordinate(vid_copy: Path) -> None:
    bad = ann_path(vid_copy, "group/snipB", 0)
    bad.write_text(frame_xml([(5, DOG, 1, 1, 9, 9, 0, 0)]).replace("<ymin>1</ymin>", ""))
    with pytest.raises(AnnotationError) as exc:
        load_vid_snippet(vid_copy, "val", "group/snipB")
    assert_names(exc.value, bad)
    assert exc.value.field == "object[0]/bndbox/ymin"


def test_annotation_without_frame_image(vid_copy: Path) -> None:
    image = img_path(vid_copy, "snipA", 2)
    image.unlink()
    with pytest.raises(AnnotationError, match="does not exist") as exc:
        load_vid_snippet(vid_copy, "val", "snipA")
    assert_names(exc.value, ann_path(vid_copy, "snipA", 2))
    assert str(image) in str(exc.value)


def test_unknown_class_with_given_classes(vid_root: Path) -> None:
    with pytest.raises(AnnotationError, match=CAR) as exc:
        load_vid_snippet(vid_root, "val", "snipA", classes=[AIRPLANE])
    assert_names(exc.value, ann_path(vid_root, "snipA", 0))
    assert exc.value.field == "object[1]/name"


def test_empty_snippet(vid_copy: Path) -> None:
    empty = vid_copy / "Annotations" / "VID" / "val" / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no xml here")
    with pytest.raises(AnnotationError, match="empty snippet") as exc:
        load_vid_snippet(vid_copy, "val", "empty")
    assert_names(exc.value, empty)
    assert "empty" not in list_vid_snippets(vid_copy, "val")


def test_gap_in_frame_numbers(vid_copy: Path) -> None:
    ann_path(vid_copy, "snipA", 1).unlink()
    with pytest.raises(AnnotationError, match="jump from 0 to 2") as exc:
        load_vid_snippet(vid_copy, "val", "snipA")
    assert_names(exc.value, vid_copy / "Annotations" / "VID" / "val" / "snipA")


def test_frames_of_different_sizes(vid_copy: Path) -> None:
    bad = ann_path(vid_copy, "group/snipB", 2)
    bad.write_text(frame_xml([], width=64, height=48))
    with pytest.raises(AnnotationError, match="differs") as exc:
        load_vid_snippet(vid_copy, "val", "group/snipB")
    assert_names(exc.value, bad)


def test_corrupt_frame_image(vid_copy: Path) -> None:
    image = img_path(vid_copy, "group/snipB", 1)
    image.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    s = load_vid_snippet(vid_copy, "val", "group/snipB")  # annotations alone still load
    with pytest.raises(VideoError) as exc:
        s.read_frames()
    assert_names(exc.value, image)


def test_frame_image_of_wrong_size(vid_copy: Path) -> None:
    image = img_path(vid_copy, "group/snipB", 0)
    write_jpeg(image, grey(0, height=32, width=48))
    s = load_vid_snippet(vid_copy, "val", "group/snipB")
    with pytest.raises(VideoError, match="48x32") as exc:
        s.read_frames()
    assert_names(exc.value, image)


def test_more_frames_requested_than_the_snippet_has(vid_root: Path) -> None:
    s = load_vid_snippet(vid_root, "val", "group/snipB")
    with pytest.raises(VideoError, match="requested 4 frames"):
        s.read_frames(num_frames=4)
