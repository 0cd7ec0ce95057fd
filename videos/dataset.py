"""The on-disk video dataset format, its writer and its reader.

Layout (``FORMAT_VERSION`` 1)::

    DIR/
      dataset.json            {"format": "gistgym-videos", "format_version": 1,
                               "classes": [...], "splits": {"train": [ids], ...},
                               "generator": {...} or null}
      <video_id>/
        video.mp4             any container/codec PyAV decodes; the benchmark writes
                              lossless H.264 RGB (libx264rgb, crf 0) so fine textures survive
        annotations.json      {"format_version": 1, "video_id": str, "num_frames": int,
                               "height": int, "width": int, "fps": float, "label": int,
                               "stream": {"family": str, "shot_starts": [int, ...]},  (optional)
                               "frames": [{"boxes": [[x0, y0, x1, y1], ...],
                                           "labels": [int, ...],
                                           "track_ids": [int, ...],     (optional)
                                           "speeds": [float, ...],      (optional)
                                           "segment": str,              (optional)
                                           "shot": int}, ...]}          (optional)

Boxes are pixels, ``x1``/``y1`` exclusive. A user's own videos load through the same reader
when written in this layout; ``frames`` may list fewer entries than ``num_frames`` only by
giving each entry an explicit ``"frame": index`` (frames not listed have no objects).
``num_frames``, ``height`` and ``width`` must be the video's own: a record is checked against
the video file's header when it loads, and the frame count again when the whole video is
decoded, so a mismatch is an :class:`~gistgym.errors.AnnotationError` naming both numbers,
never a silently truncated video.
Every write goes to a temporary name first and is renamed into place, so a crash never
leaves a file that looks complete.

A streams dataset (``gistgym videos make --kind streams``, generator ``gistgym.streams``)
must give every video a ``stream`` entry (family, increasing shot starts from 0 inside the
video) and every frame a known stretch name as its ``segment`` and the ``shot`` it lies in;
in any other dataset ``stream`` and ``shot`` are optional and checked when present.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gistgym.errors import AnnotationError, VideoError
from gistgym.staging import new_staging_file
from gistgym.videos.streams import FAMILIES, STREAMS_GENERATOR, STRETCHES, StreamAnnotation
from gistgym.videos.synthetic import FrameAnnotation

FORMAT_NAME = "gistgym-videos"
FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
VIDEO_FILE = "video.mp4"
ANNOTATION_FILE = "annotations.json"


def new_temp_file(directory: Path, prefix: str, suffix: str = "") -> Path:
    """Create an empty, uniquely named file to write into and later rename into place.

    Unlike a bare ``mkstemp`` (mode 0600), the file gets the permissions of any other new
    file (0666 minus the umask), so what is renamed into place is readable by others.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(name, 0o666 & ~mask)
    return Path(name)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    The temporary file is a staging sibling (:mod:`gistgym.staging`): if this process is
    killed mid-write, the next command writing ``path`` through :func:`~gistgym.staging.check_output`
    removes it.
    """
    tmp = new_staging_file(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def nan_to_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float (inside dicts, lists and tuples too) as ``None``.

    For results where a number can legitimately be missing, which JSON writes as ``null``:
    an evaluation's mAP on videos without ground truth, a comparison's margin or captured
    share where no run or curve reaches the fractions (``results.json``), the scores of a
    training run's evaluations (``eval.json``), DFF's per-duration report. Everything
    else (``config.json``, sidecars, annotations) is written as it is, and a NaN there is
    an error (:func:`json_text`). Tuples become lists, as JSON writes them anyway.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: nan_to_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_null(v) for v in value]
    return value


def _first_non_finite(value: Any, where: str = "") -> tuple[str, float] | None:
    """The key path (``a.b[1]``) and value of the first NaN or infinite float in ``value``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where or "the value", value)
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    for key, v in items:
        found = _first_non_finite(v, key)
        if found is not None:
            return found
    return None


