"""Live replay: play a rosbag2 into a running perception node over DDS and collect its output.

The bag's messages are published as they are stored (CDR bytes, no re-encoding) on their
own topics with their own header stamps, so the node sees exactly what a camera driver and
TF broadcaster would send. ``/tf_static`` is latched (transient local); ``/tf`` messages are
sent slightly ahead of the images that need them (``tf_lookahead``). The node integrates every
frame into its map and encodes (and publishes a cloud for) keyframes only; the player
predicts the keyframes with the node's own frame stream and keyframe policy. In ``lockstep``
mode it waits, after each keyframe, until the node has published its cloud (or
``frame_timeout`` passed), so a slow CPU never drops frames; otherwise it plays at the
bag's rate times ``rate``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from concerto_ros.recordings.bags import bag_summary, iter_messages, iter_raw
from concerto_ros.config import PerceptionConfig
from concerto_ros.msgs.transforms import stamp_to_ns
from concerto_ros.ros.dds import use_large_data_profile
from concerto_ros.ros.delivery import DELIVERY_STATUS
from concerto_ros.bag.replay import TF_TOPICS


def message_class(msgtype: str):
    """The rclpy message class for ``pkg/msg/Type``.

    Raises:
        ImportError: the package's Python bindings are not installed (e.g. ``tf2_msgs``
            before ``scripts/setup.sh`` built it).
    """
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


@dataclass
class LiveReport:
    """What a live replay sent and received.

    Attributes:
        frames_sent: complete colour/depth/info sets published.
        keyframes_expected: of those, the keyframes the node encodes (and publishes a cloud
            for), predicted with the node's own frame stream and keyframe policy.
        clouds: ``~/semantic_points`` messages received (rclpy ``PointCloud2``), in order.
        feature_clouds: ``~/feature_points`` messages received.
        timeouts: sets for which no cloud arrived within ``frame_timeout`` (lockstep).
        wall_s: duration of the replay (seconds).
        diagnostics: the last ``/diagnostics`` key/values of the node.
    """

    frames_sent: int = 0
    keyframes_expected: int = 0
    clouds: list = field(default_factory=list)
    feature_clouds: list = field(default_factory=list)
    timeouts: int = 0
    wall_s: float = 0.0
    diagnostics: dict[str, str] = field(default_factory=dict)


class NodeProcess:
    """``perception_node`` started as a child process (for the demo, tests and ``--start-node``).

    Args:
        params_file: parameters YAML, or several (one ``--params-file`` each: later files
            win, e.g. ``config/perception.yaml`` then ``config/perception_cpu.yaml``).
        overrides: ``{dotted name: value}`` passed as ``-p name:=value``.
        namespace: node namespace ("" for none).
        log_path: file receiving the node's stdout/stderr.
        lifecycle: start ``perception_lifecycle_node`` (unconfigured) instead.
    """

    def __init__(self, params_file: str | Path | Sequence[str | Path], overrides: dict[str, Any] | None = None,
                 namespace: str = "", log_path: str | Path | None = None, lifecycle: bool = False):
        module = "concerto_ros.ros.lifecycle" if lifecycle else "concerto_ros.ros.node"
        files = [params_file] if isinstance(params_file, (str, Path)) else list(params_file)
        cmd = [sys.executable, "-m", module, "--ros-args"]
        for f in files:
            cmd += ["--params-file", str(f)]
        for k, v in (overrides or {}).items():
            if isinstance(v, (list, tuple)):
                v = "[" + ",".join(f"'{x}'" for x in v) + "]"
            elif isinstance(v, bool):
                v = str(v).lower()
            elif isinstance(v, str) and not v.strip():
                v = "''"  # an empty string must be quoted for the ROS argument parser
            cmd += ["-p", f"{k}:={v}"]
        if namespace:
            cmd += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
        self.log_path = Path(log_path) if log_path else None
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=os.environ.copy())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self.alive():
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode

    def tail(self, n: int = 30) -> str:
        """Last ``n`` lines of the node's log (for error messages)."""
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def replay_live(bag: str | Path, cfg: PerceptionConfig, node_name: str = "/perception_node",
                rate: float = 1.0, lockstep: bool = True, frame_timeout: float = 60.0,
                startup_timeout: float = 120.0, tf_lookahead: float = 0.5,
                max_frames: int | None = None, node_process: NodeProcess | None = None,
                log: Callable[[str], Any] = print, progress: bool = True) -> LiveReport:
    """Publish ``bag`` into a running node and collect its clouds (needs rclpy).

    Args:
        bag: rosbag2 directory or ``.mcap``/``.db3`` file.
        cfg: the node's config (topic names and the sync policy, used to find complete sets).
        node_name: fully qualified name of the node (``/<namespace>/perception_node``).
        rate: playback speed factor when not in lockstep (1.0 = recorded speed).
        lockstep: wait for the node's cloud after each complete set.
        frame_timeout: seconds to wait per set in lockstep before moving on.
        startup_timeout: seconds to wait for the node's subscriptions to appear.
        tf_lookahead: publish ``/tf`` messages up to this many seconds ahead of the images.
        max_frames: stop after this many complete sets.
        node_process: a :class:`NodeProcess` to watch (fail fast if it dies).

    Raises:
        RuntimeError: the node did not appear within ``startup_timeout`` or died.
        ImportError: a message type of the bag has no Python bindings here.
    """
    import rclpy

    t_start = time.perf_counter()
    summary = bag_summary(bag)
    image_topics = [cfg.topics.color, cfg.topics.depth, cfg.topics.camera_info]
    missing = [t for t in image_topics if t not in summary]
    if missing:
        raise ValueError(f"bag {bag} lacks topics {missing}; it has {sorted(summary)}")
    tf_topics = [t for t in TF_TOPICS if t in summary]

    own_context = not rclpy.ok()
    if own_context:
        # this process publishes the images: its shared-memory segment must hold them
        log(use_large_data_profile()[1])
        rclpy.init()
    node = rclpy.create_node("concerto_bag_player")
    report = LiveReport()
    stop = threading.Event()
    try:
        player = _Player(node, summary, image_topics + tf_topics, node_name, report, stop)
        player.wait_for_node(image_topics, startup_timeout, node_process, log)
        player.queue_tf(bag, tf_topics)
        playback = _Playback(rate, lockstep, frame_timeout, int(tf_lookahead * 1e9), max_frames, node_process,
                             log, progress)
        _play_images(player, bag, cfg, image_topics, summary[cfg.topics.color][1], playback)
    finally:
        stop.set()
        node.destroy_node()
        if own_context and rclpy.ok():
            rclpy.shutdown()
    report.wall_s = time.perf_counter() - t_start
    return report


