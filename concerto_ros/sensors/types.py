"""Sensor data types shared by the ROS node, the bag tools and training (no ROS imports).

Conventions (docs/architecture.md): SI units, stamps as integer nanoseconds, camera data in
the REP-103 optical frame (z forward, x right, y down), points ``(N, 3) float32``, colours
``(N, 3) uint8`` RGB, labels ``int32``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["CameraIntrinsics", "RGBDFrame", "PointFrame", "DEPTH_DTYPES"]

#: Depth encodings accepted by :class:`RGBDFrame`: ``uint16`` (16UC1, usually millimetres)
#: and ``float32`` (32FC1, usually metres).
DEPTH_DTYPES = (np.dtype(np.uint16), np.dtype(np.float32))


def _check_stamp(owner: str, stamp_ns) -> int:
    if isinstance(stamp_ns, (bool, np.bool_)) or not isinstance(stamp_ns, numbers.Integral):
        raise ValueError(
            f"{owner}: stamp_ns must be an integer number of nanoseconds, got {type(stamp_ns).__name__} {stamp_ns!r}"
        )
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"{owner}: stamp_ns must be >= 0, got {stamp_ns}")
    return stamp_ns


def _check_array(owner: str, name: str, arr, shape: tuple, dtypes) -> np.ndarray:
    """Check ``arr`` is an ndarray with ``shape`` (None = any size) and one of ``dtypes``."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{owner}: {name} must be a numpy array, got {type(arr).__name__}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{owner}: {name} has shape {arr.shape}, expected {want}")
    dtypes = tuple(np.dtype(d) for d in dtypes)
    if arr.dtype not in dtypes:
        raise ValueError(
            f"{owner}: {name} has dtype {arr.dtype}, expected {' or '.join(str(d) for d in dtypes)}"
        )
    return arr


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics (no distortion) of an image of ``width`` x ``height`` pixels.

    ``fx, fy`` focal lengths and ``cx, cy`` principal point, all in pixels; pixel ``(u, v)``
    (column, row) at depth ``z`` metres is the optical-frame point
    ``((u - cx) * z / fx, (v - cy) * z / fy, z)``. Frozen and hashable (used as a cache key).

    Raises:
        ValueError: non-finite values, ``fx``/``fy`` <= 0, ``width``/``height`` < 1.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise ValueError(f"CameraIntrinsics: {name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"CameraIntrinsics: {name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if self.fx <= 0.0 or self.fy <= 0.0:
            raise ValueError(f"CameraIntrinsics: focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or int(value) < 1:
                raise ValueError(f"CameraIntrinsics: {name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))

    @property
    def K(self) -> np.ndarray:
        """``(3, 3) float64`` camera matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (a new array)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape ``(height, width)`` as numpy orders it."""
        return (self.height, self.width)

    @classmethod
    def from_K(cls, K, width: int, height: int) -> "CameraIntrinsics":
        """Build from a camera matrix: ``(3, 3)`` or the 9 row-major values of ``CameraInfo.k``.

        Raises:
            ValueError: wrong size, non-zero skew ``K[0, 1]``, last row not ``[0, 0, 1]``,
                or any check of the constructor.
        """
        K = np.asarray(K, dtype=np.float64)
        if K.size != 9:
            raise ValueError(f"CameraIntrinsics.from_K: K must have 9 values (3x3), got shape {K.shape}")
        K = K.reshape(3, 3)
        if K[0, 1] != 0.0:
            raise ValueError(f"CameraIntrinsics.from_K: skewed cameras are not supported (K[0,1]={K[0, 1]})")
        if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0:
            raise ValueError(f"CameraIntrinsics.from_K: K is not a pinhole camera matrix: {K.tolist()}")
        return cls(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2], width=width, height=height)


@dataclass
class RGBDFrame:
    """One registered RGB-D image pair in the camera optical frame ``frame_id``.

    Attributes:
        stamp_ns: acquisition time, integer nanoseconds.
        frame_id: optical frame of the camera (REP-103: z forward, x right, y down).
        color: ``(H, W, 3) uint8`` RGB registered to the depth image, or None.
        depth: ``(H, W)`` ``uint16`` (16UC1, 0 = invalid) or ``float32`` (32FC1, NaN/inf/<=0
            = invalid).
        depth_scale: depth units per metre: 1000 for 16UC1 millimetres, 1.0 for 32FC1
            metres (5000 for TUM PNGs).
        intrinsics: :class:`CameraIntrinsics` of the depth image (``H == height``,
            ``W == width``).
        labels: ``(H, W) int32`` per-pixel labels, or None.

    Arrays are not copied. Raises ValueError naming the mismatching field, its shape or
    dtype and the expected one.
    """

    stamp_ns: int
    frame_id: str
    color: Optional[np.ndarray]
    depth: np.ndarray
    depth_scale: float
    intrinsics: CameraIntrinsics
    labels: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        owner = "RGBDFrame"
        self.stamp_ns = _check_stamp(owner, self.stamp_ns)
        if not isinstance(self.frame_id, str):
            raise ValueError(f"{owner}: frame_id must be a str, got {type(self.frame_id).__name__}")
        if not isinstance(self.intrinsics, CameraIntrinsics):
            raise ValueError(f"{owner}: intrinsics must be a CameraIntrinsics, got {type(self.intrinsics).__name__}")
        h, w = self.intrinsics.height, self.intrinsics.width
        if not isinstance(self.depth, np.ndarray) or self.depth.ndim != 2:
            shape = getattr(self.depth, "shape", None)
            raise ValueError(f"{owner}: depth must be a 2-D (H, W) array, got shape {shape}")
        if self.depth.shape != (h, w):
            raise ValueError(
                f"{owner}: depth shape {self.depth.shape} does not match the intrinsics (height, width) = {(h, w)}"
            )
        _check_array(owner, "depth", self.depth, (h, w), DEPTH_DTYPES)
        scale = self.depth_scale
        if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real) or not (
            math.isfinite(float(scale)) and float(scale) > 0.0
        ):
            raise ValueError(f"{owner}: depth_scale (depth units per metre) must be positive and finite, got {scale!r}")
        self.depth_scale = float(scale)
        if self.color is not None:
            _check_array(owner, "color", self.color, (h, w, 3), (np.uint8,))
        if self.labels is not None:
            _check_array(owner, "labels", self.labels, (h, w), (np.int32,))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the depth image."""
        return (self.intrinsics.height, self.intrinsics.width)


@dataclass
class PointFrame:
    """Points of one sensor frame, usually already in the fixed frame.

    Attributes:
        stamp_ns: acquisition time, integer nanoseconds.
        points: ``(N, 3) float32`` metres in ``frame_id``.
        colors: ``(N, 3) uint8`` RGB.
        pixel_index: ``(N,) int32`` flat index of each point in its source (row-major
            ``v * width + u`` of the image, or the index in the source point array for
            LiDAR), to map results back; None if unknown.
        labels: ``(N,) int32`` or None.
        frame_id: frame of ``points`` (the fixed frame, e.g. ``odom``/``map``, once posed).
        sensor_frame_id: frame of the sensor that produced the points.
        T_fixed_sensor: ``(4, 4) float64`` pose used to bring the points from the sensor
            frame into ``frame_id`` (identity/None when they are still in the sensor frame).
        image_shape: ``(H, W)`` of the source image when ``pixel_index`` refers to one.

    Raises ValueError naming the mismatching field.
    """

    stamp_ns: int
    points: np.ndarray
    colors: np.ndarray
    pixel_index: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    frame_id: str = "world"
    sensor_frame_id: str = ""
    T_fixed_sensor: Optional[np.ndarray] = None
    image_shape: Optional[tuple[int, int]] = None

    def __post_init__(self) -> None:
        owner = "PointFrame"
        self.stamp_ns = _check_stamp(owner, self.stamp_ns)
        if not isinstance(self.points, np.ndarray) or self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"{owner}: points must be (N, 3), got shape {getattr(self.points, 'shape', None)}")
        _check_array(owner, "points", self.points, (None, 3), (np.float32,))
        n = self.points.shape[0]
        _check_array(owner, "colors", self.colors, (n, 3), (np.uint8,))
        if self.pixel_index is not None:
            _check_array(owner, "pixel_index", self.pixel_index, (n,), (np.int32,))
        if self.labels is not None:
            _check_array(owner, "labels", self.labels, (n,), (np.int32,))
        if not isinstance(self.frame_id, str) or not isinstance(self.sensor_frame_id, str):
            raise ValueError(f"{owner}: frame_id and sensor_frame_id must be str")
        if self.T_fixed_sensor is not None:
            _check_array(owner, "T_fixed_sensor", self.T_fixed_sensor, (4, 4), (np.float64,))
        if self.image_shape is not None:
            self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))

    @property
    def num_points(self) -> int:
        """N."""
        return int(self.points.shape[0])

    def __len__(self) -> int:
        return self.num_points