def json_text(obj: Any, *, indent: int | None = None, where: str | os.PathLike[str] = "") -> str:
    """``obj`` as strict JSON text: every file and ``--json`` line gistgym writes goes through here.

    ``NaN`` and ``Infinity`` are not JSON (``json.loads`` of other languages refuses them);
    pass a value that may be missing through :func:`nan_to_null` first.

    Raises:
        ValueError: ``obj`` holds a NaN or infinite float (the message names ``where`` and the key).
    """
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        found = _first_non_finite(obj)
        if found is None:
            raise
        key, value = found
        raise ValueError(
            f"{where or 'JSON'}: {key} is {value}; JSON has no NaN or Infinity (a missing number is written as null)"
        ) from None


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (:func:`json_text`), atomically.

    Raises:
        ValueError: ``obj`` holds a NaN or infinite float; nothing is written.
    """
    atomic_write_bytes(path, (json_text(obj, indent=1, where=path) + "\n").encode())


def write_video_file(path: Path, frames: np.ndarray, fps: int = 15) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames losslessly (H.264 RGB, crf 0) into ``path``.

    The encoder runs single-threaded so the same frames always give the same bytes.
    """
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(path, f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise VideoError(path, "refusing to write an empty video (0 frames)")
    tmp = str(new_temp_file(path.parent, f".{path.stem}.", path.suffix))
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264rgb", rate=Fraction(fps))
            stream.width = frames.shape[2]
            stream.height = frames.shape[1]
            stream.pix_fmt = "rgb24"
            stream.options = {"crf": "0", "preset": "medium", "threads": "1"}
            stream.codec_context.thread_count = 1
            for image in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_video_file(path: Path, *, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file into a (T, H, W, 3) uint8 RGB array.

    Raises:
        VideoError: The file is missing, not a video, truncated/corrupt, or has no frames.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "video file does not exist")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(path, f"cannot decode video (corrupt or truncated?): {exc}") from exc
    if not frames:
        raise VideoError(path, "video has no decodable frames (empty or corrupt)")
    return np.stack(frames)


class VideoProbe(NamedTuple):
    """What a video file's header says, without decoding it."""

    num_frames: int | None
    """Frames recorded in the container (``None`` where the container does not record a count)."""
    height: int
    width: int


def probe_video_file(path: Path) -> VideoProbe | None:
    """The frame count and size a video file's header records (``None`` if the header cannot be read).

    Cheap (no frame is decoded). A file whose header cannot be read is reported when its
    frames are decoded (:func:`read_video_file`), with the decoder's reason.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            height, width = int(stream.codec_context.height), int(stream.codec_context.width)
            frames = int(stream.frames or 0)
    except (av.error.FFmpegError, OSError, ValueError):
        return None
    if height < 1 or width < 1:
        return None
    return VideoProbe(frames if frames > 0 else None, height, width)


def _frame_count_mismatch(annotations: Path, video: Path, claimed: int, actual: int) -> AnnotationError:
    """Annotations of ``claimed`` frames on a video of ``actual`` (which number is whose, in the message)."""
    return AnnotationError(
        annotations,
        f"annotations claim num_frames={claimed} but the video {video.name} has {actual} frames "
        "(num_frames counts every frame of the video)",
        field="num_frames",
    )


def _check_against_header(annotations: Path, video: Path, claimed: tuple[int, int, int], header: VideoProbe) -> None:
    """Refuse annotations whose ``(num_frames, height, width)`` the video's header contradicts.

    Raises:
        AnnotationError: Naming the annotations' claim and the video's own number.
    """
    n, height, width = claimed
    if (header.height, header.width) != (height, width):
        raise AnnotationError(
            annotations,
            f"annotations claim {width}x{height} frames (width x height) but the video {video.name} is "
            f"{header.width}x{header.height}",
            field="width/height",
        )
    if header.num_frames is not None and header.num_frames != n:
        raise _frame_count_mismatch(annotations, video, n, header.num_frames)


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset: where it is, its size and its ground truth."""

    video_id: str
    path: Path
    num_frames: int
    height: int
    width: int
    fps: float
    label: int
    annotations: tuple[FrameAnnotation, ...] = field(repr=False)
    stream: StreamAnnotation | None = field(default=None, repr=False)
    """Family and shot starts of a stream (``None`` outside the streams benchmark)."""

    def read_frames(self, num_frames: int | None = None) -> np.ndarray:
        """Decode the frames, checking the count against the annotations.

        Reading the whole video (``num_frames=None``) also refuses a video with more frames
        than annotated, so frames the annotations do not describe are never dropped silently.

        Args:
            num_frames: Read only the first ``num_frames`` frames (error if the video is shorter).

        Raises:
            VideoError: The video cannot be decoded, or is shorter than asked or annotated.
            AnnotationError: The video has more frames than annotated, or frames of another size.
        """
        want = self.num_frames if num_frames is None else num_frames
        if want < 1:
            raise VideoError(self.path, f"requested {want} frames; ask for at least 1", field="num_frames")
        if want > self.num_frames:
            raise VideoError(
                self.path, f"requested {want} frames but the video has {self.num_frames}", field="num_frames"
            )
        whole = num_frames is None
        frames = read_video_file(self.path, max_frames=want + 1 if whole else want)  # one more tells "longer"
        if len(frames) > want:  # the header did not record a count (or was wrong): count them all
            total = len(read_video_file(self.path))
            raise _frame_count_mismatch(self.path.parent / ANNOTATION_FILE, self.path, want, total)
        if len(frames) < want:
            raise VideoError(
                self.path,
                f"decoded only {len(frames)} frames, expected {want} (truncated file?)",
                field="num_frames",
            )
        if frames.shape[1:3] != (self.height, self.width):
            raise VideoError(
                self.path,
                f"frame size {frames.shape[2]}x{frames.shape[1]} does not match the annotated "
                f"{self.width}x{self.height}",
                field="width/height",
            )
        return frames


def _annotation_payload(
    video_id: str,
    frames: np.ndarray,
    annotations: Sequence[FrameAnnotation],
    label: int,
    fps: int,
    source: dict[str, Any] | None,
    stream: StreamAnnotation | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "video_id": video_id,
        "num_frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps": fps,
        "label": int(label),
        "source": source,
    }
    if stream is not None:  # only streams have it: other benchmarks' files stay as they were
        payload["stream"] = stream.to_json()
    payload["frames"] = [
        {
            "boxes": np.round(a.boxes.astype(np.float64), 3).tolist(),
            "labels": a.labels.tolist(),
            "track_ids": a.track_ids.tolist(),
            "speeds": np.round(a.speeds.astype(np.float64), 4).tolist(),
            "segment": a.segment,
            **({} if a.shot is None else {"shot": int(a.shot)}),
        }
        for a in annotations
    ]
    return payload


def write_video(
    root: Path,
    video_id: str,
    frames: np.ndarray,
    annotations: Sequence[FrameAnnotation],
    label: int,
    fps: int = 15,
    source: dict[str, Any] | None = None,
    stream: StreamAnnotation | None = None,
) -> None:
    """Write one video folder (video file first, annotations last as the completion mark).

    Args:
        root: Dataset folder.
        video_id: Folder name of the video.
        frames: (T, H, W, 3) uint8 RGB.
        annotations: One per frame.
        label: Video-level label (-1 if none).
        fps: Nominal frame rate.
        source: Where the video came from (e.g. generator, seed, split, index), stored in
            the annotations so a resumed build can tell whether a folder is still current.
        stream: A stream's family and shot starts (the streams benchmark).
    """
    if len(annotations) != len(frames):
        raise AnnotationError(
            root / video_id / ANNOTATION_FILE, f"{len(annotations)} annotations for {len(frames)} frames"
        )
    folder = Path(root) / video_id
    write_video_file(folder / VIDEO_FILE, frames, fps=fps)
    atomic_write_json(
        folder / ANNOTATION_FILE, _annotation_payload(video_id, frames, annotations, label, fps, source, stream)
    )


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, where: str = "") -> Any:
    if key not in obj:
        raise AnnotationError(
            path, f"missing required field (expected {getattr(kind, '__name__', kind)})", field=f"{where}{key}"
        )
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise AnnotationError(
            path, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}", field=f"{where}{key}"
        )
    return value


