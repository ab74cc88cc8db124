"""Offline replay: run a rosbag2 recording through the perception pipeline without ROS.

The bag is read with ``rosbags`` (MCAP or sqlite3). Poses come from the bag's ``/tf`` and
``/tf_static`` messages through the project's :class:`TransformBuffer` (time-interpolated,
chained), loaded in a first pass so that a frame never waits for a transform recorded just
after it. Colour, depth and camera info go through the same
:class:`~concerto_ros.pipeline.RGBDFrameAssembler` as in the node, in bag (log-time) order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from concerto_ros.recordings.bags import bag_summary, iter_messages
from concerto_ros.config import PerceptionConfig
from concerto_ros.msgs.transforms import stamp_to_ns
from concerto_ros.pipeline import FrameSkipped, PerceptionPipeline, PipelineResult, RGBDFrameAssembler, SkipCounter
from concerto_ros.sensors.tf_buffer import TransformBuffer, TransformUnavailable

TF_TOPICS = ("/tf", "/tf_static")


@dataclass
class ReplayReport:
    """What an offline replay did.

    Attributes:
        result: pipeline output after the last processed frame (``None`` if none was).
        frames_processed: synced frames that went through the whole pipeline.
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


def load_tf(bag: str | Path, cache_time_s: float = 1e9) -> TransformBuffer:
    """A :class:`TransformBuffer` holding every ``/tf`` and ``/tf_static`` transform of ``bag``.

    Non-finite transforms are ignored (as tf2 does).
    """
    buf = TransformBuffer(cache_time_s=cache_time_s)
    topics = [t for t in TF_TOPICS if t in bag_summary(bag)]
    if not topics:
        return buf
    for m in iter_messages(bag, topics=topics):
        for t in m.msg.transforms:
            tr, q = t.transform.translation, t.transform.rotation
            vals = np.array([tr.x, tr.y, tr.z, q.x, q.y, q.z, q.w], dtype=np.float64)
            if not np.isfinite(vals).all():
                continue
            buf.set_transform(t.header.frame_id, t.child_frame_id, stamp_to_ns(t.header.stamp),
                              vals[:3], vals[3:], static=m.topic == "/tf_static")
    return buf


def replay_bag(bag: str | Path, cfg: PerceptionConfig, pipeline: PerceptionPipeline | None = None,
               max_frames: int | None = None, on_result: Callable[[PipelineResult], Any] | None = None,
               log: Callable[[str], Any] | None = print, progress: bool = True) -> ReplayReport:
    """Run ``bag`` through the pipeline offline.

    Args:
        bag: rosbag2 directory or ``.mcap``/``.db3`` file.
        cfg: pipeline config (topics, sync, lifting, window, model).
        pipeline: an existing pipeline to reuse (its window is kept); built from ``cfg``
            when ``None``.
        max_frames: stop after this many processed frames.
        on_result: called with every :class:`PipelineResult`.
        log: callable for warnings and notes.
        progress: show a tqdm progress bar over the synced frames.

    Raises:
        FileNotFoundError / ValueError: missing bag, or none of the configured topics in it.
    """
    t_start = time.perf_counter()
    summary = bag_summary(bag)
    topics = {"color": cfg.topics.color, "depth": cfg.topics.depth, "camera_info": cfg.topics.camera_info}
    missing = [t for t in topics.values() if t not in summary]
    if missing:
        raise ValueError(f"bag {bag} lacks topics {missing}; it has {sorted(summary)} "
                         "(set topics.* with --set topics.color=... to match)")
    stream_of = {v: k for k, v in topics.items()}
    pipeline = pipeline or PerceptionPipeline(cfg, log=log)
    tf = load_tf(bag)
    skips = SkipCounter(log, period_s=cfg.skip_log_period)
    assembler = RGBDFrameAssembler(cfg, note=log, skips=skips)
    result = None
    n_expected = min(summary[cfg.topics.color][1], summary[cfg.topics.depth][1])
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_expected if max_frames is None else min(n_expected, max_frames),
                   desc="replay", unit="frame")
    state = {"processed": 0, "result": None}

    def handle(sets) -> bool:
        """Process synced sets; False once ``max_frames`` is reached."""
        for synced in sets:
            if max_frames is not None and state["processed"] >= max_frames:
                return False
            try:
                with pipeline.timer.stage("convert"):
                    frame = assembler.to_frame(synced)
                try:
                    T = tf.lookup(cfg.fixed_frame, frame.frame_id, frame.stamp_ns)
                except TransformUnavailable as exc:
                    raise FrameSkipped("/tf", "no_transform", f"{cfg.fixed_frame} <- '{frame.frame_id}': {exc}") from None
                res = pipeline.process(frame, T)
            except FrameSkipped as skip:
                skips.record(skip)
                continue
            state["processed"] += 1
            state["result"] = res
            if on_result is not None:
                on_result(res)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(voxels=len(res.coord), ms=f"{sum(res.timings_ms.values()):.0f}")
        return max_frames is None or state["processed"] < max_frames

    messages = iter_messages(bag, topics=list(topics.values()))
    try:
        going = True
        for m in messages:
            with pipeline.timer.stage("sync"):
                sets = assembler.add(stream_of[m.topic], m.msg)
            if not handle(sets):
                going = False
                break
        if going:
            handle(assembler.sync.flush())
    finally:
        messages.close()
        if bar is not None:
            bar.close()
    processed, result = state["processed"], state["result"]
    return ReplayReport(result=result, frames_processed=processed, skipped=skips.as_dict(),
                        timings=pipeline.timer.summary(), wall_s=time.perf_counter() - t_start,
                        sync_stats=dict(assembler.sync.stats))
