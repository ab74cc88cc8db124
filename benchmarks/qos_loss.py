"""Image delivery over DDS, best-effort against reliable subscriptions, on this machine.

Why: the perception node's input QoS decides whether camera images arrive at all when the
CPU is busy (its worker runs the encoder). This benchmark publishes colour images at a
fixed rate from one process and counts, in a second process, how many arrive, for each
image size and subscription QoS, while ``--load`` other processes keep the cores busy (as
the encoder does). It prints a table and writes ``benchmarks/results/qos.json``.

    scripts/env.sh python benchmarks/qos_loss.py                    # 640x480 and 1280x720, 10 Hz, 2 busy processes
    scripts/env.sh python benchmarks/qos_loss.py --frames 100 --rate 30 --load 0

Publisher QoS is reliable, keep-last 5 (a camera driver's default); the subscriber is
``reliable`` or ``sensor_data`` (best effort), keep-last 5, as the node's ``qos.input``. A
``best_effort_pub`` row has a best-effort publisher too (drivers that publish sensor-data
QoS).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

SIZES = {"640x480": (480, 640), "1280x720": (720, 1280)}
MODES = ("reliable", "sensor_data", "best_effort_pub")


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _qos(reliable: bool):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)


def _subscriber(mode: str, ready, done, out) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("qos_sub")
    got, lat = [], []

    def on_img(msg):
        got.append(int(msg.header.frame_id))
        lat.append(time.time() - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    node.create_subscription(Image, "/qos_bench/image", on_img, _qos(mode == "reliable"))
    ready.set()
    while not done.is_set():
        rclpy.spin_once(node, timeout_sec=0.05)
    end = time.monotonic() + 2.0  # drain
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    out.put({"received": len(set(got)), "latency_p50_s": sorted(lat)[len(lat) // 2] if lat else None})
    node.destroy_node()
    rclpy.shutdown()


def run_case(size: str, mode: str, frames: int, rate: float) -> dict:
    """Publish ``frames`` images of ``size`` at ``rate`` Hz; count what a ``mode`` subscriber gets."""
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    from concerto_ros.msgs.image import fill_image

    ctx = mp.get_context("spawn")
    ready, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
    sub = ctx.Process(target=_subscriber, args=(mode, ready, done, out), daemon=True)
    sub.start()
    ready.wait(60)
    rclpy.init()
    node = rclpy.create_node("qos_pub")
    pub = node.create_publisher(Image, "/qos_bench/image", _qos(mode != "best_effort_pub"))
    end = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(1.0)
    h, w = SIZES[size]
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    t0 = time.monotonic()
    for i in range(frames):
        msg = fill_image(Image(), img, "rgb8", time.time_ns(), str(i))
        pub.publish(msg)
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    done.set()
    res = out.get(timeout=60)
    sub.join(10)
    node.destroy_node()
    rclpy.shutdown()
    return {"size": size, "mode": mode, "bytes": h * w * 3, "sent": frames, **res,
            "delivered": res["received"] / frames}


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=50, help="images per case (default 50)")
    ap.add_argument("--rate", type=float, default=10.0, help="publish rate in Hz (default 10)")
    ap.add_argument("--load", type=int, default=2, help="busy processes while measuring (default 2, the cores here)")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--dds-profile", action=argparse.BooleanOptionalAction, default=True,
                    help="both processes with the shipped Fast DDS profile config/fastdds_large_data.xml (32 MiB "
                         "shared-memory segments); --no-dds-profile keeps Fast DDS's 512 KiB default (default: on)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "qos.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 30))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from concerto_ros.ros.dds import keep_fastdds_defaults, use_large_data_profile

    if not args.dds_profile:  # the spawned publisher and subscriber inherit the environment
        keep_fastdds_defaults()
    profile, note = use_large_data_profile()
    print(note)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    busy = [ctx.Process(target=_busy, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in busy:
        p.start()
    rows = []
    try:
        for size in args.sizes:
            for mode in args.modes:
                rows.append(run_case(size, mode, args.frames, args.rate))
                r = rows[-1]
                print(f"{size:>9} {mode:>16}: {r['received']:4d}/{r['sent']} delivered ({100 * r['delivered']:.0f} %), "
                      f"p50 latency {r['latency_p50_s'] if r['latency_p50_s'] is None else round(r['latency_p50_s'], 3)} s",
                      flush=True)
    finally:
        stop.set()
        for p in busy:
            p.join(5)
    result = {"frames": args.frames, "rate_hz": args.rate, "load_processes": args.load, "dds_profile": profile,
              "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out} (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
