"""The data-dependent part of the PTv3 encoder: geometry and index tensors of every level.

Everything the Point Transformer V3 encoder (Wu et al., CVPR 2024) does that depends on
the point positions but not on the features lives here, computed once per input and shared
by the eager encoder (:class:`~concerto_ros.models.ptv3.PointTransformerV3Encoder`) and the
exported graph (:mod:`concerto_ros.models.export`), which takes the results as inputs:

* serialization orders and their inverses (:class:`~concerto_ros.models.serialization.Serialization`);
* attention patches: the serialized, padded sequence of each order cut into patches of
  ``K`` voxels (:class:`PatchLayout`, :meth:`SparsePoints.attention_index`);
* sparse-convolution neighbour rows (:class:`~concerto_ros.models.sparse_conv.NeighbourMap`);
* grid-pooling clusters (:func:`pool_points`): the coarse voxel of every fine voxel.

:func:`build_geometry` walks the levels; :class:`EncoderIndex` flattens the index tensors of
all levels into the named inputs of the exported graph (:func:`index_names`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .serialization import Serialization
from .sparse_conv import VoxelGrid

__all__ = [
    "offset_to_batch",
    "PatchLayout",
    "build_patch_layout",
    "attention_patch_size",
    "SparsePoints",
    "pool_points",
    "GeometryLevel",
    "build_geometry",
    "stage_order_indices",
    "index_names",
    "EncoderIndex",
]


def offset_to_batch(offset: torch.Tensor) -> torch.Tensor:
    """``(B,)`` cumulative counts -> ``(N,)`` int64 sample index of every point."""
    counts = torch.diff(offset.long(), prepend=offset.new_zeros(1).long())
    return torch.repeat_interleave(torch.arange(len(counts), device=offset.device), counts)


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


def attention_patch_size(counts: torch.Tensor, patch_size: int, flash: bool) -> int:
    """The patch size ``K`` of a stage: ``patch_size`` with the flash layout, else
    ``min(patch_size, smallest scene)`` (the reference's non-flash rule, under which every
    sequence is full).

    Args:
        counts: ``(B,)`` points per scene at this level.
        patch_size: the stage's maximum patch size.
        flash: the flash-attn (varlen) layout.
    """
    if flash:
        return int(patch_size)
    return min(int(counts.min()), int(patch_size))


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
    _attention: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False)

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

    def attention_index(self, order_index: int, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather and scatter rows of the patches of one order (cached).

        Args:
            order_index: row of :attr:`serialization`.
            patch_size: ``K``; the layout must be uniform (every sequence ``K`` long).

        Returns:
            ``(gather (S, K) int64, scatter (M,) int64)``: ``feat[gather]`` are the
            serialized, padded patches; row ``scatter[i]`` of the flattened ``(S * K, C)``
            patch output belongs to point ``i``.

        Raises:
            ValueError: the layout is not uniform (scenes smaller than ``K`` in a batch
                with the flash layout).
        """
        key = (int(order_index), int(patch_size))
        if key not in self._attention:
            layout = self.patch_layout(patch_size)
            if not layout.uniform:
                raise ValueError(
                    f"patch size {patch_size} does not cut every scene into full patches "
                    f"(scene sizes {self.counts.tolist()}); use the non-flash layout")
            ser = self.serialization
            gather = ser.order(order_index).index_select(0, layout.pad).view(-1, patch_size)
            scatter = layout.unpad.index_select(0, ser.inverse(order_index))
            self._attention[key] = (gather, scatter)
        return self._attention[key]

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


def pool_points(
    points: SparsePoints, stride: int, orders: Sequence[str]
) -> tuple[SparsePoints, torch.Tensor]:
    """The clusters of grid pooling (PTv3 Sec. 3.3): the points sharing ``grid_coord //
    stride`` in the same scene form one coarse voxel.

    Coarse voxels are ordered by ``(scene, x, y, z)`` as the reference's
    ``torch.unique(..., dim=0)`` orders them; their coordinates are the mean of their
    points' coordinates.

    Args:
        points: the fine level (``grid_coord < 65536``).
        stride: pooling factor on the voxel grid (>= 1).
        orders: serialization orders of the coarse level.

    Returns:
        ``(child, inverse)``: the coarse :class:`SparsePoints` (``M`` voxels) and
        ``inverse (N,)`` int64, the coarse row of every fine point.
    """
    g = torch.div(points.grid_coord, int(stride), rounding_mode="floor")
    key = (points.batch << 48) | (g[:, 0] << 32) | (g[:, 1] << 16) | g[:, 2]
    skey, perm = torch.sort(key, stable=True)
    first = torch.ones_like(skey, dtype=torch.bool)
    first[1:] = skey[1:] != skey[:-1]
    starts = torch.nonzero(first).squeeze(1)
    counts = torch.diff(starts, append=starts.new_tensor([skey.numel()]))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.cumsum(first, 0) - 1
    coord = torch.segment_reduce(points.coord.index_select(0, perm), "mean", lengths=counts)
    ukey = skey[starts]
    mask16 = (1 << 16) - 1
    grid = torch.stack([(ukey >> 32) & mask16, (ukey >> 16) & mask16, ukey & mask16], 1)
    batch = ukey >> 48
    offset = torch.cumsum(torch.bincount(batch, minlength=points.offset.numel()), 0)
    child = SparsePoints.build(coord, grid, batch, offset, orders)
    return child, inverse