class _Player:
    """The player's ROS side: a publisher per played topic (``/tf_static`` latched), the
    subscriptions that collect the node's clouds and ``/diagnostics`` into ``report``, and an
    executor spinning on a daemon thread until ``stop`` is set."""

    def __init__(self, node, summary: dict, topics: list[str], node_name: str, report: LiveReport,
                 stop: threading.Event):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2

        self.node, self.node_name, self.report = node, node_name, report
        self.received = threading.Condition()
        self.tf_queue: list[tuple[int, str, bytes]] = []
        self.tf_next = 0
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pubs = {t: node.create_publisher(message_class(summary[t][0]), t, latched if t == "/tf_static" else reliable)
                     for t in topics}
        out_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(PointCloud2, f"{node_name}/semantic_points", lambda m: self._on_cloud(m, report.clouds), out_qos)
        node.create_subscription(PointCloud2, f"{node_name}/feature_points", lambda m: self._on_cloud(m, report.feature_clouds), out_qos)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=lambda: _spin(executor, stop), daemon=True)
        spinner.start()

    def _on_cloud(self, msg, store: list) -> None:
        with self.received:
            store.append(msg)
            self.received.notify_all()

    def _on_diag(self, msg) -> None:
        for st in msg.status:  # the pipeline status (the node's "input delivery" status repeats its delay keys)
            if st.name.startswith(self.node_name.split("/")[-1]) and not st.name.endswith(": " + DELIVERY_STATUS):
                self.report.diagnostics = {kv.key: kv.value for kv in st.values}

    def wait_for_node(self, image_topics: list[str], startup_timeout: float, node_process: NodeProcess | None,
                      log: Callable[[str], Any]) -> None:
        """Wait for the node's subscriptions on every input topic and a match on its output.

        Raises:
            RuntimeError: ``node_process`` exited, or no subscriber after ``startup_timeout`` s.
        """
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if node_process is not None and not node_process.alive():
                raise RuntimeError(f"perception_node exited during start-up:\n{node_process.tail()}")
            if all(self.pubs[t].get_subscription_count() > 0 for t in image_topics):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"no subscriber on {image_topics} after {startup_timeout:.0f} s: is "
                               f"{self.node_name} running with the same topic names and ROS_DOMAIN_ID?")
        # /tf too when the bag has it (up to 5 s more; a node without a fixed frame may not read
        # it): the node reads it on a listener node of its own, matched apart from the sensor
        # subscriptions, best effort, so a pose sent before that match would be lost
        tf_deadline = time.monotonic() + 5.0
        while "/tf" in self.pubs and self.pubs["/tf"].get_subscription_count() == 0 and time.monotonic() < tf_deadline:
            time.sleep(0.1)
        for line in qos_report(self.node, image_topics):
            log(line)
        time.sleep(0.5)  # let the reverse (output) match settle

    def queue_tf(self, bag, tf_topics: list[str]) -> None:
        """Publish the bag's ``/tf_static`` now and queue its ``/tf`` messages by their newest
        transform stamp (int ns)."""
        if tf_topics:
            for raw, dec in zip(iter_raw(bag, tf_topics), iter_messages(bag, tf_topics)):
                stamps = [stamp_to_ns(t.header.stamp) for t in dec.msg.transforms] or [dec.stamp_ns]
                if raw.topic == "/tf_static":
                    self.pubs[raw.topic].publish(raw.data)
                else:
                    self.tf_queue.append((max(stamps), raw.topic, raw.data))
        self.tf_queue.sort(key=lambda x: x[0])
        self.tf_next = 0

    def publish_tf(self, until_ns: int | None = None) -> None:
        """Publish the queued ``/tf`` messages stamped up to ``until_ns`` (None: all left)."""
        q = self.tf_queue
        while self.tf_next < len(q) and (until_ns is None or q[self.tf_next][0] <= until_ns):
            self.pubs[q[self.tf_next][1]].publish(q[self.tf_next][2])
            self.tf_next += 1

    def clouds_received(self) -> int:
        with self.received:
            return len(self.report.clouds)

    def wait_for_cloud(self, n_before: int, timeout: float) -> bool:
        """Whether a cloud beyond the first ``n_before`` arrived within ``timeout`` seconds."""
        with self.received:
            return self.received.wait_for(lambda: len(self.report.clouds) > n_before, timeout=timeout)


