"""``concerto``: Concerto's joint 2D-3D self-supervised objective (Zhang et al., arXiv 2510.23607).

Two terms at once:

* **3D intra-modal self-distillation** (Sonata-style, :mod:`.distill`): the student's
  prototype distribution on its views (large views block-masked) matches the EMA teacher's on
  matched voxels of the teacher's large views; a view matched with itself distils its
  masked voxels only (masked point modelling);
* **2D-3D joint embedding**: every voxel of the window projected into the newest frame takes
  the frozen image model's patch feature there (z-buffer visibility); a projector on the
  student's per-voxel feature of its large views predicts it, cosine loss
  (:func:`joint_embedding_loss`). Voxels in held-out cubes are never trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Projector", "joint_embedding_loss"]


class Projector(nn.Module):
    """Per-voxel predictor of the 2D teacher's feature: ``LN -> Linear -> GELU -> Linear``,
    ``(N, C) float -> (N, D_2d)``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def joint_embedding_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos(pred, target))`` over the ``(P, D)`` rows; 0 for identical directions,
    1 for orthogonal ones, 2 for opposite ones; ``0`` (with gradient) when ``P == 0``."""
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()
