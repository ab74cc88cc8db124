#!/usr/bin/env python3
"""Benchmark: the whole perception pipeline on a real Kinect recording, stage by stage.

1. The ``rgbd_slambook`` folder (5 Kinect frames, 640x480) is converted once into a
   temporary MCAP rosbag2 with the project's converter (``convert_rgbd_folder``).
2. The pipeline is built once from the config (default ``config/perception.yaml``: a window
   of 5 frames, 0.02 m voxels, the seeded random 'tiny' encoder on the CPU).
3. The bag is replayed with ``replay_bag`` (the same code path as ``concerto replay``):
   ``--warmup`` untimed passes, then ``--repeats`` timed passes; the window is cleared
   before each pass, so frame k of a pass runs on a window of min(k, window.num_frames)
   frames. For every frame the stages are timed:

   - ``sync``: approximate-time pairing of the frame's colour/depth/camera-info messages;
   - ``convert``: decoding the synced messages into an ``RGBDFrame``;
   - ``lift``: depth -> points in the fixed frame;
   - ``window``: sliding window push + grid sampling (voxelizing) of the whole window;
   - ``encoder``: the Concerto PTv3 encoder on the window's voxels;
   - ``heads``: semantic head (+ PCA feature colours when ``publish.features``);
   - ``to_msg``: building the rclpy ``sensor_msgs/PointCloud2`` messages with
     ``fill_pointcloud2`` as the node does (semantic cloud, plus the feature cloud when
     ``publish.features``), timed here around the calls;
   - ``wall``: wall time from the previous frame's end to this frame's end, which also
     covers reading and deserialising the bag messages and the TF lookup (``other``).

   Frames per second = frames / wall time of the timed replay passes (model construction
   and bag conversion are one-off costs, printed separately). Peak RSS is ``ru_maxrss``.
4. Side by side in the same process, one frame's lift + voxelize by the project against
   Open3D (``benchmarks/bench_lift_voxelize.py``, with the config's depth range and voxel
   size), median ms over frames, and the targets: < 15 ms per frame and >= 2x faster
   than Open3D. Skipped with a message when Open3D cannot be imported.

Run with the project environment::

    scripts/env.sh python benchmarks/bench_pipeline.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import bench_lift_voxelize as blv  # noqa: E402  (also puts the repo on sys.path)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "rgbd_slambook"
TARGET_MS = 15.0
TARGET_RATIO = 2.0
#: columns of the per-frame table, in pipeline order
STAGE_COLS = ("sync", "convert", "lift", "integrate", "window", "encoder", "cross4d", "heads", "fuse", "to_msg")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def parse_args(argv=None) -> argparse.Namespace:
    from concerto_ros.config import default_config_path

    from concerto_ros.cli.helptext import plain
    parser = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="rgbd_slambook folder (default: ../shared/data/rgbd_slambook beside the repo)")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"pipeline config YAML (default: the package's {default_config_path()})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a config setting, e.g. --set window.num_frames=3 (repeatable)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed replay passes over the 5 frames (default 3; ~5 s each on 2 CPU cores)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed replay passes first (default 1)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (sets model.num_threads; default 0 = the config's value)")
    parser.add_argument("--lift-repeats", type=int, default=20,
                        help="timed runs per frame of the lift + voxelize vs Open3D comparison (default 20)")
    parser.add_argument("--no-open3d", action="store_true", help="skip the Open3D comparison")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.lift_repeats < 1:
        parser.error("--lift-repeats must be >= 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    args.parser = parser
    return args


def load_cfg(args):
    from concerto_ros.config import default_config_path, load_config, parse_overrides

    try:
        overrides = parse_overrides(args.overrides)
        if args.threads:
            overrides["model.num_threads"] = args.threads
        path = args.config if args.config is not None else default_config_path()
        return path, load_config(path, overrides)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        args.parser.error(exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc))


class FrameRecorder:
    """``on_result`` callback of ``replay_bag``: builds the output messages (timed as
    ``to_msg``) and records every stage's time per frame from the pipeline's StageTimer.

    Each pass gets a fresh timer that also notes when the first ``sync`` stage began, so
    the replay's start-up (opening the bag, preloading its TF, reaching the first message)
    is reported on its own instead of inside frame 1.
    """

    def __init__(self, pipeline, PointCloud2, PointField):
        from concerto_ros.msgs.pointcloud2 import fill_pointcloud2
        from concerto_ros.pipeline import StageTimer

        class MarkingTimer(StageTimer):
            first_sync_start: float | None = None

            def add(self, name: str, ms: float) -> None:
                if name == "sync" and self.first_sync_start is None:
                    self.first_sync_start = time.perf_counter() - ms * 1e-3
                super().add(name, ms)

        self._timer_cls = MarkingTimer
        self.pipeline = pipeline
        self.fill = fill_pointcloud2
        self.PointCloud2, self.PointField = PointCloud2, PointField
        self.rows: list[dict] = []
        self._seen: dict[str, int] = {}
        self._mark = 0.0
        self.pass_start = 0.0

    def start_pass(self) -> None:
        self.pipeline.reset()
        self.pipeline.timer = self._timer_cls()
        self.rows = []
        self._seen = {}
        self._mark = self.pass_start = time.perf_counter()

    @property
    def startup_s(self) -> float:
        """Seconds from the replay call to the first message reaching the synchroniser."""
        first = self.pipeline.timer.first_sync_start
        return 0.0 if first is None else first - self.pass_start

    def __call__(self, res) -> None:
        t0 = time.perf_counter()
        msg = self.PointCloud2()
        self.fill(msg, self.PointField, res.stamp_ns, res.fixed_frame, res.coord,
                  rgb=res.color, label=res.labels.astype("uint32"), confidence=res.confidence)
        t1 = time.perf_counter()
        if res.feature_colors is not None:
            fmsg = self.PointCloud2()
            self.fill(fmsg, self.PointField, res.stamp_ns, res.fixed_frame, res.coord, rgb=res.feature_colors)
        t2 = time.perf_counter()
        timer = self.pipeline.timer
        timer.add("to_msg", (t2 - t0) * 1e3)
        row = {"frame": None, "window_frames": len(res.window.stamps_ns), "voxels": int(len(res.coord)),
               "points": int(sum(len(f.points) for f in self.pipeline.window.frames)),
               "semantic_msg_bytes": len(msg.data), "to_msg_semantic": (t1 - t0) * 1e3}
        for name, samples in list(timer.samples.items()):  # replay is single-threaded
            new = list(samples)[self._seen.get(name, 0):]  # a deque (the timer keeps recent samples)
            self._seen[name] = len(samples)
            row[name] = float(sum(new))
        now = time.perf_counter()
        if not self.rows:  # frame 1: from the first message, not from the replay call
            self._mark = self.pipeline.timer.first_sync_start or self._mark
        row["wall"] = (now - self._mark) * 1e3
        self._mark = now
        row["other"] = row["wall"] - sum(row.get(s, 0.0) for s in STAGE_COLS)
        self.rows.append(row)


def replay_passes(bag, cfg, pipeline, recorder, n: int, log) -> list[dict]:
    """Replay ``bag`` ``n`` times; per pass ``{"rows", "wall_s", "startup_s"}``."""
    from concerto_ros.bag.replay import replay_bag

    passes = []
    for _ in range(n):
        recorder.start_pass()
        t0 = time.perf_counter()
        report = replay_bag(bag, cfg, pipeline=pipeline, on_result=recorder, log=log, progress=False)
        wall = time.perf_counter() - t0
        if report.skipped:
            log(f"skipped during replay: {report.skipped}")
        for i, row in enumerate(recorder.rows):
            row["frame"] = i + 1
        passes.append({"rows": recorder.rows, "wall_s": wall, "startup_s": recorder.startup_s})
    return passes


def fmt_table(headers: list[str], rows: list[list[str]], title: str | None = None) -> str:
    """Plain fixed-width table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def join(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    line = join(headers)
    out = [title] if title else []
    out += [line, "-" * len(line)]
    out += [join(r) for r in rows]
    return "\n".join(out)


def _machine(torch) -> dict:
    """Print and return the machine's platform, Python, CPU count, torch and CUDA."""
    print(f"machine: {platform.machine()} {os.cpu_count()} CPU cores, "
          f"{'CUDA available' if torch.cuda.is_available() else 'no GPU'}, torch {torch.__version__}")
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "cuda_available": bool(torch.cuda.is_available())}


