"""A small tf2-like transform buffer (no ROS imports).

Stores a tree of frames (each child has one parent), time-stamped transforms per edge, and
answers ``lookup(target, source, stamp)`` with the 4x4 matrix ``T_target_source`` that maps
points expressed in ``source`` to ``target`` (``p_target = T @ p_source``), like
``tf2_ros.Buffer.lookup_transform(target, source, time)``.

- Between two stored samples of an edge the translation is interpolated linearly and the
  rotation by spherical linear interpolation (slerp); quaternion <-> matrix conversions use
  ``transforms3d``.
- Static transforms (``/tf_static``) are valid at all times.
- ``stamp_ns == 0`` means "latest": the newest time at which every dynamic edge of the
  chain is available (tf2's latest common time).
- Requests outside an edge's buffered range raise :class:`TransformUnavailable` naming the
  edge and the available range, unless within ``max_extrapolation_s`` (then the nearest
  sample is used, no real extrapolation).
- Each dynamic edge keeps samples no older than ``cache_time_s`` before its newest one.
- Time jumps: a sample more than ``max_jump_s`` after (or before) the newest sample of its
  edge is held, not stored, so one transform stamped far in the future cannot prune the
  history and make every later lookup fail. Like tf2's jump detection, ``confirm``
  consecutive samples that agree on the new time base accept the jump: the edge restarts
  from them and ``on_note`` says so.
"""

from __future__ import annotations

import bisect
import math
import numbers
import threading
from dataclasses import dataclass, field

from typing import Any, Callable

import numpy as np
import transforms3d.quaternions as tq

from concerto_ros.sensors.validation import StampGuard, StampVerdict

__all__ = ["TransformBuffer", "TransformUnavailable"]


class TransformUnavailable(LookupError):
    """A transform cannot be computed: unknown frame, frames not connected, or the request
    would need extrapolation outside the buffered time range."""


def _fmt_s(stamp_ns: int) -> str:
    return f"{stamp_ns * 1e-9:.9f} s"


def _slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (any component order), shortest arc."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1 = -q1
        dot = -dot
    if dot > 0.9995:  # nearly identical: normalised lerp is exact to ~1e-8
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(1.0, dot))
    s = math.sin(theta)
    return (math.sin((1.0 - alpha) * theta) / s) * q0 + (math.sin(alpha * theta) / s) * q1


