"""Export a trained scheduler and let it drive the online detector on a video file.

Usage (after ``make demo``, which trains ``runs/demo/agents/ddqn-demo``)::

    python examples/export_and_detect.py --run runs/demo/agents/ddqn-demo --video data/bench/val_0000/video.mp4

1. ``export_run`` writes the run's policy network as ONNX with its JSON sidecar (the
   environment, the cache's detector, the observation layout): ``gistgym export``.
2. ``detect_video`` decodes the video, runs the interleaved detector frame by frame and asks
   the exported policy which extractor to run next, from the same observation the environment
   gave it in training: ``gistgym detect``. ``--async`` runs the heavy extractor in a
   background thread (the paper's asynchronous mode).

It prints where the heavy extractor ran, the frames/s and the output folder
(``detections.jsonl``, ``summary.json`` and, with ``--annotate mp4``, the annotated video).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from gistgym.agents.export import export_run, load_exported_policy
from gistgym.runtime.detect import DetectArgs, detect_video
from gistgym.runtime.online import FrameResult


def main() -> None:
    """Export, then detect."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="an Interleave-v0 run directory (gistgym train)")
    parser.add_argument("--video", required=True, help="any video file PyAV decodes")
    parser.add_argument("--out", default="runs/example-detect", help="output folder (replaced if it is one)")
    parser.add_argument("--weights", default="", help="detector weights (default: the shipped ones)")
    parser.add_argument("--async", dest="async_mode", action="store_true", help="asynchronous mode")
    parser.add_argument("--annotate", default="none", choices=("none", "mp4", "gif"))
    args = parser.parse_args()

    policy_file = os.path.join(args.out + "-policy", "policy.onnx")
    os.makedirs(os.path.dirname(policy_file), exist_ok=True)
    export_run(args.run, policy_file, "onnx", overwrite=True)
    policy = load_exported_policy(policy_file)
    print(f"exported {args.run} -> {policy_file} ({policy.sidecar['env']['id']}, actions {policy.action_meanings})")

    schedule: list[str] = []

    def on_frame(r: FrameResult) -> None:
        schedule.append("H" if r.heavy else ".")

    summary = detect_video(
        DetectArgs(
            video=args.video,
            policy=policy_file,
            out=args.out,
            overwrite=True,
            weights=args.weights,
            async_mode=args.async_mode,
            annotate=args.annotate,
            progress=False,
        ),
        on_frame=on_frame,
    )
    print("schedule (H = heavy):", "".join(schedule))
    print(f"heavy on {summary['heavy_fraction']:.1%} of {len(schedule)} frames, {summary['fps']:.0f} frames/s; "
          f"outputs in {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
