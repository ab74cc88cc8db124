"""Depth images and LiDAR scans -> coloured points in the fixed frame (no ROS imports).

The depth-unit conversion is written once for both encodings (16UC1 ``uint16`` with
``depth_scale`` units per metre, usually millimetres; 32FC1 ``float32``, usually metres), as
``depth_image_proc`` does. Per-pixel ray slopes ``((u - cx) / fx, (v - cy) / fy)`` are
computed once per (intrinsics, stride) and cached, so lifting a frame is a handful of
vectorised gathers and multiply-adds over the valid pixels.

Frames: depth points are produced in the camera optical frame (REP-103: z forward, x
right, y down) and mapped into the fixed frame with ``T_world_sensor`` (``p_world =
R @ p_sensor + t``), which is what :meth:`TransformBuffer.lookup(fixed, sensor, stamp)`
returns.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .types import CameraIntrinsics, PointFrame, RGBDFrame

__all__ = ["RayGrid", "ray_grid", "clear_ray_cache", "lift_depth", "lift_pointcloud", "check_pose", "GREY",
           "intensity_to_grey"]

#: Colour given to points without colour or intensity information.
GREY = 128

_RAY_CACHE_SIZE = 16


@dataclass(frozen=True)
class RayGrid:
    """Cached per-pixel ray slopes of a (strided) image, row-major, read-only arrays.

    Attributes:
        rx: ``(Hs * Ws,) float32`` ``(u - cx) / fx`` of every sampled pixel.
        ry: ``(Hs * Ws,) float32`` ``(v - cy) / fy``.
        pixel: ``(Hs * Ws,) int64`` flat full-resolution index ``v * W + u`` of every
            sampled pixel, or None when ``stride == 1`` (then it is the identity).
        shape: ``(Hs, Ws)`` sampled image shape (``ceil(H / stride), ceil(W / stride)``).
        stride: pixel step in both directions.
    """

    rx: np.ndarray
    ry: np.ndarray
    pixel: Optional[np.ndarray]
    shape: tuple[int, int]
    stride: int


_ray_cache: "OrderedDict[tuple[CameraIntrinsics, int], RayGrid]" = OrderedDict()
_ray_lock = threading.Lock()


def ray_grid(intrinsics: CameraIntrinsics, stride: int = 1) -> RayGrid:
    """Return the (cached, LRU of 16) ray slopes of ``intrinsics`` sampled every ``stride`` px.

    Raises:
        ValueError: ``stride`` < 1.
    """
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"ray_grid: stride must be >= 1, got {stride}")
    key = (intrinsics, stride)
    with _ray_lock:
        grid = _ray_cache.get(key)
        if grid is not None:
            _ray_cache.move_to_end(key)
            return grid
    us = np.arange(0, intrinsics.width, stride, dtype=np.float64)
    vs = np.arange(0, intrinsics.height, stride, dtype=np.float64)
    rx_row = ((us - intrinsics.cx) / intrinsics.fx).astype(np.float32)
    ry_col = ((vs - intrinsics.cy) / intrinsics.fy).astype(np.float32)
    hs, ws = vs.size, us.size
    rx = np.ascontiguousarray(np.broadcast_to(rx_row[None, :], (hs, ws))).reshape(-1)
    ry = np.ascontiguousarray(np.broadcast_to(ry_col[:, None], (hs, ws))).reshape(-1)
    pixel = None
    if stride > 1:
        pixel = (vs.astype(np.int64)[:, None] * intrinsics.width + us.astype(np.int64)[None, :]).reshape(-1)
        pixel.setflags(write=False)
    rx.setflags(write=False)
    ry.setflags(write=False)
    grid = RayGrid(rx=rx, ry=ry, pixel=pixel, shape=(hs, ws), stride=stride)
    with _ray_lock:
        _ray_cache[key] = grid
        _ray_cache.move_to_end(key)
        while len(_ray_cache) > _RAY_CACHE_SIZE:
            _ray_cache.popitem(last=False)
    return grid


def clear_ray_cache() -> None:
    """Forget all cached ray grids."""
    with _ray_lock:
        _ray_cache.clear()


class _Workspace(threading.local):
    """Per-thread grow-only scratch buffers (avoids page faults of fresh multi-MB temporaries)."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.size < n:
            buf = np.empty(max(n, 1024), dtype=dtype)
            self.buffers[name] = buf
        return buf[:n]


