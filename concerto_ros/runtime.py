"""Live scheduling, shared by the node and the streaming benchmark (no ROS imports).

Two worker threads, so that the encoder never holds up the sensor stream:

* **intake** (:meth:`StreamingRuntime.offer`, called from subscription callbacks): a synced set
  from the :class:`~concerto_ros.sensors.stream.FrameStream` goes into a bounded queue that
  keeps the newest sets (``worker.queue_depth``); the callback returns at once.
* **integration thread**: decodes and validates each set, looks up its pose, lifts it, pushes it
  into the window and integrates it into the map (:meth:`PerceptionPipeline.integrate`, tens of
  milliseconds): *every* frame reaches the map. A keyframe is handed to the encoder through
  a slot of depth one: when the encoder is still busy, a newer keyframe replaces the waiting
  one ("the newest keyframe wins"), counted in :attr:`StreamingRuntime.keyframes_replaced`.
  While the encoder is idle the window is voxelized on this thread at once; while it is busy
  the keyframe is deferred (``window=None``), so the keyframes that are replaced before the
  encoder is free cost nothing (at 30 Hz most frames are keyframes by motion and the encoder
  takes one in ten or fifteen).
* **encoder thread**: voxelizes a deferred keyframe's window as it is when taken
  (:meth:`PerceptionPipeline.build_keyframe`), runs the encoders, the heads and the map
  fusion on it (:meth:`PerceptionPipeline.encode`), then calls ``on_result``. Integration
  goes first: before it starts a keyframe, the encoder thread waits while more than
  ``worker.yield_backlog`` sets wait for integration (at most ``worker.max_yield`` seconds),
  then takes the newest keyframe. On a small CPU the two threads share the cores, and an
  encoder that starts keyframes back to back (fast motion makes every frame a keyframe)
  would otherwise let the intake queue overflow and drop frames. Every ``worker.trim_period``
  seconds, between keyframes, it returns freed heap memory to the kernel
  (:func:`~concerto_ros.models.allocator.release_freed_memory`), which bounds the resident set
  that the encoder's kept-memory policy and heap fragmentation would otherwise let grow.

Both threads spend their time in numpy and torch kernels that release the GIL; the Python
between them is short, so the callbacks that feed the intake are not starved. Errors are
counted through ``on_skip`` (``FrameSkipped``) and never stop a thread.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Optional

from concerto_ros.models.allocator import release_freed_memory
from concerto_ros.pipeline import Keyframe, PerceptionPipeline, PipelineResult
from concerto_ros.sensors.skips import INTERNAL_ERROR, FrameSkipped
from concerto_ros.sensors.stream import FrameStream

__all__ = ["NewestQueue", "StreamingRuntime", "GIL_SWITCH_INTERVAL_S"]

#: seconds a thread may hold the GIL while another asks for it (Python's default: 0.005); the
#: node (and the streaming benchmark, to run as the node does) sets it with
#: ``sys.setswitchinterval`` so that callbacks and the two threads hand over the GIL quickly
GIL_SWITCH_INTERVAL_S = 0.001


class NewestQueue:
    """A bounded hand-off queue that keeps the newest items (thread-safe).

    When full, the item with the oldest ``stamp_ns`` goes, which is the incoming one when it
    is older than everything queued (a late message must not push out a newer frame).

    Attributes:
        dropped: number of items discarded because the consumer was busy.
        drop_times: ``time.monotonic()`` of the last 1000 drops (when the consumer stalled).
    """

    def __init__(self, maxlen: int):
        if int(maxlen) < 1:
            raise ValueError(f"NewestQueue: maxlen must be >= 1, got {maxlen}")
        self._items: list = []
        self._maxlen = int(maxlen)
        self._cond = threading.Condition()
        self.dropped = 0
        self.drop_times: deque[float] = deque(maxlen=1000)

    @staticmethod
    def _stamp(item) -> int:
        return int(getattr(item, "stamp_ns", 0))

    def put(self, item) -> bool:
        """Queue ``item``; returns False when it was dropped itself (older than a full queue)."""
        with self._cond:
            if len(self._items) >= self._maxlen:
                self.dropped += 1
                self.drop_times.append(time.monotonic())
                oldest = min(range(len(self._items)), key=lambda i: self._stamp(self._items[i]))
                if self._stamp(item) < self._stamp(self._items[oldest]):
                    return False
                del self._items[oldest]
            self._items.append(item)
            self._cond.notify()
            return True

    def get(self, timeout: float):
        """Next item (oldest stamp first), or ``None`` after ``timeout`` seconds."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            first = min(range(len(self._items)), key=lambda i: self._stamp(self._items[i]))
            return self._items.pop(first)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()


