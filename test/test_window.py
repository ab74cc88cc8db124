"""VideoPointCloud: sliding window, offsets, per-frame inverse maps, fused voxels, labels."""

import numpy as np
import pytest

from concerto_ros.cloud.voxel import grid_sample
from concerto_ros.cloud.window import VideoPointCloud
from concerto_ros.sensors.types import PointFrame


def make_frame(k, n=None, frame_id="odom", labels=None, seed=None):
    """Frame k: n points in a 1 m cube shifted by 0.5 m * k along x (neighbours overlap)."""
    rng = np.random.default_rng(k if seed is None else seed)
    n = 100 + 10 * k if n is None else n
    pts = (rng.uniform(0, 1, size=(n, 3)) + [0.5 * k, 0.0, 0.0]).astype(np.float32)
    cols = np.full((n, 3), k, dtype=np.uint8)
    return PointFrame(k * 1_000_000, pts, cols, labels=labels, frame_id=frame_id, sensor_frame_id="cam")


def test_sliding_keeps_last_T_frames_and_offsets():
    win = VideoPointCloud(num_frames=3, voxel_size=0.1)
    frames = [make_frame(k) for k in range(5)]  # T + 2 pushes
    for f in frames:
        win.push(f)
    assert len(win) == 3 and win.is_full and win.frame_id == "odom"
    assert [f.stamp_ns for f in win.frames] == [2_000_000, 3_000_000, 4_000_000]
    wc = win.build()
    np.testing.assert_array_equal(wc.stamps_ns, [2_000_000, 3_000_000, 4_000_000])
    np.testing.assert_array_equal(wc.frame_offsets, [0, 120, 250, 390])  # 120, 130, 140 points
    assert wc.num_points == 390 and wc.inverse.shape == (390,) and wc.num_frames == 3
    for i, f in enumerate(frames[2:]):
        inv = wc.frame_inverse(i)
        assert inv.shape == (f.num_points,) and inv.dtype == np.int64
        # each point's voxel row is the voxel containing it
        q = np.floor(f.points / np.array(0.1)).astype(np.int64) - wc.min_coord
        np.testing.assert_array_equal(wc.grid_coord[inv], q)
    assert wc.frame_slice(-1) == slice(250, 390)
    np.testing.assert_array_equal(wc.frame_inverse(-1), wc.frame_inverse(2))
    with pytest.raises(IndexError):
        wc.frame_slice(3)
    # the same as voxelising the concatenation directly
    gs = grid_sample(np.concatenate([f.points for f in frames[2:]]), 0.1)
    np.testing.assert_array_equal(wc.inverse, gs.inverse)
    assert wc.num_voxels == gs.num_voxels


def test_fused_coords_shared_between_frames():
    win = VideoPointCloud(num_frames=2, voxel_size=0.05)
    a = make_frame(0, n=500, seed=7)
    b = PointFrame(1, a.points.copy(), np.full((500, 3), 200, np.uint8), frame_id="odom")  # same scene again
    win.push(a)
    single = win.build()
    win.push(b)
    wc = win.build()
    assert wc.num_voxels == single.num_voxels  # the revisit adds no voxel
    np.testing.assert_array_equal(wc.frame_inverse(0), wc.frame_inverse(1))
    np.testing.assert_array_equal(wc.counts, 2 * single.counts)
    # representatives come from the first (older) frame: coords and colours of frame a
    np.testing.assert_array_equal(wc.coord, a.points[single.index])
    assert wc.coord.dtype == np.float32 and wc.color.dtype == np.uint8
    np.testing.assert_array_equal(wc.color, np.zeros((wc.num_voxels, 3)))
    # every window point lies in the voxel of its representative
    pts = np.concatenate([a.points, b.points])
    np.testing.assert_array_equal(
        np.floor(wc.coord[wc.inverse] / np.array(0.05)), np.floor(pts / np.array(0.05))
    )


def test_labels_majority_and_first():
    pts = np.array([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.03, 0.03, 0.03], [0.5, 0.5, 0.5]], np.float32)
    cols = np.zeros((4, 3), np.uint8)
    labelled = PointFrame(0, pts, cols, labels=np.array([5, 2, 2, -1], np.int32), frame_id="map")
    unlabelled = PointFrame(1, pts[:1].copy(), cols[:1], frame_id="map")
    win = VideoPointCloud(num_frames=2, voxel_size=0.1)
    win.push(labelled)
    win.push(unlabelled)
    wc = win.build()
    assert wc.num_voxels == 2
    np.testing.assert_array_equal(wc.labels, [2, -1])  # 2 beats 5; -1 = nothing labelled
    assert wc.labels.dtype == np.int32
    first = VideoPointCloud(num_frames=2, voxel_size=0.1, label_mode="first")
    first.push(labelled)
    np.testing.assert_array_equal(first.build().labels, [5, -1])
    plain = VideoPointCloud(num_frames=1)
    plain.push(unlabelled)
    assert plain.build().labels is None


def test_errors_clear_and_cache():
    win = VideoPointCloud(num_frames=2)
    with pytest.raises(ValueError, match="empty"):
        win.build()
    win.push(make_frame(0))
    with pytest.raises(ValueError, match="'map'.*'odom'"):
        win.push(make_frame(1, frame_id="map"))
    win.push(make_frame(2))
    with pytest.raises(ValueError, match="older"):
        win.push(make_frame(1))
    wc = win.build()
    assert win.build() is wc  # cached until the next push
    win.push(make_frame(3))
    assert win.build() is not wc
    win.clear()
    assert len(win) == 0 and win.frame_id is None
    win.push(make_frame(0, frame_id="map"))  # a cleared window accepts a new fixed frame
    assert win.build().frame_id == "map"
    with pytest.raises(ValueError):
        VideoPointCloud(num_frames=0)
    with pytest.raises(ValueError):
        VideoPointCloud(num_frames=2, voxel_size=-1.0)
