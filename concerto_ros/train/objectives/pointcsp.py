"""``pointcsp``: cross-sample semantic propagation (PointCSP, arXiv 2605.01759).

During pre-training the per-voxel features of all samples of a batch are laid end to end in
serialization order (the encoder's space-filling-curve order, whose code carries the sample
index in its high bits) and pass through a residual state-space block (:class:`CSPBlock`:
``x + GatedDeltaNet(LN(x))`` then ``x + MLP(LN(x))``) before the distillation head, so the
recurrent state carries information from one sample into the next. The recurrence is the
gated delta rule of Gated DeltaNet (Yang, Kautz and Hatamizadeh, arXiv 2412.06464; an
enhanced Mamba2), per head ``h`` with unit keys::

    S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,      o_t = q_t S_t

(``S`` is ``d_k x d_v``, ``alpha_t = exp(-exp(A_h) softplus(a_t))`` a Mamba2-style decay,
``beta_t = sigmoid(b_t)`` the delta-rule step), computed with a chunked scan
(:func:`chunked_gated_delta`, WY form: within a chunk everything is matrix products and one
triangular solve; only the ``d_k x d_v`` state crosses chunks) that equals the sequential
recurrence (:func:`naive_gated_delta`).

The geometric term decodes features of several encoder levels back to the voxel positions
(``xyz``, the level's mean coordinates after centring, metres) with an L2 loss
(:class:`GeometryDecoder`). For fine-tuning, the semantic preservation distillation
(:func:`spd_loss`, an option of ``concerto train probe`` when the encoder is unfrozen) aligns
the student, encoding single scenes, with an EMA teacher encoding serialized batches
(through the pre-trained block when given) by MSE.

PTv3 keeps samples apart by design (batch index in the serialization code, patches padded per
sample), so the propagation is an added layer after the encoder, not a change of its
attention (``docs/models.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["naive_gated_delta", "chunked_gated_delta", "GatedDeltaNet", "CSPBlock", "serialized_apply",
           "GeometryDecoder", "geometry_loss", "spd_loss"]


def naive_gated_delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_alpha: torch.Tensor,
                      beta: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule, one step at a time (reference of :func:`chunked_gated_delta`).

    Args:
        q, k: ``(H, T, d_k)``; k should have unit rows. v: ``(H, T, d_v)``.
        log_alpha: ``(H, T)`` log decay (<= 0). beta: ``(H, T)`` in ``[0, 1]``.
        state: ``(H, d_k, d_v)`` initial state (zeros when ``None``).

    Returns:
        ``(o (H, T, d_v), final state (H, d_k, d_v))``.
    """
    h, t, dk = k.shape
    s = q.new_zeros(h, dk, v.shape[-1]) if state is None else state
    out = []
    for i in range(t):
        kt, vt = k[:, i], v[:, i]  # (H, dk), (H, dv)
        a, b = log_alpha[:, i].exp()[:, None, None], beta[:, i][:, None]
        s = a * s  # decay the old state ...
        u = b * (vt - torch.einsum("hk,hkv->hv", kt, s))  # ... then the delta-rule write: beta (v - k S)
        s = s + torch.einsum("hk,hv->hkv", kt, u)
        out.append(torch.einsum("hk,hkv->hv", q[:, i], s))
    return torch.stack(out, 1), s


