"""The demo: a generated RGB-D room sequence, converted to a bag, played into the live node.

Steps (each prints what it wrote):

1. render the procedural room sequence (:func:`concerto_ros.demo.scene.write_sequence`),
   with ground-truth labels, into ``<out>/sequence`` (the RGB-D folder format);
2. convert it to a rosbag2 ``<out>/demo_bag`` (MCAP) with the project's converter;
3. start ``perception_node`` with ``config/perception.yaml`` and play the bag into it over
   DDS (:func:`concerto_ros.bag.live.run_live`);
4. write the last published window as PLY/PNG/JSON into ``<out>/result``, with the
   ground-truth labels of the same voxels and the mIoU of the node's labels against them
   (matched by class name: the names of the head or vocabulary the node runs, see
   :func:`ground_truth_scores`).

The default configuration runs the embedded model bundle (``model.bundle: default``, made by
``scripts/make_default_bundle.py`` on generated rooms of other seeds than the demo's seed 0);
with ``--set model.bundle=`` the node runs the seeded random model instead and the scores
are at chance level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def voxel_keys(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """``(N,) int64`` key of the voxel (edge ``voxel_size`` metres) containing each point."""
    g = np.floor(np.asarray(points, dtype=np.float64) / voxel_size).astype(np.int64) + (1 << 20)
    return (g[:, 0] << 42) | (g[:, 1] << 21) | g[:, 2]


def ground_truth_lookup(sequence_dir: Path, voxel_size: float, last: int):
    """A function mapping points ``(N, 3)`` (fixed frame, metres) to the ground-truth label of
    their voxel, built by lifting the label images of the last ``last`` frames of the sequence
    with the same lifting as the pipeline (0 = unlabeled where no labelled point fell)."""
    from concerto_ros.recordings.rgbd_folder import RgbdFolderRecording
    from concerto_ros.sensors.lifting import lift_depth

    rec = RgbdFolderRecording(sequence_dir)  # label values unchanged (no label set)
    n = len(rec)
    keys, labels = [], []
    for i in range(max(0, n - last), n):
        frame = rec.read(i)
        pf = lift_depth(frame.rgbd, frame.T_world_sensor)
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


def ground_truth_scores(pred: np.ndarray, label_names: Sequence[str], gt: np.ndarray,
                        gt_names: Sequence[str] | None = None, ignore_index: int = 0) -> dict:
    """Scores of predicted labels against ground-truth ids, classes matched by name.

    The node's labels index its own class list (the running head's classes or the open
    vocabulary), which need not be the ground truth's: each predicted name is mapped to the
    ground-truth id of the same name; a name the ground truth does not have counts as a
    wrong prediction for every voxel it is given to.

    Args:
        pred: ``(N,)`` predicted labels, indices into ``label_names``.
        label_names: the running model's label names.
        gt: ``(N,)`` ground-truth ids, indices into ``gt_names``.
        gt_names: the ground truth's class names (default: the demo generator's
            :data:`~concerto_ros.demo.scene.CLASS_NAMES`).
        ignore_index: ground-truth id never scored (the demo's ``unlabeled``).

    Returns:
        ``{"miou", "oacc", "num_points", "iou": {gt name: IoU or None (ignored, or absent
        from target and prediction)}, "unmatched_labels": [label names with no
        ground-truth class]}``.

    Raises:
        ValueError: ``pred`` and ``gt`` differ in length.
    """
    from concerto_ros.demo.scene import CLASS_NAMES
    from concerto_ros.metrics import confusion_matrix

    gt_names = list(CLASS_NAMES if gt_names is None else gt_names)
    other = len(gt_names)  # column of predictions whose name the ground truth lacks
    lut = np.array([gt_names.index(n) if n in gt_names else other for n in label_names] + [other], dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    mapped = lut[np.where((pred >= 0) & (pred < len(label_names)), pred, len(label_names))]
    conf = confusion_matrix(mapped, gt, other + 1, ignore_index=ignore_index).astype(np.float64)
    scored = [c for c in range(other) if c != ignore_index]
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = {n: None for n in gt_names}
    for c in scored:
        if union[c] > 0:
            iou[gt_names[c]] = float(tp[c] / union[c])
    vals = [v for v in iou.values() if v is not None]
    total = conf.sum()
    return {"miou": float(np.mean(vals)) if vals else float("nan"),
            "oacc": float(tp[scored].sum() / total) if total else float("nan"), "num_points": int(total),
            "iou": iou, "unmatched_labels": [n for n in label_names if n not in gt_names]}


def run_demo(output: str | Path = "outputs/demo", seed: int = 0, num_frames: int = 12,
             width: int = 320, height: int = 240, config: str | Path | None = None,
             overrides: dict[str, Any] | None = None, offline: bool = False, progress: bool = True) -> int:
    """Run the whole demo; returns a process exit code (0 on success)."""
    from concerto_ros.bag.convert_rgbd import convert_rgbd_folder
    from concerto_ros.config import default_config_path, load_config
    from concerto_ros.demo.scene import write_sequence
    from concerto_ros.pipeline import models_in_use

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = Path(config) if config else default_config_path()
    overrides = dict(overrides or {})
    base = load_config(cfg_path, overrides)
    if not base.model.bundle and "model.bundle" not in overrides:
        overrides["model.bundle"] = "default"  # the embedded bundle (steps aside for explicit model files)
    cfg = load_config(cfg_path, overrides)
    models = models_in_use(cfg)
    print(f"[demo] model: {models.description}")
    if not models.trained_labels:
        print("[demo] the labels come from a seeded random head: expect chance-level scores "
              "(model.bundle: default runs the embedded trained bundle)")

    print(f"[demo] 1/4 rendering {num_frames} RGB-D frames ({width}x{height}) of procedural room seed {seed}")
    seq = write_sequence(out / "sequence", seed=seed, num_frames=num_frames, width=width, height=height)
    print(f"        -> {seq}")
    print("[demo] 2/4 converting to rosbag2 (MCAP)")
    bag = out / "demo_bag"
    report = convert_rgbd_folder(seq, bag, storage="mcap", overwrite=True, progress=progress)
    print(f"        -> {report.bag_path} ({report.frames} frames, {report.size_bytes / 1e6:.1f} MB)")

    gt = ground_truth_lookup(seq, cfg.window.voxel_size, cfg.window.num_frames)
    result_dir = out / "result"
    if offline:
        got = _replay_offline(bag, cfg, result_dir, seed, gt, progress)
    else:
        got = _play_into_node(bag, cfg, cfg_path, overrides, result_dir, seed, gt, models, progress)
    if isinstance(got, int):
        return got
    coord, labels, conf, names = got
    scores = ground_truth_scores(labels, names, gt(coord))
    _write_summary(result_dir / "summary.json", models, names, scores)
    print(f"[demo] 4/4 results (mIoU vs ground truth {scores['miou']:.3f}, overall acc {scores['oacc']:.3f}, "
          f"mean confidence {float(np.mean(conf)):.3f}; {'trained' if models.trained_labels else 'SEEDED RANDOM'} "
          f"labels {names}):")
    for name in ("window.ply", "window.png", "summary.json", "perception_node.log"):
        if (result_dir / name).exists():
            print(f"        {result_dir / name}")
    return 0


def _replay_offline(bag: Path, cfg, result_dir: Path, seed: int, gt, progress: bool):
    """Step 3 without ROS: replay ``bag`` through the pipeline and write the last window.

    Returns:
        ``(coord (N, 3), labels (N,), confidence (N,), label names)`` of the last window, or
        exit code 1 when no frame was processed.
    """
    print("[demo] 3/4 replaying offline through the pipeline (no ROS)")
    from concerto_ros.bag.outputs import write_results
    from concerto_ros.bag.replay import replay_bag

    rep = replay_bag(bag, cfg, progress=progress)
    r = rep.result
    if r is None:
        print(f"[demo] no frame processed; skipped: {rep.skipped}")
        return 1
    write_results(result_dir, r.coord, r.color, r.labels, r.confidence, r.class_names,
                  {"title": f"demo room {seed}: last window (offline)", "mode": "offline",
                   "frames_processed": rep.frames_processed, "timings_ms": rep.timings},
                  feature_colors=r.feature_colors, gt_labels=gt(r.coord))
    return r.coord, r.labels, r.confidence, list(r.class_names)


def _play_into_node(bag: Path, cfg, cfg_path: Path, overrides: dict, result_dir: Path, seed: int, gt, models,
                    progress: bool):
    """Step 3 over DDS: start ``perception_node``, play ``bag`` into it in lockstep and read
    back the last window it published (``window.ply``).

    Returns:
        ``(coord (N, 3), labels (N,), confidence (N,), label names)``, or the non-zero exit
        code of :func:`~concerto_ros.bag.live.run_live`.
    """
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
    return coord, np.asarray(v["label"]), np.asarray(v["confidence"]), list(models.label_names)


def _write_summary(summary_path: Path, models, names: list[str], scores: dict) -> None:
    """Add the model and the ground-truth scores to the ``summary.json`` step 3 wrote."""
    summary = json.loads(summary_path.read_text())
    summary["model"] = {"description": models.description, "label_names": names,
                        "trained_labels": models.trained_labels,
                        "bundle": str(models.bundle_path) if models.bundle_path else None}
    summary["ground_truth"] = {
        **scores, "ignore": "unlabeled", "matched_by": "class name",
        "note": "" if models.trained_labels else
        "labels come from the seeded random head (model.bundle ''): expect chance-level scores",
    }
    summary_path.write_text(json.dumps(summary, indent=2))
