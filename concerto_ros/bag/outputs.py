"""Write the results of a replay: a labelled PLY, a PNG rendering and a JSON summary.

Used by offline replay, live replay (from the clouds the node published) and the demo,
so all three leave the same files behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

#: display colours (RGB) per label index; cycles for more classes
PALETTE = np.array([
    [120, 120, 120], [152, 223, 138], [174, 199, 232], [255, 127, 14], [214, 39, 40],
    [148, 103, 189], [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207],
    [31, 119, 180], [255, 187, 120], [44, 160, 44], [197, 176, 213], [196, 156, 148],
    [247, 182, 210], [219, 219, 141], [158, 218, 229], [57, 59, 121], [82, 84, 163],
], dtype=np.uint8)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """``(N, 3) uint8`` display colour of each label in ``(N,)`` (palette cycles)."""
    return PALETTE[np.asarray(labels, dtype=np.int64) % len(PALETTE)]


def write_ply(path: str | Path, coord: np.ndarray, color: np.ndarray, labels: np.ndarray | None = None,
              confidence: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY with ``x y z`` (float32, metres), ``red green blue`` (uint8)
    and, when given, ``label`` (int32) and ``confidence`` (float32) vertex properties.

    Raises:
        ValueError: arrays of different lengths.
    """
    from plyfile import PlyData, PlyElement

    coord = np.asarray(coord, dtype=np.float32)
    n = len(coord)
    dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if labels is not None:
        dtype.append(("label", "i4"))
    if confidence is not None:
        dtype.append(("confidence", "f4"))
    v = np.empty(n, dtype=dtype)
    for name, arr in (("color", color), ("labels", labels), ("confidence", confidence)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but coord has {n}")
    v["x"], v["y"], v["z"] = coord[:, 0], coord[:, 1], coord[:, 2]
    color = np.asarray(color, dtype=np.uint8)
    v["red"], v["green"], v["blue"] = color[:, 0], color[:, 1], color[:, 2]
    if labels is not None:
        v["label"] = labels
    if confidence is not None:
        v["confidence"] = confidence
    path = Path(path)
    PlyData([PlyElement.describe(v, "vertex")], byte_order="<").write(str(path))
    return path


def render_png(path: str | Path, coord: np.ndarray, color: np.ndarray, labels: np.ndarray,
               class_names: list[str], feature_colors: np.ndarray | None = None,
               title: str = "", gt_labels: np.ndarray | None = None) -> Path:
    """Plan views of the labelled window, one panel per colouring.

    The view looks along the axis of least extent of the cloud (the vertical of a room,
    whatever the fixed frame's convention), onto its two principal axes, in metres.
    Panels: input colour, predicted labels (with a legend of the classes present),
    optionally ground-truth labels and the PCA-coloured features. Points nearer the
    viewer are drawn last.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = [("input colour", color), ("predicted labels", label_colors(labels))]
    if gt_labels is not None:
        panels.append(("ground-truth labels", label_colors(gt_labels)))
    if feature_colors is not None:
        panels.append(("features (PCA)", feature_colors))
    uvw = plan_coordinates(coord)
    order = np.argsort(uvw[:, 2], kind="stable")
    span = np.ptp(uvw[:, :2], axis=0) if len(uvw) else np.ones(2)
    aspect = float(np.clip(span[1] / max(span[0], 1e-6), 0.3, 1.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2 * aspect + 1.0), squeeze=False)
    size = max(0.3, min(4.0, 4e4 / max(len(coord), 1)))
    for ax, (name, c) in zip(axes[0], panels):
        ax.scatter(uvw[order, 0], uvw[order, 1], c=np.asarray(c)[order] / 255.0, s=size, linewidths=0)
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.set_xlabel("principal axis 1 [m]")
        ax.set_ylabel("principal axis 2 [m]")
    present = np.unique(labels)
    handles = [Patch(color=PALETTE[i % len(PALETTE)] / 255.0,
                     label=class_names[i] if i < len(class_names) else str(i)) for i in present]
    axes[0][1].legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plan_coordinates(coord: np.ndarray) -> np.ndarray:
    """``(N, 3)`` coordinates in the cloud's principal axes (largest extent first), centred,
    metres; the third axis is the one of least variance (the vertical of a room scan)."""
    c = np.asarray(coord, dtype=np.float64)
    if len(c) < 3:
        return c - c.mean(0) if len(c) else c
    centred = c - c.mean(0)
    _, vecs = np.linalg.eigh(np.cov(centred[:: max(1, len(c) // 50000)].T))
    axes = vecs[:, ::-1]
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])  # right-handed
    return centred @ axes


def write_results(out_dir: str | Path, coord: np.ndarray, color: np.ndarray, labels: np.ndarray,
                  confidence: np.ndarray, class_names: list[str], summary: dict[str, Any],
                  feature_colors: np.ndarray | None = None, stem: str = "window",
                  gt_labels: np.ndarray | None = None) -> dict[str, Path]:
    """Write ``<stem>.ply``, ``<stem>.png`` and ``summary.json`` into ``out_dir``.

    ``summary`` is extended with point counts and the label histogram by class name.

    Returns:
        ``{"ply": path, "png": path, "json": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    summary = dict(summary)
    summary.setdefault("num_points", int(len(coord)))
    summary["label_histogram"] = {class_names[i] if i < len(class_names) else str(i): int(c)
                                  for i, c in enumerate(counts) if c}
    if len(confidence):
        summary["mean_confidence"] = float(np.mean(confidence))
    paths = {
        "ply": write_ply(out / f"{stem}.ply", coord, color, labels, confidence),
        "png": render_png(out / f"{stem}.png", coord, color, labels, class_names, feature_colors,
                          title=summary.get("title", ""), gt_labels=gt_labels),
    }
    summary["files"] = {k: str(v) for k, v in paths.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    paths["json"] = out / "summary.json"
    return paths


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o)}")
