"""Procedural indoor RGB-D scenes with exact ground-truth semantic labels.

This module generates the embedded demo data of ``concerto demo`` with the
project's own code (no external data): a random room (floor, four walls,
ceiling) furnished with tables, chairs, a sofa, cabinets, a bookshelf and a
door, all built from oriented boxes, rendered by exact vectorised ray casting
from a moving camera.

Conventions
-----------
* World frame: z up, metres, floor top surface at ``z = 0``, room centred on
  the origin (``x`` in ``[-Lx/2, Lx/2]``, ``y`` in ``[-Ly/2, Ly/2]``).
* Camera frame: REP-103 optical frame (``z`` forward, ``x`` right, ``y`` down).
  Poses are ``T_world_camera`` (camera-to-world), ``(4, 4)`` float64.
* Pixel ``(u, v)`` = (column, row); its ray goes through the pixel centre at
  integer coordinates, i.e. ``x = (u - cx) * z / fx``, ``y = (v - cy) * z / fy``
  (OpenCV convention).
* Depth is the optical-frame ``z`` of the hit point (not the ray length), in
  metres; ``0`` marks invalid pixels.

RGB-D folder format written by :func:`write_sequence`::

    color/000000.png   8-bit colour (cv2.imwrite, BGR on disk)
    depth/000000.png   uint16 depth in millimetres, 0 = invalid
    labels/000000.png  uint16 semantic class ids (see CLASS_NAMES)
    poses.txt          one line per frame: "tx ty tz qx qy qz qw",
                       camera-to-world, optical camera frame
    camera.yaml        fx, fy, cx, cy, width, height, depth_scale, rate_hz,
                       class_names, palette (+ seed, num_frames, generator)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "PALETTE",
    "CEILING_CLASS",
    "Intrinsics",
    "Box",
    "Scene",
    "Frame",
    "make_room",
    "render",
    "camera_trajectory",
    "look_at",
    "default_intrinsics",
    "generate_sequence",
    "write_sequence",
    "depth_to_mm",
    "colorize_labels",
]

# --------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------

#: Semantic classes; the index in this tuple is the class id stored in label
#: images. Names follow the ScanNet-20 benchmark. Id 0 ("unlabeled") is used
#: for rays that hit nothing and for the ceiling (ScanNet-20 has no ceiling
#: class; it is ignored there too).
CLASS_NAMES: tuple[str, ...] = (
    "unlabeled",  # 0
    "floor",  # 1
    "wall",  # 2
    "table",  # 3
    "chair",  # 4
    "sofa",  # 5
    "cabinet",  # 6
    "bookshelf",  # 7
    "door",  # 8
)

#: Display colours (RGB uint8), one row per class id, ScanNet colours.
PALETTE: np.ndarray = np.array(
    [
        (0, 0, 0),  # unlabeled
        (152, 223, 138),  # floor
        (174, 199, 232),  # wall
        (255, 152, 150),  # table
        (188, 189, 34),  # chair
        (140, 86, 75),  # sofa
        (31, 119, 180),  # cabinet
        (148, 103, 189),  # bookshelf
        (214, 39, 40),  # door
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

_CID = {name: i for i, name in enumerate(CLASS_NAMES)}
#: Class id given to the ceiling.
CEILING_CLASS: int = 0

# texture kinds
TEX_PLAIN, TEX_TILES, TEX_PLANKS, TEX_WOOD, TEX_FABRIC, TEX_WALL = range(6)


# --------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------


class Intrinsics(NamedTuple):
    """Pinhole intrinsics: focal lengths and principal point in pixels, image size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


@dataclass(frozen=True)
class Box:
    """An oriented box rotated about the world z axis.

    Attributes:
        center: (3,) float64, box centre in the world frame, metres.
        half_size: (3,) float64, half extents along the box axes, metres.
        yaw: rotation about world z, radians (box x axis = (cos yaw, sin yaw, 0)).
        class_id: semantic class id (index into ``CLASS_NAMES``).
        object_id: instance id (all boxes of one piece of furniture share it).
        color: (3,) float64 base RGB in [0, 1].
        texture: texture kind (``TEX_*``).
        texture_seed: integer seed of the procedural texture.
    """

    center: np.ndarray
    half_size: np.ndarray
    yaw: float
    class_id: int
    object_id: int
    color: np.ndarray
    texture: int = TEX_PLAIN
    texture_seed: int = 0

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) float64 world-from-box rotation."""
        return _rot_z(self.yaw)


@dataclass(frozen=True)
class Scene:
    """A procedural room.

    Attributes:
        seed: seed it was generated from.
        room_size: (3,) float64 ``(Lx, Ly, height)`` of the free interior, metres.
        boxes: all primitives (room shell first, then furniture).
        objects: ``(object_id, class_name)`` for each object, in order.
        light_dirs: (2, 3) float64 unit directions towards the key and fill lights.
    """

    seed: int
    room_size: np.ndarray
    boxes: tuple[Box, ...]
    objects: tuple[tuple[int, str], ...]
    light_dirs: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """Packed box parameters: centers (B,3), rotations (B,3,3), half_sizes (B,3),
        class_ids (B,) int64, object_ids (B,) int64, colors (B,3), textures (B,) int64,
        texture_seeds (B,) int64."""
        b = self.boxes
        return {
            "centers": np.array([x.center for x in b], dtype=np.float64).reshape(-1, 3),
            "rotations": np.array([x.rotation for x in b], dtype=np.float64).reshape(-1, 3, 3),
            "half_sizes": np.array([x.half_size for x in b], dtype=np.float64).reshape(-1, 3),
            "class_ids": np.array([x.class_id for x in b], dtype=np.int64),
            "object_ids": np.array([x.object_id for x in b], dtype=np.int64),
            "colors": np.array([x.color for x in b], dtype=np.float64).reshape(-1, 3),
            "textures": np.array([x.texture for x in b], dtype=np.int64),
            "texture_seeds": np.array([x.texture_seed for x in b], dtype=np.int64),
        }


class Frame(NamedTuple):
    """One rendered frame.

    color: (H, W, 3) uint8 RGB; depth: (H, W) float32 metres (0 = invalid);
    labels: (H, W) uint16 class ids; T_world_camera: (4, 4) float64 camera-to-world
    (optical frame).
    """

    color: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    T_world_camera: np.ndarray


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _yaw_facing(direction_xy: Sequence[float]) -> float:
    """Yaw that makes an object's local +y (its front) point along ``direction_xy``."""
    return math.atan2(-direction_xy[0], direction_xy[1])


