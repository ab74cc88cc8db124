"""``rosbags`` type stores and message construction, shared by the readers and writers.

* :func:`ros2_typestore`: the ROS 2 Kilted store (messages written into rosbag2 files and
  the CDR bytes handed to rclpy publishers use its definitions).
* :func:`ros_msgtype`: ``sensor_msgs/Image`` (ROS 1 spelling) -> ``sensor_msgs/msg/Image``.
* :func:`make_message`: a message of any registered type with ROS default values.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["ros2_typestore", "ros_msgtype", "make_message"]


@lru_cache(maxsize=1)
def ros2_typestore() -> Any:
    """The ``rosbags`` type store of ROS 2 Kilted (or the newest this rosbags knows).

    Shared and cached: register extra types only into a copy (see
    :mod:`concerto_ros.recordings.ros1_mcap`).
    """
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(getattr(Stores, "ROS2_KILTED", None) or Stores.LATEST)


def ros_msgtype(name: str) -> str:
    """ROS 2 spelling of a message type: ``pkg/Name`` -> ``pkg/msg/Name`` (unchanged when it
    already has an interface part)."""
    parts = name.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else name


_NUMPY_BASE = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8, "octet": np.uint8,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
    "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
    "float32": np.float32, "float64": np.float64,
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
    sub, length = arg  # 3 ARRAY (fixed length), 4 SEQUENCE
    if int(sub[0]) == 1 and sub[1][0] in _NUMPY_BASE:
        return np.zeros(length if kind == 3 else 0, dtype=_NUMPY_BASE[sub[1][0]])
    return [_default_value(typestore, sub) for _ in range(length if kind == 3 else 0)]


def make_message(typestore: Any, msgtype: str) -> Any:
    """A ``rosbags`` message of ``msgtype`` with ROS default values (zeros, ``""``, empty).

    Raises:
        KeyError: ``msgtype`` is not in the type store.
    """
    _consts, fields = typestore.fielddefs[msgtype]
    cls = typestore.types[msgtype]
    return cls(**{name: _default_value(typestore, desc) for name, desc in fields})
