"""The perception node's services: text queries, text encoding, map features and map files.

* ``~/query`` (``QueryText``): relevance of the map's voxels (``scope: map``, the default) or
  of the window's (``scope: window``) to a free text, the best points, and the matching
  regions (connected voxels above the threshold, best first); bounded by ``query.*``.
* ``~/encode_text`` (``EncodeText``): a text's unit embedding in the space of the map's
  language features, for nodes that score their own queries.
* ``~/get_map_features`` (``GetMapFeatures``): a full snapshot of the map's language features,
  optionally within a box (late joiners of ``~/map/language_features``).
* ``~/save_map``, ``~/load_map`` (``MapFile``), ``~/clear_map`` (``std_srvs/Trigger``).

Every handler runs in the service callback group (message intake goes on meanwhile) and
inside the shell's guard; refusals are ``success: false`` with the reason.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from concerto_ros.msgs.language_features import FLOAT16, FLOAT32
from concerto_ros.msgs.pointcloud2 import fill_pointcloud2
from concerto_ros.pipeline import QueryError

__all__ = ["PerceptionServices", "bounded_query_args"]

def bounded_query_args(negatives: list[str], top_k: int, max_negatives: int,
                       max_top_k: int) -> tuple[list[str], int, list[str]]:
    """Apply the node's query bounds.

    Empty or blank negative texts are dropped; more than ``max_negatives`` are cut to the
    first ``max_negatives``; ``top_k`` above ``max_top_k`` is capped (``<= 0`` keeps the
    default). Returns ``(negatives, top_k, notes)`` with one note per bound applied.
    """
    notes = []
    kept = [n for n in negatives if n.strip()]
    if len(kept) < len(negatives):
        notes.append(f"{len(negatives) - len(kept)} empty negative text(s) ignored")
    if len(kept) > max_negatives:
        notes.append(f"only the first {max_negatives} of {len(kept)} negative texts used (query.max_negatives)")
        kept = kept[:max_negatives]
    if top_k > max_top_k:
        notes.append(f"top_k {top_k} capped to query.max_top_k = {max_top_k}")
        top_k = max_top_k
    return kept, top_k, notes


def _refused(message: str):
    def handler(request, response):
        response.success, response.message = False, message
        return response
    return handler


class PerceptionServices:
    """Creates and serves the services above for a :class:`~concerto_ros.ros.perception.PerceptionShell`."""

    def __init__(self, shell):
        self.shell = shell
        self.pub_relevance = self.pub_markers = None

    def create(self, out_qos) -> list:
        """Create the services (and the query's relevance/markers publishers); returns the
        entities for the shell to destroy. Without the interface package only a warning."""
        try:
            from concerto_ros_interfaces.srv import EncodeText, GetMapFeatures, MapFile, QueryText
            from std_srvs.srv import Trigger
            from visualization_msgs.msg import MarkerArray
        except ImportError as exc:  # interfaces not built: the node still perceives
            self.shell.log.warning(f"services disabled: {exc} (build concerto_ros_interfaces)")
            return []
        node, group, guard = self.shell.node, self.shell.service_group, self.shell.guard
        self.pub_relevance = node.create_publisher(PointCloud2, "~/query/relevance", out_qos)
        self.pub_markers = node.create_publisher(MarkerArray, "~/query/markers", out_qos)
        internal = _refused("internal error while answering (see the node's log)")
        entities = [self.pub_relevance, self.pub_markers]
        for srv_type, name, handler in ((QueryText, "~/query", self.query), (EncodeText, "~/encode_text", self.encode_text),
                                        (GetMapFeatures, "~/get_map_features", self.get_map_features),
                                        (MapFile, "~/save_map", self.save_map), (MapFile, "~/load_map", self.load_map),
                                        (Trigger, "~/clear_map", self.clear_map)):
            entities.append(node.create_service(srv_type, name, guard(name, handler, internal), callback_group=group))
        return entities

    # -- ~/query -----------------------------------------------------------------------------------
    def query(self, request, response):
        """``QueryText``: see the module docstring and the .srv file."""
        from concerto_ros.mapping import find_regions
        from concerto_ros.ros.markers import query_markers, region_msg, to_point

        shell, q = self.shell, self.shell.cfg.query
        scope = (request.scope or "map").strip().lower()
        try:
            negatives, top_k, notes = bounded_query_args(list(request.negative_texts), int(request.top_k),
                                                         q.max_negatives, q.max_top_k)
            target, qr = shell.pipeline.query(request.text, negatives, float(request.threshold), top_k, scope=scope)
        except (QueryError, ValueError) as exc:
            response.success, response.message = False, str(exc)
            shell.log.warning(f"query '{request.text[:60]}' refused: {exc}")
            return response
        fill_pointcloud2(response.relevance, PointField, target.stamp_ns, target.fixed_frame, target.coord,
                         extra={"relevance": qr.relevance.astype("float32")})
        response.best_points = [to_point(p) for p in target.coord[qr.topk]]
        response.best_scores = [float(v) for v in qr.topk_relevance]
        response.num_matches = qr.n_above
        if qr.centroid is not None:
            response.centroid = to_point(qr.centroid)
        response.window_stamp.sec, response.window_stamp.nanosec = divmod(int(target.stamp_ns), 1_000_000_000)
        regions = find_regions(target.ijk, qr.relevance, target.voxel_size, qr.threshold, q.max_regions,
                               min_voxels=q.min_region_voxels)
        response.regions = [region_msg(r) for r in regions]
        response.success = True
        response.message = (f"'{qr.text}' over the {scope}: {qr.n_above} of {len(qr.relevance)} voxels with relevance "
                            f">= {qr.threshold:.2f} in {len(regions)} region(s) (negatives: "
                            f"{', '.join(qr.negatives) or 'none'})" + "".join(f"; {n}" for n in notes))
        if shell.active:
            self.pub_relevance.publish(response.relevance)
            self.pub_markers.publish(query_markers(target.coord[qr.topk], qr.topk_relevance, qr.centroid, qr.text,
                                                   response.relevance.header, 3 * target.voxel_size))
        return response

    # -- language features --------------------------------------------------------------------------
    def encode_text(self, request, response):
        """``EncodeText``: the unit embedding of ``text`` in the map features' space."""
        lang = self.shell.pipeline.language
        if lang is None:
            response.success, response.message = False, "no translator loaded: the node has no language features"
            return response
        try:
            emb = lang.scorer.embed_text(request.text)
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            return response
        response.embedding = [float(v) for v in emb]
        response.dim = int(emb.shape[0])
        response.text_encoder, response.text_model = lang.backend, lang.model
        response.temperature = float(lang.translator.temperature)
        response.success, response.message = True, f"'{request.text}' -> {response.dim}-d unit vector"
        return response

    def get_map_features(self, request, response):
        """``GetMapFeatures``: every map voxel with a language feature (optionally in a box)."""
        vmap, lang = self.shell.pipeline.map, self.shell.pipeline.language
        if vmap is None or lang is None:
            response.success = False
            response.message = "no map (map.enabled: false)" if vmap is None else "no translator: no language features"
            return response
        box = None
        if request.use_box:
            b0, b1 = request.box_min, request.box_max
            box = ((b0.x, b0.y, b0.z), (b1.x, b1.y, b1.z))
        encoding = FLOAT32 if int(request.encoding) == FLOAT32 else FLOAT16
        snap = vmap.snapshot(box=box, embeddings=True, embedding_dtype=np.float16 if encoding == FLOAT16 else np.float32)
        self.shell.fill_features(response.features, snap, full=True, encoding=encoding)
        response.success = True
        response.message = f"{len(snap)} voxels of {len(vmap)} (map version {snap.version})"
        return response

    # -- map files ---------------------------------------------------------------------------------
    def _path(self, request) -> Path:
        path = (request.path or self.shell.cfg.map.save_path).strip()
        if not path:
            raise ValueError("no path given and map.save_path is empty")
        return Path(path).expanduser()

    def save_map(self, request, response):
        """``MapFile`` on ``~/save_map``."""
        vmap = self.shell.pipeline.map
        try:
            if vmap is None:
                raise ValueError("no map (map.enabled: false)")
            written = vmap.save(self._path(request))
        except (ValueError, OSError) as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success, response.path, response.num_voxels = True, str(written), len(vmap)
        response.message = f"saved {len(vmap)} voxels to {written}"
        return response

    def load_map(self, request, response):
        """``MapFile`` on ``~/load_map``: refused (naming the differences) when the file was
        made with another voxel size, fixed frame, model or text encoder."""
        p = self.shell.pipeline
        try:
            if p.map is None:
                raise ValueError("no map (map.enabled: false)")
            path = self._path(request)
            p.map = p.map.load(path, expect=p.map.identity, ignore=("class_names",), max_voxels=p.map.max_voxels,
                               radius=p.map.radius, evict_slack=p.map.evict_slack, threads=p.map.threads,
                               log=p.log)
        except (ValueError, OSError) as exc:  # MapMismatchError is a ValueError
            response.success, response.message = False, str(exc)
            return response
        response.success, response.path, response.num_voxels = True, str(path), len(p.map)
        response.message = f"loaded {len(p.map)} voxels from {path}"
        return response

    def clear_map(self, request, response):
        """``std_srvs/Trigger`` on ``~/clear_map``."""
        vmap = self.shell.pipeline.map
        if vmap is None:
            response.success, response.message = False, "no map (map.enabled: false)"
            return response
        n = len(vmap)
        vmap.clear()
        response.success, response.message = True, f"cleared {n} voxels"
        return response
