"""``concerto eval``: the node's pipeline over labelled recordings, scored against ground truth.

Every source (:mod:`concerto_ros.recordings`) goes through the node's
:class:`~concerto_ros.pipeline.PerceptionPipeline` frame by frame, as live:

* bags through :class:`~concerto_ros.bag.replay.BagSession` (the node's frame stream: sync,
  decode, validation, pose, skip accounting) and replay's loop
  (:func:`~concerto_ros.bag.replay.process_frames`); ground truth from a label field of the
  PointCloud2 or a label-image topic (``topics.labels`` of the source, default the
  converter's ``/camera/labels/image_raw`` when the bag has it);
* frame-level sources (RGB-D folders, PCD, point arrays, SemanticKITTI) through
  ``rec.frames()`` and the same loop; ground truth from their label images, fields or arrays.

Each processed frame is scored once: its own points (the newest frame of the window,
lifted, i.e. within the depth/range limits) with the labels the pipeline gives them
through the voxel inverse map, against their ground-truth labels mapped to class names by
the source's label set (``label_names``), all accumulated into one confusion matrix
(:class:`~concerto_ros.evaluation.confusion.ClassConfusion`).

Predictions come from :class:`PredictionSource` objects: :class:`WindowPrediction` (the
window's labels, what ``~/semantic_points`` publishes) today; a map's labels at the same
points are another source with the same two-method interface, scored side by side under
its own name.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from concerto_ros.evaluation.confusion import ClassConfusion

__all__ = ["PredictionSource", "WindowPrediction", "MapPrediction", "PREDICTIONS", "EvalResult", "evaluate", "open_labelled", "describe_models",
           "LABEL_TOPIC", "source_frames", "is_scene_collection"]

#: label-image topic written by ``concerto convert rgbd`` (used when a bag source names none)
LABEL_TOPIC = "/camera/labels/image_raw"
#: source types whose frames are independent scenes unless the source gives poses
_SCENE_TYPES = ("pcd", "points", "semantickitti")


class PredictionSource(Protocol):
    """Where the scored labels of a processed frame come from.

    Attributes:
        name: key of this source in ``metrics.json`` (``window``, later ``map``).
    """

    name: str

    def frame_labels(self, pipeline, result) -> tuple[np.ndarray, Sequence[str]]:
        """``((N,) int labels, class names)`` for the ``N`` points of the frame just
        processed (``pipeline.window.frames[-1]``, in its point order)."""


class WindowPrediction:
    """The window's labels (``~/semantic_points``) at the newest frame's points, through the
    voxel inverse map (:meth:`~concerto_ros.pipeline.PipelineResult.frame_labels`)."""

    name = "window"

    def frame_labels(self, pipeline, result) -> tuple[np.ndarray, Sequence[str]]:
        labels, _conf = result.frame_labels(-1)
        return labels, result.class_names


class MapPrediction:
    """The persistent map's labels at the newest frame's points, right after the keyframe was
    fused: every point takes the fused label of its map voxel (-1 where the map has no class
    yet). Scored on the same frames and points as :class:`WindowPrediction`, so the two
    compare the fused map with the per-window output on the same voxels."""

    name = "map"

    def frame_labels(self, pipeline, result) -> tuple[np.ndarray, Sequence[str]]:
        from concerto_ros.mapping.keys import pack_keys, voxel_indices

        vmap = pipeline.map
        points = pipeline.window.frames[-1].points
        labels = np.full(points.shape[0], -1, dtype=np.int64)
        if vmap is None or points.shape[0] == 0:
            return labels, result.class_names
        with vmap.lock:
            rows = vmap.rows_of(pack_keys(voxel_indices(points, vmap.voxel_size, "map prediction")))
            held = rows >= 0
            labels[held] = vmap.labels(rows[held])
            names = list(vmap.class_names)
        return labels, names


#: prediction sources by the names ``concerto eval --outputs`` takes
PREDICTIONS = {"window": WindowPrediction, "map": MapPrediction}


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        confusions: per prediction source, the confusion over every source's frames.
        per_source: per recording ``{"source", "frames_processed", "frames_scored",
            "points", "miou", "accuracy"}`` (of the first prediction source).
        frames_processed: frames that went through the whole pipeline.
        frames_scored: processed frames with ground truth.
        skipped: ``{"topic:reason": count}``; timings: ``StageTimer.summary()``;
        frame_ms: total pipeline milliseconds of each processed frame.
        model: one line naming the models; label_sets: the ground truth's label sets.
        wall_s: seconds.
    """

    confusions: dict[str, ClassConfusion]
    per_source: list[dict] = field(default_factory=list)
    frames_processed: int = 0
    frames_scored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    frame_ms: list[float] = field(default_factory=list)
    model: str = ""
    label_sets: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def metrics(self) -> dict:
        """``metrics.json``: the first prediction source's scores at the top level
        (``miou``, ``miou_all``, ``accuracy``, ``per_class_iou``, ...), every source's under
        ``predictions``, then frames, skips by topic and by reason, and latency p50/p99 per
        stage (ms)."""
        reports = {name: c.report() for name, c in self.confusions.items()}
        first = next(iter(reports.values()))
        by_reason: Counter = Counter()
        for key, n in self.skipped.items():
            by_reason[key.rsplit(":", 1)[-1]] += n
        latency = {stage: {"p50_ms": t["median_ms"], "p99_ms": t.get("p99_ms"), "mean_ms": t["mean_ms"],
                           "count": t["count"]} for stage, t in self.timings.items()}
        if self.frame_ms:
            f = np.asarray(self.frame_ms)
            latency["frame"] = {"p50_ms": float(np.median(f)), "p99_ms": float(np.percentile(f, 99)),
                                "mean_ms": float(f.mean()), "count": int(f.size)}
        return {**first, "predictions": reports, "sources": self.per_source,
                "frames_processed": self.frames_processed, "frames_scored": self.frames_scored,
                "skipped": dict(self.skipped), "skipped_by_reason": dict(by_reason), "latency_ms": latency,
                "model": self.model, "label_sets": self.label_sets, "wall_s": self.wall_s}


