"""``concerto train cross4d``: distil a frozen 2D teacher into the Cross4D 4D encoder.

Cross4D-JEPA (arXiv 2607.00514): every 3D point of a clip takes the teacher's patch feature
at the pixel it projects to in its own frame (:mod:`concerto_ros.train.data`); the student
(:class:`~concerto_ros.models.cross4d.Cross4DEncoder`) plus a per-token head
(:class:`DistillHead`) predicts it under a cosine loss — no masking, no negatives, no
decoder. ``target.mode: global`` instead predicts one clip-level target (the mean patch
feature of the clip's frames) from the mean token.

After every epoch the mean cosine similarity between predictions and targets is measured
on the held-out points (every point of every frame, in held-out cubes, as the node
evaluates whole windows), together with the cosine of the best constant prediction (the mean
training target) as a baseline. Outputs in ``output``: ``cross4d.pt`` (the encoder the node
loads, :func:`~concerto_ros.models.cross4d.load_cross4d`), ``bundle.pt`` (the same encoder
with its window settings and ``data.voxel_size`` as a model bundle, for ``model.bundle``),
``checkpoints/`` (resume),
``metrics.csv`` (per step), ``eval.csv`` (per epoch), ``heldout_cosine.png`` and
``config.yaml``.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from concerto_ros.models.bundle import bundle_from_parts, save_bundle
from concerto_ros.models.cross4d import (Cross4DEncoder, count_parameters, cross4d_config, cross4d_to_dict,
                                         save_cross4d)
from concerto_ros.models.teachers import build_teacher
from concerto_ros.train.common import (Checkpointer, MetricLogger, Progress, autocast, cosine_lr, dump_config,
                                       make_adamw, make_grad_scaler, print_summary, resolve_device, seed_everything)
from concerto_ros.train.data import TargetCache, build_clips, collate, load_source

__all__ = ["DEFAULTS", "DistillHead", "train_cross4d", "evaluate", "plot_curve"]

#: Default configuration (``concerto train cross4d --print-config`` prints it merged).
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "amp": True,
    "output": "outputs/cross4d",
    "log": "csv",
    "data": {
        # each: {path, type: auto|bag|folder, fx, fy, cx, cy, depth_scale, rate_hz, max_frames}
        "sources": [],
        "perception_config": "",  # YAML of the node (topics, sync, tf, lift, fixed_frame) for bags
        "fixed_frame": "world",
        "lift": {"min_depth": 0.1, "max_depth": 8.0, "pixel_stride": 1},
        "num_frames": 4,  # clip length T (the node's cross4d window)
        "voxel_size": 0.02,  # m
        "min_frames": 1,  # shortest window turned into a clip
        "points_per_frame": 2048,  # encoder input N per frame
        "heldout_fraction": 0.2,  # of the heldout_block cubes
        "heldout_block": 0.25,  # m
        "cache_dir": "~/.cache/concerto_ros/cross4d_targets",
    },
    "teacher": {
        "name": "seeded_vit",  # seeded_vit | dinov2_vits14 | dinov2_vitb14 | <timm name> | module:FILE.pt
        "weights": "",  # local weights file for DINOv2
        "backend": "auto",  # DINOv2: auto | timm | builtin
        "seed": 0,
        "embed_dim": 64,  # seeded_vit only
        "depth": 2,
        "num_heads": 2,
        "patch_size": 14,
        "short_side": 224,  # px, teacher input short side
        "lookup": "bilinear",  # nearest | bilinear
        "zbuffer_tolerance": 0.05,  # m
    },
    "model": {"preset": "small", "use_color": True, "overrides": {}},
    "target": {"mode": "dense"},  # dense | global
    "optim": {"lr": 1.0e-3, "weight_decay": 0.05, "steps": 150, "warmup": 10, "batch_size": 1, "grad_clip": 1.0},
    "train": {"steps_per_epoch": 15, "checkpoint_every": 50, "eval": True},
}


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


def _loss(pred, batch, mode: str) -> torch.Tensor:
    if mode == "global":
        return (1.0 - F.cosine_similarity(pred.float(), batch["global_target"], dim=-1)).mean()
    m = batch["train_mask"]
    if not bool(m.any()):
        return pred.sum() * 0.0
    return (1.0 - F.cosine_similarity(pred.float()[m], batch["targets"][m], dim=-1)).mean()


@torch.no_grad()
def evaluate(encoder, head, clips, cfg: dict, device: torch.device, baseline: Optional[torch.Tensor] = None) -> dict:
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
    mode = cfg["target"]["mode"]
    use_color = bool(cfg["model"]["use_color"])
    sums = {"h": 0.0, "t": 0.0, "b": 0.0, "c": 0.0}
    n_h = n_t = 0
    for clip in clips:
        batch = _to(collate([clip], cfg["data"]["points_per_frame"], rng=None, full_query=mode == "dense"), device)
        with autocast(device, bool(cfg["amp"])):
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


def _sample_batch(groups: dict[int, list], batch_size: int, rng: np.random.Generator) -> list:
    keys = sorted(groups)
    sizes = np.array([len(groups[k]) for k in keys], dtype=np.float64)
    g = groups[keys[rng.choice(len(keys), p=sizes / sizes.sum())]]
    idx = rng.choice(len(g), batch_size, replace=len(g) < batch_size)
    return [g[i] for i in idx]


def train_cross4d(cfg: dict, log: Callable[[str], Any] = print, progress: bool = True, resume: bool = False) -> dict:
    """Run the distillation described by ``cfg`` (see :data:`DEFAULTS`).

    Returns:
        summary dict: ``losses`` (per step), ``eval`` (per-epoch rows), ``checkpoint`` (path
        of ``cross4d.pt``), ``bundle`` (path of ``bundle.pt``), ``parameters`` (encoder), ``head_parameters``, ``final_heldout_cos``,
        ``points_per_s``, ``cache`` (hits, misses), ``steps``.

    Raises:
        ValueError: no data source, bad mode, or a source that cannot be read.
    """
    cfg = copy.deepcopy(cfg)
    dcfg, tcfg, ocfg = cfg["data"], cfg["teacher"], cfg["optim"]
    mode = cfg["target"]["mode"]
    if mode not in ("dense", "global"):
        raise ValueError(f"target.mode must be dense or global, got {mode!r}")
    if not dcfg["sources"]:
        raise ValueError("no data: set data.sources (a list of {path: ...} entries of bags or RGB-D folders)")
    seed_everything(int(cfg["seed"]))
    device = resolve_device(cfg["device"])
    out_dir = Path(cfg["output"]).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(cfg))

    # ---- teacher and targets
    tkw = {k: tcfg[k] for k in ("embed_dim", "depth", "num_heads", "patch_size")} if tcfg["name"] == "seeded_vit" else {}
    teacher = build_teacher(tcfg["name"], weights=tcfg["weights"] or None, seed=int(tcfg["seed"]), device=device,
                            backend=tcfg["backend"], **tkw)
    cache = TargetCache(dcfg["cache_dir"], teacher, int(tcfg["short_side"]), device=device)
    pcfg = None
    if dcfg.get("perception_config"):
        from concerto_ros.config import load_config
        pcfg = load_config(dcfg["perception_config"])
    clips = []
    t0 = time.perf_counter()
    for src in dcfg["sources"]:
        src = {"path": src} if isinstance(src, str) else dict(src)
        rec = load_source(src, {**dcfg["lift"]}, perception_cfg=pcfg, log=log)
        clips += build_clips(rec, cache, int(dcfg["num_frames"]), float(dcfg["voxel_size"]), lookup=tcfg["lookup"],
                             zbuffer_tolerance=float(tcfg["zbuffer_tolerance"]),
                             heldout_block=float(dcfg["heldout_block"]),
                             heldout_fraction=float(dcfg["heldout_fraction"]), min_frames=int(dcfg["min_frames"]))
        log(f"{rec.path}: {len(rec.frames)} frames -> clips so far {len(clips)}")
    del teacher
    teacher_dim = int(clips[0].global_target.shape[0])
    log(f"{len(clips)} clips in {time.perf_counter() - t0:.1f} s; teacher {cache.teacher_key} ({teacher_dim}-d); "
        f"target cache {cache.root} ({cache.hits} hits, {cache.misses} misses)")

    # constant baseline: the mean training target
    tsum = torch.zeros(teacher_dim)
    tcount = 0
    for c in clips:
        for f in c.frames:
            m = torch.as_tensor(f.visible & ~f.heldout)
            tsum += f.targets[m].float().sum(0)
            tcount += int(m.sum())
    baseline = tsum / max(tcount, 1)

    # ---- student
    mcfg = cfg["model"]
    use_color = bool(mcfg["use_color"])
    enc_cfg = cross4d_config(mcfg["preset"], point_channels=3 if use_color else 0, **(mcfg.get("overrides") or {}))
    encoder = Cross4DEncoder(enc_cfg).to(device)
    head = DistillHead(enc_cfg.dim, teacher_dim).to(device)
    n_enc, n_head = count_parameters(encoder), count_parameters(head)
    log(f"Cross4D student '{mcfg['preset']}': {n_enc:,} encoder + {n_head:,} head parameters; device {device}")
    params = list(encoder.parameters()) + list(head.parameters())
    optim = make_adamw(params, float(ocfg["lr"]), float(ocfg["weight_decay"]))
    scaler = make_grad_scaler(device, bool(cfg["amp"]))
    ckpt = Checkpointer(out_dir, every=int(cfg["train"]["checkpoint_every"]))
    start, eval_rows = 0, []
    if resume:
        blob = ckpt.load_latest()
        if blob is None:
            log(f"--resume: no checkpoint in {ckpt.dir}; starting from scratch")
        else:
            encoder.load_state_dict(blob["encoder"])
            head.load_state_dict(blob["head"])
            optim.load_state_dict(blob["optim"])
            start, eval_rows = int(blob["step"]), list(blob.get("eval_rows", []))
            log(f"resumed from {blob['path']} at step {start}")
    metrics = MetricLogger(out_dir, tensorboard=cfg["log"] == "tensorboard", append=resume and start > 0)
    evals = MetricLogger(out_dir, append=resume and start > 0, name="eval")

    groups: dict[int, list] = {}
    for c in clips:
        groups.setdefault(c.num_frames, []).append(c)
    rng = np.random.default_rng(int(cfg["seed"]) + start)
    total = int(ocfg["steps"])
    spe = max(1, int(cfg["train"]["steps_per_epoch"]))
    bs = int(ocfg["batch_size"])
    npf = int(dcfg["points_per_frame"])
    bar = Progress(total, initial=start, desc="train cross4d", enabled=progress)
    losses: list[float] = []
    rate = 0.0
    encoder.train()
    head.train()
    t_train = time.perf_counter()
    pts_total = 0

    def state(step):
        return {"encoder": encoder.state_dict(), "head": head.state_dict(), "optim": optim.state_dict(),
                "config": cfg, "eval_rows": eval_rows}

    for step in range(start, total):
        lr = cosine_lr(step, total, float(ocfg["lr"]), int(ocfg["warmup"]))
        for g in optim.param_groups:
            g["lr"] = lr
        batch = _to(collate(_sample_batch(groups, bs, rng), npf, rng=rng), device)
        with autocast(device, bool(cfg["amp"])):
            pred = _forward(encoder, head, batch, mode, use_color)
        loss = _loss(pred, batch, mode)
        optim.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if float(ocfg["grad_clip"]) > 0:
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_(params, float(ocfg["grad_clip"]))
        scaler.step(optim)
        scaler.update()
        n_pts = int(batch["points"].shape[0] * batch["points"].shape[1] * batch["points"].shape[2])
        pts_total += n_pts
        lv = float(loss.detach())
        losses.append(lv)
        rate = bar.update(lv, lr, n_pts)
        metrics.log({"step": step + 1, "loss": lv, "lr": lr, "points_per_s": rate})
        done = step + 1
        if cfg["train"]["eval"] and (done % spe == 0 or done == total):
            ev = evaluate(encoder, head, clips, cfg, device, baseline)
            row = {"epoch": math.ceil(done / spe), "step": done, **ev}
            eval_rows.append(row)
            evals.log(row)
            bar.bar.write(f"epoch {row['epoch']} (step {done}): held-out cosine {ev['heldout_cos']:.4f}, "
                          f"train {ev['train_cos']:.4f}, constant baseline {ev['baseline_heldout_cos']:.4f}, "
                          f"held-out mean-centred {ev['heldout_centered_cos']:.4f}")
        if ckpt.due(done):
            ckpt.save(done, state(done))
    bar.close()
    ckpt.save(total, state(total))
    metrics.close()
    final = out_dir / "cross4d.pt"
    extra = {"preset": mcfg["preset"], "teacher": cache.teacher_key, "teacher_dim": teacher_dim, "target_mode": mode,
             "num_frames": int(dcfg["num_frames"]), "points_per_frame": npf, "voxel_size": float(dcfg["voxel_size"]),
             "use_color": use_color, "steps": total}
    save_cross4d(final, encoder, head, extra=extra)
    metrics = {k: eval_rows[-1][k] for k in ("heldout_cos", "baseline_heldout_cos", "train_cos")
               if eval_rows and k in eval_rows[-1]}
    bundle = bundle_from_parts(
        cross4d=cross4d_to_dict(encoder, extra=extra), voxel_size=float(dcfg["voxel_size"]),
        cross4d_settings={"num_frames": int(dcfg["num_frames"]), "points_per_frame": npf, "average": "points"},
        metadata={"description": f"Cross4D '{mcfg['preset']}' encoder distilled from {cache.teacher_key} ({mode})",
                  "command": "concerto train cross4d", "config": cfg, "metrics": metrics})
    bundle_path = save_bundle(bundle, out_dir / "bundle.pt")
    log(f"model bundle {bundle_path} (Cross4D encoder only): run it with model.bundle: {bundle_path}")
    if eval_rows:
        plot_curve(eval_rows, out_dir / "heldout_cosine.png",
                   title=f"Cross4D '{mcfg['preset']}' <- {cache.teacher_key.split('-')[0]} ({mode})")
    wall = time.perf_counter() - t_train
    summary = {
        "losses": losses, "eval": eval_rows, "checkpoint": str(final), "parameters": n_enc, "head_parameters": n_head,
        "final_heldout_cos": eval_rows[-1]["heldout_cos"] if eval_rows else float("nan"),
        "baseline_heldout_cos": eval_rows[-1]["baseline_heldout_cos"] if eval_rows else float("nan"),
        "points_per_s": pts_total / max(wall, 1e-9), "cache": (cache.hits, cache.misses), "steps": total,
        "clips": len(clips), "bundle": str(bundle_path),
    }
    print_summary("concerto train cross4d", [
        ("clips", len(clips)), ("teacher", cache.teacher_key), ("student", f"{mcfg['preset']} ({n_enc:,} params)"),
        ("target mode", mode), ("steps", total), ("first / last loss",
                                                   f"{losses[0]:.4f} / {losses[-1]:.4f}" if losses else "-"),
        ("held-out cosine", summary["final_heldout_cos"]), ("constant baseline", summary["baseline_heldout_cos"]),
        ("held-out mean-centred cosine", eval_rows[-1]["heldout_centered_cos"] if eval_rows else float("nan")),
        ("points/s", f"{summary['points_per_s']:,.0f}"), ("wall time", f"{wall:.1f} s"), ("checkpoint", str(final)),
        ("bundle", str(bundle_path)),
    ])
    return summary
