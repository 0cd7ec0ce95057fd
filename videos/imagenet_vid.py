"""Reader for the ImageNet VID (ILSVRC2015 VID) folder layout.

Layout::

    ROOT/
      Annotations/VID/<split>/<snippet>/<frame:06d>.xml   PASCAL-VOC-style XML, one per frame
      Data/VID/<split>/<snippet>/<frame:06d>.JPEG         the frame images

``<snippet>`` may be nested (the train split has ``ILSVRC2015_VID_train_0000/<snippet>``).
Each XML holds ``<size><width>/<height>`` and zero or more ``<object>`` with ``<trackid>``,
``<name>`` (a WordNet id such as ``n02691156``), ``<bndbox>`` (``xmin ymin xmax ymax``,
*inclusive* pixel coordinates), ``<occluded>`` and ``<generated>``.

The frames of a snippet are its annotation files: they must be numbered consecutively, and
each one must have its frame image. Frame images without an annotation file are ignored.
Boxes are converted to the gistgym convention (``x1``/``y1`` exclusive) by adding one to
``xmax``/``ymax`` and clipping to the frame; a box may reach one pixel past the frame (a
common off-by-one in the VID annotations), anything further is an error.
"""

from __future__ import annotations

import itertools
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gistgym.errors import AnnotationError, VideoError
from gistgym.videos.synthetic import FrameAnnotation

VID_CLASSES: tuple[str, ...] = (
    "n02691156", "n02419796", "n02131653", "n02834778", "n01503061", "n02924116",
    "n02958343", "n02402425", "n02084071", "n02121808", "n02503517", "n02118333",
    "n02510455", "n02342885", "n02374451", "n02129165", "n01674464", "n02484322",
    "n03790512", "n02324045", "n02509815", "n02411705", "n01726692", "n02355227",
    "n02129604", "n04468005", "n01662784", "n04530566", "n02062744", "n02391049",
)  # fmt: skip
"""The 30 WordNet ids of the VID challenge, in the usual order (pass as ``classes``)."""

VID_CLASS_NAMES: tuple[str, ...] = (
    "airplane", "antelope", "bear", "bicycle", "bird", "bus", "car", "cattle", "dog",
    "domestic_cat", "elephant", "fox", "giant_panda", "hamster", "horse", "lion", "lizard",
    "monkey", "motorcycle", "rabbit", "red_panda", "sheep", "snake", "squirrel", "tiger",
    "train", "turtle", "watercraft", "whale", "zebra",
)  # fmt: skip
"""Readable names of :data:`VID_CLASSES`, index for index."""

ANNOTATION_SUBDIR = Path("Annotations") / "VID"
DATA_SUBDIR = Path("Data") / "VID"
IMAGE_SUFFIX = ".JPEG"


@dataclass(frozen=True)
class _RawObject:
    track_id: int
    name: str
    box: tuple[float, float, float, float]  # exclusive x1/y1, clipped
    occluded: bool
    generated: bool


@dataclass(frozen=True)
class VidSnippet:
    """One VID snippet: its frame images, size and per-frame ground truth.

    Attributes:
        video_id: The snippet's path below the split folder (``/``-separated).
        frame_paths: One JPEG per frame, in frame order.
        height: Frame height in pixels.
        width: Frame width in pixels.
        annotations: One annotation per frame; boxes are ``[x0, y0, x1, y1]`` with ``x1``/``y1``
            exclusive, labels index into ``classes``, speeds are the track centre's
            displacement from the previous frame in px (nan where the track is not in the
            previous frame), ``segment`` is ``""``.
        classes: The WordNet ids that the labels index.
        occluded: Per frame, the ``<occluded>`` flag of each object (False when absent).
        generated: Per frame, the ``<generated>`` flag of each object (False when absent).
    """

    video_id: str
    frame_paths: tuple[Path, ...] = field(repr=False)
    height: int
    width: int
    annotations: tuple[FrameAnnotation, ...] = field(repr=False)
    classes: tuple[str, ...] = field(repr=False)
    occluded: tuple[np.ndarray, ...] = field(repr=False, default=())
    generated: tuple[np.ndarray, ...] = field(repr=False, default=())

    @property
    def num_frames(self) -> int:
        """Number of frames of the snippet."""
        return len(self.frame_paths)

    def read_frames(self, num_frames: int | None = None) -> np.ndarray:
        """Decode the frame images.

        Args:
            num_frames: Decode only the first ``num_frames`` frames (error if there are fewer).

        Returns:
            A (T, H, W, 3) uint8 RGB array.

        Raises:
            VideoError: An image is missing, not decodable, or of another size than annotated,
                or more frames are requested than the snippet has.
        """
        want = self.num_frames if num_frames is None else num_frames
        if not 1 <= want <= self.num_frames:
            where = self.frame_paths[0].parent if self.frame_paths else Path(self.video_id)
            raise VideoError(
                where,
                f"requested {want} frames but the snippet has {self.num_frames}",
                field="num_frames",
            )
        out = np.empty((want, self.height, self.width, 3), dtype=np.uint8)
        for t, path in enumerate(self.frame_paths[:want]):
            image = read_image(path)
            if image.shape[:2] != (self.height, self.width):
                raise VideoError(
                    path,
                    f"image is {image.shape[1]}x{image.shape[0]} but the annotation says {self.width}x{self.height}",
                    field="width/height",
                )
            out[t] = image
        return out


