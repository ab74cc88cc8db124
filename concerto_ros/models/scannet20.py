"""The 20 ScanNet benchmark classes ("ScanNet-20") in label order.

The order is Pointcept's ``ScanNetDataset`` / ``scannet`` configs (Dai et al., "ScanNet",
CVPR 2017, benchmark label set; valid NYU40 ids 1 2 3 4 5 6 7 8 9 10 11 12 14 16 24 28 33
34 36 39 mapped to 0..19), which is the label order of Concerto's released linear-probe head
``concerto_large_linear_prob_head_sc.pth`` (``num_classes: 20``, 1728-d all-levels input of
``concerto_large``; Zhang et al., arXiv 2510.23607).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["SCANNET20_CLASS_NAMES", "CLASS_NAME_SETS", "resolve_class_names"]

#: label ``i`` of a ScanNet-20 head is ``SCANNET20_CLASS_NAMES[i]``
SCANNET20_CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain",
    "toilet", "sink", "bathtub", "other furniture",
)

#: named class lists accepted as the one-element shorthand ``head.class_names: [scannet20]``
#: (or the string ``scannet20``)
CLASS_NAME_SETS: dict[str, tuple[str, ...]] = {"scannet20": SCANNET20_CLASS_NAMES}


def resolve_class_names(names: Sequence[str] | str | None) -> list[str] | None:
    """Expand a class-name setting.

    Args:
        names: a list of class names, a named set (``"scannet20"`` or ``["scannet20"]``),
            or ``None``.

    Returns:
        The class names as a list (``None`` stays ``None``).
    """
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    names = [str(n) for n in names]
    if len(names) == 1 and names[0].lower() in CLASS_NAME_SETS:
        return list(CLASS_NAME_SETS[names[0].lower()])
    return names
