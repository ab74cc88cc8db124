"""DINO-style self-distillation on matched voxels, shared by ``concerto`` and ``pointcsp``.

Sonata (Wu et al., CVPR 2025, arXiv 2503.16429) and Concerto (arXiv 2510.23607) train a
student and its EMA teacher on augmented views of a scene: each view's per-voxel feature goes
through a projection head onto ``K`` unit prototypes (:class:`PrototypeHead`); on matched
voxels (the nearest voxel of the other view in the original coordinates) the student's
softmax (temperature ``student_temp``) is trained to match the teacher's, which is centred
(running mean of the teacher logits) and sharpened (``teacher_temp``): cross-entropy
(:func:`distill_loss`). Centring keeps one prototype from winning everything, sharpening
keeps the uniform distribution from being a solution. ``loss - teacher entropy`` is the KL
divergence still to close (:func:`teacher_entropy`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrototypeHead", "distill_loss", "teacher_entropy", "ema_momentum", "ema_update", "teacher_temperature"]


class PrototypeHead(nn.Module):
    """Projection head: ``LN -> Linear -> GELU -> Linear -> GELU -> Linear`` to a bottleneck,
    L2-normalised, then cosine similarity to ``K`` unit prototypes.

    ``(N, C) float -> (N, K)`` logits in ``[-1, 1]`` (divide by a temperature before softmax).
    """

    def __init__(self, in_channels: int, prototypes: int = 256, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


def teacher_entropy(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """Mean entropy (nats) of the centred, sharpened teacher distributions of ``(P, K)``
    logits: the floor of :func:`distill_loss`."""
    pt = F.softmax((teacher_logits.float() - center) / teacher_temp, dim=-1)
    return -(pt * pt.clamp_min(1e-12).log()).sum(-1).mean()


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
                 student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-entropy ``-sum_k p_t(k) log p_s(k)`` averaged over the ``P`` rows: teacher
    ``softmax((t - center) / teacher_temp)`` (no gradient), student
    ``log_softmax(s / student_temp)``. Shapes ``(P, K)``, ``center`` ``(K,)``; a scalar."""
    with torch.no_grad():
        pt = F.softmax((teacher_logits.float() - center) / teacher_temp, dim=-1)
    return -(pt * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1).mean()


def ema_momentum(step: int, total: int, start: float, end: float) -> float:
    """Teacher momentum at ``step``: cosine from ``start`` (step 0) to ``end`` (``total``)."""
    return end - (end - start) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def teacher_temperature(step: int, final: float, warmup_start: float, warmup_steps: int) -> float:
    """Teacher temperature: linear from ``warmup_start`` to ``final`` over ``warmup_steps``."""
    if step >= warmup_steps:
        return float(final)
    return float(warmup_start) + (float(final) - float(warmup_start)) * step / max(1, warmup_steps)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` parameter by parameter."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
