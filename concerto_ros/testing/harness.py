"""A sender/receiver node for talking to a running perception node over DDS.

Publishes on any topic (reliable, ``/tf_static`` latched), receives the node's
``~/semantic_points`` (with the time each arrived) and ``/diagnostics``, and spins on its own
thread. Used by the live tests and the soak benchmark; call :meth:`close` when done.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from tf2_msgs.msg import TFMessage

from concerto_ros.ros.delivery import DELIVERY_STATUS

__all__ = ["Harness"]

_TYPES = {"/tf": TFMessage, "/tf_static": TFMessage}


class Harness:
    """Publishers and output subscriptions around a node named ``node_name``.

    Args:
        node_name: fully qualified name of the perception node.
        image_topics: topics published with ``Image`` (others by their first message's type).
        depth: history depth of the publishers.
        keep_clouds: keep every received cloud message (else only its header, for long runs).

    Attributes:
        clouds: ``(receive_time_monotonic, PointCloud2)`` of ``~/semantic_points`` in order.
        diag: the latest ``/diagnostics`` key/values of the node, plus ``_level``/``_message``.
    """

    def __init__(self, node_name: str = "/perception_node", depth: int = 50, name: str = "concerto_harness",
                 keep_clouds: bool = True):
        self.node = rclpy.create_node(name)
        #: seconds :meth:`wait_for_node` waits after the publishers matched (see there)
        self.settle_s = 1.0
        self._qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self._latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                   durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # /tf as tf2_ros.TransformBroadcaster publishes it (depth 100): a short history loses
        # poses whenever the subscriber lags by that many messages
        self._tf = QoSProfile(depth=max(depth, 100), reliability=ReliabilityPolicy.RELIABLE)
        self.pubs: dict[str, Any] = {}
        self.clouds: list[tuple[float, PointCloud2]] = []
        self._keep_clouds = bool(keep_clouds)
        self.diag: dict[str, str] = {}
        self._short = node_name.rsplit("/", 1)[-1]
        self._lock = threading.Lock()
        self.node.create_subscription(PointCloud2, f"{node_name}/semantic_points", self._on_cloud,
                                      QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = rclpy.executors.SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down while spinning
                break

    def _on_cloud(self, msg) -> None:
        if not self._keep_clouds:  # long runs: the header only (hundreds of clouds add up to GBs)
            msg = SimpleNamespace(header=msg.header)
        with self._lock:
            self.clouds.append((time.monotonic(), msg))

    def _on_diag(self, msg) -> None:
        def level(st) -> int:
            return int.from_bytes(bytes(st.level), "little") if isinstance(st.level, (bytes, bytearray)) else int(
                st.level)

        mine = {st.name.endswith(": " + DELIVERY_STATUS): st for st in msg.status if st.name.startswith(self._short)}
        pipeline, delivery = mine.get(False), mine.get(True)
        if pipeline is None:
            return
        d = {kv.key: kv.value for kv in pipeline.values}
        d["_level"], d["_message"] = level(pipeline), pipeline.message
        if delivery is not None:
            d["_delivery_level"], d["_delivery_message"] = level(delivery), delivery.message
        self.diag = d

    def publisher(self, topic: str, msg_type) -> Any:
        if topic not in self.pubs:
            qos = self._latched if topic == "/tf_static" else self._tf if topic == "/tf" else self._qos
            self.pubs[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self.pubs[topic]

    def publish(self, messages: list[tuple[str, Any]]) -> None:
        """Publish ``(topic, message)`` pairs in order."""
        for topic, msg in messages:
            self.publisher(topic, _TYPES.get(topic, type(msg))).publish(msg)

    def connected(self, topics: list[str], msg_types: list) -> bool:
        """True when every topic's publisher has a subscriber (the node is listening)."""
        return all(self.publisher(t, m).get_subscription_count() > 0 for t, m in zip(topics, msg_types))

    def wait_for_node(self, topics: list[str], msg_types: list | None = None, timeout: float = 120.0,
                      alive: Callable[[], bool] | None = None, tf: bool = True) -> bool:
        """Wait until the node subscribes to ``topics`` (default types: Image, Image, CameraInfo)
        and, with ``tf``, to /tf: the node reads /tf on a listener node of its own
        (``tf.listener_thread``), matched apart from its sensor subscriptions, and best effort, so
        a pose sent before that match is lost rather than delivered late."""
        msg_types = list(msg_types or [Image, Image, CameraInfo][: len(topics)])
        topics = list(topics)
        if tf:
            topics, msg_types = topics + ["/tf"], msg_types + [TFMessage]
        ok = self.wait(lambda: self.connected(topics, msg_types), timeout, alive)
        if ok and tf:
            # the publisher's side of a match comes first; a best-effort reader drops samples of
            # a writer it has not matched yet, so give the node's side time to follow
            time.sleep(self.settle_s)
        return ok

    def cloud_stamps(self) -> list[int]:
        """Header stamps (ns) of the clouds received so far."""
        with self._lock:
            return [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for _, m in self.clouds]

    def wait_cloud(self, stamp_ns: int, timeout: float = 30.0, alive: Callable[[], bool] | None = None) -> bool:
        """Wait for a cloud stamped ``stamp_ns``."""
        return self.wait(lambda: stamp_ns in self.cloud_stamps(), timeout, alive)

    def count(self, key: str) -> int:
        """An integer diagnostics value (0 when absent)."""
        return int(self.diag.get(key, 0))

    @staticmethod
    def wait(pred: Callable[[], bool], timeout: float, alive: Callable[[], bool] | None = None) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            if alive is not None and not alive():
                return False
            time.sleep(0.02)
        return pred()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.node.destroy_node()
