"""Typed configuration of the training commands, with the node's configuration embedded.

Every ``concerto train`` command has one dataclass config (:class:`TrainConfig` subclasses in
each command's module). Its ``node`` field IS the node's
:class:`~concerto_ros.config.PerceptionConfig`, loaded from ``node_config`` (the node's
parameters YAML; empty = the package's ``config/perception.yaml``), so voxel size
(``node.window.voxel_size``), window length (``node.window.num_frames``), lifting
(``node.lift.*``), topics, sync and TF settings for bags, and the models features are
computed with (``node.model.*``, ``node.cross4d.*``) have one source of truth: the same
keys, ranges and descriptions as the node's parameters.

One grammar sets anything: dotted keys, in a YAML file (nested) or with
``--set key=value`` (YAML value), e.g. ``--set node.model.bundle=outputs/ssl/bundle.pt``,
``--set optim.lr=1e-3``, ``--set data.label_map.5=chair`` (a key added to a mapping). Unknown
keys fail with the closest names; values are checked against each setting's type and range.
In a list of mappings (``data.sources``) a plain path stands for ``{path: PATH}``.

Settings are declared with :func:`setting` (the metadata ``description``, ``lo``, ``hi``,
``choices`` of :mod:`concerto_ros.config`), so ``--print-config`` prints every key with its
description as a YAML comment.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from concerto_ros.config import PerceptionConfig

__all__ = ["setting", "section", "LoopConfig", "EpochLoopConfig", "OptimConfig", "TeacherConfig", "AugmentConfig",
           "TrainConfig",
           "apply_mapping", "set_key", "to_dict", "dump_config", "resolve_config", "parse_set_items"]


def setting(default: Any, description: str, *, lo: float | None = None, hi: float | None = None,
            choices: list | None = None, factory: Any = None):
    """A dataclass field with the metadata of :mod:`concerto_ros.config` (description, range,
    choices). Mutable defaults (lists, dicts) need ``factory``."""
    meta = {"description": description, "lo": lo, "hi": hi, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, description: str = ""):
    """A nested config section (a dataclass field built by ``cls()``)."""
    return field(default_factory=cls, metadata={"description": description})


# ----------------------------------------------------------------------------- shared sections
@dataclass
class LoopConfig:
    """The shared training loop, step-based (``ssl``, ``cross4d``)."""

    steps: int = setting(400, "Optimizer steps in total.", lo=1, hi=10_000_000)
    batch_size: int = setting(1, "Global batch: samples (scenes / clips) per optimizer step over all processes; "
                                 "each of N torchrun processes takes its share (raised to N when smaller, with a note).",
                              lo=1, hi=65536)
    steps_per_epoch: int = setting(100, "Steps between evaluations (an 'epoch' of the logs and plots).", lo=1,
                                   hi=10_000_000)
    checkpoint_every: int = setting(100, "Steps between checkpoints in <output>/checkpoints (0: only the last).",
                                    lo=0, hi=10_000_000)
    keep_checkpoints: int = setting(3, "Newest checkpoints kept (0: all).", lo=0, hi=1000)
    eval: bool = setting(True, "Evaluate after every epoch and at the end.")


@dataclass
class EpochLoopConfig:
    """The shared training loop, epoch-based (``probe``, ``translator``: passes over the voxels)."""

    epochs: int = setting(30, "Passes over the training voxels.", lo=1, hi=100_000)
    batch_size: int = setting(4096, "Global batch: voxels (or scenes when fine-tuning) per optimizer step over "
                                    "all processes.", lo=1, hi=10_000_000)
    checkpoint_every: int = setting(0, "Steps between checkpoints in <output>/checkpoints (0: only the last).",
                                    lo=0, hi=10_000_000)
    keep_checkpoints: int = setting(3, "Newest checkpoints kept (0: all).", lo=0, hi=1000)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (to 1% of ``lr``)."""

    lr: float = setting(2.0e-3, "Peak learning rate.", lo=0.0, hi=10.0)
    weight_decay: float = setting(0.04, "AdamW weight decay on matrices and kernels (not on biases, norms, tokens).",
                                  lo=0.0, hi=10.0)
    warmup: int = setting(20, "Linear warm-up steps.", lo=0, hi=10_000_000)
    grad_clip: float = setting(3.0, "Gradient norm clip (0: off).", lo=0.0, hi=1e6)


