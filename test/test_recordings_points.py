"""Point arrays and SemanticKITTI scans (native .bin/.label with the learning map, poses with
calib.txt, the Open3D-ML .npy variant) as frames."""

from __future__ import annotations

import numpy as np
import pytest

from concerto_ros.msgs.transforms import transform_to_matrix
from concerto_ros.recordings import RecordingError, load_label_set, open_recording


def test_points_npy_with_nyu40_labels(tmp_path):
    xyzrgb = np.array([[0, 0, 0, 255, 0, 0], [1, 2, 3, 0, 128, 0], [np.nan, 0, 0, 1, 2, 3], [4, 5, 6, 0, 0, 255]],
                      dtype=np.float32)
    np.save(tmp_path / "xyz.npy", xyzrgb)
    np.save(tmp_path / "lab.npy", np.array([[1], [39], [5], [22]], dtype=np.int64))  # wall, other furniture, -, ceiling
    rec = open_recording('{type: points, path: %s, labels: %s, label_names: nyu40}' % (tmp_path / "xyz.npy",
                                                                                         tmp_path / "lab.npy"))
    (f,) = list(rec.frames())
    np.testing.assert_array_equal(f.cloud.xyz, xyzrgb[[0, 1, 3], :3])
    np.testing.assert_array_equal(f.cloud.colors, [[255, 0, 0], [0, 128, 0], [0, 0, 255]])
    np.testing.assert_array_equal(f.cloud.index, [0, 1, 3])
    assert f.cloud.intensity is None and f.image is None and f.rgbd is None
    names = rec.label_set.classes
    assert [names[c] if c >= 0 else None for c in f.labels] == ["wall", "other furniture", None]  # ceiling ignored
    assert f.labels.dtype == np.int32 and rec.independent_frames and np.array_equal(f.T_world_sensor, np.eye(4))
    np.save(tmp_path / "short.npy", np.zeros(2, np.int64))
    with pytest.raises(RecordingError, match="short.npy: 2 labels for 4 points"):
        next(open_recording({"type": "points", "path": str(tmp_path / "xyz.npy"),
                             "labels": str(tmp_path / "short.npy")}).frames())
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(RecordingError, match=r"bad.npy: expected a numeric \(N, 3\|4\|6\|7\) array"):
        next(open_recording(tmp_path / "bad.npy").frames())


def _kitti_sequence(root, n=3, rng=np.random.default_rng(1)):
    """A SemanticKITTI sequence folder: velodyne/*.bin, labels/*.label, poses.txt (camera 0) and
    calib.txt (Tr: LiDAR -> camera 0)."""
    (root / "velodyne").mkdir(parents=True)
    (root / "labels").mkdir()
    scans, raw_ids = [], []
    for i in range(n):
        rec = rng.normal(0, 10, (50, 4)).astype(np.float32)
        rec[:, 3] = rng.uniform(0, 1, 50)
        rec.tofile(root / "velodyne" / f"{i:06d}.bin")
        ids = rng.choice([0, 1, 10, 40, 44, 52, 72, 252, 254, 81], 50).astype(np.uint32)
        ((rng.integers(0, 5, 50).astype(np.uint32) << 16) | ids).tofile(root / "labels" / f"{i:06d}.label")
        scans.append(rec)
        raw_ids.append(ids)
    Tr = transform_to_matrix((0.3, -0.1, 0.2), (0.5, -0.5, 0.5, -0.5))
    P = [transform_to_matrix((0, 0, 2.0 * i), (0, np.sin(0.05 * i), 0, np.cos(0.05 * i))) for i in range(n)]
    (root / "poses.txt").write_text("".join(" ".join(f"{v:.12f}" for v in p[:3].ravel()) + "\n" for p in P))
    (root / "calib.txt").write_text("P0: 1 0 0 0 0 1 0 0 0 0 1 0\nTr: " + " ".join(f"{v:.12f}" for v in Tr[:3].ravel())
                                    + "\n")
    return scans, raw_ids, Tr, P


def test_semantickitti_sequence_with_learning_map_and_poses(tmp_path):
    scans, raw_ids, Tr, P = _kitti_sequence(tmp_path / "00")
    rec = open_recording(tmp_path / "00")  # detected: a folder with velodyne/
    assert rec.source.resolved_type() == "semantickitti" and rec.label_set.name == "semantickitti"
    assert len(rec) == 3 and not rec.independent_frames
    ks = load_label_set("semantickitti")
    # raw -> learning id -> class: 10 car(0), 40 road(8), 44 parking(9), 72 terrain(16), 81 traffic-sign(18),
    # 252 moving-car -> car, 254 moving-person -> person(5); 0, 1, 52 -> unlabeled (-1)
    expect = {0: -1, 1: -1, 10: 0, 40: 8, 44: 9, 52: -1, 72: 16, 81: 18, 252: 0, 254: 5}
    for i, f in enumerate(rec.frames()):
        np.testing.assert_array_equal(f.cloud.xyz, scans[i][:, :3])
        np.testing.assert_array_equal(f.cloud.intensity, scans[i][:, 3])
        np.testing.assert_array_equal(f.labels, [expect[int(r)] for r in raw_ids[i]])
        np.testing.assert_allclose(f.T_world_sensor, np.linalg.inv(Tr) @ P[i] @ Tr, atol=1e-9)
        assert f.frame_id == "velodyne" and f.key == f"{i:06d}"
    assert ks.classes[0] == "car" and ks.classes[18] == "traffic-sign" and ks.num_classes == 19
    single = open_recording({"path": str(tmp_path / "00" / "velodyne" / "000001.bin"),
                             "labels": str(tmp_path / "00" / "labels" / "000001.label"), "label_names": "semantickitti"})
    np.testing.assert_array_equal(next(single.frames()).labels, [expect[int(r)] for r in raw_ids[1]])
    (tmp_path / "00" / "velodyne" / "000002.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(RecordingError, match="000002.bin: a KITTI .bin scan holds float32 x y z intensity"):
        list(rec.frames())


def test_open3d_ml_semantickitti_scans(shared_dir):
    d = shared_dir / "data" / "semantickitti"
    if not (d / "semkitti_points_000700.npy").is_file():
        pytest.skip(f"{d} not found")
    one = open_recording({"type": "semantickitti", "path": str(d / "semkitti_points_000700.npy")})
    (f,) = list(one.frames())  # labels paired by name (points -> labels), learning ids 0..19
    raw = np.load(d / "semkitti_labels_000700.npy").reshape(-1)
    assert f.cloud.xyz.shape == (len(raw), 3) == (85962, 3) and f.cloud.intensity is None
    np.testing.assert_array_equal(f.labels, raw - 1)  # learning id k -> class k - 1, 0 -> -1
    assert one.label_set.classes[int(np.bincount(raw).argmax()) - 1] == "vegetation"
    seq = open_recording({"type": "points", "path": str(d), "label_names": "semantickitti"})
    assert [s.name for s in seq.scans] == [f"kitti_01_points_00000{i}.npy" for i in range(3)] + \
        ["semkitti_points_000700.npy"]
    assert [p.name for p in seq.label_files][0] == "kitti_01_labels_000000.npy"
