"""Reliability of the ROS-free core: the bad inputs measured against the node, one by one.

Every case of the reliability issue has its reason here: bad transforms are ignored with a
reason, implausible intrinsics and poses never reach the window, a far-future stamp (frame or
transform) does not poison what follows, a jump that would make the window unserializable
crops the window instead of failing, and a failure inside the models restores the window.
"""

from __future__ import annotations

import time
from types import SimpleNamespace as NS

import numpy as np
import pytest

from concerto_ros.cloud.extent import WindowExtent
from concerto_ros.config import PerceptionConfig, load_config
from concerto_ros.msgs.pointcloud2 import FLOAT32, FLOAT64, UINT8, cloud_field_problem
from concerto_ros.sensors.skips import INTERNAL_ERROR, FrameSkipped, SkipCounter
from concerto_ros.sensors.stream import FrameStream
from concerto_ros.sensors.tf_buffer import TransformBuffer, TransformUnavailable
from concerto_ros.sensors.types import PointFrame
from concerto_ros.sensors.validation import StampGuard, StampVerdict, intrinsics_problem, pose_problem

S = 1_000_000_000


def _tf(parent, child, sec, t=(0.0, 0.0, 0.0), q=(0.0, 0.0, 0.0, 1.0)):
    return NS(header=NS(frame_id=parent, stamp=NS(sec=sec, nanosec=0)), child_frame_id=child,
              transform=NS(translation=NS(x=t[0], y=t[1], z=t[2]), rotation=NS(x=q[0], y=q[1], z=q[2], w=q[3])))


@pytest.mark.parametrize("entry, reason", [
    (("odom", "cam", 5, (0, 0, 0), (0, 0, 0, 0)), "zero quaternion"),
    (("odom", "cam", 5, (0, 0, 0), (1e-10, 0, 0, 0)), "zero quaternion"),
    (("", "cam", 5), "non-empty"),
    (("odom", "", 5), "non-empty"),
    (("cam", "cam", 5), "same frame"),
    (("cam", "odom", 5), "loop"),
    (("odom", "cam", 5, (np.nan, 0, 0)), "non-finite"),
])
def test_bad_transforms_are_ignored_with_the_frames_and_the_reason(entry, reason):
    buf = TransformBuffer()
    assert buf.add_message(NS(transforms=[_tf("odom", "cam", 4, (1.0, 0.0, 0.0))])) == []
    problems = buf.add_message(NS(transforms=[_tf(*entry), _tf("odom", "cam", 6, (3.0, 0.0, 0.0))]))
    assert len(problems) == 1 and reason in problems[0] and repr(entry[1]) in problems[0]
    # the good entry of the same message is stored: interpolation between 4 s and 6 s
    np.testing.assert_allclose(buf.lookup("odom", "cam", 5 * S)[:3, 3], [2.0, 0.0, 0.0])


def test_a_transform_from_far_ahead_is_held_and_lookups_keep_working():
    notes = []
    buf = TransformBuffer(cache_time_s=10.0, max_jump_s=60.0, on_note=notes.append)
    for sec in range(1, 4):
        buf.add_message(NS(transforms=[_tf("odom", "cam", sec, (float(sec), 0, 0))]))
    buf.add_message(NS(transforms=[_tf("odom", "cam", 1_000_000, (9.0, 0, 0))]))  # 10^6 s ahead
    assert buf.held == 1 and not notes
    for sec in range(4, 6):
        buf.add_message(NS(transforms=[_tf("odom", "cam", sec, (float(sec), 0, 0))]))
    np.testing.assert_allclose(buf.lookup("odom", "cam", 4_500_000_000)[:3, 3], [4.5, 0.0, 0.0])
    # a real jump (three consistent samples) is accepted and said
    for sec in (5000, 5001, 5002):
        buf.add_message(NS(transforms=[_tf("odom", "cam", sec, (7.0, 0, 0))]))
    assert len(notes) == 1 and "jumped in time" in notes[0]
    np.testing.assert_allclose(buf.lookup("odom", "cam", 5001 * S)[:3, 3], [7.0, 0.0, 0.0])
    with pytest.raises(TransformUnavailable):
        buf.lookup("odom", "cam", 4 * S)  # the old history is gone after the confirmed jump


