"""``concerto query "red chair"``: ask a running perception_node where something is."""

from __future__ import annotations

import argparse

HELP = """\
Call the node's open-vocabulary query service (concerto_ros_interfaces/srv/QueryText) and
print the status, the number of matching points, their centroid and the best matches
(x y z in metres in the node's fixed frame, relevance in [0, 1]). The node also publishes
the relevance cloud on ~/query/relevance and RViz markers on ~/query/markers.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("query", help="free-text query to a running perception_node",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", help='what to look for, e.g. "red chair"')
    p.add_argument("--negative", action="append", default=[], metavar="TEXT",
                   help="a text the match should not look like (repeatable; default: the node's query.negatives)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="relevance in [0, 1] from which a point matches (default: the node's query.default_threshold)")
    p.add_argument("--top-k", type=int, default=10, help="best matches to print (default: 10)")
    p.add_argument("--node", default="/perception_node", help="fully qualified node name (default: /perception_node)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the service and the answer")
    p.set_defaults(func=run)


def call_query(text: str, negatives=(), threshold: float = 0.0, top_k: int = 10,
               node_name: str = "/perception_node", timeout: float = 10.0):
    """Call ``<node_name>/query`` and return the response.

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
                                top_k=int(top_k))
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
    try:
        res = call_query(args.text, args.negative, args.threshold, args.top_k, args.node, args.timeout)
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
    print("best matches (x y z [m], relevance):")
    for p, s in zip(res.best_points, res.best_scores):
        print(f"  {p.x:8.3f} {p.y:8.3f} {p.z:8.3f}   {s:.3f}")
    return 0
