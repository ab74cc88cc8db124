"""RGB-D folders: read (:class:`RgbdFolderRecording`) and write (:class:`RgbdFolderWriter`).

The RGB-D folder format
-----------------------
::

    FOLDER/
      color/<stem>.png|jpg|jpeg   8-bit colour as OpenCV reads it (BGR channel order in
                                  memory for normal image files: color_order="bgr");
                                  color_order="rgb" for files whose channels were saved
                                  swapped. Grey images are expanded to 3 channels.
      depth/<stem>.png|pgm        16-bit depth registered to the colour image (same size,
                                  same intrinsics), ``depth_scale`` units per metre
                                  (1000 = millimetres, TUM uses 5000), 0 = invalid.
      labels/<stem>.png           optional, uint16 (or uint8) per-pixel label values.
      pose.txt | poses.txt        one line per frame, ``tx ty tz qx qy qz qw``: the
                                  camera-to-world pose of the camera *optical* frame
                                  (z forward, x right, y down), metres; lines starting
                                  with ``#`` and blank lines are ignored. An optional
                                  leading timestamp column in seconds
                                  (``t tx ty tz qx qy qz qw``) gives the frame stamps.
      camera.yaml                 optional: ``fx fy cx cy`` (pixels) ``width height``
                                  (pixels) ``depth_scale`` (units per metre) and optional
                                  ``rate_hz``, ``class_names`` (list); used for values not
                                  given as arguments.

Frames are matched by stem across ``color/``, ``depth/`` and ``labels/`` and sorted
numerically when every stem is a number (``2`` before ``10``), else lexicographically;
pose line *i* belongs to the *i*-th frame. Frame *i* is stamped with the pose file's
stamp when it has them, else ``start_stamp_ns + round(i * 1e9 / rate_hz)``
(:data:`DEFAULT_START_STAMP_NS`), the same stamps ``concerto convert rgbd`` writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from concerto_ros.msgs.transforms import matrix_to_transform, transform_to_matrix
from concerto_ros.recordings.errors import RecordingError
from concerto_ros.recordings.frame import SensorFrame
from concerto_ros.recordings.labels import LabelSet
from concerto_ros.sensors.types import CameraIntrinsics, RGBDFrame

__all__ = [
    "DEFAULT_START_STAMP_NS",
    "CAMERA_FRAME",
    "RgbdFolder",
    "scan_rgbd_folder",
    "read_poses",
    "resolve_intrinsics",
    "read_color",
    "read_depth",
    "read_label_image",
    "RgbdFolderRecording",
    "RgbdFolderWriter",
    "depth_to_units",
]

#: first frame stamp when the pose file has no stamps: 2023-11-14T22:13:20Z, in ns
#: (a fixed value keeps conversions reproducible; 0 would mean "latest" to tf2)
DEFAULT_START_STAMP_NS = 1_700_000_000_000_000_000
#: optical frame name of the images
CAMERA_FRAME = "camera_color_optical_frame"

COLOR_EXTS = (".png", ".jpg", ".jpeg")
DEPTH_EXTS = (".png", ".pgm")
LABEL_EXTS = (".png",)
POSE_FILES = ("pose.txt", "poses.txt")
NS_PER_S = 1_000_000_000


@dataclass
class RgbdFolder:
    """A scanned RGB-D folder (see the module docstring for the format).

    ``stems`` in frame order; ``color``/``depth``/``labels`` paths per frame
    (``labels`` empty when there is no label folder); ``poses`` ``(N, 4, 4)`` float64
    camera-to-world (optical frame); ``stamps_ns`` from the pose file or None;
    ``camera`` the parsed ``camera.yaml`` (empty dict when absent).
    """

    root: Path
    stems: list[str]
    color: list[Path]
    depth: list[Path]
    labels: list[Path]
    pose_file: Path
    poses: np.ndarray
    stamps_ns: list[int] | None
    camera: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- scanning
def _stem_sort_key(stems: list[str]) -> list[str]:
    try:
        return sorted(stems, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(stems)


def _index_dir(directory: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in directory.iterdir():
        if p.is_file() and p.suffix.lower() in exts:
            if p.stem in found:
                raise RecordingError(directory, f"two files with stem {p.stem!r}: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    return found


def _seconds_to_ns(token: str, where: str) -> int:
    try:
        value = Decimal(token)
    except InvalidOperation:
        raise RecordingError(where, f"timestamp {token!r} is not a number") from None
    if not value.is_finite():
        raise RecordingError(where, f"timestamp {token!r} is not finite")
    return int((value * NS_PER_S).to_integral_value(rounding=ROUND_HALF_EVEN))


def _pose_line(path: Path, lineno: int, tokens: list[str]) -> np.ndarray:
    where = f"{path}:{lineno}"
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise RecordingError(where, f"non-numeric pose value in {' '.join(tokens)!r}") from None
    try:
        return transform_to_matrix(values[:3], values[3:])
    except ValueError as err:
        raise RecordingError(where, str(err)) from None


def read_poses(path: str | Path) -> tuple[np.ndarray, list[int] | None]:
    """Parse a pose file: ``tx ty tz qx qy qz qw`` or ``t tx ty tz qx qy qz qw`` per line.

    Returns:
        ``(poses (N, 4, 4) float64, stamps_ns or None)``: camera-to-world matrices
        (quaternions normalised) and, for 8-column files, the stamps in int ns
        (parsed exactly from the decimal text).

    Raises:
        RecordingError: a missing file, a line with another column count, mixed 7/8
            columns, a non-numeric/non-finite value, a zero quaternion, or stamps that do
            not strictly increase (file and line number in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise RecordingError(path, "pose file not found")
    poses: list[np.ndarray] = []
    stamps: list[int] = []
    ncols = None
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        tokens = text.replace(",", " ").split()
        if len(tokens) not in (7, 8):
            raise RecordingError(f"{path}:{lineno}", f"expected 7 columns 'tx ty tz qx qy qz qw' or 8 with a "
                                                     f"leading timestamp, got {len(tokens)}")
        if ncols is None:
            ncols = len(tokens)
        elif len(tokens) != ncols:
            raise RecordingError(f"{path}:{lineno}", f"{len(tokens)} columns, earlier lines have {ncols}")
        if ncols == 8:
            stamps.append(_seconds_to_ns(tokens[0], f"{path}:{lineno}"))
            tokens = tokens[1:]
        poses.append(_pose_line(path, lineno, tokens))
    if not poses:
        raise RecordingError(path, "no poses")
    if stamps and any(b <= a for a, b in zip(stamps, stamps[1:], strict=False)):
        raise RecordingError(path, "timestamps must strictly increase")
    return np.stack(poses), (stamps if ncols == 8 else None)


def _label_paths(root: Path, labels_dir: Path | None, stems: list[str]) -> list[Path]:
    folder = labels_dir if labels_dir is not None else root / "labels"
    if not folder.is_dir():
        if labels_dir is not None:
            raise RecordingError(folder, "label image folder not found")
        return []
    index = _index_dir(folder, LABEL_EXTS)
    for stem in stems:
        if stem not in index:
            raise RecordingError(folder / f"{stem}.png", f"{folder.name}/ has no label image for frame {stem!r}")
    return [index[s] for s in stems]


def _camera_yaml(root: Path) -> dict[str, Any]:
    cam_file = root / "camera.yaml"
    if not cam_file.is_file():
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(cam_file.read_text())
    except yaml.YAMLError as exc:
        raise RecordingError(cam_file, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise RecordingError(cam_file, "expected a mapping of keys fx fy cx cy ...")
    return dict(loaded or {})


def scan_rgbd_folder(folder: str | Path, labels_dir: str | Path | None = None) -> RgbdFolder:
    """Find and match the files of an RGB-D folder; read poses and ``camera.yaml``.

    Images are not opened here.

    Args:
        folder: the RGB-D folder.
        labels_dir: folder of the label images (default ``FOLDER/labels`` when it exists).

    Raises:
        RecordingError: missing folder, ``color/``, ``depth/``, pose file, or a frame's
            depth/colour/label file (the expected path is named); duplicate stems, no
            frames, image/pose count mismatch, a bad pose file or ``camera.yaml``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise RecordingError(root, "RGB-D folder not found")
    for sub in ("color", "depth"):
        if not (root / sub).is_dir():
            raise RecordingError(root / sub, f"RGB-D folder has no {sub}/ directory")
    colors = _index_dir(root / "color", COLOR_EXTS)
    depths = _index_dir(root / "depth", DEPTH_EXTS)
    if not colors:
        raise RecordingError(root / "color", f"no colour images ({'/'.join(COLOR_EXTS)})")
    for stem in colors:
        if stem not in depths:
            raise RecordingError(root / "depth" / stem, f"no depth image ({'/'.join(DEPTH_EXTS)}) for {colors[stem].name}")
    for stem in depths:
        if stem not in colors:
            raise RecordingError(root / "color" / stem, f"no colour image ({'/'.join(COLOR_EXTS)}) for {depths[stem].name}")
    stems = _stem_sort_key(list(colors))
    labels = _label_paths(root, None if labels_dir is None else Path(labels_dir), stems)
    pose_file = next((root / n for n in POSE_FILES if (root / n).is_file()), None)
    if pose_file is None:
        raise RecordingError(root, f"no pose file: expected one of {', '.join(POSE_FILES)}")
    poses, stamps = read_poses(pose_file)
    if len(poses) != len(stems):
        raise RecordingError(pose_file, f"{len(poses)} poses but {root} has {len(stems)} RGB-D frames")
    return RgbdFolder(root=root, stems=stems, color=[colors[s] for s in stems], depth=[depths[s] for s in stems],
                      labels=labels, pose_file=pose_file, poses=poses, stamps_ns=stamps, camera=_camera_yaml(root))


# --------------------------------------------------------------------------- images
def _imread(path: Path, flags: int) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), flags)
    if img is None:
        raise RecordingError(path, "cannot read the image (missing, empty or not an image file)")
    return img


def read_color(path: str | Path, color_order: str = "bgr") -> np.ndarray:
    """``(H, W, 3) uint8`` RGB of a colour file (``color_order`` as in the module docstring).

    Raises:
        RecordingError: unreadable or not 8-bit.
    """
    import cv2

    img = _imread(Path(path), cv2.IMREAD_COLOR)
    if img.dtype != np.uint8:
        raise RecordingError(path, f"colour image must be 8-bit, got {img.dtype}")
    return np.ascontiguousarray(img[:, :, ::-1]) if color_order == "bgr" else img


def read_depth(path: str | Path) -> np.ndarray:
    """``(H, W) uint16`` depth file values (``depth_scale`` units per metre, 0 = invalid).

    Raises:
        RecordingError: unreadable, more than one channel, or not 16-bit.
    """
    import cv2

    img = _imread(Path(path), cv2.IMREAD_UNCHANGED)
    if img.ndim != 2:
        raise RecordingError(path, f"depth image must have one channel, got shape {img.shape}")
    if img.dtype != np.uint16:
        raise RecordingError(path, f"depth image must be 16-bit (uint16, depth_scale units per metre), got {img.dtype}")
    return img


def read_label_image(path: str | Path) -> np.ndarray:
    """``(H, W) uint16`` label values of a one-channel uint8/uint16 label image.

    Raises:
        RecordingError: unreadable or of another kind.
    """
    import cv2

    img = _imread(Path(path), cv2.IMREAD_UNCHANGED)
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16):
        raise RecordingError(path, f"label image must be one-channel uint8/uint16, got {img.shape} {img.dtype}")
    return img.astype(np.uint16)


def resolve_intrinsics(intrinsics: Any, camera: Mapping[str, Any], root: Path
                       ) -> tuple[tuple[float, float, float, float], tuple[int, int] | None]:
    """``((fx, fy, cx, cy), (width, height) or None)`` from an argument or ``camera.yaml``.

    Args:
        intrinsics: ``(fx, fy, cx, cy)`` pixels, optionally ``+ (width, height)``, a mapping
            or an object with those keys/attributes (e.g. ``CameraIntrinsics``), or None to
            read them from ``camera``.
        camera: the parsed ``camera.yaml``.
        root: the folder (for messages).

    Raises:
        RecordingError: none given and none in ``camera.yaml``, or invalid values.
    """
    size = None
    if intrinsics is None:
        missing = [k for k in ("fx", "fy", "cx", "cy") if k not in camera]
        if missing:
            raise RecordingError(root, f"no intrinsics: pass fx fy cx cy (or --fx --fy --cx --cy) or add {missing} "
                                       "to camera.yaml")
        values = [camera[k] for k in ("fx", "fy", "cx", "cy")]
        if "width" in camera and "height" in camera:
            size = (int(camera["width"]), int(camera["height"]))
    elif isinstance(intrinsics, Mapping):
        values = [intrinsics[k] for k in ("fx", "fy", "cx", "cy")]
        if "width" in intrinsics and "height" in intrinsics:
            size = (int(intrinsics["width"]), int(intrinsics["height"]))
    elif hasattr(intrinsics, "fx"):
        values = [intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy]
        if getattr(intrinsics, "width", None) and getattr(intrinsics, "height", None):
            size = (int(intrinsics.width), int(intrinsics.height))
    else:
        seq = list(intrinsics)
        if len(seq) not in (4, 6):
            raise RecordingError(root, f"intrinsics must be (fx, fy, cx, cy) or (fx, fy, cx, cy, width, height), got {seq}")
        values = seq[:4]
        size = (int(seq[4]), int(seq[5])) if len(seq) == 6 else None
    fx, fy, cx, cy = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise RecordingError(root, f"bad intrinsics fx={fx} fy={fy} cx={cx} cy={cy} (pixels, fx, fy > 0)")
    return (fx, fy, cx, cy), size


# --------------------------------------------------------------------------- reading
class RgbdFolderRecording:
    """Frames of an RGB-D folder, as :class:`~concerto_ros.recordings.frame.SensorFrame`.

    Each frame has ``rgbd`` (colour RGB, the depth file's ``uint16`` values with
    ``depth_scale``, intrinsics, per-pixel labels), ``image`` (the colour image),
    ``labels`` per pixel and ``T_world_sensor`` = the pose line (camera optical frame ->
    world). Images are read lazily, one frame at a time.

    Args:
        folder: the RGB-D folder.
        intrinsics: see :func:`resolve_intrinsics` (None: ``camera.yaml``).
        depth_scale: depth units per metre (None: ``camera.yaml``'s, else 1000).
        rate_hz: frame rate for stamps when the pose file has none (``camera.yaml``'s
            ``rate_hz`` wins when this is None; else 30).
        color_order: ``"bgr"`` or ``"rgb"``.
        labels_dir: folder of label images (default ``labels/``).
        label_set: map label values to class indices (None: the values unchanged).
        frame_id: name of the camera's optical frame.
        start_stamp_ns: stamp of frame 0 without pose stamps.
        max_frames: stop after this many frames (0 = all). stride: every n-th frame.

    Raises:
        RecordingError: see :func:`scan_rgbd_folder` and :func:`resolve_intrinsics`; while
            iterating: unreadable images, size mismatches (named by file).
    """

    kind = "frames"

    def __init__(self, folder: str | Path, intrinsics: Any = None, depth_scale: float | None = None,
                 rate_hz: float | None = None, color_order: str = "bgr", labels_dir: str | Path | None = None,
                 label_set: LabelSet | None = None, frame_id: str = CAMERA_FRAME,
                 start_stamp_ns: int = DEFAULT_START_STAMP_NS, max_frames: int = 0, stride: int = 1) -> None:
        self.folder = scan_rgbd_folder(folder, labels_dir)
        cam = self.folder.camera
        (fx, fy, cx, cy), self.size = resolve_intrinsics(intrinsics, cam, self.folder.root)
        self.fx, self.fy, self.cx, self.cy = fx, fy, cx, cy
        self.depth_scale = float(depth_scale if depth_scale is not None else cam.get("depth_scale", 1000.0))
        if not (math.isfinite(self.depth_scale) and self.depth_scale > 0):
            raise RecordingError(self.folder.root, f"depth_scale must be > 0 units per metre, got {self.depth_scale}")
        rate = float(rate_hz if rate_hz is not None else cam.get("rate_hz", 30.0))
        if self.folder.stamps_ns is None and not (math.isfinite(rate) and rate > 0):
            raise RecordingError(self.folder.root, f"rate_hz must be > 0, got {rate}")
        n = len(self.folder.stems)
        self.stamps_ns = list(self.folder.stamps_ns) if self.folder.stamps_ns is not None else \
            [int(start_stamp_ns) + round(i * NS_PER_S / rate) for i in range(n)]
        if color_order not in ("bgr", "rgb"):
            raise RecordingError(self.folder.root, f"color_order must be 'bgr' or 'rgb', got {color_order!r}")
        self.color_order = color_order
        self.label_set = label_set
        self.frame_id = frame_id
        self.indices = list(range(0, n, max(1, int(stride))))[: (int(max_frames) or None)]
        self._seen: tuple[int, int] | None = None  # (width, height) of the frames read so far

    @property
    def path(self) -> Path:
        return self.folder.root

    @property
    def has_labels(self) -> bool:
        return bool(self.folder.labels)

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int) -> SensorFrame:
        """Frame ``i`` of the folder (``0 <= i < len(stems)``, any stride)."""
        f = self.folder
        rgb = read_color(f.color[i], self.color_order)
        depth = read_depth(f.depth[i])
        h, w = depth.shape
        if rgb.shape[:2] != (h, w):
            raise RecordingError(f.color[i], f"size mismatch: colour {f.color[i]} is {rgb.shape[1]}x{rgb.shape[0]}, "
                                             f"depth {f.depth[i]} is {w}x{h}")
        if self.size is not None and self.size != (w, h):
            raise RecordingError(f.color[i], f"intrinsics are for {self.size[0]}x{self.size[1]} images but the "
                                             f"image is {w}x{h}")
        if self._seen is not None and self._seen != (w, h):
            raise RecordingError(f.color[i], f"image size changes: this image is {w}x{h}, an earlier frame's "
                                             f"{self._seen[0]}x{self._seen[1]}")
        self._seen = (w, h)
        labels = None
        if f.labels:
            raw = read_label_image(f.labels[i])
            if raw.shape != (h, w):
                raise RecordingError(f.labels[i], f"size mismatch: label image is {raw.shape[1]}x{raw.shape[0]}, "
                                                  f"colour is {w}x{h}")
            labels = self.label_set.map(raw) if self.label_set is not None else raw.astype(np.int32)
        intr = CameraIntrinsics(fx=self.fx, fy=self.fy, cx=self.cx, cy=self.cy, width=w, height=h)
        rgbd = RGBDFrame(stamp_ns=self.stamps_ns[i], frame_id=self.frame_id, color=rgb, depth=depth,
                         depth_scale=self.depth_scale, intrinsics=intr, labels=labels)
        return SensorFrame(stamp_ns=self.stamps_ns[i], key=f.stems[i], T_world_sensor=f.poses[i], rgbd=rgbd,
                           labels=labels, image=rgb)

    def frames(self) -> Iterator[SensorFrame]:
        """The frames in order (after ``stride`` and ``max_frames``)."""
        for i in self.indices:
            yield self.read(i)


# --------------------------------------------------------------------------- writing
def depth_to_units(depth_m: np.ndarray, depth_scale: float = 1000.0) -> np.ndarray:
    """``(H, W)`` float metres -> ``(H, W) uint16`` in ``depth_scale`` units per metre
    (``rint(d * depth_scale)``; 0 = invalid for non-finite, non-positive or > 65535 units)."""
    d = np.asarray(depth_m, dtype=np.float64)
    units = np.rint(np.where(np.isfinite(d) & (d > 0), d, 0.0) * float(depth_scale))
    units[(units > 65535) | (units < 0)] = 0
    return units.astype(np.uint16)


def _pose_text(T: np.ndarray, stamp_ns: int | None) -> str:
    t, q = matrix_to_transform(T)
    vals = " ".join(f"{v + 0.0:.9f}" for v in (*t, *q))  # + 0.0: no "-0.000000000"
    if stamp_ns is None:
        return vals
    sec, ns = divmod(int(stamp_ns), NS_PER_S)
    return f"{sec}.{ns:09d} {vals}"


class RgbdFolderWriter:
    """Write frames in the RGB-D folder format (module docstring); use as a context manager.

    ``color/<stem>.png`` (8-bit, BGR on disk), ``depth/<stem>.png`` (uint16,
    ``depth_scale`` units per metre), ``labels/<stem>.png`` (uint16) when labels are
    given, ``poses.txt`` (camera-to-world of the optical frame, with a leading stamp
    column in seconds when stamps are given) and ``camera.yaml`` (``fx fy cx cy width height
    depth_scale`` ``rate_hz`` and ``extra``). Output is byte-identical for identical input.

    Args:
        root: the folder (created).
        intrinsics: :class:`~concerto_ros.sensors.types.CameraIntrinsics` of the images.
        depth_scale: depth units per metre of the written files.
        rate_hz: written to ``camera.yaml`` (frame rate of readers without stamps).
        extra: more ``camera.yaml`` keys (e.g. ``class_names``).
        overwrite: write into a folder that has frames already; frame files this writer
            does not write again are removed when it closes.

    Raises:
        RecordingError: the folder has frames and ``overwrite`` is False; on write: bad
            shapes or dtypes, labels outside 0..65535, an unwritable file.
    """

    def __init__(self, root: str | Path, intrinsics: CameraIntrinsics, depth_scale: float = 1000.0,
                 rate_hz: float | None = None, extra: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
        self.root = Path(root)
        self.intrinsics = intrinsics
        self.depth_scale = float(depth_scale)
        self.rate_hz = rate_hz
        self.extra = dict(extra or {})
        self.dirs = {k: self.root / k for k in ("color", "depth", "labels")}
        existing = [p for d in self.dirs.values() if d.is_dir() for p in d.iterdir()]
        if existing and not overwrite:
            raise RecordingError(self.root, "the RGB-D folder has frames already (overwrite=True to replace them)")
        self._existing = set(existing)
        self._written: set[Path] = set()
        self._poses: list[str] = []
        self._stamped: bool | None = None
        for k in ("color", "depth"):
            self.dirs[k].mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "RgbdFolderWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def _imwrite(self, kind: str, stem: str, image: np.ndarray) -> None:
        import cv2

        self.dirs[kind].mkdir(parents=True, exist_ok=True)
        path = self.dirs[kind] / f"{stem}.png"
        if not cv2.imwrite(str(path), image):
            raise RecordingError(path, "cannot write the image")
        self._written.add(path)

    def write(self, color: np.ndarray, depth: np.ndarray, T_world_camera: np.ndarray,
              labels: np.ndarray | None = None, stamp_ns: int | None = None, stem: str | None = None) -> str:
        """Write one frame; returns its stem (default ``%06d`` of the frame number).

        Args:
            color: ``(H, W, 3) uint8`` RGB.
            depth: ``(H, W)`` float metres (converted with :func:`depth_to_units`) or
                ``uint16`` already in ``depth_scale`` units.
            T_world_camera: ``(4, 4)`` camera optical frame -> world.
            labels: ``(H, W)`` integer label values 0..65535, or None.
            stamp_ns: the frame's stamp (all frames or none).
        """
        h, w = self.intrinsics.height, self.intrinsics.width
        if color.shape != (h, w, 3) or color.dtype != np.uint8 or depth.shape != (h, w):
            raise RecordingError(self.root, f"frame must be colour ({h}, {w}, 3) uint8 and depth ({h}, {w}), got "
                                            f"{color.shape} {color.dtype} and {depth.shape}")
        if self._stamped is not None and self._stamped != (stamp_ns is not None):
            raise RecordingError(self.root, "give stamp_ns for every frame or for none")
        self._stamped = stamp_ns is not None
        stem = stem or f"{len(self._poses):06d}"
        self._imwrite("color", stem, np.ascontiguousarray(color[..., ::-1]))
        self._imwrite("depth", stem, depth if depth.dtype == np.uint16 else depth_to_units(depth, self.depth_scale))
        if labels is not None:
            lab = np.asarray(labels)
            if lab.shape != (h, w) or lab.min(initial=0) < 0 or lab.max(initial=0) > 65535:
                raise RecordingError(self.root, f"labels must be ({h}, {w}) values in 0..65535")
            self._imwrite("labels", stem, lab.astype(np.uint16))
        self._poses.append(_pose_text(np.asarray(T_world_camera, dtype=np.float64), stamp_ns))
        return stem

    def close(self) -> Path:
        """Write ``poses.txt`` and ``camera.yaml``, remove stale frame files; returns the folder."""
        import yaml

        for stale in self._existing - self._written:
            if stale.is_file():
                stale.unlink()
        (self.root / "poses.txt").write_text("\n".join(self._poses) + "\n")
        k = self.intrinsics
        scale = int(self.depth_scale) if self.depth_scale.is_integer() else self.depth_scale
        cam = {"fx": float(k.fx), "fy": float(k.fy), "cx": float(k.cx), "cy": float(k.cy),
               "width": int(k.width), "height": int(k.height), "depth_scale": scale}
        if self.rate_hz is not None:
            cam["rate_hz"] = float(self.rate_hz)
        cam.update(self.extra)
        (self.root / "camera.yaml").write_text(yaml.safe_dump(cam, sort_keys=False, default_flow_style=None))
        return self.root
