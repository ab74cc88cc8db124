#!/usr/bin/env python3
"""Benchmark: depth lifting + 2 cm voxel grid sampling vs Open3D on real Kinect frames.

For each of the 5 ``rgbd_slambook`` frames (640x480, uint16 mm depth) this measures, in the
same process and interleaved repeat by repeat (so both see the same machine state):

- ``lift``: :func:`concerto_ros.sensors.lifting.lift_depth` with the frame's camera-to-world
  pose (points, colours and pixel indices in the world frame);
- ``grid``: :func:`concerto_ros.cloud.voxel.grid_sample` at ``--voxel`` metres (one point per
  voxel plus the inverse map);
- ``ours``: both together, as the pipeline runs them;
- ``open3d``: ``RGBDImage.create_from_color_and_depth(depth_scale=1000, depth_trunc,
  convert_rgb_to_intensity=False)`` -> ``PointCloud.create_from_rgbd_image`` (same intrinsics,
  same pose as extrinsic) -> ``voxel_down_sample(voxel)``. The numpy -> ``o3d.geometry.Image``
  conversion is done once outside the timing (favours Open3D).

Times are medians over ``--repeats`` runs after one warm-up run. Open3D averages the points
of a voxel while ours keeps a representative and also returns the inverse map; Open3D's
grid is offset by half a voxel, so voxel counts differ slightly.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from concerto_ros.cloud.voxel import grid_sample  # noqa: E402
from concerto_ros.sensors.lifting import lift_depth  # noqa: E402
from concerto_ros.sensors.types import CameraIntrinsics, RGBDFrame  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "rgbd_slambook"
INTRINSICS = CameraIntrinsics(fx=518.0, fy=519.0, cx=325.5, cy=253.5, width=640, height=480)
DEPTH_SCALE = 1000.0


def load_frames(data: Path):
    """Return ``[(RGBDFrame, T_world_camera)]`` for the recording in ``data``."""
    import cv2
    import transforms3d.quaternions as tq

    poses = np.loadtxt(data / "pose.txt")
    out = []
    for i, (tx, ty, tz, qx, qy, qz, qw) in enumerate(poses):
        bgr = cv2.imread(str(data / "color" / f"{i + 1}.png"), cv2.IMREAD_COLOR)
        depth = cv2.imread(str(data / "depth" / f"{i + 1}.pgm"), cv2.IMREAD_UNCHANGED)
        if bgr is None or depth is None:
            raise FileNotFoundError(f"frame {i + 1} missing under {data}")
        T = np.eye(4)
        T[:3, :3] = tq.quat2mat([qw, qx, qy, qz])
        T[:3, 3] = [tx, ty, tz]
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        out.append((RGBDFrame(i * 33_333_333, "kinect_rgb_optical", rgb, depth, DEPTH_SCALE, INTRINSICS), T))
    return out


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return (time.perf_counter() - t0) * 1e3, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="rgbd_slambook folder (default: ../shared/data/rgbd_slambook beside the repo)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per frame and method (default 30)")
    parser.add_argument("--voxel", type=float, default=0.02, help="voxel size in metres (default 0.02)")
    parser.add_argument("--max-depth", type=float, default=10.0,
                        help="depth truncation in metres, both pipelines (default 10)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not args.data.is_dir():
        print(f"data folder {args.data} not found: nothing to benchmark", file=sys.stderr)
        return 2

    frames = load_frames(args.data)
    try:
        import open3d as o3d
    except ImportError:
        o3d = None
        print("open3d is not installed: skipping the Open3D comparison (pip install open3d)")

    o3d_inputs = []
    if o3d is not None:
        intr = o3d.camera.PinholeCameraIntrinsic(
            INTRINSICS.width, INTRINSICS.height, INTRINSICS.fx, INTRINSICS.fy, INTRINSICS.cx, INTRINSICS.cy
        )
        for frame, T in frames:
            o3d_inputs.append((o3d.geometry.Image(frame.color), o3d.geometry.Image(frame.depth), np.linalg.inv(T)))

    def ours(frame, T):
        pf = lift_depth(frame, T, min_depth=0.1, max_depth=args.max_depth)
        return pf, grid_sample(pf.points, args.voxel)

    def open3d_run(i):
        color, depth, extrinsic = o3d_inputs[i]
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            color, depth, depth_scale=DEPTH_SCALE, depth_trunc=args.max_depth, convert_rgb_to_intensity=False
        )
        pcd = o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, intr, extrinsic)
        return pcd, pcd.voxel_down_sample(args.voxel)

    print(f"data: {args.data}  frames: {len(frames)}  voxel: {args.voxel} m  repeats: {args.repeats}")
    header = f"{'frame':>5} {'points':>7} {'voxels':>7} {'lift ms':>8} {'grid ms':>8} {'ours ms':>8}"
    if o3d is not None:
        header += f" {'o3d pts':>7} {'o3d vox':>7} {'open3d ms':>9} {'ratio':>6}"
    print(header)
    rows = []
    for i, (frame, T) in enumerate(frames):
        pf, gs = ours(frame, T)  # warm-up (ray cache, work buffers)
        if o3d is not None:
            pcd, down = open3d_run(i)
        t_lift, t_grid, t_ours, t_o3d = [], [], [], []
        for _ in range(args.repeats):
            ms, pf = timed(lambda: lift_depth(frame, T, min_depth=0.1, max_depth=args.max_depth))
            t_lift.append(ms)
            t_grid.append(timed(lambda: grid_sample(pf.points, args.voxel))[0])
            t_ours.append(timed(lambda: ours(frame, T))[0])
            if o3d is not None:
                t_o3d.append(timed(lambda: open3d_run(i))[0])
        row = [np.median(t_lift), np.median(t_grid), np.median(t_ours)]
        line = (f"{i + 1:>5} {pf.num_points:>7} {gs.num_voxels:>7} "
                f"{row[0]:>8.2f} {row[1]:>8.2f} {row[2]:>8.2f}")
        if o3d is not None:
            row.append(np.median(t_o3d))
            line += f" {len(pcd.points):>7} {len(down.points):>7} {row[3]:>9.2f} {row[3] / row[2]:>5.2f}x"
        rows.append(row)
        print(line)
    med = np.median(np.array(rows), axis=0)
    summary = f"median over frames: lift {med[0]:.2f} ms + grid {med[1]:.2f} ms -> ours {med[2]:.2f} ms per frame"
    if o3d is not None:
        summary += f"; open3d {med[3]:.2f} ms; ratio {med[3] / med[2]:.2f}x"
    print(summary)
    print(f"target ours < 15 ms: {'met' if med[2] < 15.0 else 'MISSED'}", end="")
    if o3d is not None:
        print(f"; target >= 2x faster than Open3D: {'met' if med[3] >= 2.0 * med[2] else 'MISSED'}")
    else:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