@dataclass
class _Playback:
    """Playback options of :func:`replay_live` (``tf_lookahead_ns`` in int nanoseconds)."""

    rate: float
    lockstep: bool
    frame_timeout: float
    tf_lookahead_ns: int
    max_frames: int | None
    node_process: NodeProcess | None
    log: Callable[[str], Any]
    progress: bool


def _play_images(player: _Player, bag, cfg: PerceptionConfig, image_topics: list[str], num_frames,
                 opt: _Playback) -> None:
    """Publish the bag's image and camera-info messages (with ``/tf`` ahead of them), in
    lockstep with the node's clouds or at the recorded rate; then the rest of ``/tf``, and wait
    for the last clouds and one diagnostics period. ``num_frames``: total of the progress bar."""
    report, node_process = player.report, opt.node_process
    stream_of = {cfg.topics.color: "color", cfg.topics.depth: "depth", cfg.topics.camera_info: "camera_info"}
    predictor = KeyframePredictor(bag, cfg)
    bar = None
    if opt.progress:
        from tqdm import tqdm
        bar = tqdm(total=num_frames, desc="live replay", unit="frame")
    wall0 = time.monotonic()
    first_log_ns = None
    for raw, dec in zip(iter_raw(bag, image_topics), iter_messages(bag, image_topics)):
        if node_process is not None and not node_process.alive():
            raise RuntimeError(f"perception_node died during replay:\n{node_process.tail()}")
        player.publish_tf(stamp_to_ns(dec.msg.header.stamp) + opt.tf_lookahead_ns)
        if not opt.lockstep:
            first_log_ns = raw.stamp_ns if first_log_ns is None else first_log_ns
            due = wall0 + (raw.stamp_ns - first_log_ns) * 1e-9 / max(opt.rate, 1e-6)
            time.sleep(max(0.0, due - time.monotonic()))
        n_before = player.clouds_received()
        player.pubs[raw.topic].publish(raw.data)
        for keyframe in predictor.add(stream_of[raw.topic], dec.msg):
            report.frames_sent += 1
            report.keyframes_expected += int(keyframe)
            if bar is not None:
                bar.update(1)
            if opt.lockstep and keyframe:
                if not player.wait_for_cloud(n_before, opt.frame_timeout):
                    report.timeouts += 1
                    opt.log(f"no cloud from {player.node_name} within {opt.frame_timeout:.0f} s of keyframe "
                            f"{report.frames_sent} (skipped by the node? see its log and /diagnostics)")
            elif opt.lockstep:
                time.sleep(NON_KEYFRAME_PAUSE_S)  # the node integrates it (tens of ms); no cloud comes
        if opt.max_frames is not None and report.frames_sent >= opt.max_frames:
            break
    player.publish_tf()
    if bar is not None:
        bar.close()
    if not opt.lockstep:  # give the worker time to finish the last keyframe
        deadline = time.monotonic() + opt.frame_timeout
        while time.monotonic() < deadline and len(report.clouds) < report.keyframes_expected:
            time.sleep(0.05)
    time.sleep(1.2)  # one diagnostics period


