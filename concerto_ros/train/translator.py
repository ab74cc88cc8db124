"""``concerto train translator``: fit the language translator on labelled recordings.

The translator (Concerto, arXiv 2510.23607: "with linear probing, we translate Concerto's
representations to language space") is a linear map from the node's fused per-voxel features
to a text encoder's space (:class:`~concerto_ros.language.translator.Translator`), fitted in one
of the two ways the field uses:

* ``mode: labels``: cosine-softmax of the translated feature against the text embeddings of
  the class names (learnable temperature), cross-entropy over the labelled voxels;
* ``mode: targets`` (label-free, as OpenScene): every voxel of a window is projected into the
  newest frame's image (z-buffer visibility, the same code as the Cross4D targets) and takes a
  dense image-embedding model's patch feature there as its target; cosine regression. The
  image model must embed into the text encoder's space (e.g. a dense CLIP image tower, given
  as ``image_model.name: module:FILE.pt``).

Features are computed exactly as the node computes them (:mod:`concerto_ros.train.features`,
the node's pipeline from the ``node`` section), so the saved translator fits the node that
uses the same settings. Sources: any labelled recording of the Source schema shared with
``concerto eval`` (RGB-D folders with ``labels/``, every ``window_stride``-th window; point
arrays and PCD files, one window each; bags with a label topic). Labels: a source's
``label_names`` matched to ``data.classes`` by name, else raw values through
``data.label_ids``. The training data are rotated about the up axis (``augment``, on by
default), so the translator holds at any yaw. Voxels in a held-out share of
``heldout_block``-metre cubes (drawn in the unrotated frame) are kept out of training and
used for the report (accuracy and mIoU of open-vocabulary labels, top-k precision per class
name). Training runs in the shared loop; under torchrun the sources are sharded over the
processes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from concerto_ros.train.common import fmt, plain, print_summary, seed_everything
from concerto_ros.train.config import (AugmentConfig, EpochLoopConfig, OptimConfig, TeacherConfig, TrainConfig,
                                       dump_config, section, setting, to_dict)
from concerto_ros.train.dist import DistContext
from concerto_ros.train.features import collect_features  # noqa: F401 - the demo's evaluation imports it here
from concerto_ros.train.loop import LoopPlan, RowSampler, StepOutput, Task, run_loop

__all__ = ["TranslatorConfig", "train_translator", "make_image_model", "collect_features"]


@dataclass
class TranslatorDataConfig:
    sources: list[dict] = setting(None, "Labelled sources (the Source schema of concerto eval; --data adds one): RGB-D "
                                        "folders with labels/, {type: points, path: X.npy, labels: L.npy, label_names: "
                                        "nyu40}, PCD files with a label field, bags with a label topic.", factory=list)
    classes: list[str] = setting(None, "Class names (their text embeddings are the targets in label mode).",
                                 factory=lambda: ["floor", "wall", "table", "chair", "sofa", "cabinet", "bookshelf",
                                                  "door"])
    label_ids: list[int] = setting(None, "Raw label of each class (default 1..K), for sources without label_names "
                                         "(with label_names, classes are matched by name).", lo=0, hi=2**31 - 1,
                                   factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    window_stride: int = setting(1, "Sequences (RGB-D folders, bags): every n-th window of the node's pipeline (and the "
                                    "last).", lo=1, hi=100_000)
    heldout_fraction: float = setting(0.2, "Share of the heldout_block cubes kept for the report.", lo=0.0, hi=1.0)
    heldout_block: float = setting(0.5, "Held-out cube edge, metres.", lo=0.01, hi=100.0)


@dataclass
class TextEncoderConfig:
    backend: str = setting("sentence-transformers", "Text encoder backend.",
                           choices=["sentence-transformers", "open_clip"])
    model: str = setting("", "sentence-transformers: local model folder (empty: the bundled all-MiniLM-L6-v2); "
                             "open_clip: architecture, e.g. ViT-B-32.")
    checkpoint: str = setting("", "open_clip: local weights file.")


@dataclass
class TranslatorOptimConfig(OptimConfig):
    temperature: float = setting(0.07, "Initial (label mode) or fixed (targets mode) softmax temperature.", lo=1e-3,
                                 hi=10.0)
    learn_temperature: bool = setting(True, "Train the temperature (label mode).")
    class_weight: str = setting("none", "none, or balanced (loss weights N / (K * count_k)).",
                                choices=["none", "balanced"])


@dataclass
class ReportConfig:
    top_k: int = setting(100, "Precision of the top-k held-out voxels per class name.", lo=1, hi=10_000_000)


@dataclass
class TranslatorConfig(TrainConfig):
    """``concerto train translator`` (``--print-config`` lists every key with its description)."""

    output: str = setting("outputs/translator", "Output folder (translator.pt, bundle.pt, metrics, summary).")
    mode: str = setting("labels", "labels | targets (label-free: a dense image-embedding model's projected features).",
                        choices=["labels", "targets"])
    image_model: TeacherConfig = section(lambda: TeacherConfig(name="", embed_dim=384),
                                         "targets mode: dense image-embedding model in the text encoder's space "
                                         "(module:FILE.pt; seeded_vit for tests).")
    data: TranslatorDataConfig = section(TranslatorDataConfig, "Labelled sources and classes.")
    text_encoder: TextEncoderConfig = section(TextEncoderConfig, "The text encoder whose space is the target.")
    loop: EpochLoopConfig = section(lambda: EpochLoopConfig(epochs=20, batch_size=4096), "Epochs and global batch.")
    optim: TranslatorOptimConfig = section(lambda: TranslatorOptimConfig(lr=1e-2, weight_decay=1e-4, warmup=0,
                                                                         grad_clip=0.0), "AdamW with cosine decay.")
    eval: ReportConfig = section(ReportConfig, "The held-out report.")
    augment: AugmentConfig = section(AugmentConfig, "Yaw augmentation of the training sources.")


def make_image_model(im: TeacherConfig, device: str | torch.device = "cpu"):
    """``(coord (M,3), rgb (H,W,3) uint8, intrinsics, T_world_cam) -> (targets (M,C) float32,
    visible (M,) bool)`` from the ``image_model`` section.

    Raises:
        ValueError: no ``image_model.name``.
    """
    from concerto_ros.models.projection import dense_targets
    from concerto_ros.models.teachers import teacher_grid

    if not im.name:
        raise ValueError("mode: targets needs image_model.name (module:FILE.pt for a dense image model in the text "
                         "encoder's space)")
    model = im.build(device)

    @torch.no_grad()
    def project(coord, rgb, intrinsics, T):
        grid = teacher_grid(model, rgb, short_side=int(im.short_side), device=device)
        t, vis = dense_targets(coord, grid, intrinsics, T, mode=im.lookup, tolerance=float(im.zbuffer_tolerance))
        return t.numpy().astype(np.float32), np.asarray(vis, dtype=bool)

    return project


# ----------------------------------------------------------------------------- the step
class _Fit(nn.Module):
    """The translator and its loss: ``forward((x, y_or_targets, total))``."""

    def __init__(self, translator, class_emb: torch.Tensor | None, weight: torch.Tensor | None, ctx: DistContext):
        super().__init__()
        self.tr, self.ctx = translator, ctx
        self.register_buffer("class_emb", class_emb if class_emb is not None else torch.zeros(0))
        self.register_buffer("weight", weight if weight is not None else torch.ones(max(1, len(self.class_emb))))

    def forward(self, batch) -> StepOutput:
        x, y, total = batch
        if self.class_emb.numel():  # labels: cosine softmax over the class names
            logits = F.normalize(self.tr(x), dim=-1) @ self.class_emb.T * self.tr.logit_scale.exp()
            loss = F.cross_entropy(logits, y, weight=self.weight, reduction="none")
            hit = float((logits.detach().argmax(1) == y).sum())
            return StepOutput(self.ctx.share_loss(loss.sum(), total),
                              {"loss": float(loss.detach().sum()), "train_accuracy": hit}, len(y), len(y))
        cos = F.cosine_similarity(self.tr(x), y, dim=-1)
        return StepOutput(self.ctx.share_loss((1.0 - cos).sum(), total),
                          {"loss": float((1.0 - cos.detach()).sum()), "train_cosine": float(cos.detach().sum())},
                          len(y), len(y))


class TranslatorTask(Task):
    """Mini-batches of this process's training voxels (global batch ``batch_size`` rows)."""

    def __init__(self, fit: _Fit, x: torch.Tensor, y: torch.Tensor, batch_size: int, ctx: DistContext, seed: int):
        self.model, self.x, self.y = fit, x, y
        self.metric_names = ("loss", "train_accuracy") if fit.class_emb.numel() else ("loss", "train_cosine")
        self.rows = RowSampler(len(x), batch_size, seed + 1, ctx)

    def batch(self, step: int):
        idx = self.rows.indices(step, self.x.device)
        return self.x[idx], self.y[idx], self.rows.total

    def after_update(self, step: int, total: int) -> dict[str, float]:
        with torch.no_grad():  # keep the temperature in [0.01, 1] (CLIP clamps its logit scale)
            self.model.tr.logit_scale.clamp_(0.0, math.log(100.0))
        return {"temperature": self.model.tr.temperature}


