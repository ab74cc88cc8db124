"""QoS of the node's inputs and outputs, and the events that reveal a QoS problem.

Measured on the 2-core development machine (``benchmarks/qos_loss.py``): with best-effort
input QoS, 640x480 and larger images lose DDS fragments (so whole images) while the CPU is
busy, and a best-effort subscriber can receive nothing at all; reliable QoS delivers every
image. So the node subscribes **reliable** by default. A reliable subscription does not
connect to a best-effort publisher (some camera drivers publish sensor-data QoS): that case is
detected (the ``incompatible_qos`` event) and reported at ERROR with the fix, and DDS-reported
lost samples are counted, so a QoS problem never looks like a silent node.
"""

from __future__ import annotations

from typing import Callable

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from concerto_ros.sensors.skips import FrameSkipped, SkipCounter

__all__ = ["input_qos", "output_qos", "qos_hint", "input_events"]


def input_qos(qos_cfg) -> QoSProfile:
    """Subscription QoS of the sensor inputs from ``qos.input`` / ``qos.input_depth``."""
    reliability = ReliabilityPolicy.RELIABLE if qos_cfg.input == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=qos_cfg.input_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos(qos_cfg) -> QoSProfile:
    """Publisher QoS of the clouds from ``qos.output`` (reliable: RViz's default)."""
    reliability = ReliabilityPolicy.RELIABLE if qos_cfg.output == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=2, reliability=reliability)


def qos_hint(qos_cfg) -> str:
    """One line for the start-up log: what the input QoS implies and what to do on loss."""
    if qos_cfg.input == "reliable":
        return ("reliable: every image arrives; a best-effort (sensor-data) publisher cannot connect and is "
                "reported at ERROR, then set qos.input: sensor_data")
    return ("best effort: matches every publisher, but a publisher on Fast DDS's default 512 KiB shared-memory "
            "segment loses large images when this machine is busy; give it config/fastdds_large_data.xml "
            "(FASTDDS_DEFAULT_PROFILES_FILE), and if frames still go missing (lost messages in /diagnostics), set "
            "qos.input: reliable")


def input_events(topic: str, qos_cfg, skips: SkipCounter, error: Callable[[str], object],
                 guard: Callable) -> SubscriptionEventCallbacks:
    """Event callbacks of a sensor subscription: incompatible QoS (nothing will arrive: logged
    at ERROR with the fix, counted as ``qos_incompatible``) and DDS-reported lost messages
    (counted as ``lost``)."""
    def incompatible(info) -> None:
        other = "sensor_data" if qos_cfg.input == "reliable" else "reliable"
        error(f"'{topic}': a publisher's QoS is incompatible with this node's input QoS ({qos_cfg.input}; last "
              f"policy kind {info.last_policy_kind}): NOTHING is received from it. Set qos.input: {other}, or "
              f"check `ros2 topic info -v {topic}`")
        skips.record(FrameSkipped(topic, "qos_incompatible", f"{info.total_count} incompatible publisher(s)"))

    def lost(info) -> None:
        skips.record(FrameSkipped(topic, "lost", f"DDS reports {info.total_count_change} message(s) lost "
                                                 f"({info.total_count} in all): {qos_hint(qos_cfg)}"))

    return SubscriptionEventCallbacks(incompatible_qos=guard(topic, incompatible),
                                      message_lost=guard(topic, lost))
