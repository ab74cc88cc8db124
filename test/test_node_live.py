"""perception_node over real DDS: the Kinect recording replayed into it, and bad input.

The node runs as its own process (``python -m concerto_ros.ros.node``) with the shipped
``config/perception.yaml``; the test talks to it only through topics, like a robot would.
Each test uses its own ROS_DOMAIN_ID so parallel CI jobs on one machine do not mix.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run scripts/setup.sh)")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built (run scripts/setup.sh)")

from geometry_msgs.msg import TransformStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointField  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from rclpy.qos import ReliabilityPolicy  # noqa: E402

from concerto_ros.bag.convert_rgbd import convert_rgbd_folder  # noqa: E402
from concerto_ros.bag.live import NodeProcess, cloud_arrays, replay_live  # noqa: E402
from concerto_ros.bag.replay import replay_bag  # noqa: E402
from concerto_ros.config import default_config_path, load_config  # noqa: E402
from concerto_ros.demo.run import voxel_keys  # noqa: E402
from concerto_ros.msgs.camera_info import fill_camera_info  # noqa: E402
from concerto_ros.msgs.image import fill_image  # noqa: E402
from concerto_ros.msgs.transforms import fill_transform_stamped  # noqa: E402

from concerto_ros.bag.convert_rgbd import read_poses  # noqa: E402
from concerto_ros.sensors.types import CameraIntrinsics  # noqa: E402
from concerto_ros.testing.harness import Harness  # noqa: E402
from conftest import SLAMBOOK_INTRINSICS  # noqa: E402
from test_lifting import nn_distance, visible_in  # noqa: E402


def test_node_publishes_the_fused_kinect_window(tmp_path, slambook_dir, ros_domain):
    bag = tmp_path / "slambook"
    convert_rgbd_folder(slambook_dir, bag, intrinsics=SLAMBOOK_INTRINSICS, depth_scale=1000.0, progress=False)
    cfg_path = default_config_path()
    # Reliable input QoS: 640x480 images are fragmented by DDS, and with the default
    # best-effort (sensor data) QoS a busy 2-core machine loses fragments of whole frames.
    overrides = {"qos.input": "reliable"}
    cfg = load_config(cfg_path, overrides)
    node = NodeProcess(cfg_path, overrides, log_path=tmp_path / "node.log")
    try:
        report = replay_live(bag, cfg, node_process=node, progress=False, frame_timeout=60)
        assert node.alive(), node.tail()
    finally:
        node.stop()
    assert report.frames_sent == 5 and report.timeouts == 0, (report, node.tail())
    assert len(report.clouds) == 5 and len(report.feature_clouds) == 5

    msg = report.clouds[-1]
    assert msg.header.frame_id == "odom" and msg.height == 1 and msg.is_dense and not msg.is_bigendian
    fields = {f.name: (f.datatype, f.count) for f in msg.fields}
    assert fields == {"x": (PointField.FLOAT32, 1), "y": (PointField.FLOAT32, 1), "z": (PointField.FLOAT32, 1),
                      "rgb": (PointField.FLOAT32, 1), "label": (PointField.UINT32, 1),
                      "confidence": (PointField.FLOAT32, 1)}
    live = cloud_arrays(msg)
    k = len(cfg.head.class_names)
    assert live["label"].min() >= 0 and live["label"].max() < k
    assert (live["confidence"] >= 1.0 / k - 1e-6).all() and (live["confidence"] <= 1.0).all()
    # clouds grow while the window fills: frame after frame is fused into the same cloud
    sizes = [m.width for m in report.clouds]
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes

    # The node fused exactly what the offline pipeline fuses from the same bag: the same
    # voxels of all 5 frames in the fixed frame, and (same seeded model) the same labels.
    offline = replay_bag(bag, cfg, log=None, progress=False).result
    assert offline.window.num_frames == 5
    assert len(live["coord"]) == len(offline.coord)
    kl, ko = voxel_keys(live["coord"], cfg.window.voxel_size), voxel_keys(offline.coord, cfg.window.voxel_size)
    np.testing.assert_array_equal(np.sort(kl), np.sort(ko))
    ol, oo = np.argsort(kl), np.argsort(ko)
    np.testing.assert_allclose(live["coord"][ol], offline.coord[oo], atol=1e-6)
    np.testing.assert_array_equal(live["color"][ol], offline.color[oo])
    assert np.mean(live["label"][ol] == offline.labels[oo]) > 0.995
    # and every one of the 5 frames is in it: each frame's own voxels are all present
    for i in range(5):
        frame_voxels = np.unique(offline.window.frame_inverse(i))
        assert np.isin(ko[frame_voxels], kl).all()
    assert report.diagnostics.get("frames_processed") == "5", report.diagnostics
    # where input delays come from (MessageInfo timestamps): the middleware's share and the
    # wait for an executor thread, each a non-negative p50 <= p99 in milliseconds
    for kind in ("transport", "queued"):
        p50 = float(report.diagnostics[f"{kind}_ms_p50:/camera/color/image_raw"])
        p99 = float(report.diagnostics[f"{kind}_ms_p99:/camera/color/image_raw"])
        assert 0.0 <= p50 <= p99 < 60_000.0, (kind, p50, p99)

    # The same surfaces seen from different frames land within a few centimetres: for the
    # published voxels of frame i that frame j's camera also sees (z-buffer test), the median
    # distance to frame j's voxels (the Kinect poses are good to 2-5 cm, see the data README).
    poses, _ = read_poses(slambook_dir / "pose.txt")
    K = CameraIntrinsics(*SLAMBOOK_INTRINSICS, width=640, height=480)
    vox = [offline.coord[np.unique(offline.window.frame_inverse(i))] for i in range(5)]
    rng = np.random.default_rng(0)
    for i in range(1, 5):
        for j, limit in ((i - 1, 0.05), (0, 0.08)):
            depth_j = cv2.imread(str(slambook_dir / "depth" / f"{j + 1}.pgm"), cv2.IMREAD_UNCHANGED)
            seen = visible_in(vox[i], poses[j], K, depth_j)
            assert len(seen) > 10_000, (i, j)
            d = nn_distance(vox[i][rng.choice(seen, 600, replace=False)], vox[j])
            assert np.median(d) < limit, f"frame {i + 1} vs {j + 1}: median {np.median(d):.3f} m"


class _Sender(Harness):
    """The test harness plus hand-made camera frames (48x64, a wall 1.5 m away)."""

    H, W = 48, 64
    TOPICS = {"color": "/camera/color/image_raw", "depth": "/camera/depth/image_raw",
              "info": "/camera/color/camera_info"}

    def __init__(self):
        super().__init__(depth=20, name="bad_input_sender")
        self.pub = {n: self.publisher(t, typ) for (n, t), typ in zip(self.TOPICS.items(), (Image, Image, CameraInfo))}

    @property
    def clouds_msgs(self):
        return [m for _, m in self.clouds]

    def send_static_tf(self):
        ts = TransformStamped()
        fill_transform_stamped(ts, np.eye(4), "odom", "cam", 0)
        self.publish([("/tf_static", TFMessage(transforms=[ts]))])

    def send(self, t_s, color_enc="rgb8", depth=None, frame_id="cam", info=True, color_size=None):
        stamp = int(t_s * 1e9)
        h, w = color_size or (self.H, self.W)
        rng = np.random.default_rng(int(t_s * 10))
        color = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if depth is None:
            depth = np.full((self.H, self.W), 1500, dtype=np.uint16)  # a wall 1.5 m away
        enc = "16UC1" if depth.dtype == np.uint16 else "32FC1"
        img = fill_image(Image(), color, "rgb8", stamp, frame_id)
        img.encoding = color_enc  # a valid-looking message, perhaps with an encoding the node cannot decode
        self.pub["color"].publish(img)
        self.pub["depth"].publish(fill_image(Image(), depth, enc, stamp, frame_id))
        if info:
            self.pub["info"].publish(fill_camera_info(CameraInfo(), 50.0, 50.0, self.W / 2, self.H / 2,
                                                      self.W, self.H, stamp, frame_id))

    def wait(self, pred, timeout=60.0):
        return Harness.wait(pred, timeout)


def test_bad_input_is_skipped_counted_and_the_node_keeps_running(tmp_path, ros_domain):
    node = NodeProcess(default_config_path(), {"qos.input": "reliable", "tf.timeout": 0.3},
                       log_path=tmp_path / "node.log")
    rclpy.init()
    sender = _Sender()
    try:
        assert sender.wait(lambda: sender.pub["depth"].get_subscription_count() > 0, 120), node.tail()
        # /tf is read by a listener node of its own (tf.listener_thread), best effort (tf.qos: a
        # reliable reader holds later poses back behind a lost one); /tf_static stays reliable
        readers = {t: sender.node.get_subscriptions_info_by_topic(t) for t in ("/tf", "/tf_static")}
        assert [(i.node_name, i.qos_profile.reliability) for i in readers["/tf"]] == \
            [("perception_node_tf_listener", ReliabilityPolicy.BEST_EFFORT)], readers
        assert [(i.node_name, i.qos_profile.reliability) for i in readers["/tf_static"]] == \
            [("perception_node_tf_listener", ReliabilityPolicy.RELIABLE)], readers
        sender.send_static_tf()
        time.sleep(0.5)
        d = lambda key: int(sender.diag.get(key, 0))  # noqa: E731
        # one bad frame at a time (the node's queue keeps only the newest frame), each
        # checked in /diagnostics before the next is sent
        cases = [
            (dict(color_enc="yuv422"), "skipped:/camera/color/image_raw:bad_image"),       # unknown encoding
            (dict(color_size=(24, 32)), "skipped:/camera/depth/image_raw:size_mismatch"),  # colour != depth size
            (dict(depth=np.full((48, 64), np.nan, dtype=np.float32)),
             "skipped:/camera/depth/image_raw:no_valid_depth"),                            # NaN depth everywhere
            (dict(frame_id="somewhere_else"), "skipped:/tf:no_transform"),                 # no transform to odom
        ]
        for t, (kwargs, key) in enumerate(cases, start=1):
            sender.send(float(t), **kwargs)
            assert sender.wait(lambda: d(key) == 1, 30), (key, sender.diag, node.tail())
        sender.send(5.0, info=False)   # missing camera info: colour and depth stay unpaired
        sender.send(6.0)               # a good frame; its arrival retires the unpaired ones
        assert sender.wait(lambda: d("frames_processed") == 1, 60), (sender.diag, node.tail())
        sender.send(7.0)
        assert sender.wait(lambda: d("frames_processed") == 2 and len(sender.clouds) == 2, 60), sender.diag
        assert d("skipped:/camera/color/image_raw:unpaired") == 1
        assert d("skipped:/camera/depth/image_raw:unpaired") == 1
        assert d("frames_dropped_queue") == 0 and d("messages_skipped") == 6
        assert node.alive()
        log = node.tail(100)
        assert "skipped message on '/camera/color/image_raw' (bad_image)" in log and "yuv422" in log
        assert "(no_transform)" in log and "somewhere_else" in log
        cloud = cloud_arrays(sender.clouds_msgs[-1])
        np.testing.assert_allclose(np.median(cloud["coord"][:, 2]), 1.5, atol=0.02)  # the wall, in odom
    finally:
        sender.close()
        rclpy.shutdown()
        node.stop()


def test_node_runs_a_model_bundle_and_refuses_a_bad_one(tmp_path, ros_domain):
    """``model.bundle``: the published labels come from the bundle's head; a bundle trained at
    another voxel size stops the node at start-up with the reason in its log."""
    import torch

    from concerto_ros.models.bundle import bundle_from_parts, save_bundle
    from concerto_ros.models.heads import LinearSemanticHead
    from concerto_ros.models.presets import build_encoder

    head = LinearSemanticHead(192, ["bench", "lamp", "plant"])
    with torch.no_grad():
        head.seg_head.weight.zero_()
        head.seg_head.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # always "plant", confidence e^5 / (2 + e^5)
    enc = build_encoder("tiny")
    save_bundle(bundle_from_parts(encoder=enc, head=head), tmp_path / "good.pt")
    save_bundle(bundle_from_parts(encoder=enc, head=head, voxel_size=0.05), tmp_path / "coarse.pt")

    bad = NodeProcess(default_config_path(), {"model.bundle": str(tmp_path / "coarse.pt")},
                      log_path=tmp_path / "bad.log")
    assert bad.proc.wait(120) == 1
    bad.stop()
    log = (tmp_path / "bad.log").read_text()
    assert "cannot start" in log and "set window.voxel_size: 0.05" in log, log

    node = NodeProcess(default_config_path(), {"qos.input": "reliable", "model.bundle": str(tmp_path / "good.pt")},
                       log_path=tmp_path / "node.log")
    rclpy.init()
    sender = _Sender()
    try:
        assert sender.wait(lambda: sender.pub["depth"].get_subscription_count() > 0, 120), node.tail()
        sender.send_static_tf()
        time.sleep(0.5)
        sender.send(1.0)
        assert sender.wait(lambda: len(sender.clouds) == 1, 60), (sender.diag, node.tail())
    finally:
        sender.close()
        rclpy.shutdown()
        node.stop()
    cloud = cloud_arrays(sender.clouds_msgs[0])
    assert len(cloud["label"]) > 100 and (cloud["label"] == 2).all()
    np.testing.assert_allclose(cloud["confidence"], np.exp(5.0) / (2 + np.exp(5.0)), rtol=1e-5)
    assert f"model bundle {tmp_path / 'good.pt'}" in (tmp_path / "node.log").read_text()
