#!/usr/bin/env python3
"""Benchmark: semantic voxel map geometry integration and semantic fusion on real Kinect frames.

The 5 ``rgbd_slambook`` frames (640x480, ~210-250 k points each) are lifted into the world
frame. A map at ``--voxel`` metres is first filled to about ``--fill`` voxels with copies of
the frames shifted ``--shift`` metres apart (distinct voxels), then, interleaved repeat by
repeat (medians over ``--repeats``):

- ``integrate revisit``: a real frame at its own place (its voxels mostly exist already),
  voxelised by the map itself;
- ``integrate revisit, grid given``: the same with the window's grid sample of the frame
  passed in (what the pipeline does when the map and window voxel sizes are equal);
- ``integrate new area``: a frame shifted to unseen space (every voxel is created);
- ``integrate bounded``: into a map with ``max_voxels = --fill`` that evicts as it goes;
- ``fuse``: the voxels of the real 5-frame window (``fuse_window``, ~270 k voxels) with
  K = ``--classes`` class probabilities, D = ``--dim`` unit embeddings and confidences, into
  voxels that already hold semantics (the steady state); ``fuse first`` is the first fusion
  of those voxels;
- ``snapshot``: :meth:`SemanticVoxelMap.snapshot` of the whole map (what ``~/map/semantic_points``
  needs) and of the voxels updated by the last fusion with float16 unit embeddings (what
  ``~/map/language_features`` needs).

Targets (issue 11): integrate <= 20 ms per frame into a map of ~300 k voxels; fuse <= 80 ms
for M = 270 k, K = 20, D = 384. Wall times depend on what else runs on the machine, so the
process CPU time (all threads) of integrate and fuse is printed too, with the load average;
``--json OUT`` writes every number.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_lift_voxelize import DEFAULT_DATA  # noqa: E402
from bench_window import lifted_frames, report, restamped  # noqa: E402

from concerto_ros.cloud.voxel import grid_sample  # noqa: E402
from concerto_ros.cloud.window import VideoPointCloud  # noqa: E402
from concerto_ros.mapping import SemanticVoxelMap  # noqa: E402
from concerto_ros.sensors.types import PointFrame  # noqa: E402


def shifted(frame: PointFrame, dx: float) -> PointFrame:
    """``frame`` moved ``dx`` metres along x (points and pose)."""
    T = frame.T_fixed_sensor.copy()
    T[0, 3] += dx
    return PointFrame(frame.stamp_ns, frame.points + np.float32([dx, 0, 0]), frame.colors, frame.pixel_index,
                      frame.labels, frame.frame_id, frame.sensor_frame_id, T, frame.image_shape)


def fill(m: SemanticVoxelMap, frames: list[PointFrame], target: int, shift: float) -> None:
    """Integrate shifted copies of ``frames`` until the map holds about ``target`` voxels."""
    k = 1
    while len(m) < target:
        for f in frames:
            m.integrate_frame(shifted(f, k * shift))
            if len(m) >= target:
                break
        k += 1


def timed(fn, cpu: list | None = None) -> float:
    """Wall milliseconds of ``fn()``; appends its process CPU milliseconds (all threads) to
    ``cpu`` when given."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall = (time.perf_counter() - t0) * 1e3
    if cpu is not None:
        cpu.append((time.process_time() - c0) * 1e3)
    return wall


