"""Cross4D point ops (FPS, ball query, grouping, propagation) and encoder invariances/presets."""

from __future__ import annotations

import pytest
import torch

from concerto_ros.models.cross4d import (CROSS4D_PRESETS, Cross4DConfig, ball_query, build_cross4d,
                                         count_parameters, cross4d_config, farthest_point_sample, group_points,
                                         propagate)


def _line(xs):
    return torch.tensor([[[x, 0.0, 0.0] for x in xs]])


def test_fps_hand_values():
    pts = _line([0.0, 1.0, 2.0, 10.0, 4.0])
    # start at 0; farthest is 10 (idx 3); then min-distances 0,1,2,0,4 (to {0,10}: |4-0|=4, |4-10|=6) -> idx 4
    # then {0,10,4}: 1->1, 2->2 -> idx 2
    assert farthest_point_sample(pts, 4).tolist() == [[0, 3, 4, 2]]
    # invalid points are never picked; the first valid point starts
    valid = torch.tensor([[False, True, True, False, True]])
    assert farthest_point_sample(pts, 3, valid).tolist() == [[1, 4, 2]]
    # more picks than distinct points: picks repeat the first one
    assert farthest_point_sample(_line([0.0, 5.0]), 4).tolist() == [[0, 1, 0, 0]]


def test_ball_query_and_grouping_hand_values():
    pts = _line([0.0, 0.1, 0.25, 1.0])
    centres = _line([0.0, 0.9])
    idx, mask = ball_query(centres, pts, radius=0.2, k=3)
    # centre 0: 0 (d=0), 0.1 (d=.1) inside; 0.25 outside -> replaced by the nearest, masked
    assert idx[0, 0].tolist() == [0, 1, 0] and mask[0, 0].tolist() == [True, True, False]
    # centre 0.9: only 1.0 (d=.1) inside
    assert idx[0, 1].tolist() == [3, 3, 3] and mask[0, 1].tolist() == [True, False, False]
    g = group_points(pts, idx)
    assert g.shape == (1, 2, 3, 3)
    assert g[0, 0, :, 0].tolist() == pytest.approx([0.0, 0.1, 0.0])
    # k larger than N pads with the nearest (masked)
    idx2, mask2 = ball_query(centres, pts[:, :2], radius=5.0, k=4)
    assert idx2.shape == (1, 2, 4) and mask2[0, 0].tolist() == [True, True, False, False]


def test_propagate_inverse_distance():
    anchors = _line([0.0, 1.0, 5.0])
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [7.0, 7.0]]])
    q = _line([0.0, 0.5, 0.25])
    out = propagate(q, anchors, feats, k=2)
    assert out[0, 0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)  # on an anchor
    assert out[0, 1].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)  # midway
    # d = .25 and .75 -> weights 4 and 4/3, normalised 0.75 / 0.25
    assert out[0, 2].tolist() == pytest.approx([0.75, 0.25], abs=1e-6)


def test_propagate_weight_matrix_equals_the_gathered_sum(monkeypatch):
    """Few anchors: one GEMM with a (Q, A) weight matrix; many: gather + weighted sum. Same result."""
    import concerto_ros.models.cross4d as c4

    g = torch.Generator().manual_seed(3)
    q, a, f = torch.rand(2, 500, 3, generator=g), torch.rand(2, 128, 3, generator=g), torch.randn(2, 128, 16, generator=g)
    gemm = propagate(q, a, f, k=3)
    monkeypatch.setattr(c4, "DENSE_WEIGHTS_MAX_ANCHORS", 0)
    torch.testing.assert_close(propagate(q, a, f, k=3), gemm, atol=1e-5, rtol=1e-5)


def test_dense_output_in_chunks_and_bf16(monkeypatch):
    """Query chunks give the same features as one pass; bf16 autocast (the CPU overlay's
    cross4d.precision: auto) stays within 2% of fp32 per point."""
    import concerto_ros.models.cross4d as c4
    from concerto_ros.models.precision import autocast, resolve_precision

    torch.manual_seed(0)
    enc = build_cross4d("tiny", seed=1).eval()
    pts, times = _clip(b=1, t=3, n=96)
    query = torch.rand(1, 3, 700, 3) * 2.0
    with torch.no_grad():
        one = enc(pts, times, query=query).point_feat
        monkeypatch.setattr(c4, "DENSE_CHUNK", 256)  # 3 chunks, the last one partial
        chunked = enc(pts, times, query=query).point_feat
        torch.testing.assert_close(chunked, one, atol=1e-5, rtol=1e-5)
        with autocast("bf16"):
            half = enc(pts, times, query=query).point_feat.float()
    rel = (half - one).norm(dim=-1) / one.norm(dim=-1)
    assert one.shape == (1, 3, 700, enc.config.dim) and float(rel.max()) < 0.02
    assert resolve_precision("fp32") == "fp32" and resolve_precision("auto") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16; got 'int8'"):
        resolve_precision("int8")


