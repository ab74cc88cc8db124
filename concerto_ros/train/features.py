"""Per-voxel features of labelled sources, computed as the node computes them (``probe``,
``translator``, the demo's evaluation).

Every source goes through the node's pipeline window by window
(:func:`~concerto_ros.train.data.iter_windows`): a scene (a PCD file, a point array, a scan
without poses) is a window of its own; an RGB-D folder or a bag gives every
``window_stride``-th window and the last. Each window is encoded by the node's models
(:meth:`~concerto_ros.pipeline.PerceptionPipeline.encode`: the fused Concerto + Cross4D
feature the node's heads read), or gives its raw inputs (xyz metres, rgb / 255: 6-d) as a
baseline. Labels are the windows' voxel labels (the majority of each voxel's points) mapped
to the command's classes (:class:`~concerto_ros.train.data.ClassMap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from concerto_ros.train.data import ClassMap, TrainUnit, expand_sources, iter_windows

__all__ = ["LabelledFeatures", "source_features", "collect_features"]


@dataclass
class LabelledFeatures:
    """Features of labelled voxels.

    Attributes:
        feats: ``(N, D) float32`` per-voxel features.
        labels: ``(N,) int64`` class indices of the command's classes, or raw labels without
            a class map (``-1`` where a voxel has none).
        coords: ``(N, 3) float32`` voxel representatives, metres, in the unrotated fixed
            frame (held-out cubes are drawn on them).
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


def _window_part(w, pipeline, raw: bool, class_map: ClassMap | None, image_model) -> LabelledFeatures:
    """Features, labels and (optionally) image targets of one :class:`TrainWindow`."""
    win = w.window
    if raw:
        feats = np.concatenate([win.coord, win.color.astype(np.float32) / 255.0], axis=1).astype(np.float32)
    else:
        feats = pipeline.encode(w.keyframe).features.float().cpu().numpy()
    if win.labels is None:
        labels = np.full(len(win.coord), -1, np.int64)
    elif class_map is not None:
        labels = class_map(win.labels, w.label_set, where=str(w.unit.source.path))
    else:
        labels = np.asarray(win.labels, np.int64)
    part = LabelledFeatures(feats, labels, w.original_coords())
    if image_model is not None:
        f = w.frame
        if f.rgbd is None:
            raise ValueError(f"{w.unit.source.path}: targets mode projects camera images; this source has frames "
                             "without one")
        part.targets, part.visible = image_model(win.coord, f.image if f.image is not None else f.rgbd.color,
                                                 f.rgbd.intrinsics, f.T_world_sensor)
    return part


def source_features(units: Sequence[TrainUnit], pipeline, window_stride: int = 1, class_map: ClassMap | None = None,
                    raw: bool = False, image_model=None, augment=None, seed: int = 0, progress: bool = True,
                    desc: str = "features", log: Callable[[str], Any] | None = None) -> LabelledFeatures:
    """Features of the windows of ``units`` (module docstring), in unit order.

    Args:
        units: :func:`~concerto_ros.train.data.expand_sources` of the sources (this
            process's share under torchrun).
        pipeline: the node's :class:`~concerto_ros.pipeline.PerceptionPipeline` (with
            ``raw``, any pipeline that lifts: :func:`~concerto_ros.train.data.lifting_pipeline`).
        window_stride: every n-th window of a sequence (and the last) is used.
        class_map: window labels -> class indices; None keeps them as they are.
        raw: the raw inputs (xyz + rgb / 255) instead of the node's features.
        image_model: ``(coord (M,3), rgb (H,W,3) uint8, intrinsics, T_world_cam) -> (targets (M,
            C), visible (M,))`` of each window's newest frame, or None; without it every
            source must carry labels.
        augment: yaw augmentation (:class:`~concerto_ros.train.config.AugmentConfig`) or None.
        seed: the augmentation's seed.

    Raises:
        ValueError: a source without labels (and no ``image_model``), labels that name no
            classes, a targets-mode source without images; see
            :func:`~concerto_ros.train.data.iter_windows`.
    """
    from tqdm import tqdm

    windows = iter_windows(units, pipeline, window_stride, augment, seed, require_labels=image_model is None, log=log)
    parts = [_window_part(w, pipeline, raw, class_map, image_model)
             for w in tqdm(windows, desc=desc, unit="window", disable=not progress)]
    return LabelledFeatures.concat([p for p in parts if len(p)], 6 if raw else pipeline.out_channels)


def collect_features(cfg: dict, pipeline, log: Callable[[str], Any] = print, progress: bool = True,
                     image_model=None):
    """``cfg["data"]["sources"]`` (every ``cfg["data"]["window_stride"]``-th window) through
    :func:`source_features` with the file's label values, as a tuple (the interface of the
    demo's evaluation: ``pipeline.latest`` is the last window's result).

    Returns:
        ``(features (N, D) float32, raw_labels (N,) int64 (-1 where unknown), coords (N, 3)
        float32, targets (N, C) float32 or None, visible (N,) bool or None)``.

    Raises:
        ValueError: no sources; see :func:`source_features`.
    """
    sources = cfg["data"]["sources"]
    if not sources:
        raise ValueError("data.sources is empty: give RGB-D folders with labels/ or labelled point arrays "
                         "(--data SOURCE or --set data.sources=[...])")
    lf = source_features(expand_sources(sources), pipeline, int(cfg["data"].get("window_stride", 1)),
                         image_model=image_model, progress=progress, log=log)
    return lf.feats, lf.labels, lf.coords, lf.targets, lf.visible
