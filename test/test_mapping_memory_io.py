"""SemanticVoxelMap: eviction order and bound, save/load round trip and refusals, PLY export."""

import json

import numpy as np
import pytest

from concerto_ros.mapping import MapIdentity, MapMismatchError, SemanticVoxelMap
from concerto_ros.mapping.eviction import select_evictions
from concerto_ros.mapping.keys import pack_keys


def line(xs, v=1.0):
    """One point in each voxel (x, 0, 0) of edge ``v`` metres for x in ``xs``."""
    pts = np.zeros((len(xs), 3), np.float32)
    pts[:, 0] = (np.asarray(xs, dtype=np.float64) + 0.5) * v
    pts[:, 1:] = 0.5 * v
    return pts


def grey(n, value=0):
    return np.full((n, 3), value, np.uint8)


def test_select_evictions_radius_first_then_farthest_then_oldest():
    dist2 = np.array([1.0, 25.0, 4.0, 9.0, 9.0, 0.0, 9.0])
    last = np.array([5, 5, 5, 3, 1, 5, 2])
    rows, n_out = select_evictions(dist2, last, radius=4.5, target=0)  # 25 > 4.5^2: only row 1
    np.testing.assert_array_equal(rows, [1])
    assert n_out == 1
    # keep 4: row 1 (beyond the radius), then 2 of the farthest inside (9.0 x 3): the oldest, rows 4 and 6
    rows, n_out = select_evictions(dist2, last, radius=4.5, target=4)
    np.testing.assert_array_equal(rows, [1, 4, 6])
    assert n_out == 1
    rows, n_out = select_evictions(dist2, last, radius=0.0, target=2)  # no radius: 25, then the 9s, then 4
    np.testing.assert_array_equal(rows, [1, 2, 3, 4, 6])
    assert n_out == 0
    rows, _ = select_evictions(dist2, last, radius=0.0, target=10)
    assert rows.shape == (0,)


def test_map_count_bound_is_amortised_and_keeps_rows_consistent():
    m = SemanticVoxelMap(1.0, "odom", max_voxels=10, evict_slack=0.2, class_names=["a", "b"])
    m.integrate_geometry(line(range(12)), grey(12, 7), 100, [0, 0, 0])  # 12 = 1.2 x 10: no eviction yet
    assert len(m) == 12 and m.stats().evictions == 0
    m.fuse(100, np.ones(12, np.float32), keys=pack_keys([[x, 0, 0] for x in range(12)]), labels=np.arange(12) % 2)
    m.integrate_geometry(line([12]), grey(1, 9), 200, [0, 0, 0])  # 13 > 12: evict down to 0.8 x 10, farthest first
    st = m.stats()
    assert len(m) == 8 and st.evicted_count == 5 and st.evicted_radius == 0
    np.testing.assert_array_equal(np.sort(m.ijk()[:, 0]), np.arange(8))
    # rows were compacted: every attribute moved with its voxel and the key index follows
    np.testing.assert_array_equal(m.rows_of(m.keys()), np.arange(8))
    np.testing.assert_array_equal(m.labels(), m.ijk()[:, 0] % 2)
    np.testing.assert_array_equal(m.colors(), grey(8, 7))
    assert m.stats().bytes_used > 0 and m.stats().capacity >= 8


def test_stats_wait_for_the_map_lock_and_read_one_consistent_state():
    """The node's diagnostics timer reads stats() while the integration thread appends and
    evicts: stats() takes the map's lock (a soak saw two columns of different lengths)."""
    import threading

    m = SemanticVoxelMap(1.0, "odom", max_voxels=10, evict_slack=0.2, class_names=["a", "b"])
    m.integrate_geometry(line(range(12)), grey(12, 7), 100, [0, 0, 0])
    got = []
    with m.lock:  # another thread mid-update
        reader = threading.Thread(target=lambda: got.append(m.stats()))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive() and not got  # waits for the update to finish
        m.integrate_geometry(line([12]), grey(1, 9), 200, [0, 0, 0])  # evicts down to 8
    reader.join(5.0)
    assert got[0].num_voxels == 8 and got[0].evicted_count == 5


