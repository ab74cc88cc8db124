"""Query regions on a hand-made relevance field; the keyframe policy."""

import numpy as np
import pytest

from concerto_ros.mapping import KeyframePolicy, SemanticVoxelMap, find_regions
from concerto_ros.mapping.keyframes import rotation_angle_deg
from concerto_ros.mapping.keys import pack_keys


def field():
    """Voxel indices and relevance of a hand-made field:
    A: a 2x2x1 block at the origin (relevance 0.9, one voxel 0.7);
    B: two voxels that share only a corner, (5,0,0) and (6,1,1): one region in the
       26-neighbourhood (relevance 0.95);
    C: one voxel at x = 10 (relevance 0.6);
    D: three voxels linking A and B, below the threshold (0.2)."""
    ijk = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0],  # A
                    [5, 0, 0], [6, 1, 1],  # B (corner contact only)
                    [10, 0, 0],  # C
                    [2, 0, 0], [3, 0, 0], [4, 0, 0]])  # D: links A and B, but below the threshold
    rel = np.array([0.9, 0.9, 0.9, 0.7, 0.95, 0.95, 0.6, 0.2, 0.2, 0.2])
    return ijk, rel


def test_regions_components_boxes_scores_and_order():
    ijk, rel = field()
    regions = find_regions(ijk, rel, voxel_size=0.1, threshold=0.5)
    assert [r.num_voxels for r in regions] == [2, 4, 1]  # B (0.95), A (0.85), C (0.6)
    b, a, c = regions
    np.testing.assert_array_equal(b.rows, [4, 5])
    assert b.score == pytest.approx(0.95) and b.max_relevance == pytest.approx(0.95)
    np.testing.assert_allclose(b.box_min, [0.5, 0.0, 0.0])
    np.testing.assert_allclose(b.box_max, [0.7, 0.2, 0.2])
    np.testing.assert_allclose(b.centroid, [0.6, 0.1, 0.1])  # mean of the centres (0.55,.05,.05), (0.65,.15,.15)
    np.testing.assert_array_equal(a.rows, [0, 1, 2, 3])
    assert a.score == pytest.approx(0.85) and a.max_relevance == pytest.approx(0.9)
    np.testing.assert_allclose(a.box_min, [0, 0, 0])
    np.testing.assert_allclose(a.box_max, [0.2, 0.2, 0.1])
    np.testing.assert_allclose(a.centroid, [0.1, 0.1, 0.05])
    np.testing.assert_array_equal(c.rows, [6])
    # caps and filters
    assert [r.num_voxels for r in find_regions(ijk, rel, 0.1, 0.5, max_regions=2)] == [2, 4]
    assert [r.num_voxels for r in find_regions(ijk, rel, 0.1, 0.5, min_voxels=3)] == [4]
    # a lower threshold links everything from A through D to B in one region
    (everything, only_c) = find_regions(ijk, rel, 0.1, 0.15)
    assert everything.num_voxels == 9 and only_c.num_voxels == 1
    assert find_regions(ijk, rel, 0.1, 0.99) == []
    with pytest.raises(ValueError, match="relevance"):
        find_regions(ijk, rel[:3], 0.1, 0.5)


def test_map_regions_return_map_rows():
    m = SemanticVoxelMap(0.1, "odom")
    ijk, rel = field()
    m.integrate_geometry(((ijk + 0.5) * 0.1).astype(np.float32), np.zeros((10, 3), np.uint8), 1, [0, 0, 0])
    rel_rows = np.empty(len(m))
    rel_rows[m.rows_of(pack_keys(ijk))] = rel  # the field, per map row
    regions = m.regions(rel_rows, 0.5)
    assert [r.num_voxels for r in regions] == [2, 4, 1]
    np.testing.assert_array_equal(np.sort(m.ijk(regions[0].rows), axis=0), [[5, 0, 0], [6, 1, 1]])
    sub = np.array([4, 5])  # only some rows: relevance per given row, region rows are map rows
    r2 = m.regions(np.array([0.9, 0.9]), 0.5, rows=sub)
    np.testing.assert_array_equal(np.sort(np.concatenate([r.rows for r in r2])), sub)


def pose(x=0.0, yaw_deg=0.0):
    T = np.eye(4)
    a = np.radians(yaw_deg)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    T[0, 3] = x
    return T


def test_keyframe_policy_moved_turned_time_and_resets():
    p = KeyframePolicy(min_translation=0.1, min_rotation=10.0, max_interval=1.0)
    s = 1_000_000_000
    d = p.update(pose(), 0)
    assert d.is_keyframe and d.reason == "first"
    d = p.update(pose(0.05, 5.0), s // 2)
    assert not d.is_keyframe and d.reason == "" and d.translation == pytest.approx(0.05)
    assert d.rotation_deg == pytest.approx(5.0) and d.elapsed_s == pytest.approx(0.5)
    d = p.update(pose(0.1), s // 2)  # 0.1 m from the last keyframe (not from the previous frame)
    assert d.is_keyframe and d.reason == "translation"
    assert p.update(pose(0.1, 10.5), s // 2 + 1).reason == "rotation"
    assert p.check(pose(0.1, 10.5), s // 2 + 1 + s).reason == "interval"
    assert p.check(pose(0.1, 10.5), s // 2 + s).reason == ""  # 1 ns short of max_interval
    assert p.check(pose(0.1, 10.5), 0).reason == "time_jump"
    assert p.num_keyframes == 3
    p.reset()
    assert p.update(pose(0.1, 10.5), 5 * s).reason == "first"
    off = KeyframePolicy(0.0, 0.0, 0.0)  # every criterion off: every frame is a keyframe
    assert off.update(pose(), 0).reason == "first" and off.update(pose(), 1).reason == "every_frame"
    with pytest.raises(ValueError, match="finite"):
        p.check(np.full((4, 4), np.nan), 0)
    with pytest.raises(ValueError):
        KeyframePolicy(min_translation=-1.0)
    assert rotation_angle_deg(pose()[:3, :3], pose(0, 170.0)[:3, :3]) == pytest.approx(170.0)


def test_built_from_the_settings():
    from concerto_ros.config import load_config

    cfg = load_config(None, {"window.voxel_size": 0.05, "map.max_voxels": 1000, "map.radius": 7.5,
                             "keyframe.min_rotation": 5.0, "fixed_frame": "map"})
    m = SemanticVoxelMap.from_config(cfg, class_names=["a"])
    assert (m.voxel_size, m.fixed_frame, m.max_voxels, m.radius, m.class_names) == (0.05, "map", 1000, 7.5, ("a",))
    cfg.map.voxel_size = 0.1
    assert SemanticVoxelMap.from_config(cfg).voxel_size == 0.1
    p = KeyframePolicy.from_config(cfg.keyframe)
    assert (p.min_translation, p.min_rotation, p.max_interval) == (0.1, 5.0, 1.0)
