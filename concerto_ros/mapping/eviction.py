"""Which voxels the map evicts to stay within its memory bound.

Order (the map's documented policy): every voxel farther than ``radius`` from the newest
sensor origin goes first; then, while more than the target remain, the farthest voxels;
among voxels at the same distance the oldest (smallest last-seen stamp) first, then the
lowest row. The selection is O(n) (``argpartition``), cheap enough to run every frame.
"""

from __future__ import annotations

import numpy as np

__all__ = ["select_evictions"]


def select_evictions(dist2: np.ndarray, last_seen: np.ndarray, radius: float, target: int) -> tuple[np.ndarray, int]:
    """Rows to evict.

    Args:
        dist2: ``(n,) float64`` squared distance of every voxel centre to the sensor origin, m^2.
        last_seen: ``(n,) int64`` stamps (ns) each voxel was last observed.
        radius: metres; voxels with ``dist2 > radius**2`` are evicted. ``<= 0``: no radius.
        target: keep at most this many voxels; ``<= 0``: no count bound.

    Returns:
        ``(rows (E,) int64 ascending, number of them evicted for being beyond the radius)``.
    """
    n = dist2.shape[0]
    outside = dist2 > radius * radius if radius > 0 else np.zeros(n, dtype=bool)
    n_out = int(np.count_nonzero(outside))
    inside = np.flatnonzero(~outside)
    extra = inside.shape[0] - target if target > 0 else 0
    if extra <= 0:
        return np.flatnonzero(outside), n_out
    d = dist2[inside]
    # the extra farthest inside: everything beyond the cut distance, then ties at the cut by age
    cut = np.partition(d, d.shape[0] - extra)[d.shape[0] - extra]
    beyond = inside[d > cut]
    tied = inside[d == cut]
    tied = tied[np.lexsort((tied, last_seen[tied]))][: extra - beyond.shape[0]]
    return np.sort(np.concatenate([np.flatnonzero(outside), beyond, tied])), n_out
