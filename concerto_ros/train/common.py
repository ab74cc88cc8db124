"""Small runtime helpers shared by the ``concerto train`` commands: seeding, devices, mixed
precision, the learning-rate schedule, parameter counts, summary tables and one-line
messages for the first/last values of a curve.

The configuration grammar is :mod:`concerto_ros.train.config`, the loop (checkpoints, metrics,
progress bar) :mod:`concerto_ros.train.loop`, the process group :mod:`concerto_ros.train.dist`.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from typing import Any, Iterable

import numpy as np
import torch

__all__ = ["seed_everything", "resolve_device", "autocast", "make_grad_scaler", "cosine_lr",
           "count_parameters", "print_summary", "fmt", "plain"]


# ---------------------------------------------------------------- runtime
def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; else ``torch.device(name)``.

    Raises:
        RuntimeError: CUDA requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available in torch {torch.__version__}")
    return dev


def autocast(device: torch.device, enabled: bool = True):
    """bf16 (or fp16 when bf16 is unsupported) autocast on CUDA when ``enabled``; a no-op on CPU."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def make_grad_scaler(device: torch.device, enabled: bool = True):
    """A ``torch.amp.GradScaler`` active only for fp16 autocast on CUDA."""
    use = device.type == "cuda" and enabled and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda", enabled=use)


def cosine_lr(step: int, total: int, base_lr: float, warmup: int = 0, min_ratio: float = 0.01) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio * base_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


def print_summary(title: str, rows: Iterable[tuple[str, Any]]) -> None:
    """A two-column rich table (falls back to plain text when rich is missing)."""
    rows = [(str(k), f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(title)
        for k, v in rows:
            print(f"  {k}: {v}")
        return
    table = Table(title=title)
    table.add_column("item")
    table.add_column("value")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def fmt(v: Any, digits: int = 4) -> str:
    """``"-"`` for ``None``/NaN, else the number with ``digits`` decimals."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays turned into Python numbers and lists (for JSON,
    and for bundle metadata that ``torch.load(weights_only=True)`` must read)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