def _rigid(translation: np.ndarray, quat_wxyz: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = tq.quat2mat(quat_wxyz)
    T[:3, 3] = translation
    return T


def _inverse(T: np.ndarray) -> np.ndarray:
    inv = np.eye(4)
    R = T[:3, :3]
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ T[:3, 3]
    return inv


@dataclass
class _Edge:
    """Transforms of one child frame relative to its parent (T_parent_child samples)."""

    parent: str
    static: bool
    stamps: list = field(default_factory=list)  # sorted int ns
    translations: list = field(default_factory=list)  # (3,) float64
    quats: list = field(default_factory=list)  # (4,) float64, w x y z, unit
    guard: StampGuard | None = None  # forward-jump detection (dynamic edges)


class TransformBuffer:
    """Thread-safe buffer of time-stamped transforms between named frames.

    Args:
        cache_time_s: history kept per dynamic edge, seconds, relative to its newest sample.
        max_extrapolation_s: how far outside an edge's buffered range a lookup may be and
            still be answered (with the nearest sample), seconds. 0 = exact tf2 behaviour.
        max_jump_s: largest forward step of an edge's stamps accepted without confirmation
            (seconds); ``None`` disables the check.
        confirm: consecutive far-ahead samples that confirm a forward jump.
        on_note: callable receiving a one-line note when a jump is accepted.

    Attributes:
        held: samples held as far-ahead (unconfirmed jumps) since construction.

    Raises:
        ValueError: negative or non-finite durations.
    """

    def __init__(self, cache_time_s: float = 10.0, max_extrapolation_s: float = 0.0,
                 max_jump_s: float | None = 60.0, confirm: int = 3,
                 on_note: Callable[[str], Any] | None = None) -> None:
        cache_time_s = float(cache_time_s)
        max_extrapolation_s = float(max_extrapolation_s)
        if not (math.isfinite(cache_time_s) and cache_time_s > 0.0):
            raise ValueError(f"TransformBuffer: cache_time_s must be positive, got {cache_time_s}")
        if not (math.isfinite(max_extrapolation_s) and max_extrapolation_s >= 0.0):
            raise ValueError(f"TransformBuffer: max_extrapolation_s must be >= 0, got {max_extrapolation_s}")
        self._cache_ns = int(round(cache_time_s * 1e9))
        self._tol_ns = int(round(max_extrapolation_s * 1e9))
        self._edges: dict[str, _Edge] = {}  # keyed by child frame
        self._lock = threading.RLock()
        self._stored = threading.Condition(self._lock)  # notified whenever a sample is stored
        self._version = 0  # samples stored so far (see wait_for_change)
        self._max_jump_s = None if max_jump_s is None else float(max_jump_s)
        self._confirm = int(confirm)
        self._on_note = on_note
        self.held = 0

    # ------------------------------------------------------------------ writing
    def set_transform(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        translation,
        quaternion,
        static: bool = False,
    ) -> None:
        """Store ``T_parent_child`` at ``stamp_ns``: the pose of ``child`` in ``parent``.

        Args:
            parent, child: frame names (different, non-empty).
            stamp_ns: integer nanoseconds (ignored for static transforms).
            translation: ``(3,)`` metres, child origin expressed in ``parent``.
            quaternion: ``(4,)`` rotation as ``x, y, z, w`` (ROS order); normalised here.
            static: valid at all times (replaces any history of ``child``).

        A child has a single parent: giving ``child`` a different parent, or switching
        between static and dynamic, replaces its previous history. Samples at an existing
        stamp replace the old sample.

        A dynamic sample far ahead of its edge's newest sample is held (see the module
        docstring) and counted in :attr:`held`.

        Raises:
            ValueError: bad names, non-integer stamp, a negative dynamic stamp, non-finite
                values, zero quaternion, or a parent that would create a loop. Nothing is
                stored then.
        """
        stamp_ns, t, q_wxyz = _validated_sample(parent, child, stamp_ns, translation, quaternion)
        with self._lock:
            # loop check: walking up from parent must not reach child
            node = parent
            while node in self._edges:
                node = self._edges[node].parent
                if node == child:
                    raise ValueError(f"set_transform: {parent!r} -> {child!r} would create a loop in the frame tree")
            if not static and stamp_ns < 0:
                raise ValueError(f"set_transform: dynamic transform {parent!r} -> {child!r} has a negative stamp "
                                 f"({stamp_ns} ns)")
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != bool(static) or static:
                edge = _Edge(parent=parent, static=bool(static))
                if not static and self._max_jump_s is not None:
                    edge.guard = StampGuard(max_jump_s=self._max_jump_s, confirm=self._confirm,
                                            symmetric=True, allow_zero=True)
                self._edges[child] = edge
            if static:
                edge.stamps[:] = [0]
                edge.translations[:] = [t]
                edge.quats[:] = [q_wxyz]
                self._notify_stored()
                return
            self._store_dynamic(edge, parent, child, stamp_ns, t, q_wxyz)

    def _store_dynamic(self, edge: _Edge, parent: str, child: str, stamp_ns: int, t: np.ndarray,
                       q_wxyz: np.ndarray) -> None:
        """Store one dynamic sample through the edge's jump detection (the lock is held)."""
        if edge.guard is None:
            self._insert(edge, stamp_ns, t, q_wxyz)
            return
        verdict, released = edge.guard.check(stamp_ns, (t, q_wxyz))
        if verdict == StampVerdict.ACCEPT:
            self._insert(edge, stamp_ns, t, q_wxyz)
        elif verdict == StampVerdict.HELD:
            self.held += 1
        elif verdict == StampVerdict.JUMP:
            old = edge.stamps[-1] if edge.stamps else None
            edge.stamps.clear()
            edge.translations.clear()
            edge.quats.clear()
            for s_ns, (tt, qq) in released:
                self._insert(edge, s_ns, tt, qq)
            if self._on_note is not None:
                self._on_note(f"transform {parent!r} -> {child!r} jumped in time "
                              f"({_fmt_s(old) if old is not None else '?'} -> {_fmt_s(stamp_ns)}), confirmed by "
                              f"{len(released)} samples: its history restarts there")

    def _notify_stored(self) -> None:
        """Wake :meth:`wait_for_change` callers (the lock is held)."""
        self._version += 1
        self._stored.notify_all()

    @property
    def version(self) -> int:
        """Number of samples stored so far; pass it to :meth:`wait_for_change`."""
        with self._lock:
            return self._version

    def wait_for_change(self, since_version: int, timeout_s: float) -> bool:
        """Block until a sample is stored after :attr:`version` was ``since_version``, or for
        ``timeout_s`` seconds; whether one was stored. Lets a lookup that failed wait for the
        next /tf message instead of polling."""
        with self._stored:
            return self._stored.wait_for(lambda: self._version != since_version, max(float(timeout_s), 0.0))

    def _insert(self, edge: _Edge, stamp_ns: int, t: np.ndarray, q_wxyz: np.ndarray) -> None:
        """Insert one sample into a dynamic edge (sorted) and prune beyond the cache time."""
        self._notify_stored()
        pos = bisect.bisect_left(edge.stamps, stamp_ns)
        if pos < len(edge.stamps) and edge.stamps[pos] == stamp_ns:
            edge.translations[pos] = t
            edge.quats[pos] = q_wxyz
        else:
            edge.stamps.insert(pos, stamp_ns)
            edge.translations.insert(pos, t)
            edge.quats.insert(pos, q_wxyz)
        oldest_kept = edge.stamps[-1] - self._cache_ns
        cut = bisect.bisect_left(edge.stamps, oldest_kept)
        if cut:
            del edge.stamps[:cut]
            del edge.translations[:cut]
            del edge.quats[:cut]

    def add_message(self, msg: Any, static: bool = False) -> list[str]:
        """Store every transform of a ``tf2_msgs/TFMessage`` (rclpy or rosbags, duck-typed).

        A bad entry (empty or equal frame names, zero or non-finite quaternion, non-finite
        translation, a negative stamp, a loop in the tree) is ignored, as tf2 does; the
        others are stored.

        Returns:
            One line per rejected entry, naming the frames and the reason (empty when all
            were stored).
        """
        problems = []
        for t in getattr(msg, "transforms", ()):
            try:
                parent, child = str(t.header.frame_id), str(t.child_frame_id)
                stamp = int(t.header.stamp.sec) * 1_000_000_000 + int(t.header.stamp.nanosec)
                tr, q = t.transform.translation, t.transform.rotation
                self.set_transform(parent, child, stamp, (tr.x, tr.y, tr.z), (q.x, q.y, q.z, q.w), static=static)
            except (AttributeError, TypeError, ValueError) as exc:
                problems.append(f"{getattr(getattr(t, 'header', None), 'frame_id', '?')!r} -> "
                                f"{getattr(t, 'child_frame_id', '?')!r}: {exc}")
        return problems

    def set_transform_matrix(self, parent: str, child: str, stamp_ns: int, T, static: bool = False) -> None:
        """Like :meth:`set_transform` with a ``(4, 4)`` rigid matrix ``T_parent_child``.

        Raises:
            ValueError: ``T`` not a finite 4x4 rigid transform (see :meth:`set_transform`).
        """
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"set_transform_matrix: T must be a finite (4, 4) matrix, got shape {T.shape}")
        w, x, y, z = tq.mat2quat(T[:3, :3])
        self.set_transform(parent, child, stamp_ns, T[:3, 3], (x, y, z, w), static=static)

    def clear(self) -> None:
        """Forget every frame and transform."""
        with self._lock:
            self._edges.clear()

    # ------------------------------------------------------------------ reading
    def frames(self) -> list[str]:
        """All known frame names (children and roots), sorted."""
        with self._lock:
            names = set(self._edges)
            names.update(e.parent for e in self._edges.values())
            return sorted(names)

    def dynamic_edges(self) -> list[tuple[str, str]]:
        """``(parent, child)`` of every edge fed by ``/tf`` (time-stamped), sorted."""
        with self._lock:
            return sorted((e.parent, c) for c, e in self._edges.items() if not e.static)

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int = 0) -> bool:
        """True when :meth:`lookup` with the same arguments would succeed."""
        try:
            self.lookup(target_frame, source_frame, stamp_ns)
        except TransformUnavailable:
            return False
        return True

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int = 0) -> np.ndarray:
        """Return ``T_target_source`` as a ``(4, 4) float64`` array at ``stamp_ns``.

        ``p_target = T[:3, :3] @ p_source + T[:3, 3]``. ``stamp_ns = 0`` means the latest
        time available for the whole chain.

        Raises:
            TransformUnavailable: unknown frame, frames in different trees, or a time outside
                the buffered range of one of the chain's edges (message names the edge and
                its range).
            ValueError: non-integer stamp.
        """
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, numbers.Integral):
            raise ValueError(f"lookup: stamp_ns must be integer nanoseconds, got {stamp_ns!r}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            known = self._known_frames()
            for name in (target_frame, source_frame):
                if name not in known:
                    raise TransformUnavailable(
                        f"frame {name!r} does not exist (known frames: {sorted(known) if known else 'none'})"
                    )
            if target_frame == source_frame:
                return np.eye(4)
            chain_s = self._chain(source_frame)
            chain_t = self._chain(target_frame)
            in_t = set(chain_t)
            common = next((f for f in chain_s if f in in_t), None)
            if common is None:
                raise TransformUnavailable(
                    f"cannot transform {source_frame!r} to {target_frame!r}: they are not connected "
                    f"({source_frame!r} is in the tree rooted at {chain_s[-1]!r}, "
                    f"{target_frame!r} in the tree rooted at {chain_t[-1]!r})"
                )
            edges_s = chain_s[: chain_s.index(common)]  # child frames from source up to common
            edges_t = chain_t[: chain_t.index(common)]
            if stamp_ns == 0:
                dynamic = [self._edges[c] for c in edges_s + edges_t if not self._edges[c].static]
                stamp_ns = min((e.stamps[-1] for e in dynamic), default=0)
            T_common_source = self._compose(edges_s, stamp_ns)
            T_common_target = self._compose(edges_t, stamp_ns)
            return _inverse(T_common_target) @ T_common_source

    # ------------------------------------------------------------------ internals
    def _known_frames(self) -> set:
        names = set(self._edges)
        names.update(e.parent for e in self._edges.values())
        return names

    def _chain(self, frame: str) -> list[str]:
        """``[frame, parent, grandparent, ..., root]``."""
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _compose(self, children: list[str], stamp_ns: int) -> np.ndarray:
        """``T_ancestor_child0`` for the chain ``children[0] -> ... -> parent(children[-1])``."""
        T = np.eye(4)
        for child in children:  # from the deepest frame upwards: T = T_parent_child @ T
            T = self._edge_matrix(child, stamp_ns) @ T
        return T

    def _edge_matrix(self, child: str, stamp_ns: int) -> np.ndarray:
        edge = self._edges[child]
        if edge.static:
            return _rigid(edge.translations[0], edge.quats[0])
        stamps = edge.stamps
        first, last = stamps[0], stamps[-1]
        if stamp_ns < first or stamp_ns > last:
            if stamp_ns < first and first - stamp_ns <= self._tol_ns:
                return _rigid(edge.translations[0], edge.quats[0])
            if stamp_ns > last and stamp_ns - last <= self._tol_ns:
                return _rigid(edge.translations[-1], edge.quats[-1])
            direction = "past" if stamp_ns < first else "future"
            raise TransformUnavailable(
                f"lookup would require extrapolation into the {direction}: requested time {_fmt_s(stamp_ns)} "
                f"but {edge.parent!r} -> {child!r} is only available from {_fmt_s(first)} to {_fmt_s(last)} "
                f"({len(stamps)} samples, max_extrapolation {self._tol_ns * 1e-9:g} s)"
            )
        i = bisect.bisect_left(stamps, stamp_ns)
        if stamps[i] == stamp_ns:
            return _rigid(edge.translations[i], edge.quats[i])
        s0, s1 = stamps[i - 1], stamps[i]
        alpha = (stamp_ns - s0) / (s1 - s0)
        t = (1.0 - alpha) * edge.translations[i - 1] + alpha * edge.translations[i]
        q = _slerp(edge.quats[i - 1], edge.quats[i], alpha)
        return _rigid(t, q)


def _validated_sample(parent, child, stamp_ns, translation, quaternion) -> tuple[int, np.ndarray, np.ndarray]:
    """Checked ``(stamp_ns, translation (3,) float64, unit quaternion w, x, y, z (4,))`` of one
    transform sample; raises ``ValueError`` like :meth:`TransformBuffer.set_transform`."""
    if not isinstance(parent, str) or not isinstance(child, str) or not parent or not child:
        raise ValueError(f"set_transform: frame names must be non-empty strings, got {parent!r}, {child!r}")
    if parent == child:
        raise ValueError(f"set_transform: parent and child are the same frame {child!r}")
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, numbers.Integral):
        raise ValueError(f"set_transform: stamp_ns must be integer nanoseconds, got {stamp_ns!r}")
    stamp_ns = int(stamp_ns)
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    q = np.asarray(quaternion, dtype=np.float64).reshape(-1)
    if t.shape != (3,) or q.shape != (4,):
        raise ValueError(f"set_transform: translation must be (3,) and quaternion (4,), got {t.shape}, {q.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
        raise ValueError(f"set_transform: non-finite transform {parent!r} -> {child!r}")
    scale = float(np.abs(q).max())
    norm = scale * float(np.linalg.norm(q / scale)) if scale > 0.0 else 0.0  # no overflow for huge q
    if norm < 1e-9:
        raise ValueError(f"set_transform: zero quaternion (norm {norm:.3g}) for {parent!r} -> {child!r}")
    q_wxyz = np.array([q[3], q[0], q[1], q[2]]) / scale
    q_wxyz /= np.linalg.norm(q_wxyz)
    return stamp_ns, t, q_wxyz
