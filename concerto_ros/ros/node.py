"""``perception_node``: the ROS 2 shell around :class:`concerto_ros.pipeline.PerceptionPipeline`.

Subscribes (topic names and QoS are parameters; sensor-data QoS by default):

* ``topics.color`` ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8)
* ``topics.depth`` ``sensor_msgs/Image`` (16UC1 millimetres, 32FC1 metres), registered to colour
* ``topics.camera_info`` ``sensor_msgs/CameraInfo``
* ``topics.points`` ``sensor_msgs/PointCloud2`` (LiDAR; optional, off when empty)
* ``/tf``, ``/tf_static`` (through tf2_ros on a ROS 2 install)

Publishes (reliable by default):

* ``~/semantic_points`` ``sensor_msgs/PointCloud2`` ``x y z rgb label confidence`` of every
  voxel of the current window, in ``fixed_frame``;
* ``~/feature_points`` ``sensor_msgs/PointCloud2`` ``x y z rgb`` with features coloured by PCA;
* ``/diagnostics`` ``diagnostic_msgs/DiagnosticArray`` once a second: frames processed,
  frames dropped by the worker queue, skipped messages per topic and reason, stage timings.

Callbacks only pair messages (approximate time, ``sync.slop``) and enqueue the synced set
into a drop-oldest queue (``worker.queue_depth``); a worker thread decodes, looks up the pose,
runs the pipeline and publishes. Bad input is skipped with a throttled warning naming the
topic and the reason, and counted; the node keeps running.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from concerto_ros.config import SPECS, coerce
from concerto_ros.msgs.pointcloud2 import fill_pointcloud2
from concerto_ros.msgs.transforms import stamp_to_ns
from concerto_ros.pipeline import FrameSkipped, PerceptionPipeline, QueryError, RGBDFrameAssembler, SkipCounter
from concerto_ros.ros.params import RUNTIME_PARAMETERS, declare_config
from concerto_ros.ros.tf_source import TfSource
from concerto_ros.sensors.tf_buffer import TransformUnavailable


class DropOldestQueue:
    """A bounded hand-off queue that discards the oldest item when full (thread-safe).

    Attributes:
        dropped: number of items discarded because the worker was busy.
    """

    def __init__(self, maxlen: int):
        self._items: deque = deque()
        self._maxlen = int(maxlen)
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float):
        """Next item, or ``None`` after ``timeout`` seconds."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None