@dataclass(eq=False)
class GeometryLevel:
    """One encoder level's geometry.

    Attributes:
        points: the level's voxels (:class:`SparsePoints`).
        inverse: ``(M_prev,)`` int64 row of this level that every point of the previous
            level is pooled into (:func:`pool_points`); ``None`` for level 0.
    """

    points: SparsePoints
    inverse: torch.Tensor | None = None


def _stage_orders(config, stage: int) -> tuple[str, ...]:
    if config.stage_orders is not None:
        return tuple(config.stage_orders[stage])
    return tuple(config.order)


def build_geometry(coord: torch.Tensor, grid_coord: torch.Tensor, offset: torch.Tensor, config,
                   shuffle: bool = False) -> list[GeometryLevel]:
    """The geometry of every level of an encoder.

    Args:
        coord: ``(N, 3)`` float32 coordinates, metres.
        grid_coord: ``(N, 3)`` int64 voxel indices (non-negative, unique per scene).
        offset: ``(B,)`` int64 cumulative counts.
        config: the :class:`~concerto_ros.models.config.EncoderConfig` (orders, strides,
            number of stages).
        shuffle: permute the serialization orders of every level at random (training-time
            ``shuffle_orders``; uses the global RNG).

    Returns:
        ``config.num_stages`` levels, finest first.

    Raises:
        ValueError: a grid too large to serialize (16 bits per axis).
    """
    batch = offset_to_batch(offset)

    def maybe_shuffle(points: SparsePoints) -> SparsePoints:
        if shuffle:
            return points.shuffled_orders(torch.randperm(len(points.serialization.orders)).tolist())
        return points

    points = maybe_shuffle(SparsePoints.build(coord, grid_coord, batch, offset, _stage_orders(config, 0)))
    levels = [GeometryLevel(points)]
    for s in range(1, config.num_stages):
        child, inverse = pool_points(points, config.stride[s - 1], _stage_orders(config, s))
        points = maybe_shuffle(child)
        levels.append(GeometryLevel(points, inverse))
    return levels


def stage_order_indices(config, stage: int) -> list[int]:
    """The distinct serialization rows the blocks of ``stage`` use (block ``i`` uses row
    ``i % len(order)``), ascending."""
    return sorted({i % len(config.order) for i in range(config.enc_depths[stage])})


def index_names(config) -> list[str]:
    """Names of the index inputs of the exported graph, in input order (after ``feat``).

    Per stage ``s``: ``s{s}_inverse`` (``s > 0``), ``s{s}_neighbours``,
    then ``s{s}_o{j}_gather`` / ``s{s}_o{j}_scatter`` for every serialization row ``j`` its
    blocks use (:func:`stage_order_indices`).
    """
    names = []
    for s in range(config.num_stages):
        if s > 0:
            names.append(f"s{s}_inverse")
        names.append(f"s{s}_neighbours")
        for j in stage_order_indices(config, s):
            names += [f"s{s}_o{j}_gather", f"s{s}_o{j}_scatter"]
    return names


@dataclass(eq=False)
class EncoderIndex:
    """The index tensors of all levels, by name (:func:`index_names`).

    Shapes (level ``s`` has ``M_s`` voxels, attention patches of ``K_s`` voxels in ``S_s``
    sequences):

    * ``s{s}_neighbours``: ``(M_s, 27)`` int32 one-based neighbour rows, 0 = absent
      (:attr:`~concerto_ros.models.sparse_conv.NeighbourMap.rows`);
    * ``s{s}_o{j}_gather``: ``(S_s, K_s)`` int64 rows of the patches of order ``j``;
    * ``s{s}_o{j}_scatter``: ``(M_s,)`` int64 row of each voxel in the flattened patches;
    * ``s{s}_inverse``: ``(M_{s-1},)`` int64 voxel of level ``s`` of every voxel of ``s-1``.

    Attributes:
        tensors: ``{name: tensor}``.
        patch_sizes: ``K_s`` per stage.
    """

    tensors: dict[str, torch.Tensor]
    patch_sizes: list[int]

    @classmethod
    def build(cls, levels: Sequence[GeometryLevel], config, flash: bool = False) -> "EncoderIndex":
        """Index tensors of ``levels`` (from :func:`build_geometry`) for ``config``.

        Args:
            flash: the flash patch layout (``K = patch_size``); the default is the
                reference's non-flash rule (:func:`attention_patch_size`), whose layouts are
                always uniform.

        Raises:
            ValueError: a non-uniform layout (``flash`` with scenes smaller than ``K``).
        """
        tensors: dict[str, torch.Tensor] = {}
        sizes = []
        for s, level in enumerate(levels):
            pts = level.points
            if s > 0:
                tensors[f"s{s}_inverse"] = level.inverse
            tensors[f"s{s}_neighbours"] = pts.voxels.neighbour_map().rows
            k = attention_patch_size(pts.counts, config.enc_patch_size[s], flash)
            sizes.append(k)
            for j in stage_order_indices(config, s):
                gather, scatter = pts.attention_index(j, k)
                tensors[f"s{s}_o{j}_gather"] = gather
                tensors[f"s{s}_o{j}_scatter"] = scatter
        return cls(tensors, sizes)

    @classmethod
    def from_points(cls, coord: torch.Tensor, grid_coord: torch.Tensor, offset: torch.Tensor,
                    config) -> "EncoderIndex":
        """:func:`build_geometry` then :meth:`build` (non-flash layout)."""
        return cls.build(build_geometry(coord, grid_coord, offset, config), config)

    def ordered(self, config) -> list[torch.Tensor]:
        """The tensors in :func:`index_names` order."""
        return [self.tensors[n] for n in index_names(config)]
