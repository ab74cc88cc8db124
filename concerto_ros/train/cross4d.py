"""``concerto train cross4d``: distil a frozen 2D teacher into the Cross4D 4D encoder.

Cross4D-JEPA (arXiv 2607.00514): every 3D point of a clip takes the teacher's patch feature
at the pixel it projects to in its own frame (:mod:`concerto_ros.train.data`); the student
(:class:`~concerto_ros.models.cross4d.Cross4DEncoder`) plus a per-token head
(:class:`DistillHead`) predicts it under a cosine loss -- no masking, no negatives, no
decoder. ``target.mode: global`` instead predicts one clip-level target (the mean patch
feature of the clip's frames) from the mean token.

Clips are the node's windows: ``node.cross4d.num_frames`` frames, ``node.window.voxel_size``
voxels, ``node.cross4d.points_per_frame`` points per frame, lifting ``node.lift.*``; the
student is ``node.cross4d.preset``. They are prepared once into ``<cache>/cross4d_clips``
(:mod:`concerto_ros.train.prepared`); a step draws ``loop.batch_size`` clips (an epoch
permutation: the distributed sampler over clips) and each process encodes its share, clips of
equal length together.

After every epoch the mean cosine similarity between predictions and targets is measured
on the held-out points (every point of every frame, in held-out cubes, as the node
evaluates whole windows), together with the cosine of the best constant prediction (the mean
training target) as a baseline. Outputs in ``output``: ``cross4d.pt`` (the encoder the node
loads, :func:`~concerto_ros.models.cross4d.load_cross4d`), ``bundle.pt`` (the same encoder
with its window settings and voxel size, for ``model.bundle``), ``checkpoints/``,
``metrics.csv`` (per step), ``eval.csv`` (per epoch), ``heldout_cosine.png``, ``config.yaml``
and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from concerto_ros.models.bundle import bundle_from_parts, save_bundle
from concerto_ros.models.cross4d import Cross4DEncoder, count_parameters, cross4d_config, cross4d_to_dict, save_cross4d
from concerto_ros.train.common import autocast, fmt, plain, print_summary, seed_everything
from concerto_ros.train.config import (LoopConfig, OptimConfig, TeacherConfig, TrainConfig, dump_config, section,
                                       setting, to_dict)
from concerto_ros.train.data import Clip, TargetCache, build_clips, collate, expand_sources, load_recording
from concerto_ros.train.dist import DistContext, EpochSampler
from concerto_ros.train.loop import LoopPlan, StepOutput, Task, run_loop, step_seed

__all__ = ["Cross4DTrainConfig", "DistillHead", "train_cross4d", "evaluate", "plot_curve", "clip_losses"]


@dataclass
class Cross4DDataConfig:
    sources: list[dict] = setting(None, "Recordings with camera images (the Source schema of concerto eval; --data "
                                        "adds one): bags (rosbag2, ROS 1; RGB-D + CameraInfo + /tf), RGB-D folders "
                                        "({path, fx, fy, cx, cy, depth_scale} without camera.yaml).", factory=list)
    min_frames: int = setting(1, "Shortest window turned into a clip (frames).", lo=1, hi=64)
    heldout_fraction: float = setting(0.2, "Share of the heldout_block cubes whose targets are never trained on.",
                                      lo=0.0, hi=1.0)
    heldout_block: float = setting(0.25, "Held-out cube edge, metres.", lo=0.01, hi=100.0)


@dataclass
class Cross4DModelConfig:
    use_color: bool = setting(True, "RGB as extra point channels.")
    overrides: dict = setting(None, "Cross4DConfig fields over the preset (node.cross4d.preset), e.g. "
                                    "{num_anchors: 96}.", factory=dict)


@dataclass
class TargetConfig:
    mode: str = setting("dense", "dense (per point) | global (per clip).", choices=["dense", "global"])


@dataclass
class Cross4DTrainConfig(TrainConfig):
    """``concerto train cross4d`` (``--print-config`` lists every key with its description)."""

    NODE_DEFAULTS = {"cross4d.preset": "small"}

    output: str = setting("outputs/cross4d", "Output folder (cross4d.pt, bundle.pt, logs, plots, checkpoints, cache).")
    data: Cross4DDataConfig = section(Cross4DDataConfig, "Recordings and the held-out split.")
    teacher: TeacherConfig = section(TeacherConfig, "The frozen 2D teacher.")
    model: Cross4DModelConfig = section(Cross4DModelConfig, "Student input and architecture overrides.")
    target: TargetConfig = section(TargetConfig, "What is distilled.")
    loop: LoopConfig = section(lambda: LoopConfig(steps=150, batch_size=1, steps_per_epoch=15, checkpoint_every=50),
                               "Steps, global batch (clips), evaluation and checkpoints.")
    optim: OptimConfig = section(lambda: OptimConfig(lr=1e-3, weight_decay=0.05, warmup=10, grad_clip=1.0),
                                 "AdamW with warm-up and cosine decay.")


class DistillHead(nn.Module):
    """Per-token predictor into the teacher's latent space: LN -> Linear -> GELU -> Linear.

    ``(..., C) -> (..., D)`` with C the encoder width and D the teacher's feature width.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, in_channels), nn.GELU(),
                                 nn.Linear(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _forward(encoder, head, batch, mode: str, use_color: bool):
    out = encoder(batch["points"], batch["times"], feats=batch["feats"] if use_color else None,
                  query=batch["query"], query_feats=batch["query_feats"] if use_color else None)
    if mode == "global":
        return head(out.global_feat)
    return head(out.point_feat)


def clip_losses(pred: torch.Tensor, batch: dict, mode: str) -> torch.Tensor:
    """``(B,)`` per-clip losses: ``1 - cos`` of the clip's prediction and global target
    (``global``), or the mean ``1 - cos`` over the clip's training points (``dense``; 0 with
    gradient for a clip without one)."""
    if mode == "global":
        return 1.0 - F.cosine_similarity(pred.float(), batch["global_target"], dim=-1)
    m = batch["train_mask"].flatten(1)
    err = (1.0 - F.cosine_similarity(pred.float(), batch["targets"], dim=-1)).flatten(1)
    return (err * m).sum(1) / m.sum(1).clamp_min(1)


@torch.no_grad()
def evaluate(encoder, head, clips, cfg, device: torch.device, baseline: Optional[torch.Tensor] = None,
             ctx: Optional[DistContext] = None) -> dict:
    """Mean cosine similarity on held-out (and training) points of ``clips``.

    Every point of every clip frame is queried (``collate(full_query=True)``); inputs are the
    deterministic evenly spaced ``points_per_frame`` subsample. ``baseline`` ``(D,)`` is a
    constant prediction scored the same way. In global mode the clip cosine is reported.

    ``heldout_centered_cos`` scores prediction and target after subtracting ``baseline``
    from both: 0 for the constant prediction, so it measures how much of the point-specific
    part of the teacher's features is predicted.

    Returns:
        ``{"heldout_cos", "train_cos", "baseline_heldout_cos", "heldout_centered_cos",
        "heldout_points"}``.
    """
    encoder.eval()
    head.eval()
    mode, use_color = cfg.target.mode, cfg.model.use_color
    sums = {"h": 0.0, "t": 0.0, "b": 0.0, "c": 0.0}
    n_h = n_t = 0
    for clip in (ctx.shard(clips) if ctx is not None else clips):
        batch = _to(collate([clip], cfg.node.cross4d.points_per_frame, rng=None, full_query=mode == "dense"), device)
        with autocast(device, cfg.amp):
            pred = _forward(encoder, head, batch, mode, use_color).float()
        if mode == "global":
            c = F.cosine_similarity(pred, batch["global_target"], dim=-1)
            sums["h"] += float(c.sum())
            sums["t"] += float(c.sum())
            n_h += len(c)
            n_t += len(c)
            continue
        tg = batch["targets"]
        for key, mask in (("h", batch["heldout_mask"]), ("t", batch["train_mask"])):
            if bool(mask.any()):
                sums[key] += float(F.cosine_similarity(pred[mask], tg[mask], dim=-1).sum())
        hm = batch["heldout_mask"]
        if baseline is not None and bool(hm.any()):
            mu = baseline.to(device)[None]
            sums["b"] += float(F.cosine_similarity(mu, tg[hm], dim=-1).sum())
            sums["c"] += float(F.cosine_similarity(pred[hm] - mu, tg[hm] - mu, dim=-1).sum())
        n_h += int(hm.sum())
        n_t += int(batch["train_mask"].sum())
    encoder.train()
    head.train()
    if ctx is not None:
        sums["h"], sums["t"], sums["b"], sums["c"], n_h, n_t = ctx.all_reduce_sum(
            [sums["h"], sums["t"], sums["b"], sums["c"], n_h, n_t])
        n_h, n_t = int(n_h), int(n_t)
    return {"heldout_cos": sums["h"] / max(n_h, 1), "train_cos": sums["t"] / max(n_t, 1),
            "baseline_heldout_cos": sums["b"] / max(n_h, 1) if baseline is not None else float("nan"),
            "heldout_centered_cos": sums["c"] / max(n_h, 1) if baseline is not None else float("nan"),
            "heldout_points": n_h}


def plot_curve(rows: list[dict], path: str | Path, title: str = "Cross4D distillation") -> Path:
    """PNG of held-out / train cosine per epoch (and the constant baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used via matplotlib.ticker

    ep = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep, [float(r["heldout_cos"]) for r in rows], "o-", label="held-out points")
    ax.plot(ep, [float(r["train_cos"]) for r in rows], "s--", label="training points")
    base = [float(r["baseline_heldout_cos"]) for r in rows]
    if not all(math.isnan(b) for b in base):
        ax.plot(ep, base, ":", color="grey", label="constant (mean target), held-out")
        ax.plot(ep, [float(r["heldout_centered_cos"]) for r in rows], "^-.",
                label="held-out, mean-centred")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean cosine similarity to teacher")
    lows = [v for line in ax.get_lines() for v in line.get_ydata() if not math.isnan(v)]
    ax.set_ylim(min([0.0] + lows) - 0.02, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class _Student(nn.Module):
    """Encoder + head; ``forward(groups)`` with the share's clips collated by length."""

    def __init__(self, encoder: Cross4DEncoder, head: DistillHead, cfg: Cross4DTrainConfig, ctx: DistContext):
        super().__init__()
        self.encoder, self.head, self.cfg, self.ctx = encoder, head, cfg, ctx

    def forward(self, share: tuple[list[dict], int]) -> StepOutput:
        groups, total = share
        losses = [clip_losses(_forward(self.encoder, self.head, b, self.cfg.target.mode, self.cfg.model.use_color),
                              b, self.cfg.target.mode) for b in groups]
        per_clip = torch.cat(losses)
        points = sum(int(np.prod(b["points"].shape[:3])) for b in groups)
        return StepOutput(self.ctx.share_loss(per_clip.sum(), total), {"loss": float(per_clip.detach().sum())},
                          len(per_clip), points)


class Cross4DTask(Task):
    """Distillation step over this process's share of the clips."""

    def __init__(self, cfg: Cross4DTrainConfig, ctx: DistContext, clips: list[Clip], teacher_dim: int, batch: int):
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        enc_cfg = cross4d_config(cfg.node.cross4d.preset, point_channels=3 if cfg.model.use_color else 0,
                                 **cfg.model.overrides)
        self.encoder = Cross4DEncoder(enc_cfg).to(ctx.device)
        self.head = DistillHead(enc_cfg.dim, teacher_dim).to(ctx.device)
        self.model = _Student(self.encoder, self.head, cfg, ctx)
        self.cfg, self.ctx, self.clips = cfg, ctx, clips
        self.sampler = EpochSampler(len(clips), batch, cfg.seed)
        self.baseline = _mean_target(clips, teacher_dim)

    def batch(self, step: int) -> tuple[list[dict], int]:
        """This process's clips of the step, collated by length; each clip's points drawn with
        a seed of ``(seed, step, slot)``, so the batch does not depend on the process count."""
        npf = self.cfg.node.cross4d.points_per_frame
        by_len: dict[int, list[dict]] = {}
        for slot, k in self.sampler.share(step, self.ctx):
            clip = self.clips[k]
            one = collate([clip], npf, rng=np.random.default_rng(step_seed(self.cfg.seed, step, slot)))
            by_len.setdefault(clip.num_frames, []).append(one)
        groups = [{key: torch.cat([b[key] for b in g]) for key in g[0]} for _, g in sorted(by_len.items())]
        return [_to(g, self.ctx.device) for g in groups], self.sampler.batch

    def evaluate(self, step: int) -> dict[str, float]:
        return evaluate(self.encoder, self.head, self.clips, self.cfg, self.ctx.device, self.baseline, self.ctx)


def _mean_target(clips: list[Clip], dim: int) -> torch.Tensor:
    """The constant baseline: the mean training target over every clip frame."""
    tsum, count = torch.zeros(dim), 0
    for c in clips:
        for f in c.frames:
            m = torch.as_tensor(f.visible & ~f.heldout)
            tsum += f.targets[m].float().sum(0)
            count += int(m.sum())
    return tsum / max(count, 1)


def prepare_clips(cfg: Cross4DTrainConfig, ctx: DistContext, log) -> tuple[list[Clip], str]:
    """Clips of every source (with dense targets), built by the processes together and cached
    in ``<cache>/cross4d_clips``.

    Raises:
        ValueError: no source or no clip.
    """
    from concerto_ros.train.prepared import prepare_units

    d, node, t = cfg.data, cfg.node, cfg.teacher
    if not d.sources:
        raise ValueError("no data: set data.sources (a list of {path: ...} entries of bags or RGB-D folders) or give "
                         "--data SOURCE")
    units = expand_sources(d.sources)
    cache = TargetCache(cfg.cache_path / "targets", t.build(ctx.device), t.short_side, ctx.device)
    settings = {"node": {k: to_dict(getattr(node, k)) for k in ("lift", "window", "topics", "sync", "tf")},
                "fixed_frame": node.fixed_frame, "frames": node.cross4d.num_frames, "min_frames": d.min_frames,
                "heldout": [d.heldout_block, d.heldout_fraction], "teacher": [cache.teacher_key, t.lookup,
                                                                             t.zbuffer_tolerance]}

    def build(unit) -> list[Clip]:
        return build_clips(load_recording(unit, node, log), cache, node.cross4d.num_frames, node.window.voxel_size,
                           lookup=t.lookup, zbuffer_tolerance=t.zbuffer_tolerance, heldout_block=d.heldout_block,
                           heldout_fraction=d.heldout_fraction, min_frames=d.min_frames)

    clips = [c for items in prepare_units(units, settings, cfg.cache_path / "cross4d_clips",
                                          build, ctx, log) for c in items]
    if not clips:
        raise ValueError("no clip: the sources gave no frame with points")
    return clips, cache.teacher_key


def train_cross4d(cfg: Cross4DTrainConfig, log: Callable[[str], Any] = print, progress: bool = True,
                  resume: bool = False) -> dict:
    """Run the distillation (see the module docstring); under torchrun every process calls it
    and rank 0 writes the outputs.

    Returns:
        summary dict (every process): ``losses`` (per step), ``eval`` (per-epoch rows),
        ``checkpoint`` (``cross4d.pt``), ``bundle``, ``parameters`` (encoder),
        ``head_parameters``, ``final_heldout_cos``, ``baseline_heldout_cos``,
        ``points_per_s``, ``clips``, ``steps``, ``world_size``.

    Raises:
        ValueError: no data source or a source that cannot be read.
    """
    ctx = DistContext.from_env(cfg.device)
    log = ctx.main_only(log)
    try:
        seed_everything(cfg.seed)
        if ctx.is_main:
            cfg.output_dir.mkdir(parents=True, exist_ok=True)
            (cfg.output_dir / "config.yaml").write_text(dump_config(cfg))
        t0 = time.perf_counter()
        clips, key = prepare_clips(cfg, ctx, log)
        dim = int(clips[0].global_target.shape[0])
        log(f"{len(clips)} clips in {time.perf_counter() - t0:.1f} s; teacher {key} ({dim}-d)")
        batch = max(cfg.loop.batch_size, ctx.world_size)
        task = Cross4DTask(cfg, ctx, clips, dim, batch)
        log(f"Cross4D student '{cfg.node.cross4d.preset}': {count_parameters(task.encoder):,} encoder + "
            f"{count_parameters(task.head):,} head parameters; global batch {batch} on {ctx.world_size} process(es), "
            f"{ctx.device}")
        plan = LoopPlan(cfg.loop.steps, cfg.loop.steps_per_epoch, cfg.optim.lr, cfg.optim.weight_decay,
                        cfg.optim.warmup, cfg.optim.grad_clip, cfg.loop.checkpoint_every, cfg.loop.keep_checkpoints,
                        cfg.loop.eval, cfg.seed, cfg.amp, desc="train cross4d")
        result = run_loop(task, plan, ctx, cfg.output_dir, resume=resume, progress=progress,
                          tensorboard=cfg.log == "tensorboard", log=log)
        summary = _export(cfg, task, result, key, dim, ctx) if ctx.is_main else None
        return ctx.broadcast_object(summary)
    finally:
        ctx.close()


def _export(cfg: Cross4DTrainConfig, task: Cross4DTask, result, key: str, dim: int, ctx: DistContext) -> dict:
    """Rank 0: ``cross4d.pt``, ``bundle.pt``, the curve, ``summary.json`` and the table."""
    out, c4, mode = cfg.output_dir, cfg.node.cross4d, cfg.target.mode
    extra = {"preset": c4.preset, "teacher": key, "teacher_dim": dim, "target_mode": mode,
             "num_frames": c4.num_frames, "points_per_frame": c4.points_per_frame,
             "voxel_size": cfg.node.window.voxel_size, "use_color": cfg.model.use_color, "steps": cfg.loop.steps}
    final = save_cross4d(out / "cross4d.pt", task.encoder, task.head, extra=extra)
    last = result.eval_rows[-1] if result.eval_rows else {}
    bundle = bundle_from_parts(
        cross4d=cross4d_to_dict(task.encoder, extra=extra), voxel_size=cfg.node.window.voxel_size,
        cross4d_settings={"num_frames": c4.num_frames, "points_per_frame": c4.points_per_frame, "average": "points"},
        metadata={"description": f"Cross4D '{c4.preset}' encoder distilled from {key} ({mode})",
                  "command": "concerto train cross4d", "config": json.loads(json.dumps(to_dict(cfg), default=str)),
                  "metrics": plain({k: last[k] for k in ("heldout_cos", "baseline_heldout_cos", "train_cos")
                                    if k in last})})
    bundle_path = save_bundle(bundle, out / "bundle.pt")
    if result.eval_rows:
        plot_curve(result.eval_rows, out / "heldout_cosine.png",
                   title=f"Cross4D '{c4.preset}' <- {key.split('-')[0]} ({mode})")
    losses = result.column("loss")
    summary = {
        "losses": losses, "eval": result.eval_rows, "checkpoint": str(final), "bundle": str(bundle_path),
        "parameters": count_parameters(task.encoder), "head_parameters": count_parameters(task.head),
        "final_heldout_cos": last.get("heldout_cos", float("nan")),
        "baseline_heldout_cos": last.get("baseline_heldout_cos", float("nan")),
        "points_per_s": result.points_per_s, "clips": len(task.clips), "steps": cfg.loop.steps,
        "world_size": ctx.world_size, "wall_s": result.wall_s}
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2,
                                                 default=str))
    print_summary("concerto train cross4d", [
        ("clips", len(task.clips)), ("teacher", key), ("student", f"{c4.preset} ({summary['parameters']:,} params)"),
        ("target mode", mode), ("steps x global batch", f"{cfg.loop.steps} x {task.sampler.batch}"),
        ("processes", ctx.world_size),
        ("first / last loss", f"{fmt(losses[0])} / {fmt(losses[-1])}" if losses else "-"),
        ("held-out cosine", fmt(summary["final_heldout_cos"])),
        ("constant baseline", fmt(summary["baseline_heldout_cos"])),
        ("held-out mean-centred cosine", fmt(last.get("heldout_centered_cos"))),
        ("points/s", f"{result.points_per_s:,.0f}"), ("wall time", f"{result.wall_s:.1f} s"),
        ("checkpoint", str(final)), ("bundle", str(bundle_path))])
    return summary
