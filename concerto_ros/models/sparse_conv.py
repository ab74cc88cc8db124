"""Submanifold sparse 3-D convolution with a pure-torch backend and an spconv backend.

The conditional positional encoding (xCPE) of Point Transformer V3 (Wu et al., CVPR 2024,
Sec. 3.3) is a submanifold sparse convolution ``SubMConv3d(C, C, kernel_size=3,
bias=True)``: an output exists exactly at every input voxel, and

    out[p] = bias + sum_{(a,b,c) in {0,1,2}^3} W[:, a, b, c, :] @ in[p + (a-1, b-1, c-1)]

where the sum runs over the neighbours ``p + (a-1, b-1, c-1)`` (in ``(x, y, z)`` of
``grid_coord``, same sample) that are present in the input. The weight uses spconv's
layout ``[C_out, 3, 3, 3, C_in]`` so that released checkpoints (Sonata / Concerto, Zhang et
al., arXiv 2510.23607) load unchanged (keys ``...cpe.0.weight`` / ``...cpe.0.bias``).

Backends (one :class:`SubMConv3d` module, same parameters, same results):

* ``"torch"``: the neighbour map (for every voxel, the row of its neighbour at each of the
  27 kernel offsets, an ``(N, 27)`` index) is built once per voxel set by hashing
  ``(batch, x, y, z)`` into int64 keys and looking them up in a dense int32 table (sorted
  keys and ``torch.searchsorted`` for very sparse boxes), and cached on :class:`VoxelGrid`
  (shared by every block of an encoder stage, like spconv's ``indice_key``). Rows are stored
  one-based with 0 for "absent", so that one zero row put in front of the features serves
  every missing neighbour. The convolution is then a gather of the ``27`` neighbour rows of
  a block of voxels into an ``(R, 27 C_in)`` matrix and one GEMM with the ``(27 C_in,
  C_out)`` kernel (:func:`submconv3d_rows`); blocks of about 2 MB keep the gathered matrix
  in the L2 cache (3-4x faster than 27 separate gather + GEMM passes over the whole set).
  No scatter and no atomics: deterministic for a fixed number of threads. Default on CPU
  and wherever spconv has no wheel, and the form the exported graph uses
  (:mod:`concerto_ros.models.export`). The lookup table of the largest box seen (4 bytes
  per cell, at most :data:`TABLE_MAX_CELLS`) is kept for the next call;
  :func:`release_neighbour_tables` frees it. Under ``torch.autocast`` it computes in the
  autocast dtype.
* ``"spconv"``: ``spconv.pytorch.SubMConv3d`` with the same weight tensor. Default on CUDA
  when spconv is importable. spconv's CPU kernels are wrong with more than one thread and
  refuse a bias in eval mode, so on CPU this backend runs under ``torch.set_num_threads(1)``
  (restored afterwards) and the bias is always added outside spconv. Under
  ``torch.autocast`` it runs in float32.

The two backends sum the 27 terms in different orders, so they agree to float32
rounding (about 1e-6 on unit-scale features; ``benchmarks/bench_encoder.py`` prints the
difference); the tests require ``<= 1e-5`` per convolution and ``<= 1e-4`` on the golden
outputs.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "BACKENDS",
    "KERNEL_OFFSETS",
    "CENTER",
    "NeighbourMap",
    "VoxelGrid",
    "build_neighbour_map",
    "release_neighbour_tables",
    "conv_weight_matrix",
    "submconv3d_rows",
    "submconv3d_torch",
    "spconv_available",
    "resolve_backend",
    "SubMConv3d",
]

#: values accepted for ``sparse_conv_backend``
BACKENDS = ("auto", "torch", "spconv")

#: ``(27, 3)`` int64 kernel offsets ``(a-1, b-1, c-1)`` in the order of the flattened
#: kernel index ``k = 9a + 3b + c`` of the weight ``[C_out, 3, 3, 3, C_in]``
KERNEL_OFFSETS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.int64)

#: flattened kernel index of the centre offset (0, 0, 0)
CENTER = 13


@dataclass(frozen=True, eq=False)
class NeighbourMap:
    """Neighbours of every voxel of a voxel set under a 3x3x3 submanifold kernel.

    Attributes:
        rows: ``(N, 27)`` int32 (int64 when ``N >= 2**31 - 1``), one-based:
            ``rows[i, k] = 1 + j`` where ``j`` is the row of the voxel at
            ``grid_coord[i] + KERNEL_OFFSETS[k]`` in the same sample, and ``0`` where there
            is none (it addresses the zero row that :func:`submconv3d_rows` puts in front
            of the features). Column :data:`CENTER` is ``1 + arange(N)``.
        num_voxels: ``N``.
    """

    rows: torch.Tensor
    num_voxels: int

    @property
    def index(self) -> torch.Tensor:
        """``(27, N)`` zero-based rows with the sentinel ``N`` for "absent" (same dtype)."""
        n = self.num_voxels
        index = self.rows.t() - 1
        return torch.where(index < 0, torch.full_like(index, n), index)

    @property
    def counts(self) -> torch.Tensor:
        """``(27,)`` int64 present neighbours per kernel offset."""
        return (self.rows > 0).sum(0)

    @property
    def offset_counts(self) -> list[int]:
        return self.counts.tolist()

    @property
    def num_pairs(self) -> int:
        """Present (voxel, neighbour) pairs, centre included."""
        return int((self.rows > 0).sum())

    def dense_index(self) -> torch.Tensor:
        """``(N, 27)`` int64: neighbour row per offset, ``N`` where absent."""
        return self.index.t().long().contiguous()


#: the lookup-table neighbour search is used while the padded voxel box has at most
#: ``max(TABLE_MIN_CELLS, TABLE_CELLS_PER_VOXEL * N)`` cells and at most ``TABLE_MAX_CELLS``
#: (int32 table: 4 bytes per cell, kept between calls); larger boxes use sorted keys
TABLE_MIN_CELLS = 1 << 22
TABLE_CELLS_PER_VOXEL = 160
TABLE_MAX_CELLS = 1 << 26


def build_neighbour_map(grid_coord: torch.Tensor, batch: torch.Tensor) -> NeighbourMap:
    """Find the neighbours of every voxel under a 3x3x3 kernel.

    Voxels are hashed to int64 keys ``((b * SX + x') * SY + y') * SZ + z'`` (coordinates
    shifted by one so that offsets never leave the key box). While the key box is small
    (see :data:`TABLE_MAX_CELLS`) an int32 lookup table ``key -> 1 + row`` (``0`` = empty)
    is filled and the 27 offsets of every voxel are one gather ``table[key + shift]``.
    Otherwise the keys are sorted once and the voxels ``(x+dx, y+dy, z-1 .. z+1)`` of a
    sample, at most three consecutive sorted entries, are found with one
    ``torch.searchsorted`` per ``(dx, dy)`` for four columns; the other half of the offsets
    follows by symmetry (if ``j`` is the ``+d`` neighbour of ``i``, ``i`` is the ``-d``
    neighbour of ``j``). Both give the same map.

    Args:
        grid_coord: ``(N, 3)`` integer voxel indices ``(x, y, z)``, unique within a
            sample (with duplicates the result is unspecified).
        batch: ``(N,)`` integer sample index of each voxel.

    Returns:
        A :class:`NeighbourMap` on the device of ``grid_coord``.

    Raises:
        ValueError: bad shapes, or a grid too large for int64 keys.
    """
    if grid_coord.ndim != 2 or grid_coord.shape[1] != 3:
        raise ValueError(f"grid_coord must have shape (N, 3), got {tuple(grid_coord.shape)}")
    if batch.shape != grid_coord.shape[:1]:
        raise ValueError(
            f"batch must have shape ({grid_coord.shape[0]},), got {tuple(batch.shape)}"
        )
    n = grid_coord.shape[0]
    device = grid_coord.device
    idx_dtype = torch.int32 if n < 2**31 - 1 else torch.int64
    if n == 0:
        return NeighbourMap(torch.zeros(0, 27, dtype=idx_dtype, device=device), 0)
    g = grid_coord.long()
    g = g - g.min(0).values + 1
    sx, sy, sz = (g.max(0).values + 2).tolist()
    b = batch.long()
    volume = (int(b.max()) + 1) * sx * sy * sz
    if volume >= 2**62:
        raise ValueError("voxel grid too large to hash into int64 keys")
    key = ((b * sx + g[:, 0]) * sy + g[:, 1]) * sz + g[:, 2]
    shifts = (KERNEL_OFFSETS[:, 0] * sy + KERNEL_OFFSETS[:, 1]) * sz + KERNEL_OFFSETS[:, 2]
    if volume <= min(max(TABLE_MIN_CELLS, TABLE_CELLS_PER_VOXEL * n), TABLE_MAX_CELLS):
        rows = _neighbours_by_table(key, volume, shifts.tolist(), n, idx_dtype)
    else:
        rows = _neighbours_by_sorting(key, volume, sy, sz, n, idx_dtype)
    return NeighbourMap(rows, n)


#: reusable all-zero lookup tables per (device, dtype); see :func:`release_neighbour_tables`
_TABLES: dict[tuple[str, torch.dtype], torch.Tensor] = {}
_TABLES_LOCK = threading.Lock()


def release_neighbour_tables() -> None:
    """Free the lookup tables kept between calls of :func:`build_neighbour_map`.

    The table of the largest voxel box seen so far (4 bytes per cell, at most
    :data:`TABLE_MAX_CELLS` cells, about 155 MB for a 5-frame 2 cm Kinect window) is kept
    per device, all zero, so that the next map of a similar box skips allocating and
    filling it (only the ``N`` written cells are reset afterwards).
    """
    with _TABLES_LOCK:
        _TABLES.clear()


def _neighbours_by_table(
    key: torch.Tensor, volume: int, shifts: list[int], n: int, dtype: torch.dtype
) -> torch.Tensor:
    device = key.device
    slot = (str(device), dtype)
    locked = _TABLES_LOCK.acquire(blocking=False)  # another thread busy: use a private table
    try:
        cached = _TABLES.pop(slot, None) if locked else None
        # normal (not inference-mode) tensors, so that a kept table can be updated in any mode
        with torch.inference_mode(False), torch.no_grad():
            if cached is None or cached.numel() < volume:
                cached = torch.zeros((volume,), dtype=dtype, device=device)
            rows = _lookup_neighbours(cached[:volume], key, volume, shifts, n, dtype)
        if locked:
            _TABLES[slot] = cached
    finally:
        if locked:
            _TABLES_LOCK.release()
    return rows


def _lookup_neighbours(
    table: torch.Tensor, key: torch.Tensor, volume: int, shifts: list[int], n: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Fill ``table[key] = 1 + row``, gather the ``(N, 27)`` one-based neighbour rows (one
    gather of ``27 N`` keys, 0 where empty), reset ``table[key] = 0``."""
    device = key.device
    table[key] = torch.arange(1, n + 1, dtype=dtype, device=device)
    written = key
    if volume < 2**31:
        key = key.int()  # int32 gathers are faster on CPU
    probe = key.unsqueeze(1) + torch.tensor(shifts, dtype=key.dtype, device=device).unsqueeze(0)
    rows = table.index_select(0, probe.view(-1)).view(n, 27)  # centre column: table[key]
    table[written] = 0
    return rows


