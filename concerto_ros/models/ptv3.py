"""Point Transformer V3 encoder as used by Sonata and Concerto (encoder mode, no decoder).

Re-implementation of the network of Wu et al., "Point Transformer V3: Simpler, Faster,
Stronger" (CVPR 2024) in the "encoder mode" variant used by Sonata and by Zhang et al.,
"Concerto: Joint 2D-3D Self-Supervised Learning Emerges Spatial Representations"
(arXiv 2510.23607). Module and parameter names follow the paper and the released
checkpoints (``embedding``, ``enc.enc{s}.down`` = :class:`GridPooling`,
``enc.enc{s}.block{i}`` = :class:`Block` with ``cpe`` = :class:`xCPE`, ``attn`` =
:class:`SerializedAttention`, ``mlp``), so a released ``state_dict`` loads with
``strict=True``.

Data flow with typed structures (instead of the reference's free-form ``Point`` dict):

* :class:`PointBatch` - the input: voxelized points of ``B`` scenes, concatenated.
* :class:`SparsePoints` - the geometry one stage works on (coords, batch, serialization,
  sparse-conv neighbour cache, attention patch layouts), built for every level before the
  first layer runs (:mod:`concerto_ros.models.geometry`: everything that depends on the
  positions only).
* :class:`EncoderOutput` - per level the features, geometry and the pooling inverse map;
  :func:`concerto_point_feature` and :func:`all_levels_feature` map them back to the
  input voxels.

Every module computes from explicit index tensors (neighbour rows, patch gather/scatter
rows, pooling inverse): :meth:`PointTransformerV3Encoder.forward` takes them from the
geometry's caches, :meth:`PointTransformerV3Encoder.forward_indexed` as inputs, the form
that is exported (:mod:`concerto_ros.models.export`). Everything runs in plain torch on CPU
(float32); flash-attn and spconv are used on CUDA when importable (see
:mod:`concerto_ros.models.sparse_conv`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig
from .geometry import (GeometryLevel, PatchLayout, SparsePoints, attention_patch_size, build_geometry,
                       build_patch_layout, offset_to_batch)
from .sparse_conv import SubMConv3d

__all__ = [
    "PointBatch",
    "SparsePoints",
    "PatchLayout",
    "EncoderLevel",
    "EncoderOutput",
    "Embedding",
    "xCPE",
    "SerializedAttention",
    "MLP",
    "Block",
    "GridPooling",
    "EncoderStage",
    "PointTransformerV3Encoder",
    "build_patch_layout",
    "offset_to_batch",
    "upcast_levels",
    "upcast_features",
    "concerto_point_feature",
    "all_levels_feature",
    "center_shift",
    "prepare_input",
]


# --------------------------------------------------------------------------- structures


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x)).to(dtype)


@dataclass(eq=False)
class PointBatch:
    """Input of the encoder: the voxelized points of ``B`` scenes, concatenated.

    Attributes:
        coord: ``(N, 3)`` float32 point coordinates in metres (after CenterShift).
        grid_coord: ``(N, 3)`` int64 voxel indices ``floor((coord - min) / grid_size)``,
            non-negative, unique within a scene, ``< 65535``.
        feat: ``(N, C_in)`` float32 input features (Concerto: xyz, rgb/255, normal).
        offset: ``(B,)`` int64 cumulative point counts (scene ``b`` is rows
            ``offset[b-1]:offset[b]``).
        mask: optional ``(N,)`` bool; masked points take the embedding's ``mask_token``.

    Raises:
        ValueError: inconsistent shapes, an empty scene, or ``offset[-1] != N``.
    """

    coord: torch.Tensor
    grid_coord: torch.Tensor
    feat: torch.Tensor
    offset: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.coord.shape[0]
        if self.coord.ndim != 2 or self.coord.shape[1] != 3:
            raise ValueError(f"coord must be (N, 3), got {tuple(self.coord.shape)}")
        if tuple(self.grid_coord.shape) != (n, 3):
            raise ValueError(f"grid_coord must be ({n}, 3), got {tuple(self.grid_coord.shape)}")
        if self.feat.ndim != 2 or self.feat.shape[0] != n:
            raise ValueError(f"feat must be ({n}, C), got {tuple(self.feat.shape)}")
        if self.grid_coord.is_floating_point():
            raise ValueError("grid_coord must be an integer tensor")
        self.grid_coord = self.grid_coord.long()
        self.offset = self.offset.long().reshape(-1)
        if self.offset.numel() == 0 or int(self.offset[-1]) != n:
            raise ValueError(f"offset must end at N={n}, got {self.offset.tolist()}")
        counts = torch.diff(self.offset, prepend=self.offset.new_zeros(1))
        if bool((counts <= 0).any()):
            raise ValueError(
                f"offset must be strictly increasing (no empty scene): {self.offset.tolist()}"
            )
        if self.mask is not None and tuple(self.mask.shape) != (n,):
            raise ValueError(f"mask must be ({n},), got {tuple(self.mask.shape)}")

    @classmethod
    def from_arrays(
        cls,
        coord: Any,
        grid_coord: Any,
        feat: Any,
        offset: Any | None = None,
        device: torch.device | str = "cpu",
    ) -> "PointBatch":
        """Build from numpy arrays or tensors (``offset=None``: one scene)."""
        coord_t = _as_tensor(coord, torch.float32)
        if offset is None:
            offset = [coord_t.shape[0]]
        return cls(
            coord=coord_t.to(device),
            grid_coord=_as_tensor(grid_coord, torch.int64).to(device),
            feat=_as_tensor(feat, torch.float32).to(device),
            offset=_as_tensor(offset, torch.int64).to(device),
        )

    @property
    def num_points(self) -> int:
        return int(self.coord.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.offset.numel())

    @property
    def batch(self) -> torch.Tensor:
        """``(N,)`` int64 scene index of every point."""
        return offset_to_batch(self.offset)

    def to(self, device: torch.device | str) -> "PointBatch":
        """A copy on ``device``."""
        return PointBatch(
            coord=self.coord.to(device),
            grid_coord=self.grid_coord.to(device),
            feat=self.feat.to(device),
            offset=self.offset.to(device),
            mask=None if self.mask is None else self.mask.to(device),
        )


@dataclass(eq=False)
class EncoderLevel:
    """Output of one encoder stage.

    Attributes:
        feat: ``(M_s, C_s)`` features after the stage's blocks.
        points: the level's geometry (:class:`SparsePoints`).
        pooling_inverse: ``(M_{s-1},)`` int64, for every point of the previous level the
            row of this level it was pooled into; ``None`` for level 0.
    """

    feat: torch.Tensor
    points: SparsePoints
    pooling_inverse: torch.Tensor | None


@dataclass(eq=False)
class EncoderOutput:
    """All levels of the encoder, finest (level 0 = input voxels) first."""

    levels: list[EncoderLevel]

    @property
    def last_feat(self) -> torch.Tensor:
        """``(M_last, C_last)`` features of the coarsest level."""
        return self.levels[-1].feat

    @property
    def channels(self) -> list[int]:
        return [int(level.feat.shape[1]) for level in self.levels]


def upcast_features(
    feats: Sequence[torch.Tensor],
    inverses: Sequence[torch.Tensor | None],
    num_levels: int,
    inverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-input-voxel feature from the last ``num_levels`` levels (Concerto README).

    Walking up from the coarsest level, the ``num_levels - 1`` finer levels next to it are
    concatenated (``parent = cat(parent, child[pooling_inverse])``); below that the
    feature is only copied down, done here as one gather through the composed inverse maps.

    Args:
        feats: per level ``(M_s, C_s)`` features, finest first.
        inverses: per level the ``(M_{s-1},)`` int64 pooling inverse (entry 0 unused).
        num_levels: ``1 <= num_levels <= len(feats)``.
        inverse: optional ``(N_raw,)`` int64 map from raw points to level-0 rows.

    Returns:
        ``(M_0, sum of the last num_levels widths)`` (or ``(N_raw, ...)``), finest of the
        concatenated levels first.

    Raises:
        ValueError: ``num_levels`` out of range.
    """
    if not 1 <= num_levels <= len(feats):
        raise ValueError(f"num_levels must be in [1, {len(feats)}], got {num_levels}")
    first_concat = len(feats) - num_levels
    feat = feats[-1]
    for s in range(len(feats) - 1, first_concat, -1):
        feat = torch.cat([feats[s - 1], feat.index_select(0, inverses[s])], dim=1)
    index = inverse
    for s in range(1, first_concat + 1):
        index = inverses[s] if index is None else inverses[s].index_select(0, index)
    return feat if index is None else feat.index_select(0, index)