def chunked_gated_delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_alpha: torch.Tensor,
                        beta: torch.Tensor, chunk: int = 64,
                        state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule with a chunked scan; the same inputs and outputs as
    :func:`naive_gated_delta` (equal up to float rounding).

    Within a chunk with start state ``S0``, cumulative log decay ``g`` and ``R_ij =
    exp(g_i - g_j)`` (``i >= j``): the corrected values are ``U = T (beta V) - T (beta e^g K)
    S0`` with ``T = (I + strictly_lower(beta K K^T * R))^-1``; the outputs ``O = e^g Q S0 +
    lower(Q K^T * R) U`` and the end state ``e^{g_C} S0 + (K e^{g_C - g})^T U``.
    """
    h, t, dk = k.shape
    pad = (-t) % chunk
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_alpha, beta = F.pad(log_alpha, (0, pad)), F.pad(beta, (0, pad))
    n = (t + pad) // chunk
    q, k, v = (x.reshape(h, n, chunk, x.shape[-1]) for x in (q, k, v))
    g = log_alpha.reshape(h, n, chunk).cumsum(-1)
    b = beta.reshape(h, n, chunk)
    lower = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    diff = g[..., :, None] - g[..., None, :]
    decay = torch.where(lower, diff, torch.full_like(diff, -torch.inf)).exp()  # R, zero above the diagonal
    a = (b[..., :, None] * (k @ k.transpose(-1, -2)) * decay).masked_fill(lower.logical_not().logical_or(
        torch.eye(chunk, dtype=torch.bool, device=q.device)), 0.0)
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    rhs = torch.cat([b[..., None] * v, (b * g.exp())[..., None] * k], -1)
    sol = torch.linalg.solve_triangular(eye + a, rhs, upper=False, unitriangular=True)
    u0, w = sol[..., : v.shape[-1]], sol[..., v.shape[-1]:]
    qk = (q @ k.transpose(-1, -2)) * decay
    k_end = k * (g[..., -1:] - g).exp()[..., None]
    s = q.new_zeros(h, dk, v.shape[-1]) if state is None else state
    outs = []
    for c in range(n):
        u = u0[:, c] - w[:, c] @ s
        outs.append(g[:, c, :, None].exp() * (q[:, c] @ s) + qk[:, c] @ u)
        s = g[:, c, -1, None, None].exp() * s + k_end[:, c].transpose(-1, -2) @ u
    return torch.cat(outs, 1)[:, :t], s


class GatedDeltaNet(nn.Module):
    """Multi-head gated delta-rule layer: ``(T, C) -> (T, C)`` over one sequence.

    Args:
        channels: ``C``. heads: ``H`` (``C`` divisible by it). chunk: scan chunk length.
    """

    def __init__(self, channels: int, heads: int = 4, chunk: int = 64):
        super().__init__()
        if channels % heads:
            raise ValueError(f"ssl.pointcsp.heads ({heads}) must divide the feature width ({channels})")
        self.heads, self.dh, self.chunk = heads, channels // heads, int(chunk)
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.ab = nn.Linear(channels, 2 * heads)
        self.a_log = nn.Parameter(torch.zeros(heads))
        self.gate = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(self.dh, elementwise_affine=False)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = (z.reshape(t, self.heads, self.dh).transpose(0, 1) for z in self.qkv(x).chunk(3, -1))
        q, k = F.normalize(q.float(), dim=-1) * self.dh ** -0.5, F.normalize(k.float(), dim=-1)
        a, b = self.ab(x).float().t().chunk(2, 0)  # (H, T) each
        log_alpha = -self.a_log.exp()[:, None] * F.softplus(a)
        o, _ = chunked_gated_delta(q, k, v.float(), log_alpha, torch.sigmoid(b), self.chunk)
        o = self.norm(o).transpose(0, 1).reshape(t, -1)
        return self.out(o.to(x.dtype) * F.silu(self.gate(x)))


class CSPBlock(nn.Module):
    """Residual state-space block: ``x + GDN(LN(x))``, then ``x + MLP(LN(x))`` (ratio 2);
    ``(T, C) -> (T, C)``. The output projection starts at zero, so the block starts as the
    identity."""

    def __init__(self, channels: int, heads: int = 4, chunk: int = 64):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.ssm = GatedDeltaNet(channels, heads, chunk)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))
        nn.init.zeros_(self.ssm.out.weight)
        nn.init.zeros_(self.ssm.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ssm(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def serialized_apply(block: nn.Module, feat: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``block`` over the rows of ``feat (N, C)`` taken in serialization ``order`` (``(N,)``
    permutation: samples end to end, each along its space-filling curve), returned in the
    original row order."""
    out = block(feat[order])
    return torch.empty_like(out).index_copy_(0, order, out)


class GeometryDecoder(nn.Module):
    """Per-level heads ``LN -> Linear -> GELU -> Linear(3)``: features of level ``l`` ->
    the positions (metres) of its voxels."""

    def __init__(self, channels: list[int], levels: list[int]):
        super().__init__()
        self.levels = [int(lv) for lv in levels]
        bad = [lv for lv in self.levels if not 0 <= lv < len(channels)]
        if bad:
            raise ValueError(f"ssl.pointcsp.geo_levels {bad} outside the encoder's levels 0..{len(channels) - 1}")
        self.heads = nn.ModuleList([nn.Sequential(nn.LayerNorm(channels[lv]), nn.Linear(channels[lv], 64), nn.GELU(),
                                                  nn.Linear(64, 3)) for lv in self.levels])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(feats[lv]) for head, lv in zip(self.heads, self.levels)]


def geometry_loss(preds: list[torch.Tensor], coords: list[torch.Tensor]) -> torch.Tensor:
    """Mean over levels of the mean squared position error ``|pred - xyz|^2`` (square metres)
    of ``(M_l, 3)`` predictions and positions."""
    return torch.stack([((p.float() - c.float()) ** 2).sum(-1).mean() for p, c in zip(preds, coords)]).mean()


def spd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Semantic preservation distillation: ``mean((student - teacher)^2)`` over ``(N, C)``
    features (teacher without gradient)."""
    return F.mse_loss(student.float(), teacher.float().detach())
