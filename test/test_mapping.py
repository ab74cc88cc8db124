"""SemanticVoxelMap: keys, geometry integration, fusion arithmetic, versions, snapshots."""

import numpy as np
import pytest

from concerto_ros.cloud.voxel import grid_sample
from concerto_ros.cloud.window import VideoPointCloud
from concerto_ros.mapping import SemanticVoxelMap
from concerto_ros.mapping import fusion
from concerto_ros.mapping.keys import (INDEX_MAX, INDEX_MIN, NEIGHBOUR_DELTAS, NEIGHBOUR_OFFSETS, pack_keys,
                                       unpack_keys, voxel_indices)
from concerto_ros.sensors.types import PointFrame

V = 0.1  # voxel size of the hand-made cases: voxel (i, j, k) has its centre at (i + 0.5) * 0.1 m


def at(*ijk):
    """A point inside voxel ``ijk`` (its centre), float32."""
    return ((np.array(ijk, dtype=np.float64) + 0.5) * V).astype(np.float32)


def cloud(*voxels):
    return np.stack([at(*v) for v in voxels])


def rgb(*rows):
    return np.array(rows, dtype=np.uint8)


# ------------------------------------------------------------------------------- keys
def test_keys_round_trip_order_neighbours_and_range():
    ijk = np.array([[INDEX_MIN, 0, INDEX_MAX], [-1, -1, -1], [0, 0, 0], [0, 0, 1], [0, 1, -5], [3, -2, 7]])
    keys = pack_keys(ijk)
    np.testing.assert_array_equal(unpack_keys(keys), ijk)
    assert (keys >= 0).all()
    assert (np.diff(keys) > 0).all()  # keys sort like (i, j, k) lexicographically
    base = np.array([[5, -7, 11]])
    np.testing.assert_array_equal(pack_keys(base + NEIGHBOUR_OFFSETS) - pack_keys(base)[0], NEIGHBOUR_DELTAS)
    assert NEIGHBOUR_OFFSETS.shape == (13, 3)
    np.testing.assert_array_equal(voxel_indices(np.array([[-0.01, 0.0, 0.199]]), V), [[-1, 0, 1]])
    with pytest.raises(ValueError, match="key range"):
        voxel_indices(np.array([[(INDEX_MAX + 1) * 0.02 + 0.001, 0, 0]]), 0.02)
    with pytest.raises(ValueError, match="key range"):
        voxel_indices(np.array([[0, -1e9, 0]]), 0.02)
    with pytest.raises(ValueError, match="NaN"):
        voxel_indices(np.array([[np.nan, 0, 0]]), 0.02)


# ------------------------------------------------------------------------------- geometry
def test_integrate_geometry_running_colour_counts_and_stamps():
    m = SemanticVoxelMap(V, "odom")
    pts = cloud((0, 0, 0), (0, 0, 0), (2, 0, 0))
    pts[1] += 0.01  # same voxel, another point
    created = m.integrate_geometry(pts, rgb([10, 20, 30], [30, 40, 50], [200, 0, 0]), 100, [0, 0, 0])
    assert created == 2 and len(m) == 2
    np.testing.assert_array_equal(m.ijk(), [[0, 0, 0], [2, 0, 0]])
    np.testing.assert_allclose(m.coords(), [[0.05, 0.05, 0.05], [0.25, 0.05, 0.05]], atol=1e-7)
    np.testing.assert_array_equal(m.colors(), [[20, 30, 40], [200, 0, 0]])  # mean of the frame's points
    # second frame: voxel 0 observed again with mean (41, 60, 80) -> running mean over observations
    created = m.integrate_geometry(cloud((0, 0, 0), (1, 0, 0)), rgb([41, 60, 80], [7, 7, 7]), 250, [0, 0, 0])
    assert created == 1 and len(m) == 3
    np.testing.assert_array_equal(m.colors(), [[30, 45, 60], [200, 0, 0], [7, 7, 7]])  # (20 + 41) / 2 = 30.5 -> 30
    np.testing.assert_array_equal(m.observations(), [2, 1, 1])
    np.testing.assert_array_equal(m.first_seen(), [100, 100, 250])
    np.testing.assert_array_equal(m.last_seen(), [250, 100, 250])
    assert m.observations().dtype == np.uint32 and m.colors().dtype == np.uint8
    np.testing.assert_array_equal(m.rows_of(pack_keys([[1, 0, 0], [9, 9, 9]])), [2, -1])
    st = m.stats()
    assert st.num_voxels == 3 and st.frames_integrated == 2 and st.version == 2 and st.bytes_used > 0


