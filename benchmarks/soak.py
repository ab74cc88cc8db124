"""Soak: perception_node under a steady 640x480 RGB-D stream (and malformed input) for minutes.

Starts ``perception_node`` as its own process and publishes, at ``--rate`` Hz for
``--minutes``, the five real Kinect frames of ``../shared/data/rgbd_slambook`` in a loop
(640x480, stamps advancing in real time, each frame's pose on ``/tf``), exactly as a camera
driver and a localiser would. With ``--fuzz K`` it also sends K malformed cases per second
from :mod:`concerto_ros.testing.fuzz` (bad ``/tf``, ``/tf_static``, camera info, images,
stamps, PointCloud2), the same families as the live fuzz test.

Prints, and writes to ``benchmarks/results/soak.json`` (and ``soak_rss.png``):

* the node's RSS every ``--sample`` seconds (from /proc): the resident size at that instant and
  the peak over the interval (``VmHWM``, reset each sample), and the spread of the interval
  peaks after minute 2 (the growth criterion);
* latency from publishing a frame to receiving the cloud that includes it: p50, p99, max;
* every sample, the node's input delays from /diagnostics (``delivery_ms_series``): per topic
  the p50/p99 transport delay (publisher to the node's middleware) and queueing delay (the
  middleware to the callback), see :mod:`concerto_ros.ros.delivery`;
* frames sent, clouds received, frames dropped by the worker queue (by design: the newest
  frame wins while the encoder runs), messages dropped by the sync, skips by reason,
  internal errors, malformed messages sent;
* whether the node stayed alive and its log is free of exceptions;
* with ``--query-rate Q`` (needs a translator, e.g. ``--set model.bundle=default``): text
  queries on ``~/query`` at Q Hz from another thread, every fifth a hostile one (500 negative
  texts, ``top_k = 2^32 - 1``): round-trip p50/p99/max, failures, and the clouds the node
  published while queries were in flight (intake goes on during a query).

Both processes use the shipped Fast DDS profile ``config/fastdds_large_data.xml`` (32 MiB
shared-memory segments, :mod:`concerto_ros.ros.dds`); ``--no-dds-profile`` runs them with Fast
DDS's 512 KiB default, which delays and loses the images (README, "Reliability figures").

    scripts/env.sh python benchmarks/soak.py --minutes 10 --rate 10 --fuzz 2   # the reference run
    scripts/env.sh python benchmarks/soak.py --minutes 10 --rate 10 --fuzz 2 --no-dds-profile
    scripts/env.sh python benchmarks/soak.py --minutes 2 --rate 10 --fuzz 5 --qos sensor_data
    scripts/env.sh python benchmarks/soak.py --minutes 2 --rate 10 --query-rate 1 --set model.bundle=default
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from types import SimpleNamespace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rgbd_slambook"
S = 1_000_000_000
#: /diagnostics keys of the input delays (concerto_ros.ros.delivery) kept in the time series
DELIVERY_KEYS = ("transport_ms_p50:", "transport_ms_p99:", "queued_ms_p50:", "queued_ms_p99:")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak) of process ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def interval_peak_mib(pid: int) -> float:
    """Peak RSS since the previous call (``VmHWM``, then reset through ``clear_refs``), MiB.

    The encoder's temporaries come and go within a frame, so the RSS of one instant depends
    on when it is read; the peak of each interval is the number to watch for growth.
    """
    peak = rss_mib(pid, "VmHWM")
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass
    return peak


def load_frames():
    """The 5 slambook frames as rclpy Image/CameraInfo templates and camera-to-world poses."""
    from sensor_msgs.msg import CameraInfo, Image

    from concerto_ros.msgs.camera_info import fill_camera_info
    from concerto_ros.msgs.image import fill_image
    from concerto_ros.recordings import open_recording

    rec = open_recording({"type": "rgbd_folder", "path": str(DATA), "fx": 518.0, "fy": 519.0, "cx": 325.5,
                          "cy": 253.5, "depth_scale": 1000.0})
    out = []
    for f in rec.frames():
        k = f.rgbd.intrinsics
        out.append((fill_image(Image(), f.rgbd.color, "rgb8", 1, "cam"),
                    fill_image(Image(), f.rgbd.depth, "16UC1", 1, "cam"),
                    fill_camera_info(CameraInfo(), k.fx, k.fy, k.cx, k.cy, k.width, k.height, 1, "cam"),
                    f.T_world_sensor))
    return out


def stamped(msg, stamp_ns: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), S)
    return msg


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


class QueryLoad:
    """Text queries at a fixed rate from a thread, timed (see the module docstring)."""

    TEXTS = ["floor", "red chair", "table", "wall", "sofa", "a place to sit"]

    def __init__(self, harness, rate_hz: float):
        from concerto_ros_interfaces.srv import QueryText

        self.h, self.period = harness, 1.0 / rate_hz
        self.client = harness.node.create_client(QueryText, "/perception_node/query")
        self.request = QueryText.Request
        self.times, self.hostile_times, self.failures, self.clouds_during = [], [], [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(30)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            hostile = i % 5 == 4
            req = self.request(text=self.TEXTS[i % len(self.TEXTS)], top_k=2 ** 32 - 1 if hostile else 10,
                               negative_texts=[f"thing {k}" for k in range(500)] if hostile else [])
            n0, t0 = len(self.h.clouds), time.monotonic()
            fut = self.client.call_async(req)
            if not self.h.wait(lambda: fut.done(), 60):
                self.failures.append("timeout")
            else:
                dt = time.monotonic() - t0
                (self.hostile_times if hostile else self.times).append(dt)
                if not fut.result().success:
                    self.failures.append(fut.result().message)
            self.clouds_during += len(self.h.clouds) - n0
            i += 1
            self._stop.wait(self.period)


def run(args) -> dict:
    import rclpy

    from concerto_ros.bag.live import NodeProcess
    from concerto_ros.config import default_config_path
    from concerto_ros.ros.dds import keep_fastdds_defaults, use_large_data_profile
    from concerto_ros.testing.harness import Harness

    frames = load_frames()
    overrides = {"qos.input": args.qos, "publish.features": False, "topics.points": "/points"}
    for item in args.overrides:
        k, v = item.split("=", 1)
        overrides[k] = v
    if not args.dds_profile:  # Fast DDS's defaults in this process and the node (it inherits the variables)
        keep_fastdds_defaults()
    st_profile, note = use_large_data_profile()  # this process publishes the images (the node sets its own)
    print(note)
    log_path = Path(tempfile.mkdtemp(prefix="soak_")) / "node.log"
    node = NodeProcess(args.config or [default_config_path(), default_config_path().with_name("perception_cpu.yaml")],
                       overrides, log_path=log_path)
    rclpy.init()
    h = Harness(depth=10, keep_clouds=False)
    st = SimpleNamespace(dds_profile=st_profile, rss=[], latencies=[], map_series=[], delivery_series=[], sent_at={},
                         n_sent=0, n_malformed=0, diag={}, queries=None)
    try:
        if not h.wait_for_node(["/camera/color/image_raw", "/camera/depth/image_raw", "/camera/color/camera_info"],
                               timeout=180, alive=node.alive):
            raise RuntimeError(f"the node did not come up:\n{node.tail()}")
        time.sleep(1.0)
        st.queries = QueryLoad(h, args.query_rate) if args.query_rate > 0 else None
        _stream(args, h, node, frames, st)
        if st.queries is not None:
            st.queries.stop()
        time.sleep(3.0)
        for arrived, msg in list(h.clouds):
            stamp = msg.header.stamp.sec * S + msg.header.stamp.nanosec
            if stamp in st.sent_at:
                st.latencies.append(arrived - st.sent_at[stamp])
        st.diag = dict(h.diag)
    finally:
        st.alive = node.alive()
        h.close()
        rclpy.shutdown()
        st.rc = node.stop()
    st.clouds = len(h.clouds)
    return _summary(args, st, log_path)


def _stream(args, h, node, frames, st) -> None:
    """Publish frames, their /tf and the malformed cases at ``args.rate`` for ``args.minutes``,
    sampling the node's RSS and diagnostics every ``args.sample`` seconds (into ``st``)."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    from concerto_ros.msgs.transforms import fill_transform_stamped
    from concerto_ros.testing import fuzz

    rng = random.Random(args.seed)
    t0, stamp0 = time.monotonic(), time.time_ns()
    next_sample, end, period, i = 0.0, t0 + args.minutes * 60.0, 1.0 / args.rate, 0
    while time.monotonic() < end:
        now = time.monotonic() - t0
        if now >= next_sample:
            st.rss.append((now, rss_mib(node.proc.pid), interval_peak_mib(node.proc.pid)))
            next_sample += args.sample
            d = dict(h.diag)
            st.map_series.append((now, int(d.get("map_voxels", 0))))
            st.delivery_series.append((now, {k: float(v) for k, v in d.items() if k.startswith(DELIVERY_KEYS)}))
            print(f"[{now:6.0f} s] RSS {st.rss[-1][1]:7.1f} MiB (interval peak {st.rss[-1][2]:7.1f}), sent "
                  f"{st.n_sent}, integrated {d.get('frames_integrated', '?')}, clouds {len(h.clouds)}, map "
                  f"{st.map_series[-1][1]} voxels, malformed {st.n_malformed}, alive {node.alive()}; p99 ms transport/queued "
                  f"/tf {d.get('transport_ms_p99:/tf', '?')}/{d.get('queued_ms_p99:/tf', '?')}, colour "
                  f"{d.get('transport_ms_p99:/camera/color/image_raw', '?')}/"
                  f"{d.get('queued_ms_p99:/camera/color/image_raw', '?')}", flush=True)
        stamp = stamp0 + int(now * S)
        color, depth, info, T = frames[i % len(frames)]
        ts = TransformStamped()
        fill_transform_stamped(ts, T, "odom", "cam", stamp)
        h.publish([("/tf", TFMessage(transforms=[ts])),
                   ("/camera/color/image_raw", stamped(color, stamp)),
                   ("/camera/depth/image_raw", stamped(depth, stamp)),
                   ("/camera/color/camera_info", stamped(info, stamp))])
        st.sent_at[stamp] = time.monotonic()
        st.n_sent += 1
        for _ in range(args.fuzz_per_frame(i)):
            case = rng.choice(fuzz.cases(stamp - S // 100))
            h.publish(fuzz.fix_topics(case, fuzz.Topics()))
            st.n_malformed += len(case.messages)
        i += 1
        if st.queries is not None and i == int(args.rate * 5):  # start once the window has filled
            st.queries.start()
        if not node.alive():
            break
        time.sleep(max(0.0, t0 + i * period - time.monotonic()))


def _summary(args, st, log_path: Path) -> dict:
    """The JSON record of a soak (keys in the module docstring)."""
    log = log_path.read_text(errors="replace")
    after2 = [p for t, _, p in st.rss if t >= 120.0] or [p for _, _, p in st.rss]
    diag, queries, lat = st.diag, st.queries, st.latencies
    return {
        "minutes": args.minutes, "rate_hz": args.rate, "qos": args.qos, "fuzz_per_s": args.fuzz, "seed": args.seed,
        "dds_profile": st.dds_profile,
        "frames_sent": st.n_sent, "clouds_received": st.clouds, "malformed_sent": st.n_malformed,
        "latency_p50_s": percentile(lat, 50), "latency_p99_s": percentile(lat, 99),
        "latency_max_s": max(lat) if lat else float("nan"),
        "rss_mib": [[round(t, 1), round(r, 1), round(p, 1)] for t, r, p in st.rss],
        "peak_rss_after_2min_min": min(after2), "peak_rss_after_2min_max": max(after2),
        "peak_rss_after_2min_mean": float(np.mean(after2)),
        "peak_rss_after_2min_within": max(max(after2) / np.mean(after2) - 1, 1 - min(after2) / np.mean(after2)),
        "frames_processed": int(diag.get("frames_processed", 0)),
        "frames_integrated": int(diag.get("frames_integrated", 0)),
        "map_voxels_series": st.map_series,
        "delivery_ms_series": st.delivery_series,
        "frames_dropped_queue": int(diag.get("frames_dropped_queue", 0)),
        "sync_dropped_stale": int(diag.get("sync:dropped_stale", 0)),
        "internal_errors": int(diag.get("internal_errors", 0)),
        "skipped": {k[len("skipped:"):]: int(v) for k, v in diag.items() if k.startswith("skipped:")},
        "alive_at_end": st.alive, "exit_code": st.rc,
        "queries": None if queries is None else {
            "rate_hz": args.query_rate, "count": len(queries.times), "hostile_count": len(queries.hostile_times),
            "round_trip_p50_s": percentile(queries.times, 50), "round_trip_p99_s": percentile(queries.times, 99),
            "round_trip_max_s": max(queries.times) if queries.times else float("nan"),
            "hostile_round_trip_p50_s": percentile(queries.hostile_times, 50),
            "hostile_round_trip_max_s": max(queries.hostile_times) if queries.hostile_times else float("nan"),
            "failures": queries.failures[:5], "num_failures": len(queries.failures),
            "clouds_published_while_querying": queries.clouds_during},
        "exceptions_in_log": sum(log.count(w) for w in ("Traceback", "RCLError", "Exception")),
        "loadavg": os.getloadavg(), "node_log": str(log_path),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, r, p = zip(*result["rss_mib"]) if result["rss_mib"] else ((), (), ())
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(np.array(t) / 60.0, r, marker=".", lw=0.8, label="RSS at the sample")
    ax.plot(np.array(t) / 60.0, p, marker=".", label="peak RSS of the interval")
    ax.legend(loc="lower right", fontsize=8)
    ax.axvline(2.0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("minutes")
    ax.set_ylabel("node RSS (MiB)")
    dds = Path(result["dds_profile"]).name if result.get("dds_profile") else "Fast DDS defaults"
    ax.set_title(f"soak: {result['rate_hz']:g} Hz 640x480, {result['qos']} QoS, {dds}, "
                 f"{result['malformed_sent']} malformed messages", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="duration in minutes (default 10)")
    ap.add_argument("--rate", type=float, default=10.0, help="frames per second (default 10)")
    ap.add_argument("--qos", choices=["reliable", "sensor_data"], default="reliable", help="the node's qos.input")
    ap.add_argument("--fuzz", type=float, default=0.0, help="malformed cases per second (default 0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the malformed cases' order (default 0)")
    ap.add_argument("--dds-profile", action=argparse.BooleanOptionalAction, default=True,
                    help="the shipped Fast DDS profile config/fastdds_large_data.xml (32 MiB shared-memory segments) "
                         "for this process and the node; --no-dds-profile keeps Fast DDS's 512 KiB default "
                         "(default: on)")
    ap.add_argument("--query-rate", type=float, default=0.0,
                    help="text queries per second during the soak (default 0; needs a translator)")
    ap.add_argument("--sample", type=float, default=15.0, help="seconds between RSS samples (default 15)")
    ap.add_argument("--config", type=Path, action="append", default=None,
                    help="parameters YAML, repeatable: later files win (default config/perception.yaml then the live "
                         "CPU overlay config/perception_cpu.yaml, as the launch file on a CPU)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                    help="node parameter override (repeatable)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} not found: the soak plays the real Kinect recording from ../shared/data")
        return 2
    per_frame = args.fuzz / args.rate
    args.fuzz_per_frame = lambda i: int((i + 1) * per_frame) - int(i * per_frame)
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_name(args.out.stem + "_rss.png"))
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mib"}, indent=2))
    ok = result["alive_at_end"] and result["internal_errors"] == 0 and result["exceptions_in_log"] == 0
    print(f"interval peak RSS after minute 2: {result['peak_rss_after_2min_min']:.0f}-"
          f"{result['peak_rss_after_2min_max']:.0f} MiB, within +-{100 * result['peak_rss_after_2min_within']:.1f} % "
          f"of the mean; latency p50 {result['latency_p50_s']:.2f} s, p99 {result['latency_p99_s']:.2f} s; "
          f"{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