def test_stamp_guard_holds_then_confirms_or_refutes():
    g = StampGuard(max_jump_s=60.0, confirm=3)
    assert g.check(0)[0] == StampVerdict.INVALID and g.check(-5 * S)[0] == StampVerdict.INVALID
    assert g.check(100 * S)[0] == StampVerdict.ACCEPT
    assert g.check(10 ** 6 * S, "a")[0] == StampVerdict.HELD
    assert g.check(101 * S)[0] == StampVerdict.ACCEPT  # refutes the held one
    assert g.take_refuted() == [(10 ** 6 * S, "a")] and g.newest_ns == 101 * S
    assert [g.check((5000 + i) * S, i)[0] for i in range(3)] == [StampVerdict.HELD, StampVerdict.HELD, StampVerdict.JUMP]
    assert g.newest_ns == 5002 * S
    # per stream: three messages of three streams at one far stamp do not confirm each other
    assert [g.check(9000 * S, k, key=k)[0] for k in ("color", "depth", "info")] == [StampVerdict.HELD] * 3


@pytest.mark.parametrize("fx, fy, cx, cy, w, h, fragment", [
    (1e-30, 1e-30, 32, 24, 64, 48, "fx"),          # OverflowError before
    (50.0, 50.0, 1e30, 24, 64, 48, "cx"),
    (1e-3, 1e-3, 32, 24, 64, 48, "fx"),            # serialization depth 26 before
    (525.0, 50.0, 320, 240, 640, 480, "fx / fy"),
    (525.0, 525.0, 319.5, -300.0, 640, 480, "cy"),
])
def test_implausible_intrinsics_are_named(fx, fy, cx, cy, w, h, fragment):
    problem = intrinsics_problem(fx, fy, cx, cy, w, h)
    assert problem is not None and problem.startswith(fragment)


def test_real_camera_intrinsics_pass():
    assert intrinsics_problem(518.0, 519.0, 325.5, 253.5, 640, 480) is None  # Kinect (slambook)
    assert intrinsics_problem(1170.2, 1170.2, 647.8, 483.8, 1296, 968) is None  # ScanNet colour


def test_pose_problems():
    T = np.eye(4)
    assert pose_problem(T, 100.0) is None
    T[:3, 3] = [1e30, 0, 0]
    assert "exceeds validation.max_translation" in pose_problem(T, 1e5)
    T = np.eye(4)
    T[0, 0] = 2.0
    assert "not a rigid transform" in pose_problem(T, 100.0)
    assert "non-finite" in pose_problem(np.full((4, 4), np.nan), 100.0)


