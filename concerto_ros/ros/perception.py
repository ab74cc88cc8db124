"""The perception node's behaviour, shared by the plain and the lifecycle node.

:class:`PerceptionShell` owns everything the node does and is driven through four steps,
which the plain node runs at construction and the lifecycle node on its transitions:

* :meth:`~PerceptionShell.configure`: models (the slow part), the map, TF;
* :meth:`~PerceptionShell.activate`: subscriptions, publishers, services, timers and the
  runtime's threads (:class:`~concerto_ros.runtime.StreamingRuntime`: every frame integrated
  into the map, the encoders on keyframes, the newest keyframe wins);
* :meth:`~PerceptionShell.deactivate`: the threads stop (after the frame and keyframe in
  progress), then subscriptions, publishers, services and timers go;
* :meth:`~PerceptionShell.cleanup`: the map is saved to ``map.save_path`` (when set), models
  and TF are released.

Robustness rules (nothing another node sends may stop the node or cost it good frames):

* every ROS callback (subscriptions, TF, services, parameters, timers) runs inside
  :meth:`~PerceptionShell.guard`: an unexpected exception is counted as ``internal_error``
  with the topic and logged with its traceback; the callback returns normally;
* callbacks only pair messages (:class:`~concerto_ros.sensors.stream.FrameStream`, which
  checks every header at the door) and hand complete sets to the runtime;
* callbacks are in three callback groups (sensor intake, services, timers) on a
  multi-threaded executor, so a text query never blocks message intake;
* ``/diagnostics`` reports the level of the last ``diagnostics.window`` seconds, and a second
  status, ``input delivery``, warns when an input topic's transport delay p99 exceeds
  ``diagnostics.max_transport_ms`` (:func:`delivery_level`).
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from concerto_ros.config import SPECS, coerce
from concerto_ros.msgs.language_features import FLOAT16, fill_language_features
from concerto_ros.msgs.pointcloud2 import fill_pointcloud2
from concerto_ros.pipeline import PerceptionPipeline, QueryError
from concerto_ros.ros.dds import PROFILE_ENV
from concerto_ros.ros.delivery import DELIVERY_STATUS, DeliveryTimes
from concerto_ros.ros.params import RUNTIME_PARAMETERS, declare_config
from concerto_ros.ros.qos import input_events, input_qos, output_qos, qos_hint
from concerto_ros.ros.services import PerceptionServices, bounded_query_args  # noqa: F401  (re-exported)
from concerto_ros.ros.tf_source import TfSource
from concerto_ros.runtime import NewestQueue as DropOldestQueue  # noqa: F401  (re-exported)
from concerto_ros.runtime import StreamingRuntime
from concerto_ros.sensors.skips import INTERNAL_ERROR, FrameSkipped, SkipCounter
from concerto_ros.sensors.stream import FrameStream

__all__ = ["PerceptionShell", "diagnostic_level", "delivery_level", "DELIVERY_STATUS"]


def diagnostic_level(recent: dict[tuple[str, str], int], window_s: float) -> tuple[int, str]:
    """``(level, message)`` of ``/diagnostics`` from the skips of the last ``window_s`` seconds.

    ERROR when an internal error happened, else WARN when a message was skipped, else OK; the
    message names the dominant ``topic: reason`` and its count.
    """
    errors = {k: v for k, v in recent.items() if k[1] == INTERNAL_ERROR}
    pool = errors or recent
    if not pool:
        return DiagnosticStatus.OK, f"ok: nothing skipped in the last {window_s:g} s"
    (topic, reason), n = max(pool.items(), key=lambda kv: kv[1])
    total = sum(pool.values())
    what = "internal errors" if errors else "messages skipped"
    level = DiagnosticStatus.ERROR if errors else DiagnosticStatus.WARN
    return level, f"{total} {what} in the last {window_s:g} s, mostly '{topic}': {reason} ({n})"


def delivery_level(summary: dict[str, float], limit_ms: float) -> tuple[int, str]:
    """``(level, message)`` of the ``input delivery`` status of ``/diagnostics``.

    Args:
        summary: :meth:`~concerto_ros.ros.delivery.DeliveryTimes.summary` (keys
            ``transport_ms_p99:<topic>`` ..., milliseconds).
        limit_ms: ``diagnostics.max_transport_ms``.

    Returns:
        WARN naming the input topic with the largest transport delay p99 above ``limit_ms``
        and the likely fix, else OK (also before any message arrived).
    """
    late = {k.split(":", 1)[1]: v for k, v in summary.items() if k.startswith("transport_ms_p99:") and v > limit_ms}
    if not late:
        return DiagnosticStatus.OK, f"ok: transport delay p99 <= {limit_ms:g} ms on every input"
    topic, ms = max(late.items(), key=lambda kv: kv[1])
    others = f" (and {len(late) - 1} more topic(s))" if len(late) > 1 else ""
    return DiagnosticStatus.WARN, (
        f"'{topic}' arrives late: transport delay p99 {ms:.0f} ms > {limit_ms:g} ms{others}; for camera images on "
        f"one machine give the publisher the Fast DDS profile (export {PROFILE_ENV}=<concerto_ros share>/config/"
        "fastdds_large_data.xml), across machines check the network")


class PerceptionShell:
    """The perception node's subscriptions, runtime, publishers and services (module docstring).

    Args:
        node: the rclpy node (plain or lifecycle) that owns the ROS entities.
    """

    def __init__(self, node: Node):
        self.node = node
        self.log = node.get_logger()
        #: the configuration, from the node's parameters (declared here, so that a lifecycle
        #: node's parameters can be read and set before it is configured)
        self.cfg = declare_config(node)
        self.pipeline: PerceptionPipeline | None = None
        self.stream: FrameStream | None = None
        self.runtime: StreamingRuntime | None = None
        self.tf: TfSource | None = None
        self.skips = SkipCounter(self.log.warning, error=self.log.error)
        self.services = PerceptionServices(self)
        #: transport and queueing delays of the input messages (reported in /diagnostics)
        self.delivery = DeliveryTimes()
        self._entities: list = []
        self._active = False
        self._features_version = 0
        #: sensor callbacks may run side by side on the executor's threads (the frame stream is
        #: thread-safe and pairs out-of-order arrivals), so one slow callback does not hold the
        #: others back; the soaks measured no change in frames integrated either way
        self.intake_group = ReentrantCallbackGroup()
        #: /tf and /tf_static in a group of their own when tf.listener_thread is off (by default
        #: they have a node and thread of their own, see concerto_ros.ros.tf_source)
        self.tf_group = MutuallyExclusiveCallbackGroup()
        self.service_group = MutuallyExclusiveCallbackGroup()
        self.timer_group = MutuallyExclusiveCallbackGroup()
        self.pubs: dict[str, Any] = {}
        node.add_on_set_parameters_callback(self.guard(
            "parameters", self._on_set_parameters,
            lambda params: SetParametersResult(successful=False, reason="internal error (see the node's log)")))

    # -- the guard --------------------------------------------------------------------------------
    def guard(self, topic: str, fn: Callable, fallback: Callable[..., Any] | None = None) -> Callable:
        """``fn`` wrapped so that no exception leaves it: an unexpected one is counted as
        ``internal_error`` on ``topic`` (logged with its traceback, throttled) and
        ``fallback(*args)`` is returned instead (``None`` without a fallback)."""
        def guarded(*args):
            try:
                return fn(*args)
            except Exception:  # noqa: BLE001 - the point of the guard
                detail = traceback.format_exc(limit=4)
                try:
                    self.skips.record(FrameSkipped(topic, INTERNAL_ERROR, detail))
                except Exception:  # noqa: BLE001 - logging must not let the exception out either
                    print(f"[{self.node.get_name()}] internal error on {topic!r} (its log failed):\n{detail}",
                          file=sys.stderr, flush=True)
                return fallback(*args) if fallback is not None else None
        return guarded

    # -- lifecycle steps --------------------------------------------------------------------------
    def configure(self) -> None:
        """Build the models (and the map), subscribe to TF.

        Raises:
            ValueError, RuntimeError, FileNotFoundError: models that cannot be loaded, a saved
                map that does not match (``map.load_path``), or settings that contradict them
                (the node cannot start; the message says why).
        """
        cfg = self.cfg
        self.skips.period_s = cfg.skip_log_period
        self.skips.history_s = max(60.0, cfg.diagnostics.window)
        self.pipeline = PerceptionPipeline(cfg, log=self.log.info, warn=self.log.warning)
        self.tf = TfSource(self.node, cache_time_s=cfg.tf.cache_time, skips=self.skips,
                           callback_group=self.tf_group, guard=self.guard, note=self.log.info,
                           delivery=self.delivery, spin_thread=cfg.tf.listener_thread,
                           reliable=cfg.tf.qos == "reliable")
        self.stream = FrameStream(cfg, lookup=self._lookup, skips=self.skips, note=self.log.info,
                                  timer=self.pipeline.timer)
        self.runtime = StreamingRuntime.from_config(self.pipeline, self.stream, on_result=self._publish_window,
                                                    on_skip=self.skips.record)

    def _lookup(self, target: str, source: str, stamp_ns: int):
        return self.tf.lookup(target, source, stamp_ns, self.cfg.tf.timeout)

    def activate(self) -> None:
        """Subscribe, advertise, create services and timers, start the runtime's threads."""
        node, cfg, t = self.node, self.cfg, self.cfg.topics
        in_qos, out_qos = input_qos(cfg.qos), output_qos(cfg.qos)
        for stream, msg_type, topic in (("color", Image, t.color), ("depth", Image, t.depth),
                                        ("camera_info", CameraInfo, t.camera_info),
                                        ("points", PointCloud2, t.points)):
            if not topic:
                continue
            cb = self.delivery.wrap(topic, self.guard(topic, lambda m, s=stream: self._on_msg(s, m)))
            events = input_events(topic, cfg.qos, self.skips, self.log.error, self.guard)
            self._entities.append(node.create_subscription(msg_type, topic, cb, in_qos, event_callbacks=events,
                                                           callback_group=self.intake_group))
        self._create_publishers(out_qos)
        self._entities += self.services.create(out_qos)
        for period, name, fn in ((cfg.diagnostics.period, "diagnostics", self._publish_diagnostics),
                                 (1.0 / cfg.map.publish_rate if cfg.map.publish_rate > 0 else 0, "~/map/semantic_points",
                                  self._publish_map),
                                 (1.0 / cfg.map.features_rate if cfg.map.features_rate > 0 else 0,
                                  "~/map/language_features", self._publish_features)):
            if period > 0:
                self._entities.append(node.create_timer(period, self.guard(name, fn), callback_group=self.timer_group))
        self._active = True
        # PCA colours cost tens of ms a keyframe: only while someone looks at them (asked per keyframe)
        features_pub = self.pubs["features"]
        self.pipeline.feature_colors_wanted = lambda: features_pub.get_subscription_count() > 0
        self.runtime.start()
        if self.runtime.warm_up_s:
            self.log.info(f"encoders warmed up on a synthetic {cfg.window.num_frames}-frame window in "
                          f"{self.runtime.warm_up_s:.1f} s (worker.warm_up)")
        inputs = ", ".join(x for x in (t.color, t.depth, t.camera_info, t.points) if x)
        self.log.info(
            f"listening on {inputs} with {cfg.qos.input} input QoS ({qos_hint(cfg.qos)}); TF via "
            f"{self.tf.backend}; window {cfg.window.num_frames} frames at {cfg.window.voxel_size} m voxels in "
            f"'{cfg.fixed_frame}'; encoder on keyframes (moved {cfg.keyframe.min_translation} m, turned "
            f"{cfg.keyframe.min_rotation} deg or {cfg.keyframe.max_interval} s); map "
            f"{'on' if cfg.map.enabled else 'off'}; publishing {node.resolve_topic_name('~/semantic_points')} "
            f"({cfg.qos.output} QoS)")

    def _create_publishers(self, out_qos) -> None:
        from concerto_ros_interfaces.msg import LanguageFeatureCloud

        node = self.node
        self.pubs = {"semantic": node.create_publisher(PointCloud2, "~/semantic_points", out_qos),
                     "features": node.create_publisher(PointCloud2, "~/feature_points", out_qos),
                     "map": node.create_publisher(PointCloud2, "~/map/semantic_points", out_qos),
                     "language": node.create_publisher(LanguageFeatureCloud, "~/map/language_features", out_qos),
                     "diag": node.create_publisher(DiagnosticArray, "/diagnostics", 10)}
        self._entities += list(self.pubs.values())

    def deactivate(self, timeout_s: float = 10.0) -> None:
        """Stop the runtime (waiting up to ``timeout_s`` for the frame and keyframe in
        progress), then destroy subscriptions, publishers, services and timers. Idempotent."""
        self._active = False
        if self.runtime is not None:
            self.runtime.stop(timeout_s)
        for entity in self._entities:
            self._destroy(entity)
        self._entities = []
        self.pubs = {}

    def _destroy(self, entity) -> None:
        """Remove an entity through its node (so the executor forgets it too)."""
        from rclpy.publisher import Publisher
        from rclpy.service import Service
        from rclpy.subscription import Subscription
        from rclpy.timer import Timer

        destroy = {Subscription: self.node.destroy_subscription, Publisher: self.node.destroy_publisher,
                   Timer: self.node.destroy_timer, Service: self.node.destroy_service}
        for kind, fn in destroy.items():
            if isinstance(entity, kind):
                try:
                    fn(entity)
                except Exception:  # noqa: BLE001 - the context may already be gone at shutdown
                    pass
                return

    def cleanup(self) -> None:
        """Save the map to ``map.save_path`` (when set), release the models and the TF
        subscriptions (after :meth:`deactivate`)."""
        self.deactivate()
        p = self.pipeline
        if p is not None and p.map is not None and self.cfg.map.save_path and len(p.map):
            try:
                path = p.map.save(self.cfg.map.save_path)
                self.log.info(f"map saved to {path} ({len(p.map)} voxels)")
            except (OSError, ValueError) as exc:
                self.log.error(f"cannot save the map to {self.cfg.map.save_path}: {exc}")
        if self.tf is not None:
            self.tf.destroy()
        self.pipeline = self.stream = self.tf = self.runtime = None

    @property
    def active(self) -> bool:
        return self._active

    # -- callbacks (cheap: pairing only) -------------------------------------------------------
    def _on_msg(self, stream: str, msg) -> None:
        for pending in self.stream.add(stream, msg):
            self.runtime.offer(pending, time.monotonic())

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name not in SPECS:
                continue
            if p.name not in RUNTIME_PARAMETERS:
                return SetParametersResult(successful=False, reason=f"'{p.name}' is read at start-up; restart the node")
            try:
                value = coerce(SPECS[p.name], p.value)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            if p.name == "language.vocabulary" and self.pipeline is not None:
                try:
                    self.pipeline.set_vocabulary(value)
                except QueryError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
                self.log.info(f"open vocabulary set to {value or '[] (linear head labels)'}; applied from the next "
                              "keyframe")
            section, leaf = p.name.rsplit(".", 1) if "." in p.name else ("", p.name)
            setattr(self.cfg if not section else getattr(self.cfg, section), leaf, value)
            if p.name == "skip_log_period":
                self.skips.period_s = value
        return SetParametersResult(successful=True)

    # -- outputs -----------------------------------------------------------------------------------
    def _publish_window(self, result, keyframe, offered_at) -> None:
        """``on_result`` of the runtime (encoder thread): the keyframe's window clouds."""
        p = self.pipeline
        with p.timer.stage("to_msg"):
            msg = PointCloud2()
            fill_pointcloud2(msg, PointField, result.stamp_ns, result.fixed_frame, result.coord,
                             rgb=result.color, label=result.labels.astype("uint32"), confidence=result.confidence)
            fmsg = None
            if result.feature_colors is not None and self.cfg.publish.features:
                fmsg = PointCloud2()
                fill_pointcloud2(fmsg, PointField, result.stamp_ns, result.fixed_frame, result.coord,
                                 rgb=result.feature_colors)
        if not self._active:  # shutting down: the publishers may be gone
            return
        self.pubs["semantic"].publish(msg)
        if fmsg is not None:
            self.pubs["features"].publish(fmsg)
        if offered_at is not None:
            p.timer.add("latency", (time.monotonic() - offered_at) * 1e3)

    def _publish_map(self) -> None:
        """``~/map/semantic_points`` (x y z rgb label confidence observations), only while
        someone subscribes."""
        pub, vmap = self.pubs.get("map"), self.pipeline.map if self.pipeline else None
        if pub is None or vmap is None or pub.get_subscription_count() == 0:
            return
        snap = vmap.snapshot()
        msg = PointCloud2()
        fill_pointcloud2(msg, PointField, self._map_stamp(), snap.fixed_frame, snap.coords, rgb=snap.colors,
                         label=snap.labels, confidence=snap.confidence, extra={"observations": snap.observations})
        pub.publish(msg)

    def _publish_features(self) -> None:
        """``~/map/language_features``: the voxels updated since the previous message, only
        while someone subscribes."""
        pub, p = self.pubs.get("language"), self.pipeline
        if pub is None or p is None or p.map is None or p.language is None or pub.get_subscription_count() == 0:
            return
        import numpy as np
        from concerto_ros_interfaces.msg import LanguageFeatureCloud

        snap = p.map.snapshot(since=self._features_version, embeddings=True, embedding_dtype=np.float16)
        self._features_version = snap.version
        if len(snap) == 0:
            return
        pub.publish(self.fill_features(LanguageFeatureCloud(), snap, full=False))

    def fill_features(self, msg, snap, full: bool, encoding: int = FLOAT16):
        """Fill a ``LanguageFeatureCloud`` from a map snapshot (with embeddings)."""
        lang = self.pipeline.language
        return fill_language_features(msg, snap.coords, snap.embeddings, self._map_stamp(), snap.fixed_frame,
                                      full=full, version=snap.version, voxel_size=snap.voxel_size,
                                      text_encoder=lang.backend, text_model=lang.model,
                                      temperature=float(lang.translator.temperature), encoding=encoding)

    def _map_stamp(self) -> int:
        latest = self.pipeline.latest
        return latest.stamp_ns if latest is not None else self.node.get_clock().now().nanoseconds

    # -- diagnostics -------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        cfg, p, rt = self.cfg, self.pipeline, self.runtime
        recent = self.skips.recent(cfg.diagnostics.window)
        level, message = diagnostic_level(recent, cfg.diagnostics.window)
        st = DiagnosticStatus(level=level, name=f"{self.node.get_name()}: pipeline",
                              hardware_id=str(p.device), message=message)
        values = {"frames_processed": p.frames_processed, "frames_integrated": p.frames_integrated,
                  "keyframes_encoded": rt.keyframes_encoded, "keyframes_replaced": rt.keyframes_replaced,
                  "frames_dropped_queue": rt.frames_dropped, "encoder_yield_s": round(rt.yield_s, 1),
                  "memory_trims": rt.trims, "messages_skipped": self.skips.total,
                  "internal_errors": self.skips.count(INTERNAL_ERROR), "window_crops": p.window_crops,
                  f"recent_skipped_{cfg.diagnostics.window:g}s": sum(recent.values())}
        if p.map is not None:
            ms = p.map.stats()
            values.update({"map_voxels": ms.num_voxels, "map_semantic_voxels": ms.semantic_voxels,
                           "map_evictions": ms.evictions, "map_mib": round(ms.bytes_used / 2**20, 1)})
        values.update({f"skipped:{k}": v for k, v in self.skips.as_dict().items()})
        values.update({f"sync:{k}": v for k, v in self.stream.assembler.sync.stats.items()})
        for stage, s in p.timer.summary().items():
            values[f"ms:{stage}"] = round(s["mean_ms"], 3)
        delays = self.delivery.summary()
        values.update(delays)
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        level, message = delivery_level(delays, cfg.diagnostics.max_transport_ms)
        late = DiagnosticStatus(level=level, name=f"{self.node.get_name()}: {DELIVERY_STATUS}",
                                hardware_id=str(p.device), message=message,
                                values=[KeyValue(key=k, value=str(v)) for k, v in delays.items()])
        arr = DiagnosticArray(status=[st, late])
        arr.header.stamp = self.node.get_clock().now().to_msg()
        self.pubs["diag"].publish(arr)
