"""Post-processing on the cores this process may use: independent pieces in a thread pool.

The network runs on every core, but the post-processing after it (``ops.postprocess``, ``ops.flood``)
ran on one, and took a third of the end-to-end time. scipy's filters and scikit-image's watershed
release the GIL, so threads suffice: separable filters run on bands of rows (each band with a
margin of at least the filter's radius, only its interior kept: the same values to the bit, since every
output pixel sums the same inputs in the same order), and the watersheds of disjoint groups of
components run side by side. One worker runs everything in the calling thread, as before.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from napari_segtool.kernel.device import thread_count

__all__ = ["worker_count", "each", "in_bands", "gaussian_radius"]

T = TypeVar("T")
R = TypeVar("R")

#: bands are at least this many rows (and four margins) high: thinner ones cost more in margins and calls
MIN_BAND = 64


def worker_count() -> int:
    """Threads for the post-processing: :func:`napari_segtool.kernel.device.thread_count` (``SEGTOOL_NUM_THREADS``,
    else the cores this process may run on), as the network gets."""
    return thread_count()


def each(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """``[fn(item) for item in items]``, on ``workers`` threads (default :func:`worker_count`); in the calling
    thread, in order, with one worker. ``fn`` must not depend on the others' effects."""
    items = list(items)
    workers = min(workers or worker_count(), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def gaussian_radius(sigma: float | Sequence[float], truncate: float = 4.0) -> int:
    """The largest radius (pixels) of ``scipy.ndimage.gaussian_filter``'s kernels: ``int(truncate * sigma + 0.5)``
    per axis, as scipy rounds it."""
    return max(int(truncate * float(s) + 0.5) for s in np.atleast_1d(sigma))


def in_bands(fn: Callable[..., np.ndarray], *arrays: np.ndarray, margin: int, workers: int | None = None,
             axis: int = -2) -> np.ndarray:
    """``fn(*arrays)``, computed on bands of ``axis`` (rows of a ``YX`` plane or ``ZYX`` stack) in threads.

    ``fn`` maps arrays of one shape to one of that shape, each output pixel depending only on inputs at most
    ``margin`` pixels away along ``axis`` (filters of that radius, pixelwise arithmetic), with the same
    boundary handling at the array's edges as on the whole array: each band is computed with ``margin`` more
    rows on both sides and only its interior kept, so the result is ``fn(*arrays)`` to the bit. Planes too
    small for a band per worker take fewer bands; one band is ``fn(*arrays)`` itself.
    """
    n = arrays[0].shape[axis]
    bands = min(workers or worker_count(), n // max(MIN_BAND, 4 * int(margin)))
    if bands <= 1:
        return fn(*arrays)
    axis %= arrays[0].ndim
    edges = np.linspace(0, n, bands + 1).astype(int)

    def along(start: int, stop: int) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(start, stop),)

    def band(k: int) -> np.ndarray:
        low, high = max(0, edges[k] - margin), min(n, edges[k + 1] + margin)
        out = fn(*(a[along(low, high)] for a in arrays))
        return out[along(edges[k] - low, edges[k + 1] - low)]

    return np.concatenate(each(band, range(bands), bands), axis=axis)
