"""Convert an RGB-D folder (colour + depth + poses) into a rosbag2 (MCAP or sqlite3).

No ROS install is needed: messages are built and serialised with the ``rosbags`` type
store of ROS 2 Kilted, so the bag replays with ``ros2 bag play`` and is read back by
:mod:`concerto_ros.bag.reader`.

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
      labels/<stem>.png           optional, uint16 (or uint8) per-pixel class ids.
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
pose line *i* belongs to the *i*-th frame.

What is written (defaults; every topic name can be changed with ``topics=``)
----------------------------------------------------------------------------
* ``/camera/color/image_raw`` ``sensor_msgs/msg/Image`` ``rgb8``;
* ``/camera/depth/image_raw`` ``sensor_msgs/msg/Image`` ``16UC1`` millimetres (the ROS
  convention). With ``depth_scale != 1000`` values become ``round(d / depth_scale *
  1000)`` (half to even); values above 65535 mm become 0 (invalid) and are counted;
* ``/camera/color/camera_info`` ``sensor_msgs/msg/CameraInfo``: K, P = [K|0], R = I,
  ``plumb_bob`` with zero D;
* ``/camera/labels/image_raw`` ``Image`` ``16UC1`` when ``labels/`` exists;
* ``/tf_static`` once (transient-local QoS): ``camera_link -> camera_frame``, the
  REP-103 optical rotation (quaternion xyzw ``(-0.5, 0.5, -0.5, 0.5)``);
* ``/tf`` per frame: ``fixed_frame -> camera_link`` = pose · inverse(optical
  rotation), so the chain ``fixed_frame -> camera_link -> camera_frame`` equals the
  given optical-frame pose exactly. With ``camera_link_frame=None`` the pose is
  published directly as ``fixed_frame -> camera_frame`` and ``/tf_static`` is omitted.

All messages of frame *i* share the header stamp *t_i*, which is also the bag log time:
the pose file's stamps when present, else ``start_stamp_ns + round(i * 1e9 / rate_hz)``.
Images and camera info are in ``camera_frame``.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from concerto_ros.msgs.camera_info import fill_camera_info
from concerto_ros.msgs.image import fill_image
from concerto_ros.msgs.transforms import (
    LINK_T_OPTICAL,
    OPTICAL_FROM_LINK_QUAT_XYZW,
    fill_transform_stamped,
    invert_transform,
    transform_to_matrix,
)

__all__ = [
    "DEFAULT_TOPICS",
    "DEFAULT_START_STAMP_NS",
    "ConversionReport",
    "RgbdFolder",
    "scan_rgbd_folder",
    "read_poses",
    "depth_to_millimetres",
    "make_message",
    "convert_rgbd_folder",
]

#: topic key -> default topic name
DEFAULT_TOPICS: dict[str, str] = {
    "color": "/camera/color/image_raw",
    "depth": "/camera/depth/image_raw",
    "camera_info": "/camera/color/camera_info",
    "labels": "/camera/labels/image_raw",
    "tf": "/tf",
    "tf_static": "/tf_static",
}

#: first frame stamp when the pose file has no stamps: 2023-11-14T22:13:20Z, in ns
#: (a fixed value keeps conversions reproducible; 0 would mean "latest" to tf2)
DEFAULT_START_STAMP_NS = 1_700_000_000_000_000_000

COLOR_EXTS = (".png", ".jpg", ".jpeg")
DEPTH_EXTS = (".png", ".pgm")
LABEL_EXTS = (".png",)
POSE_FILES = ("pose.txt", "poses.txt")
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_rgbd_folder` wrote.

    Attributes:
        bag_path: the rosbag2 directory.
        storage: ``"mcap"`` or ``"sqlite3"``.
        frames: number of RGB-D frames.
        topics: ``topic -> (msgtype, message count)``.
        start_stamp_ns, end_stamp_ns: first and last frame stamps (int ns).
        width, height: image size in pixels.
        intrinsics: ``(fx, fy, cx, cy)`` in pixels.
        input_depth_scale: depth units per metre of the input files.
        depth_pixels_out_of_range: input depth pixels above 65535 mm, written as 0.
        has_labels: whether a labels topic was written.
        size_bytes: total size of the bag's files.
    """

    bag_path: Path
    storage: str
    frames: int
    topics: dict[str, tuple[str, int]]
    start_stamp_ns: int
    end_stamp_ns: int
    width: int
    height: int
    intrinsics: tuple[float, float, float, float]
    input_depth_scale: float
    depth_pixels_out_of_range: int
    has_labels: bool
    size_bytes: int


