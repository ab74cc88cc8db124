"""RGB-D folder -> rosbag2 (MCAP and sqlite3), read back with concerto_ros.recordings."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from concerto_ros.bag.convert_rgbd import (
    DEFAULT_START_STAMP_NS,
    convert_rgbd_folder,
    depth_to_millimetres,
    read_poses,
)
from concerto_ros.recordings import RecordingError, bag_summary, iter_messages, iter_raw
from concerto_ros.msgs.camera_info import intrinsics_from_camera_info
from concerto_ros.msgs.image import color_to_rgb, depth_from_msg, image_to_numpy
from concerto_ros.msgs.transforms import (
    LINK_T_OPTICAL,
    OPTICAL_FROM_LINK_QUAT_XYZW,
    invert_transform,
    matrix_to_transform,
    ns_to_stamp_fields,
    stamp_to_ns,
    transform_msg_to_matrix,
    transform_to_matrix,
)

SLAMBOOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "rgbd_slambook"
INTRINSICS = (518.0, 519.0, 325.5, 253.5)
TOPICS = {
    "color": "/camera/color/image_raw",
    "depth": "/camera/depth/image_raw",
    "info": "/camera/color/camera_info",
    "labels": "/camera/labels/image_raw",
}


def need_slambook():
    if not (SLAMBOOK / "pose.txt").is_file():
        pytest.skip(f"real RGB-D data not found at {SLAMBOOK} (the shared data folder)")


def by_topic(bag):
    out: dict[str, list] = {}
    for m in iter_messages(bag):
        out.setdefault(m.topic, []).append(m)
    return out


def chain(msgs_static, tf_msg):
    """fixed -> optical by composing /tf (fixed -> link) with /tf_static (link -> optical)."""
    static = {t.child_frame_id: t for m in msgs_static for t in m.msg.transforms}
    (dyn,) = tf_msg.msg.transforms
    (link_to_opt,) = [t for t in static.values() if t.header.frame_id == dyn.child_frame_id]
    return transform_msg_to_matrix(dyn) @ transform_msg_to_matrix(link_to_opt), dyn, link_to_opt


# --------------------------------------------------------------------------- transforms
def test_transform_helpers():
    t, q = [0.1, -2.0, 3.5], [0.1, -0.2, 0.3, 0.9]
    m = transform_to_matrix(t, q)
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-15)
    t2, q2 = matrix_to_transform(m)
    np.testing.assert_allclose(t2, t)
    np.testing.assert_allclose(q2, np.array(q) / np.linalg.norm(q), atol=1e-15)
    np.testing.assert_allclose(invert_transform(m) @ m, np.eye(4), atol=1e-15)
    # 90 deg about z (xyzw): x axis -> y axis
    rz = transform_to_matrix([0, 0, 0], [0, 0, np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(rz[:3, 0], [0, 1, 0], atol=1e-15)
    # REP-103 optical rotation and its quaternion agree
    np.testing.assert_allclose(
        transform_to_matrix([0, 0, 0], OPTICAL_FROM_LINK_QUAT_XYZW), LINK_T_OPTICAL, atol=1e-15
    )
    with pytest.raises(ValueError, match="zero quaternion"):
        transform_to_matrix([0, 0, 0], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        transform_to_matrix([np.nan, 0, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="proper rotation"):
        matrix_to_transform(np.diag([1.0, 1.0, -1.0, 1.0]))
    assert ns_to_stamp_fields(1_700_000_000_000_000_001) == (1_700_000_000, 1)
    assert ns_to_stamp_fields(-1) == (-1, 999_999_999)
    stamp = argparse.Namespace(sec=12, nanosec=34)
    assert stamp_to_ns(stamp) == 12_000_000_034


# --------------------------------------------------------------------------- real data
@pytest.mark.parametrize("storage, suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_convert_slambook(tmp_path, storage, suffix):
    need_slambook()
    bag = tmp_path / f"slambook_{storage}"
    report = convert_rgbd_folder(
        SLAMBOOK, bag, intrinsics=INTRINSICS, depth_scale=1000, storage=storage, progress=False
    )
    assert report.frames == 5 and (report.width, report.height) == (640, 480)
    assert report.depth_pixels_out_of_range == 0 and not report.has_labels
    assert len(list(bag.glob(f"*{suffix}"))) == 1 and (bag / "metadata.yaml").is_file()
    assert report.size_bytes == sum(p.stat().st_size for p in bag.iterdir())

    summary = bag_summary(bag)
    assert summary == {
        TOPICS["color"]: ("sensor_msgs/msg/Image", 5),
        TOPICS["depth"]: ("sensor_msgs/msg/Image", 5),
        TOPICS["info"]: ("sensor_msgs/msg/CameraInfo", 5),
        "/tf": ("tf2_msgs/msg/TFMessage", 5),
        "/tf_static": ("tf2_msgs/msg/TFMessage", 1),
    }
    assert report.topics == summary

    msgs = by_topic(bag)
    poses, stamps_in_file = read_poses(SLAMBOOK / "pose.txt")
    assert stamps_in_file is None
    expected_stamps = [DEFAULT_START_STAMP_NS + round(i * 1e9 / 30.0) for i in range(5)]
    for i in range(5):
        color, depth, info, tf = (
            msgs[t][i] for t in (TOPICS["color"], TOPICS["depth"], TOPICS["info"], "/tf")
        )
        for m in (color, depth, info, tf):
            assert m.stamp_ns == expected_stamps[i]
        for m in (color, depth, info):
            assert stamp_to_ns(m.msg.header.stamp) == expected_stamps[i]
            assert m.msg.header.frame_id == "camera_color_optical_frame"

        png = cv2.imread(str(SLAMBOOK / "color" / f"{i + 1}.png"), cv2.IMREAD_COLOR)
        assert color.msg.encoding == "rgb8"
        np.testing.assert_array_equal(color_to_rgb(color.msg), png[:, :, ::-1])
        pgm = cv2.imread(str(SLAMBOOK / "depth" / f"{i + 1}.pgm"), cv2.IMREAD_UNCHANGED)
        assert pgm.dtype == np.uint16
        d, scale = depth_from_msg(depth.msg)
        assert depth.msg.encoding == "16UC1" and scale == 1000.0
        assert d.dtype == np.uint16 and d.tobytes() == pgm.tobytes()  # bit-identical

        assert intrinsics_from_camera_info(info.msg) == (*INTRINSICS, 640, 480, False)
        np.testing.assert_array_equal(info.msg.k, [518, 0, 325.5, 0, 519, 253.5, 0, 0, 1])
        assert info.msg.distortion_model == "plumb_bob"

        fixed_to_opt, dyn, static = chain(msgs["/tf_static"], tf)
        assert (dyn.header.frame_id, dyn.child_frame_id) == ("odom", "camera_link")
        assert (static.header.frame_id, static.child_frame_id) == (
            "camera_link",
            "camera_color_optical_frame",
        )
        line = (SLAMBOOK / "pose.txt").read_text().split("\n")[i].split()
        expected = transform_to_matrix([float(v) for v in line[:3]], [float(v) for v in line[3:]])
        np.testing.assert_allclose(fixed_to_opt, expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(poses[i], expected, rtol=0, atol=1e-15)

    (static_msg,) = msgs["/tf_static"]
    q = static_msg.msg.transforms[0].transform.rotation
    assert (q.x, q.y, q.z, q.w) == OPTICAL_FROM_LINK_QUAT_XYZW


def test_iter_raw_gives_cdr_for_rclpy(tmp_path):
    need_slambook()
    msgs_mod = pytest.importorskip("sensor_msgs.msg")
    from rclpy.serialization import deserialize_message

    bag = tmp_path / "bag"
    convert_rgbd_folder(SLAMBOOK, bag, intrinsics=INTRINSICS, progress=False)
    raws = list(iter_raw(bag, topics=[TOPICS["depth"]]))
    assert [r.msgtype for r in raws] == ["sensor_msgs/msg/Image"] * 5
    ros_msg = deserialize_message(raws[0].data, msgs_mod.Image)
    pgm = cv2.imread(str(SLAMBOOK / "depth" / "1.pgm"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(image_to_numpy(ros_msg), pgm)
    with pytest.raises(ValueError, match="not in bag"):
        list(iter_messages(bag, topics=["/nope"]))


def test_cli_convert_rgbd(tmp_path, capsys):
    need_slambook()
    from concerto_ros.cli import convert

    parser = argparse.ArgumentParser(prog="concerto")
    convert.register(parser.add_subparsers(dest="command"))
    bag = tmp_path / "cli_bag"
    argv = [
        "convert",
        "rgbd",
        str(SLAMBOOK),
        str(bag),
        "--fx",
        "518",
        "--fy",
        "519",
        "--cx",
        "325.5",
        "--cy",
        "253.5",
        "--storage",
        "sqlite3",
        "--quiet",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "frames: 5, 640x480 px" in out and "sqlite3" in out and "/tf_static" in out
    assert bag_summary(bag)[TOPICS["color"]] == ("sensor_msgs/msg/Image", 5)
    # exists -> error without --overwrite, replaced with it
    args = parser.parse_args(argv)
    assert args.func(args) == 2
    assert "exists" in capsys.readouterr().err
    args = parser.parse_args(argv + ["--overwrite", "--rate", "10"])
    assert args.func(args) == 0
    stamps = [m.stamp_ns for m in iter_messages(bag, topics=["/tf"])]
    assert np.diff(stamps).tolist() == [100_000_000] * 4
    args = parser.parse_args(argv[:4] + ["--fx", "1"])  # partial intrinsics
    assert args.func(args) == 2


# --------------------------------------------------------------------------- synthetic
def write_synthetic(root: Path, stems=("10", "2", "1"), depth_scale=5000.0, with_labels=True):
    rng = np.random.default_rng(3)
    h, w = 6, 8
    (root / "color").mkdir(parents=True)
    (root / "depth").mkdir()
    if with_labels:
        (root / "labels").mkdir()
    frames = {}
    for stem in stems:
        bgr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        depth = rng.integers(0, 60000, size=(h, w), dtype=np.uint16)
        depth[0, :4] = [0, 2, 3, 7]  # 2/5 = 0.4 -> 0, 3/5 = 0.6 -> 1, 7/5 = 1.4 -> 1
        labels = rng.integers(0, 1000, size=(h, w), dtype=np.uint16)
        assert cv2.imwrite(str(root / "color" / f"{stem}.png"), bgr)
        assert cv2.imwrite(str(root / "depth" / f"{stem}.png"), depth)
        if with_labels:
            assert cv2.imwrite(str(root / "labels" / f"{stem}.png"), labels)
        frames[stem] = (bgr, depth, labels)
    (root / "poses.txt").write_text(
        "# t tx ty tz qx qy qz qw\n"
        "1305031102.175304 1 2 3 0 0 0 1\n"
        "\n"
        "1305031102.211214 1.5 2 3 0 0 0.7071068 0.7071068\n"
        "1305031102.3 0 0 0 0.5 0.5 0.5 0.5\n"
    )
    (root / "camera.yaml").write_text(
        yaml.safe_dump(
            {
                "fx": 10.0,
                "fy": 11.0,
                "cx": 3.5,
                "cy": 2.5,
                "width": w,
                "height": h,
                "depth_scale": depth_scale,
                "class_names": ["floor", "chair"],
            }
        )
    )
    return frames


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_synthetic_stamps_labels_and_depth_scale(tmp_path, storage):
    frames = write_synthetic(tmp_path / "in")
    bag = tmp_path / "out"
    report = convert_rgbd_folder(tmp_path / "in", bag, storage=storage, progress=False)
    assert report.intrinsics == (10.0, 11.0, 3.5, 2.5) and report.input_depth_scale == 5000.0
    assert report.has_labels and report.frames == 3
    msgs = by_topic(bag)
    assert [len(msgs[t]) for t in TOPICS.values()] == [3, 3, 3, 3]
    # exact stamps from the first column, frames in numeric stem order 1, 2, 10
    expected = [1305031102_175304000, 1305031102_211214000, 1305031102_300000000]
    assert [m.stamp_ns for m in msgs["/tf"]] == expected
    assert [stamp_to_ns(m.msg.header.stamp) for m in msgs[TOPICS["labels"]]] == expected
    for i, stem in enumerate(["1", "2", "10"]):
        bgr, depth, labels = frames[stem]
        np.testing.assert_array_equal(color_to_rgb(msgs[TOPICS["color"]][i].msg), bgr[:, :, ::-1])
        mm, scale = depth_from_msg(msgs[TOPICS["depth"]][i].msg)
        assert scale == 1000.0
        np.testing.assert_array_equal(
            mm, np.array([round(v / 5000 * 1000) for v in depth.ravel()]).reshape(depth.shape)
        )
        np.testing.assert_array_equal(mm[0, :4], [0, 0, 1, 1])
        lab = msgs[TOPICS["labels"]][i].msg
        assert lab.encoding == "16UC1"
        np.testing.assert_array_equal(image_to_numpy(lab), labels)
    poses, _ = read_poses(tmp_path / "in" / "poses.txt")
    for i in range(3):
        got, _, _ = chain(msgs["/tf_static"], msgs["/tf"][i])
        np.testing.assert_allclose(got, poses[i], atol=1e-12)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["custom_data"]["concerto.class_names"] == '["floor", "chair"]'
    qos = [
        t["topic_metadata"]["offered_qos_profiles"]
        for t in meta["topics_with_message_count"]
        if t["topic_metadata"]["name"] == "/tf_static"
    ][0]
    assert "transient_local" in str(qos)


def test_synthetic_color_order_rgb_and_direct_tf(tmp_path):
    frames = write_synthetic(tmp_path / "in", with_labels=False)
    bag = tmp_path / "out"
    convert_rgbd_folder(
        tmp_path / "in",
        bag,
        color_order="rgb",
        camera_link_frame=None,
        fixed_frame="map",
        camera_frame="cam",
        progress=False,
    )
    msgs = by_topic(bag)
    assert "/tf_static" not in msgs and TOPICS["labels"] not in msgs
    np.testing.assert_array_equal(color_to_rgb(msgs[TOPICS["color"]][0].msg), frames["1"][0])
    (tf,) = msgs["/tf"][2].msg.transforms
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "cam")
    np.testing.assert_allclose(
        transform_msg_to_matrix(tf), read_poses(tmp_path / "in" / "poses.txt")[0][2], atol=1e-12
    )


def test_depth_to_millimetres_out_of_range():
    d = np.array([[0, 10, 6553, 6554, 65535]], dtype=np.uint16)
    mm, over = depth_to_millimetres(d, 100.0)  # centimetres
    np.testing.assert_array_equal(mm, [[0, 100, 65530, 0, 0]])
    assert over == 2
    same, over = depth_to_millimetres(d, 1000.0)
    assert same.tobytes() == d.tobytes() and over == 0


def test_errors_are_clear(tmp_path):
    with pytest.raises(RecordingError, match="RGB-D folder not found"):
        convert_rgbd_folder(tmp_path / "missing", tmp_path / "b1", intrinsics=INTRINSICS)

    root = tmp_path / "in"
    write_synthetic(root)
    (root / "depth" / "2.png").unlink()
    with pytest.raises(RecordingError, match=r"depth.2"):
        convert_rgbd_folder(root, tmp_path / "b2", progress=False)

    root = tmp_path / "in3"
    write_synthetic(root)
    (root / "poses.txt").write_text("0 0 0 0 0 0 1\n0 0 0 0 0 0 1\n")
    with pytest.raises(ValueError, match=r"2 poses but .* 3 RGB-D frames"):
        convert_rgbd_folder(root, tmp_path / "b3", progress=False)
    (root / "poses.txt").write_text("0 0 0 0 0 0 1\n0 0 0 0 0 1\n0 0 0 0 0 0 1\n")
    with pytest.raises(ValueError, match=r"poses.txt:2: expected 7 columns"):
        convert_rgbd_folder(root, tmp_path / "b3", progress=False)

    root = tmp_path / "in4"
    write_synthetic(root)
    assert cv2.imwrite(str(root / "depth" / "10.png"), np.zeros((5, 8), np.uint16))
    with pytest.raises(ValueError, match=r"size mismatch.*10.png is 8x6.*10.png is 8x5"):
        convert_rgbd_folder(root, tmp_path / "b4", progress=False)
    assert not (tmp_path / "b4").exists()  # the partial bag was removed

    (root / "camera.yaml").unlink()
    with pytest.raises(ValueError, match="no intrinsics"):
        convert_rgbd_folder(root, tmp_path / "b5", progress=False)

    with pytest.raises(ValueError, match="intrinsics are for 9x6 images"):
        intr = argparse.Namespace(fx=1.0, fy=1.0, cx=0.5, cy=0.5, width=9, height=6)
        convert_rgbd_folder(root, tmp_path / "b5", intrinsics=intr, progress=False)
    assert not (tmp_path / "b5").exists()

    (tmp_path / "b6").mkdir()
    (tmp_path / "b6" / "keep.txt").write_text("not a bag")
    with pytest.raises(FileExistsError, match="not a rosbag2 directory"):
        convert_rgbd_folder(root, tmp_path / "b6", intrinsics=(1, 1, 1, 1), overwrite=True)
    assert (tmp_path / "b6" / "keep.txt").exists()
