"""Dense 3D-2D correspondence for distillation: projection, z-buffer visibility, patch lookup.

Cross4D-JEPA (arXiv 2607.00514) gives every 3D point the teacher's patch feature at the
pixel it projects to in the frame it came from. This module does the three steps:

1. :func:`project_points`: fixed-frame points -> camera optical frame with the inverse of
   the frame's pose ``T_world_cam`` (camera-to-world, REP-103 optical: z forward, x right,
   y down) -> pixels ``u = fx * x / z + cx``, ``v = fy * y / z + cy``. As in this project's
   lifting (:func:`~concerto_ros.sensors.lifting.lift_depth`), the *centre* of pixel column
   ``c`` is ``u = c``, so a point falls in pixel ``(round(u), round(v))`` and is *in view*
   when ``z > min_depth`` and ``-0.5 <= u < W - 0.5``, ``-0.5 <= v < H - 0.5``.
2. :func:`zbuffer_visible`: scatter-min of the depth per pixel; a point is *visible* when
   its depth is within ``tolerance`` metres of its pixel's minimum (occluded points are
   farther than that).
3. :func:`lookup_patch_features`: sample a teacher patch grid ``(C, Hp, Wp)`` at the pixel
   positions, ``nearest`` patch or ``bilinear`` between patch centres (border clamped).

The image given to the teacher is resized from ``(H, W)`` to ``(Hp * p, Wp * p)`` pixels
(``p`` = patch size); pixel centre ``u`` maps to the resized coordinate
``(u + 0.5) * Wp * p / W`` and to the patch coordinate ``(u + 0.5) * Wp / W - 0.5`` in units
of patches, where patch ``j``'s centre is ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from concerto_ros.sensors.types import CameraIntrinsics

__all__ = ["Projection", "project_points", "zbuffer_visible", "patch_coordinates", "lookup_patch_features",
           "dense_targets", "LOOKUP_MODES"]

LOOKUP_MODES = ("nearest", "bilinear")


@dataclass
class Projection:
    """Result of :func:`project_points` for N points.

    Attributes:
        uv: ``(N, 2) float32`` continuous pixel coordinates (column u, row v); pixel
            ``(c, r)`` has its centre at ``(c, r)``.
        depth: ``(N,) float32`` z in the camera optical frame, metres.
        pixel: ``(N,) int64`` flat pixel index ``r * W + c`` of ``(round(u), round(v))``,
            -1 where not in view.
        in_view: ``(N,) bool`` in front of the camera (``z > min_depth``) and inside the image.
        visible: ``(N,) bool`` in view and not occluded (z-buffer); equals ``in_view``
            when the z-buffer is off.
    """

    uv: np.ndarray
    depth: np.ndarray
    pixel: np.ndarray
    in_view: np.ndarray
    visible: np.ndarray


def project_points(points: np.ndarray, intrinsics: CameraIntrinsics, T_world_cam: Optional[np.ndarray] = None,
                   min_depth: float = 1e-3, zbuffer: bool = True, tolerance: float = 0.05) -> Projection:
    """Project fixed-frame ``points`` into the image of a camera.

    Args:
        points: ``(N, 3)`` float, metres, in the fixed frame (or the optical frame when
            ``T_world_cam`` is None).
        intrinsics: pinhole intrinsics of the image, pixels.
        T_world_cam: ``(4, 4)`` camera-to-world pose of the optical frame (the frame's pose
            used for lifting); None = identity.
        min_depth: points with ``z <= min_depth`` metres are not in view.
        zbuffer: run :func:`zbuffer_visible` (else ``visible = in_view``).
        tolerance: z-buffer depth tolerance, metres.

    Returns:
        :class:`Projection`.

    Raises:
        ValueError: ``points`` not ``(N, 3)``.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"project_points: points must be (N, 3), got {p.shape}")
    if T_world_cam is not None:
        T = np.asarray(T_world_cam, dtype=np.float64)
        R, t = T[:3, :3], T[:3, 3]
        p = (p - t) @ R  # R^T (p - t) for every row
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intrinsics.fx * p[:, 0] / z + intrinsics.cx
        v = intrinsics.fy * p[:, 1] / z + intrinsics.cy
    w, h = intrinsics.width, intrinsics.height
    in_view = (z > min_depth) & (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    col = np.where(in_view, np.floor(u + 0.5), 0).astype(np.int64)
    row = np.where(in_view, np.floor(v + 0.5), 0).astype(np.int64)
    pixel = np.where(in_view, row * w + col, -1)
    uv = np.stack([np.where(in_view, u, np.nan), np.where(in_view, v, np.nan)], 1).astype(np.float32)
    depth = z.astype(np.float32)
    visible = zbuffer_visible(pixel, depth, h * w, tolerance) if zbuffer else in_view.copy()
    return Projection(uv=uv, depth=depth, pixel=pixel, in_view=in_view, visible=visible)


def zbuffer_visible(pixel: np.ndarray, depth: np.ndarray, num_pixels: int, tolerance: float = 0.05) -> np.ndarray:
    """Z-buffer visibility: scatter-min of ``depth`` per pixel, keep points within ``tolerance``.

    Args:
        pixel: ``(N,) int64`` flat pixel index, -1 for points not in view.
        depth: ``(N,) float`` metres.
        num_pixels: ``H * W``.
        tolerance: metres; a point is visible when ``depth <= min_depth_of_its_pixel + tolerance``.

    Returns:
        ``(N,) bool`` (False for points not in view).
    """
    pixel = np.asarray(pixel, dtype=np.int64)
    ok = pixel >= 0
    zbuf = np.full(int(num_pixels), np.inf, dtype=np.float64)
    np.minimum.at(zbuf, pixel[ok], np.asarray(depth, dtype=np.float64)[ok])
    vis = np.zeros(pixel.shape[0], dtype=bool)
    vis[ok] = depth[ok] <= zbuf[pixel[ok]] + tolerance
    return vis


def patch_coordinates(uv: np.ndarray | torch.Tensor, image_shape: tuple[int, int], grid_shape: tuple[int, int]):
    """Continuous patch coordinates ``(gx, gy)`` of pixel positions (patch ``j``'s centre = ``j``).

    Args:
        uv: ``(N, 2)`` pixel coordinates (pixel centres at integers).
        image_shape: original ``(H, W)``.
        grid_shape: teacher grid ``(Hp, Wp)``.

    Returns:
        same type as ``uv``, ``(N, 2)``: ``((u + 0.5) * Wp / W - 0.5, (v + 0.5) * Hp / H - 0.5)``.
    """
    h, w = image_shape
    hp, wp = grid_shape
    gx = (uv[:, 0] + 0.5) * (wp / w) - 0.5
    gy = (uv[:, 1] + 0.5) * (hp / h) - 0.5
    if isinstance(uv, torch.Tensor):
        return torch.stack([gx, gy], 1)
    return np.stack([gx, gy], 1)


def lookup_patch_features(grid: torch.Tensor, uv: torch.Tensor | np.ndarray, image_shape: tuple[int, int],
                          mode: str = "bilinear") -> torch.Tensor:
    """Teacher features at pixel positions.

    Args:
        grid: ``(C, Hp, Wp)`` patch-feature grid of one image (any float dtype).
        uv: ``(N, 2)`` pixel coordinates in the original image (finite).
        image_shape: original ``(H, W)``.
        mode: ``"nearest"`` (the patch the pixel lies in) or ``"bilinear"`` (between the
            four surrounding patch centres, clamped at the border).

    Returns:
        ``(N, C) float32``.

    Raises:
        ValueError: unknown mode or bad shapes.
    """
    if mode not in LOOKUP_MODES:
        raise ValueError(f"lookup_patch_features: mode must be one of {LOOKUP_MODES}, got {mode!r}")
    if grid.ndim != 3:
        raise ValueError(f"lookup_patch_features: grid must be (C, Hp, Wp), got {tuple(grid.shape)}")
    c, hp, wp = grid.shape
    uv_t = torch.as_tensor(np.asarray(uv) if not isinstance(uv, torch.Tensor) else uv, dtype=torch.float32,
                           device=grid.device)
    g = patch_coordinates(uv_t, image_shape, (hp, wp))
    rows = grid.float().permute(1, 2, 0).reshape(hp * wp, c)  # (Hp * Wp, C), row = y * Wp + x
    if mode == "nearest":
        ix = torch.floor(g[:, 0] + 0.5).long().clamp(0, wp - 1)
        iy = torch.floor(g[:, 1] + 0.5).long().clamp(0, hp - 1)
        return rows[iy * wp + ix]
    gx = g[:, 0].clamp(0, wp - 1)
    gy = g[:, 1].clamp(0, hp - 1)
    x0 = torch.floor(gx).long().clamp(0, max(wp - 2, 0))
    y0 = torch.floor(gy).long().clamp(0, max(hp - 2, 0))
    x1 = (x0 + 1).clamp(max=wp - 1)
    y1 = (y0 + 1).clamp(max=hp - 1)
    ax = (gx - x0.float()).clamp(0, 1)[:, None]
    ay = (gy - y0.float()).clamp(0, 1)[:, None]
    top = rows[y0 * wp + x0] * (1 - ax) + rows[y0 * wp + x1] * ax
    bottom = rows[y1 * wp + x0] * (1 - ax) + rows[y1 * wp + x1] * ax
    return top * (1 - ay) + bottom * ay


def dense_targets(points: np.ndarray, grid: torch.Tensor, intrinsics: CameraIntrinsics,
                  T_world_cam: Optional[np.ndarray], mode: str = "bilinear", zbuffer: bool = True,
                  tolerance: float = 0.05) -> tuple[torch.Tensor, np.ndarray]:
    """Per-point teacher targets of ``points`` seen by one camera frame.

    Returns:
        ``(targets (N, C) float32 (zeros where not visible), visible (N,) bool)``.
    """
    proj = project_points(points, intrinsics, T_world_cam, zbuffer=zbuffer, tolerance=tolerance)
    out = torch.zeros(len(points), grid.shape[0], dtype=torch.float32, device=grid.device)
    vis = proj.visible
    if vis.any():
        out[torch.as_tensor(vis, device=grid.device)] = lookup_patch_features(
            grid, proj.uv[vis], intrinsics.shape, mode)
    return out, vis
