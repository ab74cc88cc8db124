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


def import_open3d():
    """``open3d`` or ``(None, reason)`` when it cannot be imported (not installed, or a
    missing system library such as ``libusb-1.0.so.0``)."""
    try:
        import open3d as o3d
    except ImportError as exc:  # also raised for a missing shared library
        return None, f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return o3d, ""


def run_ours(frame, T, voxel: float, min_depth: float = 0.1, max_depth: float = 10.0):
    """The project's lift (world frame) + grid sample of one frame, as the pipeline runs them."""
    pf = lift_depth(frame, T, min_depth=min_depth, max_depth=max_depth)
    return pf, grid_sample(pf.points, voxel)


def make_open3d_runner(o3d, frames, voxel: float, max_depth: float = 10.0):
    """``run(i) -> (pcd, downsampled)``: Open3D's lift + voxel down-sampling of frame ``i``.

    The numpy -> ``o3d.geometry.Image`` conversion is done here, once (favours Open3D).
    """
    intr = o3d.camera.PinholeCameraIntrinsic(
        INTRINSICS.width, INTRINSICS.height, INTRINSICS.fx, INTRINSICS.fy, INTRINSICS.cx, INTRINSICS.cy
    )
    inputs = [(o3d.geometry.Image(frame.color), o3d.geometry.Image(frame.depth), np.linalg.inv(T))
              for frame, T in frames]

    def run(i):
        color, depth, extrinsic = inputs[i]
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            color, depth, depth_scale=DEPTH_SCALE, depth_trunc=max_depth, convert_rgb_to_intensity=False
        )
        pcd = o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, intr, extrinsic)
        return pcd, pcd.voxel_down_sample(voxel)

    return run


def compare(frames, repeats: int, voxel: float, min_depth: float = 0.1, max_depth: float = 10.0,
            o3d=None, on_row=None) -> list[dict]:
    """Time ours (lift, grid, both) and Open3D (when ``o3d`` is given) on every frame.

    One warm-up run per frame and method, then ``repeats`` interleaved timed runs.
    Returns one dict per frame: ``frame, points, voxels, lift_ms, grid_ms, ours_ms`` (medians)
    and, with Open3D, ``o3d_points, o3d_voxels, open3d_ms``; ``on_row(row)`` is called as
    each frame finishes.
    """
    open3d_run = make_open3d_runner(o3d, frames, voxel, max_depth) if o3d is not None else None
    rows = []
    for i, (frame, T) in enumerate(frames):
        pf, gs = run_ours(frame, T, voxel, min_depth, max_depth)  # warm-up (ray cache, work buffers)
        if open3d_run is not None:
            pcd, down = open3d_run(i)
        t_lift, t_grid, t_ours, t_o3d = [], [], [], []
        for _ in range(repeats):
            ms, pf = timed(lambda: lift_depth(frame, T, min_depth=min_depth, max_depth=max_depth))
            t_lift.append(ms)
            t_grid.append(timed(lambda: grid_sample(pf.points, voxel))[0])
            t_ours.append(timed(lambda: run_ours(frame, T, voxel, min_depth, max_depth))[0])
            if open3d_run is not None:
                t_o3d.append(timed(lambda: open3d_run(i))[0])
        row = {"frame": i + 1, "points": int(pf.num_points), "voxels": int(gs.num_voxels),
               "lift_ms": float(np.median(t_lift)), "grid_ms": float(np.median(t_grid)),
               "ours_ms": float(np.median(t_ours))}
        if open3d_run is not None:
            row.update(o3d_points=len(pcd.points), o3d_voxels=len(down.points), open3d_ms=float(np.median(t_o3d)))
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Medians over frames (``lift_ms, grid_ms, ours_ms`` and, with Open3D, ``open3d_ms``,
    ``ratio`` = Open3D / ours) and the targets: ``target_15ms_met`` (ours < 15 ms) and
    ``target_2x_met`` (Open3D >= 2 x ours; None without Open3D)."""
    keys = ["lift_ms", "grid_ms", "ours_ms"] + (["open3d_ms"] if rows and "open3d_ms" in rows[0] else [])
    med = {k: float(np.median([r[k] for r in rows])) for k in keys}
    med["target_15ms_met"] = med["ours_ms"] < 15.0
    med["ratio"] = med["open3d_ms"] / med["ours_ms"] if "open3d_ms" in med else None
    med["target_2x_met"] = med["open3d_ms"] >= 2.0 * med["ours_ms"] if "open3d_ms" in med else None
    return med


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    parser = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
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
    o3d, why = import_open3d()
    if o3d is None:
        print(f"open3d cannot be imported ({why}): skipping the Open3D comparison (pip install open3d)")

    print(f"data: {args.data}  frames: {len(frames)}  voxel: {args.voxel} m  repeats: {args.repeats}")
    header = f"{'frame':>5} {'points':>7} {'voxels':>7} {'lift ms':>8} {'grid ms':>8} {'ours ms':>8}"
    if o3d is not None:
        header += f" {'o3d pts':>7} {'o3d vox':>7} {'open3d ms':>9} {'ratio':>6}"
    print(header)

    def print_row(r):
        line = (f"{r['frame']:>5} {r['points']:>7} {r['voxels']:>7} "
                f"{r['lift_ms']:>8.2f} {r['grid_ms']:>8.2f} {r['ours_ms']:>8.2f}")
        if "open3d_ms" in r:
            line += (f" {r['o3d_points']:>7} {r['o3d_voxels']:>7} {r['open3d_ms']:>9.2f}"
                     f" {r['open3d_ms'] / r['ours_ms']:>5.2f}x")
        print(line)

    rows = compare(frames, args.repeats, args.voxel, min_depth=0.1, max_depth=args.max_depth, o3d=o3d,
                   on_row=print_row)
    med = summarize(rows)
    summary = (f"median over frames: lift {med['lift_ms']:.2f} ms + grid {med['grid_ms']:.2f} ms"
               f" -> ours {med['ours_ms']:.2f} ms per frame")
    if o3d is not None:
        summary += f"; open3d {med['open3d_ms']:.2f} ms; ratio {med['ratio']:.2f}x"
    print(summary)
    print(f"target ours < 15 ms: {'met' if med['target_15ms_met'] else 'MISSED'}", end="")
    if o3d is not None:
        print(f"; target >= 2x faster than Open3D: {'met' if med['target_2x_met'] else 'MISSED'}")
    else:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
