"""Evaluation of the node's outputs and of encoder features against ground truth (no ROS).

* :mod:`~concerto_ros.evaluation.run` -- ``concerto eval``: the node's pipeline over any
  labelled recording, every processed frame's points scored once, one confusion matrix
  (mIoU over the classes in the ground truth and over all classes, per-class IoU and
  accuracy, latency per stage, skips by reason); predictions are pluggable
  (:class:`~concerto_ros.evaluation.run.PredictionSource`: the window today, a map later);
* :mod:`~concerto_ros.evaluation.confusion` -- a confusion matrix over named classes and
  its scores;
* :mod:`~concerto_ros.evaluation.interpolate` -- the Masked Scene Modeling multi-resolution
  features (every encoder level trilinearly interpolated at every point on a sparse voxel
  hash, arXiv 2504.06719);
* :mod:`~concerto_ros.evaluation.probe` -- ``concerto eval probe``: linear and kNN probes;
* :mod:`~concerto_ros.evaluation.queries` -- ``concerto eval queries``: top-k precision and
  ROC AUC of free-text queries per class name and synonym;
* :mod:`~concerto_ros.evaluation.report` -- ``metrics.json``, ``report.md`` and plots.

The yaw rotation (``--yaw``) and the training commands' yaw augmentation live in
:mod:`concerto_ros.augment`.
"""

from concerto_ros.evaluation.confusion import ClassConfusion, segmentation_report

__all__ = ["ClassConfusion", "segmentation_report"]
