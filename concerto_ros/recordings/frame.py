"""What frame-level sources yield: one sensor frame with its pose and labels.

Frames are in the sensor's own frame; ``T_world_sensor`` brings them into the recording's
world (fixed) frame. Conventions of :mod:`concerto_ros.sensors.types`: SI units, stamps in
integer nanoseconds, camera data in the REP-103 optical frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from concerto_ros.sensors.types import RGBDFrame

__all__ = ["SensorCloud", "SensorFrame"]


@dataclass
class SensorCloud:
    """Points of one sensor frame, in the sensor frame ``frame_id``.

    Attributes:
        xyz: ``(N, 3) float32`` metres; finite (readers drop non-finite points).
        colors: ``(N, 3) uint8`` RGB, or None.
        intensity: ``(N,) float32`` sensor return intensity (units of the sensor; KITTI:
            reflectance 0..1), or None.
        frame_id: the sensor frame.
        index: ``(N,) int64`` position of each point in the source before non-finite points
            were dropped (``row * width + col`` of an organized cloud), or None when nothing
            was dropped and the source is unorganized.
        shape: ``(height, width)`` of an organized source (``index`` refers to it), or None.
    """

    xyz: np.ndarray
    colors: Optional[np.ndarray] = None
    intensity: Optional[np.ndarray] = None
    frame_id: str = "sensor"
    index: Optional[np.ndarray] = None
    shape: Optional[tuple[int, int]] = None

    def __post_init__(self) -> None:
        n = len(self.xyz)
        if self.xyz.dtype != np.float32 or self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise ValueError(f"SensorCloud: xyz must be (N, 3) float32, got {self.xyz.shape} {self.xyz.dtype}")
        for name, dtype, shape in (("colors", np.uint8, (n, 3)), ("intensity", np.float32, (n,)),
                                   ("index", np.int64, (n,))):
            a = getattr(self, name)
            if a is not None and (a.dtype != dtype or a.shape != shape):
                raise ValueError(f"SensorCloud: {name} must be {shape} {np.dtype(dtype)}, got {a.shape} {a.dtype}")

    def __len__(self) -> int:
        return int(len(self.xyz))


@dataclass
class SensorFrame:
    """One frame of a frame-level source (RGB-D folder, PCD, point arrays, SemanticKITTI).

    Exactly what the frame stream needs: the geometry is ``cloud`` when present (exact
    points), else ``rgbd`` lifted through its intrinsics. Organized PCD frames carry both:
    the exact points and the image grid rebuilt from them.

    Attributes:
        stamp_ns: acquisition time, int nanoseconds (file stamps, else ``start + i / rate``).
        key: frame name, unique within the recording (file stem, ``<stem>`` of a scan).
        T_world_sensor: ``(4, 4) float64`` sensor -> world (fixed) frame; identity when the
            source has no poses (the points are then in the world frame already).
        rgbd: :class:`~concerto_ros.sensors.types.RGBDFrame` (colour, depth, intrinsics,
            per-pixel ``labels``) or None.
        cloud: :class:`SensorCloud` or None.
        labels: ``int32`` labels, per point of ``cloud`` when it is present, else per pixel
            ``(H, W)`` of ``rgbd``; None without labels. With a label set (the source's
            ``label_names``) they are class indices into the set's ``classes`` and ``-1``
            (:data:`~concerto_ros.recordings.labels.IGNORE`) for unlabeled or unknown
            values; without one they are the file's values unchanged.
        image: ``(H, W, 3) uint8`` RGB colour image of the frame, or None.
    """

    stamp_ns: int
    key: str
    T_world_sensor: np.ndarray
    rgbd: Optional[RGBDFrame] = None
    cloud: Optional[SensorCloud] = None
    labels: Optional[np.ndarray] = None
    image: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.rgbd is None and self.cloud is None:
            raise ValueError("SensorFrame needs an rgbd frame or a cloud")
        T = np.asarray(self.T_world_sensor, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise ValueError(f"SensorFrame: T_world_sensor must be a finite (4, 4) matrix, got {T.shape}")
        self.T_world_sensor = T

    @property
    def frame_id(self) -> str:
        """The sensor frame (the cloud's, else the RGB-D frame's)."""
        return self.cloud.frame_id if self.cloud is not None else self.rgbd.frame_id