#: lockstep pause after a frame that is not a keyframe (the node only integrates it)
NON_KEYFRAME_PAUSE_S = 0.05


class KeyframePredictor:
    """Which of the sets a player publishes the node will encode (and answer with a cloud):
    the node's frame stream (pairing, checks, poses from the bag's TF) and keyframe policy,
    run on the same messages."""

    def __init__(self, bag, cfg: PerceptionConfig):
        from concerto_ros.mapping import KeyframePolicy
        from concerto_ros.recordings import open_recording
        from concerto_ros.sensors.stream import FrameStream

        tf = open_recording({"type": "bag", "path": str(bag)}).transforms()
        self.stream = FrameStream(cfg, lookup=tf.lookup)
        self.policy = KeyframePolicy.from_config(cfg.keyframe)

    def add(self, stream: str, msg) -> list[bool]:
        """One bool per set this message completes: True when the node will encode it."""
        from concerto_ros.sensors.skips import FrameSkipped

        out = []
        for pending in self.stream.add(stream, msg):
            try:
                frame = self.stream.decode(pending)
            except FrameSkipped:
                out.append(False)
                continue
            out.append(self.policy.update(frame.T_world_sensor, frame.stamp_ns).is_keyframe)
        return out


def qos_report(node, topics: list[str]) -> list[str]:
    """Lines for the start of a live replay: the subscribers' reliability on each topic, and a
    warning when one is best effort (large images lose DDS fragments on a busy machine, so a
    lockstep replay would wait for clouds that never come)."""
    from rclpy.qos import ReliabilityPolicy

    lines = []
    for topic in topics:
        subs = node.get_subscriptions_info_by_topic(topic)
        kinds = sorted({"reliable" if s.qos_profile.reliability == ReliabilityPolicy.RELIABLE else "best effort"
                        for s in subs})
        lines.append(f"{topic}: {len(subs)} subscriber(s), {' and '.join(kinds) or 'none'}")
        if "best effort" in kinds:
            lines.append(f"warning: a subscriber of {topic} is best effort: on a busy machine large images lose DDS "
                         "fragments and never arrive; start the node with qos.input: reliable (the default), or use "
                         "--start-node")
    return lines


def _spin(executor, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.05)
        except Exception:  # context shut down while spinning
            break