def open_labelled(source):
    """Open a labelled source: its label set is the source's ``label_names``, or for an
    RGB-D folder without one the ``class_names`` of its ``camera.yaml`` (the demo
    generator's), so that frames carry class indices (``-1`` ignored).

    Returns:
        The recording (:func:`concerto_ros.recordings.open_recording`), ``label_set`` set.

    Raises:
        ValueError: no label set (one line saying how to name one); see ``open_recording``.
    """
    import dataclasses

    from concerto_ros.recordings import open_recording, parse_source

    src = parse_source(source)
    rec = open_recording(src)
    if rec.label_set is not None:
        return rec
    if (getattr(getattr(rec, "folder", None), "camera", None) or {}).get("class_names"):
        return open_recording(dataclasses.replace(src, label_names="camera"))
    raise ValueError(f"source {rec.path} names no label set: add label_names (nyu40, scannet20, semantickitti, "
                     "mosd, a YAML file or a list of class names), e.g. --data \"{path: ..., label_names: mosd}\"")


def describe_models(pipeline) -> str:
    """One line naming what ``pipeline`` runs (bundle, or encoder and head)."""
    if pipeline.bundle is not None:
        md = pipeline.bundle.metadata or {}
        return f"bundle {pipeline.bundle_path}: {md.get('description') or '(no description)'}"
    parts = [pipeline.extractor.description.split(":")[0] if pipeline.extractor is not None else "no Concerto encoder"]
    if pipeline.cross4d is not None:
        parts.append("Cross4D encoder")
    parts.append(f"head {pipeline.head.origin}" if getattr(pipeline.head, "origin", "") else "SEEDED RANDOM head")
    return "; ".join(parts)


