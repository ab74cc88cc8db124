"""Multi-resolution point features of the Masked Scene Modeling evaluation protocol.

Hermosilla et al., "Masked Scene Modeling" (CVPR 2025, arXiv 2504.06719) evaluate a
hierarchical encoder with every level interpolated **trilinearly** back to each original
point, levels concatenated, no feature normalisation. The interpolation is taken at the
point's full-resolution grid position scaled to the level: level ``l`` lives on a grid
``S_l`` times coarser than the input voxels (``S_l = 2^l`` for PTv3's stride-2 pooling, so
at 0.02 m voxels level ``l`` is a ``2^l x 2`` cm grid), a level voxel ``g`` stands at its
centre ``(g + 1/2) S_l`` in input-voxel units, and an empty voxel counts as a zero feature
(the weights of the corners that exist are not renormalised).

The reference code builds dense grids for this; here every level is a sorted hash of its
occupied voxels and each point looks up its 8 corners (:class:`VoxelHash`), so memory grows
with the points and voxels, never with the scene's extent (LiDAR scans of 100 m fit).

Grid positions: a point ``p`` (metres) voxelized by
:func:`concerto_ros.cloud.voxel.grid_sample` at ``voxel_size`` sits at the continuous
position ``p / voxel_size - min_coord`` (``GridSample.min_coord``), whose floor is its
``grid_coord``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["VoxelHash", "trilinear_interpolate", "level_scales", "multilevel_features", "encoder_levels",
           "point_features"]

_BITS = 20  # bits per axis of a packed key (grid coordinates -1 .. 2^20 - 2)
_LIMIT = (1 << _BITS) - 2


def _pack(grid: torch.Tensor) -> torch.Tensor:
    g = grid.long() + 1
    return (g[:, 0] << (2 * _BITS)) | (g[:, 1] << _BITS) | g[:, 2]


class VoxelHash:
    """Sorted hash of one level's occupied voxels: ``find`` gives the row of any grid
    coordinate (``-1`` when empty) by binary search.

    Args:
        grid_coord: ``(M, 3)`` integer voxel coordinates of one scene, unique, in
            ``[0, 2^20 - 2]``.

    Raises:
        ValueError: coordinates out of range or not ``(M, 3)``.
    """

    def __init__(self, grid_coord: torch.Tensor):
        g = torch.as_tensor(grid_coord)
        if g.ndim != 2 or g.shape[1] != 3:
            raise ValueError(f"grid_coord must be (M, 3), got {tuple(g.shape)}")
        if g.numel() and (int(g.min()) < 0 or int(g.max()) > _LIMIT - 1):
            raise ValueError(f"grid_coord must lie in [0, {_LIMIT - 1}], got [{int(g.min())}, {int(g.max())}]")
        self.keys, self.rows = torch.sort(_pack(g))

    def find(self, grid: torch.Tensor) -> torch.Tensor:
        """``(Q,) int64`` row of each ``(Q, 3)`` grid coordinate, ``-1`` where no voxel is
        (also for coordinates outside the hash's range, e.g. ``-1``)."""
        g = grid.long()
        inside = ((g >= -1) & (g <= _LIMIT)).all(dim=1)
        key = _pack(torch.where(inside[:, None], g, torch.zeros_like(g)))
        if self.keys.numel() == 0:
            return torch.full((len(g),), -1, dtype=torch.long, device=g.device)
        pos = torch.searchsorted(self.keys, key).clamp_max(self.keys.numel() - 1)
        hit = inside & (self.keys[pos] == key)
        return torch.where(hit, self.rows[pos], torch.full_like(pos, -1))


_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.long)


def trilinear_interpolate(table: VoxelHash, feat: torch.Tensor, query: torch.Tensor, scale: float,
                          chunk: int = 1 << 18) -> torch.Tensor:
    """Trilinear interpolation of one level's voxel features at points.

    Args:
        table: the level's :class:`VoxelHash` (rows index ``feat``).
        feat: ``(M, C)`` voxel features of the level.
        query: ``(N, 3)`` float64 continuous grid positions in input-voxel units (module
            docstring).
        scale: ``S_l``, input voxels per level voxel along an axis.
        chunk: points per step (bounds the ``(chunk, C)`` temporaries).

    Returns:
        ``(N, C)`` in ``feat``'s dtype: ``sum over the 8 corners c of w_c f(c)`` with
        ``u = query / scale - 1/2``, corners ``floor(u) + {0, 1}^3``, weights the products
        of ``frac(u)`` / ``1 - frac(u)``; an empty corner contributes 0.
    """
    out = feat.new_zeros((len(query), feat.shape[1]))
    corners = _CORNERS.to(query.device)
    for s in range(0, len(query), chunk):
        u = query[s:s + chunk] / float(scale) - 0.5
        base = torch.floor(u)
        frac = u - base
        base = base.long()
        acc = out[s:s + chunk]
        for delta in corners:
            w = torch.where(delta.bool(), frac, 1.0 - frac).prod(dim=1)
            row = table.find(base + delta)
            hit = row >= 0
            if hit.any():
                acc[hit] += w[hit, None].to(feat.dtype) * feat[row[hit]]
    return out


