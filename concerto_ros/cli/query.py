"""``concerto query "red chair"``: ask a running perception_node, or a saved map, where
something is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = """\
Without --map: call the node's open-vocabulary query service
(concerto_ros_interfaces/srv/QueryText) over its semantic map (--scope map, the default) or
its current window (--scope window) and print the status, the number of matching voxels,
their centroid, the matching regions (connected voxels above the threshold: centroid, box,
voxel count, mean relevance) and the best matches (x y z in metres in the node's fixed frame,
relevance in [0, 1]). The node also publishes the relevance cloud on ~/query/relevance and RViz
markers on ~/query/markers.

With --map FILE (a map saved by the node or by concerto replay, e.g. OUT/map.npz): answer
from the saved map, without ROS. The text encoder named in the map is built (the bundled
all-MiniLM-L6-v2 works offline; an open_clip map also needs --text-checkpoint), every voxel
with a language embedding is scored LERF-style against the query and the negatives with the
translator temperature saved in the map, and the matching regions are printed best first:
connected voxels (26-neighbourhood) with relevance >= the threshold, each with its centroid,
axis-aligned box (metres, the map's fixed frame), voxel count and mean relevance.
--ply writes the scored voxels with a relevance property.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("query", help="free-text query to a running perception_node",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", help='what to look for, e.g. "red chair"')
    p.add_argument("--negative", action="append", default=[], metavar="TEXT",
                   help="a text the match should not look like (repeatable; default: the node's query.negatives, "
                        "with --map: object, things, stuff, texture)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="relevance in [0, 1] from which a point matches (default: the node's query.default_threshold, "
                        "with --map: 0.5)")
    p.add_argument("--top-k", type=int, default=10, help="best matches to print (default: 10)")
    p.add_argument("--scope", choices=["map", "window"], default="map",
                   help="what the running node searches: its semantic map (default: every voxel it remembers) or "
                        "its current window")
    p.add_argument("--node", default="/perception_node", help="fully qualified node name (default: /perception_node)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the service and the answer")
    m = p.add_argument_group("saved map (no ROS)")
    m.add_argument("--map", type=Path, default=None, metavar="FILE",
                   help="answer from this saved map (.npz) instead of a running node")
    m.add_argument("--regions", type=int, default=5, help="most regions to print (default: 5)")
    m.add_argument("--min-voxels", type=int, default=1, help="smallest region printed, in voxels (default: 1)")
    m.add_argument("--ply", type=Path, default=None, metavar="OUT",
                   help="also write the scored voxels to this PLY (x y z rgb label confidence observations relevance)")
    m.add_argument("--text-checkpoint", default="",
                   help="open_clip maps: local weights file of the CLIP model (not stored in the map)")
    p.set_defaults(func=run)


def call_query(text: str, negatives=(), threshold: float = 0.0, top_k: int = 10,
               node_name: str = "/perception_node", timeout: float = 10.0, scope: str = ""):
    """Call ``<node_name>/query`` and return the response (``scope``: ``map``, ``window``, or
    empty for the node's default, the map).

    Raises:
        TimeoutError: the service is not available or did not answer within ``timeout`` s.
    """
    import rclpy
    from concerto_ros_interfaces.srv import QueryText

    own = not rclpy.ok()
    if own:
        rclpy.init()
    node = rclpy.create_node("concerto_query_client")
    try:
        client = node.create_client(QueryText, f"{node_name}/query")
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {node_name}/query not available after {timeout:.0f} s "
                               "(is perception_node running, with the same ROS_DOMAIN_ID?)")
        req = QueryText.Request(text=text, negative_texts=list(negatives), threshold=float(threshold),
                                top_k=int(top_k), scope=scope)
        future = client.call_async(req)
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        if not future.done():
            raise TimeoutError(f"no answer from {node_name}/query within {timeout:.0f} s")
        return future.result()
    finally:
        node.destroy_node()
        if own and rclpy.ok():
            rclpy.shutdown()


def run(args) -> int:
    if args.map is not None:
        return run_map(args)
    try:
        res = call_query(args.text, args.negative, args.threshold, args.top_k, args.node, args.timeout, args.scope)
    except TimeoutError as exc:
        print(f"error: {exc}")
        return 2
    print(res.message)
    if not res.success:
        return 1
    c = res.centroid
    if res.num_matches:
        print(f"centroid of {res.num_matches} matching points: ({c.x:.3f}, {c.y:.3f}, {c.z:.3f}) m "
              f"in '{res.relevance.header.frame_id}'")
    if res.regions:
        print("regions, best first (centroid x y z [m], box size [m], voxels, mean relevance):")
        for r in res.regions:
            size = (r.box_max.x - r.box_min.x, r.box_max.y - r.box_min.y, r.box_max.z - r.box_min.z)
            print(f"  {r.centroid.x:8.3f} {r.centroid.y:8.3f} {r.centroid.z:8.3f}   "
                  f"{size[0]:.2f} x {size[1]:.2f} x {size[2]:.2f}   {r.num_voxels:6d}   {r.score:.3f}")
    print("best matches (x y z [m], relevance):")
    for p, s in zip(res.best_points, res.best_scores):
        print(f"  {p.x:8.3f} {p.y:8.3f} {p.z:8.3f}   {s:.3f}")
    return 0


def query_map(path: Path, text: str, negatives=(), threshold: float = 0.5, top_k: int = 10, max_regions: int = 5,
              min_voxels: int = 1, text_checkpoint: str = ""):
    """Score a free-text query against a saved map.

    Returns:
        ``(map, rows, query_result, regions)``: the loaded
        :class:`~concerto_ros.mapping.SemanticVoxelMap`, the ``(V,)`` rows that hold an
        embedding, the :class:`~concerto_ros.language.query.QueryResult` over those rows and the
        :class:`~concerto_ros.mapping.Region` list (map rows), best first.

    Raises:
        FileNotFoundError / ValueError: unreadable map, a map without embeddings or
            temperature, a text encoder that cannot be built or whose width differs, bad text.
    """
    from concerto_ros.language.query import DEFAULT_NEGATIVES, TextQueryScorer
    from concerto_ros.language.text_encoders import build_text_encoder
    from concerto_ros.mapping import SemanticVoxelMap

    m = SemanticVoxelMap.load(path)
    ident = m.identity
    rows = m.embedding_rows() if m.embedding_dim else None
    if rows is None or rows.size == 0 or not ident.temperature > 0:
        raise ValueError(f"map {path} holds no language embeddings (made without a translator?)")
    te = build_text_encoder(ident.text_encoder or "sentence-transformers", ident.text_model or None,
                            text_checkpoint or None)
    if te.dim != m.embedding_dim:
        raise ValueError(f"the map's embeddings are {m.embedding_dim}-d but text encoder {te.name} gives {te.dim}-d")
    scorer = TextQueryScorer(te, ident.temperature, negatives=tuple(negatives) or DEFAULT_NEGATIVES)
    qr = scorer.score(m.embeddings(rows), text, coords=m.coords(rows), k=top_k, threshold=threshold)
    regions = m.regions(qr.relevance, threshold, rows=rows, max_regions=max_regions, min_voxels=min_voxels)
    return m, rows, qr, regions


def run_map(args) -> int:
    """``concerto query --map FILE TEXT``: print the best regions and voxels of a saved map."""
    from concerto_ros.config import QueryConfig

    threshold = args.threshold if args.threshold > 0 else QueryConfig().default_threshold
    if not 0.0 <= threshold <= 1.0 or args.top_k < 1 or args.regions < 1 or args.min_voxels < 1:
        print("error: --threshold must be in [0, 1]; --top-k, --regions and --min-voxels >= 1", file=sys.stderr)
        return 2
    print(f"scoring '{args.text}' against {args.map} ...", flush=True)
    try:
        m, rows, qr, regions = query_map(args.map, args.text, args.negative, threshold, args.top_k, args.regions,
                                         args.min_voxels, args.text_checkpoint)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ident = m.identity
    print(f"map: {len(m)} voxels of {ident.voxel_size:g} m in '{ident.fixed_frame}', {rows.size} with embeddings "
          f"({ident.text_encoder} {ident.text_model or 'all-MiniLM-L6-v2'}, temperature {ident.temperature:g}); "
          f"negatives: {', '.join(qr.negatives) or 'none'}")
    print(f"{qr.n_above} voxels with relevance >= {threshold:g}; {len(regions)} region(s), best first:")
    if regions:
        print(f"  {'#':>2} {'score':>6} {'voxels':>7}  {'centroid x y z [m]':>26}  {'box min .. max [m]'}")
    for i, r in enumerate(regions):
        c, lo, hi = r.centroid, r.box_min, r.box_max
        print(f"  {i + 1:>2} {r.score:6.3f} {r.num_voxels:7d}  {c[0]:8.3f} {c[1]:8.3f} {c[2]:8.3f}  "
              f"({lo[0]:.2f} {lo[1]:.2f} {lo[2]:.2f}) .. ({hi[0]:.2f} {hi[1]:.2f} {hi[2]:.2f})")
    coords = m.coords(rows)
    print("best voxels (x y z [m], relevance):")
    for i, s in zip(qr.topk, qr.topk_relevance):
        print(f"  {coords[i, 0]:8.3f} {coords[i, 1]:8.3f} {coords[i, 2]:8.3f}   {s:.3f}")
    if args.ply is not None:
        m.export_ply(args.ply, rows=rows, extra={"relevance": qr.relevance})
        print(f"wrote {args.ply}")
    return 0