def test_integrate_with_the_windows_grid_equals_own_voxelisation():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (2000, 3)).astype(np.float32)
    col = rng.integers(0, 256, (2000, 3), dtype=np.uint8)
    a, b = SemanticVoxelMap(0.05, "odom"), SemanticVoxelMap(0.05, "odom")
    a.integrate_geometry(pts, col, 1, [0, 0, 0])
    win = VideoPointCloud(2, 0.05)
    win.push(PointFrame(1, pts, col, frame_id="odom", T_fixed_sensor=np.eye(4)))
    b.integrate_frame(win.frames[-1], grid=win.newest_voxels.grid)
    np.testing.assert_array_equal(a.keys(), b.keys())
    np.testing.assert_array_equal(a.colors(), b.colors())
    with pytest.raises(ValueError, match="grid"):
        a.integrate_geometry(pts, col, 2, [0, 0, 0], grid=grid_sample(pts, 0.1))
    with pytest.raises(ValueError, match="colors"):
        a.integrate_geometry(pts, col[:5], 2, [0, 0, 0])
    with pytest.raises(ValueError, match="sensor_origin"):
        a.integrate_geometry(pts, col, 2, [0, np.nan, 0])
    with pytest.raises(ValueError, match="'map'"):
        a.integrate_frame(PointFrame(1, pts, col, frame_id="map"))


# ------------------------------------------------------------------------------- fusion
def semantic_map():
    m = SemanticVoxelMap(V, "odom", class_names=["floor", "chair"])
    m.integrate_geometry(cloud((0, 0, 0), (1, 0, 0), (2, 0, 0)), rgb([0, 0, 0], [0, 0, 0], [0, 0, 0]), 1, [0, 0, 0])
    return m