# ----------------------------------------------------------------------------- the command
def _collect(cfg: TranslatorConfig, ctx: DistContext, pipeline, log, progress: bool):
    from concerto_ros.train.data import ClassMap, expand_sources, heldout_mask
    from concerto_ros.train.features import source_features

    d = cfg.data
    if not d.sources:
        raise ValueError("data.sources is empty: give RGB-D folders with labels/ or labelled point arrays "
                         "(--data SOURCE or --set data.sources=[...])")
    image_model = make_image_model(cfg.image_model, ctx.device) if cfg.mode == "targets" else None
    ids = np.asarray(d.label_ids, np.int64)

    def raw(y: np.ndarray) -> np.ndarray:
        lut = np.full(max(int(y.max(initial=0)), int(ids.max(initial=0))) + 1, -1, np.int64)
        lut[ids] = np.arange(len(ids))
        return np.where(y >= 0, lut[np.clip(y, 0, len(lut) - 1)], -1)

    lf = source_features(ctx.shard(expand_sources(d.sources)), pipeline, d.window_stride,
                         ClassMap([str(c) for c in d.classes], raw), image_model=image_model, augment=cfg.augment,
                         seed=cfg.seed, progress=progress and ctx.is_main, log=log)
    held = heldout_mask(lf.coords, d.heldout_block, d.heldout_fraction)
    return lf, lf.labels, held


