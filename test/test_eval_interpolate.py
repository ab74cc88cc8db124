"""MSM multi-resolution features: trilinear interpolation on the sparse voxel hash."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from concerto_ros.evaluation.interpolate import (VoxelHash, level_scales, multilevel_features, point_features,
                                                 trilinear_interpolate)


def _linear(grid: torch.Tensor, scale: int, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A linear field sampled at the centres ``(g + 1/2) * scale`` of level voxels."""
    return ((grid.double() + 0.5) * scale) @ A + b


def test_voxel_hash_finds_rows_and_reports_empty_and_outside_cells():
    g = torch.tensor([[3, 0, 7], [0, 0, 0], [1, 2, 3]])
    h = VoxelHash(g)
    q = torch.tensor([[1, 2, 3], [0, 0, 0], [3, 0, 7], [1, 1, 1], [-1, 0, 0], [-5, 2, 2], [1 << 22, 0, 0]])
    assert h.find(q).tolist() == [2, 1, 0, -1, -1, -1, -1]
    with pytest.raises(ValueError, match="must lie in"):
        VoxelHash(torch.tensor([[-1, 0, 0]]))


def test_trilinear_reproduces_a_linear_field_exactly_where_the_8_corners_exist():
    rng = np.random.default_rng(0)
    scale = 4  # level 2 of a stride-2 encoder
    # a sparse level: a 6^3 block with holes; queries only where all 8 corners are occupied
    g = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    g = g[rng.random(len(g)) > 0.3]
    grid = torch.from_numpy(g)
    A, b = torch.from_numpy(rng.normal(size=(3, 5))), torch.from_numpy(rng.normal(size=5))
    feat = _linear(grid, scale, A, b)
    table = VoxelHash(grid)
    q = torch.from_numpy(rng.uniform(0, 6 * scale, size=(4000, 3)))
    base = torch.floor(q / scale - 0.5).long()
    full = torch.stack([table.find(base + torch.tensor(d)) >= 0
                        for d in np.ndindex(2, 2, 2)]).all(0)
    assert full.sum() > 100
    out = trilinear_interpolate(table, feat, q[full], scale, chunk=257)  # several chunks
    np.testing.assert_allclose(out.numpy(), (q[full] @ A + b).numpy(), atol=1e-9)


def test_empty_corners_count_as_zero_without_renormalising():
    scale = 2
    grid = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])  # 4 of the 8 corners of the query
    feat = torch.tensor([[1.0], [10.0], [100.0], [1000.0]], dtype=torch.float64)
    # u = q / 2 - 1/2 = (0.25, 0.5, 0.75): corners (0|1, 0|1, 0|1), fractions (0.25, 0.5, 0.75)
    q = torch.tensor([[1.5, 2.0, 2.5]], dtype=torch.float64)
    w = {(0, 0, 0): 0.75 * 0.5 * 0.25, (1, 0, 0): 0.25 * 0.5 * 0.25, (0, 1, 0): 0.75 * 0.5 * 0.25,
         (1, 1, 1): 0.25 * 0.5 * 0.75}
    expected = 1 * w[0, 0, 0] + 10 * w[1, 0, 0] + 100 * w[0, 1, 0] + 1000 * w[1, 1, 1]
    out = trilinear_interpolate(VoxelHash(grid), feat, q, scale)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    # far from every voxel: zero
    assert trilinear_interpolate(VoxelHash(grid), feat, torch.tensor([[40.0, 40.0, 40.0]]).double(), scale).item() == 0


def test_levels_sit_on_grids_2_to_the_l_coarser_and_are_concatenated():
    rng = np.random.default_rng(1)
    g0 = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1).reshape(-1, 3)
    levels, widths = [], [2, 3, 4]
    fields = []
    for lvl, c in enumerate(widths):
        g = np.unique(g0 // (2 ** lvl), axis=0)
        A, b = torch.from_numpy(rng.normal(size=(3, c))), torch.from_numpy(rng.normal(size=c))
        fields.append((A, b))
        grid = torch.from_numpy(g)
        levels.append(SimpleNamespace(feat=_linear(grid, 2 ** lvl, A, b), points=SimpleNamespace(grid_coord=grid)))
    scales = level_scales((2, 2, 2, 2), len(levels))
    assert scales == [1, 2, 4]
    q = torch.from_numpy(rng.uniform(4, 12, size=(500, 3)))  # inside: every corner of every level exists
    out = multilevel_features(SimpleNamespace(levels=levels), q, scales)
    assert out.shape == (500, sum(widths)) and out.dtype == torch.float32
    expected = torch.cat([q @ A + b for A, b in fields], 1).float()
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_point_features_of_the_encoder_at_voxel_centres_equal_level_0():
    from concerto_ros.config import PerceptionConfig
    from concerto_ros.evaluation.interpolate import encoder_levels
    from concerto_ros.models.extractor import FeatureExtractor

    ex = FeatureExtractor.from_config(PerceptionConfig().model)  # seeded random tiny
    rng = np.random.default_rng(2)
    voxel = 0.05
    cells = np.unique(rng.integers(0, 40, size=(3000, 3)), axis=0)
    xyz = ((cells + 0.5) * voxel).astype(np.float32)  # every point at its voxel's centre
    feats = point_features(ex, xyz, voxel)
    assert feats.shape == (len(xyz), 240)  # tiny: every level, 16+32+48+64+80
    from concerto_ros.cloud.voxel import grid_sample

    gs = grid_sample(xyz, voxel)
    out = encoder_levels(ex, xyz[gs.index], gs.grid_coord)
    c0 = out.levels[0].feat.shape[1]
    np.testing.assert_allclose(feats[gs.index, :c0].numpy(), out.levels[0].feat.numpy(), atol=1e-4)  # float32 positions