def cloud_arrays(msg) -> dict[str, np.ndarray]:
    """``coord (N,3) float32``, ``color (N,3) uint8`` and, when present, ``label (N,) int32``,
    ``confidence (N,) float32`` of a published cloud."""
    from concerto_ros.msgs.pointcloud2 import pointcloud2_to_array, unpack_rgb

    arr = pointcloud2_to_array(msg)
    out = {"coord": np.stack([arr["x"], arr["y"], arr["z"]], axis=1).astype(np.float32)}
    names = arr.dtype.names
    if "rgb" in names:
        out["color"] = unpack_rgb(arr["rgb"])
    if "label" in names:
        out["label"] = arr["label"].astype(np.int32)
    if "confidence" in names:
        out["confidence"] = arr["confidence"].astype(np.float32)
    return out


def label_names(cfg: PerceptionConfig) -> list[str]:
    """Names of the labels a node started with ``cfg`` publishes (its bundle's or head file's
    classes, or its open vocabulary: :func:`concerto_ros.pipeline.models_in_use`); the
    configured ``head.class_names`` when the models cannot be read here (a node elsewhere)."""
    from concerto_ros.recordings.labels import resolve_class_names
    from concerto_ros.pipeline import models_in_use

    try:
        return models_in_use(cfg).label_names
    except (OSError, ValueError):
        return resolve_class_names(cfg.head.class_names) or []


def run_live(bag: str | Path, cfg: PerceptionConfig, cfg_path: str | Path, overrides: dict[str, Any],
             output: str | Path, node_name: str = "/perception_node", start_node: bool = False,
             lockstep: bool = True, rate: float = 1.0, frame_timeout: float = 60.0,
             max_frames: int | None = None, progress: bool = True, title: str = "",
             gt_labels_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> int:
    """Live replay + result files (the ``--live`` mode of ``concerto replay`` and the demo).

    Starts ``perception_node`` as a child process when ``start_node`` (its log goes to
    ``<output>/perception_node.log``), replays, and writes the last received cloud with
    :func:`concerto_ros.bag.outputs.write_results`. Returns a process exit code: 0 when at
    least one cloud arrived.
    """
    from concerto_ros.bag.outputs import write_results

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    proc = None
    if start_node:
        # reliable input: with a publisher on Fast DDS's default 512 KiB segments a best-effort
        # subscriber loses large images on a busy machine (see concerto_ros.ros.dds)
        overrides = {**overrides, "qos.input": "reliable"}
        proc = NodeProcess(cfg_path, overrides, log_path=output / "perception_node.log")
    try:
        report = replay_live(bag, cfg, node_name=node_name, rate=rate, lockstep=lockstep,
                             frame_timeout=frame_timeout, max_frames=max_frames, node_process=proc,
                             progress=progress)
    finally:
        if proc is not None:
            proc.stop()
    if report.timeouts:
        print(f"{report.timeouts} of {report.frames_sent} frames produced no cloud. If the node subscribes with "
              "sensor-data (best-effort) QoS, large images can lose DDS fragments on a busy machine "
              "(qos.input: reliable is the default); see the node's /diagnostics for skipped messages.")
    if not report.clouds:
        print(f"the node published no cloud for {report.frames_sent} frames sent; diagnostics: {report.diagnostics}")
        if proc is not None:
            print(proc.tail())
        return 1
    last = cloud_arrays(report.clouds[-1])
    fcol = None
    if report.feature_clouds:
        f = cloud_arrays(report.feature_clouds[-1])
        if len(f["coord"]) == len(last["coord"]):
            fcol = f["color"]
    gt = gt_labels_fn(last["coord"]) if gt_labels_fn is not None else None
    summary = {"title": title or f"{Path(bag).name}: last window published by {node_name}",
               "bag": str(bag), "mode": "live", "frames_sent": report.frames_sent,
               "clouds_received": len(report.clouds), "timeouts": report.timeouts,
               "wall_s": report.wall_s, "node_diagnostics": report.diagnostics, "config": str(cfg_path)}
    paths = write_results(output, last["coord"], last["color"], last["label"], last["confidence"],
                          label_names(cfg), summary, feature_colors=fcol, gt_labels=gt)
    print(f"sent {report.frames_sent} frames, received {len(report.clouds)} clouds "
          f"({len(last['coord'])} points in the last) in {report.wall_s:.1f} s")
    for k, v in paths.items():
        print(f"  {k}: {v}")
    return 0