def _numbers(
    value: Any, path: Path, field: str, *, integer: bool = False, box: bool = False, allow_null: bool = False
) -> np.ndarray:
    """A JSON list of numbers (of ``[x0, y0, x1, y1]`` lists if ``box``) as an array, or an AnnotationError."""
    what = "[x0, y0, x1, y1] boxes" if box else "integers" if integer else "numbers"
    if not isinstance(value, list) or (box and not all(isinstance(b, list) and len(b) == 4 for b in value)):
        raise AnnotationError(path, f"expected a list of {what}, got {json.dumps(value)[:80]}", field=field)
    items = [x for b in value for x in b] if box else value
    for x in items:
        if x is None and allow_null:
            continue
        if isinstance(x, bool) or not isinstance(x, (int, float)) or (integer and not float(x).is_integer()):
            raise AnnotationError(path, f"expected a list of {what}, found {json.dumps(x)}", field=field)
    array = np.asarray([np.nan if x is None else x for x in items], dtype=np.float64)
    return array.reshape(-1, 4) if box else array.astype(np.int64) if integer else array


def _read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """Read a JSON file whose top level must be an object; ``missing`` is the error if absent."""
    if not path.is_file():
        raise AnnotationError(path, missing)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise AnnotationError(path, "expected a JSON object at the top level")
    return doc


