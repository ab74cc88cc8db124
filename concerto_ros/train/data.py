"""Every training command's data: recordings read through the one owner, lifted and windowed
by the node's own pipeline; the 2D target cache; clips.

Sources are the :class:`~concerto_ros.recordings.Source` schema of replay and evaluation:
``data.sources`` / ``data.train`` / ``data.test`` entries of a training config, and
``--data`` / ``--source`` / ``--train`` / ``--test`` on the command line (a path, or inline
YAML such as ``"{type: points, path: X.npy, labels: L.npy, label_names: nyu40}"``): RGB-D
folders, PCD files, point arrays, SemanticKITTI scans, rosbag2 (MCAP, sqlite3), ROS 1
``.bag`` and ROS 1 MCAP.

* **Units** (:func:`expand_sources`): a scene collection (PCD files, point arrays or scans
  without poses: ``independent_frames``) gives one :class:`TrainUnit` per scene, any other
  recording one for the whole sequence. Units are what the processes of a torchrun job
  share out and what the prepared-data cache keys.
* **Frames** (:func:`unit_frames`): frame-level sources through ``rec.frames()`` (one
  ``rec.read(i)`` for a scene unit), bags through the node's frame stream
  (:class:`~concerto_ros.bag.replay.BagSession`: topics, sync, decode, validation, TF poses
  and skip accounting; a bag's label-image topic or PointCloud2 label field is its ground
  truth), exactly as ``concerto eval`` reads them
  (:func:`concerto_ros.evaluation.run.source_frames`). Frames the pipeline cannot use are
  counted, never raised.
* **Lifting and windows**: :meth:`~concerto_ros.pipeline.PerceptionPipeline.lift_frame`
  (depth limits ``lift.min_depth``/``max_depth`` for depth images, ranges
  ``lift.min_range``/``max_range`` for point clouds, from the sensor) into the fixed frame,
  then the node's sliding window (``window.*``): :func:`iter_windows` for the labelled
  commands (``probe``, ``translator``), :func:`load_recording` for the self-supervised ones
  (``ssl``, ``cross4d``), which build their own windows from the lifted frames.

Labels: a source with ``label_names`` gives class indices of its label set, matched to the
command's classes by name (:class:`ClassMap`); without it the file's values are the raw
labels the command maps itself (``data.label_map``, ``data.label_ids``).

Held-out points (:func:`heldout_mask`): a deterministic 3D split in the fixed frame. Space is
cut into cubes of ``block`` metres; a hash of the cube index puts ``fraction`` of the cubes
into the held-out set.
"""

from __future__ import annotations

import copy
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from concerto_ros.cloud.window import VideoPointCloud
from concerto_ros.models.cross4d import sample_indices, window_frame_points
from concerto_ros.models.projection import dense_targets
from concerto_ros.models.teachers import teacher_cache_key, teacher_grid
from concerto_ros.recordings import Source, parse_sources
from concerto_ros.sensors.types import CameraIntrinsics, PointFrame

__all__ = ["TrainUnit", "expand_sources", "recording_key", "source_fingerprint", "unit_frames", "lift_frames",
           "lifting_pipeline", "training_pipeline", "RecordingFrame", "Recording", "load_recording", "TrainWindow", "yaw_transforms",
           "iter_windows", "ClassMap", "classes_of_label_sets", "TargetCache", "heldout_mask", "ClipFrame", "Clip",
           "build_clips", "collate"]


# ----------------------------------------------------------------------------- units
@dataclass(frozen=True)
class TrainUnit:
    """One recording of a training source, or one scene of a scene collection.

    Attributes:
        source: the parsed :class:`~concerto_ros.recordings.Source`.
        frame: index of the scene in a scene collection (``rec.read(frame)``), or None for
            the whole recording (a sequence: RGB-D folder, bag, posed scans).
    """

    source: Source
    frame: Optional[int] = None

    @property
    def name(self) -> str:
        """``<file or folder name>`` (``[<scene index>]`` for a scene unit), for logs."""
        return self.source.path.name + (f"[{self.frame}]" if self.frame is not None else "")

    def describe(self) -> dict:
        """The source's keys plus ``frame``, JSON-able (cache keys, summaries)."""
        return {**self.source.to_dict(), "frame": self.frame}


