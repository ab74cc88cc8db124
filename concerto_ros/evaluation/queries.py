"""``concerto eval queries``: how well free-text queries find the classes of a labelled recording.

The recording goes through the node's pipeline (with its translator and text encoder, the
ones ``~/query`` uses); every window scored -- the last window of a sequence, every scene of
a scene collection -- holds per-voxel text embeddings and ground-truth voxel labels (the
majority label of each voxel's points). For each class of the ``names`` label set present
in the ground truth, its name and each of its synonyms are queried
(:class:`~concerto_ros.language.query.TextQueryScorer`, LERF relevance against the
configured negatives); the voxels are ranked by the relevance logit
(:func:`~concerto_ros.language.query.relevance_margin`, which does not saturate) and
scored against the class's voxels:

* precision of the top-``k`` voxels (share of the class among them);
* ROC AUC (probability that a voxel of the class ranks above one of another class;
  0.5 = chance).

Figures are averaged over the windows in which the class has at least ``min_voxels``
voxels; ``mean_precision_names`` / ``mean_precision_synonyms`` average over the queries.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

__all__ = ["evaluate_queries", "score_window"]


def score_window(language, emb: np.ndarray, gt: np.ndarray, gt_names, names_set, k: int = 100,
                 min_voxels: int = 1) -> list[dict]:
    """Query every class of ``names_set`` present in one window.

    Args:
        language: the pipeline's :class:`~concerto_ros.pipeline.LanguageModels`.
        emb: ``(M, D)`` voxel text embeddings.
        gt: ``(M,)`` ground-truth class indices into ``gt_names`` (``-1`` ignored).
        gt_names: the ground truth's class names.
        names_set: the :class:`~concerto_ros.recordings.LabelSet` whose classes (and
            synonyms) are queried; matched to ``gt_names`` case-insensitively.
        k: top-``k`` size; min_voxels: fewer voxels of a class: not queried here.

    Returns:
        One ``{"text", "class", "synonym", "precision_at_k", "auc", "targets", "k"}`` per query.
    """
    from concerto_ros.demo.evaluate import query_ranking
    from concerto_ros.language.query import relevance_margin

    scorer, te = language.scorer, language.text_encoder
    keep = gt >= 0
    emb, gt = emb[keep], gt[keep]
    lower = [n.lower() for n in gt_names]
    rows = []
    for cls in names_set.classes:
        if cls.lower() not in lower:
            continue
        target = gt == lower.index(cls.lower())
        if int(target.sum()) < max(1, min_voxels):
            continue
        for text in (cls, *names_set.synonyms.get(cls, ())):
            qr = scorer.score(emb, text, k=k)
            negs = te.encode(list(qr.negatives)) if qr.negatives else None
            margin = relevance_margin(emb, te.encode_one(qr.text), negs, scorer.temperature)
            r = query_ranking(qr.relevance if margin is None else margin, target, k=k)
            rows.append({"text": text, "class": cls, "synonym": text != cls, "precision_at_k": r["precision_at_k"],
                         "auc": r["auc"], "targets": r["targets"], "k": r["k"]})
    return rows


def _mean(rows: list[dict], key: str, synonym: bool) -> float | None:
    vals = [r[key] for r in rows if r["synonym"] == synonym and r[key] is not None and np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else None


class YawAverage:
    """Rotation test-time augmentation of one scored window: the unit text embeddings of the
    same scene encoded at other yaws, averaged per voxel of the first (unrotated) encoding and
    renormalised (the protocol of Pointcept's semantic-segmentation testing, which averages
    the predictions of rotated copies about the up axis).

    A voxel of another encoding is matched by its representative point rotated back into the
    first encoding's frame and voxelized there; under a right-angle yaw about the origin the
    voxel grid maps onto itself, so every voxel holds the same points in every copy and the
    average over ``n`` yaws ``360 / n`` degrees apart is the same for data rotated by any
    multiple of ``360 / n`` degrees (for ``n`` = 4: 90, 180, 270).

    Args:
        coord: ``(M, 3) float32`` the first encoding's voxel representatives (metres).
        labels: ``(M,)`` their ground truth. emb: ``(M, D) float32`` unit embeddings.
        voxel_size: the window's voxel edge (metres).
    """

    def __init__(self, coord: np.ndarray, labels: np.ndarray, emb: np.ndarray, voxel_size: float):
        from concerto_ros.mapping.keys import pack_keys, voxel_indices

        self.voxel_size, self.labels = float(voxel_size), labels
        keys = pack_keys(voxel_indices(coord, self.voxel_size, owner="yaw average"))
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]
        self._sum = np.array(emb, dtype=np.float32)  # a copy: the window's own array stays as it is
        self._count = np.ones(len(keys), dtype=np.int64)
        self._pack, self._indices = pack_keys, voxel_indices

    def add(self, coord: np.ndarray, emb: np.ndarray, back: np.ndarray) -> int:
        """Add an encoding of the scene rotated by ``back``'s inverse: ``coord (M', 3)`` its
        voxel representatives, ``emb (M', D)`` their embeddings, ``back (4, 4)`` the rotation
        into the first encoding's frame. Returns how many of its voxels matched one."""
        pts = coord.astype(np.float64) @ back[:3, :3].T + back[:3, 3]
        keys = self._pack(self._indices(pts, self.voxel_size, owner="yaw average"))
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        hit = self._keys[pos] == keys
        rows = self._order[pos[hit]]
        np.add.at(self._sum, rows, emb[hit])
        np.add.at(self._count, rows, 1)
        return int(hit.sum())

    def embeddings(self) -> np.ndarray:
        """``(M, D) float32`` the averaged embeddings, unit norm."""
        out = self._sum / np.maximum(np.linalg.norm(self._sum, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


def evaluate_queries(cfg, sources: Iterable[Any], names: Any = None, k: int = 100, yaw_deg: float = 0.0,
                     up: str = "z", scenes: str = "auto", min_voxels: int = 20, progress: bool = True,
                     log: Callable[[str], Any] | None = print, tta_yaws: int = 1) -> dict:
    """Run the pipeline over labelled ``sources`` and score text queries (module docstring).

    Args:
        cfg: the node's config; its models must include a translator (a bundle's, or
            ``language.translator``).
        sources: labelled sources (:func:`concerto_ros.evaluation.run.open_labelled`).
        names: label set whose class names and synonyms are queried (a built-in name, a YAML
            file, a list); ``None``: each source's own label set.
        k: top-``k`` of the precision; yaw_deg, up, scenes: as
            :func:`~concerto_ros.evaluation.run.evaluate`.
        min_voxels: a class with fewer ground-truth voxels in a window is not queried there.
        tta_yaws: rotation test-time augmentation: each source is also encoded rotated by
            ``360 * i / tta_yaws`` degrees about ``up`` (i = 1 .. tta_yaws - 1) and the text
            embeddings are averaged per voxel (:class:`YawAverage`); 1 = off. Costs
            ``tta_yaws`` times the pipeline time.

    Returns:
        ``{"mean_precision_names", "mean_precision_synonyms", "mean_auc_names",
        "mean_auc_synonyms", "k", "queries": [per text: class, synonym, precision_at_k, auc
        (means over windows), windows], "windows", "model", "yaw_deg", ...}``.

    Raises:
        ValueError: no translator, a source without labels or label set.
        concerto_ros.recordings.RecordingError: an unreadable source or label set.
    """
    import copy

    from concerto_ros.augment import yaw_transform
    from concerto_ros.evaluation.run import describe_models
    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.sensors.skips import SkipCounter

    t0 = time.perf_counter()
    pipeline = PerceptionPipeline(copy.deepcopy(cfg), log=log)
    if pipeline.language is None:
        raise ValueError("the models have no translator: give a bundle with one (concerto train translator) or "
                         "language.translator")
    if int(tta_yaws) < 1:
        raise ValueError(f"tta_yaws must be >= 1 (1 = no test-time augmentation), got {tta_yaws}")
    transform = yaw_transform(yaw_deg, up) if yaw_deg else None
    tta = [yaw_transform(360.0 * i / int(tta_yaws), up) for i in range(1, int(tta_yaws))]
    skips = SkipCounter(log, period_s=cfg.skip_log_period)
    per_text: dict[str, list[dict]] = {}
    windows = 0
    for src in sources:
        windows += _score_source(pipeline, src, names, per_text, skips, log, scenes, transform, k, min_voxels, tta)
    rows = _mean_over_windows(per_text)
    return {"mean_precision_names": _mean(rows, "precision_at_k", False),
            "mean_precision_synonyms": _mean(rows, "precision_at_k", True),
            "mean_auc_names": _mean(rows, "auc", False), "mean_auc_synonyms": _mean(rows, "auc", True),
            "k": int(k), "queries": rows, "windows": windows, "model": describe_models(pipeline),
            "text_encoder": pipeline.language.text_encoder.name, "negatives": list(pipeline.language.scorer.negatives),
            "yaw_deg": float(yaw_deg), "up": str(up), "tta_yaws": int(tta_yaws), "skipped": skips.as_dict(),
            "wall_s": time.perf_counter() - t0}


def _score_source(pipeline, src, names, per_text: dict[str, list[dict]], skips, log, scenes: str, transform,
                  k: int, min_voxels: int, tta: list[np.ndarray] = ()) -> int:
    """Run one labelled source through ``pipeline`` and append the :func:`score_window` rows
    of its scored windows to ``per_text[text]``, the embeddings averaged over the ``tta``
    rotations (:class:`YawAverage`) when given; returns the windows scored."""
    from concerto_ros.evaluation.run import open_labelled
    from concerto_ros.recordings import load_label_set

    rec = open_labelled(src)
    gts = rec.label_set
    names_set = load_label_set(names) if names is not None else gts
    windows = _scored_windows(pipeline, rec, skips, log, scenes, transform)  # scored as they come without tta
    if len(tta):  # every window is kept until each rotation has been added
        windows = [YawAverage(c, y, e, pipeline.cfg.window.voxel_size) for c, y, e in windows]
        for R in tta:
            rotated = list(_scored_windows(pipeline, rec, skips, log, scenes,
                                           R if transform is None else R @ transform))
            if len(rotated) != len(windows):
                raise ValueError(f"{rec.path}: {len(rotated)} windows scored rotated, {len(windows)} unrotated")
            for avg, (c, _y, e) in zip(windows, rotated):
                avg.add(c, e, np.linalg.inv(R))
        windows = [(None, avg.labels, avg.embeddings()) for avg in windows]
    n = 0
    for _c, labels, emb in windows:
        n += 1
        for row in score_window(pipeline.language, emb, labels, gts.classes, names_set, k=k, min_voxels=min_voxels):
            per_text.setdefault(row["text"], []).append(row)
    return n


def _scored_windows(pipeline, rec, skips, log, scenes: str, transform) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]]:
    """``(coord (M, 3), labels (M,), text embeddings (M, D))`` of each window scored in one
    pass over ``rec`` (pipeline reset first): every keyframe window of a scene collection,
    else the last one; windows without labels or embeddings are left out."""
    from concerto_ros.bag.replay import process_frames
    from concerto_ros.evaluation.run import is_scene_collection, source_frames

    pipeline.reset()
    frames, _total = source_frames(rec, pipeline.cfg, pipeline, skips, log, scenes, transform)
    keep = lambda r: r.window.labels is not None and r.text_embeddings is not None  # noqa: E731
    independent = is_scene_collection(rec, scenes)
    last = None
    for _frame, result in process_frames(pipeline, frames, skips):
        if result is None:  # not a keyframe
            continue
        if independent and keep(result):
            yield result.coord, result.window.labels, result.text_embeddings
        last = result
    if last is not None and not independent and keep(last):
        yield last.coord, last.window.labels, last.text_embeddings


def _mean_over_windows(per_text: dict[str, list[dict]]) -> list[dict]:
    """One row per query text: precision_at_k and AUC averaged over its windows (AUC: None
    when no window has a finite one), targets summed, ``windows`` counted."""
    rows = []
    for text, hits in per_text.items():
        rows.append({"text": text, "class": hits[0]["class"], "synonym": hits[0]["synonym"], "k": hits[0]["k"],
                     "precision_at_k": float(np.mean([h["precision_at_k"] for h in hits])),
                     "auc": float(np.nanmean([h["auc"] for h in hits])) if any(np.isfinite(h["auc"]) for h in hits)
                     else None,
                     "targets": int(sum(h["targets"] for h in hits)), "windows": len(hits)})
    return rows
