"""Data-parallel training on ``torch.distributed``: the process group, sharding and reductions.

Every ``concerto train`` command runs unchanged as one process or under ``torchrun``
(``torchrun --nproc_per_node N [--nnodes M --node_rank R --rdzv_endpoint HOST:PORT] -m
concerto_ros.cli train ...``). :meth:`DistContext.from_env` reads torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), initialises the
process group -- NCCL when the processes run on CUDA (each on ``cuda:LOCAL_RANK``), gloo on the
CPU -- and offers what the training loop needs: rank-0-only side effects, a contiguous shard
of a list or of a global batch, sum reductions, object gathering and barriers. With one
process every collective is the identity, so the single-process path is the same code.

Data parallelism itself is :class:`torch.nn.parallel.DistributedDataParallel` around the
trainable modules (:meth:`DistContext.wrap`): gradients are averaged over the processes
during ``backward``, so each process takes a share of the global batch and the loss of
a share is its per-sample loss sum times ``world_size / len(global batch)``
(:meth:`DistContext.share_loss`), which makes the averaged gradient the gradient of the
global batch's mean loss, whatever the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as tdist

__all__ = ["DistContext", "EpochSampler", "shard_bounds"]


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous share of ``n`` items (sizes differ by at most
    one, the first ``n % world_size`` ranks take one more)."""
    base, extra = divmod(int(n), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class DistContext:
    """This process's place in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``; rank 0 writes logs, checkpoints and bundles.
        world_size: number of processes.
        local_rank: rank on this machine (the CUDA device index).
        device: the torch device this process computes on.
        initialized_here: the process group was created by :meth:`from_env` (and is
            destroyed by :meth:`close`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @classmethod
    def from_env(cls, device: str = "cpu", timeout_s: float = 1800.0) -> "DistContext":
        """The context of this process: a single process unless torchrun's ``WORLD_SIZE`` > 1.

        Args:
            device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the ``device`` setting); with
                several processes on CUDA each uses ``cuda:LOCAL_RANK``.
            timeout_s: collective timeout (a process stuck this long fails the job).

        Raises:
            RuntimeError: CUDA asked for but unavailable, or fewer CUDA devices than
                processes on this machine.
        """
        from concerto_ros.train.common import resolve_device

        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = resolve_device(device)
        if world <= 1:
            return cls(device=dev)
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if dev.type == "cuda":
            if local >= torch.cuda.device_count():
                raise RuntimeError(f"process {rank} needs cuda:{local} but this machine has "
                                   f"{torch.cuda.device_count()} CUDA devices: use --nproc_per_node <= that")
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        made = False
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
            made = True
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, initialized_here=made)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def backend(self) -> str:
        return tdist.get_backend() if self.distributed else "none"

    def close(self) -> None:
        """Destroy the process group if :meth:`from_env` made it, once every rank got here,
        so that no rank closes its connections while rank 0 still writes the outputs."""
        if self.initialized_here and tdist.is_initialized():
            tdist.barrier()
            tdist.destroy_process_group()
            self.initialized_here = False

    # ------------------------------------------------------------------ side effects
    def main_only(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` on rank 0, a no-op elsewhere (for ``log`` callables)."""
        return fn if self.is_main else (lambda *a, **k: None)

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier()

    # ------------------------------------------------------------------ sharding
    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's contiguous share of ``items`` (see :func:`shard_bounds`)."""
        a, b = shard_bounds(len(items), self.world_size, self.rank)
        return list(items[a:b])

    def share_loss(self, loss_sum: torch.Tensor, total: int) -> torch.Tensor:
        """The loss to backpropagate for this process's share of a global batch of ``total``
        samples whose per-sample losses sum to ``loss_sum``: ``loss_sum * world_size / total``.
        DDP averages the gradients over the processes, so the result is the gradient of the
        global batch's mean loss (with one process: that mean itself)."""
        return loss_sum * (self.world_size / max(1, int(total)))

    # ------------------------------------------------------------------ reductions
    def all_reduce_sum(self, values: Any) -> np.ndarray:
        """Element-wise sum over the processes of a float64 vector (numbers, list, array)."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if not self.distributed:
            return arr
        t = torch.as_tensor(arr, device=self.device if self.backend == "nccl" else "cpu")
        tdist.all_reduce(t)
        return t.cpu().numpy()

    def all_reduce_max(self, value: float) -> float:
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return float(t.item())

    def all_reduce_mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place mean over the processes of ``tensor`` (on this process's device)."""
        if self.distributed:
            tdist.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def mean_std(self, x: np.ndarray, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (unbiased) standard deviation, clamped at ``eps``, of the
        ``(N_r, D)`` rows of every process together (float64 sums): ``((D,), (D,))``
        float32 tensors."""
        x64 = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        d = x64.shape[1]
        s = self.all_reduce_sum(np.concatenate([[len(x64)], x64.sum(0), (x64 ** 2).sum(0)]))
        n = max(s[0], 1.0)
        mean = s[1:1 + d] / n
        var = np.maximum(s[1 + d:] / n - mean ** 2, 0.0) * n / max(n - 1.0, 1.0)
        return (torch.as_tensor(mean, dtype=torch.float32),
                torch.as_tensor(np.sqrt(var), dtype=torch.float32).clamp_min(eps))

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------------ models
    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` when there are
        several processes (parameters broadcast from rank 0, gradients averaged during
        backward; parameters a step does not use are allowed), else ``module`` itself."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


class EpochSampler:
    """Global batches drawn from ``n`` items, the same on every process: position ``p`` of the
    stream is ``perm_e[p % n]`` with ``e = p // n`` and ``perm_e`` a permutation seeded by
    ``(seed, e)`` -- every item once per epoch, a fresh order each epoch. Step ``s`` takes
    positions ``s * batch .. s * batch + batch - 1``; :meth:`share` is this process's
    contiguous part of it (the distributed sampler over windows / clips).
    """

    def __init__(self, n: int, batch: int, seed: int):
        if n <= 0:
            raise ValueError("nothing to sample from: no training item")
        self.n, self.batch, self.seed = int(n), int(batch), int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        """The global batch of ``step`` (item indices)."""
        pos = np.arange(step * self.batch, (step + 1) * self.batch)
        out = np.empty(len(pos), dtype=np.int64)
        epochs = pos // self.n
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[pos[sel] % self.n]
        return out.tolist()

    def share(self, step: int, ctx: "DistContext") -> list[tuple[int, int]]:
        """``[(slot in the global batch, item index)]`` of this process at ``step``."""
        a, b = shard_bounds(self.batch, ctx.world_size, ctx.rank)
        idx = self.indices(step)
        return [(slot, idx[slot]) for slot in range(a, b)]