def window_inputs(frames, voxel: float, classes: int, dim: int, seed: int = 0):
    """The real 5-frame window and random semantics of its voxels."""
    win = VideoPointCloud(len(frames), voxel)
    for f in frames:
        win.push(f)
    wc = win.build()
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((wc.num_voxels, classes)).astype(np.float32)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    emb = rng.standard_normal((wc.num_voxels, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return wc, probs, probs.max(axis=1), emb


def run(frames, voxel: float, fill_to: int, shift: float, repeats: int, classes: int, dim: int) -> dict:
    names = [f"c{i}" for i in range(classes)]
    m = SemanticVoxelMap(voxel, "world", class_names=names, embedding_dim=dim)  # revisits, fusion: ~fill_to
    grow = SemanticVoxelMap(voxel, "world", class_names=names)  # new areas, unbounded
    bounded = SemanticVoxelMap(voxel, "world", max_voxels=fill_to, class_names=names)  # new areas, evicting
    for f in frames:
        m.integrate_frame(f)
    for mm in (m, grow, bounded):
        fill(mm, frames, fill_to, shift)
    wc, probs, conf, emb = window_inputs(frames, voxel, classes, dim)
    t = {k: [] for k in ("integrate_ms", "integrate_grid_ms", "integrate_new_ms", "integrate_bounded_ms",
                         "fuse_ms", "integrate_cpu_ms", "fuse_cpu_ms")}
    t_first = timed(lambda: m.fuse_window(wc, conf, class_probs=probs, embeddings=emb))
    far = 1000.0
    for r in range(repeats):
        f = restamped(frames[r % len(frames)], (r + 1) * 33_333_333)
        grid = grid_sample(f.points, voxel)
        t["integrate_ms"].append(timed(lambda: m.integrate_frame(f), t["integrate_cpu_ms"]))
        t["integrate_grid_ms"].append(timed(lambda: m.integrate_frame(f, grid=grid)))
        far += shift
        t["integrate_new_ms"].append(timed(lambda: grow.integrate_frame(shifted(f, far))))
        t["integrate_bounded_ms"].append(timed(lambda: bounded.integrate_frame(shifted(f, far))))
        t["fuse_ms"].append(timed(lambda: m.fuse_window(wc, conf, class_probs=probs, embeddings=emb), t["fuse_cpu_ms"]))
    for _ in range(3):  # the publishers' reads: the whole map, and the voxels of the last fusion
        t.setdefault("snapshot_ms", []).append(timed(lambda: m.snapshot()))
        since = m.version - 1
        t.setdefault("features_ms", []).append(
            timed(lambda: m.snapshot(since=since, embeddings=True, embedding_dtype=np.float16)))
    out = {k: float(np.median(v)) for k, v in t.items()}
    st, sb = m.stats(), bounded.stats()
    out.update(fuse_first_ms=t_first, map_voxels=st.num_voxels, map_mib=st.bytes_used / 2**20,
               bounded_voxels=sb.num_voxels, bounded_evictions=sb.evictions, fuse_voxels=wc.num_voxels,
               frame_points=int(np.median([f.num_points for f in frames])), classes=classes, dim=dim,
               voxel_size=voxel, repeats=repeats, threads=m.threads, loadavg=list(os.getloadavg()))
    return out


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    parser = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="rgbd_slambook folder (default: ../shared/data/rgbd_slambook beside the repo)")
    parser.add_argument("--voxel", type=float, default=0.02, help="voxel edge in metres (default 0.02)")
    parser.add_argument("--fill", type=int, default=300_000, help="voxels in the map before timing (default 300000)")
    parser.add_argument("--shift", type=float, default=20.0, help="metres between the filling copies (default 20)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats (default 10)")
    parser.add_argument("--classes", type=int, default=20, help="K, class probabilities per voxel (default 20)")
    parser.add_argument("--dim", type=int, default=384, help="D, embedding width (default 384)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found: nothing to benchmark", file=sys.stderr)
        return 2
    frames = lifted_frames(args.data)
    res = run(frames, args.voxel, args.fill, args.shift, args.repeats, args.classes, args.dim)
    print(f"map: {res['map_voxels']} voxels ({res['map_mib']:.0f} MiB), frames of ~{res['frame_points']} points, "
          f"voxel {args.voxel} m, {res['threads']} fusion threads")
    print(f"integrate revisit:             {res['integrate_ms']:6.1f} ms   (target <= 20; CPU {res['integrate_cpu_ms']:.1f} ms)")
    print(f"integrate revisit, grid given: {res['integrate_grid_ms']:6.1f} ms")
    print(f"integrate new area:            {res['integrate_new_ms']:6.1f} ms")
    print(f"integrate bounded ({args.fill} max): {res['integrate_bounded_ms']:6.1f} ms "
          f"({res['bounded_evictions']} evictions, {res['bounded_voxels']} voxels held)")
    print(f"fuse M={res['fuse_voxels']} K={args.classes} D={args.dim}: {res['fuse_ms']:6.1f} ms   (target <= 80; CPU "
          f"{res['fuse_cpu_ms']:.1f} ms over {res['threads']} threads); first fusion {res['fuse_first_ms']:.1f} ms")
    print(f"snapshot of the whole map (x y z rgb label confidence observations): {res['snapshot_ms']:.1f} ms; "
          f"voxels of the last fusion with float16 unit embeddings: {res['features_ms']:.1f} ms")
    report(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
