"""NYU Depth v2 40-class label set (as used by ScanNet's ``nyu40id``) and evaluation synonyms.

Names follow the NYU40 list of Gupta et al. (CVPR 2013) used by ScanNet (Dai et al., CVPR
2017) in ``scannetv2-labels.combined.tsv``; id 0 means unannotated. ``otherstructure`` /
``otherfurniture`` / ``otherprop`` are written as separate words so a text encoder reads them.
"""

from __future__ import annotations

__all__ = ["NYU40_CLASS_NAMES", "SCANNET20_NYU40_IDS", "SYNONYMS", "nyu40_name"]

#: NYU40 id -> class name (ids 1..40)
NYU40_CLASS_NAMES: dict[int, str] = {
    1: "wall", 2: "floor", 3: "cabinet", 4: "bed", 5: "chair", 6: "sofa", 7: "table", 8: "door",
    9: "window", 10: "bookshelf", 11: "picture", 12: "counter", 13: "blinds", 14: "desk",
    15: "shelves", 16: "curtain", 17: "dresser", 18: "pillow", 19: "mirror", 20: "floor mat",
    21: "clothes", 22: "ceiling", 23: "books", 24: "refrigerator", 25: "television", 26: "paper",
    27: "towel", 28: "shower curtain", 29: "box", 30: "whiteboard", 31: "person", 32: "night stand",
    33: "toilet", 34: "sink", 35: "lamp", 36: "bathtub", 37: "bag", 38: "other structure",
    39: "other furniture", 40: "other prop",
}

#: the NYU40 ids of the 20 ScanNet benchmark classes, in benchmark order
SCANNET20_NYU40_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)

#: class name -> synonyms that are NOT the class name (for open-vocabulary evaluation)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "wall": ("partition wall",),
    "floor": ("ground", "flooring"),
    "cabinet": ("cupboard",),
    "bed": ("mattress",),
    "chair": ("seat",),
    "sofa": ("couch",),
    "table": ("dining table",),
    "door": ("doorway",),
    "window": ("windowpane",),
    "desk": ("writing table", "workstation"),
    "shelves": ("shelf", "bookcase"),
    "curtain": ("drapes",),
    "pillow": ("cushion",),
    "mirror": ("looking glass",),
    "ceiling": ("roof",),
    "refrigerator": ("fridge",),
    "television": ("tv",),
    "night stand": ("bedside table",),
    "toilet": ("lavatory",),
    "sink": ("washbasin",),
    "bathtub": ("tub",),
    "counter": ("countertop",),
}


def nyu40_name(nyu40_id: int) -> str:
    """Class name of a NYU40 id (1..40).

    Raises:
        KeyError: id outside 1..40 (0 is "unannotated" and has no class).
    """
    try:
        return NYU40_CLASS_NAMES[int(nyu40_id)]
    except KeyError:
        raise KeyError(f"NYU40 id {nyu40_id} is not a class (valid: 1..40; 0 = unannotated)") from None
