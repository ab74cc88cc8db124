"""The self-supervised objectives of `concerto train ssl`: hand-checkable loss values, the
chunked gated delta-rule scan against the step-by-step recurrence, and short end-to-end runs
of msm, pointcsp and concerto+msm whose bundles the node's pipeline loads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from concerto_ros.train.objectives import parse_objective
from concerto_ros.train.objectives.concerto import joint_embedding_loss
from concerto_ros.train.objectives.distill import ema_momentum, ema_update, teacher_temperature
from concerto_ros.train.objectives.msm import MSMDecoder, level_masks, masked_cosine_loss, msm_loss, normalize_targets
from concerto_ros.train.objectives.pointcsp import (CSPBlock, GatedDeltaNet, chunked_gated_delta, geometry_loss,
                                                    naive_gated_delta, serialized_apply, spd_loss)


def test_parse_objective_orders_and_refuses_unknown_names():
    assert parse_objective("concerto") == ("concerto",)
    assert parse_objective("msm+concerto") == ("concerto", "msm")
    assert parse_objective(" pointcsp + msm + msm ") == ("msm", "pointcsp")
    for bad in ("", "+", "dino", "concerto+mae"):
        with pytest.raises(ValueError, match="ssl.objective"):
            parse_objective(bad)


def test_joint_embedding_cosine_loss_values():
    x = torch.randn(7, 5)
    assert float(joint_embedding_loss(x, 3.0 * x)) == pytest.approx(0.0, abs=1e-6)  # same direction
    assert float(joint_embedding_loss(x, -x)) == pytest.approx(2.0, abs=1e-6)  # opposite
    e = torch.eye(4)
    assert float(joint_embedding_loss(e[:2], e[2:])) == pytest.approx(1.0, abs=1e-6)  # orthogonal
    empty = torch.zeros(0, 5, requires_grad=True)
    z = joint_embedding_loss(empty, empty)
    assert float(z.detach()) == 0.0 and z.requires_grad


def test_masked_cosine_loss_counts_masked_rows_only_and_normalises_targets_over_voxels():
    torch.manual_seed(0)
    target = torch.randn(6, 8)
    pred = normalize_targets(target).clone()
    assert torch.allclose(pred.mean(0), torch.zeros(8), atol=1e-6) and torch.allclose(pred.std(0, unbiased=False),
                                                                                      torch.ones(8), atol=1e-3)
    mask = torch.tensor([True, True, False, False, True, False])
    pred[~mask] = -pred[~mask]  # wrong predictions where nothing is masked: must not count
    assert float(masked_cosine_loss(pred, target, mask)) == pytest.approx(0.0, abs=1e-6)
    pred[0] = -pred[0]  # one of three masked rows opposite: (2 + 0 + 0) / 3
    assert float(masked_cosine_loss(pred, target, mask)) == pytest.approx(2 / 3, abs=1e-5)
    # a target shifted and scaled per channel is the same target after the normalisation ...
    shift = torch.randn(8)
    assert float(masked_cosine_loss(pred, 5.0 * target + shift, mask)) == pytest.approx(2 / 3, abs=1e-5)
    # ... and a feature every voxel shares is no target at all: only what tells voxels apart counts
    assert float(masked_cosine_loss(pred, target + 100.0 * torch.randn(1, 8), mask)) == pytest.approx(2 / 3, abs=1e-4)
    assert masked_cosine_loss(pred, target, torch.zeros(6, dtype=torch.bool)) is None
    # msm_loss: the mean over levels that have masked voxels
    t2 = torch.randn(3, 4)
    p2 = -normalize_targets(t2)
    levels = msm_loss([pred, p2, p2], [target, t2, t2], [mask, torch.ones(3, dtype=torch.bool),
                                                         torch.zeros(3, dtype=torch.bool)])
    assert float(levels) == pytest.approx((2 / 3 + 2.0) / 2, abs=1e-5)


def test_level_masks_majority_of_children():
    mask0 = torch.tensor([True, True, False, True, False, False])
    inv1 = torch.tensor([0, 0, 0, 1, 1, 2])  # 6 voxels -> 3: 2/3, 1/2, 0 masked
    inv2 = torch.tensor([0, 0, 1])  # 3 -> 2
    m = level_masks(mask0, [None, inv1, inv2], [6, 3, 2])
    assert m[1].tolist() == [True, True, False]
    assert m[2].tolist() == [True, False]


def test_msm_decoder_predicts_every_level_deepest_first():
    chans = [4, 6, 8]
    dec = MSMDecoder(chans)
    feats = [torch.randn(10, 4), torch.randn(5, 6), torch.randn(2, 8)]
    inv = [None, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]), torch.tensor([0, 0, 1, 1, 1])]
    masks = level_masks(torch.arange(10) < 4, inv, [10, 5, 2])
    preds = dec(feats, inv, masks)
    assert [tuple(p.shape) for p in preds] == [(10, 4), (5, 6), (2, 8)]
    # the deepest prediction reaches the finest level: changing level 2's features changes level 0's
    feats2 = [feats[0], feats[1], feats[2] + torch.randn(2, 8)]
    assert not torch.allclose(dec(feats2, inv, masks)[0], preds[0])
    # ... while the finest features do not change the deeper predictions (bottom-up order)
    feats3 = [feats[0] + torch.randn(10, 4), feats[1], feats[2]]
    assert torch.equal(dec(feats3, inv, masks)[2], preds[2])


def test_chunked_gated_delta_scan_equals_the_sequential_recurrence():
    torch.manual_seed(0)
    h, t, dk, dv = 3, 150, 8, 6
    q, k, v = torch.randn(h, t, dk), F.normalize(torch.randn(h, t, dk), dim=-1), torch.randn(h, t, dv)
    log_alpha, beta = -0.5 * torch.rand(h, t), torch.rand(h, t)
    o_ref, s_ref = naive_gated_delta(q, k, v, log_alpha, beta)
    for chunk in (1, 16, 64, 200):
        o, s = chunked_gated_delta(q, k, v, log_alpha, beta, chunk=chunk)
        assert (o - o_ref).abs().max() < 1e-5 and (s - s_ref).abs().max() < 1e-5, chunk
    # a state carried in: two halves scanned one after the other equal one scan
    o1, s1 = chunked_gated_delta(q[:, :70], k[:, :70], v[:, :70], log_alpha[:, :70], beta[:, :70], chunk=32)
    o2, s2 = chunked_gated_delta(q[:, 70:], k[:, 70:], v[:, 70:], log_alpha[:, 70:], beta[:, 70:], chunk=32, state=s1)
    assert (torch.cat([o1, o2], 1) - o_ref).abs().max() < 1e-5 and (s2 - s_ref).abs().max() < 1e-5
    # the delta rule with beta = 1 and no decay stores v under a unit key exactly: q = k reads it back
    key = F.normalize(torch.randn(1, 1, 4), dim=-1)
    val = torch.randn(1, 1, 3)
    o, _ = naive_gated_delta(key, key, val, torch.zeros(1, 1), torch.ones(1, 1))
    assert torch.allclose(o, val, atol=1e-6)


def test_gated_delta_layer_carries_state_across_samples():
    """The layer is causal over the serialized sequence: a later sample's output depends on
    the earlier one, an earlier sample's never on a later one."""
    torch.manual_seed(1)
    layer = GatedDeltaNet(16, heads=4, chunk=8)
    a, b = torch.randn(20, 16), torch.randn(30, 16)
    ab = layer(torch.cat([a, b]))
    assert torch.allclose(ab[:20], layer(a), atol=1e-5)  # the past does not see the future
    assert not torch.allclose(ab[20:], layer(b), atol=1e-4)  # b's output carries a's state
    block = CSPBlock(16, heads=4, chunk=8)
    x = torch.randn(12, 16)
    assert torch.equal(block(x), x + block.mlp(block.norm2(x)))  # zero-initialised output projection
    order = torch.randperm(12)
    out = serialized_apply(torch.nn.Identity(), x, order)
    assert torch.equal(out, x)  # the permutation is undone


