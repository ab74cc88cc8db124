"""`concerto demo`: generated sequence -> bag -> live node over DDS -> result files."""

import json

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (run scripts/setup.sh)")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built (run scripts/setup.sh)")

from concerto_ros.cli import main  # noqa: E402
from concerto_ros.demo.run import ground_truth_lookup  # noqa: E402
from concerto_ros.demo.scene import CLASS_NAMES, write_sequence  # noqa: E402


def test_demo_runs_the_live_node_and_writes_its_results(tmp_path, ros_domain, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "-o", str(out), "--frames", "3", "--width", "160", "--height", "120", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    res = out / "result"
    for name in ("window.ply", "window.png", "summary.json", "perception_node.log"):
        assert (res / name).is_file() and str(res / name) in printed, name
    s = json.loads((res / "summary.json").read_text())
    assert s["mode"] == "live" and s["frames_sent"] == 3 and s["clouds_received"] == 3 and s["timeouts"] == 0
    assert s["node_diagnostics"]["frames_processed"] == "3"
    assert 0.0 <= s["ground_truth"]["miou"] <= 1.0 and set(s["ground_truth"]["iou"]) == set(CLASS_NAMES)
    log = (res / "perception_node.log").read_text()
    assert "model bundle" in log and "default_bundle.pt" in log  # the demo runs the embedded bundle


def test_ground_truth_lookup_returns_the_rendered_labels(tmp_path):
    import cv2

    from concerto_ros.demo.scene import default_intrinsics, generate_sequence

    seq = write_sequence(tmp_path / "seq", seed=3, num_frames=2, width=80, height=60, noise=False)
    lookup = ground_truth_lookup(seq, voxel_size=0.02, last=2)
    # back-project the last frame's labelled pixels by hand and look them up
    fr = list(generate_sequence(seed=3, num_frames=2, width=80, height=60, noise=False))[-1]
    K = default_intrinsics(80, 60)
    depth = cv2.imread(str(seq / "depth" / "000001.png"), cv2.IMREAD_UNCHANGED) / 1000.0
    v, u = np.nonzero(depth > 0.1)
    z = depth[v, u]
    cam = np.stack([(u - K.cx) * z / K.fx, (v - K.cy) * z / K.fy, z, np.ones_like(z)], axis=1)
    world = (fr.T_world_camera @ cam.T).T[:, :3]
    got = lookup(world)
    assert got.dtype == np.int32 and np.mean(got == fr.labels[v, u]) > 0.95
    assert lookup(np.array([[100.0, 100.0, 100.0]]))[0] == 0  # never observed: unlabeled
