"""Moved: PCD files are read by :mod:`concerto_ros.recordings.pcd` (through ``pypcd4``).

These names remain for :mod:`concerto_ros.train` until it imports from
``concerto_ros.recordings``; then this module goes.
"""

from concerto_ros.recordings.pcd import PCDCloud, read_pcd

__all__ = ["PCDCloud", "read_pcd"]
