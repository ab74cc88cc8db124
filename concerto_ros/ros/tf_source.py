"""Camera poses for the node: tf2_ros on a ROS 2 install, else the project's buffer.

On a full ROS 2 installation ``tf2_ros`` is used (``Buffer`` + ``TransformListener``; tf2
itself rejects bad transforms there). Where ROS 2 comes from PyPI wheels there is no
``tf2_ros``; the node then subscribes ``/tf`` and ``/tf_static`` itself
(``tf2_msgs/TFMessage``; the set-up builds that one type) and fills
:class:`concerto_ros.sensors.tf_buffer.TransformBuffer`, the same buffer the offline bag
tools use. Bad entries (zero quaternion, empty or equal frame names, a loop, non-finite
values) are ignored as tf2 does, counted as ``bad_transform`` and warned about (throttled,
naming the frames and the reason); a transform far in the future is held until confirmed
(the buffer's jump detection). Both backends answer :meth:`TfSource.lookup` identically.

With ``spin_thread`` (``tf.listener_thread``, the default) the project's subscriptions live on
a node of their own (``<node>_tf_listener``, no parameter services) spun by a single-threaded
executor on a thread of its own, as tf2_ros's ``TransformListener(spin_thread=True)`` does.
An rclpy executor takes one message per ready subscription per wait, and on a busy CPU the
perception node's executor waits only about as often as the sensors publish; the /tf
subscription (100 messages deep) then queued up to a second of poses while the integration
thread waited ``tf.timeout`` for them.

``reliable=False`` (``tf.qos: best_effort``, the node's default) subscribes /tf best effort. A
reliable reader delivers samples in order, so a sample lost on the way (a full shared-memory
port on a busy machine) holds every later one back until the publisher repairs it, at its
next heartbeat (Fast DDS: every 3 s by default); the poses then arrived 0.7-1.0 s late
(median; p99 2.8 s, the heartbeat period) however fast the executor was. A best-effort reader
matches reliable publishers too and loses only the lost sample, which lookups interpolate
across.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from concerto_ros.msgs.transforms import transform_to_matrix
from concerto_ros.sensors.skips import FrameSkipped, SkipCounter
from concerto_ros.sensors.tf_buffer import TransformBuffer, TransformUnavailable


class TfSource:
    """Looks up ``T_target_source`` (4x4, float64) at a stamp, waiting up to a timeout.

    Args:
        node: the node that owns the subscriptions.
        cache_time_s: transform history kept (seconds).
        prefer_tf2_ros: use tf2_ros when importable (default).
        skips: where rejected transforms are counted (``bad_transform``).
        callback_group: callback group of the /tf subscriptions.
        guard: wraps a callback so that no exception leaves it (see
            :meth:`concerto_ros.ros.perception.PerceptionShell.guard`).
        note: callable for one-line notes (accepted time jumps).
        delivery: a :class:`~concerto_ros.ros.delivery.DeliveryTimes` that records the transport
            and queueing delays of /tf and /tf_static messages (project backend only), or None.
        spin_thread: subscribe on a node of its own, spun on a thread of its own (module
            docstring); ``callback_group`` is then not used.
        reliable: reliable /tf subscription (as tf2_ros); False: best effort (module
            docstring). /tf_static is reliable and transient-local either way.

    Attributes:
        backend: ``"tf2_ros"`` or ``"concerto"`` (the project's buffer fed from /tf).
    """

    def __init__(self, node: Node, cache_time_s: float = 30.0, prefer_tf2_ros: bool = True,
                 skips: SkipCounter | None = None, callback_group=None,
                 guard: Callable[[str, Callable], Callable] | None = None,
                 note: Callable[[str], Any] | None = None, delivery=None, spin_thread: bool = False,
                 reliable: bool = True):
        self._node = node
        self._listener_node: Node | None = None  # the node of the listener thread (spin_thread)
        self._executor = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tf2 = None
        self._subs: list = []
        self.skips = skips if skips is not None else SkipCounter()
        if prefer_tf2_ros:
            try:
                import tf2_ros  # noqa: F401
                from rclpy.duration import Duration

                self._tf2 = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s))
                self._listener = tf2_ros.TransformListener(self._tf2, node, spin_thread=False)
            except ImportError:
                self._tf2 = None
        if self._tf2 is not None:
            self.backend = "tf2_ros"
            return
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError as exc:
            raise RuntimeError(
                "neither tf2_ros nor tf2_msgs is importable: source a ROS 2 installation, or "
                "run scripts/setup.sh, which builds tf2_msgs for PyPI-wheel ROS 2") from exc
        self.backend = "concerto"
        self.buffer = TransformBuffer(cache_time_s=cache_time_s, on_note=note)
        dyn = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        static = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        wrap = guard or (lambda topic, fn: fn)
        owner = node
        if spin_thread:
            owner = self._listener_node = Node(f"{node.get_name()}_tf_listener", namespace=node.get_namespace(),
                                          context=node.context, start_parameter_services=False)
            callback_group = None  # the listener node's default group; its executor is single-threaded
        for topic, qos, is_static in (("/tf", dyn, False), ("/tf_static", static, True)):
            cb = wrap(topic, lambda m, t=topic, s=is_static: self._on_tf(m, t, s))
            if delivery is not None:
                cb = delivery.wrap(topic, cb)
            self._subs.append(owner.create_subscription(TFMessage, topic, cb, qos, callback_group=callback_group))
        if spin_thread:
            from rclpy.executors import SingleThreadedExecutor

            self._executor = SingleThreadedExecutor(context=node.context)
            self._executor.add_node(self._listener_node)
            self._thread = threading.Thread(target=self._spin, name="tf_listener", daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        """The listener thread: spin the listener node until :meth:`destroy` or shutdown."""
        node = self._listener_node
        log = node.get_logger()
        while not self._stop.is_set() and node.context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.1)
            except Exception as exc:  # noqa: BLE001 - callbacks are guarded; keep listening
                if self._stop.is_set() or not node.context.ok():
                    break
                log.error(f"tf listener executor: {type(exc).__name__}: {exc}")

    def _on_tf(self, msg, topic: str, static: bool) -> None:
        for problem in self.buffer.add_message(msg, static=static):
            self.skips.record(FrameSkipped(topic, "bad_transform", f"ignored {problem}"))

    def destroy(self) -> None:
        """Remove the /tf subscriptions, and stop the listener thread and its node (the
        tf2_ros listener stays with its node). Idempotent."""
        self._stop.set()
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=1.0)
            self._executor = None
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        owner = self._listener_node or self._node
        for sub in self._subs:
            try:
                owner.destroy_subscription(sub)
            except Exception:  # noqa: BLE001 - the node may be gone already
                pass
        self._subs = []
        if self._listener_node is not None:
            try:
                self._listener_node.destroy_node()
            except Exception:  # noqa: BLE001 - the context may be gone already
                pass
            self._listener_node = None

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        """``(4, 4) float64`` transform mapping points in ``source`` to ``target`` at ``stamp_ns``.

        Waits up to ``timeout_s`` seconds for the transform to arrive.

        Raises:
            TransformUnavailable: no transform for that stamp within the timeout.
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        if self._tf2 is not None:
            from rclpy.duration import Duration
            from rclpy.time import Time

            try:
                ts = self._tf2.lookup_transform(target, source, Time(nanoseconds=int(stamp_ns)),
                                                timeout=Duration(seconds=max(timeout_s, 0.0)))
            except Exception as exc:  # tf2 raises LookupException, ExtrapolationException, ...
                raise TransformUnavailable(str(exc)) from None
            tr, q = ts.transform.translation, ts.transform.rotation
            return transform_to_matrix((tr.x, tr.y, tr.z), (q.x, q.y, q.z, q.w))
        while True:
            version = self.buffer.version
            try:
                return self.buffer.lookup(target, source, int(stamp_ns))
            except TransformUnavailable:
                remaining = deadline - time.monotonic()
                if remaining <= 0.0:
                    raise
                # sleep until the next /tf sample is stored (no polling loop holding the GIL)
                self.buffer.wait_for_change(version, remaining)