def test_fusion_is_a_confidence_weighted_running_mean():
    m = semantic_map()
    r = m.fuse(10, np.array([1.0, 0.5], np.float32), coords=cloud((0, 0, 0), (1, 0, 0)),
               class_probs=np.array([[0.8, 0.2], [0.4, 0.6]], np.float32),
               embeddings=np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    assert (r.fused, r.missing, r.classes_reset) == (2, 0, False)
    # voxel 0 again with weight 3 and the one-hot label "chair": (1*[.8,.2] + 3*[0,1]) / 4
    m.fuse(20, np.array([3.0], np.float32), coords=cloud((0, 0, 0)), labels=np.array([1]),
           embeddings=np.array([[0, 1, 0]], np.float32))
    np.testing.assert_allclose(m.class_probs(), [[0.2, 0.8], [0.4, 0.6], [0, 0]], atol=1e-6)
    np.testing.assert_array_equal(m.labels(), [1, 1, -1])  # -1: nothing fused
    np.testing.assert_allclose(m.confidence(), [0.8, 0.6, 0.0], atol=1e-6)
    # embedding: (1*[1,0,0] + 3*[0,1,0]) / 4 renormalised = [1, 3, 0] / sqrt(10)
    emb = m.embeddings()
    np.testing.assert_allclose(emb[0], np.array([1, 3, 0]) / np.sqrt(10), atol=2e-3)  # float16 storage
    np.testing.assert_allclose(emb[1], [0, 1, 0], atol=1e-6)
    np.testing.assert_array_equal(emb[2], [0, 0, 0])
    np.testing.assert_allclose(np.linalg.norm(emb[:2], axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(m.semantic_observations(), [2, 1, 0])
    np.testing.assert_array_equal(m.embedding_rows(), [0, 1])
    assert m.embedding_dim == 3 and m.stats().semantic_voxels == 2


def test_zero_confidence_missing_voxels_and_a_coarser_map():
    m = semantic_map()
    m.fuse(1, np.array([2.0], np.float32), coords=cloud((2, 0, 0)), class_probs=np.array([[0.9, 0.1]], np.float32))
    r = m.fuse(2, np.array([0.0, 1.0], np.float32), coords=cloud((2, 0, 0), (7, 7, 7)),
               class_probs=np.array([[0.0, 1.0], [0.5, 0.5]], np.float32))
    assert r.missing == 1 and r.fused == 0 and m.stats().fuse_missing == 1
    np.testing.assert_allclose(m.class_probs()[2], [0.9, 0.1], atol=1e-6)  # zero weight: unchanged
    np.testing.assert_array_equal(m.semantic_observations(), [0, 0, 1])
    assert m.updated_since(m.version - 1).shape == (0,)
    m.fuse(3, np.zeros(1, np.float32), coords=cloud((0, 0, 0)), embeddings=np.ones((1, 4), np.float32))
    assert m.embedding_rows().shape == (0,) and not m.embeddings([0]).any()
    # a map with 0.2 m voxels: the window's 0.1 m voxels (0,0,0) and (1,0,0) share map voxel (0,0,0);
    # fusing them together equals fusing them one after the other
    together, one_by_one = (SemanticVoxelMap(0.2, "odom", class_names=["a", "b"]) for _ in range(2))
    pts = cloud((0, 0, 0), (1, 0, 0))
    for mm in (together, one_by_one):
        mm.integrate_geometry(pts, rgb([0, 0, 0], [0, 0, 0]), 1, [0, 0, 0])
    probs = np.array([[1.0, 0.0], [0.25, 0.75]], np.float32)
    emb = np.array([[1, 0], [0, 1]], np.float32)
    conf = np.array([1.0, 3.0], np.float32)
    r = together.fuse(5, conf, coords=pts, class_probs=probs, embeddings=emb)
    assert r.fused == 1 and len(together) == 1
    for i in range(2):
        one_by_one.fuse(5, conf[i:i + 1], coords=pts[i:i + 1], class_probs=probs[i:i + 1], embeddings=emb[i:i + 1])
    np.testing.assert_allclose(together.class_probs(), [[(1 + 0.75) / 4, 2.25 / 4]], atol=1e-6)
    np.testing.assert_allclose(together.class_probs(), one_by_one.class_probs(), atol=1e-6)
    np.testing.assert_allclose(together.embeddings(), one_by_one.embeddings(), atol=2e-3)
    np.testing.assert_allclose(together.embeddings(), [np.array([1, 3]) / np.sqrt(10)], atol=2e-3)


def test_a_new_class_list_resets_the_class_part_with_a_message():
    notes = []
    m = SemanticVoxelMap(V, "odom", class_names=["floor", "chair"], log=notes.append)
    m.integrate_geometry(cloud((0, 0, 0)), rgb([0, 0, 0]), 1, [0, 0, 0])
    m.fuse(1, np.ones(1, np.float32), coords=cloud((0, 0, 0)), class_probs=np.array([[0.3, 0.7]], np.float32),
           embeddings=np.array([[0.0, 1.0]], np.float32))
    r = m.fuse(2, np.ones(1, np.float32), coords=cloud((0, 0, 0)), labels=np.array([2]),
               class_names=["floor", "chair", "red mug"])
    assert r.classes_reset and m.class_names == ("floor", "chair", "red mug")
    assert len(notes) == 1 and "['floor', 'chair']" in notes[0] and "red mug" in notes[0] and "1 voxels" in notes[0]
    np.testing.assert_allclose(m.class_probs(), [[0, 0, 1]])  # only the fusion after the reset counts
    np.testing.assert_allclose(m.embeddings(), [[0, 1]])  # embeddings are not touched
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        m.fuse(3, np.ones(1, np.float32), coords=cloud((0, 0, 0)), class_probs=np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match="2-d"):
        m.fuse(3, np.ones(1, np.float32), coords=cloud((0, 0, 0)), embeddings=np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="exactly one"):
        m.fuse(3, np.ones(1, np.float32))
    with pytest.raises(ValueError, match="confidence"):
        m.fuse(3, -np.ones(1, np.float32), coords=cloud((0, 0, 0)))
    with pytest.raises(ValueError, match="labels"):
        m.fuse(3, np.ones(1, np.float32), coords=cloud((0, 0, 0)), labels=np.array([3]))


def test_fuse_window_uses_the_windows_exact_voxels():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, (3000, 3)).astype(np.float32)
    frame = PointFrame(7, pts, np.zeros((3000, 3), np.uint8), frame_id="odom")
    win = VideoPointCloud(1, 0.05)
    win.push(frame)
    wc = win.build()
    m = SemanticVoxelMap(0.05, "odom", class_names=["a", "b"])
    m.integrate_frame(frame)
    np.testing.assert_array_equal(m.window_keys(wc), pack_keys(np.floor(wc.coord / np.float64(0.05)).astype(int)))
    r = m.fuse_window(wc, np.ones(wc.num_voxels, np.float32), labels=np.ones(wc.num_voxels, np.int64))
    assert r.fused == wc.num_voxels == len(m) and r.missing == 0
    assert (m.labels() == 1).all() and m.stats().fusions == 1


def test_row_kernels_match_numpy_over_many_threaded_chunks(monkeypatch):
    monkeypatch.setattr(fusion, "CHUNK_BYTES", 4 * 16 * 7)  # 7 rows per chunk
    rng = np.random.default_rng(2)
    store = rng.standard_normal((300, 16)).astype(np.float16)
    rows = rng.permutation(300)[:200]
    values = rng.standard_normal((200, 16)).astype(np.float32)
    blend = rng.random(200).astype(np.float32)
    want = store.astype(np.float32)
    want[rows] += blend[:, None] * (values - want[rows])
    fusion.lerp_rows(store, rows, values, blend, threads=3)
    np.testing.assert_allclose(store.astype(np.float32), want, atol=2e-3, rtol=2e-3)
    fusion.assign_rows(store, rows, values, threads=2)
    np.testing.assert_array_equal(store[rows], values.astype(np.float16))
    weight = np.array([0.0, 1.0, 3.0], np.float32)
    np.testing.assert_allclose(fusion.blend_weights(weight, np.array([0, 2]), np.array([0.0, 1.0], np.float32)),
                               [0.0, 0.25])
    np.testing.assert_array_equal(weight, [0.0, 1.0, 4.0])


# ------------------------------------------------------------------------------- reads
def test_versions_updated_since_select_box_and_snapshot():
    m = semantic_map()
    v0 = m.version
    m.fuse(5, np.ones(1, np.float32), coords=cloud((1, 0, 0)), labels=np.array([0]),
           embeddings=np.array([[0, 0, 1]], np.float32))
    v1 = m.version
    m.integrate_geometry(cloud((2, 0, 0)), rgb([10, 20, 30]), 6, [0, 0, 0])
    np.testing.assert_array_equal(m.updated_since(v0), [1])
    np.testing.assert_array_equal(m.updated_since(v1), [])
    np.testing.assert_array_equal(m.updated_since(v1, "geometry"), [2])
    np.testing.assert_array_equal(m.select_box([0.1, 0, 0], [0.3, 0.1, 0.1]), [1, 2])
    with pytest.raises(ValueError, match="kind"):
        m.updated_since(0, "colour")
    snap = m.snapshot(since=v0, embeddings=True)
    assert len(snap) == 1 and snap.version == m.version and snap.class_names == ("floor", "chair")
    np.testing.assert_array_equal(snap.ijk, [[1, 0, 0]])
    np.testing.assert_allclose(snap.embeddings, [[0, 0, 1]])
    np.testing.assert_array_equal(snap.labels, [0])
    full = m.snapshot()
    assert len(full) == 3 and full.embeddings is None
    np.testing.assert_array_equal(full.colors[2], [5, 10, 15])  # second observation of a black voxel
    assert len(m.snapshot(box=([0.2, 0, 0], [1, 1, 1]), semantic_only=True)) == 0
    with pytest.raises(IndexError):
        m.coords([5])
    m.clear()
    assert len(m) == 0 and m.rows_of(pack_keys([[1, 0, 0]]))[0] == -1


def test_unit_rows_renormalise_in_float32_or_float16(monkeypatch):
    monkeypatch.setattr(fusion, "CHUNK_BYTES", 4 * 3 * 2)  # 2 rows per chunk
    store = np.array([[3, 4, 0], [0, 0, 0], [0, 0, 2], [1, 1, 1]], np.float16)
    rows = np.array([3, 0, 1, 2])
    want = np.array([[1, 1, 1] / np.sqrt(3), [0.6, 0.8, 0], [0, 0, 0], [0, 0, 1]])
    got = fusion.unit_rows(store, rows, np.float32, threads=2)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    half = fusion.unit_rows(store, rows, np.float16, threads=1)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), want, atol=1e-3)
    with pytest.raises(ValueError, match="float16/float32"):
        fusion.unit_rows(store, rows, np.int8)