def test_map_radius_bound_around_the_newest_origin():
    m = SemanticVoxelMap(1.0, "odom", radius=5.0, evict_slack=0.05)
    m.integrate_geometry(line(range(10)), grey(10), 1, [0, 0, 0])  # centres 0.5 .. 9.5 m from the origin
    assert m.stats().evicted_radius == 5  # 5.5 .. 9.5 m (with y = z = 0.5: sqrt(x^2 + 0.5)) are beyond 5 m
    np.testing.assert_array_equal(np.sort(m.ijk()[:, 0]), np.arange(5))
    m.integrate_geometry(line([20]), grey(1), 2, [20, 0, 0])  # the sensor moved: the old voxels go
    np.testing.assert_array_equal(m.ijk()[:, 0], [20])
    assert m.stats().evicted_radius == 10 and m.stats().evictions == 10
    with pytest.raises(ValueError):
        SemanticVoxelMap(1.0, "odom", radius=-1.0)


def filled_map():
    m = SemanticVoxelMap(0.1, "odom", class_names=["floor", "chair"], model_id="sha256:abc",
                         text_encoder="sentence-transformers", text_model="", temperature=0.05)
    pts = line(range(-3, 4), 0.1)
    m.integrate_geometry(pts, np.arange(21, dtype=np.uint8).reshape(7, 3) * 10, 1_000, [0, 0, 0])
    m.integrate_geometry(pts[:2], grey(2, 100), 2_000, [0, 0, 0])
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], size=5).astype(np.float32)
    emb = rng.standard_normal((5, 8)).astype(np.float32)
    m.fuse(2_000, np.linspace(0.2, 1, 5).astype(np.float32), coords=pts[:5], class_probs=probs, embeddings=emb)
    return m


def test_save_load_round_trip(tmp_path):
    m = filled_map()
    path = m.save(tmp_path / "maps" / "map.npz")
    assert path.name == "map.npz" and path.is_file()
    loaded = SemanticVoxelMap.load(path, expect=m.identity, max_voxels=100)
    assert loaded.identity == m.identity and loaded.identity.text_dim == 8 and loaded.max_voxels == 100
    for read in ("keys", "ijk", "coords", "colors", "observations", "semantic_observations", "first_seen",
                 "last_seen", "class_probs", "labels", "confidence", "embeddings"):
        np.testing.assert_array_equal(getattr(loaded, read)(), getattr(m, read)(), err_msg=read)
    np.testing.assert_array_equal(loaded.rows_of(m.keys()), np.arange(len(m)))
    a, b = m.stats(), loaded.stats()
    assert (b.frames_integrated, b.fusions, b.num_voxels, b.semantic_voxels) == (2, 1, 7, 5)
    assert (a.frames_integrated, a.fusions) == (b.frames_integrated, b.fusions)
    np.testing.assert_array_equal(loaded.updated_since(0), np.arange(5))  # loaded semantics count as updated
    # the loaded map keeps working
    loaded.integrate_geometry(line([9], 0.1), grey(1), 3_000, [0, 0, 0])
    assert len(loaded) == 8


