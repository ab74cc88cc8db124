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

from concerto_ros.models.allocator import keep_freed_memory
from concerto_ros.models.checkpoint import encoder_from_dict, load_encoder
from concerto_ros.models.config import INFERENCE_OVERRIDES
from concerto_ros.models.heads import LinearSemanticHead
from concerto_ros.recordings.labels import SCANNET20_CLASS_NAMES, resolve_class_names
from concerto_ros.models.sparse_conv import resolve_backend
from concerto_ros.models.presets import build_encoder
from concerto_ros.models.ptv3 import (PointTransformerV3Encoder, all_levels_feature, concerto_point_feature,
                                      prepare_input)

FEATURES = ("concat3", "all_levels")

#: ``amp`` values: no autocast, or CUDA autocast to bfloat16 / float16
AMP_MODES = ("none", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: ``runtime`` values: eager PyTorch, or the exported ONNX graph under ONNX Runtime
RUNTIMES = ("torch", "onnxruntime")

#: ``flash`` values: flash-attn varlen patches when flash_attn is importable on CUDA
#: (``auto``), always the flash patch layout (``on``; SDPA where flash-attn is missing), or
#: the reference's non-flash layout (``off``)
FLASH_MODES = ("auto", "on", "off")


def check_amp(amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device``.

    Returns:
        ``torch.bfloat16`` / ``torch.float16``, or ``None`` for ``"none"`` (float32).

    Raises:
        ValueError: unknown ``amp``, or ``bf16``/``fp16`` requested on a non-CUDA device
            (the CPU path runs in float32 only).
    """
    if amp not in AMP_MODES:
        raise ValueError(f"unknown model.amp {amp!r}, expected one of {AMP_MODES}")
    if amp == "none":
        return None
    if torch.device(device).type != "cuda":
        raise ValueError(f"model.amp '{amp}' needs a CUDA device, got '{device}'; the CPU path runs in "
                         "float32 (set model.amp: none)")
    return _AMP_DTYPES[amp]


def inference_overrides(device: torch.device | str, sparse_conv_backend: str = "auto",
                        flash: str = "auto", patch_size: int = 0) -> dict[str, Any]:
    """Encoder config overrides for inference on ``device``.

    :data:`~concerto_ros.models.config.INFERENCE_OVERRIDES` (no order shuffling, no
    stochastic depth, encoder mode) plus the sparse-conv backend, ``enable_flash`` from
    ``flash`` (see :data:`FLASH_MODES`) and, when ``patch_size > 0``, ``enc_patch_size``
    (voxels per attention patch, every stage).

    Raises:
        ValueError: unknown ``flash`` or negative ``patch_size``.
    """
    if flash not in FLASH_MODES:
        raise ValueError(f"unknown model.flash {flash!r}, expected one of {FLASH_MODES}")
    if patch_size < 0:
        raise ValueError(f"model.patch_size must be >= 0, got {patch_size}")
    overrides = dict(INFERENCE_OVERRIDES)
    overrides["sparse_conv_backend"] = sparse_conv_backend
    if flash == "auto":
        overrides["enable_flash"] = (torch.device(device).type == "cuda"
                                     and importlib.util.find_spec("flash_attn") is not None)
    else:
        overrides["enable_flash"] = flash == "on"
    if patch_size:
        overrides["enc_patch_size"] = int(patch_size)
    return overrides


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
        amp: ``none`` (float32), ``bf16`` or ``fp16``: CUDA autocast around the encoder
            forward (linear layers, attention and the project's sparse convolution in the
            low precision; LayerNorm, softmax statistics and spconv's convolution in
            float32). Features are returned as float32 either way.
        use_color: feed the window's RGB to the encoder (``False``: zeros in the colour
            channels, for encoders trained without colour; a model bundle records it).

    Attributes:
        out_channels: width ``D`` of the per-voxel features.
        exported: the :class:`~concerto_ros.models.export.ExportedModel` that computes the
            features instead of the eager encoder (``model.runtime: onnxruntime``, see
            :meth:`use_onnxruntime`), or ``None``.

    Raises:
        ValueError: unknown ``feature`` or ``amp``, or ``amp`` other than ``none`` on a
            non-CUDA device.
    """

    def __init__(self, encoder: PointTransformerV3Encoder, feature: str = "concat3",
                 device: torch.device | str = "cpu", description: str = "", amp: str = "none",
                 use_color: bool = True):
        self.device = torch.device(device)
        self.use_color = bool(use_color)
        self.amp = amp
        self._amp_dtype = check_amp(amp, self.device)
        self.encoder = encoder.to(self.device).eval()
        self.feature = feature
        self.out_channels = feature_channels(list(encoder.config.enc_channels), feature)
        self.description = description
        self.exported = None
        #: whether glibc keeps freed memory for the next window (CPU; see
        #: :func:`~concerto_ros.models.allocator.keep_freed_memory`)
        self.keeps_freed_memory = self.device.type == "cpu" and keep_freed_memory()

    @classmethod
    def from_config(cls, model_cfg, device: torch.device | str = "cpu",
                    log: Callable[[str], Any] | None = None) -> "FeatureExtractor":
        """Build from the ``model.*`` settings of :class:`~concerto_ros.config.PerceptionConfig`.

        With ``model.checkpoint`` empty, a randomly initialised ``model.preset`` encoder is
        built with ``model.seed`` (the global RNG is left untouched) and a warning-level
        note is logged, since its features carry no semantics. Optional settings read when
        present: ``model.amp`` (``none``|``bf16``|``fp16``, default ``none``),
        ``model.flash`` (``auto``|``on``|``off``, default ``auto``) and
        ``model.patch_size`` (voxels per attention patch, ``0`` = the checkpoint's),
        ``model.runtime`` (``torch``|``onnxruntime``, default ``torch``) with ``model.onnx``
        and ``model.onnx_provider`` (see :meth:`use_onnxruntime`).

        Raises:
            ValueError: ``model.amp`` other than ``none`` on a CPU device or with the
                onnxruntime runtime, an unknown ``model.amp`` / ``model.flash`` /
                ``model.runtime`` value, or a ``model.onnx`` file that does not hold this
                encoder.
            FileNotFoundError: the checkpoint path does not exist.
            concerto_ros.models.checkpoint.CheckpointMismatchError /
            CheckpointFormatError: the checkpoint does not fit the model (see their messages).
        """
        log = log or (lambda _m: None)
        device = torch.device(device)
        amp, overrides = cls._runtime(model_cfg, device)
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
        return cls._finish(encoder, model_cfg, model_cfg.feature, device, desc, amp, True, log)

    @classmethod
    def from_blob(cls, blob, model_cfg, feature: str = "concat3", use_color: bool = True,
                  device: torch.device | str = "cpu", source: str = "<in-memory checkpoint>",
                  log: Callable[[str], Any] | None = None) -> "FeatureExtractor":
        """Build from an in-memory ``{"config", "state_dict"}`` encoder dict (a model bundle's),
        with the inference settings of ``model_cfg`` (``device`` placement, ``amp``,
        ``flash``, ``patch_size``, ``sparse_conv_backend``) applied as in :meth:`from_config`;
        ``feature`` and ``use_color`` come from the bundle.

        Raises:
            ValueError: see :meth:`from_config` (amp / flash values).
            concerto_ros.models.checkpoint.CheckpointFormatError / CheckpointMismatchError:
                the dict does not describe a loadable encoder.
        """
        log = log or (lambda _m: None)
        device = torch.device(device)
        amp, overrides = cls._runtime(model_cfg, device)
        encoder = encoder_from_dict(blob, source=source, overrides=overrides, device=device)
        return cls._finish(encoder, model_cfg, feature, device, f"Concerto encoder from {source}", amp, use_color,
                           log)

    @staticmethod
    def _runtime(model_cfg, device: torch.device) -> tuple[str, dict[str, Any]]:
        """``(amp, encoder config overrides)`` of the ``model.*`` inference settings."""
        amp = str(getattr(model_cfg, "amp", "none") or "none")
        check_amp(amp, device)  # fail before loading weights
        runtime = str(getattr(model_cfg, "runtime", "torch") or "torch")
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown model.runtime {runtime!r}, expected one of {RUNTIMES}")
        if runtime == "onnxruntime" and amp != "none":
            raise ValueError(f"model.amp '{amp}' applies to model.runtime torch; the exported graph under "
                             "onnxruntime runs in float32 (set model.amp: none)")
        overrides = inference_overrides(device, model_cfg.sparse_conv_backend,
                                        flash=str(getattr(model_cfg, "flash", "auto") or "auto"),
                                        patch_size=int(getattr(model_cfg, "patch_size", 0) or 0))
        return amp, overrides

    @classmethod
    def _finish(cls, encoder, model_cfg, feature, device, desc, amp, use_color, log) -> "FeatureExtractor":
        n_params = sum(p.numel() for p in encoder.parameters())
        extractor = cls(encoder, feature=feature, device=device, description=desc, amp=amp, use_color=use_color)
        backend = resolve_backend(encoder.config.sparse_conv_backend, device)
        log(f"{desc} | {n_params / 1e6:.2f}M parameters, feature '{feature}' "
            f"({extractor.out_channels}-d), device {device}, sparse conv backend '{backend}', "
            f"flash {encoder.config.enable_flash}, amp {amp}" + ("" if use_color else ", no colour input")
            + (", freed memory kept for reuse" if extractor.keeps_freed_memory else ""))
        if str(getattr(model_cfg, "runtime", "torch") or "torch") == "onnxruntime":
            extractor.use_onnxruntime(str(getattr(model_cfg, "onnx", "") or ""),
                                      str(getattr(model_cfg, "onnx_provider", "auto") or "auto"), log)
        return extractor

    def use_onnxruntime(self, onnx: str = "", provider: str = "auto",
                        log: Callable[[str], Any] | None = None) -> None:
        """Compute the features with the exported ONNX graph under ONNX Runtime.

        Args:
            onnx: a file from ``concerto export`` holding this encoder's weights and
                feature layout; ``""`` exports the encoder once into the cache
                (:func:`~concerto_ros.models.export.cached_export`) and reuses it later.
            provider: ``auto`` (``cuda`` on a CUDA device, else ``cpu``), ``cpu``, ``cuda`` or
                ``tensorrt``.
            log: receives the start-up lines.

        Raises:
            FileNotFoundError: ``onnx`` does not exist.
            ValueError: ``onnx`` holds other weights or another feature layout, or is not
                an exported model.
            RuntimeError: the provider is not in the installed onnxruntime.
        """
        import copy

        from concerto_ros.models.export import ExportableModel, ExportedModel, cached_export, weights_hash

        log = log or (lambda _m: None)
        provider = ("cuda" if self.device.type == "cuda" else "cpu") if provider == "auto" else provider
        if onnx:
            path = Path(onnx).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"model.onnx '{path}' does not exist")
        else:
            encoder = self.encoder if self.device.type == "cpu" else copy.deepcopy(self.encoder).cpu()
            path = cached_export(ExportableModel(encoder, self.feature), "onnx", log=log)
        exported = ExportedModel(path, provider=provider, device_id=self.device.index or 0)
        if exported.feature != self.feature:
            raise ValueError(f"model.onnx {path} computes the '{exported.feature}' feature, the node's is "
                             f"'{self.feature}'; export it with that feature or change model.feature")
        if exported.weights != weights_hash(self.encoder):
            raise ValueError(f"model.onnx {path} holds other encoder weights than the configured model "
                             f"({self.description}); re-export it with `concerto export` or leave model.onnx "
                             "empty to export at start-up")
        self.exported = exported
        log(f"encoder runtime onnxruntime: {exported.describe()}")

    @torch.inference_mode()
    def encode(self, coord, grid_coord, color=None, normal=None) -> torch.Tensor:
        """Per-voxel features ``(M, D) float32`` on ``self.device``.

        Args:
            coord: ``(M, 3)`` voxel representative points, metres (any fixed frame; the
                encoder input is centre-shifted here).
            grid_coord: ``(M, 3)`` non-negative integer voxel indices, unique.
            color: optional ``(M, 3)`` uint8 RGB (ignored when ``use_color`` is false).
            normal: optional ``(M, 3)`` unit normals.
        """
        batch = prepare_input(coord, grid_coord, color=color if self.use_color else None, normal=normal, device=self.device)
        if self.exported is not None:
            out = self.exported(batch.coord, batch.grid_coord, batch.feat, batch.offset)["point_feat"]
            return out.to(self.device, torch.float32)
        with torch.autocast(device_type=self.device.type, dtype=self._amp_dtype or torch.float32,
                            enabled=self._amp_dtype is not None):
            out = self.encoder(batch)
            feat = concerto_point_feature(out) if self.feature == "concat3" else all_levels_feature(out)
        return feat.float()

    def encode_window(self, window) -> torch.Tensor:
        """:meth:`encode` on a :class:`~concerto_ros.cloud.window.WindowCloud` (uses its
        ``coord``, ``grid_coord`` and ``color``)."""
        return self.encode(window.coord, window.grid_coord, color=window.color)


def head_class_names(ckpt: dict, configured: Any, source: str = "head",
                     log: Callable[[str], Any] | None = None) -> list[str]:
    """Class names of a head checkpoint dict, first match wins: its ``config.class_names``;
    ``configured`` (the ``head.class_names`` setting, ``[scannet20]`` expanded) when it has
    as many entries as the head has classes; the ScanNet-20 names for a 20-class head
    (logged); else ``configured`` as is (:func:`build_heads` then refuses the mismatch).

    Args:
        ckpt: ``{"config": {...}, "state_dict": {"seg_head.weight": [K, D], ...}}``.
        configured: the ``head.class_names`` setting.
        source: the head's origin, named in the log line.
    """
    cfg = ckpt.get("config") or {}
    k = int(cfg.get("num_classes", ckpt["state_dict"]["seg_head.weight"].shape[0]))
    names = resolve_class_names(configured) or []
    if cfg.get("class_names"):
        return [str(c) for c in cfg["class_names"]]
    if len(names) == k:
        return names
    if k == len(SCANNET20_CLASS_NAMES):
        if log:
            log(f"head checkpoint {source} has 20 classes and no class_names: using the ScanNet-20 names "
                f"(set head.class_names to override)")
        return list(SCANNET20_CLASS_NAMES)
    return names


def build_heads(head_cfg, in_channels: int, device: torch.device | str = "cpu",
                log: Callable[[str], Any] | None = None,
                feature_dims: dict[str, int] | None = None,
                blob: dict | None = None, source: str = "") -> LinearSemanticHead:
    """The linear semantic head from the ``head.*`` settings (or an in-memory head dict).

    A checkpoint is ``{"config": {"backbone_out_channels": D, "num_classes": K,
    "class_names": [...] (optional)}, "state_dict": {"seg_head.weight" [K, D],
    "seg_head.bias" [K]}}`` (the format of Concerto's released linear-probe heads). ``blob``
    (such a dict, e.g. a model bundle's head; ``source`` names where it came from) replaces
    ``head.checkpoint``. Without either, a seeded random head over ``head.class_names`` is
    built.

    Class names, first match wins: the checkpoint's ``config.class_names``; the configured
    ``head.class_names`` when it has ``K`` entries (the shorthand ``[scannet20]`` expands to
    :data:`~concerto_ros.recordings.labels.SCANNET20_CLASS_NAMES`); for a 20-class
    checkpoint, the ScanNet-20 names (the released
    ``concerto_large_linear_prob_head_sc.pth``: 1728-d all-levels feature of
    ``concerto_large``, ScanNet-20 labels), with a log line saying so.

    ``feature_dims`` (``{"concerto": D1, "cross4d": D2}``, the parts of the fused feature in
    concatenation order) is checked against a checkpoint's ``config.feature_dims`` when it
    records one (heads trained by this project do), and stored on the head for saving.
    The head's ``origin`` attribute says where its weights came from (the file or
    ``source``; ``""`` for the seeded random head).

    Raises:
        FileNotFoundError: missing checkpoint.
        ValueError: the checkpoint's ``feature_dims`` differ from ``feature_dims`` (another
            encoder combination), or the head's input width differs from the encoder feature width
            ``in_channels`` (the message says which ``model.feature`` would fit), or its
            class count from the class names, or ``blob`` is not a head dict.
    """
    log = log or (lambda _m: None)
    if blob is not None or head_cfg.checkpoint:
        if blob is not None:
            path, ckpt = source or "head dict", blob
            if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) \
                    or "seg_head.weight" not in ckpt["state_dict"]:
                raise ValueError(f"{path}: not a linear head (expected {{'config', 'state_dict': "
                                 "{'seg_head.weight', 'seg_head.bias'}}})")
        else:
            path = Path(head_cfg.checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"head.checkpoint '{path}' does not exist")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ckpt.get("config") or {}
        sd = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
        d = int(cfg.get("backbone_out_channels", sd["seg_head.weight"].shape[1]))
        k = int(cfg.get("num_classes", sd["seg_head.weight"].shape[0]))
        names = head_class_names(ckpt, head_cfg.class_names, source=str(path), log=log)
        if feature_dims is not None and cfg.get("feature_dims") is not None:
            ckpt_dims = {str(k_): int(v) for k_, v in dict(cfg["feature_dims"]).items()}
            ours = {str(k_): int(v) for k_, v in feature_dims.items()}
            if ckpt_dims != ours:
                raise ValueError(
                    f"head checkpoint {path} was trained on fused features {ckpt_dims} (concerto + cross4d) "
                    f"but the node gives {ours}; check model.enabled/preset/feature and "
                    "cross4d.enabled/checkpoint")
        if d != in_channels:
            hint = ""
            if d == 1728:
                hint = "; the released 1728-d heads read the all-levels feature of concerto_large " \
                       "(model.preset: large, model.feature: all_levels)"
            raise ValueError(f"head checkpoint {path} expects {d}-d features but the encoder gives "
                             f"{in_channels}-d (check model.preset and model.feature{hint})")
        if len(names) != k:
            raise ValueError(f"head checkpoint {path} has {k} classes but {len(names)} class names are configured")
        head = LinearSemanticHead(d, names)
        head.load_state_dict(sd, strict=True)
        head.origin = str(path)
        log(f"semantic head from {path}: {k} classes")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            head = LinearSemanticHead(in_channels, resolve_class_names(head_cfg.class_names))
        head.origin = ""
        log(f"SEEDED RANDOM semantic head over {len(head.class_names)} classes (no head.checkpoint set)")
    head.feature_dims = dict(feature_dims) if feature_dims is not None else None
    return head.to(device).eval()


def head_to_dict(head: LinearSemanticHead, feature_dims: dict[str, int] | None = None) -> dict[str, Any]:
    """``{"config": {backbone_out_channels, num_classes, class_names[, feature_dims]},
    "state_dict"}`` of ``head`` (tensors detached, on the CPU): what :func:`save_head` writes
    and a model bundle stores. ``feature_dims`` defaults to the head's own attribute."""
    dims = feature_dims if feature_dims is not None else getattr(head, "feature_dims", None)
    cfg: dict[str, Any] = {"backbone_out_channels": head.in_channels, "num_classes": head.num_classes,
                           "class_names": list(head.class_names)}
    if dims is not None:
        cfg["feature_dims"] = {str(k): int(v) for k, v in dims.items()}
    return {"config": cfg, "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}}


def save_head(head: LinearSemanticHead, path, feature_dims: dict[str, int] | None = None) -> Path:
    """Write ``head`` in the released linear-probe format plus ``class_names`` and the
    ``feature_dims`` of the fused feature it reads (checked by :func:`build_heads`)."""
    path = Path(path)
    torch.save(head_to_dict(head, feature_dims), path)
    return path
