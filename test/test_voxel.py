"""grid_sample: Pointcept GridSample semantics, inverse maps, determinism, fallbacks."""

import numpy as np
import pytest

from concerto_ros.cloud.voxel import grid_sample


def reference(points, voxel):
    """Pointcept-style reference: floor(coord / grid_size) in float64, unique rows."""
    q = np.floor(points / np.array(voxel)).astype(np.int64)
    mn = q.min(0)
    q -= mn
    uniq, index, inverse, counts = np.unique(q, axis=0, return_index=True, return_inverse=True, return_counts=True)
    return uniq, index, inverse.reshape(-1), counts, mn


def test_known_tiny_example():
    pts = np.array(
        [
            [0.010, 0.010, 0.010],  # voxel (0,0,0) -> grid (1,0,0), exactly at the centre
            [0.015, 0.005, 0.019],  # voxel (0,0,0)
            [0.030, 0.000, 0.000],  # voxel (1,0,0) -> grid (2,0,0)
            [-0.010, 0.000, 0.000],  # voxel (-1,0,0) -> grid (0,0,0)
            [0.031, 0.001, 0.000],  # voxel (1,0,0), nearer to its centre than point 2
        ],
        dtype=np.float32,
    )
    gs = grid_sample(pts, 0.02)
    np.testing.assert_array_equal(gs.grid_coord, [[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    np.testing.assert_array_equal(gs.index, [3, 0, 2])
    np.testing.assert_array_equal(gs.inverse, [1, 1, 2, 0, 2])
    np.testing.assert_array_equal(gs.counts, [1, 2, 2])
    np.testing.assert_array_equal(gs.min_coord, [-1, 0, 0])
    assert gs.grid_coord.dtype == np.int32 and gs.index.dtype == np.int64 and gs.inverse.dtype == np.int64
    assert gs.num_voxels == 3 and gs.num_points == 5

    center = grid_sample(pts, 0.02, mode="center")
    np.testing.assert_array_equal(center.index, [3, 0, 4])
    np.testing.assert_array_equal(center.inverse, gs.inverse)


def test_matches_pointcept_reference_and_round_trip():
    rng = np.random.default_rng(0)
    pts = (rng.normal(size=(20000, 3)) * [1.5, 0.7, 2.0] + [3.0, -1.0, 0.5]).astype(np.float32)
    gs = grid_sample(pts, 0.05)
    uniq, index, inverse, counts, mn = reference(pts, 0.05)
    np.testing.assert_array_equal(gs.grid_coord, uniq)
    np.testing.assert_array_equal(gs.index, index)
    np.testing.assert_array_equal(gs.inverse, inverse)
    np.testing.assert_array_equal(gs.counts, counts)
    np.testing.assert_array_equal(gs.min_coord, mn)

    # every point maps to the voxel that contains it; its representative is in the same voxel
    q = np.floor(pts / np.array(0.05)).astype(np.int64) - gs.min_coord
    np.testing.assert_array_equal(gs.grid_coord[gs.inverse], q)
    np.testing.assert_array_equal(q[gs.index][gs.inverse], q)
    # one representative per voxel, grid min 0, counts add up
    assert np.unique(gs.grid_coord, axis=0).shape[0] == gs.num_voxels
    np.testing.assert_array_equal(gs.grid_coord.min(0), [0, 0, 0])
    assert gs.counts.sum() == len(pts)
    np.testing.assert_array_equal(np.bincount(gs.inverse), gs.counts)
    # "first": the representative is the smallest index of its voxel
    first = np.full(gs.num_voxels, len(pts))
    np.minimum.at(first, gs.inverse, np.arange(len(pts)))
    np.testing.assert_array_equal(gs.index, first)


def test_center_mode_picks_nearest_to_voxel_centre():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, size=(3000, 3)).astype(np.float32)
    gs = grid_sample(pts, 0.25, mode="center")
    scaled = pts / np.array(0.25)
    d2 = ((scaled - np.floor(scaled) - 0.5) ** 2).sum(1)
    for v in range(gs.num_voxels):
        members = np.flatnonzero(gs.inverse == v)
        assert gs.index[v] == members[np.argmin(d2[members])]


def test_deterministic_and_batched_concatenation():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 2, size=(4000, 3)).astype(np.float32)
    b = rng.uniform(1, 3, size=(4000, 3)).astype(np.float32)
    g1 = grid_sample(a, 0.1)
    g2 = grid_sample(a.copy(), 0.1)
    for f in ("grid_coord", "index", "inverse", "counts"):
        np.testing.assert_array_equal(getattr(g1, f), getattr(g2, f))
    both = np.concatenate([a, b, a])
    gb = grid_sample(both, 0.1)
    # the third block repeats the first: same voxels
    np.testing.assert_array_equal(gb.inverse[:4000], gb.inverse[8000:])
    # representatives are never from the repeated block (first occurrence wins)
    assert gb.index.max() < 8000
    uniq, index, inverse, counts, _ = reference(both, 0.1)
    np.testing.assert_array_equal(gb.inverse, inverse)


@pytest.mark.parametrize("extent", [262.0, 2.0e4])  # 54-bit keys (argsort path), >62-bit (lexsort path)
def test_huge_extents_fallback(extent):
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, extent, size=(2000, 3))
    pts[:10] = pts[10:20]  # guaranteed shared voxels
    gs = grid_sample(pts, 0.001)
    uniq, index, inverse, counts, _ = reference(pts, 0.001)
    np.testing.assert_array_equal(gs.grid_coord, uniq)
    np.testing.assert_array_equal(gs.index, index)
    np.testing.assert_array_equal(gs.inverse, inverse)
    np.testing.assert_array_equal(gs.counts, counts)


