"""`concerto train translator` end to end on a generated labelled sequence."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed (scripts/setup.sh)")

from concerto_ros.cli import main  # noqa: E402
from concerto_ros.config import default_config_path, load_config  # noqa: E402
from concerto_ros.demo.scene import write_sequence  # noqa: E402
from concerto_ros.models.bundle import load_bundle  # noqa: E402
from concerto_ros.pipeline import PerceptionPipeline  # noqa: E402


def test_train_translator_fits_saves_and_the_node_pipeline_loads_it(tmp_path, capsys):
    seq = write_sequence(tmp_path / "seq", seed=2, num_frames=4, width=160, height=120)
    out = tmp_path / "tr"
    code = main(["train", "translator", "--source", str(seq), "--output", str(out), "--no-progress",
                 "--set", "loop.epochs=3", "--set", "loop.batch_size=8192", "--set", "node.window.num_frames=2",
                 "--set", "node.model.bundle=''"])  # the seeded random encoder
    assert code == 0, capsys.readouterr()
    s = json.loads((out / "summary.json").read_text())
    assert s["loss_last"] < 0.7 * s["loss_first"]
    assert s["feature_dims"] == {"concerto": 192, "cross4d": 0} and s["text_encoder"].endswith("all-MiniLM-L6-v2")
    assert s["train_voxels"] > 1000 and s["heldout_voxels"] > 100
    assert s["heldout_accuracy"] > 0.4  # measured 0.88; 8 classes: chance about 0.125 (floor and wall dominate)
    rows = (out / "metrics.csv").read_text().splitlines()
    spe = -(-s["train_voxels"] // 8192)  # steps an epoch at the global batch of 8192 voxels
    assert rows[0].startswith("step,loss,train_accuracy") and len(rows) == 1 + 3 * spe and s["steps"] == 3 * spe
    # the node's pipeline loads it with the same perception settings and answers queries
    cfg = load_config(default_config_path(), {"language.translator": str(out / "translator.pt"), "model.bundle": ""})
    pipe = PerceptionPipeline(cfg, log=None)
    assert pipe.language.translator.in_dim == 192
    # ... and the bundle written next to it: encoder + translator + text encoder + the classes as vocabulary
    b = load_bundle(out / "bundle.pt")
    assert s["bundle"] == str(out / "bundle.pt") and b.components() == ["concerto", "translator", "vocabulary"]
    assert b.translator["config"]["in_dim"] == 192 and b.text_encoder == "sentence-transformers"
    assert b.vocabulary == ["floor", "wall", "table", "chair", "sofa", "cabinet", "bookshelf", "door"]
    assert b.metadata["command"] == "concerto train translator" and b.metadata["metrics"]["heldout_accuracy"] > 0.4
    torch.testing.assert_close(b.translator["state_dict"]["proj.weight"],
                               pipe.language.translator.state_dict()["proj.weight"], rtol=0, atol=0)
    assert PerceptionPipeline(load_config(default_config_path(), {"window.num_frames": 2, "model.bundle": s["bundle"]}),
                              log=None).class_names == b.vocabulary
    code = main(["train", "translator", "--output", str(tmp_path / "none"), "--no-progress"])
    assert code == 1 and "data.sources is empty" in capsys.readouterr().err
    assert np.isfinite(s["temperature"])


def test_label_free_translator_regresses_projected_image_embeddings(tmp_path, capsys):
    """mode targets: voxels take the patch feature of a dense image model (here a seeded ViT
    embedding into the text encoder's 384-d space) at their pixel; cosine regression."""
    seq = write_sequence(tmp_path / "seq", seed=4, num_frames=3, width=160, height=120)
    out = tmp_path / "lf"
    code = main(["train", "translator", "--source", str(seq), "--output", str(out), "--no-progress",
                 "--set", "mode=targets", "--set", "image_model.name=seeded_vit", "--set", "loop.epochs=3",
                 "--set", "loop.batch_size=16384",
                 "--set", "node.window.num_frames=2"])
    assert code == 0, capsys.readouterr()
    s = json.loads((out / "summary.json").read_text())
    assert s["mode"] == "targets" and s["loss_last"] < s["loss_first"]
    import csv

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert "train_cosine" in rows[0] and len(rows) == s["steps"]
    first, last = float(rows[0]["train_cosine"]), float(rows[-1]["train_cosine"])
    # generalises to held-out cubes (0.447 on the default bundle's features, Concerto + tiny Cross4D)
    assert last > first and s["heldout_target_cosine"] > 0.4
    bad = main(["train", "translator", "--source", str(seq), "--output", str(tmp_path / "x"), "--no-progress",
                "--set", "mode=targets", "--set", "image_model.name=seeded_vit", "--set", "image_model.embed_dim=64",
                "--set", "node.window.num_frames=2"])
    assert bad == 1 and "64-d targets but the text encoder" in capsys.readouterr().err


def test_point_array_source_uses_the_shared_voxelize_and_encode_path(tmp_path, capsys):
    """A labelled (N, 6) xyzrgb array: a floor (label 1) and a wall (label 2); NaN rows dropped."""
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 3, (6000, 2)), np.zeros(6000), np.tile([90, 160, 90], (6000, 1))]
    wall = np.c_[rng.uniform(0, 3, 6000), np.zeros(6000), rng.uniform(0, 2.5, 6000), np.tile([200, 200, 230], (6000, 1))]
    pts = np.concatenate([floor, wall, np.full((3, 6), np.nan)]).astype(np.float32)
    lab = np.r_[np.ones(6000), np.full(6000, 2), np.zeros(3)].astype(np.int64)
    np.save(tmp_path / "pts.npy", pts)
    np.save(tmp_path / "lab.npy", lab)
    out = tmp_path / "tr"
    code = main(["train", "translator", "--output", str(out), "--no-progress", "--set", "loop.epochs=10",
                 "--set", f"data.sources=[{{type: points, path: {tmp_path / 'pts.npy'}, labels: {tmp_path / 'lab.npy'}}}]",
                 "--set", "data.classes=[floor, wall]", "--set", "data.label_ids=[1, 2]"])
    assert code == 0, capsys.readouterr()
    s = json.loads((out / "summary.json").read_text())
    assert s["train_voxels"] + s["heldout_voxels"] <= 12000 and s["heldout_voxels"] > 0
    assert s["heldout_accuracy"] > 0.9 and s["loss_last"] < s["loss_first"]


