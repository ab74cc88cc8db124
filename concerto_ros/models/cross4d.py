"""Cross4D: a 4D point-cloud-video encoder (point tubes + transformer) with dense output.

The encoder is the one Cross4D-JEPA (arXiv 2607.00514) distils a frozen 2D teacher into.
It follows the P4Transformer / PSTNet family (Fan et al., ICLR 2021 / CVPR 2021):

1. **Point-tube embedding** (:class:`PointTubeEmbedding`): per anchor frame, farthest point
   sampling (:func:`farthest_point_sample`) picks ``num_anchors`` anchors; in every frame of
   a temporal kernel around it (``temporal_kernel`` frames, replicate padding at the clip
   ends), a ball query (:func:`ball_query`, radius ``radius`` m, ``num_neighbours``
   neighbours) gathers neighbours (:func:`group_points`); their displacements
   ``(dx, dy, dz, dt)`` (optionally with point features, e.g. colour) go through a shared
   point-wise MLP and are max-pooled over space, then over time.
2. **(x, y, z, t) position embedding** of every anchor, added to its tube feature.
3. **Transformer** (pre-norm, :class:`TransformerBlock`) over all spatio-temporal tokens.
4. **Dense output** (:func:`propagate`): every query point takes the inverse-distance
   weighted features of its ``k`` nearest anchors of the nearest anchor frame, refined by a
   small MLP of its own (x, y, z, t) (and colour) — the per-point feature the per-token head
   of the distillation (and the node's heads) read.

Everything is pure PyTorch (no compiled extensions): the CUDA ops of the reference family
(furthest point sampling, ball query, grouping) are written as a loop over anchors with a
running min-distance, and as a distance matrix plus ``topk`` / masked gathers. They run on
CPU and CUDA.

Conventions: points ``(B, T, N, 3) float32`` metres in the fixed frame, times ``(B, T)``
float seconds (any origin; stamps in ns / 1e9), features ``(..., C) float32``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Cross4DConfig",
    "CROSS4D_PRESETS",
    "cross4d_config",
    "build_cross4d",
    "count_parameters",
    "farthest_point_sample",
    "ball_query",
    "group_points",
    "knn",
    "propagate",
    "PointTubeEmbedding",
    "TransformerBlock",
    "Cross4DOutput",
    "Cross4DEncoder",
    "save_cross4d",
    "load_cross4d",
    "cross4d_to_dict",
    "cross4d_from_dict",
    "Cross4DFeatureExtractor",
    "AVERAGE_MODES",
]


# ============================================================================ config
@dataclass(frozen=True)
class Cross4DConfig:
    """Hyper-parameters of :class:`Cross4DEncoder`.

    Attributes:
        dim: token width C.
        depth: transformer blocks.
        num_heads: attention heads (``dim % num_heads == 0``).
        mlp_ratio: hidden width of the transformer MLP / dim.
        num_anchors: FPS anchors per anchor frame (P4Transformer: N / spatial stride 32).
        radius: ball-query radius, metres.
        num_neighbours: ball-query neighbours k per anchor and frame.
        temporal_kernel: frames per point tube (odd, centred on the anchor frame).
        temporal_stride: anchor frames are ``0, s, 2s, ...`` of the clip.
        time_scale: seconds that map to one unit of ``dt`` / ``t`` in the embeddings.
        point_channels: extra per-point input channels (0: xyz only; 3: RGB in [0, 1]).
        knn_propagate: anchors interpolated per query point (inverse-distance weights).
        dropout: attention/MLP dropout (training only).
    """

    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    num_anchors: int = 64
    radius: float = 0.3
    num_neighbours: int = 16
    temporal_kernel: int = 3
    temporal_stride: int = 1
    time_scale: float = 0.1
    point_channels: int = 0
    knn_propagate: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.depth < 0 or self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"Cross4DConfig: need dim >= 1 divisible by num_heads, depth >= 0; got {self}")
        if self.num_anchors < 1 or self.num_neighbours < 1 or self.knn_propagate < 1:
            raise ValueError("Cross4DConfig: num_anchors, num_neighbours and knn_propagate must be >= 1")
        if self.temporal_kernel < 1 or self.temporal_kernel % 2 == 0:
            raise ValueError(f"Cross4DConfig: temporal_kernel must be odd and >= 1, got {self.temporal_kernel}")
        if self.temporal_stride < 1:
            raise ValueError(f"Cross4DConfig: temporal_stride must be >= 1, got {self.temporal_stride}")
        if not (self.radius > 0 and self.time_scale > 0):
            raise ValueError("Cross4DConfig: radius (m) and time_scale (s) must be positive")
        if self.point_channels < 0:
            raise ValueError("Cross4DConfig: point_channels must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "Cross4DConfig":
        """Build from a dict (unknown keys raise ValueError naming them)."""
        names = {f.name for f in fields(cls)}
        merged = {**dict(d), **overrides}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(f"Cross4DConfig: unknown keys {unknown}")
        return cls(**merged)


#: Named sizes. ``tiny`` is for tests and CI; ``small`` is the on-robot default; ``base``
#: is the size of PST-Transformer-like models with more anchors and width.
CROSS4D_PRESETS: dict[str, Cross4DConfig] = {
    "tiny": Cross4DConfig(dim=32, depth=1, num_heads=2, mlp_ratio=2.0, num_anchors=32, radius=0.4,
                          num_neighbours=8, temporal_kernel=3),
    "small": Cross4DConfig(dim=128, depth=4, num_heads=4, mlp_ratio=4.0, num_anchors=128, radius=0.3,
                           num_neighbours=16, temporal_kernel=3),
    "base": Cross4DConfig(dim=384, depth=6, num_heads=6, mlp_ratio=4.0, num_anchors=256, radius=0.25,
                          num_neighbours=32, temporal_kernel=3),
}


def cross4d_config(preset: str, **overrides: Any) -> Cross4DConfig:
    """The named preset with ``overrides`` applied.

    Raises:
        ValueError: unknown preset (the message lists the known ones) or bad override.
    """
    if preset not in CROSS4D_PRESETS:
        raise ValueError(f"unknown Cross4D preset {preset!r}; known: {sorted(CROSS4D_PRESETS)}")
    return replace(CROSS4D_PRESETS[preset], **overrides)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return int(sum(p.numel() for p in module.parameters()))


# ============================================================================ point ops
def farthest_point_sample(points: torch.Tensor, num_samples: int, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Farthest point sampling, pure PyTorch (a loop over the ``num_samples`` picks).

    The first pick is the first valid point; each next pick is the point farthest (in
    Euclidean distance) from all picks so far. Ties take the lowest index.

    Args:
        points: ``(B, N, 3)`` float.
        num_samples: S >= 1 picks per row. With fewer than S valid points the picks repeat
            (the first pick is reused).
        valid: optional ``(B, N)`` bool; invalid points are never picked unless a row has
            no valid point at all.

    Returns:
        ``(B, S) int64`` indices into ``N``.
    """
    b, n, _ = points.shape
    dev = points.device
    pts = points.float()
    out = torch.zeros(b, num_samples, dtype=torch.long, device=dev)
    dist = torch.full((b, n), float("inf"), device=dev)
    if valid is not None:
        valid = valid.to(dev)
        dist = dist.masked_fill(~valid, -1.0)
        first = torch.argmax(valid.to(torch.int8), dim=1)  # first valid (0 when none)
    else:
        first = torch.zeros(b, dtype=torch.long, device=dev)
    cur = first
    rows = torch.arange(b, device=dev)
    for i in range(num_samples):
        out[:, i] = cur
        c = pts[rows, cur].unsqueeze(1)  # (B, 1, 3)
        d = ((pts - c) ** 2).sum(-1)
        if valid is not None:
            d = d.masked_fill(~valid, -1.0)
        dist = torch.minimum(dist, d)
        nxt = torch.argmax(dist, dim=1)
        # exhausted rows (all distances 0 or invalid): repeat the first pick
        exhausted = dist.gather(1, nxt[:, None]).squeeze(1) <= 0
        cur = torch.where(exhausted, first, nxt)
    return out


