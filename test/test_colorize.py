"""LiDAR points coloured by a camera: projection, occlusion, and the frame stream's pairing."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np

from concerto_ros.config import PerceptionConfig
from concerto_ros.msgs.camera_info import fill_camera_info
from concerto_ros.msgs.image import fill_image
from concerto_ros.msgs.pointcloud2 import fill_pointcloud2
from concerto_ros.sensors.colorize import colorize_points
from concerto_ros.sensors.stream import FrameStream, PointsSet
from concerto_ros.sensors.types import CameraIntrinsics

S = 1_000_000_000
K = CameraIntrinsics(fx=40.0, fy=40.0, cx=32.0, cy=24.0, width=64, height=48)
# camera optical frame in the LiDAR frame (LiDAR x forward, z up): optical z = LiDAR x
T_LIDAR_CAM = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _image():
    """Left half red, right half blue."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)
    rgb[:, 32:] = (0, 0, 255)
    return rgb


def test_points_the_camera_sees_take_its_colour_occluded_and_behind_ones_do_not():
    xyz = np.array([[2.0, 0.3, 0.0],    # ahead, left of the optical axis (LiDAR +y = image left)
                    [2.0, -0.3, 0.0],   # ahead, right
                    [4.0, -0.6, 0.0],   # behind the previous point on the same ray: occluded
                    [-2.0, 0.0, 0.0],   # behind the camera
                    [2.0, 5.0, 0.0]],   # outside the field of view
                   dtype=np.float32)
    base = np.full((5, 3), 7, np.uint8)
    colors, n = colorize_points(xyz, base, _image(), K, T_LIDAR_CAM)
    assert n == 2
    np.testing.assert_array_equal(colors, [[255, 0, 0], [0, 0, 255], [7, 7, 7], [7, 7, 7], [7, 7, 7]])


def _msg(stamp, frame):
    return NS(header=NS(stamp=NS(sec=0, nanosec=0), frame_id=frame))


def test_the_stream_colours_a_cloud_with_the_nearest_image_and_keeps_grey_elsewhere():
    cfg = PerceptionConfig()
    cfg.topics.depth = ""            # a colour camera without depth beside the LiDAR
    cfg.topics.points = "/points"
    lookup = lambda target, source, stamp: (T_LIDAR_CAM if (target, source) == ("lidar", "cam")  # noqa: E731
                                            else np.eye(4))
    stream = FrameStream(cfg, lookup=lookup)
    assert stream.camera is not None and not stream.rgbd
    t_img, t_cloud = 10 * S, 10 * S + 30_000_000  # 30 ms apart: within colorize_max_dt
    assert stream.add("color", fill_image(_msg(0, ""), _image(), "rgb8", t_img, "cam")) == []
    assert stream.add("camera_info", fill_camera_info(_msg(0, ""), 40.0, 40.0, 32.0, 24.0, 64, 48, t_img, "cam")) == []
    xyz = np.array([[2.0, 0.3, 0.0], [2.0, -0.3, 0.0], [-2.0, 0.0, 0.0]], np.float32)
    cloud = _msg(0, "")
    fill_pointcloud2(cloud, lambda **kw: NS(**kw), t_cloud, "lidar", xyz,
                     extra={"intensity": np.array([0.0, 0.0, 1.0], np.float32)})
    sets = stream.add("points", cloud)
    assert len(sets) == 1 and isinstance(sets[0], PointsSet)
    frame = stream.decode(sets[0])
    np.testing.assert_array_equal(frame.cloud.colors[:2], [[255, 0, 0], [0, 0, 255]])
    assert frame.cloud.colors[2, 0] == frame.cloud.colors[2, 1] == frame.cloud.colors[2, 2] > 200  # intensity grey
    assert stream.points_colored == 2
    # without a recent image (beyond colorize_max_dt) the cloud is left alone: lifting greys its intensity
    late = _msg(0, "")
    fill_pointcloud2(late, lambda **kw: NS(**kw), t_cloud + S, "lidar", xyz,
                     extra={"intensity": np.array([0.0, 0.0, 1.0], np.float32)})
    frame = stream.decode(stream.add("points", late)[0])
    assert frame.cloud.colors is None and stream.points_colored == 2