def upcast_levels(
    output: EncoderOutput, num_levels: int, inverse: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`upcast_features` of an :class:`EncoderOutput`.

    Args:
        output: the encoder output.
        num_levels: ``1 <= num_levels <= len(output.levels)``.
        inverse: optional ``(N_raw,)`` int64 map from raw points to input voxels (the
            grid-sampling inverse); when given, the result is indexed by it.

    Returns:
        ``(N_0, sum of the last num_levels widths)`` (or ``(N_raw, ...)``); the finest of
        the concatenated levels comes first, the coarsest last.

    Raises:
        ValueError: ``num_levels`` out of range.
    """
    levels = output.levels
    return upcast_features([lv.feat for lv in levels], [lv.pooling_inverse for lv in levels],
                           num_levels, inverse)


def concerto_point_feature(
    output: EncoderOutput, inverse: torch.Tensor | None = None
) -> torch.Tensor:
    """The Concerto README per-point feature: last three levels concatenated, copied down.

    Widths: small 896, base 1088, large 1536 (Zhang et al., arXiv 2510.23607). See
    :func:`upcast_levels` for shapes.
    """
    return upcast_levels(output, min(3, len(output.levels)), inverse)


def all_levels_feature(output: EncoderOutput, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """Every level concatenated while copying down (linear-probe heads; large: 1728-d).

    See :func:`upcast_levels` for shapes.
    """
    return upcast_levels(output, len(output.levels), inverse)


# --------------------------------------------------------------------------- input helpers


def center_shift(coord: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Pointcept ``CenterShift(apply_z=True)`` per scene.

    x and y are shifted so that the centre of the scene's bounding box is 0, z so that the
    minimum is 0. Computed in the dtype of ``coord``.

    Args:
        coord: ``(N, 3)`` float coordinates in metres.
        offset: ``(B,)`` cumulative counts; ``None`` for one scene.

    Returns:
        ``(N, 3)`` shifted coordinates (a new tensor).
    """
    if offset is None:
        offset = torch.tensor([coord.shape[0]], device=coord.device)
    out = coord.clone()
    start = 0
    for end in offset.tolist():
        seg = coord[start:end]
        if end > start:
            lo = seg.min(0).values
            hi = seg.max(0).values
            shift = torch.stack([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
            out[start:end] = seg - shift
        start = end
    return out


def prepare_input(
    coord: Any,
    grid_coord: Any,
    color: Any | None = None,
    normal: Any | None = None,
    offset: Any | None = None,
    apply_center_shift: bool = True,
    device: torch.device | str = "cpu",
) -> PointBatch:
    """Build the Concerto encoder input from voxelized points.

    The 9-channel feature is ``(x, y, z, r/255, g/255, b/255, nx, ny, nz)`` with the
    coordinates after CenterShift (x, y centred on the bounding box, z min at 0) and
    zeros where colour or normals are absent (the released checkpoints were trained with
    random colour/normal drop). Grid sampling is done elsewhere (``concerto_ros.cloud``);
    the reference pipeline applies CenterShift to the raw cloud *before* grid sampling,
    so for exact parity shift the raw cloud with :func:`center_shift`, voxelize, and pass
    ``apply_center_shift=False``.

    Args:
        coord: ``(N, 3)`` float point coordinates in metres (one point per voxel).
        grid_coord: ``(N, 3)`` int voxel indices (non-negative, unique per scene).
        color: optional ``(N, 3)`` RGB in ``[0, 255]`` (uint8 or float).
        normal: optional ``(N, 3)`` unit normals.
        offset: optional ``(B,)`` cumulative counts; ``None`` = one scene.
        apply_center_shift: shift each scene with :func:`center_shift` first.
        device: target device.

    Returns:
        A :class:`PointBatch` with ``feat`` of shape ``(N, 9)`` float32.

    Raises:
        ValueError: shape mismatch between the arrays.
    """
    coord_t = _as_tensor(coord, torch.float32).to(device)
    n = coord_t.shape[0]
    offset_t = (
        torch.tensor([n], dtype=torch.int64, device=device)
        if offset is None
        else _as_tensor(offset, torch.int64).to(device)
    )
    if apply_center_shift:
        coord_t = center_shift(coord_t, offset_t)
    parts = [coord_t]
    for name, arr, scale in (("color", color, 1.0 / 255.0), ("normal", normal, 1.0)):
        if arr is None:
            parts.append(coord_t.new_zeros(n, 3))
            continue
        t = _as_tensor(arr, torch.float32).to(device)
        if tuple(t.shape) != (n, 3):
            raise ValueError(f"{name} must be ({n}, 3), got {tuple(t.shape)}")
        parts.append(t * scale)
    return PointBatch(
        coord=coord_t,
        grid_coord=_as_tensor(grid_coord, torch.int64).to(device),
        feat=torch.cat(parts, dim=1),
        offset=offset_t,
    )


# --------------------------------------------------------------------------- modules


class DropPath(nn.Module):
    """Stochastic depth per point row (training only): zero a row with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], 1).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class LayerScale(nn.Module):
    """Per-channel learned scale ``gamma`` (Touvron et al., CaiT), parameter ``gamma``."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Embedding(nn.Module):
    """Point embedding: ``stem`` = Linear(C_in, C0) -> LayerNorm -> GELU (PTv3 Sec. 3.3).

    Args:
        in_channels: ``C_in``.
        embed_channels: ``C0``.
        mask_token: add the learnable ``mask_token`` ``(1, C0)`` used for masked points.
    """

    def __init__(self, in_channels: int, embed_channels: int, mask_token: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                linear=nn.Linear(in_channels, embed_channels),
                norm=nn.LayerNorm(embed_channels),
                act=nn.GELU(),
            )
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_channels)) if mask_token else None

    def forward(self, feat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C_in)`` -> ``(N, C0)``; rows where ``mask`` is true take the mask token."""
        out = self.stem(feat)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("a mask was given but the embedding has no mask_token")
            out = torch.where(mask.unsqueeze(-1), self.mask_token.to(out.dtype), out)
        return out


class xCPE(nn.ModuleList):  # noqa: N801 - the paper's name
    """Enhanced conditional positional encoding (PTv3 Sec. 3.3): ``SubMConv3d(C, C, 3)``
    -> Linear(C, C) -> LayerNorm(C), children named ``0``, ``1``, ``2`` (checkpoint keys
    ``cpe.0.weight`` ...). The block adds its output residually."""

    def __init__(self, channels: int, indice_key: str, backend: str = "auto") -> None:
        super().__init__(
            [
                SubMConv3d(
                    channels, channels, 3, bias=True, indice_key=indice_key, backend=backend
                ),
                nn.Linear(channels, channels),
                nn.LayerNorm(channels),
            ]
        )

    def forward(self, feat: torch.Tensor, points: SparsePoints) -> torch.Tensor:
        """``(M, C)`` -> ``(M, C)`` on the voxels of ``points``."""
        return self[2](self[1](self[0](feat, points.voxels)))

    def forward_rows(self, feat: torch.Tensor, rows: torch.Tensor, chunk_rows: int | None = 0
                     ) -> torch.Tensor:
        """``(M, C)`` -> ``(M, C)`` with the torch convolution on explicit ``(M, 27)``
        one-based neighbour rows (see :meth:`SubMConv3d.forward_rows`)."""
        return self[2](self[1](self[0].forward_rows(feat, rows, chunk_rows)))


_FLASH_ATTN: dict[str, Any] = {}


def _flash_attn():
    if "mod" not in _FLASH_ATTN:
        try:
            import flash_attn  # type: ignore

            _FLASH_ATTN["mod"] = flash_attn
        except Exception:
            _FLASH_ATTN["mod"] = None
    return _FLASH_ATTN["mod"]


class SerializedAttention(nn.Module):
    """Multi-head self-attention inside patches of the serialized sequence (PTv3 Sec. 3.2).

    Points are gathered in the order ``points.serialization.order(order_index)``, cut into
    patches of ``K`` points (:class:`PatchLayout`), attended with
    ``scaled_dot_product_attention`` (scale ``qk_scale`` or ``head_dim ** -0.5``) and
    scattered back.

    Patch size ``K``: with ``enable_flash=False`` (the reference's non-flash path, used for
    the golden outputs) ``K = min(patch_size, smallest scene)`` so every sequence is full;
    with ``enable_flash=True`` ``K = patch_size`` and scenes smaller than ``K`` form one
    shorter sequence (flash-attn varlen on CUDA when importable, otherwise the same layout
    with masked SDPA in float32).

    Args:
        channels: ``C``.
        num_heads: ``H`` (``C % H == 0``).
        patch_size: maximum patch size ``K``.
        qkv_bias, qk_scale, attn_drop, proj_drop: as in :class:`EncoderConfig`.
        order_index: which serialization order this block uses.
        enable_flash: see above.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        order_index: int = 0,
        enable_flash: bool = False,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.channels = channels
        self.num_heads = num_heads
        self.patch_size_max = int(patch_size)
        self.scale = qk_scale or (channels // num_heads) ** -0.5
        self.order_index = order_index
        self.enable_flash = enable_flash
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(proj_drop)

    def patch_size(self, points: SparsePoints) -> int:
        """The patch size ``K`` used on ``points`` (see class docstring)."""
        return attention_patch_size(points.counts, self.patch_size_max, self.enable_flash)

    def forward(self, feat: torch.Tensor, points: SparsePoints) -> torch.Tensor:
        """``(M, C)`` -> ``(M, C)``."""
        k = self.patch_size(points)
        flash = _flash_attn() if (self.enable_flash and feat.is_cuda) else None
        layout = points.patch_layout(k)
        if flash is None and layout.uniform:
            return self.attend(feat, *points.attention_index(self.order_index, k))
        h, c = self.num_heads, self.channels
        ser = points.serialization
        gather = ser.order(self.order_index).index_select(0, layout.pad)
        scatter = layout.unpad.index_select(0, ser.inverse(self.order_index))
        qkv = self.qkv(feat.index_select(0, gather))  # (P, 3C), serialized and padded
        dropout = self.attn_drop if self.training else 0.0
        if flash is not None:
            half = qkv.dtype if qkv.dtype in (torch.float16, torch.bfloat16) else torch.float16
            out = flash.flash_attn_varlen_qkvpacked_func(
                qkv.to(half).reshape(-1, 3, h, c // h),
                layout.cu_seqlens,
                max_seqlen=k,
                dropout_p=dropout,
                softmax_scale=self.scale,
            ).reshape(-1, c).to(qkv.dtype)
        else:
            out = self._varlen_sdpa(qkv, layout, dropout)
        return self.proj_drop(self.proj(out.index_select(0, scatter)))

    def attend(self, feat: torch.Tensor, gather: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
        """Attention over full patches given as explicit rows (the exported graph's form).

        Args:
            feat: ``(M, C)`` features.
            gather: ``(S, K)`` int64 rows of ``feat`` forming ``S`` patches of ``K``.
            scatter: ``(M,)`` int64 row of each point in the ``(S * K, C)`` patch output.

        Returns:
            ``(M, C)``.
        """
        h, c = self.num_heads, self.channels
        k = gather.shape[1]
        qkv = self.qkv(feat.index_select(0, gather.reshape(-1)))  # (S * K, 3C)
        q, kk, v = qkv.view(-1, k, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, kk, v, dropout_p=dropout, scale=self.scale)
        out = out.transpose(1, 2).reshape(-1, c)
        return self.proj_drop(self.proj(out.index_select(0, scatter)))

    def _varlen_sdpa(self, qkv: torch.Tensor, layout: PatchLayout, dropout: float) -> torch.Tensor:
        """Sequences of unequal length (<= K): pad to K, mask the missing keys."""
        h, c, k = self.num_heads, self.channels, layout.patch_size
        d = c // h
        cu = layout.cu_seqlens.long()
        starts, lengths = cu[:-1], torch.diff(cu)
        slot = starts.unsqueeze(1) + torch.arange(k, device=qkv.device)  # (S, K)
        valid = torch.arange(k, device=qkv.device).unsqueeze(0) < lengths.unsqueeze(1)
        slot = torch.where(valid, slot, torch.zeros_like(slot))
        q, kk, v = qkv[slot].view(-1, k, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        mask = valid[:, None, None, :]  # keys that exist
        out = F.scaled_dot_product_attention(
            q, kk, v, attn_mask=mask, dropout_p=dropout, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(-1, k, c)
        return out[valid]


#: bytes of MLP hidden activations per block of rows and intra-op thread in
#: :meth:`MLP.forward` (L2-sized)
MLP_CHUNK_BYTES = 1 << 20


class MLP(nn.Module):
    """``fc1`` -> GELU -> dropout -> ``fc2`` -> dropout.

    In CPU inference (eval mode, no autograd) the rows are processed in blocks of about
    :data:`MLP_CHUNK_BYTES` of hidden activations per thread, which stay in the cache
    instead of making a round trip through memory (the hidden layer is 4x wider than the
    input).
    """

    def __init__(self, in_channels: int, hidden_channels: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_channels, in_channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, chunk_rows: int | None = 0) -> torch.Tensor:
        """``(M, C)`` -> ``(M, C)``; ``chunk_rows``: rows per block (``0``: from
        :data:`MLP_CHUNK_BYTES`; ``None``: one block, the exported graph's form)."""
        blocked = chunk_rows is not None and not self.training and x.device.type == "cpu" and not (
            torch.is_grad_enabled() and (x.requires_grad or self.fc1.weight.requires_grad))
        hidden = self.fc1.out_features
        step = chunk_rows or max(64, MLP_CHUNK_BYTES * torch.get_num_threads() // (hidden * x.element_size()))
        if not blocked or x.shape[0] <= step or torch.is_autocast_enabled(x.device.type):
            return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        out = x.new_empty(x.shape[0], self.fc2.out_features)
        w1, w2 = self.fc1.weight.t(), self.fc2.weight.t()
        for start in range(0, x.shape[0], step):
            h = torch.addmm(self.fc1.bias, x[start:start + step], w1)
            torch.addmm(self.fc2.bias, self.act(h), w2, out=out[start:start + step])
        return out


class Block(nn.Module):
    """PTv3 block: ``x += xCPE(x)``; ``x += attn(norm1(x))``; ``x += mlp(norm2(x))``
    (pre-norm; post-norm applies the norms after the residual instead), with optional
    LayerScale (``ls1``/``ls2``) and stochastic depth.

    Args:
        channels, num_heads, patch_size, mlp_ratio, qkv_bias, qk_scale, attn_drop,
        proj_drop, drop_path, layer_scale, pre_norm, enable_flash: see
        :class:`EncoderConfig`.
        order_index: serialization order of this block (``i % len(order)``).
        cpe_indice_key: sparse-conv cache key shared by the stage (``"stage{s}"``).
        sparse_conv_backend: ``"auto"`` | ``"torch"`` | ``"spconv"``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int = 1024,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        pre_norm: bool = True,
        order_index: int = 0,
        cpe_indice_key: str = "stage0",
        enable_flash: bool = False,
        sparse_conv_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.cpe = xCPE(channels, cpe_indice_key, sparse_conv_backend)
        self.norm1 = nn.Sequential(nn.LayerNorm(channels))
        self.attn = SerializedAttention(
            channels,
            num_heads,
            patch_size,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            order_index=order_index,
            enable_flash=enable_flash,
        )
        self.norm2 = nn.Sequential(nn.LayerNorm(channels))
        self.mlp = nn.Sequential(MLP(channels, int(channels * mlp_ratio), drop=proj_drop))
        if layer_scale is not None:
            self.ls1 = nn.Sequential(LayerScale(channels, layer_scale))
            self.ls2 = nn.Sequential(LayerScale(channels, layer_scale))
        else:
            self.ls1 = nn.Sequential(nn.Identity())
            self.ls2 = nn.Sequential(nn.Identity())
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, feat: torch.Tensor, points: SparsePoints) -> torch.Tensor:
        """``(M, C)`` -> ``(M, C)`` on the voxels of ``points``."""
        return self._residuals(feat, lambda x: self.cpe(x, points), lambda x: self.attn(x, points), 0)

    def forward_indexed(self, feat: torch.Tensor, neighbours: torch.Tensor, gather: torch.Tensor,
                        scatter: torch.Tensor, chunk_rows: int | None = 0) -> torch.Tensor:
        """``(M, C)`` -> ``(M, C)`` with explicit index tensors (the exported graph's form):
        ``neighbours (M, 27)`` for :meth:`xCPE.forward_rows`, ``gather (S, K)`` and
        ``scatter (M,)`` for :meth:`SerializedAttention.attend`."""
        return self._residuals(feat, lambda x: self.cpe.forward_rows(x, neighbours, chunk_rows),
                               lambda x: self.attn.attend(x, gather, scatter), chunk_rows)

    def _residuals(self, feat: torch.Tensor, cpe, attn, chunk_rows: int | None) -> torch.Tensor:
        feat = feat + cpe(feat)
        shortcut = feat
        if self.pre_norm:
            feat = self.norm1(feat)
        feat = shortcut + self.drop_path(self.ls1(attn(feat)))
        if not self.pre_norm:
            feat = self.norm1(feat)
        shortcut = feat
        if self.pre_norm:
            feat = self.norm2(feat)
        feat = shortcut + self.drop_path(self.ls2(self.mlp[0](feat, chunk_rows)))
        if not self.pre_norm:
            feat = self.norm2(feat)
        return feat


class GridPooling(nn.Module):
    """Grid pooling (PTv3 Sec. 3.3): Linear(C_in, C_out), max over the points of each
    coarse voxel, then LayerNorm and GELU. The clusters (and the coarse voxels' mean
    coordinates) come from :func:`~concerto_ros.models.geometry.pool_points`.

    Args:
        in_channels, out_channels: widths before / after.
        stride: pooling factor on the voxel grid (>= 1).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.stride = int(stride)
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(nn.LayerNorm(out_channels))
        self.act = nn.Sequential(nn.GELU())

    def forward(self, feat: torch.Tensor, inverse: torch.Tensor, num_voxels: int) -> torch.Tensor:
        """Pool ``(M_prev, C_in)`` features into ``(M, C_out)``.

        Args:
            feat: the fine level's features.
            inverse: ``(M_prev,)`` int64 coarse voxel of every fine row (each of the ``M``
                coarse voxels has at least one; see
                :func:`~concerto_ros.models.geometry.pool_points`).
            num_voxels: ``M``.
        """
        proj = self.proj(feat)
        init = proj.new_full((num_voxels, proj.shape[1]), float("-inf"))
        pooled = init.scatter_reduce(0, inverse.unsqueeze(1).expand_as(proj), proj, "amax")
        return self.act(self.norm(pooled))


class EncoderStage(nn.Module):
    """One stage ``enc{s}``: optional ``down`` (:class:`GridPooling`) then ``block{i}``."""

    def __init__(self, down: GridPooling | None, blocks: Sequence[Block]) -> None:
        super().__init__()
        if down is not None:
            self.down = down
        else:
            self.down = None
        self.num_blocks = len(blocks)
        for i, block in enumerate(blocks):
            self.add_module(f"block{i}", block)

    def blocks(self) -> list[Block]:
        return [getattr(self, f"block{i}") for i in range(self.num_blocks)]


class PointTransformerV3Encoder(nn.Module):
    """Concerto / Sonata PTv3 encoder (Wu et al., CVPR 2024; Zhang et al., arXiv
    2510.23607), encoder mode.

    Args:
        config: an :class:`EncoderConfig` or a reference-style config dict.

    Attributes:
        config: the validated :class:`EncoderConfig`.
        embedding: :class:`Embedding`.
        enc: ``ModuleDict`` of :class:`EncoderStage` named ``enc0`` ... ``enc{S-1}``.

    State-dict keys equal the reference's (``embedding.stem.linear.weight``,
    ``enc.enc0.block0.cpe.0.weight`` ``[C, 3, 3, 3, C]``, ``enc.enc1.down.proj.weight``,
    ...).
    """

    def __init__(self, config: EncoderConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, EncoderConfig):
            config = EncoderConfig.from_dict(config)
        config.validate()
        self.config = config
        cfg = config
        self.embedding = Embedding(cfg.in_channels, cfg.enc_channels[0], mask_token=cfg.mask_token)
        total = sum(cfg.enc_depths)
        rates = [cfg.drop_path * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.enc = nn.ModuleDict()
        first = 0
        for s in range(cfg.num_stages):
            down = (
                GridPooling(cfg.enc_channels[s - 1], cfg.enc_channels[s], cfg.stride[s - 1])
                if s > 0
                else None
            )
            blocks = [
                Block(
                    channels=cfg.enc_channels[s],
                    num_heads=cfg.enc_num_head[s],
                    patch_size=cfg.enc_patch_size[s],
                    mlp_ratio=cfg.mlp_ratio,
                    qkv_bias=cfg.qkv_bias,
                    qk_scale=cfg.qk_scale,
                    attn_drop=cfg.attn_drop,
                    proj_drop=cfg.proj_drop,
                    drop_path=rates[first + i],
                    layer_scale=cfg.layer_scale,
                    pre_norm=cfg.pre_norm,
                    order_index=i % len(cfg.order),
                    cpe_indice_key=f"stage{s}",
                    enable_flash=cfg.enable_flash,
                    sparse_conv_backend=cfg.sparse_conv_backend,
                )
                for i in range(cfg.enc_depths[s])
            ]
            first += cfg.enc_depths[s]
            self.enc[f"enc{s}"] = EncoderStage(down, blocks)
        self.apply(self._init_weights)
        if cfg.freeze_encoder:
            for p in self.parameters():
                p.requires_grad_(False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, SubMConv3d):
            module.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self.config.enc_channels[-1]

    def set_sparse_conv_backend(self, backend: str) -> None:
        """Switch every xCPE convolution to ``backend`` (``auto``/``torch``/``spconv``)."""
        self.config = self.config.replace(sparse_conv_backend=backend)
        for m in self.modules():
            if isinstance(m, SubMConv3d):
                m.backend = backend

    def stage_orders(self, stage: int) -> tuple[str, ...]:
        """Serialization orders of ``stage`` (``config.stage_orders`` or ``config.order``)."""
        if self.config.stage_orders is not None:
            return self.config.stage_orders[stage]
        return self.config.order

    def geometry(self, inputs: PointBatch) -> list[GeometryLevel]:
        """The geometry of every level for ``inputs``
        (:func:`~concerto_ros.models.geometry.build_geometry`; orders shuffled in training
        mode when ``config.shuffle_orders``)."""
        return build_geometry(inputs.coord, inputs.grid_coord, inputs.offset, self.config,
                              shuffle=self.config.shuffle_orders and self.training)

    def forward(self, inputs: PointBatch) -> EncoderOutput:
        """Encode a batch.

        Args:
            inputs: the :class:`PointBatch` (``feat`` width ``config.in_channels``).

        Returns:
            :class:`EncoderOutput` with ``S`` levels; level 0 rows align with the input
            points, level ``S-1`` is the coarsest (``config.enc_channels[-1]`` wide).

        Raises:
            ValueError: wrong feature width, or a grid too large to serialize.
        """
        self._check_width(inputs.feat)
        feat = self.embedding(inputs.feat, inputs.mask)
        levels: list[EncoderLevel] = []
        for s, geo in enumerate(self.geometry(inputs)):
            stage: EncoderStage = self.enc[f"enc{s}"]
            if stage.down is not None:
                feat = stage.down(feat, geo.inverse, geo.points.num_points)
            for block in stage.blocks():
                feat = block(feat, geo.points)
            levels.append(EncoderLevel(feat=feat, points=geo.points, pooling_inverse=geo.inverse))
        return EncoderOutput(levels=levels)

    def forward_indexed(self, feat: torch.Tensor, index: Mapping[str, torch.Tensor],
                        chunk_rows: int | None = None) -> list[torch.Tensor]:
        """The encoder on explicit index tensors (the exported graph's form).

        Args:
            feat: ``(N, C_in)`` float32 input features.
            index: the tensors of an :class:`~concerto_ros.models.geometry.EncoderIndex`
                by name.
            chunk_rows: sparse-convolution blocking (``None``: one gather per convolution,
                no data-dependent loop; see
                :func:`~concerto_ros.models.sparse_conv.submconv3d_rows`).

        Returns:
            Per level the ``(M_s, C_s)`` features, finest first.
        """
        self._check_width(feat)
        feat = self.embedding(feat)
        feats = []
        for s in range(self.config.num_stages):
            stage: EncoderStage = self.enc[f"enc{s}"]
            if stage.down is not None:
                feat = stage.down(feat, index[f"s{s}_inverse"], index[f"s{s}_neighbours"].shape[0])
            for i, block in enumerate(stage.blocks()):
                j = i % len(self.config.order)
                feat = block.forward_indexed(feat, index[f"s{s}_neighbours"], index[f"s{s}_o{j}_gather"],
                                             index[f"s{s}_o{j}_scatter"], chunk_rows)
            feats.append(feat)
        return feats

    def _check_width(self, feat: torch.Tensor) -> None:
        if feat.shape[1] != self.config.in_channels:
            raise ValueError(
                f"feat has {feat.shape[1]} channels, the encoder expects "
                f"{self.config.in_channels}"
            )
