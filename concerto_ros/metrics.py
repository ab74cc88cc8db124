"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, overall accuracy."""

from __future__ import annotations

import numpy as np


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """``(K, K) int64`` counts, rows = target class, columns = predicted class.

    Points whose target is ``ignore_index`` or outside ``[0, K)`` are not counted.

    Raises:
        ValueError: ``pred`` and ``target`` differ in length.
    """
    pred = np.asarray(pred, dtype=np.int64).ravel()
    target = np.asarray(target, dtype=np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.size} entries, target {target.size}")
    keep = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(conf: np.ndarray) -> dict:
    """Scores from a confusion matrix.

    Returns:
        ``{"iou": (K,) float64 with NaN for classes absent from both target and prediction,
        "miou": mean of the non-NaN IoUs, "oacc": overall accuracy, "num_points": int}``.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = conf.sum()
    return {"iou": iou, "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "oacc": float(tp.sum() / total) if total else float("nan"), "num_points": int(total)}
