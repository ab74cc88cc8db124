"""concerto_ros.bag.pcd: PCD reader (ascii, binary, binary_compressed/LZF) on hand-built files
and on one real mOSD scene."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from concerto_ros.bag.pcd import lzf_decompress, read_pcd

HEADER = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS label x y z rgba\n"
          "SIZE 4 4 4 4 4\nTYPE U F F F U\nCOUNT 1 1 1 1 1\nWIDTH 2\nHEIGHT 2\n"
          "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 4\nDATA {data}\n")

LABEL = np.array([0, 3, 21, 5], dtype=np.uint32)
XYZ = np.array([[np.nan, np.nan, np.nan], [0.5, -0.25, 1.0], [0.1, 0.2, 0.3], [-1.0, 2.0, 3.5]], dtype=np.float32)
RGBA = np.array([0xFF000000, 0xFF102030, 0xFFFF8001, 0x00FFFFFF], dtype=np.uint32)


def _check(c):
    assert c.width == 2 and c.height == 2
    np.testing.assert_array_equal(c.index, [1, 2, 3])
    np.testing.assert_allclose(c.xyz, XYZ[1:])
    assert c.xyz.dtype == np.float32 and c.rgb.dtype == np.uint8 and c.label.dtype == np.int64
    np.testing.assert_array_equal(c.rgb, [[0x10, 0x20, 0x30], [0xFF, 0x80, 0x01], [0xFF, 0xFF, 0xFF]])
    np.testing.assert_array_equal(c.label, [3, 21, 5])


def test_ascii(tmp_path):
    rows = ["0 nan nan nan 4278190080", "3 0.5 -0.25 1 4279246896", "21 0.1 0.2 0.3 4294934529",
            "5 -1 2 3.5 16777215"]
    p = tmp_path / "a.pcd"
    p.write_text(HEADER.format(data="ascii") + "\n".join(rows) + "\n")
    _check(read_pcd(p))
    full = read_pcd(p, drop_nan=False)
    assert full.xyz.shape == (4, 3) and np.isnan(full.xyz[0]).all() and full.label[0] == 0


def test_binary(tmp_path):
    rec = np.zeros(4, dtype=[("label", "<u4"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgba", "<u4")])
    rec["label"], rec["x"], rec["y"], rec["z"], rec["rgba"] = LABEL, XYZ[:, 0], XYZ[:, 1], XYZ[:, 2], RGBA
    p = tmp_path / "b.pcd"
    p.write_bytes(HEADER.format(data="binary").encode() + rec.tobytes())
    _check(read_pcd(p))


def _lzf_literals(raw: bytes) -> bytes:
    """A valid LZF stream made of literal runs only (max 32 bytes each)."""
    out = bytearray()
    for i in range(0, len(raw), 32):
        chunk = raw[i:i + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


def test_binary_compressed(tmp_path):
    raw = LABEL.tobytes() + XYZ[:, 0].tobytes() + XYZ[:, 1].tobytes() + XYZ[:, 2].tobytes() + RGBA.tobytes()
    comp = _lzf_literals(raw)
    p = tmp_path / "c.pcd"
    head = HEADER.format(data="binary_compressed").encode()
    p.write_bytes(head + struct.pack("<II", len(comp), len(raw)) + comp)
    _check(read_pcd(p))


def test_lzf_back_references():
    # "abc" literal, then a back-reference of length 7 at distance 3 (overlapping copy),
    # then a long back-reference (len code 7 + extra byte) of length 12 at distance 10
    comp = bytes([2]) + b"abc" + bytes([(5 << 5) | 0, 2]) + bytes([(7 << 5) | 0, 3, 9])
    out = lzf_decompress(comp, 22)
    assert out == b"abcabcabca" + b"abcabcabcaab"[:12]
    with pytest.raises(ValueError, match="back-reference"):
        lzf_decompress(bytes([0]) + b"a" + bytes([(1 << 5), 5]), 4)
    with pytest.raises(ValueError, match="decompressed"):
        lzf_decompress(bytes([1]) + b"ab", 5)


def test_errors(tmp_path):
    p = tmp_path / "bad.pcd"
    p.write_text("VERSION 0.7\nFIELDS x y\nSIZE 4 4\nTYPE F F\nCOUNT 1 1\nWIDTH 1\nHEIGHT 1\nPOINTS 1\n"
                 "DATA ascii\n1 2\n")
    with pytest.raises(ValueError, match="no \\['z'\\]"):
        read_pcd(p)
    p.write_text(HEADER.format(data="xml"))
    with pytest.raises(ValueError, match="unsupported PCD DATA"):
        read_pcd(p)
    with pytest.raises(FileNotFoundError):
        read_pcd(tmp_path / "missing.pcd")


def test_real_mosd_scene(shared_dir):
    p = shared_dir / "data" / "mosd" / "learn" / "learn0.pcd"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    c = read_pcd(p)
    full = read_pcd(p, drop_nan=False)
    assert (c.width, c.height) == (640, 480) and full.xyz.shape == (640 * 480, 3)
    assert c.xyz.shape == (182292, 3) and np.isfinite(c.xyz).all()
    # NaN pixels carry label 0 and only those: every kept point is labelled
    assert (full.label[~np.isfinite(full.xyz).all(1)] == 0).all()
    np.testing.assert_array_equal(np.unique(c.label), [1, 20, 30])
    assert (c.label == 1).sum() == 153323
    # table-top in the camera optical frame: in front of the camera, within ~1.3 m
    assert 0.5 < c.xyz[:, 2].min() and c.xyz[:, 2].max() < 1.4
    # organized cloud: x increases along a row (pixel grid, fx = 525, cx = 319.5)
    row, col = c.index // 640, c.index % 640
    u = 525.0 * c.xyz[:, 0] / c.xyz[:, 2] + 319.5
    v = 525.0 * c.xyz[:, 1] / c.xyz[:, 2] + 239.5
    assert np.abs(u - col).max() < 0.5 and np.abs(v - row).max() < 0.5
    assert 150 < c.rgb.mean() < 250  # bright table-top scene
