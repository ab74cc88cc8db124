"""Returning freed heap memory to the operating system (glibc), so a long-running node's RSS
reflects what it uses.

The encoder allocates and frees hundreds of MB per window. glibc raises its mmap threshold
after large blocks are freed, so later large blocks come from the heap, which only shrinks
when its top is free: RSS then drifts up and jumps by the size of one window's temporaries.
:func:`release_free_memory` (``malloc_trim(0)``) hands free heap pages back after each frame.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["release_free_memory"]

_LIBC = None
_CHECKED = False


def release_free_memory() -> bool:
    """``malloc_trim(0)`` on glibc; returns True when memory was released, False elsewhere
    (no glibc: nothing to do)."""
    global _LIBC, _CHECKED
    if not _CHECKED:
        _CHECKED = True
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _LIBC = lib if lib is not None and hasattr(lib, "malloc_trim") else None
        except OSError:
            _LIBC = None
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
