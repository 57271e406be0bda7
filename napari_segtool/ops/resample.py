"""Running a model at its own object scale: a lazy resampled view of a plane, and labels back.

A model trained on objects ~``D_model`` pixels across sees an image whose objects are
``D_image`` across through a view resampled by ``factor = D_model / D_image``. Every
path (whole image, tiles, dask chunks) reads that view through the same *global grid*:
model pixel ``j`` sits at input coordinate ``(j + 0.5) / factor - 0.5``. A window of the
view therefore holds exactly the values the whole view holds there, wherever the
window starts, so tiling and chunking cannot change the result. Downsampling first
blurs with a Gaussian of ``sigma = (1/factor - 1) / 2`` input pixels (anti-aliasing);
image borders are mirrored, as :func:`scipy.ndimage.gaussian_filter` does by default.
Labels come back by nearest-neighbour lookup on the same grid, to the exact input shape.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

#: Factors this close to 1 are run without resampling (bit-identical to the plain path).
IDENTITY_TOLERANCE = 0.02


def is_identity(factor: float) -> bool:
    return abs(float(factor) - 1.0) <= IDENTITY_TOLERANCE


def grid_bounds(start: int, stop: int, factor: float) -> tuple[int, int]:
    """Global model-grid pixels whose centres fall in input pixels ``start:stop``.

    Model pixel ``j`` covers input coordinate ``(j + 0.5) / factor`` (pixel edges at integers),
    so it belongs to the input range when ``start <= (j + 0.5) / factor < stop``.
    """
    return math.ceil(start * factor - 0.5), math.ceil(stop * factor - 0.5)


def scaled_length(length: int, factor: float) -> int:
    """Length on the model grid of an input axis of ``length`` pixels (at least 1)."""
    lo, hi = grid_bounds(0, length, factor)
    return max(1, hi - lo)


def antialias_sigma(factor: float) -> float:
    """Gaussian sigma (input pixels) applied before sampling; 0 when enlarging."""
    return max(0.0, (1.0 / factor - 1.0) / 2.0) if factor < 1 else 0.0


def source_coords(start: int, stop: int, factor: float) -> np.ndarray:
    """Input coordinates of model pixels ``start:stop`` of the global grid."""
    return (np.arange(start, stop, dtype=np.float64) + 0.5) / factor - 0.5


def model_index(start: int, stop: int, factor: float) -> np.ndarray:
    """Model-grid pixel nearest to each input pixel ``start:stop`` (global indices)."""
    return np.floor((np.arange(start, stop, dtype=np.float64) + 0.5) * factor).astype(np.int64)


class ResampledPlane:
    """Lazy ``YXC`` view of ``plane`` on the model grid (``plane`` needs ``shape`` and ``__getitem__``).

    Parameters
    ----------
    plane : the (normalised) input plane, ``YXC``; numpy, dask, zarr or a lazy view.
    factor : model pixels per input pixel.
    offset : global input coordinates of ``plane[0, 0]`` (a window of a larger image).
    image_shape : ``(Y, X)`` of the whole input image (borders are mirrored there).
    grid_start, grid_stop : the global model-grid pixels this view covers (default: all
        those whose source coordinate lies inside ``plane``).
    align : the default ``grid_start`` is rounded down to a multiple of this (a network's
        pooling grid, so windows of one image tile the model grid the same way).
    """

    def __init__(self, plane: Any, factor: float, *, offset: tuple[int, int] = (0, 0),
                 image_shape: tuple[int, int] | None = None, grid_start: tuple[int, int] | None = None,
                 grid_stop: tuple[int, int] | None = None, align: int = 1):
        self.plane = plane
        self.factor = float(factor)
        self.offset = tuple(int(o) for o in offset)
        h, w = plane.shape[:2]
        self.image_shape = tuple(image_shape) if image_shape is not None else (h, w)
        bounds = [grid_bounds(o, o + n, self.factor) for o, n in zip(self.offset, (h, w))]
        if grid_start is None:
            grid_start = tuple((b[0] // align) * align for b in bounds)
        if grid_stop is None:
            grid_stop = tuple(max(b[1], b[0] + 1) for b in bounds)
        self.grid_start = tuple(int(g) for g in grid_start)
        self.grid_stop = tuple(int(g) for g in grid_stop)
        self.sigma = antialias_sigma(self.factor)
        self.shape = (self.grid_stop[0] - self.grid_start[0], self.grid_stop[1] - self.grid_start[1],
                      int(plane.shape[2]))

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys = range(*key[0].indices(self.shape[0]))
        xs = range(*key[1].indices(self.shape[1]))
        block = self._sample(ys.start, ys.stop, xs.start, xs.stop)
        return block[:: ys.step, :: xs.step][:, :, key[2]]

    def _sample(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        channels = self.shape[2]
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), channels), np.float32)
        cy = source_coords(self.grid_start[0] + y0, self.grid_start[0] + y1, self.factor)
        cx = source_coords(self.grid_start[1] + x0, self.grid_start[1] + x1, self.factor)
        margin = int(math.ceil(4 * self.sigma)) + 2
        ry = (int(math.floor(cy[0])) - margin, int(math.floor(cy[-1])) + margin + 2)
        rx = (int(math.floor(cx[0])) - margin, int(math.floor(cx[-1])) + margin + 2)
        src = self._read(ry, rx)
        out = np.empty((cy.size, cx.size, channels), np.float32)
        gy, gx = np.meshgrid(cy - ry[0], cx - rx[0], indexing="ij")
        for c in range(channels):
            band = src[:, :, c]
            if self.sigma > 0:
                band = ndi.gaussian_filter(band, self.sigma, mode="nearest", truncate=4.0)
            out[:, :, c] = ndi.map_coordinates(band, [gy, gx], order=1, mode="nearest")
        return out

    def _read(self, ry: tuple[int, int], rx: tuple[int, int]) -> np.ndarray:
        """Global input rows ``ry`` / cols ``rx``, mirrored at the image border (``symmetric``)."""
        h, w = self.image_shape
        ya, yb = max(0, ry[0]), min(h, ry[1])
        xa, xb = max(0, rx[0]), min(w, rx[1])
        oy, ox = self.offset
        ph, pw = self.plane.shape[:2]
        if ya < oy or xa < ox or yb > oy + ph or xb > ox + pw:  # a window: read what it holds
            ya, yb = max(ya, oy), min(yb, oy + ph)
            xa, xb = max(xa, ox), min(xb, ox + pw)
        block = np.asarray(self.plane[ya - oy:yb - oy, xa - ox:xb - ox], dtype=np.float32)
        pad = ((ya - ry[0], ry[1] - yb), (xa - rx[0], rx[1] - xb), (0, 0))
        if any(p for pair in pad[:2] for p in pair):
            block = np.pad(block, pad, mode="symmetric")
        return block


def labels_to_input(labels: np.ndarray, factor: float, shape: tuple[int, int], *,
                    offset: tuple[int, int] = (0, 0), grid_start: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Labels on the model grid (``..., Ym, Xm``, first pixel at ``grid_start``) -> input pixels.

    Returns the input window ``offset : offset + shape`` (``..., Y, X``), each pixel taking the
    label of the nearest model-grid pixel; indices outside ``labels`` are clipped to its edge.
    """
    iy = np.clip(model_index(offset[0], offset[0] + shape[0], factor) - grid_start[0], 0, labels.shape[-2] - 1)
    ix = np.clip(model_index(offset[1], offset[1] + shape[1], factor) - grid_start[1], 0, labels.shape[-1] - 1)
    return labels[..., iy[:, None], ix[None, :]]
