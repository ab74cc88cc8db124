"""``concerto demo``: the main job on the embedded default (a generated room sequence)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Render a procedural room seen by a moving RGB-D camera (with ground-truth labels), convert
it to a rosbag2, start perception_node with the default config and play the bag into it
over DDS, then write what the node published: <out>/result/window.ply (labelled voxels of
the last window, metres, fixed frame 'odom'), window.png (top-down views) and summary.json
(timings, skips, label histogram, mIoU against the ground truth).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the node on the embedded generated RGB-D sequence",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, default=Path("outputs/demo"),
                   help="output directory (default: outputs/demo)")
    p.add_argument("--seed", type=int, default=0, help="procedural room seed (default: 0)")
    p.add_argument("--frames", type=int, default=12, help="number of frames to render (default: 12)")
    p.add_argument("--width", type=int, default=320, help="image width in pixels (default: 320)")
    p.add_argument("--height", type=int, default=240, help="image height in pixels (default: 240)")
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="parameters YAML (default: the package's config/perception.yaml)")
    p.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE", default=[],
                   help="override a setting, e.g. --set window.num_frames=8 (repeatable)")
    p.add_argument("--offline", action="store_true",
                   help="replay the bag through the pipeline in-process instead of through the ROS node")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from concerto_ros.config import parse_overrides
    from concerto_ros.demo.run import run_demo

    if args.frames < 1 or args.width < 16 or args.height < 16:
        raise SystemExit("--frames must be >= 1 and --width/--height >= 16 pixels")
    return run_demo(args.output, seed=args.seed, num_frames=args.frames, width=args.width,
                    height=args.height, config=args.config, overrides=parse_overrides(args.overrides),
                    offline=args.offline, progress=args.progress)
