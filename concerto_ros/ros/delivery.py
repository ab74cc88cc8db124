"""Where an input message's delay comes from: the middleware or the node's executor.

Every sensor and ``/tf`` subscription of the node is created with a two-argument callback, so
rclpy hands it the message's ``MessageInfo`` (``source_timestamp``: when the publisher wrote
it; ``received_timestamp``: when the middleware on this side received it; both in nanoseconds
of the system clock). Per topic, :class:`DeliveryTimes` keeps the recent

* ``transport`` delay, received - source: the middleware's share (serialization, the
  transport, reliable-QoS repairs, a publisher that blocks);
* ``queued`` delay, callback start - received: the message waited in the subscription's
  queue for an executor thread (the node's share).

``/diagnostics`` reports their p50 and p99 in milliseconds (``transport_ms_p99:/tf`` ...). The
two clocks are the same on one machine; across machines the transport delay includes their
offset (keep them synchronised, e.g. with chrony). A middleware that fills neither timestamp
(0) adds no sample.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from concerto_ros.timing import StageTimer

__all__ = ["DeliveryTimes", "DELIVERY_STATUS"]

#: name suffix of the node's second /diagnostics status (after "<node name>: "), which warns
#: when an input topic's transport delay p99 is above ``diagnostics.max_transport_ms``
DELIVERY_STATUS = "input delivery"


class DeliveryTimes:
    """Recent transport and queueing delays of input messages, per topic.

    Args:
        keep: recent samples kept per topic and kind (200: 20 s of a 10 Hz topic).
    """

    def __init__(self, keep: int = 200):
        self._timer = StageTimer(keep=keep)

    def record(self, topic: str, info: Any, now_ns: int | None = None) -> None:
        """Add the delays of one message.

        Args:
            topic: the subscription's topic.
            info: rclpy's ``MessageInfo`` mapping (``source_timestamp``, ``received_timestamp``,
                int nanoseconds of the system clock); anything else adds nothing.
            now_ns: the callback's start (system clock, ns); default: now.
        """
        try:
            src, rec = int(info["source_timestamp"]), int(info["received_timestamp"])
        except (KeyError, TypeError, ValueError):
            return
        if src <= 0 or rec <= 0:
            return
        now = time.time_ns() if now_ns is None else int(now_ns)
        self._timer.add(f"transport:{topic}", (rec - src) / 1e6)
        self._timer.add(f"queued:{topic}", (now - rec) / 1e6)

    def wrap(self, topic: str, callback: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        """A ``(msg, info)`` subscription callback that records the delays, then calls
        ``callback(msg)`` (rclpy passes ``MessageInfo`` to two-argument callbacks)."""
        def with_info(msg, info):
            self.record(topic, info)
            return callback(msg)
        return with_info

    def summary(self) -> dict[str, float]:
        """``{"transport_ms_p50:<topic>": ms, "transport_ms_p99:<topic>": ms, "queued_ms_p50:<topic>":
        ..., "queued_ms_p99:<topic>": ...}`` over the recent samples, rounded to 0.1 ms."""
        out = {}
        for stage, s in self._timer.summary().items():
            kind, topic = stage.split(":", 1)
            out[f"{kind}_ms_p50:{topic}"] = round(s["median_ms"], 1)
            out[f"{kind}_ms_p99:{topic}"] = round(s["p99_ms"], 1)
        return out
