"""Sliding "video" point cloud: the last T frames in the fixed frame, voxelised together.

The window keeps the per-frame arrays (points, colours, labels) of the last T
:class:`~concerto_ros.sensors.types.PointFrame` s; :meth:`VideoPointCloud.build`
concatenates them in window order (oldest first) and runs :func:`grid_sample` once, which
gives the fused voxel cloud for the encoders plus the maps back to every point of every
frame (PTv3 offset convention: ``frame_offsets`` are cumulative point counts).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..sensors.types import PointFrame
from .voxel import GRID_SAMPLE_MODES, grid_sample

__all__ = ["WindowCloud", "VideoPointCloud", "LABEL_MODES", "IGNORE_LABEL"]

LABEL_MODES = ("majority", "first")
#: Label of voxels without any labelled point (and of points of unlabelled frames).
IGNORE_LABEL = -1


@dataclass(frozen=True)
class WindowCloud:
    """The voxelised window: M voxels from N_total points of T frames (oldest first).

    Attributes:
        coord: ``(M, 3) float32`` representative point of each voxel, metres, ``frame_id``.
        color: ``(M, 3) uint8`` RGB of the representative point.
        grid_coord: ``(M, 3) int32`` voxel coordinates (min 0), see :func:`grid_sample`.
        inverse: ``(N_total,) int64`` voxel row of every window point (frames concatenated
            in window order).
        index: ``(M,) int64`` representative point of each voxel in the concatenation.
        counts: ``(M,) int64`` points per voxel.
        frame_offsets: ``(T + 1,) int64`` cumulative point counts, ``frame_offsets[0] = 0``;
            frame ``i`` owns points ``frame_offsets[i]:frame_offsets[i + 1]``.
        stamps_ns: ``(T,) int64`` frame stamps, window order.
        labels: ``(M,) int32`` voxel labels (majority of the labelled points, or the
            representative's label; -1 = none) when any frame carries labels, else None.
        frame_id: the fixed frame of all coordinates.
        voxel_size: metres.
        min_coord: ``(3,) int64`` voxel origin offset (``grid_coord + min_coord`` are
            absolute voxel indices).
    """

    coord: np.ndarray
    color: np.ndarray
    grid_coord: np.ndarray
    inverse: np.ndarray
    index: np.ndarray
    counts: np.ndarray
    frame_offsets: np.ndarray
    stamps_ns: np.ndarray
    labels: Optional[np.ndarray]
    frame_id: str
    voxel_size: float
    min_coord: np.ndarray

    @property
    def num_points(self) -> int:
        """N_total, points of all frames in the window."""
        return int(self.frame_offsets[-1])

    @property
    def num_voxels(self) -> int:
        """M."""
        return int(self.coord.shape[0])

    @property
    def num_frames(self) -> int:
        """T (frames currently in the window)."""
        return int(self.stamps_ns.shape[0])

    def frame_slice(self, i: int) -> slice:
        """Slice of frame ``i`` (negative counts from the newest) in the concatenated points.

        Raises:
            IndexError: ``i`` out of range.
        """
        t = self.num_frames
        if not -t <= i < t:
            raise IndexError(f"WindowCloud: frame {i} out of range for {t} frames")
        i %= t
        return slice(int(self.frame_offsets[i]), int(self.frame_offsets[i + 1]))

    def frame_inverse(self, i: int) -> np.ndarray:
        """``(N_i,) int64`` voxel row of every point of frame ``i`` (its point order)."""
        return self.inverse[self.frame_slice(i)]


def _majority_labels(inverse: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """Per-voxel most frequent label among labels >= 0 (ties: smallest label), -1 if none."""
    out = np.full(m, IGNORE_LABEL, dtype=np.int32)
    valid = labels >= 0
    if not np.any(valid):
        return out
    inv = inverse[valid]
    lab = labels[valid].astype(np.int64)
    num_labels = int(lab.max()) + 1
    if m * num_labels <= (1 << 24):
        hist = np.bincount(inv * num_labels + lab, minlength=m * num_labels).reshape(m, num_labels)
        best = hist.argmax(axis=1)  # first maximum = smallest label on ties
        has = hist[np.arange(m), best] > 0
        out[has] = best[has]
        return out
    keys, counts = np.unique(inv * num_labels + lab, return_counts=True)
    vox = keys // num_labels
    lab_u = keys % num_labels
    order = np.lexsort((lab_u, -counts, vox))
    vox_sorted = vox[order]
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = vox_sorted[1:] != vox_sorted[:-1]
    out[vox_sorted[first]] = lab_u[order][first]
    return out


class VideoPointCloud:
    """Sliding window of the last ``num_frames`` point frames in one fixed frame.

    Args:
        num_frames: window length T (>= 1).
        voxel_size: voxel edge in metres (> 0).
        mode: representative choice of :func:`grid_sample` (``"first"`` or ``"center"``).
        label_mode: ``"majority"`` (most frequent label >= 0 in the voxel) or ``"first"``
            (label of the representative point).

    Raises:
        ValueError: bad arguments.
    """

    def __init__(self, num_frames: int, voxel_size: float = 0.02, mode: str = "first", label_mode: str = "majority"):
        if int(num_frames) < 1:
            raise ValueError(f"VideoPointCloud: num_frames must be >= 1, got {num_frames}")
        voxel_size = float(voxel_size)
        if not (np.isfinite(voxel_size) and voxel_size > 0.0):
            raise ValueError(f"VideoPointCloud: voxel_size must be positive metres, got {voxel_size}")
        if mode not in GRID_SAMPLE_MODES:
            raise ValueError(f"VideoPointCloud: unknown mode {mode!r}, expected one of {GRID_SAMPLE_MODES}")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"VideoPointCloud: unknown label_mode {label_mode!r}, expected one of {LABEL_MODES}")
        self._num_frames = int(num_frames)
        self._voxel_size = voxel_size
        self._mode = mode
        self._label_mode = label_mode
        self._frames: deque[PointFrame] = deque(maxlen=self._num_frames)
        self._cache: Optional[WindowCloud] = None

    @property
    def num_frames(self) -> int:
        """Capacity T."""
        return self._num_frames

    @property
    def voxel_size(self) -> float:
        """Voxel edge, metres."""
        return self._voxel_size

    @property
    def frames(self) -> tuple[PointFrame, ...]:
        """Frames in the window, oldest first."""
        return tuple(self._frames)

    @property
    def frame_id(self) -> Optional[str]:
        """Fixed frame of the window (None while empty)."""
        return self._frames[0].frame_id if self._frames else None

    @property
    def is_full(self) -> bool:
        """True when the window holds ``num_frames`` frames."""
        return len(self._frames) == self._num_frames

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        """Empty the window (e.g. after a bag loop or a relocalisation)."""
        self._frames.clear()
        self._cache = None

    def push(self, frame: PointFrame) -> None:
        """Append ``frame`` (points already in the fixed frame); the oldest frame falls out
        when the window is full.

        Raises:
            ValueError: not a PointFrame, ``frame.frame_id`` differs from the window's fixed
                frame, or ``frame.stamp_ns`` is older than the newest frame (call
                :meth:`clear` when time jumps back).
        """
        if not isinstance(frame, PointFrame):
            raise ValueError(f"VideoPointCloud.push: expected a PointFrame, got {type(frame).__name__}")
        if self._frames:
            if frame.frame_id != self._frames[0].frame_id:
                raise ValueError(
                    f"VideoPointCloud.push: frame is in {frame.frame_id!r} but the window is in "
                    f"{self._frames[0].frame_id!r}; transform it first"
                )
            if frame.stamp_ns < self._frames[-1].stamp_ns:
                raise ValueError(
                    f"VideoPointCloud.push: stamp {frame.stamp_ns} ns is older than the newest frame "
                    f"({self._frames[-1].stamp_ns} ns); call clear() when time jumps back"
                )
        self._frames.append(frame)
        self._cache = None

    def build(self) -> WindowCloud:
        """Voxelise the window (cached until the next :meth:`push` / :meth:`clear`).

        Raises:
            ValueError: the window is empty.
        """
        if self._cache is not None:
            return self._cache
        if not self._frames:
            raise ValueError("VideoPointCloud.build: the window is empty")
        frames = list(self._frames)
        counts = np.array([f.num_points for f in frames], dtype=np.int64)
        offsets = np.zeros(len(frames) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        points = np.concatenate([f.points for f in frames], axis=0)
        colors = np.concatenate([f.colors for f in frames], axis=0)
        gs = grid_sample(points, self._voxel_size, mode=self._mode)

        labels = None
        if any(f.labels is not None for f in frames):
            point_labels = np.concatenate(
                [
                    f.labels if f.labels is not None else np.full(f.num_points, IGNORE_LABEL, dtype=np.int32)
                    for f in frames
                ]
            )
            if self._label_mode == "first":
                labels = point_labels[gs.index].astype(np.int32)
            else:
                labels = _majority_labels(gs.inverse, point_labels, gs.num_voxels)

        self._cache = WindowCloud(
            coord=points[gs.index],
            color=colors[gs.index],
            grid_coord=gs.grid_coord,
            inverse=gs.inverse,
            index=gs.index,
            counts=gs.counts,
            frame_offsets=offsets,
            stamps_ns=np.array([f.stamp_ns for f in frames], dtype=np.int64),
            labels=labels,
            frame_id=frames[0].frame_id,
            voxel_size=self._voxel_size,
            min_coord=gs.min_coord,
        )
        return self._cache