def _open(src: Source):
    from concerto_ros.recordings import open_recording

    return open_recording(src)


def expand_sources(sources: Any) -> list[TrainUnit]:
    """The units of ``sources`` (a list of dicts, paths or inline YAML; see the module
    docstring): one per scene of a scene collection, one per other recording, in order.

    Raises:
        concerto_ros.recordings.RecordingError (a ValueError): an invalid source, a missing
            or unreadable path (one line naming it).
    """
    units: list[TrainUnit] = []
    for src in parse_sources(list(sources)):
        rec = _open(src)
        if rec.kind == "frames" and getattr(rec, "independent_frames", False):
            units += [TrainUnit(src, i) for i in range(len(rec))]
        else:
            units.append(TrainUnit(src))
    return units


def recording_key(path: str | Path) -> str:
    """``<name>-<sha1(resolved path)[:8]>``: the folder of a recording in the target cache."""
    p = Path(path).resolve()
    return f"{p.name}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"


def source_fingerprint(path: str | Path) -> str:
    """sha1 of the relative name, size and modification time of every file under ``path`` (or
    of ``path`` itself): changes when a recording is re-written, for cache keys."""
    p = Path(path).expanduser()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    h = hashlib.sha1(str(p.resolve()).encode())
    for q in files:
        st = q.stat()
        h.update(f"{q.relative_to(p) if p.is_dir() else q.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- frames
def lifting_pipeline(node, log: Callable[[str], Any] | None = None):
    """The node's pipeline for lifting and windowing alone (``ssl``, ``cross4d``, raw
    features): ``node`` with the seeded random ``tiny`` encoder (built, never run), no
    head/translator files and no map.

    Args:
        node: the node's :class:`~concerto_ros.config.PerceptionConfig` (copied).
    """
    from concerto_ros.pipeline import PerceptionPipeline

    cfg = copy.deepcopy(node)
    cfg.model.bundle, cfg.model.checkpoint, cfg.model.enabled, cfg.model.preset = "", "", True, "tiny"
    cfg.cross4d.enabled, cfg.cross4d.checkpoint, cfg.head.checkpoint, cfg.language.translator = False, "", "", ""
    cfg.map.enabled, cfg.publish.features = False, False
    return PerceptionPipeline(cfg, log=log, warn=lambda _m: None)


def training_pipeline(node, log: Callable[[str], Any] | None = None):
    """The node's pipeline for computing training features: ``node`` (a copy) without the
    persistent map and feature colours, which training never reads. Its models are the
    node's (``model.*``, ``cross4d.*``, ``head.*`` or ``model.bundle``)."""
    from concerto_ros.pipeline import PerceptionPipeline

    cfg = copy.deepcopy(node)
    cfg.map.enabled, cfg.publish.features = False, False
    return PerceptionPipeline(cfg, log=log)


def unit_frames(unit: TrainUnit, pipeline, skips, log: Callable[[str], Any] | None = None,
                transform: np.ndarray | None = None) -> Iterator:
    """Posed :class:`~concerto_ros.recordings.SensorFrame` of ``unit`` for ``pipeline``, as
    ``concerto eval`` reads them (bags: the node's frame stream with the pipeline's topics,
    sync, TF and fixed frame, overridden by the source's ``topics``/``fixed_frame``, and the
    source's ``max_frames``/``stride`` on the synced frames; labels as class indices of the
    source's label set, else the file's values).

    Args:
        pipeline: the :class:`~concerto_ros.pipeline.PerceptionPipeline` the frames are for
            (a bag without localisation clears its ``cfg.fixed_frame``, see
            :class:`~concerto_ros.bag.replay.BagSession`).
        skips: :class:`~concerto_ros.sensors.skips.SkipCounter` of skipped messages.
        transform: ``(4, 4)`` rotation of the world applied to every frame
            (:func:`concerto_ros.augment.rotate_frame`), or None.

    Raises:
        concerto_ros.recordings.RecordingError: an unreadable recording (one line).
        ValueError: a bag without the configured topics.
    """
    import itertools

    from concerto_ros.augment import rotate_frame
    from concerto_ros.evaluation.run import source_frames

    rec = _open(unit.source)
    if unit.frame is None:
        frames, _ = source_frames(rec, pipeline.cfg, pipeline, skips, log, "sequence", transform)
        if rec.kind == "messages":  # frame-level readers apply the source's max_frames / stride themselves
            frames = itertools.islice(frames, 0, unit.source.max_frames or None, unit.source.stride)
        yield from frames
        return
    frame = rec.read(unit.frame)
    yield rotate_frame(frame, transform) if transform is not None else frame


def lift_frames(unit: TrainUnit, pipeline, skips, log=None, transform=None) -> Iterator[tuple[Any, PointFrame]]:
    """``(SensorFrame, lifted PointFrame)`` of every usable frame of ``unit``
    (:meth:`~concerto_ros.pipeline.PerceptionPipeline.lift_frame`; frames it refuses are
    counted in ``skips``)."""
    from concerto_ros.bag.replay import process_frames

    return process_frames(pipeline, unit_frames(unit, pipeline, skips, log, transform), skips,
                          step=pipeline.lift_frame)


def _camera(frame) -> tuple[Optional[np.ndarray], Optional[CameraIntrinsics], Optional[np.ndarray]]:
    """``(RGB image, intrinsics, T_world_cam)`` of a frame with a camera image, else Nones."""
    if frame.rgbd is None:
        return None, None, None
    return frame.image if frame.image is not None else frame.rgbd.color, frame.rgbd.intrinsics, frame.T_world_sensor


# ----------------------------------------------------------------------------- recordings (ssl, cross4d)
@dataclass
class RecordingFrame:
    """One lifted frame of a recording.

    Attributes:
        key: frame name, unique in the recording (file stem, or the stamp for bags).
        rgb: ``(H, W, 3) uint8`` colour image, or None (point clouds without a camera).
        points: the lifted :class:`PointFrame` (fixed frame).
        intrinsics: camera intrinsics (pixels), or None without an image.
        T_world_cam: ``(4, 4) float64`` camera optical frame -> fixed frame, or None.
    """

    key: str
    rgb: Optional[np.ndarray]
    points: PointFrame
    intrinsics: Optional[CameraIntrinsics] = None
    T_world_cam: Optional[np.ndarray] = None

    @property
    def stamp_ns(self) -> int:
        return self.points.stamp_ns


@dataclass
class Recording:
    """A loaded recording: its target-cache key, path and lifted frames in time order."""

    key: str
    path: Path
    frames: list[RecordingFrame]


def load_recording(unit: TrainUnit | Any, node=None, log: Callable[[str], Any] | None = None) -> Recording:
    """Read and lift one unit (a :class:`TrainUnit`, or anything a source entry may be: the
    whole recording) with the node's settings.

    Args:
        node: the node's :class:`~concerto_ros.config.PerceptionConfig` (defaults when
            None): lifting, topics, sync, TF and ``fixed_frame``.

    Returns:
        :class:`Recording` (key: :func:`recording_key` of the source path, shared by the scene
        units of one collection; frame keys are unique within it).

    Raises:
        ValueError / RecordingError: an unreadable source, a bag without the configured
            topics, or no usable frame (with the skip counts).
    """
    from concerto_ros.config import PerceptionConfig
    from concerto_ros.sensors.skips import SkipCounter

    if not isinstance(unit, TrainUnit):
        unit = TrainUnit(parse_sources([unit])[0])
    pipeline = lifting_pipeline(node or PerceptionConfig())
    skips = SkipCounter(None)
    frames = []
    for frame, pf in lift_frames(unit, pipeline, skips, log):
        rgb, intr, T = _camera(frame)
        frames.append(RecordingFrame(str(frame.key), rgb, pf, intr, None if T is None else np.asarray(T, np.float64)))
    if not frames:
        raise ValueError(f"{unit.source.path}: no usable frame ({skips.as_dict() or 'the recording is empty'})")
    if skips.total and log is not None:
        log(f"{unit.name}: frames skipped {skips.as_dict()}")
    return Recording(recording_key(unit.source.path), unit.source.path, frames)


# ----------------------------------------------------------------------------- windows (probe, translator)
@dataclass
class TrainWindow:
    """One window of a labelled command, as the node builds it.

    Attributes:
        keyframe: the pipeline's :class:`~concerto_ros.pipeline.Keyframe` (``window``: the
            voxelised :class:`~concerto_ros.cloud.window.WindowCloud`, in the rotated world
            when ``transform`` is set); ``pipeline.encode(keyframe)`` runs the node's models.
        frame: the window's newest :class:`~concerto_ros.recordings.SensorFrame` (rotated).
        unit: where it comes from; label_set: the source's label set or None (raw labels).
        transform: ``(4, 4)`` yaw applied to the world (augmentation), or None.
    """

    keyframe: Any
    frame: Any
    unit: TrainUnit
    label_set: Any = None
    transform: Optional[np.ndarray] = None

    @property
    def window(self):
        return self.keyframe.window

    def original_coords(self) -> np.ndarray:
        """``(M, 3) float32`` voxel coordinates in the unrotated fixed frame (held-out cubes
        are drawn there, so a cube is held out in every rotated copy)."""
        c = np.asarray(self.window.coord, np.float64)
        if self.transform is None:
            return c.astype(np.float32)
        R, t = self.transform[:3, :3], self.transform[:3, 3]
        return ((c - t) @ R).astype(np.float32)


def _with_last(items: Iterable) -> Iterator[tuple[Any, bool]]:
    """``(item, is_last)`` pairs (one item of look-ahead)."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


def yaw_transforms(unit: TrainUnit, augment, seed: int) -> list[Optional[np.ndarray]]:
    """The world rotations of ``unit``'s copies: ``[None]`` without yaw augmentation, else
    ``augment.copies`` ``(4, 4)`` rotations by yaws drawn uniformly in ``[-augment.max_deg,
    augment.max_deg)`` degrees about ``augment.up_axis`` through the origin
    (:func:`concerto_ros.augment.yaw_transform`), seeded by ``seed`` and the unit's
    description with every path cut to its last component: every process, and every run with
    the same seed, draws the same, wherever the data lie (a folder moved or named through
    another relative path keeps its yaws).

    Args:
        augment: a :class:`~concerto_ros.train.config.AugmentConfig`, or None.
    """
    from concerto_ros.augment import yaw_transform

    if augment is None or not augment.yaw:
        return [None]
    key = {k: Path(v).name if isinstance(v, str) and ("/" in v or os.sep in v) else v
           for k, v in unit.describe().items()}
    rng = np.random.default_rng([int(seed), zlib.crc32(repr(key).encode())])
    lim = float(augment.max_deg)
    return [yaw_transform(float(rng.uniform(-lim, lim)), augment.up_axis) for _ in range(int(augment.copies))]


def iter_windows(units: Sequence[TrainUnit], pipeline, window_stride: int = 1, augment=None, seed: int = 0,
                 require_labels: bool = True, skips=None, log: Callable[[str], Any] | None = None) -> Iterator[TrainWindow]:
    """The node's windows of ``units``, for the labelled commands.

    Every frame is lifted and pushed into the pipeline's window (reset before each unit and
    each yaw copy); a scene unit is a window of its own; of a sequence every
    ``window_stride``-th window and the last are yielded (the others' frames are only
    pushed). Nothing is encoded here: ``pipeline.encode(w.keyframe)`` does it.

    Args:
        units: from :func:`expand_sources`.
        pipeline: the node's :class:`~concerto_ros.pipeline.PerceptionPipeline`.
        augment: yaw augmentation (:func:`yaw_transforms`), or None.
        require_labels: refuse a unit whose frames carry no labels.

    Raises:
        ValueError: a unit without labels (``require_labels``); see :func:`unit_frames`.
    """
    from concerto_ros.sensors.skips import SkipCounter

    skips = skips if skips is not None else SkipCounter(log)
    stride, fixed_frame = max(1, int(window_stride)), pipeline.cfg.fixed_frame
    for unit in units:
        label_set = _open(unit.source).label_set
        for T in yaw_transforms(unit, augment, seed):
            pipeline.reset()
            pipeline.cfg.fixed_frame = fixed_frame  # a bag without localisation may have cleared it
            for i, ((frame, pf), last) in enumerate(_with_last(lift_frames(unit, pipeline, skips, log, T))):
                if require_labels and pf.labels is None:
                    raise ValueError(f"{unit.source.path} has no labels: RGB-D folders need labels/, point arrays "
                                     "'labels: L.npy', PCD files a label field, bags a label topic or field")
                use = last or (i + 1) % stride == 0
                kf = pipeline.integrate(pf, force_keyframe=use, keyframe_policy=False)
                if kf is not None:
                    yield TrainWindow(kf, frame, unit, label_set, T)


# ----------------------------------------------------------------------------- labels
class ClassMap:
    """Window labels -> the command's class indices.

    Args:
        classes: the command's class names (head or translator order).
        raw: ``(N,) int64 raw labels -> (N,) int64`` class indices (``-1`` ignored) for
            sources without a label set, or None (then such sources are refused).

    A source's label set (``label_names``) gives class indices of the set; each set class
    maps to the command's class of the same name, or one of its synonyms
    (case-insensitive), else to ``-1``.
    """

    def __init__(self, classes: Sequence[str], raw: Callable[[np.ndarray], np.ndarray] | None = None):
        self.classes = [str(c) for c in classes]
        self.raw = raw
        self._index = {c.strip().lower(): i for i, c in enumerate(self.classes)}
        self._luts: dict[int, np.ndarray] = {}

    def lut(self, label_set) -> np.ndarray:
        """``(K_set + 1,) int64``: the command's class of each set class, then ``-1``."""
        key = id(label_set)
        if key not in self._luts:
            out = []
            for name in label_set.classes:
                keys = [name, *label_set.synonyms.get(name, ())]
                out.append(next((self._index[k.strip().lower()] for k in keys if k.strip().lower() in self._index), -1))
            self._luts[key] = np.array(out + [-1], dtype=np.int64)
        return self._luts[key]

    def __call__(self, labels: np.ndarray | None, label_set=None, where: str = "") -> np.ndarray:
        """``(N,) int64`` class indices (``-1``: ignored) of window labels.

        Raises:
            ValueError: raw labels without a ``raw`` mapping (the message names ``where``).
        """
        if labels is None:
            raise ValueError(f"{where}: no labels")
        y = np.asarray(labels, dtype=np.int64)
        if label_set is not None:
            lut = self.lut(label_set)
            return lut[np.where((y >= 0) & (y < len(lut) - 1), y, -1)]
        if self.raw is None:
            raise ValueError(f"{where}: its labels name no classes; add label_names to the source (nyu40, scannet20, "
                             "semantickitti, mosd, a YAML file or a list of class names)")
        return self.raw(y)


