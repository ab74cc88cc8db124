"""Checkpoint layouts understood by load_encoder, and its error reporting."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from concerto_ros.models.checkpoint import (
    CheckpointFormatError,
    CheckpointMismatchError,
    load_encoder,
    read_checkpoint,
    save_encoder,
)
from concerto_ros.models.presets import build_encoder
from concerto_ros.models.ptv3 import PointBatch


@pytest.fixture(scope="module")
def seeded():
    torch.manual_seed(1234)
    model = build_encoder("tiny")
    with torch.no_grad():  # non-trivial norms and biases too
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    gen = np.random.default_rng(0)
    grid = np.unique(gen.integers(0, 40, size=(3000, 3)), axis=0)
    coord = grid.astype(np.float32) * 0.02
    feat = np.concatenate([coord, gen.random((len(grid), 6), dtype=np.float32)], axis=1)
    return PointBatch.from_arrays(coord, grid, feat, [len(grid) // 2, len(grid)])


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _prefixed(model, prefix):
    return OrderedDict((prefix + k, v.clone()) for k, v in model.state_dict().items())


def test_released_layout_roundtrip(seeded, batch, tmp_path):
    path = tmp_path / "tiny.pth"
    save_encoder(seeded, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"config", "state_dict"}
    assert "sparse_conv_backend" not in raw["config"]  # reference-constructor compatible
    model = load_encoder(path)
    assert not model.training and model.config.enc_channels == (16, 32, 48, 64, 80)
    assert _same_weights(model, seeded)
    with torch.inference_mode():
        assert torch.equal(model(batch).last_feat, seeded(batch).last_feat)


def test_training_checkpoint_with_student_prefix(seeded, tmp_path):
    path = tmp_path / "train.pth"
    sd = _prefixed(seeded, "module.student.backbone.")
    sd.update(_prefixed(seeded, "module.teacher.backbone."))
    sd["module.student.head.weight"] = torch.zeros(3, 3)
    torch.save({"epoch": 7, "state_dict": sd, "best_metric_value": 0.5}, path)
    info = read_checkpoint(path)
    assert info.layout == "training" and info.prefix == "module.student.backbone."
    assert _same_weights(load_encoder(path, preset="tiny"), seeded)
    with pytest.raises(CheckpointFormatError, match="has no 'config'; pass a preset") as err:
        load_encoder(path)
    assert isinstance(err.value, ValueError)
    assert "train.pth" in str(err.value)


def test_training_checkpoint_under_model_key(seeded, tmp_path):
    path = tmp_path / "model_key.pth"
    torch.save({"model": _prefixed(seeded, "module.backbone.")}, path)
    assert read_checkpoint(path).prefix == "module.backbone."
    assert _same_weights(load_encoder(path, preset="tiny"), seeded)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict(seeded, tmp_path, prefix):
    path = tmp_path / "bare.pth"
    torch.save(_prefixed(seeded, prefix), path)
    info = read_checkpoint(path)
    assert info.layout == "bare" and info.config is None and info.prefix == prefix
    assert _same_weights(load_encoder(path, preset="golden_a"), seeded)


def test_mask_token_is_inferred_from_the_checkpoint(seeded, tmp_path):
    path = tmp_path / "masked.pth"
    sd = _prefixed(seeded, "module.student.backbone.")
    sd["module.student.backbone.embedding.mask_token"] = torch.full((1, 16), 0.5)
    torch.save({"state_dict": sd}, path)
    model = load_encoder(path, preset="tiny")
    assert model.config.mask_token
    assert torch.equal(model.embedding.mask_token, torch.full((1, 16), 0.5))


def test_mismatch_raises_with_details(seeded, tmp_path):
    sd = OrderedDict(seeded.state_dict())
    del sd["enc.enc2.block0.attn.qkv.weight"]
    sd["enc.enc9.block0.extra"] = torch.zeros(2)
    sd["embedding.stem.linear.weight"] = torch.zeros(16, 6)
    path = tmp_path / "broken.pth"
    torch.save({"config": seeded.config.to_dict(), "state_dict": sd}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_encoder(path)
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert "broken.pth" in msg
    assert "1 missing, 1 unexpected, 1 shape mismatches" in msg
    assert "enc.enc2.block0.attn.qkv.weight" in msg
    assert "enc.enc9.block0.extra" in msg
    assert "embedding.stem.linear.weight: checkpoint [16, 6] vs model [16, 9]" in msg
    assert err.value.diff.missing == ["enc.enc2.block0.attn.qkv.weight"]
    # non-strict: the matching tensors load, the rest stays initialised
    model = load_encoder(path, strict=False)
    assert torch.equal(model.enc.enc0.block0.cpe[0].weight, seeded.enc.enc0.block0.cpe[0].weight)
    assert model.embedding.stem.linear.weight.shape == (16, 9)


def test_wrong_preset_is_a_mismatch(seeded, tmp_path):
    path = tmp_path / "tiny_bare.pth"
    torch.save(seeded.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_encoder(path, preset="small")


def test_unknown_layouts_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_encoder(tmp_path / "nope.pth")
    path = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "notes": "x"}, path)
    with pytest.raises(CheckpointFormatError, match="unknown layout"):
        load_encoder(path, preset="tiny")
    with pytest.raises(KeyError, match="unknown encoder preset"):
        load_encoder(path, preset="gigantic")


def test_overrides_apply_after_inference_defaults(seeded, tmp_path):
    path = tmp_path / "flash.pth"
    cfg = seeded.config.to_dict()
    cfg.update(enable_flash=True, shuffle_orders=True, drop_path=0.3)
    torch.save({"config": cfg, "state_dict": seeded.state_dict()}, path)
    model = load_encoder(path)
    assert (model.config.enable_flash, model.config.shuffle_orders, model.config.drop_path) == (
        False,
        False,
        0.0,
    )
    model = load_encoder(path, overrides={"enc_patch_size": 128, "sparse_conv_backend": "torch"})
    assert model.config.enc_patch_size == (128,) * 5
    assert model.enc.enc0.block0.cpe[0].backend == "torch"
    with pytest.raises(ValueError, match="unknown encoder config keys \\['patch'\\]"):
        load_encoder(path, overrides={"patch": 3})