def train_translator(cfg: TranslatorConfig, progress: bool = True, log: Callable[[str], Any] = print,
                     resume: bool = False) -> dict:
    """Run the whole command (see the module docstring); rank 0 writes ``<output>/translator.pt``
    (``language.translator``), ``bundle.pt`` (the pipeline's encoders and trained head plus this
    translator, its text encoder and, in label mode, the class names as vocabulary),
    ``metrics.csv`` and ``summary.json``.

    Returns:
        The summary dict (every process).

    Raises:
        ValueError: no classes or sources, mismatched label ids, no training voxel, an image
            model whose width is not the text encoder's.
    """
    from concerto_ros.language.text_encoders import build_text_encoder
    from concerto_ros.language.translator import Translator
    from concerto_ros.train.data import training_pipeline

    ctx = DistContext.from_env(cfg.device)
    log = ctx.main_only(log)
    try:
        t0 = time.perf_counter()
        classes = [str(c) for c in cfg.data.classes]
        if not classes and cfg.mode == "labels":
            raise ValueError("data.classes is empty: list the class names the labels stand for")
        if len(cfg.data.label_ids) != len(classes):
            raise ValueError(f"data.label_ids has {len(cfg.data.label_ids)} entries for {len(classes)} classes")
        seed_everything(cfg.seed)
        if ctx.is_main:
            cfg.output_dir.mkdir(parents=True, exist_ok=True)
            (cfg.output_dir / "config.yaml").write_text(dump_config(cfg))
        cfg.node.language.translator = ""
        pipeline = training_pipeline(cfg.node, log=log)
        lf, labels, held = _collect(cfg, ctx, pipeline, log, progress)
        te = build_text_encoder(cfg.text_encoder.backend, cfg.text_encoder.model or None,
                                cfg.text_encoder.checkpoint or None, device=str(ctx.device))
        train = ((labels >= 0) if cfg.mode == "labels" else lf.visible) & ~held
        if int(ctx.all_reduce_sum([train.sum()])[0]) == 0:
            raise ValueError("no labelled voxel to train on: check data.label_ids against the label images"
                             if cfg.mode == "labels" else "no voxel is visible in its window's newest frame")
        if cfg.mode == "targets" and lf.targets.shape[1] != te.dim:
            raise ValueError(f"image_model gives {lf.targets.shape[1]}-d targets but the text encoder '{te.name}' is "
                             f"{te.dim}-d: they must share one space")
        o = cfg.optim
        torch.manual_seed(cfg.seed)
        translator = Translator(lf.feats.shape[1], te.dim, te.name, o.temperature,
                                o.learn_temperature and cfg.mode == "labels",
                                f"fused {pipeline.feature_dims} of the node's pipeline")
        mean, std = ctx.mean_std(lf.feats[train])
        translator.feat_mean.copy_(mean)
        translator.feat_std.copy_(std)
        result = _fit(cfg, ctx, translator, te, lf, labels, train, classes, log, progress, resume)
        translator = translator.cpu().eval()
        report = _report(cfg, ctx, translator, te, lf, labels, train, held, classes)
        summary = _export(cfg, translator, te, pipeline, report, result, classes, t0) if ctx.is_main else None
        return ctx.broadcast_object(summary)
    finally:
        ctx.close()