def classes_of_label_sets(units: Sequence[TrainUnit]) -> list[str]:
    """The class names of the units' label sets, in order of first appearance (``[]`` when
    none has one)."""
    names: list[str] = []
    seen: set[str] = set()
    for unit in units:
        ls = _open(unit.source).label_set
        for c in (ls.classes if ls is not None else ()):
            if c.strip().lower() not in seen:
                seen.add(c.strip().lower())
                names.append(c)
    return names


# ----------------------------------------------------------------------------- targets and clips
class TargetCache:
    """Teacher patch grids on disk: ``<root>/<recording key>/<teacher key>/<frame key>.pt``.

    Each file holds the ``(C, Hp, Wp) float16`` grid of one frame; it is computed once and
    reused by every later run with the same recording, frame and teacher (weights and input
    size are part of the teacher key, see :func:`teacher_cache_key`).

    Attributes:
        hits, misses: counters of :meth:`grid` calls.
    """

    def __init__(self, root: str | Path, teacher, short_side: int = 224, device: torch.device | str = "cpu"):
        self.root = Path(root).expanduser()
        self.teacher = teacher
        self.short_side = int(short_side)
        self.device = device
        self.teacher_key = teacher_cache_key(teacher, short_side)
        self.hits = 0
        self.misses = 0

    @property
    def channels(self) -> int:
        """Width ``C`` of the teacher's patch features."""
        return int(self.teacher.embed_dim)

    def path(self, recording: str, frame: str) -> Path:
        return self.root / recording / self.teacher_key / f"{frame}.pt"

    def targets(self, recording: str, frame: RecordingFrame, coord: np.ndarray, lookup: str = "bilinear",
                tolerance: float = 0.05) -> tuple[torch.Tensor, np.ndarray]:
        """Dense targets of ``coord (M, 3)`` (fixed frame, metres) from ``frame``'s image
        (:func:`~concerto_ros.models.projection.dense_targets`): ``((M, C) float32, (M,) bool
        visible)``; all invisible (zeros) for a frame without an image."""
        if frame.rgb is None:
            return torch.zeros(len(coord), self.channels), np.zeros(len(coord), dtype=bool)
        grid = self.grid(recording, frame.key, frame.rgb)
        tgt, vis = dense_targets(coord, grid, frame.intrinsics, frame.T_world_cam, mode=lookup, tolerance=tolerance)
        return tgt, np.asarray(vis, dtype=bool)

    def grid(self, recording: str, frame: str, rgb: np.ndarray) -> torch.Tensor:
        """``(C, Hp, Wp) float32`` teacher grid of ``rgb``, from disk when cached."""
        p = self.path(recording, frame)
        if p.is_file():
            self.hits += 1
            return torch.load(p, map_location="cpu", weights_only=True).float()
        self.misses += 1
        g = teacher_grid(self.teacher, rgb, self.short_side, self.device)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")  # several processes may fill one cache
        torch.save(g.half(), tmp)
        tmp.replace(p)
        return g.half().float()


