"""``concerto replay BAG``: run a recording through the pipeline and write the results."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Run a recording (rosbag2 MCAP or sqlite3, ROS 1 .bag or ROS 1 MCAP) through the perception
pipeline, building the semantic map exactly as the node does (every frame integrated, the
encoders on keyframes, the last frame always encoded), and write <out>/window.ply (x y z in
metres in the fixed frame, RGB, label, confidence of every voxel of the last window),
<out>/window.png (plan views: colour, labels, PCA features), <out>/map.npz (the saved map,
loadable with map.load_path and `concerto query --map`), <out>/map.ply (x y z, RGB, label,
confidence, observations of every map voxel) and <out>/summary.json (frames integrated,
keyframes encoded, map voxels and memory, skips, per-stage timings in ms, label histogram).

Offline (default) the bag is read with the rosbags library and poses come from its /tf and
/tf_static through the project's transform buffer; no ROS needed. With --live the bag is
published over DDS into a running perception_node (or one started with --start-node) and
the clouds it publishes are collected.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("replay", help="run a rosbag2 through the pipeline (offline or into a live node)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="rosbag2 directory or .mcap/.db3 file")
    p.add_argument("-o", "--output", type=Path, default=Path("outputs/replay"),
                   help="output directory (default: outputs/replay)")
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="parameters YAML (default: the package's config/perception.yaml)")
    p.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE", default=[],
                   help="override a setting, e.g. --set window.num_frames=3 --set model.device=cuda (repeatable)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many synced frames")
    p.add_argument("--live", action="store_true", help="publish into a running perception_node over DDS")
    p.add_argument("--start-node", action="store_true",
                   help="with --live: start perception_node as a child process with the same config")
    p.add_argument("--node", default="/perception_node", help="with --live: fully qualified node name")
    p.add_argument("--rate", type=float, default=1.0,
                   help="with --live --no-lockstep: playback speed factor (1.0 = recorded speed)")
    p.add_argument("--no-lockstep", dest="lockstep", action="store_false",
                   help="with --live: play at the recorded rate instead of waiting for each frame's cloud")
    p.add_argument("--frame-timeout", type=float, default=60.0,
                   help="with --live: seconds to wait for the node's cloud per frame (lockstep)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from concerto_ros.config import default_config_path, load_config, parse_overrides

    cfg_path = args.config or default_config_path()
    cfg = load_config(cfg_path, parse_overrides(args.overrides))
    if args.live:
        from concerto_ros.bag.live import run_live

        return run_live(args.bag, cfg, cfg_path, parse_overrides(args.overrides), args.output,
                        node_name=args.node, start_node=args.start_node, lockstep=args.lockstep,
                        rate=args.rate, frame_timeout=args.frame_timeout, max_frames=args.max_frames,
                        progress=args.progress)
    from concerto_ros.bag.outputs import write_results
    from concerto_ros.bag.replay import replay_bag

    report = replay_bag(args.bag, cfg, max_frames=args.max_frames, progress=args.progress)
    if report.result is None:
        print(f"no frame could be processed; skipped: {report.skipped}")
        return 1
    r = report.result
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    maps = {}
    if report.map is not None:
        maps = {"map_npz": report.map.save(out / "map.npz"), "map_ply": report.map.export_ply(out / "map.ply")}
    paths = write_results(
        out, r.coord, r.color, r.labels, r.confidence, r.class_names,
        feature_colors=r.feature_colors,
        summary={"title": f"{Path(args.bag).name}: last window ({r.window.num_frames} frames)",
                 "bag": str(args.bag), "mode": "offline", "frames_processed": report.frames_processed,
                 "keyframes_encoded": report.keyframes_encoded, "map": report.map_stats,
                 "skipped": report.skipped, "sync": report.sync_stats, "timings_ms": report.timings,
                 "wall_s": report.wall_s, "fixed_frame": r.fixed_frame, "config": str(cfg_path)})
    paths.update({k: str(v) for k, v in maps.items()})
    print(f"processed {report.frames_processed} frames ({report.keyframes_encoded} encoded) in {report.wall_s:.1f} s; "
          f"skipped {sum(report.skipped.values())}; map {report.map_stats.get('num_voxels', 0)} voxels")
    for k, v in paths.items():
        print(f"  {k}: {v}")
    return 0
