"""Handing memory the process freed back to the operating system."""
from __future__ import annotations


def release_freed_memory() -> None:
    """Return the heap that freed buffers left behind to the OS (``malloc_trim``).

    glibc keeps freed memory in its heaps (per-thread arenas included) for later allocations, so a
    job's large temporary buffers stay in the resident set after the job; dask's documentation trims
    its workers the same way. A no-op where the C library is not glibc.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def share_one_heap() -> None:
    """Threads started from now on allocate from glibc's main heap (``mallopt(M_ARENA_MAX, 1)``), unless the
    ``MALLOC_ARENA_MAX`` environment variable says otherwise.

    Each thread otherwise gets a heap of its own, and a chunked prediction on 2 threads grew its resident set
    window after window (issue 18, 4096²: peaks 1184 -> 1305 MiB over 12 windows; in one heap 1111-1148, flat).
    Call it as the process starts: glibc goes on handing out the heaps it has made. A no-op where the C library
    is not glibc.
    """
    import ctypes
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX (malloc.h)
    except (OSError, AttributeError):
        pass
