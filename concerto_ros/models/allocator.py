"""Keeping freed CPU memory mapped for reuse (glibc ``malloc`` settings).

The encoder allocates and frees the same large buffers on every window (a 271,615-voxel
window: (N, 16)..(N, 192) float32 features of 17-210 MB). With glibc's defaults, blocks over
the dynamic mmap threshold (at most 32 MB) are ``mmap``-ed and returned to the kernel on
``free``, and the heap top is trimmed, so each window pays page faults and zeroing for every
page again (on the 2-core CI machine up to a third of the encoder time, more when other jobs
compete for memory bandwidth; ``benchmarks/bench_encoder.py`` times both settings). :func:`keep_freed_memory`
asks glibc to serve every block from the heap and to keep freed memory (``mallopt``:
``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD``, ``M_TOP_PAD``), the effect of the
jemalloc/tcmalloc preload that the PyTorch CPU performance guide recommends, without a
preload. The resident set then stays at its peak instead of shrinking between windows.

Heap arenas: glibc gives threads their own heap arenas (up to 8 per core), each keeping its
own freed memory, which serves only the threads of that arena. A process whose threads take
turns at the large buffers (the node's intake, integration and encoder threads, PyTorch's
workers) then keeps a peak per arena, and the heap grows by fragmentation long after the
memory in use stopped growing: on the streaming benchmark's generated room the heap grew from
1.6 to 2.6 GB in one minute while the memory in use stayed at 1.35-1.45 GB (glibc
``mallinfo2``). :func:`keep_freed_memory` therefore also caps the arenas (``M_ARENA_MAX``,
default 2, environment variable ``CONCERTO_MALLOC_ARENAS``); with the cap the heap stayed
flat after the first 24 s. Threads that already have an arena keep it, so the entry points
(``perception_node``, the ``concerto`` command, the streaming benchmark) call
:func:`cap_heap_arenas` before they start threads.

Set the environment variable ``CONCERTO_KEEP_FREED_MEMORY=0`` to leave the allocator alone.
:func:`release_freed_memory` (glibc ``malloc_trim``) hands the kept memory back at a moment
of the caller's choosing: the live node does it between keyframes every ``worker.trim_period``
seconds, which bounds what heap fragmentation can add to the resident set while every other
keyframe keeps its pages.
Trade-off measured on the live node (README, "Reliability figures"): with the kept memory
and no trimming the resident set of a 10-min soak with malformed input grew in steps
(+-10-14 % after minute 2, the map constant); with ``0`` it stayed within +-3.6 %, but the
streaming benchmark fell to 1.7 keyframes/s with a p99 latency of 2.9 s (page faults in
every keyframe's temporaries).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["cap_heap_arenas", "keep_freed_memory", "release_freed_memory", "ENV_VAR", "ARENAS_ENV_VAR", "DEFAULT_ARENAS"]

#: environment variable that disables :func:`keep_freed_memory` when ``0``
ENV_VAR = "CONCERTO_KEEP_FREED_MEMORY"
#: environment variable with the cap on glibc heap arenas (``0``: glibc's default, 8 per core)
ARENAS_ENV_VAR = "CONCERTO_MALLOC_ARENAS"
#: heap arenas of the process under :func:`keep_freed_memory` (see the module docstring)
DEFAULT_ARENAS = 2

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_STATE: dict[str, object] = {}


def keep_freed_memory(trim_threshold: int = 1 << 30, top_pad: int = 1 << 28) -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); once per process.

    Args:
        trim_threshold: free bytes at the heap top kept before trimming (default 1 GiB).
        top_pad: extra bytes requested whenever the heap grows (default 256 MiB; virtual
            until touched).

    The number of heap arenas is capped at ``CONCERTO_MALLOC_ARENAS`` (default
    :data:`DEFAULT_ARENAS`; ``0`` leaves glibc's own cap).

    Returns:
        Whether the settings are in effect: ``False`` off Linux, without glibc, or with
        ``CONCERTO_KEEP_FREED_MEMORY=0``.

    Raises:
        ValueError: ``CONCERTO_MALLOC_ARENAS`` is not a non-negative integer.
    """
    if "applied" in _STATE:
        return _STATE["applied"]
    applied = False
    if sys.platform.startswith("linux") and os.environ.get(ENV_VAR, "1") != "0":
        cap_heap_arenas()
        mallopt = getattr(_libc(), "mallopt", None)  # musl and other libcs have no mallopt
        if mallopt is not None:
            applied = all(mallopt(param, value) == 1 for param, value in (
                (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, int(trim_threshold)), (_M_TOP_PAD, int(top_pad))))
    _STATE["applied"] = applied
    return applied


def release_freed_memory() -> bool:
    """Return freed heap memory of every malloc arena to the kernel (glibc ``malloc_trim(0)``).

    The next allocations of the same size page-fault again, so call it rarely and between
    units of work (the node: between keyframes, every ``worker.trim_period`` seconds).

    Returns:
        Whether ``malloc_trim`` ran (``False`` off Linux or without glibc), whether or not
        there was memory to release.
    """
    if not sys.platform.startswith("linux"):
        return False
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def cap_heap_arenas() -> int:
    """Cap glibc's heap arenas at ``CONCERTO_MALLOC_ARENAS`` (default :data:`DEFAULT_ARENAS`)
    for the threads that allocate for the first time from now on (see the module docstring);
    once per process.

    Returns:
        The cap in effect, or 0 when glibc's own applies (``CONCERTO_MALLOC_ARENAS=0``,
        ``CONCERTO_KEEP_FREED_MEMORY=0``, off Linux, or without glibc).

    Raises:
        ValueError: ``CONCERTO_MALLOC_ARENAS`` is not a non-negative integer.
    """
    if "arenas" in _STATE:
        return _STATE["arenas"]
    raw = os.environ.get(ARENAS_ENV_VAR, str(DEFAULT_ARENAS)).strip()
    if not raw.isdigit():
        raise ValueError(f"{ARENAS_ENV_VAR} must be a non-negative integer (0: glibc's default), got {raw!r}")
    cap = int(raw)
    if cap and sys.platform.startswith("linux") and os.environ.get(ENV_VAR, "1") != "0":
        mallopt = getattr(_libc(), "mallopt", None)
        cap = cap if mallopt is not None and mallopt(_M_ARENA_MAX, cap) == 1 else 0
    else:
        cap = 0
    _STATE["arenas"] = cap
    return cap


def _libc():
    """The process's C library (``None`` when it cannot be loaded)."""
    if "libc" not in _STATE:
        try:
            _STATE["libc"] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _STATE["libc"] = None
    return _STATE["libc"]