def _run_replays(args, cfg, log, PointCloud2, PointField) -> dict:
    """Convert the folder to a temporary MCAP bag, build the pipeline and replay the bag
    (``--warmup`` untimed then ``--repeats`` timed passes): ``{"convert_s", "build_s",
    "warmup_s", "threads", "device", "passes"}`` (passes: see :func:`replay_passes`)."""
    import torch

    from concerto_ros.bag.convert_rgbd import convert_rgbd_folder
    from concerto_ros.pipeline import PerceptionPipeline

    intr = blv.INTRINSICS
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        t0 = time.perf_counter()
        conv = convert_rgbd_folder(args.data, Path(tmp) / "bag", intrinsics=(intr.fx, intr.fy, intr.cx, intr.cy),
                                   depth_scale=blv.DEPTH_SCALE, storage="mcap", overwrite=True, progress=False)
        convert_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        pipeline = PerceptionPipeline(cfg, log=log)
        build_s = time.perf_counter() - t0
        threads = torch.get_num_threads()
        print(f"one-off: bag conversion {convert_s * 1e3:.0f} ms ({conv.frames} frames, "
              f"{conv.size_bytes / 2**20:.1f} MiB MCAP); model construction {build_s * 1e3:.0f} ms")
        print(f"pipeline: window {cfg.window.num_frames} frames, voxel {cfg.window.voxel_size} m, "
              f"depth [{cfg.lift.min_depth}, {cfg.lift.max_depth}] m, encoder '{cfg.model.preset}' "
              f"({'checkpoint ' + cfg.model.checkpoint if cfg.model.checkpoint else 'seeded random weights'}), "
              f"device {pipeline.device}, backend {cfg.model.sparse_conv_backend}, torch threads {threads}, "
              f"publish.features {cfg.publish.features}")

        recorder = FrameRecorder(pipeline, PointCloud2, PointField)
        t0 = time.perf_counter()
        if args.warmup:
            replay_passes(conv.bag_path, cfg, pipeline, recorder, args.warmup, log)
        warmup_s = time.perf_counter() - t0
        passes = replay_passes(conv.bag_path, cfg, pipeline, recorder, args.repeats, log)
    return {"convert_s": convert_s, "build_s": build_s, "warmup_s": warmup_s, "threads": threads,
            "device": pipeline.device, "passes": passes}


