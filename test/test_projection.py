"""Dense projection, z-buffer occlusion and patch lookup against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concerto_ros.models.projection import (dense_targets, lookup_patch_features, patch_coordinates, project_points,
                                            zbuffer_visible)
from concerto_ros.sensors.lifting import lift_depth
from concerto_ros.sensors.types import CameraIntrinsics, RGBDFrame

INTR = CameraIntrinsics(fx=100.0, fy=100.0, cx=50.0, cy=40.0, width=100, height=80)


def test_projection_identity_pose_hand_values():
    pts = np.array([
        [0.1, -0.2, 1.0],   # u = 100*0.1/1 + 50 = 60, v = 100*(-0.2)/1 + 40 = 20
        [0.0, 0.0, 2.0],    # principal point (50, 40)
        [0.1, 0.1, -1.0],   # behind the camera
        [1.0, 0.0, 1.0],    # u = 150: right of the image
        [-0.505, 0.0, 1.0],  # u = -0.5: left edge of pixel 0, inside
        [0.495, 0.0, 1.0],  # u = 99.5: right edge of pixel 99, outside
    ])
    pr = project_points(pts, INTR, None, zbuffer=False)
    np.testing.assert_allclose(pr.uv[0], [60.0, 20.0], atol=1e-4)
    np.testing.assert_allclose(pr.uv[1], [50.0, 40.0], atol=1e-4)
    assert pr.in_view.tolist() == [True, True, False, False, True, False]
    assert pr.pixel[0] == 20 * 100 + 60 and pr.pixel[1] == 40 * 100 + 50 and pr.pixel[4] == 40 * 100 + 0
    assert pr.pixel[2] == -1 and pr.pixel[3] == -1
    np.testing.assert_allclose(pr.depth[:2], [1.0, 2.0])


def test_projection_with_pose_hand_values():
    # camera at (1, 2, 3) looking along world +x: optical z -> world +x, optical x -> world -z,
    # optical y -> world +y (columns of R are the camera axes in the world)
    T = np.eye(4)
    T[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    T[:3, 3] = [1.0, 2.0, 3.0]
    world = np.array([[3.0, 2.1, 3.0],    # 2 m ahead, 0.1 m down -> (x,y,z)_cam = (0, 0.1, 2): u=50, v=45
                      [2.0, 2.0, 2.8],    # 1 m ahead, 0.2 m towards -z_world = +x_cam: u = 70, v = 40
                      [0.0, 2.0, 3.0]])   # behind
    pr = project_points(world, INTR, T, zbuffer=False)
    np.testing.assert_allclose(pr.uv[0], [50.0, 45.0], atol=1e-4)
    np.testing.assert_allclose(pr.uv[1], [70.0, 40.0], atol=1e-4)
    np.testing.assert_allclose(pr.depth[:2], [2.0, 1.0], atol=1e-6)
    assert pr.in_view.tolist() == [True, True, False]


def test_zbuffer_occlusion_and_tolerance():
    # three points on the ray through pixel (60, 20) at 1.0, 1.03 and 2.0 m, one elsewhere
    ray = np.array([0.1, -0.2, 1.0])
    pts = np.stack([ray * 1.0, ray * 1.03, ray * 2.0, np.array([0.0, 0.0, 3.0])])
    pr = project_points(pts, INTR, None, zbuffer=True, tolerance=0.05)
    assert len(set(pr.pixel[:3].tolist())) == 1
    assert pr.visible.tolist() == [True, True, False, True]  # 2 m point occluded, 1.03 within 5 cm
    pr2 = project_points(pts, INTR, None, zbuffer=True, tolerance=0.01)
    assert pr2.visible.tolist() == [True, False, False, True]
    pr3 = project_points(pts, INTR, None, zbuffer=True, tolerance=1.5)
    assert pr3.visible.tolist() == [True, True, True, True]
    # direct scatter-min: pixel 7 has depths 3, 1, 1.2; pixel -1 never visible
    vis = zbuffer_visible(np.array([7, 7, 7, -1, 2]), np.array([3.0, 1.0, 1.2, 0.5, 4.0]), 10, tolerance=0.1)
    assert vis.tolist() == [False, True, False, False, True]


def test_lift_then_project_returns_the_source_pixels():
    rng = np.random.default_rng(0)
    depth = rng.integers(500, 3000, size=(80, 100)).astype(np.uint16)
    depth[::7, ::5] = 0
    frame = RGBDFrame(stamp_ns=1, frame_id="cam", color=None, depth=depth, depth_scale=1000.0, intrinsics=INTR)
    T = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[:3, 3] = [0.5, -0.2, 1.0]
    pf = lift_depth(frame, T, min_depth=0.1, max_depth=10.0)
    pr = project_points(pf.points, INTR, T, zbuffer=True, tolerance=0.01)
    np.testing.assert_array_equal(pr.pixel, pf.pixel_index.astype(np.int64))
    assert pr.visible.all()  # one point per pixel: nothing is occluded


def test_patch_lookup_nearest_and_bilinear_hand_values():
    # image 4 x 6 px, teacher grid 2 x 3 patches (2 px each); feature c of patch (r, q) = 10*r + q + 100*c
    grid = torch.tensor([[[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]], [[100.0, 101.0, 102.0], [110.0, 111.0, 112.0]]])
    uv = np.array([[2.5, 0.5],    # patch coords (1.0, 0.0): exactly patch (0, 1)
                   [1.5, 1.5],    # (0.5, 0.5): between four patches
                   [0.0, 0.0],    # (-0.25, -0.25): border, clamped to patch (0, 0)
                   [5.0, 3.0],    # (2.25, 1.25): clamped to patch (1, 2)
                   [3.0, 2.0]])   # (1.25, 0.75)
    np.testing.assert_allclose(patch_coordinates(uv, (4, 6), (2, 3))[:2], [[1.0, 0.0], [0.5, 0.5]])
    bil = lookup_patch_features(grid, uv, (4, 6), "bilinear")
    np.testing.assert_allclose(bil[:, 0].numpy(), [1.0, 5.5, 0.0, 12.0, 0.75 * 10 + 1.25], atol=1e-5)
    np.testing.assert_allclose(bil[:, 1].numpy(), bil[:, 0].numpy() + 100, atol=1e-4)
    near = lookup_patch_features(grid, uv, (4, 6), "nearest")
    # nearest = round-half-up of the patch coordinate, clamped: (1,0)->(0,1); (.5,.5)->(1,1); (1.25,.75)->(1,1)
    np.testing.assert_allclose(near[:, 0].numpy(), [1.0, 11.0, 0.0, 12.0, 11.0])
    with pytest.raises(ValueError):
        lookup_patch_features(grid, uv, (4, 6), "bicubic")


def test_dense_targets_zero_where_not_visible():
    grid = torch.arange(2 * 8 * 10, dtype=torch.float32).reshape(2, 8, 10)  # 10 px patches on a 100 x 80 image
    ray = np.array([0.1, -0.2, 1.0])
    pts = np.stack([ray, ray * 2.0, np.array([0.0, 0.0, -1.0])])
    tgt, vis = dense_targets(pts, grid, INTR, None, mode="nearest", tolerance=0.05)
    assert vis.tolist() == [True, False, False]
    # pixel (60, 20) -> patch coordinate ((60.5) / 10 - 0.5, (20.5) / 10 - 0.5) = (5.55, 1.55) -> patch (2, 6)
    np.testing.assert_allclose(tgt[0].numpy(), grid[:, 2, 6].numpy())
    assert torch.all(tgt[1:] == 0)
