"""The one training loop of every ``concerto train`` command.

A command supplies a :class:`Task` (its trainable model, its batches, what happens after an
optimizer update, its evaluation and its extra state); :func:`run_loop` does the rest, the
same way for ``ssl``, ``cross4d``, ``probe`` and ``translator``:

* AdamW (:func:`~concerto_ros.train.common.make_adamw` groups, per-group ``lr_scale``) with
  linear warm-up and cosine decay (:func:`~concerto_ros.train.common.cosine_lr`);
* the model wrapped in DistributedDataParallel under torchrun
  (:meth:`~concerto_ros.train.dist.DistContext.wrap`), mixed precision on CUDA, gradient
  clipping;
* the global RNG re-seeded at every step from ``(seed, step)`` (:func:`step_seed`), so a run is
  a function of its seed and step -- the same with any number of processes, and after
  ``--resume``;
* per-step metrics averaged over the global batch (one ``all_reduce``) into
  ``<output>/metrics.csv`` (and TensorBoard), a progress bar with loss, learning rate and
  points/s, evaluation rows into ``<output>/eval.csv``;
* checkpoints (:class:`Checkpointer`, written by rank 0) that :class:`TrainState` saves
  and loads, for ``--resume`` with the same or another number of processes.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from concerto_ros.train.common import autocast, cosine_lr, make_grad_scaler, plain
from concerto_ros.train.dist import DistContext

__all__ = ["StepOutput", "Task", "TrainState", "LoopPlan", "LoopResult", "run_loop", "step_seed", "MetricLogger",
           "Checkpointer", "Progress", "RowSampler", "make_optimizer", "first_last"]


def step_seed(seed: int, step: int, *extra: int) -> int:
    """A 63-bit seed of ``(seed, step, *extra)`` (sha256; stable across runs and machines)."""
    key = ",".join(str(int(v)) for v in (seed, step, *extra)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


@dataclass
class StepOutput:
    """What a task's model forward returns for this process's share of a step.

    Attributes:
        loss: the scalar to backpropagate, already weighted for the share
            (:meth:`~concerto_ros.train.dist.DistContext.share_loss`).
        sums: per-sample sums of the logged values over the share (``"loss"`` included);
            divided by the global sample count after the reduction.
        samples: samples in the share.
        points: points (voxels) the share processed, for points/s.
    """

    loss: torch.Tensor
    sums: dict[str, float]
    samples: int
    points: int = 0


class Task:
    """A command's part of training (subclass it).

    Attributes:
        model: every trainable module in one ``nn.Module`` whose ``forward(batch)`` returns a
            :class:`StepOutput` (wrapped in DDP by the loop).
        metric_names: the keys of :attr:`StepOutput.sums`, in a fixed order (every process
            reduces the same vector).
    """

    model: nn.Module
    metric_names: tuple[str, ...] = ("loss",)

    def param_groups(self) -> list[dict]:
        """Optimizer groups ``{"params", "lr_scale"}`` (default: every trainable parameter at
        the base learning rate)."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def batch(self, step: int) -> Any:
        """This process's share of the global batch of ``step`` (RNG already seeded)."""
        raise NotImplementedError

    def after_update(self, step: int, total: int) -> dict[str, float]:
        """Called after every optimizer update (EMA teachers, clamps); returns extra logged
        values, equal on every process."""
        return {}

    def evaluate(self, step: int) -> Optional[dict[str, float]]:
        """A row of evaluation metrics (reduced over the processes), or ``None``."""
        return None

    def extra_state(self) -> dict[str, Any]:
        """State outside ``model`` to checkpoint (teachers, running centres)."""
        return {}

    def load_extra_state(self, blob: Mapping[str, Any]) -> None:
        """Restore :meth:`extra_state`."""


class RowSampler:
    """Mini-batches of this process's ``n`` rows (voxels) for a global batch of ``batch`` rows:
    each process takes its share's size (:func:`~concerto_ros.train.dist.shard_bounds`) from a
    per-epoch permutation of its own rows (the rows stay where their features were computed)."""

    def __init__(self, n: int, batch: int, seed: int, ctx: DistContext):
        from concerto_ros.train.dist import EpochSampler, shard_bounds

        a, b = shard_bounds(batch, ctx.world_size, ctx.rank)
        self.n, self.total = int(n), int(batch)
        self._sampler = EpochSampler(max(1, self.n), max(1, b - a), int(seed) * 1009 + ctx.rank)

    def indices(self, step: int, device) -> torch.Tensor:
        """``(b,) int64`` row indices of ``step`` (empty when this process has no row)."""
        return torch.as_tensor(self._sampler.indices(step) if self.n else [], dtype=torch.long, device=device)


