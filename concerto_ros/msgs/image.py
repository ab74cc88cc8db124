"""``sensor_msgs/Image`` <-> numpy, without ROS (no ``cv_bridge``).

Every function here is duck-typed over two kinds of message objects:

* rclpy messages (``from sensor_msgs.msg import Image``): ``msg.data`` is an
  ``array.array('B')``;
* ``rosbags`` typestore dataclasses (``typestore.types['sensor_msgs/msg/Image']``):
  ``msg.data`` is a 1-D ``np.ndarray`` of ``uint8``.

Reading honours ``step`` (row padding) and ``is_bigendian``; the arrays returned are
always fresh, writeable, C-contiguous and in native byte order, so they never alias the
message buffer. Writing produces unpadded rows (``step = width * bytes_per_pixel``) in
little-endian order.

Depth conventions (REP-118): ``16UC1`` / ``mono16`` hold millimetres with 0 meaning
"no measurement" (depth scale 1000 units per metre); ``32FC1`` holds metres with any
non-finite value meaning "no measurement" (depth scale 1.0).
"""

from __future__ import annotations

import array as pyarray
import re
from typing import Any

import numpy as np

from concerto_ros.msgs.transforms import set_stamp

__all__ = [
    "UnsupportedEncoding",
    "ENCODINGS",
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "encoding_info",
    "image_to_numpy",
    "image_problem",
    "numpy_to_image_fields",
    "fill_image",
    "color_to_rgb",
    "depth_from_msg",
    "is_rosbags_message",
    "uint8_bytes",
    "set_uint8_data",
]


class UnsupportedEncoding(ValueError):
    """An image encoding this module cannot convert (the message names the encoding)."""


#: encoding -> (numpy dtype of one channel, number of channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "rgb16": (np.dtype(np.uint16), 3),
    "bgr16": (np.dtype(np.uint16), 3),
    "rgba16": (np.dtype(np.uint16), 4),
    "bgra16": (np.dtype(np.uint16), 4),
    "mono16": (np.dtype(np.uint16), 1),
}

#: colour encodings accepted by :func:`color_to_rgb`
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
#: depth encodings accepted by :func:`depth_from_msg` -> depth scale (units per metre)
DEPTH_ENCODINGS = {"16UC1": 1000.0, "mono16": 1000.0, "32FC1": 1.0}

_CV_TYPE = re.compile(r"^(8|16|32|64)([USF])C([1-9][0-9]*)$")
_CV_DTYPES = {
    ("8", "U"): np.uint8,
    ("8", "S"): np.int8,
    ("16", "U"): np.uint16,
    ("16", "S"): np.int16,
    ("32", "S"): np.int32,
    ("32", "F"): np.float32,
    ("64", "F"): np.float64,
}


def encoding_info(encoding: str) -> tuple[np.dtype, int]:
    """Return ``(channel dtype, channels)`` for an image encoding.

    Supports the named encodings of :data:`ENCODINGS` and the OpenCV-style
    ``{8,16,32,64}{U,S,F}C{n}`` family (e.g. ``16UC1``, ``32FC1``, ``8UC3``).

    Raises:
        UnsupportedEncoding: for any other encoding (Bayer, YUV, compressed, ...).
    """
    if encoding in ENCODINGS:
        return ENCODINGS[encoding]
    m = _CV_TYPE.match(encoding)
    if m is not None and (m.group(1), m.group(2)) in _CV_DTYPES:
        return np.dtype(_CV_DTYPES[(m.group(1), m.group(2))]), int(m.group(3))
    raise UnsupportedEncoding(
        f"unsupported image encoding {encoding!r}; supported: "
        f"{', '.join(ENCODINGS)} and {{8,16,32,64}}{{U,S,F}}C{{n}} (e.g. 16UC1, 32FC1)"
    )


# --------------------------------------------------------------------------- buffers
def is_rosbags_message(msg: Any) -> bool:
    """True for a ``rosbags`` typestore dataclass, False for an rclpy message."""
    return hasattr(type(msg), "__msgtype__") or hasattr(msg, "__msgtype__")


