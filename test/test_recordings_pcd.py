"""PCD through pypcd4 (ascii, binary, binary_compressed/LZF) on hand-built files, organized clouds as
frames with rebuilt images and fitted intrinsics, and one real mOSD scene."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from concerto_ros.recordings import RecordingError, open_recording
from concerto_ros.recordings.pcd import fit_intrinsics, read_pcd

HEADER = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS label x y z rgba\n"
          "SIZE 4 4 4 4 4\nTYPE U F F F U\nCOUNT 1 1 1 1 1\nWIDTH 2\nHEIGHT 2\n"
          "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 4\nDATA {data}\n")
LABEL = np.array([0, 3, 21, 5], dtype=np.uint32)
XYZ = np.array([[np.nan, np.nan, np.nan], [0.5, -0.25, 1.0], [0.1, 0.2, 0.3], [-1.0, 2.0, 3.5]], dtype=np.float32)
RGBA = np.array([0xFF000000, 0xFF102030, 0xFFFF8001, 0x00FFFFFF], dtype=np.uint32)


def _check(c):
    assert c.width == 2 and c.height == 2 and c.organized
    np.testing.assert_array_equal(c.index, [1, 2, 3])
    np.testing.assert_allclose(c.xyz, XYZ[1:])
    assert c.xyz.dtype == np.float32 and c.rgb.dtype == np.uint8 and c.label.dtype == np.int64
    np.testing.assert_array_equal(c.rgb, [[0x10, 0x20, 0x30], [0xFF, 0x80, 0x01], [0xFF, 0xFF, 0xFF]])
    np.testing.assert_array_equal(c.label, [3, 21, 5])


def test_ascii_binary_and_binary_compressed(tmp_path):
    rows = ["0 nan nan nan 4278190080", "3 0.5 -0.25 1 4279246896", "21 0.1 0.2 0.3 4294934529",
            "5 -1 2 3.5 16777215"]
    (tmp_path / "a.pcd").write_text(HEADER.format(data="ascii") + "\n".join(rows) + "\n")
    rec = np.zeros(4, dtype=[("label", "<u4"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgba", "<u4")])
    rec["label"], rec["x"], rec["y"], rec["z"], rec["rgba"] = LABEL, XYZ[:, 0], XYZ[:, 1], XYZ[:, 2], RGBA
    (tmp_path / "b.pcd").write_bytes(HEADER.format(data="binary").encode() + rec.tobytes())
    # binary_compressed: fields one after another, as an LZF stream of literal runs (<= 32 bytes)
    raw = b"".join(a.tobytes() for a in (LABEL, XYZ[:, 0], XYZ[:, 1], XYZ[:, 2], RGBA))
    comp = b"".join(bytes([len(raw[i:i + 32]) - 1]) + raw[i:i + 32] for i in range(0, len(raw), 32))
    (tmp_path / "c.pcd").write_bytes(HEADER.format(data="binary_compressed").encode()
                                     + struct.pack("<II", len(comp), len(raw)) + comp)
    for name in ("a", "b", "c"):
        _check(read_pcd(tmp_path / f"{name}.pcd"))
    full = read_pcd(tmp_path / "a.pcd", drop_nan=False)
    assert full.xyz.shape == (4, 3) and np.isnan(full.xyz[0]).all() and full.label[0] == 0


def _organized_cloud(h=6, w=8, fx=7.0, fy=6.5, cx=3.5, cy=2.5):
    """A pinhole image of a tilted plane, a few NaN pixels, labels 1 (table) and 20+ (objects)."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    z = 1.0 + 0.05 * u + 0.02 * v
    xyz = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1).reshape(-1, 3).astype(np.float32)
    xyz[[0, 9, 47]] = np.nan
    label = np.where(np.arange(h * w) % 3 == 0, 21, 1).astype(np.uint32)
    label[[0, 9, 47]] = 0
    rgb = (np.arange(h * w * 3) % 256).reshape(-1, 3).astype(np.uint32)
    packed = (0xFF << 24) | (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return xyz, label, rgb.astype(np.uint8), packed.astype(np.uint32)


def test_pypcd4_written_organized_cloud_as_frame(tmp_path):
    from pypcd4 import Encoding, PointCloud

    h, w = 6, 8
    xyz, label, rgb, packed = _organized_cloud(h, w)
    pc = PointCloud.from_points([label, xyz[:, 0], xyz[:, 1], xyz[:, 2], packed], ("label", "x", "y", "z", "rgba"),
                                (np.uint32, np.float32, np.float32, np.float32, np.uint32))
    pc.metadata = pc.metadata.derive(width=w, height=h)
    pc.save(tmp_path / "scene.pcd", encoding=Encoding.BINARY_COMPRESSED)

    assert fit_intrinsics(read_pcd(tmp_path / "scene.pcd", drop_nan=False)) == (7.0, 6.5, 3.5, 2.5)
    rec = open_recording("{path: %s, label_names: mosd}" % (tmp_path / "scene.pcd"))
    assert rec.kind == "frames" and rec.independent_frames and rec.label_set.classes == ("table", "object")
    (f,) = list(rec.frames())
    keep = np.isfinite(xyz).all(1)
    np.testing.assert_array_equal(f.cloud.xyz, xyz[keep])
    np.testing.assert_array_equal(f.cloud.colors, rgb[keep])
    np.testing.assert_array_equal(f.cloud.index, np.flatnonzero(keep))
    assert f.cloud.shape == (h, w) and f.key == "scene"
    np.testing.assert_array_equal(f.labels, np.where(label[keep] == 21, 1, 0))  # table 0, object 1
    # the image grid rebuilt from the cloud
    np.testing.assert_array_equal(f.image, rgb.reshape(h, w, 3))
    assert f.rgbd.depth.dtype == np.float32 and f.rgbd.depth_scale == 1.0
    np.testing.assert_array_equal(np.isnan(f.rgbd.depth).ravel(), ~keep)
    np.testing.assert_array_equal(f.rgbd.depth.ravel()[keep], xyz[keep, 2])
    np.testing.assert_array_equal(f.rgbd.labels.ravel(), np.where(label == 21, 1, np.where(label == 1, 0, -1)))
    k = f.rgbd.intrinsics
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == (7.0, 6.5, 3.5, 2.5, w, h)
    np.testing.assert_array_equal(f.T_world_sensor, np.eye(4))
    # given intrinsics win; a cloud that is not a pinhole image asks for them
    given = open_recording({"type": "pcd", "path": str(tmp_path / "scene.pcd"), "fx": 5, "fy": 5, "cx": 1, "cy": 1})
    assert next(given.frames()).rgbd.intrinsics.fx == 5.0
    xyz[:, 0] += np.random.default_rng(0).normal(0, 0.5, len(xyz)).astype(np.float32)
    pc2 = PointCloud.from_points([xyz[:, 0], xyz[:, 1], xyz[:, 2]], ("x", "y", "z"), (np.float32,) * 3)
    pc2.metadata = pc2.metadata.derive(width=w, height=h)
    pc2.save(tmp_path / "warped.pcd", encoding=Encoding.BINARY)
    with pytest.raises(RecordingError, match="not a pinhole image .* give the intrinsics fx fy cx cy"):
        next(open_recording(tmp_path / "warped.pcd").frames())


def test_errors_are_one_line(tmp_path):
    p = tmp_path / "bad.pcd"
    p.write_text("VERSION 0.7\nFIELDS x y\nSIZE 4 4\nTYPE F F\nCOUNT 1 1\nWIDTH 1\nHEIGHT 1\nPOINTS 1\n"
                 "DATA ascii\n1 2\n")
    with pytest.raises(RecordingError, match=r"bad.pcd: PCD has no \['z'\] field"):
        read_pcd(p)
    p.write_bytes(b"\x00\x01garbage")
    with pytest.raises(RecordingError) as err:
        read_pcd(p)
    assert str(err.value).startswith(f"{p}: not a readable PCD file") and "\n" not in str(err.value)
    with pytest.raises(RecordingError, match="PCD file not found"):
        read_pcd(tmp_path / "missing.pcd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="cannot tell the recording type"):
        open_recording(tmp_path / "empty")
    with pytest.raises(RecordingError, match="holds no .pcd file"):
        open_recording({"type": "pcd", "path": str(tmp_path / "empty")})


def test_real_mosd_scenes(shared_dir):
    learn = shared_dir / "data" / "mosd" / "learn"
    if not (learn / "learn0.pcd").is_file():
        pytest.skip(f"{learn} not found")
    rec = open_recording({"type": "pcd", "path": str(learn), "label_names": "mosd", "max_frames": 3})
    assert [p.name for p in rec.files] == ["learn0.pcd", "learn1.pcd", "learn2.pcd"]  # natural order
    f = rec.read(0)
    assert f.cloud.xyz.shape == (182292, 3) and np.isfinite(f.cloud.xyz).all() and f.cloud.shape == (480, 640)
    assert (f.labels == 0).sum() == 153323 and set(np.unique(f.labels)) == {0, 1}  # table, object
    k = f.rgbd.intrinsics  # fitted: Kinect v1
    assert (k.fx, k.fy, k.cx, k.cy) == (525.0, 525.0, 319.5, 239.5)
    full = read_pcd(learn / "learn0.pcd", drop_nan=False)
    assert (full.label[~np.isfinite(full.xyz).all(1)] == 0).all()  # NaN pixels carry label 0, only those
    assert 0.5 < f.cloud.xyz[:, 2].min() and f.cloud.xyz[:, 2].max() < 1.4  # table-top, camera optical frame
    assert 150 < f.image[f.rgbd.depth > 0].mean() < 250  # bright scene
