"""Depth lifting (uint16 mm and float32 m), LiDAR lifting, intrinsics/frame validation, and
multi-frame consistency on the real rgbd_slambook Kinect recording."""

import math
from pathlib import Path

import numpy as np
import pytest
import transforms3d.quaternions as tq

from concerto_ros.cloud.voxel import grid_sample
from concerto_ros.sensors.lifting import lift_depth, lift_pointcloud, ray_grid
from concerto_ros.sensors.types import CameraIntrinsics, PointFrame, RGBDFrame

SHARED = Path(__file__).resolve().parents[2] / "shared"
SLAMBOOK = SHARED / "data" / "rgbd_slambook"

# 4 x 3 image, fx=2, fy=4, cx=1.5, cy=1.0
K_TINY = CameraIntrinsics(fx=2.0, fy=4.0, cx=1.5, cy=1.0, width=4, height=3)
DEPTH_MM = np.array(
    [
        [1000, 0, 2000, 500],
        [0, 3000, 1500, 0],
        [100, 250, 12000, 4000],  # 12 m is beyond max_depth=10
    ],
    dtype=np.uint16,
)
# valid pixels in row-major order: (u, v) -> point ((u-1.5) z/2, (v-1) z/4, z), computed by hand
EXPECTED_PIXELS = [0, 2, 3, 5, 6, 8, 9, 11]
EXPECTED_POINTS = np.array(
    [
        [-0.75, -0.25, 1.0],  # u=0 v=0 z=1
        [0.5, -0.5, 2.0],  # u=2 v=0 z=2
        [0.375, -0.125, 0.5],  # u=3 v=0 z=0.5
        [-0.75, 0.0, 3.0],  # u=1 v=1 z=3
        [0.375, 0.0, 1.5],  # u=2 v=1 z=1.5
        [-0.075, 0.025, 0.1],  # u=0 v=2 z=0.1 (min_depth is inclusive)
        [-0.0625, 0.0625, 0.25],  # u=1 v=2 z=0.25
        [3.0, 1.0, 4.0],  # u=3 v=2 z=4
    ],
    dtype=np.float32,
)


def tiny_color():
    u, v = np.meshgrid(np.arange(4), np.arange(3))
    return np.stack([u * 10, v * 10, np.full_like(u, 7)], axis=-1).astype(np.uint8)


def tiny_labels():
    u, v = np.meshgrid(np.arange(4), np.arange(3))
    return (v * 10 + u).astype(np.int32)


def test_intrinsics_K_and_validation():
    K = K_TINY.K
    assert K.dtype == np.float64 and K.shape == (3, 3)
    np.testing.assert_array_equal(K, [[2.0, 0.0, 1.5], [0.0, 4.0, 1.0], [0.0, 0.0, 1.0]])
    assert CameraIntrinsics.from_K(K.ravel().tolist(), 4, 3) == K_TINY
    with pytest.raises(ValueError, match="focal"):
        CameraIntrinsics(0.0, 1.0, 0.0, 0.0, 4, 3)
    with pytest.raises(ValueError, match="width"):
        CameraIntrinsics(1.0, 1.0, 0.0, 0.0, 0, 3)
    with pytest.raises(ValueError, match="skew"):
        CameraIntrinsics.from_K([[1, 0.5, 0], [0, 1, 0], [0, 0, 1]], 4, 3)


def test_rgbd_frame_shape_checks_name_the_mismatch():
    with pytest.raises(ValueError, match=r"depth shape \(3, 5\).*\(3, 4\)"):
        RGBDFrame(0, "cam", None, np.zeros((3, 5), np.uint16), 1000.0, K_TINY)
    with pytest.raises(ValueError, match=r"color has shape \(3, 4\)"):
        RGBDFrame(0, "cam", np.zeros((3, 4), np.uint8), DEPTH_MM, 1000.0, K_TINY)
    with pytest.raises(ValueError, match="depth has dtype int32"):
        RGBDFrame(0, "cam", None, DEPTH_MM.astype(np.int32), 1000.0, K_TINY)
    with pytest.raises(ValueError, match="labels has dtype int64"):
        RGBDFrame(0, "cam", None, DEPTH_MM, 1000.0, K_TINY, labels=tiny_labels().astype(np.int64))
    with pytest.raises(ValueError, match="depth_scale"):
        RGBDFrame(0, "cam", None, DEPTH_MM, 0.0, K_TINY)
    with pytest.raises(ValueError, match="stamp_ns"):
        RGBDFrame(1.5, "cam", None, DEPTH_MM, 1000.0, K_TINY)
    with pytest.raises(ValueError, match=r"colors has shape \(2, 3\), expected \(1, 3\)"):
        PointFrame(0, np.zeros((1, 3), np.float32), np.zeros((2, 3), np.uint8))


