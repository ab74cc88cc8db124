"""PointCloud2 <-> numpy without sensor_msgs_py: layouts, datatypes, packed rgb."""

from __future__ import annotations

import array

import numpy as np
import pytest

from concerto_ros.recordings.typestore import make_message, ros2_typestore
from concerto_ros.msgs.pointcloud2 import (
    FLOAT32,
    FLOAT64,
    INT8,
    INT16,
    INT32,
    UINT8,
    UINT16,
    UINT32,
    array_to_pointcloud2_data,
    build_pointcloud2_fields,
    fill_pointcloud2,
    pack_rgb,
    pointcloud2_to_array,
    unpack_rgb,
    xyz_from_pointcloud2,
)

rclpy_msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy sensor_msgs wheels not installed")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

TS = ros2_typestore()
PC2 = "sensor_msgs/msg/PointCloud2"
STAMP = 1_700_000_001_000_000_007


def make_cloud(n=50, d=8, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-5, 5, size=(n, 3)).astype(np.float32)
    pts[3, 1] = np.nan
    pts[10, 2] = np.inf
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    rgb[0] = (255, 255, 255)
    rgb[1] = (0, 0, 0)
    label = rng.integers(0, 20, size=n).astype(np.int32)
    label[5] = -1
    conf = rng.uniform(0, 1, size=n).astype(np.float32)
    feat = rng.normal(size=(n, d)).astype(np.float32)
    return pts, rgb, label, conf, feat


def new_cloud(kind):
    if kind == "rclpy":
        return rclpy_msgs.PointCloud2(), rclpy_msgs.PointField
    return make_message(TS, PC2), TS.types["sensor_msgs/msg/PointField"]


@pytest.mark.parametrize("kind", ["rclpy", "rosbags"])
def test_project_layout_round_trip(kind):
    pts, rgb, label, conf, feat = make_cloud()
    msg, field_cls = new_cloud(kind)
    fill_pointcloud2(
        msg,
        field_cls,
        STAMP,
        "odom",
        pts,
        rgb=rgb,
        label=label,
        confidence=conf,
        extra={"feature": feat},
    )
    keep = np.isfinite(pts).all(axis=1)
    n = int(keep.sum())
    assert n == 48
    layout = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    assert layout == [
        ("x", 0, FLOAT32, 1),
        ("y", 4, FLOAT32, 1),
        ("z", 8, FLOAT32, 1),
        ("rgb", 12, FLOAT32, 1),
        ("label", 16, UINT32, 1),
        ("confidence", 20, FLOAT32, 1),
        ("feature", 24, FLOAT32, 8),
    ]
    assert all(isinstance(f, field_cls) for f in msg.fields)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, n, 56, 56 * n)
    assert msg.is_dense and not msg.is_bigendian
    assert msg.header.frame_id == "odom"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_001, 7)
    if kind == "rclpy":
        assert isinstance(msg.data, array.array)

    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(n, 56)
    rgb_bits = raw[:, 12:16].copy().view("<u4")[:, 0]
    r, g, b = rgb[keep].astype(np.uint32).T
    np.testing.assert_array_equal(rgb_bits, (r << 16) | (g << 8) | b)
    assert rgb_bits[0] == 0x00FFFFFF and rgb_bits[1] == 0
    np.testing.assert_array_equal(
        raw[:, 16:20].copy().view("<u4")[:, 0], label[keep].view(np.uint32)
    )

    points, extras = xyz_from_pointcloud2(msg)
    np.testing.assert_array_equal(points, pts[keep])
    assert points.dtype == np.float32
    assert set(extras) == {"rgb", "label", "confidence", "feature"}
    np.testing.assert_array_equal(extras["rgb"], rgb[keep])
    assert extras["label"].dtype == np.int32
    np.testing.assert_array_equal(extras["label"], label[keep])  # -1 survives as int32
    np.testing.assert_array_equal(extras["confidence"], conf[keep])
    assert extras["feature"].shape == (n, 8)
    np.testing.assert_array_equal(extras["feature"], feat[keep])


def test_cdr_interop_rosbags_to_rclpy():
    pts, rgb, label, conf, feat = make_cloud(n=20, d=3, seed=1)
    pts = np.nan_to_num(pts)
    bag_msg, field_cls = new_cloud("rosbags")
    fill_pointcloud2(
        bag_msg,
        field_cls,
        STAMP,
        "map",
        pts,
        rgb=rgb,
        label=label.clip(0),
        confidence=conf,
        extra={"embedding": feat},
    )
    ros_msg = deserialize_message(bytes(TS.serialize_cdr(bag_msg, PC2)), rclpy_msgs.PointCloud2)
    points, extras = xyz_from_pointcloud2(ros_msg)
    np.testing.assert_array_equal(points, pts)
    np.testing.assert_array_equal(extras["rgb"], rgb)
    np.testing.assert_array_equal(extras["embedding"], feat)
    back = TS.deserialize_cdr(serialize_message(ros_msg), PC2)
    np.testing.assert_array_equal(xyz_from_pointcloud2(back)[1]["label"], label.clip(0))


