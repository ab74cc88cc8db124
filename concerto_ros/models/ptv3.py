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
  sparse-conv neighbour cache, attention patch layouts).
* :class:`EncoderOutput` - per level the features, geometry and the pooling inverse map;
  :func:`concerto_point_feature` and :func:`all_levels_feature` map them back to the
  input voxels.

Everything runs in plain torch on CPU (float32); flash-attn and spconv are used on CUDA
when importable (see :mod:`concerto_ros.models.sparse_conv`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig
from .serialization import Serialization
from .sparse_conv import SubMConv3d, VoxelGrid

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
    "concerto_point_feature",
    "all_levels_feature",
    "center_shift",
    "prepare_input",
]


# --------------------------------------------------------------------------- structures


def offset_to_batch(offset: torch.Tensor) -> torch.Tensor:
    """``(B,)`` cumulative counts -> ``(N,)`` int64 sample index of every point."""
    counts = torch.diff(offset.long(), prepend=offset.new_zeros(1).long())
    return torch.repeat_interleave(torch.arange(len(counts), device=offset.device), counts)


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


@dataclass(frozen=True, eq=False)
class PatchLayout:
    """How the serialized sequence of a stage is cut into attention patches.

    Positions refer to the serialized (sorted) sequence of ``N`` points. Each scene's
    sequence is padded to a multiple of ``patch_size`` when it holds more than
    ``patch_size`` points; padded slots repeat the points one patch earlier (Wu et al.,
    PTv3, Sec. 3.2 "patch grouping").

    Attributes:
        patch_size: ``K``, maximum sequence length.
        pad: ``(P,)`` int64, the sorted position feeding each of the ``P`` padded slots.
        unpad: ``(N,)`` int64, the padded slot of each sorted position.
        cu_seqlens: ``(S + 1,)`` int32 start of each of the ``S`` sequences in the padded
            slots, then ``P`` (flash-attn varlen convention).
        uniform: every sequence has exactly ``K`` slots (then ``P = S * K``).
    """

    patch_size: int
    pad: torch.Tensor
    unpad: torch.Tensor
    cu_seqlens: torch.Tensor
    uniform: bool


