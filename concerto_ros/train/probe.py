"""``concerto train probe``: a linear semantic head on the node's encoder features.

The linear probing protocol of the self-supervised point-cloud papers (Sonata, CVPR 2025;
Concerto, arXiv 2510.23607): the encoder is frozen, one linear layer is trained on its
per-voxel features with cross-entropy, and the test mIoU / per-class IoU / overall accuracy
measure how linearly separable the classes are. With ``finetune.enabled`` the encoder is
trained too (:mod:`concerto_ros.train.finetune`), optionally with PointCSP's semantic
preservation distillation.

Features are computed as the node computes them (:mod:`concerto_ros.train.features`) with
the node's :class:`~concerto_ros.pipeline.PerceptionPipeline` built from the ``node``
section; the written head (``<output>/head.pt``: the released linear-probe format plus
``class_names`` and ``feature_dims``) loads in the node with ``head.checkpoint``, and
``<output>/bundle.pt`` holds the pipeline's encoder with the head (``model.bundle``; a
pipeline built from a bundle passes its translator on). ``features: raw`` probes the
encoder's raw inputs (xyz metres, rgb / 255: 6-d), a reference baseline with no bundle.

Sources (``data.train`` and ``data.test``; ``--train`` / ``--test``): any labelled recording of
the Source schema shared with ``concerto eval`` (:mod:`concerto_ros.recordings`: PCD files
with a label field, point arrays with ``labels``, SemanticKITTI scans, RGB-D folders with
``labels/``, bags with a label topic or field), read and windowed by the node's pipeline
(:mod:`concerto_ros.train.features`). With ``data.test`` empty the test set is the voxels in
about ``heldout_fraction`` of the ``heldout_block``-metre cubes of the training sources
(:func:`~concerto_ros.train.data.heldout_mask`). A path that is both a training and a test
source is refused. The training data are rotated about the up axis (``augment``, on by
default); the test data never are.

Labels: a source with ``label_names`` (``mosd``, ``nyu40``, ...) gives its label set's classes,
matched to ``data.classes`` by name or synonym (``data.classes`` empty: the label sets'
classes). Without ``label_names`` the file's raw labels map to class indices through
``data.label_map`` (keys ``"5"``, ``"1-9"`` (inclusive) or ``"20+"``; values a class name of
``data.classes`` or its index; raw labels matching no key are ignored); an empty map makes
the raw label the class index. The raw label ``data.ignore_index`` is never trained on or
scored.

Under torchrun the scenes are sharded over the processes and stay there: each process
computes its scenes' features, the standardisation statistics, class counts and confusion
matrices are summed over the processes, and the head is trained with DDP on every process's
share of each global batch.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from concerto_ros.train.common import fmt, plain, print_summary, seed_everything
from concerto_ros.train.config import (AugmentConfig, EpochLoopConfig, OptimConfig, TrainConfig, dump_config, section,
                                       setting, to_dict)
from concerto_ros.train.data import ClassMap
from concerto_ros.train.dist import DistContext
from concerto_ros.train.loop import LoopPlan, RowSampler, StepOutput, Task, run_loop

__all__ = ["ProbeConfig", "build_label_lut", "map_labels", "fit_linear_probe", "evaluate_head", "train_probe",
           "class_weights", "check_disjoint", "probe_units"]


# ----------------------------------------------------------------------------- configuration
@dataclass
class ProbeDataConfig:
    train: list[dict] = setting(None, "Labelled training sources (the Source schema of concerto eval; --train): "
                                      "{type: pcd, path: DIR|FILE.pcd, label_names: mosd}, {type: points, path: X.npy, "
                                      "labels: L.npy, label_names: nyu40}, {type: rgbd_folder, path: DIR} (labels/), "
                                      "bags with a label topic, SemanticKITTI scans.", factory=list)
    test: list[dict] = setting(None, "Labelled test sources (same kinds; --test); empty: held-out cubes of the training "
                                     "sources.", factory=list)
    window_stride: int = setting(1, "Sequences (RGB-D folders, bags): every n-th window of the node's pipeline (and the "
                                    "last).", lo=1, hi=100_000)
    classes: list[str] = setting(None, "Class names, in head output order (empty: the classes of the sources' "
                                       "label_names).", factory=list)
    ignore_index: int = setting(0, "Raw label never trained on or scored (-1: none).", lo=-1, hi=2**31 - 1)
    label_map: dict = setting(None, "Raw label ('5', range '1-9', '20+') -> class name or index; {} = identity.",
                              factory=dict)
    heldout_fraction: float = setting(0.2, "Share of the heldout_block cubes tested on when data.test is empty.",
                                      lo=0.0, hi=1.0)
    heldout_block: float = setting(0.5, "Held-out cube edge, metres.", lo=0.01, hi=100.0)


@dataclass
class ProbeOptimConfig(OptimConfig):
    class_weight: str = setting("none", "none, or balanced (loss weights N / (K * count_k)).",
                                choices=["none", "balanced"])


@dataclass
class FinetuneConfig:
    enabled: bool = setting(False, "Unfreeze the encoder: train encoder and head together on single scenes "
                                   "(single scenes / windows re-encoded every step).")
    scenes_per_step: int = setting(2, "Global batch in scenes (windows) while fine-tuning.", lo=1, hi=4096)
    encoder_lr_scale: float = setting(0.1, "Encoder learning rate = optim.lr times this.", lo=0.0, hi=10.0)
    spd_weight: float = setting(0.0, "PointCSP's semantic preservation distillation (arXiv 2605.01759): weight of "
                                     "the MSE between the student's features (single scenes) and an EMA teacher's on "
                                     "the serialized batch; 0: off.", lo=0.0, hi=1000.0)
    spd_ema: float = setting(0.999, "Momentum of the SPD teacher.", lo=0.0, hi=1.0)
    csp: str = setting("", "The pointcsp block from `concerto train ssl` (<ssl output>/csp.pt) the SPD teacher runs "
                           "over the serialized batch; empty: the EMA encoder alone.")


@dataclass
class ProbeConfig(TrainConfig):
    """``concerto train probe`` (``--print-config`` lists every key with its description)."""

    output: str = setting("outputs/probe", "Output folder (head.pt, bundle.pt, metrics, summary).")
    features: str = setting("encoder", "encoder (the node's features; the head loads with head.checkpoint) | raw "
                                       "(xyz + rgb baseline).", choices=["encoder", "raw"])
    data: ProbeDataConfig = section(ProbeDataConfig, "Labelled sources, classes and the label mapping.")
    loop: EpochLoopConfig = section(EpochLoopConfig, "Epochs and the global batch (voxels).")
    optim: ProbeOptimConfig = section(lambda: ProbeOptimConfig(lr=1e-2, weight_decay=1e-4, warmup=0, grad_clip=0.0),
                                      "AdamW with cosine decay.")
    finetune: FinetuneConfig = section(FinetuneConfig, "Unfrozen encoder (fine-tuning) and SPD.")
    augment: AugmentConfig = section(AugmentConfig, "Yaw augmentation of the training sources.")

    def validate(self) -> None:
        if self.finetune.enabled and self.features == "raw":
            raise ValueError("finetune.enabled trains the encoder: it needs features: encoder")
        check_disjoint(self.data.train, self.data.test)


def _paths(sources: list[dict]) -> list[Path]:
    from concerto_ros.recordings import parse_sources

    return [s.path.resolve() for s in parse_sources(list(sources))] if sources else []


def check_disjoint(train: list[dict], test: list[dict]) -> None:
    """Refuse a test source that is, contains or lies inside a training source.

    Raises:
        ValueError: naming both paths.
    """
    for a in _paths(train):
        for b in _paths(test):
            if a == b or a in b.parents or b in a.parents:
                raise ValueError(f"training source {a} and test source {b} overlap: the probe would be scored on "
                                 "data it was trained on; give disjoint data.train and data.test (or leave data.test "
                                 "empty for held-out cubes)")


# ----------------------------------------------------------------------------- labels
_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)|(\+))?\s*$")


def build_label_lut(label_map: dict, classes: list[str], ignore_index: int | None, max_raw: int) -> np.ndarray:
    """Lookup table raw label -> class index.

    Args:
        label_map: see the module docstring; ``{}`` maps raw label ``k`` to class ``k``.
        classes: class names.
        ignore_index: raw label mapped to ``-1`` whatever the map says (None or -1: none).
        max_raw: largest raw label the table must cover (``>= 0``).

    Returns:
        ``(max_raw + 1,) int64``: class index in ``[0, K)`` or ``-1`` (ignored).

    Raises:
        ValueError: a malformed key, an unknown class name, or a class index outside ``[0, K)``.
    """
    k = len(classes)
    lut = np.full(max_raw + 1, -1, dtype=np.int64)
    if not label_map:
        n = min(k, max_raw + 1)
        lut[:n] = np.arange(n)
    for key, val in label_map.items():
        m = _RANGE.match(str(key))
        if m is None:
            raise ValueError(f"data.label_map key {key!r}: expected 'N', 'A-B' or 'A+'")
        lo = int(m.group(1))
        hi = max_raw if m.group(3) else int(m.group(2)) if m.group(2) is not None else lo
        if isinstance(val, str) and not val.lstrip("-").isdigit():
            if val not in classes:
                raise ValueError(f"data.label_map {key!r}: class {val!r} is not in data.classes {classes}")
            c = classes.index(val)
        else:
            c = int(val)
            if not (0 <= c < k or c == -1):
                raise ValueError(f"data.label_map {key!r}: class index {c} outside [0, {k})")
        lo, hi = max(lo, 0), min(hi, max_raw)
        if lo <= hi:
            lut[lo:hi + 1] = c
    if ignore_index is not None and 0 <= int(ignore_index) <= max_raw:
        lut[int(ignore_index)] = -1
    return lut


def map_labels(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``(N,) int64`` class indices of raw labels ``raw`` (``-1`` for ignored, negative or
    beyond the table)."""
    raw = np.asarray(raw, dtype=np.int64)
    ok = (raw >= 0) & (raw < len(lut))
    out = np.full(raw.shape, -1, dtype=np.int64)
    out[ok] = lut[raw[ok]]
    return out