def test_pack_unpack_rgb_bits():
    v = np.arange(256, dtype=np.uint8)
    rgb = np.stack([v, v[::-1], (v * 7).astype(np.uint8)], axis=1)
    packed = pack_rgb(rgb)
    assert packed.dtype == np.float32 and packed.shape == (256,)
    bits = packed.view(np.uint32)
    np.testing.assert_array_equal(bits >> 24, 0)
    np.testing.assert_array_equal((bits >> 16) & 0xFF, rgb[:, 0])
    np.testing.assert_array_equal((bits >> 8) & 0xFF, rgb[:, 1])
    np.testing.assert_array_equal(bits & 0xFF, rgb[:, 2])
    np.testing.assert_array_equal(unpack_rgb(packed), rgb)
    # 0xAARRGGBB uint32 (PCL rgba): alpha ignored
    rgba = np.array([0xFF102030, 0x80FFFFFF], dtype=np.uint32)
    np.testing.assert_array_equal(unpack_rgb(rgba), [[0x10, 0x20, 0x30], [255, 255, 255]])
    with pytest.raises(ValueError, match=r"\(N, 3\) uint8"):
        pack_rgb(rgb.astype(np.int32))


@pytest.mark.parametrize("big", [False, True])
def test_reader_handles_all_datatypes_padding_counts_and_endianness(big):
    """A hand-made organized cloud: 2 rows x 3 points, gaps in points and at row ends."""
    order = ">" if big else "<"
    specs = [  # name, offset, datatype, count, numpy type
        ("x", 0, FLOAT32, 1, "f4"),
        ("y", 4, FLOAT32, 1, "f4"),
        ("z", 8, FLOAT32, 1, "f4"),
        ("i8", 12, INT8, 1, "i1"),
        ("u8", 13, UINT8, 1, "u1"),
        ("i16", 14, INT16, 1, "i2"),
        ("u16", 16, UINT16, 2, "u2"),
        ("i32", 20, INT32, 1, "i4"),
        ("rgba", 24, UINT32, 1, "u4"),
        ("f64", 32, FLOAT64, 1, "f8"),
    ]
    point_step, width, height, row_pad = 48, 3, 2, 8  # bytes 40..47 are padding
    dt = np.dtype(
        {
            "names": [s[0] for s in specs],
            "formats": [(order + s[4]) if s[3] == 1 else (order + s[4], (s[3],)) for s in specs],
            "offsets": [s[1] for s in specs],
            "itemsize": point_step,
        }
    )
    n = width * height
    vals = np.zeros(n, dtype=dt)
    vals["x"], vals["y"], vals["z"] = np.arange(n), -np.arange(n), 0.5 * np.arange(n)
    vals["x"][4] = np.nan
    vals["i8"] = [-128, -1, 0, 1, 2, 127]
    vals["u8"] = [0, 1, 2, 3, 254, 255]
    vals["i16"] = [-32768, -2, 0, 5, 300, 32767]
    vals["u16"] = np.arange(2 * n).reshape(n, 2) * 1000
    vals["i32"] = [-(2**31), -7, 0, 7, 2**20, 2**31 - 1]
    vals["rgba"] = [0xFF010203, 0x00FFFFFF, 0x7F000000, 0xFF0000FF, 0xFF00FF00, 0xFFFF0000]
    vals["f64"] = np.pi * np.arange(n)
    rows = np.full((height, width * point_step + row_pad), 0xEE, dtype=np.uint8)
    rows[:, : width * point_step] = np.frombuffer(vals.tobytes(), np.uint8).reshape(height, -1)
    # the padding bytes inside each point are garbage too
    body = rows[:, : width * point_step].reshape(n, point_step)
    body[:, 40:] = 0xEE

    msg, field_cls = new_cloud("rclpy")
    msg.height, msg.width, msg.point_step = height, width, point_step
    msg.row_step = width * point_step + row_pad
    msg.is_bigendian = big
    msg.is_dense = False
    msg.fields = [field_cls(name=s[0], offset=s[1], datatype=s[2], count=s[3]) for s in specs]
    msg.data = array.array("B", rows.tobytes())

    arr = pointcloud2_to_array(msg)
    assert arr.shape == (n,)
    for name in dt.names:
        assert arr.dtype[name].base.isnative
        np.testing.assert_array_equal(arr[name], vals[name], err_msg=name)
    assert pointcloud2_to_array(msg, organized=True).shape == (2, 3)

    points, extras = xyz_from_pointcloud2(msg)
    assert points.shape == (5, 3)
    keep = np.arange(n) != 4
    np.testing.assert_array_equal(points[:, 0], vals["x"][keep])
    np.testing.assert_array_equal(extras["rgb"], unpack_rgb(vals["rgba"][keep].astype(np.uint32)))
    np.testing.assert_array_equal(extras["rgb"][0], [1, 2, 3])
    np.testing.assert_array_equal(extras["u16"], vals["u16"][keep])
    assert extras["u16"].shape == (5, 2)
    all_points, _ = xyz_from_pointcloud2(msg, drop_nonfinite=False)
    assert all_points.shape == (6, 3) and np.isnan(all_points[4, 0])


