"""Checks a frame passes before it may enter the window (no ROS imports).

Each check returns ``None`` for good input or a one-line description of the problem; the
frame stream (:mod:`concerto_ros.sensors.stream`) turns a problem into a counted skip with
its own reason (``bad_intrinsics``, ``bad_pose``, ``bad_stamp``). Values that pass these
checks are safe for every later stage: lifting stays finite, the window stays small enough
to serialize, stamps stay ordered.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MAX_FOV_DEG", "MIN_FOV_DEG", "intrinsics_problem", "pose_problem", "StampGuard", "StampVerdict"]

#: widest and narrowest horizontal/vertical field of view accepted for a pinhole camera
MAX_FOV_DEG = 170.0
MIN_FOV_DEG = 1.0
#: the principal point may lie this fraction of the image size outside the image
PRINCIPAL_POINT_MARGIN = 0.25
#: largest accepted fx / fy (and fy / fx): pixels far from square mean a wrong K
MAX_ASPECT = 4.0


def _focal_range(size: int) -> tuple[float, float]:
    """Focal lengths (pixels) giving a field of view between MIN and MAX over ``size`` px."""
    lo = size / (2.0 * math.tan(math.radians(MAX_FOV_DEG) / 2.0))
    hi = size / (2.0 * math.tan(math.radians(MIN_FOV_DEG) / 2.0))
    return lo, hi


def intrinsics_problem(fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> str | None:
    """Why pinhole intrinsics are implausible for a ``width`` x ``height`` image, or ``None``.

    Accepted: finite values; a field of view between 1 and 170 degrees along each axis
    (``fx`` in ``[0.044, 57.3] * width`` pixels, ``fy`` likewise with ``height``); ``fx/fy``
    within ``[1/4, 4]``; the principal point inside the image extended by 25 % of its size
    on each side. Anything else would lift points to absurd or non-finite coordinates.
    """
    vals = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    bad = [k for k, v in vals.items() if not math.isfinite(float(v))]
    if bad:
        return f"non-finite {', '.join(bad)}"
    if int(width) < 1 or int(height) < 1:
        return f"image size {width}x{height}"
    for name, f, size in (("fx", fx, width), ("fy", fy, height)):
        lo, hi = _focal_range(int(size))
        if not lo <= f <= hi:
            return (f"{name} = {f:.6g} px is outside [{lo:.3g}, {hi:.4g}] px, the range of a "
                    f"{MIN_FOV_DEG:g}-{MAX_FOV_DEG:g} degree field of view over {size} px")
    if not 1.0 / MAX_ASPECT <= fx / fy <= MAX_ASPECT:
        return f"fx / fy = {fx / fy:.3g} (pixels far from square: a wrong K?)"
    for name, c, size in (("cx", cx, width), ("cy", cy, height)):
        lo, hi = -PRINCIPAL_POINT_MARGIN * size, (1.0 + PRINCIPAL_POINT_MARGIN) * size
        if not lo <= c <= hi:
            return f"{name} = {c:.6g} px is outside [{lo:.4g}, {hi:.4g}] px for an image {width}x{height}"
    return None


def pose_problem(T: Any, max_translation: float, atol: float = 1e-3) -> str | None:
    """Why ``T`` is not a usable sensor pose, or ``None``.

    Args:
        T: ``(4, 4)`` candidate ``T_world_sensor`` (metres).
        max_translation: largest accepted ``|t|`` in metres (float32 points lose resolution
            far from the origin, and a window that wide cannot be serialized).
        atol: tolerance on ``R^T R = I``, ``det R = 1`` and the last row ``[0, 0, 0, 1]``.
    """
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        return f"pose has shape {T.shape}, expected (4, 4)"
    if not np.isfinite(T).all():
        return "pose has non-finite entries"
    R = T[:3, :3]
    if np.abs(R).max() > 2.0:  # entries of a rotation are in [-1, 1]
        return "pose is not a rigid transform (rotation entries beyond 1)"
    if not (np.allclose(R.T @ R, np.eye(3), atol=atol) and abs(np.linalg.det(R) - 1.0) <= atol
            and np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=atol)):
        return "pose is not a rigid transform (rotation not orthonormal)"
    dist = float(np.linalg.norm(T[:3, 3]))
    if dist > max_translation:
        return f"translation |t| = {dist:.6g} m exceeds validation.max_translation = {max_translation:g} m"
    return None


class StampVerdict:
    """Outcome of :meth:`StampGuard.check`."""

    ACCEPT = "accept"
    #: stamp <= 0: never valid
    INVALID = "invalid"
    #: far ahead of the newest accepted stamp; held until confirmed or refuted
    HELD = "held"
    #: this stamp confirmed a forward jump: the held items are released with it
    JUMP = "jump"


@dataclass
class _Held:
    stamp_ns: int
    item: Any
    key: Any = None


@dataclass
class StampGuard:
    """Rejects stamps ``<= 0`` (``< 0`` with ``allow_zero``) and holds stamps far ahead of the newest accepted one.

    A single message stamped far in the future (a driver bug, a wrong clock) must not
    poison the newest-stamp bookkeeping that pairing, windowing and TF pruning rely on. Like
    tf2's jump detection, a forward jump is accepted only once ``confirm`` consecutive stamps
    of one stream (``key``: e.g. the colour topic, so that the three messages of a single bad
    RGB-D frame do not confirm each other) agree on the new time base (each within
    ``max_jump`` of the first held one); all held items are then released in order, so a real
    jump (a paused and resumed driver, a replay started later) costs nothing. Any in-range
    stamp refutes and drops the held ones.
    Backward jumps are the caller's business (pairing restarts, the window clears) unless
    ``symmetric``: then stamps more than ``max_jump`` behind the newest are held and
    confirmed the same way (a transform buffer whose first sample was the bogus one).

    Args:
        max_jump_s: largest forward step (seconds) accepted without confirmation.
        confirm: consecutive far-ahead stamps that confirm a jump.
        symmetric: also hold stamps far behind the newest.
        allow_zero: accept stamp 0 (transforms at the start of simulated time); frames
            stamped 0 are never valid.

    Thread-safe.
    """

    max_jump_s: float = 60.0
    confirm: int = 3
    symmetric: bool = False
    allow_zero: bool = False
    newest_ns: int | None = None
    _held: list = field(default_factory=list)
    _refuted: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, stamp_ns: int, item: Any = None, key: Any = None) -> tuple[str, list[tuple[int, Any]]]:
        """Classify ``stamp_ns`` (integer ns) carrying ``item`` of stream ``key``.

        Returns:
            ``(verdict, released)``: a :class:`StampVerdict` value, and on ``JUMP`` the held
            ``(stamp_ns, item)`` pairs in arrival order (the current item last); ``[]`` else.
            On ``HELD`` the item is kept by the guard; on ``ACCEPT`` and ``INVALID`` it is
            not. Items held and later refuted are returned by :meth:`take_refuted`.
        """
        stamp_ns = int(stamp_ns)
        if stamp_ns < 0 or (stamp_ns == 0 and not self.allow_zero):
            return StampVerdict.INVALID, []
        jump_ns = int(self.max_jump_s * 1e9)
        with self._lock:
            far_behind = self.symmetric and self.newest_ns is not None and stamp_ns < self.newest_ns - jump_ns
            if self.newest_ns is None or (stamp_ns <= self.newest_ns + jump_ns and not far_behind):
                self._refuted += self._held
                self._held = []
                if self.newest_ns is None or stamp_ns > self.newest_ns:
                    self.newest_ns = stamp_ns
                return StampVerdict.ACCEPT, []
            if self._held and abs(stamp_ns - self._held[0].stamp_ns) > jump_ns:
                self._refuted += self._held  # the held ones disagree with this one: start over
                self._held = []
            self._held.append(_Held(stamp_ns, item, key))
            if sum(h.key == key for h in self._held) < self.confirm:
                return StampVerdict.HELD, []
            released = [(h.stamp_ns, h.item) for h in self._held]
            self._held = []
            self.newest_ns = max(s for s, _ in released)
            return StampVerdict.JUMP, released

    def take_refuted(self) -> list[tuple[int, Any]]:
        """Held items dropped since the last call (an in-range stamp refuted them)."""
        with self._lock:
            out = [(h.stamp_ns, h.item) for h in self._refuted]
            self._refuted = []
            return out

    def reset(self) -> None:
        """Forget the newest stamp and the held items (time jumped back)."""
        with self._lock:
            self.newest_ns = None
            self._held = []
            self._refuted = []
