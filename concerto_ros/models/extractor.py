"""From a voxelized window to per-voxel features, and the heads that read them.

:class:`FeatureExtractor` owns the Concerto encoder (loaded from a checkpoint, or a seeded
random preset for demos and tests) and turns a :class:`~concerto_ros.cloud.window.WindowCloud`
into one feature vector per voxel, built as Concerto's README does (``concat3``: the last
three levels concatenated and copied down) or as its linear-probe heads do (``all_levels``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import torch

from concerto_ros.models.checkpoint import load_encoder
from concerto_ros.models.config import INFERENCE_OVERRIDES
from concerto_ros.models.heads import LinearSemanticHead
from concerto_ros.models.presets import build_encoder
from concerto_ros.models.ptv3 import (PointTransformerV3Encoder, all_levels_feature, concerto_point_feature,
                                      prepare_input)

FEATURES = ("concat3", "all_levels")


def feature_channels(channels: list[int] | tuple[int, ...], feature: str) -> int:
    """Width of the per-point feature for encoder stage widths ``channels``.

    Raises:
        ValueError: unknown ``feature``.
    """
    if feature == "concat3":
        return int(sum(channels[-3:]))
    if feature == "all_levels":
        return int(sum(channels))
    raise ValueError(f"unknown feature layout '{feature}', expected one of {FEATURES}")


class FeatureExtractor:
    """The Concerto encoder plus the feature layout the heads expect.

    Args:
        encoder: the PTv3 encoder (eval mode is set here).
        feature: ``concat3`` or ``all_levels``.
        device: where the encoder runs.
        description: one line saying where the weights came from (for logs and bundles).

    Attributes:
        out_channels: width ``D`` of the per-voxel features.
    """

    def __init__(self, encoder: PointTransformerV3Encoder, feature: str = "concat3",
                 device: torch.device | str = "cpu", description: str = ""):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.feature = feature
        self.out_channels = feature_channels(list(encoder.config.enc_channels), feature)
        self.description = description

    @classmethod
    def from_config(cls, model_cfg, device: torch.device | str = "cpu",
                    log: Callable[[str], Any] | None = None) -> "FeatureExtractor":
        """Build from the ``model.*`` settings of :class:`~concerto_ros.config.PerceptionConfig`.

        With ``model.checkpoint`` empty, a randomly initialised ``model.preset`` encoder is
        built with ``model.seed`` (the global RNG is left untouched) and a warning-level
        note is logged, since its features carry no semantics.

        Raises:
            FileNotFoundError: the checkpoint path does not exist.
            concerto_ros.models.checkpoint.CheckpointMismatchError /
            CheckpointFormatError: the checkpoint does not fit the model (see their messages).
        """
        log = log or (lambda _m: None)
        device = torch.device(device)
        overrides = dict(INFERENCE_OVERRIDES)
        overrides["sparse_conv_backend"] = model_cfg.sparse_conv_backend
        overrides["enable_flash"] = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
        if model_cfg.checkpoint:
            path = Path(model_cfg.checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"model.checkpoint '{path}' does not exist")
            encoder = load_encoder(path, preset=model_cfg.preset or None, overrides=overrides, device=device)
            desc = f"Concerto encoder from {path}"
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(model_cfg.seed))
                encoder = build_encoder(model_cfg.preset, **overrides)
            desc = (f"SEEDED RANDOM '{model_cfg.preset}' encoder (seed {model_cfg.seed}; no model.checkpoint "
                    "set): features and labels are not meaningful until a trained checkpoint is configured")
        n_params = sum(p.numel() for p in encoder.parameters())
        extractor = cls(encoder, feature=model_cfg.feature, device=device, description=desc)
        backend = encoder.config.sparse_conv_backend
        log(f"{desc} | {n_params / 1e6:.2f}M parameters, feature '{model_cfg.feature}' "
            f"({extractor.out_channels}-d), device {device}, sparse conv backend '{backend}'")
        return extractor

    @torch.inference_mode()
    def encode(self, coord, grid_coord, color=None, normal=None) -> torch.Tensor:
        """Per-voxel features ``(M, D) float32`` on ``self.device``.

        Args:
            coord: ``(M, 3)`` voxel representative points, metres (any fixed frame; the
                encoder input is centre-shifted here).
            grid_coord: ``(M, 3)`` non-negative integer voxel indices, unique.
            color: optional ``(M, 3)`` uint8 RGB.
            normal: optional ``(M, 3)`` unit normals.
        """
        batch = prepare_input(coord, grid_coord, color=color, normal=normal, device=self.device)
        out = self.encoder(batch)
        feat = concerto_point_feature(out) if self.feature == "concat3" else all_levels_feature(out)
        return feat.float()

    def encode_window(self, window) -> torch.Tensor:
        """:meth:`encode` on a :class:`~concerto_ros.cloud.window.WindowCloud` (uses its
        ``coord``, ``grid_coord`` and ``color``)."""
        return self.encode(window.coord, window.grid_coord, color=window.color)


def build_heads(head_cfg, in_channels: int, device: torch.device | str = "cpu",
                log: Callable[[str], Any] | None = None) -> LinearSemanticHead:
    """The linear semantic head from the ``head.*`` settings.

    A checkpoint is ``{"config": {"backbone_out_channels": D, "num_classes": K,
    "class_names": [...] (optional)}, "state_dict": {"seg_head.weight" [K, D],
    "seg_head.bias" [K]}}`` (the format of Concerto's released linear-probe heads). Without
    one, a seeded random head over ``head.class_names`` is built.

    Raises:
        FileNotFoundError: missing checkpoint.
        ValueError: the head's input width differs from the encoder feature width
            ``in_channels``, or its class count from the class names.
    """
    log = log or (lambda _m: None)
    if head_cfg.checkpoint:
        path = Path(head_cfg.checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"head.checkpoint '{path}' does not exist")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ckpt.get("config", {})
        sd = ckpt["state_dict"]
        d = int(cfg.get("backbone_out_channels", sd["seg_head.weight"].shape[1]))
        k = int(cfg.get("num_classes", sd["seg_head.weight"].shape[0]))
        names = list(cfg.get("class_names") or head_cfg.class_names)
        if d != in_channels:
            raise ValueError(f"head checkpoint {path} expects {d}-d features but the encoder gives "
                             f"{in_channels}-d (check model.preset and model.feature)")
        if len(names) != k:
            raise ValueError(f"head checkpoint {path} has {k} classes but {len(names)} class names are configured")
        head = LinearSemanticHead(d, names)
        head.load_state_dict(sd, strict=True)
        log(f"semantic head from {path}: {k} classes")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            head = LinearSemanticHead(in_channels, head_cfg.class_names)
        log(f"SEEDED RANDOM semantic head over {len(head.class_names)} classes (no head.checkpoint set)")
    return head.to(device).eval()