def _pass_statistics(passes: list[dict]) -> dict | None:
    """Frames/s and per-frame stage times (ms) over the timed passes; None when a pass has
    no frame. ``per_frame``: medians over passes per frame index; ``mean``: over all frames."""
    walls = [p["wall_s"] for p in passes]
    startups = [p["startup_s"] for p in passes]
    loop_s = sum(walls) - sum(startups)
    passes = [p["rows"] for p in passes]
    n_frames = min(len(p) for p in passes)
    if n_frames == 0:
        return None
    total_frames = sum(len(p) for p in passes)
    cols = ("voxels",) + STAGE_COLS + ("other", "wall")
    per_frame = []
    for k in range(n_frames):
        rows_k = [p[k] for p in passes]
        med = {c: float(np.median([r.get(c, 0.0) for r in rows_k])) for c in cols + ("to_msg_semantic",)}
        med.update(frame=k + 1, window_frames=rows_k[0]["window_frames"], points=rows_k[0]["points"])
        per_frame.append(med)
    all_rows = [r for p in passes for r in p]
    mean = {c: float(np.mean([r.get(c, 0.0) for r in all_rows])) for c in cols + ("to_msg_semantic",)}
    return {"walls": walls, "startups": startups, "loop_s": loop_s, "total_frames": total_frames,
            "fps": total_frames / loop_s, "fps_with_startup": total_frames / sum(walls),
            "per_frame": per_frame, "mean": mean}