def _fit(cfg: TranslatorConfig, ctx: DistContext, translator, te, lf, labels, train, classes, log, progress,
         resume: bool = False):
    from concerto_ros.train.probe import class_weights

    dev = ctx.device
    x = torch.from_numpy(np.ascontiguousarray(lf.feats[train], np.float32)).to(dev)
    if cfg.mode == "labels":
        y = torch.from_numpy(labels[train]).to(dev)
        w = class_weights(labels[train], len(classes), cfg.optim.class_weight, ctx)
        fit = _Fit(translator.to(dev), F.normalize(torch.as_tensor(te.encode(classes), dtype=torch.float32), dim=-1)
                   .to(dev), None if w is None else w.to(dev), ctx)
    else:
        y = F.normalize(torch.from_numpy(lf.targets[train].astype(np.float32)), dim=-1).to(dev)
        fit = _Fit(translator.to(dev), None, None, ctx)
    n_all = int(ctx.all_reduce_sum([len(x)])[0])
    task = TranslatorTask(fit, x, y, min(cfg.loop.batch_size, n_all), ctx, cfg.seed)
    spe = max(1, -(-n_all // task.rows.total))
    o = cfg.optim
    plan = LoopPlan(cfg.loop.epochs * spe, spe, o.lr, o.weight_decay, o.warmup, o.grad_clip, cfg.loop.checkpoint_every,
                    cfg.loop.keep_checkpoints, False, cfg.seed, False, desc=f"translator ({cfg.mode})")
    return run_loop(task, plan, ctx, cfg.output_dir, resume=resume, progress=progress, log=log)


def _report(cfg, ctx: DistContext, translator, te, lf, labels, train, held, classes) -> dict:
    """Held-out report (summed / gathered over the processes): target cosine (targets mode),
    open-vocabulary accuracy and mIoU, top-k precision per class name."""
    from concerto_ros.language.query import cosine_to_vocabulary, relevance_margin
    from concerto_ros.metrics import confusion_matrix, segmentation_scores

    test = (labels >= 0) & held
    n = ctx.all_reduce_sum([train.sum(), test.sum()])
    report: dict[str, Any] = {"mode": cfg.mode, "train_voxels": int(n[0]), "heldout_voxels": int(n[1])}
    if cfg.mode == "targets":
        hv = lf.visible & held
        e = translator.embed(lf.feats[hv])
        tn = lf.targets[hv] / np.maximum(np.linalg.norm(lf.targets[hv], axis=1, keepdims=True), 1e-12)
        s = ctx.all_reduce_sum([float(np.sum(e * tn)), int(hv.sum())])
        report.update(heldout_target_cosine=s[0] / max(s[1], 1), heldout_voxels=int(s[1]))
    if n[1] == 0 or not classes:
        return report
    emb, cemb = translator.embed(lf.feats[test]), te.encode(classes)
    cm = confusion_matrix(cosine_to_vocabulary(emb, cemb).argmax(1), labels[test], len(classes))
    scores = segmentation_scores(ctx.all_reduce_sum(cm).reshape(cm.shape).astype(cm.dtype))
    margins = [relevance_margin(emb, cemb[c], np.delete(cemb, c, axis=0) if len(cemb) > 1 else None,
                                translator.temperature) for c in range(len(classes))]
    parts = ctx.all_gather_object((np.stack(margins, 1) if len(emb) else np.zeros((0, len(classes))), labels[test]))
    m_all, y_all = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    k = int(cfg.eval.top_k)
    prec = {name: float(np.mean(y_all[np.argsort(-m_all[:, c])[:k]] == c)) for c, name in enumerate(classes)}
    report.update({"heldout_miou": scores["miou"], "heldout_accuracy": scores["oacc"],
                   "iou": {nm: (None if np.isnan(v) else float(v)) for nm, v in zip(classes, scores["iou"])},
                   f"precision_at_{k}": prec})
    return report


def _export(cfg: TranslatorConfig, translator, te, pipeline, report: dict, result, classes, t0: float) -> dict:
    from concerto_ros.models.bundle import bundle_from_pipeline, save_bundle

    out = cfg.output_dir
    path = translator.save(out / "translator.pt", extra={"classes": classes, "node_config": cfg.node_config})
    report = plain(report)
    metrics = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    bundle = bundle_from_pipeline(
        pipeline, translator=translator, vocabulary=classes if cfg.mode == "labels" else [],
        text_encoder=cfg.text_encoder.backend, text_model=cfg.text_encoder.model or "",
        metadata={"description": f"translator ({cfg.mode}) into {te.name} over {classes or 'targets'} on "
                                 f"{pipeline.feature_dims}", "command": "concerto train translator",
                  "config": json.loads(json.dumps(to_dict(cfg), default=str)), "metrics": metrics})
    bundle_path = save_bundle(bundle, out / "bundle.pt")
    losses = result.column("loss")
    summary = {"translator": str(path), "bundle": str(bundle_path), "classes": classes,
               "feature_dims": pipeline.feature_dims, "text_encoder": te.name, "epochs": cfg.loop.epochs,
               "steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
               "temperature": translator.temperature, "wall_s": time.perf_counter() - t0, **report}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = [("translator", str(path)), ("bundle", f"{bundle_path} ({' + '.join(bundle.components())})"),
            ("features", f"{pipeline.out_channels}-d {pipeline.feature_dims}"), ("text encoder", f"{te.name} ({te.dim}-d)"),
            ("train / held-out voxels", f"{report['train_voxels']} / {report['heldout_voxels']}"),
            ("loss first -> last", f"{fmt(losses[0], 3)} -> {fmt(losses[-1], 3)}")]
    if "heldout_target_cosine" in report:
        rows.append(("held-out cosine to targets", fmt(report["heldout_target_cosine"], 3)))
    if "heldout_miou" in report:
        rows.append(("held-out mIoU / accuracy", f"{fmt(report['heldout_miou'], 3)} / "
                                                 f"{fmt(report['heldout_accuracy'], 3)}"))
    rows.append(("wall time", f"{summary['wall_s']:.1f} s"))
    print_summary("translator", rows)
    return summary
