"""``concerto convert``: turn datasets into rosbag2 recordings (no ROS install needed).

Subcommands:

* ``concerto convert rgbd FOLDER OUTPUT_BAG``: an RGB-D folder (``color/``, ``depth/``,
  ``pose.txt``, optional ``labels/`` and ``camera.yaml``) to a bag with colour, depth,
  camera info, ``/tf`` and ``/tf_static``. See :mod:`concerto_ros.bag.convert_rgbd`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

RGBD_EPILOG = """\
RGB-D folder format:
  color/<stem>.png|jpg   8-bit colour (normal image files: --color-order bgr)
  depth/<stem>.png|pgm   16-bit depth, --depth-scale units per metre, 0 = invalid
  labels/<stem>.png      optional uint16 class ids per pixel
  pose.txt | poses.txt   per frame 'tx ty tz qx qy qz qw' (metres), camera-to-world
                         pose of the optical frame; an optional leading column of
                         timestamps in seconds sets the frame stamps
  camera.yaml            optional fx fy cx cy width height depth_scale rate_hz class_names
Frames are matched by file stem and sorted numerically when stems are numbers.

Written topics: /camera/color/image_raw (rgb8), /camera/depth/image_raw (16UC1 mm),
/camera/color/camera_info, /camera/labels/image_raw (16UC1, with labels/),
/tf (FIXED_FRAME -> camera_link per frame), /tf_static (camera_link -> CAMERA_FRAME).

example:
  concerto convert rgbd ../shared/data/rgbd_slambook slambook_bag \\
      --fx 518 --fy 519 --cx 325.5 --cy 253.5 --depth-scale 1000
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``convert`` (with its ``rgbd`` subcommand) to the ``concerto`` parser."""
    parser = subparsers.add_parser(
        "convert",
        help="convert datasets to rosbag2 (MCAP or sqlite3)",
        description="Convert datasets to rosbag2 recordings (MCAP or sqlite3), without ROS.",
    )
    kinds = parser.add_subparsers(dest="convert_kind", metavar="KIND")
    kinds.required = True
    rgbd = kinds.add_parser(
        "rgbd",
        help="an RGB-D folder (colour, depth, poses) to a bag",
        description="Convert an RGB-D folder (colour + depth + camera poses) into a rosbag2.",
        epilog=RGBD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rgbd.add_argument("folder", metavar="FOLDER", help="the RGB-D folder")
    rgbd.add_argument("output_bag", metavar="OUTPUT_BAG", help="rosbag2 directory to create")
    intr = rgbd.add_argument_group(
        "intrinsics (pixels; all four or none: none reads them from FOLDER/camera.yaml)"
    )
    intr.add_argument("--fx", type=float, help="focal length x, pixels")
    intr.add_argument("--fy", type=float, help="focal length y, pixels")
    intr.add_argument("--cx", type=float, help="principal point x, pixels")
    intr.add_argument("--cy", type=float, help="principal point y, pixels")
    rgbd.add_argument(
        "--depth-scale",
        type=float,
        default=None,
        metavar="UNITS_PER_METRE",
        help="depth file units per metre: 1000 = millimetres (default: camera.yaml, else "
        "1000); TUM RGB-D uses 5000. Output depth is always 16UC1 millimetres",
    )
    rgbd.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="HZ",
        help="frame rate in Hz for the stamps when the pose file has no time column "
        "(default: camera.yaml rate_hz, else 30)",
    )
    rgbd.add_argument(
        "--start-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stamp of the first frame in seconds since the epoch when the pose file has "
        "no time column (default 1700000000)",
    )
    rgbd.add_argument(
        "--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage (default mcap)"
    )
    rgbd.add_argument(
        "--fixed-frame", default="odom", help="parent frame of the camera poses (default odom)"
    )
    rgbd.add_argument(
        "--camera-frame",
        default="camera_color_optical_frame",
        help="optical frame of the images, z forward x right y down "
        "(default camera_color_optical_frame)",
    )
    rgbd.add_argument(
        "--color-order",
        choices=("bgr", "rgb"),
        default="bgr",
        help="channel order OpenCV reads from the colour files: bgr for normal image "
        "files (default), rgb for files saved with swapped channels",
    )
    rgbd.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT_BAG if it is an existing bag"
    )
    rgbd.add_argument("--quiet", action="store_true", help="no progress bar")
    rgbd.set_defaults(func=run)
    return parser


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    """Run ``concerto convert rgbd``; print a summary. Returns 0, or 2 on a usage/data error."""
    from concerto_ros.bag.convert_rgbd import DEFAULT_START_STAMP_NS, convert_rgbd_folder

    given = [getattr(args, k) is not None for k in ("fx", "fy", "cx", "cy")]
    if any(given) and not all(given):
        print("error: give all of --fx --fy --cx --cy, or none (then camera.yaml)", file=sys.stderr)
        return 2
    intrinsics = (args.fx, args.fy, args.cx, args.cy) if all(given) else None
    start_ns = (
        DEFAULT_START_STAMP_NS if args.start_time is None else int(round(args.start_time * 1e9))
    )
    try:
        report = convert_rgbd_folder(
            args.folder,
            args.output_bag,
            intrinsics=intrinsics,
            depth_scale=args.depth_scale,
            rate_hz=args.rate,
            storage=args.storage,
            fixed_frame=args.fixed_frame,
            camera_frame=args.camera_frame,
            color_order=args.color_order,
            start_stamp_ns=start_ns,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fx, fy, cx, cy = report.intrinsics
    duration = (report.end_stamp_ns - report.start_stamp_ns) / 1e9
    print(f"wrote {report.bag_path} ({report.storage}, {_human_size(report.size_bytes)})")
    print(
        f"  frames: {report.frames}, {report.width}x{report.height} px, "
        f"{duration:.3f} s from stamp {report.start_stamp_ns} ns"
    )
    print(
        f"  intrinsics: fx={fx:g} fy={fy:g} cx={cx:g} cy={cy:g} px, "
        f"input depth scale {report.input_depth_scale:g} units/m"
    )
    if report.depth_pixels_out_of_range:
        print(
            f"  warning: {report.depth_pixels_out_of_range} depth pixels beyond 65.535 m set to 0"
        )
    print("  topics:")
    width = max(len(t) for t in report.topics)
    for topic, (msgtype, count) in report.topics.items():
        print(f"    {topic:<{width}}  {count:>6}  {msgtype}")
    return 0
