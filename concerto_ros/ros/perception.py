"""The perception node's behaviour, shared by the plain and the lifecycle node.

:class:`PerceptionShell` owns everything the node does and is driven through four steps,
which the plain node runs at construction and the lifecycle node on its transitions:

* :meth:`~PerceptionShell.configure`: parameters, models (the slow part), TF;
* :meth:`~PerceptionShell.activate`: subscriptions, publishers, services, timers, worker;
* :meth:`~PerceptionShell.deactivate`: the worker stops (after its current frame), then
  subscriptions, publishers, services and timers go;
* :meth:`~PerceptionShell.cleanup`: models and TF are released.

Robustness rules (issue: nothing another node sends may stop the node or cost good frames):

* every ROS callback (subscriptions, TF, services, parameters, timers) runs inside
  :meth:`~PerceptionShell.guard`: an unexpected exception is counted as ``internal_error``
  with the topic and logged with its traceback; the callback returns normally;
* callbacks only pair messages (:class:`~concerto_ros.sensors.stream.FrameStream`) and hand
  complete sets to a drop-oldest queue; a worker thread decodes, validates, looks up the pose
  and runs the pipeline;
* callbacks are in three callback groups (sensor intake, services, timers) on a
  multi-threaded executor, so a text query never blocks message intake;
* ``/diagnostics`` reports the level of the last ``diagnostics.window`` seconds.
"""

from __future__ import annotations

import threading
import traceback
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from concerto_ros.config import SPECS, coerce
from concerto_ros.memory import release_free_memory
from concerto_ros.msgs.pointcloud2 import fill_pointcloud2
from concerto_ros.pipeline import PerceptionPipeline, QueryError
from concerto_ros.ros.params import RUNTIME_PARAMETERS, declare_config
from concerto_ros.ros.qos import input_events, input_qos, output_qos, qos_hint
from concerto_ros.ros.tf_source import TfSource
from concerto_ros.sensors.skips import INTERNAL_ERROR, FrameSkipped, SkipCounter
from concerto_ros.sensors.stream import FrameStream

__all__ = ["DropOldestQueue", "PerceptionShell", "diagnostic_level"]