def _bag_frames(rec, cfg, pipeline, skips, log) -> tuple[Iterator, int]:
    """Posed frames of a bag through the node's frame stream, ground truth mapped to class
    indices by the source's label set."""
    from concerto_ros.bag.replay import BagSession

    src = rec.source
    bcfg = copy.deepcopy(cfg)
    for key, topic in src.topics.items():
        if key != "labels":
            setattr(bcfg.topics, key, topic)
    if src.fixed_frame is not None:
        bcfg.fixed_frame = src.fixed_frame
    label_topic = src.topics.get("labels") or (LABEL_TOPIC if LABEL_TOPIC in rec.summary() else "")
    session = BagSession(rec, bcfg, log=log, label_topic=label_topic, skips=skips)
    session.stream.timer = pipeline.timer
    pipeline.cfg.fixed_frame = session.cfg.fixed_frame
    label_set = rec.label_set

    def mapped() -> Iterator:
        for frame in session.frames():
            if frame.labels is not None and label_set is not None:
                frame.labels = label_set.map(frame.labels)
                if frame.rgbd is not None:
                    frame.rgbd.labels = frame.labels
            yield frame

    return mapped(), session.expected


def is_scene_collection(rec, scenes: str = "auto") -> bool:
    """Whether the frames of ``rec`` are independent scenes (``scenes``: see :func:`evaluate`):
    ``auto`` says yes for point sets without poses (PCD files, point arrays, SemanticKITTI
    scans) and no for RGB-D folders and bags.

    Raises:
        ValueError: an unknown ``scenes``.
    """
    if scenes not in ("auto", "independent", "sequence"):
        raise ValueError(f"scenes must be auto, independent or sequence, got {scenes!r}")
    if scenes != "auto":
        return scenes == "independent"
    return rec.source.resolved_type() in _SCENE_TYPES and rec.source.poses is None


def source_frames(rec, cfg, pipeline, skips, log, scenes: str, transform) -> tuple[Iterator, int | None]:
    """Frames of any opened source for ``pipeline``, ground truth as class indices of the
    source's label set.

    Args:
        rec: an opened recording (:func:`concerto_ros.recordings.open_recording`).
        cfg: the config (bags: topics, sync, fixed frame; a source's ``topics`` and
            ``fixed_frame`` override it).
        skips: where the frame stream counts skipped messages.
        scenes: see :func:`evaluate` (``independent``: ``pipeline.reset()`` before each frame).
        transform: ``(4, 4)`` rotation of the world applied to every frame, or None.

    Returns:
        ``(frames iterator, expected frame count or None)``.
    """
    from concerto_ros.augment import rotate_frame

    if rec.kind == "messages":
        frames, total = _bag_frames(rec, cfg, pipeline, skips, log)
    else:
        frames, total = rec.frames(), len(rec)
    independent = is_scene_collection(rec, scenes)
    if independent and log is not None and scenes == "auto":
        log(f"{rec.path}: each frame is a scene of its own ({rec.source.resolved_type()} without poses): the window "
            "is cleared before every frame (--scenes sequence to keep it)")

    def prepared() -> Iterator:
        for frame in frames:
            if transform is not None:
                frame = rotate_frame(frame, transform)
            if independent:
                pipeline.reset()
            yield frame

    return prepared(), total