def uint8_bytes(data: Any) -> np.ndarray:
    """View a message's ``uint8[]`` field as a 1-D ``uint8`` array (no copy if possible).

    Accepts ``array.array('B')`` (rclpy), ``np.ndarray`` (rosbags), ``bytes``,
    ``bytearray``, ``memoryview`` or a list of ints.
    """
    if isinstance(data, np.ndarray):
        return (
            data.reshape(-1).view(np.uint8)
            if data.dtype.itemsize == 1
            else (np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8))
        )
    if isinstance(data, (bytes, bytearray, memoryview, pyarray.array)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def set_uint8_data(msg: Any, data: bytes | bytearray | memoryview | np.ndarray) -> None:
    """Assign raw bytes to ``msg.data`` in the form the message class expects.

    rclpy messages get an ``array.array('B')`` (the fast path of the generated setter;
    assigning ``bytes`` would validate every element in Python), rosbags dataclasses a
    1-D ``np.ndarray`` of ``uint8`` (a read-only view when ``data`` is ``bytes``, else a
    copy).
    """
    if isinstance(data, np.ndarray):
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        raw = np.frombuffer(data, dtype=np.uint8)
    if is_rosbags_message(msg):
        # bytes are immutable, so a read-only view of them is safe; anything else is copied
        msg.data = raw if isinstance(data, bytes) else raw.copy()
    else:
        buf = pyarray.array("B")
        buf.frombytes(raw)  # any contiguous buffer; one copy
        msg.data = buf


# --------------------------------------------------------------------------- reading
def image_problem(msg: Any, encodings: Any = None) -> str | None:
    """Why an ``Image`` cannot be decoded, or ``None``; reads the header fields only.

    Args:
        msg: rclpy or rosbags ``Image``.
        encodings: accepted encodings (e.g. :data:`COLOR_ENCODINGS`); ``None``: any
            encoding :func:`encoding_info` knows.

    Checks the encoding, ``step >= width * bytes_per_pixel`` and ``len(data) ==
    height * step`` (the checks :func:`image_to_numpy` raises on), without touching pixels.
    """
    encoding = str(msg.encoding)
    if encodings is not None and encoding not in encodings:
        return f"unsupported encoding {encoding!r}; expected one of {', '.join(encodings)}"
    try:
        dtype, channels = encoding_info(encoding)
    except UnsupportedEncoding as exc:
        return str(exc)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height < 0 or width < 0:
        return f"image {encoding!r} has size {width}x{height}"
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        return (f"image {encoding!r} {width}x{height}: step {step} bytes is smaller than "
                f"width*bytes_per_pixel = {row_bytes}")
    size = len(msg.data)
    if size != height * step:
        return (f"image {encoding!r} {width}x{height}: data has {size} bytes, "
                f"expected height*step = {height}*{step} = {height * step}")
    return None


def image_to_numpy(msg: Any) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to a numpy array.

    Args:
        msg: rclpy or rosbags ``Image`` (fields ``height, width, encoding,
            is_bigendian, step, data``).

    Returns:
        ``(H, W)`` for one-channel encodings, ``(H, W, C)`` otherwise, with the
        encoding's channel dtype (``uint8`` for ``rgb8``/``mono8``..., ``uint16`` for
        ``16UC1``/``mono16``, ``float32`` for ``32FC1``) in native byte order. Channel
        order is the encoding's (``bgr8`` stays BGR; see :func:`color_to_rgb`). The
        array is a copy, independent of the message.

    Raises:
        UnsupportedEncoding: unknown encoding.
        ValueError: ``step`` smaller than ``width * bytes_per_pixel``, or
            ``len(data) != height * step`` (see :func:`image_problem`).
    """
    encoding = str(msg.encoding)
    dtype, channels = encoding_info(encoding)
    problem = image_problem(msg)
    if problem is not None:
        raise ValueError(problem)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    buf = uint8_bytes(msg.data)
    if height == 0 or width == 0:
        shape = (height, width) if channels == 1 else (height, width, channels)
        return np.zeros(shape, dtype=dtype)
    rows = buf.reshape(height, step)[:, :row_bytes]
    order = ">" if int(msg.is_bigendian) else "<"
    arr = np.ascontiguousarray(rows).view(dtype.newbyteorder(order))
    arr = arr.astype(dtype.newbyteorder("="), copy=True)
    if channels == 1:
        return arr.reshape(height, width)
    return arr.reshape(height, width, channels)


def color_to_rgb(msg: Any) -> np.ndarray:
    """Decode a colour ``Image`` to ``(H, W, 3) uint8`` RGB.

    Accepts ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (alpha dropped) and ``mono8``
    (grey replicated to three channels).

    Raises:
        UnsupportedEncoding: any other encoding (named in the message).
        ValueError: inconsistent sizes (see :func:`image_to_numpy`).
    """
    encoding = str(msg.encoding)
    if encoding not in COLOR_ENCODINGS:
        raise UnsupportedEncoding(
            f"unsupported colour encoding {encoding!r}; expected one of "
            f"{', '.join(COLOR_ENCODINGS)}"
        )
    arr = image_to_numpy(msg)
    if encoding == "mono8":
        return np.repeat(arr[:, :, None], 3, axis=2)
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


def depth_from_msg(msg: Any) -> tuple[np.ndarray, float]:
    """Decode a depth ``Image`` to ``(array, depth_scale)``.

    Returns:
        * ``16UC1`` / ``mono16``: ``(H, W) uint16`` millimetres (0 = invalid), scale 1000.0;
        * ``32FC1``: ``(H, W) float32`` metres (NaN/inf = invalid, kept as is), scale 1.0.

        ``depth_scale`` is in units per metre: ``metres = array / depth_scale``.

    Raises:
        UnsupportedEncoding: any other encoding (named in the message).
        ValueError: inconsistent sizes (see :func:`image_to_numpy`).
    """
    encoding = str(msg.encoding)
    if encoding not in DEPTH_ENCODINGS:
        raise UnsupportedEncoding(
            f"unsupported depth encoding {encoding!r}; expected one of "
            f"{', '.join(DEPTH_ENCODINGS)} (16UC1/mono16 in millimetres, 32FC1 in metres)"
        )
    return image_to_numpy(msg), DEPTH_ENCODINGS[encoding]


# --------------------------------------------------------------------------- writing
def numpy_to_image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """Build the ``Image`` fields for an array.

    Args:
        array: ``(H, W)`` or ``(H, W, 1)`` for one-channel encodings, ``(H, W, C)``
            otherwise; the dtype must be exactly the encoding's channel dtype (e.g.
            ``uint8`` for ``rgb8``, ``uint16`` for ``16UC1`` millimetres, ``float32``
            for ``32FC1`` metres). No silent casts: a depth array of the wrong type is
            an error, not a rounding.
        encoding: ROS image encoding.

    Returns:
        ``dict(height, width, encoding, is_bigendian=0, step, data: bytes)`` with
        unpadded little-endian rows.

    Raises:
        UnsupportedEncoding: unknown encoding.
        ValueError: dtype or shape does not match the encoding.
    """
    dtype, channels = encoding_info(encoding)
    arr = np.asarray(array)
    if arr.ndim == 3 and channels == 1 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        want = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ValueError(f"encoding {encoding!r} needs an array of shape {want}, got {arr.shape}")
    if arr.dtype.kind != dtype.kind or arr.dtype.itemsize != dtype.itemsize:
        raise ValueError(f"encoding {encoding!r} needs dtype {dtype}, got {arr.dtype}")
    height, width = int(arr.shape[0]), int(arr.shape[1])
    data = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<")).tobytes()
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": width * channels * dtype.itemsize,
        "data": data,
    }


def fill_image(msg: Any, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """Fill an existing ``Image`` message (rclpy or rosbags) in place and return it.

    Args:
        msg: the message to fill; its ``header.stamp`` and ``header.frame_id`` are set.
        array: image array, see :func:`numpy_to_image_fields`.
        encoding: ROS image encoding.
        stamp_ns: stamp in integer nanoseconds since the epoch.
        frame_id: frame of the image (the camera optical frame, REP-103).

    Raises:
        UnsupportedEncoding, ValueError: see :func:`numpy_to_image_fields`.
    """
    fields = numpy_to_image_fields(array, encoding)
    set_stamp(msg.header, stamp_ns, frame_id)
    msg.height = fields["height"]
    msg.width = fields["width"]
    msg.encoding = fields["encoding"]
    msg.is_bigendian = fields["is_bigendian"]
    msg.step = fields["step"]
    set_uint8_data(msg, fields["data"])
    return msg
