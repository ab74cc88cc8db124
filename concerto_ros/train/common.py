"""Machinery shared by every ``concerto train ...`` command (cross4d now; ssl, probe, translator later).

Conventions each training command follows:

* one YAML config whose defaults live in code (a nested dict); ``--print-config`` prints the
  merged result; ``--config FILE`` and ``--set a.b=value`` (repeatable, YAML-parsed values)
  override it; unknown keys are errors (:func:`merge_config`);
* ``seed`` seeds python, numpy and torch (:func:`seed_everything`);
* a tqdm progress bar showing loss, lr and points/s (:class:`Progress`);
* checkpoints every ``checkpoint_every`` steps plus a final one, ``--resume`` continues from
  the newest in the output folder (:class:`Checkpointer`);
* CSV logs (``metrics.csv``), TensorBoard when asked and installed (:class:`MetricLogger`);
* ``--device cpu|cuda[:N]|auto`` and automatic mixed precision on CUDA (:func:`autocast`);
* a final summary table (:func:`print_summary`, rich).
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch
import yaml

__all__ = [
    "add_common_args",
    "merge_config",
    "resolve_config",
    "dump_config",
    "seed_everything",
    "resolve_device",
    "autocast",
    "make_grad_scaler",
    "cosine_lr",
    "MetricLogger",
    "Checkpointer",
    "Progress",
    "print_summary",
    "count_parameters",
    "make_adamw",
]


# ---------------------------------------------------------------- configuration
def add_common_args(parser: argparse.ArgumentParser, default_config: Optional[str] = None) -> None:
    """Add the options every training command shares."""
    parser.add_argument("--config", default=default_config, metavar="YAML",
                        help="training config (YAML); defaults: see --print-config" +
                        (f" (default file: %(default)s)" if default_config else ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (dotted key, YAML value), e.g. --set optim.steps=200; "
                        "repeatable")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder for checkpoints, logs and plots (overrides 'output')")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (overrides 'device')")
    parser.add_argument("--seed", type=int, default=None, help="random seed (overrides 'seed')")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in the output folder")
    parser.add_argument("--log", choices=["csv", "tensorboard"], default=None,
                        help="metric log format (overrides 'log'); csv is always written")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def merge_config(base: Mapping[str, Any], update: Mapping[str, Any], path: str = "") -> dict:
    """Deep-merge ``update`` into a copy of ``base``.

    Keys must exist in ``base`` (typos fail loudly) except below mappings whose default is
    an empty dict (free-form sections).

    Raises:
        KeyError: unknown key (the message gives the dotted name and the known keys).
    """
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        name = f"{path}{k}"
        if k not in out:
            raise KeyError(f"unknown config key '{name}'; known at this level: {sorted(out)}")
        if isinstance(out[k], dict) and isinstance(v, Mapping):
            out[k] = merge_config(out[k], v, name + ".") if out[k] else copy.deepcopy(dict(v))
        else:
            out[k] = copy.deepcopy(v)
    return out


def _dotted(key: str, value: Any) -> dict:
    d: Any = value
    for part in reversed(key.split(".")):
        d = {part: d}
    return d


def resolve_config(defaults: Mapping[str, Any], args: argparse.Namespace) -> dict:
    """Defaults <- ``--config`` file <- ``--set`` items <- dedicated flags (--output,
    --device, --seed, --log).

    Raises:
        FileNotFoundError: missing config file. KeyError: unknown key. ValueError: a
        ``--set`` item without ``=``.
    """
    cfg = copy.deepcopy(dict(defaults))
    if getattr(args, "config", None):
        p = Path(args.config)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        cfg = merge_config(cfg, yaml.safe_load(p.read_text()) or {})
    for item in getattr(args, "overrides", []) or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        cfg = merge_config(cfg, _dotted(k.strip(), _parse_value(v)))
    for flag in ("output", "device", "seed", "log"):
        val = getattr(args, flag, None)
        if val is not None:
            cfg[flag] = val
    return cfg


def dump_config(cfg: Mapping[str, Any]) -> str:
    """YAML text of a config (key order kept)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)


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


