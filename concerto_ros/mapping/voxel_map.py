"""The persistent semantic voxel map in the fixed frame (ROS-free).

Voxels are addressed by absolute voxel index at ``voxel_size`` metres
(:mod:`concerto_ros.mapping.keys`: +-(2**20 - 2) voxels per axis, e.g. +-20.9 km at 2 cm).
Two kinds of updates, both fully vectorised (no per-voxel Python):

* :meth:`SemanticVoxelMap.integrate_geometry`, for EVERY synced frame: creates the voxels the
  frame's points fall in; per voxel a running mean colour (mean over observations of the
  frame's mean colour in the voxel), the observation count (frames) and the first/last seen
  stamps. Then the memory bound is enforced (see below).
* :meth:`SemanticVoxelMap.fuse`, for every encoded window (keyframes): per voxel the class
  probabilities as a confidence-weighted running mean, the language embedding as a
  confidence-weighted running mean of unit vectors (stored float16, renormalised on read) and
  the semantic observation count. Window voxels falling into one map voxel (a coarser map)
  are combined first, which is the same as fusing them one after the other.

Memory bound: with ``max_voxels`` the map evicts once it holds more than
``(1 + evict_slack) * max_voxels`` voxels, down to ``(1 - evict_slack) * max_voxels``; with ``radius`` it evicts
every voxel farther than ``radius`` metres from the newest sensor origin, checked whenever
that origin moved ``evict_slack * radius`` since the last check or the count bound triggers.
Order: beyond the radius, then farthest, then oldest (:mod:`concerto_ros.mapping.eviction`).

Reads return copies and every public method holds :attr:`SemanticVoxelMap.lock` (an RLock),
so the map may be written on the worker thread and read by publishers and services; hold
``map.lock`` yourself across several calls whose rows must stay valid (eviction renumbers
rows), or use :meth:`SemanticVoxelMap.snapshot`.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from concerto_ros.cloud.voxel import GridSample, column_max, grid_sample
from concerto_ros.cloud.window import WindowCloud, sensor_origin
from concerto_ros.sensors.types import PointFrame

from .columns import ColumnStore, SortedKeyIndex
from .eviction import select_evictions
from .fusion import assign_rows, blend_weights, default_threads, lerp_rows, unit_rows
from .io import MapIdentity, read_map_npz, write_map_npz, write_vertex_ply
from .keys import check_indices, pack_keys, unpack_keys, voxel_indices
from .regions import Region, find_regions

__all__ = ["SemanticVoxelMap", "MapStats", "MapSnapshot", "FuseReport", "GEOMETRY", "SEMANTIC"]

#: kinds of :meth:`SemanticVoxelMap.updated_since`
GEOMETRY, SEMANTIC = "geometry", "semantic"


@dataclass(frozen=True)
class MapStats:
    """Size and activity of a map.

    Attributes:
        num_voxels: voxels held.
        semantic_voxels: voxels with fused class probabilities or embeddings.
        capacity: rows allocated.
        bytes_used: bytes of all column arrays (capacity) and the key index.
        evicted_radius / evicted_count: voxels evicted for being beyond ``radius`` / for the
            ``max_voxels`` bound, since creation (kept across save/load).
        frames_integrated: :meth:`SemanticVoxelMap.integrate_geometry` calls.
        fusions: :meth:`SemanticVoxelMap.fuse` calls.
        fuse_missing: window voxels that :meth:`~SemanticVoxelMap.fuse` skipped because the map
            did not hold them (never integrated, or evicted).
        version: the map's update counter.
    """

    num_voxels: int
    semantic_voxels: int
    capacity: int
    bytes_used: int
    evicted_radius: int
    evicted_count: int
    frames_integrated: int
    fusions: int
    fuse_missing: int
    version: int

    @property
    def evictions(self) -> int:
        """All evicted voxels."""
        return self.evicted_radius + self.evicted_count

    def as_dict(self) -> dict[str, int]:
        """Every counter by name (``keyframes_encoded`` = ``fusions``), for summaries."""
        d = dataclasses.asdict(self)
        d.update(evictions=self.evictions, keyframes_encoded=self.fusions, bytes_mib=round(self.bytes_used / 2**20, 1))
        return d


@dataclass(frozen=True)
class FuseReport:
    """What one :meth:`SemanticVoxelMap.fuse` did.

    Attributes:
        fused: map voxels updated (held by the map, confidence > 0).
        missing: map voxels of the input that the map does not hold (skipped: never
            integrated, or evicted).
        classes_reset: the class list changed and the fused class probabilities were reset.
    """

    fused: int
    missing: int
    classes_reset: bool


@dataclass(frozen=True)
class MapSnapshot:
    """A consistent copy of selected map voxels (see :meth:`SemanticVoxelMap.snapshot`).

    Attributes:
        rows: ``(V,) int64`` map rows at snapshot time. keys: ``(V,) int64`` voxel keys.
        ijk: ``(V, 3) int64`` voxel indices. coords: ``(V, 3) float32`` voxel centres, metres.
        colors: ``(V, 3) uint8``. labels: ``(V,) int32`` (-1 = no class fused).
        confidence: ``(V,) float32`` fused probability of the label (0 without).
        observations: ``(V,) uint32``. embeddings: ``(V, D)`` unit rows (float32 or float16),
            or None.
        version: the map's version at snapshot time (pass it to ``since`` next time).
        class_names, fixed_frame, voxel_size: of the map.
    """

    rows: np.ndarray
    keys: np.ndarray
    ijk: np.ndarray
    coords: np.ndarray
    colors: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    observations: np.ndarray
    embeddings: Optional[np.ndarray]
    version: int
    class_names: tuple[str, ...]
    fixed_frame: str
    voxel_size: float

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def _locked(method):
    """Run ``method`` holding the map's lock."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return wrapper