_WS = _Workspace()


def check_pose(T, name: str = "T_world_sensor") -> np.ndarray:
    """Validate a rigid transform and return it as ``(4, 4) float64``.

    Raises:
        ValueError: not 4x4, non-finite (e.g. a NaN pose), last row not ``[0, 0, 0, 1]``, or
            rotation block not orthonormal with determinant +1 (tolerance 1e-4).
    """
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"{name} must be a (4, 4) matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"{name} last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0.0:
        raise ValueError(f"{name} rotation block is not a proper rotation matrix")
    return T


def _transform_columns(x, y, z, T: Optional[np.ndarray], out: np.ndarray, ws: _Workspace) -> None:
    """Write ``R @ [x, y, z] + t`` (or the untransformed columns) into ``out (N, 3)``."""
    if T is None:
        out[:, 0] = x
        out[:, 1] = y
        out[:, 2] = z
        return
    n = x.shape[0]
    R = T[:3, :3].astype(np.float32)
    t = T[:3, 3].astype(np.float32)
    acc = ws.get("acc", n, np.float32)
    tmp = ws.get("tmp", n, np.float32)
    for i in range(3):
        np.multiply(x, R[i, 0], out=acc)
        np.multiply(y, R[i, 1], out=tmp)
        acc += tmp
        np.multiply(z, R[i, 2], out=tmp)
        acc += tmp
        acc += t[i]
        out[:, i] = acc


def lift_depth(
    frame: RGBDFrame,
    T_world_sensor: Optional[np.ndarray] = None,
    min_depth: float = 0.1,
    max_depth: float = 10.0,
    stride: int = 1,
    *,
    fixed_frame: str = "world",
) -> PointFrame:
    """Back-project the valid depth pixels of ``frame`` and express them in the fixed frame.

    A pixel ``(u, v)`` with depth ``z = depth[v, u] / depth_scale`` metres becomes the
    optical-frame point ``((u - cx) * z / fx, (v - cy) * z / fy, z)``, then
    ``R @ p + t`` with ``T_world_sensor = [[R, t], [0, 1]]``.

    Invalid pixels are dropped: 0 for ``uint16``; NaN, +-inf or <= 0 for ``float32``; and
    any depth outside ``[min_depth, max_depth]`` metres. Colours and labels are gathered
    at the same pixels; the flat full-resolution pixel index ``v * W + u`` is kept in
    ``pixel_index`` so results can be mapped back to the image.

    Args:
        frame: the RGB-D frame (depth in the optical frame ``frame.frame_id``).
        T_world_sensor: ``(4, 4)`` pose of the sensor optical frame in the fixed frame
            (maps sensor points to fixed-frame points), or None to keep the points in the
            optical frame (then ``frame_id`` of the result is ``frame.frame_id``).
        min_depth, max_depth: valid depth range in metres (``0 <= min_depth <= max_depth``).
        stride: use every ``stride``-th pixel in u and v (1 = all pixels).
        fixed_frame: name written to ``PointFrame.frame_id`` when a pose is given.

    Returns:
        :class:`PointFrame` with ``points (N, 3) float32`` metres, ``colors (N, 3) uint8``
        (grey 128 without a colour image), ``pixel_index (N,) int32``, ``labels (N,) int32``
        or None, ``image_shape (H, W)``.

    Raises:
        ValueError: bad depth range, stride < 1, invalid pose (see :func:`check_pose`).
    """
    if not isinstance(frame, RGBDFrame):
        raise ValueError(f"lift_depth: frame must be an RGBDFrame, got {type(frame).__name__}")
    min_depth = float(min_depth)
    max_depth = float(max_depth)
    if not (min_depth >= 0.0 and max_depth >= min_depth) or math.isnan(max_depth):
        raise ValueError(f"lift_depth: need 0 <= min_depth <= max_depth, got [{min_depth}, {max_depth}]")
    T = None if T_world_sensor is None else check_pose(T_world_sensor)
    intr = frame.intrinsics
    grid = ray_grid(intr, stride)
    ws = _WS

    depth = frame.depth if grid.stride == 1 else frame.depth[:: grid.stride, :: grid.stride]
    d = depth.reshape(-1)
    npix = d.shape[0]
    scale = frame.depth_scale
    mask = ws.get("mask", npix, bool)

    if d.dtype == np.uint16:
        lo = max(1, math.ceil(min_depth * scale - 1e-9))
        hi = min(65535, math.floor(max_depth * scale + 1e-9)) if math.isfinite(max_depth * scale) else 65535
        if lo > hi:
            mask[:] = False
        else:  # one unsigned comparison: (d - lo) wraps around for d < lo
            shifted = ws.get("u16", npix, np.uint16)
            np.subtract(d, np.uint16(lo), out=shifted)
            np.less_equal(shifted, np.uint16(hi - lo), out=mask)
    else:
        lo_f = np.float32(min_depth * scale)
        hi_f = np.float32(max_depth * scale)
        tmpb = ws.get("mask2", npix, bool)
        np.greater_equal(d, lo_f, out=mask)  # False for NaN
        np.less_equal(d, hi_f, out=tmpb)
        mask &= tmpb
        if not lo_f > 0.0:
            np.greater(d, np.float32(0.0), out=tmpb)
            mask &= tmpb
        if not np.isfinite(hi_f):
            np.isfinite(d, out=tmpb)
            mask &= tmpb

    idx = np.flatnonzero(mask)  # (N,) int64 into the (strided) image
    n = int(idx.shape[0])

    z = ws.get("z", n, np.float32)
    if d.dtype == np.uint16:
        raw = ws.get("zraw", n, np.uint16)
        np.take(d, idx, out=raw)
        np.divide(raw, np.float32(scale), out=z, dtype=np.float32)
    else:
        np.take(d, idx, out=z)
        if scale != 1.0:
            np.divide(z, np.float32(scale), out=z)
    x = ws.get("x", n, np.float32)
    y = ws.get("y", n, np.float32)
    np.take(grid.rx, idx, out=x)
    x *= z
    np.take(grid.ry, idx, out=y)
    y *= z

    points = np.empty((n, 3), dtype=np.float32)
    _transform_columns(x, y, z, T, points, ws)

    full = idx if grid.pixel is None else grid.pixel[idx]  # full-resolution flat index
    if frame.color is not None:
        colors = np.take(frame.color.reshape(-1, 3), full, axis=0)
    else:
        colors = np.full((n, 3), GREY, dtype=np.uint8)
    labels = None if frame.labels is None else np.take(frame.labels.reshape(-1), full)

    return PointFrame(
        stamp_ns=frame.stamp_ns,
        points=points,
        colors=colors,
        pixel_index=full.astype(np.int32),
        labels=labels,
        frame_id=frame.frame_id if T is None else fixed_frame,
        sensor_frame_id=frame.frame_id,
        T_fixed_sensor=T,
        image_shape=(intr.height, intr.width),
    )