@dataclass
class TeacherConfig:
    """A frozen 2D image model whose patch features are projected onto the voxels."""

    name: str = setting("seeded_vit", "seeded_vit (a seeded random ViT: offline stand-in) | dinov2_vits14 | "
                                      "dinov2_vitb14 | module:FILE.pt (an nn.Module images -> patch grid).")
    weights: str = setting("", "Local weights file for DINOv2; nothing is downloaded.")
    backend: str = setting("auto", "DINOv2 implementation: auto (timm when importable) | timm | builtin.",
                           choices=["auto", "timm", "builtin"])
    seed: int = setting(0, "seeded_vit: weight seed.", lo=0, hi=2**31 - 1)
    embed_dim: int = setting(64, "seeded_vit: feature width.", lo=1, hi=8192)
    depth: int = setting(2, "seeded_vit: blocks.", lo=1, hi=64)
    num_heads: int = setting(2, "seeded_vit: attention heads.", lo=1, hi=64)
    patch_size: int = setting(14, "seeded_vit: patch edge, px.", lo=1, hi=64)
    short_side: int = setting(224, "Teacher input short side, px (rounded to the patch size).", lo=14, hi=4096)
    lookup: str = setting("bilinear", "Patch lookup at a voxel's pixel.", choices=["nearest", "bilinear"])
    zbuffer_tolerance: float = setting(0.05, "Occlusion test: metres behind the nearest surface still counted "
                                             "visible.", lo=0.0, hi=10.0)

    def build(self, device):
        """The frozen teacher module (see :func:`concerto_ros.models.teachers.build_teacher`)."""
        from concerto_ros.models.teachers import build_teacher

        kw = {k: getattr(self, k) for k in ("embed_dim", "depth", "num_heads", "patch_size")} \
            if self.name == "seeded_vit" else {}
        return build_teacher(self.name, weights=self.weights or None, seed=int(self.seed), device=device,
                             backend=self.backend, **kw)


@dataclass
class AugmentConfig:
    """Yaw augmentation of the labelled commands (``probe``, ``translator``): robots see rooms
    at any yaw, so the training data are seen rotated about the up axis
    (:mod:`concerto_ros.augment`). A scene (a PCD file, a point array) or a whole recording
    (an RGB-D folder or a bag: one rotation for the sequence) is rotated about the fixed
    frame's origin before lifting; held-out cubes are drawn in the unrotated frame. Test
    sources are never rotated."""

    yaw: bool = setting(True, "Random rotation about the up axis of the training data.")
    copies: int = setting(1, "Copies of each training scene / recording, each at its own random yaw (each copy's "
                             "features are computed: time grows with it).", lo=1, hi=64)
    max_deg: float = setting(180.0, "Largest rotation, degrees: yaws uniform in [-max_deg, max_deg).", lo=0.0,
                             hi=180.0)
    up_axis: str = setting("z", "Gravity-up axis of the fixed frame: z (ROS fixed frames, ScanNet, KITTI), -y (clouds "
                                "left in a camera optical frame, such as mOSD).",
                           choices=["x", "y", "z", "-x", "-y", "-z", "+x", "+y", "+z"])


