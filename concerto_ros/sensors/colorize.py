"""LiDAR points coloured by a camera: project into the nearest colour image, z-buffered.

A LiDAR gives geometry and intensity; a camera next to it gives colour. When both are
configured (``topics.points`` with ``topics.color`` and ``topics.camera_info``) and
``lift.colorize_points`` is on, every cloud takes, for the points the camera sees (in front of
it, inside the image, not occluded: :func:`~concerto_ros.models.projection.project_points`
with its z-buffer), the colour of the pixel they project to in the colour image nearest in
time (within ``lift.colorize_max_dt``). Points the camera does not see keep their intensity
grey. The camera pose relative to the LiDAR comes from TF at the cloud's stamp.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from typing import Any, Optional

import numpy as np

from concerto_ros.sensors.types import CameraIntrinsics

__all__ = ["CameraHistory", "colorize_points"]


def colorize_points(xyz: np.ndarray, base: np.ndarray, rgb: np.ndarray, intrinsics: CameraIntrinsics,
                    T_lidar_cam: np.ndarray, tolerance: float = 0.1) -> tuple[np.ndarray, int]:
    """Colours of LiDAR points from a camera image.

    Args:
        xyz: ``(N, 3) float32`` points in the LiDAR frame, metres.
        base: ``(N, 3) uint8`` colours of points the camera does not see (e.g. intensity grey).
        rgb: ``(H, W, 3) uint8`` colour image.
        intrinsics: its pinhole intrinsics (``width == W``, ``height == H``).
        T_lidar_cam: ``(4, 4)`` pose of the camera's optical frame in the LiDAR frame.
        tolerance: z-buffer depth tolerance, metres (LiDAR points are sparser than pixels).

    Returns:
        ``(colors (N, 3) uint8, number of points coloured by the camera)``.

    Raises:
        ValueError: shapes that do not match.
    """
    from concerto_ros.models.projection import project_points

    if rgb.shape[:2] != (intrinsics.height, intrinsics.width) or base.shape != (xyz.shape[0], 3):
        raise ValueError(f"colorize_points: image {rgb.shape[:2]} vs intrinsics {(intrinsics.height, intrinsics.width)}"
                         f", base colours {base.shape} vs {xyz.shape[0]} points")
    proj = project_points(xyz, intrinsics, T_world_cam=T_lidar_cam, zbuffer=True, tolerance=tolerance)
    colors = base.copy()
    seen = np.flatnonzero(proj.visible)
    colors[seen] = rgb.reshape(-1, 3)[proj.pixel[seen]]
    return colors, int(seen.shape[0])


class CameraHistory:
    """The last ``size`` colour images and camera infos, by stamp (thread-safe).

    Args:
        size: messages kept per stream.
    """

    def __init__(self, size: int = 10):
        self._msgs: dict[str, deque] = {"color": deque(maxlen=size), "camera_info": deque(maxlen=size)}
        self._lock = threading.Lock()

    def add(self, stream: str, stamp_ns: int, msg: Any) -> None:
        """Keep ``msg`` of ``stream`` (``color`` or ``camera_info``); other streams are ignored."""
        if stream in self._msgs:
            with self._lock:
                self._msgs[stream].append((int(stamp_ns), msg))

    def nearest(self, stream: str, stamp_ns: int, max_dt_ns: int) -> Optional[tuple[int, Any]]:
        """``(stamp, msg)`` of ``stream`` nearest to ``stamp_ns`` within ``max_dt_ns``, or None."""
        with self._lock:
            items = sorted(self._msgs[stream], key=lambda x: x[0])
        if not items:
            return None
        stamps = [s for s, _ in items]
        i = bisect.bisect_left(stamps, stamp_ns)
        best = min((j for j in (i - 1, i) if 0 <= j < len(items)), key=lambda j: abs(stamps[j] - stamp_ns))
        return items[best] if abs(stamps[best] - stamp_ns) <= max_dt_ns else None