def make_optimizer(groups: Iterable[dict], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``groups`` (``{"params", "lr_scale"}``), each split into matrices/kernels
    (``ndim >= 2``, decayed) and the rest (biases, norms, tokens: not decayed)."""
    out = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        scale = float(g.get("lr_scale", 1.0))
        for decay, ps in ((float(weight_decay), [p for p in params if p.ndim >= 2]),
                          (0.0, [p for p in params if p.ndim < 2])):
            if ps:
                out.append({"params": ps, "weight_decay": decay, "lr_scale": scale})
    return torch.optim.AdamW(out, lr=float(lr))


@dataclass
class TrainState:
    """Everything a checkpoint holds: the task's model and extra state, the optimizer, the
    step and the evaluation rows so far."""

    task: Task
    optimizer: torch.optim.Optimizer
    step: int = 0
    eval_rows: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": int(self.step), "eval_rows": list(self.eval_rows), "extra": self.task.extra_state()}

    def load(self, blob: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (tensors moved to the model's device).

        Raises:
            RuntimeError: the checkpoint's model does not fit (e.g. another objective).
        """
        self.task.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.step = int(blob["step"])
        self.eval_rows = list(blob.get("eval_rows", []))
        self.task.load_extra_state(blob.get("extra", {}))


@dataclass
class LoopPlan:
    """How long and how to train (from the command's config)."""

    total_steps: int
    steps_per_epoch: int
    lr: float
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float = 0.0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    evaluate: bool = True
    seed: int = 0
    amp: bool = True
    desc: str = "train"


@dataclass
class LoopResult:
    """What the loop did: ``rows`` every metric row of the run (earlier runs included after
    ``--resume``), ``eval_rows``, ``start`` step, ``wall_s`` and ``points_per_s`` of this run."""

    rows: list[dict]
    eval_rows: list[dict]
    start: int
    wall_s: float
    points_per_s: float

    def column(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.rows if key in r and r[key] not in ("", None)]


# ----------------------------------------------------------------------------- logging
class MetricLogger:
    """Appends metric rows to ``<dir>/<name>.csv`` (columns fixed by the first row) and, with
    ``tensorboard=True``, to TensorBoard event files in ``<dir>/tb``; ``enabled=False`` (other
    ranks than 0) writes nothing.

    Raises:
        ImportError: TensorBoard asked for but ``torch.utils.tensorboard`` cannot be imported.
    """

    def __init__(self, directory: str | Path, tensorboard: bool = False, append: bool = False, name: str = "metrics",
                 enabled: bool = True):
        self.dir = Path(directory)
        self.path = self.dir / f"{name}.csv"
        self.enabled = enabled
        self._fields: Optional[list[str]] = None
        self._tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if append and self.path.is_file():
            with self.path.open() as fh:
                header = fh.readline().strip()
            self._fields = header.split(",") if header else None
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # noqa: BLE001
                raise ImportError("--log tensorboard needs the 'tensorboard' package (pip install tensorboard)") from exc
            self._tb = SummaryWriter(str(self.dir / "tb" / name))

    def log(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if self._fields is None:
            self._fields = list(row)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self._fields)
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow([row.get(k, "") for k in self._fields])
        if self._tb is not None and "step" in row:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, int(row["step"]))

    def read(self) -> list[dict[str, str]]:
        """All rows written so far (strings)."""
        if not self.path.is_file():
            return []
        with self.path.open() as fh:
            return list(csv.DictReader(fh))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Checkpointer:
    """``<dir>/checkpoints/step_<N>.pt`` every ``every`` steps (newest ``keep`` kept) and at the
    end; rank 0 writes, every rank reads (rank 0 reads and broadcasts, so the output folder
    need not be shared between machines)."""

    def __init__(self, directory: str | Path, every: int = 0, keep: int = 3):
        self.dir = Path(directory) / "checkpoints"
        self.every = int(every)
        self.keep = int(keep)

    def due(self, step: int) -> bool:
        return self.every > 0 and step > 0 and step % self.every == 0

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:08d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(dict(state), tmp)
        tmp.replace(path)
        for old in sorted(self.dir.glob("step_*.pt"))[: -self.keep] if self.keep > 0 else []:
            old.unlink()
        return path

    def latest(self) -> Optional[Path]:
        ckpts = sorted(self.dir.glob("step_*.pt")) if self.dir.is_dir() else []
        return ckpts[-1] if ckpts else None

    def load_latest(self, ctx: DistContext | None = None) -> Optional[dict]:
        """The newest checkpoint (``"path"`` added), or ``None`` when there is none."""
        blob = None
        if ctx is None or ctx.is_main:
            p = self.latest()
            if p is not None:
                blob = torch.load(p, map_location="cpu", weights_only=False)
                blob["path"] = str(p)
        return ctx.broadcast_object(blob) if ctx is not None else blob