class DropOldestQueue:
    """A bounded hand-off queue that keeps the newest items (thread-safe).

    When full, the item with the oldest stamp goes, which is the incoming one when it is
    older than everything queued (a late message must not push out a newer frame).

    Attributes:
        dropped: number of items discarded because the worker was busy.
    """

    def __init__(self, maxlen: int):
        self._items: list = []
        self._maxlen = int(maxlen)
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item) -> None:
        """Queue ``item`` (ordered by its ``stamp_ns`` attribute when it has one)."""
        stamp = getattr(item, "stamp_ns", None)
        with self._cond:
            if len(self._items) >= self._maxlen:
                self.dropped += 1
                oldest = min(range(len(self._items)), key=lambda i: getattr(self._items[i], "stamp_ns", 0))
                if stamp is not None and stamp < getattr(self._items[oldest], "stamp_ns", 0):
                    return
                del self._items[oldest]
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float):
        """Next item (oldest stamp first), or ``None`` after ``timeout`` seconds."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            first = min(range(len(self._items)), key=lambda i: getattr(self._items[i], "stamp_ns", 0))
            return self._items.pop(first)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()


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


class PerceptionShell:
    """The perception node's subscriptions, worker, publishers and services (see module docstring).

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
        self.tf: TfSource | None = None
        self.skips = SkipCounter(self.log.warning, error=self.log.error)
        self.queue = DropOldestQueue(1)
        self._entities: list = []
        self._worker: threading.Thread | None = None
        self._running = threading.Event()
        self.intake_group = MutuallyExclusiveCallbackGroup()
        self.service_group = MutuallyExclusiveCallbackGroup()
        self.timer_group = MutuallyExclusiveCallbackGroup()
        self.pub_semantic = self.pub_features = self.pub_diag = None
        self.pub_relevance = self.pub_markers = None
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
                self.skips.record(FrameSkipped(topic, INTERNAL_ERROR, traceback.format_exc(limit=4)))
                return fallback(*args) if fallback is not None else None
        return guarded

    # -- lifecycle steps --------------------------------------------------------------------------
    def configure(self) -> None:
        """Build the models and subscribe to TF.

        Raises:
            ValueError, RuntimeError, FileNotFoundError: models that cannot be loaded or
                settings that contradict them (the node cannot start; the message says why).
        """
        cfg = self.cfg
        self.skips.period_s = cfg.skip_log_period
        self.skips.history_s = max(60.0, cfg.diagnostics.window)
        self.pipeline = PerceptionPipeline(cfg, log=self.log.info, warn=self.log.warning)
        self.tf = TfSource(self.node, cache_time_s=cfg.tf.cache_time, skips=self.skips,
                           callback_group=self.intake_group, guard=self.guard, note=self.log.info)
        self.stream = FrameStream(cfg, lookup=self._lookup, skips=self.skips, note=self.log.info,
                                  timer=self.pipeline.timer)
        self.queue = DropOldestQueue(cfg.worker.queue_depth)

    def _lookup(self, target: str, source: str, stamp_ns: int):
        return self.tf.lookup(target, source, stamp_ns, self.cfg.tf.timeout)

    def activate(self) -> None:
        """Subscribe, advertise, start the worker and the diagnostics timer."""
        node, cfg, t = self.node, self.cfg, self.cfg.topics
        in_qos, out_qos = input_qos(cfg.qos), output_qos(cfg.qos)
        for stream, msg_type, topic in (("color", Image, t.color), ("depth", Image, t.depth),
                                        ("camera_info", CameraInfo, t.camera_info),
                                        ("points", PointCloud2, t.points)):
            if not topic:
                continue
            cb = self.guard(topic, lambda m, s=stream: self._on_msg(s, m))
            events = input_events(topic, cfg.qos, self.skips, self.log.error, self.guard)
            self._entities.append(node.create_subscription(msg_type, topic, cb, in_qos, event_callbacks=events,
                                                           callback_group=self.intake_group))
        self.pub_semantic = node.create_publisher(PointCloud2, "~/semantic_points", out_qos)
        self.pub_features = node.create_publisher(PointCloud2, "~/feature_points", out_qos)
        self.pub_diag = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities += [self.pub_semantic, self.pub_features, self.pub_diag]
        self._init_query_service(out_qos)
        self._entities.append(node.create_timer(cfg.diagnostics.period, self.guard("diagnostics", self._publish_diagnostics),
                                                callback_group=self.timer_group))
        self._running.set()
        self._worker = threading.Thread(target=self._work, name="concerto_worker", daemon=True)
        self._worker.start()
        inputs = ", ".join(x for x in (t.color, t.depth, t.camera_info, t.points) if x)
        self.log.info(
            f"listening on {inputs} with {cfg.qos.input} input QoS ({qos_hint(cfg.qos)}); TF via "
            f"{self.tf.backend}; window {cfg.window.num_frames} frames at {cfg.window.voxel_size} m voxels in "
            f"'{cfg.fixed_frame}'; publishing {node.resolve_topic_name('~/semantic_points')} ({cfg.qos.output} QoS)")

    def deactivate(self, timeout_s: float = 10.0) -> None:
        """Stop the worker (waiting up to ``timeout_s`` for the frame in progress), then
        destroy subscriptions, publishers, services and timers. Idempotent."""
        self._running.clear()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=timeout_s)
        self._worker = None
        self.queue.clear()
        for entity in self._entities:
            self._destroy(entity)
        self._entities = []
        self.pub_semantic = self.pub_features = self.pub_diag = None
        self.pub_relevance = self.pub_markers = None

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
        """Release the models and the TF subscriptions (after :meth:`deactivate`)."""
        self.deactivate()
        if self.tf is not None:
            self.tf.destroy()
        self.pipeline = self.stream = self.tf = None

    @property
    def active(self) -> bool:
        return self._running.is_set()

    # -- callbacks (cheap: pairing only) -------------------------------------------------------
    def _on_msg(self, stream: str, msg) -> None:
        for pending in self.stream.add(stream, msg):
            self.queue.put(pending)

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
                self.log.info(f"open vocabulary set to {value or '[] (linear head labels)'}; applied from the next frame")
            section, leaf = p.name.rsplit(".", 1) if "." in p.name else ("", p.name)
            setattr(self.cfg if not section else getattr(self.cfg, section), leaf, value)
            if p.name == "skip_log_period":
                self.skips.period_s = value
        return SetParametersResult(successful=True)

    # -- worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        while self._running.is_set():
            pending = self.queue.get(timeout=0.1)
            if pending is None:
                continue
            try:
                self._process(pending)
            except FrameSkipped as skip:
                self.skips.record(skip)
            except Exception:  # noqa: BLE001 - never let one frame kill the worker
                if self._running.is_set():
                    self.skips.record(FrameSkipped("pipeline", INTERNAL_ERROR, traceback.format_exc(limit=4)))
            release_free_memory()

    def _process(self, pending) -> None:
        p = self.pipeline
        result = p.process_frame(self.stream.decode(pending))
        with p.timer.stage("to_msg"):
            msg = PointCloud2()
            fill_pointcloud2(msg, PointField, result.stamp_ns, result.fixed_frame, result.coord,
                             rgb=result.color, label=result.labels.astype("uint32"), confidence=result.confidence)
            fmsg = None
            if result.feature_colors is not None and self.cfg.publish.features:
                fmsg = PointCloud2()
                fill_pointcloud2(fmsg, PointField, result.stamp_ns, result.fixed_frame, result.coord,
                                 rgb=result.feature_colors)
        if not self._running.is_set():  # shutting down: the publishers may be gone
            return
        self.pub_semantic.publish(msg)
        if fmsg is not None:
            self.pub_features.publish(fmsg)

    # -- diagnostics -------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        cfg, p = self.cfg, self.pipeline
        recent = self.skips.recent(cfg.diagnostics.window)
        level, message = diagnostic_level(recent, cfg.diagnostics.window)
        st = DiagnosticStatus(level=level, name=f"{self.node.get_name()}: pipeline",
                              hardware_id=str(p.device), message=message)
        values = {"frames_processed": p.frames_processed,
                  "frames_dropped_queue": self.queue.dropped,
                  "messages_skipped": self.skips.total,
                  "internal_errors": self.skips.count(INTERNAL_ERROR),
                  "window_crops": p.window_crops,
                  f"recent_skipped_{cfg.diagnostics.window:g}s": sum(recent.values())}
        values.update({f"skipped:{k}": v for k, v in self.skips.as_dict().items()})
        values.update({f"sync:{k}": v for k, v in self.stream.assembler.sync.stats.items()})
        for stage, s in p.timer.summary().items():
            values[f"ms:{stage}"] = round(s["mean_ms"], 3)
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.node.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    # -- open-vocabulary queries -------------------------------------------------------------------
    def _init_query_service(self, out_qos) -> None:
        try:
            from concerto_ros_interfaces.srv import QueryText
            from visualization_msgs.msg import MarkerArray
        except ImportError as exc:  # interfaces not built: the node still perceives
            self.log.warning(f"query service disabled: {exc} (build concerto_ros_interfaces)")
            return
        self.pub_relevance = self.node.create_publisher(PointCloud2, "~/query/relevance", out_qos)
        self.pub_markers = self.node.create_publisher(MarkerArray, "~/query/markers", out_qos)

        def refused(request, response):
            response.success, response.message = False, "internal error while answering (see the node's log)"
            return response

        srv = self.node.create_service(QueryText, "~/query", self.guard("~/query", self._on_query, refused),
                                       callback_group=self.service_group)
        self._entities += [self.pub_relevance, self.pub_markers, srv]

    def _on_query(self, request, response):
        """Serve ``concerto_ros_interfaces/srv/QueryText`` on the latest window (see the .srv)."""
        from concerto_ros.ros.markers import query_markers, to_point

        q = self.cfg.query
        try:
            negatives, top_k, notes = bounded_query_args(list(request.negative_texts), int(request.top_k),
                                                         q.max_negatives, q.max_top_k)
            result, qr = self.pipeline.query(request.text, negatives, float(request.threshold), top_k)
        except (QueryError, ValueError) as exc:
            response.success = False
            response.message = str(exc)
            self.log.warning(f"query '{request.text[:60]}' refused: {exc}")
            return response
        fill_pointcloud2(response.relevance, PointField, result.stamp_ns, result.fixed_frame, result.coord,
                         extra={"relevance": qr.relevance.astype("float32")})
        response.best_points = [to_point(p) for p in result.coord[qr.topk]]
        response.best_scores = [float(v) for v in qr.topk_relevance]
        response.num_matches = qr.n_above
        if qr.centroid is not None:
            response.centroid = to_point(qr.centroid)
        sec, nsec = divmod(int(result.stamp_ns), 1_000_000_000)
        response.window_stamp.sec, response.window_stamp.nanosec = sec, nsec
        response.success = True
        response.message = (f"'{qr.text}': {qr.n_above} of {len(qr.relevance)} points with relevance >= "
                            f"{qr.threshold:.2f} (negatives: {', '.join(qr.negatives) or 'none'})"
                            + "".join(f"; {n}" for n in notes))
        if self._running.is_set():
            self.pub_relevance.publish(response.relevance)
            self.pub_markers.publish(query_markers(result.coord[qr.topk], qr.topk_relevance, qr.centroid, qr.text,
                                                   response.relevance.header, 3 * self.cfg.window.voxel_size))
        return response


def bounded_query_args(negatives: list[str], top_k: int, max_negatives: int,
                       max_top_k: int) -> tuple[list[str], int, list[str]]:
    """Apply the node's query bounds.

    Empty or blank negative texts are dropped; more than ``max_negatives`` are cut to the
    first ``max_negatives``; ``top_k`` above ``max_top_k`` is capped (``<= 0`` keeps the
    default). Returns ``(negatives, top_k, notes)`` with one note per bound applied.
    """
    notes = []
    kept = [n for n in negatives if n.strip()]
    if len(kept) < len(negatives):
        notes.append(f"{len(negatives) - len(kept)} empty negative text(s) ignored")
    if len(kept) > max_negatives:
        notes.append(f"only the first {max_negatives} of {len(kept)} negative texts used (query.max_negatives)")
        kept = kept[:max_negatives]
    if top_k > max_top_k:
        notes.append(f"top_k {top_k} capped to query.max_top_k = {max_top_k}")
        top_k = max_top_k
    return kept, top_k, notes
