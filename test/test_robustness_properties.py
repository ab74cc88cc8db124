"""Property tests: the ROS-free decoders and validators raise only their documented errors.

Random field values, sizes, encodings and stamps go through the message decoders
(Image, CameraInfo, PointCloud2, TFMessage), the validators and the frame stream. Whatever
comes in, they either return well-formed values or raise the documented error
(``ValueError`` for decoders, ``FrameSkipped`` from the stream), never anything else, and
what passes validation is safe for the next stage (finite points, bounded extent).
"""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from concerto_ros.config import PerceptionConfig  # noqa: E402
from concerto_ros.msgs.camera_info import intrinsics_from_camera_info  # noqa: E402
from concerto_ros.msgs.image import color_to_rgb, depth_from_msg  # noqa: E402
from concerto_ros.msgs.pointcloud2 import FieldError, cloud_field_problem, xyz_from_pointcloud2  # noqa: E402
from concerto_ros.sensors.lifting import lift_depth  # noqa: E402
from concerto_ros.sensors.skips import FrameSkipped, SkipCounter  # noqa: E402
from concerto_ros.sensors.stream import FrameStream, PointsSet  # noqa: E402
from concerto_ros.sensors.tf_buffer import TransformBuffer, TransformUnavailable  # noqa: E402
from concerto_ros.sensors.types import CameraIntrinsics, RGBDFrame  # noqa: E402
from concerto_ros.sensors.validation import StampGuard, StampVerdict, intrinsics_problem, pose_problem  # noqa: E402

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
wild = st.one_of(floats, st.sampled_from([0.0, -0.0, 1e-30, 1e-3, 1e30, -1e30, 525.0, 319.5]))
stamps = st.integers(min_value=-(2 ** 31), max_value=2 ** 31 - 1)


def _stamp(sec: int, nanosec: int = 0):
    return NS(sec=sec, nanosec=nanosec)


def _image(h, w, enc, step, nbytes, big, frame="cam", sec=1):
    return NS(header=NS(stamp=_stamp(sec), frame_id=frame), height=h, width=w, encoding=enc, step=step,
              is_bigendian=big, data=np.zeros(nbytes, dtype=np.uint8))


image_args = st.tuples(st.integers(0, 40), st.integers(0, 40),
                       st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "32FC1", "mono16",
                                        "yuv422", "", "8UC3", "64FC1", "bayer_rggb8"]),
                       st.integers(-5, 200), st.integers(0, 5000), st.booleans())


@FAST
@given(image_args)
def test_image_decoders_return_the_declared_shape_or_raise_valueerror(args):
    h, w, enc, step, nbytes, big = args
    msg = _image(h, w, enc, step, nbytes, big)
    for decode, channels in ((color_to_rgb, 3), (lambda m: depth_from_msg(m)[0], None)):
        try:
            arr = decode(msg)
        except ValueError:
            continue
        assert arr.shape[:2] == (h, w)
        if channels:
            assert arr.shape == (h, w, 3) and arr.dtype == np.uint8


@FAST
@given(st.lists(wild, min_size=4, max_size=4), st.integers(-3, 5000), st.integers(-3, 5000))
def test_intrinsics_that_pass_validation_lift_to_finite_bounded_points(vals, w, h):
    fx, fy, cx, cy = vals
    info = NS(k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1.0]), d=np.zeros(5), width=w, height=h)
    try:
        k = intrinsics_from_camera_info(info)
    except ValueError:
        return
    if intrinsics_problem(k.fx, k.fy, k.cx, k.cy, k.width, k.height) is not None:
        return
    # accepted: a small depth image at 8 m lifts to finite points within the FOV bound
    intr = CameraIntrinsics(fx=k.fx, fy=k.fy, cx=k.cx, cy=k.cy, width=min(k.width, 64), height=min(k.height, 48))
    depth = np.full((intr.height, intr.width), 8000, dtype=np.uint16)
    pf = lift_depth(RGBDFrame(1, "cam", None, depth, 1000.0, intr), np.eye(4), max_depth=8.0)
    assert np.isfinite(pf.points).all()
    # 170 degree field of view at most, principal point at most 25 % outside: |x| <= 8 m * 1.5 * tan(85 deg)
    assert np.abs(pf.points[:, :2]).max() <= 8.0 * 1.5 * math.tan(math.radians(85.0)) + 1e-3


field_names = st.sampled_from(["x", "y", "z", "rgb", "rgba", "intensity", "label", "ring", "t", ""])
fields = st.lists(st.tuples(field_names, st.integers(-4, 40), st.integers(-1, 10), st.integers(-1, 4)),
                  min_size=0, max_size=8)


@FAST
@given(fields, st.integers(0, 48), st.integers(0, 6), st.integers(0, 3), st.integers(-10, 400), st.booleans())
def test_pointcloud2_decoding_raises_only_valueerror(flds, point_step, width, height, extra_bytes, big):
    msg = NS(header=NS(stamp=_stamp(1), frame_id="lidar"), height=height, width=width,
             fields=[NS(name=n, offset=o, datatype=d, count=c) for n, o, d, c in flds],
             point_step=point_step, row_step=point_step * width, is_bigendian=big,
             data=np.random.default_rng(0).integers(0, 255, max(0, height * width * point_step + extra_bytes),
                                                    dtype=np.uint8), is_dense=False)
    try:
        xyz, extra = xyz_from_pointcloud2(msg)
    except FieldError:
        assert cloud_field_problem(msg.fields) is not None
        return
    except ValueError:
        return
    assert xyz.dtype == np.float32 and xyz.ndim == 2 and xyz.shape[1] == 3 and np.isfinite(xyz).all()
    if "rgb" in extra:
        assert extra["rgb"].shape == (len(xyz), 3) and extra["rgb"].dtype == np.uint8
    if "intensity" in extra:
        assert extra["intensity"].shape == (len(xyz),)