def _score_source(rec, results: Iterator, pipeline, predictions: Sequence[PredictionSource], out: EvalResult,
                  total: int | None) -> None:
    """Score the processed frames of one recording into ``out`` (its confusions, frame
    times and a per-source row); a tqdm bar over ``total`` frames unless ``total == -1``."""
    gts = rec.label_set
    own = ClassConfusion(pipeline.class_names)
    stats = {"source": str(rec.path), "frames_processed": 0, "frames_scored": 0}
    bar = None
    if total != -1:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"eval {rec.path.name}", unit="frame")
    for _frame, result in results:
        stats["frames_processed"] += 1
        if result is None:  # integrated into the window and the map, not a keyframe
            if bar is not None:
                bar.update(1)
            continue
        out.frame_ms.append(float(sum(result.timings_ms.values())))
        gt = pipeline.window.frames[-1].labels
        if gt is not None:
            stats["frames_scored"] += 1
            for p in predictions:
                pred, names = p.frame_labels(pipeline, result)
                out.confusions[p.name].add(gt, gts.classes, pred, names, gts.synonyms)
                if p is predictions[0]:
                    own.add(gt, gts.classes, pred, names, gts.synonyms)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(voxels=len(result.coord), ms=f"{out.frame_ms[-1]:.0f}")
    if bar is not None:
        bar.close()
    rep = own.report()
    stats.update(points=rep["num_points"], miou=rep["miou"], accuracy=rep["accuracy"])
    out.per_source.append(stats)
    out.frames_processed += stats["frames_processed"]
    out.frames_scored += stats["frames_scored"]


def evaluate(cfg, sources: Iterable[Any], yaw_deg: float = 0.0, up: str = "z", scenes: str = "auto",
             max_frames: int = 0, predictions: Sequence[PredictionSource] | None = None, progress: bool = True,
             log: Callable[[str], Any] | None = print) -> EvalResult:
    """Run the pipeline of ``cfg`` over labelled ``sources`` and score every processed frame.

    Args:
        cfg: the node's :class:`~concerto_ros.config.PerceptionConfig`.
        sources: anything :func:`concerto_ros.recordings.open_recording` takes, each with a
            label set (see :func:`open_labelled`).
        yaw_deg: rotate the data by this many degrees about ``up`` (through the fixed
            frame's origin, :func:`concerto_ros.augment.yaw_transform`) before the pipeline.
        up: the up axis of the fixed frame (``z``; ``-y`` for clouds in an optical frame).
        scenes: ``auto`` (point sets without poses -- PCD files, point arrays, scans -- are
            independent scenes: the window is cleared before every frame; RGB-D folders and
            bags are sequences), ``independent`` or ``sequence``.
        max_frames: stop each source after this many processed frames (0: all).
        predictions: what is scored (default: :class:`WindowPrediction`).
        progress: a progress bar per source.

    Returns:
        :class:`EvalResult`.

    Raises:
        concerto_ros.recordings.RecordingError: an unreadable source (one line).
        ValueError: a source without label set, a bag without the configured topics, bad
            ``scenes``/``up``; see :class:`~concerto_ros.pipeline.PerceptionPipeline`.
    """
    from concerto_ros.augment import yaw_transform
    from concerto_ros.bag.replay import process_frames
    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.sensors.skips import SkipCounter

    transform = yaw_transform(yaw_deg, up) if yaw_deg else None
    t0 = time.perf_counter()
    recs = [open_labelled(s) for s in sources]
    for r in recs:
        is_scene_collection(r, scenes)  # a bad value fails before the models load
    pipeline = PerceptionPipeline(copy.deepcopy(cfg), log=log)
    predictions = list(predictions or [WindowPrediction()])
    confusions = {p.name: ClassConfusion(pipeline.class_names) for p in predictions}
    skips = SkipCounter(log, period_s=cfg.skip_log_period)
    out = EvalResult(confusions=confusions, model=describe_models(pipeline),
                     label_sets=[r.label_set.describe() for r in recs])
    for rec in recs:
        pipeline.reset()
        pipeline.cfg.fixed_frame = cfg.fixed_frame
        frames, total = source_frames(rec, cfg, pipeline, skips, log, scenes, transform)
        results = process_frames(pipeline, frames, skips)
        if max_frames > 0:
            results = itertools.islice(results, max_frames)
            total = min(total, max_frames) if total else max_frames
        _score_source(rec, results, pipeline, predictions, out, total if progress else -1)
    out.skipped = skips.as_dict()
    out.timings = pipeline.timer.summary()
    out.wall_s = time.perf_counter() - t0
    return out
