"""PCD files (PCL's Point Cloud Data, v0.7) through ``pypcd4``, e.g. the mOSD scenes.

``pypcd4`` reads the three encodings PCL writes (``ascii``, ``binary``,
``binary_compressed``/LZF). This module adds what the project needs on top: packed colours,
labels, the organized layout, and for organized clouds the camera images rebuilt from the
points (a colour image, a depth image in metres and a label image) with pinhole intrinsics
fitted to the cloud (mOSD / Kinect v1: fx = fy = 525, cx = 319.5, cy = 239.5).

Colour fields: ``rgba`` (``U`` 4 bytes, packed ``0xAARRGGBB``) or ``rgb`` (PCL's packed
colour, usually ``F`` 4 bytes holding the bit pattern ``0x00RRGGBB``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from concerto_ros.recordings.errors import RecordingError
from concerto_ros.recordings.frame import SensorCloud, SensorFrame
from concerto_ros.recordings.labels import LabelSet
from concerto_ros.sensors.types import CameraIntrinsics, RGBDFrame

__all__ = ["PCDCloud", "read_pcd", "fit_intrinsics", "natural_key", "list_files", "PcdRecording"]

#: largest pixel error of fitted intrinsics for an organized cloud
FIT_TOLERANCE_PX = 0.5


@dataclass
class PCDCloud:
    """Points of one PCD file (NaN points dropped unless asked otherwise).

    Attributes:
        xyz: ``(N, 3) float32`` metres, in the file's frame (mOSD: camera optical frame).
        rgb: ``(N, 3) uint8`` or None when the file has no ``rgb``/``rgba`` field.
        label: ``(N,) int64`` or None when the file has no ``label`` field.
        intensity: ``(N,) float32`` or None when the file has no ``intensity`` field.
        index: ``(N,) int64`` row-major index of each kept point in the file
            (``row * width + col`` for organized clouds).
        width, height: the header's ``WIDTH`` and ``HEIGHT`` (``height > 1``: organized).
    """

    xyz: np.ndarray
    rgb: np.ndarray | None
    label: np.ndarray | None
    index: np.ndarray
    width: int
    height: int
    intensity: np.ndarray | None = None

    @property
    def organized(self) -> bool:
        return self.height > 1


def _unpack_color(values: np.ndarray) -> np.ndarray:
    packed = values.view(np.uint32) if values.dtype.itemsize == 4 else values.astype(np.uint32)
    return np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF], axis=1).astype(np.uint8)


def read_pcd(path: str | Path, drop_nan: bool = True) -> PCDCloud:
    """Read a PCD file with ``x y z`` and optionally ``rgb``/``rgba``, ``label``, ``intensity``.

    Args:
        path: the ``.pcd`` file.
        drop_nan: drop points with a non-finite coordinate (organized clouds mark invalid
            pixels with NaN); ``False`` keeps all ``WIDTH * HEIGHT`` points.

    Raises:
        RecordingError: missing or unreadable file, a malformed header or data section,
            or no ``x``/``y``/``z`` field.
    """
    from pypcd4 import PointCloud

    path = Path(path)
    if not path.is_file():
        raise RecordingError(path, "PCD file not found")
    try:
        pc = PointCloud.from_path(path)
        data = pc.pc_data
        width, height = int(pc.metadata.width), int(pc.metadata.height)
    except Exception as exc:  # noqa: BLE001 - pypcd4 raises pydantic, lzf, numpy and struct errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RecordingError(path, f"not a readable PCD file ({type(exc).__name__}: {first})") from None
    names = data.dtype.names or ()
    missing = [c for c in "xyz" if c not in names]
    if missing:
        raise RecordingError(path, f"PCD has no {missing} field(s) (fields: {list(names)})")
    n = len(data)
    xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32)
    cname = "rgba" if "rgba" in names else ("rgb" if "rgb" in names else None)
    rgb = _unpack_color(np.ascontiguousarray(data[cname])) if cname else None
    label = data["label"].astype(np.int64) if "label" in names else None
    intensity = data["intensity"].astype(np.float32) if "intensity" in names else None
    index = np.arange(n, dtype=np.int64)
    if drop_nan:
        keep = np.isfinite(xyz).all(axis=1)
        xyz, index = xyz[keep], index[keep]
        rgb, label, intensity = (None if a is None else a[keep] for a in (rgb, label, intensity))
    return PCDCloud(xyz=xyz, rgb=rgb, label=label, index=index, width=width, height=height, intensity=intensity)


def fit_intrinsics(cloud: PCDCloud, path: str | Path = "") -> tuple[float, float, float, float]:
    """Pinhole intrinsics ``(fx, fy, cx, cy)`` (pixels) that project an organized cloud's
    points onto their own pixels: least squares of ``u = fx * x / z + cx`` and
    ``v = fy * y / z + cy`` over the valid points, rounded to 1e-3 px.

    Raises:
        RecordingError: not organized, fewer than 10 valid points, or a largest pixel error
            above :data:`FIT_TOLERANCE_PX` (the points are not a pinhole image: give fx fy
            cx cy).
    """
    if not cloud.organized:
        raise RecordingError(path, "intrinsics can only be fitted to an organized cloud (HEIGHT > 1)")
    z = cloud.xyz[:, 2].astype(np.float64)
    ok = np.isfinite(cloud.xyz).all(axis=1) & (z > 1e-6)
    if ok.sum() < 10:
        raise RecordingError(path, "too few valid points to fit intrinsics; give fx fy cx cy")
    v, u = np.divmod(cloud.index[ok], cloud.width)
    out, worst = [], 0.0
    for coord, pix in ((cloud.xyz[ok, 0] / z[ok], u), (cloud.xyz[ok, 1] / z[ok], v)):
        A = np.stack([coord, np.ones_like(coord)], axis=1)
        sol = np.linalg.lstsq(A, pix.astype(np.float64), rcond=None)[0]
        worst = max(worst, float(np.abs(A @ sol - pix).max()))
        out.append(sol)
    if worst > FIT_TOLERANCE_PX:
        raise RecordingError(path, f"the organized cloud is not a pinhole image (fit error {worst:.2f} px); "
                                   "give the intrinsics fx fy cx cy")
    (fx, cx), (fy, cy) = out
    return tuple(round(float(x), 3) for x in (fx, fy, cx, cy))  # type: ignore[return-value]


def natural_key(p: Path) -> list:
    """Sort key putting ``learn2`` before ``learn10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def list_files(path: Path, suffix: str) -> list[Path]:
    """``path`` itself, or the ``*suffix`` files of a folder in natural order.

    Raises:
        RecordingError: missing path, or a folder without such files.
    """
    if not path.exists():
        raise RecordingError(path, "no such file or folder")
    if path.is_file():
        return [path]
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() == suffix), key=natural_key)
    if not files:
        raise RecordingError(path, f"the folder holds no {suffix} file")
    return files


