"""Read rosbag2 recordings (MCAP or sqlite3) without ROS, with the ``rosbags`` library.

``path`` may be a rosbag2 directory (with ``metadata.yaml``), a single ``.mcap`` or
``.db3`` file, or a ROS 1 ``.bag`` file. Messages are deserialised with the type
definitions embedded in the bag; bags without them fall back to the ROS 2 Kilted type
store. Messages come out as ``rosbags`` dataclasses, which the converters of
:mod:`concerto_ros.msgs` accept (``msg.data`` is a ``uint8`` ``np.ndarray``).

Not supported: MCAP files with ROS 1 message encoding (``rosbags`` raises "Profile is
not ros2" for them; convert such a file to rosbag2 first).

Example::

    for m in iter_messages("run1", topics=["/camera/color/image_raw"]):
        rgb = color_to_rgb(m.msg)          # stamp: m.stamp_ns (bag log time, ns)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore

__all__ = [
    "BagMessage",
    "RawBagMessage",
    "default_typestore",
    "open_bag",
    "iter_messages",
    "iter_raw",
    "bag_summary",
]


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


def default_typestore() -> Any:
    """The ``rosbags`` type store of ROS 2 Kilted (or the newest one this rosbags knows)."""
    store = getattr(Stores, "ROS2_KILTED", None) or Stores.LATEST
    return get_typestore(store)


def open_bag(path: str | Path) -> AnyReader:
    """An (unopened) ``rosbags`` ``AnyReader`` for ``path``; use it as a context manager.

    Example: ``with open_bag(p) as reader: reader.topics``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"bag not found: {p}")
    return AnyReader([p], default_typestore=default_typestore())


def _connections(reader: AnyReader, topics: Iterable[str] | None, path: Path) -> list[Any]:
    if topics is None:
        return list(reader.connections)
    wanted = [topics] if isinstance(topics, str) else list(topics)
    known = {c.topic for c in reader.connections}
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise ValueError(f"topics {unknown} not in bag {path}; it has {sorted(known)}")
    return [c for c in reader.connections if c.topic in wanted]


@contextmanager
def _opened(path: str | Path) -> Iterator[AnyReader]:
    reader = open_bag(path)
    try:
        reader.open()
    except AnyReaderError as err:
        raise ValueError(f"cannot read bag {path}: {err}") from err
    try:
        yield reader
    finally:
        reader.close()


def iter_messages(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Deserialised messages of a bag in log-time order.

    Args:
        path: rosbag2 directory, ``.mcap``/``.db3`` file, or ROS 1 ``.bag``.
        topics: topic names to keep (all topics when None).

    Yields:
        :class:`BagMessage` ``(topic, msgtype, stamp_ns, msg)``.

    Raises:
        FileNotFoundError: missing path.
        ValueError: unreadable bag, or a requested topic that is not in the bag.
    """
    with _opened(path) as reader:
        for conn, stamp, raw in reader.messages(
            connections=_connections(reader, topics, Path(path))
        ):
            yield BagMessage(
                conn.topic, conn.msgtype, int(stamp), reader.deserialize(raw, conn.msgtype)
            )


def iter_raw(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[RawBagMessage]:
    """Serialised messages of a bag in log-time order, as ROS 2 CDR bytes.

    ROS 1 bags are converted to CDR on the fly, so the bytes can always be handed to an
    rclpy publisher of the matching type (``publisher.publish(data)``).

    Raises:
        FileNotFoundError, ValueError: as :func:`iter_messages`.
    """
    with _opened(path) as reader:
        is_ros2 = bool(getattr(reader, "is2", True))
        for conn, stamp, raw in reader.messages(
            connections=_connections(reader, topics, Path(path))
        ):
            data = raw if is_ros2 else reader.typestore.ros1_to_cdr(raw, conn.msgtype)
            yield RawBagMessage(conn.topic, conn.msgtype, int(stamp), bytes(data))


def bag_summary(path: str | Path) -> dict[str, tuple[str, int]]:
    """``topic -> (msgtype, message count)`` for every topic of a bag.

    Raises:
        FileNotFoundError, ValueError: as :func:`iter_messages`.
    """
    with _opened(path) as reader:
        return {
            topic: (info.msgtype or "", int(info.msgcount)) for topic, info in reader.topics.items()
        }