def test_edge_cases_and_errors():
    empty = grid_sample(np.zeros((0, 3), np.float32), 0.02)
    assert empty.num_voxels == 0 and empty.inverse.shape == (0,) and empty.grid_coord.shape == (0, 3)
    one = grid_sample(np.array([[1.0, 2.0, 3.0]], np.float32), 0.5)
    np.testing.assert_array_equal(one.grid_coord, [[0, 0, 0]])
    np.testing.assert_array_equal(one.min_coord, [2, 4, 6])
    with pytest.raises(ValueError, match="NaN"):
        grid_sample(np.array([[0, 0, np.nan]], np.float32), 0.02)
    with pytest.raises(ValueError, match="voxel_size"):
        grid_sample(np.zeros((2, 3), np.float32), 0.0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        grid_sample(np.zeros((2, 2), np.float32), 0.02)
    with pytest.raises(ValueError, match="too large"):
        grid_sample(np.array([[0.0, 0.0, 0.0], [1.0e9, 0.0, 0.0]]), 0.001)
    with pytest.raises(ValueError, match="mode"):
        grid_sample(np.zeros((2, 3), np.float32), 0.02, mode="random")


def test_large_input_beyond_scratch_buffers():
    # more points than the per-thread scratch buffers hold (long windows): same semantics
    rng = np.random.default_rng(4)
    pts = rng.uniform(0, 4, size=(600_000, 3)).astype(np.float32)
    gs = grid_sample(pts, 0.1)
    q = np.floor(pts / np.array(0.1)).astype(np.int64) - gs.min_coord
    np.testing.assert_array_equal(gs.grid_coord[gs.inverse], q)
    dims = q.max(0) + 1
    assert gs.num_voxels == np.unique((q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]).size
    assert gs.counts.sum() == len(pts)
    first = np.full(gs.num_voxels, len(pts))
    np.minimum.at(first, gs.inverse, np.arange(len(pts)))
    np.testing.assert_array_equal(gs.index, first)
    g = gs.grid_coord.astype(np.int64)
    keys = (g[:, 0] * dims[1] + g[:, 1]) * dims[2] + g[:, 2]
    assert np.all(np.diff(keys) > 0)  # rows sorted by the ravelled key
