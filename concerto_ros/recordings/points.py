"""Point arrays and SemanticKITTI scans as frames.

* ``points``: ``.npy`` arrays ``(N, 3)`` xyz, ``(N, 4)`` xyz + intensity, ``(N, 6)`` xyz +
  rgb (0..255, or 0..1 floats), ``(N, 7)`` xyz + rgb + intensity, metres; labels ``.npy``
  ``(N,)`` or ``(N, 1)`` integers (ScanNet vertices with NYU40 ids, Open3D-ML's
  SemanticKITTI scans with learning ids 0..19, ...).
* ``semantickitti``: native scans, ``.bin`` float32 ``x y z intensity`` records (metres,
  reflectance 0..1) with ``.label`` files of uint32 values whose lower 16 bits are the raw
  semantic id (upper 16: instance id), mapped through the label set's ``learning_map``; a
  sequence folder (``velodyne/``, ``labels/``, ``poses.txt``, ``calib.txt``) or a single
  scan. Open3D-ML ``.npy`` scans are read as ``points`` with the ``semantickitti`` set.

A folder of scans gives one frame per file in natural order. Label files pair with scans by
name: the same stem in the labels folder, or the scan's name with ``points`` replaced by
``labels`` (Open3D-ML: ``kitti_01_points_000000.npy`` -> ``kitti_01_labels_000000.npy``).
Non-finite points are dropped with their labels.

Poses (optional ``poses`` file, one line per scan): ``tx ty tz qx qy qz qw`` or the 12
values of a row-major 3x4 matrix (KITTI odometry), sensor -> world. KITTI's poses are of
camera 0; with a ``calib.txt`` beside the pose file holding ``Tr:`` (LiDAR -> camera 0) the
LiDAR pose is ``inv(Tr) @ P @ Tr`` (the SemanticKITTI convention). Without poses every scan
is its own scene (``independent_frames``) in the identity pose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from concerto_ros.msgs.transforms import invert_transform, transform_to_matrix
from concerto_ros.recordings.errors import RecordingError
from concerto_ros.recordings.frame import SensorCloud, SensorFrame
from concerto_ros.recordings.labels import LabelSet
from concerto_ros.recordings.pcd import list_files

__all__ = ["load_point_array", "load_kitti_bin", "load_label_values", "read_scan_poses", "ScanRecording"]


def load_point_array(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(xyz (N, 3) float32, rgb (N, 3) uint8 or None, intensity (N,) float32 or None)`` of a
    ``.npy`` array with 3, 4, 6 or 7 columns (module docstring), all points (finite or not).

    Raises:
        RecordingError: unreadable file or another shape.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RecordingError(path, f"not a readable .npy array ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] not in (3, 4, 6, 7) or arr.dtype.kind not in "fiu":
        raise RecordingError(path, f"expected a numeric (N, 3|4|6|7) array (xyz, +intensity, +rgb, "
                                   f"+rgb+intensity), got {arr.shape} {arr.dtype}")
    xyz = np.ascontiguousarray(arr[:, :3], dtype=np.float32)
    rgb = intensity = None
    if arr.shape[1] >= 6:
        c = np.nan_to_num(arr[:, 3:6].astype(np.float64))
        rgb = np.clip(np.rint(c * 255.0 if c.size and c.max() <= 1.0 else c), 0, 255).astype(np.uint8)
    if arr.shape[1] in (4, 7):
        intensity = np.ascontiguousarray(arr[:, -1], dtype=np.float32)
    return xyz, rgb, intensity


def load_kitti_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(xyz (N, 3) float32 metres, intensity (N,) float32)`` of a KITTI ``.bin`` scan.

    Raises:
        RecordingError: unreadable, or a size that is not a multiple of 16 bytes.
    """
    try:
        raw = np.fromfile(path, dtype="<f4")
    except OSError as exc:
        raise RecordingError(path, f"cannot read the scan ({exc})") from None
    if raw.size % 4:
        raise RecordingError(path, f"a KITTI .bin scan holds float32 x y z intensity records; {raw.size * 4} bytes "
                                   "is not a multiple of 16")
    rec = raw.reshape(-1, 4)
    return np.ascontiguousarray(rec[:, :3]), np.ascontiguousarray(rec[:, 3])


