"""Teachers: the patch-grid interface, seeding, DINOv2 weights loading, cache keys and the target cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concerto_ros.models.teachers import (DINOV2_SPECS, PatchViT, build_dinov2, build_teacher, seeded_vit,
                                          teacher_cache_key, teacher_grid, teacher_input_size, timm_available)
from concerto_ros.train.data import TargetCache


def test_seeded_vit_interface_and_determinism():
    a, b, c = seeded_vit(0), seeded_vit(0), seeded_vit(1)
    assert (a.patch_size, a.embed_dim) == (14, 64)
    x = torch.rand(2, 3, 28, 42)
    ya = a(x)
    assert ya.shape == (2, 64, 2, 3) and ya.dtype == torch.float32
    assert torch.equal(ya, b(x))
    assert not torch.allclose(ya, c(x))
    assert not any(p.requires_grad for p in a.parameters())
    # the global RNG is untouched by seeding
    torch.manual_seed(5)
    r1 = torch.rand(3)
    torch.manual_seed(5)
    seeded_vit(3)
    assert torch.equal(torch.rand(3), r1)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        a(torch.rand(1, 3, 30, 28))


def test_teacher_input_size_and_grid():
    assert teacher_input_size((480, 640), 14, 224) == (224, 294)  # 640 * 224 / 480 = 298.7 -> 21 patches
    assert teacher_input_size((100, 100), 16, 8) == (16, 16)
    rgb = np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    g = teacher_grid(seeded_vit(0), rgb, short_side=28)
    assert g.shape == (64, 2, 3)


def test_cache_key_depends_on_weights_and_size():
    assert teacher_cache_key(seeded_vit(0), 224) == teacher_cache_key(seeded_vit(0), 224)
    assert teacher_cache_key(seeded_vit(0), 224) != teacher_cache_key(seeded_vit(1), 224)
    assert teacher_cache_key(seeded_vit(0), 224) != teacher_cache_key(seeded_vit(0), 112)


def test_target_cache_reuses_files(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, size=(28, 42, 3), dtype=np.uint8)
    cache = TargetCache(tmp_path, seeded_vit(0), short_side=28)
    g1 = cache.grid("rec", "f0", rgb)
    assert (cache.hits, cache.misses) == (0, 1)
    assert cache.path("rec", "f0").is_file() and cache.teacher_key in str(cache.path("rec", "f0"))
    cache2 = TargetCache(tmp_path, seeded_vit(0), short_side=28)
    g2 = cache2.grid("rec", "f0", np.zeros_like(rgb))  # served from disk, not recomputed
    assert (cache2.hits, cache2.misses) == (1, 0)
    assert torch.equal(g1, g2)
    np.testing.assert_allclose(g1.numpy(), teacher_grid(seeded_vit(0), rgb, 28).numpy(), atol=2e-2, rtol=1e-2)  # fp16


_STATE: dict = {}


def _dinov2_small_state() -> dict:
    """A random state dict in the DINOv2 ViT-S/14 layout (built once per session)."""
    if not _STATE:
        dim, depth, heads = DINOV2_SPECS["vit_small_patch14_dinov2.lvd142m"]
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in PatchViT(14, dim, depth, heads, 4.0, img_size=518).state_dict().items()}
        _STATE.update({k: torch.linspace(-0.02, 0.02, s.numel()).reshape(s) + 1e-4 * i
                       for i, (k, s) in enumerate(shapes.items())})
    return dict(_STATE)


def test_build_dinov2_builtin_loads_official_layout(tmp_path):
    sd = _dinov2_small_state()
    assert sd["pos_embed"].shape == (1, 37 * 37 + 1, 384) and "blocks.11.ls2.gamma" in sd
    blob = {"module." + k: v for k, v in sd.items()}
    blob["module.mask_token"] = torch.zeros(1, 384)  # official DINOv2 files carry it
    path = tmp_path / "dinov2_vits14.pth"
    torch.save({"model": blob}, path)
    t = build_dinov2("dinov2_vits14", path, backend="builtin")
    assert (t.patch_size, t.embed_dim) == (14, 384)
    assert torch.equal(t.state_dict()["blocks.3.attn.qkv.weight"], sd["blocks.3.attn.qkv.weight"])
    y = t(torch.rand(1, 3, 56, 70))
    assert y.shape == (1, 384, 4, 5) and torch.isfinite(y).all()
    # a file with a missing tensor fails with the key named
    del sd["norm.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="norm.weight"):
        build_dinov2("vit_small_patch14_dinov2.lvd142m", tmp_path / "broken.pth", backend="builtin")


def test_teacher_errors(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        build_teacher("dinov2_vits14")
    with pytest.raises(ValueError, match="unknown teacher"):
        build_teacher("clip")
    with pytest.raises(FileNotFoundError):
        build_dinov2("dinov2_vits14", tmp_path / "missing.pth")
    if not timm_available():
        torch.save(_dinov2_small_state(), tmp_path / "w.pth")
        with pytest.raises(ImportError, match="torchvision"):
            build_dinov2("dinov2_vits14", tmp_path / "w.pth", backend="timm")


class Pool(torch.nn.Module):
    """A trivial teacher: mean colour of every 8 x 8 patch."""

    patch_size = 8
    embed_dim = 3

    def forward(self, images):
        return torch.nn.functional.avg_pool2d(images, 8)


def test_any_module_with_the_interface(tmp_path):
    torch.save(Pool(), tmp_path / "pool.pt")
    t = build_teacher(f"module:{tmp_path / 'pool.pt'}")
    rgb = np.full((16, 24, 3), 255, dtype=np.uint8)
    rgb[:, :, 1] = 0
    g = teacher_grid(t, rgb, short_side=16)
    assert g.shape == (3, 2, 3)
    np.testing.assert_allclose(g[:, 0, 0].numpy(), [1.0, 0.0, 1.0], atol=1e-6)
