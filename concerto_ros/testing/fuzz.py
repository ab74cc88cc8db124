"""Malformed sensor messages, family by family, for attacking a running perception node.

Used by the live fuzz test (``test/test_node_fuzz.py``) and ``benchmarks/soak.py --fuzz``.
Every case is a list of ``(topic, message)`` to publish and the skip reason the node must
count for it. Good frames (:func:`good_frame`) are a 64x48 RGB-D view of a wall 1.5 m
away, posed through a dynamic ``odom -> base`` transform and a static ``base -> cam``, so
that both TF paths and every input topic are exercised.

Messages are rclpy messages; this module imports rclpy message packages but creates no node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: F401  (Image re-exported for tests)
from tf2_msgs.msg import TFMessage

from concerto_ros.msgs.camera_info import fill_camera_info
from concerto_ros.msgs.image import fill_image
from concerto_ros.msgs.pointcloud2 import FLOAT32, FLOAT64, UINT8, fill_pointcloud2
from concerto_ros.msgs.transforms import fill_transform_stamped

__all__ = ["Topics", "Case", "good_frame", "static_tf", "cases", "FAMILIES"]

S = 1_000_000_000
H, W = 48, 64


@dataclass(frozen=True)
class Topics:
    """Topic names the node listens on."""

    color: str = "/camera/color/image_raw"
    depth: str = "/camera/depth/image_raw"
    camera_info: str = "/camera/color/camera_info"
    points: str = "/points"


@dataclass
class Case:
    """One malformed input: its family, a description, the messages, the expected reason."""

    family: str
    name: str
    messages: list[tuple[str, Any]] = field(default_factory=list)
    reason: str = ""


def _tf(parent: str, child: str, stamp_ns: int, t=(0.0, 0.0, 0.0), q=(0.0, 0.0, 0.0, 1.0)) -> TransformStamped:
    ts = TransformStamped()
    sec, nsec = divmod(int(stamp_ns), S)
    ts.header.stamp.sec, ts.header.stamp.nanosec = int(sec), int(nsec)
    ts.header.frame_id, ts.child_frame_id = parent, child
    ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = map(float, t)
    r = ts.transform.rotation
    r.x, r.y, r.z, r.w = map(float, q)
    return ts


def static_tf() -> TFMessage:
    """``base -> cam`` identity, for ``/tf_static`` (latched)."""
    ts = TransformStamped()
    fill_transform_stamped(ts, np.eye(4), "base", "cam", 0)
    return TFMessage(transforms=[ts])


def _images(stamp_ns: int, frame_id: str = "cam", color=None, depth=None, info=None):
    rng = np.random.default_rng(stamp_ns % (2 ** 32))
    color = rng.integers(0, 255, (H, W, 3), dtype=np.uint8) if color is None else color
    depth = np.full((H, W), 1500, dtype=np.uint16) if depth is None else depth
    c = fill_image(Image(), color, "rgb8", stamp_ns, frame_id)
    d = fill_image(Image(), depth, "16UC1" if depth.dtype == np.uint16 else "32FC1", stamp_ns, frame_id)
    k = info or {}
    i = fill_camera_info(CameraInfo(), k.get("fx", 50.0), k.get("fy", 50.0), k.get("cx", W / 2),
                         k.get("cy", H / 2), W, H, stamp_ns, frame_id)
    return c, d, i


def good_frame(stamp_ns: int, topics: Topics = Topics()) -> list[tuple[str, Any]]:
    """``/tf`` ``odom -> base`` at the stamp, then colour, depth and camera info."""
    c, d, i = _images(stamp_ns)
    return [("/tf", TFMessage(transforms=[_tf("odom", "base", stamp_ns)])),
            (topics.color, c), (topics.depth, d), (topics.camera_info, i)]


def _cloud(stamp_ns: int, fields: list[tuple[str, int, int, int]], point_step: int, n: int = 10,
           data_bytes: int | None = None, frame_id: str = "cam") -> PointCloud2:
    msg = PointCloud2()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), S)
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=nm, offset=o, datatype=dt, count=c) for nm, o, dt, c in fields]
    msg.point_step, msg.row_step = point_step, point_step * n
    msg.is_bigendian, msg.is_dense = False, False
    msg.data = bytes(np.full(point_step * n if data_bytes is None else data_bytes, 7, dtype=np.uint8))
    return msg


XYZ = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1)]


def _tf_cases(t: int, topic: str) -> list[Case]:
    f = "tf_static" if topic == "/tf_static" else "tf"
    bad = [("zero quaternion", _tf("odom", "base", t, q=(0, 0, 0, 0))),
           ("quaternion norm 1e-10", _tf("odom", "base", t, q=(1e-10, 0, 0, 0))),
           ("empty child frame", _tf("odom", "", t)),
           ("empty parent frame", _tf("", "base", t)),
           ("parent equals child", _tf("base", "base", t)),
           ("a loop (cam -> odom)", _tf("cam", "odom", t)),
           ("NaN translation", _tf("odom", "base", t, t=(float("nan"), 0, 0))),
           ("infinite rotation", _tf("odom", "base", t, q=(float("inf"), 0, 0, 1)))]
    out = [Case(f, name, [(topic, TFMessage(transforms=[ts]))], "bad_transform") for name, ts in bad]
    if topic == "/tf":
        out.append(Case(f, "negative stamp", [(topic, TFMessage(transforms=[_tf("odom", "base", -5 * S)]))],
                        "bad_transform"))
        # far ahead: held by the buffer's jump detection, nothing counted; lookups keep working
        out.append(Case(f, "stamp 10^6 s ahead", [(topic, TFMessage(transforms=[_tf("odom", "base", t + 10 ** 6 * S)]))],
                        ""))
        # a huge translation on another frame, then a frame in it: skipped as bad_pose
        c, d, i = _images(t, frame_id="cam_far")
        out.append(Case(f, "translation 1e30", [(topic, TFMessage(transforms=[_tf("odom", "cam_far", t, t=(1e30, 0, 0))])),
                                                 ("color", c), ("depth", d), ("camera_info", i)], "bad_pose"))
    return out


def _camera_cases(t: int, topics: Topics) -> list[Case]:
    out = []
    for name, k in (("fx = 1e-30", {"fx": 1e-30}), ("cx = 1e30", {"cx": 1e30}),
                    ("fx = fy = 1e-3", {"fx": 1e-3, "fy": 1e-3}), ("fy = 1e12", {"fy": 1e12})):
        c, d, i = _images(t, info=k)
        out.append(Case("camera_info", name, [(topics.color, c), (topics.depth, d), (topics.camera_info, i)],
                        "bad_intrinsics"))
    c, d, i = _images(t)
    i.k = np.zeros(9)
    out.append(Case("camera_info", "all-zero K", [(topics.color, c), (topics.depth, d), (topics.camera_info, i)],
                    "bad_camera_info"))
    c, d, i = _images(t)
    i.k = np.full(9, np.nan)
    out.append(Case("camera_info", "NaN K", [(topics.color, c), (topics.depth, d), (topics.camera_info, i)],
                    "bad_camera_info"))
    c, d, i = _images(t)
    i.width = 640
    out.append(Case("camera_info", "width disagrees", [(topics.color, c), (topics.depth, d), (topics.camera_info, i)],
                    "size_mismatch"))
    return out


def _image_cases(t: int, topics: Topics) -> list[Case]:
    out = []

    def case(family, name, mutate, reason, which="color"):
        c, d, i = _images(t)
        mutate(c if which == "color" else d)
        out.append(Case(family, name, [(topics.color, c), (topics.depth, d), (topics.camera_info, i)], reason))

    case("color", "encoding yuv422", lambda m: setattr(m, "encoding", "yuv422"), "bad_image")
    case("color", "data truncated", lambda m: setattr(m, "data", bytes(m.data)[:100]), "bad_image")
    case("color", "step too small", lambda m: setattr(m, "step", 3), "bad_image")
    case("color", "empty encoding", lambda m: setattr(m, "encoding", ""), "bad_image")
    case("depth", "encoding 64FC1", lambda m: setattr(m, "encoding", "64FC1"), "bad_image", "depth")
    case("depth", "data truncated", lambda m: setattr(m, "data", bytes(m.data)[:10]), "bad_image", "depth")
    c, d, i = _images(t, depth=np.full((H, W), np.nan, dtype=np.float32))
    out.append(Case("depth", "all NaN", [(topics.color, c), (topics.depth, d), (topics.camera_info, i)],
                    "no_valid_depth"))
    c, _, i = _images(t)
    _, d, _ = _images(t, depth=np.full((H // 2, W // 2), 1500, dtype=np.uint16))
    out.append(Case("depth", "half size", [(topics.color, c), (topics.depth, d), (topics.camera_info, i)],
                    "size_mismatch"))
    return out


def _stamp_cases(t: int, topics: Topics) -> list[Case]:
    out = []
    for name, stamp, reason in (("stamp 0", 0, "bad_stamp"), ("negative stamp", -3 * S, "bad_stamp"),
                                ("10^6 s ahead", t + 10 ** 6 * S, "bad_stamp")):
        c, d, i = _images(max(stamp, 1))
        for m in (c, d, i):
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp), S)
        out.append(Case("stamp", name, [(topics.color, c), (topics.depth, d), (topics.camera_info, i)], reason))
    return out


def _cloud_cases(t: int, topics: Topics) -> list[Case]:
    p = topics.points
    return [Case("pointcloud2", name, [(p, msg)], reason) for name, msg, reason in (
        ("rgb UINT8 x1", _cloud(t, XYZ + [("rgb", 12, UINT8, 1)], 16), "bad_field"),
        ("rgb FLOAT64", _cloud(t, XYZ + [("rgb", 12, FLOAT64, 1)], 20), "bad_field"),
        ("intensity count 3", _cloud(t, XYZ + [("intensity", 12, FLOAT32, 3)], 24), "bad_field"),
        ("no z field", _cloud(t, XYZ[:2], 8), "bad_field"),
        ("unknown datatype 42", _cloud(t, [("x", 0, 42, 1)] + XYZ[1:], 12), "bad_field"),
        ("data shorter than row_step", _cloud(t, XYZ, 12, data_bytes=20), "bad_pointcloud"),
        ("field past point_step", _cloud(t, XYZ + [("ring", 12, FLOAT64, 1)], 14), "bad_pointcloud"),
    )]


#: family name -> case builder ``(stamp_ns, topics) -> [Case]``
FAMILIES: dict[str, Callable[[int, Topics], list[Case]]] = {
    "tf": lambda t, topics: _tf_cases(t, "/tf"),
    "tf_static": lambda t, topics: _tf_cases(t, "/tf_static"),
    "camera_info": _camera_cases,
    "image": _image_cases,
    "stamp": _stamp_cases,
    "pointcloud2": _cloud_cases,
}


def cases(stamp_ns: int, topics: Topics = Topics(), families: list[str] | None = None) -> list[Case]:
    """Every malformed case of ``families`` (all by default), stamped ``stamp_ns``."""
    out = []
    for name in families or list(FAMILIES):
        out += FAMILIES[name](stamp_ns, topics)
    return out


def fix_topics(case: Case, topics: Topics) -> list[tuple[str, Any]]:
    """The case's messages with stream names (``color``...) replaced by topic names."""
    names = {"color": topics.color, "depth": topics.depth, "camera_info": topics.camera_info, "points": topics.points}
    return [(names.get(topic, topic), msg) for topic, msg in case.messages]