@dataclass
class TrainConfig:
    """Settings every training command shares (the command's config subclasses it).

    A subclass may set ``NODE_DEFAULTS`` (``{dotted node key: value}``): the command's own
    defaults for node settings, applied over the node's YAML and under the command's config.
    """

    NODE_DEFAULTS: typing.ClassVar[dict[str, Any]] = {}

    seed: int = setting(0, "Seeds python, numpy and torch; the run is a function of it.", lo=0, hi=2**31 - 1)
    device: str = setting("cpu", "cpu, cuda, cuda:N or auto; under torchrun with cuda each process takes "
                                 "cuda:LOCAL_RANK.")
    amp: bool = setting(True, "Automatic mixed precision (bf16, else fp16 with loss scaling) on CUDA; no effect "
                              "on the CPU.")
    output: str = setting("outputs/train", "Output folder: checkpoints, logs, plots, bundles and (unless cache_dir "
                                           "is set) caches.")
    log: str = setting("csv", "Metric log format; csv is always written.", choices=["csv", "tensorboard"])
    cache_dir: str = setting("", "Cache of 2D teacher targets and prepared scenes; empty: <output>/cache. Point "
                                 "several runs at one folder to share it.")
    node_config: str = setting("", "The node's parameters YAML the 'node' section starts from (empty: the "
                                    "package's config/perception.yaml).")
    node: PerceptionConfig = section(PerceptionConfig, "The node's settings (any key of config/perception.yaml): "
                                                       "lifting, window, voxel size, models.")

    @property
    def output_dir(self) -> Path:
        return Path(self.output).expanduser()

    @property
    def cache_path(self) -> Path:
        """``cache_dir`` or ``<output>/cache``."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else self.output_dir / "cache"

    def validate(self) -> None:
        """Cross-field checks of the command (subclasses extend it).

        Raises:
            ValueError: a setting that cannot work, with how to fix it.
        """

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, sets: Iterable[tuple[str, Any]] = ()):
        """Defaults <- ``node_config`` <- ``values`` (nested mapping) <- ``sets`` (dotted key,
        value), validated (see :func:`resolve_config`)."""
        return resolve_config(cls, values or {}, list(sets))


# ----------------------------------------------------------------------------- the grammar
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _unknown(name: str, known: Iterable[str]) -> KeyError:
    known = list(known)
    leaf = name.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=3)
    return KeyError(f"unknown config key '{name}'" + (f"; did you mean {close}?" if close
                                                       else f"; known at this level: {sorted(known)}"))


def _coerce_scalar(tp: Any, value: Any, name: str) -> Any:
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, (bool, int)) and value in (0, 1, True, False):
            return bool(value)
        raise ValueError(f"'{name}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"'{name}': expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ValueError(f"'{name}': expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ValueError(f"'{name}': expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"'{name}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"'{name}': expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (Mapping, list)):
            raise ValueError(f"'{name}': expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """``value`` as type hint ``tp`` (str, int, float, bool, list[X], dict, Optional[X], Any).

    Raises:
        ValueError: it cannot be.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        if isinstance(value, str) and args and args[0] is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"'{name}': expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{name}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if isinstance(value, (str, Path)) and "[" in name:  # a source list entry given as its path
            return {"path": str(value)}
        if not isinstance(value, Mapping):
            raise ValueError(f"'{name}': expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    return _coerce_scalar(tp, value, name)


def _check_range(meta: Mapping[str, Any], value: Any, name: str) -> None:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    for v in (value if isinstance(value, list) else [value]):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if lo is not None and v < lo or hi is not None and v > hi:
                raise ValueError(f"'{name}' = {v} is outside [{lo}, {hi}]")
    if choices is not None and value not in choices:
        raise ValueError(f"'{name}' = {value!r} is not one of {choices}")


def set_key(cfg: Any, name: str, value: Any) -> None:
    """Set the dotted setting ``name`` of the dataclass tree ``cfg`` (validated).

    Below ``node`` the node's own rules apply (:func:`concerto_ros.config.set_value`); inside a
    mapping-typed setting the remaining dotted part is a key that is added or replaced.

    Raises:
        KeyError: unknown key (with the closest names). ValueError: a bad value.
    """
    parts = name.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        if isinstance(obj, PerceptionConfig):
            _set_node(obj, ".".join(parts[i:]), value)
            return
        if isinstance(obj, dict):
            obj[".".join(parts[i:])] = value
            return
        fields = _fields(obj)
        if part not in fields:
            raise _unknown(".".join(parts[: i + 1]), fields)
        if i == len(parts) - 1:
            _assign(obj, part, value, ".".join(parts))
            return
        obj = getattr(obj, part)


def _set_node(node: PerceptionConfig, name: str, value: Any) -> None:
    from concerto_ros.config import SPECS, set_value

    if isinstance(value, Mapping) and name not in SPECS:  # a node section: its keys one by one
        for k, v in value.items():
            _set_node(node, f"{name}.{k}", v)
        return
    set_value(node, name, value)


def _assign(obj: Any, leaf: str, value: Any, name: str) -> None:
    current = getattr(obj, leaf)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, Mapping):
            raise ValueError(f"'{name}' is a section: give a mapping, e.g. {name}={{key: value}}")
        apply_mapping(current, value, name + ".")
        return
    f = _fields(obj)[leaf]
    v = _coerce(_hints(type(obj))[leaf], value, name)
    _check_range(f.metadata, v, name)
    setattr(obj, leaf, v)


def apply_mapping(cfg: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping (keys may also be dotted) to the dataclass tree ``cfg``: a
    section's mapping merges into it, a mapping-typed setting is replaced.

    Raises:
        KeyError / ValueError: see :func:`set_key`.
    """
    for k, v in values.items():
        set_key(cfg, str(k), v) if prefix == "" else _set_below(cfg, prefix, str(k), v)


def _set_below(cfg: Any, prefix: str, key: str, value: Any) -> None:
    try:
        set_key(cfg, key, value)
    except KeyError as exc:
        raise KeyError(str(exc.args[0]).replace(f"'{key}", f"'{prefix}{key}", 1)) from None
    except ValueError as exc:
        raise ValueError(str(exc).replace(f"'{key}", f"'{prefix}{key}", 1)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The dataclass tree as plain nested dicts/lists (YAML- and JSON-able)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _comment(meta: Mapping[str, Any]) -> str:
    desc = str(meta.get("description") or "")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None or hi is not None:
        desc += f" [{lo if lo is not None else ''} .. {hi if hi is not None else ''}]"
    return f"  # {desc}" if desc else ""


def _emit(obj: Any, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:{_comment(f.metadata)}")
            _emit(value, indent + 1, out)
            continue
        text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000, sort_keys=False)
        text = text[:-4] if text.endswith("...\n") else text
        out.append(f"{pad}{f.name}: {text.strip()}{_comment(f.metadata)}")


def dump_config(cfg: Any) -> str:
    """YAML of the whole config, each key with its description (and range) as a comment;
    ``yaml.safe_load`` of it equals :func:`to_dict`."""
    out: list[str] = []
    _emit(cfg, 0, out)
    return "\n".join(out) + "\n"


def parse_set_items(items: Iterable[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", ...]`` (``--set``) -> ``[("a.b", 1), ...]`` with YAML-parsed values.

    Raises:
        ValueError: an item without ``=``, or a value that is not YAML.
    """
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set '{item}' must look like key=value (e.g. --set loop.steps=200)")
        k, v = item.split("=", 1)
        try:
            out.append((k.strip(), yaml.safe_load(v)))
        except yaml.YAMLError as exc:
            raise ValueError(f"--set '{item}': the value is not valid YAML ({exc.problem})") from None
    return out


#: node settings every training command starts from, over the node's YAML: training picks its
#: models explicitly (``node.model.bundle``, ``node.model.checkpoint``...), so the embedded
#: default bundle the node runs is not used unless named
TRAINING_NODE_DEFAULTS = {"model.bundle": ""}


def resolve_config(cls: type, values: Mapping[str, Any], sets: list[tuple[str, Any]]):
    """Defaults of ``cls`` <- the node's YAML (``node_config``, from ``values`` or ``sets``, the
    last one given) <- ``values`` (nested) <- ``sets`` (dotted), then ``validate()``.

    Raises:
        FileNotFoundError: a missing node YAML. KeyError: an unknown key. ValueError: a bad
        value or a combination that cannot work.
    """
    from concerto_ros.config import default_config_path, load_config

    if not isinstance(values, Mapping):
        raise ValueError(f"a training config must be a mapping of settings, got {type(values).__name__}")
    cfg = cls()
    node_path = str(values.get("node_config") or "")
    for k, v in sets:
        if k == "node_config":
            node_path = str(v or "")
    cfg.node = load_config(Path(node_path).expanduser() if node_path else default_config_path(),
                           {**TRAINING_NODE_DEFAULTS, **dict(getattr(cls, "NODE_DEFAULTS", {}))})
    apply_mapping(cfg, values)
    for k, v in sets:
        set_key(cfg, k, v)
    cfg.validate()
    return cfg
