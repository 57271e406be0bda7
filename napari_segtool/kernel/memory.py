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
