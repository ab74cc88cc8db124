"""Image and CameraInfo <-> numpy, through rclpy messages and rosbags typestore messages."""

from __future__ import annotations

import array
import zlib

import numpy as np
import pytest

from concerto_ros.recordings.typestore import make_message, ros2_typestore
from concerto_ros.msgs.camera_info import fill_camera_info, intrinsics_from_camera_info
from concerto_ros.msgs.image import (
    UnsupportedEncoding,
    color_to_rgb,
    depth_from_msg,
    fill_image,
    image_to_numpy,
    numpy_to_image_fields,
)

rclpy_msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy sensor_msgs wheels not installed")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

TS = ros2_typestore()
IMAGE = "sensor_msgs/msg/Image"
STAMP = 1_700_000_000_123_456_789


def new_image(kind: str):
    return rclpy_msgs.Image() if kind == "rclpy" else make_message(TS, IMAGE)


def sample(encoding: str, h: int = 5, w: int = 7) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(encoding.encode()))
    spec = {
        "rgb8": (np.uint8, 3),
        "bgr8": (np.uint8, 3),
        "rgba8": (np.uint8, 4),
        "bgra8": (np.uint8, 4),
        "mono8": (np.uint8, 1),
        "mono16": (np.uint16, 1),
        "16UC1": (np.uint16, 1),
        "32FC1": (np.float32, 1),
        "8UC3": (np.uint8, 3),
        "64FC1": (np.float64, 1),
        "16SC1": (np.int16, 1),
    }[encoding]
    dtype, c = spec
    shape = (h, w) if c == 1 else (h, w, c)
    if np.dtype(dtype).kind == "f":
        return rng.uniform(0.1, 10.0, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


ENCODINGS = [
    "rgb8",
    "bgr8",
    "rgba8",
    "bgra8",
    "mono8",
    "mono16",
    "16UC1",
    "32FC1",
    "8UC3",
    "64FC1",
    "16SC1",
]


@pytest.mark.parametrize("kind", ["rclpy", "rosbags"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_every_encoding(kind, encoding):
    arr = sample(encoding)
    msg = fill_image(new_image(kind), arr, encoding, STAMP, "cam_optical")
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 7, encoding, 0)
    assert msg.step == arr[0].nbytes
    assert msg.header.stamp.sec == 1_700_000_000 and msg.header.stamp.nanosec == 123_456_789
    assert msg.header.frame_id == "cam_optical"
    if kind == "rclpy":
        assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    else:
        assert isinstance(msg.data, np.ndarray) and msg.data.dtype == np.uint8
    out = image_to_numpy(msg)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    out[...] = 0  # a copy, never a view of the message buffer
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


@pytest.mark.parametrize("encoding", ["bgr8", "16UC1", "32FC1"])
def test_cdr_interop_rosbags_to_rclpy_and_back(encoding):
    arr = sample(encoding, 4, 6)
    bag_msg = fill_image(make_message(TS, IMAGE), arr, encoding, STAMP, "cam")
    raw = bytes(TS.serialize_cdr(bag_msg, IMAGE))
    ros_msg = deserialize_message(raw, rclpy_msgs.Image)
    np.testing.assert_array_equal(image_to_numpy(ros_msg), arr)
    back = TS.deserialize_cdr(serialize_message(ros_msg), IMAGE)
    np.testing.assert_array_equal(image_to_numpy(back), arr)
    assert back.header.stamp.nanosec == 123_456_789


@pytest.mark.parametrize("kind", ["rclpy", "rosbags"])
@pytest.mark.parametrize("encoding", ["rgb8", "16UC1", "32FC1"])
def test_step_padding_ignored(kind, encoding):
    arr = sample(encoding, 3, 4)
    row = arr[0].nbytes
    pad = 6
    rows = np.full((3, row + pad), 0xAB, dtype=np.uint8)
    rows[:, :row] = np.ascontiguousarray(arr).view(np.uint8).reshape(3, row)
    msg = new_image(kind)
    msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = 3, 4, encoding, 0, row + pad
    msg.data = array.array("B", rows.tobytes()) if kind == "rclpy" else rows.reshape(-1)
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


@pytest.mark.parametrize("encoding, dtype", [("16UC1", np.uint16), ("32FC1", np.float32)])
def test_big_endian_is_honoured(encoding, dtype):
    arr = sample(encoding, 2, 3)
    msg = make_message(TS, IMAGE)
    msg.height, msg.width, msg.encoding, msg.is_bigendian = 2, 3, encoding, 1
    msg.step = 3 * np.dtype(dtype).itemsize
    msg.data = np.frombuffer(arr.astype(np.dtype(dtype).newbyteorder(">")).tobytes(), np.uint8)
    out = image_to_numpy(msg)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("kind", ["rclpy", "rosbags"])
def test_color_to_rgb_all_colour_encodings(kind):
    rgb = sample("rgb8", 4, 5)
    alpha = np.full((4, 5, 1), 77, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }
    for encoding, stored in cases.items():
        msg = fill_image(new_image(kind), np.ascontiguousarray(stored), encoding, STAMP, "c")
        out = color_to_rgb(msg)
        assert out.shape == (4, 5, 3) and out.dtype == np.uint8, encoding
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)
    grey = rgb[:, :, 0]
    out = color_to_rgb(fill_image(new_image(kind), grey, "mono8", STAMP, "c"))
    np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=2))


