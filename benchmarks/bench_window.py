#!/usr/bin/env python3
"""Benchmark: the incremental sliding window vs re-voxelising the whole window every frame.

The 5 real Kinect frames of ``rgbd_slambook`` (640x480, ~210-250 k points each) are lifted
once into the world frame, then pushed in a loop with advancing stamps into a full window of
``--frames`` frames at ``--voxel`` metres (steady state: every push evicts the oldest frame).
Per push, interleaved repeat by repeat, it times

- ``incremental``: :meth:`VideoPointCloud.push` (grid-samples the new frame once) +
  :meth:`VideoPointCloud.build` (merges the per-frame voxel sets), as the pipeline runs them;
- ``full``: what the window did before: concatenate the T frames' points and colours and
  :func:`grid_sample` all of them (plus the representative gathers);
- ``budget``: the incremental build with ``--max-voxels`` (the encoder budget) on.

It checks that both give the same voxels, prints medians and the ratio measured in this run,
with the load average, and optionally writes them to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_lift_voxelize import DEFAULT_DATA, load_frames  # noqa: E402

from concerto_ros.cloud.voxel import grid_sample  # noqa: E402
from concerto_ros.cloud.window import VideoPointCloud  # noqa: E402
from concerto_ros.sensors.lifting import lift_depth  # noqa: E402
from concerto_ros.sensors.types import PointFrame  # noqa: E402


def lifted_frames(data: Path) -> list[PointFrame]:
    """The recording's frames as world-frame :class:`PointFrame` s (with their poses)."""
    return [lift_depth(f, T, min_depth=0.1, max_depth=8.0, fixed_frame="world") for f, T in load_frames(data)]


def restamped(frame: PointFrame, stamp_ns: int) -> PointFrame:
    return PointFrame(stamp_ns, frame.points, frame.colors, frame.pixel_index, frame.labels, frame.frame_id,
                      frame.sensor_frame_id, frame.T_fixed_sensor, frame.image_shape)


def full_build(frames: list[PointFrame], voxel: float):
    """The previous window build: grid_sample of the concatenated frames."""
    points = np.concatenate([f.points for f in frames])
    colors = np.concatenate([f.colors for f in frames])
    gs = grid_sample(points, voxel)
    return gs, points[gs.index], colors[gs.index]


def run(frames: list[PointFrame], num_frames: int, voxel: float, repeats: int, max_voxels: int) -> dict:
    """Median milliseconds per push of each method (see the module docstring)."""
    win = VideoPointCloud(num_frames, voxel)
    budget = VideoPointCloud(num_frames, voxel, max_voxels=max_voxels)
    stamp = 0
    for k in range(num_frames):  # fill both windows
        stamp += 33_333_333
        f = restamped(frames[k % len(frames)], stamp)
        win.push(f)
        budget.push(f)
    t_push, t_build, t_full, t_budget, voxels, points = [], [], [], [], [], []
    for r in range(repeats):
        stamp += 33_333_333
        f = restamped(frames[(num_frames + r) % len(frames)], stamp)
        t0 = time.perf_counter()
        win.push(f)
        t1 = time.perf_counter()
        wc = win.build()
        t2 = time.perf_counter()
        gs, coord, _ = full_build(list(win.frames), voxel)
        t3 = time.perf_counter()
        budget.push(f)
        budget.build()
        t4 = time.perf_counter()
        if not (np.array_equal(wc.inverse, gs.inverse) and np.array_equal(wc.coord, coord)):
            raise AssertionError("incremental window differs from the full re-voxelisation")
        t_push.append(t1 - t0)
        t_build.append(t2 - t1)
        t_full.append(t3 - t2)
        t_budget.append(t4 - t3)
        voxels.append(wc.num_voxels)
        points.append(wc.num_points)
    med = {k: float(np.median(v)) * 1e3 for k, v in
           (("push_ms", t_push), ("build_ms", t_build), ("full_ms", t_full), ("budget_push_build_ms", t_budget))}
    med["incremental_ms"] = med["push_ms"] + med["build_ms"]
    med["speedup"] = med["full_ms"] / med["incremental_ms"]
    med.update(window_points=int(np.median(points)), window_voxels=int(np.median(voxels)), num_frames=num_frames,
               voxel_size=voxel, repeats=repeats, max_voxels=max_voxels, loadavg=list(os.getloadavg()))
    return med


def report(res: dict, json_path: Path | None) -> None:
    """Print the load average measured with ``res`` and write ``res`` to ``json_path`` (if any)."""
    print(f"load average: {' '.join(f'{x:.2f}' for x in res['loadavg'])}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=2))


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    parser = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="rgbd_slambook folder (default: ../shared/data/rgbd_slambook beside the repo)")
    parser.add_argument("--frames", type=int, default=5, help="window length T in frames (default 5)")
    parser.add_argument("--voxel", type=float, default=0.02, help="voxel edge in metres (default 0.02)")
    parser.add_argument("--repeats", type=int, default=15, help="timed pushes (default 15)")
    parser.add_argument("--max-voxels", type=int, default=100_000,
                        help="encoder budget of the 'budget' column, voxels (default 100000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found: nothing to benchmark", file=sys.stderr)
        return 2
    frames = lifted_frames(args.data)
    print(f"data: {args.data}  window: {args.frames} frames  voxel: {args.voxel} m  repeats: {args.repeats}")
    res = run(frames, args.frames, args.voxel, args.repeats, args.max_voxels)
    print(f"window: {res['window_points']} points -> {res['window_voxels']} voxels")
    print(f"incremental: push {res['push_ms']:.1f} ms + build {res['build_ms']:.1f} ms = "
          f"{res['incremental_ms']:.1f} ms per frame")
    print(f"full re-voxelisation: {res['full_ms']:.1f} ms per frame  -> speed-up {res['speedup']:.2f}x")
    print(f"incremental with max_voxels={args.max_voxels}: {res['budget_push_build_ms']:.1f} ms per frame")
    report(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
