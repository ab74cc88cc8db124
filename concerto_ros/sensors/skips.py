"""Skip accounting: why a message or frame was not used, counted, throttled and rolling.

Every shell (node, replay, evaluation, training) reports bad input the same way: a
:class:`FrameSkipped` names the topic, a short reason and a human-readable detail; a
:class:`SkipCounter` counts it per ``(topic, reason)``, logs at most one warning per key and
period, and keeps the recent events so that ``/diagnostics`` can report the level of the
last N seconds instead of a cumulative count.

Reasons in use (the ``reason`` strings users see in logs and diagnostics):

=================== ===================================================================
``bad_header``       a message whose header cannot be read
``bad_stamp``        stamp <= 0, or far ahead of the newest stamp (an unconfirmed jump)
``bad_image``        unknown encoding, or data/step/size inconsistent
``bad_camera_info``  CameraInfo K unreadable or non-positive focal lengths
``bad_intrinsics``   focal length or principal point implausible for the image size
``size_mismatch``    colour, depth and camera info sizes disagree
``bad_field``        PointCloud2 field with a wrong datatype or count (rgb, x, intensity...)
``bad_pointcloud``   PointCloud2 layout inconsistent (row_step, data size, offsets)
``bad_pose``         pose not a finite rigid transform, or translation beyond the limit
``bad_transform``    a /tf or /tf_static entry rejected (zero quaternion, empty or equal
                     frame names, a loop in the tree, non-finite values)
``no_transform``     no pose for the frame's stamp
``no_valid_depth``   no depth pixel in range
``no_valid_points``  no point in range
``unpaired``         no partner within the sync slop
``internal_error``   an unexpected exception inside the pipeline (a bug: please report)
=================== ===================================================================
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any, Callable

__all__ = ["FrameSkipped", "SkipCounter", "INTERNAL_ERROR"]

#: the reason of unexpected exceptions (diagnostics turn ERROR on it)
INTERNAL_ERROR = "internal_error"


class FrameSkipped(Exception):
    """A message or synced frame that cannot be used; the caller logs and counts it.

    Attributes:
        topic: the topic (or stream name) at fault.
        reason: short machine-friendly reason (see the module docstring).
        detail: human-readable explanation.
    """

    def __init__(self, topic: str, reason: str, detail: str):
        super().__init__(f"{topic}: {reason}: {detail}")
        self.topic = topic
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts skipped messages per ``(topic, reason)``, throttles their warnings and keeps
    the events of the last ``history_s`` seconds for rolling diagnostics (thread-safe).

    Args:
        warn: callable taking a message string (e.g. a ROS logger's ``warning``).
        period_s: at most one warning per ``(topic, reason)`` per period (seconds).
        history_s: how long individual events are kept for :meth:`recent` (seconds).
        error: callable used instead of ``warn`` for ``internal_error`` (e.g. the
            logger's ``error``); ``warn`` when ``None``.
    """

    def __init__(self, warn: Callable[[str], Any] | None = None, period_s: float = 5.0,
                 history_s: float = 60.0, error: Callable[[str], Any] | None = None):
        self._warn = warn
        self._error = error or warn
        self.period_s = float(period_s)
        self.history_s = float(history_s)
        self._last: dict[tuple[str, str], float] = {}
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self._events: deque[tuple[float, str, str]] = deque()
        self._lock = threading.Lock()

    def record(self, skip: FrameSkipped) -> None:
        """Count ``skip`` and warn if this ``(topic, reason)`` was not warned recently."""
        key = (skip.topic, skip.reason)
        now = time.monotonic()
        with self._lock:
            self.counts[key] += 1
            n = self.counts[key]
            self._events.append((now, skip.topic, skip.reason))
            self._prune(now)
            due = now - self._last.get(key, -float("inf")) >= self.period_s
            if due:
                self._last[key] = now
        if not due:
            return
        text = f"skipped message on '{skip.topic}' ({skip.reason}): {skip.detail} [{n} so far]"
        # one call site per severity: rclpy's logger refuses a call site whose severity changes
        # ("Logger severity cannot be changed between calls"), which a shared call raised on the
        # first internal error after a warning (seen in a soak)
        if skip.reason == INTERNAL_ERROR:
            if self._error is not None:
                self._error(text)
        elif self._warn is not None:
            self._warn(text)

    def _prune(self, now: float) -> None:
        horizon = now - self.history_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()

    @property
    def total(self) -> int:
        """Skips counted since start."""
        with self._lock:
            return int(sum(self.counts.values()))

    def count(self, reason: str) -> int:
        """Skips with ``reason`` since start, over all topics."""
        with self._lock:
            return int(sum(c for (_, r), c in self.counts.items() if r == reason))

    def as_dict(self) -> dict[str, int]:
        """``{"topic:reason": count}`` since start, for summaries and diagnostics."""
        with self._lock:
            return {f"{t}:{r}": c for (t, r), c in sorted(self.counts.items())}

    def recent(self, window_s: float) -> Counter:
        """``Counter({(topic, reason): count})`` of the skips of the last ``window_s`` seconds
        (at most ``history_s``)."""
        now = time.monotonic()
        horizon = now - float(window_s)
        with self._lock:
            self._prune(now)
            return Counter((t, r) for ts, t, r in self._events if ts >= horizon)
