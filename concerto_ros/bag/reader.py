"""Moved: bags are read by :mod:`concerto_ros.recordings` (``open_recording``/``open_bag``).

These names remain for :mod:`concerto_ros.train` until it imports from
``concerto_ros.recordings``; then this module goes.
"""

from concerto_ros.recordings.bags import BagMessage, RawBagMessage, bag_summary, iter_messages, iter_raw
from concerto_ros.recordings.typestore import ros2_typestore as default_typestore

__all__ = ["BagMessage", "RawBagMessage", "bag_summary", "iter_messages", "iter_raw", "default_typestore"]
