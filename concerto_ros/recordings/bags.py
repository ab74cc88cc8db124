"""Message-level recordings: rosbag2 (MCAP, sqlite3), ROS 1 ``.bag`` and ROS 1 MCAP.

All are read without ROS and without a conversion step, with the message definitions
embedded in the file (bags without them fall back to the ROS 2 Kilted type store).
Messages come out as ``rosbags`` dataclasses with the ROS 2 attribute names
(``header.stamp.sec``/``nanosec``, ``data`` a ``uint8`` ``np.ndarray``, ...), whatever
the file's ROS version, so the converters of :mod:`concerto_ros.msgs` accept them. ROS 1
headers keep their extra ``seq`` field.

* rosbag2 directories, ``.mcap`` files with the ``ros2`` profile, ``.db3`` files and ROS 1
  ``.bag`` files: ``rosbags``' ``AnyReader`` (:class:`RosbagsRecording`);
* ``.mcap`` files with the ``ros1`` profile (e.g. recorded with ``mcap`` from a ROS 1
  system): :class:`~concerto_ros.recordings.ros1_mcap.Ros1McapRecording`.

Every recording here offers :meth:`BagRecording.messages` (deserialised, log-time order),
:meth:`BagRecording.raw` (ROS 2 CDR bytes for rclpy publishers; ROS 1 messages are
deserialised and serialised again as CDR, which also handles the ROS 1 ``Header``),
:meth:`BagRecording.summary` and :meth:`BagRecording.transforms`.

Example::

    rec = open_bag("run1.mcap")
    for m in rec.messages(["/camera/color/image_raw"]):
        rgb = color_to_rgb(m.msg)          # stamp: m.stamp_ns (bag log time, ns)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from concerto_ros.recordings.errors import RecordingError
from concerto_ros.recordings.labels import LabelSet
from concerto_ros.recordings.typestore import ros2_typestore

__all__ = [
    "TF_TOPICS",
    "BagMessage",
    "RawBagMessage",
    "BagRecording",
    "RosbagsRecording",
    "open_bag",
    "is_ros1_mcap",
    "cdr_typestore",
    "iter_messages",
    "iter_raw",
    "bag_summary",
]

TF_TOPICS = ("/tf", "/tf_static")


class BagMessage(NamedTuple):
    """One deserialised message: ``topic``, ``msgtype`` (e.g. ``sensor_msgs/msg/Image``),
    ``stamp_ns`` (the bag's log/receive time, int ns, not ``header.stamp``) and ``msg``."""

    topic: str
    msgtype: str
    stamp_ns: int
    msg: Any


class RawBagMessage(NamedTuple):
    """One serialised message: ``data`` is CDR bytes (ROS 2 wire format), ready for an
    rclpy ``publisher.publish(data)`` of type ``msgtype``."""

    topic: str
    msgtype: str
    stamp_ns: int
    data: bytes


def cdr_typestore(types: dict[str, Any]) -> Any:
    """A ROS 2 Kilted type store plus the types of ``types`` (a ``rosbags`` Typesdict) that it
    does not know, so that messages of a file's own types serialise to CDR; a standard type
    (``std_msgs/msg/Header``, ...) keeps its ROS 2 definition."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(getattr(Stores, "ROS2_KILTED", None) or Stores.LATEST)
    extra = {k: v for k, v in types.items() if k not in store.fielddefs}
    if extra:
        store.register(extra)
    return store


class BagRecording:
    """Base of the message-level recordings (see the module docstring).

    Subclasses implement :meth:`summary`, :meth:`_iter` and :meth:`_iter_raw`.

    Attributes:
        path: the recording.
        label_set: the source's label set (for label images or label fields), or None.
        transform_skips: ``reason -> count`` of the transforms :meth:`transforms` skipped.
    """

    kind = "messages"

    def __init__(self, path: str | Path, label_set: LabelSet | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise RecordingError(self.path, "no such bag file or folder")
        self.label_set = label_set
        self.transform_skips: Counter[str] = Counter()

    # ---------------------------------------------------------------- to implement
    def summary(self) -> dict[str, tuple[str, int]]:
        """``topic -> (msgtype, message count)`` for every topic.

        Raises:
            RecordingError: unreadable file.
        """
        raise NotImplementedError

    def _iter(self, topics: list[str] | None) -> Iterator[BagMessage]:
        raise NotImplementedError

    def _iter_raw(self, topics: list[str] | None) -> Iterator[RawBagMessage]:
        raise NotImplementedError

    # ---------------------------------------------------------------- public
    def _topics(self, topics: Iterable[str] | str | None) -> list[str] | None:
        if topics is None:
            return None
        wanted = [topics] if isinstance(topics, str) else list(topics)
        known = self.summary()
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise RecordingError(self.path, f"topics {unknown} not in bag; it has {sorted(known)}")
        return wanted

    def messages(self, topics: Iterable[str] | str | None = None) -> Iterator[BagMessage]:
        """Deserialised messages in log-time order.

        Args:
            topics: topic names to keep (all topics when None).

        Yields:
            :class:`BagMessage` ``(topic, msgtype, stamp_ns, msg)``.

        Raises:
            RecordingError: unreadable file or message, or a requested topic that is not in
                the bag (the message lists the bag's topics).
        """
        return self._iter(self._topics(topics))

    def raw(self, topics: Iterable[str] | str | None = None) -> Iterator[RawBagMessage]:
        """Serialised messages in log-time order, as ROS 2 CDR bytes (also for ROS 1 files),
        for an rclpy publisher of the matching type (``publisher.publish(data)``).

        Raises:
            RecordingError: as :meth:`messages`.
        """
        return self._iter_raw(self._topics(topics))

    def transforms(self, cache_time_s: float = 1e9, log: Callable[[str], Any] | None = None,
                   on_problem: Callable[[str, str], Any] | None = None):
        """A :class:`~concerto_ros.sensors.tf_buffer.TransformBuffer` holding every ``/tf`` and
        ``/tf_static`` transform of the recording (static ones valid at all times).

        Bad transforms (non-finite values, zero quaternion, empty or equal frame names, a
        loop) are ignored as tf2 does (:meth:`TransformBuffer.add_message`), counted in
        :attr:`transform_skips` by reason and passed to ``on_problem(topic, line)``, never
        raised; ``log`` gets one line with the counts when there were any.

        Args:
            cache_time_s: history kept per edge, seconds (the default keeps everything).
        """
        from concerto_ros.sensors.tf_buffer import TransformBuffer

        buf = TransformBuffer(cache_time_s=cache_time_s)
        self.transform_skips = Counter()
        topics = [t for t in TF_TOPICS if t in self.summary()]
        for m in self.messages(topics) if topics else ():
            for problem in buf.add_message(m.msg, static=m.topic == "/tf_static"):
                self.transform_skips[_transform_reason(problem)] += 1
                if on_problem is not None:
                    on_problem(m.topic, problem)
        if self.transform_skips and log is not None:
            log(f"{self.path}: skipped transforms {dict(self.transform_skips)}")
        return buf


def _transform_reason(problem: str) -> str:
    """Short reason of a rejected transform (from :meth:`TransformBuffer.add_message`)."""
    for needle, reason in (("non-finite", "non_finite"), ("zero quaternion", "zero_quaternion"), ("loop", "loop"),
                           ("negative stamp", "negative_stamp")):
        if needle in problem:
            return reason
    return "bad_frame_names"


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the readers' errors into one-line :class:`RecordingError`."""
    try:
        yield
    except RecordingError:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags/mcap raise many kinds; the user gets one line
        text = str(exc).strip().splitlines()
        raise RecordingError(path, f"cannot read the bag ({type(exc).__name__}: {text[0] if text else ''})") from None


class RosbagsRecording(BagRecording):
    """rosbag2 (directory, ``.mcap`` with the ``ros2`` profile, ``.db3``) or ROS 1 ``.bag``,
    read with ``rosbags``' ``AnyReader`` (module docstring for the API)."""

    def __init__(self, path: str | Path, label_set: LabelSet | None = None) -> None:
        super().__init__(path, label_set)
        self._summary: dict[str, tuple[str, int]] | None = None

    @contextmanager
    def _open(self) -> Iterator[Any]:
        from rosbags.highlevel import AnyReader

        with _reading(self.path):
            reader = AnyReader([self.path], default_typestore=ros2_typestore())
            reader.open()
        try:
            yield reader
        finally:
            reader.close()

    def summary(self) -> dict[str, tuple[str, int]]:
        if self._summary is None:
            with self._open() as reader:
                self._summary = {t: (i.msgtype or "", int(i.msgcount)) for t, i in reader.topics.items()}
        return dict(self._summary)

    def _connections(self, reader: Any, topics: list[str] | None) -> list[Any]:
        return [c for c in reader.connections if topics is None or c.topic in topics]

    def _iter(self, topics: list[str] | None) -> Iterator[BagMessage]:
        with self._open() as reader, _reading(self.path):
            for conn, stamp, raw in reader.messages(connections=self._connections(reader, topics)):
                yield BagMessage(conn.topic, conn.msgtype, int(stamp), reader.deserialize(raw, conn.msgtype))

    def _iter_raw(self, topics: list[str] | None) -> Iterator[RawBagMessage]:
        with self._open() as reader, _reading(self.path):
            is_ros2 = bool(getattr(reader, "is2", True))
            store = None if is_ros2 else cdr_typestore(reader.typestore.fielddefs)
            for conn, stamp, raw in reader.messages(connections=self._connections(reader, topics)):
                if not is_ros2:  # ROS 1 -> CDR through the message (handles Header.seq)
                    raw = store.serialize_cdr(reader.deserialize(raw, conn.msgtype), conn.msgtype)
                yield RawBagMessage(conn.topic, conn.msgtype, int(stamp), bytes(raw))


def is_ros1_mcap(path: str | Path) -> bool:
    """Whether ``path`` is an MCAP file whose header profile is ``ros1``.

    Raises:
        RecordingError: an ``.mcap`` file whose header cannot be read.
    """
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() == ".mcap"):
        return False
    from mcap.reader import make_reader

    with _reading(p), p.open("rb") as f:
        return make_reader(f).get_header().profile == "ros1"


def open_bag(path: str | Path, label_set: LabelSet | None = None) -> BagRecording:
    """The message-level recording at ``path`` (ROS 1 MCAP or anything ``rosbags`` reads).

    Raises:
        RecordingError: missing path or unreadable header.
    """
    if is_ros1_mcap(path):
        from concerto_ros.recordings.ros1_mcap import Ros1McapRecording

        return Ros1McapRecording(path, label_set)
    return RosbagsRecording(path, label_set)


def iter_messages(path: str | Path, topics: Iterable[str] | str | None = None) -> Iterator[BagMessage]:
    """``open_bag(path).messages(topics)``."""
    return open_bag(path).messages(topics)


def iter_raw(path: str | Path, topics: Iterable[str] | str | None = None) -> Iterator[RawBagMessage]:
    """``open_bag(path).raw(topics)``."""
    return open_bag(path).raw(topics)


def bag_summary(path: str | Path) -> dict[str, tuple[str, int]]:
    """``open_bag(path).summary()``."""
    return open_bag(path).summary()