def _parse_stream(doc: dict[str, Any], path: Path, num_frames: int, *, required: bool) -> StreamAnnotation | None:
    """The ``stream`` entry (family, shot starts) as a :class:`StreamAnnotation`, or an AnnotationError."""
    if "stream" not in doc and not required:
        return None
    block = _require(doc, "stream", dict, path)
    family = _require(block, "family", str, path, "stream.")
    if family not in FAMILIES:
        raise AnnotationError(
            path, f"unknown family {family!r} (expected one of {list(FAMILIES)})", field="stream.family"
        )
    starts = _numbers(_require(block, "shot_starts", list, path, "stream."), path, "stream.shot_starts", integer=True)
    if len(starts) == 0 or starts[0] != 0:
        raise AnnotationError(path, "the first shot must start at frame 0", field="stream.shot_starts")
    for j in range(1, len(starts)):
        if not starts[j - 1] < starts[j] < num_frames:
            raise AnnotationError(
                path,
                f"shot start {starts[j]} must lie after {starts[j - 1]} and inside the video "
                f"(frames 0..{num_frames - 1})",
                field=f"stream.shot_starts[{j}]",
            )
    return StreamAnnotation(family=family, shot_starts=tuple(int(x) for x in starts))


def _parse_shot(
    entry: dict[str, Any], path: Path, where: str, index: int, stream: StreamAnnotation | None
) -> int | None:
    """A frame's ``shot``: an index of ``stream``'s shots, the one the frame lies in (if ``stream``)."""
    if "shot" not in entry and stream is None:
        return None
    shot: int = _require(entry, "shot", int, path, where)
    if stream is None:
        if shot < 0:
            raise AnnotationError(path, f"shot index {shot} must be >= 0", field=f"{where}shot")
        return shot
    n = len(stream.shot_starts)
    if not 0 <= shot < n:
        raise AnnotationError(
            path, f"shot index {shot} is outside the video's {n} shots (0..{n - 1})", field=f"{where}shot"
        )
    expected = int(np.searchsorted(stream.shot_starts, index, side="right")) - 1
    if shot != expected:
        raise AnnotationError(
            path, f"frame {index} lies in shot {expected} by stream.shot_starts, not {shot}", field=f"{where}shot"
        )
    return shot


