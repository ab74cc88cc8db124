"""Heads applied to per-point encoder features: linear semantic head and PCA colouring.

The linear semantic head is the "linear probe" of the self-supervised point-cloud
literature (Sonata, Wu et al. CVPR 2025; Concerto, Zhang et al. arXiv 2510.23607): a single
``nn.Linear`` on frozen features, whose argmax is the label and whose softmax probability of
that label is reported as the confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class SemanticPrediction:
    """Per-point output of :class:`LinearSemanticHead`.

    Attributes:
        labels: ``(N,) int32`` class index per point, in ``[0, num_classes)``.
        confidence: ``(N,) float32`` softmax probability of the predicted class, in ``(0, 1]``.
        probabilities: ``(N, K) float32`` softmax over the classes, or ``None`` when not
            asked for (the map fuses them).
    """

    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None = None


class LinearSemanticHead(nn.Module):
    """Linear classifier on per-point features (linear probe).

    Args:
        in_channels: feature dimension ``D`` of the encoder output it is applied to.
        class_names: one name per class; ``num_classes = len(class_names)``.

    The parameter names (``seg_head.weight [K, D]``, ``seg_head.bias [K]``) follow the
    released Concerto linear-probe heads so those load with ``strict=True``.

    Raises:
        ValueError: ``in_channels < 1`` or no class names.
    """

    def __init__(self, in_channels: int, class_names: Sequence[str]):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if len(class_names) == 0:
            raise ValueError("a semantic head needs at least one class name")
        self.in_channels = int(in_channels)
        self.class_names = [str(c) for c in class_names]
        self.seg_head = nn.Linear(self.in_channels, len(self.class_names))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K) float32`` for features ``(N, D)``.

        Raises:
            ValueError: the feature dimension is not ``in_channels``.
        """
        if feat.shape[-1] != self.in_channels:
            raise ValueError(
                f"semantic head expects {self.in_channels}-d features, got {feat.shape[-1]}-d; "
                "the head was trained on another encoder or feature layout"
            )
        return self.seg_head(feat)

    @torch.no_grad()
    def predict(self, feat: torch.Tensor, probabilities: bool = False) -> SemanticPrediction:
        """Labels and softmax confidences for features ``(N, D)`` (any device); with
        ``probabilities`` also the ``(N, K)`` softmax."""
        logits = self.forward(feat).float()
        top, labels = logits.max(dim=-1)
        if probabilities:
            probs = torch.softmax(logits, dim=-1)
            conf = probs.gather(1, labels[:, None])[:, 0]
            return SemanticPrediction(labels=labels.to(torch.int32).cpu().numpy(),
                                      confidence=conf.cpu().numpy().astype(np.float32),
                                      probabilities=probs.cpu().numpy().astype(np.float32))
        # softmax probability of the arg-max class without materialising the (N, K) softmax
        conf = 1.0 / torch.exp(logits - top[:, None]).sum(dim=-1)
        return SemanticPrediction(
            labels=labels.to(torch.int32).cpu().numpy(),
            confidence=conf.cpu().numpy().astype(np.float32),
        )


def pca_colors(feat: torch.Tensor | np.ndarray, basis: torch.Tensor | None = None,
               return_basis: bool = False):
    """Colour points by the first three principal components of their features.

    Args:
        feat: ``(N, D)`` float features.
        basis: optional basis returned by an earlier call with ``return_basis=True``, to
            keep colours stable across frames. ``None`` computes the PCA of ``feat``.
        return_basis: also return the ``(mean (D,), components (D, 3), lo (3,), hi (3,))``
            tuple used, so later frames can reuse it.

    Returns:
        ``(N, 3) uint8`` RGB colours; each component is mapped to ``[0, 255]`` between its
        1st and 99th percentile. Signs are fixed so that the largest-magnitude loading of
        each component is positive, making colours deterministic.
        With ``return_basis``: ``(colors, basis)``.

    Raises:
        ValueError: ``feat`` is not two-dimensional.
    """
    x = torch.as_tensor(feat).detach().float().cpu()
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
    n, d = x.shape
    if basis is None:
        mean = x.mean(dim=0)
        if n < 2 or d < 1:
            comps = torch.zeros(d, 3)
        else:
            # Covariance eigen-decomposition: D is small (<= a few thousand) so this is exact
            # and cheaper than an SVD of the (N, D) matrix; computed without a centred copy.
            cov = (x.T @ x - n * torch.outer(mean, mean)) / max(n - 1, 1)
            evals, evecs = torch.linalg.eigh(cov.double())
            order = torch.argsort(evals, descending=True)[:3]
            comps = evecs[:, order].float()
            if comps.shape[1] < 3:
                comps = torch.cat([comps, torch.zeros(d, 3 - comps.shape[1])], dim=1)
            idx = comps.abs().argmax(dim=0)
            signs = torch.sign(comps[idx, torch.arange(3)])
            signs[signs == 0] = 1
            comps = comps * signs
        proj = x @ comps - mean @ comps
        if n > 0:
            lo = torch.quantile(proj, 0.01, dim=0)
            hi = torch.quantile(proj, 0.99, dim=0)
        else:
            lo = torch.zeros(3)
            hi = torch.ones(3)
        basis = (mean, comps, lo, hi)
    else:
        mean, comps, lo, hi = basis
        proj = x @ comps - mean @ comps  # no (N, D) centred copy
    scale = torch.clamp(hi - lo, min=1e-8)
    rgb = ((proj - lo) / scale).clamp(0, 1) * 255.0
    colors = rgb.round().to(torch.uint8).numpy()
    if return_basis:
        return colors, basis
    return colors