def _neighbours_by_sorting(
    key: torch.Tensor, volume: int, sy: int, sz: int, n: int, dtype: torch.dtype
) -> torch.Tensor:
    device = key.device
    if volume < 2**31 - 2 * sy * sz:  # int32 keys are about twice as fast on CPU
        key = key.int()
    sk, perm = torch.sort(key)
    # same column (dx, dy) = (0, 0): the +z neighbour is the next sorted key
    nxt = torch.nonzero(sk[1:] == sk[:-1] + 1).squeeze(1)
    # four (dx, dy) columns, each answered by three consecutive sorted keys
    columns = torch.tensor([[0, 1], [1, -1], [1, 0], [1, 1]], device=device)
    shift = ((columns[:, 0] * sy + columns[:, 1]) * sz).to(sk.dtype)
    base = sk.unsqueeze(0) + shift.unsqueeze(1)  # (4, N)
    pos = torch.searchsorted(sk, base - 1, out_int32=sk.dtype == torch.int32)
    cand = pos.unsqueeze(1) + torch.arange(3, device=device, dtype=pos.dtype).view(1, 3, 1)
    dz = sk[cand.clamp(max=n - 1)] - base.unsqueeze(1)
    flat = torch.nonzero(((dz.abs() <= 1) & (cand < n)).view(-1)).squeeze(1)
    col = torch.div(flat, 3 * n, rounding_mode="floor")
    col_k = (columns[:, 0] + 1) * 9 + (columns[:, 1] + 1) * 3 + 1  # k of dz = 0
    half_out = torch.cat([nxt, flat % n])
    half_in = torch.cat([nxt + 1, cand.view(-1)[flat].long()])
    half_k = torch.cat([torch.full_like(nxt, CENTER + 1), col_k[col] + dz.view(-1)[flat].long()])
    # mirror: i is the -d neighbour of j when j is the +d neighbour of i
    out_index = perm[torch.cat([half_out, half_in])]
    in_index = perm[torch.cat([half_in, half_out])]
    k_all = torch.cat([half_k, 26 - half_k])
    rows = torch.zeros((n, 27), dtype=dtype, device=device)
    rows[:, CENTER] = torch.arange(1, n + 1, dtype=dtype, device=device)
    rows[out_index, k_all] = (in_index + 1).to(dtype)
    return rows