def parse_annotations(
    path: Path, num_classes: int, *, streams: bool = False
) -> tuple[dict[str, Any], tuple[FrameAnnotation, ...], StreamAnnotation | None]:
    """Load and validate one ``annotations.json``.

    Args:
        path: The file.
        num_classes: Labels must lie in ``[0, num_classes)``.
        streams: The file belongs to a streams dataset: the ``stream`` entry, every frame,
            a known stretch name as each frame's ``segment`` and its ``shot`` are required.

    Returns:
        The parsed document, one annotation per frame, and the stream annotation (``None``
        if the file has none).

    Raises:
        AnnotationError: Bad JSON, missing fields, a frame index that does not exist, boxes
            outside the frame or degenerate, unknown labels; in a stream, an unknown family
            or stretch name, or a shot index or shot start outside the video.
    """
    path = Path(path)
    doc = _read_json_object(path, "annotation file does not exist")
    version = _require(doc, "format_version", int, path)
    if version != FORMAT_VERSION:
        raise AnnotationError(
            path, f"format_version {version} is not supported (expected {FORMAT_VERSION})", field="format_version"
        )
    n = _require(doc, "num_frames", int, path)
    height = _require(doc, "height", int, path)
    width = _require(doc, "width", int, path)
    if n < 1 or height < 1 or width < 1:
        raise AnnotationError(path, f"num_frames/height/width must be positive, got {n}/{height}/{width}")
    label = doc.get("label", -1)
    if not isinstance(label, int) or not -1 <= label < num_classes:
        raise AnnotationError(path, f"video label must be an int in [-1, {num_classes}), got {label!r}", field="label")
    entries = _require(doc, "frames", list, path)
    explicit = any(isinstance(e, dict) and "frame" in e for e in entries)
    if not explicit and len(entries) != n:
        raise AnnotationError(
            path,
            f"{len(entries)} frame entries for num_frames={n} (give each entry a 'frame' index to list only some)",
            field="frames",
        )
    stream = _parse_stream(doc, path, n, required=streams)
    per_frame: list[FrameAnnotation | None] = [None] * n
    tol = 0.5  # half a pixel of slack for rounding in other tools' exports
    for i, entry in enumerate(entries):
        where = f"frames[{i}]."
        if not isinstance(entry, dict):
            raise AnnotationError(path, "expected an object", field=f"frames[{i}]")
        index = entry.get("frame", i)
        if not isinstance(index, int) or not 0 <= index < n:
            raise AnnotationError(
                path,
                f"names frame {index!r}, which does not exist (video has {n} frames: 0..{n - 1})",
                field=f"{where}frame",
            )
        if per_frame[index] is not None:
            raise AnnotationError(path, f"frame {index} is listed more than once", field=f"{where}frame")
        boxes = (
            _numbers(entry["boxes"], path, f"{where}boxes", box=True)
            if entry.get("boxes") is not None
            else np.zeros((0, 4))
        )
        labels = _numbers(_require(entry, "labels", list, path, where), path, f"{where}labels", integer=True)
        if len(labels) != len(boxes):
            raise AnnotationError(path, f"{len(boxes)} boxes but {len(labels)} labels", field=f"{where}labels")
        if len(boxes):
            if not np.isfinite(boxes).all():
                raise AnnotationError(path, "box coordinates must be finite numbers", field=f"{where}boxes")
            bad = (
                (boxes[:, 0] < -tol) | (boxes[:, 1] < -tol) | (boxes[:, 2] > width + tol) | (boxes[:, 3] > height + tol)
            )
            if bad.any():
                j = int(np.argmax(bad))
                raise AnnotationError(
                    path, f"box {boxes[j].tolist()} lies outside the {width}x{height} frame", field=f"{where}boxes[{j}]"
                )
            flat = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if flat.any():
                j = int(np.argmax(flat))
                raise AnnotationError(
                    path, f"box {boxes[j].tolist()} has x1 <= x0 or y1 <= y0", field=f"{where}boxes[{j}]"
                )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise AnnotationError(
                path, f"labels must be in [0, {num_classes}), got {labels.tolist()}", field=f"{where}labels"
            )
        track_ids = _numbers(entry.get("track_ids", list(range(len(labels)))), path, f"{where}track_ids", integer=True)
        speeds = _numbers(entry.get("speeds", [None] * len(labels)), path, f"{where}speeds", allow_null=True)
        for name, values in (("track_ids", track_ids), ("speeds", speeds)):
            if len(values) != len(labels):
                raise AnnotationError(path, f"{len(values)} {name} for {len(labels)} labels", field=f"{where}{name}")
        segment = str(entry.get("segment", ""))
        if streams and segment not in STRETCHES:
            raise AnnotationError(
                path, f"unknown stretch {segment!r} (expected one of {list(STRETCHES)})", field=f"{where}segment"
            )
        per_frame[index] = FrameAnnotation(
            boxes=np.clip(boxes, 0, [width, height, width, height]).astype(np.float32),
            labels=labels,
            track_ids=track_ids,
            speeds=speeds.astype(np.float32),
            segment=segment,
            shot=_parse_shot(entry, path, where, index, stream),
        )
    if streams and None in per_frame:
        missing = per_frame.index(None)
        raise AnnotationError(path, f"frame {missing} is not listed (a stream lists every frame)", field="frames")
    empty = FrameAnnotation(
        np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), ""
    )
    return doc, tuple(a if a is not None else empty for a in per_frame), stream


