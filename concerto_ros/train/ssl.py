"""``concerto train ssl``: Concerto's joint 2D-3D self-supervised training of the PTv3 encoder.

Concerto (Zhang et al., arXiv 2510.23607) trains the Point Transformer V3 encoder with two
objectives at once, and this command does both on windows lifted from the robot's own
recordings:

* **3D intra-modal self-distillation** (Sonata, Wu et al., CVPR 2025; DINO-style): a student
  encoder and its exponential-moving-average (EMA) teacher see differently augmented views of
  the same window -- ``views.global_views`` large crops and ``views.local_views`` small
  ones, each rotated about the gravity axis, scaled, jittered, colour-jittered or
  colour-dropped and thinned by point dropout; the student's large views are also
  block-masked (masked voxels take the embedding's ``mask_token``). Each view's per-voxel
  feature (the node's ``model.feature`` layout) goes through a projection MLP onto
  ``ssl.prototypes`` unit prototypes. On *matched points* (the nearest voxel of the other
  view in the original, un-augmented coordinates, within ``views.match_radius``) the
  student's prototype distribution (temperature ``ssl.student_temp``) is trained to match
  the teacher's, which is centred (running mean of teacher logits, momentum
  ``ssl.center_momentum``) and sharpened (``ssl.teacher_temp``, warmed up from
  ``ssl.teacher_temp_warmup``) -- centring prevents one prototype from dominating and
  sharpening prevents the uniform collapse. The teacher follows the student with momentum
  ``ssl.ema`` (cosine from the first value to the second over training).
* **2D-3D joint embedding**: every voxel of the window is projected into the newest frame's
  image (pinhole intrinsics + pose, z-buffer visibility,
  :func:`~concerto_ros.models.projection.dense_targets`, the projection of the Cross4D
  distillation) and takes the frozen 2D teacher's patch feature there (DINOv2 from a local
  weights file, or a seeded ViT stand-in; cached on disk by
  :class:`~concerto_ros.train.data.TargetCache`). The student's per-voxel features of its
  large views, through a projector, predict these targets under a cosine loss.

The loss is ``ssl.loss_3d * L_distill + ssl.loss_2d * L_2d``. The encoder starts from
``model.checkpoint`` (any format :func:`~concerto_ros.models.checkpoint.load_encoder` reads:
released Concerto/Sonata files, Pointcept training checkpoints, bare state dicts with
``model.preset``) or, when it is empty, from a random ``model.preset``.

Data: ``data.sources`` as in the other training commands -- rosbag2 recordings (decoded with
the node's topics, sync and TF), RGB-D folders (the converter's layout), and organized RGB
PCD files (``type: pcd``, e.g. mOSD, each file a one-frame recording in the camera frame).
Frames are lifted with the node's lifting, pushed into the node's sliding
:class:`~concerto_ros.cloud.window.VideoPointCloud` of ``data.num_frames`` frames and
voxelised at ``data.voxel_size`` (every ``data.window_stride``-th window is a training
scene), so the encoder learns on exactly the inputs it sees in the node.

Held-out check (no labels needed): the targets of voxels in ``data.heldout_fraction`` of
``data.heldout_block``-metre cubes are never trained on; after every epoch the cosine
between the projector's predictions and those targets is measured on un-augmented scenes,
together with the teacher's prototype usage (how many prototypes win at least one voxel:
a collapse shows as 1).

Outputs in ``output``: ``bundle.pt`` (the EMA teacher encoder as a model bundle: load it in
the node with ``model.bundle``, or chain ``concerto train probe`` / ``translator`` on it via
``perception_overrides``), ``encoder.pt`` (the same encoder in the released
``{"config", "state_dict"}`` format for ``model.checkpoint``), ``checkpoints/`` (``--resume``),
``metrics.csv`` (per step), ``eval.csv`` (per epoch), ``ssl_curves.png``, ``config.yaml``
and ``summary.json``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from concerto_ros.cloud.voxel import grid_sample
from concerto_ros.cloud.window import VideoPointCloud
from concerto_ros.models.projection import dense_targets
from concerto_ros.models.ptv3 import all_levels_feature, concerto_point_feature, prepare_input
from concerto_ros.models.teachers import build_teacher
from concerto_ros.train.common import (Checkpointer, MetricLogger, Progress, autocast, cosine_lr, count_parameters,
                                       dump_config, make_adamw, make_grad_scaler, print_summary, resolve_device,
                                       seed_everything)
from concerto_ros.train.data import TargetCache, heldout_mask, load_sources

__all__ = ["DEFAULTS", "SSLScene", "View", "PrototypeHead", "Projector", "build_scenes", "make_view",
           "match_views", "mask_blocks", "distill_loss", "train_ssl"]

#: Default configuration (``concerto train ssl --print-config`` prints it merged).
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "amp": True,
    "output": "outputs/ssl",
    "log": "csv",
    "data": {
        # each: {path, type: auto|bag|folder|pcd, fx, fy, cx, cy, depth_scale, rate_hz, max_frames, limit}
        "sources": [],
        "perception_config": "",  # node YAML (topics, sync, tf, fixed_frame) used to decode bags
        "lift": {"min_depth": 0.1, "max_depth": 8.0, "pixel_stride": 1},
        "num_frames": 4,  # T frames per window (the node's window.num_frames)
        "window_stride": 2,  # every k-th window becomes a training scene
        "voxel_size": 0.02,  # m (the node's window.voxel_size)
        "max_voxels": 60000,  # larger scenes are subsampled (uniformly) when loaded
        "heldout_fraction": 0.1,  # of heldout_block cubes whose 2D targets are never trained on
        "heldout_block": 0.25,  # m
        "cache_dir": "~/.cache/concerto_ros/cross4d_targets",
    },
    "teacher": {  # the frozen 2D image model
        "name": "seeded_vit",  # seeded_vit | dinov2_vits14 | dinov2_vitb14 | module:FILE.pt
        "weights": "",
        "backend": "auto",
        "seed": 0,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 2,
        "patch_size": 14,
        "short_side": 224,
        "lookup": "bilinear",
        "zbuffer_tolerance": 0.05,
    },
    "model": {
        "preset": "tiny",  # encoder preset (random start, or the layout of a bare state dict)
        "checkpoint": "",  # start from these weights (any format load_encoder reads); "" = random
        "feature": "all_levels",  # per-voxel feature trained and exported (the bundle sets the node's)
        "drop_path": 0.0,  # stochastic depth (random start only)
    },
    "views": {
        "global_views": 2,
        "local_views": 2,
        "global_crop": [0.5, 1.0],  # share of the scene's voxels nearest a random centre
        "local_crop": [0.05, 0.2],
        "max_view_voxels": 30000,
        "dropout": 0.1,  # share of voxels dropped per view
        "rotate_deg": 30.0,  # rotation about the up axis, uniform in +-
        "tilt_deg": 3.0,  # rotation about the two other axes, uniform in +-
        "up_axis": "z",  # x | y | z | -x | -y | -z: gravity-up axis of the data's fixed frame (mOSD camera: -y)
        "scale": [0.9, 1.1],
        "jitter": 0.005,  # m, Gaussian sigma (clipped at 2 sigma)
        "color_jitter": 0.2,  # brightness / contrast strength
        "color_drop": 0.2,  # probability that a view has no colour
        "mask_ratio": 0.3,  # share of the student's global-view mask cells
        "mask_size": 0.1,  # m, mask cell edge
        "match_radius": 0.03,  # m, in the original coordinates
    },
    "ssl": {
        "prototypes": 64,
        "head_hidden": 256,
        "head_bottleneck": 64,
        "student_temp": 0.1,
        "teacher_temp": 0.04,
        "teacher_temp_warmup": 0.04,  # teacher temperature at step 0 (linear to teacher_temp)
        "teacher_temp_warmup_steps": 100,
        "center_momentum": 0.9,
        "ema": [0.994, 1.0],  # teacher momentum: start -> end (cosine)
        "loss_3d": 1.0,
        "loss_2d": 1.0,
    },
    "optim": {"lr": 2.0e-3, "weight_decay": 0.04, "steps": 400, "warmup": 20, "grad_clip": 3.0},
    "train": {"steps_per_epoch": 100, "checkpoint_every": 100, "eval": True, "eval_scenes": 8},
}


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
                 heldout_fraction: float = 0.1, max_voxels: int = 0,
                 rng: Optional[np.random.Generator] = None) -> list[SSLScene]:
    """Slide the node's window over each recording; every ``window_stride``-th window (and the
    last) becomes an :class:`SSLScene` with targets from its newest frame.

    Raises:
        ValueError: no scene with a point.
    """
    rng = rng or np.random.default_rng(0)
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
                keep = np.sort(rng.choice(len(coord), max_voxels, replace=False))
                coord, color = coord[keep], color[keep]
            grid = cache.grid(rec.key, fr.key, fr.rgb)
            tgt, vis = dense_targets(coord, grid, fr.intrinsics, fr.T_world_cam, mode=lookup,
                                     tolerance=zbuffer_tolerance)
            scenes.append(SSLScene(f"{rec.key}/{fr.key}", np.ascontiguousarray(coord, np.float32),
                                   np.ascontiguousarray(color, np.uint8), tgt.half(), np.asarray(vis, bool),
                                   heldout_mask(coord, heldout_block, heldout_fraction)))
    if not scenes:
        raise ValueError("no training scene: the sources gave no points")
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


def make_view(scene: SSLScene, rng: np.random.Generator, crop: tuple[float, float], vcfg: dict,
              voxel_size: float) -> View:
    """One augmented view (Sonata-style): crop of the voxels nearest a random centre, point
    dropout, rotation about the up axis plus a small tilt, isotropic scaling, jitter,
    re-voxelisation at ``voxel_size`` and colour jitter / drop.

    Args:
        crop: ``(min, max)`` share of the scene's voxels kept.
        vcfg: the ``views`` config section.

    Raises:
        ValueError: an unknown ``up_axis``.
    """
    up = str(vcfg["up_axis"]).lstrip("+-")
    if up not in _AXES:
        raise ValueError(f"views.up_axis must be one of x, y, z (optionally signed), got {vcfg['up_axis']!r}")
    m = scene.num_voxels
    ratio = rng.uniform(float(crop[0]), float(crop[1]))
    k = int(min(max(16, round(ratio * m)), m, int(vcfg["max_view_voxels"])))
    centre = scene.coord[rng.integers(m)]
    d = ((scene.coord - centre) ** 2).sum(1)
    idx = np.argpartition(d, k - 1)[:k] if k < m else np.arange(m)
    p = float(vcfg["dropout"])
    if p > 0 and len(idx) > 32:
        idx = idx[rng.random(len(idx)) >= p]
    pts = scene.coord[idx].astype(np.float64)
    pts = pts - pts.mean(0)
    r = _rotation(_AXES[up], rng.uniform(-1, 1) * math.radians(float(vcfg["rotate_deg"])))
    tilt = math.radians(float(vcfg["tilt_deg"]))
    for ax in (a for a in range(3) if a != _AXES[up]):
        r = _rotation(ax, rng.uniform(-1, 1) * tilt) @ r
    pts = pts @ r.T * rng.uniform(float(vcfg["scale"][0]), float(vcfg["scale"][1]))
    sigma = float(vcfg["jitter"])
    if sigma > 0:
        pts = pts + np.clip(rng.normal(0, sigma, pts.shape), -2 * sigma, 2 * sigma)
    pts = pts.astype(np.float32)
    gs = grid_sample(pts, voxel_size)
    src = idx[gs.index]
    coord = pts[gs.index]
    col = scene.color[src].astype(np.float32)
    if rng.random() < float(vcfg["color_drop"]):
        col = np.zeros_like(col)
    else:
        s = float(vcfg["color_jitter"])
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


# ----------------------------------------------------------------------------------- heads
class PrototypeHead(nn.Module):
    """DINO/Sonata projection head: ``LN -> Linear -> GELU -> Linear -> GELU -> Linear`` to a
    bottleneck, L2-normalised, then cosine similarity to ``K`` unit prototypes.

    ``(N, C) -> (N, K)`` logits in ``[-1, 1]`` (divide by a temperature before softmax).
    """

    def __init__(self, in_channels: int, prototypes: int = 256, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


class Projector(nn.Module):
    """Per-voxel predictor of the 2D teacher's feature: ``LN -> Linear -> GELU -> Linear``,
    ``(N, C) -> (N, D_2d)``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def teacher_entropy(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """Mean entropy (nats) of the centred, sharpened teacher distributions ``(P, K)``: the
    floor of :func:`distill_loss`, so ``loss - entropy`` is the KL divergence the student
    still has to close."""
    pt = F.softmax((teacher_logits.float() - center) / teacher_temp, dim=-1)
    return -(pt * pt.clamp_min(1e-12).log()).sum(-1).mean()


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
                 student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-entropy ``-sum_k p_t(k) log p_s(k)`` averaged over rows: the teacher
    distribution ``softmax((t - center) / teacher_temp)`` (centred, sharpened, no gradient),
    the student ``log_softmax(s / student_temp)``. Shapes ``(P, K)``, ``center`` ``(K,)``."""
    with torch.no_grad():
        pt = F.softmax((teacher_logits.float() - center) / teacher_temp, dim=-1)
    return -(pt * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1).mean()


# ----------------------------------------------------------------------------------- model
def _build_encoder(mcfg: dict, device: torch.device, log):
    from concerto_ros.models.checkpoint import load_encoder
    from concerto_ros.models.presets import build_encoder

    if mcfg["checkpoint"]:
        path = Path(mcfg["checkpoint"]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.checkpoint '{path}' does not exist")
        enc = load_encoder(path, preset=mcfg["preset"] or None, overrides={"enable_flash": False}, device="cpu")
        desc = f"from {path}"
    else:
        enc = build_encoder(mcfg["preset"], mask_token=True, drop_path=float(mcfg["drop_path"]), enc_mode=True)
        desc = f"random '{mcfg['preset']}'"
    if enc.embedding.mask_token is None:  # released inference files may lack it
        enc.embedding.mask_token = nn.Parameter(torch.zeros(1, enc.config.enc_channels[0]))
        log("the checkpoint has no embedding.mask_token: a new zero mask token is trained")
    enc.config = enc.config.replace(mask_token=True, shuffle_orders=True)  # re-drawn orders per forward
    for p in enc.parameters():
        p.requires_grad_(True)
    return enc.to(device).train(), desc


def _features(encoder, views: list[View], feature: str, device: torch.device, with_mask: bool) -> list[torch.Tensor]:
    """Per-voxel features of each view, one batched encoder forward."""
    counts = [len(v.coord) for v in views]
    coord = np.concatenate([v.coord for v in views])
    grid = np.concatenate([v.grid_coord for v in views])
    color = np.concatenate([v.color for v in views])
    batch = prepare_input(coord, grid, color=color, offset=np.cumsum(counts), device=device)
    if with_mask:
        batch.mask = torch.as_tensor(np.concatenate([v.mask for v in views]), device=device)
    out = encoder(batch)
    feat = concerto_point_feature(out) if feature == "concat3" else all_levels_feature(out)
    return list(torch.split(feat, counts))


def _ema_momentum(step: int, total: int, start: float, end: float) -> float:
    return end - (end - start) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


@torch.no_grad()
def evaluate(student, projector, teacher, proto_head, scenes: list[SSLScene], feature: str, device: torch.device,
             voxel_size: float) -> dict:
    """On un-augmented scenes: the held-out 2D cosine (the student's projector prediction vs
    the target on voxels of held-out cubes), the same on training voxels, and the teacher's
    prototype usage (distinct argmax prototypes over all voxels; 1 = collapsed).

    Returns:
        ``{"heldout_cos", "train_cos", "prototypes_used", "heldout_points"}``.
    """
    was = student.training
    student.eval()
    sums = {"h": 0.0, "t": 0.0}
    n_h = n_t = 0
    used: set[int] = set()
    for sc in scenes:
        gs = grid_sample(sc.coord, voxel_size)  # one voxel per representative: a permutation
        idx = gs.index
        batch = prepare_input(sc.coord[idx], gs.grid_coord, color=sc.color[idx], device=device)
        pick = concerto_point_feature if feature == "concat3" else all_levels_feature
        pred = projector(pick(student(batch))).float().cpu()
        tgt = sc.target[torch.as_tensor(idx)].float()
        vis = torch.as_tensor(sc.visible[idx])
        held = torch.as_tensor(sc.heldout[idx])
        for key, m in (("h", vis & held), ("t", vis & ~held)):
            if bool(m.any()):
                sums[key] += float(F.cosine_similarity(pred[m], tgt[m], dim=-1).sum())
        n_h += int((vis & held).sum())
        n_t += int((vis & ~held).sum())
        used.update(proto_head(pick(teacher(batch))).argmax(1).unique().tolist())
    student.train(was)
    return {"heldout_cos": sums["h"] / max(n_h, 1), "train_cos": sums["t"] / max(n_t, 1),
            "prototypes_used": len(used), "heldout_points": n_h}


def plot_curves(metrics: list[dict], evals: list[dict], path: str | Path) -> Path:
    """PNG: the 3D distillation and 2D losses per step (smoothed) and the held-out 2D cosine
    per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [int(r["step"]) for r in metrics]

    def smooth(v, w=10):
        v = np.asarray(v, dtype=np.float64)
        if len(v) < w:
            return v
        return np.convolve(v, np.ones(w) / w, mode="valid")

    for key, label in (("loss_3d", "3D self-distillation (cross-entropy)"),
                       ("kl_3d", "3D: KL to the teacher (cross-entropy - teacher entropy)"),
                       ("loss_2d", "2D-3D (1 - cosine)")):
        if not metrics or key not in metrics[0]:
            continue
        v = smooth([float(r[key]) for r in metrics])
        a1.plot(steps[len(steps) - len(v):], v, label=label)
    a1.set_xlabel("step")
    a1.set_ylabel("loss (10-step mean)")
    a1.grid(alpha=0.3)
    a1.legend()
    if evals:
        ep = [int(r["step"]) for r in evals]
        a2.plot(ep, [float(r["heldout_cos"]) for r in evals], "o-", label="held-out voxels")
        a2.plot(ep, [float(r["train_cos"]) for r in evals], "s--", label="training voxels")
        a2.set_xlabel("step")
        a2.set_ylabel("cosine to 2D teacher")
        a2.grid(alpha=0.3)
        a2.legend()
    fig.suptitle("concerto train ssl")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------- training
def train_ssl(cfg: dict, log: Callable[[str], Any] = print, progress: bool = True, resume: bool = False) -> dict:
    """Run the self-supervised training described by ``cfg`` (see :data:`DEFAULTS` and the
    module docstring).

    Returns:
        summary dict: ``losses`` / ``losses_3d`` / ``kl_3d`` / ``losses_2d`` (per step; ``kl_3d``
        is the distillation cross-entropy minus the teacher's entropy), ``eval`` (per
        epoch), ``bundle``, ``encoder``, ``parameters``, ``scenes``, ``steps``,
        ``points_per_s``, ``wall_s``.

    Raises:
        ValueError: no data source, bad settings. FileNotFoundError: a missing path.
    """
    cfg = copy.deepcopy(cfg)
    dcfg, tcfg, mcfg, vcfg, scfg, ocfg = (cfg[k] for k in ("data", "teacher", "model", "views", "ssl", "optim"))
    if not dcfg["sources"]:
        raise ValueError("no data: set data.sources (bags, RGB-D folders or {type: pcd, path: ...} entries)")
    if mcfg["feature"] not in ("concat3", "all_levels"):
        raise ValueError(f"model.feature must be concat3 or all_levels, got {mcfg['feature']!r}")
    if int(vcfg["global_views"]) < 2:
        raise ValueError("views.global_views must be >= 2 (the teacher's views distil into each other)")
    seed_everything(int(cfg["seed"]))
    device = resolve_device(cfg["device"])
    voxel = float(dcfg["voxel_size"])
    out_dir = Path(cfg["output"]).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(cfg))
    t_start = time.perf_counter()

    # ---- data and 2D targets
    tkw = {k: tcfg[k] for k in ("embed_dim", "depth", "num_heads", "patch_size")} if tcfg["name"] == "seeded_vit" else {}
    teacher2d = build_teacher(tcfg["name"], weights=tcfg["weights"] or None, seed=int(tcfg["seed"]), device=device,
                              backend=tcfg["backend"], **tkw)
    cache = TargetCache(dcfg["cache_dir"], teacher2d, int(tcfg["short_side"]), device=device)
    pcfg = None
    if dcfg.get("perception_config"):
        from concerto_ros.config import load_config
        pcfg = load_config(dcfg["perception_config"])
    recordings = []
    for src in dcfg["sources"]:
        src = {"path": src} if isinstance(src, str) else dict(src)
        recordings += load_sources(src, dict(dcfg["lift"]), perception_cfg=pcfg, log=log)
    data_rng = np.random.default_rng(int(cfg["seed"]))
    scenes = build_scenes(recordings, cache, int(dcfg["num_frames"]), voxel, int(dcfg["window_stride"]),
                          lookup=tcfg["lookup"], zbuffer_tolerance=float(tcfg["zbuffer_tolerance"]),
                          heldout_block=float(dcfg["heldout_block"]),
                          heldout_fraction=float(dcfg["heldout_fraction"]), max_voxels=int(dcfg["max_voxels"]),
                          rng=data_rng)
    del teacher2d, recordings
    dim2d = int(scenes[0].target.shape[1])
    log(f"{len(scenes)} scenes ({sum(s.num_voxels for s in scenes):,} voxels) in "
        f"{time.perf_counter() - t_start:.1f} s; 2D teacher {cache.teacher_key} ({dim2d}-d), "
        f"target cache {cache.hits} hits / {cache.misses} misses")

    # ---- student, teacher, heads
    student, desc = _build_encoder(mcfg, device, log)
    from concerto_ros.models.extractor import feature_channels

    feat_dim = feature_channels(list(student.config.enc_channels), mcfg["feature"])
    s_head = PrototypeHead(feat_dim, int(scfg["prototypes"]), int(scfg["head_hidden"]),
                           int(scfg["head_bottleneck"])).to(device)
    projector = Projector(feat_dim, dim2d, int(scfg["head_hidden"])).to(device)
    teacher = copy.deepcopy(student)
    t_head = copy.deepcopy(s_head)
    for p in list(teacher.parameters()) + list(t_head.parameters()):
        p.requires_grad_(False)
    center = torch.zeros(int(scfg["prototypes"]), device=device)
    n_enc = count_parameters(student)
    log(f"student/teacher encoder {desc}: {n_enc:,} parameters, feature '{mcfg['feature']}' {feat_dim}-d; "
        f"{int(scfg['prototypes'])} prototypes; device {device}")

    params = list(student.parameters()) + list(s_head.parameters()) + list(projector.parameters())
    optim = make_adamw(params, float(ocfg["lr"]), float(ocfg["weight_decay"]))
    scaler = make_grad_scaler(device, bool(cfg["amp"]))
    ckpt = Checkpointer(out_dir, every=int(cfg["train"]["checkpoint_every"]))
    start, eval_rows = 0, []
    if resume:
        blob = ckpt.load_latest()
        if blob is None:
            log(f"--resume: no checkpoint in {ckpt.dir}; starting from scratch")
        else:
            student.load_state_dict(blob["student"])
            teacher.load_state_dict(blob["teacher"])
            s_head.load_state_dict(blob["student_head"])
            t_head.load_state_dict(blob["teacher_head"])
            projector.load_state_dict(blob["projector"])
            optim.load_state_dict(blob["optim"])
            center = blob["center"].to(device)
            start, eval_rows = int(blob["step"]), list(blob.get("eval_rows", []))
            log(f"resumed from {blob['path']} at step {start}")
    metrics = MetricLogger(out_dir, tensorboard=cfg["log"] == "tensorboard", append=resume and start > 0)
    evals = MetricLogger(out_dir, append=resume and start > 0, name="eval")

    total = int(ocfg["steps"])
    spe = max(1, int(cfg["train"]["steps_per_epoch"]))
    rng = np.random.default_rng(int(cfg["seed"]) * 7919 + start)
    eval_idx = np.linspace(0, len(scenes) - 1, min(len(scenes), int(cfg["train"]["eval_scenes"]))).round().astype(int)
    eval_set = [scenes[i] for i in sorted(set(eval_idx.tolist()))]
    bar = Progress(total, initial=start, desc="train ssl", enabled=progress)
    losses, l3s, l2s, kls = [], [], [], []
    metric_rows: list[dict] = []
    pts_total = 0
    t_train = time.perf_counter()
    n_global, n_local = int(vcfg["global_views"]), int(vcfg["local_views"])
    st, tt = float(scfg["student_temp"]), float(scfg["teacher_temp"])

    def state():
        return {"student": student.state_dict(), "teacher": teacher.state_dict(), "student_head": s_head.state_dict(),
                "teacher_head": t_head.state_dict(), "projector": projector.state_dict(), "optim": optim.state_dict(),
                "center": center.cpu(), "config": cfg, "eval_rows": eval_rows}

    for step in range(start, total):
        lr = cosine_lr(step, total, float(ocfg["lr"]), int(ocfg["warmup"]))
        for g in optim.param_groups:
            g["lr"] = lr
        warm = int(scfg["teacher_temp_warmup_steps"])
        t_temp = tt if step >= warm else float(scfg["teacher_temp_warmup"]) + (
            tt - float(scfg["teacher_temp_warmup"])) * step / max(1, warm)
        scene = scenes[int(rng.integers(len(scenes)))]
        globals_ = [make_view(scene, rng, vcfg["global_crop"], vcfg, voxel) for _ in range(n_global)]
        locals_ = [make_view(scene, rng, vcfg["local_crop"], vcfg, voxel) for _ in range(n_local)]
        student_views = [View(v.coord, v.grid_coord, v.color, v.source,
                              mask_blocks(v, rng, float(vcfg["mask_ratio"]), float(vcfg["mask_size"])))
                         for v in globals_] + locals_
        with torch.no_grad(), autocast(device, bool(cfg["amp"])):
            t_logits = [t_head(f).float() for f in _features(teacher, globals_, mcfg["feature"], device, False)]
        with autocast(device, bool(cfg["amp"])):
            s_feats = _features(student, student_views, mcfg["feature"], device, True)
            s_logits = [s_head(f).float() for f in s_feats]
        # 3D self-distillation on matched voxels
        terms, ents = [], []
        for si, sv in enumerate(student_views):
            for ti, tv in enumerate(globals_):
                ia, ib = match_views(scene, sv, tv, float(vcfg["match_radius"]))
                if si == ti:  # same view: distil the masked voxels only (masked point modelling)
                    keep = sv.mask[ia]
                    ia, ib = ia[keep], ib[keep]
                if len(ia) == 0:
                    continue
                tl = t_logits[ti][torch.as_tensor(ib, device=device)]
                terms.append(distill_loss(s_logits[si][torch.as_tensor(ia, device=device)], tl, center, st, t_temp))
                with torch.no_grad():
                    ents.append(teacher_entropy(tl, center, t_temp))
        loss_3d = torch.stack(terms).mean() if terms else s_logits[0].sum() * 0.0
        kl_3d = float(loss_3d.detach()) - (float(torch.stack(ents).mean()) if ents else 0.0)
        # 2D-3D joint embedding on the student's global views
        preds, tgts = [], []
        for v, f in zip(globals_, s_feats[:n_global]):
            ok = scene.visible[v.source] & ~scene.heldout[v.source]
            if ok.any():
                preds.append(projector(f[torch.as_tensor(ok, device=device)]).float())
                tgts.append(scene.target[torch.as_tensor(v.source[ok])].float().to(device))
        loss_2d = ((1.0 - F.cosine_similarity(torch.cat(preds), torch.cat(tgts), dim=-1)).mean() if preds
                   else s_logits[0].sum() * 0.0)
        loss = float(scfg["loss_3d"]) * loss_3d + float(scfg["loss_2d"]) * loss_2d
        optim.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if float(ocfg["grad_clip"]) > 0:
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_(params, float(ocfg["grad_clip"]))
        scaler.step(optim)
        scaler.update()
        # teacher: EMA of the student; centre: EMA of the teacher's mean logits
        m = _ema_momentum(step, total, float(scfg["ema"][0]), float(scfg["ema"][1]))
        with torch.no_grad():
            for pt, ps in zip(list(teacher.parameters()) + list(t_head.parameters()),
                              list(student.parameters()) + list(s_head.parameters())):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            batch_center = torch.cat(t_logits).mean(0)
            cm = float(scfg["center_momentum"])
            center.mul_(cm).add_(batch_center, alpha=1 - cm)
        n_pts = sum(len(v.coord) for v in student_views) + sum(len(v.coord) for v in globals_)
        pts_total += n_pts
        lv, l3, l2 = float(loss.detach()), float(loss_3d.detach()), float(loss_2d.detach())
        losses.append(lv)
        l3s.append(l3)
        l2s.append(l2)
        kls.append(kl_3d)
        rate = bar.update(lv, lr, n_pts, l3d=l3, l2d=l2)
        row = {"step": step + 1, "loss": lv, "loss_3d": l3, "kl_3d": kl_3d, "loss_2d": l2, "lr": lr,
               "teacher_temp": t_temp,
               "ema": m, "points_per_s": rate}
        metrics.log(row)
        metric_rows.append(row)
        done = step + 1
        if cfg["train"]["eval"] and (done % spe == 0 or done == total):
            ev = evaluate(student, projector, teacher, t_head, eval_set, mcfg["feature"], device, voxel)
            erow = {"epoch": math.ceil(done / spe), "step": done, **ev}
            eval_rows.append(erow)
            evals.log(erow)
            bar.bar.write(f"epoch {erow['epoch']} (step {done}): loss 3D {np.mean(l3s[-spe:]):.4f} "
                          f"2D {np.mean(l2s[-spe:]):.4f}; held-out 2D cosine {ev['heldout_cos']:.4f} "
                          f"(train {ev['train_cos']:.4f}); teacher prototypes used {ev['prototypes_used']}")
        if ckpt.due(done):
            ckpt.save(done, state())
    bar.close()
    ckpt.save(total, state())
    metrics.close()
    wall = time.perf_counter() - t_train

    # ---- outputs: the EMA teacher encoder (bundle + released format)
    from concerto_ros.models.bundle import bundle_from_parts, save_bundle
    from concerto_ros.models.checkpoint import save_encoder

    export = copy.deepcopy(teacher).cpu().eval()
    export.config = export.config.replace(shuffle_orders=False, drop_path=0.0)
    enc_path = out_dir / "encoder.pt"
    save_encoder(export, enc_path)
    tail = max(1, min(spe, len(losses)))
    summary = {
        "scenes": len(scenes), "voxels": int(sum(s.num_voxels for s in scenes)), "steps": total,
        "start": desc, "parameters": n_enc, "feature": mcfg["feature"], "feature_dim": feat_dim,
        "teacher_2d": cache.teacher_key, "loss_first": float(np.mean(losses[:tail])) if losses else None,
        "loss_last": float(np.mean(losses[-tail:])) if losses else None,
        "loss_3d_first": float(np.mean(l3s[:tail])) if l3s else None,
        "loss_3d_last": float(np.mean(l3s[-tail:])) if l3s else None,
        "kl_3d_first": float(np.mean(kls[:tail])) if kls else None,
        "kl_3d_last": float(np.mean(kls[-tail:])) if kls else None,
        "loss_2d_first": float(np.mean(l2s[:tail])) if l2s else None,
        "loss_2d_last": float(np.mean(l2s[-tail:])) if l2s else None,
        "eval": eval_rows, "points_per_s": pts_total / max(wall, 1e-9), "wall_s": wall,
        "encoder": str(enc_path),
    }
    bundle = bundle_from_parts(
        encoder=export, feature=mcfg["feature"], voxel_size=voxel, use_color=True,
        metadata={"description": f"concerto train ssl: {desc} encoder, {total} steps on {len(scenes)} scenes "
                                 f"({', '.join(str(s['path'] if isinstance(s, dict) else s) for s in dcfg['sources'])})",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": "concerto train ssl",
                  "config": json.loads(json.dumps(cfg)),
                  "metrics": {k: v for k, v in summary.items() if k not in ("eval",)}})
    bundle_path = save_bundle(bundle, out_dir / "bundle.pt")
    summary["bundle"] = str(bundle_path)
    if metric_rows or eval_rows:
        all_rows = metrics.read() if resume else metric_rows
        plot_curves(all_rows, eval_rows, out_dir / "ssl_curves.png")
    (out_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str))
    summary.update({"losses": losses, "losses_3d": l3s, "losses_2d": l2s, "kl_3d": kls})
    last = eval_rows[-1] if eval_rows else {}
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print_summary("concerto train ssl", [
        ("scenes / voxels", f"{len(scenes)} / {summary['voxels']:,}"), ("encoder", f"{desc} ({n_enc:,} params)"),
        ("2D teacher", cache.teacher_key), ("steps", total),
        ("loss 3D first -> last", f"{fmt(summary['loss_3d_first'])} -> {fmt(summary['loss_3d_last'])}"),
        ("KL to teacher first -> last", f"{fmt(summary['kl_3d_first'])} -> {fmt(summary['kl_3d_last'])}"),
        ("loss 2D first -> last", f"{fmt(summary['loss_2d_first'])} -> {fmt(summary['loss_2d_last'])}"),
        ("held-out 2D cosine", fmt(last.get("heldout_cos"))), ("teacher prototypes used", last.get("prototypes_used", "-")),
        ("points/s", f"{summary['points_per_s']:,.0f}"), ("wall time", f"{wall:.1f} s"),
        ("bundle", str(bundle_path)), ("encoder (model.checkpoint)", str(enc_path)),
    ])
    return summary