def default_intrinsics(
    width: int = 320, height: int = 240, fx: float | None = None, fy: float | None = None
) -> Intrinsics:
    """Kinect-like intrinsics: ``fx = 525 * width / 640`` unless given, ``fy = fx``
    unless given, principal point at the image centre ``((W-1)/2, (H-1)/2)``."""
    fx = 525.0 * width / 640.0 if fx is None else float(fx)
    fy = fx if fy is None else float(fy)
    return Intrinsics(fx, fy, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))


def look_at(
    eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """Camera-to-world pose (4, 4) float64 of an optical-frame camera at ``eye``
    (world, metres) whose z axis points at ``target`` and whose image "up"
    (-y) is as close as possible to world ``up``. When the view direction is
    parallel to ``up``, world +y (or +x) is used to fix the roll."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    n = np.linalg.norm(z)
    if n == 0:
        raise ValueError("eye and target coincide")
    z = z / n
    for u in (
        np.asarray(up, dtype=np.float64),
        np.array([0.0, 1.0, 0.0]),
        np.array([1.0, 0.0, 0.0]),
    ):
        x = np.cross(z, u)
        if np.linalg.norm(x) > 1e-9:
            break
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def _hash_u32(*ints: np.ndarray) -> np.ndarray:
    """Deterministic integer hash of integer arrays (broadcast) -> uint32."""
    primes = (73856093, 19349663, 83492791, 2654435761, 40503)
    h = np.zeros(np.broadcast_shapes(*[np.shape(a) for a in ints]), dtype=np.uint32)
    for a, p in zip(ints, primes):
        a32 = (np.asarray(a, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)
        h ^= a32 * np.uint32(p)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0x5BD1E995)
        h ^= h >> np.uint32(15)
    return h


def _hash01(*ints: np.ndarray) -> np.ndarray:
    return _hash_u32(*ints).astype(np.float64) * (1.0 / 4294967296.0)


def _value_noise(p: np.ndarray, freq: np.ndarray | float, seed: np.ndarray | int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1]. p: (N, 3) metres; freq scalar or (3,) 1/m."""
    q = p * freq
    i = np.floor(q)
    f = q - i
    f = f * f * (3.0 - 2.0 * f)
    i = i.astype(np.int64)
    ix, iy, iz = i[:, 0], i[:, 1], i[:, 2]
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    out = np.zeros(len(p))
    for dx in (0, 1):
        wx = fx if dx else 1.0 - fx
        for dy in (0, 1):
            wy = fy if dy else 1.0 - fy
            for dz in (0, 1):
                wz = fz if dz else 1.0 - fz
                out += wx * wy * wz * _hash01(ix + dx, iy + dy, iz + dz, seed)
    return out


# --------------------------------------------------------------------------
# Room generation
# --------------------------------------------------------------------------

# Material colour choices (RGB in [0, 1]) per role.
_WOODS = [
    (0.55, 0.38, 0.22),
    (0.68, 0.50, 0.32),
    (0.40, 0.26, 0.15),
    (0.78, 0.64, 0.45),
    (0.30, 0.20, 0.13),
]
_NEUTRALS = [(0.92, 0.92, 0.90), (0.15, 0.15, 0.16), (0.55, 0.56, 0.58), (0.82, 0.80, 0.74)]
_COLOR_SETS = {
    "floor": _WOODS
    + [(0.62, 0.62, 0.60), (0.72, 0.64, 0.52), (0.35, 0.36, 0.40), (0.50, 0.30, 0.25)],
    "wall": [
        (0.93, 0.92, 0.88),
        (0.85, 0.87, 0.90),
        (0.80, 0.88, 0.82),
        (0.93, 0.88, 0.76),
        (0.88, 0.82, 0.80),
        (0.78, 0.80, 0.84),
        (0.95, 0.95, 0.95),
    ],
    "table": _WOODS + _NEUTRALS,
    "chair": _WOODS + _NEUTRALS + [(0.70, 0.15, 0.12), (0.15, 0.30, 0.60), (0.20, 0.45, 0.30)],
    "sofa": [
        (0.45, 0.47, 0.50),
        (0.20, 0.28, 0.50),
        (0.45, 0.28, 0.18),
        (0.30, 0.45, 0.32),
        (0.80, 0.74, 0.62),
        (0.60, 0.18, 0.16),
        (0.25, 0.25, 0.27),
    ],
    "cabinet": _WOODS + _NEUTRALS,
    "bookshelf": _WOODS + _NEUTRALS,
    "door": [
        (0.94, 0.94, 0.92),
        (0.55, 0.38, 0.22),
        (0.68, 0.50, 0.32),
        (0.40, 0.26, 0.15),
        (0.75, 0.75, 0.72),
    ],
    "ceiling": [(0.95, 0.95, 0.94), (0.92, 0.91, 0.88)],
    "metal": [(0.75, 0.75, 0.76), (0.20, 0.20, 0.22), (0.80, 0.70, 0.35)],
    "book": [
        (0.70, 0.12, 0.10),
        (0.10, 0.25, 0.55),
        (0.15, 0.45, 0.20),
        (0.85, 0.75, 0.30),
        (0.90, 0.90, 0.85),
        (0.20, 0.20, 0.22),
        (0.55, 0.30, 0.55),
        (0.85, 0.45, 0.15),
    ],
}


class _Builder:
    """Accumulates boxes of a scene; furniture parts are given in object-local
    coordinates (x right, y towards the object's front, z up, origin at the
    centre of the footprint on the floor)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.boxes: list[Box] = []
        self.objects: list[tuple[int, str]] = []
        self.footprints: list[_Footprint] = []

    def color(self, role: str) -> np.ndarray:
        options = _COLOR_SETS[role]
        base = np.array(options[int(self.rng.integers(len(options)))], dtype=np.float64)
        jitter = self.rng.uniform(0.88, 1.12) * self.rng.uniform(0.95, 1.05, size=3)
        return np.clip(base * jitter, 0.02, 1.0)

    def new_object(self, name: str) -> int:
        oid = len(self.objects)
        self.objects.append((oid, name))
        return oid

    def add_world(self, center, half_size, yaw, class_id, object_id, color, texture=TEX_PLAIN):
        self.boxes.append(
            Box(
                np.asarray(center, dtype=np.float64),
                np.asarray(half_size, dtype=np.float64),
                float(yaw),
                int(class_id),
                int(object_id),
                np.asarray(color, dtype=np.float64),
                int(texture),
                int(self.rng.integers(1 << 30)),
            )
        )

    def add_parts(self, origin_xy, yaw, parts, class_id, object_id):
        """parts: list of (lo (3,), hi (3,), color, texture) in object-local coordinates."""
        R = _rot_z(yaw)
        o = np.array([origin_xy[0], origin_xy[1], 0.0])
        for lo, hi, color, texture in parts:
            lo, hi = np.asarray(lo, float), np.asarray(hi, float)
            self.add_world(
                o + R @ ((lo + hi) / 2), (hi - lo) / 2, yaw, class_id, object_id, color, texture
            )


class _Footprint(NamedTuple):
    """Oriented rectangle on the floor: centre (x, y), yaw, half extents (w, d)."""

    cx: float
    cy: float
    yaw: float
    hw: float
    hd: float

    def corners(self) -> np.ndarray:
        R = _rot_z(self.yaw)[:2, :2]
        loc = np.array(
            [[-self.hw, -self.hd], [self.hw, -self.hd], [self.hw, self.hd], [-self.hw, self.hd]]
        )
        return loc @ R.T + np.array([self.cx, self.cy])


def _footprint(origin_xy, yaw, half_w, half_d, margin=0.0) -> _Footprint:
    return _Footprint(
        float(origin_xy[0]), float(origin_xy[1]), float(yaw), half_w + margin, half_d + margin
    )


def _overlap(a: _Footprint, b: _Footprint) -> bool:
    """Separating-axis test of two oriented rectangles (touching counts as no overlap)."""
    ca, cb = a.corners(), b.corners()
    for yaw in (a.yaw, b.yaw):
        for ax in (
            np.array([math.cos(yaw), math.sin(yaw)]),
            np.array([-math.sin(yaw), math.cos(yaw)]),
        ):
            pa, pb = ca @ ax, cb @ ax
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return False
    return True


def _inside_room(f: _Footprint, lx, ly) -> bool:
    c = f.corners()
    return bool(
        np.all(np.abs(c[:, 0]) <= lx / 2 + 1e-9) and np.all(np.abs(c[:, 1]) <= ly / 2 + 1e-9)
    )


# furniture part generators (object-local, front = +y) ----------------------


def _table_parts(b: _Builder, w, d, h):
    col = b.color("table")
    top_t, leg = 0.04, 0.05
    parts = [((-w / 2, -d / 2, h - top_t), (w / 2, d / 2, h), col, TEX_WOOD)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            x = sx * (w / 2 - 0.06 - leg / 2)
            y = sy * (d / 2 - 0.06 - leg / 2)
            parts.append(
                (
                    (x - leg / 2, y - leg / 2, 0.0),
                    (x + leg / 2, y + leg / 2, h - top_t),
                    col,
                    TEX_WOOD,
                )
            )
    return parts


def _chair_parts(b: _Builder):
    rng = b.rng
    w = rng.uniform(0.40, 0.50)
    d = rng.uniform(0.40, 0.48)
    hs = rng.uniform(0.42, 0.48)
    hb = hs + rng.uniform(0.35, 0.50)
    col = b.color("chair")
    seat_col = col if rng.random() < 0.6 else b.color("sofa")
    leg, seat_t, back_t = 0.035, 0.05, 0.04
    parts = [
        ((-w / 2, -d / 2, hs - seat_t), (w / 2, d / 2, hs), seat_col, TEX_FABRIC),
        ((-w / 2, -d / 2, hs), (w / 2, -d / 2 + back_t, hb), col, TEX_WOOD),
    ]
    for sx in (-1, 1):
        for sy in (-1, 1):
            x = sx * (w / 2 - leg / 2 - 0.01)
            y = sy * (d / 2 - leg / 2 - 0.01)
            parts.append(
                (
                    (x - leg / 2, y - leg / 2, 0.0),
                    (x + leg / 2, y + leg / 2, hs - seat_t),
                    col,
                    TEX_WOOD,
                )
            )
    return parts, w / 2, d / 2


def _sofa_parts(b: _Builder):
    rng = b.rng
    w = rng.uniform(1.6, 2.2)
    d = rng.uniform(0.80, 0.95)
    hs = rng.uniform(0.40, 0.46)
    hb = rng.uniform(0.75, 0.90)
    ha = rng.uniform(0.55, 0.65)
    arm, back = rng.uniform(0.15, 0.22), rng.uniform(0.18, 0.25)
    col = b.color("sofa")
    parts = [
        ((-w / 2 + arm, -d / 2 + back, 0.0), (w / 2 - arm, d / 2, hs), col, TEX_FABRIC),
        ((-w / 2 + arm, -d / 2, 0.0), (w / 2 - arm, -d / 2 + back, hb), col, TEX_FABRIC),
        ((-w / 2, -d / 2, 0.0), (-w / 2 + arm, d / 2, ha), col, TEX_FABRIC),
        ((w / 2 - arm, -d / 2, 0.0), (w / 2, d / 2, ha), col, TEX_FABRIC),
    ]
    return parts, w / 2, d / 2


def _cabinet_parts(b: _Builder):
    rng = b.rng
    w = rng.uniform(0.6, 1.2)
    d = rng.uniform(0.40, 0.55)
    h = rng.uniform(0.75, 0.95) if rng.random() < 0.6 else rng.uniform(1.5, 1.9)
    col = b.color("cabinet")
    metal = b.color("metal")
    top_t = 0.03
    parts = [
        ((-w / 2, -d / 2, 0.0), (w / 2, d / 2 - 0.02, h - top_t), col, TEX_WOOD),
        ((-w / 2 - 0.01, -d / 2, h - top_t), (w / 2 + 0.01, d / 2, h), col, TEX_WOOD),
    ]
    hz = min(h - 0.15, 0.75)
    for sx in (-1, 1):
        x = sx * 0.06
        parts.append(
            (
                (x - 0.01, d / 2 - 0.02, hz - 0.08),
                (x + 0.01, d / 2 + 0.01, hz + 0.08),
                metal,
                TEX_PLAIN,
            )
        )
    return parts, w / 2 + 0.01, d / 2 + 0.01


def _bookshelf_parts(b: _Builder):
    rng = b.rng
    w = rng.uniform(0.8, 1.2)
    d = rng.uniform(0.30, 0.38)
    h = rng.uniform(1.6, 2.0)
    t = 0.025
    col = b.color("bookshelf")
    parts = [
        ((-w / 2, -d / 2, 0.0), (-w / 2 + t, d / 2, h), col, TEX_WOOD),
        ((w / 2 - t, -d / 2, 0.0), (w / 2, d / 2, h), col, TEX_WOOD),
        ((-w / 2 + t, -d / 2, h - t), (w / 2 - t, d / 2, h), col, TEX_WOOD),
        ((-w / 2 + t, -d / 2, 0.0), (w / 2 - t, d / 2, 0.08), col, TEX_WOOD),
        ((-w / 2 + t, -d / 2, 0.08), (w / 2 - t, -d / 2 + 0.012, h - t), col, TEX_WOOD),
    ]
    n_shelves = int(rng.integers(3, 5))
    levels = np.linspace(0.08, h - t, n_shelves + 1)
    for z in levels[1:-1]:
        parts.append(
            ((-w / 2 + t, -d / 2 + 0.012, z - t / 2), (w / 2 - t, d / 2, z + t / 2), col, TEX_WOOD)
        )
    # books on some shelves (labelled bookshelf: they belong to the bookshelf segment)
    for k in range(n_shelves):
        if rng.random() < 0.35:
            continue
        z0 = levels[k] + (t / 2 if k > 0 else 0.0)
        gap = levels[k + 1] - (t / 2 if k + 1 < n_shelves else t) - z0
        x = -w / 2 + t + rng.uniform(0.0, 0.15)
        x_end = w / 2 - t - 0.01
        while True:
            bw = rng.uniform(0.02, 0.05)
            bh = min(gap - 0.02, rng.uniform(0.16, 0.28))
            bd = rng.uniform(0.14, min(0.24, d - 0.03))
            if x + bw > x_end or bh < 0.08 or rng.random() < 0.08:
                break
            if len(parts) > 22:
                break
            parts.append(
                (
                    (x, -d / 2 + 0.015, z0),
                    (x + bw, -d / 2 + 0.015 + bd, z0 + bh),
                    b.color("book"),
                    TEX_PLAIN,
                )
            )
            x += bw + (0.0 if rng.random() < 0.8 else rng.uniform(0.02, 0.1))
    return parts, w / 2, d / 2


@dataclass
class _Room:
    """A room under construction: its builder, interior size (metres) and walls
    (``(inward normal, centre, half size)`` each, in the order ``-x, +x, -y, +y``)."""

    b: _Builder
    lx: float
    ly: float
    walls: list

    def wall_frame(self, k: int):
        """``(inward normal, tangent, point on the wall surface, wall length)`` of wall ``k``."""
        n = np.array(self.walls[k][0])
        tangent = np.array([-n[1], n[0]])
        wall_pos = -n * np.array([self.lx / 2, self.ly / 2])  # point on the wall surface (room axis)
        length = self.ly if n[0] != 0 else self.lx
        return n, tangent, wall_pos, length

    def fits(self, fp: _Footprint) -> bool:
        """Whether ``fp`` lies inside the room and overlaps no placed footprint."""
        return _inside_room(fp, self.lx, self.ly) and not any(_overlap(fp, f) for f in self.b.footprints)

    def place_against_wall(self, parts_fn, name: str, tries: int = 40) -> bool:
        """Put the object made by ``parts_fn`` with its back to a random wall, facing the room."""
        b, rng = self.b, self.b.rng
        parts, hw, hd = parts_fn(b)
        for _ in range(tries):
            k = int(rng.integers(4))
            n, tangent, wall_pos, length = self.wall_frame(k)
            if length / 2 - hw - 0.05 <= 0:
                continue
            s = rng.uniform(-(length / 2 - hw - 0.05), length / 2 - hw - 0.05)
            origin = wall_pos + tangent * s + n * (hd + 0.01)
            yaw = _yaw_facing(n)
            fp = _footprint(origin, yaw, hw, hd)
            if not self.fits(fp):
                continue
            b.footprints.append(_footprint(origin, yaw, hw, hd, margin=0.04))
            b.add_parts(origin, yaw, parts, _CID[name], b.new_object(name))
            return True
        return False


def _add_shell(b: _Builder, lx: float, ly: float, H: float, T: float) -> list:
    """Floor, ceiling and four walls, ``T`` m thick, outside the interior; returns the walls."""
    rng = b.rng
    floor_tex = TEX_TILES if rng.random() < 0.4 else TEX_PLANKS
    oid = b.new_object("floor")
    b.add_world(
        (0, 0, -T / 2),
        (lx / 2 + T, ly / 2 + T, T / 2),
        0.0,
        _CID["floor"],
        oid,
        b.color("floor"),
        floor_tex,
    )
    oid = b.new_object("ceiling")
    b.add_world(
        (0, 0, H + T / 2),
        (lx / 2 + T, ly / 2 + T, T / 2),
        0.0,
        CEILING_CLASS,
        oid,
        b.color("ceiling"),
        TEX_WALL,
    )
    wall_col = b.color("wall")
    # walls: (inward normal, centre, half size)
    walls = [
        ((1.0, 0.0), (-lx / 2 - T / 2, 0.0), (T / 2, ly / 2 + T)),
        ((-1.0, 0.0), (lx / 2 + T / 2, 0.0), (T / 2, ly / 2 + T)),
        ((0.0, 1.0), (0.0, -ly / 2 - T / 2), (lx / 2 + T, T / 2)),
        ((0.0, -1.0), (0.0, ly / 2 + T / 2), (lx / 2 + T, T / 2)),
    ]
    for _, c, hs in walls:
        oid = b.new_object("wall")
        col = wall_col if rng.random() < 0.8 else b.color("wall")
        b.add_world(
            (c[0], c[1], H / 2), (hs[0], hs[1], H / 2 + T), 0.0, _CID["wall"], oid, col, TEX_WALL
        )
    return walls


def _add_door(room: _Room) -> None:
    """A door on a random wall; reserves a clearance zone in front of it."""
    b, rng = room.b, room.b.rng
    k = int(rng.integers(4))
    n, tangent, wall_pos, length = room.wall_frame(k)
    dw, dh = rng.uniform(0.80, 0.95), rng.uniform(2.0, 2.15)
    s = rng.uniform(-(length / 2 - dw / 2 - 0.2), length / 2 - dw / 2 - 0.2)
    origin = wall_pos + tangent * s
    yaw = _yaw_facing(n)
    door_col = b.color("door")
    hx = -1.0 if rng.random() < 0.5 else 1.0
    door_parts = [
        ((-dw / 2, -0.01, 0.0), (dw / 2, 0.03, dh), door_col, TEX_WOOD),
        (
            (hx * (dw / 2 - 0.1) - 0.06, 0.03, 0.93),
            (hx * (dw / 2 - 0.1) + 0.06, 0.08, 0.97),
            b.color("metal"),
            TEX_PLAIN,
        ),
    ]
    b.add_parts(origin, yaw, door_parts, _CID["door"], b.new_object("door"))
    b.footprints.append(_footprint(origin + n * 0.45, yaw, dw / 2 + 0.1, 0.45))


def _chair_slots(tw: float, td: float) -> list:
    """Candidate chair slots around a ``tw x td`` table: (side normal in the table frame,
    offset along the side, table half extent towards that side)."""
    slots = []
    for sy in (-1.0, 1.0):
        for off in (-tw / 4, tw / 4) if tw > 1.2 else (0.0,):
            slots.append((np.array([0.0, sy]), off, td / 2))
    for sx in (-1.0, 1.0):
        slots.append((np.array([sx, 0.0]), 0.0, tw / 2))
    return slots


def _add_chairs(room: _Room, tc: np.ndarray, tyaw: float, tw: float, td: float) -> None:
    """2-4 chairs facing the table at ``tc`` (yaw ``tyaw``), where they fit."""
    b, rng = room.b, room.b.rng
    R2 = _rot_z(tyaw)[:2, :2]
    slots = _chair_slots(tw, td)
    order = rng.permutation(len(slots))
    n_chairs = int(rng.integers(2, 5))
    placed = 0
    for j in order:
        if placed >= n_chairs:
            break
        side, off, half_ext = slots[j]
        parts, hw, hd = _chair_parts(b)
        side_w = R2 @ side
        along_w = R2 @ np.array([-side[1], side[0]])
        dist = half_ext + hd + rng.uniform(0.05, 0.2)
        origin = tc + side_w * dist + along_w * (off + rng.uniform(-0.05, 0.05))
        cyaw = _yaw_facing(-side_w) + rng.uniform(-0.25, 0.25)
        fp = _footprint(origin, cyaw, hw, hd)
        if not room.fits(fp):
            continue
        b.footprints.append(_footprint(origin, cyaw, hw, hd, margin=0.02))
        b.add_parts(origin, cyaw, parts, _CID["chair"], b.new_object("chair"))
        placed += 1


def _add_table_and_chairs(room: _Room) -> None:
    """A table near the room centre (random yaw) with chairs around it, if one fits."""
    b, rng = room.b, room.b.rng
    tw, td, th = rng.uniform(1.0, 1.6), rng.uniform(0.6, 0.9), rng.uniform(0.72, 0.78)
    tyaw = (
        rng.uniform(0.0, math.pi)
        if rng.random() < 0.5
        else rng.integers(2) * math.pi / 2 + rng.uniform(-0.15, 0.15)
    )
    for _ in range(20):
        tc = rng.uniform(-0.4, 0.4, size=2)
        table_ok = room.fits(_footprint(tc, tyaw, tw / 2, td / 2))
        if table_ok:
            break
    if table_ok:
        b.footprints.append(_footprint(tc, tyaw, tw / 2, td / 2, margin=0.03))
        b.add_parts(tc, tyaw, _table_parts(b, tw, td, th), _CID["table"], b.new_object("table"))
        _add_chairs(room, tc, tyaw, tw, td)


def _add_wall_furniture(room: _Room) -> None:
    """A sofa, 1-2 cabinets, usually a bookshelf and sometimes a lone chair against walls."""
    rng = room.b.rng
    room.place_against_wall(_sofa_parts, "sofa")
    for _ in range(int(rng.integers(1, 3))):
        room.place_against_wall(_cabinet_parts, "cabinet")
    if rng.random() < 0.85:
        room.place_against_wall(_bookshelf_parts, "bookshelf")
    if rng.random() < 0.5:  # a lone chair against a wall
        room.place_against_wall(lambda bb: _chair_parts(bb), "chair")


def _light_dirs(rng: np.random.Generator) -> np.ndarray:
    """(2, 3) unit directions towards the key light (35-65 deg elevation) and the fill light."""
    az = rng.uniform(0, 2 * math.pi)
    el = rng.uniform(math.radians(35), math.radians(65))
    key = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    fill = np.array([-key[0], -key[1], 0.3])
    fill /= np.linalg.norm(fill)
    return np.stack([key, fill])


def make_room(seed: int) -> Scene:
    """Generate a random furnished room, deterministically from ``seed``.

    The room interior is ``Lx x Ly x H`` with ``Lx, Ly ~ U(4, 6)`` m and
    ``H ~ U(2.5, 2.8)`` m, centred on the world origin with the floor top at
    ``z = 0`` (world frame z up). Floor, ceiling and walls are 10 cm thick
    boxes outside the interior. Furniture: a door on one wall, a table with
    2-4 chairs near the centre (random yaw), and a sofa, 1-2 cabinets and
    usually a bookshelf against the walls; footprints never overlap and stay
    inside the room; tall pieces (> 1.2 m) are only placed against walls.
    Colours are drawn per object from class-specific material lists with
    jitter; surfaces carry procedural textures (tiles/planks, wood grain,
    fabric, wall noise).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5CE7E]))
    b = _Builder(rng)
    lx, ly = rng.uniform(4.0, 6.0, size=2)
    H = rng.uniform(2.5, 2.8)
    room = _Room(b, lx, ly, _add_shell(b, lx, ly, H, T=0.1))
    _add_door(room)
    _add_table_and_chairs(room)
    _add_wall_furniture(room)
    return Scene(int(seed), np.array([lx, ly, H]), tuple(b.boxes), tuple(b.objects), _light_dirs(rng))


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_EPS_T = 1e-9


