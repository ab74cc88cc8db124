"""Message-level recordings: rosbag2 (MCAP, sqlite3), ROS 1 .bag and ROS 1 MCAP, each written by
an independent writer and read back through concerto_ros.recordings; the real Ouster file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from concerto_ros.msgs.pointcloud2 import fill_pointcloud2, xyz_from_pointcloud2
from concerto_ros.msgs.transforms import fill_transform_stamped, stamp_to_ns, transform_to_matrix
from concerto_ros.recordings import RecordingError, open_recording
from concerto_ros.recordings.bags import is_ros1_mcap
from concerto_ros.recordings.ros1_mcap import Ros1McapRecording
from concerto_ros.recordings.typestore import make_message, ros2_typestore

PC2, PF, TF, TFS = ("sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/PointField", "tf2_msgs/msg/TFMessage",
                    "geometry_msgs/msg/TransformStamped")
#: ROS 1 tf2_msgs/TFMessage (not in rosbags' ROS 1 store, as in real ROS 1 recordings it is
#: defined by the file)
TF_ROS1_DEF = "geometry_msgs/TransformStamped[] transforms\n"
S0, S1 = 1_600_000_000_100_000_000, 1_600_000_000_200_000_000
PTS = np.array([[1.0, 2.0, 3.0], [4.5, -5.0, 6.0], [np.nan, 0.0, 0.0], [-1.0, -2.0, 0.25]], dtype=np.float32)
RGB = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
LABEL = np.array([3, 7, 9, 11], dtype=np.int32)
T_BASE_LIDAR = transform_to_matrix((0.1, 0.0, 1.5), (0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)))
T_ODOM_BASE = {S0: transform_to_matrix((1.0, 2.0, 0.0), (0, 0, 0, 1)),
               S1: transform_to_matrix((2.0, 2.0, 0.0), (0, 0, 0, 1))}
FORMATS = ["rosbag2-mcap", "rosbag2-sqlite3", "ros1-bag", "ros1-mcap"]


def _ros1_store():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    store.register(get_types_from_msg(TF_ROS1_DEF, TF))
    return store


def _messages(store) -> list[tuple[str, str, int, object]]:
    """(topic, msgtype, log time, rosbags message): a static and two dynamic TF messages (the
    second with a non-finite and a zero-quaternion transform) and two clouds."""

    def tfs(parent, child, stamp, T):
        return fill_transform_stamped(make_message(store, TFS), T, parent, child, stamp)

    static = store.types[TF](transforms=[tfs("base_link", "lidar", S0, T_BASE_LIDAR)])
    dyn0 = store.types[TF](transforms=[tfs("odom", "base_link", S0, T_ODOM_BASE[S0])])
    bad_nan, bad_zero = tfs("odom", "wheel", S1, np.eye(4)), tfs("odom", "arm", S1, np.eye(4))
    bad_nan.transform.translation.x = float("nan")
    q = bad_zero.transform.rotation
    q.x = q.y = q.z = q.w = 0.0
    dyn1 = store.types[TF](transforms=[tfs("odom", "base_link", S1, T_ODOM_BASE[S1]), bad_nan, bad_zero])
    clouds = [fill_pointcloud2(make_message(store, PC2), store.types[PF], s, "lidar", PTS * (1 + i), rgb=RGB,
                               label=LABEL) for i, s in enumerate((S0, S1))]
    # clouds first: the readers must give log-time order whatever the write order
    return [("/points", PC2, S0 + 5, clouds[0]), ("/points", PC2, S1 + 5, clouds[1]),
            ("/tf_static", TF, S0 - 5, static), ("/tf", TF, S0, dyn0), ("/tf", TF, S1, dyn1)]


def _write_all(writer, store, serialize) -> None:
    """Write :func:`_messages` with a rosbags writer (rosbag2 or rosbag1)."""
    conns = {}
    for topic, msgtype, stamp, msg in _messages(store):
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
        writer.write(conns[topic], stamp, serialize(msg, msgtype))


def _write_rosbag2(path: Path, storage: str) -> Path:
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = ros2_typestore()
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as w:
        _write_all(w, ts, ts.serialize_cdr)
    return path


def _write_ros1_bag(path: Path) -> Path:
    from rosbags.rosbag1 import Writer

    ts = _ros1_store()
    with Writer(path) as w:
        _write_all(w, ts, ts.serialize_ros1)
    return path


def _write_ros1_mcap(path: Path) -> Path:
    """With mcap-ros1-support's writer: genpy messages built from each type's full ROS 1
    definition (what a ROS 1 system records), filled by deserialising rosbags' ROS 1 bytes."""
    from mcap_ros1._vendor.genpy import dynamic
    from mcap_ros1.writer import Writer

    ts = _ros1_store()
    classes = {}
    with path.open("wb") as f:
        w = Writer(f)
        for topic, msgtype, stamp, msg in _messages(ts):
            name = msgtype.replace("/msg/", "/")
            if name not in classes:
                classes[name] = dynamic.generate_dynamic(name, ts.generate_msgdef(msgtype)[0])[name]
            gen = classes[name]()
            gen.deserialize(bytes(ts.serialize_ros1(msg, msgtype)))
            w.write_message(topic, gen, log_time=stamp)
        w.finish()
    return path


@pytest.fixture(scope="module", params=FORMATS)
def written(request, tmp_path_factory) -> tuple[str, Path]:
    d = tmp_path_factory.mktemp(request.param)
    kind = request.param
    if kind.startswith("rosbag2"):
        return kind, _write_rosbag2(d / "bag", kind.split("-")[1])
    if kind == "ros1-bag":
        return kind, _write_ros1_bag(d / "run.bag")
    return kind, _write_ros1_mcap(d / "run.mcap")


