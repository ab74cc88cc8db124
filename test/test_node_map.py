"""The node's persistent semantic map over real DDS (the embedded default bundle).

A generated room is played into the node with a window of two frames. Then:

* ``~/query`` over the map (the default scope) finds floor voxels of frames that have left
  the window, and answers with regions;
* a subscriber of ``~/map/language_features`` that embeds the query with ``~/encode_text``
  computes the same relevance as ``~/query``, for the same voxels, and the incremental
  messages add up to the full snapshot of ``~/get_map_features``;
* ``~/save_map`` writes a map that ``concerto query --map`` answers from without ROS, and
  ``~/clear_map`` empties it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run scripts/setup.sh)")
pytest.importorskip("concerto_ros_interfaces.srv", reason="interfaces not built (scripts/setup.sh)")

from concerto_ros.bag.convert_rgbd import convert_rgbd_folder  # noqa: E402
from concerto_ros.bag.live import NodeProcess, cloud_arrays, replay_live  # noqa: E402
from concerto_ros.config import default_config_path, load_config  # noqa: E402
from concerto_ros.demo.run import ground_truth_lookup, voxel_keys  # noqa: E402
from concerto_ros.demo.scene import CLASS_NAMES, write_sequence  # noqa: E402
from concerto_ros.language.query import relevance  # noqa: E402
from concerto_ros.msgs.language_features import language_features_from_msg  # noqa: E402
from concerto_ros.msgs.pointcloud2 import pointcloud2_to_array  # noqa: E402

OVERRIDES = {"qos.input": "reliable", "window.num_frames": 2, "map.features_rate": 5.0, "map.publish_rate": 2.0,
             "keyframe.min_translation": 0.0, "keyframe.min_rotation": 0.0, "keyframe.max_interval": 0.0}


def _call(node, srv_type, name, request, timeout=60.0):
    cli = node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=timeout), name
    fut = cli.call_async(request)
    end = time.monotonic() + timeout
    while not fut.done() and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    assert fut.done(), f"{name} did not answer"
    return fut.result()


def test_map_outlives_the_window_and_its_language_features_answer_like_query(tmp_path, ros_domain):
    from concerto_ros_interfaces.msg import LanguageFeatureCloud
    from concerto_ros_interfaces.srv import EncodeText, GetMapFeatures, MapFile, QueryText
    from sensor_msgs.msg import PointCloud2
    from std_srvs.srv import Trigger

    seq = write_sequence(tmp_path / "seq", seed=4, num_frames=8, width=160, height=120)
    bag = tmp_path / "bag"
    convert_rgbd_folder(seq, bag, storage="mcap", progress=False)
    cfg = load_config(default_config_path(), OVERRIDES)
    node = NodeProcess(default_config_path(), OVERRIDES, log_path=tmp_path / "node.log")
    rclpy.init()
    sub = rclpy.create_node("map_listener")
    features, map_clouds = [], []
    sub.create_subscription(LanguageFeatureCloud, "/perception_node/map/language_features", features.append, 50)
    sub.create_subscription(PointCloud2, "/perception_node/map/semantic_points", map_clouds.append, 5)
    try:
        report = replay_live(bag, cfg, node_process=node, progress=False, frame_timeout=60)
        assert len(report.clouds) == 8, node.tail()
        end = time.monotonic() + 5.0  # the last incremental features and map cloud
        while time.monotonic() < end:
            rclpy.spin_once(sub, timeout_sec=0.05)
        window = cloud_arrays(report.clouds[-1])
        vs = cfg.window.voxel_size

        # (1) the map answers about voxels that left the two-frame window
        q = _call(sub, QueryText, "/perception_node/query", QueryText.Request(text="floor", top_k=50))
        assert q.success and "over the map" in q.message, q.message
        rel = pointcloud2_to_array(q.relevance)
        coord = np.stack([rel["x"], rel["y"], rel["z"]], axis=1)
        gt = ground_truth_lookup(seq, vs, 8)(coord)
        floor = gt == CLASS_NAMES.index("floor")
        assert rel["relevance"][floor].mean() > rel["relevance"][~floor & (gt > 0)].mean() + 0.1
        outside = ~np.isin(voxel_keys(coord, vs), voxel_keys(window["coord"], vs))
        assert outside.sum() > 1000  # voxels of the first six frames only
        assert (rel["relevance"][outside & floor] >= 0.5).mean() > 0.5  # and they are found
        assert q.regions and q.regions[0].num_voxels > 10 and q.num_matches >= q.regions[0].num_voxels
        # the map cloud carries the observation counts
        m = pointcloud2_to_array(map_clouds[-1])
        assert {"x", "y", "z", "rgb", "label", "confidence", "observations"} <= set(m.dtype.names)
        assert len(m) == len(rel) and m["observations"].max() >= 2

        # (2) a subscriber scores the same query from the language features
        acc = {}
        for msg in features:
            f = language_features_from_msg(msg)
            assert not f.full and f.temperature > 0 and f.text_encoder == "sentence-transformers"
            for k, e in zip(voxel_keys(f.points, vs), f.embeddings):
                acc[k] = e
        full = _call(sub, GetMapFeatures, "/perception_node/get_map_features", GetMapFeatures.Request())
        snap = language_features_from_msg(full.features)
        assert full.success and snap.full and len(snap.points) == len(rel)
        assert set(acc) == set(voxel_keys(snap.points, vs))  # the increments add up to the snapshot
        enc = lambda text: np.asarray(_call(sub, EncodeText, "/perception_node/encode_text",  # noqa: E731
                                            EncodeText.Request(text=text)).embedding, dtype=np.float32)
        negatives = np.stack([enc(t) for t in cfg.query.negatives])
        mine = relevance(np.stack([acc[k] for k in voxel_keys(coord, vs)]), enc("floor"), negatives, snap.temperature)
        np.testing.assert_allclose(mine, rel["relevance"], atol=0.02)  # float16 embeddings on the wire

        # (3) save, answer offline, clear
        path = tmp_path / "map.npz"
        saved = _call(sub, MapFile, "/perception_node/save_map", MapFile.Request(path=str(path)))
        assert saved.success and saved.num_voxels == len(rel) and path.is_file()
        from concerto_ros.cli.query import query_map

        _m, rows, qr, regions = query_map(path, "floor", negatives=list(cfg.query.negatives))
        np.testing.assert_allclose(np.sort(qr.relevance), np.sort(rel["relevance"]), atol=1e-4)
        cleared = _call(sub, Trigger, "/perception_node/clear_map", Trigger.Request())
        assert cleared.success and str(len(rel)) in cleared.message
        empty = _call(sub, QueryText, "/perception_node/query", QueryText.Request(text="floor"))
        assert not empty.success and "no language features" in empty.message
        assert node.alive()
    finally:
        sub.destroy_node()
        rclpy.shutdown()
        node.stop()
