"""Linear semantic head (labels, confidences, checkpoints) and PCA colouring."""

import numpy as np
import pytest
import torch

from concerto_ros.config import HeadConfig
from concerto_ros.models.extractor import build_heads, feature_channels
from concerto_ros.models.heads import LinearSemanticHead, pca_colors


def test_head_labels_are_the_argmax_and_confidence_the_softmax():
    head = LinearSemanticHead(4, ["a", "b", "c"])
    with torch.no_grad():
        head.seg_head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
        head.seg_head.bias.zero_()
    feat = torch.tensor([[2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1.0]])
    pred = head.predict(feat)
    np.testing.assert_array_equal(pred.labels, [0, 2, 0])
    assert pred.labels.dtype == np.int32 and pred.confidence.dtype == np.float32
    e2 = np.exp(2.0)
    np.testing.assert_allclose(pred.confidence[0], e2 / (e2 + 2), rtol=1e-6)
    np.testing.assert_allclose(pred.confidence[2], 1 / 3, rtol=1e-6)  # a tie: uniform
    with pytest.raises(ValueError, match="expects 4-d features, got 5-d"):
        head.predict(torch.zeros(2, 5))


def test_released_head_format_loads_and_mismatches_fail_clearly(tmp_path):
    names = [f"c{i}" for i in range(5)]
    torch.manual_seed(0)
    w, b = torch.randn(5, 192), torch.randn(5)
    path = tmp_path / "head.pth"
    torch.save({"config": {"backbone_out_channels": 192, "num_classes": 5},
                "state_dict": {"seg_head.weight": w, "seg_head.bias": b}}, path)
    head = build_heads(HeadConfig(checkpoint=str(path), class_names=names), in_channels=192)
    assert head.class_names == names
    torch.testing.assert_close(head.seg_head.weight, w)
    with pytest.raises(ValueError, match="expects 192-d features but the encoder gives 80-d"):
        build_heads(HeadConfig(checkpoint=str(path), class_names=names), in_channels=80)
    with pytest.raises(ValueError, match="5 classes but 2 class names"):
        build_heads(HeadConfig(checkpoint=str(path), class_names=["a", "b"]), in_channels=192)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_heads(HeadConfig(checkpoint=str(tmp_path / "nope.pth")), in_channels=192)


def test_feature_widths_follow_the_concerto_layouts():
    # small / base / large (models.md): concat of the last three levels, and all five
    assert feature_channels((32, 64, 128, 256, 512), "concat3") == 896
    assert feature_channels((48, 96, 192, 384, 512), "concat3") == 1088
    assert feature_channels((64, 128, 256, 512, 768), "concat3") == 1536
    assert feature_channels((48, 96, 192, 384, 512), "all_levels") == 1232
    assert feature_channels((64, 128, 256, 512, 768), "all_levels") == 1728
    with pytest.raises(ValueError):
        feature_channels((1, 2, 3), "mean")


def test_pca_colours_separate_clusters_and_are_stable_with_a_basis():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (200, 16)) + 5.0 * np.eye(16)[0]
    b = rng.normal(0, 0.1, (200, 16)) - 5.0 * np.eye(16)[0]
    feats = np.concatenate([a, b]).astype(np.float32)
    colors, basis = pca_colors(feats, return_basis=True)
    assert colors.shape == (400, 3) and colors.dtype == np.uint8
    # the first component separates the two clusters: red channel far apart
    assert abs(float(colors[:200, 0].mean()) - float(colors[200:, 0].mean())) > 200
    again = pca_colors(feats[::-1].copy(), basis=basis)
    np.testing.assert_array_equal(again, colors[::-1])


def test_head_checkpoint_records_the_fused_feature_layout(tmp_path):
    from concerto_ros.models.extractor import save_head

    head = LinearSemanticHead(192 + 128, ["a", "b"])
    path = save_head(head, tmp_path / "h.pth", feature_dims={"concerto": 192, "cross4d": 128})
    cfg = HeadConfig(checkpoint=str(path), class_names=["a", "b"])
    ok = build_heads(cfg, in_channels=320, feature_dims={"concerto": 192, "cross4d": 128})
    assert ok.class_names == ["a", "b"] and ok.feature_dims == {"concerto": 192, "cross4d": 128}
    # same total width, other split: refused at start-up with both layouts named
    with pytest.raises(ValueError, match=r"trained on fused features .*'cross4d': 128.* node gives .*'cross4d': 64"):
        build_heads(cfg, in_channels=320, feature_dims={"concerto": 256, "cross4d": 64})
