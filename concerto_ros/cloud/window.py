"""Sliding "video" point cloud: the last T frames in the fixed frame, voxelised together.

The window keeps the last T :class:`~concerto_ros.sensors.types.PointFrame` s and builds a
:class:`WindowCloud`: the fused voxel cloud for the encoders plus the maps back to every
point of every frame (PTv3 offset convention: ``frame_offsets`` are cumulative point counts).

It is maintained incrementally: :meth:`VideoPointCloud.push` grid-samples only the new frame
(once, :func:`~concerto_ros.cloud.voxel.grid_sample`) and keeps its voxel set (absolute voxel
indices, representative, point counts, inverse map); the oldest frame's set falls out with
it. :meth:`VideoPointCloud.build` merges the T per-frame voxel sets (one sort of the
``sum_t V_t`` voxel keys, no pass over the points except gathering the inverse map) and
gives exactly the arrays of :func:`grid_sample` on the concatenation of the T frames: same
voxel rows and order, same representative (``"first"``: the first point in window order;
``"center"``: the point nearest the voxel centre, ties to the first), same ``inverse``,
``counts``, ``grid_coord`` and ``min_coord``. On the 5-frame Kinect window (1.05 M points,
272 k voxels) this replaces a 1 M-point grid sample per frame by a ~250 k-point one per push
plus the merge (``benchmarks/bench_window.py``).

An encoder budget (``max_voxels``) keeps the voxels nearest the newest camera; the points of
dropped voxels get ``inverse = -1`` (see :class:`WindowCloud`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..sensors.types import PointFrame
from .voxel import GRID_SAMPLE_MODES, GridSample, center_distance2, column_max, column_min, grid_sample, scratch, scratch_arange

__all__ = ["WindowCloud", "VideoPointCloud", "FrameVoxels", "LABEL_MODES", "IGNORE_LABEL", "DROPPED", "sensor_origin",
           "nearest_voxels"]

LABEL_MODES = ("majority", "first")
#: Label of voxels without any labelled point (and of points of unlabelled frames).
IGNORE_LABEL = -1
#: ``inverse`` value of the points whose voxel the encoder budget dropped.
DROPPED = -1


@dataclass(frozen=True)
class WindowCloud:
    """The voxelised window: M voxels from N_total points of T frames (oldest first).

    Attributes:
        coord: ``(M, 3) float32`` representative point of each voxel, metres, ``frame_id``.
        color: ``(M, 3) uint8`` RGB of the representative point.
        grid_coord: ``(M, 3) int32`` voxel coordinates (min 0), see :func:`grid_sample`.
        inverse: ``(N_total,) int64`` voxel row of every window point (frames concatenated
            in window order); :data:`DROPPED` (-1) for the points of voxels dropped by the
            encoder budget (only when ``num_dropped_voxels > 0``; index per-point arrays
            through :meth:`frame_values`, or mask ``inverse >= 0``).
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
            absolute voxel indices ``floor(p / voxel_size)``).
        num_dropped_voxels: voxels of the window that the encoder budget (``max_voxels``)
            left out; their points have ``inverse == -1``. 0 without a budget.
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
    num_dropped_voxels: int = 0

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
        """``(N_i,) int64`` voxel row of every point of frame ``i`` (its point order); -1 for
        points of voxels dropped by the encoder budget."""
        return self.inverse[self.frame_slice(i)]

    def frame_values(self, values: np.ndarray, i: int = -1, fill=0) -> np.ndarray:
        """Per-voxel ``values`` ``(M, ...)`` gathered for every point of frame ``i``:
        ``(N_i, ...)``, with ``fill`` for the points whose voxel the budget dropped.

        Raises:
            ValueError: ``values`` does not have M rows. IndexError: bad ``i``.
        """
        values = np.asarray(values)
        if values.shape[:1] != (self.num_voxels,):
            raise ValueError(f"WindowCloud.frame_values: values have {values.shape[:1]} rows, expected "
                             f"{self.num_voxels} (one per voxel)")
        inv = self.frame_inverse(i)
        if self.num_dropped_voxels == 0:
            return values[inv]
        out = values[np.maximum(inv, 0)]
        out[inv < 0] = fill
        return out


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