def _as_rows(rows, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= n)):
        raise IndexError(f"voxel map: rows must be a 1-D array of row indices in [0, {n})")
    return rows


@dataclass
class _Counters:
    frames_integrated: int = 0
    fusions: int = 0
    fuse_missing: int = 0
    evicted_radius: int = 0
    evicted_count: int = 0
    extra: dict = field(default_factory=dict)


class SemanticVoxelMap:
    """Persistent semantic voxel map (see the module docstring).

    Args:
        voxel_size: voxel edge, metres (> 0).
        fixed_frame: frame of every coordinate given and returned.
        max_voxels: memory bound in voxels (0 = none).
        radius: metres kept around the newest sensor origin (0 = unbounded).
        class_names: label names of the class probabilities (may be set by the first
            :meth:`fuse`).
        model_id, text_encoder, text_model, temperature: identity of the semantics, recorded
            in saved maps (see :class:`~concerto_ros.mapping.io.MapIdentity`).
        embedding_dim: D of the embeddings (0 = set by the first :meth:`fuse` with
            embeddings; giving it here avoids filling a whole new column at that fusion).
        evict_slack: amortisation of evictions (see the module docstring), in ``[0, 1]``.
        threads: threads of the embedding fusion kernel (0 = ``min(4, cpu count)``).
        log: callable for notes (class list resets), e.g. a ROS logger's ``info``.

    Raises:
        ValueError: a bad argument.
    """

    def __init__(self, voxel_size: float, fixed_frame: str = "odom", *, max_voxels: int = 0, radius: float = 0.0,
                 class_names: Sequence[str] = (), model_id: str = "", text_encoder: str = "", text_model: str = "",
                 temperature: float = 0.0, embedding_dim: int = 0, evict_slack: float = 0.05, threads: int = 0,
                 log: Optional[Callable[[str], Any]] = None):
        voxel_size = float(voxel_size)
        if not (np.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"SemanticVoxelMap: voxel_size must be positive metres, got {voxel_size}")
        if int(max_voxels) < 0 or not float(radius) >= 0 or not 0.0 <= float(evict_slack) <= 1.0:
            raise ValueError(f"SemanticVoxelMap: need max_voxels >= 0, radius >= 0, evict_slack in [0, 1]; got "
                             f"{max_voxels}, {radius}, {evict_slack}")
        if int(embedding_dim) < 0 or int(threads) < 0:
            raise ValueError(f"SemanticVoxelMap: embedding_dim and threads must be >= 0, got {embedding_dim}, "
                             f"{threads}")
        self.lock = threading.RLock()
        self._identity = MapIdentity(voxel_size, str(fixed_frame), str(model_id), str(text_encoder),
                                     str(text_model), int(embedding_dim), float(temperature), tuple(class_names))
        self.max_voxels = int(max_voxels)
        self.radius = float(radius)
        self.evict_slack = float(evict_slack)
        self.threads = int(threads) or default_threads()
        self._log = log or (lambda _msg: None)
        # with a count bound the columns never need to grow: reserve the bound once (untouched
        # memory costs nothing until rows are appended; a growth step copies every column)
        bound = int(self.max_voxels * (1.0 + self.evict_slack)) + (1 << 16) if self.max_voxels else 4096
        self._cols = ColumnStore(capacity=bound)
        self._index = SortedKeyIndex()
        self._version = 0
        self._counters = _Counters()
        self._origin = np.zeros(3)
        self._sweep_origin: Optional[np.ndarray] = None
        for name, tail, dtype, fill in (("key", (), np.int64, 0), ("ijk", (3,), np.int32, 0),
                                        ("color", (3,), np.float32, 0.0), ("obs", (), np.uint32, 0),
                                        ("first_seen", (), np.int64, 0), ("last_seen", (), np.int64, 0),
                                        ("geom_ver", (), np.int64, 0), ("sem_ver", (), np.int64, 0),
                                        ("sem_obs", (), np.uint32, 0), ("cls_w", (), np.float32, 0.0),
                                        ("emb_w", (), np.float32, 0.0)):
            self._cols.add_column(name, tail, dtype, fill)
        if self._identity.class_names:
            self._cols.add_column("probs", (len(self._identity.class_names),), np.float32, 0.0)
        if self._identity.text_dim:
            self._cols.add_column("emb", (self._identity.text_dim,), np.float16, 0.0)

    @classmethod
    def from_config(cls, cfg, **identity) -> "SemanticVoxelMap":
        """A map with the ``map.*`` settings of a :class:`~concerto_ros.config.PerceptionConfig`
        (``map.voxel_size`` 0 = ``window.voxel_size``) in ``cfg.fixed_frame``.

        Args:
            identity: the remaining constructor arguments (``class_names``, ``model_id``,
                ``text_encoder``, ``text_model``, ``temperature``, ``embedding_dim``, ``log``).
        """
        mc = cfg.map
        return cls(mc.voxel_size or cfg.window.voxel_size, cfg.fixed_frame, max_voxels=mc.max_voxels,
                   radius=mc.radius, evict_slack=mc.evict_slack, threads=mc.fusion_threads, **identity)

    # ------------------------------------------------------------------ properties
    @property
    def voxel_size(self) -> float:
        """Voxel edge, metres."""
        return self._identity.voxel_size

    @property
    def fixed_frame(self) -> str:
        return self._identity.fixed_frame

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the fused class probabilities, in label order."""
        return self._identity.class_names

    @property
    def embedding_dim(self) -> int:
        """D of the stored embeddings (0: none yet)."""
        return self._identity.text_dim

    @property
    def identity(self) -> MapIdentity:
        """What the map's contents mean (saved with it)."""
        return self._identity

    @property
    def version(self) -> int:
        """Update counter: +1 per :meth:`integrate_geometry`, :meth:`fuse` and load."""
        return self._version

    @property
    def num_voxels(self) -> int:
        return self._cols.n

    def __len__(self) -> int:
        return self._cols.n

    # ------------------------------------------------------------------ geometry
    @_locked
    def integrate_geometry(self, points: np.ndarray, colors: np.ndarray, stamp_ns: int, sensor_origin,
                           grid: Optional[GridSample] = None) -> int:
        """Integrate one frame's geometry and colour; then enforce the memory bound.

        Args:
            points: ``(N, 3) float32`` metres in the map's fixed frame.
            colors: ``(N, 3) uint8`` RGB.
            stamp_ns: the frame's stamp, integer nanoseconds.
            sensor_origin: ``(3,)`` sensor position in the fixed frame, metres (the radius
                bound is kept around the newest one).
            grid: :func:`~concerto_ros.cloud.voxel.grid_sample` of ``points`` at this map's
                voxel size, when the caller has it already (the window's
                ``newest_voxels.grid``), so the frame is not voxelised twice.

        Returns:
            The number of voxels created.

        Raises:
            ValueError: shapes/dtypes, non-finite points or origin, coordinates outside the
                key range, or a ``grid`` of another voxel size or point count.
        """
        points, colors, origin = self._check_frame(points, colors, sensor_origin)
        if grid is None:
            grid = grid_sample(points, self.voxel_size)
        elif not np.isclose(grid.voxel_size, self.voxel_size) or grid.num_points != points.shape[0]:
            raise ValueError(f"integrate_geometry: grid is for {grid.num_points} points at {grid.voxel_size} m, "
                             f"expected {points.shape[0]} points at {self.voxel_size} m")
        self._version += 1
        self._counters.frames_integrated += 1
        self._origin = origin
        created = 0
        if grid.num_voxels:
            ijk = grid.grid_coord.astype(np.int64)
            ijk += grid.min_coord
            check_indices(grid.min_coord[None], "integrate_geometry")
            check_indices((grid.min_coord + column_max(grid.grid_coord))[None], "integrate_geometry")
            keys = pack_keys(ijk)  # sorted: grid rows are lexicographic
            mean = np.empty((grid.num_voxels, 3), dtype=np.float32)
            for c in range(3):
                mean[:, c] = np.bincount(grid.inverse, weights=colors[:, c], minlength=grid.num_voxels) / grid.counts
            created = self._add_observations(keys, ijk, mean, int(stamp_ns))
        self._enforce_bound()
        return created

    def integrate_frame(self, frame: PointFrame, grid: Optional[GridSample] = None) -> int:
        """:meth:`integrate_geometry` of a lifted frame (origin: translation of its
        ``T_fixed_sensor``, else the centroid of its points).

        Raises:
            ValueError: ``frame.frame_id`` is not the map's fixed frame, or as
                :meth:`integrate_geometry`.
        """
        if frame.frame_id != self.fixed_frame:
            raise ValueError(f"integrate_frame: frame is in {frame.frame_id!r}, the map in {self.fixed_frame!r}")
        return self.integrate_geometry(frame.points, frame.colors, frame.stamp_ns, sensor_origin(frame), grid=grid)

    def _check_frame(self, points, colors, origin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        points = np.asarray(points)
        colors = np.asarray(colors)
        if points.ndim != 2 or points.shape[1] != 3 or points.dtype.kind != "f":
            raise ValueError(f"integrate_geometry: points must be (N, 3) float, got {points.shape} {points.dtype}")
        if colors.shape != points.shape or colors.dtype != np.uint8:
            raise ValueError(f"integrate_geometry: colors must be ({points.shape[0]}, 3) uint8, got "
                             f"{colors.shape} {colors.dtype}")
        given = origin
        origin = np.asarray(given, dtype=np.float64).reshape(-1)
        if origin.shape != (3,) or not np.isfinite(origin).all():
            raise ValueError(f"integrate_geometry: sensor_origin must be 3 finite metres, got {given!r}")
        return points, colors, origin

    def _add_observations(self, keys: np.ndarray, ijk: np.ndarray, mean: np.ndarray, stamp: int) -> int:
        """Update the voxels of ``keys`` (sorted, distinct) with one observation each."""
        cols = self._cols
        rows = self._index.lookup(keys)
        old = rows >= 0
        r = rows[old]
        obs = np.take(cols["obs"], r) + np.uint32(1)
        cols["obs"][r] = obs
        color = np.take(cols["color"], r, axis=0)
        color += (mean[old] - color) / obs[:, None].astype(np.float32)
        cols["color"][r] = color
        cols["last_seen"][r] = stamp
        cols["geom_ver"][r] = self._version
        new = ~old
        k = int(np.count_nonzero(new))
        if k:
            sl = cols.append(k)
            cols["key"][sl] = keys[new]
            cols["ijk"][sl] = ijk[new]
            cols["color"][sl] = mean[new]
            cols["obs"][sl] = 1
            cols["first_seen"][sl] = stamp
            cols["last_seen"][sl] = stamp
            cols["geom_ver"][sl] = self._version
            self._index.insert(keys[new], np.arange(sl.start, sl.stop, dtype=np.int64))
        return k

    # ------------------------------------------------------------------ eviction
    def _enforce_bound(self) -> None:
        n = self._cols.n
        over = self.max_voxels > 0 and n > int(self.max_voxels * (1.0 + self.evict_slack))
        moved = self.radius > 0 and (self._sweep_origin is None or np.linalg.norm(
            self._origin - self._sweep_origin) > self.evict_slack * self.radius)
        if not (over or moved) or n == 0:
            return
        self._sweep_origin = self._origin.copy()
        centres = (self._cols["ijk"] + 0.5) * self.voxel_size - self._origin
        dist2 = np.einsum("ij,ij->i", centres, centres)
        # hysteresis: down to (1 - slack) x max_voxels, so a map that grows by a frame's worth
        # of new space every frame evicts every few frames, not every frame
        target = max(1, int(self.max_voxels * (1.0 - self.evict_slack))) if over else 0
        rows, n_out = select_evictions(dist2, self._cols["last_seen"], self.radius, target)
        if rows.shape[0]:
            self._index.remap(self._cols.remove(rows))
            self._counters.evicted_radius += n_out
            self._counters.evicted_count += int(rows.shape[0]) - n_out

    # ------------------------------------------------------------------ semantics
    @_locked
    def fuse(self, stamp_ns: int, confidence: np.ndarray, *, coords: Optional[np.ndarray] = None,
             keys: Optional[np.ndarray] = None, class_probs: Optional[np.ndarray] = None,
             labels: Optional[np.ndarray] = None, embeddings: Optional[np.ndarray] = None,
             class_names: Optional[Sequence[str]] = None) -> FuseReport:
        """Fuse the semantics of ``M`` window voxels into the map.

        Args:
            stamp_ns: stamp of the encoded window (its newest frame), ns.
            confidence: ``(M,) float32`` weight of each voxel's observation (>= 0, e.g. the
                head's softmax confidence; 0 leaves the voxel unchanged).
            coords: ``(M, 3)`` points in the fixed frame (the window's voxel representatives
                ``WindowCloud.coord``), or
            keys: ``(M,) int64`` map voxel keys (:func:`~concerto_ros.mapping.keys.pack_keys`).
            class_probs: ``(M, K) float32`` class probabilities (rows summing to 1), or
            labels: ``(M,)`` int labels in ``[0, K)`` (fused as one-hot probabilities), or
                neither.
            embeddings: ``(M, D)`` float32/float16 unit embeddings in the text space, or None.
            class_names: the K label names; a list different from the map's resets the class
                part (all voxels) with a log message. None: the map's list.

        Returns:
            :class:`FuseReport`.

        Raises:
            ValueError: shapes that do not match, both or neither of ``coords``/``keys``,
                both ``class_probs`` and ``labels``, K different from the class list, D
                different from the stored embeddings, negative or non-finite confidence.
        """
        keys = self._fuse_keys(coords, keys)
        m = keys.shape[0]
        conf = np.asarray(confidence, dtype=np.float32).reshape(-1)
        if conf.shape != (m,) or not np.isfinite(conf).all() or (conf < 0).any():
            raise ValueError(f"fuse: confidence must be ({m},) finite and >= 0, got shape {conf.shape}")
        probs, reset = self._fuse_probs(class_probs, labels, class_names, m)
        emb = self._fuse_embeddings(embeddings, m)
        if np.any(keys[1:] <= keys[:-1]):  # several window voxels per map voxel: combine them
            keys, conf, probs, emb = _combine(keys, conf, probs, emb)
        rows = self._index.lookup(keys)
        missing = int(np.count_nonzero(rows < 0))
        use = (rows >= 0) & (conf > 0)  # zero-weight observations change nothing
        if not use.all():
            rows, conf = rows[use], conf[use]
            probs = None if probs is None else probs[use]
            emb = None if emb is None else emb[use]
        self._version += 1
        self._counters.fusions += 1
        self._counters.fuse_missing += missing
        cols = self._cols
        if probs is not None:
            lerp_rows(cols["probs"], rows, probs, blend_weights(cols["cls_w"], rows, conf), self.threads)
        if emb is not None:
            self._fuse_embedding_rows(rows, emb, conf)
        cols["sem_obs"][rows] = np.take(cols["sem_obs"], rows) + np.uint32(1)
        cols["sem_ver"][rows] = self._version
        return FuseReport(fused=int(rows.shape[0]), missing=missing, classes_reset=reset)

    def window_keys(self, window: WindowCloud) -> np.ndarray:
        """``(M,) int64`` map keys of a window's voxels: exact from its ``grid_coord +
        min_coord`` when the voxel sizes agree, else from its representative points.

        Raises:
            ValueError: coordinates outside the key range.
        """
        if not np.isclose(window.voxel_size, self.voxel_size, rtol=1e-9, atol=0.0):
            return pack_keys(voxel_indices(window.coord, self.voxel_size, "window_keys"))
        if window.num_voxels == 0:
            return np.zeros(0, dtype=np.int64)
        check_indices(window.min_coord[None], "window_keys")
        check_indices((window.min_coord + column_max(window.grid_coord))[None], "window_keys")
        ijk = window.grid_coord.astype(np.int64)
        ijk += window.min_coord
        return pack_keys(ijk)

    def fuse_window(self, window: WindowCloud, confidence: np.ndarray, **kwargs) -> FuseReport:
        """:meth:`fuse` of the voxels of an encoded window (keys from :meth:`window_keys`,
        stamp of its newest frame); ``kwargs`` as :meth:`fuse` (``class_probs`` or ``labels``,
        ``embeddings``, ``class_names``), all with one row per window voxel."""
        return self.fuse(int(window.stamps_ns[-1]), confidence, keys=self.window_keys(window), **kwargs)

    def _fuse_keys(self, coords, keys) -> np.ndarray:
        if (coords is None) == (keys is None):
            raise ValueError("fuse: give exactly one of coords (M, 3) or keys (M,)")
        if keys is not None:
            keys = np.asarray(keys, dtype=np.int64)
            if keys.ndim != 1:
                raise ValueError(f"fuse: keys must be (M,) int64, got shape {keys.shape}")
            return keys
        return pack_keys(voxel_indices(coords, self.voxel_size, "fuse"))

    def _fuse_probs(self, class_probs, labels, class_names, m) -> tuple[Optional[np.ndarray], bool]:
        reset = False
        if class_names is not None and tuple(class_names) != self.class_names:
            reset = self.set_class_names(class_names)
        if class_probs is not None and labels is not None:
            raise ValueError("fuse: give class_probs or labels, not both")
        k = len(self.class_names)
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if labels.shape != (m,) or (m and (labels.min() < 0 or labels.max() >= k)):
                raise ValueError(f"fuse: labels must be ({m},) in [0, {k}) for classes {list(self.class_names)}")
            probs = np.zeros((m, k), dtype=np.float32)
            probs[np.arange(m), labels] = 1.0
            return probs, reset
        if class_probs is None:
            return None, reset
        probs = np.asarray(class_probs, dtype=np.float32)
        if probs.shape != (m, k) or k == 0:
            raise ValueError(f"fuse: class_probs must be ({m}, {k}) for the map's classes {list(self.class_names)} "
                             f"(pass class_names to change them), got {probs.shape}")
        return probs, reset

    def _fuse_embeddings(self, embeddings, m) -> Optional[np.ndarray]:
        if embeddings is None:
            return None
        emb = np.asarray(embeddings)
        if emb.dtype not in (np.float16, np.float32):
            emb = emb.astype(np.float32)
        if emb.ndim != 2 or emb.shape[0] != m:
            raise ValueError(f"fuse: embeddings must be ({m}, D), got {emb.shape}")
        if not self.embedding_dim:
            self._identity = _replace(self._identity, text_dim=emb.shape[1])
            self._cols.add_column("emb", (emb.shape[1],), np.float16, 0.0)
        elif emb.shape[1] != self.embedding_dim:
            raise ValueError(f"fuse: embeddings are {emb.shape[1]}-d but the map stores {self.embedding_dim}-d "
                             "ones (another text encoder? clear the map or load a matching one)")
        return emb

    def _fuse_embedding_rows(self, rows: np.ndarray, emb: np.ndarray, conf: np.ndarray) -> None:
        cols = self._cols
        blend = blend_weights(cols["emb_w"], rows, conf)
        if (blend == 1.0).all():  # all never fused (or negligible weight): the mean is the observation
            assign_rows(cols["emb"], rows, emb, self.threads)
        else:
            lerp_rows(cols["emb"], rows, emb, blend, self.threads)

    @_locked
    def set_class_names(self, names: Sequence[str]) -> bool:
        """Use ``names`` as the class list; a different list resets the fused class
        probabilities of every voxel (logged). Returns whether they were reset.

        Raises:
            ValueError: empty or duplicate names.
        """
        names = tuple(str(n) for n in names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class names must be non-empty and distinct, got {list(names)}")
        if names == self.class_names:
            return False
        had = self._cols.has("probs") and int(np.count_nonzero(self._cols["cls_w"]))
        if self.class_names:
            self._log(f"voxel map: class list changed from {list(self.class_names)} to {list(names)}: "
                      f"the fused class probabilities of {had} voxels were reset")
        self._cols.drop_column("probs")
        self._cols.add_column("probs", (len(names),), np.float32, 0.0)
        self._cols["cls_w"][:] = 0.0
        self._identity = _replace(self._identity, class_names=names)
        return bool(had)

    # ------------------------------------------------------------------ reads
    def _gather(self, column: str, rows) -> np.ndarray:
        """Copy of ``column`` at ``rows`` (all rows when None); IndexError for bad rows."""
        return np.take(self._cols[column], _as_rows(rows, self._cols.n), axis=0)

    @_locked
    def keys(self, rows=None) -> np.ndarray:
        """``(V,) int64`` voxel keys (all rows, or ``rows``)."""
        return self._gather("key", rows)

    @_locked
    def ijk(self, rows=None) -> np.ndarray:
        """``(V, 3) int64`` voxel indices ``floor(p / voxel_size)``."""
        return self._gather("ijk", rows).astype(np.int64)

    @_locked
    def coords(self, rows=None) -> np.ndarray:
        """``(V, 3) float32`` voxel centres in the fixed frame, metres."""
        return ((self._gather("ijk", rows) + 0.5) * self.voxel_size).astype(np.float32)

    @_locked
    def colors(self, rows=None) -> np.ndarray:
        """``(V, 3) uint8`` running mean RGB."""
        return _rgb(self._gather("color", rows))

    @_locked
    def observations(self, rows=None) -> np.ndarray:
        """``(V,) uint32`` frames that observed each voxel."""
        return self._gather("obs", rows)

    @_locked
    def semantic_observations(self, rows=None) -> np.ndarray:
        """``(V,) uint32`` fusions that covered each voxel."""
        return self._gather("sem_obs", rows)

    @_locked
    def first_seen(self, rows=None) -> np.ndarray:
        """``(V,) int64`` stamp (ns) of each voxel's first observation."""
        return self._gather("first_seen", rows)

    @_locked
    def last_seen(self, rows=None) -> np.ndarray:
        """``(V,) int64`` stamp (ns) of each voxel's last observation."""
        return self._gather("last_seen", rows)

    @_locked
    def class_probs(self, rows=None) -> np.ndarray:
        """``(V, K) float32`` fused class probabilities (zeros where none was fused)."""
        rows = _as_rows(rows, self._cols.n)
        if not self._cols.has("probs"):
            return np.zeros((rows.shape[0], 0), dtype=np.float32)
        return np.take(self._cols["probs"], rows, axis=0)

    def _class_rows(self, rows) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """``(class weights (V,), class probabilities (V, K) or None)`` copied at ``rows``."""
        rows = _as_rows(rows, self._cols.n)
        if not (self._cols.has("probs") and self.class_names):
            return np.zeros(rows.shape[0], np.float32), None
        return np.take(self._cols["cls_w"], rows), np.take(self._cols["probs"], rows, axis=0)

    @_locked
    def labels(self, rows=None) -> np.ndarray:
        """``(V,) int32`` argmax of the fused class probabilities (ties: lowest label), -1
        where no class was fused."""
        return _labels(*self._class_rows(rows))

    @_locked
    def confidence(self, rows=None) -> np.ndarray:
        """``(V,) float32`` fused probability of :meth:`labels` (0 where none was fused)."""
        return _confidence(*self._class_rows(rows))

    @_locked
    def embedding_rows(self) -> np.ndarray:
        """``(V,) int64`` rows that hold a fused embedding."""
        return np.flatnonzero(self._cols["emb_w"] > 0)

    @_locked
    def embeddings(self, rows=None, dtype=np.float32) -> np.ndarray:
        """``(V, D)`` fused embeddings renormalised to unit length (zero rows where none was
        fused), as ``dtype`` (``np.float32``, or ``np.float16`` for messages: half the bytes).

        Raises:
            ValueError: the map holds no embeddings, or another ``dtype``.
        """
        rows = _as_rows(rows, self._cols.n)
        if not self._cols.has("emb"):
            raise ValueError("voxel map: no embeddings were fused (no translator?)")
        return unit_rows(self._cols["emb"], rows, dtype, self.threads)

    @_locked
    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """``(M,) int64`` row of each voxel key, -1 where the map does not hold it."""
        return self._index.lookup(np.asarray(keys, dtype=np.int64).reshape(-1))

    @_locked
    def select_box(self, lo, hi) -> np.ndarray:
        """Rows whose voxel centre lies in the box ``[lo, hi]`` (``(3,)`` metres each, fixed
        frame), ascending.

        Raises:
            ValueError: ``lo``/``hi`` not 3 finite numbers each.
        """
        lo, hi = np.asarray(lo, dtype=np.float64).reshape(-1), np.asarray(hi, dtype=np.float64).reshape(-1)
        if lo.shape != (3,) or hi.shape != (3,) or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError(f"select_box: lo and hi must be 3 finite metres each, got {lo} and {hi}")
        centres = (self._cols["ijk"] + 0.5) * self.voxel_size
        return np.flatnonzero(np.all((centres >= lo) & (centres <= hi), axis=1))

    @_locked
    def updated_since(self, version: int, kind: str = SEMANTIC) -> np.ndarray:
        """Rows updated after map version ``version`` (ascending): ``kind="semantic"`` by
        :meth:`fuse` (for an incremental language-features topic), ``"geometry"`` by
        :meth:`integrate_geometry`. Pass the :attr:`version` read with the previous result.

        Raises:
            ValueError: unknown kind.
        """
        if kind not in (SEMANTIC, GEOMETRY):
            raise ValueError(f"updated_since: kind must be {SEMANTIC!r} or {GEOMETRY!r}, got {kind!r}")
        return np.flatnonzero(self._cols["sem_ver" if kind == SEMANTIC else "geom_ver"] > int(version))

    def snapshot(self, since: Optional[int] = None, kind: str = SEMANTIC, box=None, embeddings: bool = False,
                 semantic_only: bool = False, embedding_dtype=np.float32) -> MapSnapshot:
        """A consistent copy of the voxels selected by every given criterion.

        Only the raw copy is taken under :attr:`lock`; labels, colours and the
        renormalisation of the embeddings are computed after releasing it, so a publisher
        holds up the worker's integration as little as possible.

        Args:
            since: only voxels updated after this version (see :meth:`updated_since`).
            kind: the update kind for ``since``.
            box: ``(lo, hi)`` corners in metres (see :meth:`select_box`).
            embeddings: include the unit embeddings (only rows that hold one are selected).
            semantic_only: only voxels with fused class probabilities or embeddings.
            embedding_dtype: ``np.float32`` or ``np.float16`` (see :meth:`embeddings`).

        Raises:
            ValueError: see :meth:`updated_since`, :meth:`select_box`, :meth:`embeddings`.
        """
        with self.lock:
            rows = self._select(since, kind, box, embeddings, semantic_only)
            cls_w, probs = self._class_rows(rows)
            raw = {c: self._gather(c, rows) for c in ("key", "ijk", "color", "obs")}
            emb = (self._gather("emb", rows) if embeddings and self._cols.has("emb") else None)
            fixed = dict(version=self._version, class_names=self.class_names, fixed_frame=self.fixed_frame,
                         voxel_size=self.voxel_size)
        ijk = raw["ijk"].astype(np.int64)
        coords = ((ijk + 0.5) * self.voxel_size).astype(np.float32)
        if emb is not None:
            emb = unit_rows(emb, np.arange(emb.shape[0]), embedding_dtype, self.threads)
        return MapSnapshot(rows=rows, keys=raw["key"], ijk=ijk, coords=coords, colors=_rgb(raw["color"]),
                           labels=_labels(cls_w, probs),
                           confidence=_confidence(cls_w, probs), observations=raw["obs"], embeddings=emb, **fixed)

    def _select(self, since, kind, box, embeddings: bool, semantic_only: bool) -> np.ndarray:
        """Rows meeting every criterion of :meth:`snapshot` (call with the lock held)."""
        mask = np.ones(self._cols.n, dtype=bool)
        if since is not None:
            if kind not in (SEMANTIC, GEOMETRY):
                raise ValueError(f"snapshot: kind must be {SEMANTIC!r} or {GEOMETRY!r}, got {kind!r}")
            mask &= self._cols["sem_ver" if kind == SEMANTIC else "geom_ver"] > int(since)
        if box is not None:
            inside = np.zeros_like(mask)
            inside[self.select_box(*box)] = True
            mask &= inside
        if embeddings:
            mask &= self._cols["emb_w"] > 0
        if semantic_only:
            mask &= (self._cols["cls_w"] > 0) | (self._cols["emb_w"] > 0)
        return np.flatnonzero(mask)

    @_locked
    def regions(self, relevance: np.ndarray, threshold: float, rows=None, max_regions: int = 10,
                min_voxels: int = 1) -> list[Region]:
        """Connected regions (26-neighbourhood) of the voxels with ``relevance >= threshold``,
        best first; see :func:`~concerto_ros.mapping.regions.find_regions`. ``relevance`` is
        per row of ``rows`` (default all rows); the regions' ``rows`` are map rows."""
        rows = _as_rows(rows, self._cols.n)
        found = find_regions(self.ijk(rows), relevance, self.voxel_size, threshold, max_regions, min_voxels)
        return [_replace(r, rows=rows[r.rows]) for r in found]

    @_locked
    def touch_reserved(self) -> int:
        """Map the pages of every reserved row now (the count bound reserves them at
        construction, untouched): the first seconds in new space then do not page-fault the
        map's memory on the integration thread. Returns the bytes touched; the resident set
        grows by about that much at once instead of as the map fills."""
        with self.lock:
            return self._cols.touch_reserved()

    @_locked
    def stats(self) -> MapStats:
        """Size, memory and eviction counters, read under the map's lock (the node's
        diagnostics timer calls it while the integration thread appends and evicts rows: two
        column views read without it had different lengths, seen in a soak)."""
        c = self._counters
        semantic = int(np.count_nonzero((self._cols["cls_w"] > 0) | (self._cols["emb_w"] > 0)))
        return MapStats(num_voxels=self._cols.n, semantic_voxels=semantic, capacity=self._cols.capacity,
                        bytes_used=self._cols.nbytes() + self._index.nbytes(), evicted_radius=c.evicted_radius,
                        evicted_count=c.evicted_count, frames_integrated=c.frames_integrated, fusions=c.fusions,
                        fuse_missing=c.fuse_missing, version=self._version)

    @_locked
    def clear(self) -> None:
        """Forget every voxel (settings, identity and counters stay)."""
        self._cols.clear()
        self._index.clear()
        self._sweep_origin = None
        self._version += 1

    # ------------------------------------------------------------------ files
    _SAVED = (("keys", "key"), ("color", "color"), ("observations", "obs"), ("first_seen", "first_seen"),
              ("last_seen", "last_seen"), ("semantic_observations", "sem_obs"), ("class_weight", "cls_w"),
              ("class_probs", "probs"), ("embedding_weight", "emb_w"), ("embeddings", "emb"))

    @_locked
    def save(self, path: str | Path) -> Path:
        """Write the map to one ``.npz`` file (see :mod:`concerto_ros.mapping.io`); atomic."""
        arrays = {name: self._cols[col] for name, col in self._SAVED if self._cols.has(col)}
        c = self._counters
        counters = {"frames_integrated": c.frames_integrated, "fusions": c.fusions, "fuse_missing": c.fuse_missing,
                    "evicted_radius": c.evicted_radius, "evicted_count": c.evicted_count}
        return write_map_npz(path, self._identity, arrays, counters)

    @classmethod
    def load(cls, path: str | Path, expect: Optional[MapIdentity] = None, ignore: Sequence[str] = (),
             **kwargs) -> "SemanticVoxelMap":
        """Read a map saved by :meth:`save`.

        Args:
            expect: the identity the caller runs with; every differing field (except those in
                ``ignore``) is refused at once.
            kwargs: constructor settings that are not saved (``max_voxels``, ``radius``,
                ``evict_slack``, ``threads``, ``log``).

        Raises:
            FileNotFoundError, ValueError (not a map, corrupt),
            :class:`~concerto_ros.mapping.io.MapMismatchError` (message names each field and
            both values).
        """
        ident, arrays, counters = read_map_npz(path, expect, ignore)
        m = cls(ident.voxel_size, ident.fixed_frame, class_names=ident.class_names, model_id=ident.model_id,
                text_encoder=ident.text_encoder, text_model=ident.text_model, temperature=ident.temperature,
                embedding_dim=ident.text_dim, **kwargs)
        m._restore(arrays, counters, path)
        return m

    def _restore(self, arrays: dict, counters: dict, path) -> None:
        keys = arrays["keys"].astype(np.int64)
        n = keys.shape[0]
        order = np.argsort(keys, kind="stable")
        if n and np.any(np.diff(keys[order]) <= 0):
            raise ValueError(f"{path}: corrupt map (repeated voxel keys)")
        ijk = unpack_keys(keys)
        check_indices(ijk, str(path))
        sl = self._cols.append(n)
        self._version = 1
        for name, col in self._SAVED:
            if name in arrays and self._cols.has(col):
                self._cols[col][sl] = arrays[name]
        self._cols["ijk"][sl] = ijk
        self._cols["geom_ver"][sl] = self._version
        self._cols["sem_ver"][sl] = np.where((self._cols["cls_w"] > 0) | (self._cols["emb_w"] > 0), 1, 0)
        self._index.insert(keys[order], order.astype(np.int64))
        for k in ("frames_integrated", "fusions", "fuse_missing", "evicted_radius", "evicted_count"):
            setattr(self._counters, k, int(counters.get(k, 0)))

    @_locked
    def export_ply(self, path: str | Path, rows=None, extra: Optional[dict[str, np.ndarray]] = None) -> Path:
        """Binary PLY of the voxel centres: ``x y z`` float32 (m), ``red green blue`` uint8,
        ``label`` int32 (-1 = none), ``confidence`` float32, ``observations`` uint32, then one
        float32 property per ``extra`` entry (``{name: (V,) values}``, e.g. a relevance).

        Raises:
            ValueError: an ``extra`` array without one value per exported voxel.
        """
        rows = _as_rows(rows, self._cols.n)
        xyz, rgb = self.coords(rows), self.colors(rows)
        columns = {"x": (xyz[:, 0], "f4"), "y": (xyz[:, 1], "f4"), "z": (xyz[:, 2], "f4"),
                   "red": (rgb[:, 0], "u1"), "green": (rgb[:, 1], "u1"), "blue": (rgb[:, 2], "u1"),
                   "label": (self.labels(rows), "i4"), "confidence": (self.confidence(rows), "f4"),
                   "observations": (self.observations(rows), "u4")}
        for name, values in (extra or {}).items():
            columns[name] = (np.asarray(values, dtype=np.float32), "f4")
        return write_vertex_ply(path, columns)


def _rgb(color: np.ndarray) -> np.ndarray:
    """Running mean colours ``(V, 3) float32`` as ``uint8``."""
    return np.clip(np.rint(color), 0, 255).astype(np.uint8)


def _labels(cls_w: np.ndarray, probs: Optional[np.ndarray]) -> np.ndarray:
    """Argmax labels ``(V,) int32`` of class probabilities, -1 where the weight is 0."""
    out = np.full(cls_w.shape[0], -1, dtype=np.int32)
    if probs is not None:
        has = cls_w > 0
        out[has] = probs[has].argmax(axis=1)
    return out


def _confidence(cls_w: np.ndarray, probs: Optional[np.ndarray]) -> np.ndarray:
    """Largest class probability ``(V,) float32``, 0 where the weight is 0."""
    out = np.zeros(cls_w.shape[0], dtype=np.float32)
    if probs is not None:
        has = cls_w > 0
        out[has] = probs[has].max(axis=1)
    return out


def _replace(obj, **changes):
    return dataclasses.replace(obj, **changes)


def _combine(keys: np.ndarray, conf: np.ndarray, probs, emb):
    """Combine observations of equal keys: summed confidence, confidence-weighted means."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1]]))
    c = conf[order]
    csum = np.add.reduceat(c, starts)
    safe = np.where(csum > 0, csum, 1.0).astype(np.float32)

    def mean(x):
        if x is None:
            return None
        xs = np.take(x, order, axis=0).astype(np.float32) * c[:, None]
        return np.add.reduceat(xs, starts, axis=0) / safe[:, None]

    return sk[starts], csum.astype(np.float32), mean(probs), mean(emb)
