"""The ROS-free pipeline on the real Kinect recording, through a bag, offline."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from concerto_ros.bag.convert_rgbd import convert_rgbd_folder, read_poses
from concerto_ros.bag.replay import replay_bag
from concerto_ros.pipeline import PerceptionPipeline

from conftest import seeded_config, SLAMBOOK_INTRINSICS


@pytest.fixture(scope="module")
def slambook_bag(tmp_path_factory, slambook_dir):
    out = tmp_path_factory.mktemp("bag") / "slambook"
    convert_rgbd_folder(slambook_dir, out, intrinsics=SLAMBOOK_INTRINSICS, depth_scale=1000.0,
                        storage="mcap", progress=False)
    return out


@pytest.fixture(scope="module")
def replayed(slambook_bag):
    cfg = seeded_config()
    return cfg, replay_bag(slambook_bag, cfg, log=None, progress=False)


def test_all_five_frames_are_fused_in_the_fixed_frame(replayed, slambook_dir):
    cfg, rep = replayed
    assert rep.frames_processed == 5 and rep.skipped == {}
    r = rep.result
    win = r.window
    assert r.fixed_frame == "odom" and win.num_frames == 5
    # every frame contributed all its valid pixels (about 70% of 640x480 are valid)
    counts = np.diff(win.frame_offsets)
    assert counts.shape == (5,) and (counts > 0.6 * 640 * 480).all()
    # the window voxels are shared between frames: far fewer voxels than the frames' own
    per_frame_voxels = [len(np.unique(win.frame_inverse(i))) for i in range(5)]
    assert r.coord.shape[0] < 0.85 * sum(per_frame_voxels)
    # the last frame's voxels sit where its pose puts them: seen from the camera of
    # pose.txt's last line, their depths are the depth image's (to within a voxel)
    poses, _ = read_poses(slambook_dir / "pose.txt")
    T = poses[-1]
    pts = r.coord[win.frame_inverse(-1)]
    z_cam = (pts - T[:3, 3]) @ T[:3, 2]
    depth = cv2.imread(str(slambook_dir / "depth" / "5.pgm"), cv2.IMREAD_UNCHANGED) / 1000.0
    valid = depth[(depth >= cfg.lift.min_depth) & (depth <= cfg.lift.max_depth)]
    assert len(z_cam) == len(valid)
    assert abs(np.median(z_cam) - np.median(valid)) < 0.02
    assert abs(np.percentile(z_cam, 10) - np.percentile(valid, 10)) < 0.02


def test_outputs_are_in_range_and_map_back_to_frames(replayed):
    cfg, rep = replayed
    r = rep.result
    m = r.coord.shape[0]
    assert r.coord.dtype == np.float32 and r.color.shape == (m, 3) and r.color.dtype == np.uint8
    assert r.labels.dtype == np.int32 and r.labels.min() >= 0 and r.labels.max() < len(cfg.head.class_names)
    k = len(cfg.head.class_names)
    assert (r.confidence >= 1.0 / k - 1e-6).all() and (r.confidence <= 1.0).all()
    assert r.features.shape == (m, 192) and torch.isfinite(r.features).all()
    assert r.feature_colors.shape == (m, 3)
    lab, conf = r.frame_labels(-1)
    assert lab.shape == conf.shape == (np.diff(r.window.frame_offsets)[-1],)
    for stage in ("sync", "convert", "lift", "window", "encoder", "heads"):
        assert rep.timings[stage]["count"] >= 5, stage


def test_window_length_and_max_frames_are_honoured(slambook_bag):
    cfg = seeded_config({"window.num_frames": 2})
    rep = replay_bag(slambook_bag, cfg, max_frames=3, log=None, progress=False)
    assert rep.frames_processed == 3 and rep.result.window.num_frames == 2


def test_missing_transform_is_skipped_with_its_reason(slambook_bag):
    cfg = seeded_config({"fixed_frame": "map"})
    warnings = []
    pipeline = PerceptionPipeline(cfg, log=None)
    rep = replay_bag(slambook_bag, cfg, pipeline=pipeline, log=warnings.append, progress=False)
    assert rep.frames_processed == 0 and rep.result is None
    assert rep.skipped == {"/tf:no_transform": 5}
    assert any("'map'" in w or "map" in w for w in warnings)


def test_replay_cli_writes_ply_png_and_summary(slambook_bag, tmp_path):
    from plyfile import PlyData

    from concerto_ros.cli import main

    out = tmp_path / "out"
    assert main(["replay", str(slambook_bag), "-o", str(out), "--no-progress", "--set", "window.num_frames=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    v = PlyData.read(str(out / "window.ply"))["vertex"]
    assert summary["frames_processed"] == 5 and summary["num_points"] == len(v.data)
    assert {"x", "y", "z", "red", "green", "blue", "label", "confidence"} <= set(v.data.dtype.names)
    assert sum(summary["label_histogram"].values()) == len(v.data)
    assert (out / "window.png").stat().st_size > 10_000


def test_lidar_pointcloud2_runs_through_the_same_pipeline(shared_dir):
    """A real SemanticKITTI scan, as a PointCloud2 in the sensor frame, 0.05 m voxels."""
    from sensor_msgs.msg import PointCloud2, PointField

    from concerto_ros.cloud.voxel import grid_sample
    from concerto_ros.msgs.pointcloud2 import fill_pointcloud2
    from concerto_ros.pipeline import FrameSkipped
    from concerto_ros.sensors.stream import FrameStream, PointsSet

    xyz = np.load(shared_dir / "data" / "semantickitti" / "kitti_01_points_000000.npy").astype(np.float32)
    intensity = np.linspace(0, 1, len(xyz), dtype=np.float32)
    msg = fill_pointcloud2(PointCloud2(), PointField, 1_000_000_000, "velodyne", xyz, extra={"intensity": intensity})
    cfg = seeded_config({"window.voxel_size": 0.05, "lift.max_range": 40.0,
                                              "lift.min_range": 2.0, "topics.points": "/velodyne_points"})
    pipe = PerceptionPipeline(cfg, log=None)
    T = np.eye(4)
    T[:3, 3] = [10.0, -5.0, 1.5]  # sensor pose in odom
    stream = FrameStream(cfg, lookup=lambda target, source, stamp: T)
    pf = pipe.lift_frame(stream.decode(PointsSet(1_000_000_000, msg)))
    rng = np.linalg.norm(xyz, axis=1)
    keep = (rng >= 2.0) & (rng <= 40.0)
    assert len(pf.points) == keep.sum()
    np.testing.assert_allclose(pf.points, xyz[keep] + T[:3, 3], atol=1e-4)
    assert pf.colors.shape == (keep.sum(), 3) and len(np.unique(pf.colors[:, 0])) > 100  # grey from intensity
    r = pipe.process_points(pf)
    assert r.coord.shape[0] == len(grid_sample(pf.points, 0.05).index)
    assert r.labels.shape == r.confidence.shape == (r.coord.shape[0],)
    empty = fill_pointcloud2(PointCloud2(), PointField, 2_000_000_000, "velodyne", np.full((5, 3), np.nan, np.float32))
    with pytest.raises(FrameSkipped, match="no_valid_points"):
        pipe.lift_frame(stream.decode(PointsSet(2_000_000_000, empty)))


def test_cross4d_features_are_fused_after_concerto(slambook_bag):
    """Both encoders on: per-voxel features are [Concerto | Cross4D]; either can be switched off."""
    cfg = seeded_config({"cross4d.enabled": True, "window.num_frames": 2,
                                              "cross4d.points_per_frame": 512})
    both = PerceptionPipeline(cfg, log=None)
    rep = replay_bag(slambook_bag, cfg, pipeline=both, max_frames=2, log=None, progress=False)
    d_c, d_x = both.feature_dims["concerto"], both.feature_dims["cross4d"]
    assert d_c == 192 and d_x > 0 and rep.result.features.shape == (len(rep.result.coord), d_c + d_x)
    assert both.head.in_channels == d_c + d_x and rep.timings["cross4d"]["count"] == 2
    # the Concerto part equals what the Concerto-only pipeline computes on the same window
    only = PerceptionPipeline(seeded_config({"window.num_frames": 2}), log=None)
    ref = replay_bag(slambook_bag, only.cfg, pipeline=only, max_frames=2, log=None, progress=False).result
    torch.testing.assert_close(rep.result.features[:, :d_c], ref.features, rtol=1e-5, atol=1e-5)
    x_only = PerceptionPipeline(seeded_config({"cross4d.enabled": True,
                                                                    "model.enabled": False}), log=None)
    assert x_only.out_channels == d_x
    with pytest.raises(ValueError, match="no encoder to run"):
        PerceptionPipeline(seeded_config({"model.enabled": False}), log=None)
