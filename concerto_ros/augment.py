"""Rotation about the up axis (yaw), shared by evaluation (``concerto eval --yaw``) and the
training commands' yaw augmentation.

Frame conventions:

* Angles are in degrees; a positive angle turns counter-clockwise seen from above (looking
  down the up axis), i.e. right-handed about the up vector (REP-103).
* ``up`` names the gravity-up axis of the frame the points live in: ``"z"`` for fixed frames
  (``odom``, ``map``, ScanNet, SemanticKITTI scans; REP-103/105 are z-up), ``"-y"`` for data
  left in a camera optical frame (z forward, x right, y down: mOSD clouds with identity
  poses). A signed axis name (``x y z -x -y -z``, optionally ``+``) or any 3-vector.
* The rotation is about the axis through ``center`` (default the frame's origin), so the up
  coordinate ``dot(p, up)`` of every point is unchanged and distances are preserved.

Example (training augmentation)::

    rng = np.random.default_rng(seed)
    points, T = random_yaw(points, rng, up="z", center="mean")   # uniform yaw in [-180, 180)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from transforms3d.axangles import axangle2mat

__all__ = ["AXIS_NAMES", "up_vector", "yaw_matrix", "yaw_transform", "random_yaw", "rotate_frame"]

#: axis names accepted for ``up`` (each optionally signed)
AXIS_NAMES = ("x", "y", "z")


def up_vector(up: str | Sequence[float] = "z") -> np.ndarray:
    """The unit up vector ``(3,) float64`` of an axis name (``"z"``, ``"-y"``, ``"+x"``) or a
    3-vector (normalised).

    Raises:
        ValueError: an unknown name, or a vector that is not 3 finite values of non-zero length.
    """
    if isinstance(up, str):
        name = up.strip().lower()
        sign = -1.0 if name.startswith("-") else 1.0
        axis = name.lstrip("+-")
        if axis not in AXIS_NAMES or len(name) - len(axis) > 1:
            raise ValueError(f"up axis {up!r} is unknown: use x, y or z, optionally signed (-y for a camera "
                             "optical frame), or a 3-vector")
        v = np.zeros(3)
        v[AXIS_NAMES.index(axis)] = sign
        return v
    v = np.asarray(up, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(v)) if v.shape == (3,) and np.isfinite(v).all() else 0.0
    if n == 0.0:
        raise ValueError(f"up vector must be 3 finite values of non-zero length, got {up!r}")
    return v / n


def yaw_matrix(angle_deg: float, up: str | Sequence[float] = "z") -> np.ndarray:
    """``(3, 3) float64`` rotation by ``angle_deg`` degrees about ``up`` (right-handed).

    Raises:
        ValueError: a non-finite angle or a bad ``up`` (see :func:`up_vector`).
    """
    if not math.isfinite(float(angle_deg)):
        raise ValueError(f"yaw angle must be finite degrees, got {angle_deg}")
    return axangle2mat(up_vector(up), math.radians(float(angle_deg)))


def yaw_transform(angle_deg: float, up: str | Sequence[float] = "z",
                  center: Sequence[float] | None = None) -> np.ndarray:
    """``(4, 4) float64`` homogeneous rotation by ``angle_deg`` about the ``up`` axis through
    ``center`` (metres, default the origin): ``p' = R (p - c) + c``.

    Raises:
        ValueError: see :func:`yaw_matrix`; ``center`` not 3 finite values.
    """
    T = np.eye(4)
    T[:3, :3] = yaw_matrix(angle_deg, up)
    if center is not None:
        c = np.asarray(center, dtype=np.float64).reshape(-1)
        if c.shape != (3,) or not np.isfinite(c).all():
            raise ValueError(f"center must be 3 finite values (metres), got {center!r}")
        T[:3, 3] = c - T[:3, :3] @ c
    return T


def random_yaw(points: np.ndarray, rng: np.random.Generator, up: str | Sequence[float] = "z",
               max_deg: float = 180.0, center: str | Sequence[float] | None = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Yaw augmentation: rotate ``points`` by an angle drawn uniformly in
    ``[-max_deg, max_deg)`` degrees about the ``up`` axis.

    Args:
        points: ``(N, 3)`` float points, metres.
        rng: the random generator (the only randomness used).
        up: the up axis (module docstring).
        max_deg: largest rotation, degrees (``180``: every yaw equally likely).
        center: ``"mean"`` (the points' centroid), a point, or ``None`` (the origin).

    Returns:
        ``(rotated (N, 3) in the dtype of points, T (4, 4) float64)`` with
        ``rotated = points @ T[:3, :3].T + T[:3, 3]``.

    Raises:
        ValueError: ``points`` not ``(N, 3)``, ``max_deg`` negative, see :func:`yaw_transform`.
    """
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {p.shape}")
    if not max_deg >= 0:
        raise ValueError(f"max_deg must be >= 0 degrees, got {max_deg}")
    c: Any = center
    if isinstance(center, str):
        if center != "mean":
            raise ValueError(f"center must be 'mean', a point or None, got {center!r}")
        c = p.astype(np.float64).mean(axis=0) if len(p) else None
    T = yaw_transform(float(rng.uniform(-max_deg, max_deg)), up, c)
    out = p.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    return out.astype(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64), T


def rotate_frame(frame, T: np.ndarray):
    """A recording frame seen in a world rotated by ``T`` (a :func:`yaw_transform`):
    ``T_world_sensor' = T @ T_world_sensor``; the sensor data are untouched, so the lifted
    points come out rotated.

    Args:
        frame: a :class:`~concerto_ros.recordings.SensorFrame`.
        T: ``(4, 4)`` rigid transform of the world.

    Returns:
        A new :class:`~concerto_ros.recordings.SensorFrame` (arrays shared with ``frame``).
    """
    import dataclasses

    return dataclasses.replace(frame, T_world_sensor=np.asarray(T, dtype=np.float64) @ frame.T_world_sensor)