frame_names = st.sampled_from(["odom", "base", "cam", "", "odom ", "map"])
transforms = st.lists(st.tuples(frame_names, frame_names, stamps, st.integers(0, 999_999_999),
                                st.lists(wild, min_size=3, max_size=3), st.lists(wild, min_size=4, max_size=4)),
                      min_size=1, max_size=6)


def _tf_msg(entries):
    out = []
    for parent, child, sec, nsec, t, q in entries:
        out.append(NS(header=NS(frame_id=parent, stamp=_stamp(sec, nsec)), child_frame_id=child,
                      transform=NS(translation=NS(x=t[0], y=t[1], z=t[2]), rotation=NS(x=q[0], y=q[1], z=q[2], w=q[3]))))
    return NS(transforms=out)


@FAST
@given(transforms, st.booleans(), stamps)
def test_tf_messages_never_raise_and_lookups_stay_rigid(entries, static, when):
    buf = TransformBuffer(cache_time_s=10.0)
    problems = buf.add_message(_tf_msg(entries), static=static)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    for target in ("odom", "map"):
        for source in ("cam", "base"):
            try:
                T = buf.lookup(target, source, max(when, 0) * 1_000_000_000)
            except TransformUnavailable:
                continue
            assert np.isfinite(T).all() and np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-6)


@FAST
@given(st.lists(wild, min_size=16, max_size=16), st.floats(1.0, 1e6))
def test_pose_problem_accepts_only_finite_rigid_bounded_poses(vals, limit):
    T = np.array(vals).reshape(4, 4)
    problem = pose_problem(T, limit)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert np.isfinite(T).all() and np.linalg.norm(T[:3, 3]) <= limit


@FAST
@given(st.lists(st.integers(-5, 10 ** 6), min_size=1, max_size=30), st.integers(1, 4))
def test_stamp_guard_never_lets_an_unconfirmed_jump_become_the_newest(seq_s, confirm):
    guard = StampGuard(max_jump_s=60.0, confirm=confirm)
    accepted = []
    for s in seq_s:
        verdict, released = guard.check(s * 1_000_000_000)
        if s <= 0:
            assert verdict == StampVerdict.INVALID
        if verdict == StampVerdict.ACCEPT:
            accepted.append(s)
        elif verdict == StampVerdict.JUMP:
            assert len(released) == confirm
            accepted += [r // 1_000_000_000 for r, _ in released]
    if accepted:
        assert guard.newest_ns == max(accepted) * 1_000_000_000


stream_msgs = st.lists(st.tuples(st.sampled_from(["color", "depth", "camera_info", "points"]), stamps,
                                 st.integers(0, 999_999_999)), min_size=1, max_size=12)


@FAST
@given(stream_msgs, st.sampled_from(["cam", "", "unknown"]), st.integers(1, 12), st.integers(1, 12),
       st.sampled_from(["rgb8", "16UC1", "yuv422"]))
def test_frame_stream_add_never_raises_and_decode_raises_only_frameskipped(msgs, frame_id, h, w, enc):
    cfg = PerceptionConfig()
    cfg.topics.points = "/points"
    T = np.eye(4)
    skips = SkipCounter()
    stream = FrameStream(cfg, lookup=lambda target, source, stamp: T if source == "cam" else (_ for _ in ()).throw(
        TransformUnavailable("no such frame")), skips=skips)
    for kind, sec, nsec in msgs:
        if kind in ("color", "depth"):
            enc_k = enc if kind == "color" else ("16UC1" if enc == "rgb8" else enc)
            m = _image(h, w, enc_k, w * 3, h * w * 3, False, frame=frame_id, sec=sec)
            m.header.stamp = _stamp(sec, nsec)
        elif kind == "camera_info":
            m = NS(header=NS(stamp=_stamp(sec, nsec), frame_id=frame_id), k=np.array([50, 0, w / 2, 0, 50, h / 2, 0, 0, 1.0]),
                   d=np.zeros(5), width=w, height=h)
        else:
            m = NS(header=NS(stamp=_stamp(sec, nsec), frame_id=frame_id), height=1, width=2, point_step=12,
                   row_step=24, is_bigendian=False, is_dense=True,
                   fields=[NS(name=c, offset=4 * i, datatype=7, count=1) for i, c in enumerate("xyz")],
                   data=np.zeros(24, dtype=np.uint8))
        for pending in stream.add(kind, m):
            try:
                frame = stream.decode(pending)
            except FrameSkipped as skip:
                assert skip.reason in {"bad_image", "bad_camera_info", "bad_intrinsics", "size_mismatch",
                                       "no_transform", "bad_pose", "bad_field", "bad_pointcloud"}
                continue
            assert frame.stamp_ns > 0 and frame.T_world_sensor.shape == (4, 4)
            assert isinstance(pending, PointsSet) == (frame.cloud is not None)
    assert all(r in {"bad_header", "bad_stamp", "unpaired", "bad_image", "bad_camera_info", "bad_intrinsics",
                     "size_mismatch", "bad_field", "bad_pointcloud"} for _, r in skips.counts)
