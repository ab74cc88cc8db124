"""The one description of a recording source, for replay, eval and every training command.

A :class:`Source` says where a recording is and how to read it. It is parsed from a dict
(``data.sources`` entries of a training config), from inline YAML on a command line
(``--data "{type: points, path: X.npy, labels: L.npy, label_names: nyu40}"``) or from a
plain path (type detected). Keys:

==============  ===========================================================================
``type``        ``auto`` (default: detected from ``path``), ``rgbd_folder``, ``pcd``,
                ``points``, ``semantickitti`` or ``bag`` (``folder`` is accepted for
                ``rgbd_folder``)
``path``        the recording: folder, file, or a folder of ``.pcd``/``.bin``/``.npy`` files
``labels``      label file or folder (``points``: ``.npy``; ``semantickitti``: ``.label``
                file or folder, or an Open3D-ML ``.npy``; ``rgbd_folder``: a folder of label
                images instead of ``labels/``)
``label_names`` label set of the labels: ``nyu40``, ``scannet20``, ``semantickitti``,
                ``mosd``, a YAML file, a list of class names, or ``camera`` (the
                ``class_names`` of an RGB-D folder's ``camera.yaml``)
``fx fy cx cy`` pinhole intrinsics, pixels (RGB-D folders: default ``camera.yaml``;
                organized PCD: default fitted to the cloud)
``depth_scale`` depth file units per metre (1000 = millimetres, TUM 5000)
``rate_hz``     frame rate for stamps when the files have none (default 10 Hz; RGB-D
                folders: ``camera.yaml``'s ``rate_hz``, else 30 Hz)
``color_order`` ``bgr`` (normal image files, default) or ``rgb``
``poses``       pose file of point/SemanticKITTI scans: per scan ``tx ty tz qx qy qz qw``
                or 12 values of a 3x4 matrix (KITTI; a ``calib.txt`` beside it with
                ``Tr:`` turns camera poses into LiDAR poses), sensor -> world
``topics``      bag topic overrides: ``{color, depth, camera_info, points, labels}``
``fixed_frame`` world frame name of the frames (bags: the TF frame to look poses up in)
``max_frames``  stop after this many frames (0 = all); ``limit`` is accepted as well
``stride``      use every n-th frame (default 1)
==============  ===========================================================================
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import yaml

from concerto_ros.recordings.errors import RecordingError, SourceError

__all__ = ["SOURCE_TYPES", "TOPIC_KEYS", "Source", "parse_source", "parse_sources", "detect_type"]

#: source types (besides ``auto``)
SOURCE_TYPES = ("rgbd_folder", "pcd", "points", "semantickitti", "bag")
#: keys of ``topics`` overrides
TOPIC_KEYS = ("color", "depth", "camera_info", "points", "labels")
_ALIASES = {"folder": "rgbd_folder", "rgbd": "rgbd_folder", "rosbag": "bag", "kitti": "semantickitti"}
_KEY_ALIASES = {"limit": "max_frames", "rate": "rate_hz", "label_set": "label_names"}
BAG_SUFFIXES = (".mcap", ".db3", ".bag")


@dataclass
class Source:
    """One recording source (see the module docstring for every key).

    Raises:
        SourceError: an unknown type, a bad value (the message says which key and what it
            accepts).
    """

    path: Path
    type: str = "auto"
    labels: Path | None = None
    label_names: str | list[str] | None = None
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    depth_scale: float | None = None
    rate_hz: float | None = None
    color_order: str = "bgr"
    poses: Path | None = None
    topics: dict[str, str] = field(default_factory=dict)
    fixed_frame: str | None = None
    max_frames: int = 0
    stride: int = 1

    def __post_init__(self) -> None:
        if self.path is None or str(self.path) == "":
            raise SourceError("a source needs a 'path' (e.g. {type: points, path: scan.npy})")
        self.path = Path(str(self.path)).expanduser()
        self.labels = None if self.labels in (None, "") else Path(str(self.labels)).expanduser()
        self.poses = None if self.poses in (None, "") else Path(str(self.poses)).expanduser()
        kind = _ALIASES.get(str(self.type), str(self.type))
        if kind not in ("auto", *SOURCE_TYPES):
            raise SourceError(f"source type {self.type!r} is unknown: use auto, {', '.join(SOURCE_TYPES)}")
        self.type = kind
        self._check_numbers()
        if self.color_order not in ("bgr", "rgb"):
            raise SourceError(f"color_order must be bgr (normal image files) or rgb, got {self.color_order!r}")
        if not isinstance(self.topics, dict) or set(self.topics) - set(TOPIC_KEYS):
            bad = sorted(set(self.topics) - set(TOPIC_KEYS)) if isinstance(self.topics, dict) else self.topics
            raise SourceError(f"topics {bad} unknown: topic overrides are a mapping with keys {list(TOPIC_KEYS)}")
        self.topics = {k: str(v) for k, v in self.topics.items()}
        if self.label_names is not None and not isinstance(self.label_names, (str, list, tuple)):
            raise SourceError("label_names must be a label set name, a YAML file or a list of class names")

    def _check_numbers(self) -> None:
        given = [k for k in ("fx", "fy", "cx", "cy") if getattr(self, k) is not None]
        if given and len(given) != 4:
            raise SourceError(f"give all four intrinsics fx fy cx cy (pixels) or none; got only {given}")
        for k in ("fx", "fy", "cx", "cy", "depth_scale", "rate_hz"):
            v = getattr(self, k)
            if v is None:
                continue
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise SourceError(f"{k} must be a number, got {v!r}") from None
            if not math.isfinite(v) or (k in ("fx", "fy", "depth_scale", "rate_hz") and v <= 0):
                raise SourceError(f"{k} must be a finite{' positive' if k != 'cx' and k != 'cy' else ''} number, got {v}")
            setattr(self, k, v)
        for k, lo in (("max_frames", 0), ("stride", 1)):
            v = getattr(self, k)
            if v is None:
                v = lo
            if isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, float) and v.is_integer()):
                raise SourceError(f"{k} must be an integer >= {lo}, got {v!r}")
            if int(v) < lo:
                raise SourceError(f"{k} must be >= {lo}, got {v}")
            setattr(self, k, int(v))

    @property
    def intrinsics(self) -> tuple[float, float, float, float] | None:
        """``(fx, fy, cx, cy)`` pixels when given, else None."""
        return None if self.fx is None else (self.fx, self.fy, self.cx, self.cy)

    def resolved_type(self) -> str:
        """The type, detected from ``path`` when ``auto`` (see :func:`detect_type`).

        Raises:
            RecordingError: ``path`` is missing or of no known kind.
        """
        return detect_type(self.path) if self.type == "auto" else self.type

    def to_dict(self) -> dict[str, Any]:
        """The keys that differ from the defaults, as plain YAML-able values."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if f.name == "path" or v != default:
                out[f.name] = str(v) if isinstance(v, Path) else v
        return out


