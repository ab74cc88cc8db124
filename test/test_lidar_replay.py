"""LiDAR end to end offline: the real Ouster OS1-64 recording (ROS 1 MCAP) through `concerto replay`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from concerto_ros.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_ouster_ros1_mcap_replays_with_the_lidar_config(shared_dir, tmp_path, capsys):
    bag = shared_dir / "data" / "lidar_bag_ouster" / "ouster_os1_64.mcap"
    if not bag.is_file():
        pytest.skip(f"{bag} not found")
    out = tmp_path / "ouster"
    rc = main(["replay", str(bag), "--config", str(ROOT / "config" / "perception_lidar.yaml"), "-o", str(out),
               "--no-progress"])
    assert rc == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    assert "its TF has no frame 'odom'" in printed  # the bag's TF has only static sensor frames: a note
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_processed"] == 2 and summary["skipped"] == {}
    from plyfile import PlyData

    v = PlyData.read(str(out / "window.ply"))["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    # two 64x2048 scans, ~45.7k returns each, at 0.05 m voxels; every point within lift.max_range of the sensor
    assert 10_000 < len(xyz) < 2 * 45_816
    r = np.linalg.norm(xyz, axis=1)
    assert r.max() <= 100.0 + 0.05 and r.min() >= 0.5 - 0.05
    assert set(summary["timings_ms"]) >= {"convert", "lift", "window", "encoder", "heads"}