def test_geometry_and_spd_losses():
    p = [torch.zeros(4, 3), torch.ones(2, 3)]
    c = [torch.tensor([[1.0, 0, 0]] * 4), torch.ones(2, 3)]
    assert float(geometry_loss(p, c)) == pytest.approx((1.0 + 0.0) / 2)  # mean over levels of |d|^2
    s, t = torch.zeros(5, 2, requires_grad=True), torch.full((5, 2), 2.0)
    loss = spd_loss(s, t)
    assert float(loss.detach()) == pytest.approx(4.0)
    loss.backward()
    assert torch.allclose(s.grad, torch.full((5, 2), -0.4))  # d/ds mean((s - t)^2) = 2 (s - t) / 10


def test_ema_schedules_and_update():
    assert ema_momentum(0, 100, 0.994, 1.0) == pytest.approx(0.994)
    assert ema_momentum(100, 100, 0.994, 1.0) == pytest.approx(1.0)
    assert ema_momentum(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert teacher_temperature(0, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert teacher_temperature(99, 0.04, 0.07, 30) == pytest.approx(0.04)
    t, s = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        t.weight.fill_(1.0), s.weight.fill_(3.0)
    ema_update(t, s, 0.75)
    assert torch.allclose(t.weight, torch.full((2, 2), 1.5))


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def room(tmp_path_factory):
    from concerto_ros.demo.scene import write_sequence

    tmp = tmp_path_factory.mktemp("objectives")
    return tmp, write_sequence(tmp / "seq", seed=3, num_frames=3, width=80, height=60)


def _run(tmp, seq, objective: str, steps: int = 16):
    from concerto_ros.cli import main

    out = tmp / objective.replace("+", "_")
    rc = main(["train", "ssl", "--source", str(seq), "--output", str(out), "--no-progress",
               "--set", f"cache_dir={tmp / 'cache'}", "--set", f"ssl.objective={objective}",
               "--set", "node.window.num_frames=2", "--set", "node.window.voxel_size=0.05", "--set", "data.window_stride=1",
               "--set", "data.eval_scenes=1", "--set", "views.local_views=1", "--set", "views.max_view_voxels=1000",
               "--set", f"loop.steps={steps}",
               "--set", f"loop.steps_per_epoch={steps}", "--set", "loop.checkpoint_every=0",
               "--set", "optim.warmup=2", "--set", "optim.lr=3e-3"])
    assert rc == 0
    import csv

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    return out, {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k.startswith(("loss", "kl"))}


def _bundle_features_differ_from_random(out, seq):
    """The bundle loads in the node's pipeline and its features are not the random start's."""
    from concerto_ros.config import default_config_path, load_config
    from concerto_ros.models.bundle import load_bundle
    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.train.data import load_recording

    b = load_bundle(out / "bundle.pt")
    assert b.components() == ["concerto"] and b.feature == "all_levels" and b.voxel_size == pytest.approx(0.05)
    node = {"window.num_frames": 2, "window.voxel_size": 0.05}
    cfg = load_config(default_config_path(), {**node, "model.bundle": str(out / "bundle.pt")})
    frame = load_recording({"path": str(seq), "max_frames": 1}, cfg).frames[0].points
    res = PerceptionPipeline(cfg, log=None).process_points(frame)
    rand = PerceptionPipeline(load_config(default_config_path(), {**node, "model.feature": "all_levels",
                                                                  "model.bundle": ""}), log=None).process_points(frame)
    assert res.features.shape == (len(res.coord), 240) and torch.isfinite(res.features).all()
    assert (res.features - rand.features).abs().mean() > 1e-3


def test_msm_end_to_end_loss_falls_and_bundle_loads(room):
    tmp, seq = room
    out, c = _run(tmp, seq, "msm")
    assert set(c) == {"loss", "loss_msm"}
    # measured (CPU, seed 0): 0.85 -> 0.49, the mean of the level cosine losses on masked voxels
    assert c["loss_msm"][-4:].mean() < 0.8 * c["loss_msm"][:4].mean()
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["objective"] == "msm" and 0.0 < s["eval"][-1]["msm_cos"] <= 1.0
    _bundle_features_differ_from_random(out, seq)


def test_pointcsp_end_to_end_kl_and_geometry_fall_and_block_is_saved(room):
    tmp, seq = room
    out, c = _run(tmp, seq, "pointcsp")
    assert set(c) == {"loss", "loss_3d", "kl_3d", "loss_geo"}
    # measured (CPU, seed 0): KL to the teacher 2.6 -> 1.5, geometry 0.94 -> 0.54 m^2 (first / last 4 steps)
    assert c["loss_geo"][-4:].mean() < 0.8 * c["loss_geo"][:4].mean()
    assert c["kl_3d"][-4:].mean() < 0.85 * c["kl_3d"][:4].mean()
    blob = torch.load(out / "csp.pt", weights_only=True)
    assert blob["format"] == "concerto_ros.pointcsp_block/1" and blob["channels"] == 240
    from concerto_ros.train.finetune import load_csp_block

    block = load_csp_block(out / "csp.pt", 240, "cpu")
    assert not torch.equal(block.ssm.out.weight, torch.zeros_like(block.ssm.out.weight))  # trained, not the zero init
    with pytest.raises(ValueError, match="240-d features"):
        load_csp_block(out / "csp.pt", 192, "cpu")
    _bundle_features_differ_from_random(out, seq)


def test_concerto_plus_msm_combines_both_objectives(room):
    tmp, seq = room
    out, c = _run(tmp, seq, "concerto+msm", steps=12)
    assert set(c) == {"loss", "loss_3d", "kl_3d", "loss_2d", "loss_msm"}
    # the logged loss is the weighted sum of the terms (weights 1)
    assert np.allclose(c["loss"], c["loss_3d"] + c["loss_2d"] + c["loss_msm"], atol=1e-4)
    assert (c["loss_2d"] + c["loss_msm"])[-3:].mean() < (c["loss_2d"] + c["loss_msm"])[:3].mean()
    assert math.isfinite(float(c["kl_3d"].mean()))
    _bundle_features_differ_from_random(out, seq)