@pytest.mark.parametrize("encoding", ["uint16_mm", "float32_m"])
def test_lift_both_encodings_hand_computed(encoding):
    if encoding == "uint16_mm":
        depth, scale = DEPTH_MM, 1000.0
    else:
        depth = DEPTH_MM.astype(np.float32) / 1000.0
        depth[0, 1] = np.nan  # invalid encodings of 32FC1
        depth[1, 0] = np.inf
        depth[1, 3] = -1.0
        scale = 1.0
    frame = RGBDFrame(7, "cam_optical", tiny_color(), depth, scale, K_TINY, labels=tiny_labels())
    pf = lift_depth(frame, None, min_depth=0.1, max_depth=10.0)
    assert pf.points.dtype == np.float32 and pf.points.shape == (8, 3)
    np.testing.assert_allclose(pf.points, EXPECTED_POINTS, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(pf.pixel_index, EXPECTED_PIXELS)
    u, v = np.array(EXPECTED_PIXELS) % 4, np.array(EXPECTED_PIXELS) // 4
    np.testing.assert_array_equal(pf.colors, np.stack([u * 10, v * 10, np.full_like(u, 7)], 1))
    np.testing.assert_array_equal(pf.labels, v * 10 + u)
    assert pf.stamp_ns == 7 and pf.frame_id == "cam_optical" and pf.sensor_frame_id == "cam_optical"
    assert pf.image_shape == (3, 4)


def test_lift_depth_range_pose_stride_and_grey():
    frame = RGBDFrame(0, "cam", None, DEPTH_MM, 1000.0, K_TINY)
    near = lift_depth(frame, min_depth=0.3, max_depth=2.0)
    np.testing.assert_array_equal(near.pixel_index, [0, 2, 3, 6])  # z in [0.3, 2.0]
    np.testing.assert_array_equal(near.colors, np.full((4, 3), 128))  # no colour image -> grey

    # pose: rotation of +90 deg about z and a translation
    T = np.eye(4)
    T[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    T[:3, 3] = [1.0, 2.0, 3.0]
    posed = lift_depth(frame, T, fixed_frame="odom")
    expected = EXPECTED_POINTS @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(posed.points, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(posed.points[0], [1.25, 1.25, 4.0], atol=1e-6)  # (-0.75,-0.25,1) by hand
    assert posed.frame_id == "odom" and posed.sensor_frame_id == "cam"
    np.testing.assert_array_equal(posed.T_fixed_sensor, T)

    strided = lift_depth(frame, stride=2)  # pixels (0,0) (2,0) (0,2) (2,2): 12 m is dropped
    np.testing.assert_array_equal(strided.pixel_index, [0, 2, 8])
    np.testing.assert_allclose(strided.points, EXPECTED_POINTS[[0, 1, 5]], rtol=1e-6)
    grid = ray_grid(K_TINY, 2)
    assert grid.shape == (2, 2) and grid is ray_grid(K_TINY, 2)  # cached

    bad = np.eye(4)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lift_depth(frame, bad)
    with pytest.raises(ValueError, match="min_depth"):
        lift_depth(frame, min_depth=2.0, max_depth=1.0)


def test_lift_pointcloud_drops_non_finite_and_colours_by_intensity():
    pts = np.array([[1, 0, 0], [np.nan, 0, 0], [0, 2, 0], [0, 0, np.inf], [3, 4, 0]], dtype=np.float32)
    intensity = np.array([0.0, 5.0, 50.0, 7.0, 100.0], dtype=np.float32)
    T = np.eye(4)
    T[:3, 3] = [10.0, 0.0, 0.0]
    pf = lift_pointcloud(pts, intensity=intensity, T_world_sensor=T, stamp_ns=5, sensor_frame_id="lidar",
                         fixed_frame="map", intensity_range=(0.0, 100.0))
    np.testing.assert_allclose(pf.points, [[11, 0, 0], [10, 2, 0], [13, 4, 0]])
    np.testing.assert_array_equal(pf.pixel_index, [0, 2, 4])
    np.testing.assert_array_equal(pf.colors, [[0, 0, 0], [128, 128, 128], [255, 255, 255]])
    assert pf.frame_id == "map" and pf.sensor_frame_id == "lidar" and pf.stamp_ns == 5

    ranged = lift_pointcloud(pts, max_range=2.5, labels=np.arange(5, dtype=np.int64))
    np.testing.assert_array_equal(ranged.pixel_index, [0, 2])
    np.testing.assert_array_equal(ranged.labels, [0, 2])
    assert ranged.labels.dtype == np.int32

    organised = lift_pointcloud(pts.reshape(1, 5, 3), colors=np.full((1, 5, 3), 9, np.uint8))
    assert organised.image_shape == (1, 5)
    np.testing.assert_array_equal(organised.colors, np.full((3, 3), 9))
    with pytest.raises(ValueError, match="intensity has shape"):
        lift_pointcloud(pts, intensity=np.zeros(4))


# ---------------------------------------------------------------- real Kinect recording
def load_slambook():
    if not SLAMBOOK.is_dir():
        pytest.skip(f"real data not found at {SLAMBOOK} (../shared/data is absent on this machine)")
    cv2 = pytest.importorskip("cv2")
    K = CameraIntrinsics(518.0, 519.0, 325.5, 253.5, 640, 480)
    poses = np.loadtxt(SLAMBOOK / "pose.txt")
    frames, Ts = [], []
    for i in range(5):
        color = cv2.imread(str(SLAMBOOK / "color" / f"{i + 1}.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
        depth = cv2.imread(str(SLAMBOOK / "depth" / f"{i + 1}.pgm"), cv2.IMREAD_UNCHANGED)
        frames.append(RGBDFrame(i * 33_000_000, "kinect_rgb_optical", np.ascontiguousarray(color), depth, 1000.0, K))
        tx, ty, tz, qx, qy, qz, qw = poses[i]
        T = np.eye(4)
        T[:3, :3] = tq.quat2mat([qw, qx, qy, qz])
        T[:3, 3] = [tx, ty, tz]
        Ts.append(T)
    return frames, Ts, K


def nn_distance(queries, ref):
    """Exact nearest-neighbour distance of each query to ``ref`` (chunked brute force)."""
    import torch

    q = torch.from_numpy(queries.astype(np.float32))
    r = torch.from_numpy(ref.astype(np.float32))
    return torch.cat([torch.cdist(c, r).min(dim=1).values for c in q.split(500)]).numpy()


def visible_in(points, T_world_cam, K, depth_mm, gate=0.25):
    """Indices of ``points`` (world) that frame ``(T_world_cam, depth_mm)`` sees: they project
    inside its image onto a valid depth pixel and are not more than ``gate`` metres behind
    that pixel's surface (z-buffer occlusion test with a loose gate)."""
    T_inv = np.linalg.inv(T_world_cam)
    cam = points @ T_inv[:3, :3].T + T_inv[:3, 3]
    z = cam[:, 2]
    ok = z > 0.1
    u = np.full(len(z), -1)
    v = np.full(len(z), -1)
    u[ok] = np.round(cam[ok, 0] * K.fx / z[ok] + K.cx).astype(int)
    v[ok] = np.round(cam[ok, 1] * K.fy / z[ok] + K.cy).astype(int)
    ok &= (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    keep = np.flatnonzero(ok)
    surface = depth_mm[v[keep], u[keep]] / 1000.0
    return keep[(surface > 0) & (z[keep] < surface + gate)]


def median_nn(points_i, cloud_j, T_j, K, depth_j, rng, n=600):
    """Median distance from frame i's points seen by frame j to frame j's cloud."""
    ref = cloud_j.points[grid_sample(cloud_j.points, 0.005).index]
    keep = visible_in(points_i, T_j, K, depth_j)
    assert len(keep) > 5000, "frames barely overlap"
    return float(np.median(nn_distance(points_i[rng.choice(keep, size=n, replace=False)], ref)))


def test_real_frames_land_on_the_same_surfaces():
    frames, Ts, K = load_slambook()
    clouds = [lift_depth(f, T, fixed_frame="world") for f, T in zip(frames, Ts)]
    for f, c in zip(frames, clouds):
        assert c.points.dtype == np.float32 and c.colors.dtype == np.uint8 and c.frame_id == "world"
        assert c.num_points == int(np.count_nonzero((f.depth >= 100) & (f.depth <= 10000)))
        # about 30 % of the Kinect depth pixels are invalid
        assert 0.5 * 640 * 480 < c.num_points < 0.8 * 640 * 480
    # frame 0 against a float64 per-pixel evaluation of the pinhole model and the pose
    d = frames[0].depth.astype(np.float64) / 1000.0
    v, u = np.nonzero((d >= 0.1) & (d <= 10.0))
    z = d[v, u]
    cam = np.stack([(u - K.cx) * z / K.fx, (v - K.cy) * z / K.fy, z], axis=1)
    np.testing.assert_allclose(clouds[0].points, cam @ Ts[0][:3, :3].T + Ts[0][:3, 3], atol=2e-6)
    np.testing.assert_array_equal(clouds[0].pixel_index, v * 640 + u)
    np.testing.assert_array_equal(clouds[0].colors, frames[0].color[v, u])
    rng = np.random.default_rng(0)
    for i in range(1, 5):
        # frame i against frame 0 (up to ~1.7 m of camera motion) and against frame i-1
        to_first = median_nn(clouds[i].points, clouds[0], Ts[0], K, frames[0].depth, rng)
        to_prev = median_nn(clouds[i].points, clouds[i - 1], Ts[i - 1], K, frames[i - 1].depth, rng)
        assert to_first < 0.05, f"frame {i} vs 0: median NN distance {to_first:.3f} m"
        assert to_prev < 0.04, f"frame {i} vs {i - 1}: median NN distance {to_prev:.3f} m"
        # control: frame i lifted with frame 0's pose (motion ignored) does not line up
        wrong = lift_depth(frames[i], Ts[0]).points
        misaligned = median_nn(wrong, clouds[0], Ts[0], K, frames[0].depth, rng)
        assert misaligned > 2.0 * to_first, f"frame {i}: pose has no effect? {misaligned:.3f} vs {to_first:.3f}"
