"""Where a command writes: check the target first, stage beside it, never delete what is not ours.

Every command that writes a named output (``train``'s run folders, ``detect``'s and
``compare``'s output folders, ``export``'s policy file) follows one protocol:

1. **Check before any work** (:func:`check_output`, :func:`check_name`). A ``--name`` is one
   plain path component. An existing target is replaced only with ``--overwrite`` *and* only
   if it is recognisably a previous output of the same command (a run's ``config.json``, a
   detect ``summary.json``, ... each carries a format marker); a file where a folder is
   expected, a folder where a file is expected, or anything foreign is refused, with or
   without ``--overwrite``. An empty folder holds nothing to lose and is reused.
2. **Stage beside the target** (:func:`staged_dir`, :func:`staged_file`): everything is
   written into a hidden sibling ``.NAME.KIND-HOST-PID-XXXXXXXX`` that names its owner (host
   name and process id). Success renames it onto the target (a replaced target is first
   moved aside to ``.NAME.old-...`` and then deleted, so the target is never half-deleted);
   any exception deletes it.
3. **Leftovers** of a process killed mid-write (SIGKILL, power loss) cannot delete
   themselves. The next command on the same target removes every staging sibling whose owner
   is dead (same host, process gone) and says so in one line (:func:`sweep_stale`). A
   sibling of another host or of a live process is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gistgym.errors import ConfigError, OutputDirError

STALL_ENV = "GISTGYM_TEST_STALL_AT"
"""Test hook: ``GISTGYM_TEST_STALL_AT=<point>`` makes a process print ``gistgym-test-stall <point>`` on
stderr and sleep forever when it reaches ``point`` (see :func:`stall`), so a test can SIGKILL it
at an exact place. Points: ``staged`` (a staging folder was just created) and the cache build's
(:mod:`gistgym.feature_cache.build`)."""

STAGING_KINDS = ("partial", "tmp", "old")
"""What a staging sibling is: a run being trained, an output being written, a replaced output."""

_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random suffix
_HOST_SAFE = re.compile(r"[^A-Za-z0-9.]+")


def stall(point: str) -> None:
    """The test hook of :data:`STALL_ENV`: stall here forever if the environment names ``point``."""
    if os.environ.get(STALL_ENV) == point:
        print(f"gistgym-test-stall {point}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


def _host() -> str:
    return _HOST_SAFE.sub("_", socket.gethostname()) or "host"


def owner_tag() -> str:
    """``HOST-PID`` of this process, as staging names carry it."""
    return f"{_host()}-{os.getpid()}"


def staging_prefix(target: Path, kind: str) -> str:
    """The name prefix of this process's staging siblings of ``target`` (``.NAME.KIND-HOST-PID-``)."""
    if kind not in STAGING_KINDS:
        raise ValueError(f"unknown staging kind {kind!r}")
    return f".{target.name}.{kind}-{owner_tag()}-"


def parse_staging(name: str, target_name: str) -> tuple[str, str, int] | None:
    """``(kind, host, pid)`` if ``name`` is a staging sibling of ``target_name``, else ``None``."""
    prefix = f".{target_name}."
    if not name.startswith(prefix):
        return None
    match = re.fullmatch(rf"({'|'.join(STAGING_KINDS)})-(.+)-(\d+)-{_RANDOM}(\.[A-Za-z0-9]+)?", name[len(prefix) :])
    if match is None:
        return None
    return match.group(1), match.group(2), int(match.group(3))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie holds its pid until reaped, but it will never finish its work
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def owner_dead(host: str, pid: int) -> bool:
    """Whether the owner ``host``/``pid`` of a staging sibling is known to be gone (never for another host)."""
    return host == _host() and pid != os.getpid() and not pid_alive(pid)


def stale_siblings(target: Path) -> list[Path]:
    """Staging siblings of ``target`` whose owner is dead, sorted by name."""
    parent = target.parent
    if not parent.is_dir():
        return []
    stale = []
    for entry in parent.iterdir():
        parsed = parse_staging(entry.name, target.name)
        if parsed is not None and owner_dead(parsed[1], parsed[2]):
            stale.append(entry)
    return sorted(stale)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def default_log(line: str) -> None:
    """Print one line on stderr (what the commands use to report removed leftovers)."""
    print(line, file=sys.stderr, flush=True)


def sweep_stale(target: Path, *, log: Callable[[str], None] = default_log) -> list[Path]:
    """Remove the staging siblings of ``target`` left by dead processes; one line if any was found."""
    stale = stale_siblings(target)
    for path in stale:
        _remove(path)
    if stale:
        names = ", ".join(p.name for p in stale)
        log(f"removed {len(stale)} leftover(s) of interrupted runs beside {target}: {names}")
    return stale


def check_name(name: str, *, flag: str = "--name") -> str:
    """Refuse a name that is not one plain path component (no ``/``, ``.``, ``..``, hidden or absolute names).

    Raises:
        ConfigError: Which flag, the value, and what it must be.
    """
    bad = (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or (os.sep in name)
        or (os.altsep is not None and os.altsep in name)
        or "\0" in name
        or name != name.strip()
    )
    if bad:
        raise ConfigError(
            f"{flag} {name!r} must be one plain folder name (no '/', not '.' or '..', not starting with '.', "
            "no surrounding spaces): it names an entry inside --out"
        )
    return name


