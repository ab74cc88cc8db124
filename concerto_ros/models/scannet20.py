"""Moved: the 20 ScanNet benchmark classes ("ScanNet-20", Pointcept's ``ScanNetDataset`` order,
the label order of Concerto's released linear-probe head ``concerto_large_linear_prob_head_sc.pth``;
Zhang et al., arXiv 2510.23607) live in ``config/labels/nyu40.yaml`` / ``scannet20.yaml``,
read by :mod:`concerto_ros.recordings.labels` (one owner).

These names remain for existing imports (``concerto_ros.pipeline``); new code imports from
``concerto_ros.recordings.labels``.
"""

from __future__ import annotations

from concerto_ros.recordings.labels import SCANNET20_CLASS_NAMES, resolve_class_names

__all__ = ["SCANNET20_CLASS_NAMES", "resolve_class_names"]
