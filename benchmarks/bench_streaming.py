"""Streaming: the node's own scheduling fed in real time, with the default bundle and the map.

A feeder thread offers 640x480 RGB-D frames at ``--rate`` Hz in wall-clock time (colour,
depth and camera info through the node's :class:`~concerto_ros.sensors.stream.FrameStream`,
the pose on a TF buffer) while :class:`~concerto_ros.runtime.StreamingRuntime` integrates and
encodes concurrently, exactly as in ``perception_node`` (no faster-than-real-time shortcut;
the PointCloud2 of each keyframe is built as the node publishes it). Two recordings:

* ``slambook``: the real 5-frame Kinect recording (``../shared/data/rgbd_slambook``) played
  back and forth, each pass shifted by ``--advance`` metres so the map keeps growing;
* ``generated``: ``--frames`` frames of the demo's procedural room, rendered once into
  ``outputs/bench_streaming/`` (two laps around the room: places are revisited).

Latency runs from a frame's offer to the publication of the output that includes it: for a
keyframe its own window cloud (``latency_*``), for any frame the next keyframe output after it
(``frame_latency_*``). Prints a table and writes ``benchmarks/results/streaming.json`` with,
per recording, ``rate_hz frames_in frames_integrated keyframes_encoded keyframe_rate_hz
latency_p50_s latency_p99_s rss_mib_start rss_mib_max rss_mib_end`` and more.

    scripts/env.sh python benchmarks/bench_streaming.py --rate 30 --seconds 60     # the reference run
    scripts/env.sh python benchmarks/bench_streaming.py --source slambook --seconds 20 --set window.max_voxels=0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rgbd_slambook"
S = 1_000_000_000


def rss_mib() -> float:
    """Resident set size of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def load_frames(source: str, frames: int, advance: float):
    """``(frames, cycle)``: list of ``(rgb, depth_u16, intrinsics, T_world_cam)`` and a function
    ``pose(i)`` giving the pose of offered frame ``i`` (looping with a shift per pass)."""
    from concerto_ros.recordings import open_recording

    if source == "slambook":
        rec = open_recording({"type": "rgbd_folder", "path": str(DATA), "fx": 518.0, "fy": 519.0, "cx": 325.5,
                              "cy": 253.5, "depth_scale": 1000.0})
    else:
        from concerto_ros.demo.scene import write_sequence

        folder = ROOT / "outputs" / "bench_streaming" / f"generated_{frames}"
        if not (folder / "poses.txt").is_file():
            print(f"rendering {frames} frames of the demo room into {folder} (once)...", flush=True)
            write_sequence(folder, seed=3, num_frames=frames, width=640, height=480, arc_degrees=720.0)
        rec = open_recording({"type": "rgbd_folder", "path": str(folder)})
    data = [(f.rgbd.color, f.rgbd.depth, f.rgbd.intrinsics, f.T_world_sensor) for f in rec.frames()]
    n = len(data)
    order = list(range(n)) + list(range(n - 2, 0, -1)) if source == "slambook" and n > 2 else list(range(n))

    def frame(i: int):
        rgb, depth, intr, T = data[order[i % len(order)]]
        T = T.copy()
        T[0, 3] += advance * (i // len(order))
        return rgb, depth, intr, T

    return frame, len(order)


def messages(rgb, depth, intr, stamp_ns: int):
    """Colour, depth and camera info of one frame as duck-typed messages."""
    from concerto_ros.msgs.camera_info import fill_camera_info
    from concerto_ros.msgs.image import fill_image

    def blank():
        return NS(header=NS(stamp=NS(sec=0, nanosec=0), frame_id=""))

    return [("color", fill_image(blank(), rgb, "rgb8", stamp_ns, "cam")),
            ("depth", fill_image(blank(), depth, "16UC1", stamp_ns, "cam")),
            ("camera_info", fill_camera_info(blank(), intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height,
                                             stamp_ns, "cam"))]


class Session:
    """One streaming run: pipeline, runtime, feeder, RSS sampler and the outputs' times."""

    def __init__(self, cfg, frame, rate: float, seconds: float):
        from concerto_ros.pipeline import PerceptionPipeline
        from concerto_ros.runtime import StreamingRuntime
        from concerto_ros.sensors.skips import SkipCounter
        from concerto_ros.sensors.stream import FrameStream
        from concerto_ros.sensors.tf_buffer import TransformBuffer

        self.frame, self.rate, self.seconds = frame, rate, seconds
        self.rss_start = rss_mib()
        self.pipeline = PerceptionPipeline(cfg, log=None)
        self.pipeline.feature_colors_wanted = False  # as the node while nobody views ~/feature_points
        self.tf = TransformBuffer(cache_time_s=30.0)
        self.skips = SkipCounter(error=lambda text: print(f"  {text}", file=sys.stderr, flush=True))  # internal errors
        self.stream = FrameStream(cfg, lookup=self.tf.lookup, skips=self.skips, timer=self.pipeline.timer)
        self.runtime = StreamingRuntime.from_config(self.pipeline, self.stream, on_result=self.publish,
                                                    on_skip=self.skips.record)
        self.offered: list[tuple[int, float]] = []  # (stamp, offer time)
        self.outputs: list[tuple[int, float, float]] = []  # (window stamp, publish time, offer time of its frame)
        self.rss: list[float] = []  # RSS (MiB) every 0.5 s, at rss_t (s from the feeder's start), map size map_n
        self.rss_t: list[float] = []
        self.map_n: list[int] = []
        self.t0, self.feed_late_s = time.monotonic(), 0.0  # feeder start; its largest lag behind the schedule
        self._stop = threading.Event()

    def publish(self, result, keyframe, offered_at) -> None:
        """What the node does with a keyframe result: build the PointCloud2 (and time it)."""
        from concerto_ros.msgs.pointcloud2 import fill_pointcloud2

        with self.pipeline.timer.stage("to_msg"):
            msg = NS(header=NS(stamp=NS(sec=0, nanosec=0), frame_id=""))
            fill_pointcloud2(msg, lambda **kw: NS(**kw), result.stamp_ns, result.fixed_frame, result.coord,
                             rgb=result.color, label=result.labels.astype("uint32"), confidence=result.confidence)
        self.outputs.append((result.stamp_ns, time.monotonic(), offered_at))

    def _feed(self) -> None:
        t0 = self.t0 = time.monotonic()
        stamp0 = time.time_ns()
        i = 0
        while not self._stop.is_set() and time.monotonic() - t0 < self.seconds:
            self.feed_late_s = max(self.feed_late_s, time.monotonic() - (t0 + i / self.rate))
            rgb, depth, intr, T = self.frame(i)
            stamp = stamp0 + int((time.monotonic() - t0) * S)
            self.tf.set_transform_matrix("odom", "cam", stamp, T)
            now = time.monotonic()
            for stream, msg in messages(rgb, depth, intr, stamp):
                for pending in self.stream.add(stream, msg):
                    self.runtime.offer(pending, now)
            self.offered.append((stamp, now))
            i += 1
            self._stop.wait(max(0.0, t0 + i / self.rate - time.monotonic()))

    def _sample(self) -> None:
        vmap = self.pipeline.map
        while not self._stop.is_set():
            self.rss.append(rss_mib())
            self.rss_t.append(time.monotonic() - self.t0)
            self.map_n.append(len(vmap) if vmap is not None else 0)
            self._stop.wait(0.5)

    def rss_after_full(self) -> dict:
        """The resident set once the map reached ``map.max_voxels`` (the flatness criterion):
        the time it did, the RSS then, the most after, the rise of the second half of the
        streaming over the part before it (0 when flat; the final trim is not counted), and
        the peak of each minute (the heap is trimmed between them, ``worker.trim_period``)."""
        bound = self.pipeline.cfg.map.max_voxels
        t, r, n = np.array(self.rss_t), np.array(self.rss), np.array(self.map_n)
        live = t <= self.seconds
        full = np.flatnonzero(live & (n >= bound)) if bound else np.zeros(0, dtype=int)
        if not len(full):
            return {"map_full_s": None}
        i, half = int(full[0]), self.seconds / 2
        minutes = [r[live & (t >= m * 60.0) & (t < (m + 1) * 60.0)] for m in range(int(np.ceil(self.seconds / 60.0)))]
        first, second = r[(t >= t[i]) & (t < max(half, t[i]))], r[live & (t >= max(half, t[i]))]
        return {"map_full_s": round(float(t[i]), 1), "rss_mib_at_full": round(float(r[i]), 1),
                "rss_mib_max_after_full": round(float(r[live & (t >= t[i])].max()), 1),
                "rss_mib_rise_second_half": round(float(second.max() - first.max()), 1)
                if len(first) and len(second) else None,
                # the heap is trimmed every worker.trim_period (60 s): compare the peaks between trims
                "rss_mib_peak_per_minute": [round(float(m.max()), 1) for m in minutes if len(m)]}

    def run(self) -> dict:
        self.runtime.start()
        threads = [threading.Thread(target=self._feed, daemon=True), threading.Thread(target=self._sample, daemon=True)]
        for t in threads:
            t.start()
        threads[0].join()
        end = time.monotonic() + 10.0  # let the last frames and keyframe through
        while time.monotonic() < end and (len(self.runtime.intake) or self.runtime.frames_integrated
                                          + self.runtime.frames_dropped + self.skips.total < len(self.offered)):
            time.sleep(0.05)
        time.sleep(1.5)
        self._stop.set()
        self.runtime.stop()
        threads[1].join(2)
        return self.report()

    def report(self) -> dict:
        rt, p = self.runtime, self.pipeline
        kf_lat = np.array([pub - off for _s, pub, off in self.outputs if off is not None])
        out_stamps = np.array([s for s, _p, _o in self.outputs], dtype=np.int64)
        out_times = np.array([pub for _s, pub, _o in self.outputs])
        frame_lat = []
        for stamp, offered in self.offered:  # the first output that includes the frame
            j = np.searchsorted(out_stamps, stamp)  # window stamps grow with time
            if j < len(out_stamps):
                frame_lat.append(out_times[j] - offered)
        pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
        ms = p.map.stats() if p.map is not None else None
        summary = p.timer.summary()
        timings = {k: round(v["mean_ms"], 1) for k, v in summary.items()}
        p99 = {k: round(v["p99_ms"], 1) for k, v in summary.items()}
        return {"rate_hz": self.rate, "seconds": self.seconds, "frames_in": len(self.offered),
                "frames_integrated": rt.frames_integrated, "frames_dropped": rt.frames_dropped,
                "frames_skipped": self.skips.total, "keyframes_made": rt.keyframes_made,
                "keyframes_encoded": rt.keyframes_encoded, "keyframes_replaced": rt.keyframes_replaced,
                "keyframe_rate_hz": rt.keyframes_encoded / self.seconds,
                "warm_up_s": round(rt.warm_up_s, 2), "feed_late_max_s": round(self.feed_late_s, 3),
                "drop_times_s": [round(t - self.t0, 2) for t in rt.intake.drop_times], "encoder_yield_s": round(rt.yield_s, 2), "memory_trims": rt.trims, "memory_trim_s": round(rt.trim_s, 3),
                "latency_p50_s": pct(kf_lat, 50), "latency_p99_s": pct(kf_lat, 99),
                "frame_latency_p50_s": pct(frame_lat, 50), "frame_latency_p99_s": pct(frame_lat, 99),
                "rss_mib_start": self.rss_start, "rss_mib_max": max(self.rss, default=float("nan")),
                "rss_mib_end": self.rss[-1] if self.rss else float("nan"),
                "rss_mib_series": [round(r, 1) for r in self.rss[::4]], **self.rss_after_full(),
                "map_voxels": ms.num_voxels if ms else 0, "map_evictions": ms.evictions if ms else 0,
                "mean_ms": timings, "p99_ms": p99, "skipped": self.skips.as_dict(), "loadavg": os.getloadavg()}


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=30.0, help="frames offered per second (default 30)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of streaming per recording (default 60)")
    ap.add_argument("--source", choices=["slambook", "generated", "both"], default="both")
    ap.add_argument("--frames", type=int, default=300, help="frames of the generated sequence (default 300)")
    ap.add_argument("--advance", type=float, default=0.4,
                    help="metres each slambook pass (8 frames) is shifted: 0.4 m at 30 Hz is a sensor exploring new "
                         "space at 1.5 m/s (default 0.4; 1.0 = 3.75 m/s, a stress test)")
    ap.add_argument("--config", type=Path, action="append", default=None,
                    help="parameters YAML, repeatable: later files win (default config/perception.yaml then the live "
                         "CPU overlay config/perception_cpu.yaml, as the launch file on a CPU)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                    help="setting override, e.g. --set window.max_voxels=60000 (repeatable)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "streaming.json")
    args = ap.parse_args(argv)
    from concerto_ros.models.allocator import cap_heap_arenas
    from concerto_ros.runtime import GIL_SWITCH_INTERVAL_S

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as perception_node does
    cap_heap_arenas()  # as perception_node does, before the runtime's threads
    from concerto_ros.config import default_config_path, load_config, parse_overrides

    if not DATA.is_dir() and args.source != "generated":
        print(f"{DATA} not found: use --source generated")
        return 2
    cfg_path = args.config or [default_config_path(), default_config_path().with_name("perception_cpu.yaml")]
    results = {}
    for source in (["slambook", "generated"] if args.source == "both" else [args.source]):
        cfg = load_config(cfg_path, parse_overrides(args.overrides))
        frame, n = load_frames(source, args.frames, args.advance)
        speed = f", new space at {args.advance * args.rate / n:.2f} m/s" if source == "slambook" else ""
        print(f"{source}: {n} frames per pass, {args.rate:g} Hz for {args.seconds:g} s{speed} ...", flush=True)
        r = Session(cfg, frame, args.rate, args.seconds).run()
        results[source] = r
        print(f"  in {r['frames_in']}, integrated {r['frames_integrated']} "
              f"({100 * r['frames_integrated'] / max(r['frames_in'], 1):.1f} %), keyframes encoded "
              f"{r['keyframes_encoded']} ({r['keyframe_rate_hz']:.2f} Hz, {r['keyframes_replaced']} replaced), "
              f"keyframe latency p50 {r['latency_p50_s']:.2f} s p99 {r['latency_p99_s']:.2f} s, frame latency p99 "
              f"{r['frame_latency_p99_s']:.2f} s; RSS {r['rss_mib_start']:.0f} -> max {r['rss_mib_max']:.0f} -> end "
              f"{r['rss_mib_end']:.0f} MiB; map {r['map_voxels']} voxels; load {r['loadavg'][0]:.2f}", flush=True)
        if r.get("map_full_s") is not None:
            print(f"  map full (map.max_voxels) at {r['map_full_s']:.0f} s with RSS {r['rss_mib_at_full']:.0f} MiB; most "
                  f"after {r['rss_mib_max_after_full']:.0f} MiB; second-half rise {r['rss_mib_rise_second_half']} MiB; "
                  f"peak per minute {r['rss_mib_peak_per_minute']} MiB",
                  flush=True)
        print(f"  mean ms per stage: {r['mean_ms']}", flush=True)
        print(f"  p99 ms per stage: {r['p99_ms']}; frames dropped by the integration queue: "
              f"{r['frames_dropped']}, skipped {r['skipped']}; encoder waited {r['encoder_yield_s']:.1f} s for the "
              f"integration backlog; {r['memory_trims']} memory trim(s), {1000 * r['memory_trim_s']:.0f} ms", flush=True)
    results["config"] = {"files": [str(c) for c in cfg_path], "overrides": args.overrides, "advance_m": args.advance}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