def build_patch_layout(offset: torch.Tensor, patch_size: int) -> PatchLayout:
    """Patch layout of a serialized batch (vectorised; reference padding semantics).

    Args:
        offset: ``(B,)`` int64 cumulative counts of the scenes.
        patch_size: ``K >= 1``.

    Returns:
        The :class:`PatchLayout`. A scene of ``n > K`` points gets ``ceil(n / K)``
        sequences of ``K`` slots, the last ``K - n % K`` slots (if ``n % K``) copying the
        positions ``K`` earlier; a scene of ``n <= K`` points is one sequence of ``n``.
    """
    device = offset.device
    k = int(patch_size)
    counts = torch.diff(offset.long(), prepend=offset.new_zeros(1).long())
    padded = torch.where(counts > k, (counts + k - 1) // k * k, counts)
    start = torch.cumsum(counts, 0) - counts
    start_pad = torch.cumsum(padded, 0) - padded
    total = int(padded.sum())
    # unpad: sorted position j of scene b -> j + (start_pad[b] - start[b])
    unpad = torch.arange(int(counts.sum()), device=device) + torch.repeat_interleave(
        start_pad - start, counts
    )
    # pad: slot t of scene b, local l = t - start_pad[b]; l >= n maps to l - K
    scene = torch.repeat_interleave(torch.arange(len(counts), device=device), padded)
    local = torch.arange(total, device=device) - start_pad[scene]
    local = torch.where(local >= counts[scene], local - k, local)
    pad = start[scene] + local
    n_seq = (padded + k - 1) // k
    seq_scene = torch.repeat_interleave(torch.arange(len(counts), device=device), n_seq)
    seq_rank = torch.arange(int(n_seq.sum()), device=device) - (
        torch.cumsum(n_seq, 0) - n_seq
    )[seq_scene]
    seq_start = start_pad[seq_scene] + seq_rank * k
    cu_seqlens = torch.cat([seq_start, seq_start.new_tensor([total])]).to(torch.int32)
    uniform = bool((padded % k == 0).all())
    return PatchLayout(patch_size=k, pad=pad, unpad=unpad, cu_seqlens=cu_seqlens, uniform=uniform)


@dataclass(eq=False)
class SparsePoints:
    """Geometry of one encoder level, shared by the modules of a stage.

    Attributes:
        coord: ``(M, 3)`` float32 coordinates in metres (mean of the pooled points).
        grid_coord: ``(M, 3)`` int64 voxel indices at this level's resolution.
        batch: ``(M,)`` int64 scene index, non-decreasing.
        offset: ``(B,)`` int64 cumulative counts.
        serialization: the space-filling-curve orders of ``grid_coord``.
        voxels: the voxel set with the sparse-convolution caches (neighbour map / spconv
            indice pairs), built once and reused by every block of the stage.
    """

    coord: torch.Tensor
    grid_coord: torch.Tensor
    batch: torch.Tensor
    offset: torch.Tensor
    serialization: Serialization
    voxels: VoxelGrid
    _layouts: dict[int, PatchLayout] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        coord: torch.Tensor,
        grid_coord: torch.Tensor,
        batch: torch.Tensor,
        offset: torch.Tensor,
        orders: Sequence[str],
    ) -> "SparsePoints":
        """Serialize ``grid_coord`` along ``orders`` and wrap everything up."""
        ser = Serialization(grid_coord, batch, orders)
        voxels = VoxelGrid(grid_coord=grid_coord, batch=batch, batch_size=int(offset.numel()))
        return cls(coord, grid_coord, batch, offset, ser, voxels)

    @property
    def num_points(self) -> int:
        return int(self.grid_coord.shape[0])

    @property
    def counts(self) -> torch.Tensor:
        """``(B,)`` points per scene."""
        return torch.diff(self.offset, prepend=self.offset.new_zeros(1))

    def patch_layout(self, patch_size: int) -> PatchLayout:
        """Cached :func:`build_patch_layout` for this level."""
        if patch_size not in self._layouts:
            self._layouts[patch_size] = build_patch_layout(self.offset, patch_size)
        return self._layouts[patch_size]

    def shuffled_orders(self, perm: Sequence[int]) -> "SparsePoints":
        """A view with the serialization rows permuted (training-time order shuffling)."""
        return SparsePoints(
            self.coord,
            self.grid_coord,
            self.batch,
            self.offset,
            self.serialization.permuted(perm),
            self.voxels,
            self._layouts,
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


def upcast_levels(
    output: EncoderOutput, num_levels: int, inverse: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-input-voxel feature from the last ``num_levels`` levels (Concerto README).

    Walking up from the coarsest level, the ``num_levels - 1`` finer levels next to it are
    concatenated (``parent = cat(parent, child[pooling_inverse])``), below that the
    feature is only copied down (``parent = child[pooling_inverse]``).

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
    if not 1 <= num_levels <= len(levels):
        raise ValueError(f"num_levels must be in [1, {len(levels)}], got {num_levels}")
    feat = levels[-1].feat
    first_concat = len(levels) - num_levels
    for s in range(len(levels) - 1, 0, -1):
        child_index = levels[s].pooling_inverse
        if s - 1 >= first_concat:
            feat = torch.cat([levels[s - 1].feat, feat[child_index]], dim=1)
        else:
            feat = feat[child_index]
    if inverse is not None:
        feat = feat[inverse]
    return feat


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
        if self.enable_flash:
            return self.patch_size_max
        return min(int(points.counts.min()), self.patch_size_max)

    def forward(self, feat: torch.Tensor, points: SparsePoints) -> torch.Tensor:
        """``(M, C)`` -> ``(M, C)``."""
        h, c = self.num_heads, self.channels
        d = c // h
        k = self.patch_size(points)
        layout = points.patch_layout(k)
        ser = points.serialization
        gather = ser.order(self.order_index)[layout.pad]
        scatter = layout.unpad[ser.inverse(self.order_index)]
        qkv = self.qkv(feat[gather])  # (P, 3C), serialized and padded
        dropout = self.attn_drop if self.training else 0.0
        flash = _flash_attn() if (self.enable_flash and feat.is_cuda) else None
        if flash is not None:
            half = qkv.dtype if qkv.dtype in (torch.float16, torch.bfloat16) else torch.float16
            out = flash.flash_attn_varlen_qkvpacked_func(
                qkv.to(half).reshape(-1, 3, h, d),
                layout.cu_seqlens,
                max_seqlen=k,
                dropout_p=dropout,
                softmax_scale=self.scale,
            ).reshape(-1, c).to(qkv.dtype)
        elif layout.uniform:
            q, kk, v = qkv.view(-1, k, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, kk, v, dropout_p=dropout, scale=self.scale)
            out = out.transpose(1, 2).reshape(-1, c)
        else:
            out = self._varlen_sdpa(qkv, layout, dropout)
        out = self.proj(out[scatter])
        return self.proj_drop(out)

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


class MLP(nn.Module):
    """``fc1`` -> GELU -> dropout -> ``fc2`` -> dropout."""

    def __init__(self, in_channels: int, hidden_channels: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_channels, in_channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


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
        """``(M, C)`` -> ``(M, C)``."""
        feat = feat + self.cpe(feat, points)
        shortcut = feat
        if self.pre_norm:
            feat = self.norm1(feat)
        feat = shortcut + self.drop_path(self.ls1(self.attn(feat, points)))
        if not self.pre_norm:
            feat = self.norm1(feat)
        shortcut = feat
        if self.pre_norm:
            feat = self.norm2(feat)
        feat = shortcut + self.drop_path(self.ls2(self.mlp(feat)))
        if not self.pre_norm:
            feat = self.norm2(feat)
        return feat


class GridPooling(nn.Module):
    """Grid pooling (PTv3 Sec. 3.3): Linear(C_in, C_out), max over the points sharing
    ``grid_coord // stride`` in the same scene, then LayerNorm and GELU; coordinates are
    averaged. Clusters are ordered by ``(scene, x, y, z)`` as the reference's
    ``torch.unique(..., dim=0)`` orders them.

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

    def forward(
        self, feat: torch.Tensor, points: SparsePoints, orders: Sequence[str]
    ) -> tuple[torch.Tensor, SparsePoints, torch.Tensor]:
        """Pool ``(M, C_in)`` features of ``points``.

        Returns:
            ``(feat (M', C_out), child SparsePoints serialized along orders,
            pooling_inverse (M,) int64 row of the child for every parent point)``.
        """
        g = torch.div(points.grid_coord, self.stride, rounding_mode="floor")
        key = (points.batch << 48) | (g[:, 0] << 32) | (g[:, 1] << 16) | g[:, 2]
        ukey, inverse, counts = torch.unique(
            key, sorted=True, return_inverse=True, return_counts=True
        )
        perm = torch.argsort(inverse, stable=True)
        proj = self.proj(feat)
        pooled = torch.segment_reduce(proj[perm], "max", lengths=counts)
        coord = torch.segment_reduce(points.coord[perm], "mean", lengths=counts)
        mask16 = (1 << 16) - 1
        grid = torch.stack([(ukey >> 32) & mask16, (ukey >> 16) & mask16, ukey & mask16], 1)
        batch = ukey >> 48
        offset = torch.cumsum(torch.bincount(batch, minlength=points.offset.numel()), 0)
        child = SparsePoints.build(coord, grid, batch, offset, orders)
        return self.act(self.norm(pooled)), child, inverse


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

    def _maybe_shuffle(self, points: SparsePoints) -> SparsePoints:
        if self.config.shuffle_orders and self.training:
            perm = torch.randperm(len(points.serialization.orders)).tolist()
            return points.shuffled_orders(perm)
        return points

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
        if inputs.feat.shape[1] != self.config.in_channels:
            raise ValueError(
                f"feat has {inputs.feat.shape[1]} channels, the encoder expects "
                f"{self.config.in_channels}"
            )
        feat = self.embedding(inputs.feat, inputs.mask)
        points = SparsePoints.build(
            inputs.coord, inputs.grid_coord, inputs.batch, inputs.offset, self.stage_orders(0)
        )
        points = self._maybe_shuffle(points)
        levels: list[EncoderLevel] = []
        for s in range(self.config.num_stages):
            stage: EncoderStage = self.enc[f"enc{s}"]
            inverse = None
            if stage.down is not None:
                feat, points, inverse = stage.down(feat, points, self.stage_orders(s))
                points = self._maybe_shuffle(points)
            for block in stage.blocks():
                feat = block(feat, points)
            levels.append(EncoderLevel(feat=feat, points=points, pooling_inverse=inverse))
        return EncoderOutput(levels=levels)