@pytest.mark.parametrize("fields, fragment", [
    ([("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("rgb", 12, UINT8, 1)], "'rgb' has datatype 2"),
    ([("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("rgb", 12, FLOAT64, 1)], "'rgb' has datatype 8"),
    ([("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("intensity", 12, FLOAT32, 3)],
     "'intensity' has count 3"),
    ([("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1)], "no field(s) ['z']"),
    ([("x", 0, 12, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1)], "unknown datatype 12"),
])
def test_pointcloud2_field_problems_are_named(fields, fragment):
    assert fragment in cloud_field_problem(fields)


def _frame(stamp_s, center, n=200, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    pts = (np.asarray(center) + rng.uniform(-spread, spread, (n, 3))).astype(np.float32)
    T = np.eye(4)
    T[:3, 3] = center
    return PointFrame(stamp_ns=int(stamp_s * S), points=pts, colors=np.zeros((n, 3), np.uint8), frame_id="odom",
                      T_fixed_sensor=T)


def test_window_extent_drops_old_frames_and_crops_a_wide_frame():
    ext = WindowExtent(100.0)
    near = [_frame(i + 1, [i * 1.0, 0, 0]) for i in range(3)]
    assert ext.frames_to_keep(near, _frame(4, [3.0, 0, 0])) == 3
    assert ext.frames_to_keep(near, _frame(4, [5000.0, 0, 0])) == 0   # a 5 km jump: nothing old stays
    assert ext.frames_to_keep(near, _frame(4, [98.5, 0, 0])) == 2     # frames 2 and 3 (x >= 0) stay within 100 m
    wide = _frame(5, [0, 0, 0], n=1000, spread=400.0)
    cropped = ext.crop_frame(wide)
    assert 0 < len(cropped.points) < len(wide.points)
    assert np.abs(cropped.points).max() <= 50.0 and len(cropped.colors) == len(cropped.points)
    assert ext.crop_frame(near[0]) is near[0]


@pytest.fixture(scope="module")
def pipeline():
    from concerto_ros.pipeline import PerceptionPipeline

    cfg = load_config(None, {"window.max_extent": 100.0, "publish.features": False, "window.num_frames": 4})
    return PerceptionPipeline(cfg, log=None)


def test_a_5_km_pose_jump_crops_the_window_and_is_processed(pipeline):
    pipeline.reset()
    for i in range(3):
        r = pipeline.process_points(_frame(i + 1, [i * 0.5, 0, 0]))
    assert r.window.num_frames == 3
    crops = pipeline.window_crops
    r = pipeline.process_points(_frame(4, [5000.0, 0, 0]))
    assert r.window.num_frames == 1 and pipeline.window_crops == crops + 1
    assert np.abs(r.coord - [5000.0, 0, 0]).max() <= 1.01 and np.isfinite(r.features.numpy()).all()


def test_a_failure_inside_the_models_restores_the_window(pipeline, monkeypatch):
    pipeline.reset()
    for i in range(2):
        pipeline.process_points(_frame(i + 1, [0, 0, 0], seed=i))
    before = [f.stamp_ns for f in pipeline.window.frames]

    def boom(win):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(pipeline.extractor, "encode_window", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        pipeline.process_points(_frame(3, [0, 0, 0], seed=3))
    assert [f.stamp_ns for f in pipeline.window.frames] == before
    monkeypatch.undo()
    r = pipeline.process_points(_frame(4, [0, 0, 0], seed=4))  # the next good frame works, with the old ones
    assert r.window.num_frames == 3


def _rgbd_msgs(sec, frame_id="cam", fx=50.0, w=64, h=48):
    from concerto_ros.msgs.camera_info import fill_camera_info
    from concerto_ros.msgs.image import fill_image

    stamp = int(sec * S)
    blank = lambda: NS(header=NS(stamp=NS(sec=0, nanosec=0), frame_id=""))  # noqa: E731
    color = fill_image(blank(), np.zeros((h, w, 3), np.uint8), "rgb8", stamp, frame_id)
    depth = fill_image(blank(), np.full((h, w), 1500, np.uint16), "16UC1", stamp, frame_id)
    info = fill_camera_info(blank(), fx, fx, w / 2, h / 2, w, h, stamp, frame_id)
    return [("color", color), ("depth", depth), ("camera_info", info)]


def test_frame_stream_skips_bad_stamps_and_intrinsics_and_keeps_good_frames():
    cfg = PerceptionConfig()
    skips = SkipCounter()
    notes = []
    stream = FrameStream(cfg, lookup=lambda t, s, stamp: np.eye(4), skips=skips, note=notes.append)
    good = lambda sec: [f.stamp_ns for f in stream.frames(_rgbd_msgs(sec), flush=False)]  # noqa: E731
    assert good(1.0) == [1 * S]
    assert good(1e6) == []                                                 # a whole frame 10^6 s ahead: held
    assert good(1.1) == [int(1.1 * S)]                                     # the next good frame is used
    assert skips.counts[("/camera/color/image_raw", "bad_stamp")] == 1 and not notes
    assert good(5000.0) == [] and good(5000.1) == []                       # a real jump: 3 frames agree ...
    assert good(5000.2) == [5000 * S, int(5000.1 * S), int(5000.2 * S)]     # ... and none is lost
    assert len(notes) == 1 and "jumped forward" in notes[0]
    assert stream.add("depth", _rgbd_msgs(0.0)[1][1]) == []                # stamp 0
    assert stream.add("depth", _rgbd_msgs(-3.0)[1][1]) == []               # negative
    assert skips.counts[("/camera/depth/image_raw", "bad_stamp")] == 3  # with the refuted one at 10^6 s
    # header-level problems are counted at the door: the set never reaches the worker's queue
    assert [stream.add(s, m) for s, m in _rgbd_msgs(1.2, fx=1e-30)] == [[], [], []]
    assert skips.counts[("/camera/color/camera_info", "bad_intrinsics")] == 1
    assert good(1.3) == [int(1.3 * S)]


def test_the_worker_queue_keeps_the_newest_frames():
    pytest.importorskip("rclpy")
    from concerto_ros.ros.perception import DropOldestQueue

    q = DropOldestQueue(1)
    q.put(NS(stamp_ns=20))
    q.put(NS(stamp_ns=10))   # a late, older item does not push out the newer one
    q.put(NS(stamp_ns=30))   # a newer one does
    assert q.dropped == 2 and q.get(0.01).stamp_ns == 30 and q.get(0.01) is None


def test_skip_counter_rolls_and_diagnostic_levels_name_the_dominant_reason():
    pytest.importorskip("rclpy")
    from diagnostic_msgs.msg import DiagnosticStatus

    from concerto_ros.ros.perception import bounded_query_args, diagnostic_level

    skips = SkipCounter(history_s=60.0)
    skips.record(FrameSkipped("/tf", "bad_transform", "x"))
    skips.record(FrameSkipped("/tf", "bad_transform", "x"))
    skips.record(FrameSkipped("/cam", "bad_image", "y"))
    level, msg = diagnostic_level(skips.recent(10.0), 10.0)
    assert level == DiagnosticStatus.WARN and "3 messages skipped" in msg and "'/tf': bad_transform (2)" in msg
    skips.record(FrameSkipped("pipeline", INTERNAL_ERROR, "z"))
    level, msg = diagnostic_level(skips.recent(10.0), 10.0)
    assert level == DiagnosticStatus.ERROR and "internal errors" in msg
    time.sleep(0.25)
    assert diagnostic_level(skips.recent(0.2), 0.2)[0] == DiagnosticStatus.OK   # rolled out of the window
    assert skips.total == 4 and skips.count(INTERNAL_ERROR) == 1                # cumulative counts stay
    negatives, top_k, notes = bounded_query_args(["", "wall", " ", *[f"n{i}" for i in 30 * [0]]], 2 ** 32 - 1, 16, 1000)
    assert len(negatives) == 16 and "wall" in negatives and top_k == 1000 and len(notes) == 3


def test_an_internal_error_after_warnings_logs_through_a_real_rclpy_logger():
    """rclpy refuses a logging call site whose severity changes; the skip counter warns and
    errs from separate call sites, so the first internal error after a skip warning is logged
    (a shared call site raised ValueError inside the node's guard in a soak)."""
    rclpy_logging = pytest.importorskip("rclpy.logging")
    logger = rclpy_logging.get_logger("skip_counter_test")
    skips = SkipCounter(logger.warning, error=logger.error, period_s=0.0)
    for reason in ("bad_image", INTERNAL_ERROR, "bad_image", INTERNAL_ERROR):
        skips.record(FrameSkipped("/camera/color/image_raw", reason, "detail"))
    assert skips.count(INTERNAL_ERROR) == 2 and skips.count("bad_image") == 2