@dataclass(frozen=True)
class VideoDataset:
    """A dataset folder: class names, splits, and lazily loaded video records."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, tuple[str, ...]] = field(repr=False)
    generator: dict[str, Any] | None = field(default=None, repr=False)

    def video(self, video_id: str) -> VideoRecord:
        """Load and validate one video's record: its annotations, checked against the video's header (frames on demand).

        Raises:
            VideoError: The video file does not exist.
            AnnotationError: Bad annotations, or a frame count or size the video's header contradicts.
        """
        folder = self.root / video_id
        video_path = folder / VIDEO_FILE
        if not video_path.is_file():
            candidates = sorted(p for p in folder.glob("video.*") if p.is_file()) if folder.is_dir() else []
            if not candidates:
                raise VideoError(video_path, "video file does not exist")
            video_path = candidates[0]
        streams = self.generator is not None and self.generator.get("name") == STREAMS_GENERATOR
        doc, annotations, stream = parse_annotations(folder / ANNOTATION_FILE, len(self.classes), streams=streams)
        header = probe_video_file(video_path)  # no frame decoded: a cheap check that the pair fits
        if header is not None:
            claimed = (int(doc["num_frames"]), int(doc["height"]), int(doc["width"]))
            _check_against_header(folder / ANNOTATION_FILE, video_path, claimed, header)
        return VideoRecord(
            video_id=video_id,
            path=video_path,
            num_frames=int(doc["num_frames"]),
            height=int(doc["height"]),
            width=int(doc["width"]),
            fps=float(doc.get("fps", 15)),
            label=int(doc.get("label", -1)),
            annotations=annotations,
            stream=stream,
        )

    def split(self, name: str) -> list[VideoRecord]:
        """All videos of one split, in a fixed order."""
        if name not in self.splits:
            raise AnnotationError(
                self.root / DATASET_FILE, f"no split {name!r}; available: {sorted(self.splits)}", field="splits"
            )
        return [self.video(v) for v in self.splits[name]]

    def iter_split(self, name: str) -> Iterator[VideoRecord]:
        """Like :meth:`split` but loads one record at a time."""
        if name not in self.splits:
            raise AnnotationError(
                self.root / DATASET_FILE, f"no split {name!r}; available: {sorted(self.splits)}", field="splits"
            )
        for v in self.splits[name]:
            yield self.video(v)


def write_dataset_index(
    root: Path, classes: Sequence[str], splits: dict[str, list[str]], generator: dict[str, Any] | None
) -> None:
    """Write ``dataset.json`` (atomically; written last, it marks the dataset complete)."""
    atomic_write_json(
        Path(root) / DATASET_FILE,
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "classes": list(classes),
            "splits": splits,
            "generator": generator,
        },
    )


def load_dataset(root: str | Path) -> VideoDataset:
    """Open a dataset folder written in the gistgym video format.

    Raises:
        AnnotationError: ``dataset.json`` is missing, not JSON, of another format or version.
    """
    root = Path(root)
    index = root / DATASET_FILE
    if not root.is_dir():
        raise AnnotationError(root, "dataset folder does not exist (create one with `gistgym videos make --out DIR`)")
    doc = _read_json_object(index, "missing dataset index (a folder made by `gistgym videos make` has one)")
    if doc.get("format") != FORMAT_NAME:
        raise AnnotationError(index, f"expected format {FORMAT_NAME!r}", field="format")
    if doc.get("format_version") != FORMAT_VERSION:
        raise AnnotationError(
            index,
            f"format_version {doc.get('format_version')!r} is not supported (expected {FORMAT_VERSION})",
            field="format_version",
        )
    classes = _require(doc, "classes", list, index)
    splits = _require(doc, "splits", dict, index)
    return VideoDataset(
        root=root,
        classes=tuple(str(c) for c in classes),
        splits={str(k): tuple(str(v) for v in vs) for k, vs in splits.items()},
        generator=doc.get("generator"),
    )
