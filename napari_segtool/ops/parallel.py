"""Post-processing on the cores this process may use: independent pieces in a thread pool.

The network runs on every core, but the post-processing after it (``ops.postprocess``, ``ops.flood``)
ran on one, and took a third of the end-to-end time. scipy's filters and scikit-image's watershed
release the GIL, so threads suffice: separable filters run on bands of rows (each band with a
margin of at least the filter's radius, only its interior kept: the same values to the bit, since every
output pixel sums the same inputs in the same order), and the watersheds of disjoint groups of
components run side by side. ``find_objects`` and ``bincount`` run on bands too (boxes joined, counts summed), and
whole-plane steps that need no result of the caller (the foreground's labellings) in a thread of their own
(:func:`in_background`). One worker runs everything in the calling thread, as before.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from threading import Lock
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
from scipy import ndimage as ndi

from napari_segtool.kernel.device import thread_count

__all__ = ["worker_count", "each", "in_background", "in_bands", "gaussian_radius", "bounding_boxes", "counts"]

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


def in_background(fn: Callable[[], R], workers: int | None = None) -> Callable[[], R]:
    """``fn()`` started in a thread of its own, while the caller goes on; the function returned waits for its
    result. With one worker (:func:`worker_count`) nothing starts: ``fn`` runs in the calling thread when its
    result is asked for, as before. ``fn`` must not depend on what the caller does meanwhile."""
    if (workers or worker_count()) <= 1:
        return fn
    pool = ThreadPoolExecutor(1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future.result


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
    axis %= arrays[0].ndim
    edges = _band_edges(arrays[0].shape[axis], margin, workers)
    if len(edges) <= 2:
        return fn(*arrays)
    n = arrays[0].shape[axis]
    made: list[np.ndarray] = []  # the output, allocated by the first band to finish
    lock = Lock()

    def band(k: int) -> None:
        low, high = max(0, edges[k] - margin), min(n, edges[k + 1] + margin)
        part = fn(*(a[_along(axis, low, high)] for a in arrays))[_along(axis, edges[k] - low, edges[k + 1] - low)]
        with lock:
            if not made:
                made.append(np.empty(part.shape[:axis] + (n,) + part.shape[axis + 1:], part.dtype))
        if part.dtype != made[0].dtype:
            raise TypeError(f"bands gave {part.dtype} and {made[0].dtype}")
        made[0][_along(axis, edges[k], edges[k + 1])] = part  # copied in this worker, not in one serial concatenate

    each(band, range(len(edges) - 1), len(edges) - 1)
    return made[0]


def counts(labels: np.ndarray, minlength: int = 0, workers: int | None = None) -> np.ndarray:
    """``np.bincount(labels.ravel(), minlength=minlength)`` of non-negative integer ``labels``: bands of rows
    counted in threads (``bincount`` releases the GIL), their counts summed -- the same integers."""
    axis = labels.ndim - 2 if labels.ndim > 1 else 0
    edges = _band_edges(labels.shape[axis], 0, workers)
    parts = each(lambda k: np.bincount(labels[_along(axis, edges[k], edges[k + 1])].ravel(), minlength=minlength),
                 range(len(edges) - 1), len(edges) - 1)
    total = np.zeros(max(len(p) for p in parts), np.intp)
    for part in parts:
        total[:len(part)] += part
    return total


def bounding_boxes(labels: np.ndarray, ids: np.ndarray, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The boxes ``scipy.ndimage.find_objects(labels)`` gives the labels ``ids`` (each present in ``labels``), as
    ``starts`` and ``stops``, each ``(len(ids), labels.ndim)``.

    ``find_objects`` runs on bands of rows in threads (it releases the GIL) and the bands' boxes are joined by their
    least start and greatest stop: the same boxes, while a whole-plane pass is serial (4096²: ~0.15 s idle).
    """
    ids = np.asarray(ids, np.intp)
    starts = np.full((len(ids), labels.ndim), np.iinfo(np.intp).max, np.intp)
    stops = np.zeros((len(ids), labels.ndim), np.intp)
    if not len(ids):
        return starts, stops
    axis = labels.ndim - 2 if labels.ndim > 1 else 0
    edges = _band_edges(labels.shape[axis], 0, workers)
    top = int(ids.max())

    def band(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = ndi.find_objects(labels[_along(axis, edges[k], edges[k + 1])], max_label=top)
        rows = [i for i, j in enumerate(ids.tolist()) if found[j - 1] is not None]
        ends = np.array([(s.start, s.stop) for i in rows for s in found[ids[i] - 1]], np.intp)
        ends = ends.reshape(len(rows), labels.ndim, 2)
        ends[:, axis] += edges[k]
        return np.array(rows, np.intp), ends[..., 0], ends[..., 1]

    for rows, low, high in each(band, range(len(edges) - 1), len(edges) - 1):
        starts[rows] = np.minimum(starts[rows], low)
        stops[rows] = np.maximum(stops[rows], high)
    return starts, stops


def _band_edges(n: int, margin: int, workers: int | None) -> np.ndarray:
    """Where the bands of ``n`` rows start and stop (``bands + 1`` edges): one band per worker, each at least
    :data:`MIN_BAND` rows and four margins high (two edges: one band, the whole array)."""
    bands = max(1, min(workers or worker_count(), n // max(MIN_BAND, 4 * int(margin))))
    return np.linspace(0, n, bands + 1).astype(int)


def _along(axis: int, start: int, stop: int) -> tuple[slice, ...]:
    """The index of ``start:stop`` along ``axis``."""
    return (slice(None),) * axis + (slice(start, stop),)
