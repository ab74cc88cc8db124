"""The demo: a generated RGB-D room sequence, converted to a bag, played into the live node.

Steps (each prints what it wrote):

1. render the procedural room sequence (:func:`concerto_ros.demo.scene.write_sequence`),
   with ground-truth labels, into ``<out>/sequence`` (the RGB-D folder format);
2. convert it to a rosbag2 ``<out>/demo_bag`` (MCAP) with the project's converter;
3. start ``perception_node`` with ``config/perception.yaml`` and play the bag into it over
   DDS (:func:`concerto_ros.bag.live.run_live`);
4. write the last published window as PLY/PNG/JSON into ``<out>/result``, with the
   ground-truth labels of the same voxels and the mIoU of the node's labels against them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def voxel_keys(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """``(N,) int64`` key of the voxel (edge ``voxel_size`` metres) containing each point."""
    g = np.floor(np.asarray(points, dtype=np.float64) / voxel_size).astype(np.int64) + (1 << 20)
    return (g[:, 0] << 42) | (g[:, 1] << 21) | g[:, 2]


def ground_truth_lookup(sequence_dir: Path, voxel_size: float, last: int):
    """A function mapping points ``(N, 3)`` (fixed frame, metres) to the ground-truth label of
    their voxel, built by lifting the label images of the last ``last`` frames of the sequence
    with the same lifting as the pipeline (0 = unlabeled where no labelled point fell)."""
    import cv2

    from concerto_ros.bag.convert_rgbd import scan_rgbd_folder
    from concerto_ros.sensors.lifting import lift_depth
    from concerto_ros.sensors.types import CameraIntrinsics, RGBDFrame

    folder = scan_rgbd_folder(sequence_dir)
    cam = folder.camera
    intr = CameraIntrinsics(fx=cam["fx"], fy=cam["fy"], cx=cam["cx"], cy=cam["cy"],
                            width=cam["width"], height=cam["height"])
    keys, labels = [], []
    for i in range(max(0, len(folder.stems) - last), len(folder.stems)):
        depth = cv2.imread(str(folder.depth[i]), cv2.IMREAD_UNCHANGED)
        lab = cv2.imread(str(folder.labels[i]), cv2.IMREAD_UNCHANGED).astype(np.int32)
        frame = RGBDFrame(stamp_ns=i, frame_id="camera", color=None, depth=depth,
                          depth_scale=float(cam.get("depth_scale", 1000)), intrinsics=intr, labels=lab)
        pf = lift_depth(frame, folder.poses[i])
        keys.append(voxel_keys(pf.points, voxel_size))
        labels.append(pf.labels)
    k = np.concatenate(keys)
    lab = np.concatenate(labels).astype(np.int32)
    order = np.argsort(k, kind="stable")
    k, lab = k[order], lab[order]

    def lookup(points: np.ndarray) -> np.ndarray:
        q = voxel_keys(points, voxel_size)
        i = np.clip(np.searchsorted(k, q), 0, len(k) - 1)
        return np.where(k[i] == q, lab[i], 0).astype(np.int32)

    return lookup


def run_demo(output: str | Path = "outputs/demo", seed: int = 0, num_frames: int = 12,
             width: int = 320, height: int = 240, config: str | Path | None = None,
             overrides: dict[str, Any] | None = None, offline: bool = False, progress: bool = True) -> int:
    """Run the whole demo; returns a process exit code (0 on success)."""
    from concerto_ros.bag.convert_rgbd import convert_rgbd_folder
    from concerto_ros.config import default_config_path, load_config
    from concerto_ros.demo.scene import write_sequence
    from concerto_ros.metrics import confusion_matrix, segmentation_scores

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = Path(config) if config else default_config_path()
    overrides = dict(overrides or {})
    cfg = load_config(cfg_path, overrides)

    print(f"[demo] 1/4 rendering {num_frames} RGB-D frames ({width}x{height}) of procedural room seed {seed}")
    seq = write_sequence(out / "sequence", seed=seed, num_frames=num_frames, width=width, height=height)
    print(f"        -> {seq}")
    print("[demo] 2/4 converting to rosbag2 (MCAP)")
    bag = out / "demo_bag"
    report = convert_rgbd_folder(seq, bag, storage="mcap", overwrite=True)
    print(f"        -> {report.bag_path} ({report.frames} frames, {report.size_bytes / 1e6:.1f} MB)")

    gt = ground_truth_lookup(seq, cfg.window.voxel_size, cfg.window.num_frames)
    result_dir = out / "result"
    if offline:
        print("[demo] 3/4 replaying offline through the pipeline (no ROS)")
        from concerto_ros.bag.outputs import write_results
        from concerto_ros.bag.replay import replay_bag

        rep = replay_bag(bag, cfg, progress=progress)
        r = rep.result
        if r is None:
            print(f"[demo] no frame processed; skipped: {rep.skipped}")
            return 1
        coord, labels, conf = r.coord, r.labels, r.confidence
        write_results(result_dir, r.coord, r.color, r.labels, r.confidence, r.class_names,
                      {"title": f"demo room {seed}: last window (offline)", "mode": "offline",
                       "frames_processed": rep.frames_processed, "timings_ms": rep.timings},
                      feature_colors=r.feature_colors, gt_labels=gt(r.coord))
    else:
        print("[demo] 3/4 starting perception_node and playing the bag into it over DDS")
        from concerto_ros.bag.live import run_live

        code = run_live(bag, cfg, cfg_path, overrides, result_dir, start_node=True, lockstep=True,
                        progress=progress, title=f"demo room {seed}: last window published by the node",
                        gt_labels_fn=gt)
        if code != 0:
            return code
        from plyfile import PlyData

        v = PlyData.read(str(result_dir / "window.ply"))["vertex"]
        coord = np.stack([v["x"], v["y"], v["z"]], axis=1)
        labels, conf = np.asarray(v["label"]), np.asarray(v["confidence"])
    names = list(cfg.head.class_names)
    scores = segmentation_scores(confusion_matrix(labels, gt(coord), len(names), ignore_index=0))
    summary_path = result_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["ground_truth"] = {
        "miou": scores["miou"], "oacc": scores["oacc"], "ignore": "unlabeled",
        "iou": {n: (None if np.isnan(x) else float(x)) for n, x in zip(names, scores["iou"])},
        "note": ("labels come from the seeded random model until a trained bundle is configured; "
                 "expect chance-level scores") if not cfg.model.checkpoint else "",
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    print(f"[demo] 4/4 results (mIoU vs ground truth {scores['miou']:.3f}, overall acc {scores['oacc']:.3f}, "
          f"mean confidence {float(np.mean(conf)):.3f}):")
    for name in ("window.ply", "window.png", "summary.json", "perception_node.log"):
        if (result_dir / name).exists():
            print(f"        {result_dir / name}")
    return 0
