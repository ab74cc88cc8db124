"""glibc heap settings: the arena cap holds for threads started afterwards (fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: four threads allocate 4 MB each after the cap; glibc's malloc_stats prints one "Arena N:"
#: block per heap arena to stderr
_PROBE = """
import ctypes, threading
from concerto_ros.models.allocator import cap_heap_arenas
print(cap_heap_arenas())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
barrier = threading.Barrier(4)
def work():
    barrier.wait()  # all four allocate at once: without a cap each gets an arena
    ptrs = [libc.malloc(1 << 20) for _ in range(4)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
libc.malloc_stats()
"""


def _arenas(env_value: str | None) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONCERTO_MALLOC_ARENAS", "CONCERTO_KEEP_FREED_MEMORY")}
    if env_value is not None:
        env["CONCERTO_MALLOC_ARENAS"] = env_value
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[0]), proc.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap arenas are Linux-only")
def test_arena_cap_bounds_the_arenas_of_later_threads():
    cap, arenas = _arenas(None)  # the default cap
    assert cap == 2 and 1 <= arenas <= 2
    cap, arenas = _arenas("1")
    assert cap == 1 and arenas == 1
    cap, arenas = _arenas("0")  # glibc's own: a contended thread gets an arena of its own
    assert cap == 0 and arenas > 2


def test_a_bad_cap_is_a_clear_error(monkeypatch):
    from concerto_ros.models import allocator

    monkeypatch.setattr(allocator, "_STATE", {})
    monkeypatch.setenv("CONCERTO_MALLOC_ARENAS", "two")
    with pytest.raises(ValueError, match="CONCERTO_MALLOC_ARENAS must be a non-negative integer"):
        allocator.cap_heap_arenas()
