"""``perception_lifecycle_node``: the perception node as a managed (lifecycle) node.

Same parameters, topics and services as ``perception_node``
(:mod:`concerto_ros.ros.node`), driven by the standard transitions
(``ros2 lifecycle set /perception_node configure`` etc.):

* ``configure``: declare parameters, load the models (the slow part), subscribe to TF;
  a failure (bad parameters, a model that cannot load) returns FAILURE with the reason in
  the log and the node stays unconfigured;
* ``activate``: subscribe to the sensors, advertise outputs and services, start the worker;
* ``deactivate``: stop the worker after its current frame, remove subscriptions,
  publishers, services and timers;
* ``cleanup``: release the models and TF;
* ``shutdown``: whatever is needed of the above.
"""

from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from concerto_ros.ros.node import run
from concerto_ros.ros.perception import PerceptionShell


class PerceptionLifecycleNode(LifecycleNode):
    """The perception node with managed transitions (see module docstring)."""

    def __init__(self, **kwargs):
        super().__init__("perception_node", **kwargs)
        self.shell = PerceptionShell(self)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.shell.configure()
        except Exception as exc:  # noqa: BLE001 - a failed transition, not a crash
            self.get_logger().error(f"configure failed: {exc}")
            self.shell.cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.shell.activate()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"activate failed: {exc}")
            self.shell.deactivate()
            return TransitionCallbackReturn.FAILURE
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shell.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shell.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shell.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shell.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self):
        self.shell.cleanup()
        return super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: ``perception_lifecycle_node --ros-args --params-file ...``."""
    return run(PerceptionLifecycleNode, argv)


if __name__ == "__main__":
    sys.exit(main())