def level_scales(strides: Sequence[int], num_levels: int) -> list[int]:
    """``S_l`` of each level: ``1`` and the cumulative products of the pooling strides."""
    scales = [1]
    for s in list(strides)[: num_levels - 1]:
        scales.append(scales[-1] * int(s))
    return scales


def multilevel_features(output, query: torch.Tensor, scales: Sequence[int], chunk: int = 1 << 18) -> torch.Tensor:
    """Every level of an encoder output interpolated at ``query`` and concatenated.

    Args:
        output: :class:`~concerto_ros.models.ptv3.EncoderOutput` of one scene (level ``l``:
            ``feat (M_l, C_l)``, ``points.grid_coord (M_l, 3)``).
        query: ``(N, 3)`` float64 grid positions in input-voxel units.
        scales: ``S_l`` per level (:func:`level_scales`).

    Returns:
        ``(N, sum C_l) float32``, finest level first.
    """
    parts = []
    for level, scale in zip(output.levels, scales):
        table = VoxelHash(level.points.grid_coord)
        parts.append(trilinear_interpolate(table, level.feat.float(), query.to(level.feat.device), scale, chunk))
    return torch.cat(parts, dim=1)


@torch.inference_mode()
def encoder_levels(extractor, coord: np.ndarray, grid_coord: np.ndarray, color: np.ndarray | None = None):
    """Every level of ``extractor``'s Concerto encoder on one voxelized scene, with the
    extractor's colour use and precision (what its ``encode`` concatenates).

    Args:
        extractor: a :class:`~concerto_ros.models.extractor.FeatureExtractor`.
        coord: ``(M, 3)`` voxel representative points, metres.
        grid_coord: ``(M, 3)`` voxel coordinates (min 0).
        color: ``(M, 3)`` uint8 RGB or None.

    Returns:
        :class:`~concerto_ros.models.ptv3.EncoderOutput`.
    """
    from concerto_ros.models.extractor import check_amp
    from concerto_ros.models.ptv3 import prepare_input

    dev = extractor.device
    amp = check_amp(extractor.amp, dev)
    batch = prepare_input(coord, grid_coord, color=color if extractor.use_color else None, device=dev)
    with torch.autocast(device_type=dev.type, dtype=amp or torch.float32, enabled=amp is not None):
        return extractor.encoder(batch)


@torch.inference_mode()
def point_features(extractor, xyz: np.ndarray, voxel_size: float, colors: np.ndarray | None = None) -> torch.Tensor:
    """The MSM multi-resolution feature of every point of one scene.

    The scene is grid-sampled at ``voxel_size`` (one representative point per voxel, the
    node's voxelization), encoded, and every level interpolated at every point.

    Args:
        extractor: the :class:`~concerto_ros.models.extractor.FeatureExtractor`.
        xyz: ``(N, 3)`` float32 points, metres.
        voxel_size: metres (the pipeline's ``window.voxel_size``).
        colors: ``(N, 3)`` uint8 RGB or None.

    Returns:
        ``(N, sum of the level widths) float32`` on the CPU (240-d for ``tiny``).

    Raises:
        ValueError: no point.
    """
    from concerto_ros.cloud.voxel import grid_sample

    if len(xyz) == 0:
        raise ValueError("a scene without points has no features")
    gs = grid_sample(xyz, voxel_size)
    out = encoder_levels(extractor, xyz[gs.index], gs.grid_coord, None if colors is None else colors[gs.index])
    query = torch.from_numpy(np.asarray(xyz, dtype=np.float64) / voxel_size - gs.min_coord)
    scales = level_scales(extractor.encoder.config.stride, len(out.levels))
    return multilevel_features(out, query, scales).float().cpu()
