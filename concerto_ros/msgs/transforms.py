"""Rigid transforms and ROS time stamps, without ROS (no ``tf2``).

Conventions:

* A transform ``T_parent_child`` is a ``(4, 4) float64`` homogeneous matrix mapping
  points from the child frame into the parent frame: ``p_parent = T @ p_child``. This is
  exactly what a ``geometry_msgs/TransformStamped`` with ``header.frame_id = parent`` and
  ``child_frame_id = child`` carries (translation in metres, rotation the child's axes in
  the parent).
* Quaternions at this API are ROS order ``(x, y, z, w)``. ``transforms3d`` uses
  ``(w, x, y, z)``; the reordering happens only inside this module.
* Stamps are integer nanoseconds since the epoch (``builtin_interfaces/Time`` is
  ``sec`` + ``nanosec`` with ``0 <= nanosec < 1e9``).

The message helpers are duck-typed over rclpy messages and rosbags dataclasses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transforms3d.quaternions import mat2quat, quat2mat

__all__ = [
    "transform_to_matrix",
    "matrix_to_transform",
    "invert_transform",
    "stamp_to_ns",
    "ns_to_stamp_fields",
    "set_stamp",
    "transform_msg_to_matrix",
    "fill_transform",
    "fill_transform_stamped",
    "OPTICAL_FROM_LINK_QUAT_XYZW",
    "LINK_T_OPTICAL",
]

NS_PER_S = 1_000_000_000

#: Rotation of an optical frame (z forward, x right, y down) in its body frame
#: ``*_link`` (x forward, y left, z up), REP-103: columns are the optical axes.
LINK_T_OPTICAL = np.array(
    [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
#: The same rotation as the quaternion ``(x, y, z, w)`` of the ``camera_link ->
#: camera_*_optical_frame`` static transform published by camera drivers.
OPTICAL_FROM_LINK_QUAT_XYZW = (-0.5, 0.5, -0.5, 0.5)


def transform_to_matrix(translation: Any, quaternion_xyzw: Any) -> np.ndarray:
    """Build ``T_parent_child`` from a translation and a quaternion.

    Args:
        translation: ``(3,)`` metres, the child origin in the parent frame.
        quaternion_xyzw: ``(4,)`` rotation ``(x, y, z, w)``; normalised here (file
            formats often round the components).

    Returns:
        ``(4, 4) float64`` homogeneous matrix.

    Raises:
        ValueError: non-finite values, wrong sizes, or a (near) zero quaternion.
    """
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    q = np.asarray(quaternion_xyzw, dtype=np.float64).reshape(-1)
    if t.size != 3 or q.size != 4:
        raise ValueError(f"need translation (3,) and quaternion (4,), got {t.shape} and {q.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
        raise ValueError(f"non-finite transform: translation {t}, quaternion xyzw {q}")
    norm = float(np.linalg.norm(q))
    if norm < 1e-9:
        raise ValueError(f"zero quaternion xyzw {q}")
    q = q / norm
    matrix = np.eye(4)
    matrix[:3, :3] = quat2mat([q[3], q[0], q[1], q[2]])
    matrix[:3, 3] = t
    return matrix


def matrix_to_transform(matrix: Any, atol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Split a rigid ``(4, 4)`` matrix into ``(translation (3,), quaternion_xyzw (4,))``.

    The quaternion is unit length with ``w >= 0``.

    Raises:
        ValueError: wrong shape, non-finite values, or a rotation block that is not a
            proper rotation within ``atol`` (``R^T R = I``, ``det R = 1``).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"need a (4, 4) matrix, got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("non-finite transform matrix")
    r = m[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=atol) or abs(np.linalg.det(r) - 1.0) > atol:
        raise ValueError(f"rotation block is not a proper rotation:\n{r}")
    w, x, y, z = mat2quat(r)
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return m[:3, 3].copy(), q


def invert_transform(matrix: Any) -> np.ndarray:
    """Inverse of a rigid ``(4, 4)`` transform (``R^T``, ``-R^T t``), exact for rigid input."""
    m = np.asarray(matrix, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


# --------------------------------------------------------------------------- stamps
def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (anything with ``sec`` and ``nanosec``) -> int nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp_fields(ns: int) -> tuple[int, int]:
    """Int nanoseconds -> ``(sec, nanosec)`` with ``0 <= nanosec < 1e9`` (floor division)."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return int(sec), int(nanosec)


def set_stamp(header: Any, stamp_ns: int, frame_id: str | None = None) -> Any:
    """Set ``header.stamp`` (and ``header.frame_id`` when given) in place; returns header."""
    header.stamp.sec, header.stamp.nanosec = ns_to_stamp_fields(stamp_ns)
    if frame_id is not None:
        header.frame_id = str(frame_id)
    return header


# --------------------------------------------------------------------------- messages
def transform_msg_to_matrix(transform: Any) -> np.ndarray:
    """``geometry_msgs/Transform`` (``translation.x..``, ``rotation.x..w``) -> ``(4, 4)``.

    Accepts a ``TransformStamped`` too (uses its ``.transform``).

    Raises:
        ValueError: non-finite values or a zero quaternion.
    """
    tf = getattr(transform, "transform", transform)
    t, r = tf.translation, tf.rotation
    return transform_to_matrix((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))


def fill_transform(transform: Any, matrix: Any) -> Any:
    """Write a rigid ``(4, 4)`` matrix into a ``geometry_msgs/Transform`` in place."""
    t, q = matrix_to_transform(matrix)
    transform.translation.x, transform.translation.y, transform.translation.z = map(float, t)
    (
        transform.rotation.x,
        transform.rotation.y,
        transform.rotation.z,
        transform.rotation.w,
    ) = map(float, q)
    return transform


def fill_transform_stamped(
    msg: Any, matrix: Any, parent_frame: str, child_frame: str, stamp_ns: int
) -> Any:
    """Fill a ``geometry_msgs/TransformStamped`` with ``T_parent_child`` in place.

    Args:
        msg: rclpy or rosbags ``TransformStamped``.
        matrix: ``(4, 4)`` rigid transform mapping child-frame points into the parent.
        parent_frame: ``header.frame_id``.
        child_frame: ``child_frame_id``.
        stamp_ns: int nanoseconds.

    Raises:
        ValueError: the matrix is not rigid (see :func:`matrix_to_transform`).
    """
    set_stamp(msg.header, stamp_ns, parent_frame)
    msg.child_frame_id = str(child_frame)
    fill_transform(msg.transform, matrix)
    return msg