def _print_pipeline(args, cfg, st: dict, warmup_s: float, rss_replay: float) -> None:
    """The per-frame stage table, frames/s and one-off costs of :func:`_pass_statistics`."""
    per_frame, mean, fps = st["per_frame"], st["mean"], st["fps"]
    full = per_frame[-1]
    headers = ["frame", "win", "voxels"] + [f"{c} ms" for c in STAGE_COLS] + ["other ms", "wall ms"]

    def cells(label, win, r):
        return [label, win, f"{r['voxels']:.0f}"] + [f"{r[c]:.2f}" for c in STAGE_COLS] + \
               [f"{r['other']:.2f}", f"{r['wall']:.1f}"]

    rows = [cells(str(r["frame"]), str(r["window_frames"]), r) for r in per_frame]
    rows.append(cells("mean", "", mean))
    print()
    print(fmt_table(headers, rows, title=(
        f"Pipeline per frame (median of {args.repeats} timed passes after {args.warmup} warm-up; "
        f"win = frames in the window; other = bag read/deserialise + TF lookup + callbacks)")))
    print(f"to_msg: semantic cloud alone {mean['to_msg_semantic']:.2f} ms mean"
          + (" (the rest is the feature cloud)" if cfg.publish.features else ""))
    print(f"end-to-end: {st['total_frames']} frames in {st['loop_s']:.2f} s -> {fps:.2f} frames/s "
          f"({1e3 / fps:.0f} ms/frame); frame {full['frame']} (window of {full['window_frames']} frames, "
          f"{full['voxels']:.0f} voxels): "
          f"{full['wall']:.0f} ms -> {1e3 / full['wall']:.2f} frames/s")
    print(f"one-off: replay start-up (open bag, preload TF) {1e3 * np.median(st['startups']):.0f} ms per pass, "
          f"not in the frames/s ({st['fps_with_startup']:.2f} frames/s with it); warm-up pass(es) {warmup_s:.2f} s")
    print(f"peak RSS after replay: {rss_replay:.0f} MiB")


def _lift_voxelize_comparison(args, cfg) -> tuple[list[dict], dict, Any, str | None]:
    """Lift + voxelize of one frame, ours against Open3D (when importable), printed as a
    table: ``(per-frame rows, summary, open3d module or None, reason it was skipped)``."""
    print()
    frames = blv.load_frames(args.data)
    o3d, why = (None, "--no-open3d") if args.no_open3d else blv.import_open3d()
    if o3d is None:
        print(f"Open3D comparison skipped: open3d cannot be used ({why}); install it with "
              "pip install -r requirements/bench.txt (needs libusb-1.0-0)")
    cmp_rows = blv.compare(frames, args.lift_repeats, cfg.window.voxel_size, min_depth=cfg.lift.min_depth,
                           max_depth=cfg.lift.max_depth, o3d=o3d)
    s = blv.summarize(cmp_rows)
    headers = ["frame", "points", "voxels", "lift ms", "grid ms", "ours ms"]
    if o3d is not None:
        headers += ["o3d voxels", "open3d ms", "ratio"]
    rows = []
    for r in cmp_rows + [dict(s, frame="median", points=None, voxels=None, o3d_voxels=None)]:
        row = [str(r["frame"]), "" if r["points"] is None else str(r["points"]),
               "" if r["voxels"] is None else str(r["voxels"]),
               f"{r['lift_ms']:.2f}", f"{r['grid_ms']:.2f}", f"{r['ours_ms']:.2f}"]
        if o3d is not None:
            row += ["" if r["o3d_voxels"] is None else str(r["o3d_voxels"]), f"{r['open3d_ms']:.2f}",
                    f"{r['open3d_ms'] / r['ours_ms']:.2f}x"]
        rows.append(row)
    print(fmt_table(headers, rows, title=(
        f"Lift + voxelize of one frame ({cfg.window.voxel_size} m, depth [{cfg.lift.min_depth}, "
        f"{cfg.lift.max_depth}] m; median of {args.lift_repeats} runs" + (", Open3D " + o3d.__version__ if o3d else "")
        + ")")))
    return cmp_rows, s, o3d, why


