"""Loading and saving Concerto / Sonata PTv3 encoder checkpoints.

Understood layouts (all read with ``torch.load(..., weights_only=True)``):

* **released** (``concerto_small|base|large.pth``, ``sonata.pth`` on the Pointcept/Concerto
  hub; Zhang et al., arXiv 2510.23607): ``{"config": dict, "state_dict": OrderedDict}``
  with keys ``embedding.stem.linear.weight``, ``enc.enc0.block0.cpe.0.weight`` ...
* **Pointcept training checkpoint** (e.g. ``pretrain-concerto-v1m1-2-large-video.pth``):
  a dict with the weights under ``"state_dict"`` or ``"model"`` and the encoder tensors
  prefixed ``module.student.backbone.``, ``module.backbone.`` or ``module.``; no config,
  so a preset must be named.
* **bare state dict**: a mapping of names to tensors (optionally with one of the
  prefixes above), plus a preset.

A mismatch between checkpoint and model under ``strict=True`` raises
:class:`CheckpointMismatchError` naming the file, the counts and the first keys.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .config import INFERENCE_OVERRIDES, EncoderConfig
from .presets import get_preset
from .ptv3 import PointTransformerV3Encoder

__all__ = [
    "KNOWN_PREFIXES",
    "CheckpointMismatchError",
    "CheckpointFormatError",
    "EncoderCheckpoint",
    "StateDictDiff",
    "read_checkpoint",
    "diff_state_dict",
    "load_encoder",
    "encoder_from_dict",
    "encoder_to_dict",
    "save_encoder",
]

log = logging.getLogger(__name__)

#: encoder key prefixes of Pointcept checkpoints, tried in this order
KNOWN_PREFIXES = (
    "module.student.backbone.",
    "module.backbone.",
    "student.backbone.",
    "backbone.",
    "module.",
)

#: config keys of this project that the reference constructor does not accept
_PROJECT_KEYS = ("sparse_conv_backend", "stage_orders")

_SHOW = 5  # keys listed per category in error messages


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint layout this loader understands, or lacks a config
    and no preset was given."""


@dataclass
class StateDictDiff:
    """Differences between a checkpoint's tensors and a model's state dict.

    Attributes:
        missing: keys of the model absent from the checkpoint.
        unexpected: keys of the checkpoint the model does not have.
        shape_mismatch: ``(key, checkpoint shape, model shape)`` for shared keys.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        """Counts and the first few keys of each kind, one line per kind."""
        lines = [
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatch)} shape mismatches"
        ]
        if self.missing:
            lines.append(f"missing (first {_SHOW}): {self.missing[:_SHOW]}")
        if self.unexpected:
            lines.append(f"unexpected (first {_SHOW}): {self.unexpected[:_SHOW]}")
        if self.shape_mismatch:
            shown = [
                f"{k}: checkpoint {list(a)} vs model {list(b)}"
                for k, a, b in self.shape_mismatch[:_SHOW]
            ]
            lines.append(f"shape mismatches (first {_SHOW}): {shown}")
        return "\n  ".join(lines)


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not match the encoder built for it (``strict=True``).

    Attributes:
        path: the checkpoint file.
        diff: the :class:`StateDictDiff`.
    """

    def __init__(self, path: str, diff: StateDictDiff, detail: str = "") -> None:
        self.path = path
        self.diff = diff
        msg = f"checkpoint {path} does not match the encoder{detail}:\n  {diff.summary()}"
        super().__init__(msg)


@dataclass
class EncoderCheckpoint:
    """The encoder part of a checkpoint file.

    Attributes:
        path: the file.
        layout: ``"released"``, ``"training"`` or ``"bare"``.
        config: the stored config dict, or ``None``.
        state_dict: encoder tensors with the prefix removed.
        prefix: the prefix that was removed (``""`` if none).
    """

    path: str
    layout: str
    config: dict[str, Any] | None
    state_dict: "OrderedDict[str, torch.Tensor]"
    prefix: str


def _strip_prefix(
    state_dict: Mapping[str, Any], preferred: str = ""
) -> tuple["OrderedDict[str, torch.Tensor]", str]:
    keys = [k for k in state_dict if isinstance(k, str)]
    candidates = ([preferred] if preferred else []) + list(KNOWN_PREFIXES)
    for prefix in candidates:
        if any(k.startswith(prefix) for k in keys):
            out = OrderedDict(
                (k[len(prefix) :], v) for k, v in state_dict.items() if k.startswith(prefix)
            )
            return out, prefix
    return OrderedDict(state_dict), ""


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(v, torch.Tensor) for v in obj.values()
    )


