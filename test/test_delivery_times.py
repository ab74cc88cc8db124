"""Transport and queueing delays of input messages from rclpy's MessageInfo (ROS-free)."""

import inspect

import pytest

from concerto_ros.ros.delivery import DeliveryTimes

MS = 1_000_000


def test_delays_split_into_transport_and_queueing_per_topic():
    d = DeliveryTimes(keep=100)
    for i in range(100):  # transport 2 ms (i < 99) or 50 ms (the last); queued i ms
        src = 10_000 * MS + i * 100 * MS
        rec = src + (50 if i == 99 else 2) * MS
        d.record("/tf", {"source_timestamp": src, "received_timestamp": rec}, now_ns=rec + i * MS)
    d.record("/image", {"source_timestamp": 5 * MS, "received_timestamp": 9 * MS}, now_ns=10 * MS)
    s = d.summary()
    assert s["transport_ms_p50:/tf"] == 2.0 and s["transport_ms_p99:/tf"] == 2.5  # numpy's linear p99 of 99x2, 1x50
    assert s["queued_ms_p50:/tf"] == 49.5 and s["queued_ms_p99:/tf"] == 98.0
    assert s["transport_ms_p50:/image"] == 4.0 and s["queued_ms_p99:/image"] == 1.0
    assert len(s) == 8


def test_missing_timestamps_add_nothing_and_the_wrapper_takes_message_info():
    d = DeliveryTimes()
    d.record("/a", {"source_timestamp": 0, "received_timestamp": 0})  # a middleware without them
    d.record("/a", None)
    d.record("/a", {"received_timestamp": 5})
    assert d.summary() == {}
    got = []
    cb = d.wrap("/b", got.append)
    # rclpy passes MessageInfo only to callbacks that cannot be called with the message alone
    assert len(inspect.signature(cb).parameters) == 2
    cb("msg", {"source_timestamp": 1 * MS, "received_timestamp": 3 * MS})
    assert got == ["msg"] and d.summary()["transport_ms_p50:/b"] == 2.0


def test_the_input_delivery_status_warns_on_the_latest_topic_above_the_limit():
    pytest.importorskip("rclpy")
    from diagnostic_msgs.msg import DiagnosticStatus

    from concerto_ros.ros.perception import delivery_level

    assert delivery_level({}, 100.0) == (DiagnosticStatus.OK, "ok: transport delay p99 <= 100 ms on every input")
    summary = {"transport_ms_p99:/camera/color/image_raw": 312.4, "transport_ms_p50:/camera/color/image_raw": 0.4,
               "queued_ms_p99:/camera/depth/image_raw": 900.0,   # the node's own share: not this status
               "transport_ms_p99:/camera/depth/image_raw": 100.0,  # at the limit: not late
               "transport_ms_p99:/tf": 3.0}
    level, message = delivery_level(summary, 100.0)
    assert level == DiagnosticStatus.WARN
    assert message.startswith("'/camera/color/image_raw' arrives late: transport delay p99 312 ms > 100 ms; ")
    assert "FASTDDS_DEFAULT_PROFILES_FILE" in message and "fastdds_large_data.xml" in message
    summary["transport_ms_p99:/camera/depth/image_raw"] = 450.0
    level, message = delivery_level(summary, 100.0)
    assert message.startswith("'/camera/depth/image_raw' arrives late: transport delay p99 450 ms > 100 ms "
                              "(and 1 more topic(s))")
    assert delivery_level(summary, 500.0)[0] == DiagnosticStatus.OK
