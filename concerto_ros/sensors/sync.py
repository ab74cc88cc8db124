"""Approximate-time pairing of several timestamped streams (no ROS imports).

One policy object, used identically by the live node (callbacks may come from several
threads) and by offline bag replay, so a recording replays into exactly the same sets.

The policy follows message_filters' ``ApproximateTime`` (the C++ one), with
``max_interval = slop`` and no age penalty:

1. Every stream keeps a queue sorted by stamp (at most ``queue_size`` items; on overflow the
   oldest is dropped, ``dropped_queue_full``).
2. When every queue holds an item, look at the queue heads. If the newest head is more than
   ``slop`` after the oldest head, the oldest head can never be part of a set (every other
   item of the newest head's stream is even later): it is dropped (``dropped_stale``).
3. Otherwise the newest head is the *pivot*. Among all sets that contain the pivot and span
   at most ``slop``, the one with the smallest spread (max stamp - min stamp) is chosen;
   ties go to the earlier set.
4. The set is emitted as soon as it is provably optimal: every other stream already holds
   an item at or after the pivot (items arrive in stamp order per stream, so no later
   arrival can give a smaller spread), or the spread is 0. This costs up to one message
   period of latency, as in message_filters. :meth:`flush` emits what can be emitted when
   no more data will come (end of a bag).
5. After a set is emitted, every queued item with a stamp older than or equal to the
   newest stamp of the set is dropped (``dropped_stale``; the set's own items are
   consumed), so sets never overlap in time and come out in time order. Later arrivals
   with such a stamp are dropped as ``dropped_out_of_order``. Arrivals that are out of
   order but still newer than the last set are inserted in stamp order.

A second item with the same stamp on the same stream replaces the first
(``dropped_duplicate``).
"""

from __future__ import annotations

import bisect
import math
import numbers
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

__all__ = ["SyncedSet", "ApproximateTimeSync", "SYNC_COUNTERS"]

#: Counter names always present in :attr:`ApproximateTimeSync.stats`.
SYNC_COUNTERS = (
    "received",
    "emitted",
    "dropped_queue_full",
    "dropped_stale",
    "dropped_out_of_order",
    "dropped_duplicate",
    "reordered",
)


@dataclass(frozen=True)
class SyncedSet:
    """One synchronised set: exactly one item per stream.

    Attributes:
        stamp_ns: stamp of the reference stream's item (the first stream given to
            :class:`ApproximateTimeSync`), integer nanoseconds.
        items: ``{stream: item}`` in stream order.
        stamps_ns: ``{stream: stamp_ns}`` of the items.
    """

    stamp_ns: int
    items: dict = field(default_factory=dict)
    stamps_ns: dict = field(default_factory=dict)

    @property
    def spread_ns(self) -> int:
        """Newest minus oldest stamp of the set, nanoseconds (<= slop)."""
        return max(self.stamps_ns.values()) - min(self.stamps_ns.values())

    def __getitem__(self, stream: str) -> Any:
        return self.items[stream]


