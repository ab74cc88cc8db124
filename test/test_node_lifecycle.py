"""``perception_lifecycle_node``: managed transitions over the standard lifecycle services.

configure loads the models (the node publishes nothing yet), activate subscribes and
publishes, deactivate stops both, cleanup releases the models, and the node can be
configured and activated again; a configure that cannot load its model fails the
transition instead of the process.
"""

from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run scripts/setup.sh)")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built (run scripts/setup.sh)")
lifecycle_msgs = pytest.importorskip("lifecycle_msgs.srv")

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402

from concerto_ros.bag.live import NodeProcess  # noqa: E402
from concerto_ros.config import default_config_path  # noqa: E402
from concerto_ros.testing import fuzz  # noqa: E402
from concerto_ros.testing.harness import Harness  # noqa: E402

S = 1_000_000_000
TOPICS = fuzz.Topics()


def _call(h: Harness, client, request, timeout: float = 60.0):
    fut = client.call_async(request)
    assert h.wait(lambda: fut.done(), timeout), "lifecycle service did not answer"
    return fut.result()


def test_transitions_configure_activate_deactivate_cleanup(tmp_path, ros_domain):
    node = NodeProcess(default_config_path(), {"qos.input": "reliable", "publish.features": False, "model.bundle": ""},
                       log_path=tmp_path / "node.log", lifecycle=True)
    rclpy.init()
    h = Harness()
    try:
        change = h.node.create_client(ChangeState, "/perception_node/change_state")
        get = h.node.create_client(GetState, "/perception_node/get_state")
        assert change.wait_for_service(timeout_sec=120) and get.wait_for_service(timeout_sec=30), node.tail()
        state = lambda: _call(h, get, GetState.Request()).current_state.id  # noqa: E731

        def transition(tid):
            return _call(h, change, ChangeState.Request(transition=Transition(id=tid))).success

        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert not h.connected([TOPICS.depth], [fuzz.Image])            # nothing subscribed before activate
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
        assert "SEEDED RANDOM 'tiny' encoder" in node.tail(50)           # configure loaded the models
        assert "[WARN]" in node.tail(50) and "running SEEDED RANDOM" in node.tail(50)
        assert not h.connected([TOPICS.depth], [fuzz.Image])
        h.publish([("/tf_static", fuzz.static_tf())])

        assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
        assert h.wait_for_node([TOPICS.color, TOPICS.depth, TOPICS.camera_info], timeout=30)
        h.publish(fuzz.good_frame(10 * S))
        assert h.wait_cloud(10 * S, 60, node.alive), node.tail()

        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
        assert h.wait(lambda: not h.connected([TOPICS.depth], [fuzz.Image]), 10)
        h.publish(fuzz.good_frame(11 * S))
        time.sleep(1.0)
        assert 11 * S not in h.cloud_stamps()                             # inactive: nothing processed

        assert transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
        assert transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
        assert h.wait_for_node([TOPICS.color, TOPICS.depth, TOPICS.camera_info], timeout=30)
        h.publish(fuzz.good_frame(12 * S))
        assert h.wait_cloud(12 * S, 60, node.alive), node.tail()
        assert node.alive()
    finally:
        h.close()
        rclpy.shutdown()
        assert node.stop() == 0, node.tail()


def test_a_configure_that_cannot_load_fails_the_transition_not_the_process(tmp_path, ros_domain):
    node = NodeProcess(default_config_path(), {"model.checkpoint": str(tmp_path / "missing.pth")},
                       log_path=tmp_path / "node.log", lifecycle=True)
    rclpy.init()
    h = Harness()
    try:
        change = h.node.create_client(ChangeState, "/perception_node/change_state")
        get = h.node.create_client(GetState, "/perception_node/get_state")
        assert change.wait_for_service(timeout_sec=120), node.tail()
        res = _call(h, change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
        assert not res.success
        assert _call(h, get, GetState.Request()).current_state.id == State.PRIMARY_STATE_UNCONFIGURED
        assert node.alive() and "configure failed" in node.tail() and "missing.pth" in node.tail()
    finally:
        h.close()
        rclpy.shutdown()
        node.stop()
