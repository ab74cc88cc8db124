"""Typed training configs with the node's configuration embedded: one --set grammar for any
key, one source of truth for voxel size and lifting, --print-config round trips, refusals."""

from __future__ import annotations

import yaml
import pytest

from concerto_ros.cli import main
from concerto_ros.train.config import dump_config, parse_set_items, to_dict
from concerto_ros.train.cross4d import Cross4DTrainConfig
from concerto_ros.train.probe import ProbeConfig
from concerto_ros.train.ssl import SSLConfig
from concerto_ros.train.translator import TranslatorConfig


def test_set_reaches_node_settings_and_adds_mapping_keys():
    cfg = ProbeConfig.from_mapping({"data": {"label_map": {"1-9": "table"}}}, parse_set_items([
        "node.model.bundle=outputs/x/bundle.pt", "node.window.voxel_size=0.05", "data.label_map.20+=object",
        "optim.lr=3e-3", "loop.epochs=4"]))
    assert cfg.node.model.bundle == "outputs/x/bundle.pt" and cfg.node.window.voxel_size == 0.05
    assert cfg.data.label_map == {"1-9": "table", "20+": "object"}  # a key the file did not have
    assert cfg.optim.lr == 3e-3 and cfg.loop.epochs == 4
    # a node section given as a mapping, as in a YAML file, merges key by key
    cfg = SSLConfig.from_mapping({"node": {"lift": {"pixel_stride": 4}, "window": {"num_frames": 3}}})
    assert (cfg.node.lift.pixel_stride, cfg.node.window.num_frames, cfg.node.lift.max_depth) == (4, 3, 8.0)


def test_command_node_defaults_and_node_config_file(tmp_path):
    assert SSLConfig.from_mapping().node.model.feature == "all_levels"  # the command's own node default
    assert Cross4DTrainConfig.from_mapping().node.cross4d.preset == "small"
    assert ProbeConfig.from_mapping().node.model.feature == "concat3"  # the node's default
    node = tmp_path / "node.yaml"
    node.write_text("perception_node:\n  ros__parameters:\n    window: {voxel_size: 0.05}\n    lift: {max_depth: 30.0}\n")
    cfg = SSLConfig.from_mapping({"node_config": str(node)}, [("node.lift.min_depth", 0.5)])
    assert (cfg.node.window.voxel_size, cfg.node.lift.max_depth, cfg.node.lift.min_depth) == (0.05, 30.0, 0.5)
    with pytest.raises(FileNotFoundError):
        SSLConfig.from_mapping({"node_config": str(tmp_path / "none.yaml")})


def test_unknown_keys_and_bad_values_are_refused_with_the_key():
    with pytest.raises(KeyError, match="loop.stepz.*did you mean.*steps"):
        SSLConfig.from_mapping({}, [("loop.stepz", 3)])
    with pytest.raises(KeyError, match="node.windw"):
        SSLConfig.from_mapping({"node": {"windw": {"voxel_size": 0.1}}})
    with pytest.raises(KeyError, match="data.voxel_size"):  # the old mirror of the node's setting is gone
        SSLConfig.from_mapping({"data": {"voxel_size": 0.02}})
    with pytest.raises(KeyError, match="perception_overrides"):
        ProbeConfig.from_mapping({"perception_overrides": {"model.bundle": "x"}})
    with pytest.raises(ValueError, match="node.window.voxel_size|window.voxel_size"):
        SSLConfig.from_mapping({}, [("node.window.voxel_size", 5.0)])  # outside the node's range
    with pytest.raises(ValueError, match="loop.steps.*integer"):
        SSLConfig.from_mapping({}, [("loop.steps", 2.5)])
    with pytest.raises(ValueError, match="views.up_axis"):
        SSLConfig.from_mapping({}, [("views.up_axis", "w")])
    with pytest.raises(ValueError, match="ssl.objective"):
        SSLConfig.from_mapping({}, [("ssl.objective", "concerto+mae")])
    with pytest.raises(ValueError, match="key=value"):
        parse_set_items(["loop.steps"])


def test_print_config_round_trips_and_documents_every_key(capsys):
    for cls in (SSLConfig, Cross4DTrainConfig, ProbeConfig, TranslatorConfig):
        cfg = cls.from_mapping()
        text = dump_config(cfg)
        assert yaml.safe_load(text) == to_dict(cfg)
        assert "voxel_size: 0.02  # Grid sampling voxel edge (metres)" in text  # the node's own description
    assert main(["train", "ssl", "--print-config", "--set", "loop.steps=7", "--set", "ssl.objective=concerto+msm",
                 "--seed", "3", "--output", "/tmp/x"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["loop"]["steps"] == 7 and out["ssl"]["objective"] == "concerto+msm" and out["seed"] == 3
    assert out["output"] == "/tmp/x" and out["node"]["window"]["voxel_size"] == 0.02
    assert main(["train", "cross4d", "--set", "optim.stepz=7", "--print-config"]) == 2
    assert "optim.stepz" in capsys.readouterr().err


def test_outputs_and_caches_stay_under_output_unless_a_cache_dir_is_set(tmp_path):
    cfg = SSLConfig.from_mapping({"output": str(tmp_path / "run")})
    assert cfg.cache_path == tmp_path / "run" / "cache"
    cfg = SSLConfig.from_mapping({"output": str(tmp_path / "run"), "cache_dir": str(tmp_path / "shared")})
    assert cfg.cache_path == tmp_path / "shared"


def test_probe_train_and_test_flags_replace_the_lists_and_refuse_overlap(tmp_path, capsys):
    learn, test = tmp_path / "learn", tmp_path / "test"
    learn.mkdir(), test.mkdir()
    assert main(["train", "probe", "--train", str(learn), "--print-config"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["data"]["train"] == [{"path": str(learn)}] and out["data"]["test"] == []
    # inline YAML in the Source schema of `concerto eval`, as in every training command
    assert main(["train", "probe", "--train", str(learn), "--test",
                 f"{{type: pcd, path: {test}, label_names: mosd, max_frames: 2}}", "--print-config"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["data"]["test"] == [{"path": str(test), "type": "pcd", "label_names": "mosd", "max_frames": 2}]
    assert main(["train", "ssl", "--data", f"{{path: {learn}, fx: 525}}", "--print-config"]) == 2
    assert "give all four intrinsics" in capsys.readouterr().err  # the schema's own check, exit code 2
    assert main(["train", "translator", "--data", f"{{path: {learn}, lables: x.npy}}", "--print-config"]) == 2
    assert "did you mean 'labels'" in capsys.readouterr().err
    # a test source inside a training source: refused before anything is computed
    assert main(["train", "probe", "--train", str(tmp_path), "--test", str(test), "--print-config"]) == 2
    assert "overlap" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "probe", "--source", str(learn)])  # probe has --train / --test, not --source
    capsys.readouterr()