class PcdRecording:
    """PCD files as frames: one :class:`~concerto_ros.recordings.frame.SensorFrame` per file.

    Every frame has ``cloud`` (the finite points in the file's frame, colours, intensity,
    ``index`` into the organized grid) and per-point ``labels``; ``T_world_sensor`` is the
    identity (each file is its own scene: ``independent_frames``). Organized clouds also get
    ``rgbd``: the colour image (every pixel's colour, black without one), a ``float32``
    depth image in metres (the points' z, NaN where invalid, ``depth_scale`` 1) and
    per-pixel labels, with intrinsics given or fitted (:func:`fit_intrinsics`).

    Args:
        path: a ``.pcd`` file or a folder of them (natural order: ``learn2`` before
            ``learn10``).
        intrinsics: ``(fx, fy, cx, cy)`` pixels for organized clouds (None: fitted).
        label_set: map label values to class indices (None: unchanged).
        frame_id: the files' frame (mOSD: a camera optical frame).
        rate_hz: stamps are ``DEFAULT_START_STAMP_NS + i / rate_hz``.
        max_frames: 0 = all files. stride: every n-th file.

    Raises:
        RecordingError: missing path or no ``.pcd`` file; while iterating, see
            :func:`read_pcd` and :func:`fit_intrinsics`.
    """

    kind = "frames"
    independent_frames = True

    def __init__(self, path: str | Path, intrinsics: tuple[float, float, float, float] | None = None,
                 label_set: LabelSet | None = None, frame_id: str = "camera_optical_frame", rate_hz: float = 10.0,
                 max_frames: int = 0, stride: int = 1) -> None:
        from concerto_ros.recordings.rgbd_folder import DEFAULT_START_STAMP_NS

        self.path = Path(path)
        self.files = list_files(self.path, ".pcd")[:: max(1, int(stride))][: (int(max_frames) or None)]
        self.intrinsics = intrinsics
        self.label_set = label_set
        self.frame_id = frame_id
        self._stamp = lambda i: DEFAULT_START_STAMP_NS + round(i * 1e9 / float(rate_hz))

    def __len__(self) -> int:
        return len(self.files)

    def _labels(self, raw: np.ndarray | None) -> np.ndarray | None:
        if raw is None:
            return None
        return self.label_set.map(raw) if self.label_set is not None else raw.astype(np.int32)

    def read(self, i: int) -> SensorFrame:
        """Frame of file ``i`` (an index into :attr:`files`)."""
        path = self.files[i]
        full = read_pcd(path, drop_nan=False)
        keep = np.isfinite(full.xyz).all(axis=1)
        pick = (lambda a: None if a is None else np.ascontiguousarray(a[keep]))
        cloud = SensorCloud(xyz=np.ascontiguousarray(full.xyz[keep]), colors=pick(full.rgb),
                            intensity=pick(full.intensity), frame_id=self.frame_id, index=full.index[keep],
                            shape=(full.height, full.width) if full.organized else None)
        labels = self._labels(None if full.label is None else full.label[keep])
        stamp = self._stamp(i)
        rgbd = image = None
        if full.organized:
            h, w = full.height, full.width
            fx, fy, cx, cy = self.intrinsics or fit_intrinsics(full, path)
            image = (full.rgb if full.rgb is not None else np.zeros((h * w, 3), np.uint8)).reshape(h, w, 3)
            depth = np.where(keep, full.xyz[:, 2], np.nan).astype(np.float32).reshape(h, w)
            pixel_labels = self._labels(full.label)
            rgbd = RGBDFrame(stamp_ns=stamp, frame_id=self.frame_id, color=np.ascontiguousarray(image), depth=depth,
                             depth_scale=1.0, intrinsics=CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy, width=w, height=h),
                             labels=None if pixel_labels is None else pixel_labels.reshape(h, w))
        return SensorFrame(stamp_ns=stamp, key=path.stem, T_world_sensor=np.eye(4), rgbd=rgbd, cloud=cloud,
                           labels=labels, image=image)

    def frames(self) -> Iterator[SensorFrame]:
        """One frame per file, in order."""
        for i in range(len(self.files)):
            yield self.read(i)