def read_checkpoint(path: str | os.PathLike, prefix: str = "") -> EncoderCheckpoint:
    """Read a checkpoint file and extract the encoder tensors.

    Args:
        path: ``.pth`` file.
        prefix: a key prefix to try before :data:`KNOWN_PREFIXES`.

    Returns:
        An :class:`EncoderCheckpoint` (tensors on CPU).

    Raises:
        FileNotFoundError: no such file.
        CheckpointFormatError: unreadable with ``weights_only=True`` or an unknown layout.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, non-allowlisted globals
        raise CheckpointFormatError(
            f"cannot read checkpoint {path} with torch.load(weights_only=True): {exc}"
        ) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"checkpoint {path} holds a {type(obj).__name__}, expected a dict"
        )
    config = obj.get("config")
    if isinstance(config, Mapping) and _is_tensor_mapping(obj.get("state_dict")):
        sd, found = _strip_prefix(obj["state_dict"], prefix)
        return EncoderCheckpoint(path, "released", dict(config), sd, found)
    for key in ("state_dict", "model"):
        if _is_tensor_mapping(obj.get(key)):
            sd, found = _strip_prefix(obj[key], prefix)
            return EncoderCheckpoint(path, "training", None, sd, found)
    if _is_tensor_mapping(obj):
        sd, found = _strip_prefix(obj, prefix)
        return EncoderCheckpoint(path, "bare", None, sd, found)
    raise CheckpointFormatError(
        f"checkpoint {path}: unknown layout, top-level keys {sorted(map(str, obj))[:10]}; "
        "expected {'config', 'state_dict'}, a training checkpoint with 'state_dict' or "
        "'model', or a bare state dict"
    )


def diff_state_dict(
    expected: Mapping[str, torch.Tensor], provided: Mapping[str, torch.Tensor]
) -> StateDictDiff:
    """Compare key sets and shapes of two state dicts (``expected`` = the model's)."""
    diff = StateDictDiff()
    diff.missing = [k for k in expected if k not in provided]
    diff.unexpected = [k for k in provided if k not in expected]
    diff.shape_mismatch = [
        (k, tuple(provided[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in provided and tuple(provided[k].shape) != tuple(expected[k].shape)
    ]
    return diff


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _resolve_config(
    ckpt: EncoderCheckpoint, preset: str | None, overrides: Mapping[str, Any]
) -> EncoderConfig:
    if ckpt.config is not None:
        cfg = dict(ckpt.config)
        if preset is not None:
            preset_cfg = get_preset(preset).config
            arch = ("in_channels", "enc_depths", "enc_channels", "enc_num_head")
            if any(_plain(preset_cfg.get(k)) != _plain(cfg.get(k)) for k in arch):
                warnings.warn(
                    f"checkpoint {ckpt.path} carries its own config; preset {preset!r} "
                    "differs and is ignored",
                    stacklevel=4,
                )
        explicit_mask = "mask_token" in cfg
    else:
        if preset is None:
            raise CheckpointFormatError(
                f"checkpoint {ckpt.path} ({ckpt.layout} layout) has no 'config'; pass a "
                "preset (e.g. preset='large' or 'concerto_large_video')"
            )
        cfg = dict(get_preset(preset).config)
        explicit_mask = False
    if "embedding.mask_token" in ckpt.state_dict and not explicit_mask:
        cfg["mask_token"] = True  # Sonata/Concerto students carry a mask token
    merged = {**INFERENCE_OVERRIDES, **dict(overrides)}
    return EncoderConfig.from_dict(cfg, **merged)


def load_encoder(
    path: str | os.PathLike,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> PointTransformerV3Encoder:
    """Load a Concerto / Sonata encoder checkpoint for inference.

    The config comes from the checkpoint when it has one, otherwise from ``preset``.
    :data:`~concerto_ros.models.config.INFERENCE_OVERRIDES` (``enable_flash=False``,
    ``shuffle_orders=False``, ``enc_mode=True``, ``drop_path=0``) are applied, then
    ``overrides`` (e.g. ``{"sparse_conv_backend": "torch", "enc_patch_size": 1024}``).
    A checkpoint holding ``embedding.mask_token`` gets ``mask_token=True`` unless its own
    config says otherwise.

    Args:
        path: checkpoint file (see the module docstring for layouts).
        preset: preset name (:data:`~concerto_ros.models.presets.PRESETS`); required
            when the checkpoint has no config. Its ``state_dict_prefix`` is tried first.
        overrides: config keys to replace.
        device: where the model is placed.
        strict: raise on any missing / unexpected key or shape mismatch; with
            ``False`` the matching tensors are loaded, the rest keep their random
            initialisation (a warning is logged).

    Returns:
        A :class:`~concerto_ros.models.ptv3.PointTransformerV3Encoder` in eval mode.

    Raises:
        FileNotFoundError: no such file.
        CheckpointFormatError (a ValueError): unknown layout, or no config and no preset.
        KeyError: unknown preset.
        CheckpointMismatchError (a RuntimeError): ``strict`` and the tensors do not fit.
    """
    prefix = get_preset(preset).state_dict_prefix if preset is not None else ""
    ckpt = read_checkpoint(path, prefix)
    return _instantiate(ckpt, preset, overrides or {}, device, strict)


def encoder_from_dict(
    blob: Mapping[str, Any],
    source: str = "<in-memory checkpoint>",
    overrides: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> PointTransformerV3Encoder:
    """Build an encoder from an in-memory released-layout dict ``{"config", "state_dict"}``
    (what :func:`save_encoder` writes and a model bundle stores), for inference.

    The same rules as :func:`load_encoder` apply: :data:`INFERENCE_OVERRIDES`, then
    ``overrides``; ``embedding.mask_token`` in the tensors switches ``mask_token`` on unless
    the config says otherwise; tensors are cast to float32.

    Args:
        blob: ``{"config": dict, "state_dict": {name: tensor}}``.
        source: where the dict came from (named in error messages, e.g. the bundle file).
        overrides, device, strict: see :func:`load_encoder`.

    Raises:
        CheckpointFormatError (a ValueError): not a ``{"config", "state_dict"}`` dict, or a
            config the encoder does not accept.
        CheckpointMismatchError (a RuntimeError): ``strict`` and the tensors do not fit.
    """
    if not isinstance(blob, Mapping) or not isinstance(blob.get("config"), Mapping) \
            or not _is_tensor_mapping(blob.get("state_dict")):
        keys = sorted(map(str, blob))[:10] if isinstance(blob, Mapping) else type(blob).__name__
        raise CheckpointFormatError(
            f"{source}: expected an encoder dict {{'config': dict, 'state_dict': {{name: tensor}}}}, got {keys}")
    ckpt = EncoderCheckpoint(source, "released", dict(blob["config"]), OrderedDict(blob["state_dict"]), "")
    return _instantiate(ckpt, None, overrides or {}, device, strict)


def _instantiate(
    ckpt: EncoderCheckpoint,
    preset: str | None,
    overrides: Mapping[str, Any],
    device: torch.device | str,
    strict: bool,
) -> PointTransformerV3Encoder:
    """The encoder of ``ckpt`` (config resolved, tensors loaded) in eval mode on ``device``."""
    try:
        cfg = _resolve_config(ckpt, preset, overrides)
    except ValueError as exc:
        if isinstance(exc, CheckpointFormatError):
            raise
        raise CheckpointFormatError(f"checkpoint {ckpt.path}: invalid encoder config: {exc}") from exc
    with torch.device("meta"):
        skeleton = PointTransformerV3Encoder(cfg)
    diff = diff_state_dict(skeleton.state_dict(), ckpt.state_dict)
    if not diff.ok and strict:
        detail = f" (layout {ckpt.layout}, prefix {ckpt.prefix!r}, preset {preset!r})"
        raise CheckpointMismatchError(ckpt.path, diff, detail)
    state = OrderedDict(
        (k, v.float() if v.is_floating_point() else v) for k, v in ckpt.state_dict.items()
    )
    if diff.ok:
        skeleton.load_state_dict(state, strict=True, assign=True)
        model = skeleton
    else:
        log.warning("loading %s non-strictly:\n  %s", ckpt.path, diff.summary())
        model = PointTransformerV3Encoder(cfg)
        bad = {k for k, _, _ in diff.shape_mismatch} | set(diff.unexpected)
        model.load_state_dict({k: v for k, v in state.items() if k not in bad}, strict=False)
    return model.to(device).eval()


def encoder_to_dict(model: PointTransformerV3Encoder, reference_keys_only: bool = False) -> dict[str, Any]:
    """``{"config", "state_dict"}`` of ``model`` in the released layout (tensors detached, on
    the CPU). The config is ``model.config.to_dict()`` (inference overrides are re-applied
    when it is loaded, :func:`encoder_from_dict`); with ``reference_keys_only`` it omits this
    project's runtime keys (``sparse_conv_backend``, ``stage_orders``) so it also loads with
    the reference ``PointTransformerV3``."""
    config = model.config.to_dict()
    if reference_keys_only:
        config = {k: v for k, v in config.items() if k not in _PROJECT_KEYS}
    state = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())
    return {"config": config, "state_dict": state}


def save_encoder(
    model: PointTransformerV3Encoder,
    path: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save in the released layout ``{"config", "state_dict"}``.

    The config omits this project's runtime keys (``sparse_conv_backend``,
    ``stage_orders``) so the file also loads with the reference ``PointTransformerV3``.

    Args:
        model: the encoder.
        path: output ``.pth`` file.
        extra: additional top-level entries (plain types only, to stay loadable with
            ``weights_only=True``).
    """
    payload: dict[str, Any] = encoder_to_dict(model, reference_keys_only=True)
    if extra:
        payload.update(extra)
    torch.save(payload, os.fspath(path))