def _shade_texture(
    kind: int, p_local: np.ndarray, p_world: np.ndarray, seeds: np.ndarray
) -> np.ndarray:
    """Multiplicative brightness (N,) of texture ``kind`` at local points (N, 3)."""
    n = len(p_local)
    if n == 0:
        return np.ones(0)
    if kind == TEX_TILES:
        s = 0.5 + 0.2 * (seeds % 3)  # 0.5, 0.7 or 0.9 m tiles
        gx, gy = p_local[:, 0] / s, p_local[:, 1] / s
        fx, fy = gx - np.floor(gx), gy - np.floor(gy)
        checker = ((np.floor(gx) + np.floor(gy)) % 2) * 0.12 + 0.94
        grout = np.minimum(np.minimum(fx, 1 - fx), np.minimum(fy, 1 - fy)) * s < 0.004
        val = checker * (0.92 + 0.16 * _value_noise(p_local, 6.0, seeds))
        return np.where(grout, 0.6, val)
    if kind == TEX_PLANKS:
        pw = 0.15 + 0.02 * (seeds % 4)
        j = np.floor(p_local[:, 1] / pw)
        plank_len = 1.2
        shift = _hash01(j.astype(np.int64), seeds) * plank_len
        k = np.floor((p_local[:, 0] + shift) / plank_len)
        fy = p_local[:, 1] / pw - j
        fxp = (p_local[:, 0] + shift) / plank_len - k
        seam = (np.minimum(fy, 1 - fy) * pw < 0.003) | (
            np.minimum(fxp, 1 - fxp) * plank_len < 0.003
        )
        plank = 0.85 + 0.3 * _hash01(j.astype(np.int64), k.astype(np.int64), seeds)
        grain = 0.9 + 0.2 * _value_noise(p_local, np.array([2.0, 60.0, 60.0]), seeds)
        return np.where(seam, 0.55, plank * grain)
    if kind == TEX_WOOD:
        return 0.9 + 0.2 * _value_noise(p_local, np.array([3.0, 45.0, 45.0]), seeds)
    if kind == TEX_FABRIC:
        return (
            0.92
            + 0.08 * _value_noise(p_local, 40.0, seeds)
            + 0.05 * (_value_noise(p_local, 5.0, seeds + 1) - 0.5)
        )
    if kind == TEX_WALL:
        return (
            0.95
            + 0.06 * _value_noise(p_world, 2.5, seeds)
            + 0.03 * _value_noise(p_world, 30.0, seeds + 7)
        )
    return 0.96 + 0.06 * _value_noise(p_local, 20.0, seeds)