class Progress:
    """tqdm bar over steps showing ``loss``, ``lr``, ``pts/s`` (smoothed) and extra values."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
        self._t = time.perf_counter()
        self._rate: Optional[float] = None

    def update(self, loss: float, lr: float, points: int, **extra: Any) -> float:
        """Advance one step; returns the smoothed points/s."""
        now = time.perf_counter()
        rate = points / max(now - self._t, 1e-9)
        self._t = now
        self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", **{"pts/s": f"{self._rate:,.0f}"},
                             **{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in extra.items()})
        self.bar.update(1)
        return self._rate

    def write(self, text: str) -> None:
        self.bar.write(text) if not self.bar.disable else None

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- the loop
def _update(state: TrainState, out: StepOutput, scaler, clip: float) -> None:
    opt = state.optimizer
    opt.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    if clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    scaler.step(opt)
    scaler.update()


def _reduce(ctx: DistContext, task: Task, out: StepOutput) -> tuple[dict[str, float], int]:
    vec = ctx.all_reduce_sum([out.samples, out.points] + [float(out.sums.get(k, 0.0)) for k in task.metric_names])
    n = max(1.0, vec[0])
    return {k: float(v / n) for k, v in zip(task.metric_names, vec[2:])}, int(vec[1])


def _resume(state: TrainState, ckpt: Checkpointer, ctx: DistContext, log) -> None:
    blob = ckpt.load_latest(ctx)
    if blob is None:
        log(f"--resume: no checkpoint in {ckpt.dir}; starting from scratch")
        return
    state.load(blob)
    log(f"resumed from {blob['path']} at step {state.step}")


def _maybe_evaluate(task: Task, state: TrainState, plan: LoopPlan, done: int, evals: MetricLogger, bar: Progress):
    if not plan.evaluate or not (done % plan.steps_per_epoch == 0 or done == plan.total_steps):
        return
    row = task.evaluate(done)
    if row is None:
        return
    row = {"epoch": math.ceil(done / plan.steps_per_epoch), "step": done, **plain(row)}
    state.eval_rows.append(row)
    evals.log(row)
    bar.write(f"epoch {row['epoch']} (step {done}): " + ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k not in ("epoch", "step")))


def run_loop(task: Task, plan: LoopPlan, ctx: DistContext, out_dir: str | Path, *, resume: bool = False,
             progress: bool = True, tensorboard: bool = False, log=print) -> LoopResult:
    """Train ``task`` for ``plan.total_steps`` steps (see the module docstring).

    Returns:
        The :class:`LoopResult`; the trained weights are in ``task.model`` (the same on every
        process).

    Raises:
        RuntimeError: a checkpoint that does not fit the model.
    """
    out_dir = Path(out_dir)
    optimizer = make_optimizer(task.param_groups(), plan.lr, plan.weight_decay)
    state = TrainState(task, optimizer)
    ckpt = Checkpointer(out_dir, plan.checkpoint_every, plan.keep_checkpoints)
    if resume:
        _resume(state, ckpt, ctx, log)
    model = ctx.wrap(task.model)
    scaler = make_grad_scaler(ctx.device, plan.amp)
    append = resume and state.step > 0
    metrics = MetricLogger(out_dir, tensorboard=tensorboard, append=append, enabled=ctx.is_main)
    evals = MetricLogger(out_dir, append=append, name="eval", enabled=ctx.is_main)
    bar = Progress(plan.total_steps, initial=state.step, desc=plan.desc, enabled=progress and ctx.is_main)
    start, points, t0 = state.step, 0, time.perf_counter()
    task.model.train()
    for step in range(start, plan.total_steps):
        lr = cosine_lr(step, plan.total_steps, plan.lr, plan.warmup)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        torch.manual_seed(step_seed(plan.seed, step))
        batch = task.batch(step)
        with autocast(ctx.device, plan.amp):
            out = model(batch)
        _update(state, out, scaler, plan.grad_clip)
        extra = task.after_update(step, plan.total_steps)
        means, n_points = _reduce(ctx, task, out)
        points += n_points
        state.step = done = step + 1
        rate = bar.update(means.get("loss", float("nan")), lr, n_points,
                          **{k: v for k, v in means.items() if k != "loss"})
        metrics.log({"step": done, **means, "lr": lr, **extra, "points_per_s": rate})
        _maybe_evaluate(task, state, plan, done, evals, bar)
        if ctx.is_main and ckpt.due(done) and done < plan.total_steps:
            ckpt.save(done, state.state_dict())
    bar.close()
    if ctx.is_main and (plan.checkpoint_every > 0 or start < plan.total_steps):
        ckpt.save(plan.total_steps, state.state_dict())
    metrics.close()
    wall = time.perf_counter() - t0
    rows = ctx.broadcast_object(metrics.read() if ctx.is_main else None)
    return LoopResult(rows=[{k: _num(v) for k, v in r.items()} for r in rows], eval_rows=list(state.eval_rows),
                      start=start, wall_s=wall, points_per_s=points / max(wall, 1e-9))


def _num(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def first_last(values: list[float], window: int) -> tuple[Optional[float], Optional[float]]:
    """Means of the first and last ``window`` values (``None`` when empty)."""
    if not values:
        return None, None
    w = max(1, min(int(window), len(values)))
    return float(np.mean(values[:w])), float(np.mean(values[-w:]))
