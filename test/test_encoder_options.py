"""Inference options of the encoder front end: AMP, flash layout, patch size, ScanNet-20 head."""

from types import SimpleNamespace

import pytest
import torch

from concerto_ros.config import HeadConfig
from concerto_ros.models.extractor import (FeatureExtractor, build_heads, check_amp, feature_channels,
                                           inference_overrides)
from concerto_ros.models.presets import build_encoder
from concerto_ros.recordings.labels import SCANNET20_CLASS_NAMES, resolve_class_names


def _model_cfg(**kw):
    base = dict(preset="tiny", checkpoint="", seed=0, sparse_conv_backend="auto", feature="concat3")
    base.update(kw)
    return SimpleNamespace(**base)


def test_amp_is_cuda_only_with_a_clear_message():
    assert check_amp("none", "cpu") is None
    with pytest.raises(ValueError, match="model.amp 'bf16' needs a CUDA device, got 'cpu'"):
        check_amp("bf16", "cpu")
    with pytest.raises(ValueError, match="unknown model.amp 'fp8'"):
        check_amp("fp8", "cpu")
    assert check_amp("fp16", "cuda:0") is torch.float16  # a dtype check, no GPU touched
    assert check_amp("bf16", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FeatureExtractor.from_config(_model_cfg(amp="fp16"), device="cpu")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FeatureExtractor(build_encoder("tiny"), device="cpu", amp="bf16")


def test_flash_and_patch_size_overrides_reach_the_encoder():
    cpu = inference_overrides("cpu")
    assert cpu["enable_flash"] is False and cpu["shuffle_orders"] is False
    assert cpu["drop_path"] == 0.0 and cpu["enc_mode"] is True and "enc_patch_size" not in cpu
    assert inference_overrides("cpu", flash="on")["enable_flash"] is True
    assert inference_overrides("cuda", flash="off")["enable_flash"] is False
    with pytest.raises(ValueError, match="unknown model.flash"):
        inference_overrides("cpu", flash="yes")
    ext = FeatureExtractor.from_config(_model_cfg(flash="on", patch_size=48, sparse_conv_backend="torch"))
    cfg = ext.encoder.config
    assert cfg.enable_flash and cfg.enc_patch_size == (48,) * 5 and not ext.encoder.training
    assert ext.encoder.enc.enc0.block0.attn.patch_size_max == 48
    assert ext.encoder.enc.enc0.block0.cpe[0].backend == "torch"
    # settings absent from an older config object fall back to the defaults
    plain = FeatureExtractor.from_config(_model_cfg())
    assert plain.amp == "none" and plain.encoder.config.enc_patch_size == (64,) * 5
    assert not plain.encoder.config.enable_flash


def test_released_scannet20_head_loads_with_its_class_names(tmp_path):
    assert len(SCANNET20_CLASS_NAMES) == 20
    assert SCANNET20_CLASS_NAMES[:3] == ("wall", "floor", "cabinet")
    assert SCANNET20_CLASS_NAMES[-1] == "other furniture" and "shower curtain" in SCANNET20_CLASS_NAMES
    d = feature_channels((64, 128, 256, 512, 768), "all_levels")
    assert d == 1728
    torch.manual_seed(0)
    w, b = torch.randn(20, d), torch.randn(20)
    path = tmp_path / "concerto_large_linear_prob_head_sc.pth"
    torch.save({"config": {"backbone_out_channels": 1728, "num_classes": 20},
                "state_dict": {"seg_head.weight": w, "seg_head.bias": b}}, path)
    logs = []
    head = build_heads(HeadConfig(checkpoint=str(path)), in_channels=1728, log=logs.append)
    assert head.class_names == list(SCANNET20_CLASS_NAMES)
    assert torch.equal(head.seg_head.weight, w) and torch.equal(head.seg_head.bias, b)
    assert any("ScanNet-20" in m for m in logs)
    feat = torch.zeros(2, 1728)
    feat[0] = w[4]  # w4 . w4 ~ 1728 while w_j . w4 ~ N(0, 1728): label 4 = chair
    assert head.class_names[int(head.predict(feat).labels[0])] == "chair"
    # explicit names of the right length win over the ScanNet-20 default
    mine = [f"k{i}" for i in range(20)]
    assert build_heads(HeadConfig(checkpoint=str(path), class_names=mine), in_channels=1728).class_names == mine
    # the concat3 width of concerto_large is not what the released head reads
    with pytest.raises(ValueError, match="expects 1728-d features but the encoder gives 1536-d.*all_levels"):
        build_heads(HeadConfig(checkpoint=str(path)), in_channels=1536)


def test_scannet20_shorthand_expands():
    assert resolve_class_names(["scannet20"]) == list(SCANNET20_CLASS_NAMES)
    assert resolve_class_names("ScanNet20") == list(SCANNET20_CLASS_NAMES)
    assert resolve_class_names(["wall", "floor"]) == ["wall", "floor"]
    assert resolve_class_names(None) is None
    head = build_heads(HeadConfig(class_names=["scannet20"]), in_channels=80)
    assert head.num_classes == 20 and head.class_names[1] == "floor"


def test_start_up_fails_on_a_checkpoint_of_another_size(tmp_path):
    from concerto_ros.models.checkpoint import CheckpointMismatchError

    torch.manual_seed(0)
    path = tmp_path / "pretrain-tiny.pth"
    sd = {"module.student.backbone." + k: v for k, v in build_encoder("tiny").state_dict().items()}
    torch.save({"epoch": 1, "state_dict": sd}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        FeatureExtractor.from_config(_model_cfg(checkpoint=str(path), preset="concerto_large_video"))
    msg = str(err.value)
    assert "pretrain-tiny.pth" in msg and "preset 'concerto_large_video'" in msg
    assert "shape mismatches" in msg and "embedding.stem.linear.weight: checkpoint [16, 9] vs model [64, 9]" in msg
    logs = []
    ext = FeatureExtractor.from_config(_model_cfg(checkpoint=str(path), preset="tiny"), log=logs.append)
    assert torch.equal(ext.encoder.embedding.stem.linear.weight,
                       sd["module.student.backbone.embedding.stem.linear.weight"])
    assert "sparse conv backend 'torch'" in logs[0] and "amp none" in logs[0]