def heldout_mask(points: np.ndarray, block: float, fraction: float) -> np.ndarray:
    """``(N,) bool``: points in held-out cubes of ``block`` metres (hash of the cube index;
    about ``fraction`` of the cubes). Deterministic across runs and machines."""
    if fraction <= 0:
        return np.zeros(len(points), dtype=bool)
    c = np.floor(np.asarray(points, np.float64) / block).astype(np.int64)
    h = (c[:, 0] * 73856093) ^ (c[:, 1] * 19349663) ^ (c[:, 2] * 83492791)
    h = (h * 2654435761) & 0xFFFFFFFF
    return (h % 10007) < fraction * 10007


@dataclass
class ClipFrame:
    """One frame of a clip: the voxels its points fall in.

    Attributes:
        points: ``(V, 3) float32`` voxel representatives, metres, fixed frame.
        colors: ``(V, 3) float32`` RGB in [0, 1].
        targets: ``(V, C) float16`` dense teacher targets (zeros where not visible).
        visible: ``(V,) bool`` target available (in view and not occluded).
        heldout: ``(V,) bool`` in a held-out cube.
    """

    points: np.ndarray
    colors: np.ndarray
    targets: torch.Tensor
    visible: np.ndarray
    heldout: np.ndarray


@dataclass
class Clip:
    """A window of T frames (oldest first) with per-frame times (seconds from its first frame)
    and the clip-level (global) target ``(C,)``: the mean of its frames' mean patch features."""

    recording: str
    frames: list[ClipFrame]
    times: np.ndarray
    global_target: torch.Tensor
    frame_keys: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def build_clips(recording: Recording, cache: TargetCache, num_frames: int, voxel_size: float,
                lookup: str = "bilinear", zbuffer_tolerance: float = 0.05, heldout_block: float = 0.25,
                heldout_fraction: float = 0.2, min_frames: int = 1) -> list[Clip]:
    """Slide a :class:`VideoPointCloud` of ``num_frames`` frames over the recording; every
    push with at least ``min_frames`` frames in the window gives one :class:`Clip`."""
    missing = [f.key for f in recording.frames if f.rgb is None]
    if missing:
        raise ValueError(f"{recording.path}: Cross4D distillation needs a camera image in every frame; frames "
                         f"{missing[:3]}{' ...' if len(missing) > 3 else ''} have none (point clouds without a camera)")
    vpc = VideoPointCloud(num_frames=num_frames, voxel_size=voxel_size)
    grids = {}
    clips = []
    frames = recording.frames
    for i, rf in enumerate(frames):
        vpc.push(rf.points)
        if len(vpc) < min_frames:
            continue
        win = vpc.build()
        first = i - len(vpc) + 1
        cfs = []
        gmeans = []
        for j in range(len(vpc)):
            f = frames[first + j]
            if f.key not in grids:
                grids[f.key] = cache.grid(recording.key, f.key, f.rgb)
            g = grids[f.key]
            vox, _ = window_frame_points(win, j)
            pts = win.coord[vox]
            tgt, vis = dense_targets(pts, g, f.intrinsics, f.T_world_cam, mode=lookup, tolerance=zbuffer_tolerance)
            cfs.append(ClipFrame(points=pts.astype(np.float32), colors=win.color[vox].astype(np.float32) / 255.0,
                                 targets=tgt.half(), visible=vis, heldout=heldout_mask(pts, heldout_block, heldout_fraction)))
            gmeans.append(g.mean(dim=(1, 2)))
        times = (win.stamps_ns - win.stamps_ns[0]).astype(np.float64) * 1e-9
        clips.append(Clip(recording.key, cfs, times.astype(np.float32), torch.stack(gmeans).mean(0),
                          [frames[first + j].key for j in range(len(vpc))]))
    return clips