def load_label_values(path: str | Path, n: int) -> np.ndarray:
    """``(n,) int64`` label values: ``.label`` -> lower 16 bits of uint32 (raw semantic id);
    ``.npy`` -> the array's values.

    Raises:
        RecordingError: unreadable, not integer, or not ``n`` values.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".label":
            values = (np.fromfile(path, dtype="<u4") & 0xFFFF).astype(np.int64)
        else:
            arr = np.load(path, allow_pickle=False)
            if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0)):
                raise RecordingError(path, f"labels must be integers, got {arr.dtype}")
            values = arr.reshape(-1).astype(np.int64)
    except (OSError, ValueError) as exc:
        if isinstance(exc, RecordingError):
            raise
        raise RecordingError(path, f"cannot read the labels ({exc})") from None
    if len(values) != n:
        raise RecordingError(path, f"{len(values)} labels for {n} points")
    return values


def _read_calib_tr(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("Tr:"):
            vals = [float(v) for v in line.split()[1:]]
            if len(vals) != 12:
                raise RecordingError(path, f"Tr: needs 12 values, got {len(vals)}")
            T = np.eye(4)
            T[:3, :] = np.array(vals).reshape(3, 4)
            return T
    return None


def read_scan_poses(path: str | Path) -> np.ndarray:
    """``(N, 4, 4) float64`` sensor -> world poses of a pose file (module docstring).

    Raises:
        RecordingError: missing file, lines of another length, non-numeric values.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordingError(path, "pose file not found")
    poses = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.replace(",", " ").split()
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            vals = [float(t) for t in tokens]
            if len(vals) == 12:
                T = np.eye(4)
                T[:3, :] = np.array(vals).reshape(3, 4)
            elif len(vals) == 7:
                T = transform_to_matrix(vals[:3], vals[3:])
            else:
                raise ValueError(f"expected 12 values (3x4 matrix) or 7 (tx ty tz qx qy qz qw), got {len(vals)}")
        except ValueError as exc:
            raise RecordingError(f"{path}:{lineno}", str(exc)) from None
        poses.append(T)
    if not poses:
        raise RecordingError(path, "no poses")
    P = np.stack(poses)
    Tr = _read_calib_tr(path.parent / "calib.txt")
    return P if Tr is None else invert_transform(Tr) @ P @ Tr


def _pair_labels(scans: list[Path], labels: Path | None, suffixes: tuple[str, ...]) -> list[Path] | None:
    if labels is None:
        return None
    if labels.is_file():
        if len(scans) != 1:
            raise RecordingError(labels, f"one label file for {len(scans)} scans: give a folder of label files")
        return [labels]
    if not labels.is_dir():
        raise RecordingError(labels, "label file or folder not found")
    out = []
    for s in scans:
        cands = [labels / f"{stem}{suf}" for suf in suffixes for stem in (s.stem, s.stem.replace("points", "labels"))]
        hit = next((c for c in cands if c.is_file() and c.resolve() != s.resolve()), None)
        if hit is None:
            raise RecordingError(cands[0], f"no label file for scan {s.name}")
        out.append(hit)
    return out


def _default_layout(path: Path, kind: str) -> tuple[Path, Path | None, Path | None]:
    """(scans, labels, poses) of a SemanticKITTI sequence folder or an Open3D-ML folder."""
    if kind == "semantickitti" and (path / "velodyne").is_dir():
        seq = path
        return seq / "velodyne", (seq / "labels") if (seq / "labels").is_dir() else None, \
            (seq / "poses.txt") if (seq / "poses.txt").is_file() else None
    if kind == "semantickitti" and path.parent.name == "velodyne":
        labels = path.parent.parent / "labels"
        return path, labels if labels.is_dir() else None, None
    sibling = path.with_name(path.name.replace("points", "labels"))
    if path.is_file() and "points" in path.name and sibling.is_file():  # Open3D-ML naming
        return path, sibling, None
    return path, None, None


