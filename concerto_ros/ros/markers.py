"""RViz markers of a text query (top points coloured by relevance, centroid, label)."""

from __future__ import annotations

from typing import Any

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

__all__ = ["to_point", "query_markers", "region_msg"]


def to_point(p) -> Point:
    """``geometry_msgs/Point`` of a ``(3,)`` array (metres)."""
    return Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def region_msg(region):
    """``concerto_ros_interfaces/Region`` of a :class:`~concerto_ros.mapping.Region`."""
    from concerto_ros_interfaces.msg import Region

    return Region(centroid=to_point(region.centroid), box_min=to_point(region.box_min),
                  box_max=to_point(region.box_max), num_voxels=int(region.num_voxels), score=float(region.score))


def query_markers(points: np.ndarray, relevance: np.ndarray, centroid: np.ndarray | None, text: str,
                  header: Any, point_scale: float) -> MarkerArray:
    """Markers for RViz: a sphere list of ``points`` ``(K, 3)`` coloured from yellow (relevance
    0) to red (1), a sphere at ``centroid`` and the query ``text`` above it (deleted when there is
    no centroid). ``point_scale``: sphere diameter in metres."""
    pts = Marker(header=header, ns="query", id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
    pts.scale.x = pts.scale.y = pts.scale.z = float(point_scale)
    pts.pose.orientation.w = 1.0
    pts.points = [to_point(p) for p in points]
    pts.colors = [ColorRGBA(r=1.0, g=float(1.0 - r), b=0.0, a=1.0) for r in relevance]
    sphere = Marker(header=header, ns="query", id=1, type=Marker.SPHERE, action=Marker.ADD)
    sphere.pose.orientation.w = 1.0
    sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.15
    sphere.color = ColorRGBA(r=0.1, g=0.6, b=1.0, a=0.8)
    if centroid is not None:
        sphere.pose.position = to_point(centroid)
    else:
        sphere.action = Marker.DELETE
    label = Marker(header=header, ns="query", id=2, type=Marker.TEXT_VIEW_FACING, action=sphere.action)
    label.pose.orientation.w = 1.0
    label.pose.position = Point(x=sphere.pose.position.x, y=sphere.pose.position.y, z=sphere.pose.position.z + 0.3)
    label.scale.z = 0.15
    label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    label.text = text
    return MarkerArray(markers=[pts, sphere, label])
