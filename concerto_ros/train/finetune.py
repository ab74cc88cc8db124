"""``concerto train probe`` with ``finetune.enabled``: the encoder is unfrozen and trained with
the linear head on labelled single scenes (and windows of RGB-D folders).

Each step encodes a global batch of ``finetune.scenes_per_step`` scenes (each its own sample:
PTv3 keeps samples apart, so this is the student "on single scenes") and minimises the
cross-entropy of the head on their labelled voxels. With ``finetune.spd_weight > 0`` PointCSP's
semantic preservation distillation (arXiv 2605.01759; :func:`~concerto_ros.train.objectives.
pointcsp.spd_loss`) is added: an EMA teacher of the encoder encodes the same scenes as one
serialized batch and, with ``finetune.csp`` (the ``csp.pt`` that ``concerto train ssl`` writes
for ``pointcsp``), runs the pre-trained cross-sample block over them laid end to end; the
student's features are pulled to the teacher's by MSE. The fine-tuning loss is
``L_task + spd_weight * L_SPD``; only the student is exported (inference sees single windows).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from concerto_ros.models.ptv3 import prepare_input
from concerto_ros.train.dist import DistContext, EpochSampler
from concerto_ros.train.loop import LoopPlan, StepOutput, Task, run_loop
from concerto_ros.train.objectives.distill import ema_update
from concerto_ros.train.objectives.pointcsp import CSPBlock, serialized_apply, spd_loss

__all__ = ["LabelledScene", "load_scenes", "finetune_probe", "load_csp_block"]


@dataclass
class LabelledScene:
    """A voxelised labelled scene: ``coord (M, 3) float32`` metres, ``grid_coord (M, 3)``,
    ``color (M, 3) uint8`` or None, ``labels (M,) int64`` class indices (-1: not trained on)."""

    coord: np.ndarray
    grid_coord: np.ndarray
    color: Optional[np.ndarray]
    labels: np.ndarray


def load_scenes(units: list, pipeline, window_stride: int = 1, class_map=None, augment=None,
                seed: int = 0) -> list[tuple[LabelledScene, np.ndarray]]:
    """The windows of labelled units as training scenes, through the node's lifting and window
    (:func:`~concerto_ros.train.data.iter_windows`; not encoded): ``[(scene, coordinates in
    the unrotated fixed frame (M, 3) float32)]``, labels mapped by ``class_map``."""
    from concerto_ros.train.data import iter_windows

    out = []
    for w in iter_windows(units, pipeline, window_stride, augment, seed):
        win = w.window
        y = class_map(win.labels, w.label_set, where=str(w.unit.source.path))
        out.append((LabelledScene(win.coord, win.grid_coord, win.color, y), w.original_coords()))
    return out


def load_csp_block(path: str | Path, channels: int, device) -> CSPBlock:
    """The pointcsp block saved by ``concerto train ssl`` (``csp.pt``).

    Raises:
        FileNotFoundError: no such file. ValueError: another format or feature width.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"finetune.csp '{p}' does not exist")
    blob = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "concerto_ros.pointcsp_block/1":
        raise ValueError(f"{p} is not a pointcsp block from `concerto train ssl` (csp.pt)")
    if int(blob["channels"]) != channels:
        raise ValueError(f"{p} was trained on {blob['channels']}-d features but the encoder gives {channels}-d")
    block = CSPBlock(int(blob["channels"]), int(blob["heads"]), int(blob["chunk"]))
    block.load_state_dict(blob["state_dict"])
    return block.to(device).eval().requires_grad_(False)