def test_build_fields_alignment_and_generic_writer():
    fields, step = build_pointcloud2_fields([("a", np.uint8, 1), ("b", np.float64, 1), ("c", 4, 3)])
    assert [tuple(f) for f in fields] == [
        ("a", 0, UINT8, 1),
        ("b", 8, FLOAT64, 1),
        ("c", 16, UINT16, 3),
    ]
    assert step == 24
    pts = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float64)
    fields, step, data = array_to_pointcloud2_data(
        pts, intensity=np.array([0.5, 2.0], np.float32), ring=np.array([3, 60000], np.uint16)
    )
    assert [tuple(f) for f in fields] == [
        ("x", 0, FLOAT32, 1),
        ("y", 4, FLOAT32, 1),
        ("z", 8, FLOAT32, 1),
        ("intensity", 12, FLOAT32, 1),
        ("ring", 16, UINT16, 1),
    ]
    assert step == 20 and len(data) == 40
    msg, _ = new_cloud("rosbags")
    msg.height, msg.width, msg.point_step, msg.row_step = 1, 2, step, 2 * step
    msg.fields = [
        TS.types["sensor_msgs/msg/PointField"](
            name=f.name, offset=f.offset, datatype=f.datatype, count=f.count
        )
        for f in fields
    ]
    msg.data = np.frombuffer(data, np.uint8)
    points, extras = xyz_from_pointcloud2(msg)
    np.testing.assert_array_equal(points, pts.astype(np.float32))
    assert extras["intensity"].dtype == np.float32
    np.testing.assert_array_equal(extras["intensity"], [0.5, 2.0])
    np.testing.assert_array_equal(extras["ring"], [3, 60000])
    with pytest.raises(ValueError, match="int64"):
        array_to_pointcloud2_data(pts, bad=np.array([1, 2], np.int64))


def test_reader_errors():
    msg, field_cls = new_cloud("rosbags")
    fill_pointcloud2(msg, field_cls, 0, "odom", np.zeros((4, 3), np.float32))
    assert msg.width == 4 and msg.point_step == 12
    short = make_message(TS, PC2)
    short.height, short.width, short.point_step, short.row_step = 1, 4, 12, 48
    short.fields = msg.fields
    short.data = msg.data[:-1]
    with pytest.raises(ValueError, match=r"47 bytes.*1\*48 = 48"):
        pointcloud2_to_array(short)
    short.data = msg.data
    short.fields = [field_cls(name="x", offset=0, datatype=9, count=1)]
    with pytest.raises(ValueError, match="unknown datatype 9"):
        pointcloud2_to_array(short)
    short.fields = [field_cls(name="intensity", offset=0, datatype=FLOAT32, count=1)]
    with pytest.raises(ValueError, match=r"no field\(s\) \['x', 'y', 'z'\]"):
        xyz_from_pointcloud2(short)
    short.fields = [field_cls(name="x", offset=10, datatype=FLOAT32, count=1)]
    with pytest.raises(ValueError, match="past point_step 12"):
        pointcloud2_to_array(short)
    with pytest.raises(ValueError, match="rgb has 3 rows"):
        fill_pointcloud2(
            make_message(TS, PC2),
            field_cls,
            0,
            "odom",
            np.zeros((4, 3)),
            rgb=np.zeros((3, 3), np.uint8),
        )


def test_empty_cloud():
    msg, field_cls = new_cloud("rclpy")
    fill_pointcloud2(
        msg,
        field_cls,
        0,
        "odom",
        np.full((2, 3), np.nan, np.float32),
        rgb=np.zeros((2, 3), np.uint8),
    )
    assert msg.width == 0 and len(msg.data) == 0 and msg.point_step == 16
    points, extras = xyz_from_pointcloud2(msg)
    assert points.shape == (0, 3) and extras["rgb"].shape == (0, 3)
