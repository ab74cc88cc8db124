"""``concerto train probe`` end to end on a few real mOSD scenes, the label mapping, the
spatial split on a labelled point array, RGB-D folders, and fine-tuning with SPD."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from concerto_ros.train.probe import ProbeConfig, build_label_lut, fit_linear_probe, map_labels, train_probe

MOSD_DATA = {"classes": ["table", "object"], "ignore_index": 0, "label_map": {"1-9": "table", "20+": "object"}}


def test_label_lut_mosd_mapping():
    lut = build_label_lut(MOSD_DATA["label_map"], MOSD_DATA["classes"], 0, 45)
    raw = np.array([0, 1, 9, 10, 19, 20, 31, 45, 46, -3])
    np.testing.assert_array_equal(map_labels(raw, lut), [-1, 0, 0, -1, -1, 1, 1, 1, -1, -1])
    ident = build_label_lut({}, ["unlabeled", "a", "b"], 0, 5)
    np.testing.assert_array_equal(map_labels(np.arange(6), ident), [-1, 1, 2, -1, -1, -1])
    with pytest.raises(ValueError, match="not in data.classes"):
        build_label_lut({"1": "chair"}, ["table"], None, 3)
    with pytest.raises(ValueError, match="expected 'N'"):
        build_label_lut({"1..3": 0}, ["table"], None, 3)


def test_fit_linear_probe_folds_standardisation(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4)).astype(np.float32) * [1.0, 100.0, 0.01, 5.0] + [0, 50, 3, 0]
    y = (x[:, 1] > 50).astype(np.int64)  # separable along a badly scaled channel
    y[:10] = -1
    head, res = fit_linear_probe(x.astype(np.float32), y, ["lo", "hi"], tmp_path, epochs=15, batch_size=256, lr=0.05)
    loss = res.column("loss")
    assert len(loss) == 15 * 8 and np.mean(loss[-8:]) < 0.5 * np.mean(loss[:8])  # 1990 rows / 256 -> 8 steps an epoch
    pred = head(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()
    assert np.mean(pred[10:] == y[10:]) > 0.97  # the head reads raw (unstandardised) features


def test_points_source_spatial_split(tmp_path):
    rng = np.random.default_rng(1)
    xyz = rng.uniform(0, 3, size=(6000, 3)).astype(np.float32)
    rgb = np.where(xyz[:, :1] > 1.5, [200, 30, 30], [30, 30, 200]).astype(np.float32)
    np.save(tmp_path / "pts.npy", np.concatenate([xyz, rgb], 1))
    np.save(tmp_path / "lab.npy", np.where(xyz[:, 0] > 1.5, 2, 1).reshape(-1, 1).astype(np.int32))
    cfg = ProbeConfig.from_mapping({
        "output": str(tmp_path / "out"), "features": "raw",
        "data": {"train": [{"type": "points", "path": str(tmp_path / "pts.npy"), "labels": str(tmp_path / "lab.npy")}],
                 "test": [], "classes": ["unlabeled", "left", "right"], "ignore_index": 0, "label_map": {},
                 "heldout_fraction": 0.3, "heldout_block": 0.5},
        "loop": {"epochs": 10, "batch_size": 512}})
    s = train_probe(cfg, progress=False, log=lambda m: None)
    assert s["split"].startswith("held-out") and s["test_voxels"] > 0 and s["train_voxels"] > s["test_voxels"]
    assert s["test_iou"]["unlabeled"] is None  # ignored class: never a target, never predicted
    assert s["test_miou"] > 0.95 and s["test_accuracy"] > 0.97
    assert s["feature_dims"] == {"raw": 6}
    assert s["bundle"] is None and not (tmp_path / "out" / "bundle.pt").exists()  # raw inputs: nothing to bundle


def _two_walls(tmp_path):
    """A labelled (N, 6) xyzrgb array: a floor (label 1) and a wall (label 2)."""
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 2, (4000, 2)), np.zeros(4000), np.tile([90, 160, 90], (4000, 1))]
    wall = np.c_[rng.uniform(0, 2, 4000), np.zeros(4000), rng.uniform(0, 1.5, 4000), np.tile([200, 200, 230], (4000, 1))]
    np.save(tmp_path / "pts.npy", np.concatenate([floor, wall]).astype(np.float32))
    np.save(tmp_path / "lab.npy", np.r_[np.ones(4000), np.full(4000, 2)].astype(np.int64))
    return {"type": "points", "path": str(tmp_path / "pts.npy"), "labels": str(tmp_path / "lab.npy")}


def test_probe_writes_a_bundle_the_node_pipeline_runs(tmp_path):
    from concerto_ros.config import default_config_path, load_config
    from concerto_ros.models.bundle import load_bundle
    from concerto_ros.pipeline import PerceptionPipeline

    out = tmp_path / "probe"
    cfg = ProbeConfig.from_mapping({
        "output": str(out), "data": {"train": [_two_walls(tmp_path)], "test": [], "label_map": {},
                                     "classes": ["unlabeled", "floor", "wall"], "ignore_index": 0,
                                     "heldout_fraction": 0.3, "heldout_block": 0.5},
        "loop": {"epochs": 5}, "node": {"model": {"bundle": ""}}})  # the seeded random encoder
    s = train_probe(cfg, progress=False, log=lambda m: None)
    assert s["bundle"] == str(out / "bundle.pt")
    b = load_bundle(out / "bundle.pt")
    assert b.components() == ["concerto", "head"] and b.class_names == ["unlabeled", "floor", "wall"]
    assert b.feature_dims == {"concerto": 192, "cross4d": 0} and b.voxel_size == 0.02
    md = b.metadata
    assert md["command"] == "concerto train probe" and md["config"]["loop"]["epochs"] == 5
    assert md["metrics"]["test_miou"] == s["test_miou"] and md["created"]
    # the node's pipeline runs it: the head's labels are the probe's classes, and they agree with
    # the head file written next to it
    pipe = PerceptionPipeline(load_config(default_config_path(), {"model.bundle": str(out / "bundle.pt")}), log=None)
    ref = PerceptionPipeline(load_config(default_config_path(), {"head.checkpoint": str(out / "head.pt"),
                                                                 "model.bundle": ""}), log=None)
    pts = np.load(tmp_path / "pts.npy")
    from concerto_ros.sensors.types import PointFrame

    frame = PointFrame(stamp_ns=1, points=pts[:, :3].copy(), colors=pts[:, 3:].astype(np.uint8), frame_id="odom")
    r, r_ref = pipe.process_points(frame), ref.process_points(frame)
    assert r.class_names == ["unlabeled", "floor", "wall"]
    np.testing.assert_array_equal(r.labels, r_ref.labels)
    wall = r.coord[:, 1] < 0.01
    assert np.mean(r.labels[wall & (r.coord[:, 2] > 0.2)] == 2) > 0.9


def test_probe_mosd_end_to_end(shared_dir, tmp_path):
    mosd = shared_dir / "data" / "mosd"
    if not (mosd / "learn").is_dir() or not (mosd / "test").is_dir():
        pytest.skip(f"{mosd} not found")
    from concerto_ros.models.extractor import build_heads

    out = tmp_path / "probe"
    cfg = ProbeConfig.from_mapping({
        "output": str(out), "node": {"window": {"voxel_size": 0.02}},
        "data": {"train": [{"type": "pcd", "path": str(mosd / "learn"), "limit": 3}],
                 "test": [{"type": "pcd", "path": str(mosd / "test"), "limit": 2}], **MOSD_DATA},
        # 3 training scenes are too few to learn yaw-robust features (the augmentation's own
        # tests are in test_eval_yaw.py)
        "augment": {"yaw": False},
        "loop": {"epochs": 8}})
    s = train_probe(cfg, progress=False, log=lambda m: None)
    assert s["train_scenes"] == 3 and s["test_scenes"] == 2 and s["voxel_size"] == 0.02
    assert s["train_voxels"] > 1000 and s["test_voxels"] > 1000
    assert s["loss_last"] < 0.7 * s["loss_first"]  # per step (one step an epoch here: < 4096 voxels)
    assert 0.0 <= s["test_miou"] <= 1.0 and 0.0 <= s["test_accuracy"] <= 1.0
    assert set(s["test_iou"]) == {"table", "object"} and all(0.0 <= v <= 1.0 for v in s["test_iou"].values())
    assert math.isclose(s["test_miou"], np.mean(list(s["test_iou"].values())), rel_tol=1e-9)
    # table dominates the scenes: the probe must beat chance on the majority class
    assert s["test_iou"]["table"] > 0.5

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    steps_per_epoch = -(-s["train_voxels"] // 4096)
    assert [int(r["step"]) for r in rows] == list(range(1, 8 * steps_per_epoch + 1))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert json.loads((out / "summary.json").read_text())["test_miou"] == s["test_miou"]

    dims = s["feature_dims"]
    assert dims["concerto"] > 0 and dims["cross4d"] == 0
    head_cfg = SimpleNamespace(checkpoint=str(out / "head.pt"), class_names=["unlabeled"])
    head = build_heads(head_cfg, in_channels=sum(dims.values()), feature_dims=dims)
    assert head.class_names == ["table", "object"] and head.in_channels == dims["concerto"]
    assert head.feature_dims == dims
    with pytest.raises(ValueError, match="fused features"):
        build_heads(head_cfg, in_channels=sum(dims.values()), feature_dims={"concerto": dims["concerto"], "cross4d": 8})
    # the bundle next to it: encoder + this head, at the probe's voxel size
    from concerto_ros.models.bundle import load_bundle

    b = load_bundle(s["bundle"])
    assert b.class_names == ["table", "object"] and b.voxel_size == 0.02 and b.feature_dims == dims
    assert torch.equal(b.head["state_dict"]["seg_head.weight"], torch.load(out / "head.pt")["state_dict"]["seg_head.weight"])


def test_probe_on_rgbd_folders_uses_the_node_windows_and_their_voxel_labels(tmp_path):
    """``{type: folder}`` sources: a generated labelled sequence goes through the node's
    pipeline window by window (the translator's path); the probe learns the demo classes
    from the windows' voxel labels and writes a bundle the pipeline runs."""
    from concerto_ros.config import default_config_path, load_config
    from concerto_ros.demo.scene import CLASS_NAMES, write_sequence
    from concerto_ros.models.bundle import load_bundle
    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.train.data import expand_sources
    from concerto_ros.train.features import source_features

    seq = write_sequence(tmp_path / "seq", seed=7, num_frames=3, width=160, height=120)
    node = {"model.bundle": "", "window.num_frames": 2}  # the seeded random encoder: the probe alone learns
    out = tmp_path / "probe"
    cfg = ProbeConfig.from_mapping({
        "output": str(out), "node": node,
        "data": {"train": [{"type": "folder", "path": str(seq)}], "test": [], "classes": list(CLASS_NAMES),
                 "ignore_index": 0, "label_map": {}, "window_stride": 1, "heldout_fraction": 0.3, "heldout_block": 0.5},
        "augment": {"yaw": False},  # the unrotated room: the numbers below (yaw: test_eval_yaw.py)
        "loop": {"epochs": 10, "batch_size": 8192}, "optim": {"class_weight": "balanced", "lr": 0.02}})
    s = train_probe(cfg, progress=False, log=lambda m: None)
    assert s["train_scenes"] == 1 and s["split"].startswith("held-out")
    assert s["train_voxels"] > 5000 and s["test_voxels"] > 1000
    assert s["test_iou"]["unlabeled"] is None  # raw label 0 is ignored: never a target, never predicted
    # measured 0.86 mIoU / 0.95 accuracy over the 5 classes of this room (chance accuracy about 1/8)
    assert s["test_miou"] > 0.7 and s["test_accuracy"] > 0.85
    assert s["test_iou"]["floor"] > 0.85 and s["test_iou"]["wall"] > 0.85
    b = load_bundle(out / "bundle.pt")
    assert b.components() == ["concerto", "head"] and b.class_names == list(CLASS_NAMES)
    pipe = PerceptionPipeline(load_config(default_config_path(), {**node, "model.bundle": str(out / "bundle.pt")}),
                              log=None)
    assert pipe.class_names == list(CLASS_NAMES)

    # window_stride: stride 3 over 3 frames keeps only the last window (the first two frames are
    # only pushed into the window, not encoded), which equals the last window of the stride-1
    # walk (the pipeline is reset per folder)
    pipe = PerceptionPipeline(load_config(default_config_path(), node), log=None)
    units = expand_sources([{"type": "rgbd_folder", "path": str(seq)}])
    assert len(units) == 1 and units[0].frame is None  # a sequence: one unit
    a = source_features(units, pipe, window_stride=1, progress=False)
    b = source_features(units, pipe, window_stride=3, progress=False)
    f1, r1, c1, f3, r3, c3 = a.feats, a.labels, a.coords, b.feats, b.labels, b.coords
    assert len(f1) > len(f3) > 1000 and f1.shape[1] == f3.shape[1] == 192
    np.testing.assert_array_equal(c1[-len(c3):], c3)
    np.testing.assert_array_equal(r1[-len(r3):], r3)
    np.testing.assert_allclose(f1[-len(f3):], f3, rtol=0, atol=1e-5)
    assert set(np.unique(r3)) <= set(range(len(CLASS_NAMES))) | {-1} and (r3 >= 1).mean() > 0.8
    # raw inputs of the same window: its voxel coordinates and colours / 255
    r = source_features(units, pipe, window_stride=3, raw=True, progress=False)
    np.testing.assert_array_equal(r.coords, c3)
    np.testing.assert_allclose(r.feats[:, :3], c3, atol=1e-6)
    assert r.feats.shape == (len(c3), 6) and 0.0 <= r.feats[:, 3:].min() and r.feats[:, 3:].max() <= 1.0
    # refusals, with the reason
    import shutil

    shutil.rmtree(seq / "labels")
    with pytest.raises(ValueError, match="has no labels"):
        source_features(expand_sources([str(seq)]), pipe, progress=False)


def test_finetuning_with_spd_trains_the_encoder_and_exports_it(tmp_path):
    """finetune.enabled: encoder and head trained together on single scenes, with PointCSP's
    semantic preservation distillation to an EMA teacher; the bundle carries the new encoder."""
    from concerto_ros.config import default_config_path, load_config
    from concerto_ros.models.bundle import load_bundle
    from concerto_ros.pipeline import PerceptionPipeline

    src = _two_walls(tmp_path)
    out = tmp_path / "ft"
    cfg = ProbeConfig.from_mapping({
        "output": str(out), "data": {"train": [src], "test": [], "label_map": {}, "classes": ["unlabeled", "floor", "wall"],
                                     "heldout_fraction": 0.3, "heldout_block": 0.5},
        "loop": {"epochs": 8}, "optim": {"lr": 3e-2},
        "finetune": {"enabled": True, "scenes_per_step": 1, "spd_weight": 1.0, "spd_ema": 0.9}})
    s = train_probe(cfg, progress=False, log=lambda m: None)
    # measured 0.72 test mIoU over floor / wall after 8 steps (one scene: 8 epochs x 1 step)
    assert s["finetuned"] and s["steps"] == 8 and s["test_miou"] > 0.6
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {"loss", "loss_task", "loss_spd"} <= set(rows[0])
    task = [float(r["loss_task"]) for r in rows]
    assert np.mean(task[-3:]) < np.mean(task[:3]) and all(float(r["loss_spd"]) >= 0 for r in rows)
    # the teacher starts as the student: only the student's re-drawn serialization orders differ (measured 1.7e-4)
    assert float(rows[0]["loss_spd"]) < 1e-3
    b = load_bundle(out / "bundle.pt")
    ref = PerceptionPipeline(load_config(default_config_path()), log=None).extractor.encoder.state_dict()
    assert any(not torch.equal(v.float(), ref[k].float()) for k, v in b.encoder["state_dict"].items())
    assert b.class_names == ["unlabeled", "floor", "wall"] and b.metadata["metrics"]["test_miou"] == s["test_miou"]