def read_json_marker(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if it is missing or not a JSON object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def has_format(path: Path, fmt: str) -> bool:
    """Whether ``path`` is a JSON object whose ``format`` field is ``fmt`` (an output's marker)."""
    doc = read_json_marker(path)
    return doc is not None and doc.get("format") == fmt


def check_output(
    target: str | os.PathLike[str],
    *,
    overwrite: bool,
    is_ours: Callable[[Path], bool],
    what: str,
    marker: str = "",
    kind: str = "dir",
    flag: str = "--out",
    log: Callable[[str], None] = default_log,
) -> Path:
    """Check an output target before any work, and remove dead processes' leftovers beside it.

    Args:
        target: The folder (``kind="dir"``) or file (``kind="file"``) to write.
        overwrite: ``--overwrite`` was given.
        is_ours: Whether an existing target is a previous output of this command.
        what: What the command writes, for messages (``"a gistgym run"``).
        marker: How an output of the command is recognised, for the message refusing a
            foreign one (``"no config.json of format 'gistgym-run'"``).
        kind: ``"dir"`` or ``"file"``.
        flag: The option that named ``target``, for messages.
        log: Where the line about removed leftovers goes.

    Returns:
        ``target`` as a path.

    Raises:
        OutputDirError: The target is of the wrong kind, is foreign, or exists without
            ``overwrite``; or its parent is a file.
    """
    path = Path(target)
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputDirError(parent, f"is a file, so {flag} {path} cannot be created inside it")
        if parent.exists():
            break
    if path.is_symlink() and not path.exists():
        raise OutputDirError(path, f"is a dangling symbolic link; pass a new {flag}")
    if path.exists():
        if kind == "dir" and not path.is_dir():
            raise OutputDirError(path, f"exists and is a file; {flag} names a folder: pass a new folder")
        if kind == "file" and path.is_dir():
            raise OutputDirError(path, f"exists and is a folder; {flag} names a file: pass a file name")
        empty_dir = path.is_dir() and not any(path.iterdir())
        if not empty_dir:
            if not is_ours(path):
                why = f" ({marker})" if marker else ""
                raise OutputDirError(
                    path,
                    f"exists and is not {what}{why}; refusing to replace it (even with --overwrite): pass a new {flag}",
                )
            if not overwrite:
                raise OutputDirError(path, f"exists and is {what}; pass --overwrite to replace it, or a new {flag}")
    sweep_stale(path, log=log)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_into(staged: Path, target: Path) -> None:
    """Rename the finished ``staged`` onto ``target``; an existing target is moved aside, then deleted."""
    if staged.is_dir():
        os.chmod(staged, 0o777 & ~_umask())
    old: Path | None = None
    if target.is_dir() and not target.is_symlink():  # a file is replaced by the rename itself
        if any(target.iterdir()):
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=staging_prefix(target, "old")))
            os.replace(target, old / "previous")
        else:
            target.rmdir()
    os.replace(staged, target)
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def new_staging_dir(target: Path, kind: str = "partial") -> Path:
    """Create this process's hidden staging folder beside ``target``.

    Raises:
        OutputDirError: The parent folder cannot be created or written.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=target.parent, prefix=staging_prefix(target, kind)))
    except OSError as exc:
        raise OutputDirError(target.parent, f"cannot create the output folder: {exc.strerror or exc}") from exc


def new_staging_file(target: Path, suffix: str = "") -> Path:
    """Create this process's empty hidden staging file beside ``target`` (mode 0666 minus the umask).

    Raises:
        OutputDirError: The parent folder cannot be created or written.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=staging_prefix(target, "tmp"), suffix=suffix)
    except OSError as exc:
        raise OutputDirError(target.parent, f"cannot write there: {exc.strerror or exc}") from exc
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike[str], kind: str = "partial") -> Iterator[Path]:
    """A hidden staging folder that becomes ``target`` when the block completes, and is deleted on any exception."""
    path = Path(target)
    staged = new_staging_dir(path, kind)
    try:
        stall("staged")
        yield staged
        replace_into(staged, path)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def write_output_folder(target: str | os.PathLike[str], files: Mapping[str, bytes | Callable[[Path], Any]]) -> Path:
    """Write ``files`` (name -> bytes, or a function writing that path) into a staging folder renamed onto ``target``.

    Check ``target`` with :func:`check_output` first: an existing folder is replaced whole.
    """
    with staged_dir(target, "tmp") as staged:
        for name, content in files.items():
            if isinstance(content, bytes):
                (staged / name).write_bytes(content)
            else:
                content(staged / name)
    return Path(target)


@contextlib.contextmanager
def staged_file(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A hidden staging file that becomes ``target`` when the block completes, and is deleted on any exception."""
    path = Path(target)
    staged = new_staging_file(path, suffix)
    try:
        yield staged
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        replace_into(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
