"""One confusion matrix over named classes, and the segmentation scores read from it.

Ground truth and predictions may name their classes differently ordered or partly
differently: a dataset's label set (``mosd``: table, object) against a model's head (the
demo classes), or two models compared on one recording. :class:`ClassConfusion` keeps one
class list and matches names case-insensitively (and a ground-truth class to a model class
named by one of its synonyms, e.g. ``sofa`` -> ``couch``); a class only one side knows gets
its own row and column, so a ground-truth class the model cannot predict scores IoU 0 and a
model class the ground truth lacks counts as a wrong prediction wherever it is given.

Scores (:func:`segmentation_report`), from the confusion matrix ``C`` (rows ground truth,
columns prediction, points counted once):

* ``per_class_iou[c] = C[c,c] / (sum_row c + sum_col c - C[c,c])`` (None when the class is
  neither in the ground truth nor predicted);
* ``miou``: mean IoU over the classes present in the ground truth;
* ``miou_all``: mean IoU over every class that occurs in the ground truth or in the
  predictions (a class predicted but absent from the ground truth scores 0);
* ``per_class_accuracy[c] = C[c,c] / sum_row c`` (recall; None without ground truth) and
  ``macc`` their mean over the classes present;
* ``accuracy``: overall share of correctly labelled points.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from concerto_ros.metrics import confusion_matrix, segmentation_scores

__all__ = ["ClassConfusion", "segmentation_report"]


class ClassConfusion:
    """A growing confusion matrix over named classes (see the module docstring).

    Args:
        names: initial class names, in order (e.g. the model's labels).
    """

    def __init__(self, names: Sequence[str] = ()):
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self.matrix = np.zeros((0, 0), dtype=np.int64)
        for n in names:
            self.index(n)

    def index(self, name: str, synonyms: Sequence[str] = ()) -> int:
        """The class index of ``name`` (or of the first of its ``synonyms`` already known),
        adding the class when neither is known."""
        for key in (name, *synonyms):
            i = self._index.get(str(key).strip().lower())
            if i is not None:
                return i
        self.names.append(str(name))
        self._index[str(name).strip().lower()] = len(self.names) - 1
        k = len(self.names)
        grown = np.zeros((k, k), dtype=np.int64)
        grown[: k - 1, : k - 1] = self.matrix
        self.matrix = grown
        return k - 1

    def lut(self, names: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
        """``(len(names) + 1,) int64``: class index of each of ``names``, then ``-1`` (so that
        ``lut[labels]`` maps the ignore label ``-1`` to ``-1``)."""
        syn = synonyms or {}
        return np.array([self.index(n, syn.get(n, ())) for n in names] + [-1], dtype=np.int64)

    def add(self, gt: np.ndarray, gt_names: Sequence[str], pred: np.ndarray, pred_names: Sequence[str],
            gt_synonyms: Mapping[str, Sequence[str]] | None = None) -> int:
        """Count points once.

        Args:
            gt: ``(N,)`` ground-truth class indices into ``gt_names``; ``-1`` (or anything
                outside ``[0, len(gt_names))``) is ignored.
            gt_names: the ground truth's class names.
            pred: ``(N,)`` predicted class indices into ``pred_names``; outside the range
                counts as wrong (a prediction of no class).
            pred_names: the model's class names.
            gt_synonyms: ground-truth class name -> other words for it (label sets carry them).

        Returns:
            The number of points counted.

        Raises:
            ValueError: ``gt`` and ``pred`` differ in length.
        """
        gt = np.asarray(gt, dtype=np.int64).reshape(-1)
        pred = np.asarray(pred, dtype=np.int64).reshape(-1)
        if gt.shape != pred.shape:
            raise ValueError(f"{gt.size} ground-truth labels but {pred.size} predictions")
        p_lut = self.lut(pred_names)  # the model's names first: ground truth may match them by synonym
        g_lut = self.lut(gt_names, gt_synonyms)
        g = g_lut[np.where((gt >= 0) & (gt < len(gt_names)), gt, -1)]
        p = p_lut[np.where((pred >= 0) & (pred < len(pred_names)), pred, -1)]
        keep = g >= 0
        if not keep.any():
            return 0
        k = len(self.names)
        if (p[keep] < 0).any():  # no class predicted: a column of its own, never correct
            none = self.index("(no label)")
            k = len(self.names)
            p = np.where(p < 0, none, p)
        self.matrix += confusion_matrix(p[keep], g[keep], k)
        return int(keep.sum())

    def merge(self, other: "ClassConfusion") -> None:
        """Add the counts of ``other`` (classes matched by name)."""
        lut = self.lut(other.names)[:-1]
        for i, j in zip(*np.nonzero(other.matrix)):
            self.matrix[lut[i], lut[j]] += other.matrix[i, j]

    def report(self) -> dict:
        """:func:`segmentation_report` of the counts so far."""
        return segmentation_report(self.matrix, self.names)


def _opt(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def segmentation_report(conf: np.ndarray, names: Sequence[str]) -> dict:
    """Scores of a confusion matrix (module docstring for the definitions).

    Args:
        conf: ``(K, K)`` counts, rows ground truth, columns prediction.
        names: ``K`` class names.

    Returns:
        ``{"miou", "miou_all", "accuracy", "macc", "per_class_iou" {name: float | None},
        "per_class_accuracy" {name: float | None}, "gt_points" {name: int},
        "classes" [names], "classes_present" [names with ground truth], "num_points",
        "confusion" [[int]]}``; the means are None when nothing was counted.

    Raises:
        ValueError: ``conf`` is not ``(K, K)`` for ``K = len(names)``.
    """
    conf = np.asarray(conf, dtype=np.int64)
    k = len(names)
    if conf.shape != (k, k):
        raise ValueError(f"confusion matrix {conf.shape} does not fit {k} class names")
    base = segmentation_scores(conf)
    iou = base["iou"]
    gt = conf.sum(axis=1)
    present = gt > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(present, np.diag(conf) / np.maximum(gt, 1), np.nan)
    return {
        "miou": _opt(float(np.mean(iou[present]))) if present.any() else None,
        "miou_all": _opt(base["miou"]),
        "accuracy": _opt(base["oacc"]),
        "macc": _opt(float(np.mean(acc[present]))) if present.any() else None,
        "per_class_iou": {n: _opt(v) for n, v in zip(names, iou)},
        "per_class_accuracy": {n: _opt(v) for n, v in zip(names, acc)},
        "gt_points": {n: int(c) for n, c in zip(names, gt)},
        "classes": list(names),
        "classes_present": [n for n, p in zip(names, present) if p],
        "num_points": int(base["num_points"]),
        "confusion": conf.tolist(),
    }
