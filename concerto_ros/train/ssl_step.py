"""The step of ``concerto train ssl``: views, the EMA teacher's targets, the student's losses.

Every scene of a step is its own encoder forward (its views batched together): PTv3 keeps
samples apart, but its serialization depth is computed over a whole batch (the largest grid
coordinate), so batching several scenes would make a scene's features depend on which scenes
share its forward -- and data-parallel runs on different process counts would differ. One
forward per scene keeps a scene's computation the same however the global batch is split.
Cross-sample propagation (``pointcsp``) then lays the scenes' features end to end on purpose,
after the encoder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from concerto_ros.models.ptv3 import EncoderOutput, PointBatch, all_levels_feature, concerto_point_feature, prepare_input
from concerto_ros.train.common import autocast
from concerto_ros.train.dist import DistContext, EpochSampler
from concerto_ros.train.loop import StepOutput, Task, step_seed
from concerto_ros.train.objectives.concerto import Projector, joint_embedding_loss
from concerto_ros.train.objectives.distill import (PrototypeHead, distill_loss, ema_momentum, ema_update,
                                                   teacher_entropy, teacher_temperature)
from concerto_ros.train.objectives.msm import MSMDecoder, level_masks, masked_cosine_loss, msm_loss
from concerto_ros.train.objectives.pointcsp import CSPBlock, GeometryDecoder, geometry_loss, serialized_apply
from concerto_ros.train.views import SSLScene, View, make_view, mask_blocks, match_views

__all__ = ["feature_of", "Sample", "SSLBatch", "SSLModel", "SSLTask", "collate_views", "propagate"]


def feature_of(output: EncoderOutput, feature: str) -> torch.Tensor:
    """The per-voxel feature layout ``feature`` (``concat3`` | ``all_levels``) of ``output``:
    ``(M_0, D) float``."""
    return concerto_point_feature(output) if feature == "concat3" else all_levels_feature(output)


def collate_views(views: list[View], device: torch.device, with_mask: bool) -> PointBatch:
    """The views as one encoder batch (a sample per view; masks set when ``with_mask``)."""
    batch = prepare_input(np.concatenate([v.coord for v in views]), np.concatenate([v.grid_coord for v in views]),
                          color=np.concatenate([v.color for v in views]),
                          offset=np.cumsum([len(v.coord) for v in views]), device=device)
    if with_mask:
        batch.mask = torch.as_tensor(np.concatenate([v.mask for v in views]), device=device)
    return batch


def view_rows(offset: torch.Tensor, view: int) -> slice:
    """Rows of view ``view`` in a level whose per-view cumulative counts are ``offset``."""
    return slice(int(offset[view - 1]) if view > 0 else 0, int(offset[view]))


def propagate(block: nn.Module, feats: list[torch.Tensor], outs: list[EncoderOutput]) -> list[torch.Tensor]:
    """``block`` over the scenes' features laid end to end, each scene in its serialization
    order (level 0, first order): the recurrent state carries from one scene into the next."""
    orders, base = [], 0
    for f, o in zip(feats, outs):
        orders.append(o.levels[0].points.serialization.order(0) + base)
        base += f.shape[0]
    out = serialized_apply(block, torch.cat(feats), torch.cat(orders))
    return list(out.split([f.shape[0] for f in feats]))


@dataclass
class Sample:
    """One scene of a step and what the student needs from the teacher.

    Attributes:
        teacher_views: the large views, unmasked (the teacher's input).
        student_views: the large views block-masked, then the small ones.
        matches: ``(student view, teacher view, rows of the student view, rows of the teacher
            view)``: nearest voxels within ``views.match_radius`` in the original coordinates.
        seed: seeds the global RNG before the sample's student forward (the encoder draws its
            serialization orders from it), so a sample's forward is the same on any process.
        student_input: the student views as one batch.
        teacher_logits: per teacher view ``(V, K)`` prototype logits (distillation).
        teacher_levels / teacher_offsets: per level the ``(M_l, C_l)`` teacher features of the
            teacher views and their per-view cumulative counts (msm).
    """

    scene: SSLScene
    teacher_views: list[View]
    student_views: list[View]
    matches: list[tuple[int, int, np.ndarray, np.ndarray]] = field(default_factory=list)
    seed: int = 0
    student_input: Optional[PointBatch] = None
    teacher_logits: Optional[list[torch.Tensor]] = None
    teacher_levels: Optional[list[torch.Tensor]] = None
    teacher_offsets: Optional[list[torch.Tensor]] = None


@dataclass
class SSLBatch:
    """This process's share of a step: its samples, the teacher's ``(K,)`` logit centre and
    temperature, and the global batch size (for
    :meth:`~concerto_ros.train.dist.DistContext.share_loss`)."""

    samples: list[Sample]
    center: Optional[torch.Tensor]
    teacher_temp: float
    total: int


class SSLModel(nn.Module):
    """The trainable side: the student encoder and the heads of the active objectives.

    ``forward(batch)`` encodes each sample, runs the heads and returns the
    :class:`~concerto_ros.train.loop.StepOutput` of the weighted per-sample losses.
    """

    def __init__(self, cfg, encoder: nn.Module, feature: str, feat_dim: int, dim2d: int, ctx: DistContext):
        super().__init__()
        s, objs = cfg.ssl, cfg.objectives
        chans = list(encoder.config.enc_channels)
        self.cfg, self.feature, self.ctx = cfg, feature, ctx
        self.encoder = encoder
        self.distill = "concerto" in objs or "pointcsp" in objs
        self.proto = PrototypeHead(feat_dim, s.prototypes, s.head_hidden, s.head_bottleneck) if self.distill else None
        self.projector = Projector(feat_dim, dim2d, s.head_hidden) if "concerto" in objs else None
        self.msm = MSMDecoder(chans) if "msm" in objs else None
        csp = s.pointcsp
        self.csp = CSPBlock(feat_dim, csp.heads, csp.chunk) if "pointcsp" in objs else None
        self.geo = GeometryDecoder(chans, csp.geo_levels) if "pointcsp" in objs and csp.geo_weight > 0 else None

    def metric_names(self) -> tuple[str, ...]:
        names = ["loss"]
        names += ["loss_3d", "kl_3d"] if self.distill else []
        names += ["loss_2d"] if self.projector is not None else []
        names += ["loss_msm"] if self.msm is not None else []
        names += ["loss_geo"] if self.geo is not None else []
        return tuple(names)

    def head_inputs(self, outs: list[EncoderOutput]) -> list[torch.Tensor]:
        """Per sample the feature the heads read (propagated across samples for pointcsp)."""
        feats = [feature_of(o, self.feature) for o in outs]
        return feats if self.csp is None else propagate(self.csp, feats, outs)

    def msm_predictions(self, out: EncoderOutput, mask: torch.Tensor):
        """``(predictions per level, masks per level)`` of the MSM decoder on ``out``."""
        inverses = [lvl.pooling_inverse for lvl in out.levels]
        masks = level_masks(mask, inverses, [lvl.feat.shape[0] for lvl in out.levels])
        return self.msm([lvl.feat for lvl in out.levels], inverses, masks), masks

    def _encode(self, smp: Sample) -> EncoderOutput:
        torch.manual_seed(smp.seed)
        return self.encoder(smp.student_input)

    def forward(self, batch: SSLBatch) -> StepOutput:
        outs = [self._encode(s) for s in batch.samples]
        feats = [feature_of(o, self.feature) for o in outs]
        heads_in = feats if self.csp is None else propagate(self.csp, feats, outs)
        sums = dict.fromkeys(self.metric_names(), 0.0)
        total, points = feats[0].new_zeros(()), 0
        for smp, out, feat, head_in in zip(batch.samples, outs, feats, heads_in):
            rows = [view_rows(out.levels[0].points.offset, j) for j in range(len(smp.student_views))]
            terms: dict[str, Any] = {}
            if self.proto is not None:
                logits = self.proto(head_in).float()
                terms.update(self._distill_terms(smp, [logits[r] for r in rows], batch))
            if self.projector is not None:
                terms["loss_2d"] = self._joint_term(smp, [feat[r] for r in rows])
            if self.msm is not None:
                terms["loss_msm"] = self._msm_term(smp, out)
            if self.geo is not None:
                preds = self.geo([lvl.feat for lvl in out.levels])
                terms["loss_geo"] = geometry_loss(preds, [out.levels[lv].points.coord for lv in self.geo.levels])
            loss_i = self._weighted(terms)
            total, points = total + loss_i, points + smp.student_input.num_points
            sums["loss"] += float(loss_i.detach())
            for k, v in terms.items():
                sums[k] += float(v.detach()) if torch.is_tensor(v) else float(v)
        return StepOutput(self.ctx.share_loss(total, batch.total), sums, len(batch.samples), points)

    def _weighted(self, terms: dict) -> torch.Tensor:
        s = self.cfg.ssl
        w = {"loss_3d": s.loss_3d, "loss_2d": s.loss_2d, "loss_msm": s.msm.weight, "loss_geo": s.pointcsp.geo_weight}
        return sum(w[k] * v for k, v in terms.items() if k in w)

    def _distill_terms(self, smp: Sample, s_logits: list[torch.Tensor], batch: SSLBatch) -> dict:
        dev, st = s_logits[0].device, self.cfg.ssl.student_temp
        terms, ents = [], []
        for si, ti, ia, ib in smp.matches:
            tl = smp.teacher_logits[ti][torch.as_tensor(ib, device=dev)]
            terms.append(distill_loss(s_logits[si][torch.as_tensor(ia, device=dev)], tl, batch.center, st,
                                      batch.teacher_temp))
            ents.append(float(teacher_entropy(tl, batch.center, batch.teacher_temp)))
        loss = torch.stack(terms).mean() if terms else s_logits[0].sum() * 0.0
        return {"loss_3d": loss, "kl_3d": float(loss.detach()) - (float(np.mean(ents)) if ents else 0.0)}

    def _joint_term(self, smp: Sample, feats: list[torch.Tensor]) -> torch.Tensor:
        preds, tgts = [], []
        sc = smp.scene
        for v, f in zip(smp.teacher_views, feats):  # the student's large views (same geometry)
            ok = sc.visible[v.source] & ~sc.heldout[v.source]
            if ok.any():
                preds.append(self.projector(f[torch.as_tensor(ok, device=f.device)]))
                tgts.append(sc.target[torch.as_tensor(v.source[ok])].float().to(f.device))
        if not preds:
            return feats[0].sum() * 0.0
        return joint_embedding_loss(torch.cat(preds), torch.cat(tgts))

    def _msm_term(self, smp: Sample, out: EncoderOutput) -> torch.Tensor:
        """The masked-scene-modeling loss of a sample: its large views, every level."""
        preds, masks = self.msm_predictions(out, smp.student_input.mask)
        ng = len(smp.teacher_views)
        p_l, t_l, m_l = [], [], []
        for lvl in range(len(preds)):
            s_rows = [view_rows(out.levels[lvl].points.offset, j) for j in range(ng)]
            t_rows = [view_rows(smp.teacher_offsets[lvl], j) for j in range(ng)]
            p_l.append(torch.cat([preds[lvl][r] for r in s_rows]))
            m_l.append(torch.cat([masks[lvl][r] for r in s_rows]))
            t_l.append(torch.cat([smp.teacher_levels[lvl][r] for r in t_rows]))
        return msm_loss(p_l, t_l, m_l)


class SSLTask(Task):
    """The self-supervised step: views of this process's share, the EMA teacher's targets,
    the student's losses; the EMA update, the teacher's logit centre and the evaluation."""

    def __init__(self, cfg, ctx: DistContext, scenes: list[SSLScene], encoder: nn.Module, feature: str,
                 batch_size: int):
        from concerto_ros.models.extractor import feature_channels

        self.cfg, self.ctx, self.scenes, self.feature = cfg, ctx, scenes, feature
        torch.manual_seed(cfg.seed)  # the heads start the same on every process
        self.feat_dim = feature_channels(list(encoder.config.enc_channels), feature)
        self.model = SSLModel(cfg, encoder, feature, self.feat_dim, int(scenes[0].target.shape[1]), ctx).to(ctx.device)
        self.metric_names = self.model.metric_names()
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)  # EMA of every student module
        self.center = torch.zeros(cfg.ssl.prototypes, device=ctx.device)
        self.sampler = EpochSampler(len(scenes), batch_size, cfg.seed)
        self._last: Optional[SSLBatch] = None
        n = min(len(scenes), cfg.data.eval_scenes)
        self.eval_set = [scenes[i] for i in sorted(set(np.linspace(0, len(scenes) - 1, n).round().astype(int)))]

    # -- the batch
    def _mask(self) -> tuple[float, float]:
        v, s, objs = self.cfg.views, self.cfg.ssl, self.cfg.objectives
        if "msm" in objs:
            return s.msm.mask_ratio, s.msm.mask_size
        return (v.mask_ratio if "concerto" in objs else 0.0), v.mask_size

    def make_sample(self, scene: SSLScene, rng: np.random.Generator) -> Sample:
        """The views of ``scene`` (all randomness from ``rng``) and their matches."""
        v, voxel = self.cfg.views, self.cfg.node.window.voxel_size
        ratio, size = self._mask()
        globals_ = [make_view(scene, rng, v.global_crop, v, voxel) for _ in range(v.global_views)]
        locals_ = [make_view(scene, rng, v.local_crop, v, voxel) for _ in range(v.local_views)]
        masked = [View(g.coord, g.grid_coord, g.color, g.source, mask_blocks(g, rng, ratio, size)) for g in globals_]
        smp = Sample(scene, globals_, masked + locals_)
        if self.model.distill:
            for si, sv in enumerate(smp.student_views):
                for ti, tv in enumerate(globals_):
                    ia, ib = match_views(scene, sv, tv, v.match_radius)
                    if si == ti:  # a view with itself: its masked voxels only (masked point modelling)
                        ia, ib = ia[sv.mask[ia]], ib[sv.mask[ia]]
                    if len(ia):
                        smp.matches.append((si, ti, ia, ib))
        return smp

    @torch.no_grad()
    def _teacher(self, samples: list[Sample]) -> None:
        dev, t = self.ctx.device, self.teacher
        outs = [t.encoder(collate_views(s.teacher_views, dev, False)) for s in samples]
        if self.model.distill:
            for smp, out, h in zip(samples, outs, t.head_inputs(outs)):
                smp.teacher_logits = list(torch.split(t.proto(h).float(), [len(v.coord) for v in smp.teacher_views]))
        if self.model.msm is not None:
            for smp, out in zip(samples, outs):
                smp.teacher_levels = [lvl.feat.float() for lvl in out.levels]
                smp.teacher_offsets = [lvl.points.offset for lvl in out.levels]

    def batch(self, step: int) -> SSLBatch:
        s, dev = self.cfg.ssl, self.ctx.device
        samples = []
        for slot, k in self.sampler.share(step, self.ctx):
            seed = step_seed(self.cfg.seed, step, slot)
            samples.append(self.make_sample(self.scenes[k], np.random.default_rng(seed)))
            samples[-1].seed, samples[-1].student_input = seed, collate_views(samples[-1].student_views, dev, True)
        with autocast(dev, self.cfg.amp):
            self._teacher(samples)
        temp = teacher_temperature(step, s.teacher_temp, s.teacher_temp_warmup, s.teacher_temp_warmup_steps)
        self._last = SSLBatch(samples, self.center, temp, self.sampler.batch)
        return self._last

    # -- after the update
    def after_update(self, step: int, total: int) -> dict[str, float]:
        s, b = self.cfg.ssl, self._last
        m = ema_momentum(step, total, s.ema[0], s.ema[1])
        ema_update(self.teacher, self.model, m)
        row = {"ema": m}
        if b is not None and self.model.distill:  # centre: EMA of the per-sample mean teacher logits
            means = torch.stack([torch.cat(smp.teacher_logits).mean(0) for smp in b.samples]).sum(0)
            summed = torch.as_tensor(self.ctx.all_reduce_sum(means.double().cpu().numpy()))
            self.center.mul_(s.center_momentum).add_((summed / b.total).to(self.center), alpha=1 - s.center_momentum)
            row["teacher_temp"] = b.teacher_temp
        self._last = None
        return row

    # -- evaluation
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """On un-augmented evaluation scenes (sharded over the processes): held-out / training
        2D cosine of the projector (concerto), teacher prototypes in use (distillation; 1 =
        collapse), masked-prediction cosine over the levels under a fixed mask (msm)."""
        from concerto_ros.cloud.voxel import grid_sample

        sums, used = np.zeros(6), set()
        self.model.eval()
        for k, sc in enumerate(self.ctx.shard(self.eval_set)):
            gs = grid_sample(sc.coord, self.cfg.node.window.voxel_size)
            batch = prepare_input(sc.coord[gs.index], gs.grid_coord, color=sc.color[gs.index], device=self.ctx.device)
            sums += self._eval_scene(sc, gs.index, batch, used, k)
        self.model.train()
        sums = self.ctx.all_reduce_sum(sums)
        row: dict[str, float] = {}
        if self.model.projector is not None:
            row.update(heldout_cos=sums[0] / max(sums[1], 1), train_cos=sums[2] / max(sums[3], 1))
        if self.model.distill:
            row["prototypes_used"] = len(set().union(*self.ctx.all_gather_object(used)))
        if self.model.msm is not None:
            row["msm_cos"] = 1.0 - sums[4] / max(sums[5], 1)
        return row

    def _eval_scene(self, sc: SSLScene, idx: np.ndarray, batch: PointBatch, used: set, k: int) -> np.ndarray:
        out, mdl = np.zeros(6), self.model
        if mdl.projector is not None:
            pred = mdl.projector(feature_of(mdl.encoder(batch), self.feature)).float().cpu()
            tgt, vis, held = sc.target[torch.as_tensor(idx)].float(), sc.visible[idx], sc.heldout[idx]
            for j, m in ((0, vis & held), (2, vis & ~held)):
                if m.any():
                    mt = torch.as_tensor(m)
                    out[j] += float(F.cosine_similarity(pred[mt], tgt[mt], dim=-1).sum())
                    out[j + 1] += int(m.sum())
        if mdl.distill:
            t_out = self.teacher.encoder(batch)
            used.update(self.teacher.proto(self.teacher.head_inputs([t_out])[0]).argmax(1).unique().tolist())
        if mdl.msm is not None:
            out[4:6] = self._eval_msm(batch, k)
        return out

    def _eval_msm(self, batch: PointBatch, k: int) -> tuple[float, int]:
        s = self.cfg.ssl.msm
        view = View(batch.coord.cpu().numpy(), batch.grid_coord.cpu().numpy(), None, None, None)
        mask = torch.as_tensor(mask_blocks(view, np.random.default_rng([0, k]), s.mask_ratio, s.mask_size),
                               device=self.ctx.device)
        t_out = self.teacher.encoder(batch)
        masked = PointBatch(batch.coord, batch.grid_coord, batch.feat, batch.offset, mask)
        preds, masks = self.model.msm_predictions(self.model.encoder(masked), mask)
        losses = [masked_cosine_loss(p, t.feat, m) for p, t, m in zip(preds, t_out.levels, masks)]
        losses = [float(x) for x in losses if x is not None]
        return (float(np.mean(losses)), 1) if losses else (0.0, 0)

    # -- state
    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "center": self.center.cpu()}

    def load_extra_state(self, blob) -> None:
        self.teacher.load_state_dict(blob["teacher"])
        self.center.copy_(blob["center"].to(self.center.device))
