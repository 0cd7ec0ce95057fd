"""Reading any video file frame by frame with PyAV, resized to the detector's input.

Resizing (how a W x H video meets a detector trained on S x S frames): every decoded frame
is converted to RGB24 and the **whole frame** is resized to S x S, without cropping or
padding, so the aspect ratio is not kept (a 640 x 272 frame shrinks 10x horizontally and
4.25x vertically to 64 x 64). Downscaling uses antialiased bilinear
interpolation (torch's ``interpolate(..., antialias=True)``, which averages over the
source pixels each output pixel covers, like PIL's), upscaling plain bilinear; the result
is rounded back to uint8 so the detector's own preprocessing applies unchanged. A frame
that already is S x S is passed through untouched (bit-exact for the benchmark videos).
Boxes go back to the video's pixels by scaling x by W / S and y by H / S
(:meth:`VideoSource.to_source_boxes`). The frame rate is read from the container and only
reported: every decoded frame is processed, in decoding order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gistgym.errors import VideoError


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream."""

    path: Path
    width: int
    height: int
    fps: float
    """Average frame rate (0.0 if the container does not say)."""
    codec: str
    frames: int
    """Frame count the container declares (0 if unknown; the decoded count may differ)."""


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (size, size, 3) uint8, the whole frame (see the module docstring)."""
    h, w = frame.shape[:2]
    if h == size and w == size:
        return frame
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    antialias = h > size or w > size
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


class VideoSource:
    """A video file opened with PyAV, decoded lazily, every frame resized to ``size`` x ``size``.

    Args:
        path: Any file PyAV (FFmpeg) decodes.
        size: The detector's input size S.
        max_frames: Stop after this many frames (``None``: the whole video).

    Raises:
        VideoError: Missing file, not a video (unsupported or corrupt container), no video
            stream; while iterating: a corrupt packet, or no decodable frame at all.
    """

    def __init__(self, path: str | os.PathLike[str], size: int, *, max_frames: int | None = None) -> None:
        import av

        self.path = Path(path)
        self.size = int(size)
        self.max_frames = max_frames
        if not self.path.is_file():
            raise VideoError(self.path, "video file does not exist")
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise VideoError(self.path, "file has no video stream (not a video, or an unsupported one)")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.info = VideoInfo(
                    path=self.path,
                    width=int(stream.codec_context.width),
                    height=int(stream.codec_context.height),
                    fps=float(rate) if rate else 0.0,
                    codec=str(stream.codec_context.name),
                    frames=int(stream.frames or 0),
                )
        except VideoError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
            raise VideoError(self.path, f"cannot open as a video (unsupported format or corrupt file): {exc}") from exc
        if self.info.width < 1 or self.info.height < 1:
            raise VideoError(self.path, f"video stream has no frame size ({self.info.width}x{self.info.height})")

    def frames(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(original (H, W, 3) uint8 RGB, resized (S, S, 3) uint8 RGB)`` per decoded frame.

        Raises:
            VideoError: Decoding fails part-way (corrupt or truncated file), or the file
                yields no frame at all.
        """
        import av

        count = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "SLICE"
                for frame in container.decode(stream):
                    image = frame.to_ndarray(format="rgb24")
                    count += 1
                    yield image, resize_frame(image, self.size)
                    if self.max_frames is not None and count >= self.max_frames:
                        break
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise VideoError(
                self.path, f"cannot decode frame {count} (corrupt or truncated file?): {exc}", field=f"frame {count}"
            ) from exc
        if count == 0:
            raise VideoError(self.path, "video has no decodable frames (empty or corrupt)")

    def to_source_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``[x0, y0, x1, y1]`` in the detector's S x S frame -> the video's pixels (clipped)."""
        sx = self.info.width / self.size
        sy = self.info.height / self.size
        out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])
        return np.clip(out, 0.0, [self.info.width, self.info.height, self.info.width, self.info.height])

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for ``summary.json``."""
        return {
            "path": str(self.path),
            "width": self.info.width,
            "height": self.info.height,
            "fps": self.info.fps,
            "codec": self.info.codec,
            "declared_frames": self.info.frames,
            "resized_to": [self.size, self.size],
            "resize": "whole frame to SxS (aspect not kept), antialiased bilinear when shrinking; boxes scaled back "
            "by W/S, H/S",
        }
