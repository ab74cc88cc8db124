"""Reduced-precision inference where the hardware has it: one rule for every model part."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "native_bf16", "resolve_precision", "autocast"]

#: precision names accepted by the ``*.precision`` settings and their dtypes
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: CPUs with AVX512-BF16 or AMX
    (through oneDNN), CUDA GPUs of compute capability 8.0 or newer."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``fp32`` or ``bf16`` for a setting of ``auto``, ``fp32`` or ``bf16``.

    Raises:
        ValueError: an unknown name.
    """
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def autocast(precision: str, device: torch.device | str = "cpu"):
    """A ``torch.autocast`` context in bfloat16 for ``bf16`` (after :func:`resolve_precision`),
    a no-op context for ``fp32``."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