def class_weights(labels: np.ndarray, k: int, mode: str, ctx: DistContext) -> torch.Tensor | None:
    """``None`` (mode ``none``) or ``N / (K * count_k)`` per class (0 for absent classes), the
    counts summed over the processes.

    Raises:
        ValueError: an unknown mode.
    """
    if mode in ("none", "", None):
        return None
    if mode != "balanced":
        raise ValueError(f"optim.class_weight must be none or balanced, got {mode!r}")
    cnt = torch.as_tensor(ctx.all_reduce_sum(np.bincount(labels[labels >= 0], minlength=k)[:k]))
    return torch.where(cnt > 0, cnt.sum() / (k * cnt.clamp_min(1)), torch.zeros_like(cnt)).float()


# ----------------------------------------------------------------------------- the linear probe
class _LinearProbe(nn.Module):
    """``nn.Linear`` on standardised features; ``forward((x, y, total))`` -> the weighted
    cross-entropy of the share."""

    def __init__(self, dim: int, k: int, weight: torch.Tensor | None, ctx: DistContext, seed: int):
        super().__init__()
        self.lin = nn.Linear(dim, k)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=gen) * 0.01)
            self.lin.bias.zero_()
        self.register_buffer("weight", weight if weight is not None else torch.ones(k))
        self.ctx = ctx

    def forward(self, batch) -> StepOutput:
        x, y, total = batch
        logits = self.lin(x)
        loss = F.cross_entropy(logits, y, weight=self.weight, reduction="none")  # weight[y] * CE per row
        correct = float((logits.detach().argmax(1) == y).sum())
        return StepOutput(self.ctx.share_loss(loss.sum(), total),
                          {"loss": float(loss.detach().sum()), "train_accuracy": correct}, len(y), len(y))