def read_image(path: str | Path) -> np.ndarray:
    """Decode one image file (JPEG or anything else FFmpeg reads) to (H, W, 3) uint8 RGB.

    Args:
        path: The image file.

    Returns:
        The decoded image.

    Raises:
        VideoError: The file is missing or cannot be decoded.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "image file does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "file holds no image")
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise VideoError(path, "file holds no decodable image (empty or corrupt)")
            return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(path, f"cannot decode image (corrupt or truncated?): {exc}") from exc


def _split_dir(root: Path, split: str) -> Path:
    folder = root / ANNOTATION_SUBDIR / split
    if not folder.is_dir():
        raise AnnotationError(folder, f"annotation folder does not exist (expected ROOT/{ANNOTATION_SUBDIR}/<split>)")
    return folder


def list_vid_snippets(root: str | Path, split: str) -> list[str]:
    """List the snippets of one split, in sorted order.

    A snippet is any folder below ``ROOT/Annotations/VID/<split>`` that directly holds
    ``.xml`` files; nested folders (as in the train split) are returned as ``a/b`` paths.

    Args:
        root: The VID root folder (holding ``Annotations`` and ``Data``).
        split: ``train``, ``val``, ``test`` or any other split folder.

    Returns:
        Snippet names, each usable as the ``snippet`` argument of :func:`load_vid_snippet`.

    Raises:
        AnnotationError: The split's annotation folder does not exist.
    """
    base = _split_dir(Path(root), split)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        if any(name.lower().endswith(".xml") for name in filenames):
            found.append(Path(dirpath).relative_to(base).as_posix())
    return sorted(s for s in found if s != ".")


def _text(elem: ET.Element, tag: str, path: Path, where: str) -> str:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise AnnotationError(path, f"missing <{tag}>", field=f"{where}{tag}")
    return child.text.strip()


def _int(elem: ET.Element, tag: str, path: Path, where: str) -> int:
    text = _text(elem, tag, path, where)
    try:
        return int(text)
    except ValueError:
        raise AnnotationError(path, f"expected an integer, got {text!r}", field=f"{where}{tag}") from None


def _number(elem: ET.Element, tag: str, path: Path, where: str) -> float:
    text = _text(elem, tag, path, where)
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(path, f"expected a number, got {text!r}", field=f"{where}{tag}") from None
    if not math.isfinite(value):
        raise AnnotationError(path, f"expected a finite number, got {text!r}", field=f"{where}{tag}")
    return value


def _flag(elem: ET.Element, tag: str, path: Path, where: str) -> bool:
    if elem.find(tag) is None:
        return False
    value = _int(elem, tag, path, where)
    if value not in (0, 1):
        raise AnnotationError(path, f"expected 0 or 1, got {value}", field=f"{where}{tag}")
    return value == 1


def _parse_frame_xml(path: Path) -> tuple[int, int, list[_RawObject]]:
    """Parse one frame's XML into (width, height, objects)."""
    try:
        doc = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(path, f"malformed XML: {exc}") from exc
    except OSError as exc:
        raise AnnotationError(path, f"cannot read annotation file: {exc}") from exc
    size = doc.find("size")
    if size is None:
        raise AnnotationError(path, "missing <size> (expected <size><width>W</width>...)", field="size")
    width = _int(size, "width", path, "size/")
    height = _int(size, "height", path, "size/")
    if width < 1 or height < 1:
        raise AnnotationError(path, f"frame size must be positive, got {width}x{height}", field="size")
    objects: list[_RawObject] = []
    seen: set[int] = set()
    for i, obj in enumerate(doc.findall("object")):
        where = f"object[{i}]/"
        track_id = _int(obj, "trackid", path, where)
        if track_id in seen:
            raise AnnotationError(path, f"track id {track_id} appears twice in one frame", field=f"{where}trackid")
        seen.add(track_id)
        name = _text(obj, "name", path, where)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(path, "missing <bndbox>", field=f"{where}bndbox")
        bw = f"{where}bndbox/"
        xmin, ymin = _number(bndbox, "xmin", path, bw), _number(bndbox, "ymin", path, bw)
        xmax, ymax = _number(bndbox, "xmax", path, bw), _number(bndbox, "ymax", path, bw)
        box_text = f"[xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}]"
        # inclusive coordinates: pixel columns xmin..xmax; xmax == width is a tolerated off-by-one
        if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
            raise AnnotationError(
                path,
                f"box {box_text} lies outside the {width}x{height} frame",
                field=f"{where}bndbox",
            )
        x0, y0 = xmin, ymin
        x1, y1 = min(xmax + 1, float(width)), min(ymax + 1, float(height))
        if x1 <= x0 or y1 <= y0:
            raise AnnotationError(
                path,
                f"box {box_text} is empty (xmax < xmin or ymax < ymin, or nothing left "
                f"inside the {width}x{height} frame)",
                field=f"{where}bndbox",
            )
        objects.append(
            _RawObject(
                track_id=track_id,
                name=name,
                box=(x0, y0, x1, y1),
                occluded=_flag(obj, "occluded", path, where),
                generated=_flag(obj, "generated", path, where),
            )
        )
    return width, height, objects