def _clip(b=2, t=3, n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(b, t, n, 3, generator=g) * 2.0
    times = torch.tensor([[0.0, 0.1, 0.2]]).repeat(b, 1)[:, :t] + 3.0
    return pts, times


def test_encoder_shapes_and_invariances():
    enc = build_cross4d("tiny", seed=0).eval()
    pts, times = _clip()
    with torch.no_grad():
        out = enc(pts, times)
        assert out.point_feat.shape == (2, 3, 96, 32)
        assert out.tokens.shape == (2, 3, 32, 32) and out.anchors.shape == (2, 3, 32, 3)
        assert out.global_feat.shape == (2, 32)
        # anchors are input points of their frame
        d = (out.anchors[0, 1][:, None] - pts[0, 1][None]).norm(dim=-1).min(-1).values
        assert float(d.max()) < 1e-5
        # translation of the whole clip and a shift of the time origin change nothing
        out2 = enc(pts + torch.tensor([10.0, -3.0, 2.0]), times + 100.0)
        # (float32 rounding of the shifted coordinates may flip a ball-query boundary case)
        diff = (out2.point_feat - out.point_feat).abs()
        assert float(diff.mean()) < 1e-4 and float(diff.max()) < 2e-2
        # features at explicit query points equal those of the same input points
        q = pts[:, :, :10]
        out3 = enc(pts, times, query=q)
        torch.testing.assert_close(out3.point_feat, out.point_feat[:, :, :10], atol=1e-5, rtol=1e-5)
        # the clip is one sample per batch row: row 0 does not depend on row 1
        out4 = enc(pts[:1], times[:1])
        torch.testing.assert_close(out4.point_feat[0], out.point_feat[0], atol=1e-5, rtol=1e-5)


def test_encoder_colour_channels_and_errors():
    enc = build_cross4d("tiny", seed=0, point_channels=3).eval()
    pts, times = _clip(b=1)
    with pytest.raises(ValueError, match="feats"):
        enc(pts, times)
    with pytest.raises(ValueError, match="times"):
        enc(pts, times[:, :2], feats=torch.rand(1, 3, 96, 3))
    col = torch.rand(1, 3, 96, 3)
    with torch.no_grad():
        a = enc(pts, times, feats=col).point_feat
        b = enc(pts, times, feats=1.0 - col).point_feat
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError):
        Cross4DConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown Cross4D preset"):
        cross4d_config("huge")


def test_gradients_reach_every_parameter():
    enc = build_cross4d("tiny", seed=0)
    pts, times = _clip(b=1)
    enc(pts, times).point_feat.square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_preset_parameter_counts():
    # counted once and written into the docs/reply; a change here is a deliberate architecture change
    counts = {name: count_parameters(build_cross4d(name)) for name in CROSS4D_PRESETS}
    assert counts == {"tiny": 15_712, "small": 895_488, "base": 11_543_808}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    enc = build_cross4d("tiny", seed=0).eval()
    pts, times = _clip(b=1)
    with torch.no_grad():
        a = enc(pts, times).point_feat
        b = enc.cuda()(pts.cuda(), times.cuda()).point_feat.cpu()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_info_lists_the_presets(capsys):
    import argparse

    from concerto_ros.cli import info

    parser = argparse.ArgumentParser()
    info.register(parser.add_subparsers())
    args = parser.parse_args(["info", "--cross4d-only"])
    assert args.func(args) == 0
    assert "Cross4D encoder presets" in capsys.readouterr().out
    rows = {r[0]: r for r in info.cross4d_rows()}
    assert rows["tiny"][1:4] == (32, 1, 2) and rows["small"][-1] == 895_488 and rows["base"][-1] == 11_543_808
