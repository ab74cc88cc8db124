"""Model bundles: everything the node runs, in one file.

A bundle holds the Concerto encoder (config and weights), the feature layout the heads read,
the Cross4D encoder and its window settings, the linear semantic head, the language
translator with the name of the text encoder it was fitted with, an open vocabulary, and the
preprocessing the models were trained with (voxel size, colour input), plus free-form
metadata (description, creation time, the command and config that produced it, metrics).

The node takes it with one parameter, ``model.bundle`` (see
:class:`~concerto_ros.pipeline.PerceptionPipeline` and :func:`select_bundle`); every
``concerto train ...`` command writes one; ``concerto info --bundle FILE`` prints it.

File layout (``torch.save`` of a plain dict, readable with ``torch.load(weights_only=True)``)::

    {"format": "concerto_ros.bundle", "version": 1, "storage": "float32" | "float16",
     "encoder": {"config", "state_dict"} | None,      # released Concerto checkpoint layout
     "feature": "concat3" | "all_levels",
     "cross4d": {"kind", "config", "state_dict", "extra", "settings"} | None,
     "head": {"config", "state_dict"} | None,         # released linear-probe head layout
     "translator": {"format", "config", "state_dict", "extra"} | None,
     "text_encoder": str, "text_model": str, "vocabulary": [str, ...],
     "voxel_size": float (m), "use_color": bool, "metadata": dict}
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "VERSION",
    "COMPONENT_PARAMETERS",
    "DEFAULT_BUNDLE_PATH",
    "BundleError",
    "ModelBundle",
    "save_bundle",
    "load_bundle",
    "bundle_from_parts",
    "bundle_from_pipeline",
    "resolve_bundle_path",
    "select_bundle",
    "check_against_config",
]

FORMAT = "concerto_ros.bundle"
VERSION = 1

#: the bundle the package embeds, used by ``model.bundle: default``
DEFAULT_BUNDLE_PATH = Path(__file__).resolve().parents[1] / "assets" / "default_bundle.pt"

#: node parameters that load a model component from a separate file; a bundle replaces them
COMPONENT_PARAMETERS = ("model.checkpoint", "cross4d.checkpoint", "head.checkpoint", "language.translator")

_CROSS4D_SETTINGS = {"num_frames": 4, "points_per_frame": 2048, "average": "points"}
_BACKEND_ALIASES = {"sentence_transformers": "sentence-transformers", "open-clip": "open_clip"}
_VOXEL_TOL = 1e-9


class BundleError(ValueError):
    """A model bundle that cannot be used: not a bundle, a newer version, inconsistent
    content, or a conflict with the node's parameters. The message names the file and the
    mismatch."""


def _backend(name: str) -> str:
    return _BACKEND_ALIASES.get(name, name)


def _n_params(state_dict: Mapping[str, Any] | None) -> int:
    return int(sum(v.numel() for v in (state_dict or {}).values() if torch.is_tensor(v)))


@dataclass
class ModelBundle:
    """The models of the node and how their input was prepared (see the module docstring).

    Attributes:
        encoder: Concerto PTv3 ``{"config": EncoderConfig.to_dict(), "state_dict": {name:
            tensor}}`` (the released checkpoint layout), or ``None``.
        feature: per-point feature layout of the Concerto encoder: ``concat3`` |
            ``all_levels`` (:data:`~concerto_ros.models.extractor.FEATURES`).
        cross4d: the :func:`~concerto_ros.models.cross4d.cross4d_to_dict` blob plus
            ``"settings": {"num_frames", "points_per_frame", "average"}``, or ``None``.
        head: linear semantic head ``{"config": {backbone_out_channels, num_classes,
            class_names, feature_dims}, "state_dict"}``, or ``None``.
        translator: :meth:`~concerto_ros.language.translator.Translator.to_dict` blob, or ``None``.
        text_encoder: ``language.text_encoder`` backend the translator was fitted with
            (``""`` without a translator).
        text_model: ``language.text_model`` (``""``: the backend's default model).
        vocabulary: open-vocabulary class names used when the node's
            ``language.vocabulary`` is ``[]`` (needs a translator).
        voxel_size: grid-sampling voxel edge the models were trained at, metres.
        use_color: whether the Concerto encoder's input had RGB.
        metadata: ``description``, ``created`` (ISO time), ``command``, ``config``,
            ``metrics``, ``sources`` ... (plain types).
    """

    encoder: dict | None = None
    feature: str = "concat3"
    cross4d: dict | None = None
    head: dict | None = None
    translator: dict | None = None
    text_encoder: str = ""
    text_model: str = ""
    vocabulary: list[str] = field(default_factory=list)
    voxel_size: float = 0.02
    use_color: bool = True
    metadata: dict = field(default_factory=dict)

    # -- derived ------------------------------------------------------------------------------
    @property
    def feature_dims(self) -> dict[str, int]:
        """``{"concerto": D1 or 0, "cross4d": D2 or 0}``: the widths of the fused per-voxel
        feature's parts (Concerto first), computed from the encoder configs.

        Raises:
            BundleError: an encoder config without channel widths, or an unknown feature.
        """
        d1 = d2 = 0
        if self.encoder is not None:
            from concerto_ros.models.config import EncoderConfig
            from concerto_ros.models.extractor import feature_channels

            cfg = dict(self.encoder.get("config") or {})
            channels = cfg.get("enc_channels", EncoderConfig.enc_channels)
            try:
                d1 = feature_channels(list(channels), self.feature)
            except ValueError as exc:
                raise BundleError(f"bundle: {exc}") from None
        if self.cross4d is not None:
            from concerto_ros.models.cross4d import Cross4DConfig

            d2 = int(dict(self.cross4d.get("config") or {}).get("dim", Cross4DConfig.dim))
        return {"concerto": int(d1), "cross4d": int(d2)}

    @property
    def cross4d_settings(self) -> dict[str, Any]:
        """``{"num_frames", "points_per_frame", "average"}`` of the Cross4D encoder (defaults
        filled in), or ``{}`` without one."""
        if self.cross4d is None:
            return {}
        extra = dict(self.cross4d.get("extra") or {})
        out = {k: extra.get(k, v) for k, v in _CROSS4D_SETTINGS.items() if k != "average"}
        out["average"] = _CROSS4D_SETTINGS["average"]
        out.update(dict(self.cross4d.get("settings") or {}))
        return out

    @property
    def class_names(self) -> list[str]:
        """The head's class names (``[]`` without a head or without names)."""
        if self.head is None:
            return []
        return [str(c) for c in (self.head.get("config") or {}).get("class_names") or []]

    def components(self) -> list[str]:
        """Names of the parts present, e.g. ``["concerto", "head", "translator"]``."""
        out = [n for n, v in (("concerto", self.encoder), ("cross4d", self.cross4d), ("head", self.head),
                              ("translator", self.translator)) if v is not None]
        if self.vocabulary:
            out.append("vocabulary")
        return out

    # -- checks ---------------------------------------------------------------------------------
    def validate(self, source: str = "bundle") -> None:
        """Check the bundle's internal consistency.

        At least one encoder; a valid ``feature``; ``voxel_size > 0``; encoder and Cross4D
        configs that build and whose tensors fit them (names and shapes, checked on the
        ``meta`` device); the head's input width equal to ``sum(feature_dims)`` and its
        recorded ``feature_dims`` (when present) equal to :attr:`feature_dims`; the
        translator's input width equal to ``sum(feature_dims)`` and its text encoder the
        bundle's ``text_encoder`` / ``text_model``; a vocabulary only with a translator.

        Args:
            source: the file (or other origin) named in error messages.

        Raises:
            BundleError: the first inconsistency found, naming ``source``.
        """
        from concerto_ros.models.extractor import FEATURES

        def fail(msg: str) -> None:
            raise BundleError(f"model bundle {source}: {msg}")

        if self.encoder is None and self.cross4d is None:
            fail("holds no encoder (neither a Concerto encoder nor a Cross4D encoder)")
        if self.feature not in FEATURES:
            fail(f"unknown feature layout {self.feature!r}, expected one of {FEATURES}")
        if not (isinstance(self.voxel_size, (int, float)) and math.isfinite(self.voxel_size)
                and self.voxel_size > 0):
            fail(f"voxel_size must be a positive number of metres, got {self.voxel_size!r}")
        if not isinstance(self.metadata, dict):
            fail(f"metadata must be a dict, got {type(self.metadata).__name__}")
        if self.encoder is not None:
            self._check_encoder(fail)
        if self.cross4d is not None:
            self._check_cross4d(fail)
        dims = self.feature_dims
        width = sum(dims.values())
        if self.head is not None:
            self._check_head(fail, dims, width)
        if self.translator is not None:
            self._check_translator(fail, width)
        elif self.vocabulary:
            fail(f"has a vocabulary {list(self.vocabulary)} but no translator (open-vocabulary labels need one)")
        if not all(isinstance(v, str) and v.strip() for v in self.vocabulary):
            fail(f"vocabulary entries must be non-empty strings, got {list(self.vocabulary)}")

    def _check_encoder(self, fail: Callable[[str], None]) -> None:
        from concerto_ros.models.checkpoint import diff_state_dict
        from concerto_ros.models.config import INFERENCE_OVERRIDES, EncoderConfig
        from concerto_ros.models.ptv3 import PointTransformerV3Encoder

        enc = self.encoder
        if not isinstance(enc, dict) or not isinstance(enc.get("config"), dict) \
                or not isinstance(enc.get("state_dict"), dict):
            fail("encoder must be {'config': dict, 'state_dict': {name: tensor}}")
        try:
            cfg = dict(enc["config"])
            if "embedding.mask_token" in enc["state_dict"] and "mask_token" not in cfg:
                cfg["mask_token"] = True
            cfg = EncoderConfig.from_dict(cfg, **INFERENCE_OVERRIDES)
        except (TypeError, ValueError) as exc:
            fail(f"invalid Concerto encoder config: {exc}")
        with torch.device("meta"):
            skeleton = PointTransformerV3Encoder(cfg)
        diff = diff_state_dict(skeleton.state_dict(), enc["state_dict"])
        if not diff.ok:
            fail(f"the Concerto encoder's tensors do not fit its config: {diff.summary()}")

    def _check_cross4d(self, fail: Callable[[str], None]) -> None:
        from concerto_ros.models.checkpoint import diff_state_dict
        from concerto_ros.models.cross4d import AVERAGE_MODES, CHECKPOINT_KIND, Cross4DConfig, Cross4DEncoder

        c4 = self.cross4d
        if not isinstance(c4, dict) or c4.get("kind") != CHECKPOINT_KIND or not isinstance(c4.get("state_dict"), dict):
            fail("cross4d must be a Cross4D checkpoint dict (kind 'cross4d', config, state_dict)")
        try:
            cfg = Cross4DConfig.from_dict(c4.get("config") or {})
        except (TypeError, ValueError) as exc:
            fail(f"invalid Cross4D config: {exc}")
        with torch.device("meta"):
            skeleton = Cross4DEncoder(cfg)
        diff = diff_state_dict(skeleton.state_dict(), c4["state_dict"])
        if not diff.ok:
            fail(f"the Cross4D encoder's tensors do not fit its config: {diff.summary()}")
        s = self.cross4d_settings
        try:
            ok = int(s["num_frames"]) >= 1 and int(s["points_per_frame"]) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok or s["average"] not in AVERAGE_MODES:
            fail(f"Cross4D settings {s} are invalid: need num_frames >= 1, points_per_frame >= 1, "
                 f"average in {AVERAGE_MODES}")

    def _check_head(self, fail: Callable[[str], None], dims: dict[str, int], width: int) -> None:
        h = self.head
        sd = h.get("state_dict") if isinstance(h, dict) else None
        if not isinstance(sd, dict) or "seg_head.weight" not in sd or "seg_head.bias" not in sd:
            fail("head must be {'config', 'state_dict': {'seg_head.weight', 'seg_head.bias'}}")
        w, b = sd["seg_head.weight"], sd["seg_head.bias"]
        if w.ndim != 2 or tuple(b.shape) != (w.shape[0],):
            fail(f"head weight {list(w.shape)} and bias {list(b.shape)} do not form a [K, D] linear layer")
        cfg = h.get("config") or {}
        k, d = int(w.shape[0]), int(w.shape[1])
        if int(cfg.get("backbone_out_channels", d)) != d or int(cfg.get("num_classes", k)) != k:
            fail(f"head config says {cfg.get('backbone_out_channels')}-d input, {cfg.get('num_classes')} classes "
                 f"but its weight is [{k}, {d}]")
        names = cfg.get("class_names")
        if names and len(names) != k:
            fail(f"head has {k} classes but {len(names)} class names")
        if d != width:
            fail(f"the head reads {d}-d features but the bundle's encoders give {width}-d {dims} "
                 f"(feature '{self.feature}')")
        if cfg.get("feature_dims") is not None:
            hd = {str(a): int(v) for a, v in dict(cfg["feature_dims"]).items()}
            if hd != dims:
                fail(f"the head was trained on fused features {hd} but the bundle's encoders give {dims}")

    def _check_translator(self, fail: Callable[[str], None], width: int) -> None:
        from concerto_ros.language.translator import FORMAT as TR_FORMAT

        tr = self.translator
        if not isinstance(tr, dict) or tr.get("format") != TR_FORMAT or not isinstance(tr.get("config"), dict):
            fail(f"translator must be a translator dict (format '{TR_FORMAT}')")
        c = tr["config"]
        if int(c.get("in_dim", -1)) != width:
            fail(f"the translator reads {c.get('in_dim')}-d features but the bundle's encoders give {width}-d "
                 f"{self.feature_dims}")
        name = str(c.get("text_encoder", ""))
        if not self.text_encoder:
            fail(f"has a translator (fitted for text encoder '{name}') but no text_encoder")
        backend, _, model = name.partition(":")
        if _backend(backend) != _backend(self.text_encoder):
            fail(f"the translator was fitted for text encoder '{name}' but text_encoder is '{self.text_encoder}'")
        if self.text_model and model and Path(self.text_model).name != model:
            fail(f"the translator was fitted for text encoder '{name}' but text_model is '{self.text_model}'")

    # -- report ---------------------------------------------------------------------------------
    def describe(self) -> list[tuple[str, str]]:
        """``(item, value)`` rows for ``concerto info --bundle``: encoders (preset, widths,
        parameters), feature layout and widths, head classes, translator and text encoder,
        vocabulary, voxel size, and the metadata's description / creation time / command /
        metrics."""
        rows: list[tuple[str, str]] = []
        md = self.metadata or {}
        if md.get("description"):
            rows.append(("description", str(md["description"])))
        dims = self.feature_dims
        if self.encoder is not None:
            cfg = dict(self.encoder.get("config") or {})
            rows.append(("Concerto encoder",
                         f"{_preset_name(cfg)}channels {list(cfg.get('enc_channels', []))}, "
                         f"depths {list(cfg.get('enc_depths', []))}, "
                         f"{_n_params(self.encoder.get('state_dict')) / 1e6:.2f}M parameters, "
                         f"{cfg.get('in_channels', '?')} input channels"))
            rows.append(("feature", f"{self.feature} ({dims['concerto']}-d)"))
        else:
            rows.append(("Concerto encoder", "none"))
        if self.cross4d is not None:
            c = dict(self.cross4d.get("config") or {})
            s = self.cross4d_settings
            extra = dict(self.cross4d.get("extra") or {})
            rows.append(("Cross4D encoder",
                         f"preset {extra.get('preset', '?')}, dim {c.get('dim', '?')}, depth {c.get('depth', '?')}, "
                         f"{_n_params(self.cross4d.get('state_dict')) / 1e6:.3f}M parameters; "
                         f"{s['num_frames']} frames x {s['points_per_frame']} points, average '{s['average']}'"
                         + (f"; teacher {extra['teacher']}" if extra.get("teacher") else "")))
        else:
            rows.append(("Cross4D encoder", "none"))
        rows.append(("fused feature", f"{sum(dims.values())}-d {dims}"))
        if self.head is not None:
            w = self.head["state_dict"]["seg_head.weight"]
            names = self.class_names
            rows.append(("semantic head", f"{w.shape[0]} classes" + (f": {', '.join(names)}" if names else "")))
        else:
            rows.append(("semantic head", "none (the node builds a seeded random head over head.class_names)"))
        if self.translator is not None:
            c = self.translator["config"]
            rows.append(("translator", f"{c.get('in_dim')}-d -> {c.get('text_dim')}-d ({c.get('text_encoder')}), "
                                       f"temperature {float(c.get('temperature', float('nan'))):.4f}"))
            rows.append(("text encoder", f"{self.text_encoder}" + (f", model {self.text_model}" if self.text_model
                                                                   else " (default model)")))
        else:
            rows.append(("translator", "none"))
        rows.append(("vocabulary", ", ".join(self.vocabulary) if self.vocabulary else "none"))
        rows.append(("voxel size", f"{self.voxel_size:g} m"))
        rows.append(("colour input", "yes" if self.use_color else "no"))
        for key in ("created", "command"):
            if md.get(key):
                rows.append((key, str(md[key])))
        metrics = md.get("metrics") or {}
        if isinstance(metrics, dict):
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    rows.append((f"metric {k}", f"{v:.4f}" if isinstance(v, float) else str(v)))
        return rows


def _preset_name(cfg: Mapping[str, Any]) -> str:
    """``"preset NAME, "`` when the architecture equals a named preset's, else ``""``."""
    from concerto_ros.models.presets import PRESETS

    for name, p in PRESETS.items():
        pc = p.config
        if all(list(pc.get(k, ())) == list(cfg.get(k, ())) for k in ("enc_channels", "enc_depths", "enc_num_head")):
            return f"preset {name}, "
    return ""


# ----------------------------------------------------------------------------- plain types
def _plain(obj: Any) -> Any:
    """``obj`` as plain Python types that ``torch.load(weights_only=True)`` accepts (tensors
    kept as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, bool, int, float)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def _to_half(t: torch.Tensor) -> torch.Tensor:
    return t.half() if t.is_floating_point() else t


def _to_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- files
def save_bundle(bundle: ModelBundle, path: str | os.PathLike, half: bool = False) -> Path:
    """Validate ``bundle`` and write it atomically (temporary file, then rename).

    Args:
        bundle: the bundle.
        path: output file (parent folders are created).
        half: store the encoders' floating-point weights (Concerto and Cross4D, the bulk of
            the file) as float16, about halving the file; head and translator stay float32.
            :func:`load_bundle` casts back to float32 (expect ~1e-3 relative error in the
            weights).

    Returns:
        The path written.

    Raises:
        BundleError: the bundle is inconsistent (:meth:`ModelBundle.validate`), or a weight
            overflows float16 with ``half``.
    """
    path = Path(path).expanduser()
    bundle.validate(str(path))
    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION, "storage": "float16" if half else "float32"}
    for f in fields(ModelBundle):
        value = getattr(bundle, f.name)
        payload[f.name] = _plain(value) if f.name in ("metadata", "vocabulary") else value
    payload["voxel_size"] = float(bundle.voxel_size)
    payload["use_color"] = bool(bundle.use_color)
    if half:
        for key in ("encoder", "cross4d"):
            if payload[key] is not None:
                blob = dict(payload[key])
                blob["state_dict"] = _map_tensors(blob["state_dict"], _to_half)
                bad = [k for k, v in blob["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
                if bad:
                    raise BundleError(f"model bundle {path}: weights {bad[:5]} of the {key} overflow float16; "
                                      "save without half")
                payload[key] = blob
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _what_is(obj: Any) -> str:
    """A guess at what a non-bundle checkpoint is, for error messages."""
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    if str(obj.get("format", "")).startswith("concerto_ros.translator"):
        return "a translator file (language.translator)"
    if obj.get("kind") == "cross4d":
        return "a Cross4D checkpoint (cross4d.checkpoint)"
    sd = obj.get("state_dict")
    if isinstance(sd, Mapping) and "seg_head.weight" in sd:
        return "a linear head (head.checkpoint)"
    if isinstance(sd, Mapping) or "model" in obj:
        return "an encoder checkpoint (model.checkpoint)"
    return f"a dict with keys {sorted(map(str, obj))[:8]}"


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read and validate a bundle written by :func:`save_bundle`.

    Float tensors are returned as float32 whatever the storage. The file is read with
    ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        BundleError: unreadable, not a bundle (the message says what the file looks like
            instead), written by a newer version, or inconsistent (:meth:`ModelBundle.validate`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model bundle '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors, non-allowlisted globals, truncated files
        raise BundleError(f"cannot read model bundle {path} with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise BundleError(f"{path} is not a concerto_ros model bundle (format '{FORMAT}'); it looks like "
                          f"{_what_is(obj)}. Assemble a bundle with `concerto bundle pack` or use the matching "
                          "parameter")
    version = obj.get("version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"model bundle {path}: invalid version {version!r}")
    if version > VERSION:
        raise BundleError(f"model bundle {path} has version {version}, but this concerto_ros reads up to version "
                          f"{VERSION}: update concerto_ros, or re-export the bundle with this version")
    models = ("encoder", "cross4d", "head", "translator")
    kwargs: dict[str, Any] = {}
    for f in fields(ModelBundle):
        value = obj.get(f.name)
        if f.name in models:
            if value is not None and not isinstance(value, Mapping):
                raise BundleError(f"model bundle {path}: '{f.name}' must be a dict, got {type(value).__name__}")
            kwargs[f.name] = None if value is None else _map_tensors(dict(value), _to_float)
        elif value is not None:
            kwargs[f.name] = value
    if "vocabulary" in kwargs:
        kwargs["vocabulary"] = [str(v) for v in kwargs["vocabulary"]]
    if "voxel_size" in kwargs:
        kwargs["voxel_size"] = float(kwargs["voxel_size"])
    bundle = ModelBundle(**kwargs)
    bundle.validate(str(path))
    return bundle


def resolve_bundle_path(value: str) -> Path | None:
    """The file named by a ``model.bundle`` value.

    ``""`` -> ``None`` (no bundle); ``"default"`` -> the package's embedded bundle
    (:data:`DEFAULT_BUNDLE_PATH`); anything else -> that path, ``~`` expanded (existence is
    checked by :func:`load_bundle`).

    Raises:
        FileNotFoundError: ``"default"`` but the package embeds no bundle.
    """
    value = str(value or "").strip()
    if not value:
        return None
    if value == "default":
        path = Path(DEFAULT_BUNDLE_PATH)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.bundle 'default': the embedded bundle {path} is not installed with this package; "
                "set model.bundle to a bundle file (from `concerto train ...` or `concerto bundle pack`) "
                "or to '' to configure the models with model.checkpoint / head.checkpoint / language.translator")
        return path
    return Path(value).expanduser()


# ----------------------------------------------------------------------------- building
def _head_blob(head: Any, dims: dict[str, int]) -> dict | None:
    if head is None or isinstance(head, Mapping):
        return None if head is None else dict(head)
    from concerto_ros.models.extractor import head_to_dict

    own = getattr(head, "feature_dims", None)
    return head_to_dict(head, own if own is not None else dims)


def bundle_from_parts(encoder: Any = None, feature: str = "concat3", voxel_size: float = 0.02,
                      use_color: bool = True, head: Any = None, translator: Any = None, cross4d: Any = None,
                      cross4d_settings: Mapping[str, Any] | None = None, text_encoder: str = "",
                      text_model: str = "", vocabulary: Sequence[str] = (),
                      metadata: Mapping[str, Any] | None = None) -> ModelBundle:
    """Assemble a bundle from models (or their dicts).

    Args:
        encoder: a :class:`~concerto_ros.models.ptv3.PointTransformerV3Encoder` (its config is
            stored as is; the node re-applies its inference overrides when loading) or a
            ``{"config", "state_dict"}`` dict.
        feature: ``concat3`` | ``all_levels``.
        voxel_size: metres the models were trained at.
        use_color: whether the encoder input had RGB.
        head: a :class:`~concerto_ros.models.heads.LinearSemanticHead` or its dict; its
            ``feature_dims`` default to the bundle's.
        translator: a :class:`~concerto_ros.language.translator.Translator` or its dict.
        cross4d: a :class:`~concerto_ros.models.cross4d.Cross4DEncoder` or its
            :func:`~concerto_ros.models.cross4d.cross4d_to_dict` blob.
        cross4d_settings: ``{"num_frames", "points_per_frame", "average"}`` (defaults 4, 2048,
            ``points``; a blob's own ``settings``/``extra`` fill gaps).
        text_encoder: backend of the translator's text encoder; ``""`` derives it from the
            translator's recorded name (``"sentence-transformers:all-MiniLM-L6-v2"`` ->
            ``sentence-transformers``).
        text_model: the text model (``""``: the backend's default; for ``open_clip`` derived
            from the translator's name when empty).
        vocabulary: open-vocabulary names.
        metadata: free-form plain-typed dict; ``created`` is added when absent.

    Returns:
        The :class:`ModelBundle` (not validated: :func:`save_bundle` does).
    """
    enc_blob = None
    if encoder is not None:
        if isinstance(encoder, Mapping):
            enc_blob = {"config": dict(encoder["config"]), "state_dict": dict(encoder["state_dict"])}
        else:
            from concerto_ros.models.checkpoint import encoder_to_dict

            enc_blob = encoder_to_dict(encoder)
            enc_blob["state_dict"] = dict(enc_blob["state_dict"])
    c4_blob = None
    if cross4d is not None:
        if isinstance(cross4d, Mapping):
            c4_blob = dict(cross4d)
        else:
            from concerto_ros.models.cross4d import cross4d_to_dict

            c4_blob = cross4d_to_dict(cross4d)
        c4_blob["head_state_dict"] = None  # the distillation head is not used by the node
        settings = dict(c4_blob.get("settings") or {})
        extra = dict(c4_blob.get("extra") or {})
        for k, v in _CROSS4D_SETTINGS.items():
            settings.setdefault(k, extra.get(k, v) if k != "average" else v)
        settings.update(dict(cross4d_settings or {}))
        c4_blob["settings"] = {"num_frames": int(settings["num_frames"]),
                               "points_per_frame": int(settings["points_per_frame"]),
                               "average": str(settings["average"])}
    bundle = ModelBundle(encoder=enc_blob, feature=str(feature), cross4d=c4_blob, voxel_size=float(voxel_size),
                         use_color=bool(use_color), vocabulary=[str(v) for v in vocabulary],
                         metadata=_plain(dict(metadata or {})))
    bundle.metadata.setdefault("created", _now())
    try:
        dims = bundle.feature_dims
    except BundleError:
        dims = None
    bundle.head = _head_blob(head, dims)
    if translator is not None:
        tr_blob = dict(translator) if isinstance(translator, Mapping) else translator.to_dict()
        bundle.translator = tr_blob
        backend, _, model = str(tr_blob["config"].get("text_encoder", "")).partition(":")
        bundle.text_encoder = _backend(text_encoder or backend)
        bundle.text_model = str(text_model or (model if bundle.text_encoder == "open_clip" else ""))
    else:
        bundle.text_encoder, bundle.text_model = str(text_encoder), str(text_model)
    return bundle


def _cross4d_blob(extractor) -> dict:
    from concerto_ros.models.cross4d import cross4d_to_dict

    return cross4d_to_dict(extractor.encoder, extra=_plain(getattr(extractor, "extra", {}) or {}))


def bundle_from_pipeline(pipeline, head: Any = None, translator: Any = None, vocabulary: Sequence[str] | None = None,
                         metadata: Mapping[str, Any] | None = None, text_encoder: str | None = None,
                         text_model: str | None = None) -> ModelBundle:
    """Everything a running :class:`~concerto_ros.pipeline.PerceptionPipeline` uses, with the
    given parts replacing its own.

    Taken from the pipeline: its Concerto encoder (feature layout, colour input), its
    Cross4D encoder and window settings, ``window.voxel_size``, its semantic head when that
    was loaded from a file or a bundle (a seeded random head is not carried over), and its
    translator with its text encoder and open vocabulary.

    Args:
        pipeline: the pipeline.
        head: a trained head (replaces the pipeline's).
        translator: a fitted translator (replaces the pipeline's); its text encoder is
            ``text_encoder`` / ``text_model`` or, when ``None``, the pipeline's
            ``language.text_encoder`` / ``language.text_model``.
        vocabulary: open-vocabulary names (default: the pipeline's, with a translator).
        metadata: see :func:`bundle_from_parts`; ``sources`` (where each part came from) is
            added.

    Returns:
        The :class:`ModelBundle` (not validated: :func:`save_bundle` does).
    """
    ext, c4, lang = pipeline.extractor, pipeline.cross4d, pipeline.language
    sources: dict[str, str] = {}
    if ext is not None:
        sources["encoder"] = ext.description
    if c4 is not None:
        sources["cross4d"] = c4.description
    if head is None and getattr(pipeline.head, "origin", ""):
        head = pipeline.head
    if head is not None:
        sources["head"] = getattr(head, "origin", "") or "trained by this command"
    lc = pipeline.cfg.language
    if translator is not None:
        te = text_encoder if text_encoder is not None else lc.text_encoder
        tm = text_model if text_model is not None else lc.text_model
        sources["translator"] = "fitted by this command"
        voc = list(vocabulary) if vocabulary is not None else []
    elif lang is not None:
        translator = lang.translator
        te, tm = lang.backend, lang.model
        sources["translator"] = lang.origin
        voc = list(vocabulary) if vocabulary is not None else list(lang.vocabulary)
    else:
        te, tm, voc = "", "", list(vocabulary or [])
    md = dict(metadata or {})
    md.setdefault("sources", sources)
    if getattr(pipeline, "bundle_path", None) is not None:
        md.setdefault("parent_bundle", str(pipeline.bundle_path))
    return bundle_from_parts(
        encoder=ext.encoder if ext is not None else None,
        feature=ext.feature if ext is not None else "concat3",
        voxel_size=float(pipeline.cfg.window.voxel_size),
        use_color=ext.use_color if ext is not None else True,
        head=head, translator=translator,
        cross4d=_cross4d_blob(c4) if c4 is not None else None,
        cross4d_settings={"num_frames": c4.num_frames, "points_per_frame": c4.points_per_frame,
                          "average": c4.average} if c4 is not None else None,
        text_encoder=te, text_model=tm, vocabulary=voc, metadata=md)


# ----------------------------------------------------------------------------- the node's rules
def _set_components(cfg) -> list[str]:
    out = []
    for name in COMPONENT_PARAMETERS:
        section, leaf = name.split(".")
        value = getattr(getattr(cfg, section), leaf)
        if value:
            out.append(f"{name}: {value}")
    return out


def select_bundle(cfg, log: Callable[[str], Any] | None = None) -> tuple[ModelBundle, Path] | None:
    """The bundle ``cfg.model.bundle`` selects, loaded and checked against ``cfg``, or ``None``.

    Rules:

    * ``""``: no bundle.
    * ``default`` (the embedded bundle) while any of :data:`COMPONENT_PARAMETERS` is set: the
      explicit files win, the bundle is not used at all (one log line says so).
    * a bundle file while any of :data:`COMPONENT_PARAMETERS` is set: refused.
    * otherwise the bundle is loaded and :func:`check_against_config` applied.

    Raises:
        FileNotFoundError: the file (or the embedded bundle) does not exist.
        BundleError: see :func:`load_bundle`, :func:`check_against_config`, or a bundle
            combined with component parameters.
    """
    log = log or (lambda _m: None)
    value = str(cfg.model.bundle or "").strip()
    if not value:
        return None
    explicit = _set_components(cfg)
    if explicit and value == "default":
        log(f"model.bundle 'default' is not used: explicit model files are set ({'; '.join(explicit)}); the "
            "pipeline runs exactly as without a bundle")
        return None
    if explicit:
        names = ", ".join(e.split(":")[0] for e in explicit)
        raise BundleError(
            f"model.bundle '{value}' carries the encoder/head/translator, but {'; '.join(explicit)} "
            f"{'is' if len(explicit) == 1 else 'are'} also set: clear {names}, or build a new bundle with "
            "`concerto bundle pack ...` (or a `concerto train ...` command) that holds the parts you want")
    path = resolve_bundle_path(value)
    if not path.is_file():
        raise FileNotFoundError(f"model.bundle '{path}' does not exist")
    bundle = load_bundle(path)
    check_against_config(bundle, cfg, str(path))
    return bundle, path


def check_against_config(bundle: ModelBundle, cfg, source: str = "bundle") -> None:
    """Refuse node settings that contradict ``bundle``.

    * ``window.voxel_size`` must equal the bundle's (1e-9 m tolerance);
    * ``cross4d.enabled: true`` needs a Cross4D encoder in the bundle;
    * ``model.enabled: false`` is refused when the bundle's head or translator read Concerto
      features;
    * ``model.feature``, ``language.text_encoder`` and ``language.text_model``, when changed
      from their defaults, must equal the bundle's (the bundle's values are used).

    Raises:
        BundleError: naming the parameter, both values, and what to set.
    """
    from concerto_ros.config import SPECS

    def fail(msg: str) -> None:
        raise BundleError(f"model.bundle {source}: {msg}")

    vs = float(cfg.window.voxel_size)
    if abs(vs - float(bundle.voxel_size)) > _VOXEL_TOL:
        fail(f"bundle trained at {bundle.voxel_size:g} m voxels but window.voxel_size is {vs:g}; "
             f"set window.voxel_size: {bundle.voxel_size:g}")
    dims = bundle.feature_dims
    if cfg.cross4d.enabled and bundle.cross4d is None:
        fail("cross4d.enabled is true but the bundle has no Cross4D encoder; set cross4d.enabled: false "
             "(the bundle decides which encoders run) or use a bundle with a Cross4D encoder")
    if not cfg.model.enabled and dims["concerto"] > 0 and (bundle.head is not None or bundle.translator is not None):
        parts = " and ".join(n for n, v in (("head", bundle.head), ("translator", bundle.translator)) if v is not None)
        fail(f"model.enabled is false but the bundle's {parts} read{'s' if ' and ' not in parts else ''} Concerto "
             f"features ({dims}); set model.enabled: true")
    if bundle.encoder is not None and cfg.model.feature != SPECS["model.feature"].default \
            and cfg.model.feature != bundle.feature:
        fail(f"model.feature is '{cfg.model.feature}' but the bundle's heads read '{bundle.feature}'; "
             f"set model.feature: {bundle.feature} (or leave it at its default)")
    if bundle.translator is not None:
        lc = cfg.language
        if lc.text_encoder != SPECS["language.text_encoder"].default \
                and _backend(lc.text_encoder) != _backend(bundle.text_encoder):
            fail(f"the bundle's translator was fitted with text encoder '{bundle.text_encoder}' but "
                 f"language.text_encoder is '{lc.text_encoder}'; set language.text_encoder: {bundle.text_encoder} "
                 "(or leave it at its default)")
        if lc.text_model and lc.text_model != bundle.text_model:
            fail(f"the bundle's translator was fitted with text model '{bundle.text_model or '(default)'}' but "
                 f"language.text_model is '{lc.text_model}'; clear language.text_model (the bundle's is used)")
