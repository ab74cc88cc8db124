"""Offline replay: run a rosbag2 recording through the perception pipeline without ROS.

The recording is read through :mod:`concerto_ros.recordings` (rosbag2 MCAP or sqlite3, ROS 1
``.bag``, ROS 1 MCAP). Poses come from the bag's ``/tf`` and
``/tf_static`` messages through the project's :class:`TransformBuffer` (time-interpolated,
chained), loaded in a first pass so that a frame never waits for a transform recorded just
after it. Colour, depth and camera info (and/or a LiDAR PointCloud2) go through the same
:class:`~concerto_ros.sensors.stream.FrameStream` as in the node, in bag (log-time) order.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from concerto_ros.config import PerceptionConfig
from concerto_ros.pipeline import PerceptionPipeline, PipelineResult
from concerto_ros.recordings import BagRecording, SensorFrame, open_recording
from concerto_ros.sensors.skips import FrameSkipped, SkipCounter
from concerto_ros.sensors.stream import FrameStream
from concerto_ros.recordings.bags import TF_TOPICS  # noqa: F401  (re-exported)


@dataclass
class ReplayReport:
    """What an offline replay did.

    Attributes:
        result: pipeline output of the last encoded window (the last frame is always
            encoded at the end of a replay), ``None`` if no frame could be processed.
        frames_processed: frames lifted and integrated into the window and the map.
        keyframes_encoded: windows the encoders ran on (keyframes, plus the final window).
        map_stats: the map's size and counters (``{}`` without a map).
        map: the pipeline's :class:`~concerto_ros.mapping.SemanticVoxelMap` (``None`` without).
        skipped: ``{"topic:reason": count}`` of skipped frames/messages.
        timings: per-stage ``{"mean_ms", "median_ms", "count"}``.
        wall_s: total replay time (seconds), including bag reading.
        sync_stats: counters of the approximate-time policy.
    """

    result: PipelineResult | None
    frames_processed: int
    skipped: dict[str, int]
    timings: dict[str, dict[str, float]]
    wall_s: float
    sync_stats: dict[str, int] = field(default_factory=dict)
    keyframes_encoded: int = 0
    map_stats: dict[str, Any] = field(default_factory=dict)
    map: Any = None


def bag_streams(summary: dict, cfg: PerceptionConfig) -> dict[str, str]:
    """``{topic: stream}`` of the configured inputs present in a bag: the RGB-D topics when all
    three are there, ``topics.points`` when set and there, and with it the colour camera
    (colour and camera info) that colours the points (``lift.colorize_points``).

    Raises:
        ValueError: neither complete RGB-D topics nor the points topic (message lists what the
            bag has and the settings to change).
    """
    rgbd = {cfg.topics.color: "color", cfg.topics.depth: "depth", cfg.topics.camera_info: "camera_info"}
    out = dict(rgbd) if all(t in summary for t in rgbd) else {}
    if cfg.topics.points and cfg.topics.points in summary:
        out[cfg.topics.points] = "points"
        camera = {cfg.topics.color: "color", cfg.topics.camera_info: "camera_info"}
        if cfg.lift.colorize_points and all(t and t in summary for t in camera):
            out.update(camera)  # a colour camera beside the LiDAR colours its points
    if not out:
        wanted = list(rgbd) + ([cfg.topics.points] if cfg.topics.points else [])
        raise ValueError(f"bag has none of the configured inputs {wanted}; it has {sorted(summary)} "
                         "(set topics.color/depth/camera_info for RGB-D, or topics.points for a PointCloud2, "
                         "e.g. --set topics.points=/os1_cloud_node/points)")
    return out


class BagSession:
    """A bag opened for the pipeline: the configured inputs it has, its TF and the node's
    :class:`~concerto_ros.sensors.stream.FrameStream` over them (shared by replay and
    evaluation).

    RGB-D topics (``topics.color/depth/camera_info``) and a PointCloud2 topic
    (``topics.points``) are used when present, alone or together (:func:`bag_streams`).
    When the recording has no localisation (no ``/tf``, only static transforms or none) and
    its TF lacks ``fixed_frame``, each sensor's own frame is used with identity poses (a note
    is logged, and :attr:`cfg` is a copy with ``fixed_frame = ""``); with ``/tf`` a missing
    fixed frame is a configuration error and frames are skipped as ``no_transform``.

    Args:
        bag: rosbag2 directory or ``.mcap``/``.db3`` file, ROS 1 ``.bag`` or ROS 1 MCAP, or an
            opened :class:`~concerto_ros.recordings.BagRecording`.
        cfg: pipeline config (topics, sync, validation, fixed frame).
        log: callable for warnings and notes.
        label_topic: a label-image topic paired with the RGB-D set (ground truth), or ``""``.
        skips: where skipped messages are counted (a new counter when ``None``).

    Attributes:
        cfg: the config the frames were made with (see above).
        stream: the frame stream (set ``stream.timer`` to time ``sync``/``convert`` in a
            pipeline's timer).
        skips: where skipped messages are counted.
        expected: messages of the reference topic (colour, else points): the frame count
            a progress bar can expect.

    Raises:
        concerto_ros.recordings.RecordingError: the file cannot be read (one line).
        ValueError: none of the configured topics is in the bag, or ``label_topic`` is not.
    """

    def __init__(self, bag: Any, cfg: PerceptionConfig, log: Callable[[str], Any] | None = print,
                 label_topic: str = "", skips: SkipCounter | None = None):
        self.rec = bag if isinstance(bag, BagRecording) else open_recording({"type": "bag", "path": str(bag)})
        summary = self.rec.summary()
        self.streams = bag_streams(summary, cfg)
        if label_topic:
            if label_topic not in summary:
                raise ValueError(f"label topic {label_topic!r} is not in the bag; it has {sorted(summary)}")
            self.streams[label_topic] = "labels"
        self.skips = skips if skips is not None else SkipCounter(log, period_s=cfg.skip_log_period)
        tf = self.rec.transforms(on_problem=lambda topic, line: self.skips.record(
            FrameSkipped(topic, "bad_transform", line)))
        if cfg.fixed_frame and cfg.fixed_frame not in tf.frames() and not tf.dynamic_edges():
            if log is not None:
                log(f"the recording has no localisation (no /tf) and its TF has no frame '{cfg.fixed_frame}' (frames: "
                    f"{tf.frames() or 'none'}): using each sensor's own frame with identity poses (set fixed_frame "
                    "to one of those frames to change this)")
            cfg = copy.deepcopy(cfg)
            cfg.fixed_frame = ""
        self.cfg = cfg
        self.stream = FrameStream(cfg, lookup=tf.lookup, skips=self.skips, note=log, label_topic=label_topic)
        ref_topic = cfg.topics.color if cfg.topics.color in self.streams else cfg.topics.points
        self.expected = summary[ref_topic][1]

    def frames(self) -> Iterator[SensorFrame]:
        """Decoded, validated and posed frames in bag (log-time) order; skips are counted in
        :attr:`skips`, not raised."""
        messages = self.rec.messages(list(self.streams))
        try:
            yield from self.stream.frames((self.streams[m.topic], m.msg) for m in messages)
        finally:
            messages.close()


def process_frames(pipeline: PerceptionPipeline, frames: Iterable[SensorFrame], skips: SkipCounter,
                   step: Callable[[SensorFrame], Any] | None = None) -> Iterator[tuple[SensorFrame, Any]]:
    """The replay loop: every frame through ``pipeline.process_frame`` (or ``step``, e.g.
    ``pipeline.lift_frame`` to lift only); frames the pipeline skips (no valid depth or
    points, a bad pose) are counted in ``skips``.

    Yields:
        ``(frame, result)`` of every processed frame: a :class:`PipelineResult` for a
        keyframe (the newest frame of ``result.window`` is ``frame`` lifted), ``None`` for a
        frame integrated into the window and the map but not encoded, or what ``step``
        returns.
    """
    step = step or pipeline.process_frame
    for frame in frames:
        try:
            res = step(frame)
        except FrameSkipped as skip:
            skips.record(skip)
            continue
        yield frame, res


def replay_bag(bag: str | Path, cfg: PerceptionConfig, pipeline: PerceptionPipeline | None = None,
               max_frames: int | None = None, on_result: Callable[[PipelineResult], Any] | None = None,
               log: Callable[[str], Any] | None = print, progress: bool = True) -> ReplayReport:
    """Run ``bag`` through the pipeline offline, with the node's frame stream.

    RGB-D topics (``topics.color/depth/camera_info``) and a PointCloud2 topic
    (``topics.points``) are used when present, alone or together.

    Args:
        bag: rosbag2 directory or ``.mcap``/``.db3`` file, ROS 1 ``.bag`` or ROS 1 MCAP.
        cfg: pipeline config (topics, sync, lifting, window, model).
        pipeline: an existing pipeline to reuse (its window is kept); built from ``cfg``
            when ``None``.
        max_frames: stop after this many processed frames.
        on_result: called with every :class:`PipelineResult`.
        log: callable for warnings and notes.
        progress: show a tqdm progress bar over the synced frames.

    Raises:
        concerto_ros.recordings.RecordingError: the file cannot be read (one line).
        ValueError: none of the configured topics is in the bag.
    """
    t_start = time.perf_counter()
    session = BagSession(bag, cfg, log=log)
    if pipeline is not None and not session.cfg.fixed_frame:
        pipeline.cfg.fixed_frame = ""
    pipeline = pipeline or PerceptionPipeline(session.cfg, log=log)
    session.stream.timer = pipeline.timer
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=session.expected if max_frames is None else min(session.expected, max_frames),
                   desc="replay", unit="frame")
    processed, result, encoded0 = 0, None, pipeline.frames_processed
    try:
        for _frame, res in process_frames(pipeline, session.frames(), session.skips):
            processed += 1
            if res is not None:
                result = res
                if on_result is not None:
                    on_result(res)
            if bar is not None:
                bar.update(1)
                if res is not None:
                    bar.set_postfix(voxels=len(res.coord), ms=f"{sum(res.timings_ms.values()):.0f}")
            if max_frames is not None and processed >= max_frames:
                break
        final = pipeline.flush()
        if final is not None:
            result = final
            if on_result is not None:
                on_result(final)
    finally:
        if bar is not None:
            bar.close()
    stats = pipeline.map.stats() if pipeline.map is not None else None
    return ReplayReport(result=result, frames_processed=processed, skipped=session.skips.as_dict(),
                        timings=pipeline.timer.summary(), wall_s=time.perf_counter() - t_start,
                        sync_stats=dict(session.stream.assembler.sync.stats),
                        keyframes_encoded=pipeline.frames_processed - encoded0,
                        map_stats=stats.as_dict() if stats is not None else {}, map=pipeline.map)
