"""``msm``: Masked Scene Modeling (Hermosilla et al., CVPR 2025, arXiv 2504.06719).

A ratio (0.4 by default) of the student's voxels is block-masked (cells of ``mask_size``
metres, :func:`~concerto_ros.train.views.mask_blocks`); masked voxels enter the encoder as its
learnable mask token (``embedding.mask_token``). The student then predicts the EMA teacher's
features of the masked voxels at EVERY encoder level, coarse to fine as the paper's decoder
does (bottom-up: the deepest level first): :class:`MSMDecoder` starts at the coarsest level
and, level by level, adds a learnable per-level mask token to the masked rows, combines the
student's features with the prediction of the level below (copied up through the pooling
inverse) and predicts the teacher's features of that level. The loss is a cosine loss per
level on the masked voxels (:func:`msm_loss`), averaged over the levels.

For the encoder-only PTv3 the levels are its 5 encoder stages (0.02 ... 0.32 m voxels at a
0.02 m grid); a voxel of level ``l > 0`` counts as masked when at least half of the level
``l - 1`` voxels pooled into it are (:func:`level_masks`). Deviations from the paper, which
uses a sparse-conv U-Net: the student sees the masked voxels' positions (as mask tokens, the
Sonata way of masking a PTv3) rather than dropping them, and the teacher sees the same view
unmasked, so that every level's voxels correspond one to one between student and teacher.
The targets are the teacher's level features normalised per channel over the voxels of a
scene's large views (instance normalisation, as data2vec does for its targets): a component
that every voxel shares is removed, so only what tells voxels apart has to be predicted and a
constant feature cannot satisfy the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["level_masks", "MSMDecoder", "msm_loss", "masked_cosine_loss", "normalize_targets"]


def level_masks(mask0: torch.Tensor, inverses: list[torch.Tensor | None], sizes: list[int]) -> list[torch.Tensor]:
    """Per-level masks from the level-0 mask.

    Args:
        mask0: ``(M_0,) bool``, masked input voxels.
        inverses: per level ``l`` the ``(M_{l-1},) int64`` pooling inverse (row of level ``l``
            each level ``l-1`` voxel was pooled into); ``None`` for level 0.
        sizes: ``M_l`` per level.

    Returns:
        ``[(M_l,) bool]``: level ``l`` voxel masked when at least half of its children are.
    """
    out = [mask0.bool()]
    for inv, m in zip(inverses[1:], sizes[1:]):
        frac = torch.zeros(m, device=mask0.device).index_add_(0, inv, out[-1].float())
        cnt = torch.zeros(m, device=mask0.device).index_add_(0, inv, torch.ones_like(out[-1], dtype=torch.float))
        out.append(frac >= 0.5 * cnt.clamp_min(1))
    return out


class MSMDecoder(nn.Module):
    """Bottom-up prediction of the teacher's features at every level.

    Args:
        channels: encoder widths ``C_0 .. C_{L-1}`` (finest first).

    ``forward(feats, inverses, masks)`` with per-level student features ``(M_l, C_l)``,
    pooling inverses and masks (as :func:`level_masks`) returns the predictions ``[(M_l,
    C_l)]`` finest first; they are computed deepest first, each level from
    ``feat_l + token_l * mask_l + up_l(pred_{l+1})[inverse_{l+1}]``.
    """

    def __init__(self, channels: list[int]):
        super().__init__()
        self.tokens = nn.ParameterList([nn.Parameter(torch.zeros(c)) for c in channels])
        self.up = nn.ModuleList([nn.Linear(channels[i + 1], channels[i]) for i in range(len(channels) - 1)])
        self.pred = nn.ModuleList([nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))
                                   for c in channels])

    def forward(self, feats: list[torch.Tensor], inverses: list[torch.Tensor | None],
                masks: list[torch.Tensor]) -> list[torch.Tensor]:
        preds: list[torch.Tensor | None] = [None] * len(feats)
        below = None
        for lvl in range(len(feats) - 1, -1, -1):
            h = feats[lvl] + masks[lvl].unsqueeze(-1).to(feats[lvl].dtype) * self.tokens[lvl]
            if below is not None:
                h = h + self.up[lvl](below)[inverses[lvl + 1]]
            below = self.pred[lvl](h)
            preds[lvl] = below
        return preds  # type: ignore[return-value]


def normalize_targets(target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(M, C)`` features normalised per channel over the ``M`` rows (zero mean, unit
    variance; no gradient)."""
    t = target.float().detach()
    return (t - t.mean(0)) / (t.var(0, unbiased=False) + eps).sqrt()


def masked_cosine_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """``mean(1 - cos)`` over the masked rows of ``(M, C)`` prediction and target, the target
    normalised over all ``M`` rows first (:func:`normalize_targets`); ``None`` when no row is
    masked."""
    if not bool(mask.any()):
        return None
    return (1.0 - F.cosine_similarity(pred[mask].float(), normalize_targets(target)[mask], dim=-1)).mean()


def msm_loss(preds: list[torch.Tensor], targets: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the levels that have masked voxels of :func:`masked_cosine_loss`; ``0`` (with
    gradient) when no level has one."""
    terms = [t for t in (masked_cosine_loss(p, g, m) for p, g, m in zip(preds, targets, masks)) if t is not None]
    return torch.stack(terms).mean() if terms else preds[0].sum() * 0.0