def collate(clips: Iterable[Clip], points_per_frame: int, rng: Optional[np.random.Generator] = None,
            full_query: bool = False) -> dict[str, torch.Tensor]:
    """Stack clips with the same T into encoder inputs.

    Each frame's points are subsampled to ``points_per_frame`` (random with ``rng``, evenly
    spaced without). With ``full_query`` the query/targets are *all* points of each frame
    (padded to the longest, ``qvalid`` marks real ones), as the node evaluates them.

    Returns:
        dict: ``points (B, T, N, 3)``, ``feats (B, T, N, 3)`` colours, ``times (B, T)``,
        ``query (B, T, Q, 3)``, ``query_feats``, ``targets (B, T, Q, C) float32``,
        ``train_mask`` / ``heldout_mask`` ``(B, T, Q) bool`` (visible and not / in
        held-out cubes), ``global_target (B, C)``.

    Raises:
        ValueError: clips with different T.
    """
    clips = list(clips)
    t = {c.num_frames for c in clips}
    if len(t) != 1:
        raise ValueError(f"collate: clips must have the same number of frames, got {sorted(t)}")
    P, F_, Q, QF, TG, TM, HM = [], [], [], [], [], [], []
    qlen = max(len(f.points) for c in clips for f in c.frames) if full_query else points_per_frame
    for c in clips:
        p_, f_, q_, qf_, tg_, tm_, hm_ = [], [], [], [], [], [], []
        for f in c.frames:
            idx = sample_indices(len(f.points), points_per_frame, rng)
            p_.append(f.points[idx])
            f_.append(f.colors[idx])
            if full_query:
                n = len(f.points)
                qi = np.concatenate([np.arange(n), np.zeros(qlen - n, dtype=np.int64)])
                real = np.arange(qlen) < n
            else:
                qi, real = idx, np.ones(len(idx), dtype=bool)
            q_.append(f.points[qi])
            qf_.append(f.colors[qi])
            tg_.append(f.targets[torch.as_tensor(qi)].float())
            vis = f.visible[qi] & real
            tm_.append(vis & ~f.heldout[qi])
            hm_.append(vis & f.heldout[qi])
        P.append(np.stack(p_)); F_.append(np.stack(f_)); Q.append(np.stack(q_)); QF.append(np.stack(qf_))
        TG.append(torch.stack(tg_)); TM.append(np.stack(tm_)); HM.append(np.stack(hm_))
    return {
        "points": torch.as_tensor(np.stack(P)), "feats": torch.as_tensor(np.stack(F_)),
        "times": torch.as_tensor(np.stack([c.times for c in clips])),
        "query": torch.as_tensor(np.stack(Q)), "query_feats": torch.as_tensor(np.stack(QF)),
        "targets": torch.stack(TG), "train_mask": torch.as_tensor(np.stack(TM)),
        "heldout_mask": torch.as_tensor(np.stack(HM)),
        "global_target": torch.stack([c.global_target for c in clips]).float(),
    }
