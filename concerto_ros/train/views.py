"""Scenes and augmented views of the self-supervised objectives (``concerto train ssl``).

A scene (:class:`SSLScene`) is one window of the node's sliding video point cloud over a
recording (lifted, windowed and voxelised by the node's own code at ``node.window.*``), with
the frozen 2D teacher's patch feature projected onto each voxel from the window's newest frame.
Views (:class:`View`) are the Sonata-style augmentations of a scene the student and the
teacher see (:func:`make_view`): crops around a random centre, point dropout, rotation about
the gravity axis with a small tilt, scaling, jitter, re-voxelisation and colour jitter/drop;
block masks (:func:`mask_blocks`) and cross-view matches in the original coordinates
(:func:`match_views`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from concerto_ros.cloud.voxel import grid_sample
from concerto_ros.cloud.window import VideoPointCloud
from concerto_ros.train.config import setting
from concerto_ros.train.data import TargetCache, heldout_mask

__all__ = ["ViewsConfig", "SSLScene", "View", "build_scenes", "make_view", "mask_blocks", "match_views"]


@dataclass
class ViewsConfig:
    """Augmented views of a scene (Sonata-style)."""

    global_views: int = setting(2, "Large crops per scene; the EMA teacher sees these (unmasked).", lo=2, hi=16)
    local_views: int = setting(2, "Small crops per scene, student only.", lo=0, hi=32)
    global_crop: list[float] = setting(None, "Share of the scene's voxels nearest a random centre (min, max).",
                                       lo=0.0, hi=1.0, factory=lambda: [0.5, 1.0])
    local_crop: list[float] = setting(None, "Share of the scene's voxels of a small crop (min, max).", lo=0.0, hi=1.0,
                                      factory=lambda: [0.05, 0.2])
    max_view_voxels: int = setting(30000, "Largest view (voxels).", lo=16, hi=10_000_000)
    dropout: float = setting(0.1, "Share of the voxels dropped per view.", lo=0.0, hi=0.9)
    rotate_deg: float = setting(30.0, "Rotation about the up axis, uniform in +-, degrees.", lo=0.0, hi=180.0)
    tilt_deg: float = setting(3.0, "Rotation about the two other axes, uniform in +-, degrees.", lo=0.0, hi=90.0)
    up_axis: str = setting("z", "Gravity-up axis of the data's fixed frame (ROS fixed frames: z; a camera optical "
                                "frame such as mOSD's: -y).", choices=["x", "y", "z", "-x", "-y", "-z", "+x", "+y", "+z"])
    scale: list[float] = setting(None, "Isotropic scaling range (min, max).", lo=0.01, hi=100.0,
                                 factory=lambda: [0.9, 1.1])
    jitter: float = setting(0.005, "Gaussian jitter sigma (clipped at 2 sigma), metres.", lo=0.0, hi=1.0)
    color_jitter: float = setting(0.2, "Brightness / contrast jitter strength.", lo=0.0, hi=1.0)
    color_drop: float = setting(0.2, "Probability that a view has no colour.", lo=0.0, hi=1.0)
    mask_ratio: float = setting(0.3, "Share of the mask cells of the student's large views (concerto's masked "
                                     "distillation; msm uses ssl.msm.mask_ratio).", lo=0.0, hi=0.95)
    mask_size: float = setting(0.1, "Mask cell edge, metres.", lo=0.001, hi=10.0)
    match_radius: float = setting(0.03, "Cross-view matching radius in the original coordinates, metres.", lo=0.0,
                                  hi=10.0)


# ----------------------------------------------------------------------------------- data
@dataclass
class SSLScene:
    """One training scene: the voxelised window and its 2D targets.

    Attributes:
        key: ``<recording key>/<newest frame key>``.
        coord: ``(M, 3) float32`` voxel representatives, metres, the fixed frame.
        color: ``(M, 3) uint8`` RGB.
        target: ``(M, C) float16`` 2D teacher feature at each voxel's pixel in the newest
            frame (zeros where not visible).
        visible: ``(M,) bool`` target available (in the image, not occluded).
        heldout: ``(M,) bool`` in a held-out cube (target never trained on).
    """

    key: str
    coord: np.ndarray
    color: np.ndarray
    target: torch.Tensor
    visible: np.ndarray
    heldout: np.ndarray

    @property
    def num_voxels(self) -> int:
        return int(self.coord.shape[0])


def build_scenes(recordings, cache: TargetCache, num_frames: int, voxel_size: float, window_stride: int = 1,
                 lookup: str = "bilinear", zbuffer_tolerance: float = 0.05, heldout_block: float = 0.25,
                 heldout_fraction: float = 0.1, max_voxels: int = 0, seed: int = 0) -> list[SSLScene]:
    """Slide the node's window over each recording; every ``window_stride``-th window (and the
    last) becomes an :class:`SSLScene` with targets from its newest frame
    (:meth:`~concerto_ros.train.data.TargetCache.targets`: none visible when that frame has no
    image, e.g. point arrays: then only the 3D objectives learn from it).

    Args:
        max_voxels: windows with more voxels keep a uniform random subset of this size (0: all),
            drawn with a seed of ``(seed, scene key)``: the same whichever process builds it.

    Returns:
        The scenes (an empty list when the recordings give no point).
    """
    scenes: list[SSLScene] = []
    for rec in recordings:
        vpc = VideoPointCloud(num_frames=num_frames, voxel_size=voxel_size)
        n = len(rec.frames)
        for i, fr in enumerate(rec.frames):
            vpc.push(fr.points)
            if (i + 1) % max(1, window_stride) and i != n - 1:
                continue
            win = vpc.build()
            if win.num_voxels == 0:
                continue
            coord, color = win.coord, win.color
            if max_voxels and len(coord) > max_voxels:
                rng = np.random.default_rng([int(seed), zlib.crc32(f"{rec.key}/{fr.key}".encode())])
                keep = np.sort(rng.choice(len(coord), max_voxels, replace=False))
                coord, color = coord[keep], color[keep]
            tgt, vis = cache.targets(rec.key, fr, coord, lookup, zbuffer_tolerance)
            scenes.append(SSLScene(f"{rec.key}/{fr.key}", np.ascontiguousarray(coord, np.float32),
                                   np.ascontiguousarray(color, np.uint8), tgt.half(), np.asarray(vis, bool),
                                   heldout_mask(coord, heldout_block, heldout_fraction)))
    return scenes


# ----------------------------------------------------------------------------------- views
@dataclass
class View:
    """An augmented view of a scene.

    Attributes:
        coord: ``(V, 3) float32`` augmented coordinates (rotated, scaled, jittered), metres.
        grid_coord: ``(V, 3) int64`` voxel indices of ``coord`` at the training voxel size.
        color: ``(V, 3) float32`` RGB in ``[0, 255]`` after jitter (all zero: colour dropped).
        source: ``(V,) int64`` the scene voxel each view voxel comes from.
        mask: ``(V,) bool`` masked for the student (all false for teacher and local views).
    """

    coord: np.ndarray
    grid_coord: np.ndarray
    color: np.ndarray
    source: np.ndarray
    mask: np.ndarray


_AXES = {"x": 0, "y": 1, "z": 2}


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def make_view(scene: SSLScene, rng: np.random.Generator, crop: tuple[float, float], vcfg,
              voxel_size: float) -> View:
    """One augmented view (Sonata-style): crop of the voxels nearest a random centre, point
    dropout, rotation about the up axis plus a small tilt, isotropic scaling, jitter,
    re-voxelisation at ``voxel_size`` and colour jitter / drop.

    Args:
        crop: ``(min, max)`` share of the scene's voxels kept.
        vcfg: the ``views`` config section (:class:`ViewsConfig`).

    Raises:
        ValueError: an unknown ``up_axis``.
    """
    up = str(vcfg.up_axis).lstrip("+-")
    if up not in _AXES:
        raise ValueError(f"views.up_axis must be one of x, y, z (optionally signed), got {vcfg.up_axis!r}")
    m = scene.num_voxels
    ratio = rng.uniform(float(crop[0]), float(crop[1]))
    k = int(min(max(16, round(ratio * m)), m, int(vcfg.max_view_voxels)))
    centre = scene.coord[rng.integers(m)]
    d = ((scene.coord - centre) ** 2).sum(1)
    idx = np.argpartition(d, k - 1)[:k] if k < m else np.arange(m)
    p = float(vcfg.dropout)
    if p > 0 and len(idx) > 32:
        idx = idx[rng.random(len(idx)) >= p]
    pts = scene.coord[idx].astype(np.float64)
    pts = pts - pts.mean(0)
    r = _rotation(_AXES[up], rng.uniform(-1, 1) * math.radians(float(vcfg.rotate_deg)))
    tilt = math.radians(float(vcfg.tilt_deg))
    for ax in (a for a in range(3) if a != _AXES[up]):
        r = _rotation(ax, rng.uniform(-1, 1) * tilt) @ r
    pts = pts @ r.T * rng.uniform(float(vcfg.scale[0]), float(vcfg.scale[1]))
    sigma = float(vcfg.jitter)
    if sigma > 0:
        pts = pts + np.clip(rng.normal(0, sigma, pts.shape), -2 * sigma, 2 * sigma)
    pts = pts.astype(np.float32)
    gs = grid_sample(pts, voxel_size)
    src = idx[gs.index]
    coord = pts[gs.index]
    col = scene.color[src].astype(np.float32)
    if rng.random() < float(vcfg.color_drop):
        col = np.zeros_like(col)
    else:
        s = float(vcfg.color_jitter)
        if s > 0:
            mean = col.mean()
            col = (col - mean) * rng.uniform(1 - s, 1 + s) + mean + rng.uniform(-s, s) * 255.0 \
                + rng.normal(0, 0.05 * s * 255.0, 3)
            col = np.clip(col, 0, 255)
    return View(coord=coord, grid_coord=gs.grid_coord.astype(np.int64), color=col.astype(np.float32), source=src,
                mask=np.zeros(len(src), dtype=bool))


def mask_blocks(view: View, rng: np.random.Generator, ratio: float, size: float) -> np.ndarray:
    """``(V,) bool``: the voxels of ``view`` in a random ``ratio`` share of the ``size``-metre
    cells of its augmented coordinates (block masking; at least one voxel stays visible)."""
    if ratio <= 0 or len(view.coord) < 2:
        return np.zeros(len(view.coord), dtype=bool)
    cell = np.floor(view.coord / size).astype(np.int64)
    _, inv = np.unique(cell, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    n_cells = int(inv.max()) + 1
    chosen = rng.random(n_cells) < ratio
    mask = chosen[inv]
    if mask.all():
        mask[rng.integers(len(mask))] = False
    return mask


def match_views(scene: SSLScene, a: View, b: View, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of matched voxels of views ``a`` and ``b``: for each voxel of ``a``, the voxel of
    ``b`` nearest to it in the original scene coordinates, if within ``radius`` metres.

    Returns:
        ``(ia, ib)``: ``(P,) int64`` rows of ``a`` and of ``b``.
    """
    from scipy.spatial import cKDTree

    pa = scene.coord[a.source]
    pb = scene.coord[b.source]
    if not len(pa) or not len(pb):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dist, ib = cKDTree(pb).query(pa, k=1, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    return np.nonzero(ok)[0].astype(np.int64), ib[ok].astype(np.int64)


