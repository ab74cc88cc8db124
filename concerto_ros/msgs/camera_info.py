"""``sensor_msgs/CameraInfo`` <-> pinhole intrinsics, without ROS.

Duck-typed over rclpy messages (``k``/``r``/``p`` are ``np.ndarray`` of 9/9/12 float64,
``d`` an ``array.array('d')``) and rosbags dataclasses (all ``np.ndarray`` float64). Both
spell the matrices in lower case (``k``, ``d``, ``r``, ``p``) since ROS 2.

Intrinsics are in pixels: ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` for a point
``(x, y, z)`` in the camera optical frame (z forward, x right, y down).
"""

from __future__ import annotations

import array
from typing import Any, NamedTuple

import numpy as np

from concerto_ros.msgs.image import is_rosbags_message
from concerto_ros.msgs.transforms import set_stamp

__all__ = ["CameraInfoIntrinsics", "intrinsics_from_camera_info", "fill_camera_info"]


class CameraInfoIntrinsics(NamedTuple):
    """Pinhole intrinsics read from a ``CameraInfo`` (a plain tuple with names).

    ``fx, fy, cx, cy`` in pixels (float), ``width, height`` in pixels (int),
    ``distortion_nonzero`` True when any coefficient of ``D`` is non-zero (the image is
    not rectified and pinhole lifting of it is approximate).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion_nonzero: bool


def intrinsics_from_camera_info(msg: Any) -> CameraInfoIntrinsics:
    """Read ``(fx, fy, cx, cy, width, height, distortion_nonzero)`` from ``msg.k``/``msg.d``.

    Uses the intrinsic matrix ``K`` (row-major 3x3), not the projection ``P``; binning
    and ROI are not applied (they are 0/empty for full-resolution cameras).

    Raises:
        ValueError: ``K`` does not have 9 entries, has non-finite values, or a focal
            length ``fx``/``fy`` that is not positive (an all-zero ``K`` means the
            camera is uncalibrated).
    """
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise ValueError(f"CameraInfo.k must have 9 entries, got {k.size}")
    if not np.all(np.isfinite(k)):
        raise ValueError(f"CameraInfo.k has non-finite entries: {k.tolist()}")
    fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
    if fx <= 0.0 or fy <= 0.0:
        raise ValueError(
            f"CameraInfo.k has focal lengths fx={fx}, fy={fy} (must be > 0 pixels; "
            "an all-zero K means an uncalibrated camera)"
        )
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    return CameraInfoIntrinsics(
        fx, fy, cx, cy, int(msg.width), int(msg.height), bool(np.any(d != 0.0))
    )


def fill_camera_info(
    msg: Any,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
    stamp_ns: int,
    frame_id: str,
    distortion: Any | None = None,
) -> Any:
    """Fill a ``CameraInfo`` (rclpy or rosbags) for a pinhole camera in place.

    Sets ``K = [[fx,0,cx],[0,fy,cy],[0,0,1]]``, ``R = I``, ``P = [K | 0]``,
    ``distortion_model = "plumb_bob"`` with ``D`` = ``distortion`` (5 coefficients,
    zeros by default), binning 0, empty ROI, the header stamp (int ns) and frame
    (the optical frame).

    Raises:
        ValueError: non-positive focal length or image size.
    """
    if not (fx > 0 and fy > 0):
        raise ValueError(f"focal lengths must be > 0 pixels, got fx={fx}, fy={fy}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    d = np.zeros(5) if distortion is None else np.asarray(distortion, dtype=np.float64).ravel()
    set_stamp(msg.header, stamp_ns, frame_id)
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], dtype=np.float64)
    msg.r = np.eye(3).reshape(-1)
    msg.p = np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=np.float64)
    msg.d = d.copy() if is_rosbags_message(msg) else array.array("d", d.tolist())
    msg.binning_x = 0
    msg.binning_y = 0
    return msg