@pytest.mark.parametrize("kind", ["rclpy", "rosbags"])
def test_depth_from_msg_units_and_invalid_values(kind):
    mm = np.array([[0, 1, 1500], [65535, 42, 0]], dtype=np.uint16)
    for encoding in ("16UC1", "mono16"):
        depth, scale = depth_from_msg(fill_image(new_image(kind), mm, encoding, STAMP, "c"))
        assert scale == 1000.0 and depth.dtype == np.uint16
        np.testing.assert_array_equal(depth, mm)
    metres = np.array([[np.nan, 1.25, np.inf], [-np.inf, 0.0, 3.5]], dtype=np.float32)
    depth, scale = depth_from_msg(fill_image(new_image(kind), metres, "32FC1", STAMP, "c"))
    assert scale == 1.0 and depth.dtype == np.float32
    assert np.isnan(depth[0, 0]) and np.isposinf(depth[0, 2]) and np.isneginf(depth[1, 0])
    np.testing.assert_array_equal(depth, metres)  # NaN positions equal too


def test_errors_name_encoding_and_sizes():
    msg = make_message(TS, IMAGE)
    msg.height, msg.width, msg.encoding, msg.step = 2, 2, "yuv422", 4
    msg.data = np.zeros(8, np.uint8)
    with pytest.raises(UnsupportedEncoding, match="yuv422"):
        image_to_numpy(msg)
    assert issubclass(UnsupportedEncoding, ValueError)

    rgb_msg = fill_image(make_message(TS, IMAGE), sample("rgb8", 2, 2), "rgb8", 0, "c")
    with pytest.raises(UnsupportedEncoding, match="rgb8"):
        depth_from_msg(rgb_msg)
    depth_msg = fill_image(make_message(TS, IMAGE), sample("16UC1", 2, 2), "16UC1", 0, "c")
    with pytest.raises(UnsupportedEncoding, match="16UC1"):
        color_to_rgb(depth_msg)

    depth_msg.data = depth_msg.data[:-1]
    with pytest.raises(ValueError, match=r"7 bytes.*2\*4 = 8"):
        image_to_numpy(depth_msg)
    depth_msg.data = np.zeros(8, np.uint8)
    depth_msg.step = 3
    with pytest.raises(ValueError, match="step 3"):
        image_to_numpy(depth_msg)


def test_numpy_to_image_fields_refuses_silent_casts():
    with pytest.raises(ValueError, match="uint16"):
        numpy_to_image_fields(np.zeros((2, 2), np.float32), "16UC1")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        numpy_to_image_fields(np.zeros((2, 2), np.uint8), "rgb8")
    fields = numpy_to_image_fields(np.zeros((2, 3, 1), np.uint16), "16UC1")
    assert (fields["height"], fields["width"], fields["step"], len(fields["data"])) == (2, 3, 6, 12)


@pytest.mark.parametrize("kind", ["rclpy", "rosbags"])
def test_camera_info_round_trip(kind):
    msg = (
        rclpy_msgs.CameraInfo()
        if kind == "rclpy"
        else make_message(TS, "sensor_msgs/msg/CameraInfo")
    )
    fill_camera_info(msg, 518.0, 519.0, 325.5, 253.5, 640, 480, STAMP, "cam_optical")
    np.testing.assert_array_equal(np.asarray(msg.k), [518, 0, 325.5, 0, 519, 253.5, 0, 0, 1])
    np.testing.assert_array_equal(
        np.asarray(msg.p), [518, 0, 325.5, 0, 0, 519, 253.5, 0, 0, 0, 1, 0]
    )
    np.testing.assert_array_equal(np.asarray(msg.r), np.eye(3).ravel())
    assert msg.distortion_model == "plumb_bob" and list(msg.d) == [0.0] * 5
    intr = intrinsics_from_camera_info(msg)
    assert intr == (518.0, 519.0, 325.5, 253.5, 640, 480, False)
    assert intr.fx == 518.0 and intr.height == 480

    msg.d = array.array("d", [0.1, 0, 0, 0, 0]) if kind == "rclpy" else np.array([0.1, 0, 0, 0, 0])
    assert intrinsics_from_camera_info(msg).distortion_nonzero is True
    msg.k = np.zeros(9)
    with pytest.raises(ValueError, match="fx=0.0"):
        intrinsics_from_camera_info(msg)
