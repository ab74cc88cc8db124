"""The frame stream: sensor messages in, decoded, validated and posed frames out (no ROS).

One object, used identically by the live node (fed from subscription callbacks), offline
replay and evaluation (fed in bag order) and training, so that pairing, decoding,
validation, pose look-up and skip accounting are the same everywhere:

1. :meth:`FrameStream.add` (cheap, safe in a subscription callback): reads the header,
   rejects stamps ``<= 0`` and holds stamps far ahead of the newest until confirmed
   (:class:`~concerto_ros.sensors.validation.StampGuard`), restarts pairing when time jumps
   back, and pairs colour, depth and camera info with the approximate-time policy
   (:class:`~concerto_ros.sensors.sync.ApproximateTimeSync`, ``sync.slop``); offline, a
   label-image topic (ground truth, ``label_topic``) can be paired as a fourth stream. A
   LiDAR ``PointCloud2`` is a set of its own (a ``label`` field is its ground truth). Every header-level check is done here, so that a
   malformed set never enters the worker's queue: image encodings and layouts
   (``bad_image``), camera info and plausible intrinsics (``bad_camera_info``,
   ``bad_intrinsics``), sizes (``size_mismatch``), PointCloud2 fields and layout
   (``bad_field``, ``bad_pointcloud``).
2. :meth:`FrameStream.decode` (on a worker): decodes the pixels or points, looks up the
   sensor pose in ``fixed_frame`` and checks it (``bad_pose``, ``no_transform``), and
   returns a :class:`SensorFrame`; every problem raises
   :class:`~concerto_ros.sensors.skips.FrameSkipped` with its own reason.

Messages are duck-typed: rclpy messages and ``rosbags`` dataclasses both work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from concerto_ros.msgs.camera_info import intrinsics_from_camera_info
from concerto_ros.msgs.image import (COLOR_ENCODINGS, DEPTH_ENCODINGS, color_to_rgb, depth_from_msg, image_problem,
                                     image_to_numpy)
from concerto_ros.msgs.pointcloud2 import FieldError, cloud_layout_problem, xyz_from_pointcloud2
from concerto_ros.msgs.transforms import stamp_to_ns
from concerto_ros.recordings.frame import SensorCloud, SensorFrame
from concerto_ros.sensors.colorize import CameraHistory, colorize_points
from concerto_ros.sensors.lifting import GREY, intensity_to_grey
from concerto_ros.sensors.skips import FrameSkipped, SkipCounter
from concerto_ros.sensors.sync import ApproximateTimeSync, SyncedSet
from concerto_ros.sensors.tf_buffer import TransformUnavailable
from concerto_ros.sensors.types import CameraIntrinsics, RGBDFrame
from concerto_ros.sensors.validation import StampGuard, StampVerdict, intrinsics_problem, pose_problem
from concerto_ros.timing import StageTimer

__all__ = ["SensorCloud", "SensorFrame", "PointsSet", "RGBDFrameAssembler", "FrameStream", "Lookup"]

#: ``lookup(target_frame, source_frame, stamp_ns) -> (4, 4) float64``; raises TransformUnavailable
Lookup = Callable[[str, str, int], np.ndarray]

RGBD_STREAMS = ("color", "depth", "camera_info")
#: encodings of label images (one integer label value per pixel)
LABEL_ENCODINGS = ("mono8", "mono16", "8UC1", "16UC1", "32SC1")


@dataclass(frozen=True)
class PointsSet:
    """A LiDAR ``PointCloud2`` waiting for :meth:`FrameStream.decode` (a set of its own)."""

    stamp_ns: int
    msg: Any


class RGBDFrameAssembler:
    """Approximate-time pairing of colour, depth and camera info into :class:`RGBDFrame`.

    Args:
        cfg: pipeline config (``sync.slop`` seconds, ``sync.queue_size``, ``topics.*`` for
            naming topics in skip reasons).
        note: callable for one-time informational notes (e.g. ignored distortion).
        skips: where messages the policy drops unpaired are recorded (reason ``unpaired``:
            no partner within ``slop`` on the other topics, e.g. missing camera info).
        label_topic: a label-image topic (ground truth of recordings, for evaluation:
            ``Image`` in :data:`LABEL_ENCODINGS`, one label value per pixel, registered to
            depth) paired as a fourth stream ``labels``; empty: none (the node's case).

    Attributes:
        streams: the paired stream names, :data:`RGBD_STREAMS` plus ``labels`` when a label
            topic is set.
    """

    STREAMS = RGBD_STREAMS
    #: a stamp this much older than the newest seen (1 s) counts as a jump back in time
    TIME_JUMP_NS = 1_000_000_000
    _DROPS = ("dropped_queue_full", "dropped_stale", "dropped_out_of_order", "dropped_duplicate")

    def __init__(self, cfg, note: Callable[[str], Any] | None = None, skips: SkipCounter | None = None,
                 label_topic: str = ""):
        self.cfg = cfg
        self.streams = RGBD_STREAMS + (("labels",) if label_topic else ())
        self.sync = ApproximateTimeSync(self.streams, slop_s=cfg.sync.slop, queue_size=cfg.sync.queue_size)
        self._note = note
        self._noted: set[str] = set()
        self._skips = skips
        self._dropped = {s: 0 for s in self.streams}
        self._newest_ns: int | None = None
        self._lock = threading.Lock()
        self.topics = {"color": cfg.topics.color, "depth": cfg.topics.depth,
                       "camera_info": cfg.topics.camera_info}
        if label_topic:
            self.topics["labels"] = str(label_topic)

    def jumped_back(self, stamp_ns: int) -> bool:
        """True when ``stamp_ns`` is more than :attr:`TIME_JUMP_NS` older than the newest seen."""
        with self._lock:
            return self._newest_ns is not None and stamp_ns < self._newest_ns - self.TIME_JUMP_NS

    def add(self, stream: str, msg: Any, stamp_ns: int | None = None) -> list[SyncedSet]:
        """Queue one message of ``stream`` (color, depth or camera_info); return completed sets.

        Messages the policy had to drop unpaired are reported to ``skips``. A stamp more than
        :attr:`TIME_JUMP_NS` older than the newest seen (a looping bag, a restarted driver)
        resets the pairing queues instead of being dropped as out of order.
        """
        stamp = stamp_to_ns(msg.header.stamp) if stamp_ns is None else int(stamp_ns)
        jumped = self.jumped_back(stamp)
        with self._lock:
            self._newest_ns = stamp if jumped or self._newest_ns is None else max(self._newest_ns, stamp)
        if jumped:  # a looping bag or a restarted driver: start pairing afresh
            self.sync.reset()
            if self._note is not None:
                self._note(f"time jumped back on '{self.topics[stream]}' ({stamp * 1e-9:.3f} s): "
                           "restarting synchronisation")
        sets = self.sync.add(stream, stamp, msg)
        if self._skips is not None:
            self._report_drops()
        return sets

    def _report_drops(self) -> None:
        stats = self.sync.stream_stats
        with self._lock:
            for s in self.streams:
                n = sum(stats[s][k] for k in self._DROPS)
                new, self._dropped[s] = n - self._dropped[s], n
                for _ in range(new):
                    others = [self.topics[o] for o in self.streams if o != s]
                    self._skips.record(FrameSkipped(
                        self.topics[s], "unpaired",
                        f"no message within slop {self.cfg.sync.slop} s on {others} "
                        "(missing camera info, or stamps too far apart?)"))

    def check(self, synced: SyncedSet) -> CameraIntrinsics:
        """Header-level checks of a synced set (no pixel is touched: cheap enough for a
        callback); returns the intrinsics.

        Raises:
            FrameSkipped: unknown encoding or inconsistent image layout (``bad_image``),
                unusable camera info (``bad_camera_info``), implausible intrinsics
                (``bad_intrinsics``), or colour/depth/camera info (/label image) sizes that
                disagree (``size_mismatch``); a label image of another encoding is
                ``bad_image``.
        """
        color_msg, depth_msg, info_msg = (synced.items[s] for s in RGBD_STREAMS)
        for stream, msg, encodings in (("color", color_msg, COLOR_ENCODINGS), ("depth", depth_msg, DEPTH_ENCODINGS)):
            problem = image_problem(msg, encodings)
            if problem is not None:
                raise FrameSkipped(self.topics[stream], "bad_image", problem)
        try:
            fx, fy, cx, cy, width, height, distorted = intrinsics_from_camera_info(info_msg)
        except (ValueError, TypeError, OverflowError) as exc:
            raise FrameSkipped(self.topics["camera_info"], "bad_camera_info", str(exc)) from None
        problem = intrinsics_problem(fx, fy, cx, cy, width, height)
        if problem is not None:
            raise FrameSkipped(self.topics["camera_info"], "bad_intrinsics", problem)
        if distorted and "distortion" not in self._noted and self._note is not None:
            self._noted.add("distortion")
            self._note(f"'{self.topics['camera_info']}' has non-zero distortion coefficients; "
                       "they are ignored (expecting rectified, registered images)")
        cw, ch, dw, dh = int(color_msg.width), int(color_msg.height), int(depth_msg.width), int(depth_msg.height)
        if (dw, dh) != (cw, ch):
            raise FrameSkipped(self.topics["depth"], "size_mismatch",
                               f"depth is {dw}x{dh} but colour is {cw}x{ch} (depth must be registered to colour)")
        if (width, height) != (dw, dh):
            raise FrameSkipped(self.topics["camera_info"], "size_mismatch",
                               f"camera info is {width}x{height} but images are {dw}x{dh}")
        if "labels" in synced.items:
            self._check_labels(synced.items["labels"], dw, dh)
        return CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height)

    def _check_labels(self, msg: Any, width: int, height: int) -> None:
        problem = image_problem(msg, LABEL_ENCODINGS)
        if problem is not None:
            raise FrameSkipped(self.topics["labels"], "bad_image", problem)
        if (int(msg.width), int(msg.height)) != (width, height):
            raise FrameSkipped(self.topics["labels"], "size_mismatch",
                               f"label image is {int(msg.width)}x{int(msg.height)} but depth is {width}x{height}")

    def to_frame(self, synced: SyncedSet) -> RGBDFrame:
        """Decode a synced set into an :class:`RGBDFrame` (colour RGB uint8, raw depth).

        Raises:
            FrameSkipped: see :meth:`check`.
        """
        intr = self.check(synced)
        color_msg, depth_msg = synced.items["color"], synced.items["depth"]
        try:
            color = color_to_rgb(color_msg)
            depth, depth_scale = depth_from_msg(depth_msg)
        except ValueError as exc:  # not reached after check(); kept for safety
            raise FrameSkipped(self.topics["depth"], "bad_image", str(exc)) from None
        labels = None
        if "labels" in synced.items:
            labels = image_to_numpy(synced.items["labels"]).astype(np.int32)
        frame_id = str(depth_msg.header.frame_id or color_msg.header.frame_id)
        return RGBDFrame(stamp_ns=synced.stamp_ns, frame_id=frame_id, color=color, depth=depth,
                         depth_scale=depth_scale, intrinsics=intr, labels=labels)


class FrameStream:
    """Pairing, decoding, validation and pose look-up of sensor messages (see module docstring).

    Args:
        cfg: the pipeline config (``topics.*``, ``sync.*``, ``fixed_frame``,
            ``validation.*``).
        lookup: pose source ``lookup(target, source, stamp_ns)`` (the node's TF, or a
            :class:`~concerto_ros.sensors.tf_buffer.TransformBuffer` ``.lookup`` offline).
        skips: where skipped messages are counted (a new counter when ``None``).
        note: callable for one-line informational notes (time jumps, distortion).
        timer: where the ``sync`` (intake) and ``convert`` (decode + pose) stages are timed.
        label_topic: optional label-image topic, paired with the RGB-D set as stream
            ``labels`` (see :class:`RGBDFrameAssembler`); its values end up in
            ``SensorFrame.labels`` (per pixel) and ``rgbd.labels``, unmapped.

    Thread-safe: :meth:`add` may be called from several callback threads while a worker
    calls :meth:`decode`.
    """

    def __init__(self, cfg, lookup: Lookup | None = None, skips: SkipCounter | None = None,
                 note: Callable[[str], Any] | None = None, timer: StageTimer | None = None,
                 label_topic: str = ""):
        self.cfg = cfg
        self.timer = timer if timer is not None else StageTimer()
        self.lookup = lookup
        self.skips = skips if skips is not None else SkipCounter()
        self._note = note
        self.assembler = RGBDFrameAssembler(cfg, note=note, skips=self.skips, label_topic=label_topic)
        v = cfg.validation
        self.guard = StampGuard(max_jump_s=v.max_stamp_jump, confirm=v.jump_confirm)
        t = cfg.topics
        #: RGB-D frames are made only with a depth topic; colour and camera info alone serve
        #: to colour LiDAR points (:mod:`concerto_ros.sensors.colorize`)
        self.rgbd = bool(t.depth and t.color and t.camera_info)
        self.camera = (CameraHistory() if t.points and t.color and t.camera_info and cfg.lift.colorize_points
                       else None)
        self.points_colored = 0
        self._lock = threading.Lock()
        #: topic name of every stream
        self.topics = dict(self.assembler.topics, points=cfg.topics.points or "points")

    @property
    def stream_of(self) -> dict[str, str]:
        """``{topic: stream}`` for the configured topics (points only when set)."""
        out = {t: s for s, t in self.topics.items() if s != "points"}
        if self.cfg.topics.points:
            out[self.cfg.topics.points] = "points"
        return out

    # -- intake (cheap) ------------------------------------------------------------------------
    def add(self, stream: str, msg: Any) -> list:
        """Take one message of ``stream`` (``color``, ``depth``, ``camera_info``, ``points``, or
        ``labels`` when a label topic is set).

        Returns:
            The sets it completed (usually 0 or 1): ``SyncedSet`` for RGB-D,
            :class:`PointsSet` for points; hand each to :meth:`decode`. Bad headers and
            stamps are counted (``bad_header``, ``bad_stamp``) and give ``[]``.

        Raises:
            KeyError: unknown ``stream``.
        """
        if stream not in self.topics:
            raise KeyError(f"FrameStream: unknown stream {stream!r}; expected one of {list(self.topics)}")
        with self.timer.stage("sync"):
            return self._add(stream, msg)

    def _add(self, stream: str, msg: Any) -> list:
        topic = self.topics[stream]
        try:
            stamp = stamp_to_ns(msg.header.stamp)
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:
            self.skips.record(FrameSkipped(topic, "bad_header", f"cannot read header.stamp: {exc}"))
            return []
        with self._lock:
            if stamp > 0 and self.assembler.jumped_back(stamp):
                self.guard.reset()  # a loop or a restarted driver: the assembler restarts pairing
            verdict, released = self.guard.check(stamp, (stream, msg), key=stream)
            refuted = self.guard.take_refuted()
            for s_ns, (s, m) in refuted:
                self.skips.record(FrameSkipped(self.topics[s], "bad_stamp",
                                               f"stamp {s_ns * 1e-9:.3f} s is more than validation.max_stamp_jump = "
                                               f"{self.guard.max_jump_s:g} s ahead of the stream, and later messages "
                                               "did not confirm the jump"))
            if verdict == StampVerdict.INVALID:
                self.skips.record(FrameSkipped(topic, "bad_stamp", f"stamp {stamp * 1e-9:.9f} s is not positive"))
                return []
            if verdict == StampVerdict.HELD:
                return []
            if verdict == StampVerdict.JUMP and self._note is not None:
                self._note(f"time jumped forward to {stamp * 1e-9:.3f} s on '{topic}', confirmed by "
                           f"{len(released)} messages")
            items = released if verdict == StampVerdict.JUMP else [(stamp, (stream, msg))]
            out = []
            for s_ns, (s, m) in items:
                if self.camera is not None:
                    self.camera.add(s, s_ns, m)
                if s == "points":
                    out += self._admit_points(s_ns, m)
                elif self.rgbd:
                    out += self._admit_sets(self.assembler.add(s, m, stamp_ns=s_ns))
            return out

    def _admit_points(self, stamp_ns: int, msg: Any) -> list:
        """A cloud with a bad field or layout never enters the queue (where it could push out a
        good frame): it is counted here."""
        problem = cloud_layout_problem(msg)
        if problem is not None:
            kind, detail = problem
            self.skips.record(FrameSkipped(self.topics["points"], "bad_field" if kind == "field" else "bad_pointcloud",
                                           detail))
            return []
        return [PointsSet(stamp_ns, msg)]

    def _admit_sets(self, sets: list[SyncedSet]) -> list[SyncedSet]:
        """Synced sets that pass the header-level checks (:meth:`RGBDFrameAssembler.check`)."""
        out = []
        for synced in sets:
            try:
                self.assembler.check(synced)
            except FrameSkipped as skip:
                self.skips.record(skip)
                continue
            out.append(synced)
        return out

    def flush(self) -> list:
        """Sets still formable at the end of a recording (see ``ApproximateTimeSync.flush``)."""
        with self._lock:
            return self.assembler.sync.flush()

    # -- decoding (worker) ---------------------------------------------------------------------
    def decode(self, pending) -> SensorFrame:
        """Decode, validate and pose one set returned by :meth:`add`.

        Raises:
            FrameSkipped: see the reasons in :mod:`concerto_ros.sensors.skips`.
        """
        with self.timer.stage("convert"):
            return self._decode(pending)

    def _decode(self, pending) -> SensorFrame:
        if isinstance(pending, PointsSet):
            topic = self.topics["points"]
            frame_id = str(pending.msg.header.frame_id)
            cloud, labels = self._decode_cloud(pending.msg, topic, frame_id)
            T = self.pose(frame_id, pending.stamp_ns, topic)
            if self.camera is not None:
                self._colorize(cloud, pending.stamp_ns)
            return SensorFrame(pending.stamp_ns, str(pending.stamp_ns), T, cloud=cloud, labels=labels)
        frame = self.assembler.to_frame(pending)
        T = self.pose(frame.frame_id, frame.stamp_ns, self.topics["depth"])
        return SensorFrame(frame.stamp_ns, str(frame.stamp_ns), T, rgbd=frame, image=frame.color, labels=frame.labels)

    def _decode_cloud(self, msg: Any, topic: str, frame_id: str) -> tuple[SensorCloud, np.ndarray | None]:
        try:
            xyz, extra = xyz_from_pointcloud2(msg)
        except FieldError as exc:
            raise FrameSkipped(topic, "bad_field", str(exc)) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise FrameSkipped(topic, "bad_pointcloud", str(exc)) from None
        labels = extra.get("label")
        intensity = extra.get("intensity")
        cloud = SensorCloud(xyz=xyz, colors=extra.get("rgb"), frame_id=frame_id,
                            intensity=None if intensity is None else intensity.astype(np.float32, copy=False))
        return cloud, None if labels is None else labels.astype(np.int32, copy=False)

    def _colorize(self, cloud: SensorCloud, stamp_ns: int) -> None:
        """Colour the points the camera sees (nearest colour image and camera info within
        ``lift.colorize_max_dt``, camera pose from TF); nothing happens without them."""
        max_dt = int(self.cfg.lift.colorize_max_dt * 1e9)
        image = self.camera.nearest("color", stamp_ns, max_dt)
        info = self.camera.nearest("camera_info", stamp_ns, max_dt)
        if image is None or info is None or self.lookup is None or len(cloud.xyz) == 0:
            return
        try:
            fx, fy, cx, cy, width, height, _ = intrinsics_from_camera_info(info[1])
            if intrinsics_problem(fx, fy, cx, cy, width, height) is not None:
                return
            rgb = color_to_rgb(image[1])
            T = self.lookup(cloud.frame_id, str(image[1].header.frame_id), int(stamp_ns))
        except (ValueError, TypeError, TransformUnavailable):
            return  # no colour this time: the points keep their intensity grey
        if rgb.shape[:2] != (height, width) or pose_problem(T, self.cfg.validation.max_translation) is not None:
            return
        base = cloud.colors
        if base is None:
            grey = intensity_to_grey(cloud.intensity) if cloud.intensity is not None else np.full(len(cloud), GREY)
            base = np.repeat(grey.astype(np.uint8)[:, None], 3, axis=1)
        intr = CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height)
        cloud.colors, n = colorize_points(cloud.xyz, base, rgb, intr, np.asarray(T, dtype=np.float64))
        self.points_colored += n

    def pose(self, frame_id: str, stamp_ns: int, topic: str) -> np.ndarray:
        """``T_fixed_sensor`` at ``stamp_ns``, validated (identity when ``fixed_frame`` is empty).

        Raises:
            FrameSkipped: ``no_transform`` (no lookup, unknown frame, no sample for the
                stamp) or ``bad_pose`` (see :func:`~concerto_ros.sensors.validation.pose_problem`).
        """
        fixed = self.cfg.fixed_frame
        if not fixed:  # no fixed frame: the sensor's own frame, identity pose
            return np.eye(4)
        if self.lookup is None:
            raise FrameSkipped("/tf", "no_transform", f"no pose source for {fixed} <- '{frame_id}'")
        if not frame_id:
            raise FrameSkipped(topic, "no_transform", "the message has an empty header.frame_id")
        try:
            T = self.lookup(fixed, frame_id, int(stamp_ns))
        except TransformUnavailable as exc:
            raise FrameSkipped("/tf", "no_transform",
                               f"{fixed} <- '{frame_id}' at {stamp_ns * 1e-9:.3f} s: {exc}") from None
        problem = pose_problem(T, self.cfg.validation.max_translation)
        if problem is not None:
            raise FrameSkipped("/tf", "bad_pose", f"{fixed} <- '{frame_id}' at {stamp_ns * 1e-9:.3f} s: {problem}")
        return np.asarray(T, dtype=np.float64)

    def frames(self, messages: Iterable[tuple[str, Any]], flush: bool = True) -> Iterator[SensorFrame]:
        """Offline driver: ``(stream, msg)`` pairs in arrival order in, good frames out; skips
        are recorded in :attr:`skips` (not raised). Flushes the pairing at the end."""
        for stream, msg in messages:
            for pending in self.add(stream, msg):
                frame = self._try_decode(pending)
                if frame is not None:
                    yield frame
        if flush:
            for pending in self.flush():
                frame = self._try_decode(pending)
                if frame is not None:
                    yield frame

    def _try_decode(self, pending) -> SensorFrame | None:
        try:
            return self.decode(pending)
        except FrameSkipped as skip:
            self.skips.record(skip)
            return None
