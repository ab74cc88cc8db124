"""``perception_node``: the ROS 2 shell around :class:`concerto_ros.pipeline.PerceptionPipeline`.

Subscribes (topic names and QoS are parameters; reliable by default, see
:mod:`concerto_ros.ros.qos`):

* ``topics.color`` ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8)
* ``topics.depth`` ``sensor_msgs/Image`` (16UC1 millimetres, 32FC1 metres), registered to colour
* ``topics.camera_info`` ``sensor_msgs/CameraInfo``
* ``topics.points`` ``sensor_msgs/PointCloud2`` (LiDAR; optional, off when empty)
* ``/tf``, ``/tf_static`` (through tf2_ros on a ROS 2 install)

Publishes (reliable by default):

* ``~/semantic_points`` ``sensor_msgs/PointCloud2`` ``x y z rgb label confidence`` of every
  voxel of the current window, in ``fixed_frame``;
* ``~/feature_points`` ``sensor_msgs/PointCloud2`` ``x y z rgb`` with features coloured by PCA;
* ``/diagnostics`` ``diagnostic_msgs/DiagnosticArray``: the level of the last
  ``diagnostics.window`` seconds (OK, WARN on skips, ERROR on internal errors, naming the
  dominant reason), frames processed, frames dropped by the worker queue, skipped messages
  per topic and reason, stage timings; a second status, ``input delivery``, warns when an
  input topic arrives late (transport delay p99 above ``diagnostics.max_transport_ms``).

Serves ``~/query`` (``concerto_ros_interfaces/srv/QueryText``).

The behaviour lives in :class:`concerto_ros.ros.perception.PerceptionShell`; this module
builds it at once (``perception_node``), and :mod:`concerto_ros.ros.lifecycle` drives it
through managed transitions (``perception_lifecycle_node``). No callback can end the process:
bad input is skipped with a throttled warning naming the topic and the reason, and counted.
SIGINT and SIGTERM stop the worker before the ROS context goes away.
"""

from __future__ import annotations

import signal
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from concerto_ros.models.allocator import cap_heap_arenas
from concerto_ros.ros.dds import use_large_data_profile
from concerto_ros.ros.perception import DropOldestQueue, PerceptionShell  # noqa: F401  (re-exported)
from concerto_ros.runtime import GIL_SWITCH_INTERVAL_S

#: executor threads: sensor intake, services, timers, parameter/TF housekeeping
EXECUTOR_THREADS = 4


class PerceptionNode(Node):
    """The perception node (see module docstring). Construct after ``rclpy.init()``.

    Raises:
        ValueError, RuntimeError, FileNotFoundError: invalid parameters or a model that
            cannot be loaded; the node does not start.
    """

    def __init__(self, **kwargs):
        super().__init__("perception_node", **kwargs)
        self.shell = PerceptionShell(self)
        self.shell.configure()
        self.shell.activate()

    @property
    def pipeline(self):
        return self.shell.pipeline

    @property
    def cfg(self):
        return self.shell.cfg

    def destroy_node(self):
        self.shell.cleanup()
        return super().destroy_node()


def spin_until_signal(node: Node, stop: threading.Event, num_threads: int = EXECUTOR_THREADS) -> None:
    """Spin ``node`` on a multi-threaded executor until ``stop`` is set or the context ends,
    then take the node off the executor (so that no callback runs while it is destroyed).

    An exception escaping the executor (none should: every callback is guarded) is logged
    and spinning goes on.
    """
    executor = MultiThreadedExecutor(num_threads=num_threads)
    executor.add_node(node)
    log = node.get_logger()
    try:
        while not stop.is_set() and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except (KeyboardInterrupt, ExternalShutdownException):
                break
            except Exception as exc:  # noqa: BLE001 - keep serving
                log.error(f"executor: {type(exc).__name__}: {exc}")
    finally:
        executor.remove_node(node)
        executor.shutdown(timeout_sec=2.0)


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` (rclpy's own handlers are off, so that the worker
    stops before the ROS context goes away)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def run(node_factory, argv: list[str] | None = None, name: str = "perception_node") -> int:
    """Start a node with ``node_factory()``, spin until SIGINT/SIGTERM, shut down cleanly.

    Returns:
        0 after a clean shutdown, 1 when the node cannot start (``cannot start: <reason>``).
    """
    try:  # before the first participant: camera images need a larger shared-memory segment
        _, dds_note = use_large_data_profile()
    except FileNotFoundError as exc:
        print(f"[{name}] cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    # the executor's Python spin loop competes for the GIL with the integration and encoder
    # threads; a thread asking for the GIL waits up to one switch interval (5 ms by default)
    # per hand-over, which delayed /tf callbacks past tf.timeout on 2 cores
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    stop = threading.Event()
    install_stop_handlers(stop)
    node = None
    try:
        try:
            cap_heap_arenas()  # before the middleware and the runtime start their threads
            node = node_factory()
        except Exception as exc:  # start-up errors: say what is wrong and exit non-zero
            rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
            return 1
        node.get_logger().info(dds_note)
        spin_until_signal(node, stop)
        node.get_logger().info("shutting down: stopping the worker")
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point: ``perception_node --ros-args --params-file config/perception.yaml``."""
    return run(PerceptionNode, argv)


if __name__ == "__main__":
    sys.exit(main())
