"""Embedded demo data: procedural RGB-D room sequences with ground-truth labels."""

from concerto_ros.demo.scene import (
    CLASS_NAMES,
    PALETTE,
    Box,
    Frame,
    Intrinsics,
    Scene,
    camera_trajectory,
    colorize_labels,
    default_intrinsics,
    depth_to_mm,
    generate_sequence,
    look_at,
    make_room,
    render,
    write_sequence,
)

__all__ = [
    "CLASS_NAMES",
    "PALETTE",
    "Box",
    "Frame",
    "Intrinsics",
    "Scene",
    "camera_trajectory",
    "colorize_labels",
    "default_intrinsics",
    "depth_to_mm",
    "generate_sequence",
    "look_at",
    "make_room",
    "render",
    "write_sequence",
]
