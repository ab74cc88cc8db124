"""Frozen 2D teachers for Cross4D distillation: image batch in, patch-feature grid out.

The interface (:class:`Teacher`) is deliberately small so any ``torch.nn.Module`` fits:

* ``forward(images)``: ``images (B, 3, H, W) float32`` RGB in ``[0, 1]`` with ``H`` and ``W``
  multiples of ``patch_size`` -> ``(B, C, H / patch_size, W / patch_size)`` patch features
  (normalisation, e.g. ImageNet mean/std, happens inside the teacher);
* attributes ``patch_size`` (pixels) and ``embed_dim`` (C).

Provided teachers:

* DINOv2 ViT-S/14 and ViT-B/14 (Oquab et al., arXiv 2304.07193; timm names
  ``vit_small_patch14_dinov2.lvd142m`` / ``vit_base_patch14_dinov2.lvd142m``), built with
  ``timm`` when it imports, else with :class:`PatchViT` below, whose parameter names are
  those of timm and of the official DINOv2 checkpoints (``patch_embed.proj``,
  ``cls_token``, ``pos_embed``, ``blocks.i.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
  mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``), so the same local weights file loads in both.
  Weights always come from a local file (nothing is downloaded).
* :func:`seeded_vit`: a small randomly initialised :class:`PatchViT` with a fixed seed, for
  tests and for the distillation demo on real recordings (no pretrained weights needed).

:func:`teacher_grid` prepares a uint8 image (resize to the teacher input size) and runs the
teacher; :func:`teacher_cache_key` names a teacher for the on-disk target cache.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Teacher",
    "PatchViT",
    "DINOV2_SPECS",
    "seeded_vit",
    "build_dinov2",
    "build_teacher",
    "load_weights_file",
    "timm_available",
    "teacher_input_size",
    "teacher_grid",
    "teacher_cache_key",
    "TEACHER_NAMES",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Teacher(Protocol):
    """What a teacher provides (see the module docstring)."""

    patch_size: int
    embed_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class _LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: Optional[float]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.ls1 = _LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = _LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchViT(nn.Module):
    """A plain ViT (DINOv2 layout) returning the patch-token grid.

    Args:
        patch_size: pixels per patch side.
        embed_dim: token width C.
        depth, num_heads, mlp_ratio: transformer size.
        img_size: the pre-training input size (pixels, square); ``pos_embed`` has
            ``(img_size / patch_size)^2 + 1`` rows and is bicubically resized for other grids.
        init_values: layer-scale init (DINOv2: 1e-5; None = no layer scale).
        normalize: apply ImageNet mean/std to the ``[0, 1]`` input.

    ``forward(images (B, 3, H, W) float in [0, 1]) -> (B, C, H/p, W/p) float32``.
    """

    def __init__(self, patch_size: int = 14, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, img_size: int = 518, init_values: Optional[float] = 1e-5,
                 normalize: bool = True):
        super().__init__()
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.base_grid = int(img_size) // self.patch_size
        self.normalize = normalize
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.base_grid ** 2 + 1, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio, init_values) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _pos(self, hp: int, wp: int) -> torch.Tensor:
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if (hp, wp) != (self.base_grid, self.base_grid):
            g = grid.reshape(1, self.base_grid, self.base_grid, -1).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=(hp, wp), mode="bicubic", align_corners=False)
            grid = g.permute(0, 2, 3, 1).reshape(1, hp * wp, -1)
        return torch.cat([cls_pos, grid], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"PatchViT: image size {h}x{w} is not a multiple of the patch size {p}")
        x = images.float()
        if self.normalize:
            x = (x - self.mean) / self.std
        x = self.patch_embed.proj(x)  # (B, C, Hp, Wp)
        hp, wp = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], 1) + self._pos(hp, wp)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)[:, 1:]
        return x.transpose(1, 2).reshape(b, self.embed_dim, hp, wp)


#: DINOv2 sizes: timm name -> (embed_dim, depth, num_heads)
DINOV2_SPECS: dict[str, tuple[int, int, int]] = {
    "vit_small_patch14_dinov2.lvd142m": (384, 12, 6),
    "vit_base_patch14_dinov2.lvd142m": (768, 12, 12),
}
#: short names accepted by :func:`build_teacher`
TEACHER_NAMES = {"dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
                 "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m"}


def seeded_vit(seed: int = 0, embed_dim: int = 64, depth: int = 2, num_heads: int = 2, patch_size: int = 14,
               img_size: int = 224) -> PatchViT:
    """A small randomly initialised :class:`PatchViT` (eval mode, no grad) made with ``seed``
    without touching the global RNG. Its features are a fixed nonlinear function of local
    image content plus position: a reproducible stand-in teacher for tests and demos."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        vit = PatchViT(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                       img_size=img_size, init_values=None)
    vit.name = f"seeded_vit_s{seed}_d{embed_dim}x{depth}_p{patch_size}"
    return vit.eval().requires_grad_(False)