class _KeyframeSlot:
    """Depth-one hand-off from integration to encoder: a newer keyframe replaces a waiting one."""

    def __init__(self):
        self._item: Optional[tuple[Keyframe, Any]] = None
        self._cond = threading.Condition()
        self.replaced = 0

    def put(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float):
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def newer_than(self, item):
        """The waiting keyframe if there is one (``item`` then counts as replaced), else ``item``."""
        with self._cond:
            if self._item is None:
                return item
            newer, self._item = self._item, None
            self.replaced += 1
            return newer

    def clear(self) -> None:
        with self._cond:
            self._item = None


class StreamingRuntime:
    """The node's scheduling (see module docstring).

    Args:
        pipeline: the perception pipeline (its window and map are used by the threads).
        stream: the frame stream whose ``decode`` turns queued sets into frames.
        on_result: called on the encoder thread with ``(result, keyframe, tag)`` for every
            encoded keyframe; ``tag`` is what :meth:`offer` got with the keyframe's set.
        on_skip: called with every ``FrameSkipped`` (bad input, internal errors).
        queue_depth: synced sets waiting for the integration thread.
        yield_backlog: the encoder thread waits before a keyframe while more sets than this
            wait for integration (0: never waits).
        max_yield_s: longest such wait (seconds), so that keyframes keep coming when the
            integration thread cannot catch up at all.
        trim_period_s: seconds between returns of freed memory to the kernel, on the encoder
            thread between keyframes (0: never).
        warm_up: :meth:`start` first runs the encoders once on a synthetic window
            (:meth:`PerceptionPipeline.warm_up`); the seconds it took are in :attr:`warm_up_s`.

    Attributes:
        frames_offered, frames_integrated, keyframes_made, keyframes_encoded: counters.
    """

    def __init__(self, pipeline: PerceptionPipeline, stream: FrameStream,
                 on_result: Callable[[PipelineResult, Keyframe, Any], Any],
                 on_skip: Callable[[FrameSkipped], Any], queue_depth: int = 8, yield_backlog: int = 0,
                 max_yield_s: float = 0.5, trim_period_s: float = 0.0, warm_up: bool = False):
        if int(yield_backlog) < 0 or not float(max_yield_s) >= 0.0 or not float(trim_period_s) >= 0.0:
            raise ValueError(f"StreamingRuntime: yield_backlog, max_yield_s and trim_period_s must be >= 0, got "
                             f"{yield_backlog}, {max_yield_s}, {trim_period_s}")
        self.trim_period_s = float(trim_period_s)
        self.warm_up, self.warm_up_s = bool(warm_up), 0.0
        self._last_trim = time.monotonic()
        self.pipeline, self.stream = pipeline, stream
        self.yield_backlog, self.max_yield_s = int(yield_backlog), float(max_yield_s)
        self.on_result, self.on_skip = on_result, on_skip
        self.intake = NewestQueue(queue_depth)
        self._slot = _KeyframeSlot()
        self._encoder_busy = threading.Event()
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self.frames_offered = self.frames_integrated = self.keyframes_made = self.keyframes_encoded = 0
        #: seconds the encoder thread spent waiting for the integration backlog (see yield_backlog)
        self.yield_s = 0.0
        #: returns of freed memory to the kernel, and the seconds they took (see trim_period_s)
        self.trims, self.trim_s = 0, 0.0

    @classmethod
    def from_config(cls, pipeline: PerceptionPipeline, stream: FrameStream,
                    on_result: Callable[[PipelineResult, Keyframe, Any], Any],
                    on_skip: Callable[[FrameSkipped], Any]) -> "StreamingRuntime":
        """The runtime with the pipeline configuration's ``worker.*`` settings."""
        w = pipeline.cfg.worker
        return cls(pipeline, stream, on_result=on_result, on_skip=on_skip, queue_depth=w.queue_depth,
                   yield_backlog=w.yield_backlog, max_yield_s=w.max_yield, trim_period_s=w.trim_period,
                   warm_up=w.warm_up)

    @property
    def keyframes_replaced(self) -> int:
        """Keyframes that waited for the encoder and were replaced by a newer one."""
        return self._slot.replaced

    @property
    def frames_dropped(self) -> int:
        """Synced sets dropped before integration (the integration thread fell behind)."""
        return self.intake.dropped

    @property
    def running(self) -> bool:
        return self._running.is_set()

    def start(self) -> None:
        """Start the integration and encoder threads (after the warm-up, when asked for)."""
        if self._running.is_set():
            return
        if self.warm_up and self.warm_up_s == 0.0:
            self.warm_up_s = self.pipeline.warm_up()
        self._running.set()
        self._threads = [threading.Thread(target=self._integrate_loop, name="concerto_integrate", daemon=True),
                         threading.Thread(target=self._encode_loop, name="concerto_encode", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop both threads, waiting up to ``timeout_s`` for the frame or keyframe in progress."""
        self._running.clear()
        for t in self._threads:
            t.join(timeout=timeout_s)
        self._threads = []
        self.intake.clear()
        self._slot.clear()

    def offer(self, pending, tag: Any = None) -> None:
        """Hand a synced set (from ``FrameStream.add``) to the integration thread; never blocks.
        ``tag`` travels with it to ``on_result`` (e.g. the time it was offered)."""
        self.frames_offered += 1
        self.intake.put(_Offered(pending, tag))

    # -- threads ------------------------------------------------------------------------------
    def _integrate_loop(self) -> None:
        while self._running.is_set():
            item = self.intake.get(timeout=0.1)
            if item is None:
                continue
            try:
                keyframe = self.pipeline.integrate(self.stream.decode(item.pending),
                                                   defer_build=self._encoder_busy.is_set())
                self.frames_integrated += 1
                if keyframe is not None:
                    self.keyframes_made += 1
                    self._slot.put((keyframe, item.tag))
            except FrameSkipped as skip:
                self.on_skip(skip)
            except Exception:  # noqa: BLE001 - one frame never stops the thread
                if self._running.is_set():
                    self.on_skip(FrameSkipped("pipeline", INTERNAL_ERROR, traceback.format_exc(limit=4)))

    def _encode_loop(self) -> None:
        while self._running.is_set():
            item = self._slot.take(timeout=0.1)
            if item is None:
                continue
            if self._yield_to_integration():
                item = self._slot.newer_than(item)  # a keyframe integrated while waiting wins
            keyframe, tag = item
            self._encoder_busy.set()
            try:
                keyframe = self.pipeline.build_keyframe(keyframe)
                if keyframe is None:  # the window was reset since
                    continue
                result = self.pipeline.encode(keyframe)
                self.keyframes_encoded += 1
                if self._running.is_set():
                    self.on_result(result, keyframe, tag)
            except FrameSkipped as skip:
                self.on_skip(skip)
            except Exception:  # noqa: BLE001
                if self._running.is_set():
                    self.on_skip(FrameSkipped("pipeline", INTERNAL_ERROR, traceback.format_exc(limit=4)))
            finally:
                self._encoder_busy.clear()
            self._maybe_trim()

    def _maybe_trim(self) -> None:
        """Return freed memory to the kernel when ``trim_period_s`` has passed (encoder thread)."""
        if self.trim_period_s <= 0.0 or time.monotonic() - self._last_trim < self.trim_period_s:
            return
        t0 = time.monotonic()
        if release_freed_memory():
            self.trims += 1
        self._last_trim = time.monotonic()
        self.trim_s += self._last_trim - t0

    def _yield_to_integration(self) -> bool:
        """Wait while the integration backlog exceeds ``yield_backlog`` (at most ``max_yield_s``);
        whether it waited."""
        if self.yield_backlog <= 0 or len(self.intake) <= self.yield_backlog:
            return False
        t0 = time.monotonic()
        deadline = t0 + self.max_yield_s
        while self._running.is_set() and len(self.intake) > self.yield_backlog and time.monotonic() < deadline:
            time.sleep(0.005)
        self.yield_s += time.monotonic() - t0
        return True


class _Offered:
    """A queued set with its tag; ordered by the set's stamp."""

    __slots__ = ("pending", "tag", "stamp_ns")

    def __init__(self, pending, tag):
        self.pending, self.tag = pending, tag
        self.stamp_ns = int(getattr(pending, "stamp_ns", 0))

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"_Offered(stamp_ns={self.stamp_ns}, tag={self.tag!r}, t={time.time():.3f})"