def intensity_to_grey(intensity: np.ndarray, intensity_range=None) -> np.ndarray:
    """Map intensities to ``(N,) uint8`` grey levels: linear from ``intensity_range = (lo, hi)``
    to 0..255; by default ``lo = min(0, min)`` and ``hi`` = the 99th percentile (non-finite
    values give 0)."""
    vals = intensity.astype(np.float32, copy=False)
    finite = np.isfinite(vals)
    if intensity_range is None:
        good = vals[finite]
        if good.size == 0:
            return np.full(vals.shape, GREY, dtype=np.uint8)
        lo = min(0.0, float(good.min()))
        hi = float(np.percentile(good, 99.0))
        if hi <= lo:
            hi = float(good.max())
    else:
        lo, hi = float(intensity_range[0]), float(intensity_range[1])
    if not hi > lo:
        return np.full(vals.shape, GREY, dtype=np.uint8)
    grey = (np.clip((vals - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0) * 255.0 + 0.5)
    grey[~finite] = 0.0
    return grey.astype(np.uint8)


def lift_pointcloud(
    points_xyz: np.ndarray,
    colors: Optional[np.ndarray] = None,
    intensity: Optional[np.ndarray] = None,
    T_world_sensor: Optional[np.ndarray] = None,
    *,
    stamp_ns: int = 0,
    sensor_frame_id: str = "",
    fixed_frame: str = "world",
    labels: Optional[np.ndarray] = None,
    min_range: float = 0.0,
    max_range: float = math.inf,
    intensity_range: Optional[tuple[float, float]] = None,
) -> PointFrame:
    """Turn a LiDAR (or any) point cloud in the sensor frame into a :class:`PointFrame`.

    Points with a non-finite coordinate or a range ``|p|`` outside ``[min_range, max_range]``
    metres are dropped; the rest are transformed with ``T_world_sensor`` (computed in
    float64, stored as float32).

    Args:
        points_xyz: ``(N, 3)`` or organised ``(H, W, 3)`` float, metres, sensor frame.
        colors: ``(N, 3)`` / ``(H, W, 3)`` uint8 RGB, or None.
        intensity: ``(N,)`` / ``(H, W)`` intensities (any unit), used as grey when
            ``colors`` is None: linear from ``intensity_range = (lo, hi)`` to 0..255; by
            default ``lo = min(0, min)`` and ``hi`` = 99th percentile of the cloud.
            Without colours and intensity the points are grey 128.
        T_world_sensor: ``(4, 4)`` sensor pose in the fixed frame, or None (keep sensor frame).
        stamp_ns: integer nanoseconds.
        sensor_frame_id: frame of ``points_xyz``.
        fixed_frame: ``frame_id`` of the result when a pose is given.
        labels: ``(N,)`` / ``(H, W)`` integer labels, or None.
        min_range, max_range: kept range in metres.

    Returns:
        :class:`PointFrame` whose ``pixel_index (N,) int32`` is the index of each kept point
        in the flattened input (row-major for organised clouds, ``image_shape`` set then).

    Raises:
        ValueError: shape mismatches between the arrays, bad pose, bad range.
    """
    pts = np.asarray(points_xyz)
    if pts.ndim < 2 or pts.shape[-1] != 3:
        raise ValueError(f"lift_pointcloud: points_xyz must be (N, 3) or (H, W, 3), got {pts.shape}")
    image_shape = tuple(pts.shape[:2]) if pts.ndim == 3 else None
    lead = pts.shape[:-1]
    pts = pts.reshape(-1, 3)
    n_in = pts.shape[0]
    min_range = float(min_range)
    max_range = float(max_range)
    if not (min_range >= 0.0 and max_range >= min_range):
        raise ValueError(f"lift_pointcloud: need 0 <= min_range <= max_range, got [{min_range}, {max_range}]")
    T = None if T_world_sensor is None else check_pose(T_world_sensor)

    def _flat(arr, name, tail):
        if arr is None:
            return None
        arr = np.asarray(arr)
        if arr.shape != tuple(lead) + tail:
            raise ValueError(
                f"lift_pointcloud: {name} has shape {arr.shape}, expected {tuple(lead) + tail} to match points_xyz"
            )
        return arr.reshape((n_in,) + tail)

    colors = _flat(colors, "colors", (3,))
    if colors is not None and colors.dtype != np.uint8:
        raise ValueError(f"lift_pointcloud: colors must be uint8 RGB, got {colors.dtype}")
    intensity = _flat(intensity, "intensity", ())
    labels = _flat(labels, "labels", ())

    valid = np.isfinite(pts).all(axis=1)
    if min_range > 0.0 or math.isfinite(max_range):
        with np.errstate(invalid="ignore", over="ignore"):
            r2 = np.einsum("ij,ij->i", pts.astype(np.float64), pts.astype(np.float64))
        valid &= (r2 >= min_range * min_range) & (r2 <= max_range * max_range)
    idx = np.flatnonzero(valid)
    sel = pts[idx].astype(np.float64)
    if T is not None:
        sel = sel @ T[:3, :3].T + T[:3, 3]
    points = np.ascontiguousarray(sel, dtype=np.float32)

    if colors is not None:
        out_colors = np.ascontiguousarray(colors[idx])
    elif intensity is not None:
        grey = intensity_to_grey(intensity[idx], intensity_range)
        out_colors = np.repeat(grey[:, None], 3, axis=1)
    else:
        out_colors = np.full((idx.shape[0], 3), GREY, dtype=np.uint8)
    out_labels = None if labels is None else labels[idx].astype(np.int32)

    return PointFrame(
        stamp_ns=stamp_ns,
        points=points,
        colors=out_colors,
        pixel_index=idx.astype(np.int32),
        labels=out_labels,
        frame_id=sensor_frame_id if T is None else fixed_frame,
        sensor_frame_id=sensor_frame_id,
        T_fixed_sensor=T,
        image_shape=image_shape,
    )
