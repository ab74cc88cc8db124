"""Named configurations of the Concerto PTv3 encoder, and :func:`build_encoder`.

Sizes (Zhang et al., "Concerto", arXiv 2510.23607; released checkpoints on the
``Pointcept/Concerto`` hub):

========================  ======================  ==================  =================  ======
preset                    enc_channels            enc_num_head        enc_depths         params
========================  ======================  ==================  =================  ======
``tiny``                  16, 32, 48, 64, 80      1, 2, 3, 4, 5       1, 1, 1, 2, 1      tests
``small``                 32, 64, 128, 256, 512   2, 4, 8, 16, 32     2, 2, 2, 6, 2      38.6M
``base`` (= Sonata)       48, 96, 192, 384, 512   3, 6, 12, 24, 32    3, 3, 3, 12, 3     108.5M
``large``                 64, 128, 256, 512, 768  4, 8, 16, 32, 48    3, 3, 3, 12, 3     207.7M
``concerto_large_video``  as ``large`` (Pointcept training checkpoint, video-lifted data)
========================  ======================  ==================  =================  ======

All use ``in_channels=9`` (xyz, rgb/255, normal), orders ``z, z-trans, hilbert,
hilbert-trans``, stride 2 (x4), MLP ratio 4, and inference settings (no flash-attn, no
order shuffling, no stochastic depth). ``tiny`` is the configuration of the golden test
checkpoint ``ptv3_golden_a.pth`` (patch size 64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .config import EncoderConfig
from .ptv3 import PointTransformerV3Encoder

__all__ = ["Preset", "PRESETS", "ALIASES", "get_preset", "preset_config", "build_encoder"]

_COMMON: dict[str, Any] = {
    "in_channels": 9,
    "order": ("z", "z-trans", "hilbert", "hilbert-trans"),
    "stride": (2, 2, 2, 2),
    "mlp_ratio": 4,
    "qkv_bias": True,
    "qk_scale": None,
    "attn_drop": 0.0,
    "proj_drop": 0.0,
    "drop_path": 0.0,
    "layer_scale": None,
    "pre_norm": True,
    "shuffle_orders": False,
    "enable_rpe": False,
    "enable_flash": False,
    "upcast_attention": False,
    "upcast_softmax": False,
    "enc_mode": True,
}


@dataclass(frozen=True)
class Preset:
    """A named encoder configuration.

    Attributes:
        name: preset name.
        config: reference-style config dict (see :class:`EncoderConfig`).
        description: one line for ``--help`` texts.
        state_dict_prefix: key prefix of the encoder tensors in the preset's usual
            checkpoint ("" for released ``{"config", "state_dict"}`` files).
        parameters: expected number of parameters (``None`` if not published).
    """

    name: str
    config: Mapping[str, Any]
    description: str
    state_dict_prefix: str = ""
    parameters: int | None = None


def _cfg(depths, channels, heads, patch) -> dict[str, Any]:
    return {
        **_COMMON,
        "enc_depths": depths,
        "enc_channels": channels,
        "enc_num_head": heads,
        "enc_patch_size": (patch,) * len(depths),
    }


_LARGE = _cfg((3, 3, 3, 12, 3), (64, 128, 256, 512, 768), (4, 8, 16, 32, 48), 1024)

#: every preset by name
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        _cfg((1, 1, 1, 2, 1), (16, 32, 48, 64, 80), (1, 2, 3, 4, 5), 64),
        "tiny random-weight encoder of the golden test (80-d output)",
    ),
    "small": Preset(
        "small",
        _cfg((2, 2, 2, 6, 2), (32, 64, 128, 256, 512), (2, 4, 8, 16, 32), 1024),
        "concerto_small, 38.6M parameters, 512-d output",
        parameters=38_648_960,
    ),
    "base": Preset(
        "base",
        _cfg((3, 3, 3, 12, 3), (48, 96, 192, 384, 512), (3, 6, 12, 24, 32), 1024),
        "concerto_base / sonata, 108.5M parameters, 512-d output",
        parameters=108_461_328,
    ),
    "large": Preset(
        "large",
        _LARGE,
        "concerto_large, 207.7M parameters, 768-d output",
        parameters=207_667_392,
    ),
    "concerto_large_video": Preset(
        "concerto_large_video",
        _LARGE,
        "concerto_large trained with video-lifted point clouds (Pointcept training "
        "checkpoint pretrain-concerto-v1m1-2-large-video.pth)",
        state_dict_prefix="module.student.backbone.",
        parameters=207_667_392,
    ),
}

#: alternative names (released file names, Sonata)
ALIASES: dict[str, str] = {
    "concerto_small": "small",
    "concerto_base": "base",
    "concerto_large": "large",
    "sonata": "base",
    "golden_a": "tiny",
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name or alias.

    Raises:
        KeyError: unknown name; the message lists the known names.
    """
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        known = sorted(PRESETS) + sorted(ALIASES)
        raise KeyError(f"unknown encoder preset {name!r}; known: {known}")
    return PRESETS[key]


def preset_config(name: str, **overrides: Any) -> EncoderConfig:
    """The :class:`EncoderConfig` of a preset with ``overrides`` applied."""
    return EncoderConfig.from_dict(get_preset(name).config, **overrides)


def build_encoder(
    preset_or_config: str | Mapping[str, Any] | EncoderConfig, **overrides: Any
) -> PointTransformerV3Encoder:
    """Build a randomly initialised encoder.

    Args:
        preset_or_config: a preset name (see :data:`PRESETS`, :data:`ALIASES`), a
            reference-style config dict, or an :class:`EncoderConfig`.
        **overrides: config keys to replace (e.g. ``sparse_conv_backend="torch"``,
            ``enc_patch_size=128``).

    Returns:
        A :class:`PointTransformerV3Encoder` (training mode, as ``nn.Module`` starts; use
        ``.eval()`` for inference). Build under ``with torch.device("meta"):`` to inspect
        shapes without allocating memory.

    Raises:
        KeyError: unknown preset; ValueError: invalid config.
    """
    if isinstance(preset_or_config, str):
        cfg = preset_config(preset_or_config, **overrides)
    elif isinstance(preset_or_config, EncoderConfig):
        cfg = preset_or_config.replace(**overrides) if overrides else preset_or_config
    else:
        cfg = EncoderConfig.from_dict(preset_or_config, **overrides)
    return PointTransformerV3Encoder(cfg)