def timm_available() -> bool:
    """True when ``import timm`` works (it needs a torchvision matching torch)."""
    try:
        importlib.import_module("timm")
        return True
    except Exception:  # noqa: BLE001 - ImportError, or torchvision operator errors
        return False


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` (needs the ``safetensors`` package) or a torch
    file (``.pth``/``.pt``/``.bin``; a ``{"state_dict"|"model"|"teacher": ...}`` wrapper is
    unwrapped, ``module.``/``backbone.`` prefixes stripped).

    Raises:
        FileNotFoundError: missing file. ImportError: ``.safetensors`` without the package.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ImportError("reading .safetensors needs the 'safetensors' package (pip install safetensors)") from exc
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "teacher"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
    out = {}
    for k, v in sd.items():
        for pre in ("module.", "backbone."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def build_dinov2(name: str, weights: str | Path, backend: str = "auto", device: torch.device | str = "cpu") -> nn.Module:
    """A frozen DINOv2 teacher from a local weights file.

    Args:
        name: ``vit_small_patch14_dinov2.lvd142m`` / ``vit_base_patch14_dinov2.lvd142m`` (or
            ``dinov2_vits14`` / ``dinov2_vitb14``).
        weights: local file with timm or official DINOv2 parameter names.
        backend: ``timm`` (``timm.create_model(name, pretrained=False)``; raises ImportError
            when timm cannot be imported), ``builtin`` (:class:`PatchViT` with the same
            layout), or ``auto`` (timm when importable, else builtin).

    Returns:
        module with ``patch_size = 14``, ``embed_dim`` and the :class:`Teacher` forward.

    Raises:
        ValueError: unknown name or backend; weights that do not fit (missing/unexpected
            keys listed). ImportError: ``backend="timm"`` without a working timm.
    """
    name = TEACHER_NAMES.get(name, name)
    if name not in DINOV2_SPECS:
        raise ValueError(f"unknown DINOv2 teacher {name!r}; known: {sorted(DINOV2_SPECS)} or {sorted(TEACHER_NAMES)}")
    if backend not in ("auto", "timm", "builtin"):
        raise ValueError(f"backend must be auto, timm or builtin, got {backend!r}")
    sd = load_weights_file(weights)
    sd.pop("mask_token", None)  # official DINOv2 checkpoints carry the iBOT mask token
    use_timm = backend == "timm" or (backend == "auto" and timm_available())
    if use_timm:
        try:
            import timm
        except Exception as exc:  # noqa: BLE001
            raise ImportError(
                "the DINOv2 teacher with backend='timm' needs 'timm' (pip install timm==1.0.31), and timm needs a "
                "torchvision built for this torch (install it from the same index as torch, e.g. "
                "pip install torchvision --index-url https://download.pytorch.org/whl/cpu); "
                f"or use backend='builtin'. Import failed with: {exc}") from exc
        model = _TimmPatchGrid(timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True))
        target = model.model
    else:
        dim, depth, heads = DINOV2_SPECS[name]
        n_pos = sd["pos_embed"].shape[1] - 1 if "pos_embed" in sd else 37 * 37
        with torch.device("meta"):  # no random init of 22M+ parameters that are overwritten anyway
            model = PatchViT(14, dim, depth, heads, 4.0, img_size=int(round(math.sqrt(n_pos))) * 14, init_values=1e-5)
        model.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        model.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        target = model
    try:
        res = target.load_state_dict(sd, strict=False, assign=not use_timm)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"teacher weights {weights} do not fit {name}: {exc}") from None
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(f"teacher weights {weights} do not fit {name}: missing {res.missing_keys[:10]}"
                         f"{'...' if len(res.missing_keys) > 10 else ''}, unexpected {res.unexpected_keys[:10]}")
    model.name = name
    return model.to(device).eval().requires_grad_(False)


class _TimmPatchGrid(nn.Module):
    """Adapts a timm ViT (``forward_features`` -> tokens) to the teacher interface."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.embed_dim = int(model.embed_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        b, _, h, w = images.shape
        tok = self.model.forward_features((images.float() - self.mean) / self.std)
        tok = tok[:, getattr(self.model, "num_prefix_tokens", 1):]
        return tok.transpose(1, 2).reshape(b, self.embed_dim, h // self.patch_size, w // self.patch_size)


def build_teacher(name: str, weights: str | Path | None = None, seed: int = 0, device: torch.device | str = "cpu",
                  backend: str = "auto", **kwargs: Any) -> nn.Module:
    """Teacher by name: ``seeded_vit`` (``kwargs``: embed_dim, depth, num_heads, patch_size),
    a DINOv2 name (needs ``weights``), or ``module:path/to/file.pt`` — a whole pickled
    ``nn.Module`` with the teacher interface (``torch.load(..., weights_only=False)``: only
    load files you trust).

    Raises:
        ValueError: unknown name, or a DINOv2 teacher without ``weights``.
    """
    if name == "seeded_vit":
        return seeded_vit(seed=seed, **kwargs).to(device)
    if name.startswith("module:"):
        mod = torch.load(name[len("module:"):], map_location="cpu", weights_only=False)
        if not isinstance(mod, nn.Module) or not hasattr(mod, "patch_size") or not hasattr(mod, "embed_dim"):
            raise ValueError(f"{name}: not an nn.Module with patch_size and embed_dim")
        mod.name = getattr(mod, "name", Path(name[7:]).stem)
        return mod.to(device).eval().requires_grad_(False)
    if TEACHER_NAMES.get(name, name) in DINOV2_SPECS:
        if not weights:
            raise ValueError(f"teacher {name} needs a local weights file (teacher.weights); nothing is downloaded")
        return build_dinov2(name, weights, backend=backend, device=device)
    raise ValueError(f"unknown teacher {name!r}: use seeded_vit, {sorted(TEACHER_NAMES)}, {sorted(DINOV2_SPECS)} "
                     "or module:FILE.pt")


def teacher_input_size(image_shape: tuple[int, int], patch_size: int, short_side: int) -> tuple[int, int]:
    """Teacher input ``(H', W')``: the short side scaled to ``short_side`` pixels, aspect kept,
    both rounded to the nearest multiple of ``patch_size`` (at least one patch)."""
    h, w = image_shape
    s = short_side / min(h, w)
    return (max(patch_size, int(round(h * s / patch_size)) * patch_size),
            max(patch_size, int(round(w * s / patch_size)) * patch_size))


@torch.no_grad()
def teacher_grid(teacher: nn.Module, rgb: np.ndarray, short_side: int = 224,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Patch features of one image.

    Args:
        teacher: see :class:`Teacher`.
        rgb: ``(H, W, 3) uint8`` RGB.
        short_side: teacher input short side, pixels (rounded to the patch size).

    Returns:
        ``(C, Hp, Wp) float32`` on CPU.
    """
    size = teacher_input_size(rgb.shape[:2], int(teacher.patch_size), short_side)
    x = torch.as_tensor(np.ascontiguousarray(rgb), device=device).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return teacher(x)[0].float().cpu()


def teacher_cache_key(teacher: nn.Module, short_side: int) -> str:
    """``<name>-<sha1 of the parameters, 12 hex>-s<short_side>``: changes whenever the
    teacher's weights or input size change."""
    h = hashlib.sha1()
    for k, v in sorted(teacher.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    name = getattr(teacher, "name", type(teacher).__name__)
    return f"{name}-{h.hexdigest()[:12]}-s{int(short_side)}"
