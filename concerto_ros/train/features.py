"""Per-voxel features of labelled sources, computed as the node computes them (``probe``,
``translator``, the demo's evaluation).

* single scenes (``pcd`` / ``points`` entries of :func:`~concerto_ros.train.data.list_labelled`):
  grid-sampled at the node's ``window.voxel_size`` (one representative point per voxel, which
  also gives the voxel's label and colour) and encoded as one scene by the node's Concerto
  encoder (:meth:`~concerto_ros.models.extractor.FeatureExtractor.encode`), or the raw
  inputs (xyz metres, rgb / 255: 6-d) as a baseline;
* RGB-D folders: the frames go through the node's
  :class:`~concerto_ros.pipeline.PerceptionPipeline` one by one, as live; every
  ``window_stride``-th window (and the last) contributes its voxels with the node's fused
  features (Cross4D included when the pipeline runs it) and the window's majority voxel labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from concerto_ros.train.data import iter_folder_frames, list_labelled, load_labelled_points

__all__ = ["LabelledFeatures", "scene_features", "folder_features", "source_features", "collect_features"]


@dataclass
class LabelledFeatures:
    """Features of labelled voxels.

    Attributes:
        feats: ``(N, D) float32`` per-voxel features.
        labels: ``(N,) int64`` raw labels (``-1`` where a voxel has none).
        coords: ``(N, 3) float32`` voxel representatives, metres (the source's frame).
        targets: ``(N, C) float32`` image-model targets (translator targets mode) or ``None``.
        visible: ``(N,) bool`` target available, or ``None``.
    """

    feats: np.ndarray
    labels: np.ndarray
    coords: np.ndarray
    targets: Optional[np.ndarray] = None
    visible: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(len(self.labels))

    @staticmethod
    def concat(parts: list["LabelledFeatures"], dim: int = 0) -> "LabelledFeatures":
        """One set from several (an empty list gives ``(0, dim)`` features)."""
        if not parts:
            return LabelledFeatures(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros((0, 3), np.float32))
        cat = (lambda k: np.concatenate([getattr(p, k) for p in parts]) if getattr(parts[0], k) is not None else None)
        return LabelledFeatures(cat("feats"), cat("labels"), cat("coords"), cat("targets"), cat("visible"))


def scene_features(scenes: list[dict], voxel_size: float, encode=None, progress: bool = True,
                   desc: str = "features") -> LabelledFeatures:
    """Features of single scenes (``pcd`` / ``points`` entries).

    Args:
        voxel_size: grid-sampling voxel edge, metres.
        encode: ``(coord (M,3) float32, grid_coord (M,3), color=(M,3) uint8 | None) -> (M, D)
            tensor`` (the node's ``pipeline.extractor.encode``), or ``None`` for the raw inputs.
    """
    from tqdm import tqdm

    from concerto_ros.cloud.voxel import grid_sample

    parts = []
    for sc in (tqdm(scenes, desc=desc, unit="scene") if progress else scenes):
        xyz, rgb, raw = load_labelled_points(sc)
        if len(xyz) == 0:
            continue
        gs = grid_sample(xyz, float(voxel_size))
        p = xyz[gs.index]
        c = rgb[gs.index] if rgb is not None else None
        if encode is not None:
            f = encode(p, gs.grid_coord, color=c).float().cpu().numpy()
        else:
            cc = c.astype(np.float32) / 255.0 if c is not None else np.zeros_like(p)
            f = np.concatenate([p, cc], axis=1).astype(np.float32)
        parts.append(LabelledFeatures(f, raw[gs.index].astype(np.int64), p.astype(np.float32)))
    return LabelledFeatures.concat(parts)


def folder_features(entry: dict, pipeline, window_stride: int = 1, image_model=None, progress: bool = True,
                    labels: bool = True) -> LabelledFeatures:
    """Features of an RGB-D folder's windows through the node's pipeline (reset first).

    Args:
        entry: ``{"path", "fx"?, "fy"?, "cx"?, "cy"?, "depth_scale"?}``.
        window_stride: every n-th window (and the last) is encoded; the others' frames are only
            pushed into the window.
        image_model: ``(coord, rgb, intrinsics, T) -> (targets (M, C), visible (M,))`` or
            ``None``.
        labels: read the folder's label images (required unless ``image_model`` is given).

    Raises:
        ValueError: no ``labels/`` folder when labels are needed (see
            :func:`~concerto_ros.train.data.iter_folder_frames`).
    """
    from tqdm import tqdm

    from concerto_ros.bag.convert_rgbd import scan_rgbd_folder

    path = entry["path"]
    n = len(scan_rgbd_folder(path).stems)
    intr = {k: entry[k] for k in ("fx", "fy", "cx", "cy") if entry.get(k) is not None} or None
    frames = iter_folder_frames(path, intrinsics=intr, depth_scale=entry.get("depth_scale"), labels=labels)
    stride = max(1, int(window_stride))
    pipeline.reset()
    parts = []
    for i, (_, frame, pose) in enumerate(tqdm(frames, total=n, desc=f"features {getattr(path, 'name', path)}",
                                              unit="frame", disable=not progress)):
        if (i + 1) % stride and i != n - 1:
            pipeline.push(frame, pose)  # into the window; this window is not used: no encoding
            continue
        r = pipeline.process(frame, pose)
        wl = r.window.labels
        part = LabelledFeatures(r.features.float().cpu().numpy(),
                                np.asarray(wl, np.int64) if wl is not None else np.full(len(r.coord), -1, np.int64),
                                np.asarray(r.coord, np.float32))
        if image_model is not None:
            part.targets, part.visible = image_model(r.coord, frame.color, frame.intrinsics, pose)
        parts.append(part)
    return LabelledFeatures.concat(parts, pipeline.out_channels)


def source_features(scenes: list[dict], pipeline, voxel_size: float, window_stride: int = 1, raw: bool = False,
                    image_model=None, progress: bool = True, desc: str = "features") -> LabelledFeatures:
    """Features of entries of :func:`~concerto_ros.train.data.list_labelled`: single scenes
    first (:func:`scene_features` at the node's ``window.voxel_size``), then the folders
    (:func:`folder_features`), in source order within each.

    Args:
        pipeline: the node's :class:`~concerto_ros.pipeline.PerceptionPipeline` (``None``
            only with ``raw`` and no folder).
        voxel_size: grid of the single scenes, metres (the node's ``window.voxel_size``).
        raw: the raw inputs (xyz + rgb) instead of encoder features (single scenes only).
        image_model: see :func:`folder_features` (folders only).

    Raises:
        ValueError: ``raw`` or ``image_model`` with a source type that cannot give them, single
            scenes without a Concerto encoder or with a Cross4D encoder in the pipeline.
    """
    singles = [s for s in scenes if s["type"] != "folder"]
    folders = [s for s in scenes if s["type"] == "folder"]
    if folders and raw:
        raise ValueError("features: raw is not available for folder sources (their features come from the "
                         "node's pipeline); use features: encoder")
    parts = []
    if singles:
        if image_model is not None:
            raise ValueError("pcd / point-array sources have no images: mode targets needs RGB-D folders")
        encode = None if raw else _single_scene_encoder(pipeline)
        parts.append(scene_features(singles, voxel_size, encode, progress, desc=desc))
    for entry in folders:
        parts.append(folder_features(entry, pipeline, window_stride, image_model, progress,
                                     labels=image_model is None or (entry["path"] / "labels").is_dir()))
    return LabelledFeatures.concat([p for p in parts if len(p)], 6 if raw or pipeline is None else pipeline.out_channels)


def _single_scene_encoder(pipeline):
    if pipeline.extractor is None:
        raise ValueError("single scenes (pcd / point-array sources) need the Concerto encoder (node.model.enabled: true)")
    if pipeline.cross4d is not None:
        raise ValueError("single scenes (pcd / point-array sources) cannot feed the Cross4D encoder (it needs frames); "
                         "set node.cross4d.enabled: false or use RGB-D folder sources")
    return pipeline.extractor.encode


def collect_features(cfg: dict, pipeline, log: Callable[[str], Any] = print, progress: bool = True,
                     image_model=None):
    """``cfg["data"]["sources"]`` (every ``cfg["data"]["window_stride"]``-th window) through
    :func:`source_features`, as a tuple (the interface of the demo's evaluation).

    Returns:
        ``(features (N, D) float32, raw_labels (N,) int64 (-1 where unknown), coords (N, 3)
        float32, targets (N, C) float32 or None, visible (N,) bool or None)``.

    Raises:
        ValueError: no sources; see :func:`source_features`.
    """
    sources = cfg["data"]["sources"]
    if not sources:
        raise ValueError("data.sources is empty: give RGB-D folders with labels/ or labelled point arrays "
                         "(--source PATH or --set data.sources=[...])")
    lf = source_features(list_labelled(sources, require_labels=image_model is None), pipeline,
                         pipeline.cfg.window.voxel_size, int(cfg["data"].get("window_stride", 1)),
                         image_model=image_model, progress=progress)
    return lf.feats, lf.labels, lf.coords, lf.targets, lf.visible