def ball_query(
    centres: torch.Tensor, points: torch.Tensor, radius: float, k: int, valid: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest points within ``radius`` of every centre (distance matrix + topk).

    Args:
        centres: ``(B, S, 3)`` float, metres.
        points: ``(B, N, 3)`` float, metres.
        radius: metres (inclusive).
        k: neighbours per centre. With ``N < k`` the last columns repeat the nearest.
        valid: optional ``(B, N)`` bool mask of usable points.

    Returns:
        ``(index (B, S, k) int64, mask (B, S, k) bool)``: neighbours sorted by distance;
        ``mask`` is False for slots with no point inside the ball (their index is the
        nearest point, or 0 when the row has no valid point).
    """
    d = torch.cdist(centres.float(), points.float())  # (B, S, N)
    if valid is not None:
        d = d.masked_fill(~valid[:, None, :].to(d.device), float("inf"))
    kk = min(k, d.shape[-1])
    dist, idx = torch.topk(d, kk, dim=-1, largest=False)
    if kk < k:
        pad = k - kk
        idx = torch.cat([idx, idx[..., :1].expand(*idx.shape[:-1], pad)], dim=-1)
        dist = torch.cat([dist, torch.full_like(dist[..., :1], float("inf")).expand(*dist.shape[:-1], pad)], dim=-1)
    mask = dist <= radius
    idx = torch.where(mask, idx, idx[..., :1].expand_as(idx))
    return idx, mask


def group_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather ``values (B, N, C)`` at ``index (B, S, k)`` -> ``(B, S, k, C)``."""
    b, s, k = index.shape
    flat = index.reshape(b, s * k, 1).expand(-1, -1, values.shape[-1])
    return values.gather(1, flat).reshape(b, s, k, values.shape[-1])


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` nearest ``ref (B, M, 3)`` points of every ``query (B, Q, 3)`` point.

    Returns:
        ``(dist (B, Q, k) float, index (B, Q, k) int64)``, ascending distance (metres).
        Computed in chunks of ``chunk`` queries to bound memory.
    """
    k = min(k, ref.shape[1])
    ds, ids = [], []
    for s in range(0, max(query.shape[1], 1), chunk):
        d = torch.cdist(query[:, s : s + chunk].float(), ref.float())
        dd, ii = torch.topk(d, k, dim=-1, largest=False)
        ds.append(dd)
        ids.append(ii)
    return torch.cat(ds, 1), torch.cat(ids, 1)


def propagate(query: torch.Tensor, anchors: torch.Tensor, feats: torch.Tensor, k: int = 3,
              eps: float = 1e-8) -> torch.Tensor:
    """Inverse-distance interpolation (PointNet++ feature propagation).

    Args:
        query: ``(B, Q, 3)`` points, metres.
        anchors: ``(B, A, 3)`` anchor positions.
        feats: ``(B, A, C)`` anchor features.
        k: nearest anchors used (weights ``1 / d`` normalised to sum 1; a query on an anchor
            gets that anchor's feature).

    Returns:
        ``(B, Q, C)``.
    """
    dist, idx = knn(query, anchors, k)
    w = 1.0 / (dist + eps)
    w = w / w.sum(-1, keepdim=True)
    b, q, a = query.shape[0], query.shape[1], anchors.shape[1]
    if a <= DENSE_WEIGHTS_MAX_ANCHORS:
        # the interpolation as a (Q, A) weight matrix with k non-zeros per row times the
        # (A, C) anchor features: one GEMM instead of a (Q, k, C) gather, product and sum
        wm = torch.zeros(b, q, a, dtype=feats.dtype, device=feats.device).scatter_(-1, idx, w.to(feats.dtype))
        return torch.bmm(wm, feats)
    return (group_points(feats, idx) * w.unsqueeze(-1).to(feats.dtype)).sum(-2)


#: :func:`propagate` multiplies a dense ``(Q, A)`` weight matrix up to this many anchors
#: (the encoder's 128 per frame), and gathers neighbour features beyond
DENSE_WEIGHTS_MAX_ANCHORS = 512

#: query points per chunk of the dense output: each chunk's temporaries (``(B, 4096, A)``
#: interpolation weights, ``(B, 4096, 2 C)`` MLP inputs) stay in the cache and below glibc's
#: mmap threshold instead of fresh page-faulted buffers of tens of MB per op; every op is per
#: query, so the output does not change
DENSE_CHUNK = 4096


# ============================================================================ modules
class PointTubeEmbedding(nn.Module):
    """P4Conv-style point-tube embedding (see the module docstring).

    Input ``points (B, T, N, 3)``, ``times (B, T)`` seconds, optional ``feats (B, T, N, P)``
    and ``valid (B, T, N)``; output ``(tokens (B, T', A, C), anchors (B, T', A, 3),
    anchor_frames list[int])`` with ``T' = ceil(T / temporal_stride)``, ``A = num_anchors``.
    Displacements are divided by ``radius`` (space) and ``time_scale`` (time).
    """

    def __init__(self, cfg: Cross4DConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.dim
        self.mlp = nn.Sequential(nn.Linear(4 + cfg.point_channels, c), nn.LayerNorm(c), nn.GELU(), nn.Linear(c, c))
        self.norm = nn.LayerNorm(c)

    def forward(self, points, times, feats=None, valid=None):
        cfg = self.cfg
        b, t, n, _ = points.shape
        half = cfg.temporal_kernel // 2
        anchor_frames = list(range(0, t, cfg.temporal_stride))
        tokens, anchors = [], []
        for ta in anchor_frames:
            va = None if valid is None else valid[:, ta]
            aidx = farthest_point_sample(points[:, ta], cfg.num_anchors, va)  # (B, A)
            a = points[:, ta].gather(1, aidx[..., None].expand(-1, -1, 3))  # (B, A, 3)
            per_time = []
            for o in range(-half, half + 1):
                tn = min(max(ta + o, 0), t - 1)
                vn = None if valid is None else valid[:, tn]
                idx, mask = ball_query(a, points[:, tn], cfg.radius, cfg.num_neighbours, vn)
                g = group_points(points[:, tn], idx) - a[:, :, None, :]  # (B, A, k, 3)
                dt = ((times[:, tn] - times[:, ta]) / cfg.time_scale).to(g.dtype)
                disp = torch.cat([g / cfg.radius, dt[:, None, None, None].expand(-1, g.shape[1], g.shape[2], 1)], -1)
                if cfg.point_channels:
                    disp = torch.cat([disp, group_points(feats[:, tn], idx).to(disp.dtype)], -1)
                h = self.mlp(disp)  # (B, A, k, C)
                h = h.masked_fill(~mask[..., None], float("-inf")).amax(2)
                h = torch.where(torch.isfinite(h), h, torch.zeros_like(h))  # empty balls -> 0
                per_time.append(h)
            tokens.append(torch.stack(per_time, 0).amax(0))
            anchors.append(a)
        return self.norm(torch.stack(tokens, 1)), torch.stack(anchors, 1), anchor_frames


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, l, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, l, c))
        return x + self.mlp(self.norm2(x))


@dataclass
class Cross4DOutput:
    """What :class:`Cross4DEncoder` returns.

    Attributes:
        tokens: ``(B, T', A, C)`` spatio-temporal token features after the transformer.
        anchors: ``(B, T', A, 3)`` anchor positions, metres, fixed frame.
        anchor_frames: clip frame index of each of the ``T'`` anchor frames.
        point_feat: ``(B, T, Q, C)`` per-point features of the query points (the input
            points when no query was given).
    """

    tokens: torch.Tensor
    anchors: torch.Tensor
    anchor_frames: list
    point_feat: torch.Tensor

    @property
    def global_feat(self) -> torch.Tensor:
        """``(B, C)`` clip feature: mean of the tokens."""
        return self.tokens.mean(dim=(1, 2))


class Cross4DEncoder(nn.Module):
    """The Cross4D 4D point-cloud-video encoder (see the module docstring).

    Args:
        config: a :class:`Cross4DConfig` (or its dict).

    Attributes:
        out_channels: per-point feature width (``config.dim``).
    """

    def __init__(self, config: Cross4DConfig | Mapping[str, Any]):
        super().__init__()
        cfg = config if isinstance(config, Cross4DConfig) else Cross4DConfig.from_dict(config)
        self.config = cfg
        c = cfg.dim
        self.tube = PointTubeEmbedding(cfg)
        self.pos_embed = nn.Sequential(nn.Linear(4, c), nn.GELU(), nn.Linear(c, c))
        self.blocks = nn.ModuleList(TransformerBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(c)
        self.point_embed = nn.Sequential(nn.Linear(4 + cfg.point_channels, c), nn.GELU(), nn.Linear(c, c))
        self.point_refine = nn.Sequential(nn.LayerNorm(2 * c), nn.Linear(2 * c, c), nn.GELU(), nn.Linear(c, c))
        self.out_norm = nn.LayerNorm(c)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def out_channels(self) -> int:
        return self.config.dim

    def _pos(self, xyz: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(..., 4)`` normalised (x, y, z, t): metres / radius*4 and seconds / time_scale."""
        return torch.cat([xyz / (4.0 * self.config.radius), t[..., None]], -1)

    def forward(self, points: torch.Tensor, times: torch.Tensor, feats: Optional[torch.Tensor] = None,
                valid: Optional[torch.Tensor] = None, query: Optional[torch.Tensor] = None,
                query_feats: Optional[torch.Tensor] = None) -> Cross4DOutput:
        """Encode a batch of clips.

        Args:
            points: ``(B, T, N, 3) float32`` metres in the fixed frame (frames oldest first).
            times: ``(B, T)`` float seconds of each frame (any origin).
            feats: ``(B, T, N, P)`` extra point channels when ``config.point_channels = P``
                (RGB in [0, 1]); None otherwise.
            valid: ``(B, T, N) bool`` (padding = False), or None (all valid).
            query: ``(B, T, Q, 3)`` points whose features are wanted (default: ``points``).
            query_feats: ``(B, T, Q, P)`` their extra channels (default: ``feats``).

        Returns:
            :class:`Cross4DOutput`.

        Raises:
            ValueError: bad shapes, or missing ``feats`` when the config needs them.
        """
        cfg = self.config
        if points.ndim != 4 or points.shape[-1] != 3:
            raise ValueError(f"Cross4DEncoder: points must be (B, T, N, 3), got {tuple(points.shape)}")
        b, t, n, _ = points.shape
        if times.shape != (b, t):
            raise ValueError(f"Cross4DEncoder: times must be (B, T) = {(b, t)}, got {tuple(times.shape)}")
        if cfg.point_channels and (feats is None or feats.shape[:3] != (b, t, n) or feats.shape[-1] != cfg.point_channels):
            raise ValueError(f"Cross4DEncoder: this model needs feats (B, T, N, {cfg.point_channels}), "
                             f"got {None if feats is None else tuple(feats.shape)}")
        if query is None:
            query, query_feats = points, feats
        elif cfg.point_channels and query_feats is None:
            raise ValueError("Cross4DEncoder: query_feats are needed with query for this model")
        points = points.float()
        # translation invariance: centre the clip on the mean of its valid points
        if valid is None:
            centre = points.mean(dim=(1, 2), keepdim=True)
        else:
            w = valid[..., None].float()
            centre = (points * w).sum((1, 2), keepdim=True) / w.sum((1, 2), keepdim=True).clamp_min(1.0)
        pts = points - centre
        qry = query.float() - centre
        tt = (times - times[:, :1]).float()  # seconds from the first frame
        tokens, anchors, aframes = self.tube(pts, tt, feats, valid)
        ta = tt[:, aframes] / cfg.time_scale  # (B, T')
        x = tokens + self.pos_embed(self._pos(anchors, ta[:, :, None].expand(-1, -1, anchors.shape[2])))
        tp, a = x.shape[1], x.shape[2]
        x = x.reshape(b, tp * a, -1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x).reshape(b, tp, a, -1)
        # dense output: each frame reads the nearest anchor frame
        aframes_t = torch.tensor(aframes, device=points.device)
        out = []
        for f in range(t):
            j = int(torch.argmin((aframes_t - f).abs()))
            chunks = [self._dense(qry[:, f, s:s + DENSE_CHUNK], anchors[:, j], x[:, j], tt[:, f],
                                  query_feats[:, f, s:s + DENSE_CHUNK] if cfg.point_channels else None)
                      for s in range(0, qry.shape[2], DENSE_CHUNK)]
            out.append(chunks[0] if len(chunks) == 1 else torch.cat(chunks, 1))
        return Cross4DOutput(tokens=x, anchors=anchors + centre.squeeze(2)[:, :, None, :], anchor_frames=aframes,
                             point_feat=torch.stack(out, 1))

    def _dense(self, qry: torch.Tensor, anchors: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
               qfeats: Optional[torch.Tensor]) -> torch.Tensor:
        """Features ``(B, Q, C)`` of query points ``qry (B, Q, 3)`` (centred) of one frame at
        time ``t (B,)`` s, from its anchor frame's ``anchors (B, A, 3)`` and tokens ``x (B, A, C)``."""
        cfg = self.config
        interp = propagate(qry, anchors, x, cfg.knn_propagate)
        pin = self._pos(qry, (t / cfg.time_scale)[:, None].expand(-1, qry.shape[1]))
        if cfg.point_channels:
            pin = torch.cat([pin, qfeats.to(pin.dtype)], -1)
        h = torch.cat([interp, self.point_embed(pin)], -1)
        return self.out_norm(interp + self.point_refine(h))


def build_cross4d(preset: str = "tiny", seed: Optional[int] = None, **overrides: Any) -> Cross4DEncoder:
    """A randomly initialised encoder of ``preset`` (seeded without touching the global RNG
    when ``seed`` is given)."""
    cfg = cross4d_config(preset, **overrides)
    if seed is None:
        return Cross4DEncoder(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return Cross4DEncoder(cfg)


# ============================================================================ checkpoints
CHECKPOINT_KIND = "cross4d"


def cross4d_to_dict(encoder: Cross4DEncoder, head: Optional[nn.Module] = None,
                    extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``{"kind": "cross4d", "config", "state_dict", "head_state_dict", "extra"}`` of ``encoder``
    (tensors detached, on the CPU): what :func:`save_cross4d` writes and a model bundle stores."""
    return {
        "kind": CHECKPOINT_KIND,
        "config": encoder.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "head_state_dict": None if head is None else {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "extra": dict(extra or {}),
    }


def save_cross4d(path: str | Path, encoder: Cross4DEncoder, head: Optional[nn.Module] = None,
                 extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``{"kind": "cross4d", "config": {...}, "state_dict", "head_state_dict", "extra"}``.

    ``config`` holds the encoder config dict; ``extra`` e.g. the preset name, the teacher
    and its feature width, the training step.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = cross4d_to_dict(encoder, head, extra)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def cross4d_from_dict(blob: Mapping[str, Any], source: str = "<in-memory Cross4D checkpoint>",
                      device: torch.device | str = "cpu") -> Cross4DEncoder:
    """The encoder of an in-memory :func:`cross4d_to_dict` blob (eval mode, on ``device``).

    Raises:
        ValueError: not a Cross4D blob (``kind`` / ``state_dict`` missing), an invalid config,
            or state-dict keys or shapes that do not fit the config (listed).
    """
    if not isinstance(blob, Mapping) or blob.get("kind") != CHECKPOINT_KIND or "state_dict" not in blob:
        raise ValueError(f"{source} is not a Cross4D checkpoint (expected a dict with kind='cross4d' and a "
                         "state_dict)")
    try:
        cfg = Cross4DConfig.from_dict(blob.get("config") or {})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: invalid Cross4D config: {exc}") from exc
    enc = Cross4DEncoder(cfg)
    expected = enc.state_dict()
    state = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
             for k, v in blob["state_dict"].items()}
    shapes = [f"{k}: {list(v.shape)} vs {list(expected[k].shape)}" for k, v in state.items()
              if k in expected and torch.is_tensor(v) and tuple(v.shape) != tuple(expected[k].shape)]
    if shapes:
        raise ValueError(f"{source}: state dict does not fit its config: shape mismatches {shapes[:5]}")
    res = enc.load_state_dict(state, strict=False)
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(f"{source}: state dict does not fit its config: missing {res.missing_keys}, "
                         f"unexpected {res.unexpected_keys}")
    return enc.to(device).eval()


def load_cross4d(path: str | Path, device: torch.device | str = "cpu") -> tuple[Cross4DEncoder, dict]:
    """Load an encoder written by :func:`save_cross4d` (eval mode, on ``device``).

    Returns:
        ``(encoder, blob)`` where ``blob`` is the whole checkpoint dict (``extra``,
        ``head_state_dict``, ...).

    Raises:
        FileNotFoundError: missing file.
        ValueError: not a Cross4D checkpoint, or state-dict keys that do not fit the
            config (missing/unexpected keys listed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Cross4D checkpoint '{path}' does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    return cross4d_from_dict(blob, str(path), device), blob


# ============================================================================ window extractor
#: How :class:`Cross4DFeatureExtractor` merges per-frame point features into voxels.
AVERAGE_MODES = ("points", "newest")

def window_frame_points(window, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxels touched by window frame ``frame`` and how many of its points fall in each.

    Returns:
        ``(voxels (V_i,) int64, counts (V_i,) int64)``: unique rows of ``window.coord``
        (points whose voxel the encoder budget dropped, ``inverse == -1``, are left out).
    """
    inv = window.frame_inverse(frame)
    return np.unique(inv[inv >= 0], return_counts=True)


def sample_indices(n: int, k: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``k`` indices into ``n`` items: a random subset without replacement when ``n >= k``,
    else all items then random repeats (``rng=None``: evenly spaced, deterministic).

    Raises:
        ValueError: ``n == 0``.
    """
    if n <= 0:
        raise ValueError("sample_indices: no points to sample from")
    if n >= k:
        if rng is None:
            return np.linspace(0, n - 1, k).round().astype(np.int64)
        return np.sort(rng.choice(n, k, replace=False))
    extra = (np.arange(k - n) % n) if rng is None else rng.integers(0, n, k - n)
    return np.concatenate([np.arange(n), extra]).astype(np.int64)


class Cross4DFeatureExtractor:
    """Per-voxel Cross4D features of a :class:`~concerto_ros.cloud.window.WindowCloud`.

    The encoder runs on the window's last ``num_frames`` frames. Frame ``i``'s input points
    are the representatives (``window.coord``) of the voxels its points fall in — the node's
    lifting and voxelisation, exactly what training uses (:mod:`concerto_ros.train.data`) —
    subsampled evenly to ``points_per_frame``; per-point features are then evaluated at every
    voxel of every frame and averaged over the window's points through ``window.inverse``
    (a voxel seen by several frames gets the point-count-weighted mean).

    Args:
        encoder: a :class:`Cross4DEncoder` (set to eval mode here).
        num_frames: frames T given to the encoder (the window's last T).
        points_per_frame: N points per frame fed to the encoder.
        device: torch device.
        description: where the weights came from (logs).
        average: ``"points"`` (the point-count-weighted mean over every frame that saw the
            voxel, as above) or ``"newest"`` (each voxel evaluated once, in the newest frame
            that saw it: about T times fewer queries, for CPU-bound nodes).

    Attributes:
        out_channels: D of :meth:`encode_window`'s output.
    """

    def __init__(self, encoder: Cross4DEncoder, num_frames: int = 4, points_per_frame: int = 2048,
                 device: torch.device | str = "cpu", description: str = "", average: str = "points"):
        if average not in AVERAGE_MODES:
            raise ValueError(f"Cross4DFeatureExtractor: average must be one of {AVERAGE_MODES}, got {average!r}")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.num_frames = int(num_frames)
        self.points_per_frame = int(points_per_frame)
        self.description = description
        self.average = average
        self.out_channels = encoder.out_channels
        #: the checkpoint's ``extra`` (preset, teacher, ...), kept when the encoder is bundled
        self.extra: dict[str, Any] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path | None, preset: str = "tiny", seed: int = 0, num_frames: int = 4,
                        points_per_frame: int = 2048, device: torch.device | str = "cpu",
                        log: Optional[Callable[[str], Any]] = None, average: str = "points") -> "Cross4DFeatureExtractor":
        """From a :func:`save_cross4d` checkpoint, or (``path`` empty) a seeded random ``preset``.

        Raises:
            FileNotFoundError / ValueError: see :func:`load_cross4d`.
        """
        log = log or (lambda _m: None)
        if path:
            enc, blob = load_cross4d(path, device)
            extra = blob.get("extra", {})
            desc = (f"Cross4D encoder from {path} (preset {extra.get('preset', '?')}, "
                    f"teacher {extra.get('teacher', '?')})")
            num_frames = int(extra.get("num_frames", num_frames))
            points_per_frame = int(extra.get("points_per_frame", points_per_frame))
        else:
            enc = build_cross4d(preset, seed=seed)
            desc = (f"SEEDED RANDOM Cross4D '{preset}' encoder (seed {seed}; no cross4d.checkpoint set): "
                    "features are not meaningful")
        ext = cls._with_log(enc, num_frames, points_per_frame, device, desc, average, log)
        ext.extra = dict(blob.get("extra") or {}) if path else {"preset": preset, "seed": int(seed)}
        return ext

    @classmethod
    def from_blob(cls, blob: Mapping[str, Any], source: str = "<in-memory Cross4D checkpoint>",
                  device: torch.device | str = "cpu", log: Optional[Callable[[str], Any]] = None
                  ) -> "Cross4DFeatureExtractor":
        """From an in-memory :func:`cross4d_to_dict` blob carrying ``settings``
        (``{"num_frames", "points_per_frame", "average"}``, as a model bundle stores it; missing
        entries fall back to ``extra`` and then to the defaults 4, 2048, ``points``).

        Raises:
            ValueError: see :func:`cross4d_from_dict`, or an unknown ``average``.
        """
        enc = cross4d_from_dict(blob, source, device)
        extra = dict(blob.get("extra") or {})
        settings = dict(blob.get("settings") or {})
        num_frames = int(settings.get("num_frames", extra.get("num_frames", 4)))
        points_per_frame = int(settings.get("points_per_frame", extra.get("points_per_frame", 2048)))
        average = str(settings.get("average", "points"))
        desc = (f"Cross4D encoder from {source} (preset {extra.get('preset', '?')}, "
                f"teacher {extra.get('teacher', '?')})")
        ext = cls._with_log(enc, num_frames, points_per_frame, device, desc, average, log or (lambda _m: None))
        ext.extra = extra
        return ext

    @classmethod
    def _with_log(cls, enc, num_frames, points_per_frame, device, desc, average, log) -> "Cross4DFeatureExtractor":
        ext = cls(enc, num_frames=num_frames, points_per_frame=points_per_frame, device=device, description=desc,
                  average=average)
        log(f"{desc} | {count_parameters(enc) / 1e6:.3f}M parameters, {ext.out_channels}-d, "
            f"{num_frames} frames x {points_per_frame} points, average '{average}'")
        return ext

    @torch.inference_mode()
    def encode_window(self, window) -> torch.Tensor:
        """``(M, D) float32`` per-voxel features (on ``self.device``) of ``window``.

        Voxels touched only by frames older than the last ``num_frames`` get zeros.

        Raises:
            ValueError: the window has no points.
        """
        if window.num_points == 0:
            raise ValueError("Cross4DFeatureExtractor.encode_window: the window has no points")
        cfg = self.encoder.config
        t_all = window.num_frames
        frames = [f for f in range(max(0, t_all - self.num_frames), t_all)
                  if window.frame_slice(f).stop > window.frame_slice(f).start]
        coord = torch.as_tensor(window.coord, dtype=torch.float32)
        colour = torch.as_tensor(window.color, dtype=torch.float32) / 255.0
        pts, fts, qry, qft, vox, cnts = [], [], [], [], [], []
        qmax = 0
        per_frame = [window_frame_points(window, f) for f in frames]
        for v, _ in per_frame:
            sel = v[sample_indices(len(v), self.points_per_frame)]
            pts.append(coord[sel])
            fts.append(colour[sel])
        if self.average == "newest":  # each voxel once, in the newest frame that saw it
            seen = np.zeros(window.num_voxels, dtype=bool)
            for i in range(len(per_frame) - 1, -1, -1):
                v, _ = per_frame[i]
                keep = ~seen[v]
                seen[v] = True
                per_frame[i] = (v[keep], np.ones(int(keep.sum()), dtype=np.int64))
        for v, c in per_frame:
            if len(v) == 0:  # nothing new in this frame: one dummy query with weight 0
                v, c = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
            vox.append(v)
            cnts.append(c)
            qmax = max(qmax, len(v))
        for v in vox:  # pad queries by repeating the first voxel (results ignored)
            pad = np.concatenate([v, np.full(qmax - len(v), v[0], dtype=v.dtype)])
            qry.append(coord[pad])
            qft.append(colour[pad])
        times = torch.as_tensor((window.stamps_ns[frames] - window.stamps_ns[frames[0]]) * 1e-9, dtype=torch.float32)
        dev = self.device
        out = self.encoder(
            torch.stack(pts)[None].to(dev), times[None].to(dev),
            feats=torch.stack(fts)[None].to(dev) if cfg.point_channels else None,
            query=torch.stack(qry)[None].to(dev),
            query_feats=torch.stack(qft)[None].to(dev) if cfg.point_channels else None,
        )
        pf = out.point_feat[0].float()  # (T, Qmax, C)
        m = window.num_voxels
        acc = torch.zeros(m, pf.shape[-1], device=dev)
        tot = torch.zeros(m, device=dev)
        for i, (v, c) in enumerate(zip(vox, cnts)):
            vi = torch.as_tensor(v, device=dev)
            ci = torch.as_tensor(c, dtype=torch.float32, device=dev)
            acc.index_add_(0, vi, pf[i, : len(v)] * ci[:, None])
            tot.index_add_(0, vi, ci)
        return acc / tot.clamp_min(1.0)[:, None]
