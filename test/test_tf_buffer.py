"""TransformBuffer: interpolation, chaining, static transforms, errors, pruning."""

import math

import numpy as np
import pytest

from concerto_ros.sensors.tf_buffer import TransformBuffer, TransformUnavailable

S = 1_000_000_000


def yaw_quat(yaw):
    """x y z w quaternion of a rotation about +z."""
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def yaw_matrix(yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# camera optical frame under a base frame (REP-103): optical z = base x, x = -y, y = -z
OPTICAL_Q = (-0.5, 0.5, -0.5, 0.5)
OPTICAL_R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def make_buffer():
    buf = TransformBuffer(cache_time_s=10.0)
    buf.set_transform("odom", "base", 1 * S, (0.0, 0.0, 0.0), yaw_quat(0.0))
    buf.set_transform("odom", "base", 2 * S, (2.0, 4.0, 0.0), yaw_quat(math.pi / 2))
    buf.set_transform("base", "camera", 0, (0.0, 0.0, 0.5), OPTICAL_Q, static=True)
    buf.set_transform("map", "odom", 0, (1.0, 0.0, 0.0), yaw_quat(0.0), static=True)
    return buf


def test_interpolation_at_midpoint_and_quarter():
    buf = make_buffer()
    T = buf.lookup("odom", "base", 1_500_000_000)
    assert T.shape == (4, 4) and T.dtype == np.float64
    h = math.sqrt(0.5)
    np.testing.assert_allclose(T[:3, 3], [1.0, 2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(T[:3, :3], [[h, -h, 0.0], [h, h, 0.0], [0.0, 0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(T[3], [0, 0, 0, 1])
    Tq = buf.lookup("odom", "base", 1_250_000_000)  # slerp: a quarter of the angle
    np.testing.assert_allclose(Tq[:3, :3], yaw_matrix(math.pi / 8), atol=1e-12)
    np.testing.assert_allclose(Tq[:3, 3], [0.5, 1.0, 0.0], atol=1e-12)
    # exact samples
    np.testing.assert_allclose(buf.lookup("odom", "base", 2 * S)[:3, :3], yaw_matrix(math.pi / 2), atol=1e-12)


def test_chain_parent_child_grandchild_and_inverse():
    buf = make_buffer()
    t = 1_500_000_000
    T_map_cam = buf.lookup("map", "camera", t)
    # hand-computed: 1 m forward of the camera (optical z) -> base (1, 0, 0.5)
    # -> odom: yaw 45 deg + (1, 2, 0) -> map: + (1, 0, 0)
    h = math.sqrt(0.5)
    p_cam = np.array([0.0, 0.0, 1.0, 1.0])
    expected = np.array([1.0 + 1.0 + h, 2.0 + h, 0.5])
    np.testing.assert_allclose((T_map_cam @ p_cam)[:3], expected, atol=1e-12)
    T_base_cam = buf.lookup("base", "camera", t)
    np.testing.assert_allclose(T_base_cam[:3, :3], OPTICAL_R, atol=1e-12)
    np.testing.assert_allclose((T_base_cam @ p_cam)[:3], [1.0, 0.0, 0.5], atol=1e-12)
    # inverse direction
    T_cam_map = buf.lookup("camera", "map", t)
    np.testing.assert_allclose(T_cam_map @ T_map_cam, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(T_map_cam, buf.lookup("map", "odom", t) @ buf.lookup("odom", "camera", t), atol=1e-12)
    # siblings: common ancestor is base
    buf.set_transform("base", "laser", 0, (0.2, 0.0, 0.3), yaw_quat(math.pi), static=True)
    T_laser_cam = buf.lookup("laser", "camera", t)
    np.testing.assert_allclose((T_laser_cam @ p_cam)[:3], [-0.8, 0.0, 0.2], atol=1e-12)
    np.testing.assert_allclose(buf.lookup("camera", "camera", t), np.eye(4))


def test_static_valid_at_all_times_and_latest():
    buf = make_buffer()
    for stamp in (0, 1, 123 * S):
        np.testing.assert_allclose(buf.lookup("base", "camera", stamp)[:3, 3], [0.0, 0.0, 0.5])
        np.testing.assert_allclose(buf.lookup("map", "odom", stamp)[:3, 3], [1.0, 0.0, 0.0])
    latest = buf.lookup("map", "base", 0)  # stamp 0 = latest common time (2 s)
    np.testing.assert_allclose(latest[:3, 3], [3.0, 4.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(latest[:3, :3], yaw_matrix(math.pi / 2), atol=1e-12)
    assert buf.can_transform("map", "camera", 0) and not buf.can_transform("map", "camera", 5 * S)
    assert buf.frames() == ["base", "camera", "map", "odom"]


def test_extrapolation_error_names_the_range():
    buf = make_buffer()
    with pytest.raises(TransformUnavailable) as err:
        buf.lookup("map", "camera", 3 * S)
    msg = str(err.value)
    assert "extrapolation into the future" in msg
    assert "3.000000000 s" in msg and "1.000000000 s" in msg and "2.000000000 s" in msg
    assert "'odom' -> 'base'" in msg
    with pytest.raises(TransformUnavailable, match="extrapolation into the past"):
        buf.lookup("odom", "base", S // 2)
    tolerant = TransformBuffer(max_extrapolation_s=0.1)
    tolerant.set_transform("odom", "base", 1 * S, (1.0, 0.0, 0.0), yaw_quat(0.0))
    tolerant.set_transform("odom", "base", 2 * S, (2.0, 0.0, 0.0), yaw_quat(0.0))
    np.testing.assert_allclose(tolerant.lookup("odom", "base", 2_050_000_000)[:3, 3], [2.0, 0.0, 0.0])
    with pytest.raises(TransformUnavailable):
        tolerant.lookup("odom", "base", 2_200_000_000)


def test_unknown_and_disconnected_frames():
    buf = make_buffer()
    with pytest.raises(TransformUnavailable, match="'nowhere' does not exist") as err:
        buf.lookup("map", "nowhere", 0)
    assert isinstance(err.value, LookupError)
    buf.set_transform("world", "gps", 0, (0, 0, 0), (0, 0, 0, 1), static=True)
    with pytest.raises(TransformUnavailable, match="not connected.*rooted at 'map'"):
        buf.lookup("gps", "camera", 0)


def test_pruning_and_validation():
    buf = TransformBuffer(cache_time_s=1.0)
    for i in range(6):
        buf.set_transform("odom", "base", i * S, (float(i), 0.0, 0.0), (0, 0, 0, 1))
    np.testing.assert_allclose(buf.lookup("odom", "base", 4_500_000_000)[:3, 3], [4.5, 0.0, 0.0])
    with pytest.raises(TransformUnavailable, match="from 4.000000000 s to 5.000000000 s"):
        buf.lookup("odom", "base", 3 * S)  # older than cache_time before the newest sample
    # out-of-order sample inside the window is inserted in order
    buf.set_transform("odom", "base", 4_500_000_000, (10.0, 0.0, 0.0), (0, 0, 0, 1))
    np.testing.assert_allclose(buf.lookup("odom", "base", 4_250_000_000)[:3, 3], [7.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="loop"):
        buf.set_transform("base", "odom", 0, (0, 0, 0), (0, 0, 0, 1))
    with pytest.raises(ValueError, match="zero quaternion"):
        buf.set_transform("odom", "x", 0, (0, 0, 0), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="non-finite"):
        buf.set_transform("odom", "x", 0, (np.nan, 0, 0), (0, 0, 0, 1))
    # a quaternion that is not unit length is normalised
    buf.set_transform("odom", "y", 0, (0, 0, 0), (0, 0, 0, 2.0), static=True)
    np.testing.assert_allclose(buf.lookup("odom", "y", 0), np.eye(4), atol=1e-12)


def test_set_transform_matrix_round_trip():
    buf = TransformBuffer()
    T = np.eye(4)
    T[:3, :3] = OPTICAL_R
    T[:3, 3] = [0.1, -0.2, 0.3]
    buf.set_transform_matrix("base", "camera", 5, T, static=True)
    np.testing.assert_allclose(buf.lookup("base", "camera", 0), T, atol=1e-12)


def test_wait_for_change_wakes_on_the_next_stored_sample_and_times_out_otherwise():
    import threading
    import time

    from concerto_ros.sensors.tf_buffer import TransformBuffer

    buf = TransformBuffer(cache_time_s=10.0)
    v0 = buf.version
    t0 = time.monotonic()
    assert buf.wait_for_change(v0, 0.05) is False and time.monotonic() - t0 >= 0.05  # nothing stored
    timer = threading.Timer(0.05, lambda: buf.set_transform("odom", "cam", 10, (1.0, 0.0, 0.0), (0, 0, 0, 1)))
    timer.start()
    t0 = time.monotonic()
    assert buf.wait_for_change(v0, 5.0) is True
    assert time.monotonic() - t0 < 2.0  # woken by the store, not by the timeout
    assert buf.version == v0 + 1 and buf.lookup("odom", "cam", 10)[0, 3] == 1.0
    # a sample stored before the wait starts is not missed: the version already differs
    buf.set_transform("odom", "cam", 20, (2.0, 0.0, 0.0), (0, 0, 0, 1))
    t0 = time.monotonic()
    assert buf.wait_for_change(v0 + 1, 5.0) is True and time.monotonic() - t0 < 0.5
    # rejected samples do not count as stored
    v = buf.version
    try:
        buf.set_transform("odom", "cam", 30, (0.0, 0.0, 0.0), (0, 0, 0, 0))
    except ValueError:
        pass
    assert buf.version == v
