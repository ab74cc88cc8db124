"""VideoPointCloud kept incrementally equals a full grid_sample of the window; the encoder budget."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concerto_ros.cloud.voxel import grid_sample
from concerto_ros.cloud.window import DROPPED, VideoPointCloud, _majority_labels, nearest_voxels
from concerto_ros.sensors.types import PointFrame


def random_frame(rng, stamp, n, labelled, spread=12, shift=0.0):
    """Points on a coarse lattice (many shared voxels between frames) plus sub-voxel jitter,
    some exactly on voxel faces, negative coordinates included; ``shift`` metres along x."""
    lattice = rng.integers(-spread, spread, size=(n, 3)) * 0.013 + [shift, 0.0, 0.0]
    jitter = rng.choice([0.0, 0.004, 0.011], size=(n, 3)) * rng.random((n, 3))
    pts = (lattice + jitter).astype(np.float32)
    cols = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    labels = rng.integers(-1, 4, size=n).astype(np.int32) if labelled else None
    return PointFrame(stamp, pts, cols, labels=labels, frame_id="odom")


def assert_equals_full_voxelisation(win: VideoPointCloud, mode: str, label_mode: str):
    wc = win.build()
    frames = win.frames
    pts = np.concatenate([f.points for f in frames])
    cols = np.concatenate([f.colors for f in frames])
    gs = grid_sample(pts, win.voxel_size, mode=mode)
    np.testing.assert_array_equal(wc.grid_coord, gs.grid_coord)
    np.testing.assert_array_equal(wc.index, gs.index)
    np.testing.assert_array_equal(wc.inverse, gs.inverse)
    np.testing.assert_array_equal(wc.counts, gs.counts)
    np.testing.assert_array_equal(wc.min_coord, gs.min_coord)
    np.testing.assert_array_equal(wc.coord, pts[gs.index])
    np.testing.assert_array_equal(wc.color, cols[gs.index])
    assert wc.grid_coord.dtype == np.int32 and wc.inverse.dtype == np.int64 and wc.index.dtype == np.int64
    np.testing.assert_array_equal(wc.frame_offsets, np.cumsum([0] + [f.num_points for f in frames]))
    if all(f.labels is None for f in frames):
        assert wc.labels is None
        return
    lab = np.concatenate([f.labels if f.labels is not None else np.full(f.num_points, -1, np.int32) for f in frames])
    want = lab[gs.index] if label_mode == "first" else _majority_labels(gs.inverse, lab, gs.num_voxels)
    np.testing.assert_array_equal(wc.labels, want)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_frames=st.integers(1, 4), pushes=st.integers(1, 9),
       mode=st.sampled_from(["first", "center"]), label_mode=st.sampled_from(["majority", "first"]),
       voxel=st.sampled_from([0.013, 0.02, 0.05]), jump=st.sampled_from([0.0, 0.0, 90.0, 700.0]))
def test_incremental_window_equals_full_grid_sample(seed, num_frames, pushes, mode, label_mode, voxel, jump):
    """Over random push sequences (window wrap-around included, frames of 0..300 points,
    some labelled, frames moving ``jump`` metres per push: re-anchoring of the merge keys and
    windows wider than their span), every build equals grid_sample of the concatenated frames."""
    rng = np.random.default_rng(seed)
    win = VideoPointCloud(num_frames=num_frames, voxel_size=voxel, mode=mode, label_mode=label_mode)
    for k in range(pushes):
        n = int(rng.choice([0, 1, 37, 300])) if k else 120  # the first frame is never empty
        win.push(random_frame(rng, k * 1000, n, labelled=bool(rng.integers(0, 2)), shift=k * jump))
        assert len(win) == min(k + 1, num_frames)
        if win.frames and sum(f.num_points for f in win.frames) > 0:
            assert_equals_full_voxelisation(win, mode, label_mode)


def test_newest_voxels_is_the_newest_frames_grid_sample():
    rng = np.random.default_rng(3)
    win = VideoPointCloud(num_frames=2, voxel_size=0.05)
    assert win.newest_voxels is None
    for k in range(3):
        f = random_frame(rng, k, 200, labelled=False)
        win.push(f)
        nv = win.newest_voxels
        gs = grid_sample(f.points, 0.05)
        np.testing.assert_array_equal(nv.grid.inverse, gs.inverse)
        np.testing.assert_array_equal(nv.ijk, np.floor(f.points[gs.index] / np.float64(0.05)).astype(np.int64))
    win.clear()
    assert win.newest_voxels is None


def line_frame(stamp, xs, pose_x=None):
    """Points on the x axis at ``xs`` metres; camera at ``pose_x`` (None: no pose)."""
    pts = np.zeros((len(xs), 3), np.float32)
    pts[:, 0] = xs
    T = None
    if pose_x is not None:
        T = np.eye(4)
        T[0, 3] = pose_x
    return PointFrame(stamp, pts, np.zeros((len(xs), 3), np.uint8), frame_id="odom", T_fixed_sensor=T,
                      labels=np.arange(len(xs), dtype=np.int32))


def test_budget_keeps_voxels_nearest_the_newest_camera():
    win = VideoPointCloud(num_frames=2, voxel_size=0.1, max_voxels=3)
    win.push(line_frame(0, [0.05, 0.15, 0.25, 0.35, 0.45], pose_x=0.0))
    win.push(line_frame(1, [0.55, 0.65, 0.05], pose_x=0.6))  # the camera moved to x = 0.6
    wc = win.build()
    # 7 distinct voxels at x = 0.05 ... 0.65; the three nearest 0.6 are 0.45, 0.55, 0.65
    assert wc.num_voxels == 3 and wc.num_dropped_voxels == 4
    np.testing.assert_allclose(wc.coord[:, 0], [0.45, 0.55, 0.65], atol=1e-6)
    np.testing.assert_array_equal(wc.min_coord, [4, 0, 0])  # absolute voxel 4 is grid 0
    np.testing.assert_array_equal(wc.grid_coord[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(wc.inverse, [DROPPED, DROPPED, DROPPED, DROPPED, 0, 1, 2, DROPPED])
    np.testing.assert_array_equal(wc.counts, [1, 1, 1])
    np.testing.assert_array_equal(wc.index, [4, 5, 6])  # window-order point indices
    np.testing.assert_array_equal(wc.labels, [4, 0, 1])
    # per-point values of a frame: dropped points get the fill value
    np.testing.assert_array_equal(wc.frame_values(np.array([10, 11, 12]), -1, fill=-7), [11, 12, -7])
    np.testing.assert_array_equal(wc.frame_values(np.array([10, 11, 12]), 0, fill=-7), [-7, -7, -7, -7, 10])
    with pytest.raises(ValueError, match="one per voxel"):
        wc.frame_values(np.zeros(5), 0)


def test_budget_without_pose_uses_the_newest_centroid_and_ties_by_row():
    win = VideoPointCloud(num_frames=1, voxel_size=0.25, max_voxels=2)
    win.push(line_frame(0, [0.125, 0.375, 0.625]))  # no pose: centroid x = 0.375
    wc = win.build()
    # 0.375 is nearest; 0.125 and 0.625 tie at 0.25 m: the lower row (x = 0.125) is kept
    np.testing.assert_array_equal(wc.coord[:, 0], [0.125, 0.375])
    np.testing.assert_array_equal(wc.inverse, [0, 1, DROPPED])
    np.testing.assert_array_equal(nearest_voxels(np.zeros((4, 3)), np.zeros(3), 2), [0, 1])
    # under the budget nothing is dropped and the result is the plain window
    roomy = VideoPointCloud(num_frames=1, voxel_size=0.25, max_voxels=3)
    roomy.push(line_frame(0, [0.125, 0.375, 0.625]))
    assert roomy.build().num_dropped_voxels == 0 and roomy.build().num_voxels == 3
    with pytest.raises(ValueError, match="max_voxels"):
        VideoPointCloud(num_frames=1, max_voxels=-1)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), budget=st.integers(1, 60), label_mode=st.sampled_from(["majority", "first"]))
def test_budget_is_the_full_window_restricted_to_the_nearest_voxels(seed, budget, label_mode):
    rng = np.random.default_rng(seed)
    full = VideoPointCloud(num_frames=3, voxel_size=0.02, label_mode=label_mode)
    cut = VideoPointCloud(num_frames=3, voxel_size=0.02, label_mode=label_mode, max_voxels=budget)
    for k in range(4):
        f = random_frame(rng, k, 80, labelled=True, spread=6)
        f.T_fixed_sensor = np.eye(4)
        f.T_fixed_sensor[:3, 3] = rng.uniform(-0.1, 0.1, 3)
        full.push(f)
        cut.push(f)
    a, b = full.build(), cut.build()
    keep = nearest_voxels(a.coord, full.frames[-1].T_fixed_sensor[:3, 3], budget)
    assert b.num_voxels == min(budget, a.num_voxels) and b.num_dropped_voxels == a.num_voxels - b.num_voxels
    remap = np.full(a.num_voxels, DROPPED)
    remap[keep] = np.arange(keep.shape[0])
    np.testing.assert_array_equal(b.inverse, remap[a.inverse])
    for name in ("coord", "color", "index", "counts"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name)[keep], err_msg=name)
    np.testing.assert_array_equal(b.grid_coord + b.min_coord, (a.grid_coord + a.min_coord)[keep])
    assert (b.grid_coord.min(axis=0) == 0).all()
    np.testing.assert_array_equal(b.labels, a.labels[keep])


def test_merge_falls_back_when_positions_do_not_fit_the_key(monkeypatch):
    """With more frame voxels than the packed key has position bits for, the wide path is
    taken and the result is still the full re-voxelisation."""
    import concerto_ros.cloud.window as window

    monkeypatch.setattr(window, "_KEY_AXIS_BITS", 20)  # 60 key bits leave 3 for positions
    monkeypatch.setattr(window, "_KEY_SPAN", 1 << 20)
    rng = np.random.default_rng(5)
    win = VideoPointCloud(num_frames=2, voxel_size=0.02)
    for k in range(3):
        win.push(random_frame(rng, k, 50, labelled=False))
    assert win._keys is not None  # anchored keys exist, but 100 voxels need 7 position bits
    assert_equals_full_voxelisation(win, "first", "majority")