@dataclass(frozen=True)
class FrameVoxels:
    """The voxel set of one window frame, computed once when the frame is pushed.

    Attributes:
        grid: :func:`grid_sample` of the frame's points alone (``V`` voxels, ``N`` points):
            ``index`` (representative, frame-local), ``inverse (N,)``, ``counts (V,)``.
        ijk: ``(V, 3) int64`` absolute voxel indices ``floor(p / voxel_size)``, rows in the
            grid's (lexicographic) order.
        coord: ``(V, 3) float32`` representative points, metres, fixed frame.
        color: ``(V, 3) uint8`` their RGB.
        dist2: ``(V,) float64`` representative's squared distance to its voxel centre (voxel
            units; ``"center"`` mode only, else None).
        label: ``(V,) int32`` representative's label, or None for an unlabelled frame.
    """

    grid: GridSample
    ijk: np.ndarray
    coord: np.ndarray
    color: np.ndarray
    dist2: Optional[np.ndarray]
    label: Optional[np.ndarray]

    @classmethod
    def of(cls, frame: PointFrame, voxel_size: float, mode: str) -> "FrameVoxels":
        """Grid-sample ``frame`` (the only pass over its points)."""
        gs = grid_sample(frame.points, voxel_size, mode=mode)
        rep = np.take(frame.points, gs.index, axis=0)
        return cls(grid=gs, ijk=gs.grid_coord.astype(np.int64) + gs.min_coord, coord=rep,
                   color=np.take(frame.colors, gs.index, axis=0),
                   dist2=center_distance2(rep, voxel_size) if mode == "center" else None,
                   label=frame.labels[gs.index] if frame.labels is not None else None)

    @property
    def num_voxels(self) -> int:
        """V."""
        return int(self.ijk.shape[0])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` ``(3,) int64`` smallest and largest voxel index (V > 0)."""
        return self.grid.min_coord, self.grid.min_coord + column_max(self.grid.grid_coord)


#: bits per axis of the window's merge keys: voxel indices relative to the window's anchor
#: must lie in [0, 2**14) (327 m at 2 cm); wider windows take the generic path
_KEY_AXIS_BITS = 14
_KEY_SPAN = 1 << _KEY_AXIS_BITS


def _anchor_keys(ijk: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """``(V,) int64`` merge keys ``(i << 28 | j << 14 | k)`` of ``ijk - anchor`` (in span)."""
    rel = ijk - anchor
    key = rel[:, 0] << (2 * _KEY_AXIS_BITS)
    key |= rel[:, 1] << _KEY_AXIS_BITS
    key |= rel[:, 2]
    return key


def _grid_of_anchor_keys(keys: np.ndarray, anchor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode merge keys (inverse of :func:`_anchor_keys`) into ``grid_coord (M, 3) int32``
    (min 0 per column) and ``min_coord (3,) int64`` (absolute index of grid 0)."""
    grid = np.empty((keys.shape[0], 3), dtype=np.int32)
    lo = np.zeros(3, dtype=np.int64)
    col = scratch("win_col", keys.shape[0], np.int64)
    for axis in range(3):
        np.right_shift(keys, (2 - axis) * _KEY_AXIS_BITS, out=col)
        col &= _KEY_SPAN - 1
        lo[axis] = col.min()
        col -= lo[axis]
        grid[:, axis] = col
    return grid, lo + anchor


@dataclass
class _Merged:
    """Union of the window's per-frame voxel sets (positions refer to their concatenation)."""

    sel: np.ndarray  # (M,) position of each window voxel's representative
    row_of_pos: np.ndarray  # (sum V_t,) window row of every frame voxel (scratch memory)
    counts: np.ndarray  # (M,) points per window voxel
    grid_coord: np.ndarray  # (M, 3) int32, min 0 per column
    min_coord: np.ndarray  # (3,) int64 smallest absolute voxel index


def _cat(parts: list[np.ndarray], name: str, copy: bool = False) -> np.ndarray:
    """Concatenation of ``parts`` (same trailing shape) into the scratch buffer ``name``
    (a single part is returned as it is unless ``copy``)."""
    if len(parts) == 1 and not copy:
        return parts[0]
    n = sum(p.shape[0] for p in parts)
    tail = parts[0].shape[1:]
    out = scratch(name, n * int(np.prod(tail, dtype=np.int64)), parts[0].dtype).reshape((n,) + tail)
    return np.concatenate(parts, out=out)


def _sort_with_positions(keys: np.ndarray, pos_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort ``keys`` (scratch, non-negative, < 2**(63 - pos_bits)) in place by (key, position);
    return ``(sorted keys, order)``."""
    keys <<= pos_bits
    keys |= scratch_arange(keys.shape[0])
    keys.sort()
    order = np.bitwise_and(keys, (1 << pos_bits) - 1, out=scratch("win_order", keys.shape[0], np.int64))
    keys >>= pos_bits
    return keys, order


def _sorted_groups_wide(ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable lexicographic order of ``ijk (V, 3)`` rows and group-start flags, for windows
    too wide for the merge keys (equal rows keep their input order)."""
    order = np.lexsort((np.arange(ijk.shape[0]), ijk[:, 2], ijk[:, 1], ijk[:, 0]))
    s = ijk[order]
    new = np.empty(ijk.shape[0], dtype=bool)
    new[0] = True
    np.any(s[1:] != s[:-1], axis=1, out=new[1:])
    return order, new


def _merge(recs: list[FrameVoxels], keys: Optional[list[np.ndarray]], anchor: Optional[np.ndarray],
           mode: str) -> _Merged:
    """Merge per-frame voxel sets (oldest first) into the window's voxels, exactly as
    :func:`grid_sample` would on the concatenated points (see the module docstring).

    ``keys``/``anchor``: the frames' merge keys (:func:`_anchor_keys`), or None for the wide
    path that sorts the voxel indices themselves.
    """
    v_tot = sum(r.num_voxels for r in recs)
    pos_bits = max(1, (v_tot - 1).bit_length())
    if 3 * _KEY_AXIS_BITS + pos_bits > 63:  # more than 2**21 frame voxels: no room in one int64
        keys = None
    if keys is not None:
        skey, order = _sort_with_positions(_cat(keys, "win_keys", copy=True), pos_bits)
        new = scratch("win_new", v_tot, bool)
        new[0] = True
        np.not_equal(skey[1:], skey[:-1], out=new[1:])
    else:
        order, new = _sorted_groups_wide(_cat([r.ijk for r in recs], "win_ijk"))
    starts = np.flatnonzero(new)
    new[0] = False
    gid = np.cumsum(new, out=scratch("win_gid", v_tot, np.int64))  # window row of each sorted entry
    row_of_pos = scratch("win_row", v_tot, np.int64)
    row_of_pos[order] = gid
    if mode == "first":  # the oldest frame's representative (its first point)
        sel = order[starts]
    else:  # "center": smallest distance to the centre, ties to the oldest frame
        d = np.take(_cat([r.dist2 for r in recs], "win_d2"), order)
        pos = np.flatnonzero(d == np.minimum.reduceat(d, starts)[gid])
        first = np.empty(pos.shape[0], dtype=bool)
        first[0] = True
        g = gid[pos]
        np.not_equal(g[1:], g[:-1], out=first[1:])
        sel = order[pos[first]]
    counts = np.add.reduceat(np.take(_cat([r.grid.counts for r in recs], "win_counts"), order), starts)
    if keys is not None:
        grid_coord, min_coord = _grid_of_anchor_keys(skey[starts], anchor)
    else:
        ijk = np.take(_cat([r.ijk for r in recs], "win_ijk"), sel, axis=0)
        min_coord = column_min(ijk)
        grid_coord = (ijk - min_coord).astype(np.int32)
    return _Merged(sel=sel, row_of_pos=row_of_pos, counts=counts, grid_coord=grid_coord,
                   min_coord=min_coord.astype(np.int64))


def sensor_origin(frame: PointFrame) -> np.ndarray:
    """``(3,) float64`` sensor position of ``frame`` in its ``frame_id``, metres: the translation
    of ``T_fixed_sensor``, else the centroid of its points (the origin for an empty frame)."""
    if frame.T_fixed_sensor is not None:
        return np.asarray(frame.T_fixed_sensor[:3, 3], dtype=np.float64)
    if frame.num_points == 0:
        return np.zeros(3)
    return frame.points.mean(axis=0, dtype=np.float64)


def nearest_voxels(coord: np.ndarray, origin: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` voxels nearest ``origin``: ``(k,) int64`` ascending.

    All voxels strictly nearer than the k-th distance are kept, then those at exactly that
    distance in row order (deterministic).

    Args:
        coord: ``(M, 3)`` voxel positions, metres. origin: ``(3,)`` metres, same frame.
        k: how many to keep (``>= M`` keeps all).
    """
    m = coord.shape[0]
    if k >= m:
        return np.arange(m, dtype=np.int64)
    diff = coord.astype(np.float64) - np.asarray(origin, dtype=np.float64)
    d2 = np.einsum("ij,ij->i", diff, diff)
    thr = np.partition(d2, k - 1)[k - 1]  # the k-th smallest distance
    keep = d2 < thr
    ties = np.flatnonzero(d2 == thr)
    keep[ties[: k - int(np.count_nonzero(keep))]] = True
    return np.flatnonzero(keep)


def _restrict(mg: _Merged, coord: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep only window rows ``keep`` (ascending) of ``mg`` in place: the frame voxels of the
    other rows map to :data:`DROPPED`, ``grid_coord`` is re-based to min 0. Returns the
    kept ``coord`` rows."""
    remap = np.full(mg.sel.shape[0], DROPPED, dtype=np.int64)
    remap[keep] = np.arange(keep.shape[0], dtype=np.int64)
    mg.row_of_pos = np.take(remap, mg.row_of_pos)
    mg.sel, mg.counts = mg.sel[keep], mg.counts[keep]
    grid = np.take(mg.grid_coord, keep, axis=0)
    shift = column_min(grid) if keep.shape[0] else np.zeros(3, np.int32)
    grid -= shift
    mg.grid_coord, mg.min_coord = grid, mg.min_coord + shift.astype(np.int64)
    return np.take(coord, keep, axis=0)


