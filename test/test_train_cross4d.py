"""`concerto train cross4d` end to end on the real Kinect recording (tiny preset, a few steps)."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import torch
import yaml

from concerto_ros.cli import train as train_cli
from concerto_ros.config import default_config_path, load_config
from concerto_ros.models.bundle import load_bundle
from concerto_ros.pipeline import PerceptionPipeline
from concerto_ros.sensors.types import PointFrame
from concerto_ros.models.cross4d import Cross4DFeatureExtractor, load_cross4d
from concerto_ros.models.teachers import seeded_vit
from concerto_ros.config import PerceptionConfig
from concerto_ros.train.cross4d import Cross4DTrainConfig, clip_losses, train_cross4d
from concerto_ros.train.data import TargetCache, build_clips, load_recording

from conftest import SLAMBOOK_INTRINSICS


def _source(folder) -> str:
    fx, fy, cx, cy = SLAMBOOK_INTRINSICS
    return f"[{{path: '{folder}', fx: {fx}, fy: {fy}, cx: {cx}, cy: {cy}, depth_scale: 1000}}]"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="concerto")
    train_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _fast(tmp_path, folder, steps: int) -> list[str]:
    return ["--set", f"data.sources={_source(folder)}", "--set", "node.lift.pixel_stride=8",
            "--set", "node.cross4d.points_per_frame=256", "--set", "node.cross4d.preset=tiny",
            "--set", f"loop.steps={steps}", "--set", "optim.lr=3e-3", "--set", "optim.warmup=2",
            "--set", "loop.steps_per_epoch=8", "--set", "loop.checkpoint_every=8",
            "--output", str(tmp_path / "run"), "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, slambook_dir):
    tmp = tmp_path_factory.mktemp("c4d")
    rc = _cli(["train", "cross4d", *_fast(tmp, slambook_dir, 16)])
    return tmp, rc


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_short_run_lowers_the_loss_and_writes_outputs(trained):
    tmp, rc = trained
    assert rc == 0
    run = tmp / "run"
    steps = _rows(run / "metrics.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 17))
    loss = np.array([float(r["loss"]) for r in steps])
    assert loss[-4:].mean() < loss[:4].mean() - 0.1, loss
    assert all(float(r["points_per_s"]) > 0 for r in steps)
    ev = _rows(run / "eval.csv")
    assert [int(r["epoch"]) for r in ev] == [1, 2]
    assert float(ev[-1]["train_cos"]) > float(ev[0]["train_cos"])
    assert float(ev[-1]["heldout_cos"]) > float(ev[0]["heldout_cos"])
    assert int(ev[0]["heldout_points"]) > 500
    assert (run / "heldout_cosine.png").stat().st_size > 1000
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))[-1] == "step_00000016.pt"
    assert sorted(p.name for p in (run / "cache").iterdir()) == ["cross4d_clips", "targets"]  # under --output
    # the node loads the final encoder by path
    enc, blob = load_cross4d(run / "cross4d.pt")
    assert blob["extra"]["preset"] == "tiny" and blob["extra"]["teacher_dim"] == 64
    assert enc.config.point_channels == 3
    ext = Cross4DFeatureExtractor.from_checkpoint(run / "cross4d.pt")
    assert ext.num_frames == 4 and ext.points_per_frame == 256
    # ... and as a bundle holding only the Cross4D encoder, which the node's pipeline runs
    b = load_bundle(run / "bundle.pt")
    assert b.components() == ["cross4d"] and b.voxel_size == 0.02 and b.feature_dims == {"concerto": 0, "cross4d": 32}
    assert b.cross4d_settings == {"num_frames": 4, "points_per_frame": 256, "average": "points"}
    assert b.metadata["command"] == "concerto train cross4d" and "heldout_cos" in b.metadata["metrics"]
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in b.cross4d["state_dict"].items())
    pipe = PerceptionPipeline(load_config(default_config_path(), {"model.bundle": str(run / "bundle.pt")}), log=None)
    assert pipe.extractor is None and pipe.cross4d.points_per_frame == 256
    rng = np.random.default_rng(0)
    for i in range(2):
        pts = np.c_[rng.uniform(0, 1, (1500, 2)), np.zeros(1500)].astype(np.float32)
        r = pipe.process_points(PointFrame(stamp_ns=(i + 1) * 100_000_000, points=pts,
                                           colors=rng.integers(0, 255, (1500, 3), dtype=np.uint8), frame_id="odom"))
    assert r.features.shape == (len(r.coord), 32) and torch.isfinite(r.features).all()


def test_resume_continues_and_clips_come_from_the_cache(trained, slambook_dir):
    tmp, _ = trained
    cfg = Cross4DTrainConfig.from_mapping({
        "output": str(tmp / "run"), "data": {"sources": yaml.safe_load(_source(slambook_dir))},
        "node": {"lift": {"pixel_stride": 8}, "cross4d": {"points_per_frame": 256, "preset": "tiny"}},
        "loop": {"steps": 18, "steps_per_epoch": 8, "checkpoint_every": 8}, "optim": {"lr": 3e-3, "warmup": 2}})
    notes = []
    s = train_cross4d(cfg, log=notes.append, progress=False, resume=True)
    assert any("resumed" in n and "step 16" in n for n in notes)
    assert any("1 of 1 recordings from the cache, 0 built" in n for n in notes)  # clips prepared once
    assert len(s["losses"]) == 18
    assert [int(r["step"]) for r in _rows(tmp / "run" / "metrics.csv")] == list(range(1, 19))


def test_print_config_and_bad_keys(capsys, tmp_path):
    assert _cli(["train", "cross4d", "--print-config", "--set", "loop.steps=7", "--device", "cpu"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["loop"]["steps"] == 7 and cfg["device"] == "cpu" and cfg["teacher"]["lookup"] == "bilinear"
    assert cfg["node"]["cross4d"]["preset"] == "small"  # the command's default for the node's student preset
    assert _cli(["train", "cross4d", "--set", "optim.stepz=7", "--print-config"]) == 2
    assert "optim.stepz" in capsys.readouterr().err
    assert _cli(["train", "cross4d", "--output", str(tmp_path)]) == 1  # no data source
    assert "data.sources" in capsys.readouterr().err


def test_clip_losses_per_clip():
    pred = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]])  # (B=2, T=1, Q=2, 2)
    batch = {"targets": torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]] * 2),
             "train_mask": torch.tensor([[[True, True]], [[True, False]]]),
             "global_target": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}
    np.testing.assert_allclose(clip_losses(pred, batch, "dense").numpy(), [0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(clip_losses(pred[:, 0, 0], batch, "global").numpy(), [1.0, 0.0], atol=1e-6)


def test_global_target_mode(tmp_path, slambook_dir):
    cfg = Cross4DTrainConfig.from_mapping({
        "output": str(tmp_path / "g"), "target": {"mode": "global"},
        "data": {"sources": yaml.safe_load(_source(slambook_dir))},
        "node": {"lift": {"pixel_stride": 8}, "cross4d": {"points_per_frame": 128, "preset": "tiny"}},
        "loop": {"steps": 10, "batch_size": 2, "steps_per_epoch": 10, "checkpoint_every": 0, "eval": False},
        "optim": {"lr": 3e-3, "warmup": 1}})
    s = train_cross4d(cfg, log=lambda m: None, progress=False)
    assert np.mean(s["losses"][-3:]) < np.mean(s["losses"][:3])
    enc, blob = load_cross4d(s["checkpoint"])
    assert blob["extra"]["target_mode"] == "global"


def test_bag_and_folder_give_the_same_clips(tmp_path, slambook_dir):
    from concerto_ros.bag.convert_rgbd import convert_rgbd_folder

    bag = tmp_path / "slambook_bag"
    convert_rgbd_folder(slambook_dir, bag, intrinsics=SLAMBOOK_INTRINSICS, depth_scale=1000, progress=False)
    pc = PerceptionConfig()
    pc.lift.pixel_stride = 8  # one lifting setting, the node's, for bags and folders alike
    rb = load_recording({"path": str(bag), "max_frames": 3}, pc)  # the node's frame stream
    fx, fy, cx, cy = SLAMBOOK_INTRINSICS
    rf = load_recording(f"{{path: '{slambook_dir}', fx: {fx}, fy: {fy}, cx: {cx}, cy: {cy}, depth_scale: 1000, "
                        "max_frames: 3}", pc)  # inline YAML, as on a command line
    assert len(rb.frames) == len(rf.frames) == 3
    assert rb.path == bag and rf.path == slambook_dir and rb.key != rf.key
    for a, b in zip(rb.frames, rf.frames):
        assert a.points.num_points == b.points.num_points
        np.testing.assert_allclose(a.points.points, b.points.points, atol=1e-4)
        np.testing.assert_array_equal(a.rgb, b.rgb)
    cache = TargetCache(tmp_path / "cache", seeded_vit(0), short_side=56)
    ca = build_clips(rb, cache, num_frames=2, voxel_size=0.05)
    cb = build_clips(rf, cache, num_frames=2, voxel_size=0.05)
    assert [c.num_frames for c in ca] == [1, 2, 2]
    for x, y in zip(ca, cb):
        for fa, fb in zip(x.frames, y.frames):
            np.testing.assert_allclose(fa.points, fb.points, atol=1e-4)
            assert fa.visible.mean() > 0.95  # the frame's own voxels are seen by its camera
            np.testing.assert_allclose(fa.targets.float().numpy(), fb.targets.float().numpy(), atol=2e-2)
        np.testing.assert_allclose(x.times, [0.0, 1 / 30][: x.num_frames], atol=1e-6)