@dataclass
class RgbdFolder:
    """A scanned RGB-D folder (see the module docstring for the format).

    ``stems`` in frame order; ``color``/``depth``/``labels`` paths per frame
    (``labels`` empty when there is no ``labels/``); ``poses`` ``(N, 4, 4)`` float64
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
                raise ValueError(
                    f"two files with stem {p.stem!r} in {directory}: {found[p.stem].name}, {p.name}"
                )
            found[p.stem] = p
    return found


def _seconds_to_ns(token: str, where: str) -> int:
    try:
        value = Decimal(token)
    except InvalidOperation:
        raise ValueError(f"{where}: timestamp {token!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{where}: timestamp {token!r} is not finite")
    return int((value * NS_PER_S).to_integral_value(rounding=ROUND_HALF_EVEN))


def read_poses(path: str | Path) -> tuple[np.ndarray, list[int] | None]:
    """Parse a pose file: ``tx ty tz qx qy qz qw`` or ``t tx ty tz qx qy qz qw`` per line.

    Returns:
        ``(poses (N, 4, 4) float64, stamps_ns or None)``: camera-to-world matrices
        (quaternions normalised) and, for 8-column files, the stamps in int ns
        (parsed exactly from the decimal text).

    Raises:
        FileNotFoundError: missing file.
        ValueError: a line with another column count, mixed 7/8 columns, a
            non-numeric/non-finite value, a zero quaternion, or stamps that do not
            strictly increase (file and line number in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose file not found: {path}")
    poses: list[np.ndarray] = []
    stamps: list[int] = []
    ncols = None
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        tokens = text.replace(",", " ").split()
        where = f"{path}:{lineno}"
        if len(tokens) not in (7, 8):
            raise ValueError(
                f"{where}: expected 7 columns 'tx ty tz qx qy qz qw' or 8 with a leading "
                f"timestamp, got {len(tokens)}"
            )
        if ncols is None:
            ncols = len(tokens)
        elif len(tokens) != ncols:
            raise ValueError(f"{where}: {len(tokens)} columns, earlier lines have {ncols}")
        if ncols == 8:
            stamps.append(_seconds_to_ns(tokens[0], where))
            tokens = tokens[1:]
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise ValueError(f"{where}: non-numeric pose value in {text!r}") from None
        try:
            poses.append(transform_to_matrix(values[:3], values[3:]))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    if not poses:
        raise ValueError(f"{path}: no poses")
    if stamps and any(b <= a for a, b in zip(stamps, stamps[1:], strict=False)):
        raise ValueError(f"{path}: timestamps must strictly increase")
    return np.stack(poses), (stamps if ncols == 8 else None)


def scan_rgbd_folder(folder: str | Path) -> RgbdFolder:
    """Find and match the files of an RGB-D folder; read poses and ``camera.yaml``.

    Images are not opened here.

    Raises:
        FileNotFoundError: missing folder, ``color/``, ``depth/``, pose file, or a
            frame's depth/colour/label file (the expected path is named).
        ValueError: duplicate stems, no frames, image/pose count mismatch, a bad pose
            file or ``camera.yaml``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"RGB-D folder not found: {root}")
    for sub in ("color", "depth"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"RGB-D folder has no {sub}/ directory: {root / sub}")
    colors = _index_dir(root / "color", COLOR_EXTS)
    depths = _index_dir(root / "depth", DEPTH_EXTS)
    if not colors:
        raise ValueError(f"no colour images ({'/'.join(COLOR_EXTS)}) in {root / 'color'}")
    for stem in colors:
        if stem not in depths:
            raise FileNotFoundError(
                f"no depth image for {colors[stem]}: expected {root / 'depth' / stem}"
                f"{{{','.join(DEPTH_EXTS)}}}"
            )
    for stem in depths:
        if stem not in colors:
            raise FileNotFoundError(
                f"no colour image for {depths[stem]}: expected {root / 'color' / stem}"
                f"{{{','.join(COLOR_EXTS)}}}"
            )
    stems = _stem_sort_key(list(colors))
    labels: list[Path] = []
    if (root / "labels").is_dir():
        label_index = _index_dir(root / "labels", LABEL_EXTS)
        for stem in stems:
            if stem not in label_index:
                raise FileNotFoundError(
                    f"labels/ exists but has no label image for frame {stem!r}: expected "
                    f"{root / 'labels' / stem}.png"
                )
        labels = [label_index[s] for s in stems]
    pose_file = next((root / n for n in POSE_FILES if (root / n).is_file()), None)
    if pose_file is None:
        raise FileNotFoundError(f"no pose file in {root}: expected one of {', '.join(POSE_FILES)}")
    poses, stamps = read_poses(pose_file)
    if len(poses) != len(stems):
        raise ValueError(
            f"{pose_file} has {len(poses)} poses but {root} has {len(stems)} RGB-D frames"
        )
    camera: dict[str, Any] = {}
    cam_file = root / "camera.yaml"
    if cam_file.is_file():
        import yaml

        loaded = yaml.safe_load(cam_file.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{cam_file}: expected a mapping of keys fx fy cx cy ...")
        camera = dict(loaded or {})
    return RgbdFolder(
        root=root,
        stems=stems,
        color=[colors[s] for s in stems],
        depth=[depths[s] for s in stems],
        labels=labels,
        pose_file=pose_file,
        poses=poses,
        stamps_ns=stamps,
        camera=camera,
    )


# --------------------------------------------------------------------------- images
def depth_to_millimetres(depth: np.ndarray, depth_scale: float) -> tuple[np.ndarray, int]:
    """Convert integer depth in ``depth_scale`` units per metre to ``uint16`` millimetres.

    Exact copy when ``depth_scale == 1000``; otherwise ``round(d / depth_scale * 1000)``
    (half to even). 0 stays 0 (invalid).

    Returns:
        ``(mm (H, W) uint16, number of pixels above 65535 mm that were set to 0)``.

    Raises:
        ValueError: non-positive or non-finite ``depth_scale``.
    """
    if not (math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be > 0 units per metre, got {depth_scale}")
    if float(depth_scale) == 1000.0 and depth.dtype == np.uint16:
        return depth.copy(), 0
    mm = np.rint(depth.astype(np.float64) / float(depth_scale) * 1000.0)
    over = mm > 65535
    n_over = int(np.count_nonzero(over))
    mm[over] = 0
    return mm.astype(np.uint16), n_over


def _imread(path: Path, flags: int) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), flags)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return img


def _read_color(path: Path, color_order: str) -> np.ndarray:
    import cv2

    img = _imread(path, cv2.IMREAD_COLOR)
    if img.dtype != np.uint8:
        raise ValueError(f"colour image {path} must be 8-bit, got {img.dtype}")
    return np.ascontiguousarray(img[:, :, ::-1]) if color_order == "bgr" else img


def _read_depth(path: Path) -> np.ndarray:
    import cv2

    img = _imread(path, cv2.IMREAD_UNCHANGED)
    if img.ndim != 2:
        raise ValueError(f"depth image {path} must have one channel, got shape {img.shape}")
    if img.dtype != np.uint16:
        raise ValueError(
            f"depth image {path} must be 16-bit (uint16, depth_scale units per metre), "
            f"got {img.dtype}"
        )
    return img


def _read_labels(path: Path) -> np.ndarray:
    import cv2

    img = _imread(path, cv2.IMREAD_UNCHANGED)
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"label image {path} must be one-channel uint8/uint16, got {img.shape} {img.dtype}"
        )
    return img.astype(np.uint16)


# --------------------------------------------------------------------------- messages
_NUMPY_BASE = {
    "bool": np.bool_,
    "byte": np.uint8,
    "char": np.uint8,
    "octet": np.uint8,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "float32": np.float32,
    "float64": np.float64,
}


def _default_value(typestore: Any, desc: tuple[Any, Any]) -> Any:
    kind, arg = int(desc[0]), desc[1]
    if kind == 1:  # BASE
        name = arg[0]
        if name in ("string", "wstring"):
            return ""
        if name == "bool":
            return False
        return 0.0 if name.startswith("float") else 0
    if kind == 2:  # NAME
        return make_message(typestore, arg)
    sub, length = arg
    if int(sub[0]) == 1 and sub[1][0] in _NUMPY_BASE:
        return np.zeros(length if kind == 3 else 0, dtype=_NUMPY_BASE[sub[1][0]])
    return [_default_value(typestore, sub) for _ in range(length if kind == 3 else 0)]


def make_message(typestore: Any, msgtype: str) -> Any:
    """A rosbags message of ``msgtype`` with ROS default values (zeros, ``""``, empty).

    Raises:
        KeyError: ``msgtype`` is not in the type store.
    """
    consts, fields = typestore.fielddefs[msgtype]
    cls = typestore.types[msgtype]
    return cls(**{name: _default_value(typestore, desc) for name, desc in fields})


def _tf_static_qos() -> list[Any]:
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    infinite = QosTime(9223372036, 854775807)
    return [
        Qos(
            QosHistory.KEEP_LAST,
            1,
            QosReliability.RELIABLE,
            QosDurability.TRANSIENT_LOCAL,
            infinite,
            infinite,
            QosLiveliness.AUTOMATIC,
            infinite,
            False,
        )
    ]


def _resolve_intrinsics(
    intrinsics: Any, camera: Mapping[str, Any], source: Path
) -> tuple[tuple[float, float, float, float], tuple[int, int] | None]:
    """-> ((fx, fy, cx, cy), (width, height) or None)."""
    size = None
    if intrinsics is None:
        missing = [k for k in ("fx", "fy", "cx", "cy") if k not in camera]
        if missing:
            raise ValueError(
                f"no intrinsics: pass intrinsics=(fx, fy, cx, cy) (or --fx --fy --cx --cy) "
                f"or add {missing} to {source / 'camera.yaml'}"
            )
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
            raise ValueError(
                f"intrinsics must be (fx, fy, cx, cy) or (fx, fy, cx, cy, width, height), got {seq}"
            )
        values = seq[:4]
        if len(seq) == 6:
            size = (int(seq[4]), int(seq[5]))
    fx, fy, cx, cy = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise ValueError(f"bad intrinsics fx={fx} fy={fy} cx={cx} cy={cy} (pixels, fx, fy > 0)")
    return (fx, fy, cx, cy), size


def _prepare_output(output_bag: Path, overwrite: bool) -> None:
    if not output_bag.exists():
        return
    if not overwrite:
        raise FileExistsError(f"output bag exists: {output_bag} (use overwrite=True / --overwrite)")
    if output_bag.is_dir() and (
        (output_bag / "metadata.yaml").exists() or not any(output_bag.iterdir())
    ):
        shutil.rmtree(output_bag)
        return
    raise FileExistsError(
        f"refusing to overwrite {output_bag}: it is not a rosbag2 directory (no metadata.yaml)"
    )


# --------------------------------------------------------------------------- convert
def convert_rgbd_folder(
    folder: str | Path,
    output_bag: str | Path,
    intrinsics: Any = None,
    depth_scale: float | None = None,
    rate_hz: float | None = None,
    storage: str = "mcap",
    fixed_frame: str = "odom",
    camera_frame: str = "camera_color_optical_frame",
    camera_link_frame: str | None = "camera_link",
    color_order: str = "bgr",
    topics: Mapping[str, str] | None = None,
    start_stamp_ns: int = DEFAULT_START_STAMP_NS,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Write an RGB-D folder as a rosbag2 (format and topics: see the module docstring).

    Args:
        folder: the RGB-D folder.
        output_bag: rosbag2 directory to create (must not exist unless ``overwrite``).
        intrinsics: ``(fx, fy, cx, cy)`` pixels, optionally ``+ (width, height)``, a
            mapping with those keys, or an object with those attributes (e.g.
            ``CameraIntrinsics``); None reads them from ``camera.yaml``.
        depth_scale: input depth units per metre (1000 = mm); None: ``camera.yaml``'s
            ``depth_scale``, else 1000.
        rate_hz: frame rate used for stamps when the pose file has none; None:
            ``camera.yaml``'s ``rate_hz``, else 30.
        storage: ``"mcap"`` or ``"sqlite3"``.
        fixed_frame: parent of the camera pose (REP-105 ``odom``/``map``).
        camera_frame: optical frame of the images and camera info.
        camera_link_frame: body frame between them (see module docstring); None
            publishes ``fixed_frame -> camera_frame`` directly, without ``/tf_static``.
        color_order: ``"bgr"`` (normal image files) or ``"rgb"`` (swapped files).
        topics: overrides of :data:`DEFAULT_TOPICS` by key.
        start_stamp_ns: stamp of the first frame when the pose file has no stamps.
        overwrite: replace an existing rosbag2 directory at ``output_bag``.
        progress: show a ``tqdm`` progress bar.

    Returns:
        :class:`ConversionReport`.

    Raises:
        FileNotFoundError: missing folder, sub-folder, pose file or a frame's file.
        FileExistsError: ``output_bag`` exists (and ``overwrite`` is False, or it is
            not a bag directory).
        ValueError: bad arguments, no intrinsics, image/pose count mismatch, colour
            vs depth (vs labels, vs camera.yaml) size mismatch, unreadable or
            wrongly typed images, bad pose lines. A partially written bag is removed.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    from concerto_ros.bag.reader import default_typestore

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    if color_order not in ("bgr", "rgb"):
        raise ValueError(f"color_order must be 'bgr' or 'rgb', got {color_order!r}")
    unknown_topics = set(topics or {}) - set(DEFAULT_TOPICS)
    if unknown_topics:
        raise ValueError(
            f"unknown topic keys {sorted(unknown_topics)}; known: {list(DEFAULT_TOPICS)}"
        )
    topic = {**DEFAULT_TOPICS, **(topics or {})}

    scan = scan_rgbd_folder(folder)
    cam = scan.camera
    (fx, fy, cx, cy), size = _resolve_intrinsics(intrinsics, cam, scan.root)
    scale = float(depth_scale if depth_scale is not None else cam.get("depth_scale", 1000.0))
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"depth_scale must be > 0 units per metre, got {scale}")
    rate = float(rate_hz if rate_hz is not None else cam.get("rate_hz", 30.0))
    if scan.stamps_ns is None and not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate_hz must be > 0, got {rate}")
    n = len(scan.stems)
    if scan.stamps_ns is not None:
        stamps = list(scan.stamps_ns)
    else:
        stamps = [int(start_stamp_ns) + round(i * NS_PER_S / rate) for i in range(n)]

    if camera_link_frame:
        # fixed->link = fixed->optical . (link->optical)^-1
        tf_poses = [p @ invert_transform(LINK_T_OPTICAL) for p in scan.poses]
        tf_child = camera_link_frame
    else:
        tf_poses = list(scan.poses)
        tf_child = camera_frame

    output = Path(output_bag)
    _prepare_output(output, overwrite)

    ts = default_typestore()
    img_t = "sensor_msgs/msg/Image"
    info_t = "sensor_msgs/msg/CameraInfo"
    tf_t = "tf2_msgs/msg/TFMessage"
    tfs_t = "geometry_msgs/msg/TransformStamped"
    has_labels = bool(scan.labels)
    counts: dict[str, int] = {}
    out_of_range = 0
    width = height = -1

    writer = Writer(output, version=Writer.VERSION_LATEST, storage_plugin=plugins[storage])
    writer.open()  # creates the bag directory; from here on, failures remove it
    try:
        writer.set_custom_data("concerto.converter", "rgbd")
        writer.set_custom_data("concerto.input_depth_scale", repr(scale))
        if "class_names" in cam:
            writer.set_custom_data("concerto.class_names", json.dumps(list(cam["class_names"])))
        conns = {
            "color": writer.add_connection(topic["color"], img_t, typestore=ts),
            "depth": writer.add_connection(topic["depth"], img_t, typestore=ts),
            "camera_info": writer.add_connection(topic["camera_info"], info_t, typestore=ts),
            "tf": writer.add_connection(topic["tf"], tf_t, typestore=ts),
        }
        if has_labels:
            conns["labels"] = writer.add_connection(topic["labels"], img_t, typestore=ts)

        def write(key: str, msg: Any, msgtype: str, stamp: int) -> None:
            writer.write(conns[key], stamp, ts.serialize_cdr(msg, msgtype))
            counts[topic[key]] = counts.get(topic[key], 0) + 1

        if camera_link_frame:
            conns["tf_static"] = writer.add_connection(
                topic["tf_static"], tf_t, typestore=ts, offered_qos_profiles=_tf_static_qos()
            )
            static = fill_transform_stamped(
                make_message(ts, tfs_t), LINK_T_OPTICAL, camera_link_frame, camera_frame, stamps[0]
            )
            rot = static.transform.rotation  # exact halves rather than mat2quat's rounding
            rot.x, rot.y, rot.z, rot.w = OPTICAL_FROM_LINK_QUAT_XYZW
            write("tf_static", ts.types[tf_t](transforms=[static]), tf_t, stamps[0])

        for i in tqdm(range(n), desc="rgbd -> bag", unit="frame", disable=not progress):
            stamp = stamps[i]
            rgb = _read_color(scan.color[i], color_order)
            depth = _read_depth(scan.depth[i])
            if depth.shape != rgb.shape[:2]:
                raise ValueError(
                    f"size mismatch: colour {scan.color[i]} is {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"depth {scan.depth[i]} is {depth.shape[1]}x{depth.shape[0]}"
                )
            if width < 0:
                height, width = rgb.shape[:2]
                if size is not None and size != (width, height):
                    raise ValueError(
                        f"intrinsics are for {size[0]}x{size[1]} images but "
                        f"{scan.color[i]} is {width}x{height}"
                    )
            elif rgb.shape[:2] != (height, width):
                raise ValueError(
                    f"image size changes: {scan.color[i]} is {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"the first frame is {width}x{height}"
                )
            mm, over = depth_to_millimetres(depth, scale)
            out_of_range += over

            tf = fill_transform_stamped(
                make_message(ts, tfs_t), tf_poses[i], fixed_frame, tf_child, stamp
            )
            write("tf", ts.types[tf_t](transforms=[tf]), tf_t, stamp)
            info = fill_camera_info(
                make_message(ts, info_t), fx, fy, cx, cy, width, height, stamp, camera_frame
            )
            write("camera_info", info, info_t, stamp)
            write(
                "color",
                fill_image(make_message(ts, img_t), rgb, "rgb8", stamp, camera_frame),
                img_t,
                stamp,
            )
            write(
                "depth",
                fill_image(make_message(ts, img_t), mm, "16UC1", stamp, camera_frame),
                img_t,
                stamp,
            )
            if has_labels:
                labels = _read_labels(scan.labels[i])
                if labels.shape != (height, width):
                    raise ValueError(
                        f"size mismatch: label image {scan.labels[i]} is "
                        f"{labels.shape[1]}x{labels.shape[0]}, colour is {width}x{height}"
                    )
                write(
                    "labels",
                    fill_image(make_message(ts, img_t), labels, "16UC1", stamp, camera_frame),
                    img_t,
                    stamp,
                )
        writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.abort()
        shutil.rmtree(output, ignore_errors=True)
        raise

    msgtypes = {topic[k]: c.msgtype for k, c in conns.items()}
    size_bytes = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return ConversionReport(
        bag_path=output,
        storage=storage,
        frames=n,
        topics={t: (msgtypes[t], counts.get(t, 0)) for t in msgtypes},
        start_stamp_ns=stamps[0],
        end_stamp_ns=stamps[-1],
        width=width,
        height=height,
        intrinsics=(fx, fy, cx, cy),
        input_depth_scale=scale,
        depth_pixels_out_of_range=out_of_range,
        has_labels=has_labels,
        size_bytes=size_bytes,
    )
