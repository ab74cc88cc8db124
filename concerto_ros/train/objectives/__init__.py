"""Self-supervised objectives of ``concerto train ssl``, selectable and combinable with
``ssl.objective`` (names joined by ``+``, e.g. ``concerto+msm``):

* ``concerto`` (:mod:`.concerto`): 3D self-distillation across augmented views plus the 2D-3D
  joint embedding of a frozen image model's patch features (Concerto, arXiv 2510.23607);
* ``msm`` (:mod:`.msm`): Masked Scene Modeling -- the student predicts the EMA teacher's
  features of block-masked voxels at every encoder level, deepest first (arXiv 2504.06719);
* ``pointcsp`` (:mod:`.pointcsp`): cross-sample semantic propagation -- a gated delta-rule
  recurrence over the batch's features laid end to end before the distillation head, plus a
  geometric reconstruction term (arXiv 2605.01759).

The DINO-style distillation they share (prototype head, centred and sharpened teacher,
cross-entropy) is :mod:`.distill`.
"""

from __future__ import annotations

OBJECTIVES = ("concerto", "msm", "pointcsp")

__all__ = ["OBJECTIVES", "parse_objective"]


def parse_objective(text: str) -> tuple[str, ...]:
    """``"concerto+msm"`` -> ``("concerto", "msm")`` (in :data:`OBJECTIVES` order, no repeats).

    Raises:
        ValueError: an empty or unknown name.
    """
    names = [t.strip() for t in str(text).split("+") if t.strip()]
    bad = [n for n in names if n not in OBJECTIVES]
    if not names or bad:
        raise ValueError(f"ssl.objective '{text}': expected names from {list(OBJECTIVES)} joined by '+' "
                         f"(e.g. concerto+msm){'; unknown: ' + str(bad) if bad else ''}")
    return tuple(n for n in OBJECTIVES if n in names)