def conv_weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The ``(27 C_in, C_out)`` matrix of a ``(C_out, 3, 3, 3, C_in)`` kernel (spconv
    layout): rows ``k C_in .. (k+1) C_in - 1`` hold the offset ``k = 9a + 3b + c``
    (:data:`KERNEL_OFFSETS`), matching the columns of :attr:`NeighbourMap.rows`."""
    c_out, c_in = weight.shape[0], weight.shape[-1]
    return weight.permute(1, 2, 3, 4, 0).reshape(27 * c_in, c_out)


#: bytes of gathered neighbour features per block of :func:`submconv3d_rows` and per
#: intra-op thread (about one core's L2 cache; more threads take bigger blocks, so that
#: every block still splits into cache-sized parts and the number of parallel regions,
#: each a synchronisation point, stays low)
CHUNK_BYTES = 1 << 21


def submconv3d_rows(
    feat: torch.Tensor,
    weight_matrix: torch.Tensor,
    bias: torch.Tensor | None,
    rows: torch.Tensor,
    chunk_rows: int | None = 0,
) -> torch.Tensor:
    """Submanifold 3x3x3 convolution as gather + GEMM over blocks of voxels.

    ``out[i] = bias + concat_k(pad(feat)[rows[i, k]]) @ weight_matrix`` where ``pad``
    puts one zero row in front of ``feat`` (absent neighbours, ``rows == 0``, read it).
    Every output row is one dot product over the ``27 C_in`` gathered values, so the
    result does not depend on the block size.

    Args:
        feat: ``(N, C_in)`` float features.
        weight_matrix: ``(27 C_in, C_out)`` (:func:`conv_weight_matrix`), dtype of ``feat``.
        bias: ``(C_out,)`` or ``None``.
        rows: ``(N, 27)`` one-based neighbour rows (:attr:`NeighbourMap.rows`), int32 or
            int64.
        chunk_rows: voxels per block; ``0`` picks about :data:`CHUNK_BYTES` of gathered
            features per block and thread; ``None`` gathers all ``N`` at once (the exported graph's
            form: no data-dependent loop), as do autograd (one gather whose backward is
            one ``index_add``) and GPUs (one kernel rather than many small ones).

    Returns:
        ``(N, C_out)`` in the dtype of ``feat``.
    """
    n, c_in = feat.shape
    padded = torch.cat([feat.new_zeros(1, c_in), feat])
    flat = rows.reshape(-1)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (feat, weight_matrix, bias))
    if chunk_rows is None or grad or feat.device.type != "cpu":  # one block (see chunk_rows)
        gathered = padded.index_select(0, flat).view(-1, 27 * c_in)
        return gathered @ weight_matrix if bias is None else torch.addmm(bias, gathered, weight_matrix)
    step = chunk_rows or max(64, CHUNK_BYTES * torch.get_num_threads() // (27 * c_in * feat.element_size()))
    out = feat.new_empty(n, weight_matrix.shape[1])
    for start in range(0, n, step):
        end = min(n, start + step)
        gathered = padded.index_select(0, flat[start * 27:end * 27]).view(end - start, 27 * c_in)
        if bias is None:
            torch.mm(gathered, weight_matrix, out=out[start:end])
        else:
            torch.addmm(bias, gathered, weight_matrix, out=out[start:end])
    return out


def submconv3d_torch(
    feat: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    neighbours: NeighbourMap | torch.Tensor,
    chunk_rows: int | None = 0,
) -> torch.Tensor:
    """Submanifold 3x3x3 convolution on a neighbour map (:func:`submconv3d_rows`).

    Args:
        feat: ``(N, C_in)`` float features, rows aligned with the voxels of ``neighbours``.
        weight: ``(C_out, 3, 3, 3, C_in)`` kernel (spconv layout).
        bias: ``(C_out,)`` or ``None``.
        neighbours: the map from :func:`build_neighbour_map` for these voxels, or its
            ``(N, 27)`` one-based :attr:`~NeighbourMap.rows`.
        chunk_rows: see :func:`submconv3d_rows`.

    Returns:
        ``(N, C_out)`` output features, dtype of ``feat`` (under ``torch.autocast``: the
        autocast dtype, weights cast to it).

    Raises:
        ValueError: row count or channel mismatch.
    """
    rows = neighbours.rows if isinstance(neighbours, NeighbourMap) else neighbours
    n, c_in = feat.shape
    if n != rows.shape[0]:
        raise ValueError(f"feat has {n} rows but the neighbour map {rows.shape[0]}")
    if tuple(weight.shape[1:]) != (3, 3, 3, c_in):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not fit C_in={c_in}")
    device_type = feat.device.type
    if torch.is_autocast_enabled(device_type):  # AMP: compute in the autocast dtype
        with torch.autocast(device_type=device_type, enabled=False):
            return submconv3d_torch(
                feat.to(torch.get_autocast_dtype(device_type)), weight, bias, rows, chunk_rows
            )
    w = conv_weight_matrix(weight).to(feat.dtype)
    b = None if bias is None else bias.to(feat.dtype)
    return submconv3d_rows(feat, w, b, rows, chunk_rows)


_SPCONV_STATE: dict[str, Any] = {}


def spconv_available() -> bool:
    """Whether ``spconv.pytorch`` can be imported (result cached)."""
    if "ok" not in _SPCONV_STATE:
        try:
            import spconv.pytorch  # noqa: F401

            _SPCONV_STATE["ok"] = True
        except Exception:  # ImportError, or a broken CUDA build
            _SPCONV_STATE["ok"] = False
    return _SPCONV_STATE["ok"]


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Pick the concrete sparse-convolution backend.

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"spconv"``.
        device: the device the features live on.

    Returns:
        ``"torch"`` or ``"spconv"``: ``"auto"`` gives ``"spconv"`` on CUDA when spconv is
        importable and ``"torch"`` otherwise.

    Raises:
        ValueError: unknown backend name.
        ImportError: ``"spconv"`` requested but spconv cannot be imported.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown sparse_conv_backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torch":
        return "torch"
    if backend == "spconv":
        if not spconv_available():
            raise ImportError("sparse_conv_backend='spconv' but spconv.pytorch cannot be imported")
        return "spconv"
    device = torch.device(device)
    return "spconv" if device.type == "cuda" and spconv_available() else "torch"


@dataclass(eq=False)
class VoxelGrid:
    """The voxel set of one encoder stage, with the sparse-convolution caches.

    Attributes:
        grid_coord: ``(N, 3)`` int64 voxel indices ``(x, y, z)``.
        batch: ``(N,)`` int64 sample index of each voxel.
        batch_size: number of samples ``B``.

    The neighbour map (torch backend) and the spconv tensors holding spconv's indice
    pairs (spconv backend, keyed by ``indice_key``) are built on first use and reused by
    every convolution over the same voxels.
    """

    grid_coord: torch.Tensor
    batch: torch.Tensor
    batch_size: int
    _neighbours: NeighbourMap | None = field(default=None, repr=False)
    _spconv_tensors: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_voxels(self) -> int:
        return int(self.grid_coord.shape[0])

    def neighbour_map(self) -> NeighbourMap:
        """The cached 27-neighbour map (built on first call)."""
        if self._neighbours is None:
            self._neighbours = build_neighbour_map(self.grid_coord, self.batch)
        return self._neighbours


def _spconv_submconv(
    conv: nn.Module, feat: torch.Tensor, voxels: VoxelGrid, indice_key: str
) -> torch.Tensor:
    import spconv.pytorch as spconv

    cached = voxels._spconv_tensors.get(indice_key)
    if cached is None:
        indices = torch.cat([voxels.batch.view(-1, 1), voxels.grid_coord], dim=1).int()
        shape = (voxels.grid_coord.max(0).values + 1).tolist() if voxels.num_voxels else [1] * 3
        tensor = spconv.SparseConvTensor(
            features=feat,
            indices=indices.contiguous(),
            spatial_shape=shape,
            batch_size=voxels.batch_size,
        )
    else:
        tensor = cached.replace_feature(feat)
    out = conv(tensor)
    voxels._spconv_tensors[indice_key] = out  # carries the indice pairs for the next block
    return out.features


class SubMConv3d(nn.Module):
    """Submanifold 3x3x3 sparse convolution (spconv-compatible parameters).

    Parameters (state-dict names equal spconv's ``SubMConv3d``):

    * ``weight``: ``(C_out, 3, 3, 3, C_in)``, kernel index ``(a, b, c)`` pairs the input
      voxel at offset ``(a-1, b-1, c-1)`` in ``(x, y, z)``;
    * ``bias``: ``(C_out,)`` when ``bias=True``.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: must be 3 (the only size used by PTv3's xCPE).
        bias: add a learned bias.
        indice_key: name under which the spconv backend caches its indice pairs on the
            :class:`VoxelGrid` (PTv3 uses ``"stage{s}"``).
        backend: ``"auto"``, ``"torch"`` or ``"spconv"`` (see :func:`resolve_backend`).

    Raises:
        ValueError: ``kernel_size != 3`` or unknown backend.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        indice_key: str | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if kernel_size != 3:
            raise ValueError(f"only kernel_size=3 is supported, got {kernel_size}")
        if backend not in BACKENDS:
            raise ValueError(
                f"unknown sparse_conv_backend {backend!r}; expected one of {BACKENDS}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.indice_key = indice_key or "subm3"
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._spconv_module: list[nn.Module] = []  # unregistered, holds no parameters
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal weight (std 0.02) and zero bias, as the reference initialises."""
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size=3, "
            f"bias={self.bias is not None}, indice_key={self.indice_key!r}, "
            f"backend={self.backend!r}"
        )

    def _spconv(self) -> nn.Module:
        if not self._spconv_module:
            import spconv.pytorch as spconv

            self._spconv_module.append(
                spconv.SubMConv3d(
                    self.in_channels,
                    self.out_channels,
                    kernel_size=3,
                    bias=False,
                    indice_key=self.indice_key,
                )
            )
        conv = self._spconv_module[0]
        conv.weight = self.weight  # share our parameter; spconv holds no copy
        conv.train(self.training)
        return conv

    def forward_rows(self, feat: torch.Tensor, rows: torch.Tensor, chunk_rows: int | None = 0
                     ) -> torch.Tensor:
        """The torch backend on explicit ``(N, 27)`` one-based neighbour rows
        (:attr:`NeighbourMap.rows`): ``(N, C_in)`` -> ``(N, C_out)``. ``chunk_rows=None`` is
        the exported graph's form (see :func:`submconv3d_rows`)."""
        return submconv3d_torch(feat, self.weight, self.bias, rows, chunk_rows)

    def forward(self, feat: torch.Tensor, voxels: VoxelGrid) -> torch.Tensor:
        """Convolve ``(N, C_in)`` features on ``voxels``; returns ``(N, C_out)``."""
        backend = resolve_backend(self.backend, feat.device)
        if backend == "torch":
            return submconv3d_torch(feat, self.weight, self.bias, voxels.neighbour_map())
        conv = self._spconv()
        if torch.is_autocast_enabled(feat.device.type):  # spconv: float32 weights and features
            with torch.autocast(device_type=feat.device.type, enabled=False):
                return self.forward(feat.float(), voxels)
        if feat.device.type == "cpu":
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                out = _spconv_submconv(conv, feat, voxels, self.indice_key)
            finally:
                torch.set_num_threads(threads)
        else:
            out = _spconv_submconv(conv, feat, voxels, self.indice_key)
        if self.bias is not None:
            out = out + self.bias
        return out
