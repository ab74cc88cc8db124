"""Keyframe selection: on which frames the encoder runs.

Every frame is lifted and integrated into the map's geometry; the encoder (expensive) runs
only on keyframes. A frame is a keyframe when, since the last keyframe, the sensor

* moved at least ``min_translation`` metres, or
* turned at least ``min_rotation`` degrees (angle of the relative rotation), or
* ``max_interval`` seconds passed,

and the first frame (and the first after time jumps back, e.g. a looping bag) always is.
A criterion set to 0 is off; with all three off every frame is a keyframe (offline
evaluation of every window, tests).

"The newest keyframe wins" is the caller's queue policy, not this class's: the worker keeps
at most one keyframe waiting for the encoder (a drop-oldest queue of depth 1), so when the
encoder is busy a newer keyframe replaces the waiting one. The policy measures motion from
the last frame it *declared* a keyframe (:meth:`KeyframePolicy.update`), whether or not that
one was encoded: a replaced keyframe is superseded by a newer one anyway, and the newest
keyframe always reaches the encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["KeyframePolicy", "KeyframeDecision", "rotation_angle_deg"]


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle in degrees of the rotation from ``R_a`` to ``R_b`` (both ``(3, 3)``)."""
    cos = (np.trace(R_a.T @ R_b) - 1.0) * 0.5
    return math.degrees(math.acos(min(1.0, max(-1.0, float(cos)))))


@dataclass(frozen=True)
class KeyframeDecision:
    """Result of :meth:`KeyframePolicy.check`.

    Attributes:
        is_keyframe: whether the frame is a keyframe.
        reason: ``"first"``, ``"time_jump"``, ``"translation"``, ``"rotation"``,
            ``"interval"``, or ``""`` (not a keyframe); the first criterion met in that order.
        translation: metres moved since the last keyframe (0 for the first).
        rotation_deg: degrees turned since the last keyframe.
        elapsed_s: seconds since the last keyframe.
    """

    is_keyframe: bool
    reason: str
    translation: float = 0.0
    rotation_deg: float = 0.0
    elapsed_s: float = 0.0


class KeyframePolicy:
    """Moved / turned / time-passed keyframe test (see the module docstring).

    Args:
        min_translation: metres (>= 0; 0 = off).
        min_rotation: degrees (>= 0; 0 = off).
        max_interval: seconds (>= 0; 0 = off).

    Raises:
        ValueError: a negative or non-finite threshold.
    """

    def __init__(self, min_translation: float = 0.1, min_rotation: float = 10.0, max_interval: float = 1.0):
        values = (float(min_translation), float(min_rotation), float(max_interval))
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"KeyframePolicy: thresholds must be finite and >= 0, got min_translation "
                             f"{min_translation}, min_rotation {min_rotation}, max_interval {max_interval}")
        self.min_translation, self.min_rotation, self.max_interval = values
        self._pose: Optional[np.ndarray] = None
        self._stamp_ns: Optional[int] = None
        #: keyframes declared since construction or :meth:`reset`
        self.num_keyframes = 0

    @classmethod
    def from_config(cls, keyframe_cfg) -> "KeyframePolicy":
        """From the ``keyframe.*`` settings (:class:`~concerto_ros.config.KeyframeConfig`)."""
        return cls(keyframe_cfg.min_translation, keyframe_cfg.min_rotation, keyframe_cfg.max_interval)

    def reset(self) -> None:
        """Forget the last keyframe: the next frame is one."""
        self._pose, self._stamp_ns = None, None

    def check(self, T_fixed_sensor: np.ndarray, stamp_ns: int) -> KeyframeDecision:
        """Whether a frame with this pose and stamp is a keyframe (the state is not changed).

        Args:
            T_fixed_sensor: ``(4, 4)`` sensor pose in the fixed frame (metres).
            stamp_ns: the frame's stamp, integer nanoseconds.

        Raises:
            ValueError: the pose is not a finite 4x4 matrix.
        """
        T = np.asarray(T_fixed_sensor, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise ValueError(f"KeyframePolicy: the pose must be a finite 4x4 matrix, got shape {T.shape}")
        if self._pose is None:
            return KeyframeDecision(True, "first")
        if self.min_translation == 0 and self.min_rotation == 0 and self.max_interval == 0:
            return KeyframeDecision(True, "every_frame")
        if int(stamp_ns) < self._stamp_ns:
            return KeyframeDecision(True, "time_jump")
        moved = float(np.linalg.norm(T[:3, 3] - self._pose[:3, 3]))
        turned = rotation_angle_deg(self._pose[:3, :3], T[:3, :3])
        elapsed = (int(stamp_ns) - self._stamp_ns) * 1e-9
        reason = ""
        if self.min_translation > 0 and moved >= self.min_translation:
            reason = "translation"
        elif self.min_rotation > 0 and turned >= self.min_rotation:
            reason = "rotation"
        elif self.max_interval > 0 and elapsed >= self.max_interval:
            reason = "interval"
        return KeyframeDecision(bool(reason), reason, moved, turned, elapsed)

    def update(self, T_fixed_sensor: np.ndarray, stamp_ns: int) -> KeyframeDecision:
        """:meth:`check`, and when the frame is a keyframe remember it as the last one.

        Raises:
            ValueError: see :meth:`check`.
        """
        decision = self.check(T_fixed_sensor, stamp_ns)
        if decision.is_keyframe:
            self._pose = np.array(T_fixed_sensor, dtype=np.float64)
            self._stamp_ns = int(stamp_ns)
            self.num_keyframes += 1
        return decision
