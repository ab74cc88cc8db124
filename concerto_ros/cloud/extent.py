"""Keeping the window small enough to serialize: ``window.max_extent``.

The encoder's serialization codes hold 16 bits per axis, so a window may span at most
65535 voxels (1310 m at 0.02 m) along any axis. A pose jump, a long drive or a very wide
frame would exceed that and fail inside the encoder; instead the window is cropped to the
newest frame's neighbourhood *before* it is built:

- a single frame wider than ``max_extent`` keeps the points within ``max_extent / 2``
  (per axis) of its sensor origin;
- when the newest frame and the window's frames together would span more than
  ``max_extent``, the oldest frames are dropped until they fit.

Axis-aligned bounding boxes are computed once per frame (one min/max pass) and cached
for the frames in the window.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from concerto_ros.sensors.types import PointFrame
from concerto_ros.cloud.voxel import column_max, column_min

__all__ = ["WindowExtent"]


class WindowExtent:
    """Bounding boxes of the window's frames and the crop rules above.

    Args:
        max_extent: largest extent of the window along any axis, metres (> 0).

    Raises:
        ValueError: ``max_extent`` not a positive finite number.
    """

    def __init__(self, max_extent: float):
        max_extent = float(max_extent)
        if not (np.isfinite(max_extent) and max_extent > 0.0):
            raise ValueError(f"WindowExtent: max_extent must be positive metres, got {max_extent}")
        self.max_extent = max_extent
        # id(frame) -> (frame, lo, hi); holding the frame keeps its id from being reused
        self._boxes: dict[int, tuple[PointFrame, np.ndarray, np.ndarray]] = {}

    def box(self, frame: PointFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)``: ``(3,) float64`` corners of the frame's points (metres; cached)."""
        key = id(frame)
        if key not in self._boxes:
            pts = frame.points
            if len(pts) == 0:
                origin = self._origin(frame)
                self._boxes[key] = (frame, origin, origin)
            else:
                self._boxes[key] = (frame, column_min(pts).astype(np.float64), column_max(pts).astype(np.float64))
        return self._boxes[key][1:]

    @staticmethod
    def _origin(frame: PointFrame) -> np.ndarray:
        if frame.T_fixed_sensor is not None:
            return np.asarray(frame.T_fixed_sensor[:3, 3], dtype=np.float64)
        if len(frame.points):
            return frame.points.mean(axis=0).astype(np.float64)
        return np.zeros(3)

    def crop_frame(self, frame: PointFrame) -> PointFrame:
        """``frame`` itself when it spans at most ``max_extent``; else a copy keeping the points
        within ``max_extent / 2`` per axis of its sensor origin (the sensor pose's translation,
        or the points' mean without a pose)."""
        lo, hi = self.box(frame)
        if float((hi - lo).max()) <= self.max_extent:
            return frame
        origin = self._origin(frame)
        half = 0.5 * self.max_extent
        keep = np.flatnonzero((np.abs(frame.points.astype(np.float64) - origin) <= half).all(axis=1))

        def sub(a):
            return None if a is None else a[keep]

        return replace(frame, points=frame.points[keep], colors=frame.colors[keep],
                       pixel_index=sub(frame.pixel_index), labels=sub(frame.labels))

    def frames_to_keep(self, window_frames: Sequence[PointFrame], new: PointFrame) -> int:
        """How many of the newest ``window_frames`` (oldest first) can stay when ``new`` is
        added without the union of their boxes spanning more than ``max_extent``."""
        lo, hi = (b.copy() for b in self.box(new))
        kept = 0
        for f in reversed(window_frames):
            flo, fhi = self.box(f)
            nlo, nhi = np.minimum(lo, flo), np.maximum(hi, fhi)
            if float((nhi - nlo).max()) > self.max_extent:
                break
            lo, hi = nlo, nhi
            kept += 1
        return kept

    def forget_except(self, frames: Sequence[PointFrame]) -> None:
        """Drop cached boxes of frames no longer in ``frames``."""
        alive = {id(f) for f in frames}
        for key in [k for k in self._boxes if k not in alive]:
            del self._boxes[key]