class PerceptionNode(Node):
    """The perception node (see module docstring). Construct after ``rclpy.init()``.

    Raises:
        ValueError, RuntimeError, FileNotFoundError: invalid parameters or a model that
            cannot be loaded; the node does not start.
    """

    def __init__(self, **kwargs):
        super().__init__("perception_node", **kwargs)
        log = self.get_logger()
        self.cfg = declare_config(self)
        self.skips = SkipCounter(log.warning, self.cfg.skip_log_period)
        self.pipeline = PerceptionPipeline(self.cfg, log=log.info)
        self.assembler = RGBDFrameAssembler(self.cfg, note=log.info, skips=self.skips)
        self.tf = TfSource(self, cache_time_s=self.cfg.tf.cache_time)
        self.queue = DropOldestQueue(self.cfg.worker.queue_depth)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        if self.cfg.qos.input == "sensor_data":
            in_qos = QoSProfile(depth=self.cfg.qos.input_depth, reliability=ReliabilityPolicy.BEST_EFFORT,
                                durability=qos_profile_sensor_data.durability)
        else:
            in_qos = QoSProfile(depth=self.cfg.qos.input_depth, reliability=ReliabilityPolicy.RELIABLE)
        out_qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE if self.cfg.qos.output == "reliable"
                             else ReliabilityPolicy.BEST_EFFORT)
        t = self.cfg.topics
        self.create_subscription(Image, t.color, lambda m: self._on_msg("color", m), in_qos)
        self.create_subscription(Image, t.depth, lambda m: self._on_msg("depth", m), in_qos)
        self.create_subscription(CameraInfo, t.camera_info, lambda m: self._on_msg("camera_info", m), in_qos)
        if t.points:
            self.create_subscription(PointCloud2, t.points, lambda m: self.queue.put(("points", m)), in_qos)
        self.pub_semantic = self.create_publisher(PointCloud2, "~/semantic_points", out_qos)
        self.pub_features = self.create_publisher(PointCloud2, "~/feature_points", out_qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._init_query_service(out_qos)
        self.create_timer(1.0, self._publish_diagnostics)

        self._running = True
        self._worker = threading.Thread(target=self._work, name="concerto_worker", daemon=True)
        self._worker.start()
        log.info(
            f"listening on {t.color}, {t.depth}, {t.camera_info} ({self.cfg.qos.input} QoS), "
            f"TF via {self.tf.backend}; window {self.cfg.window.num_frames} frames at "
            f"{self.cfg.window.voxel_size} m voxels in '{self.cfg.fixed_frame}'; publishing "
            f"{self.resolve_topic_name('~/semantic_points')} ({self.cfg.qos.output} QoS)")

    # -- callbacks (cheap: pairing only) ---------------------------------------------------
    def _on_msg(self, stream: str, msg) -> None:
        t0 = time.perf_counter()
        try:
            sets = self.assembler.add(stream, msg)
        except Exception as exc:  # a malformed header must not kill the executor
            self.skips.record(FrameSkipped(self.assembler.topics[stream], "bad_header", str(exc)))
            return
        self.pipeline.timer.add("sync", (time.perf_counter() - t0) * 1e3)
        for s in sets:
            self.queue.put(s)

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
            if p.name == "publish.features":
                self.cfg.publish.features = value
            elif p.name == "tf.timeout":
                self.cfg.tf.timeout = value
            elif p.name == "skip_log_period":
                self.skips.period_s = value
            elif p.name == "language.vocabulary":
                try:
                    self.pipeline.set_vocabulary(value)
                except QueryError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
                self.get_logger().info(f"open vocabulary set to {value or '[] (linear head labels)'}; "
                                       "applied from the next frame")
            elif p.name.startswith("query."):
                setattr(self.cfg.query, p.name.split(".", 1)[1], value)
        return SetParametersResult(successful=True)

    # -- worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while self._running:
            synced = self.queue.get(timeout=0.1)
            if synced is None:
                continue
            try:
                self._process(synced)
            except FrameSkipped as skip:
                self.skips.record(skip)
            except Exception:  # never let one frame kill the worker
                self.skips.record(FrameSkipped("pipeline", "internal_error", traceback.format_exc(limit=3)))

    def _pose(self, frame_id: str, stamp_ns: int):
        try:
            return self.tf.lookup(self.cfg.fixed_frame, frame_id, stamp_ns, self.cfg.tf.timeout)
        except TransformUnavailable as exc:
            raise FrameSkipped("/tf", "no_transform",
                               f"{self.cfg.fixed_frame} <- '{frame_id}' at {stamp_ns * 1e-9:.3f} s: {exc}") from None

    def _process(self, item) -> None:
        p = self.pipeline
        if isinstance(item, tuple):  # ("points", PointCloud2)
            msg = item[1]
            stamp = stamp_to_ns(msg.header.stamp)
            result = p.process_points(p.lift_cloud(msg, self._pose(msg.header.frame_id, stamp), self.cfg.topics.points))
        else:
            with p.timer.stage("convert"):
                frame = self.assembler.to_frame(item)
            result = p.process(frame, self._pose(frame.frame_id, frame.stamp_ns))
        with p.timer.stage("to_msg"):
            msg = PointCloud2()
            fill_pointcloud2(msg, PointField, result.stamp_ns, result.fixed_frame, result.coord,
                             rgb=result.color, label=result.labels.astype("uint32"),
                             confidence=result.confidence)
            fmsg = None
            if result.feature_colors is not None:
                fmsg = PointCloud2()
                fill_pointcloud2(fmsg, PointField, result.stamp_ns, result.fixed_frame, result.coord,
                                 rgb=result.feature_colors)
        self.pub_semantic.publish(msg)
        if fmsg is not None:
            self.pub_features.publish(fmsg)

    def _publish_diagnostics(self) -> None:
        st = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{self.get_name()}: pipeline",
                              hardware_id=str(self.pipeline.device))
        values = {"frames_processed": self.pipeline.frames_processed,
                  "frames_dropped_queue": self.queue.dropped,
                  "messages_skipped": self.skips.total}
        values.update({f"skipped:{k}": v for k, v in self.skips.as_dict().items()})
        values.update({f"sync:{k}": v for k, v in self.assembler.sync.stats.items()})
        for stage, s in self.pipeline.timer.summary().items():
            values[f"ms:{stage}"] = round(s["mean_ms"], 3)
        if self.skips.total:
            st.level = DiagnosticStatus.WARN
            st.message = f"{self.skips.total} messages skipped"
        else:
            st.message = "ok"
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    # -- open-vocabulary queries ---------------------------------------------------------------
    def _init_query_service(self, out_qos) -> None:
        try:
            from concerto_ros_interfaces.srv import QueryText
            from visualization_msgs.msg import MarkerArray
        except ImportError as exc:  # interfaces not built: the node still perceives
            self.get_logger().warning(f"query service disabled: {exc} (build concerto_ros_interfaces)")
            return
        self.pub_relevance = self.create_publisher(PointCloud2, "~/query/relevance", out_qos)
        self.pub_markers = self.create_publisher(MarkerArray, "~/query/markers", out_qos)
        self.create_service(QueryText, "~/query", self._on_query)

    def _on_query(self, request, response):
        """Serve ``concerto_ros_interfaces/srv/QueryText`` on the latest window (see the .srv)."""
        from geometry_msgs.msg import Point

        try:
            result, qr = self.pipeline.query(request.text, list(request.negative_texts),
                                             float(request.threshold), int(request.top_k))
        except (QueryError, ValueError) as exc:
            response.success = False
            response.message = str(exc)
            self.get_logger().warning(f"query '{request.text[:60]}' refused: {exc}")
            return response
        fill_pointcloud2(response.relevance, PointField, result.stamp_ns, result.fixed_frame, result.coord,
                         extra={"relevance": qr.relevance.astype("float32")})
        response.best_points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in result.coord[qr.topk]]
        response.best_scores = [float(v) for v in qr.topk_relevance]
        response.num_matches = qr.n_above
        if qr.centroid is not None:
            response.centroid = Point(x=float(qr.centroid[0]), y=float(qr.centroid[1]), z=float(qr.centroid[2]))
        sec, nsec = divmod(int(result.stamp_ns), 1_000_000_000)
        response.window_stamp.sec, response.window_stamp.nanosec = sec, nsec
        response.success = True
        response.message = (f"'{qr.text}': {qr.n_above} of {len(qr.relevance)} points with relevance >= "
                            f"{qr.threshold:.2f} (negatives: {', '.join(qr.negatives) or 'none'})")
        self.pub_relevance.publish(response.relevance)
        self.pub_markers.publish(self._markers(result, qr, response.relevance.header))
        return response

    def _markers(self, result, qr, header):
        """RViz markers: the top-k points (coloured by relevance) and a sphere at the centroid."""
        from geometry_msgs.msg import Point
        from std_msgs.msg import ColorRGBA
        from visualization_msgs.msg import Marker, MarkerArray

        pts = Marker(header=header, ns="query", id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
        pts.scale.x = pts.scale.y = pts.scale.z = 3 * self.cfg.window.voxel_size
        pts.pose.orientation.w = 1.0
        pts.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in result.coord[qr.topk]]
        pts.colors = [ColorRGBA(r=1.0, g=float(1.0 - r), b=0.0, a=1.0) for r in qr.topk_relevance]
        centroid = Marker(header=header, ns="query", id=1, type=Marker.SPHERE, action=Marker.ADD)
        centroid.pose.orientation.w = 1.0
        centroid.scale.x = centroid.scale.y = centroid.scale.z = 0.15
        centroid.color = ColorRGBA(r=0.1, g=0.6, b=1.0, a=0.8)
        if qr.centroid is not None:
            centroid.pose.position = Point(x=float(qr.centroid[0]), y=float(qr.centroid[1]), z=float(qr.centroid[2]))
        else:
            centroid.action = Marker.DELETE
        label = Marker(header=header, ns="query", id=2, type=Marker.TEXT_VIEW_FACING, action=centroid.action)
        label.pose.orientation.w = 1.0
        label.pose.position = Point(x=centroid.pose.position.x, y=centroid.pose.position.y,
                                    z=centroid.pose.position.z + 0.3)
        label.scale.z = 0.15
        label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        label.text = qr.text
        return MarkerArray(markers=[pts, centroid, label])

    def destroy_node(self):
        self._running = False
        if self._worker.is_alive():
            self._worker.join(timeout=2.0)
        return super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: ``perception_node --ros-args --params-file config/perception.yaml``."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = PerceptionNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # start-up errors: say what is wrong and exit non-zero
        rclpy.logging.get_logger("perception_node").fatal(f"cannot start: {exc}")
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
