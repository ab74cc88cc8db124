"""`concerto train ssl` (objective concerto): views, matching, masking, the distillation loss,
and an end-to-end run with --resume on a generated RGB-D sequence whose bundle the node's
pipeline loads. The other objectives: test_train_objectives.py; torchrun: test_train_ddp.py."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from concerto_ros.cli import main
from concerto_ros.config import default_config_path, load_config
from concerto_ros.demo.scene import write_sequence
from concerto_ros.train.objectives.distill import PrototypeHead, distill_loss, teacher_entropy
from concerto_ros.train.views import SSLScene, ViewsConfig, make_view, mask_blocks, match_views


def _scene(n: int = 4000, seed: int = 0) -> SSLScene:
    rng = np.random.default_rng(seed)
    coord = (rng.random((n, 3)) * [2.0, 1.5, 1.0]).astype(np.float32)
    coord = np.unique(np.floor(coord / 0.02), axis=0).astype(np.float32) * 0.02 + 0.01
    m = len(coord)
    color = rng.integers(0, 256, (m, 3)).astype(np.uint8)
    return SSLScene("s", coord, color, torch.zeros(m, 4, dtype=torch.float16), np.ones(m, bool), np.zeros(m, bool))


def _vcfg(**kw) -> ViewsConfig:
    return ViewsConfig(**kw)


def test_view_keeps_up_axis_heights_and_maps_back_to_the_scene():
    sc = _scene()
    rng = np.random.default_rng(1)
    v = make_view(sc, rng, (0.5, 0.5), _vcfg(dropout=0.0, tilt_deg=0.0, jitter=0.0, scale=[1.0, 1.0],
                                              color_drop=0.0, color_jitter=0.0), 0.02)
    assert v.coord.dtype == np.float32 and v.grid_coord.shape == v.coord.shape and v.grid_coord.min() == 0
    assert len(np.unique(v.grid_coord, axis=0)) == len(v.grid_coord)  # re-voxelised: unique voxels
    assert 0.35 * sc.num_voxels < len(v.source) <= 0.5 * sc.num_voxels + 1
    orig = sc.coord[v.source].astype(np.float64)
    # rotation about z only: z differences and horizontal distances are preserved
    dz_view = v.coord[:, 2] - v.coord[0, 2]
    dz_orig = orig[:, 2] - orig[0, 2]
    assert np.allclose(dz_view, dz_orig, atol=1e-5)
    dxy_view = np.linalg.norm(v.coord[:, :2] - v.coord[0, :2], axis=1)
    dxy_orig = np.linalg.norm(orig[:, :2] - orig[0, :2], axis=1)
    assert np.allclose(dxy_view, dxy_orig, atol=1e-5)
    np.testing.assert_array_equal(v.color, sc.color[v.source].astype(np.float32))  # no jitter asked
    # up axis -y (a camera optical frame): y differences are what is preserved
    w = make_view(sc, np.random.default_rng(2), (1.0, 1.0), _vcfg(dropout=0.0, tilt_deg=0.0, jitter=0.0,
                                                                   scale=[1.0, 1.0], up_axis="-y"), 0.02)
    o = sc.coord[w.source]
    assert np.allclose(w.coord[:, 1] - w.coord[0, 1], o[:, 1] - o[0, 1], atol=1e-5)
    with pytest.raises(ValueError, match="up_axis"):
        make_view(sc, rng, (0.5, 0.5), _vcfg(up_axis="w"), 0.02)


def test_color_drop_and_scale_ranges():
    sc = _scene()
    v = make_view(sc, np.random.default_rng(0), (1.0, 1.0), _vcfg(color_drop=1.0, dropout=0.0, jitter=0.0,
                                                                   tilt_deg=0.0, scale=[2.0, 2.0]), 0.02)
    assert not v.color.any()
    ext_view = np.ptp(v.coord[:, 2])
    ext_orig = np.ptp(sc.coord[v.source][:, 2])
    assert ext_view == pytest.approx(2.0 * ext_orig, rel=1e-4)


def test_match_views_identity_and_radius():
    sc = _scene()
    rng = np.random.default_rng(3)
    cfg = _vcfg(dropout=0.0)
    a = make_view(sc, rng, (1.0, 1.0), cfg, 0.02)
    ia, ib = match_views(sc, a, a, 1e-6)
    np.testing.assert_array_equal(ia, np.arange(len(a.source)))
    np.testing.assert_array_equal(ib, ia)
    b = make_view(sc, rng, (0.3, 0.3), cfg, 0.02)
    ia, ib = match_views(sc, a, b, 0.03)
    d = np.linalg.norm(sc.coord[a.source[ia]] - sc.coord[b.source[ib]], axis=1)
    assert len(ia) > 0.2 * len(b.source) and d.max() <= 0.03 + 1e-6
    # voxels of a far from every voxel of b are unmatched
    far = np.ones(len(a.source), bool)
    far[ia] = False
    if far.any():
        from scipy.spatial import cKDTree

        dmin, _ = cKDTree(sc.coord[b.source]).query(sc.coord[a.source[far]])
        assert dmin.min() > 0.03


def test_mask_blocks_masks_whole_cells_at_the_ratio():
    sc = _scene(20000)
    v = make_view(sc, np.random.default_rng(0), (1.0, 1.0), _vcfg(dropout=0.0), 0.02)
    m = mask_blocks(v, np.random.default_rng(1), 0.3, 0.1)
    assert 0.15 < m.mean() < 0.45
    cell = np.floor(v.coord / 0.1).astype(np.int64)
    _, inv = np.unique(cell, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    for c in np.unique(inv)[:50]:  # a cell is masked entirely or not at all
        assert len(np.unique(m[inv == c])) == 1
    assert not mask_blocks(v, np.random.default_rng(1), 0.0, 0.1).any()


def test_distill_loss_is_the_centred_sharpened_cross_entropy():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    c = torch.randn(7) * 0.1
    pt = torch.softmax((t - c) / 0.04, -1)
    ref = -(pt * torch.log_softmax(s / 0.1, -1)).sum(-1).mean()
    assert float(distill_loss(s, t, c, 0.1, 0.04)) == pytest.approx(float(ref), rel=1e-6)
    # the student matching the teacher's (centred, sharpened) distribution minimises it
    opt = pt.clamp_min(1e-12).log() * 0.1
    assert float(distill_loss(opt, t, c, 0.1, 0.04)) < float(distill_loss(s, t, c, 0.1, 0.04))
    # the teacher's entropy is the floor: at the optimum the KL (loss - entropy) is 0
    assert float(distill_loss(opt, t, c, 0.1, 0.04)) == pytest.approx(float(teacher_entropy(t, c, 0.04)), abs=1e-5)
    head = PrototypeHead(12, prototypes=9, hidden=16, bottleneck=8)
    out = head(torch.randn(30, 12))
    assert out.shape == (30, 9) and float(out.detach().abs().max()) <= 1.0 + 1e-5


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssl")
    seq = write_sequence(tmp / "seq", seed=3, num_frames=4, width=80, height=60)
    common = ["--source", str(seq), "--output", str(tmp / "run"), "--no-progress",
              "--set", "node.window.num_frames=2", "--set", "data.window_stride=1", "--set", "data.eval_scenes=2",
              "--set", "views.local_views=1", "--set", "views.max_view_voxels=800",
              "--set", "loop.steps_per_epoch=8", "--set", "loop.checkpoint_every=8",
              "--set", "optim.warmup=3", "--set", "optim.lr=3e-3"]
    rc1 = main(["train", "ssl", *common, "--set", "loop.steps=12"])
    rc2 = main(["train", "ssl", *common, "--set", "loop.steps=24", "--resume"])
    return tmp, seq, rc1, rc2


def test_ssl_run_lowers_the_loss_resumes_and_writes_a_bundle_the_node_loads(ssl_run):
    tmp, seq, rc1, rc2 = ssl_run
    assert rc1 == 0 and rc2 == 0
    run = tmp / "run"
    rows = _rows(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 25))  # resumed at 12, appended
    loss = np.array([float(r["loss"]) for r in rows])
    l2d = np.array([float(r["loss_2d"]) for r in rows])
    kl = np.array([float(r["kl_3d"]) for r in rows])
    assert np.isfinite(loss).all() and (kl > -1e-4).all()
    # the distillation cross-entropy floats with the teacher's entropy (its floor), so what
    # must fall is the gap to the teacher, KL = CE - H(teacher), and the 2D-3D cosine loss
    assert l2d[-6:].mean() < 0.8 * l2d[:6].mean()
    assert (kl + l2d)[-6:].mean() < 0.85 * (kl + l2d)[:6].mean()
    ema = [float(r["ema"]) for r in rows]  # cosine 0.994 -> 1 over each run's total steps
    assert ema[0] == pytest.approx(0.994, abs=1e-4) and ema[-1] == pytest.approx(1.0, abs=1e-4)
    assert all(a <= b + 1e-12 for a, b in zip(ema[12:], ema[13:]))
    ev = _rows(run / "eval.csv")
    assert [int(r["step"]) for r in ev] == [8, 12, 16, 24]
    assert all(int(float(r["prototypes_used"])) >= 1 for r in ev) and float(ev[-1]["heldout_cos"]) > 0.3
    s = json.loads((run / "summary.json").read_text())
    assert s["feature_dim"] == 240 and s["steps"] == 24 and s["scenes"] == 4 and s["objective"] == "concerto"
    assert (run / "ssl_curves.png").stat().st_size > 10_000
    assert sorted(p.name for p in (run / "cache").iterdir()) == ["ssl_scenes", "targets"]  # caches under --output

    # the encoder file loads as model.checkpoint and equals the bundle's encoder
    from concerto_ros.models.bundle import load_bundle
    from concerto_ros.pipeline import PerceptionPipeline

    b = load_bundle(run / "bundle.pt")
    assert b.encoder is not None and b.voxel_size == pytest.approx(0.02) and b.feature == "all_levels"
    assert b.feature_dims == {"concerto": 240, "cross4d": 0}
    assert b.metadata["command"] == "concerto train ssl" and b.metadata["config"]["node"]["window"]["num_frames"] == 2
    ckpt = torch.load(run / "encoder.pt", map_location="cpu", weights_only=True)
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(v.float(), b.encoder["state_dict"][k].float()), k
    cfg = load_config(default_config_path(), {"model.bundle": str(run / "bundle.pt"), "window.num_frames": 2})
    pipe = PerceptionPipeline(cfg, log=None)
    from concerto_ros.train.data import load_recording

    cfg.lift.pixel_stride = 2
    rec = load_recording(seq, cfg)
    res = pipe.process_points(rec.frames[0].points)
    assert res.features.shape == (len(res.coord), 240) and torch.isfinite(res.features).all()
    # different from the random initialisation it started from (the node's seeded random tiny)
    rand = PerceptionPipeline(load_config(default_config_path(), {"window.num_frames": 2, "model.bundle": "",
                                                                  "model.feature": "all_levels"}), log=None)
    r0 = rand.process_points(rec.frames[0].points)
    assert (r0.features - res.features).abs().mean() > 1e-3


def test_bad_ssl_settings_fail_with_exit_code_and_message(tmp_path, capsys):
    assert main(["train", "ssl", "--output", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "no data" in capsys.readouterr().err
    assert main(["train", "ssl", "--source", str(tmp_path), "--output", str(tmp_path / "y"), "--no-progress",
                 "--set", "views.global_views=1"]) == 2
    assert "views.global_views" in capsys.readouterr().err
    assert main(["train", "ssl", "--source", str(tmp_path / "missing"), "--output", str(tmp_path / "z"),
                 "--no-progress"]) == 1
    assert "missing: no such file or folder" in capsys.readouterr().err  # one line, the recordings owner's
    assert main(["train", "ssl", "--set", "views.nope=1", "--print-config"]) == 2
    assert main(["train", "ssl", "--print-config", "--set", "loop.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "prototypes: 64" in out