def make_adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and convolution kernels only (``ndim >= 2``);
    biases, norms, tokens and other 1-d parameters are not decayed."""
    params = list(params)
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": float(weight_decay)},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=float(lr))


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


# ---------------------------------------------------------------- logging
class MetricLogger:
    """Appends metric rows to ``<dir>/<name>.csv`` (columns fixed by the first row, later new
    keys are dropped) and, with ``tensorboard=True``, to TensorBoard event files in ``<dir>/tb``.

    Raises:
        ImportError: TensorBoard asked for but ``torch.utils.tensorboard`` cannot be imported
            (``pip install tensorboard``).
    """

    def __init__(self, directory: str | Path, tensorboard: bool = False, append: bool = False, name: str = "metrics"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{name}.csv"
        self._fields: Optional[list[str]] = None
        if append and self.path.is_file():
            with self.path.open() as fh:
                header = fh.readline().strip()
            self._fields = header.split(",") if header else None
        elif self.path.exists():
            self.path.unlink()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # noqa: BLE001
                raise ImportError("--log tensorboard needs the 'tensorboard' package (pip install tensorboard)") from exc
            self._tb = SummaryWriter(str(self.dir / "tb" / name))

    def log(self, row: Mapping[str, Any]) -> None:
        row = dict(row)
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
    """``<dir>/checkpoints/step_<N>.pt`` every ``every`` steps (newest ``keep`` kept) and
    ``<dir>/last.pt``. A checkpoint is a dict (models, optimiser, step, RNG states, config)."""

    def __init__(self, directory: str | Path, every: int = 0, keep: int = 3):
        self.dir = Path(directory) / "checkpoints"
        self.last = Path(directory) / "last.pt"
        self.every = int(every)
        self.keep = int(keep)

    def due(self, step: int) -> bool:
        return self.every > 0 and step > 0 and step % self.every == 0

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        blob = dict(state)
        blob["step"] = int(step)
        blob["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        path = self.dir / f"step_{step:08d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
        for old in sorted(self.dir.glob("step_*.pt"))[: -self.keep] if self.keep > 0 else []:
            old.unlink()
        return path

    def latest(self) -> Optional[Path]:
        ckpts = sorted(self.dir.glob("step_*.pt")) if self.dir.is_dir() else []
        return ckpts[-1] if ckpts else None

    def load_latest(self) -> Optional[dict]:
        """The newest checkpoint (RNG states restored), or None when there is none."""
        p = self.latest()
        if p is None:
            return None
        blob = torch.load(p, map_location="cpu", weights_only=False)
        rng = blob.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "numpy" in rng:
            np.random.set_state(rng["numpy"])
        if "python" in rng:
            random.setstate(rng["python"])
        blob["path"] = str(p)
        return blob


class Progress:
    """tqdm bar over training steps showing ``loss``, ``lr`` and ``pts/s`` (points processed per
    second, smoothed)."""

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

    def close(self) -> None:
        self.bar.close()


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


def perception_config(cfg: Mapping[str, Any], **fixed: Any):
    """The node's config a training command computes features with.

    Reads ``cfg["perception_config"]`` (the node's parameters YAML; empty = the package's
    ``config/perception.yaml``) and applies ``cfg["perception_overrides"]`` (nested or
    dotted node settings), then ``fixed`` (dotted names with ``__`` for dots, e.g.
    ``language__translator=""``), so features match the node that uses the same file.

    Returns:
        ``(PerceptionConfig, path of the YAML used)``.

    Raises:
        FileNotFoundError / KeyError / ValueError: see :func:`concerto_ros.config.load_config`.
    """
    from concerto_ros.config import default_config_path, load_config

    path = cfg.get("perception_config") or default_config_path()
    flat: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(cfg.get("perception_overrides") or {})
    flat.update({k.replace("__", "."): v for k, v in fixed.items()})
    return load_config(path, flat), path