def detect_type(path: str | Path) -> str:
    """The source type of ``path`` from what it is.

    Folders: ``color/`` and ``depth/`` -> ``rgbd_folder``; ``metadata.yaml`` -> ``bag``;
    ``.pcd`` files -> ``pcd``; ``.bin`` files or ``velodyne/`` -> ``semantickitti``; ``.npy``
    files -> ``points``. Files by suffix: ``.mcap``/``.db3``/``.bag`` -> ``bag``, ``.pcd``,
    ``.bin`` -> ``semantickitti``, ``.npy`` -> ``points``.

    Raises:
        RecordingError: ``path`` does not exist or is none of these.
    """
    p = Path(path)
    if not p.exists():
        raise RecordingError(p, "no such file or folder")
    if p.is_dir():
        if (p / "color").is_dir() and (p / "depth").is_dir():
            return "rgbd_folder"
        if (p / "metadata.yaml").is_file():
            return "bag"
        if (p / "velodyne").is_dir():
            return "semantickitti"
        suffixes = {c.suffix.lower() for c in p.iterdir() if c.is_file()}
        for suffix, kind in ((".pcd", "pcd"), (".bin", "semantickitti"), (".npy", "points")):
            if suffix in suffixes:
                return kind
        raise RecordingError(p, "cannot tell the recording type of this folder (no color/ + depth/, metadata.yaml, "
                                ".pcd, .bin or .npy files); give type: one of " + ", ".join(SOURCE_TYPES))
    suffix = p.suffix.lower()
    by_suffix = {**{s: "bag" for s in BAG_SUFFIXES}, ".pcd": "pcd", ".bin": "semantickitti", ".npy": "points"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    raise RecordingError(p, f"unknown recording file type {suffix or '(no suffix)'!r}: expected a rosbag "
                            f"({', '.join(BAG_SUFFIXES)}), .pcd, .bin (SemanticKITTI) or .npy, or an RGB-D folder")


def _from_mapping(d: dict) -> Source:
    names = {f.name for f in fields(Source)}
    kw: dict[str, Any] = {}
    for key, value in d.items():
        key = _KEY_ALIASES.get(str(key), str(key))
        if key not in names:
            close = difflib.get_close_matches(key, names, n=2)
            raise SourceError(f"unknown source key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; known keys: {', '.join(sorted(names))}")
        kw[key] = value
    if "path" not in kw:
        raise SourceError(f"source {d} has no 'path': e.g. {{type: points, path: scan.npy, labels: labels.npy}}")
    try:
        return Source(**kw)
    except TypeError as exc:  # pragma: no cover - guarded by the key check above
        raise SourceError(str(exc)) from None


def parse_source(value: Any) -> Source:
    """A :class:`Source` from a dict, inline YAML text, a path, or a Source (returned as is).

    Examples: ``parse_source("{type: pcd, path: scene.pcd, label_names: mosd}")``,
    ``parse_source("recording.mcap")``, ``parse_source({"path": "room", "fx": 525, ...})``.

    Raises:
        SourceError: invalid YAML, unknown keys (close names suggested), bad values.
    """
    if isinstance(value, Source):
        return value
    if isinstance(value, Path):
        return Source(path=value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                first = str(exc).splitlines()[0]
                raise SourceError(f"cannot parse source {text!r} as YAML ({first}); write e.g. "
                                  "\"{type: points, path: X.npy, labels: L.npy}\"") from None
        else:
            return Source(path=Path(text))
    if isinstance(value, dict):
        return _from_mapping(value)
    raise SourceError(f"a source is a path or a mapping with a 'path' key, got {type(value).__name__} {value!r}")


def parse_sources(value: Any) -> list[Source]:
    """Sources from a list (of anything :func:`parse_source` takes), inline YAML of a list
    (``"[{path: a.pcd}, {path: b.pcd}]"``) or one source.

    Raises:
        SourceError: see :func:`parse_source`; an empty list.
    """
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SourceError(f"cannot parse sources {value!r} as a YAML list ({str(exc).splitlines()[0]})") from None
    items: Sequence[Any] = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise SourceError("no source given: add at least one, e.g. --data \"{type: points, path: X.npy}\"")
    return [parse_source(v) for v in items]
