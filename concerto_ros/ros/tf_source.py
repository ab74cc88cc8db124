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
"""

from __future__ import annotations

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

    Attributes:
        backend: ``"tf2_ros"`` or ``"concerto"`` (the project's buffer fed from /tf).
    """

    def __init__(self, node: Node, cache_time_s: float = 30.0, prefer_tf2_ros: bool = True,
                 skips: SkipCounter | None = None, callback_group=None,
                 guard: Callable[[str, Callable], Callable] | None = None,
                 note: Callable[[str], Any] | None = None, delivery=None):
        self._node = node
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
        dyn = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        static = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        wrap = guard or (lambda topic, fn: fn)
        for topic, qos, is_static in (("/tf", dyn, False), ("/tf_static", static, True)):
            cb = wrap(topic, lambda m, t=topic, s=is_static: self._on_tf(m, t, s))
            if delivery is not None:
                cb = delivery.wrap(topic, cb)
            self._subs.append(node.create_subscription(TFMessage, topic, cb, qos, callback_group=callback_group))

    def _on_tf(self, msg, topic: str, static: bool) -> None:
        for problem in self.buffer.add_message(msg, static=static):
            self.skips.record(FrameSkipped(topic, "bad_transform", f"ignored {problem}"))

    def destroy(self) -> None:
        """Remove the /tf subscriptions (the tf2_ros listener stays with its node)."""
        for sub in self._subs:
            try:
                self._node.destroy_subscription(sub)
            except Exception:  # noqa: BLE001 - the node may be gone already
                pass
        self._subs = []

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
