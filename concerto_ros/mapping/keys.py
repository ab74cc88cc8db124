"""Absolute voxel indices and their int64 keys (the addresses of the semantic voxel map).

A point ``p`` (metres, fixed frame) lies in voxel ``ijk = floor(p / voxel_size)``, computed
in float64 exactly like :func:`~concerto_ros.cloud.voxel.grid_sample` (so the map and the
window agree on every voxel). The map addresses a voxel by one non-negative int64 key::

    key = (i + OFFSET) << 42 | (j + OFFSET) << 21 | (k + OFFSET),   OFFSET = 2**20

Keys sort like ``(i, j, k)`` lexicographically, which is the row order of ``grid_sample``,
so the voxels of a grid-sampled frame arrive with sorted keys. Each index must lie in
``[INDEX_MIN, INDEX_MAX] = [-(2**20 - 1), 2**20 - 2]``: +-20.97 km at 0.02 m voxels,
+-52.4 km at 0.05 m, +-5.2 km at 0.005 m around the fixed frame's origin. One index is kept
free at each end so that the key of every 26-neighbour of a valid voxel is
``key + delta`` (:data:`NEIGHBOUR_DELTAS`) without carrying into the next field.
"""

from __future__ import annotations

import numpy as np
from concerto_ros.cloud.voxel import column_max, column_min

__all__ = ["AXIS_BITS", "OFFSET", "INDEX_MIN", "INDEX_MAX", "NEIGHBOUR_OFFSETS", "NEIGHBOUR_DELTAS",
           "voxel_indices", "check_indices", "pack_keys", "unpack_keys"]

#: bits per axis in a key (3 x 21 = 63 bits: the key is a non-negative int64)
AXIS_BITS = 21
#: added to every index so that the packed fields are non-negative
OFFSET = 1 << (AXIS_BITS - 1)
#: smallest and largest accepted voxel index on each axis
INDEX_MIN = -OFFSET + 1
INDEX_MAX = OFFSET - 2
_MASK = (1 << AXIS_BITS) - 1

#: ``(13, 3) int64`` one half of the 26-neighbourhood (the other half is its negation), so
#: every neighbour pair is found once
NEIGHBOUR_OFFSETS = np.array(
    [(di, dj, dk) for di in (-1, 0, 1) for dj in (-1, 0, 1) for dk in (-1, 0, 1)
     if (di, dj, dk) > (0, 0, 0)], dtype=np.int64)
#: ``(13,) int64`` key differences of :data:`NEIGHBOUR_OFFSETS` (valid for indices in range)
NEIGHBOUR_DELTAS = (NEIGHBOUR_OFFSETS[:, 0] << (2 * AXIS_BITS)) + (NEIGHBOUR_OFFSETS[:, 1] << AXIS_BITS) \
    + NEIGHBOUR_OFFSETS[:, 2]


def check_indices(ijk: np.ndarray, owner: str = "voxel map") -> None:
    """Raise ``ValueError`` when an index of ``ijk (N, 3)`` is outside the key range.

    The message gives the offending voxel, its position in metres is the caller's business.
    """
    if ijk.shape[0] == 0:
        return
    lo, hi = column_min(ijk), column_max(ijk)
    if (lo < INDEX_MIN).any() or (hi > INDEX_MAX).any():
        raise ValueError(f"{owner}: voxel index range {lo.tolist()}..{hi.tolist()} is outside the map's key range "
                         f"[{INDEX_MIN}, {INDEX_MAX}] per axis (coordinates too far from the fixed frame's origin "
                         "for this voxel size)")


def voxel_indices(points: np.ndarray, voxel_size: float, owner: str = "voxel map") -> np.ndarray:
    """``(N, 3) int64`` voxel index ``floor(points / voxel_size)`` of every point.

    Args:
        points: ``(N, 3)`` float array, metres.
        voxel_size: voxel edge, metres (> 0).

    Raises:
        ValueError: wrong shape, non-finite coordinates, or an index outside
            ``[INDEX_MIN, INDEX_MAX]``.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{owner}: points must have shape (N, 3), got {points.shape}")
    q = np.floor(np.divide(points, float(voxel_size), dtype=np.float64))
    if q.size and not np.isfinite(q).all():
        raise ValueError(f"{owner}: points contain NaN or infinite coordinates; drop them first")
    # clip before the cast so that huge values do not wrap around into the range
    ijk = np.clip(q, INDEX_MIN - 1, INDEX_MAX + 1).astype(np.int64)
    check_indices(ijk, owner)
    return ijk


def pack_keys(ijk: np.ndarray) -> np.ndarray:
    """``(N,) int64`` keys of voxel indices ``(N, 3)`` (integers inside the key range, unchecked)."""
    ijk = np.asarray(ijk, dtype=np.int64)
    key = (ijk[:, 0] + OFFSET) << (2 * AXIS_BITS)
    key |= (ijk[:, 1] + OFFSET) << AXIS_BITS
    key |= ijk[:, 2] + OFFSET
    return key


def unpack_keys(keys: np.ndarray) -> np.ndarray:
    """``(N, 3) int64`` voxel indices of keys ``(N,)`` (inverse of :func:`pack_keys`)."""
    keys = np.asarray(keys, dtype=np.int64)
    out = np.empty((keys.shape[0], 3), dtype=np.int64)
    np.right_shift(keys, 2 * AXIS_BITS, out=out[:, 0])
    np.right_shift(keys, AXIS_BITS, out=out[:, 1])
    out[:, 1] &= _MASK
    np.bitwise_and(keys, _MASK, out=out[:, 2])
    out -= OFFSET
    return out
