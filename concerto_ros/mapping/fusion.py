"""Row-wise weighted running means on the map's column arrays (the fusion kernels).

Every fused quantity of the map is a weighted running mean: with the weight ``W`` seen so far
and a new observation ``x`` of weight ``c``::

    mean <- mean + c / (W + c) * (x - mean),    W <- W + c

which equals ``sum(c_i x_i) / sum(c_i)`` over all observations, in any grouping.

The language embeddings are stored as float16 ``(n, D)`` rows. numpy's float16 casts are
scalar loops (2-3 ns per value on the target CPU), so each chunk of rows is gathered with
numpy and converted and blended with single-threaded torch kernels (SIMD casts, one
``lerp_``; ~0.1 ns per value), in per-thread buffers that stay in the cache. Chunks touch
distinct rows, so they run on a small pool of threads; numpy and torch release the GIL
inside every call. Each pool thread limits its own OpenMP team to one thread
(``threadpoolctl``), so torch's intra-op parallelism does not oversubscribe the cores (on
a loaded 2-core machine a broadcast ``lerp_`` is ~90x slower with 2 OpenMP threads).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

__all__ = ["blend_weights", "lerp_rows", "assign_rows", "unit_rows", "default_threads"]

#: bytes of float32 values per chunk of the row kernels (1024 rows at D = 384): a chunk's
#: temporaries stay in the cache
CHUNK_BYTES = 1536 * 1024

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32))
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


class _ThreadState(threading.local):
    """Per-thread, grow-only chunk buffers (fresh multi-MB arrays cost more in page faults
    than the arithmetic on small VMs) and the thread's OpenMP limit."""

    def __init__(self) -> None:
        self.flat: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.limits = None

    def get(self, name: str, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        n = rows * width
        buf = self.flat.get((name, dtype))
        if buf is None or buf.shape[0] < n:
            buf = self.flat[(name, dtype)] = torch.empty(max(n, 1), dtype=dtype)
        return buf[:n].view(rows, width)


_STATE = _ThreadState()


def _init_pool_thread() -> None:
    """One OpenMP thread for the torch kernels of this pool thread (after torch's own lazy
    per-thread set-up, which would otherwise reset it)."""
    torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # torch then uses its default team: correct, only slower
        return
    _STATE.limits = threadpool_limits(limits=1, user_api="openmp")


def default_threads() -> int:
    """Threads of the fusion kernels when a map is given 0: ``min(4, os.cpu_count())``."""
    return max(1, min(4, os.cpu_count() or 1))


def _run_chunks(fn: Callable[[int, int], None], m: int, width: int, threads: int) -> None:
    """``fn(start, stop)`` over row chunks of ``range(m)`` (rows of ``width`` values) on a pool
    of ``threads`` threads (the caller waits; its own torch settings are not touched)."""
    rows = max(1, CHUNK_BYTES // (4 * max(1, width)))
    threads = max(1, int(threads))
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="map-fusion",
                                                        initializer=_init_pool_thread)
    for f in [pool.submit(fn, s, min(s + rows, m)) for s in range(0, m, rows)]:
        f.result()  # re-raises a chunk's exception


def blend_weights(weight: np.ndarray, rows: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Blend factors ``c / (W + c)`` ``(M,) float32`` of a fusion step, and ``W += c`` in place.

    Args:
        weight: ``(n,) float32`` accumulated weights of all rows (updated for ``rows``).
        rows: ``(M,)`` distinct row indices.
        conf: ``(M,) float32`` weights of the new observations (>= 0; 0 changes nothing).
    """
    w_old = np.take(weight, rows)
    total = w_old + conf
    weight[rows] = total
    out = np.zeros_like(total)
    np.divide(conf, total, out=out, where=total > 0)
    return out


def _check(store: np.ndarray, rows: np.ndarray, values: np.ndarray, name: str) -> np.ndarray:
    values = np.ascontiguousarray(values)
    if store.dtype not in _FLOATS or values.dtype not in _FLOATS:
        raise ValueError(f"{name}: store and values must be float16/float32, got {store.dtype} and {values.dtype}")
    if store.ndim != 2 or values.ndim != 2 or store.shape[1] != values.shape[1] or rows.shape != values.shape[:1]:
        raise ValueError(f"{name}: store {store.shape}, rows {rows.shape} and values {values.shape} do not fit")
    return values


def assign_rows(store: np.ndarray, rows: np.ndarray, values: np.ndarray, threads: int = 1) -> None:
    """``store[rows] = values`` (cast to ``store.dtype``).

    Args:
        store: ``(n, D)`` float16 or float32 rows. rows: ``(M,)`` distinct row indices.
        values: ``(M, D)`` float32 or float16. threads: worker threads.

    Raises:
        ValueError: shapes or dtypes that do not fit.
    """
    values = _check(store, rows, values, "assign_rows")
    vt, dtype = torch.from_numpy(values), torch.from_numpy(store[:0]).dtype

    def chunk(s: int, e: int) -> None:
        out = _STATE.get("new", e - s, values.shape[1], dtype)
        out.copy_(vt[s:e])
        store[rows[s:e]] = out.numpy()

    _run_chunks(chunk, rows.shape[0], values.shape[1], threads)


def lerp_rows(store: np.ndarray, rows: np.ndarray, values: np.ndarray, blend: np.ndarray, threads: int = 1) -> None:
    """``store[rows] += blend[:, None] * (values - store[rows])`` in place (computed in float32).

    Args:
        store: ``(n, D)`` float16 or float32 C-contiguous rows.
        rows: ``(M,)`` distinct row indices (int64).
        values: ``(M, D)`` float32 (or float16) new observations.
        blend: ``(M,) float32`` blend factors in ``[0, 1]`` (see :func:`blend_weights`).
        threads: worker threads.

    Raises:
        ValueError: shapes or dtypes that do not fit.
    """
    values = _check(store, rows, values, "lerp_rows")
    if blend.shape != rows.shape:
        raise ValueError(f"lerp_rows: blend {blend.shape} does not fit rows {rows.shape}")
    m, d = values.shape
    vt = torch.from_numpy(values)
    bt = torch.from_numpy(np.ascontiguousarray(blend, dtype=np.float32))
    dtype = torch.from_numpy(store[:0]).dtype

    def chunk(s: int, e: int) -> None:
        r, k = rows[s:e], e - s
        old = _STATE.get("old", k, d, dtype)
        np.take(store, r, axis=0, out=old.numpy(), mode="clip")
        acc = old if dtype == torch.float32 else _STATE.get("acc", k, d, torch.float32).copy_(old)
        new = vt[s:e] if vt.dtype == torch.float32 else _STATE.get("val", k, d, torch.float32).copy_(vt[s:e])
        acc.lerp_(new, bt[s:e, None])
        if acc is not old:
            old.copy_(acc)
        store[r] = old.numpy()

    _run_chunks(chunk, m, d, threads)


def unit_rows(store: np.ndarray, rows: np.ndarray, dtype=np.float32, threads: int = 1) -> np.ndarray:
    """``store[rows]`` renormalised to unit L2 norm (zero rows stay zero), as ``dtype``.

    Args:
        store: ``(n, D)`` float16 or float32 rows. rows: ``(V,)`` row indices.
        dtype: ``np.float32`` or ``np.float16`` (normalised in float32 either way).
        threads: worker threads.

    Returns:
        ``(V, D)`` array of ``dtype`` (a new array).

    Raises:
        ValueError: another ``dtype``.
    """
    dtype = np.dtype(dtype)
    if dtype not in _FLOATS or store.dtype not in _FLOATS:
        raise ValueError(f"unit_rows: dtype and store must be float16/float32, got {dtype} and {store.dtype}")
    d = store.shape[1]
    out = np.empty((rows.shape[0], d), dtype=dtype)
    sdtype = torch.from_numpy(store[:0]).dtype

    def chunk(s: int, e: int) -> None:
        k = e - s
        raw = _STATE.get("old", k, d, sdtype)
        np.take(store, rows[s:e], axis=0, out=raw.numpy(), mode="clip")
        acc = raw if sdtype == torch.float32 else _STATE.get("acc", k, d, torch.float32).copy_(raw)
        norm = torch.linalg.vector_norm(acc, dim=1, keepdim=True).clamp_min_(1e-12)
        torch.from_numpy(out[s:e]).copy_(acc.div_(norm))

    _run_chunks(chunk, rows.shape[0], d, threads)
    return out
