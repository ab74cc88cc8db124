"""ROS 1 messages inside MCAP (profile ``ros1``), read directly, without conversion.

The ``mcap`` reader walks the file in log-time order; each channel's ``ros1msg`` schema
(the full ROS 1 message definition embedded in the file, dependencies included) is
registered into a ``rosbags`` type store (``get_types_from_msg``), and messages are
decoded with ``deserialize_ros1``. So they come out as ``rosbags`` dataclasses with ROS 2
attribute names (``header.stamp.sec``/``nanosec``; ROS 1 ``time`` becomes
``builtin_interfaces/msg/Time``) and the project's converters read them like any bag's.
CDR bytes for live publishing are made by serialising the decoded message with the ROS 2
definitions (``serialize_cdr``): ``rosbags``' byte-level ``ros1_to_cdr`` fails on messages
whose ROS 1 ``Header`` carries ``seq`` (e.g. ``tf2_msgs/TFMessage``).

Schemas with the same type name but different definitions (two ROS 1 versions in one file)
each get a type store of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from concerto_ros.recordings.bags import BagMessage, BagRecording, RawBagMessage, _reading, cdr_typestore
from concerto_ros.recordings.errors import RecordingError
from concerto_ros.recordings.labels import LabelSet
from concerto_ros.recordings.typestore import ros_msgtype

__all__ = ["Ros1McapRecording"]


class _Schemas:
    """Decoders of the file's schemas: ``schema id -> (msgtype, ROS 1 store, CDR store)``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_id: dict[int, tuple[str, Any, Any]] = {}
        self._shared: Any = None

    def get(self, schema: Any) -> tuple[str, Any, Any]:
        if schema.id in self._by_id:
            return self._by_id[schema.id]
        from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore

        if schema.encoding != "ros1msg":
            raise RecordingError(self.path, f"schema {schema.name!r} has encoding {schema.encoding!r}, not ros1msg")
        msgtype = ros_msgtype(schema.name)
        try:
            types = get_types_from_msg(schema.data.decode(), msgtype)
        except Exception as exc:  # noqa: BLE001 - rosbags' parser errors
            raise RecordingError(self.path, f"cannot parse the definition of {schema.name!r} ({exc})") from None
        if self._shared is None:
            self._shared = get_typestore(Stores.EMPTY)
        store = self._shared
        try:
            store.register(types)
        except TypesysError:  # same name, other definition: a store of its own
            store = get_typestore(Stores.EMPTY)
            store.register(types)
        entry = (msgtype, store, cdr_typestore(types))
        self._by_id[schema.id] = entry
        return entry


class Ros1McapRecording(BagRecording):
    """An MCAP file with the ``ros1`` profile (API: :class:`~concerto_ros.recordings.bags.BagRecording`)."""

    def __init__(self, path: str | Path, label_set: LabelSet | None = None) -> None:
        super().__init__(path, label_set)
        self._schemas = _Schemas(self.path)
        self._summary: dict[str, tuple[str, int]] | None = None

    @contextmanager
    def _reader(self) -> Iterator[Any]:
        from mcap.reader import make_reader

        with _reading(self.path):
            f = self.path.open("rb")
        try:
            with _reading(self.path):
                reader = make_reader(f)
            yield reader
        finally:
            f.close()

    def summary(self) -> dict[str, tuple[str, int]]:
        if self._summary is not None:
            return dict(self._summary)
        out: dict[str, tuple[str, int]] = {}
        with self._reader() as reader, _reading(self.path):
            s = reader.get_summary()
            if s is not None and s.statistics is not None:
                for cid, ch in s.channels.items():
                    n = s.statistics.channel_message_counts.get(cid, 0)
                    msgtype = ros_msgtype(s.schemas[ch.schema_id].name) if ch.schema_id in s.schemas else ""
                    out[ch.topic] = (msgtype, out.get(ch.topic, ("", 0))[1] + int(n))
            else:  # no summary section (an unfinished file): count by reading
                for schema, ch, _m in reader.iter_messages():
                    out[ch.topic] = (ros_msgtype(schema.name) if schema else "", out.get(ch.topic, ("", 0))[1] + 1)
        self._summary = out
        return dict(out)

    def _walk(self, topics: list[str] | None) -> Iterator[tuple[str, str, int, Any, Any, Any]]:
        """``(topic, msgtype, log_time, data, ROS 1 store, CDR store)`` in log-time order."""
        with self._reader() as reader, _reading(self.path):
            for schema, channel, message in reader.iter_messages(topics=topics, log_time_order=True):
                if schema is None:
                    raise RecordingError(self.path, f"channel {channel.topic!r} has no schema to decode it with")
                msgtype, store, cdr = self._schemas.get(schema)
                yield channel.topic, msgtype, int(message.log_time), message.data, store, cdr

    def _iter(self, topics: list[str] | None) -> Iterator[BagMessage]:
        for topic, msgtype, stamp, data, store, _cdr in self._walk(topics):
            with _reading(self.path):
                msg = store.deserialize_ros1(data, msgtype)
            yield BagMessage(topic, msgtype, stamp, msg)

    def _iter_raw(self, topics: list[str] | None) -> Iterator[RawBagMessage]:
        for topic, msgtype, stamp, data, store, cdr in self._walk(topics):
            with _reading(self.path):
                raw = cdr.serialize_cdr(store.deserialize_ros1(data, msgtype), msgtype)
            yield RawBagMessage(topic, msgtype, stamp, bytes(raw))
