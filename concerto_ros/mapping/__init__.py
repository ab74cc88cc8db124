"""The persistent semantic voxel map (ROS-free): fusion, eviction, regions, save/load, keyframes.

* :class:`SemanticVoxelMap` (:mod:`.voxel_map`): geometry of every frame, semantics of every
  encoded window, bounded memory, reads and snapshots for publishers, saved maps and PLY.
* :func:`find_regions` (:mod:`.regions`): query answers as connected voxel regions.
* :class:`KeyframePolicy` (:mod:`.keyframes`): which frames the encoder runs on.
* :class:`MapIdentity`, :class:`MapMismatchError` (:mod:`.io`): what a saved map means.
"""

from .io import FORMAT_VERSION, MapIdentity, MapMismatchError
from .keyframes import KeyframeDecision, KeyframePolicy
from .regions import Region, find_regions
from .voxel_map import GEOMETRY, SEMANTIC, FuseReport, MapSnapshot, MapStats, SemanticVoxelMap

__all__ = ["SemanticVoxelMap", "MapStats", "MapSnapshot", "FuseReport", "MapIdentity", "MapMismatchError",
           "FORMAT_VERSION", "Region", "find_regions", "KeyframePolicy", "KeyframeDecision", "GEOMETRY", "SEMANTIC"]
