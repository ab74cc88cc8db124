"""Open-vocabulary queries: translator in the pipeline, runtime vocabulary, and the live
query service over DDS on a replayed bag."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed (scripts/setup.sh)")

from concerto_ros.bag.convert_rgbd import convert_rgbd_folder  # noqa: E402
from concerto_ros.bag.replay import replay_bag  # noqa: E402
from concerto_ros.config import default_config_path  # noqa: E402
from concerto_ros.demo.run import ground_truth_lookup  # noqa: E402
from concerto_ros.demo.scene import CLASS_NAMES, write_sequence  # noqa: E402
from concerto_ros.language.text_encoders import build_text_encoder  # noqa: E402
from concerto_ros.language.translator import fit_translator_labels  # noqa: E402
from concerto_ros.pipeline import PerceptionPipeline, QueryError  # noqa: E402
from conftest import seeded_config  # noqa: E402

NAMES = list(CLASS_NAMES[1:])  # "unlabeled" is not a class to embed


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A generated room as a bag, a translator fitted with labels on the seeded tiny encoder's
    features of its window, and the ground truth of that window."""
    root = tmp_path_factory.mktemp("query")
    seq = write_sequence(root / "seq", seed=1, num_frames=8, width=160, height=120)  # 5 Hz: 1.4 s
    bag = root / "bag"
    convert_rgbd_folder(seq, bag, storage="mcap", progress=False)
    cfg = seeded_config()
    result = replay_bag(bag, cfg, log=None, progress=False).result
    gt = ground_truth_lookup(seq, cfg.window.voxel_size, cfg.window.num_frames)(result.coord)
    te = build_text_encoder("sentence-transformers")
    tr, hist = fit_translator_labels(result.features, gt - 1, te.encode(NAMES), te, ignore_index=-1,
                                     epochs=30, progress=False, seed=0, feature="concat3 tiny")
    assert hist["loss"][-1] < hist["loss"][0]
    path = tr.save(root / "translator.pt")
    return {"bag": bag, "translator": path, "gt": gt, "coord": result.coord}


def test_pipeline_queries_and_open_vocabulary_labels(scene):
    cfg = seeded_config({"language.translator": str(scene["translator"])})
    pipe = PerceptionPipeline(cfg, log=None)
    with pytest.raises(QueryError, match="no frame processed yet"):
        pipe.query("floor")
    r = replay_bag(scene["bag"], cfg, pipeline=pipe, log=None, progress=False).result
    assert r.text_embeddings.shape == (len(r.coord), 384)
    np.testing.assert_allclose(np.linalg.norm(r.text_embeddings, axis=1), 1.0, atol=1e-5)
    gt = scene["gt"]
    for name in ("floor", "wall"):
        _, q = pipe.query(name)
        cls = CLASS_NAMES.index(name)
        assert q.relevance.shape == (len(r.coord),)
        assert q.relevance[gt == cls].mean() > q.relevance[(gt != cls) & (gt > 0)].mean() + 0.1, name
    with pytest.raises(ValueError, match="empty"):
        pipe.query("   ")
    # runtime vocabulary: applied to the next frame, labels index the new names
    pipe.set_vocabulary(["floor", "wall", "table"])
    r2 = replay_bag(scene["bag"], cfg, pipeline=pipe, max_frames=1, log=None, progress=False).result
    assert r2.class_names == ["floor", "wall", "table"] and set(np.unique(r2.labels)) <= {0, 1, 2}
    assert (r2.confidence >= 1 / 3 - 1e-6).all()
    gt2 = ground_truth_lookup(scene["bag"].parent / "seq", cfg.window.voxel_size, 8)(r2.coord)
    assert np.mean(r2.labels[gt2 == CLASS_NAMES.index("floor")] == 0) > 0.5  # floor voxels -> "floor"


def test_query_without_translator_is_a_clear_error():
    pipe = PerceptionPipeline(seeded_config(), log=None)
    with pytest.raises(QueryError, match="no translator loaded"):
        pipe.query("chair")
    with pytest.raises(QueryError, match="needs a translator"):
        pipe.set_vocabulary(["chair"])