def test_load_refuses_a_mismatched_map_naming_every_difference(tmp_path):
    path = filled_map().save(tmp_path / "map.npz")
    expect = MapIdentity(0.05, "map", "sha256:def", "open_clip", "ViT-B-32", 512, 0.05, ("floor", "chair"))
    with pytest.raises(MapMismatchError) as err:
        SemanticVoxelMap.load(path, expect=expect)
    msg = str(err.value)
    for part in ("voxel_size: map 0.1, expected 0.05", "fixed_frame: map 'odom', expected 'map'",
                 "model_id: map 'sha256:abc', expected 'sha256:def'",
                 "text_encoder: map 'sentence-transformers', expected 'open_clip'",
                 "text_model: map '', expected 'ViT-B-32'", "text_dim: map 8, expected 512"):
        assert part in msg, part
    assert "temperature" not in msg and "class_names" not in msg and str(path) in msg
    assert isinstance(err.value, ValueError)
    ok = MapIdentity(0.1, "odom", "sha256:abc", "sentence-transformers", "", 8, 0.05, ("wall",))
    with pytest.raises(MapMismatchError, match=r"class_names: map \['floor', 'chair'\], expected \['wall'\]"):
        SemanticVoxelMap.load(path, expect=ok)
    assert len(SemanticVoxelMap.load(path, expect=ok, ignore=("class_names",))) == 7


def test_load_refuses_newer_formats_and_other_files(tmp_path):
    path = filled_map().save(tmp_path / "map.npz")
    with np.load(path) as z:
        arrays = dict(z)
    header = json.loads(str(arrays.pop("header")))
    header["format_version"] = 99
    newer = tmp_path / "newer.npz"
    np.savez(newer, header=np.array(json.dumps(header)), **arrays)
    with pytest.raises(MapMismatchError, match="format_version: map 99"):
        SemanticVoxelMap.load(newer)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved map"):
        SemanticVoxelMap.load(other)
    with pytest.raises(FileNotFoundError):
        SemanticVoxelMap.load(tmp_path / "missing.npz")


def test_ply_export_round_trip(tmp_path):
    from plyfile import PlyData

    m = filled_map()
    rel = np.linspace(0, 1, len(m)).astype(np.float32)
    path = m.export_ply(tmp_path / "map.ply", extra={"relevance": rel})
    v = PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    assert names == ["x", "y", "z", "red", "green", "blue", "label", "confidence", "observations", "relevance"]
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    np.testing.assert_array_equal(xyz, m.coords())
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], axis=1), m.colors())
    np.testing.assert_array_equal(v["label"], m.labels())
    np.testing.assert_array_equal(v["confidence"], m.confidence())
    np.testing.assert_array_equal(v["observations"], m.observations())
    np.testing.assert_array_equal(v["relevance"], rel)
    assert v["label"].dtype == np.int32 and v["observations"].dtype == np.uint32
    assert (v["label"][5:] == -1).all()  # never fused
    sub = PlyData.read(str(m.export_ply(tmp_path / "sub.ply", rows=[2, 4])))["vertex"]
    np.testing.assert_array_equal(sub["observations"], m.observations([2, 4]))
    with pytest.raises(ValueError, match="lengths"):
        m.export_ply(tmp_path / "bad.ply", extra={"relevance": rel[:3]})


def test_reads_stay_consistent_while_another_thread_integrates_and_evicts():
    import threading

    m = SemanticVoxelMap(1.0, "odom", max_voxels=200, evict_slack=0.1, class_names=["a", "b"])
    rng = np.random.default_rng(0)
    stop, errors = threading.Event(), []

    def reader():
        try:
            while not stop.is_set():
                snap = m.snapshot()
                assert len(snap.keys) == len(snap.coords) == len(snap.labels) == len(snap.observations)
                np.testing.assert_array_equal(snap.ijk, (snap.coords // 1.0).astype(np.int64))
                with m.lock:  # several calls on the same rows
                    rows = m.updated_since(0, "geometry")
                    assert (m.rows_of(m.keys(rows)) == rows).all()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for k in range(60):
        pts = rng.integers(-8, 8, (100, 3)).astype(np.float32) + np.float32([k, 0.5, 0.5])
        m.integrate_geometry(pts, grey(100), k, [k, 0, 0])
        m.fuse(k, np.ones(len(pts), np.float32), coords=pts, labels=np.zeros(len(pts), np.int64))
    stop.set()
    t.join()
    assert not errors, errors[0]
    assert len(m) <= 220 and m.stats().evicted_count > 0
