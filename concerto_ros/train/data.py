"""Training clips from recordings, with the node's lifting and windowing, and the target cache.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from concerto_ros.cloud.window import VideoPointCloud
from concerto_ros.models.cross4d import sample_indices, window_frame_points
from concerto_ros.models.projection import dense_targets
from concerto_ros.models.teachers import teacher_cache_key, teacher_grid
from concerto_ros.sensors.lifting import lift_depth
from concerto_ros.sensors.types import CameraIntrinsics, PointFrame, RGBDFrame

__all__ = ["RecordingFrame", "Recording", "load_folder", "load_bag", "load_pcd", "load_source", "load_sources",
           "TargetCache",
           "ClipFrame", "Clip", "build_clips", "heldout_mask", "collate", "recording_key"]


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


def _lift(frame: RGBDFrame, T: np.ndarray, lift_cfg: dict, fixed_frame: str) -> PointFrame:
    return lift_depth(frame, T, min_depth=float(lift_cfg.get("min_depth", 0.1)),
                      max_depth=float(lift_cfg.get("max_depth", 8.0)), stride=int(lift_cfg.get("pixel_stride", 1)),
                      fixed_frame=fixed_frame)


def load_folder(folder: str | Path, lift_cfg: dict, intrinsics: Optional[dict] = None, depth_scale: Optional[float] = None,
                rate_hz: float = 30.0, fixed_frame: str = "world", color_order: str = "bgr",
                max_frames: Optional[int] = None) -> Recording:
    """Read and lift an RGB-D folder (format of :mod:`concerto_ros.bag.convert_rgbd`).

    Args:
        folder: the folder.
        lift_cfg: ``min_depth``/``max_depth`` metres, ``pixel_stride`` (the node's ``lift.*``).
        intrinsics: ``{"fx", "fy", "cx", "cy"}`` pixels; default from ``camera.yaml``.
        depth_scale: depth units per metre; default ``camera.yaml``'s or 1000.
        rate_hz: frame rate for the stamps when the pose file has none (``camera.yaml``'s
            ``rate_hz`` wins when present).

    Raises:
        ValueError / FileNotFoundError: see :func:`scan_rgbd_folder`; missing intrinsics.
    """
    from concerto_ros.bag.convert_rgbd import _read_color, _read_depth, _resolve_intrinsics, scan_rgbd_folder

    f = scan_rgbd_folder(folder)
    (fx, fy, cx, cy), _ = _resolve_intrinsics(intrinsics, f.camera, f.root)
    scale = float(depth_scale if depth_scale is not None else f.camera.get("depth_scale", 1000.0))
    rate = float(f.camera.get("rate_hz", rate_hz))
    frames = []
    n = len(f.stems) if max_frames is None else min(max_frames, len(f.stems))
    for i in range(n):
        rgb = _read_color(f.color[i], color_order)
        depth = _read_depth(f.depth[i])
        intr = CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy, width=depth.shape[1], height=depth.shape[0])
        stamp = f.stamps_ns[i] if f.stamps_ns is not None else int(round(i * 1e9 / rate))
        rgbd = RGBDFrame(stamp_ns=stamp, frame_id="camera", color=rgb, depth=depth, depth_scale=scale, intrinsics=intr)
        T = np.asarray(f.poses[i], dtype=np.float64)
        frames.append(RecordingFrame(f.stems[i], rgb, _lift(rgbd, T, lift_cfg, fixed_frame), intr, T))
    return Recording(recording_key(folder), Path(folder), frames)


def load_bag(bag: str | Path, perception_cfg=None, max_frames: Optional[int] = None,
             log: Callable[[str], Any] | None = None) -> Recording:
    """Decode and lift the RGB-D frames of a rosbag2 exactly as offline replay and the node do
    (same topics, approximate-time sync, TF lookup in ``fixed_frame``, ``lift.*``).

    Args:
        bag: rosbag2 directory or file.
        perception_cfg: a :class:`~concerto_ros.config.PerceptionConfig` (defaults when None).

    Raises:
        ValueError: the bag lacks the configured topics, or no frame could be used.
    """
    from concerto_ros.bag.reader import bag_summary, iter_messages
    from concerto_ros.bag.replay import load_tf
    from concerto_ros.config import PerceptionConfig
    from concerto_ros.pipeline import FrameSkipped, RGBDFrameAssembler
    from concerto_ros.sensors.tf_buffer import TransformUnavailable

    cfg = perception_cfg or PerceptionConfig()
    topics = {"color": cfg.topics.color, "depth": cfg.topics.depth, "camera_info": cfg.topics.camera_info}
    summary = bag_summary(bag)
    missing = [t for t in topics.values() if t not in summary]
    if missing:
        raise ValueError(f"bag {bag} lacks topics {missing}; it has {sorted(summary)}")
    stream_of = {v: k for k, v in topics.items()}
    tf = load_tf(bag)
    asm = RGBDFrameAssembler(cfg, note=log)
    lift_cfg = {"min_depth": cfg.lift.min_depth, "max_depth": cfg.lift.max_depth, "pixel_stride": cfg.lift.pixel_stride}
    frames: list[RecordingFrame] = []
    skipped = 0
    for m in iter_messages(bag, topics=list(topics.values())):
        for synced in asm.add(stream_of[m.topic], m.msg):
            if max_frames is not None and len(frames) >= max_frames:
                break
            try:
                fr = asm.to_frame(synced)
                T = tf.lookup(cfg.fixed_frame, fr.frame_id, fr.stamp_ns)
                pf = _lift(fr, T, lift_cfg, cfg.fixed_frame)
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


def load_pcd(path: str | Path, intrinsics: dict, lift_cfg: dict, fixed_frame: str = "camera") -> Recording:
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
        keep = np.isfinite(c.xyz).all(axis=1) & (z >= float(lift_cfg.get("min_depth", 0.1))) \
            & (z <= float(lift_cfg.get("max_depth", 8.0)))
    intr = CameraIntrinsics(fx=float(intrinsics["fx"]), fy=float(intrinsics["fy"]), cx=float(intrinsics["cx"]),
                            cy=float(intrinsics["cy"]), width=w, height=h)
    eye = np.eye(4, dtype=np.float64)
    pf = PointFrame(stamp_ns=0, points=np.ascontiguousarray(c.xyz[keep], dtype=np.float32),
                    colors=np.ascontiguousarray(c.rgb[keep]), pixel_index=c.index[keep].astype(np.int32),
                    frame_id=fixed_frame, sensor_frame_id=fixed_frame, T_fixed_sensor=eye, image_shape=(h, w))
    key = Path(path).stem
    return Recording(recording_key(path), Path(path), [RecordingFrame(key, image, pf, intr, eye)])


def load_sources(src: dict, lift_cfg: dict, perception_cfg=None, log=None) -> list[Recording]:
    """Like :func:`load_source`, plus ``type: pcd`` (``path``: a ``.pcd`` file or a folder of
    them, ``limit``, intrinsics ``fx fy cx cy``): each PCD file is its own one-frame
    recording (:func:`load_pcd`), in natural file order.

    Raises:
        FileNotFoundError: a path that does not exist. ValueError: see the loaders.
    """
    path = Path(str(src["path"])).expanduser()
    if src.get("type", "auto") != "pcd":
        return [load_source(src, lift_cfg, perception_cfg=perception_cfg, log=log)]
    if not path.exists():
        raise FileNotFoundError(f"pcd source {path} does not exist")
    from concerto_ros.train.probe import list_scenes

    files = [s["path"] for s in list_scenes([{"type": "pcd", "path": str(path), "limit": src.get("limit", 0)}])]
    intr = {k: src.get(k) for k in ("fx", "fy", "cx", "cy")}
    return [load_pcd(f, intr, lift_cfg, fixed_frame=str(src.get("fixed_frame", "camera"))) for f in files]


def load_source(src: dict, lift_cfg: dict, perception_cfg=None, log=None) -> Recording:
    """Load one ``data.sources`` entry: ``{"path", "type": auto|bag|folder, "fx", "fy", "cx",
    "cy", "depth_scale", "rate_hz", "max_frames"}`` (auto: a folder with ``color/`` and
    ``depth/`` is an RGB-D folder, anything else a bag)."""
    path = Path(src["path"]).expanduser()
    kind = src.get("type", "auto")
    if kind == "auto":
        kind = "folder" if (path / "color").is_dir() and (path / "depth").is_dir() else "bag"
    if kind == "folder":
        intr = {k: src[k] for k in ("fx", "fy", "cx", "cy") if src.get(k) is not None} or None
        return load_folder(path, lift_cfg, intrinsics=intr, depth_scale=src.get("depth_scale"),
                           rate_hz=float(src.get("rate_hz", 30.0)), max_frames=src.get("max_frames"))
    if kind == "bag":
        return load_bag(path, perception_cfg, max_frames=src.get("max_frames"), log=log)
    raise ValueError(f"data source type must be auto, bag or folder, got {kind!r}")


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
        tmp = p.with_suffix(".tmp")
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