class VideoPointCloud:
    """Sliding window of the last ``num_frames`` point frames in one fixed frame, maintained
    incrementally (see the module docstring).

    Args:
        num_frames: window length T (>= 1).
        voxel_size: voxel edge in metres (> 0).
        mode: representative choice of :func:`grid_sample` (``"first"`` or ``"center"``).
        label_mode: ``"majority"`` (most frequent label >= 0 in the voxel) or ``"first"``
            (label of the representative point).
        max_voxels: encoder budget: :meth:`build` keeps only the ``max_voxels`` voxels
            nearest the newest camera position (translation of the newest frame's
            ``T_fixed_sensor``; the centroid of its points when it has no pose), the rest are
            dropped (``inverse == -1``, ``num_dropped_voxels``). 0 = no budget.

    Raises:
        ValueError: bad arguments.
    """

    def __init__(self, num_frames: int, voxel_size: float = 0.02, mode: str = "first", label_mode: str = "majority",
                 max_voxels: int = 0):
        if int(num_frames) < 1:
            raise ValueError(f"VideoPointCloud: num_frames must be >= 1, got {num_frames}")
        voxel_size = float(voxel_size)
        if not (np.isfinite(voxel_size) and voxel_size > 0.0):
            raise ValueError(f"VideoPointCloud: voxel_size must be positive metres, got {voxel_size}")
        if mode not in GRID_SAMPLE_MODES:
            raise ValueError(f"VideoPointCloud: unknown mode {mode!r}, expected one of {GRID_SAMPLE_MODES}")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"VideoPointCloud: unknown label_mode {label_mode!r}, expected one of {LABEL_MODES}")
        if int(max_voxels) < 0:
            raise ValueError(f"VideoPointCloud: max_voxels must be >= 0 (0 = no budget), got {max_voxels}")
        self._num_frames = int(num_frames)
        self._voxel_size = voxel_size
        self._mode = mode
        self._label_mode = label_mode
        self._max_voxels = int(max_voxels)
        self._frames: deque[PointFrame] = deque(maxlen=self._num_frames)
        self._voxels: deque[FrameVoxels] = deque(maxlen=self._num_frames)
        #: merge keys of each frame relative to ``_anchor`` (None: the window is too wide)
        self._keys: Optional[deque[np.ndarray]] = None
        self._anchor: Optional[np.ndarray] = None
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
    def max_voxels(self) -> int:
        """Encoder budget (0 = none)."""
        return self._max_voxels

    @property
    def frames(self) -> tuple[PointFrame, ...]:
        """Frames in the window, oldest first."""
        return tuple(self._frames)

    @property
    def newest_voxels(self) -> Optional[FrameVoxels]:
        """Voxel set of the newest frame (its :class:`GridSample` at ``voxel_size``, e.g. for
        the map's geometry integration at the same voxel size), None while empty."""
        return self._voxels[-1] if self._voxels else None

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
        self._voxels.clear()
        self._keys, self._anchor = None, None
        self._cache = None

    def push(self, frame: PointFrame) -> None:
        """Append ``frame`` (points already in the fixed frame) and grid-sample it; the oldest
        frame and its voxels fall out when the window is full.

        Raises:
            ValueError: not a PointFrame, ``frame.frame_id`` differs from the window's fixed
                frame, ``frame.stamp_ns`` is older than the newest frame (call :meth:`clear`
                when time jumps back), or non-finite points (see :func:`grid_sample`).
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
        voxels = FrameVoxels.of(frame, self._voxel_size, self._mode)
        self._frames.append(frame)
        self._voxels.append(voxels)
        self._update_keys(voxels)
        self._cache = None

    def _update_keys(self, new: FrameVoxels) -> None:
        """Merge keys of the new frame; re-anchor (recomputing every frame's keys) when it
        leaves the anchor's span, and fall back to the wide path when the window is wider
        than the span."""
        if self._keys is not None:
            if new.num_voxels == 0:
                self._keys.append(np.zeros(0, dtype=np.int64))
                return
            lo, hi = new.bounds()
            if (lo >= self._anchor).all() and (hi < self._anchor + _KEY_SPAN).all():
                self._keys.append(_anchor_keys(new.ijk, self._anchor))
                return
        bounds = [r.bounds() for r in self._voxels if r.num_voxels]
        if not bounds:
            self._keys, self._anchor = None, None
            return
        lo = np.min([b[0] for b in bounds], axis=0)
        hi = np.max([b[1] for b in bounds], axis=0)
        extent = hi - lo + 1
        if (extent > _KEY_SPAN).any():
            self._keys, self._anchor = None, None
            return
        self._anchor = lo - (_KEY_SPAN - extent) // 2  # centred: room to move either way
        self._keys = deque((_anchor_keys(r.ijk, self._anchor) for r in self._voxels), maxlen=self._num_frames)

    def camera_position(self) -> Optional[np.ndarray]:
        """``(3,) float64`` newest camera position (see :func:`sensor_origin`); None while empty."""
        return sensor_origin(self._frames[-1]) if self._frames else None

    def build(self) -> WindowCloud:
        """Merge the per-frame voxel sets into the window cloud (cached until the next
        :meth:`push` / :meth:`clear`); applies the ``max_voxels`` budget.

        Raises:
            ValueError: the window is empty.
        """
        if self._cache is not None:
            return self._cache
        if not self._frames:
            raise ValueError("VideoPointCloud.build: the window is empty")
        self._cache = self._merge_window()
        return self._cache

    def _merge_window(self) -> WindowCloud:
        frames, recs = list(self._frames), list(self._voxels)
        offsets = np.zeros(len(frames) + 1, dtype=np.int64)
        np.cumsum([f.num_points for f in frames], out=offsets[1:])
        if offsets[-1] == 0:  # only empty frames
            z = np.zeros(0, np.int64)
            mg = _Merged(z, z, z, np.zeros((0, 3), np.int32), np.zeros(3, np.int64))
        else:
            mg = _merge(recs, list(self._keys) if self._keys is not None else None, self._anchor, self._mode)
        num_voxels = mg.sel.shape[0]
        coord = np.take(_cat([r.coord for r in recs], "win_coord"), mg.sel, axis=0)
        if self._max_voxels and num_voxels > self._max_voxels:  # the encoder budget
            coord = _restrict(mg, coord, nearest_voxels(coord, self.camera_position(), self._max_voxels))
        sel = mg.sel
        index = np.take(_cat([r.grid.index + off for r, off in zip(recs, offsets[:-1])], "win_index"), sel)
        inverse = np.empty(int(offsets[-1]), dtype=np.int64)
        vstart = 0
        for r, o0, o1 in zip(recs, offsets[:-1], offsets[1:]):
            np.take(mg.row_of_pos[vstart:vstart + r.num_voxels], r.grid.inverse, out=inverse[o0:o1], mode="clip")
            vstart += r.num_voxels
        return WindowCloud(
            coord=coord, color=np.take(_cat([r.color for r in recs], "win_color"), sel, axis=0),
            grid_coord=mg.grid_coord, inverse=inverse, index=index, counts=mg.counts, frame_offsets=offsets,
            stamps_ns=np.array([f.stamp_ns for f in frames], dtype=np.int64),
            labels=self._labels(frames, recs, sel, inverse, sel.shape[0]), frame_id=frames[0].frame_id,
            voxel_size=self._voxel_size, min_coord=mg.min_coord, num_dropped_voxels=num_voxels - sel.shape[0])

    def _labels(self, frames, recs, sel, inverse, m) -> Optional[np.ndarray]:
        """Voxel labels (see :class:`WindowCloud`), None when no frame carries labels."""
        if all(f.labels is None for f in frames):
            return None
        if self._label_mode == "first":
            return _cat([r.label if r.label is not None else np.full(r.num_voxels, IGNORE_LABEL, np.int32)
                         for r in recs], "win_label")[sel].astype(np.int32)
        point_labels = _cat([f.labels if f.labels is not None else np.full(f.num_points, IGNORE_LABEL, np.int32)
                             for f in frames], "win_point_labels")
        if m and (inverse < 0).any():  # points of voxels dropped by the budget count for none
            point_labels = np.where(inverse >= 0, point_labels, IGNORE_LABEL)
        return _majority_labels(inverse, point_labels, m)
