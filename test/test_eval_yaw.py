"""Yaw (rotation about the up axis): invariants of the augmentation shared by eval and training."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concerto_ros.augment import random_yaw, rotate_frame, up_vector, yaw_matrix, yaw_transform

angles = st.floats(-720.0, 720.0, allow_nan=False)
axes = st.sampled_from(["x", "y", "z", "-x", "-y", "-z", "+z"])


@settings(max_examples=60, deadline=None)
@given(angles, axes, st.integers(0, 2**31 - 1))
def test_yaw_is_a_rotation_that_keeps_height_and_distances(angle, up, seed):
    pts = np.random.default_rng(seed).normal(size=(50, 3))
    R = yaw_matrix(angle, up)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    u = up_vector(up)
    np.testing.assert_allclose(R @ u, u, atol=1e-12)                        # the up axis is fixed
    q = pts @ R.T
    np.testing.assert_allclose(q @ u, pts @ u, atol=1e-9)                   # heights unchanged
    d = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(q), d(pts), atol=1e-9)                     # a rigid motion


@settings(max_examples=40, deadline=None)
@given(angles, angles, axes)
def test_yaws_compose_and_a_full_turn_is_identity(a, b, up):
    np.testing.assert_allclose(yaw_matrix(a, up) @ yaw_matrix(b, up), yaw_matrix(a + b, up), atol=1e-9)
    np.testing.assert_allclose(yaw_matrix(360.0, up), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(yaw_matrix(a, "-" + up.lstrip("+-")), yaw_matrix(-a, up.lstrip("+-")), atol=1e-12)


def test_direction_convention():
    # counter-clockwise seen from above: +90 deg about z takes x to y
    np.testing.assert_allclose(yaw_matrix(90, "z") @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # a camera optical frame is y-down: up = -y; +90 deg takes the forward axis z to x (turning left
    # when seen from above, i.e. from -y looking down)
    np.testing.assert_allclose(yaw_matrix(90, "-y") @ [0, 0, 1], [-1, 0, 0], atol=1e-12)


def test_rotation_about_a_centre_keeps_the_centre():
    c = np.array([2.0, -1.0, 0.5])
    T = yaw_transform(37.0, "z", center=c)
    np.testing.assert_allclose(T[:3, :3] @ c + T[:3, 3], c, atol=1e-12)
    np.testing.assert_allclose(T[3], [0, 0, 0, 1])


def test_random_yaw_is_seeded_bounded_and_keeps_the_centroid():
    pts = np.random.default_rng(0).uniform(-3, 3, size=(200, 3)).astype(np.float32)
    a, Ta = random_yaw(pts, np.random.default_rng(5), up="z", max_deg=30.0)
    b, Tb = random_yaw(pts, np.random.default_rng(5), up="z", max_deg=30.0)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == pts.shape
    np.testing.assert_allclose(a, pts @ Ta[:3, :3].T + Ta[:3, 3], atol=1e-5)
    np.testing.assert_allclose(a.mean(0), pts.mean(0), atol=1e-4)
    angles = [np.degrees(np.arctan2(T[1, 0], T[0, 0])) for T in
              (random_yaw(pts, np.random.default_rng(s), max_deg=30.0)[1] for s in range(200))]
    assert max(np.abs(angles)) <= 30.0 and min(angles) < -20 and max(angles) > 20


def test_rotate_frame_rotates_the_lifted_points():
    from concerto_ros.recordings.frame import SensorCloud, SensorFrame
    from concerto_ros.sensors.lifting import lift_pointcloud

    xyz = np.random.default_rng(1).uniform(1, 5, size=(100, 3)).astype(np.float32)
    pose = yaw_transform(20.0, "z", center=[1.0, 2.0, 0.0])
    pose[:3, 3] += [0.5, 0.0, 1.0]
    frame = SensorFrame(stamp_ns=1, key="f", T_world_sensor=pose, cloud=SensorCloud(xyz=xyz))
    T = yaw_transform(90.0, "z")
    rotated = rotate_frame(frame, T)
    assert rotated.cloud is frame.cloud and rotated is not frame

    def lift(f):
        return lift_pointcloud(f.cloud.xyz, T_world_sensor=f.T_world_sensor, stamp_ns=1, min_range=0.0).points

    np.testing.assert_allclose(lift(rotated), lift(frame) @ T[:3, :3].T, atol=1e-5)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="up axis 'w'"):
        yaw_matrix(10, "w")
    with pytest.raises(ValueError, match="non-zero length"):
        up_vector([0, 0, 0])
    with pytest.raises(ValueError, match="finite"):
        yaw_matrix(float("nan"))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        random_yaw(np.zeros((3, 2)), np.random.default_rng(0))


def test_training_yaws_are_seeded_by_seed_and_unit_wherever_the_data_lie(tmp_path):
    """The probe's and translator's yaw copies: a function of (seed, unit) that does not depend
    on the folder the data were reached through, drawn in [-max_deg, max_deg)."""
    from concerto_ros.recordings import Source
    from concerto_ros.train.config import AugmentConfig
    from concerto_ros.train.data import TrainUnit, yaw_transforms

    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    aug = AugmentConfig(copies=3, max_deg=30.0)

    def draws(path, seed=0, frame=None, labels="l.npy"):
        unit = TrainUnit(Source(type="points", path=path, labels=str(path.parent / labels)), frame)
        return yaw_transforms(unit, aug, seed)

    a = draws(tmp_path / "a" / "p.npy")
    assert len(a) == 3 and all(T.shape == (4, 4) for T in a)
    for T in a:  # rotations about z by at most 30 degrees
        assert np.allclose(T[2], [0, 0, 1, 0]) and np.allclose(T[:3, 3], 0)
        assert abs(np.degrees(np.arctan2(T[1, 0], T[0, 0]))) <= 30.0
    same = [draws(tmp_path / "link" / "p.npy"), draws(tmp_path / "a" / ".." / "a" / "p.npy")]
    assert all(np.array_equal(x, y) for d in same for x, y in zip(a, d))
    for other in (draws(tmp_path / "a" / "p.npy", seed=1), draws(tmp_path / "a" / "q.npy"),
                  draws(tmp_path / "a" / "p.npy", frame=2)):
        assert not np.allclose(a[0], other[0])
    assert yaw_transforms(TrainUnit(Source(type="points", path=tmp_path / "p.npy")), None, 0) == [None]