def load_vid_snippet(root: str | Path, split: str, snippet: str, classes: Sequence[str] | None = None) -> VidSnippet:
    """Load and validate the annotations of one VID snippet (frames are decoded on demand).

    Args:
        root: The VID root folder (holding ``Annotations`` and ``Data``).
        split: The split folder, e.g. ``train`` or ``val``.
        snippet: The snippet's path below the split folder (as :func:`list_vid_snippets` gives).
        classes: WordNet ids the labels index (e.g. :data:`VID_CLASSES`); a name outside it
            is an error. ``None`` uses the sorted ids that occur in this snippet.

    Returns:
        The snippet with one :class:`FrameAnnotation` per frame.

    Raises:
        AnnotationError: The annotation folder is missing or holds no XML files, an XML file
            is malformed or lacks ``<size>`` or a box field, frames differ in size, a box lies
            outside the frame or is empty, a class name is not in ``classes``, frame numbers
            have gaps, or an annotation names a frame whose image does not exist.
    """
    root = Path(root)
    folder = _split_dir(root, split) / snippet
    if not folder.is_dir():
        raise AnnotationError(folder, "snippet annotation folder does not exist")
    xmls = [p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file()]
    if not xmls:
        raise AnnotationError(folder, "snippet has no annotation (.xml) files (empty snippet)")
    numbered: list[tuple[int, Path]] = []
    for p in xmls:
        if not p.stem.isdigit():
            raise AnnotationError(p, "annotation file name must be a frame number like 000000.xml")
        numbered.append((int(p.stem), p))
    numbered.sort()
    for (a, pa), (b, _pb) in itertools.pairwise(numbered):
        if b == a:
            raise AnnotationError(pa, f"frame {a} has more than one annotation file")
        if b != a + 1:
            raise AnnotationError(folder, f"frame numbers jump from {a} to {b} (frames must be consecutive)")

    image_dir = root / DATA_SUBDIR / split / snippet
    parsed: list[tuple[int, int, list[_RawObject]]] = []
    frame_paths: list[Path] = []
    for _index, xml_path in numbered:
        width, height, objects = _parse_frame_xml(xml_path)
        image = image_dir / f"{xml_path.stem}{IMAGE_SUFFIX}"
        if not image.is_file():
            raise AnnotationError(xml_path, f"names a frame whose image {image} does not exist", field="frame")
        if parsed and (width, height) != parsed[0][:2]:
            raise AnnotationError(
                xml_path,
                f"frame size {width}x{height} differs from the snippet's {parsed[0][0]}x{parsed[0][1]}",
                field="size",
            )
        parsed.append((width, height, objects))
        frame_paths.append(image)

    if classes is None:
        class_list = tuple(sorted({o.name for _w, _h, objs in parsed for o in objs}))
    else:
        class_list = tuple(str(c) for c in classes)
    index_of = {name: i for i, name in enumerate(class_list)}

    annotations: list[FrameAnnotation] = []
    occluded: list[np.ndarray] = []
    generated: list[np.ndarray] = []
    previous: dict[int, tuple[float, float]] = {}
    for (_index, xml_path), (_w, _h, objects) in zip(numbered, parsed, strict=True):
        labels: list[int] = []
        for i, o in enumerate(objects):
            if o.name not in index_of:
                raise AnnotationError(
                    xml_path,
                    f"unknown class {o.name!r} (not among the {len(class_list)} given classes)",
                    field=f"object[{i}]/name",
                )
            labels.append(index_of[o.name])
        centres = {o.track_id: ((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for o in objects}
        speeds = [
            math.hypot(cx - previous[k][0], cy - previous[k][1]) if k in previous else math.nan
            for k, (cx, cy) in centres.items()
        ]
        previous = centres
        annotations.append(
            FrameAnnotation(
                boxes=np.asarray([o.box for o in objects], dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64),
                track_ids=np.asarray([o.track_id for o in objects], dtype=np.int64),
                speeds=np.asarray(speeds, dtype=np.float32),
                segment="",
            )
        )
        occluded.append(np.asarray([o.occluded for o in objects], dtype=bool))
        generated.append(np.asarray([o.generated for o in objects], dtype=bool))

    return VidSnippet(
        video_id=Path(snippet).as_posix(),
        frame_paths=tuple(frame_paths),
        height=parsed[0][1],
        width=parsed[0][0],
        annotations=tuple(annotations),
        classes=class_list,
        occluded=tuple(occluded),
        generated=tuple(generated),
    )
