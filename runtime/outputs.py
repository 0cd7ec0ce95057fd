"""What ``gistgym detect`` writes, and how it makes sure nothing half-written is ever left.

Everything goes into a hidden staging folder beside ``--out`` (``.OUT.tmp-HOST-PID-XXXXXXXX``)
and the folder is renamed to ``OUT`` only after every file is complete; on any error the
staging folder is deleted and ``OUT`` is untouched (one left by a killed process is removed by
the next detect on the same ``OUT``). An existing ``OUT`` is replaced only with ``--overwrite``
and only if it is a previous ``gistgym detect`` output (its ``summary.json`` says so);
anything else is refused (:mod:`gistgym.staging`).

Files:

* ``detections.jsonl``: one JSON object per frame, in frame order::

      {"frame": 0, "extractor": "heavy", "heavy": true, "fused_from": null,
       "boxes": [[x0, y0, x1, y1], ...], "scores": [...], "labels": [...], "classes": [...]}

  boxes in the original video's pixels (x1, y1 exclusive), every detection the detector
  keeps (score >= 0.01, at most 25 per frame, highest first); ``heavy`` marks frames the
  heavy extractor ran on (async: a heavy job was launched on), ``fused_from`` (async) the
  frame whose heavy features entered the memory just before this frame.
* ``annotated.mp4`` (H.264) or ``annotated.gif``: the original frames with the detections
  scoring >= ``draw_threshold`` drawn, heavy frames framed in red and labelled.
* ``summary.json``: see :func:`gistgym.runtime.detect.detect_video`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from gistgym.errors import OutputDirError
from gistgym.staging import check_output, has_format, new_staging_dir, replace_into, stall
from gistgym.videos.dataset import atomic_write_json

SUMMARY_FILE = "summary.json"
DETECTIONS_FILE = "detections.jsonl"
SUMMARY_FORMAT = "gistgym-detect"
HEAVY_COLOUR = (230, 30, 30)
BOX_COLOURS = ((40, 220, 40), (40, 160, 255), (255, 200, 0), (220, 60, 220), (0, 220, 220), (255, 120, 40))


class AtomicOutputDir:
    """A staging folder beside ``out`` that becomes ``out`` on :meth:`commit` and disappears on :meth:`abort`.

    Args:
        out: The output folder (``--out``).
        overwrite: Replace a previous ``gistgym detect`` output (anything else is refused).

    Raises:
        OutputDirError: ``out`` exists and is not a previous ``gistgym detect`` output, exists
            without ``overwrite``, or its parent cannot be written.
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.out = check_detect_out(out, overwrite)
        self.tmp = new_staging_dir(self.out, "tmp")
        stall("staged")

    def path(self, name: str) -> Path:
        """Where to write ``name`` (inside the temporary folder)."""
        return self.tmp / name

    def commit(self) -> Path:
        """Rename the finished folder to ``out`` (replacing a previous output); returns ``out``."""
        replace_into(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        """Delete the temporary folder."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_detect_out(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check ``--out`` of ``gistgym detect`` before any work (see :func:`gistgym.staging.check_output`).

    Raises:
        OutputDirError: ``out`` is a file, a folder that is not a previous detect output, or a
            previous output without ``overwrite``.
    """
    marker = f"no {SUMMARY_FILE} of format {SUMMARY_FORMAT!r}"
    what = "a previous `gistgym detect` output"
    return check_output(out, overwrite=overwrite, is_ours=_is_detect_output, what=what, marker=marker)


def _is_detect_output(folder: Path) -> bool:
    return has_format(folder / SUMMARY_FILE, SUMMARY_FORMAT)


def detection_line(
    index: int,
    extractor: str,
    heavy: bool,
    fused_from: int | None,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """One line of ``detections.jsonl`` (boxes already in the video's pixels; ``extra`` fields appended)."""
    return json.dumps(
        {
            "frame": index,
            "extractor": extractor,
            "heavy": bool(heavy),
            "fused_from": fused_from,
            "boxes": np.round(np.asarray(boxes, dtype=np.float64), 2).tolist(),
            "scores": np.round(np.asarray(scores, dtype=np.float64), 5).tolist(),
            "labels": [int(x) for x in labels],
            "classes": [class_names[int(x)] if 0 <= int(x) < len(class_names) else str(int(x)) for x in labels],
            **(extra or {}),
        }
    )


class Annotator:
    """Draws detections on the original frames and writes ``annotated.mp4`` or ``annotated.gif``.

    Args:
        path: Output file (its suffix picks the format).
        fps: Frame rate of the output.
        class_names: Label names.
        draw_threshold: Only detections scoring at least this are drawn.
        gif_width: GIF frames are scaled to at most this width (GIFs of full-size frames are huge).
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        class_names: tuple[str, ...],
        *,
        draw_threshold: float = 0.5,
        gif_width: int = 320,
    ) -> None:
        self.path = path
        self.fps = fps if fps > 0 else 15.0
        self.class_names = class_names
        self.draw_threshold = draw_threshold
        self.gif_width = gif_width
        self.kind = path.suffix.lower().lstrip(".")
        if self.kind not in ("mp4", "gif"):
            raise OutputDirError(path, "annotated output must be .mp4 or .gif")
        self._gif: list[Any] = []
        self._container: Any = None
        self._stream: Any = None

    def draw(
        self, frame: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, caption: str, heavy: bool
    ) -> np.ndarray:
        """The frame with boxes, a caption and (heavy frames) a red border, as (H, W, 3) uint8."""
        from PIL import Image, ImageDraw

        image = Image.fromarray(frame)
        pen = ImageDraw.Draw(image)
        h, w = frame.shape[:2]
        line = max(1, round(min(h, w) / 160))
        for box, score, label in zip(boxes, scores, labels, strict=True):
            if score < self.draw_threshold:
                continue
            colour = BOX_COLOURS[int(label) % len(BOX_COLOURS)]
            x0, y0, x1, y1 = (float(v) for v in box)
            pen.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=line)
            name = self.class_names[int(label)] if 0 <= int(label) < len(self.class_names) else str(int(label))
            pen.text((x0 + 1, max(0.0, y0 - 11)), f"{name} {score:.2f}", fill=colour)
        if heavy:
            border = max(2, round(min(h, w) / 40))
            pen.rectangle([0, 0, w - 1, h - 1], outline=HEAVY_COLOUR, width=border)
        left, top, right, bottom = pen.textbbox((6, 6), caption)
        pen.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=(0, 0, 0))
        pen.text((6, 6), caption, fill=(255, 90, 90) if heavy else (255, 255, 255))
        return np.asarray(image)

    def add(self, frame: np.ndarray) -> None:
        """Append one drawn frame."""
        if self.kind == "gif":
            from PIL import Image

            image = Image.fromarray(frame)
            if image.width > self.gif_width:
                image = image.resize((self.gif_width, max(1, round(image.height * self.gif_width / image.width))))
            self._gif.append(image.convert("P", palette=Image.Palette.ADAPTIVE))
            return
        import av

        h, w = frame.shape[:2]
        if self._container is None:
            self._container = av.open(str(self.path), mode="w", format="mp4")
            rate = Fraction(self.fps).limit_denominator(1001)
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.width = w + (w % 2)
            self._stream.height = h + (h % 2)
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        if w % 2 or h % 2:  # yuv420p needs even sizes: repeat the last row/column
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush and close the file."""
        if self.kind == "gif":
            if self._gif:
                self._gif[0].save(
                    self.path,
                    save_all=True,
                    append_images=self._gif[1:],
                    duration=max(20, round(1000 / self.fps)),
                    loop=0,
                )
            return
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None


class DetectionsWriter:
    """Everything a ``gistgym detect`` runtime writes, into an :class:`AtomicOutputDir`.

    Feeds the runtime the resized frames of ``source`` (:meth:`frames`) and keeps each
    original until :meth:`write` draws on it; :meth:`finish` writes ``summary.json`` and
    renames the folder into place. Used as a context manager, any exception discards the
    temporary folder, so every runtime (interleaved detector, Deep Feature Flow) leaves either
    a complete output or none.

    Args:
        out: The output folder (``--out``).
        source: The video being read (a :class:`~gistgym.runtime.video_source.VideoSource`).
        class_names: Label names.
        annotate: ``"mp4"``, ``"gif"`` or ``"none"``.
        draw_threshold: Detections scoring at least this are drawn.
        progress: Show a progress bar.
        max_frames: The frame limit of the run (0 = none), for the progress bar's total.
        overwrite: Replace a previous detect output at ``out``.

    Raises:
        OutputDirError: ``out`` is not a previous detect output (or is one, without
            ``overwrite``), or cannot be written.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        source: Any,
        class_names: tuple[str, ...],
        *,
        annotate: str,
        draw_threshold: float,
        progress: bool,
        max_frames: int = 0,
        overwrite: bool = False,
    ) -> None:
        from tqdm.auto import tqdm

        self.folder = AtomicOutputDir(out, overwrite=overwrite)
        self.source = source
        self.class_names = class_names
        self.annotated = None if annotate == "none" else f"annotated.{annotate}"
        self._originals: list[np.ndarray] = []
        self._annotator: Annotator | None = None
        try:
            self._lines = open(self.folder.path(DETECTIONS_FILE), "w")  # noqa: SIM115 (closed by close())
            if self.annotated:
                self._annotator = Annotator(
                    self.folder.path(self.annotated), source.info.fps, class_names, draw_threshold=draw_threshold
                )
        except BaseException:
            self.folder.abort()
            raise
        total = max_frames or source.info.frames or None
        self._bar = tqdm(total=total, desc=f"detect {source.path.name}", unit="frame", disable=not progress)

    @classmethod
    def for_args(cls, args: Any, source: Any, class_names: tuple[str, ...]) -> DetectionsWriter:
        """The writer a runtime's arguments ask for.

        Reads ``out``, ``overwrite``, ``annotate``, ``draw_threshold``, ``progress`` and ``max_frames``.
        """
        return cls(
            args.out,
            source,
            class_names,
            annotate=args.annotate,
            draw_threshold=args.draw_threshold,
            progress=args.progress,
            max_frames=args.max_frames,
            overwrite=args.overwrite,
        )

    def __enter__(self) -> DetectionsWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            with contextlib.suppress(Exception):
                self.close()
            self.folder.abort()

    def frames(self) -> Iterator[np.ndarray]:
        """The resized frames, in order (each original is kept for :meth:`write`)."""
        for original, small in self.source.frames():
            self._originals.append(original)
            yield small

    def write(
        self,
        index: int,
        extractor: str,
        heavy: bool,
        fused_from: int | None,
        detections: Any,
        caption: str,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """One processed frame: its line of ``detections.jsonl`` and its annotated frame (the oldest kept original)."""
        original = self._originals.pop(0)
        boxes = self.source.to_source_boxes(detections.boxes)
        scores, labels = detections.scores, detections.labels
        line = detection_line(index, extractor, heavy, fused_from, boxes, scores, labels, self.class_names, extra)
        self._lines.write(line + "\n")
        if self._annotator is not None:
            self._annotator.add(self._annotator.draw(original, boxes, scores, labels, caption, heavy))
        self._bar.update(1)

    def close(self) -> None:
        """Close the files (the annotated video is finalised) and the progress bar."""
        self._bar.close()
        self._lines.close()
        if self._annotator is not None:
            self._annotator.close()
            self._annotator = None

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Close the files, write ``summary.json`` (with ``outputs``) and rename the folder to ``out``.

        Returns:
            ``summary`` with ``outputs`` and, not in the file, ``out``.
        """
        self.close()
        summary["outputs"] = [DETECTIONS_FILE, *([self.annotated] if self.annotated else []), SUMMARY_FILE]
        atomic_write_json(self.folder.path(SUMMARY_FILE), summary)
        self.folder.commit()
        summary["out"] = str(self.folder.out)
        return summary


def timing_summary(latencies: Sequence[float], wall0: float) -> dict[str, Any]:
    """Frames/s and latency statistics of a run, for ``summary.json``.

    Returns:
        ``fps`` (frames over the summed per-frame latencies), ``fps_wall`` (frames over the wall
        time since ``wall0``, decoding and writing included) and ``p50_ms``, ``p95_ms``,
        ``max_ms``, ``mean_ms``.
    """
    from gistgym.runtime.online import percentiles_ms

    n = len(latencies)
    busy = float(np.sum(latencies))
    return {
        "fps": n / busy if busy > 0 else None,
        "fps_wall": n / (time.perf_counter() - wall0),
        **percentiles_ms(latencies),
    }