class ScanRecording:
    """Point arrays or SemanticKITTI scans as :class:`~concerto_ros.recordings.frame.SensorFrame`
    (``cloud`` and per-point ``labels``; no image).

    Args:
        path: a scan file or a folder of them (``kind`` ``semantickitti``: ``.bin`` files, a
            ``velodyne/`` folder or its sequence folder; ``points``: ``.npy`` files).
        kind: ``"points"`` or ``"semantickitti"``.
        labels: label file or folder (default: the SemanticKITTI layout's ``labels/``; for
            a folder of ``.npy`` points, its ``*labels*`` files paired by name).
        label_set: map label values to class indices (``.label`` files go through its
            ``learning_map`` first); None: values unchanged.
        poses: pose file (default: a sequence folder's ``poses.txt``).
        frame_id: the scans' frame. rate_hz: frame rate of the stamps.
        max_frames: 0 = all. stride: every n-th scan.

    Raises:
        RecordingError: missing files, a pose count different from the scan count.
    """

    kind = "frames"

    def __init__(self, path: str | Path, kind: str = "points", labels: str | Path | None = None,
                 label_set: LabelSet | None = None, poses: str | Path | None = None, frame_id: str = "sensor",
                 rate_hz: float = 10.0, max_frames: int = 0, stride: int = 1) -> None:
        from concerto_ros.recordings.rgbd_folder import DEFAULT_START_STAMP_NS

        self.path = Path(path)
        if not self.path.exists():
            raise RecordingError(self.path, "no such file or folder")
        scans_at, default_labels, default_poses = _default_layout(self.path, kind)
        npy = scans_at.suffix.lower() == ".npy" or (scans_at.is_dir() and any(scans_at.glob("*.npy")))
        suffix = ".bin" if kind == "semantickitti" and not npy else ".npy"
        all_scans = list_files(scans_at, suffix)
        if suffix == ".npy" and scans_at.is_dir():
            all_scans = [s for s in all_scans if "label" not in s.stem]
            if labels is None and any("labels" in p.stem for p in scans_at.glob("*.npy")):
                default_labels = scans_at
        labels_at = Path(labels) if labels is not None else default_labels
        label_files = _pair_labels(all_scans, labels_at, (".label", ".npy") if suffix == ".bin" else (".npy",))
        pose_file = Path(poses) if poses is not None else default_poses
        all_poses = read_scan_poses(pose_file) if pose_file is not None else None
        if all_poses is not None and len(all_poses) != len(all_scans):
            raise RecordingError(pose_file, f"{len(all_poses)} poses for {len(all_scans)} scans")
        pick = list(range(0, len(all_scans), max(1, int(stride))))[: (int(max_frames) or None)]
        self.scans = [all_scans[i] for i in pick]
        self.label_files = None if label_files is None else [label_files[i] for i in pick]
        self.poses = None if all_poses is None else all_poses[pick]
        self.independent_frames = self.poses is None
        self.label_set = label_set
        self.frame_id = frame_id
        self.stamps_ns = [DEFAULT_START_STAMP_NS + round(i * 1e9 / float(rate_hz)) for i in pick]

    def __len__(self) -> int:
        return len(self.scans)

    def read(self, j: int) -> SensorFrame:
        """Frame ``j`` (``0 <= j < len(self)``)."""
        scan = self.scans[j]
        if scan.suffix.lower() == ".bin":
            xyz, intensity = load_kitti_bin(scan)
            rgb = None
        else:
            xyz, rgb, intensity = load_point_array(scan)
        labels = None
        if self.label_files is not None:
            lf = self.label_files[j]
            values = load_label_values(lf, len(xyz))
            if self.label_set is None:
                labels = values.astype(np.int32)
            else:
                labels = self.label_set.map_raw(values) if lf.suffix.lower() == ".label" else self.label_set.map(values)
        keep = np.isfinite(xyz).all(axis=1)
        dropped = not keep.all()
        pick = (lambda a: None if a is None else (np.ascontiguousarray(a[keep]) if dropped else a))
        cloud = SensorCloud(xyz=pick(xyz), colors=pick(rgb), intensity=pick(intensity), frame_id=self.frame_id,
                            index=np.flatnonzero(keep).astype(np.int64) if dropped else None)
        T = self.poses[j] if self.poses is not None else np.eye(4)
        return SensorFrame(stamp_ns=self.stamps_ns[j], key=scan.stem, T_world_sensor=T, cloud=cloud,
                           labels=pick(labels))

    def frames(self) -> Iterator[SensorFrame]:
        """One frame per scan, in order."""
        for j in range(len(self.scans)):
            yield self.read(j)

