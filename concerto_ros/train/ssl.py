"""``concerto train ssl``: self-supervised training of the Concerto PTv3 encoder on recordings.

The objectives (``ssl.objective``, combinable with ``+``; see
:mod:`concerto_ros.train.objectives`):

* ``concerto`` (default; Concerto, arXiv 2510.23607): 3D self-distillation between a student
  and its EMA teacher on matched voxels of augmented views, plus the 2D-3D joint embedding of
  a frozen image model's patch features (DINOv2 from a local file, or a seeded ViT stand-in);
* ``msm`` (Masked Scene Modeling, arXiv 2504.06719): the teacher's features of block-masked
  voxels predicted at every encoder level, deepest first, cosine loss per level;
* ``pointcsp`` (arXiv 2605.01759): the 3D self-distillation with a gated delta-rule layer
  over the batch's features laid end to end (state carried across samples) before the
  prototype head, plus the geometric term (xyz from several levels, L2).

Scenes are windows of the node's own sliding video point cloud (``node.window.*``, lifting
``node.lift.*``) over ``data.sources`` (bags, RGB-D folders, organized PCD files), prepared
once into ``<cache>/ssl_scenes`` by the processes together (:mod:`concerto_ros.train.prepared`).
Each step draws a global batch of ``loop.batch_size`` scenes (a seeded permutation per epoch
of the scene list: the distributed sampler over windows); each process makes the views of its
share and runs the teacher and the student on them in one batched forward each.

Outputs in ``output``: ``bundle.pt`` (the EMA teacher encoder: ``node.model.bundle``, or chain
``concerto train probe`` on it), ``encoder.pt`` (the same in the released ``{"config",
"state_dict"}`` layout for ``model.checkpoint``), ``csp.pt`` (``pointcsp``: the teacher's
propagation block, for the probe's semantic preservation distillation), ``checkpoints/``,
``metrics.csv`` (per step), ``eval.csv`` (per epoch), ``ssl_curves.png``, ``config.yaml``,
``summary.json``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from concerto_ros.train.common import count_parameters, fmt, plain, print_summary
from concerto_ros.train.config import (LoopConfig, OptimConfig, TeacherConfig, TrainConfig, dump_config, section,
                                       setting, to_dict)
from concerto_ros.train.dist import DistContext
from concerto_ros.train.loop import LoopPlan, first_last, run_loop
from concerto_ros.train.objectives import parse_objective
from concerto_ros.train.ssl_step import SSLTask, feature_of
from concerto_ros.train.views import SSLScene, ViewsConfig

__all__ = ["SSLConfig", "train_ssl", "prepare_scenes", "feature_of", "plot_curves"]


# ----------------------------------------------------------------------------- configuration
@dataclass
class SSLDataConfig:
    sources: list[dict] = setting(None, "Unlabelled recordings (the Source schema of concerto eval; --data adds one): "
                                        "bags (rosbag2, ROS 1; RGB-D + CameraInfo + /tf, or PointCloud2), RGB-D "
                                        "folders ({path, fx, fy, cx, cy, depth_scale} without camera.yaml), PCD files "
                                        "({type: pcd, path}: each file a scene), point arrays, SemanticKITTI scans. "
                                        "Sources without images train the 3D objectives only.", factory=list)
    window_stride: int = setting(2, "Every k-th window of the node's sliding window (and the last) is a scene.",
                                 lo=1, hi=100_000)
    max_voxels: int = setting(60000, "Larger windows keep a seeded uniform subset of this many voxels (0: all).",
                              lo=0, hi=100_000_000)
    heldout_fraction: float = setting(0.1, "Share of the heldout_block cubes whose 2D targets are never trained on "
                                           "(held-out check).", lo=0.0, hi=1.0)
    heldout_block: float = setting(0.25, "Held-out cube edge, metres.", lo=0.01, hi=100.0)
    eval_scenes: int = setting(8, "Scenes (evenly spread) of the per-epoch evaluation.", lo=1, hi=100_000)


@dataclass
class MSMConfig:
    weight: float = setting(1.0, "Weight of the masked-scene-modeling loss.", lo=0.0, hi=1000.0)
    mask_ratio: float = setting(0.4, "Share of the mask cells of the student's large views (paper: 0.4; 0.3-0.6 "
                                     "works).", lo=0.0, hi=0.95)
    mask_size: float = setting(0.1, "Mask cell edge, metres.", lo=0.001, hi=10.0)


@dataclass
class PointCSPConfig:
    heads: int = setting(4, "Heads of the gated delta-rule layer (must divide the feature width).", lo=1, hi=64)
    chunk: int = setting(64, "Chunk length of the scan (tokens).", lo=1, hi=65536)
    geo_weight: float = setting(0.1, "Weight of the geometric term (xyz reconstruction, square metres).", lo=0.0,
                                hi=1000.0)
    geo_levels: list[int] = setting(None, "Encoder levels decoded back to xyz.", lo=0, hi=15,
                                    factory=lambda: [1, 3, 4])


@dataclass
class SSLObjectiveConfig:
    objective: str = setting("concerto", "Objectives joined by '+': concerto (3D distillation + 2D-3D), msm (Masked "
                                         "Scene Modeling), pointcsp (cross-sample propagation + geometry).")
    drop_path: float = setting(0.0, "Stochastic depth of a random start.", lo=0.0, hi=0.9)
    prototypes: int = setting(64, "Prototypes of the distillation head.", lo=2, hi=65536)
    head_hidden: int = setting(256, "Hidden width of the heads.", lo=8, hi=16384)
    head_bottleneck: int = setting(64, "Bottleneck width of the prototype head.", lo=4, hi=4096)
    student_temp: float = setting(0.1, "Student softmax temperature.", lo=1e-3, hi=10.0)
    teacher_temp: float = setting(0.04, "Teacher softmax temperature (after warm-up).", lo=1e-3, hi=10.0)
    teacher_temp_warmup: float = setting(0.04, "Teacher temperature at step 0 (linear to teacher_temp).", lo=1e-3,
                                         hi=10.0)
    teacher_temp_warmup_steps: int = setting(100, "Teacher temperature warm-up steps.", lo=0, hi=10_000_000)
    center_momentum: float = setting(0.9, "Momentum of the running centre of the teacher logits.", lo=0.0, hi=1.0)
    ema: list[float] = setting(None, "Teacher momentum, cosine from the first value to the second.", lo=0.0, hi=1.0,
                               factory=lambda: [0.994, 1.0])
    loss_3d: float = setting(1.0, "Weight of the 3D self-distillation (concerto, pointcsp).", lo=0.0, hi=1000.0)
    loss_2d: float = setting(1.0, "Weight of the 2D-3D joint embedding (concerto).", lo=0.0, hi=1000.0)
    msm: MSMConfig = section(MSMConfig, "Masked Scene Modeling (arXiv 2504.06719).")
    pointcsp: PointCSPConfig = section(PointCSPConfig, "PointCSP (arXiv 2605.01759).")


@dataclass
class SSLConfig(TrainConfig):
    """``concerto train ssl`` (``--print-config`` lists every key with its description)."""

    NODE_DEFAULTS = {"model.feature": "all_levels"}

    output: str = setting("outputs/ssl", "Output folder (bundle.pt, encoder.pt, logs, plots, checkpoints, cache).")
    data: SSLDataConfig = section(SSLDataConfig, "Unlabelled recordings and the held-out check.")
    teacher: TeacherConfig = section(TeacherConfig, "The frozen 2D image model of the joint embedding (concerto).")
    views: ViewsConfig = section(ViewsConfig, "Augmented views of a scene.")
    ssl: SSLObjectiveConfig = section(SSLObjectiveConfig, "Objectives and their heads.")
    loop: LoopConfig = section(LoopConfig, "Steps, global batch, evaluation and checkpoints.")
    optim: OptimConfig = section(OptimConfig, "AdamW with warm-up and cosine decay.")

    @property
    def objectives(self) -> tuple[str, ...]:
        return parse_objective(self.ssl.objective)

    def validate(self) -> None:
        objs = self.objectives
        if self.ssl.ema[0] > self.ssl.ema[1] or len(self.ssl.ema) != 2:
            raise ValueError(f"ssl.ema must be [start, end] with start <= end, got {self.ssl.ema}")
        if "pointcsp" in objs and not self.ssl.pointcsp.geo_levels and self.ssl.pointcsp.geo_weight > 0:
            raise ValueError("ssl.pointcsp.geo_levels is empty: list encoder levels or set ssl.pointcsp.geo_weight: 0")
        for name in ("global_crop", "local_crop", "scale"):
            v = getattr(self.views, name)
            if len(v) != 2 or v[0] > v[1]:
                raise ValueError(f"views.{name} must be [min, max], got {v}")


# ----------------------------------------------------------------------------- data
def prepare_scenes(cfg: SSLConfig, ctx: DistContext, log: Callable[[str], Any]) -> tuple[list[SSLScene], str]:
    """The training scenes of ``data.sources`` (with 2D targets when ``concerto`` is on), built
    by the processes together and cached in ``<cache>/ssl_scenes``.

    Returns:
        ``(scenes, 2D teacher key or "")``.

    Raises:
        ValueError: no source, or no scene with a point.
    """
    from concerto_ros.train.data import TargetCache, expand_sources, load_recording
    from concerto_ros.train.prepared import prepare_units
    from concerto_ros.train.views import build_scenes

    d, node, t = cfg.data, cfg.node, cfg.teacher
    if not d.sources:
        raise ValueError("no data: set data.sources (recordings: bags, RGB-D folders, PCD files, point arrays) or "
                         "give --data SOURCE")
    units = expand_sources(d.sources)
    concerto = "concerto" in cfg.objectives
    cache = TargetCache(cfg.cache_path / "targets", t.build(ctx.device), t.short_side, ctx.device) if concerto else None
    key = cache.teacher_key if cache is not None else ""
    settings = {"node": {k: to_dict(getattr(node, k)) for k in ("lift", "window", "topics", "sync", "tf")},
                "fixed_frame": node.fixed_frame, "data": {k: getattr(d, k) for k in (
                    "window_stride", "max_voxels", "heldout_fraction", "heldout_block")},
                "teacher": [key, t.lookup, t.zbuffer_tolerance], "seed": cfg.seed}

    def build(unit) -> list[SSLScene]:
        recs = [load_recording(unit, node, log)]
        if cache is None:
            return build_scenes(recs, _NoTargets(), node.window.num_frames, node.window.voxel_size, d.window_stride,
                                heldout_fraction=0.0, max_voxels=d.max_voxels, seed=cfg.seed)
        return build_scenes(recs, cache, node.window.num_frames, node.window.voxel_size, d.window_stride,
                            lookup=t.lookup, zbuffer_tolerance=t.zbuffer_tolerance, heldout_block=d.heldout_block,
                            heldout_fraction=d.heldout_fraction, max_voxels=d.max_voxels, seed=cfg.seed)

    scenes = [s for items in prepare_units(units, settings, cfg.cache_path / "ssl_scenes", build, ctx, log)
              for s in items]
    if not scenes:
        raise ValueError("no training scene: the sources gave no points")
    return scenes, key


class _NoTargets:
    """A stand-in target cache for objectives without 2D targets: one channel, never visible."""

    channels = 1

    def targets(self, recording: str, frame, coord: np.ndarray, lookup: str = "", tolerance: float = 0.0):
        return torch.zeros(len(coord), 1), np.zeros(len(coord), dtype=bool)


# ----------------------------------------------------------------------------- the command
def train_ssl(cfg: SSLConfig, log: Callable[[str], Any] = print, progress: bool = True, resume: bool = False) -> dict:
    """Run ``concerto train ssl`` (see the module docstring); under torchrun every process calls
    it and rank 0 writes the outputs.

    Returns:
        The summary (every process): ``objective``, per-step ``losses`` (and ``losses_3d``,
        ``kl_3d``, ``losses_2d``, ``losses_msm``, ``losses_geo`` for the active terms),
        ``eval`` rows, ``bundle``, ``encoder``, ``scenes``, ``voxels``, ``steps``,
        ``parameters``, ``feature_dim``, ``points_per_s``, ``wall_s``, ``world_size``.

    Raises:
        ValueError: no data, bad settings. FileNotFoundError: a missing path.
    """
    from concerto_ros.train.common import seed_everything
    from concerto_ros.train.encoders import start_encoder

    ctx = DistContext.from_env(cfg.device)
    log = ctx.main_only(log)
    try:
        seed_everything(cfg.seed)
        out_dir = cfg.output_dir
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.yaml").write_text(dump_config(cfg))
        t0 = time.perf_counter()
        scenes, key2d = prepare_scenes(cfg, ctx, log)
        log(f"{len(scenes)} scenes ({sum(s.num_voxels for s in scenes):,} voxels) in {time.perf_counter() - t0:.1f} s"
            + (f"; 2D teacher {key2d}" if key2d else ""))
        encoder, feature, desc = start_encoder(cfg.node, ctx.device, cfg.ssl.drop_path, log)
        batch = _global_batch(cfg.loop.batch_size, ctx, log)
        task = SSLTask(cfg, ctx, scenes, encoder, feature, batch)
        log(f"objective {'+'.join(cfg.objectives)}; encoder {desc}: {count_parameters(encoder):,} parameters, feature "
            f"'{feature}' {task.feat_dim}-d; global batch {batch} scene(s) on {ctx.world_size} process(es), {ctx.device}")
        plan = LoopPlan(cfg.loop.steps, cfg.loop.steps_per_epoch, cfg.optim.lr, cfg.optim.weight_decay,
                        cfg.optim.warmup, cfg.optim.grad_clip, cfg.loop.checkpoint_every, cfg.loop.keep_checkpoints,
                        cfg.loop.eval, cfg.seed, cfg.amp, desc="train ssl")
        result = run_loop(task, plan, ctx, out_dir, resume=resume, progress=progress,
                          tensorboard=cfg.log == "tensorboard", log=log)
        summary = _export(cfg, task, result, scenes, desc, key2d, ctx) if ctx.is_main else None
        return ctx.broadcast_object(summary)
    finally:
        ctx.close()


def _global_batch(batch: int, ctx: DistContext, log) -> int:
    if batch < ctx.world_size:
        log(f"loop.batch_size {batch} < {ctx.world_size} processes: a global batch of {ctx.world_size} (one sample "
            "per process)")
    return max(int(batch), ctx.world_size)


def _export(cfg: SSLConfig, task: SSLTask, result, scenes: list[SSLScene], desc: str, key2d: str,
            ctx: DistContext) -> dict:
    """Rank 0: the EMA teacher encoder as ``bundle.pt`` and ``encoder.pt`` (and ``csp.pt``),
    the curves, ``summary.json`` and the summary table."""
    from concerto_ros.models.bundle import bundle_from_parts, save_bundle
    from concerto_ros.models.checkpoint import save_encoder

    out_dir = cfg.output_dir
    export = copy.deepcopy(task.teacher.encoder).cpu().eval()
    export.config = export.config.replace(shuffle_orders=False, drop_path=0.0)
    save_encoder(export, out_dir / "encoder.pt")
    if task.teacher.csp is not None:
        torch.save({"format": "concerto_ros.pointcsp_block/1", "feature": task.feature, "channels": task.feat_dim,
                    "heads": cfg.ssl.pointcsp.heads, "chunk": cfg.ssl.pointcsp.chunk,
                    "state_dict": {k: v.cpu() for k, v in task.teacher.csp.state_dict().items()}}, out_dir / "csp.pt")
    tail = max(1, min(cfg.loop.steps_per_epoch, len(result.rows)))
    summary: dict[str, Any] = {
        "objective": "+".join(cfg.objectives), "scenes": len(scenes), "voxels": int(sum(s.num_voxels for s in scenes)),
        "steps": cfg.loop.steps, "batch_size": task.sampler.batch, "world_size": ctx.world_size, "start": desc,
        "parameters": count_parameters(task.model.encoder), "feature": task.feature, "feature_dim": task.feat_dim,
        "teacher_2d": key2d, "eval": result.eval_rows, "points_per_s": result.points_per_s, "wall_s": result.wall_s,
        "encoder": str(out_dir / "encoder.pt")}
    for name in task.metric_names:
        summary[f"{name}_first"], summary[f"{name}_last"] = first_last(result.column(name), tail)
    bundle = bundle_from_parts(
        encoder=export, feature=task.feature, voxel_size=cfg.node.window.voxel_size, use_color=True,
        metadata={"description": f"concerto train ssl ({summary['objective']}): {desc} encoder, {cfg.loop.steps} steps "
                                 f"on {len(scenes)} scenes ({', '.join(str(s['path']) for s in cfg.data.sources)})",
                  "command": "concerto train ssl", "config": json.loads(json.dumps(to_dict(cfg), default=str)),
                  "metrics": plain({k: v for k, v in summary.items() if k != "eval"})})
    summary["bundle"] = str(save_bundle(bundle, out_dir / "bundle.pt"))
    plot_curves(result.rows, result.eval_rows, out_dir / "ssl_curves.png", task.metric_names)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary, task.metric_names)
    summary.update({f"{'losses' if n == 'loss' else n.replace('loss_', 'losses_')}": result.column(n)
                    for n in task.metric_names})
    return summary


def _print_summary(s: dict, names: tuple[str, ...]) -> None:
    last = s["eval"][-1] if s["eval"] else {}
    rows = [("objective", s["objective"]), ("scenes / voxels", f"{s['scenes']} / {s['voxels']:,}"),
            ("encoder", f"{s['start']} ({s['parameters']:,} params)"), ("steps x global batch",
                                                                        f"{s['steps']} x {s['batch_size']}"),
            ("processes", s["world_size"])]
    rows += [(f"{n} first -> last", f"{fmt(s[f'{n}_first'])} -> {fmt(s[f'{n}_last'])}") for n in names]
    rows += [(k, fmt(v) if isinstance(v, float) else v) for k, v in last.items() if k not in ("epoch", "step")]
    rows += [("points/s", f"{s['points_per_s']:,.0f}"), ("wall time", f"{s['wall_s']:.1f} s"),
             ("bundle", s["bundle"]), ("encoder (model.checkpoint)", s["encoder"])]
    print_summary("concerto train ssl", rows)


def plot_curves(rows: list[dict], evals: list[dict], path: str | Path, names: tuple[str, ...]) -> Path:
    """PNG: the loss terms per step (10-step means) and the evaluation rows per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = np.asarray([int(r["step"]) for r in rows])
    for key in names:
        v = np.asarray([float(r[key]) for r in rows if key in r], dtype=np.float64)
        w = min(10, len(v))
        if w:
            a1.plot(steps[w - 1:len(v)], np.convolve(v, np.ones(w) / w, mode="valid"), label=key)
    a1.set(xlabel="step", ylabel="loss (10-step mean)")
    a1.grid(alpha=0.3)
    a1.legend()
    for key in sorted({k for r in evals for k in r} - {"epoch", "step", "prototypes_used"}):
        a2.plot([int(r["step"]) for r in evals], [float(r[key]) for r in evals], "o-", label=key)
    a2.set(xlabel="step", ylabel="evaluation (cosine)")
    a2.grid(alpha=0.3)
    if a2.get_legend_handles_labels()[0]:  # evaluations with values (none: an empty panel)
        a2.legend()
    fig.suptitle("concerto train ssl")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
