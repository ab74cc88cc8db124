"""The exportable graph: the Concerto encoder (plus head and translator) on index inputs.

:class:`ExportableModel` is a thin ``nn.Module`` over the encoder's own modules
(:meth:`~concerto_ros.models.ptv3.PointTransformerV3Encoder.forward_indexed`): its inputs
are the encoder input features and the index tensors of
:class:`~concerto_ros.models.geometry.EncoderIndex` (serialization patches, neighbour rows,
pooling clusters and inverses), computed outside the graph by the same code the eager
encoder uses, so the graph holds no data-dependent control flow and every size is a
dynamic dimension. Outputs:

==================  ============================================================
``last_stage_feat`` ``(M_last, C_last)`` float32, the coarsest level
``point_feat``      ``(N, D)`` float32 per input voxel, the ``feature`` layout
                    (``concat3``: Concerto README, ``all_levels``: linear probes)
``logits``          ``(N, K)`` float32, the linear head (when exported with one)
``embedding``       ``(N, D_text)`` float32 unit-norm translator output (when exported
                    with a translator)
==================  ============================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import EncoderIndex, index_names
from ..ptv3 import PointTransformerV3Encoder, upcast_features

__all__ = ["ExportableModel", "FEATURE_LEVELS", "example_points"]


def FEATURE_LEVELS(feature: str, num_stages: int) -> int:  # noqa: N802 - reads like a table
    """Levels concatenated by a feature layout (``concat3``: 3, ``all_levels``: all).

    Raises:
        ValueError: unknown layout.
    """
    if feature == "concat3":
        return min(3, num_stages)
    if feature == "all_levels":
        return num_stages
    raise ValueError(f"unknown feature layout '{feature}', expected concat3 or all_levels")


def example_points(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A synthetic two-scene input used to trace the graph.

    Two voxel blobs of different sizes (about 5,700 and 2,300 voxels) keep every traced
    dimension above 1 at every level of a 5-stage, stride-2 encoder for any patch size
    (each scene is at least one patch sequence, the smaller one sets ``K`` below the
    patch size at the coarse levels), so no size is specialised.

    Returns:
        ``(coord (N, 3) float32 m, grid_coord (N, 3) int64, feat (N, 9) float32,
        offset (2,) int64)``.
    """
    gen = np.random.default_rng(seed)
    coords, grids = [], []
    for extent in ((40, 40, 12), (28, 28, 10)):
        cells = np.stack(np.meshgrid(*[np.arange(e) for e in extent], indexing="ij"), -1).reshape(-1, 3)
        grid = cells[gen.random(len(cells)) < 0.3]
        grids.append(grid)
        coords.append(grid * 0.02 + gen.random(grid.shape) * 0.02)
    grid = np.concatenate(grids)
    coord = np.concatenate(coords).astype(np.float32)
    feat = np.concatenate([coord, gen.random((len(coord), 6))], 1).astype(np.float32)
    offset = np.cumsum([len(g) for g in grids])
    return (torch.from_numpy(coord), torch.from_numpy(grid).long(), torch.from_numpy(feat),
            torch.from_numpy(offset).long())


class ExportableModel(nn.Module):
    """The encoder, and optionally a linear head and a translator, as one exportable graph.

    Args:
        encoder: the PTv3 encoder (its modules are shared, not copied; put in eval mode).
        feature: per-point layout of ``point_feat``: ``concat3`` or ``all_levels``.
        head: optional :class:`~concerto_ros.models.heads.LinearSemanticHead` reading
            ``point_feat``.
        translator: optional :class:`~concerto_ros.language.translator.Translator` reading
            ``point_feat``.

    Raises:
        ValueError: unknown ``feature``, or a head / translator whose input width is not
            the width of ``point_feat``.
    """

    def __init__(self, encoder: PointTransformerV3Encoder, feature: str = "concat3",
                 head: nn.Module | None = None, translator: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        self.feature = feature
        #: the encoder config as the graph runs it (the torch convolution, the non-flash
        #: patch layout); stored with the file, the reader builds the index inputs from it
        self.config = cfg = encoder.config.replace(sparse_conv_backend="torch", enable_flash=False)
        self.num_levels = FEATURE_LEVELS(feature, cfg.num_stages)
        width = sum(cfg.enc_channels[-self.num_levels:])
        for name, part, dim in (("head", head, "in_channels"), ("translator", translator, "in_dim")):
            if part is not None and int(getattr(part, dim)) != width:
                raise ValueError(f"the {name} reads {getattr(part, dim)}-d features but the "
                                 f"'{feature}' feature of this encoder is {width}-d")
        self.head = head.eval() if head is not None else None
        self.translator = translator.eval() if translator is not None else None
        self.point_channels = width
        self.index_names = index_names(cfg)
        self.eval()

    @property
    def output_names(self) -> list[str]:
        names = ["last_stage_feat", "point_feat"]
        if self.head is not None:
            names.append("logits")
        if self.translator is not None:
            names.append("embedding")
        return names

    @property
    def input_names(self) -> list[str]:
        return ["feat"] + self.index_names

    def forward(self, feat: torch.Tensor, *index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``feat (N, C_in)`` float32 and the index tensors in :attr:`index_names` order ->
        the outputs in :attr:`output_names` order."""
        named = dict(zip(self.index_names, index))
        feats = self.encoder.forward_indexed(feat, named, chunk_rows=None)
        inverses = [None] + [named[f"s{s}_inverse"] for s in range(1, len(feats))]
        point = upcast_features(feats, inverses, self.num_levels)
        outputs = [feats[-1], point]
        if self.head is not None:
            outputs.append(self.head(point))
        if self.translator is not None:
            outputs.append(F.normalize(self.translator(point), dim=-1))
        return tuple(outputs)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """``(feat, *index)`` of :func:`example_points` for tracing (on the encoder's device)."""
        coord, grid, feat, offset = example_points()
        index = EncoderIndex.from_points(coord, grid, offset, self.config)
        device = next(self.encoder.parameters()).device
        feat = feat[:, : self.config.in_channels]
        return tuple(t.to(device) for t in [feat] + index.ordered(self.config))

    def dynamic_shapes(self) -> tuple[Any, ...]:
        """``torch.export`` dynamic shapes of :meth:`example_inputs`: per level ``M_s``
        voxels, ``S_s`` patch sequences, ``K_s`` voxels per patch."""
        cfg = self.config
        dim = torch.export.Dim
        m = [dim(f"M{s}", min=1) for s in range(cfg.num_stages)]
        shapes: dict[str, Any] = {"feat": {0: m[0]}}
        for s in range(cfg.num_stages):
            seqs, patch = dim(f"S{s}", min=1), dim(f"K{s}", min=1)
            if s > 0:
                shapes[f"s{s}_inverse"] = {0: m[s - 1]}
            shapes[f"s{s}_neighbours"] = {0: m[s]}
            for name in self.index_names:
                if name.startswith(f"s{s}_o") and name.endswith("_gather"):
                    shapes[name] = {0: seqs, 1: patch}
                elif name.startswith(f"s{s}_o") and name.endswith("_scatter"):
                    shapes[name] = {0: m[s]}
        return (shapes["feat"], tuple(shapes[n] for n in self.index_names))
