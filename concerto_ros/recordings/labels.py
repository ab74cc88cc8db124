"""Label sets: which class each label value of a dataset stands for (one owner, in YAML).

A label set maps the label values found in a recording (NYU40 ids, SemanticKITTI ids, mOSD
part ids, ...) to class indices ``0..K-1`` of its ``classes`` list; every value it does not
list maps to :data:`IGNORE` (``-1``: never trained on, never scored). The sets live in
``config/labels/<name>.yaml``:

* ``nyu40``: NYU40 ids -> the 20 ScanNet benchmark classes (ScanNet-20, Pointcept's order);
* ``scannet20``: values that already are ScanNet-20 indices ``0..19``;
* ``semantickitti``: SemanticKITTI learning ids ``1..19`` (0 = unlabeled), with the
  ``learning_map`` from raw ``.label`` ids;
* ``mosd``: mOSD point labels, ``1-9`` table, ``20+`` object.

A source names its set with ``label_names``: one of those names, a YAML file of the same
layout, or a list of class names (value ``i`` is the ``i``-th name; names in
:data:`UNLABELED_NAMES` are ignored).

YAML layout (keys other than ``classes``/``ids`` optional)::

    name: mosd
    description: one line
    base: nyu40               # take classes, id_names and synonyms from another set
    classes: [table, object]  # class index = position
    ids: {"1-9": table, "20+": object}   # value, "A-B" (inclusive) or "A+" -> class
                                          # name or index; or the word index (value i ->
                                          # class i)
    learning_map: {10: 1}     # raw id -> id, applied first by readers of raw files
    id_names: {1: wall}       # every raw id's own name (documentation, reports)
    synonyms: {sofa: [couch]} # words for a class that are not its name (query evaluation)
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from concerto_ros.recordings.errors import RecordingError

__all__ = [
    "IGNORE",
    "UNLABELED_NAMES",
    "LabelSet",
    "labels_dir",
    "builtin_label_sets",
    "load_label_set",
    "resolve_class_names",
    # lazily loaded from the YAML files (module __getattr__)
    "NYU40_CLASS_NAMES",
    "SCANNET20_CLASS_NAMES",
    "SCANNET20_NYU40_IDS",
    "SYNONYMS",
]

#: class index of ignored label values
IGNORE = -1
#: class names that mark "no class" in a name list (their value is ignored)
UNLABELED_NAMES = frozenset({"unlabeled", "unannotated", "ignore", "void"})

_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)|(\+))?\s*$")


@dataclass(frozen=True)
class LabelSet:
    """Label values -> class indices.

    Attributes:
        name: the set's name (``nyu40``, a file stem, ...).
        classes: class names; class index ``i`` is ``classes[i]``.
        rules: ``(lo, hi, class index)`` value ranges, inclusive (``hi = None``: no upper
            bound), first match wins.
        learning_map: raw id -> id applied by :meth:`map_raw` before the rules (None: none).
        id_names: each raw id's own name (may name more ids than the rules use).
        synonyms: class name -> words that are not its name.
        description: one line.
    """

    name: str
    classes: tuple[str, ...]
    rules: tuple[tuple[int, int | None, int], ...]
    learning_map: dict[int, int] | None = None
    id_names: dict[int, str] = field(default_factory=dict)
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def map(self, values: np.ndarray) -> np.ndarray:
        """Class indices of label values.

        Args:
            values: integer array of any shape (per point ``(N,)`` or per pixel ``(H, W)``).

        Returns:
            ``int32`` array of the same shape: class index in ``[0, K)`` or :data:`IGNORE`.
        """
        v = np.asarray(values).astype(np.int64, copy=False)
        out = np.full(v.shape, IGNORE, dtype=np.int32)
        done = np.zeros(v.shape, dtype=bool)
        for lo, hi, c in self.rules:
            hit = (v >= lo) & ~done
            if hi is not None:
                hit &= v <= hi
            out[hit] = c
            done |= hit
        return out

    def map_raw(self, raw: np.ndarray) -> np.ndarray:
        """Like :meth:`map` after the ``learning_map`` (raw ids it does not list -> ignored);
        equal to :meth:`map` for sets without one."""
        if not self.learning_map:
            return self.map(raw)
        r = np.asarray(raw).astype(np.int64, copy=False)
        keys = np.array(sorted(self.learning_map), dtype=np.int64)
        vals = np.array([self.learning_map[k] for k in keys], dtype=np.int64)
        pos = np.clip(np.searchsorted(keys, r), 0, len(keys) - 1)
        known = keys[pos] == r
        return np.where(known, self.map(np.where(known, vals[pos], -(1 << 40))), IGNORE).astype(np.int32)

    def describe(self) -> str:
        """``name (K classes: a, b, ...)`` for logs and reports."""
        return f"{self.name} ({self.num_classes} classes: {', '.join(self.classes)})"


# --------------------------------------------------------------------------- loading
def labels_dir() -> Path:
    """The folder of the built-in label sets: ``config/labels`` of the source tree, else the
    installed share folder (colcon/ament or pip ``data_files``).

    Raises:
        RecordingError: not found.
    """
    here = Path(__file__).resolve().parents[2]
    cands = [here / "config" / "labels", Path(sys.prefix) / "share" / "concerto_ros" / "config" / "labels"]
    try:
        from ament_index_python.packages import get_package_share_directory

        cands.append(Path(get_package_share_directory("concerto_ros")) / "config" / "labels")
    except Exception:  # noqa: BLE001 - no ament index (plain venv)
        pass
    for c in cands:
        if c.is_dir():
            return c
    raise RecordingError(cands[0], "the built-in label sets (config/labels/*.yaml) are not installed")


@lru_cache(maxsize=1)
def _builtin_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in labels_dir().glob("*.yaml")))


def builtin_label_sets() -> list[str]:
    """Names of the built-in label sets (the YAML files of :func:`labels_dir`)."""
    return list(_builtin_names())


def _class_index(key: Any, value: Any, classes: Sequence[str], where: str) -> int:
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        if value not in classes:
            raise RecordingError(where, f"ids[{key!r}] names class {value!r}, which is not in classes {list(classes)}")
        return classes.index(value)
    c = int(value)
    if not 0 <= c < len(classes):
        raise RecordingError(where, f"ids[{key!r}] = {c} is outside the class indices 0..{len(classes) - 1}")
    return c


def _rules(ids: Any, classes: Sequence[str], where: str) -> tuple[tuple[int, int | None, int], ...]:
    if ids == "index":
        return tuple((i, i, i) for i in range(len(classes)))
    if not isinstance(ids, dict) or not ids:
        raise RecordingError(where, "'ids' must map label values (N, 'A-B' or 'A+') to class names, or be 'index'")
    rules = []
    for key, value in ids.items():
        m = _RANGE.match(str(key))
        if m is None:
            raise RecordingError(where, f"ids key {key!r} is not a value N, a range 'A-B' or an open range 'A+'")
        lo = int(m.group(1))
        hi = None if m.group(3) else int(m.group(2)) if m.group(2) is not None else lo
        rules.append((lo, hi, _class_index(key, value, classes, where)))
    return tuple(rules)


def _int_keys(d: Any, what: str, where: str) -> dict[int, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise RecordingError(where, f"'{what}' must be a mapping")
    try:
        return {int(k): v for k, v in d.items()}
    except (TypeError, ValueError):
        raise RecordingError(where, f"'{what}' keys must be integers") from None


def _from_yaml(path: Path) -> LabelSet:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RecordingError(path, f"cannot read the label set: {exc}") from None
    if not isinstance(data, dict):
        raise RecordingError(path, "a label set YAML is a mapping with 'classes' and 'ids'")
    base = load_label_set(str(data["base"])) if data.get("base") else None
    classes = data.get("classes", list(base.classes) if base else None)
    if not isinstance(classes, list) or not classes:
        raise RecordingError(path, "'classes' must be a non-empty list of class names")
    classes = [str(c) for c in classes]
    synonyms = {str(k): tuple(str(s) for s in v) for k, v in (data.get("synonyms") or {}).items()}
    learning_map = _int_keys(data.get("learning_map"), "learning_map", str(path))
    return LabelSet(
        name=str(data.get("name", path.stem)), classes=tuple(classes),
        rules=_rules(data.get("ids"), classes, str(path)),
        learning_map={k: int(v) for k, v in learning_map.items()} or None,
        id_names={k: str(v) for k, v in _int_keys(data.get("id_names"), "id_names", str(path)).items()}
        or (dict(base.id_names) if base else {}),
        synonyms=synonyms or (dict(base.synonyms) if base else {}),
        description=str(data.get("description", "")),
    )


def _from_names(names: Sequence[str], name: str = "names") -> LabelSet:
    names = [str(n) for n in names]
    classes = [n for n in names if n.lower() not in UNLABELED_NAMES]
    rules = tuple((i, i, classes.index(n)) for i, n in enumerate(names) if n in classes)
    return LabelSet(name=name, classes=tuple(classes), rules=rules, id_names=dict(enumerate(names)),
                    description=f"value i is the i-th of {len(names)} names ({', '.join(sorted(UNLABELED_NAMES & set(names)))} ignored)")


@lru_cache(maxsize=32)
def _builtin(name: str) -> LabelSet:
    return _from_yaml(labels_dir() / f"{name}.yaml")


def load_label_set(spec: str | Path | Sequence[str] | LabelSet) -> LabelSet:
    """Resolve a ``label_names`` setting.

    Args:
        spec: a built-in name (:func:`builtin_label_sets`), a ``.yaml`` file, a list of
            class names (value ``i`` -> ``i``-th name; :data:`UNLABELED_NAMES` ignored), or a
            :class:`LabelSet` (returned as is).

    Raises:
        RecordingError: unknown name, missing or malformed file (the message lists the
            built-in names and the YAML layout's keys).
    """
    if isinstance(spec, LabelSet):
        return spec
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise RecordingError(None, "label_names is an empty list: give class names, a built-in set or a YAML file")
        return _from_names(spec)
    text = str(spec)
    if text in builtin_label_sets():
        return _builtin(text)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise RecordingError(path, "label set file not found")
        return _from_yaml(path)
    raise RecordingError(None, f"unknown label_names {text!r}: use one of {builtin_label_sets()}, a YAML file "
                               "(keys classes, ids, ...; see config/labels/) or a list of class names")


def resolve_class_names(names: Sequence[str] | str | None) -> list[str] | None:
    """Expand a class-name setting (``head.class_names``).

    Args:
        names: class names; a built-in label set's name (``"scannet20"`` or
            ``["scannet20"]``) stands for that set's classes; ``None`` stays ``None``.

    Returns:
        The class names as a list.
    """
    if names is None:
        return None
    names = [str(n) for n in ([names] if isinstance(names, str) else names)]
    if len(names) == 1 and names[0].lower() in builtin_label_sets():
        return list(_builtin(names[0].lower()).classes)
    return names


def __getattr__(name: str) -> Any:
    """The constants of the YAML files, loaded on first use."""
    if name == "NYU40_CLASS_NAMES":  # NYU40 id (1..40) -> name
        return dict(_builtin("nyu40").id_names)
    if name == "SCANNET20_CLASS_NAMES":  # label i of a ScanNet-20 head
        return _builtin("scannet20").classes
    if name == "SCANNET20_NYU40_IDS":  # NYU40 id of each ScanNet-20 class, in class order
        rules = {c: lo for lo, _hi, c in _builtin("nyu40").rules}
        return tuple(rules[c] for c in range(_builtin("nyu40").num_classes))
    if name == "SYNONYMS":  # class name -> synonyms (not the name itself)
        return dict(_builtin("nyu40").synonyms)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
