"""The Source schema (dict, inline YAML, path; errors that say how to fix them), type detection and
the label sets of config/labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from concerto_ros.recordings import IGNORE, RecordingError, Source, SourceError, detect_type, load_label_set
from concerto_ros.recordings import parse_source, parse_sources
from concerto_ros.recordings.labels import (NYU40_CLASS_NAMES, SCANNET20_CLASS_NAMES, SCANNET20_NYU40_IDS, SYNONYMS,
                                            builtin_label_sets, resolve_class_names)


def test_inline_yaml_dict_and_path_give_the_same_source():
    text = "{type: points, path: X.npy, labels: L.npy, label_names: nyu40, max_frames: 5}"
    a = parse_source(text)
    b = parse_source({"type": "points", "path": "X.npy", "labels": "L.npy", "label_names": "nyu40", "limit": 5})
    assert a == b and a.path == Path("X.npy") and a.labels == Path("L.npy") and a.max_frames == 5
    assert a.to_dict() == {"path": "X.npy", "type": "points", "labels": "L.npy", "label_names": "nyu40",
                           "max_frames": 5}
    assert parse_source(a.to_dict()) == a
    s = parse_source("recordings/run1.mcap")
    assert s.type == "auto" and s.path == Path("recordings/run1.mcap") and s.stride == 1
    assert parse_source({"type": "folder", "path": "room", "fx": 525, "fy": 525, "cx": 319.5, "cy": 239.5}).intrinsics \
        == (525.0, 525.0, 319.5, 239.5)
    assert parse_source({"type": "folder", "path": "room"}).type == "rgbd_folder"
    assert [s.path.name for s in parse_sources("[{path: a.pcd}, b.pcd]")] == ["a.pcd", "b.pcd"]
    assert parse_source(a) is a


@pytest.mark.parametrize("value, message", [
    ("{type: lidar, path: x}", "source type 'lidar' is unknown: use auto, rgbd_folder, pcd, points, semantickitti, bag"),
    ("{type: points, pth: x.npy}", "unknown source key 'pth' (did you mean 'path'?)"),
    ("{type: points}", "has no 'path': e.g. {type: points, path: scan.npy, labels: labels.npy}"),
    ("{path: x, fx: 500}", "give all four intrinsics fx fy cx cy (pixels) or none; got only ['fx']"),
    ("{path: x, depth_scale: -1}", "depth_scale must be a finite positive number, got -1.0"),
    ("{path: x, stride: 0}", "stride must be >= 1, got 0"),
    ("{path: x, max_frames: 1.5}", "max_frames must be an integer >= 0, got 1.5"),
    ("{path: x, topics: {rgb: /c}}", "topics ['rgb'] unknown: topic overrides are a mapping with keys"),
    ("{path: x, color_order: grb}", "color_order must be bgr (normal image files) or rgb"),
    ("{path: [x", "cannot parse source '{path: [x' as YAML"),
    ("[]", "no source given"),
])
def test_bad_sources_say_how_to_fix_them(value, message):
    with pytest.raises(SourceError) as err:
        parse_sources(value)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, RecordingError) and isinstance(err.value, ValueError)


def test_detect_type(tmp_path):
    (tmp_path / "rgbd" / "color").mkdir(parents=True)
    (tmp_path / "rgbd" / "depth").mkdir()
    (tmp_path / "bag2").mkdir()
    (tmp_path / "bag2" / "metadata.yaml").write_text("{}")
    (tmp_path / "pcds").mkdir()
    (tmp_path / "pcds" / "a.pcd").write_text("")
    for name in ("a.mcap", "a.db3", "a.bag", "a.pcd", "a.bin", "a.npy", "a.txt"):
        (tmp_path / name).write_bytes(b"")
    expected = {"rgbd": "rgbd_folder", "bag2": "bag", "pcds": "pcd", "a.mcap": "bag", "a.db3": "bag", "a.bag": "bag",
                "a.pcd": "pcd", "a.bin": "semantickitti", "a.npy": "points"}
    assert {k: detect_type(tmp_path / k) for k in expected} == expected
    with pytest.raises(RecordingError, match=r"a.txt: unknown recording file type '.txt'"):
        detect_type(tmp_path / "a.txt")
    with pytest.raises(RecordingError, match="nope: no such file or folder"):
        Source(path=tmp_path / "nope").resolved_type()


def test_builtin_label_sets():
    assert {"nyu40", "scannet20", "semantickitti", "mosd"} <= set(builtin_label_sets())
    nyu = load_label_set("nyu40")
    assert nyu.classes == tuple(SCANNET20_CLASS_NAMES) and nyu.num_classes == 20
    ids = np.array([[0, 1, 2], [13, 39, 40]])  # unannotated, wall, floor / blinds, other furniture, other prop
    np.testing.assert_array_equal(nyu.map(ids), [[IGNORE, 0, 1], [IGNORE, 19, IGNORE]])
    assert [NYU40_CLASS_NAMES[i] for i in SCANNET20_NYU40_IDS] == list(SCANNET20_CLASS_NAMES)
    assert len(NYU40_CLASS_NAMES) == 40 and SYNONYMS["sofa"] == ("couch",)
    sc = load_label_set("scannet20")  # values already 0..19; classes and synonyms from nyu40
    np.testing.assert_array_equal(sc.map([-1, 0, 19, 20, 255]), [-1, 0, 19, -1, -1])
    assert sc.classes == nyu.classes and sc.synonyms == nyu.synonyms
    kitti = load_label_set("semantickitti")
    np.testing.assert_array_equal(kitti.map_raw([0, 10, 13, 60, 99, 252, 259, 1000]), [-1, 0, 4, 8, -1, 0, 4, -1])
    np.testing.assert_array_equal(kitti.map([0, 1, 19, 20]), [-1, 0, 18, -1])
    mosd = load_label_set("mosd")
    np.testing.assert_array_equal(mosd.map([0, 1, 9, 10, 19, 20, 57]), [-1, 0, 0, -1, -1, 1, 1])
    assert resolve_class_names(["scannet20"]) == list(SCANNET20_CLASS_NAMES)
    assert resolve_class_names("semantickitti")[-1] == "traffic-sign"
    assert resolve_class_names(["chair", "table"]) == ["chair", "table"]


def test_label_set_from_yaml_and_errors(tmp_path):
    p = tmp_path / "rooms.yaml"
    p.write_text("name: rooms\nclasses: [floor, furniture]\nids: {1: floor, '3-5': furniture, '100+': 1}\n"
                 "synonyms: {furniture: [furnishings]}\n")
    s = load_label_set(str(p))
    assert s.name == "rooms" and s.synonyms == {"furniture": ("furnishings",)}
    np.testing.assert_array_equal(s.map([0, 1, 2, 3, 5, 6, 99, 100, 7000]), [-1, 0, -1, 1, 1, -1, -1, 1, 1])
    p.write_text("classes: [floor]\nids: {1: ceiling}\n")
    with pytest.raises(RecordingError, match=r"ids\[1\] names class 'ceiling', which is not in classes \['floor'\]"):
        load_label_set(str(p))
    with pytest.raises(RecordingError, match=r"unknown label_names 'nyu41': use one of \[.*'nyu40'"):
        load_label_set("nyu41")
    with pytest.raises(RecordingError, match="label set file not found"):
        load_label_set(str(tmp_path / "missing.yaml"))
