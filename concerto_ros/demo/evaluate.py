"""How well a model configuration labels and answers queries on a labelled RGB-D sequence.

Used by ``scripts/make_default_bundle.py`` (the embedded default bundle's report on the
demo's own scene) and by the tests of that bundle. The sequence goes through the node's
:class:`~concerto_ros.pipeline.PerceptionPipeline` frame by frame (the folder walk of
:func:`concerto_ros.train.translator.collect_features`); the last window is scored:

* labels: the pipeline's labels against the window's voxel labels (the majority label of
  each voxel's points), classes matched by name (:func:`concerto_ros.demo.run.ground_truth_scores`);
* queries: for each text, :meth:`PerceptionPipeline.query` over the window, and how well its
  relevance separates the voxels of the class of that name from the rest
  (:func:`query_ranking`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["query_ranking", "query_class", "evaluate_sequence"]


def query_ranking(relevance: np.ndarray, is_target: np.ndarray, k: int = 100) -> dict:
    """How a query's relevance ranks the target voxels above the others.

    Args:
        relevance: ``(N,)`` relevance of every voxel (any monotone score).
        is_target: ``(N,) bool`` the voxels of the queried class.
        k: size of the top set for the precision.

    Returns:
        ``{"auc": probability that a random target voxel scores above a random other voxel
        (ties count one half; 0.5 = chance, NaN without both kinds), "mean_target",
        "mean_other": mean relevance of each group, "precision_at_k": share of targets among
        the ``k`` most relevant voxels, "targets": number of target voxels}``.

    Raises:
        ValueError: the arrays differ in length.
    """
    from scipy.stats import rankdata

    r = np.asarray(relevance, dtype=np.float64).ravel()
    t = np.asarray(is_target, dtype=bool).ravel()
    if r.shape != t.shape:
        raise ValueError(f"relevance has {r.size} entries, is_target {t.size}")
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    auc = float("nan")
    if n_pos and n_neg:
        ranks = rankdata(r)  # average ranks for ties
        auc = float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    kk = min(int(k), len(r))
    top = np.argsort(-r, kind="stable")[:kk]
    return {"auc": auc, "mean_target": float(r[t].mean()) if n_pos else float("nan"),
            "mean_other": float(r[~t].mean()) if n_neg else float("nan"),
            "precision_at_k": float(t[top].mean()) if kk else float("nan"), "k": kk, "targets": n_pos}


def query_class(text: str, names: Sequence[str]) -> str | None:
    """The class a query names: ``text`` itself when it is a class name, else its last word
    that is one (``"red chair"`` -> ``chair``), else ``None``."""
    if text in names:
        return text
    hits = [w for w in text.split() if w in names]
    return hits[-1] if hits else None


def evaluate_sequence(cfg, sequence: str | Path, queries: Sequence[str] = (), gt_names: Sequence[str] | None = None,
                      ignore_index: int = 0, top_k: int = 100, progress: bool = False,
                      log: Callable[[str], Any] | None = None) -> dict:
    """Run the pipeline of ``cfg`` over a labelled RGB-D folder and score its last window.

    Args:
        cfg: the node's :class:`~concerto_ros.config.PerceptionConfig`.
        sequence: an RGB-D folder with ``labels/`` (e.g. from
            :func:`concerto_ros.demo.scene.write_sequence`).
        queries: texts to query; the targets of each are the voxels of the ground-truth class
            it names: the whole text, or else its last word that is a class name ("red chair"
            -> chair). Queries need a translator in the configuration.
        gt_names: the label images' class names (default: the demo generator's).
        ignore_index: ground-truth id never scored.
        top_k: ``k`` of the queries' precision.

    Returns:
        ``{"labels": see :func:`~concerto_ros.demo.run.ground_truth_scores`, "label_names",
        "voxels": window size, "queries": {text: see :func:`query_ranking`}}``.

    Raises:
        ValueError: a query that is not a ground-truth class name; see
            :func:`~concerto_ros.train.translator.collect_features`.
        concerto_ros.pipeline.QueryError: queries without a translator.
    """
    from concerto_ros.demo.run import ground_truth_scores
    from concerto_ros.demo.scene import CLASS_NAMES
    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.train.translator import collect_features

    names = list(CLASS_NAMES if gt_names is None else gt_names)
    target = {q: query_class(q, names) for q in queries}
    bad = [q for q, c in target.items() if c is None]
    if bad:
        raise ValueError(f"queries {bad} name no ground-truth class of {names}")
    pipeline = PerceptionPipeline(cfg, log=log)
    # a stride beyond the sequence keeps only the last window; every frame still goes through the pipeline
    walk = {"data": {"sources": [{"type": "folder", "path": str(sequence)}], "window_stride": 1 << 30}}
    _, gt, _, _, _ = collect_features(walk, pipeline, log=log or (lambda _m: None), progress=progress)
    result = pipeline.latest
    out: dict[str, Any] = {"labels": ground_truth_scores(result.labels, result.class_names, gt, names, ignore_index),
                           "label_names": list(result.class_names), "voxels": int(len(result.coord)), "queries": {}}
    for q in queries:
        _, qr = pipeline.query(q, top_k=top_k)
        out["queries"][q] = {"class": target[q],
                             **query_ranking(qr.relevance, gt == names.index(target[q]), k=top_k)}
    return out
