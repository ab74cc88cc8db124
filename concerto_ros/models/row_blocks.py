"""Running a row-blocked computation on all intra-op threads with one synchronisation.

The encoder's sparse convolution and MLP process their rows in cache-sized blocks
(:func:`~concerto_ros.models.sparse_conv.submconv3d_rows`, :class:`~concerto_ros.models.ptv3.MLP`).
Run one block after the other with torch's intra-op parallelism, every block's gather and
GEMM is a parallel region, and every region ends at a barrier: hundreds per forward. On a
machine whose cores are shared with other processes (a CI runner, a robot's computer with
other nodes) a barrier waits for a descheduled thread's next time slice, and the 2-thread
forward can become several times slower than the 1-thread one.

:func:`run_row_blocks` instead hands whole blocks to a small pool of Python threads (torch
releases the GIL inside its kernels) that each run their blocks single-threaded, taking the
next block from a shared counter: one synchronisation per call, and a thread that loses its
core simply takes fewer blocks. Every block is computed by the same single-threaded kernels
whatever the number of threads, so results are bit-identical for any thread count.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

__all__ = ["run_row_blocks"]

_POOL: dict[str, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()
#: serialises calls: the intra-op thread count is process-wide
_CALL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        pool = _POOL.get("pool")
        if pool is None or pool._max_workers < workers:  # noqa: SLF001 - sized once, grown rarely
            if pool is not None:
                pool.shutdown(wait=False)
            pool = _POOL["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="concerto-rows")
        return pool


def run_row_blocks(num_rows: int, step: int, block: Callable[[int, int], None]) -> None:
    """Call ``block(start, end)`` for the row blocks ``[0, step), [step, 2 step), ...`` of
    ``num_rows`` rows, spread over ``torch.get_num_threads()`` threads.

    Each block runs with one intra-op thread; the caller's grad and inference modes apply
    inside. With one thread, or one block, the blocks run in the calling thread.

    Args:
        num_rows: rows to cover.
        step: rows per block (>= 1).
        block: writes its rows' results (e.g. into slices of a preallocated output); it
            must not depend on the order of the blocks.

    Raises:
        Whatever ``block`` raises (the first error, after all threads stopped).
    """
    starts = range(0, num_rows, step)
    threads = torch.get_num_threads()
    if threads <= 1 or len(starts) <= 1:
        for start in starts:
            block(start, min(num_rows, start + step))
        return
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    todo = iter(starts)
    lock = threading.Lock()

    def worker() -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            while True:
                with lock:
                    start = next(todo, None)
                if start is None:
                    return
                block(start, min(num_rows, start + step))

    with _CALL_LOCK:
        torch.set_num_threads(1)
        try:
            workers = min(threads, len(starts))
            futures = [_pool(workers - 1).submit(worker) for _ in range(workers - 1)]
            error = None
            try:
                worker()  # the calling thread takes blocks too
            except BaseException as exc:  # noqa: BLE001 - re-raised after the others stop
                error = exc
            for future in futures:
                try:
                    future.result()
                except BaseException as exc:  # noqa: BLE001
                    error = error or exc
            if error is not None:
                raise error
        finally:
            torch.set_num_threads(threads)
