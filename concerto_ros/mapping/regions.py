"""Query answers as regions: connected voxels whose relevance passes a threshold.

The voxels at or above the threshold are linked to their 26-neighbours on the voxel grid
(neighbour pairs found by key lookup among the selected voxels, never a dense grid) and
split into connected components with ``scipy.sparse.csgraph.connected_components``. Each
component is a :class:`Region`; regions come best first (mean relevance, then size).
Works on any voxel set with integer voxel indices: the map's rows or a window's voxels
(``grid_coord + min_coord``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .keys import NEIGHBOUR_DELTAS, check_indices, pack_keys

__all__ = ["Region", "find_regions"]


@dataclass(frozen=True)
class Region:
    """One connected group of relevant voxels.

    Attributes:
        rows: ``(V,) int64`` indices of its voxels in the arrays given to :func:`find_regions`,
            ascending.
        centroid: ``(3,) float64`` mean of the voxel centres, metres.
        box_min / box_max: ``(3,) float64`` corners of the axis-aligned box that encloses its
            voxels (voxel faces, so ``box_max - box_min >= voxel_size``), metres.
        num_voxels: V.
        score: mean relevance of its voxels.
        max_relevance: the largest relevance among them.
    """

    rows: np.ndarray
    centroid: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    num_voxels: int
    score: float
    max_relevance: float


def _components(ijk: np.ndarray) -> np.ndarray:
    """``(S,) int32`` connected-component label of every voxel (26-neighbourhood)."""
    s = ijk.shape[0]
    rel = ijk - ijk.min(axis=0) + 1  # >= 1, so that every neighbour's index is in the key range too
    check_indices(rel, "find_regions")
    keys = pack_keys(rel)
    order = np.argsort(keys, kind="stable")
    skeys = keys[order]
    src, dst = [], []
    for delta in NEIGHBOUR_DELTAS:
        pos = np.searchsorted(skeys, skeys + delta)
        np.minimum(pos, s - 1, out=pos)
        hit = np.flatnonzero(skeys[pos] == skeys + delta)
        src.append(order[hit])
        dst.append(order[pos[hit]])
    src, dst = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(src.shape[0], dtype=np.int8), (src, dst)), shape=(s, s)).tocsr()
    return connected_components(graph, directed=False)[1]


def find_regions(ijk: np.ndarray, relevance: np.ndarray, voxel_size: float, threshold: float,
                 max_regions: int = 10, min_voxels: int = 1) -> list[Region]:
    """Connected regions of the voxels with ``relevance >= threshold``, best first.

    Args:
        ijk: ``(N, 3)`` integer voxel indices (``floor(p / voxel_size)``); voxel ``ijk`` spans
            ``[ijk, ijk + 1) * voxel_size`` metres.
        relevance: ``(N,)`` per-voxel relevance (e.g. in ``[0, 1]``).
        voxel_size: metres (> 0).
        threshold: voxels at or above it take part.
        max_regions: at most this many regions are returned (>= 1).
        min_voxels: smaller regions are left out (>= 1).

    Returns:
        :class:`Region` list ordered by score (mean relevance) descending, then size
        descending, then smallest voxel row.

    Raises:
        ValueError: shapes that do not match, ``voxel_size <= 0``, ``max_regions`` or
            ``min_voxels`` < 1, or a selection wider than 2**20 - 2 voxels along an axis.
    """
    ijk = np.asarray(ijk)
    relevance = np.asarray(relevance, dtype=np.float64)
    if ijk.ndim != 2 or ijk.shape[1] != 3 or relevance.shape != (ijk.shape[0],):
        raise ValueError(f"find_regions: ijk must be (N, 3) and relevance (N,), got {ijk.shape} and {relevance.shape}")
    if not voxel_size > 0 or int(max_regions) < 1 or int(min_voxels) < 1:
        raise ValueError(f"find_regions: need voxel_size > 0, max_regions >= 1, min_voxels >= 1; got "
                         f"{voxel_size}, {max_regions}, {min_voxels}")
    sel = np.flatnonzero(relevance >= threshold)
    if sel.shape[0] == 0:
        return []
    sijk = ijk[sel].astype(np.int64)
    comp = _components(sijk)
    ncomp = int(comp.max()) + 1
    size = np.bincount(comp, minlength=ncomp)
    score = np.bincount(comp, weights=relevance[sel], minlength=ncomp) / size
    first_row = np.full(ncomp, sel.shape[0], dtype=np.int64)
    np.minimum.at(first_row, comp, np.arange(sel.shape[0]))
    ranked = np.lexsort((first_row, -size, -score))
    ranked = ranked[size[ranked] >= int(min_voxels)][: int(max_regions)]
    order = np.argsort(comp, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(size)])
    regions = []
    for c in ranked:
        members = order[bounds[c]:bounds[c + 1]]  # ascending (stable sort of ascending indices)
        g = sijk[members]
        regions.append(Region(
            rows=sel[members], centroid=(g.mean(axis=0) + 0.5) * voxel_size,
            box_min=g.min(axis=0) * float(voxel_size), box_max=(g.max(axis=0) + 1) * float(voxel_size),
            num_voxels=int(size[c]), score=float(score[c]), max_relevance=float(relevance[sel[members]].max())))
    return regions
