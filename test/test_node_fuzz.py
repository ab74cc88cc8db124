"""Attack the running node over DDS: every malformed family, then introspection and shutdown.

One node process (the shipped config, LiDAR input on ``/points`` too) receives every case of
:mod:`concerto_ros.testing.fuzz` (``/tf``, ``/tf_static``, camera info, colour, depth,
stamps, PointCloud2), each followed by a good frame. The node must stay alive, count each
case under its own reason, never count an internal error, and publish the cloud of every
good frame. Then every parameter is read back as ``ros2 param dump`` does and reloads as a
params file, and SIGINT while a large frame is being processed ends the process cleanly.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run scripts/setup.sh)")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built (run scripts/setup.sh)")

from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from concerto_ros.bag.live import NodeProcess  # noqa: E402
from concerto_ros.config import SPECS, default_config_path, load_config  # noqa: E402
from concerto_ros.testing import fuzz  # noqa: E402
from concerto_ros.testing.harness import Harness  # noqa: E402

S = 1_000_000_000
# every frame a keyframe (the good frames do not move): each good frame gets its own cloud
OVERRIDES = {"qos.input": "reliable", "topics.points": "/points", "tf.timeout": 0.5, "skip_log_period": 0.5,
             "publish.features": False, "keyframe.min_translation": 0.0, "keyframe.min_rotation": 0.0,
             "keyframe.max_interval": 0.0}
TOPICS = fuzz.Topics()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    log = tmp_path_factory.mktemp("fuzz") / "node.log"
    node = NodeProcess(default_config_path(), OVERRIDES, log_path=log)
    rclpy.init()
    h = Harness()
    try:
        assert h.wait_for_node([TOPICS.color, TOPICS.depth, TOPICS.camera_info, TOPICS.points],
                               [Image, Image, CameraInfo, PointCloud2], alive=node.alive), node.tail()
        h.publish([("/tf_static", fuzz.static_tf())])
        time.sleep(0.5)
        yield node, h
    finally:
        h.close()
        rclpy.shutdown()
        node.stop()
        mp.undo()


def test_every_malformed_family_is_skipped_and_the_next_good_frame_published(live):
    node, h = live
    t = 100 * S
    h.publish(fuzz.good_frame(t))
    assert h.wait_cloud(t, 60, node.alive), (h.diag, node.tail())
    missed, sent = [], 0
    all_cases = fuzz.cases(t)
    for i in range(len(all_cases)):
        t += S // 10
        case = fuzz.cases(t)[i]  # the same case, stamped now
        h.publish(fuzz.fix_topics(case, TOPICS))
        sent += len(case.messages)
        t += S // 10
        h.publish(fuzz.good_frame(t))
        if not h.wait_cloud(t, 30, node.alive):
            missed.append(f"{case.family}/{case.name}")
    assert node.alive(), node.tail(50)
    assert not missed, (missed, h.diag, node.tail(50))
    assert sent >= 80 and len(all_cases) >= 40
    time.sleep(1.5)  # one diagnostics period
    assert h.count("internal_errors") == 0, node.tail(100)
    counted = {k.split(":")[-1] for k, v in h.diag.items() if k.startswith("skipped:") and int(v) > 0}
    expected = {c.reason for c in all_cases if c.reason}
    assert expected <= counted, (expected - counted, h.diag)
    assert h.count("frames_processed") == len(all_cases) + 1  # the good frames, nothing else
    # the second status, "input delivery": WARN exactly when an input's transport delay p99 in
    # the same message is above diagnostics.max_transport_ms (100 ms), naming the worst topic
    d = dict(h.diag)
    p99 = {k.split(":", 1)[1]: float(v) for k, v in d.items() if k.startswith("transport_ms_p99:")}
    assert {"/camera/color/image_raw", "/camera/depth/image_raw", "/tf"} <= set(p99), sorted(p99)
    late = {t: v for t, v in p99.items() if v > 100.0}
    assert d["_delivery_level"] == (1 if late else 0), (d["_delivery_message"], p99)
    if late:
        assert f"'{max(late, key=late.get)}' arrives late" in d["_delivery_message"]
    else:
        assert d["_delivery_message"] == "ok: transport delay p99 <= 100 ms on every input"
    log = node.tail(400)
    assert "cannot start" not in log and "Traceback" not in log
    assert "(bad_transform): ignored 'odom' -> 'base'" in log   # the warning names the frames and the reason
    assert "zero quaternion" in log and "(bad_pose): odom <- 'cam_far'" in log


def test_parameters_dump_and_reload(live, tmp_path):
    node, h = live
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters, ListParameters

    n = h.node
    lister = n.create_client(ListParameters, "/perception_node/list_parameters")
    getter = n.create_client(GetParameters, "/perception_node/get_parameters")
    assert lister.wait_for_service(timeout_sec=20) and getter.wait_for_service(timeout_sec=20)

    def call(cli, req):
        fut = cli.call_async(req)
        assert h.wait(lambda: fut.done(), 20)
        return fut.result()

    names = list(call(lister, ListParameters.Request()).result.names)
    assert set(SPECS) <= set(names)
    values = call(getter, GetParameters.Request(names=names)).values
    assert len(values) == len(names)
    assert all(v.type != ParameterType.PARAMETER_NOT_SET for v in values), \
        [nm for nm, v in zip(names, values) if v.type == ParameterType.PARAMETER_NOT_SET]
    field = {ParameterType.PARAMETER_BOOL: "bool_value", ParameterType.PARAMETER_INTEGER: "integer_value",
             ParameterType.PARAMETER_DOUBLE: "double_value", ParameterType.PARAMETER_STRING: "string_value",
             ParameterType.PARAMETER_STRING_ARRAY: "string_array_value"}
    dump = {nm: (list(getattr(v, field[v.type])) if v.type == ParameterType.PARAMETER_STRING_ARRAY
                 else getattr(v, field[v.type])) for nm, v in zip(names, values) if nm in SPECS}
    assert dump["language.vocabulary"] == [] and dump["topics.points"] == "/points"
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump({"/perception_node": {"ros__parameters": dump}}))
    cfg = load_config(path)  # the dump is a valid params file with the node's values
    assert cfg.topics.points == "/points" and cfg.tf.timeout == 0.5 and cfg.language.vocabulary == []


def test_sigint_while_a_frame_is_processed_exits_cleanly(live):
    node, h = live
    from concerto_ros.msgs.camera_info import fill_camera_info
    from concerto_ros.msgs.image import fill_image
    from tf2_msgs.msg import TFMessage

    t = 150 * S  # after the first test's stamps (100-110 s), within validation.max_stamp_jump
    h.publish(fuzz.good_frame(t))  # a small frame first: the window is in use
    assert h.wait_cloud(t, 30, node.alive)
    t += S // 10
    big = np.full((480, 640), 1500, dtype=np.uint16)
    big[::7] = 2500  # some structure, 300k points
    rng = np.random.default_rng(0)
    h.publish([("/tf", TFMessage(transforms=[fuzz._tf("odom", "base", t)])),
               (TOPICS.color, fill_image(Image(), rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), "rgb8", t, "cam")),
               (TOPICS.depth, fill_image(Image(), big, "16UC1", t, "cam")),
               (TOPICS.camera_info, fill_camera_info(CameraInfo(), 525.0, 525.0, 319.5, 239.5, 640, 480, t, "cam"))])
    time.sleep(0.6)  # the worker is decoding / encoding the 640x480 frame now
    node.proc.send_signal(2)
    assert node.proc.wait(60) == 0, node.tail(50)
    log = node.tail(200)
    assert "shutting down" in log
    for bad in ("Traceback", "RCLError", "context is invalid", "Exception"):
        assert bad not in log, log