class _Student(nn.Module):
    """Encoder + linear head; ``forward(batch)``: cross-entropy (+ SPD) of the share's scenes."""

    def __init__(self, encoder: nn.Module, feature: str, k: int, weight: torch.Tensor, spd: float, ctx: DistContext):
        super().__init__()
        from concerto_ros.models.extractor import feature_channels

        self.encoder, self.feature, self.spd, self.ctx = encoder, feature, float(spd), ctx
        self.head = nn.Linear(feature_channels(list(encoder.config.enc_channels), feature), k)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        self.register_buffer("weight", weight)

    def forward(self, batch) -> StepOutput:
        from concerto_ros.train.ssl_step import feature_of

        inputs, labels, counts, teacher_feat, total = batch
        feat = feature_of(self.encoder(inputs), self.feature)
        logits = self.head(feat)
        sums, loss = {"loss": 0.0, "loss_task": 0.0, "loss_spd": 0.0}, feat.new_zeros(())
        for f, lg, y, tf in zip(feat.split(counts), logits.split(counts), labels.split(counts),
                                teacher_feat.split(counts) if teacher_feat is not None else [None] * len(counts)):
            keep = y >= 0
            task = (F.cross_entropy(lg[keep], y[keep], weight=self.weight, reduction="sum") / keep.sum()
                    if bool(keep.any()) else lg.sum() * 0.0)
            spd = spd_loss(f, tf) if tf is not None else f.new_zeros(())
            li = task + self.spd * spd
            loss = loss + li
            for key, v in (("loss", li), ("loss_task", task), ("loss_spd", spd)):
                sums[key] += float(v.detach())
        return StepOutput(self.ctx.share_loss(loss, total), sums, len(counts), int(feat.shape[0]))


class FinetuneTask(Task):
    """Encoder + head on labelled scenes, with the optional SPD teacher."""

    metric_names = ("loss", "loss_task", "loss_spd")

    def __init__(self, cfg, ctx: DistContext, encoder: nn.Module, feature: str, scenes: list[LabelledScene],
                 weight: torch.Tensor, csp: Optional[CSPBlock]):
        ft = cfg.finetune
        self.cfg, self.ctx, self.scenes, self.csp = cfg, ctx, scenes, csp
        torch.manual_seed(cfg.seed)
        self.model = _Student(encoder, feature, len(cfg.data.classes), weight.to(ctx.device), ft.spd_weight, ctx)
        self.model.to(ctx.device)
        self.teacher = copy.deepcopy(encoder).eval().requires_grad_(False) if ft.spd_weight > 0 else None
        self.sampler = EpochSampler(len(scenes), max(ft.scenes_per_step, ctx.world_size), cfg.seed)

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.model.encoder.parameters()), "lr_scale": self.cfg.finetune.encoder_lr_scale},
                {"params": list(self.model.head.parameters()), "lr_scale": 1.0}]

    def batch(self, step: int):
        from concerto_ros.train.ssl_step import feature_of

        share = [self.scenes[k] for _, k in self.sampler.share(step, self.ctx)]
        dev = self.ctx.device
        inputs = prepare_input(np.concatenate([s.coord for s in share]), np.concatenate([s.grid_coord for s in share]),
                               color=None if any(s.color is None for s in share) else
                               np.concatenate([s.color for s in share]),
                               offset=np.cumsum([len(s.coord) for s in share]), device=dev)
        labels = torch.as_tensor(np.concatenate([s.labels for s in share]), device=dev)
        tf = None
        if self.teacher is not None:
            with torch.no_grad():
                out = self.teacher(inputs)
                tf = feature_of(out, self.model.feature)
                if self.csp is not None:  # the serialized batch: scenes end to end through the pre-trained block
                    tf = serialized_apply(self.csp, tf, out.levels[0].points.serialization.order(0))
        return inputs, labels, [len(s.coord) for s in share], tf, self.sampler.batch

    def after_update(self, step: int, total: int) -> dict[str, float]:
        if self.teacher is not None:
            ema_update(self.teacher, self.model.encoder, self.cfg.finetune.spd_ema)
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()} if self.teacher is not None else {}

    def load_extra_state(self, blob) -> None:
        if self.teacher is not None and "teacher" in blob:
            self.teacher.load_state_dict(blob["teacher"])


def _split(cfg, ctx: DistContext, pipeline, log) -> tuple[list[LabelledScene], list[LabelledScene], str, tuple]:
    """Training and test scenes with class labels (held-out cubes when there is no test source)."""
    from concerto_ros.train.data import heldout_mask
    from concerto_ros.train.probe import probe_units

    d = cfg.data
    tr_u, te_u, cmap = probe_units(cfg)
    train = load_scenes(tr_u, pipeline, d.window_stride, cmap, cfg.augment, cfg.seed)
    if te_u:
        test = load_scenes(te_u, pipeline, d.window_stride, cmap)
        return [s for s, _ in train], [s for s, _ in test], "test sources", (len(tr_u), len(te_u))

    def part(s: LabelledScene, drop: np.ndarray) -> LabelledScene:
        return LabelledScene(s.coord, s.grid_coord, s.color, np.where(drop, -1, s.labels))

    helds = [heldout_mask(orig, d.heldout_block, d.heldout_fraction) for _, orig in train]
    return [part(s, h) for (s, _), h in zip(train, helds)], [part(s, ~h) for (s, _), h in zip(train, helds)], \
        f"held-out {d.heldout_block} m cubes ({d.heldout_fraction:.0%})", (len(tr_u), 0)


