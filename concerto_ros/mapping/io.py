"""Saved maps: one ``.npz`` file with the voxel arrays and a JSON header; PLY export.

The header records what a map is only meaningful with (:class:`MapIdentity`: voxel size,
fixed frame, the identity of the model that made the semantics, the text encoder and the
translator temperature, the class names) plus the format version; loading a map against an
expected identity refuses every difference at once with :class:`MapMismatchError`.

File layout (format version 1; arrays in map row order, ``n`` voxels):

============================  ==========================================================
``header``                    0-d unicode array: JSON with ``format``, ``format_version``,
                              the :class:`MapIdentity` fields and ``counters``
``keys``                      ``(n,) int64`` voxel keys (:mod:`concerto_ros.mapping.keys`)
``color``                     ``(n, 3) float32`` running mean RGB, 0..255
``observations``              ``(n,) uint32`` frames that observed the voxel
``first_seen`` ``last_seen``  ``(n,) int64`` stamps, ns
``semantic_observations``     ``(n,) uint32`` fusions that covered the voxel
``class_weight``              ``(n,) float32`` summed confidence of the class fusions
``class_probs``               ``(n, K) float32`` fused class probabilities (when K > 0)
``embedding_weight``          ``(n,) float32`` summed confidence of the embedding fusions
``embeddings``                ``(n, D) float16`` running mean of unit embeddings (D > 0)
============================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

__all__ = ["FORMAT", "FORMAT_VERSION", "MapIdentity", "MapMismatchError", "write_map_npz", "read_map_npz",
           "write_vertex_ply"]

FORMAT = "concerto_ros.semantic_voxel_map"
#: version written by this code; files of a higher version are refused
FORMAT_VERSION = 1


class MapMismatchError(ValueError):
    """A saved map does not fit what the caller runs (the message names every difference)."""


@dataclass(frozen=True)
class MapIdentity:
    """What a map's contents are only meaningful with.

    Attributes:
        voxel_size: voxel edge, metres.
        fixed_frame: frame of every coordinate (REP-105, e.g. ``odom``/``map``).
        model_id: identity of the model that produced the semantics, as the caller defines
            it (e.g. the sha256 of the model bundle file); "" when unknown.
        text_encoder: text encoder backend of the embeddings (``sentence-transformers`` /
            ``open_clip``); "" without embeddings.
        text_model: the text encoder's model (a local directory, "" = the bundled
            all-MiniLM-L6-v2, or an open_clip architecture).
        text_dim: embedding width D (0 without embeddings).
        temperature: the translator's softmax temperature (> 0 with embeddings), used by the
            LERF relevance of queries.
        class_names: label names of the fused class probabilities, in label order.
    """

    voxel_size: float
    fixed_frame: str
    model_id: str = ""
    text_encoder: str = ""
    text_model: str = ""
    text_dim: int = 0
    temperature: float = 0.0
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "voxel_size", float(self.voxel_size))
        object.__setattr__(self, "text_dim", int(self.text_dim))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MapIdentity":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def differences(self, expected: "MapIdentity", ignore: Iterable[str] = ()) -> list[str]:
        """``"field: map <this>, expected <that>"`` for every field that differs (floats with a
        relative tolerance of 1e-6), except the fields named in ``ignore``."""
        out = []
        for f in dataclasses.fields(self):
            if f.name in ignore:
                continue
            mine, theirs = getattr(self, f.name), getattr(expected, f.name)
            same = (math.isclose(mine, theirs, rel_tol=1e-6, abs_tol=0.0) if isinstance(mine, float)
                    else mine == theirs)
            if not same:
                fmt = list if f.name == "class_names" else repr
                out.append(f"{f.name}: map {fmt(mine)}, expected {fmt(theirs)}")
        return out


def _check_identity(found: MapIdentity, expect: Optional[MapIdentity], ignore: Iterable[str], path: Path,
                    version: int) -> None:
    diffs = []
    if version > FORMAT_VERSION:
        diffs.append(f"format_version: map {version}, this code reads up to {FORMAT_VERSION}")
    if expect is not None:
        diffs += found.differences(expect, ignore)
    if diffs:
        raise MapMismatchError(f"map {path} does not fit: " + "; ".join(diffs))


def write_map_npz(path: str | os.PathLike, identity: MapIdentity, arrays: dict[str, np.ndarray],
                  counters: dict[str, int]) -> Path:
    """Write a map file atomically (a temporary file in the same folder, then a rename).

    Args:
        path: destination; the name is kept as given (no ``.npz`` appended).
        identity: the map's :class:`MapIdentity`.
        arrays: the arrays of the module docstring (missing optional ones are fine).
        counters: integers kept across save/load (frames integrated, evictions, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **identity.to_dict(),
              "counters": {k: int(v) for k, v in counters.items()}}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, header=np.array(json.dumps(header)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_map_npz(path: str | os.PathLike, expect: Optional[MapIdentity] = None,
                 ignore: Iterable[str] = ()) -> tuple[MapIdentity, dict[str, np.ndarray], dict[str, int]]:
    """Read a map file: ``(identity, arrays, counters)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a map file of this project, or inconsistent arrays.
        MapMismatchError: a newer format, or (with ``expect``) an identity that differs in any
            field not listed in ``ignore``; the message names every difference.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in z.files if k != "header"}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a saved map ({type(exc).__name__}: {exc})") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a saved map (format {header.get('format')!r}, expected {FORMAT!r})")
    identity = MapIdentity.from_dict(header)
    _check_identity(identity, expect, ignore, path, int(header.get("format_version", 0)))
    n = arrays["keys"].shape[0] if "keys" in arrays else -1
    bad = [k for k, a in arrays.items() if a.shape[:1] != (n,)]
    if n < 0 or bad:
        raise ValueError(f"{path}: corrupt map (arrays {bad or ['keys']} do not have one row per voxel)")
    return identity, arrays, dict(header.get("counters", {}))


def write_vertex_ply(path: str | os.PathLike, columns: dict[str, tuple[np.ndarray, str]]) -> Path:
    """Binary little-endian PLY with one vertex property per column.

    Args:
        columns: ``{property name: (array (N,), PLY/numpy type such as "f4", "u1", "i4")}``,
            in file order (``x y z`` first, as viewers expect).

    Raises:
        ValueError: columns of different lengths.
    """
    from plyfile import PlyData, PlyElement

    lengths = {name: len(a) for name, (a, _) in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"write_vertex_ply: columns of different lengths {lengths}")
    n = next(iter(lengths.values()), 0)
    v = np.empty(n, dtype=[(name, t) for name, (_, t) in columns.items()])
    for name, (a, _) in columns.items():
        v[name] = a
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(v, "vertex")], byte_order="<").write(str(path))
    return path
