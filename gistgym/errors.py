"""Typed exceptions for bad input.

Every error names the file, the field and what was expected, so the command line can print
it as one line and exit non-zero instead of showing a traceback from deep inside a library.
"""

from __future__ import annotations

from pathlib import Path


class GistgymError(Exception):
    """Base class of every error gistgym raises on bad input."""


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (``BaseException.add_note``; the command line prints notes on the error's line)."""
    notes = getattr(exc, "__notes__", None)
    if notes is None:
        notes = []
        exc.__notes__ = notes  # type: ignore[attr-defined,unused-ignore]
    notes.append(note)


def one_line(exc: BaseException) -> str:
    """``exc`` and its notes as one line (what the command line prints for bad input)."""
    text = " ".join(str(exc).split("\n"))
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    return "; ".join([text, *notes])


class InputFileError(GistgymError):
    """A file is missing, unreadable, or holds something other than what it should.

    Args:
        path: The offending file.
        problem: What is wrong, phrased so that the user knows what to fix.
        field: The field, key or frame inside the file, when one is to blame.
    """

    def __init__(self, path: str | Path, problem: str, *, field: str | None = None) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}" if field is None else f"{self.path} [{field}]"
        super().__init__(f"{where}: {problem}")


class VideoError(InputFileError):
    """A video file is missing, corrupt, truncated, empty, or shorter than requested."""


class AnnotationError(InputFileError):
    """An annotation names a frame that does not exist, has bad boxes, or a bad schema."""


class WeightsError(InputFileError):
    """A weights file is missing, corrupt, or has missing or mis-shaped keys."""


class ConfigError(GistgymError):
    """An argument or configuration value is out of range or unknown."""


class CacheError(InputFileError):
    """A feature cache is missing, not an HDF5 file, truncated, or cannot be built or read.

    Args:
        path: The cache file (or the file being built).
        problem: What is wrong and what to do about it.
        field: The HDF5 path or attribute inside the file, when one is to blame.
        video: The video the problem belongs to, when one is to blame.
    """

    def __init__(self, path: str | Path, problem: str, *, field: str | None = None, video: str | None = None) -> None:
        self.video = video
        super().__init__(path, problem, field=field)


class CacheVersionError(CacheError):
    """The cache's schema version is unknown, newer than this gistgym reads, or missing."""


class CacheSectionError(CacheError):
    """A section the caller needs (e.g. ``interleave``) is not in the cache."""


class CacheIncompleteError(CacheError):
    """A video group lacks its completion mark (written by an interrupted or foreign writer)."""


class CacheMismatchError(CacheError):
    """The cache was built from other weights (or other inputs) than the caller expects."""


class CacheDataError(CacheError):
    """A cached array holds NaN/inf values or does not match its recorded checksum."""


class EnvArgumentError(ConfigError, ValueError):
    """An environment's constructor argument or ``reset`` option is invalid.

    The message names the argument, the value given and what to pass instead.
    """


class UnknownEnvArgumentError(EnvArgumentError, TypeError):
    """An environment was given a keyword argument it does not have (the message lists the valid ones)."""


class InvalidActionError(GistgymError, ValueError):
    """An action outside the environment's action space."""


class EnvStateError(GistgymError, RuntimeError):
    """An environment method was called in the wrong state (``step`` before ``reset`` or after the episode ended)."""


class PolicyFileError(InputFileError):
    """An exported policy file or its JSON sidecar is missing, corrupt, or not a gistgym export."""


class PolicyMismatchError(PolicyFileError):
    """An exported policy was made for another environment (or version), cache or detector than the caller's."""


class OnnxOpsetError(PolicyFileError):
    """An ONNX policy file uses another opset than its sidecar records or this gistgym loads."""


class OutputDirError(InputFileError):
    """An output folder cannot be written or would replace something that is not a previous output."""


class RunError(InputFileError):
    """A training run directory is missing, incomplete, or not a gistgym run."""
