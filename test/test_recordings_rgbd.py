"""RGB-D folders: RgbdFolderWriter -> RgbdFolderRecording round trips, label sets, errors, and the
real Kinect recording."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from concerto_ros.msgs.transforms import transform_to_matrix
from concerto_ros.recordings import RecordingError, RgbdFolderWriter, open_recording
from concerto_ros.recordings.rgbd_folder import DEFAULT_START_STAMP_NS, depth_to_units
from concerto_ros.sensors.lifting import lift_depth
from concerto_ros.sensors.types import CameraIntrinsics

from conftest import SLAMBOOK_INTRINSICS

K = CameraIntrinsics(fx=40.0, fy=41.0, cx=15.5, cy=11.5, width=32, height=24)


def _frames(n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        color = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        depth = rng.uniform(0.5, 4.0, (24, 32)).astype(np.float32)
        depth[0, :5] = 0.0  # invalid
        labels = rng.integers(0, 4, (24, 32))
        T = transform_to_matrix((0.1 * i, -0.2, 1.0), (0.0, np.sin(0.1 * i), 0.0, np.cos(0.1 * i)))
        out.append((color, depth, T, labels))
    return out


def test_write_then_read_round_trip(tmp_path):
    frames = _frames()
    names = ["unlabeled", "floor", "wall", "chair"]
    with RgbdFolderWriter(tmp_path / "seq", K, depth_scale=1000, rate_hz=5.0, extra={"class_names": names}) as w:
        stems = [w.write(c, d, T, labels=lab) for c, d, T, lab in frames]
    assert stems == ["000000", "000001", "000002"]
    cam = yaml.safe_load((tmp_path / "seq" / "camera.yaml").read_text())
    assert (cam["fx"], cam["cy"], cam["width"], cam["depth_scale"], cam["class_names"]) == (40.0, 11.5, 32, 1000, names)

    rec = open_recording(tmp_path / "seq")  # type detected; intrinsics from camera.yaml
    assert rec.kind == "frames" and len(rec) == 3 and rec.label_set is None
    got = list(rec.frames())
    for i, (f, (color, depth, T, labels)) in enumerate(zip(got, frames)):
        assert f.key == stems[i] and f.stamp_ns == DEFAULT_START_STAMP_NS + i * 200_000_000  # 5 Hz
        np.testing.assert_array_equal(f.image, color)
        np.testing.assert_array_equal(f.rgbd.color, color)
        assert f.rgbd.depth.dtype == np.uint16 and f.rgbd.depth_scale == 1000.0
        np.testing.assert_array_equal(f.rgbd.depth, depth_to_units(depth, 1000))
        assert np.abs(f.rgbd.depth / 1000.0 - np.where(depth > 0, depth, 0)).max() <= 0.0005 + 1e-7
        np.testing.assert_array_equal(f.labels, labels)  # no label set: values unchanged
        assert f.labels.dtype == np.int32 and f.rgbd.labels is f.labels
        np.testing.assert_allclose(f.T_world_sensor, T, atol=1e-8)
        assert f.rgbd.intrinsics == K and f.frame_id == "camera_color_optical_frame"
    # the frame lifts like any RGB-D frame: labels follow the points
    pf = lift_depth(got[0].rgbd, got[0].T_world_sensor)
    assert pf.labels is not None and len(pf.labels) == len(pf.points) == (depth_to_units(frames[0][1]) > 100).sum()


def test_label_names_stride_and_stamps(tmp_path):
    frames = _frames(4)
    with RgbdFolderWriter(tmp_path / "s", K) as w:
        for i, (c, d, T, lab) in enumerate(frames):
            w.write(c, d, T, labels=lab, stamp_ns=1_305_031_102_175_304_000 + i * 33_000_000)
    (tmp_path / "s" / "camera.yaml").write_text(yaml.safe_dump({**yaml.safe_load((tmp_path / "s" / "camera.yaml")
                                                                                  .read_text()),
                                                                 "class_names": ["unlabeled", "floor", "wall", "door"]}))
    rec = open_recording({"path": str(tmp_path / "s"), "label_names": "camera", "stride": 2, "max_frames": 5})
    assert rec.label_set.classes == ("floor", "wall", "door") and len(rec) == 2
    f0, f2 = list(rec.frames())
    assert (f0.key, f2.key) == ("000000", "000002")
    assert f2.stamp_ns == 1_305_031_102_175_304_000 + 66_000_000  # exact from the pose file
    np.testing.assert_array_equal(f2.labels, frames[2][3] - 1)  # 0 (unlabeled) -> -1, 1 -> floor (0), ...
    listed = open_recording({"path": str(tmp_path / "s"), "label_names": ["void", "a", "b", "c"], "max_frames": 1})
    assert listed.label_set.classes == ("a", "b", "c")


def test_errors_are_one_line(tmp_path):
    with RgbdFolderWriter(tmp_path / "s", K) as w:
        for c, d, T, _ in _frames(2):
            w.write(c, d, T)
    with pytest.raises(RecordingError, match="has frames already"):
        RgbdFolderWriter(tmp_path / "s", K)
    (tmp_path / "s" / "camera.yaml").unlink()
    with pytest.raises(RecordingError, match=r"no intrinsics: pass fx fy cx cy"):
        open_recording(tmp_path / "s")
    rec = open_recording({"path": str(tmp_path / "s"), "fx": 40, "fy": 41, "cx": 15.5, "cy": 11.5})
    (tmp_path / "s" / "depth" / "000001.png").write_bytes(b"not a png")
    it = rec.frames()
    next(it)
    with pytest.raises(RecordingError) as err:
        next(it)
    assert str(err.value).startswith(str(tmp_path / "s" / "depth" / "000001.png") + ": cannot read the image")
    (tmp_path / "s" / "poses.txt").write_text("0 0 0 0 0 0 1\n")
    with pytest.raises(RecordingError, match=r"poses.txt: 1 poses but .* 2 RGB-D frames"):
        open_recording({"path": str(tmp_path / "s"), "fx": 1, "fy": 1, "cx": 0, "cy": 0})


def test_cli_convert_prints_one_line_for_a_bad_folder(tmp_path, capsys):
    from concerto_ros.cli import main

    assert main(["convert", "rgbd", str(tmp_path / "missing"), str(tmp_path / "bag"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'missing'}: RGB-D folder not found"


def test_real_slambook_folder(slambook_dir):
    fx, fy, cx, cy = SLAMBOOK_INTRINSICS
    rec = open_recording({"type": "folder", "path": str(slambook_dir), "fx": fx, "fy": fy, "cx": cx, "cy": cy,
                          "depth_scale": 1000})
    frames = list(rec.frames())
    assert [f.key for f in frames] == ["1", "2", "3", "4", "5"] and rec.label_set is None
    f = frames[0]
    assert f.rgbd.shape == (480, 640) and f.rgbd.depth.dtype == np.uint16 and f.labels is None
    valid = f.rgbd.depth > 0
    assert 0.6 < valid.mean() < 0.8  # ~30% of the Kinect's pixels have no depth
    np.testing.assert_allclose(f.T_world_sensor[:3, 3], [-0.228993, 0.00645704, 0.0287837], atol=1e-6)
