"""Configuration of the Concerto / Sonata Point Transformer V3 encoder.

:class:`EncoderConfig` carries exactly the constructor arguments of the reference
``PointTransformerV3`` (Pointcept / Concerto ``concerto/model.py``; Wu et al., "Point
Transformer V3", CVPR 2024; Zhang et al., "Concerto", arXiv 2510.23607), so the ``config``
dict stored in released checkpoints maps onto it one to one, plus one key of this project,
``sparse_conv_backend``. Defaults are the reference defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .serialization import ORDERS
from .sparse_conv import BACKENDS

__all__ = ["EncoderConfig", "INFERENCE_OVERRIDES"]

#: overrides applied when loading a checkpoint for inference: no flash-attn (CPU), fixed
#: order assignment (deterministic), no decoder, no stochastic depth
INFERENCE_OVERRIDES: dict[str, Any] = {
    "enable_flash": False,
    "shuffle_orders": False,
    "enc_mode": True,
    "drop_path": 0.0,
}

_TUPLE_FIELDS = (
    "order",
    "stride",
    "enc_depths",
    "enc_channels",
    "enc_num_head",
    "enc_patch_size",
    "dec_depths",
    "dec_channels",
    "dec_num_head",
    "dec_patch_size",
)


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of the PTv3 encoder (reference names and defaults).

    Attributes (units: channels are feature widths, patch sizes are numbers of voxels):
        in_channels: input feature width (9 for Concerto: xyz, rgb/255, normal).
        order: serialization orders, see :data:`~concerto_ros.models.serialization.ORDERS`;
            block ``i`` of every stage uses ``order[i % len(order)]``.
        stride: grid-pooling stride between consecutive stages (``S - 1`` entries).
        enc_depths, enc_channels, enc_num_head, enc_patch_size: per stage (``S`` entries)
            number of blocks, width, attention heads, maximum patch size.
        dec_*: decoder settings of the reference; accepted and ignored, the decoder is
            not implemented (``enc_mode`` must be ``True``).
        mlp_ratio: hidden width of the block MLP relative to the channels.
        qkv_bias: bias in the qkv projection.
        qk_scale: attention scale; ``None`` gives ``head_dim ** -0.5``.
        attn_drop, proj_drop, drop_path: dropout rates (training only); ``drop_path`` is
            the maximum of a linear ramp over all blocks.
        layer_scale: initial LayerScale value, ``None`` disables LayerScale.
        pre_norm: pre-norm (``True``) or post-norm blocks.
        shuffle_orders: randomly permute the orders after every (re)serialization; only
            applied in training mode here (inference is deterministic).
        enable_rpe: relative position encoding; not supported (raises).
        enable_flash: flash-attn varlen patches of exactly ``enc_patch_size``; without
            flash-attn (CPU) the same patch layout is computed with masked
            ``scaled_dot_product_attention``.
        upcast_attention, upcast_softmax: float32 attention logits / softmax; the torch
            path always computes in the feature dtype (float32 on CPU).
        traceable, freeze_encoder: accepted for compatibility; this implementation
            always records pooling inverses; ``freeze_encoder`` sets ``requires_grad``.
        mask_token: learnable ``embedding.mask_token`` of shape ``(1, enc_channels[0])``
            (present in Sonata / Concerto training checkpoints).
        enc_mode: encoder only; must be ``True``.
        sparse_conv_backend: ``"auto"`` | ``"torch"`` | ``"spconv"`` (this project).
        stage_orders: (this project) per stage, the orders in the sequence its blocks use
            them (block ``i`` uses entry ``i % len(order)``); each entry has
            ``len(order)`` names. ``None``: every stage uses ``order``.

    Note on reference parity: the reference ``GridPooling`` re-serializes with its own
    ``shuffle_orders=True`` default (the model's ``shuffle_orders`` is not passed down),
    so after every pooling the reference draws ``torch.randperm(len(order))`` from the
    global RNG, even in eval mode, and its outputs beyond stage 0 depend on the RNG state.
    This implementation is deterministic; ``stage_orders`` reproduces a particular draw.
    """

    in_channels: int = 6
    order: tuple[str, ...] = ("z", "z-trans")
    stride: tuple[int, ...] = (2, 2, 2, 2)
    enc_depths: tuple[int, ...] = (3, 3, 3, 12, 3)
    enc_channels: tuple[int, ...] = (48, 96, 192, 384, 512)
    enc_num_head: tuple[int, ...] = (3, 6, 12, 24, 32)
    enc_patch_size: tuple[int, ...] = (1024, 1024, 1024, 1024, 1024)
    dec_depths: tuple[int, ...] = (3, 3, 3, 3)
    dec_channels: tuple[int, ...] = (96, 96, 192, 384)
    dec_num_head: tuple[int, ...] = (6, 6, 12, 32)
    dec_patch_size: tuple[int, ...] = (1024, 1024, 1024, 1024)
    mlp_ratio: float = 4
    qkv_bias: bool = True
    qk_scale: float | None = None
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    drop_path: float = 0.3
    layer_scale: float | None = None
    pre_norm: bool = True
    shuffle_orders: bool = True
    enable_rpe: bool = False
    enable_flash: bool = True
    upcast_attention: bool = False
    upcast_softmax: bool = False
    traceable: bool = False
    mask_token: bool = False
    enc_mode: bool = False
    freeze_encoder: bool = False
    sparse_conv_backend: str = "auto"
    stage_orders: tuple[tuple[str, ...], ...] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.enc_depths)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> "EncoderConfig":
        """Build from a reference-style config dict plus overrides.

        Lists are turned into tuples; an ``int`` given for a per-stage field (e.g.
        ``enc_patch_size=1024``) is broadcast to every stage; a ``str`` ``order`` becomes a
        one-element tuple.

        Raises:
            ValueError: unknown keys (the message lists them) or an invalid combination
                (see :meth:`validate`).
        """
        merged = dict(config)
        merged.update(overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(f"unknown encoder config keys {unknown}; known: {sorted(names)}")
        n_stages = len(merged.get("enc_depths", cls.enc_depths))
        for key in _TUPLE_FIELDS:
            if key not in merged:
                continue
            value = merged[key]
            if key == "order" and isinstance(value, str):
                value = (value,)
            elif isinstance(value, int) and key.startswith("enc_"):
                value = (value,) * n_stages
            elif isinstance(value, int) and key == "stride":
                value = (value,) * (n_stages - 1)
            merged[key] = tuple(value)
        if merged.get("stage_orders") is not None:
            merged["stage_orders"] = tuple(tuple(o) for o in merged["stage_orders"])
        cfg = cls(**merged)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (lists for tuples), loadable by :meth:`from_dict`."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "stage_orders" and value is not None:
                value = [list(o) for o in value]
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **overrides: Any) -> "EncoderConfig":
        """A copy with ``overrides`` applied (same conversions as :meth:`from_dict`)."""
        return EncoderConfig.from_dict(self.to_dict(), **overrides)

    def validate(self) -> None:
        """Check internal consistency.

        Raises:
            ValueError: per-stage lengths differ, channels not divisible by heads, unknown
                order or backend, non-positive sizes.
            NotImplementedError: ``enc_mode=False`` (decoder) or ``enable_rpe=True``.
        """
        s = self.num_stages
        if s < 1:
            raise ValueError("enc_depths must have at least one stage")
        for name in ("enc_channels", "enc_num_head", "enc_patch_size"):
            if len(getattr(self, name)) != s:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries, expected {s} "
                    f"(len(enc_depths))"
                )
        if len(self.stride) != s - 1:
            raise ValueError(f"stride has {len(self.stride)} entries, expected {s - 1}")
        for c, h in zip(self.enc_channels, self.enc_num_head):
            if h <= 0 or c % h:
                raise ValueError(f"enc_channels {c} not divisible by enc_num_head {h}")
        if any(p <= 0 for p in self.enc_patch_size):
            raise ValueError(f"enc_patch_size must be positive, got {self.enc_patch_size}")
        if any(st < 1 for st in self.stride):
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        bad = [o for o in self.order if o not in ORDERS]
        if bad or not self.order:
            raise ValueError(f"unknown serialization orders {bad}; expected from {ORDERS}")
        if self.stage_orders is not None:
            if len(self.stage_orders) != s:
                raise ValueError(
                    f"stage_orders has {len(self.stage_orders)} entries, expected {s}"
                )
            for entry in self.stage_orders:
                if len(entry) != len(self.order) or any(o not in ORDERS for o in entry):
                    raise ValueError(
                        f"stage_orders entry {list(entry)} must hold {len(self.order)} "
                        f"names from {ORDERS}"
                    )
        if self.sparse_conv_backend not in BACKENDS:
            raise ValueError(
                f"unknown sparse_conv_backend {self.sparse_conv_backend!r}; expected {BACKENDS}"
            )
        if not self.enc_mode:
            raise NotImplementedError(
                "only the encoder (enc_mode=True) is implemented; pass enc_mode=True"
            )
        if self.enable_rpe:
            raise NotImplementedError(
                "enable_rpe=True (relative position encoding) is not supported"
            )
