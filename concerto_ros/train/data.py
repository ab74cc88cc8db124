"""Every training command's data access: recordings, labelled scenes, the target cache, clips.

One function reads a ``data.sources`` entry for the self-supervised commands,
:func:`load_recordings` (the point to swap when the ``recordings`` package lands); for the
labelled commands :func:`list_labelled` expands ``data.train`` / ``data.test`` /
``data.sources`` entries and :func:`load_labelled_points` / :func:`iter_folder_frames` read
them. Lifting, topics, sync, TF and the fixed frame always come from the node's
:class:`~concerto_ros.config.PerceptionConfig` (``node.*`` of the training config), for bags,
RGB-D folders and PCD files alike.

Sources are rosbag2 recordings (RGB-D + CameraInfo + TF, decoded exactly as the node does
with :class:`~concerto_ros.pipeline.RGBDFrameAssembler` and the bag's TF tree) or RGB-D
folders (:func:`~concerto_ros.bag.convert_rgbd.scan_rgbd_folder` layout). Every frame is
lifted with :func:`~concerto_ros.sensors.lifting.lift_depth` into the fixed frame and pushed
into a :class:`~concerto_ros.cloud.window.VideoPointCloud`; after every push the window is
voxelised and becomes one clip (so early clips hold fewer frames, as in the node).

Clip frame ``i`` consists of the voxels its points fall in (coordinates = the window's voxel
representatives), which is also what :class:`~concerto_ros.models.cross4d.Cross4DFeatureExtractor`
feeds the encoder live. Each such point is projected into frame ``i``'s image with the
frame's intrinsics and pose (z-buffer visibility), and takes the teacher's patch feature
there as its dense target (:func:`~concerto_ros.models.projection.dense_targets`). The
teacher's patch grids are cached on disk per (recording, frame, teacher) by
:class:`TargetCache`.

Held-out points: a deterministic 3D split in the fixed frame. Space is cut into cubes of
``heldout_block`` metres; a hash of the cube index puts ``heldout_fraction`` of the cubes
into the held-out set. Their targets are never used for training (their geometry still is
encoder input, as every point is for the node), and the held-out cosine similarity is
measured on them.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from concerto_ros.cloud.window import VideoPointCloud
from concerto_ros.models.cross4d import sample_indices, window_frame_points
from concerto_ros.models.projection import dense_targets
from concerto_ros.models.teachers import teacher_cache_key, teacher_grid
from concerto_ros.sensors.lifting import lift_depth
from concerto_ros.sensors.types import CameraIntrinsics, PointFrame, RGBDFrame

__all__ = ["RecordingFrame", "Recording", "recording_key", "source_entry", "source_fingerprint", "load_recordings",
           "load_folder",
           "load_bag", "load_pcd", "iter_folder_frames", "list_labelled", "load_labelled_points", "TargetCache",
           "heldout_mask", "ClipFrame", "Clip", "build_clips", "collate"]


@dataclass
class RecordingFrame:
    """One lifted RGB-D frame of a recording.

    Attributes:
        key: frame name, unique in the recording (file stem or stamp).
        rgb: ``(H, W, 3) uint8`` colour image.
        points: the lifted :class:`PointFrame` (fixed frame).
        intrinsics: camera intrinsics (pixels).
        T_world_cam: ``(4, 4) float64`` camera-to-fixed pose of the optical frame.
    """

    key: str
    rgb: np.ndarray
    points: PointFrame
    intrinsics: CameraIntrinsics
    T_world_cam: np.ndarray

    @property
    def stamp_ns(self) -> int:
        return self.points.stamp_ns


@dataclass
class Recording:
    """A loaded recording: its cache key and frames in time order."""

    key: str
    path: Path
    frames: list[RecordingFrame]


def recording_key(path: str | Path) -> str:
    """``<name>-<sha1(resolved path)[:8]>``: the cache folder of a recording."""
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


def _lift(frame: RGBDFrame, T: np.ndarray, lift, fixed_frame: str) -> PointFrame:
    return lift_depth(frame, T, min_depth=float(lift.min_depth), max_depth=float(lift.max_depth),
                      stride=int(lift.pixel_stride), fixed_frame=fixed_frame)


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def pcd_files(path: Path, limit: int = 0) -> list[Path]:
    files = sorted(path.glob("*.pcd"), key=_natural_key) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no .pcd file")
    return files[:limit] if limit > 0 else files


def source_entry(src: dict | str | Path, what: str = "data source") -> tuple[dict, Path]:
    """A source entry as ``(dict with "path", its expanded path)``: a plain path stands for
    ``{path: PATH}``.

    Raises:
        FileNotFoundError: the path does not exist (the message names ``what``).
    """
    src = {"path": src} if isinstance(src, (str, Path)) else dict(src)
    path = Path(str(src["path"])).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return src, path


def source_kind(src: dict, path: Path) -> str:
    kind = str(src.get("type", "auto"))
    if kind != "auto":
        return kind
    if (path / "color").is_dir() and (path / "depth").is_dir():
        return "folder"
    if path.suffix == ".pcd" or (path.is_dir() and any(path.glob("*.pcd"))):
        return "pcd"
    return "bag"


# ----------------------------------------------------------------------------- recordings
def load_recordings(src: dict | str, node, log: Callable[[str], Any] | None = None) -> list[Recording]:
    """Read and lift one ``data.sources`` entry of the self-supervised commands.

    Args:
        src: a path, or ``{"path", "type": auto|bag|folder|pcd, "fx", "fy", "cx", "cy",
            "depth_scale", "rate_hz", "max_frames", "limit"}`` (auto: a folder with ``color/``
            and ``depth/`` is an RGB-D folder, ``.pcd`` files are PCD, anything else a bag). A
            ``pcd`` source gives one one-frame recording per file (natural order, the first
            ``limit`` when > 0), in the camera optical frame.
        node: the node's :class:`~concerto_ros.config.PerceptionConfig`: ``lift.*`` for every
            type; topics, sync, TF and ``fixed_frame`` for bags; ``fixed_frame`` names the
            frame of folders and PCD files.

    Returns:
        The recordings, each with its frames in time order.

    Raises:
        FileNotFoundError: a path that does not exist. ValueError: an unknown type or data
        the loaders refuse (see :func:`load_folder`, :func:`load_bag`, :func:`load_pcd`).
    """
    src, path = source_entry(src)
    kind = source_kind(src, path)
    intr = {k: src[k] for k in ("fx", "fy", "cx", "cy") if src.get(k) is not None}
    if kind == "pcd":
        return [load_pcd(f, intr, node.lift, fixed_frame=node.fixed_frame)
                for f in pcd_files(path, int(src.get("limit", 0) or 0))]
    if kind == "folder":
        return [load_folder(path, node.lift, intrinsics=intr or None, depth_scale=src.get("depth_scale"),
                            rate_hz=src.get("rate_hz"), fixed_frame=node.fixed_frame,
                            max_frames=src.get("max_frames"))]
    if kind == "bag":
        return [load_bag(path, node, max_frames=src.get("max_frames"), log=log)]
    raise ValueError(f"data source type must be auto, bag, folder or pcd, got {kind!r}")


def iter_folder_frames(folder: str | Path, intrinsics: Optional[dict] = None, depth_scale: Optional[float] = None,
                       rate_hz: Optional[float] = None, max_frames: Optional[int] = None, labels: bool = False,
                       color_order: str = "bgr") -> Iterator[tuple[str, RGBDFrame, np.ndarray]]:
    """The frames of an RGB-D folder (format of :mod:`concerto_ros.bag.convert_rgbd`), in order.

    Args:
        intrinsics: ``{"fx", "fy", "cx", "cy"}`` pixels; default from ``camera.yaml``.
        depth_scale: depth units per metre; default ``camera.yaml``'s or 1000.
        rate_hz: frame rate for the stamps when the pose file has none (default
            ``camera.yaml``'s ``rate_hz`` or 30).
        labels: read ``labels/<n>.png`` into ``RGBDFrame.labels`` (``(H, W) int32``).

    Yields:
        ``(frame key, RGBDFrame (optical frame "camera", stamp in ns), T_world_cam (4, 4)
        float64)``.

    Raises:
        ValueError / FileNotFoundError: see :func:`~concerto_ros.bag.convert_rgbd.scan_rgbd_folder`;
        missing intrinsics; ``labels`` without a ``labels/`` folder.
    """
    from concerto_ros.bag.convert_rgbd import _read_color, _read_depth, _read_labels, _resolve_intrinsics, scan_rgbd_folder

    f = scan_rgbd_folder(folder)
    if labels and not f.labels:
        raise ValueError(f"RGB-D folder {folder} has no labels/ folder: labelled frames are needed")
    (fx, fy, cx, cy), _ = _resolve_intrinsics(intrinsics, f.camera, f.root)
    scale = float(depth_scale if depth_scale is not None else f.camera.get("depth_scale", 1000.0))
    rate = float(rate_hz if rate_hz is not None else f.camera.get("rate_hz", 30.0))
    n = len(f.stems) if max_frames is None else min(int(max_frames), len(f.stems))
    for i in range(n):
        depth = _read_depth(f.depth[i])
        intr = CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy, width=depth.shape[1], height=depth.shape[0])
        stamp = f.stamps_ns[i] if f.stamps_ns is not None else int(round(i * 1e9 / rate))
        lab = _read_labels(f.labels[i]).astype(np.int32) if labels else None
        yield f.stems[i], RGBDFrame(stamp_ns=stamp, frame_id="camera", color=_read_color(f.color[i], color_order),
                                    depth=depth, depth_scale=scale, intrinsics=intr, labels=lab), \
            np.asarray(f.poses[i], dtype=np.float64)


def load_folder(folder: str | Path, lift, intrinsics: Optional[dict] = None, depth_scale: Optional[float] = None,
                rate_hz: Optional[float] = None, fixed_frame: str = "world",
                max_frames: Optional[int] = None) -> Recording:
    """Read and lift an RGB-D folder (see :func:`iter_folder_frames`) with the node's ``lift``
    settings (:class:`~concerto_ros.config.LiftConfig`: ``min_depth``/``max_depth`` metres,
    ``pixel_stride``)."""
    frames = [RecordingFrame(key, fr.color, _lift(fr, T, lift, fixed_frame), fr.intrinsics, T)
              for key, fr, T in iter_folder_frames(folder, intrinsics, depth_scale, rate_hz, max_frames)]
    return Recording(recording_key(folder), Path(folder), frames)


def load_bag(bag: str | Path, node=None, max_frames: Optional[int] = None,
             log: Callable[[str], Any] | None = None) -> Recording:
    """Decode and lift the RGB-D frames of a rosbag2 exactly as offline replay and the node do
    (same topics, approximate-time sync, TF lookup in ``fixed_frame``, ``lift.*``).

    Args:
        bag: rosbag2 directory or file.
        node: the node's :class:`~concerto_ros.config.PerceptionConfig` (defaults when None).

    Raises:
        ValueError: the bag lacks the configured topics, or no frame could be used.
    """
    from concerto_ros.bag.reader import bag_summary, iter_messages
    from concerto_ros.bag.replay import load_tf
    from concerto_ros.config import PerceptionConfig
    from concerto_ros.pipeline import FrameSkipped, RGBDFrameAssembler
    from concerto_ros.sensors.tf_buffer import TransformUnavailable

    cfg = node or PerceptionConfig()
    topics = {"color": cfg.topics.color, "depth": cfg.topics.depth, "camera_info": cfg.topics.camera_info}
    summary = bag_summary(bag)
    missing = [t for t in topics.values() if t not in summary]
    if missing:
        raise ValueError(f"bag {bag} lacks topics {missing}; it has {sorted(summary)}")
    stream_of = {v: k for k, v in topics.items()}
    tf = load_tf(bag)
    asm = RGBDFrameAssembler(cfg, note=log)
    frames: list[RecordingFrame] = []
    skipped = 0
    for m in iter_messages(bag, topics=list(topics.values())):
        for synced in asm.add(stream_of[m.topic], m.msg):
            if max_frames is not None and len(frames) >= max_frames:
                break
            try:
                fr = asm.to_frame(synced)
                T = tf.lookup(cfg.fixed_frame, fr.frame_id, fr.stamp_ns)
                pf = _lift(fr, T, cfg.lift, cfg.fixed_frame)
            except (FrameSkipped, TransformUnavailable, ValueError):
                skipped += 1
                continue
            if pf.num_points:
                frames.append(RecordingFrame(str(fr.stamp_ns), fr.color, pf, fr.intrinsics, np.asarray(T, np.float64)))
    if not frames:
        raise ValueError(f"bag {bag}: no usable RGB-D frame ({skipped} skipped)")
    if skipped and log:
        log(f"bag {bag}: {skipped} frames skipped (no transform or bad data)")
    return Recording(recording_key(bag), Path(bag), frames)


def load_pcd(path: str | Path, intrinsics: dict, lift, fixed_frame: str = "camera") -> Recording:
    """One organized RGB PCD file (e.g. mOSD) as a one-frame recording.

    The file's points are already in the camera optical frame, so the frame's pose is the
    identity and ``fixed_frame`` names that frame. The colour image is rebuilt from the
    organized layout (``index = row * width + col``; pixels without a colour stay black),
    so the 2D teacher sees the same image the points were measured with. Points outside
    ``lift.min_depth .. lift.max_depth`` (along z) are dropped, as the node's lifting does.

    Args:
        path: the ``.pcd`` file (``WIDTH x HEIGHT`` organized, ``rgb``/``rgba`` field).
        intrinsics: ``{"fx", "fy", "cx", "cy"}`` pixels of the camera (mOSD / Kinect:
            525, 525, 319.5, 239.5).
        lift: the node's :class:`~concerto_ros.config.LiftConfig`.

    Raises:
        ValueError: an unorganized cloud, no colour field, or intrinsics missing.
    """
    from concerto_ros.bag.pcd import read_pcd

    missing = [k for k in ("fx", "fy", "cx", "cy") if intrinsics.get(k) is None]
    if missing:
        raise ValueError(f"pcd source {path}: intrinsics {missing} missing (mOSD/Kinect: fx 525, fy 525, "
                         "cx 319.5, cy 239.5)")
    c = read_pcd(path, drop_nan=False)
    if c.height <= 1:
        raise ValueError(f"{path} is not an organized cloud (HEIGHT {c.height}); SSL needs its image layout")
    if c.rgb is None:
        raise ValueError(f"{path} has no rgb/rgba field")
    h, w = c.height, c.width
    image = np.zeros((h * w, 3), dtype=np.uint8)
    image[c.index] = c.rgb
    image = image.reshape(h, w, 3)
    z = c.xyz[:, 2]
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(c.xyz).all(axis=1) & (z >= float(lift.min_depth)) & (z <= float(lift.max_depth))
    intr = CameraIntrinsics(fx=float(intrinsics["fx"]), fy=float(intrinsics["fy"]), cx=float(intrinsics["cx"]),
                            cy=float(intrinsics["cy"]), width=w, height=h)
    eye = np.eye(4, dtype=np.float64)
    pf = PointFrame(stamp_ns=0, points=np.ascontiguousarray(c.xyz[keep], dtype=np.float32),
                    colors=np.ascontiguousarray(c.rgb[keep]), pixel_index=c.index[keep].astype(np.int32),
                    frame_id=fixed_frame, sensor_frame_id=fixed_frame, T_fixed_sensor=eye, image_shape=(h, w))
    key = Path(path).stem
    return Recording(recording_key(path), Path(path), [RecordingFrame(key, image, pf, intr, eye)])


# ----------------------------------------------------------------------------- labelled scenes
def list_labelled(sources: Iterable[dict | str], require_labels: bool = True) -> list[dict]:
    """Expand labelled sources into one entry per scene: ``{"type", "path", "labels"?, ...}``.

    Types: ``pcd`` (a labelled ``.pcd`` file or a folder of them, mOSD format; ``limit``),
    ``points`` (``path`` an ``(N, 3+)`` xyz[rgb] ``.npy``, ``labels`` an ``(N,)`` / ``(N, 1)``
    ``.npy``), ``folder`` (an RGB-D folder with ``labels/`` -- unless ``require_labels`` is
    false; stays one entry, its windows are made by the node's pipeline), ``auto`` (a folder
    with ``color/`` and ``depth/`` is ``folder``, anything else ``pcd``). Other keys of a
    ``folder`` entry (intrinsics, ``depth_scale``) are kept.

    Raises:
        ValueError: unknown type, a folder with no ``.pcd`` file, an RGB-D folder without
            ``labels/``, a points source without ``labels``.
        FileNotFoundError: a path that does not exist.
    """
    scenes = []
    for src in sources:
        src, path = source_entry(src, "labelled source")
        kind = str(src.get("type", "auto"))
        if kind == "auto":
            kind = "folder" if (path / "color").is_dir() and (path / "depth").is_dir() else "pcd"
        if kind == "pcd":
            scenes += [{"type": "pcd", "path": f} for f in pcd_files(path, int(src.get("limit", 0) or 0))]
        elif kind == "points":
            if "labels" not in src:
                raise ValueError(f"points source {path} needs 'labels' (an (N,) or (N,1) .npy)")
            scenes.append({"type": "points", "path": path, "labels": Path(str(src["labels"])).expanduser()})
        elif kind == "folder":
            if require_labels and not (path / "labels").is_dir():
                raise ValueError(f"RGB-D folder {path} has no labels/ folder: labelled frames are needed")
            scenes.append({**src, "type": "folder", "path": path})
        else:
            raise ValueError(f"labelled source type must be 'pcd', 'points', 'folder' or 'auto', got {kind!r}")
    return scenes


def load_labelled_points(scene: dict) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(xyz (N,3) float32 metres, rgb (N,3) uint8 or None, raw labels (N,) int64)`` of a
    ``pcd`` or ``points`` entry of :func:`list_labelled` (NaN points dropped).

    Raises:
        ValueError: a PCD without a ``label`` field, or points and labels of different lengths.
    """
    if scene["type"] == "pcd":
        from concerto_ros.bag.pcd import read_pcd

        c = read_pcd(scene["path"])
        if c.label is None:
            raise ValueError(f"{scene['path']} has no 'label' field")
        return c.xyz, c.rgb, c.label
    arr = np.load(scene["path"])
    lab = np.load(scene["labels"]).reshape(-1).astype(np.int64)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{scene['path']}: expected (N, 3+) points, got {arr.shape}")
    if len(arr) != len(lab):
        raise ValueError(f"{scene['path']}: {len(arr)} points but {len(lab)} labels")
    keep = np.isfinite(arr[:, :3]).all(axis=1)
    arr, lab = arr[keep], lab[keep]
    xyz = arr[:, :3].astype(np.float32)
    rgb = np.clip(np.nan_to_num(arr[:, 3:6]), 0, 255).astype(np.uint8) if arr.shape[1] >= 6 else None
    return xyz, rgb, lab


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

    def path(self, recording: str, frame: str) -> Path:
        return self.root / recording / self.teacher_key / f"{frame}.pt"

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
