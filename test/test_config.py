"""The one config schema: YAML file, defaults, overrides and validation."""

from pathlib import Path

import pytest

from concerto_ros.config import (SPECS, PerceptionConfig, default_config_path, load_config,
                                 parse_overrides, to_flat)

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_yaml_sets_every_parameter_to_its_default():
    text = (ROOT / "config" / "perception.yaml").read_text()
    cfg = load_config(ROOT / "config" / "perception.yaml")
    assert to_flat(cfg) == to_flat(PerceptionConfig())
    for name in SPECS:  # every setting is written out in the file users copy
        assert name.split(".")[-1] + ":" in text, name
    assert default_config_path() == ROOT / "config" / "perception.yaml"


def test_lidar_yaml_has_the_same_keys_with_lidar_values():
    text = (ROOT / "config" / "perception_lidar.yaml").read_text()
    cfg = load_config(ROOT / "config" / "perception_lidar.yaml")
    for name in SPECS:
        assert name.split(".")[-1] + ":" in text, name
    changed = {k for k, v in to_flat(cfg).items() if v != to_flat(PerceptionConfig())[k]}
    assert changed == {"topics.color", "topics.depth", "topics.camera_info", "topics.points", "lift.min_range",
                       "window.num_frames", "window.voxel_size", "window.max_extent", "head.class_names",
                       "model.bundle", "keyframe.min_translation", "map.radius"}
    assert cfg.window.voxel_size == 0.05 and cfg.topics.points and cfg.lift.max_range > 60 > cfg.lift.max_depth
    assert len(cfg.head.class_names) == 1  # [semantickitti]: expanded to the 19 classes by the head
    assert cfg.model.bundle == ""  # the embedded bundle is indoor (0.02 m): no bundle for LiDAR


def test_every_parameter_is_described_and_numeric_ones_have_ranges():
    for spec in SPECS.values():
        assert len(spec.description) > 15, spec.name
        if spec.type in (int, float):
            assert spec.lo is not None and spec.hi is not None and spec.lo <= spec.default <= spec.hi, spec.name


def test_overrides_are_typed_and_validated(tmp_path):
    cfg = load_config(None, parse_overrides(["window.num_frames=3", "window.voxel_size=0.05",
                                             "head.class_names=[a, b]", "publish.features=false"]))
    assert cfg.window.num_frames == 3 and cfg.window.voxel_size == 0.05
    assert cfg.head.class_names == ["a", "b"] and cfg.publish.features is False
    with pytest.raises(ValueError, match=r"window.voxel_size.*outside"):
        load_config(None, {"window.voxel_size": 5.0})
    with pytest.raises(ValueError, match="not one of"):
        load_config(None, {"qos.input": "fast"})
    with pytest.raises(KeyError, match="did you mean"):
        load_config(None, {"window.num_frame": 3})
    with pytest.raises(ValueError, match="name=value"):
        parse_overrides(["window.num_frames"])


def test_params_file_section_of_the_node_wins(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("other_node:\n  ros__parameters:\n    fixed_frame: map\n"
                 "perception_node:\n  ros__parameters:\n    fixed_frame: world\n    sync:\n      slop: 0.01\n")
    cfg = load_config(p)
    assert cfg.fixed_frame == "world" and cfg.sync.slop == 0.01
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_cpu_overlay_layers_only_the_live_budget_over_the_shipped_yaml(tmp_path):
    base = ROOT / "config" / "perception.yaml"
    cpu = load_config([base, ROOT / "config" / "perception_cpu.yaml"])
    changed = {k: v for k, v in to_flat(cpu).items() if v != to_flat(load_config(base))[k]}
    assert changed == {"lift.pixel_stride": 2, "window.max_voxels": 30000, "model.num_threads": 1,
                       "worker.queue_depth": 30, "cross4d.precision": "auto", "tf.timeout": 0.5}
    # later files win, each sets only what it names, overrides come last
    extra = tmp_path / "site.yaml"
    extra.write_text("/**:\n  ros__parameters:\n    window:\n      max_voxels: 80000\n    fixed_frame: map\n")
    cfg = load_config([base, ROOT / "config" / "perception_cpu.yaml", extra], {"model.num_threads": 2})
    assert (cfg.window.max_voxels, cfg.fixed_frame, cfg.lift.pixel_stride, cfg.model.num_threads) == (80000, "map", 2, 2)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config([base, tmp_path / "missing.yaml"])