def _print_targets(s: dict, o3d, rss_replay: float, rss_end: float) -> None:
    """The lift + voxelize targets (< 15 ms, >= 2x Open3D) and the peak RSS."""
    print()
    target_rows = [["lift + voxelize < 15 ms per frame", f"{s['ours_ms']:.2f} ms",
                    "met" if s["target_15ms_met"] else "NOT MET"]]
    if o3d is not None:
        target_rows.append([">= 2x faster than Open3D", f"{s['ratio']:.2f}x ({s['open3d_ms']:.2f} ms)",
                            "met" if s["target_2x_met"] else "NOT MET"])
    else:
        target_rows.append([">= 2x faster than Open3D", "n/a", "not measured (no Open3D)"])
    print(fmt_table(["target", "measured", "status"], target_rows, title="Targets"))
    print(f"peak RSS: {rss_replay:.0f} MiB after the replay, {rss_end:.0f} MiB at the end"
          + (" (with Open3D loaded)" if o3d is not None else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found: nothing to benchmark "
              "(expects ../shared/data/rgbd_slambook beside the repo, or --data)", file=sys.stderr)
        return 2
    cfg_path, cfg = load_cfg(args)

    try:
        from sensor_msgs.msg import PointCloud2, PointField
    except ImportError as exc:
        print(f"rclpy's sensor_msgs cannot be imported ({exc}); run inside the project environment: "
              "scripts/env.sh python benchmarks/bench_pipeline.py", file=sys.stderr)
        return 2
    import torch

    notes: list[str] = []

    def log(msg: str) -> None:
        if msg not in notes:  # each distinct message once (repeated passes repeat them)
            notes.append(msg)
            print(f"  [pipeline] {msg}")

    out: dict = {"machine": _machine(torch)}
    print(f"data: {args.data}  config: {cfg_path}" + (f"  overrides: {args.overrides}" if args.overrides else ""))
    run = _run_replays(args, cfg, log, PointCloud2, PointField)
    rss_replay = peak_rss_mib()
    st = _pass_statistics(run["passes"])
    if st is None:
        print("no frame went through the pipeline (see the messages above)", file=sys.stderr)
        return 1
    _print_pipeline(args, cfg, st, run["warmup_s"], rss_replay)
    full = st["per_frame"][-1]
    out.update(config={"path": str(cfg_path), "overrides": args.overrides,
                       "window_frames": cfg.window.num_frames, "voxel_size": cfg.window.voxel_size,
                       "preset": cfg.model.preset, "checkpoint": cfg.model.checkpoint,
                       "device": str(run["device"]), "torch_threads": run["threads"],
                       "publish_features": cfg.publish.features},
               one_off_s={"bag_conversion": run["convert_s"], "model_construction": run["build_s"],
                          "warmup": run["warmup_s"]},
               repeats=args.repeats, warmup=args.warmup, per_frame_median_ms=st["per_frame"], mean_ms=st["mean"],
               passes_wall_s=st["walls"], passes_startup_s=st["startups"], frames=st["total_frames"],
               loop_s=st["loop_s"], fps=st["fps"], fps_with_startup=st["fps_with_startup"],
               last_frame_fps=1e3 / full["wall"], peak_rss_mib_after_replay=rss_replay, notes=notes)

    cmp_rows, s, o3d, why = _lift_voxelize_comparison(args, cfg)
    rss_end = peak_rss_mib()
    _print_targets(s, o3d, rss_replay, rss_end)
    out.update(lift_voxelize={"repeats": args.lift_repeats, "open3d": o3d.__version__ if o3d else None,
                              "skipped_reason": why or None, "per_frame": cmp_rows, "median": s},
               targets={"lift_voxelize_lt_15ms": bool(s["target_15ms_met"]),
                        "ge_2x_faster_than_open3d": s["target_2x_met"]},
               peak_rss_mib=rss_end)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