class LinearProbeTask(Task):
    """Mini-batches of this process's labelled rows; the global batch is ``batch_size`` rows."""

    metric_names = ("loss", "train_accuracy")

    def __init__(self, x: torch.Tensor, y: torch.Tensor, k: int, batch_size: int, weight, ctx: DistContext,
                 seed: int):
        self.x, self.y = x, y
        self.rows = RowSampler(len(y), batch_size, seed, ctx)
        self.model = _LinearProbe(x.shape[1], k, weight, ctx, seed).to(ctx.device)

    def batch(self, step: int):
        idx = self.rows.indices(step, self.x.device)
        return self.x[idx], self.y[idx], self.rows.total


def fit_linear_probe(feats: np.ndarray, labels: np.ndarray, class_names: list[str], out_dir: str | Path,
                     epochs: int = 30, batch_size: int = 4096, lr: float = 1e-2, weight_decay: float = 1e-4,
                     class_weight: str = "none", seed: int = 0, ctx: DistContext | None = None,
                     progress: bool = False, log: Callable[[str], Any] = print, resume: bool = False):
    """Train a :class:`~concerto_ros.models.heads.LinearSemanticHead` with cross-entropy through
    the shared loop (metrics in ``out_dir/metrics.csv``).

    The features are standardised (mean / std per channel over every process's rows) for the
    optimisation and the standardisation is folded into the returned head, so it reads the
    raw features. AdamW with a cosine schedule over ``epochs * ceil(N / batch_size)`` steps.

    Args:
        feats: ``(N, D) float32`` this process's features. labels: ``(N,) int64`` class index
            in ``[0, K)`` or ``-1`` (not trained on).

    Returns:
        ``(head on the CPU in eval mode, LoopResult)``.

    Raises:
        ValueError: no labelled row on any process, or an unknown ``class_weight``.
    """
    from concerto_ros.models.heads import LinearSemanticHead

    ctx = ctx or DistContext()
    keep = labels >= 0
    n_all = int(ctx.all_reduce_sum([keep.sum()])[0])
    if n_all == 0:
        raise ValueError("no labelled voxel to train the probe on: check data.label_map / ignore_index")
    mean, std = ctx.mean_std(feats[keep])
    x = ((torch.from_numpy(np.ascontiguousarray(feats[keep], np.float32)) - mean) / std).to(ctx.device)
    y = torch.from_numpy(labels[keep].astype(np.int64)).to(ctx.device)
    k = len(class_names)
    w = class_weights(labels[keep], k, class_weight, ctx)
    task = LinearProbeTask(x, y, k, min(int(batch_size), n_all), None if w is None else w.to(ctx.device), ctx, seed)
    spe = max(1, -(-n_all // task.rows.total))
    plan = LoopPlan(int(epochs) * spe, spe, lr, weight_decay, 0, 0.0, 0, 1, False, seed, False, desc="probe")
    result = run_loop(task, plan, ctx, out_dir, resume=resume, progress=progress, log=log)
    head = LinearSemanticHead(x.shape[1], class_names)
    lin = task.model.lin
    with torch.no_grad():  # fold (x - mean) / std into the weights
        wt = lin.weight.detach().cpu() / std[None, :]
        head.seg_head.weight.copy_(wt)
        head.seg_head.bias.copy_(lin.bias.detach().cpu() - wt @ mean)
    return head.eval(), result


def evaluate_head(head, feats: np.ndarray, labels: np.ndarray, ctx: DistContext | None = None,
                  batch: int = 65536) -> dict:
    """Scores of ``head`` on ``feats (N, D) float32`` against ``labels (N,) int64`` (``-1``
    ignored), the confusion matrix summed over the processes: ``{"iou" (K,) float64 (NaN:
    class absent from target and prediction), "miou", "oacc", "num_points"}`` (see
    :func:`concerto_ros.metrics.segmentation_scores`)."""
    from concerto_ros.metrics import confusion_matrix, segmentation_scores

    keep = labels >= 0
    f = torch.from_numpy(np.ascontiguousarray(feats[keep], dtype=np.float32))
    with torch.no_grad():
        pred = np.concatenate([head(f[i:i + batch]).argmax(1).numpy() for i in range(0, len(f), batch)]) \
            if len(f) else np.zeros(0, np.int64)
    cm = confusion_matrix(pred, labels[keep], head.num_classes)
    if ctx is not None:
        cm = ctx.all_reduce_sum(cm).reshape(cm.shape).astype(cm.dtype)
    return segmentation_scores(cm)


# ----------------------------------------------------------------------------- the command
@dataclass
class ProbeData:
    """Labels mapped to classes, this process's rows: train and test features."""

    ftr: np.ndarray
    ytr: np.ndarray
    fte: np.ndarray
    yte: np.ndarray
    split: str
    train_scenes: int
    test_scenes: int
    feature_dims: dict


def probe_units(cfg: ProbeConfig) -> tuple[list, list, ClassMap]:
    """The training and test units of ``data.train`` / ``data.test`` and the class map; sets
    ``data.classes`` from the sources' label sets when it is empty.

    Raises:
        ValueError: no training source, no classes; see
            :func:`~concerto_ros.train.data.expand_sources`.
    """
    from concerto_ros.train.data import classes_of_label_sets, expand_sources

    d = cfg.data
    if not d.train:
        raise ValueError("data.train is empty: give labelled sources, e.g. --train \"{type: pcd, path: DIR, "
                         "label_names: mosd}\" (PCD files, point arrays, RGB-D folders with labels/, bags)")
    train, test = expand_sources(d.train), expand_sources(d.test) if d.test else []
    if not d.classes:
        d.classes = classes_of_label_sets(train + test)
    if not d.classes:
        raise ValueError("data.classes is empty and no source names a label set: list the class names of the head "
                         "or add label_names to the sources")
    classes = [str(c) for c in d.classes]
    ignore = None if d.ignore_index < 0 else d.ignore_index
    raw = (lambda y: map_labels(y, build_label_lut(d.label_map, classes, ignore, max(int(y.max(initial=0)), 0))))
    return train, test, ClassMap(classes, raw)


def _features(cfg: ProbeConfig, ctx: DistContext, pipeline, log, progress: bool) -> ProbeData:
    from concerto_ros.train.data import heldout_mask, lifting_pipeline
    from concerto_ros.train.features import source_features

    d = cfg.data
    raw = cfg.features == "raw"
    tr_units, te_units, cmap = probe_units(cfg)
    lifter = lifting_pipeline(cfg.node) if raw else pipeline

    def feats(units, desc, augment):
        return source_features(ctx.shard(units), lifter, d.window_stride, cmap, raw=raw, augment=augment,
                               seed=cfg.seed, progress=progress and ctx.is_main, desc=desc, log=log)

    tr = feats(tr_units, "train features", cfg.augment)
    dims = {"raw": 6} if raw else dict(pipeline.feature_dims)
    if te_units:
        te = feats(te_units, "test features", None)
        return ProbeData(tr.feats, tr.labels, te.feats, te.labels, "test sources", len(tr_units), len(te_units), dims)
    held = heldout_mask(tr.coords, d.heldout_block, d.heldout_fraction)
    return ProbeData(tr.feats[~held], tr.labels[~held], tr.feats[held], tr.labels[held],
                     f"held-out {d.heldout_block} m cubes ({d.heldout_fraction:.0%})", len(tr_units), 0, dims)


def train_probe(cfg: ProbeConfig, progress: bool = True, log: Callable[[str], Any] = print,
                resume: bool = False) -> dict:
    """Run the whole command (see the module docstring); every process of a torchrun job calls
    it and rank 0 writes ``<output>/head.pt``, ``bundle.pt`` (encoder features), ``metrics.csv``,
    ``summary.json`` and prints a summary table.

    Returns:
        The summary dict (every process): ``head``, ``bundle`` (or None), ``classes``,
        ``features``, ``feature_dims``, ``split``, scene and voxel counts, ``loss_first`` /
        ``loss_last``, ``train_miou`` / ``train_accuracy``, ``test_miou`` / ``test_accuracy``,
        ``test_iou`` (per class, None where undefined), ``wall_s``.

    Raises:
        ValueError: no classes or training sources, bad ``label_map`` / ``class_weight``, no
            labelled voxel. FileNotFoundError: a source path that does not exist.
    """
    from concerto_ros.train.data import training_pipeline

    ctx = DistContext.from_env(cfg.device)
    log = ctx.main_only(log)
    try:
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        if ctx.is_main:
            cfg.output_dir.mkdir(parents=True, exist_ok=True)
            (cfg.output_dir / "config.yaml").write_text(dump_config(cfg))
        cfg.node.language.translator = ""
        pipeline = None if cfg.features == "raw" else training_pipeline(cfg.node, log=log)
        if cfg.finetune.enabled:
            from concerto_ros.train.finetune import finetune_probe

            return finetune_probe(cfg, pipeline, ctx, log, progress, resume, t0)
        data = _features(cfg, ctx, pipeline, log, progress)
        o = cfg.optim
        head, result = fit_linear_probe(data.ftr, data.ytr, list(cfg.data.classes), cfg.output_dir, cfg.loop.epochs,
                                        cfg.loop.batch_size, o.lr, o.weight_decay, o.class_weight, cfg.seed, ctx,
                                        progress, log, resume)
        scores = (evaluate_head(head, data.ftr, data.ytr, ctx), evaluate_head(head, data.fte, data.yte, ctx))
        counts = ctx.all_reduce_sum([(data.ytr >= 0).sum(), (data.yte >= 0).sum()])
        summary = export_probe(cfg, head, pipeline, data.feature_dims, scores, result, counts, data, t0) \
            if ctx.is_main else None
        return ctx.broadcast_object(summary)
    finally:
        ctx.close()


def export_probe(cfg: ProbeConfig, head, pipeline, dims: dict, scores, result, counts, data, t0: float,
                 encoder=None) -> dict:
    """Rank 0: ``head.pt``, ``bundle.pt`` (unless raw features), ``summary.json`` and the table.
    ``encoder`` (fine-tuning) replaces the pipeline's encoder in the bundle."""
    from concerto_ros.models.extractor import save_head

    out, classes = cfg.output_dir, list(cfg.data.classes)
    head_path = save_head(head, out / "head.pt", feature_dims=dims)
    tr, te = scores

    def _f(v):
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)

    metrics = {"test_miou": _f(te["miou"]), "test_accuracy": _f(te["oacc"]), "train_miou": _f(tr["miou"]),
               "train_accuracy": _f(tr["oacc"])}
    bundle_path = _bundle(cfg, head, pipeline, metrics, encoder) if cfg.features == "encoder" else None
    losses = result.column("loss")
    summary = {"head": str(head_path), "bundle": str(bundle_path) if bundle_path else None, "classes": classes,
               "features": cfg.features, "feature_dims": dims, "finetuned": bool(encoder is not None),
               "voxel_size": cfg.node.window.voxel_size, "split": data.split, "train_scenes": data.train_scenes,
               "test_scenes": data.test_scenes, "train_voxels": int(counts[0]), "test_voxels": int(counts[1]),
               "epochs": cfg.loop.epochs, "steps": len(losses), "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None, **metrics,
               "test_iou": {n: _f(v) for n, v in zip(classes, te["iou"])}, "wall_s": time.perf_counter() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = [("head", str(head_path)), ("bundle", str(bundle_path) if bundle_path else "none (raw features)"),
            ("features", f"{cfg.features} {dims}" + (" (fine-tuned encoder)" if encoder is not None else "")),
            ("train / test voxels", f"{summary['train_voxels']} / {summary['test_voxels']} ({data.split})"),
            ("loss first -> last", f"{fmt(summary['loss_first'], 3)} -> {fmt(summary['loss_last'], 3)}"),
            ("train mIoU / oAcc", f"{fmt(metrics['train_miou'], 3)} / {fmt(metrics['train_accuracy'], 3)}"),
            ("test mIoU / oAcc", f"{fmt(metrics['test_miou'], 3)} / {fmt(metrics['test_accuracy'], 3)}")]
    rows += [(f"test IoU {n}", fmt(v, 3)) for n, v in summary["test_iou"].items()]
    rows += [("wall time", f"{summary['wall_s']:.1f} s")]
    print_summary("linear probe" if encoder is None else "fine-tuned encoder + head", rows)
    return summary


def _bundle(cfg: ProbeConfig, head, pipeline, metrics: dict, encoder) -> Path:
    from concerto_ros.models.bundle import bundle_from_parts, bundle_from_pipeline, save_bundle

    md = {"description": f"{'fine-tuned encoder + ' if encoder is not None else ''}linear probe head over "
                         f"{list(cfg.data.classes)} on "
                         f"{pipeline.extractor.description if pipeline.extractor else pipeline.feature_dims}",
          "command": "concerto train probe", "config": json.loads(json.dumps(to_dict(cfg), default=str)),
          "metrics": plain({k: v for k, v in metrics.items() if v is not None})}
    if encoder is None:
        bundle = bundle_from_pipeline(pipeline, head=head, metadata=md)
    else:
        bundle = bundle_from_parts(encoder=encoder, feature=pipeline.extractor.feature,
                                   voxel_size=cfg.node.window.voxel_size, use_color=pipeline.extractor.use_color,
                                   head=head, metadata=md)
    return save_bundle(bundle, cfg.output_dir / "bundle.pt")