class ApproximateTimeSync:
    """Approximate-time synchroniser over named streams (thread-safe).

    Args:
        streams: stream names (e.g. ``["color", "depth", "camera_info"]``); the first one
            is the reference whose stamp becomes :attr:`SyncedSet.stamp_ns`.
        slop_s: largest allowed spread of a set, seconds (>= 0).
        queue_size: items kept per stream (>= 1).

    Raises:
        ValueError: no streams, duplicate names, ``slop_s`` < 0 or not finite,
            ``queue_size`` < 1.
    """

    def __init__(self, streams: Sequence[str], slop_s: float, queue_size: int = 10) -> None:
        streams = list(streams)
        if not streams:
            raise ValueError("ApproximateTimeSync: need at least one stream")
        if len(set(streams)) != len(streams):
            raise ValueError(f"ApproximateTimeSync: duplicate stream names in {streams}")
        slop_s = float(slop_s)
        if not math.isfinite(slop_s) or slop_s < 0.0:
            raise ValueError(f"ApproximateTimeSync: slop_s must be a finite number >= 0 seconds, got {slop_s}")
        if int(queue_size) < 1:
            raise ValueError(f"ApproximateTimeSync: queue_size must be >= 1, got {queue_size}")
        self._streams = tuple(streams)
        self._index = {name: i for i, name in enumerate(streams)}
        self._slop_ns = int(round(slop_s * 1e9))
        self._slop_s = slop_s
        self._queue_size = int(queue_size)
        # per stream: parallel sorted lists of stamps and items
        self._stamps: list[list[int]] = [[] for _ in streams]
        self._items: list[list[Any]] = [[] for _ in streams]
        self._watermark: Optional[int] = None  # newest stamp of the last emitted set
        self._stats = {k: 0 for k in SYNC_COUNTERS}
        self._stream_stats = {name: {k: 0 for k in SYNC_COUNTERS if k != "emitted"} for name in streams}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ properties
    @property
    def streams(self) -> tuple[str, ...]:
        """Stream names, reference first."""
        return self._streams

    @property
    def slop_s(self) -> float:
        """Allowed spread of a set, seconds."""
        return self._slop_s

    @property
    def queue_size(self) -> int:
        """Items kept per stream."""
        return self._queue_size

    @property
    def stats(self) -> dict[str, int]:
        """Copy of the global counters (see :data:`SYNC_COUNTERS`)."""
        with self._lock:
            return dict(self._stats)

    @property
    def stream_stats(self) -> dict[str, dict[str, int]]:
        """Copy of the per-stream counters (received and drops by reason)."""
        with self._lock:
            return {k: dict(v) for k, v in self._stream_stats.items()}

    def pending(self) -> dict[str, int]:
        """Number of queued items per stream."""
        with self._lock:
            return {name: len(self._stamps[i]) for i, name in enumerate(self._streams)}

    # ------------------------------------------------------------------ public API
    def add(self, stream: str, stamp_ns: int, item: Any) -> list[SyncedSet]:
        """Queue ``item`` of ``stream`` stamped ``stamp_ns`` (integer ns); return new sets.

        Returns:
            The sets completed by this arrival, oldest first (usually 0 or 1).

        Raises:
            KeyError: unknown ``stream``.
            ValueError: ``stamp_ns`` is not an integer.
        """
        si = self._index.get(stream)
        if si is None:
            raise KeyError(f"ApproximateTimeSync: unknown stream {stream!r}; known streams: {list(self._streams)}")
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, numbers.Integral):
            raise ValueError(f"ApproximateTimeSync: stamp_ns must be integer nanoseconds, got {stamp_ns!r}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            self._count("received", si)
            if self._watermark is not None and stamp_ns <= self._watermark:
                self._count("dropped_out_of_order", si)
                return []
            stamps, items = self._stamps[si], self._items[si]
            pos = bisect.bisect_left(stamps, stamp_ns)
            if pos < len(stamps) and stamps[pos] == stamp_ns:
                items[pos] = item
                self._count("dropped_duplicate", si)
            else:
                if pos < len(stamps):
                    self._count("reordered", si)
                stamps.insert(pos, stamp_ns)
                items.insert(pos, item)
                while len(stamps) > self._queue_size:
                    del stamps[0]
                    del items[0]
                    self._count("dropped_queue_full", si)
            return self._process(final=False)

    def flush(self) -> list[SyncedSet]:
        """Emit every set still formable assuming no more items will arrive (end of replay).

        Items that cannot complete a set stay queued (see :meth:`pending`, :meth:`reset`).
        """
        with self._lock:
            return self._process(final=True)

    def reset(self, clear_stats: bool = False) -> None:
        """Drop all queued items and forget the last set (e.g. a bag looped or time jumped back)."""
        with self._lock:
            for s, it in zip(self._stamps, self._items):
                s.clear()
                it.clear()
            self._watermark = None
            if clear_stats:
                self._stats = {k: 0 for k in SYNC_COUNTERS}
                for v in self._stream_stats.values():
                    for k in v:
                        v[k] = 0

    # ------------------------------------------------------------------ internals
    def _count(self, key: str, si: Optional[int] = None, n: int = 1) -> None:
        self._stats[key] += n
        if si is not None:
            self._stream_stats[self._streams[si]][key] += n

    def _process(self, final: bool) -> list[SyncedSet]:
        out: list[SyncedSet] = []
        slop = self._slop_ns
        nstreams = len(self._streams)
        while all(self._stamps):
            heads = [(s[0], i) for i, s in enumerate(self._stamps)]
            start_stamp, start_si = min(heads)
            end_stamp, pivot_si = max(heads)
            if end_stamp - start_stamp > slop:
                del self._stamps[start_si][0]
                del self._items[start_si][0]
                self._count("dropped_stale", start_si)
                continue
            pivot = end_stamp
            if not final and end_stamp != start_stamp:
                if not all(self._stamps[i][-1] >= pivot for i in range(nstreams) if i != pivot_si):
                    break  # a later arrival could still give a better set containing the pivot
            choice = self._best_set(pivot, pivot_si)
            out.append(self._emit(choice))
        return out

    def _best_set(self, pivot: int, pivot_si: int) -> list[int]:
        """Queue positions (one per stream) of the smallest-spread set containing the pivot."""
        slop = self._slop_ns
        candidates = sorted(
            {s for stamps in self._stamps for s in stamps if pivot - slop <= s <= pivot}
        )
        best: Optional[list[int]] = None
        best_span = None
        for a in candidates:
            positions = []
            newest = pivot
            ok = True
            for i, stamps in enumerate(self._stamps):
                if i == pivot_si:
                    positions.append(0)  # the pivot is the head of its stream
                    continue
                j = bisect.bisect_left(stamps, a)
                if j == len(stamps):
                    ok = False
                    break
                positions.append(j)
                newest = max(newest, stamps[j])
            if not ok:
                continue
            span = newest - a
            if span <= slop and (best_span is None or span < best_span):
                best, best_span = positions, span
        assert best is not None  # the heads form a valid set
        return best

    def _emit(self, positions: list[int]) -> SyncedSet:
        items = {}
        stamps = {}
        for i, j in enumerate(positions):
            name = self._streams[i]
            items[name] = self._items[i][j]
            stamps[name] = self._stamps[i][j]
        newest = max(stamps.values())
        for i, j in enumerate(positions):
            cut = bisect.bisect_right(self._stamps[i], newest)
            stale = cut - 1  # everything up to the cut except the consumed item
            if stale:
                self._count("dropped_stale", i, stale)
            del self._stamps[i][:cut]
            del self._items[i][:cut]
        self._watermark = newest
        self._stats["emitted"] += 1
        return SyncedSet(stamp_ns=stamps[self._streams[0]], items=items, stamps_ns=stamps)