def test_probe_then_translator_chain_carries_the_head(tmp_path, capsys):
    """probe -> bundle (encoder + head); translator with model.bundle = that bundle -> bundle
    with the same encoder and head plus the translator; the node's pipeline runs it."""
    from concerto_ros.sensors.types import PointFrame
    from concerto_ros.train.probe import ProbeConfig, train_probe

    rng = np.random.default_rng(1)
    floor = np.c_[rng.uniform(0, 2, (4000, 2)), np.zeros(4000), np.tile([90, 160, 90], (4000, 1))]
    wall = np.c_[rng.uniform(0, 2, 4000), np.zeros(4000), rng.uniform(0, 1.5, 4000), np.tile([200, 200, 230], (4000, 1))]
    pts = np.concatenate([floor, wall]).astype(np.float32)
    np.save(tmp_path / "pts.npy", pts)
    np.save(tmp_path / "lab.npy", np.r_[np.ones(4000), np.full(4000, 2)].astype(np.int64))
    source = {"type": "points", "path": str(tmp_path / "pts.npy"), "labels": str(tmp_path / "lab.npy")}
    probe = train_probe(ProbeConfig.from_mapping({
        "output": str(tmp_path / "probe"), "loop": {"epochs": 3},
        "data": {"train": [source], "test": [], "label_map": {}, "classes": ["unlabeled", "floor", "wall"],
                 "ignore_index": 0}}), progress=False, log=lambda m: None)
    out = tmp_path / "tr"
    code = main(["train", "translator", "--output", str(out), "--no-progress", "--set", "loop.epochs=5",
                 "--set", f"data.sources=[{{type: points, path: {source['path']}, labels: {source['labels']}}}]",
                 "--set", "data.classes=[floor, wall]", "--set", "data.label_ids=[1, 2]",
                 "--set", f"node.model.bundle={probe['bundle']}"])
    assert code == 0, capsys.readouterr()
    first, chained = load_bundle(probe["bundle"]), load_bundle(out / "bundle.pt")
    assert chained.components() == ["concerto", "head", "translator", "vocabulary"]
    assert chained.class_names == ["unlabeled", "floor", "wall"] and chained.vocabulary == ["floor", "wall"]
    assert chained.metadata["parent_bundle"] == probe["bundle"]
    assert chained.metadata["sources"]["head"] == f"bundle {probe['bundle']}"
    for part in ("encoder", "head"):
        for k, t in getattr(first, part)["state_dict"].items():
            assert torch.equal(getattr(chained, part)["state_dict"][k], t), (part, k)
    # the node's pipeline runs the chained bundle: open-vocabulary labels from the bundle's
    # vocabulary, the probe's head back with language.vocabulary cleared at runtime
    pipe = PerceptionPipeline(load_config(default_config_path(), {"model.bundle": str(out / "bundle.pt")}), log=None)
    frame = PointFrame(stamp_ns=1, points=pts[:, :3].copy(), colors=pts[:, 3:].astype(np.uint8), frame_id="odom")
    r = pipe.process_points(frame)
    assert r.class_names == ["floor", "wall"] and r.text_embeddings.shape == (len(r.coord), 384)
    pipe.set_vocabulary([])
    r = pipe.process_points(PointFrame(stamp_ns=2, points=frame.points, colors=frame.colors, frame_id="odom"))
    assert r.class_names == ["unlabeled", "floor", "wall"]
