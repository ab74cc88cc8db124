"""Per-stage wall-time accounting shared by the pipeline, the frame stream and the shells."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager

import numpy as np

__all__ = ["STAGES", "StageTimer"]

#: stage names reported by :class:`StageTimer`, in pipeline order
STAGES = ("sync", "convert", "lift", "integrate", "window", "build", "encoder", "cross4d", "heads", "fuse", "to_msg")


class StageTimer:
    """Accumulates wall time per stage (milliseconds), thread-safe and bounded.

    Means are over every sample since start; medians and percentiles over the last
    ``keep`` samples of each stage (memory stays constant on a node that runs for days).

    Args:
        keep: recent samples kept per stage for medians and percentiles.
    """

    def __init__(self, keep: int = 2000):
        self.samples: dict[str, deque] = defaultdict(lambda: deque(maxlen=keep))
        self._count: dict[str, int] = defaultdict(int)
        self._sum: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str):
        """Context manager timing its body as one sample of ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - t0) * 1e3)

    def add(self, name: str, ms: float) -> None:
        """Record one sample of ``ms`` milliseconds for stage ``name``."""
        with self._lock:
            self.samples[name].append(float(ms))
            self._count[name] += 1
            self._sum[name] += float(ms)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"mean_ms", "median_ms", "p99_ms", "count"}}`` in pipeline order."""
        with self._lock:
            names = [s for s in STAGES if s in self.samples] + [s for s in self.samples if s not in STAGES]
            out = {}
            for n in names:
                recent = np.fromiter(self.samples[n], dtype=np.float64)
                out[n] = {"mean_ms": self._sum[n] / max(self._count[n], 1),
                          "median_ms": float(np.median(recent)) if recent.size else 0.0,
                          "p99_ms": float(np.percentile(recent, 99)) if recent.size else 0.0,
                          "count": self._count[n]}
            return out