def test_query_service_over_dds(scene, tmp_path, ros_domain):
    pytest.importorskip("concerto_ros_interfaces.srv", reason="interfaces not built (scripts/setup.sh)")
    from sensor_msgs.msg import PointField

    from concerto_ros.bag.live import NodeProcess, cloud_arrays, replay_live
    from concerto_ros.cli.query import call_query
    from concerto_ros.msgs.pointcloud2 import pointcloud2_to_array

    overrides = {"language.translator": str(scene["translator"]), "qos.input": "reliable",
                 "keyframe.min_translation": 0.0, "keyframe.min_rotation": 0.0, "keyframe.max_interval": 0.0}
    cfg = seeded_config(overrides)
    node = NodeProcess(default_config_path(), overrides, log_path=tmp_path / "node.log")
    try:
        report = replay_live(scene["bag"], cfg, node_process=node, progress=False, frame_timeout=60)
        assert len(report.clouds) == 8, node.tail()
        res = call_query("floor", top_k=15, timeout=30, scope="window")
        assert res.success, res.message
        fields = {f.name: f.datatype for f in res.relevance.fields}
        assert fields == {"x": PointField.FLOAT32, "y": PointField.FLOAT32, "z": PointField.FLOAT32,
                          "relevance": PointField.FLOAT32}
        arr = pointcloud2_to_array(res.relevance)
        assert len(arr) == report.clouds[-1].width  # relevance for every point of the window
        coord = np.stack([arr["x"], arr["y"], arr["z"]], axis=1)
        gt = ground_truth_lookup(scene["bag"].parent / "seq", cfg.window.voxel_size, cfg.window.num_frames)(coord)
        rel = arr["relevance"]
        assert rel[gt == 1].mean() > rel[(gt != 1) & (gt > 0)].mean() + 0.1
        assert len(res.best_points) == 15 and list(res.best_scores) == sorted(res.best_scores, reverse=True)
        assert res.num_matches == int((rel >= 0.5).sum())
        # the map (the default scope) remembers every voxel of every frame: at least the window's
        mres = call_query("floor", top_k=15, timeout=30)
        assert mres.success and "over the map" in mres.message, mres.message
        marr = pointcloud2_to_array(mres.relevance)
        assert len(marr) >= len(arr) and mres.regions
        mgt = ground_truth_lookup(scene["bag"].parent / "seq", cfg.window.voxel_size, 8)(
            np.stack([marr["x"], marr["y"], marr["z"]], axis=1))
        assert marr["relevance"][mgt == 1].mean() > marr["relevance"][(mgt != 1) & (mgt > 0)].mean() + 0.1
        scores = [r.score for r in mres.regions]
        assert scores == sorted(scores, reverse=True) and sum(r.num_voxels for r in mres.regions) <= mres.num_matches
        bad = call_query("", timeout=30)
        assert not bad.success and "empty" in bad.message
        long = call_query("x" * 500, timeout=30)
        assert not long.success and "200" in long.message
        # runtime vocabulary over the parameter service, applied to the next frame (replaying
        # the bag's first frame again is a jump back in time: the node restarts pairing)
        assert _set_string_array("/perception_node", "language.vocabulary", ["floor", "wall"]), node.tail()
        again = replay_live(scene["bag"], cfg, node_process=node, progress=False, frame_timeout=60, max_frames=1)
        assert len(again.clouds) == 1, node.tail()
        labels = cloud_arrays(again.clouds[-1])["label"]
        assert set(np.unique(labels)) <= {0, 1} and len(np.unique(labels)) == 2
        assert "open vocabulary set to ['floor', 'wall']" in node.tail(200)
        assert not _set_string_array("/perception_node", "window.voxel_size_typo", ["x"])  # unknown: refused
        assert node.alive(), node.tail()
    finally:
        node.stop()


def _set_string_array(node_name: str, name: str, values: list[str]) -> bool:
    """``ros2 param set`` through the node's SetParameters service; True when accepted."""
    import rclpy
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    own = not rclpy.ok()
    if own:
        rclpy.init()
    n = rclpy.create_node("param_setter")
    try:
        cli = n.create_client(SetParameters, f"{node_name}/set_parameters")
        assert cli.wait_for_service(timeout_sec=20)
        req = SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=values))])
        fut = cli.call_async(req)
        rclpy.spin_until_future_complete(n, fut, timeout_sec=20)
        return bool(fut.result().results[0].successful)
    finally:
        n.destroy_node()
        if own:
            rclpy.shutdown()