@torch.no_grad()
def _encode(encoder: nn.Module, feature: str, scenes: list[LabelledScene], device) -> tuple[np.ndarray, np.ndarray]:
    from concerto_ros.train.ssl_step import feature_of

    feats, labels = [], []
    for s in scenes:
        b = prepare_input(s.coord, s.grid_coord, color=s.color, device=device)
        feats.append(feature_of(encoder(b), feature).float().cpu().numpy())
        labels.append(s.labels)
    return np.concatenate(feats), np.concatenate(labels)


def finetune_probe(cfg, pipeline, ctx: DistContext, log: Callable[[str], Any], progress: bool, resume: bool,
                   t0: float) -> dict:
    """Fine-tune the pipeline's Concerto encoder with a linear head (see the module docstring).

    Raises:
        ValueError: a pipeline without a Concerto encoder or with a Cross4D one, no labelled
            voxel, a bad ``finetune.csp``.
    """
    from concerto_ros.models.heads import LinearSemanticHead
    from concerto_ros.train.probe import ProbeData, class_weights, evaluate_head, export_probe

    ext = pipeline.extractor
    if ext is None or pipeline.cross4d is not None:
        raise ValueError("finetune.enabled trains the Concerto encoder alone: node.model.enabled must be true and "
                         "node.cross4d.enabled false (and the bundle without a Cross4D encoder)")
    train, test, split, n_src = _split(cfg, ctx, pipeline, log)
    y_all = np.concatenate([s.labels for s in train])
    if not (y_all >= 0).any():
        raise ValueError("no labelled voxel to train on: check data.label_map / ignore_index")
    encoder = copy.deepcopy(ext.encoder).to(ctx.device)
    encoder.config = encoder.config.replace(shuffle_orders=True)
    encoder.requires_grad_(True).train()
    csp = load_csp_block(cfg.finetune.csp, ext.out_channels, ctx.device) if cfg.finetune.csp else None
    k = len(cfg.data.classes)
    w = class_weights(y_all, k, cfg.optim.class_weight, DistContext())
    task = FinetuneTask(cfg, ctx, encoder, ext.feature, train, w if w is not None else torch.ones(k), csp)
    spe = max(1, -(-len(train) // task.sampler.batch))
    o = cfg.optim
    plan = LoopPlan(cfg.loop.epochs * spe, spe, o.lr, o.weight_decay, o.warmup, o.grad_clip,
                    cfg.loop.checkpoint_every, cfg.loop.keep_checkpoints, False, cfg.seed, cfg.amp, desc="fine-tune")
    log(f"fine-tuning {ext.description} with a {k}-class head on {len(train)} scenes; global batch "
        f"{task.sampler.batch} scenes, {plan.total_steps} steps" +
        (f"; SPD weight {cfg.finetune.spd_weight} ({'with' if csp is not None else 'without'} the pointcsp block)"
         if task.teacher is not None else ""))
    result = run_loop(task, plan, ctx, cfg.output_dir, resume=resume, progress=progress, log=log)
    encoder.eval()
    head = LinearSemanticHead(task.model.head.in_features, list(cfg.data.classes))
    head.seg_head.load_state_dict({k_: v.cpu() for k_, v in task.model.head.state_dict().items()})
    ftr, ytr = _encode(encoder, ext.feature, train, ctx.device)
    fte, yte = _encode(encoder, ext.feature, test, ctx.device)
    scores = (evaluate_head(head.eval(), ftr, ytr), evaluate_head(head, fte, yte))
    data = ProbeData(ftr, ytr, fte, yte, split, n_src[0], n_src[1], dict(pipeline.feature_dims))
    export = copy.deepcopy(encoder).cpu()
    export.config = export.config.replace(shuffle_orders=False, drop_path=0.0)
    summary = export_probe(cfg, head, pipeline, data.feature_dims, scores, result,
                           [(ytr >= 0).sum(), (yte >= 0).sum()], data, t0, encoder=export) if ctx.is_main else None
    return ctx.broadcast_object(summary)
