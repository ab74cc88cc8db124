"""Convert an RGB-D folder (colour + depth + poses) into a rosbag2 (MCAP or sqlite3).

No ROS install is needed: messages are built and serialised with the ``rosbags`` type
store of ROS 2 Kilted, so the bag replays with ``ros2 bag play`` and is read back by
:func:`concerto_ros.recordings.open_recording`.

The folder format (``color/``, ``depth/``, optional ``labels/``, ``pose.txt``/``poses.txt``,
optional ``camera.yaml``) and the frame stamps are those of
:mod:`concerto_ros.recordings.rgbd_folder`, which reads the folder.

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
from dataclasses import dataclass
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
)
from concerto_ros.recordings.rgbd_folder import (
    DEFAULT_START_STAMP_NS,
    RgbdFolder,
    RgbdFolderRecording,
    read_color,
    read_depth,
    read_label_image,
    read_poses,
    resolve_intrinsics,
    scan_rgbd_folder,
)
from concerto_ros.recordings.typestore import make_message, ros2_typestore

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

# Former names of the folder readers, now in concerto_ros.recordings.rgbd_folder; kept only
# for concerto_ros.train until it reads through concerto_ros.recordings (then remove them).
_read_color, _read_depth, _read_labels, _resolve_intrinsics = read_color, read_depth, read_label_image, resolve_intrinsics

#: topic key -> default topic name
DEFAULT_TOPICS: dict[str, str] = {
    "color": "/camera/color/image_raw",
    "depth": "/camera/depth/image_raw",
    "camera_info": "/camera/color/camera_info",
    "labels": "/camera/labels/image_raw",
    "tf": "/tf",
    "tf_static": "/tf_static",
}


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


# --------------------------------------------------------------------------- messages
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
_IMG, _INFO, _TF, _TFS = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo", "tf2_msgs/msg/TFMessage",
                          "geometry_msgs/msg/TransformStamped")


class _BagOut:
    """The open rosbag2 writer with its connections and message counts."""

    def __init__(self, output: Path, storage: str, topic: dict[str, str], with_labels: bool,
                 with_static: bool, class_names: list | None, depth_scale: float) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        self.ts = ros2_typestore()
        self.topic = topic
        self.counts: dict[str, int] = {}
        self.writer = Writer(output, version=Writer.VERSION_LATEST, storage_plugin=plugins[storage])
        self.writer.open()  # creates the bag directory; from here on, failures remove it
        self.writer.set_custom_data("concerto.converter", "rgbd")
        self.writer.set_custom_data("concerto.input_depth_scale", repr(depth_scale))
        if class_names is not None:
            self.writer.set_custom_data("concerto.class_names", json.dumps(list(class_names)))
        add = self.writer.add_connection
        self.conns = {"color": add(topic["color"], _IMG, typestore=self.ts),
                      "depth": add(topic["depth"], _IMG, typestore=self.ts),
                      "camera_info": add(topic["camera_info"], _INFO, typestore=self.ts),
                      "tf": add(topic["tf"], _TF, typestore=self.ts)}
        if with_labels:
            self.conns["labels"] = add(topic["labels"], _IMG, typestore=self.ts)
        if with_static:
            self.conns["tf_static"] = add(topic["tf_static"], _TF, typestore=self.ts,
                                          offered_qos_profiles=_tf_static_qos())

    def msg(self, msgtype: str) -> Any:
        return make_message(self.ts, msgtype)

    def write(self, key: str, msg: Any, msgtype: str, stamp: int) -> None:
        self.writer.write(self.conns[key], stamp, self.ts.serialize_cdr(msg, msgtype))
        self.counts[self.topic[key]] = self.counts.get(self.topic[key], 0) + 1

    def image(self, key: str, array: np.ndarray, encoding: str, stamp: int, frame: str) -> None:
        self.write(key, fill_image(self.msg(_IMG), array, encoding, stamp, frame), _IMG, stamp)

    def topics(self) -> dict[str, tuple[str, int]]:
        return {self.topic[k]: (c.msgtype, self.counts.get(self.topic[k], 0)) for k, c in self.conns.items()}


def _write_static(out: _BagOut, link: str, camera_frame: str, stamp: int) -> None:
    static = fill_transform_stamped(out.msg(_TFS), LINK_T_OPTICAL, link, camera_frame, stamp)
    rot = static.transform.rotation  # exact halves rather than mat2quat's rounding
    rot.x, rot.y, rot.z, rot.w = OPTICAL_FROM_LINK_QUAT_XYZW
    out.write("tf_static", out.ts.types[_TF](transforms=[static]), _TF, stamp)


def _check_arguments(storage: str, color_order: str, topics: Mapping[str, str] | None) -> dict[str, str]:
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    if color_order not in ("bgr", "rgb"):
        raise ValueError(f"color_order must be 'bgr' or 'rgb', got {color_order!r}")
    unknown_topics = set(topics or {}) - set(DEFAULT_TOPICS)
    if unknown_topics:
        raise ValueError(f"unknown topic keys {sorted(unknown_topics)}; known: {list(DEFAULT_TOPICS)}")
    return {**DEFAULT_TOPICS, **(topics or {})}


def _write_frame(out: _BagOut, rec: RgbdFolderRecording, fr, fixed_frame: str, camera_frame: str,
                 camera_link_frame: str | None, link_inv: np.ndarray) -> int:
    """Write one frame's ``/tf`` (``fixed_frame -> camera_link_frame``, or straight to
    ``camera_frame`` when None; ``link_inv`` = (link -> optical)^-1), camera info, colour,
    depth (uint16 mm) and labels at its stamp; returns its depth pixels out of the uint16
    range."""
    stamp, (height, width) = fr.stamp_ns, fr.rgbd.shape
    if camera_link_frame:
        tf = fill_transform_stamped(out.msg(_TFS), fr.T_world_sensor @ link_inv, fixed_frame,
                                    camera_link_frame, stamp)
    else:
        tf = fill_transform_stamped(out.msg(_TFS), fr.T_world_sensor, fixed_frame, camera_frame, stamp)
    out.write("tf", out.ts.types[_TF](transforms=[tf]), _TF, stamp)
    info = fill_camera_info(out.msg(_INFO), rec.fx, rec.fy, rec.cx, rec.cy, width, height, stamp,
                            camera_frame)
    out.write("camera_info", info, _INFO, stamp)
    out.image("color", fr.rgbd.color, "rgb8", stamp, camera_frame)
    mm, over = depth_to_millimetres(fr.rgbd.depth, rec.depth_scale)
    out.image("depth", mm, "16UC1", stamp, camera_frame)
    if fr.labels is not None:
        out.image("labels", fr.labels.astype(np.uint16), "16UC1", stamp, camera_frame)
    return over


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
        folder: the RGB-D folder (read by
            :class:`~concerto_ros.recordings.rgbd_folder.RgbdFolderRecording`).
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
        RecordingError: the folder: missing files, no intrinsics, image/pose count
            mismatch, size mismatches (colour, depth, labels, camera.yaml), unreadable or
            wrongly typed images, bad pose lines. A partially written bag is removed.
        FileExistsError: ``output_bag`` exists (and ``overwrite`` is False, or it is
            not a bag directory).
        ValueError: bad arguments.
    """
    from tqdm import tqdm

    topic = _check_arguments(storage, color_order, topics)
    rec = RgbdFolderRecording(folder, intrinsics=intrinsics, depth_scale=depth_scale, rate_hz=rate_hz,
                              color_order=color_order, frame_id=camera_frame, start_stamp_ns=start_stamp_ns)
    link_inv = invert_transform(LINK_T_OPTICAL)  # fixed->link = fixed->optical . (link->optical)^-1
    output = Path(output_bag)
    _prepare_output(output, overwrite)
    out = _BagOut(output, storage, topic, rec.has_labels, bool(camera_link_frame),
                  rec.folder.camera.get("class_names"), rec.depth_scale)
    out_of_range, width, height = 0, -1, -1
    try:
        if camera_link_frame:
            _write_static(out, camera_link_frame, camera_frame, rec.stamps_ns[0])
        for fr in tqdm(rec.frames(), total=len(rec), desc="rgbd -> bag", unit="frame", disable=not progress):
            height, width = fr.rgbd.shape
            out_of_range += _write_frame(out, rec, fr, fixed_frame, camera_frame, camera_link_frame, link_inv)
        out.writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            out.writer.abort()
        shutil.rmtree(output, ignore_errors=True)
        raise
    size_bytes = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return ConversionReport(bag_path=output, storage=storage, frames=len(rec), topics=out.topics(),
                            start_stamp_ns=rec.stamps_ns[0], end_stamp_ns=rec.stamps_ns[-1], width=width,
                            height=height, intrinsics=(rec.fx, rec.fy, rec.cx, rec.cy),
                            input_depth_scale=rec.depth_scale, depth_pixels_out_of_range=out_of_range,
                            has_labels=rec.has_labels, size_bytes=size_bytes)