def test_auto_source_reads_summary_and_log_time_order(written):
    kind, path = written
    rec = open_recording(str(path))
    assert rec.kind == "messages" and rec.source.resolved_type() == "bag"
    assert isinstance(rec, Ros1McapRecording) == (kind == "ros1-mcap") == is_ros1_mcap(path)
    assert rec.summary() == {"/points": (PC2, 2), "/tf_static": (TF, 1), "/tf": (TF, 2)}
    msgs = list(rec.messages())
    assert [m.stamp_ns for m in msgs] == [S0 - 5, S0, S0 + 5, S1, S1 + 5]
    assert [m.topic for m in msgs] == ["/tf_static", "/tf", "/points", "/tf", "/points"]


def test_clouds_decode_with_the_project_converters(written):
    _, path = written
    clouds = list(open_recording(path).messages(["/points"]))
    for i, (m, stamp) in enumerate(zip(clouds, (S0, S1))):
        assert m.msgtype == PC2 and stamp_to_ns(m.msg.header.stamp) == stamp and m.msg.header.frame_id == "lidar"
        assert isinstance(m.msg.data, np.ndarray) and m.msg.data.dtype == np.uint8
        xyz, extras = xyz_from_pointcloud2(m.msg)
        keep = np.isfinite(PTS).all(1)
        np.testing.assert_array_equal(xyz, PTS[keep] * (1 + i))
        np.testing.assert_array_equal(extras["rgb"], RGB[keep])
        np.testing.assert_array_equal(extras["label"], LABEL[keep])


def test_raw_gives_ros2_cdr(written):
    _, path = written
    ts = ros2_typestore()
    raws = list(open_recording(path).raw(["/points", "/tf"]))
    assert [(r.topic, r.stamp_ns) for r in raws] == [("/tf", S0), ("/points", S0 + 5), ("/tf", S1), ("/points", S1 + 5)]
    cloud = ts.deserialize_cdr(raws[1].data, PC2)
    np.testing.assert_array_equal(xyz_from_pointcloud2(cloud)[0], PTS[np.isfinite(PTS).all(1)])
    tf1 = ts.deserialize_cdr(raws[2].data, TF)
    assert [t.child_frame_id for t in tf1.transforms] == ["base_link", "wheel", "arm"]
    assert stamp_to_ns(tf1.transforms[0].header.stamp) == S1


def test_transforms_preload_tf_and_count_bad_ones(written):
    _, path = written
    rec = open_recording(path)
    buf = rec.transforms()
    assert dict(rec.transform_skips) == {"non_finite": 1, "zero_quaternion": 1}
    for stamp in (S0, S1):
        np.testing.assert_allclose(buf.lookup("odom", "lidar", stamp), T_ODOM_BASE[stamp] @ T_BASE_LIDAR, atol=1e-12)
    mid = (S0 + S1) // 2  # linear interpolation between the two samples
    assert buf.lookup("odom", "base_link", mid)[0, 3] == pytest.approx(1.5)


def test_unknown_topic_and_unreadable_files_give_one_line(written, tmp_path):
    _, path = written
    with pytest.raises(RecordingError, match=r"topics \['/nope'\] not in bag; it has \['/points'"):
        open_recording(path).messages(["/nope"])
    for name, data in (("junk.mcap", b"\x89MCAP0\r\n" + b"\x00" * 40), ("junk.bag", b"#ROSBAG V2.0\nnope"),
                       ("empty.db3", b"")):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(RecordingError) as err:
            rec = open_recording(p)
            rec.summary()
            list(rec.messages())
        assert str(err.value).startswith(f"{p}: ") and "\n" not in str(err.value)


def test_real_ouster_ros1_mcap(shared_dir):
    path = shared_dir / "data" / "lidar_bag_ouster" / "ouster_os1_64.mcap"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rec = open_recording(path)
    assert isinstance(rec, Ros1McapRecording)
    summary = rec.summary()
    assert summary["/os1_cloud_node/points"] == (PC2, 2) and summary["/tf_static"] == (TF, 1)
    clouds = list(rec.messages(["/os1_cloud_node/points"]))
    assert len(clouds) == 2
    for m in clouds:
        msg = m.msg
        assert (msg.height, msg.width, msg.point_step) == (64, 2048, 48) and msg.header.frame_id == "os1_lidar"
        assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "t", "reflectivity", "ring", "noise",
                                                 "range"]
        xyz, extras = xyz_from_pointcloud2(msg)
        # no-return pixels are zeros (finite); returns: ~45.7k of the 131072
        valid = np.linalg.norm(xyz, axis=1) > 0
        assert xyz.shape == (131072, 3) and 45_000 < valid.sum() < 46_500
        assert (valid == (extras["range"] > 0)).all()
    buf = rec.transforms()
    assert not rec.transform_skips and set(buf.frames()) == {"os1_sensor", "os1_lidar", "os1_imu"}
    T = buf.lookup("os1_sensor", "os1_lidar")  # static: any stamp
    np.testing.assert_allclose(T[:3, 3], [0.0, 0.0, 0.03618])
    np.testing.assert_allclose(T[:3, :3], np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    (raw,) = list(rec.raw(["/tf_static"]))
    back = ros2_typestore().deserialize_cdr(raw.data, TF)
    assert sorted(t.child_frame_id for t in back.transforms) == ["os1_imu", "os1_lidar"]
