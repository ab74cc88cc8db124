"""Every recording format, read (and written where the project writes it) in one package.

No ROS imports. One :class:`Source` schema describes a recording for replay, eval and every
training command; :func:`open_recording` gives the reader:

===================  ==================================  =====================================
``type``             what                                 reader (``kind``)
===================  ==================================  =====================================
``rgbd_folder``      ``color/ depth/ [labels/] poses``    :class:`RgbdFolderRecording` (frames)
``pcd``              PCD files (organized: + images)      :class:`PcdRecording` (frames)
``points``           ``.npy`` xyz[rgb][i] + labels        :class:`ScanRecording` (frames)
``semantickitti``    ``.bin`` + ``.label`` (+ poses)      :class:`ScanRecording` (frames)
``bag``              rosbag2 MCAP/sqlite3, ROS 1 ``.bag``  :class:`BagRecording` (messages)
                     and ROS 1 MCAP
===================  ==================================  =====================================

Frame-level readers yield :class:`SensorFrame` from ``frames()``; message-level readers
give ``messages(topics)``, ``raw(topics)``, ``summary()`` and ``transforms()``; the frame
stream (:mod:`concerto_ros.recordings.stream`) turns either into posed frames. Writers:
:class:`RgbdFolderWriter` (and ``concerto convert rgbd`` for bags). Label sets
(:mod:`concerto_ros.recordings.labels`) map dataset ids to class names. Anything wrong with
a file raises :class:`RecordingError`, one line naming the path and the reason.

Example::

    rec = open_recording("{type: points, path: scan.npy, labels: labels.npy, label_names: nyu40}")
    for frame in rec.frames():
        frame.cloud.xyz, frame.labels, rec.label_set.classes
"""

from __future__ import annotations

from typing import Any, Union

from concerto_ros.recordings.bags import (
    BagMessage,
    BagRecording,
    RawBagMessage,
    RosbagsRecording,
    bag_summary,
    iter_messages,
    iter_raw,
    open_bag,
)
from concerto_ros.recordings.errors import RecordingError, SourceError
from concerto_ros.recordings.frame import SensorCloud, SensorFrame
from concerto_ros.recordings.labels import IGNORE, LabelSet, load_label_set
from concerto_ros.recordings.pcd import PcdRecording, read_pcd
from concerto_ros.recordings.points import ScanRecording
from concerto_ros.recordings.rgbd_folder import RgbdFolderRecording, RgbdFolderWriter
from concerto_ros.recordings.source import SOURCE_TYPES, Source, detect_type, parse_source, parse_sources

__all__ = [
    "Source", "SOURCE_TYPES", "parse_source", "parse_sources", "detect_type",
    "RecordingError", "SourceError",
    "SensorFrame", "SensorCloud",
    "LabelSet", "IGNORE", "load_label_set",
    "Recording", "FrameRecording", "open_recording", "open_recordings",
    "RgbdFolderRecording", "RgbdFolderWriter", "PcdRecording", "ScanRecording", "read_pcd",
    "BagRecording", "RosbagsRecording", "BagMessage", "RawBagMessage",
    "open_bag", "iter_messages", "iter_raw", "bag_summary",
]

#: readers whose ``frames()`` yield :class:`SensorFrame` (``kind == "frames"``)
FrameRecording = Union[RgbdFolderRecording, PcdRecording, ScanRecording]
#: any reader :func:`open_recording` returns
Recording = Union[FrameRecording, BagRecording]

#: label set used when a source of this type names none
_DEFAULT_LABEL_NAMES = {"semantickitti": "semantickitti"}


def _label_set(src: Source, kind: str) -> LabelSet | None:
    names = src.label_names if src.label_names is not None else _DEFAULT_LABEL_NAMES.get(kind)
    if names is None:
        return None
    if names == "camera":
        from concerto_ros.recordings.rgbd_folder import _camera_yaml

        listed = _camera_yaml(src.path).get("class_names") if kind == "rgbd_folder" else None
        if not listed:
            raise RecordingError(src.path, "label_names: camera needs an RGB-D folder whose camera.yaml lists "
                                           "class_names")
        return load_label_set(list(listed))
    return load_label_set(names)


def open_recording(source: Any) -> Recording:
    """The reader of a source.

    Args:
        source: a :class:`Source`, or anything :func:`parse_source` takes (a path, inline
            YAML, a dict).

    Returns:
        A frame-level reader (``kind == "frames"``: ``frames()``, ``len()``,
        ``label_set``) or a :class:`BagRecording` (``kind == "messages"``). Either has
        ``source`` (the parsed :class:`Source`) and ``path``.

    Raises:
        RecordingError: an invalid source (:class:`SourceError`), a missing or unreadable
            path, an unknown format, a bad label set; one line each.
    """
    src = parse_source(source)
    kind = src.resolved_type()
    labels = _label_set(src, kind)
    rate = src.rate_hz if src.rate_hz is not None else 10.0
    common = {"max_frames": src.max_frames, "stride": src.stride}
    rec: Any
    if kind == "rgbd_folder":
        rec = RgbdFolderRecording(src.path, intrinsics=src.intrinsics, depth_scale=src.depth_scale,
                                  rate_hz=src.rate_hz, color_order=src.color_order, labels_dir=src.labels,
                                  label_set=labels, **common)
    elif kind == "pcd":
        rec = PcdRecording(src.path, intrinsics=src.intrinsics, label_set=labels, rate_hz=rate, **common)
    elif kind in ("points", "semantickitti"):
        rec = ScanRecording(src.path, kind=kind, labels=src.labels, label_set=labels, poses=src.poses,
                            frame_id="velodyne" if kind == "semantickitti" else "sensor", rate_hz=rate, **common)
    else:
        rec = open_bag(src.path, labels)
    rec.source = src
    return rec


def open_recordings(sources: Any) -> list[Recording]:
    """:func:`open_recording` of each of :func:`parse_sources` ``(sources)``."""
    return [open_recording(s) for s in parse_sources(sources)]