def _ray_directions(intrinsics: Sequence[float], Rwc: np.ndarray) -> np.ndarray:
    """(H, W, 3) world-frame ray directions through the pixel centres, scaled so that the
    optical-frame z component is 1 (the ray parameter t is then the depth z)."""
    fx, fy, cx, cy, width, height = intrinsics
    W, H = int(width), int(height)
    u = (np.arange(W, dtype=np.float64) - cx) / fx
    v = (np.arange(H, dtype=np.float64) - cy) / fy
    d_cam = np.empty((H, W, 3))
    d_cam[..., 0] = u[None, :]
    d_cam[..., 1] = v[:, None]
    d_cam[..., 2] = 1.0
    return d_cam @ Rwc.T  # (H, W, 3)


#: (8, 3) corner signs of a box, for screen-space culling
_CORNER_SIGNS = np.array(
    [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
)


def _screen_window(c, R, h, Rcw, t_cw, intrinsics) -> tuple[slice, slice] | None:
    """Pixel rows/columns ``(slice_v, slice_u)`` that box ``(c, R, h)`` can cover (whole image
    when it straddles the camera plane); None when it is behind the camera or off-screen."""
    fx, fy, cx, cy, width, height = intrinsics
    W, H = int(width), int(height)
    corners_c = (c + (_CORNER_SIGNS * h) @ R.T) @ Rcw.T + t_cw
    zc = corners_c[:, 2]
    if np.all(zc <= 0.0):
        return None  # entirely behind the camera
    if np.all(zc > 1e-6):
        us = fx * corners_c[:, 0] / zc + cx
        vs = fy * corners_c[:, 1] / zc + cy
        u0 = max(int(math.floor(us.min())) - 1, 0)
        u1 = min(int(math.ceil(us.max())) + 2, W)
        v0 = max(int(math.floor(vs.min())) - 1, 0)
        v1 = min(int(math.ceil(vs.max())) + 2, H)
        if u0 >= u1 or v0 >= v1:
            return None
    else:
        u0, u1, v0, v1 = 0, W, 0, H
    return slice(v0, v1), slice(u0, u1)


def _slab_entry_exit(D: list[np.ndarray], R: np.ndarray, h: np.ndarray, o_l: np.ndarray):
    """Slab-method entry and exit ray parameters ``(t_near, t_far)`` of rays with world
    directions ``D`` (x, y, z arrays) from box-local origin ``o_l`` into the box of
    rotation ``R`` and half extents ``h``; a ray hits when ``t_near <= t_far``."""
    tn = tf = None
    for j in range(3):  # slab of local axis j
        dl = None
        for k in range(3):
            if R[k, j] != 0.0:
                term = D[k] if R[k, j] == 1.0 else R[k, j] * D[k]
                dl = term if dl is None else dl + term
        inv = 1.0 / dl
        ta = (-h[j] - o_l[j]) * inv
        tb = (h[j] - o_l[j]) * inv
        lo, hi = np.minimum(ta, tb), np.maximum(ta, tb)
        tn = lo if tn is None else np.maximum(tn, lo)
        tf = hi if tf is None else np.minimum(tf, hi)
    return tn, tf


def _cast_rays(A: dict, T: np.ndarray, intrinsics: Sequence[float], d_world: np.ndarray):
    """Nearest hit per pixel: ``(best_t (H, W) float64 depth, inf where none; best_i (H, W)
    int64 box index, -1 where none)``."""
    H, W = d_world.shape[:2]
    Rwc, o = T[:3, :3], T[:3, 3]
    centers, rots, halfs = A["centers"], A["rotations"], A["half_sizes"]
    dxyz = [np.ascontiguousarray(d_world[..., k]) for k in range(3)]
    best_t = np.full((H, W), np.inf)
    best_i = np.full((H, W), -1, dtype=np.int64)
    Rcw, t_cw = Rwc.T, -Rwc.T @ o
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(len(centers)):
            c, R, h = centers[i], rots[i], halfs[i]
            sl = _screen_window(c, R, h, Rcw, t_cw, intrinsics)
            if sl is None:
                continue
            tn, tf = _slab_entry_exit([dk[sl] for dk in dxyz], R, h, R.T @ (o - c))
            upd = (tn <= tf) & (tn > _EPS_T) & (tn < best_t[sl])
            np.copyto(best_t[sl], tn, where=upd)
            np.copyto(best_i[sl], i, where=upd)
    return best_t, best_i


def _shade(scene: Scene, A: dict, idx: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lambertian key + fill shading times texture at world hit points ``p`` (N, 3) of
    boxes ``idx`` (N,): ``(rgb (N, 3) float in [0, ~1.1], face normals (N, 3))``."""
    centers, halfs = A["centers"], A["half_sizes"]
    Rb = A["rotations"][idx]
    p_l = np.einsum("nij,ni->nj", Rb, p - centers[idx])
    ratio = np.abs(p_l) / halfs[idx]
    axis = np.argmax(ratio, axis=1)
    sgn = np.sign(p_l[np.arange(len(idx)), axis])
    sgn[sgn == 0] = 1.0
    normal = Rb[np.arange(len(idx)), :, axis] * sgn[:, None]
    key, fill = scene.light_dirs
    shade = 0.38 + 0.5 * np.clip(normal @ key, 0, None) + 0.22 * np.clip(normal @ fill, 0, None)
    tex = np.ones(len(idx))
    kinds = A["textures"][idx]
    tseeds = A["texture_seeds"][idx]
    for kind in np.unique(kinds):
        m = kinds == kind
        tex[m] = _shade_texture(int(kind), p_l[m], p[m], tseeds[m])
    return A["colors"][idx] * (shade * tex)[:, None], normal


def _add_sensor_noise(color, depth, valid, normal, dv, noise_seed: int) -> np.ndarray:
    """Depth noise and drop-outs (in place on ``depth``) and colour noise (see :func:`render`);
    returns the noisy colour scaled to [0, 255]."""
    rng = np.random.default_rng(np.random.SeedSequence([int(noise_seed), 0xD3971]))
    z = depth[valid]
    z_noisy = z + rng.standard_normal(len(z)) * (1.2e-3 * z * z)
    cos_inc = np.abs(np.sum(normal * dv, axis=1)) / np.linalg.norm(dv, axis=1)
    drop = (rng.random(len(z)) < 0.005) | ((cos_inc < 0.12) & (rng.random(len(z)) < 0.5))
    depth[valid] = np.where(drop, 0.0, np.maximum(z_noisy, 0.0))
    return color * 255.0 + rng.standard_normal(color.shape) * 2.0


def render(
    scene: Scene,
    T_world_camera: np.ndarray,
    intrinsics: Sequence[float],
    noise: bool = False,
    noise_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast a view of ``scene``.

    Args:
        scene: from :func:`make_room`.
        T_world_camera: (4, 4) camera-to-world pose, camera in the REP-103
            optical frame (z forward, x right, y down), world z up, metres.
        intrinsics: ``(fx, fy, cx, cy, width, height)`` in pixels (an
            :class:`Intrinsics` or any 6-sequence).
        noise: if True, add sensor-like noise: depth gets Gaussian noise with
            sigma = 1.2e-3 * z^2 m, 0.5 % of pixels and ~50 % of grazing-angle
            pixels (|cos| < 0.12) are dropped (depth 0), and colour gets
            Gaussian noise (sigma 2 grey levels). Labels stay exact.
        noise_seed: seed of the noise RNG (same seed -> identical output).

    Returns:
        color: (H, W, 3) uint8 RGB, Lambertian-shaded textured surfaces.
        depth: (H, W) float32, optical-frame z of the nearest hit in metres;
            0 where nothing is hit (or dropped by noise).
        labels: (H, W) uint16 class ids (index into ``CLASS_NAMES``) of the
            nearest hit, 0 where nothing is hit; labels do not depend on noise.

    Every pixel ray (through the pixel centre) is intersected with every box
    by the slab method (boxes whose projection misses the image are culled),
    nearest hit wins.
    """
    T = np.asarray(T_world_camera, dtype=np.float64)
    o = T[:3, 3]
    A = scene.arrays()
    d_world = _ray_directions(intrinsics, T[:3, :3])
    best_t, best_i = _cast_rays(A, T, intrinsics, d_world)

    valid = best_i >= 0
    depth = np.where(valid, best_t, 0.0)
    labels = np.where(valid, A["class_ids"][np.maximum(best_i, 0)], 0).astype(np.uint16)

    color = np.zeros(d_world.shape)
    dv = d_world[valid]
    p = o + depth[valid][:, None] * dv
    color[valid], normal = _shade(scene, A, best_i[valid], p)
    if noise:
        color = _add_sensor_noise(color, depth, valid, normal, dv, noise_seed)
    else:
        color = color * 255.0
    color_u8 = np.clip(np.rint(color), 0, 255).astype(np.uint8)
    return color_u8, depth.astype(np.float32), labels


# --------------------------------------------------------------------------
# Trajectory
# --------------------------------------------------------------------------


def _distance_to_boxes(p: np.ndarray, scene: Scene) -> float:
    A = scene.arrays()
    p_l = np.einsum("bij,bi->bj", A["rotations"], p[None, :] - A["centers"])
    q = np.maximum(np.abs(p_l) - A["half_sizes"], 0.0)
    return float(np.linalg.norm(q, axis=1).min())


def camera_trajectory(
    scene: Scene,
    num_frames: int,
    seed: int = 0,
    arc_degrees: float | None = None,
    clearance: float = 0.3,
) -> list[np.ndarray]:
    """Smooth camera path inside ``scene``: camera-to-world poses.

    The camera moves on an elliptical arc around the room centre, about
    0.95-1.15 m from the walls, at 1.3-1.6 m height with a gentle height
    wobble, looking across the room at a point slightly beyond the centre at
    0.6-0.9 m height (so slightly downward, ~15-25 deg). The arc spans
    ``arc_degrees`` (default ``min(150, 8 * (N-1))`` deg, i.e. 8 deg per frame)
    so consecutive frames overlap strongly. The path is shrunk towards the
    centre if needed so every camera centre is at least ``clearance`` m from
    every box.

    Returns:
        ``num_frames`` (4, 4) float64 ``T_world_camera`` matrices (optical
        camera frame, world z up, metres).
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    rng = np.random.default_rng(np.random.SeedSequence([int(scene.seed), int(seed), 0x7A1]))
    lx, ly, room_h = scene.room_size
    margin = rng.uniform(0.95, 1.15)
    scale = 1.0
    ax_x, ax_y = max(lx / 2 - margin, 0.3), max(ly / 2 - margin, 0.3)
    h0 = rng.uniform(1.3, min(1.6, room_h - 0.5))
    phase0 = rng.uniform(0, 2 * math.pi)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    span = math.radians(min(150.0, 8.0 * (num_frames - 1)) if arc_degrees is None else arc_degrees)
    look_z = rng.uniform(0.6, 0.9)
    beyond = rng.uniform(0.2, 0.5)
    wob = rng.uniform(0, 2 * math.pi, size=3)
    s = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    angles = phase0 + direction * span * s

    for _ in range(30):
        eyes = [
            np.array(
                [
                    scale * ax_x * math.cos(a),
                    scale * ax_y * math.sin(a),
                    h0 + 0.08 * math.sin(2 * math.pi * si + wob[0]),
                ]
            )
            for a, si in zip(angles, s)
        ]
        if all(_distance_to_boxes(e, scene) >= clearance for e in eyes):
            break
        scale *= 0.9
    poses = []
    for si, eye in zip(s, eyes):
        target = np.array(
            [
                -beyond * eye[0] + 0.2 * math.sin(2 * math.pi * si + wob[1]),
                -beyond * eye[1] + 0.2 * math.sin(2 * math.pi * si + wob[2]),
                look_z,
            ]
        )
        poses.append(look_at(eye, target))
    return poses


# --------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """(H, W) float metres -> (H, W) uint16 millimetres (rounded; 0 = invalid,
    non-finite, non-positive or beyond 65.535 m)."""
    from concerto_ros.recordings.rgbd_folder import depth_to_units

    return depth_to_units(depth, 1000.0)


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer class ids -> (H, W, 3) uint8 RGB using ``PALETTE``
    (ids outside the table map to black)."""
    lab = np.asarray(labels).astype(np.int64)
    ok = (lab >= 0) & (lab < len(PALETTE))
    return np.where(ok[..., None], PALETTE[np.where(ok, lab, 0)], 0).astype(np.uint8)


def generate_sequence(
    seed: int = 0,
    num_frames: int = 12,
    width: int = 320,
    height: int = 240,
    fx: float | None = None,
    fy: float | None = None,
    noise: bool = True,
    arc_degrees: float | None = None,
) -> Iterator[Frame]:
    """Yield the frames of the demo sequence for ``seed`` (the same frames that
    :func:`write_sequence` writes). Frame ``i`` uses noise seed
    ``seed * 100003 + i``. Intrinsics: :func:`default_intrinsics`; ``arc_degrees``: see
    :func:`camera_trajectory` (e.g. 720 for two laps that revisit every place)."""
    scene = make_room(seed)
    K = default_intrinsics(width, height, fx, fy)
    for i, T in enumerate(camera_trajectory(scene, num_frames, seed, arc_degrees=arc_degrees)):
        color, depth, labels = render(scene, T, K, noise=noise, noise_seed=int(seed) * 100003 + i)
        yield Frame(color, depth, labels, T)


def write_sequence(
    output_dir: str | Path,
    seed: int = 0,
    num_frames: int = 12,
    width: int = 320,
    height: int = 240,
    fx: float | None = None,
    noise: bool = True,
    fy: float | None = None,
    rate_hz: float = 5.0,
    arc_degrees: float | None = None,
) -> Path:
    """Render a demo sequence and write it in the RGB-D folder format
    (:class:`~concerto_ros.recordings.rgbd_folder.RgbdFolderWriter`).

    Writes under ``output_dir``: ``color/%06d.png`` (8-bit, BGR on disk),
    ``depth/%06d.png`` (uint16 mm, 0 = invalid), ``labels/%06d.png`` (uint16 class
    ids), ``poses.txt`` (``tx ty tz qx qy qz qw`` camera-to-world, optical frame,
    metres) and ``camera.yaml`` (fx, fy, cx, cy, width, height, depth_scale=1000,
    rate_hz, class_names, palette, seed, num_frames, generator). ``fx`` defaults to
    ``525 * width / 640``; ``arc_degrees`` as :func:`camera_trajectory`. Frames of an
    earlier run that this one does not write
    again are removed. Output is byte-identical for identical arguments.

    Returns:
        The output directory as a Path.
    """
    from concerto_ros.recordings.rgbd_folder import RgbdFolderWriter
    from concerto_ros.sensors.types import CameraIntrinsics

    K = default_intrinsics(width, height, fx, fy)
    extra = {"class_names": list(CLASS_NAMES), "palette": [[int(c) for c in row] for row in PALETTE],
             "seed": int(seed), "num_frames": int(num_frames), "generator": "concerto_ros.demo.scene"}
    intr = CameraIntrinsics(fx=K.fx, fy=K.fy, cx=K.cx, cy=K.cy, width=K.width, height=K.height)
    with RgbdFolderWriter(output_dir, intr, depth_scale=1000, rate_hz=rate_hz, extra=extra, overwrite=True) as out:
        for fr in generate_sequence(seed, num_frames, width, height, fx, fy, noise, arc_degrees=arc_degrees):
            out.write(fr.color, fr.depth, fr.T_world_camera, labels=fr.labels)
    return out.root
