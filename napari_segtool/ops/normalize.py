"""Robust per-image intensity normalisation (percentiles), NaN-safe and lazy-friendly.

Microscopy comes as 8/16-bit or float, astronomy as float with NaN for bad pixels
and a huge dynamic range. Mapping the ``low``/``high`` percentiles of each channel
to 0/1 makes all of them look alike to the network. Percentiles of large or lazy
arrays are estimated on a strided subsample so nothing is loaded whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_SAMPLES = 2_000_000


def _subsample(data: Any, max_samples: int) -> np.ndarray:
    """A strided view of ``data`` (any array-like, e.g. dask) with at most ~max_samples elements."""
    size = int(np.prod(data.shape))
    if size <= max_samples:
        return np.asarray(data)
    spatial = data.ndim
    stride = int(np.ceil((size / max_samples) ** (1.0 / spatial)))
    sample = data[tuple(slice(None, None, stride) for _ in range(spatial))]
    return np.asarray(sample)


@dataclass
class Normalizer:
    """Per-channel map ``(x - lo) / (hi - lo)``, then optionally ``asinh``; NaN/inf become 0.

    ``stretch="linear"`` (percentile method) maps ``lo``/``hi`` to 0/1.
    ``stretch="asinh"`` (astronomy) has ``lo`` = sky background and ``hi - lo`` =
    a few noise sigmas: noise stays near 0, faint sources are lifted, and bright
    stars are compressed instead of saturating the range (Lupton et al. 1999).
    """

    lo: np.ndarray
    hi: np.ndarray
    stretch: str = "linear"

    def __call__(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        out = (block - self.lo) / (self.hi - self.lo)
        if self.stretch == "asinh":
            out = np.arcsinh(out) / ASINH_SCALE
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


ASINH_SCALE = 4.0  # asinh(x)/4: ~1 for sources ~27 softening units above the sky


def _informative_grid(image: Any, max_samples: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A strided sample of a ``...YXC`` array, which sampled pixels are informative, and the stride.

    Sampled pixels are rows and columns ``0, stride, 2 * stride, ...``. A pixel is *uninformative* when it equals both its lower and right neighbours, or both its
    upper and left ones, in every channel (constant padding, empty mosaic gaps, zero-filled
    borders of a registered stack; the second test makes a padding edge that touches content
    count as padding too), or is not finite (NaN masks). Such regions say nothing about the
    objects, and counting them would let the amount of padding around an image move its
    percentiles.
    """
    shape = tuple(image.shape)
    size = int(np.prod(shape))
    if len(shape) < 3 or shape[-3] < 2 or shape[-2] < 2:
        v = _subsample(image, max_samples).astype(np.float32, copy=False)
        return v, np.isfinite(v).all(axis=-1), 0
    stride = 1 if size <= max_samples else int(np.ceil((size / max_samples) ** (1.0 / (len(shape) - 1))))
    h, w = shape[-3], shape[-2]
    lead = [slice(None, None, stride)] * (len(shape) - 3)

    def read(ys: slice, xs: slice) -> np.ndarray:
        return np.asarray(image[tuple(lead + [ys, xs, slice(None)])], dtype=np.float32)

    def neighbour(v: np.ndarray, shifted: np.ndarray, axis: int, before: bool) -> np.ndarray:
        """``shifted`` completed to ``v``'s shape with ``v``'s own edge (no neighbour there)."""
        missing = v.shape[axis] - shifted.shape[axis]
        if not missing:
            return shifted
        edge = np.take(v, [0] * missing if before else [v.shape[axis] - 1] * missing, axis=axis)
        return np.concatenate([edge, shifted] if before else [shifted, edge], axis=axis)

    v = read(slice(0, h, stride), slice(0, w, stride))
    down = neighbour(v, read(slice(1, h, stride), slice(0, w, stride)), -3, before=False)
    up = neighbour(v, read(slice(stride - 1, h - 1, stride), slice(0, w, stride)), -3, before=True)
    right = neighbour(v, read(slice(0, h, stride), slice(1, w, stride)), -2, before=False)
    left = neighbour(v, read(slice(0, h, stride), slice(stride - 1, w - 1, stride)), -2, before=True)
    flat = (((v == down) & (v == right)) | ((v == up) & (v == left))).all(axis=-1)
    return v, ~flat & np.isfinite(v).all(axis=-1), stride


def content_box(image: Any, max_samples: int = MAX_SAMPLES) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` around the informative pixels of a ``...YXC`` array (any plane).

    Flat or NaN borders (padding) fall outside it; it is the whole plane when nothing is
    informative. Exact for arrays up to ``max_samples`` values; for larger ones it errs by
    less than the sampling stride towards keeping pixels.
    """
    h, w = int(image.shape[-3]), int(image.shape[-2])
    _, informative, stride = _informative_grid(image, max_samples)
    if not stride:
        return 0, h, 0, w
    plane = informative.reshape((-1,) + informative.shape[-2:]).any(axis=0)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if not rows.size:
        return 0, h, 0, w

    def bounds(first: int, last: int, n_sampled: int, length: int) -> tuple[int, int]:
        lo = 0 if first == 0 else (first - 1) * stride + 1        # just past the last padding sample
        hi = length if last == n_sampled - 1 else (last + 1) * stride  # the next padding sample
        return lo, min(length, hi)

    y0, y1 = bounds(int(rows[0]), int(rows[-1]), plane.shape[0], h)
    x0, x1 = bounds(int(cols[0]), int(cols[-1]), plane.shape[1], w)
    return y0, y1, x0, x1


#: Fewer informative pixels than this fraction of the sample: the image is mostly flat, use all of it.
MIN_INFORMATIVE = 0.05


def _finite_channels(image: Any, max_samples: int) -> list[np.ndarray]:
    v, informative, _ = _informative_grid(image, max_samples)
    sample = v.reshape(-1, v.shape[-1])
    informative = informative.reshape(-1)
    if informative.mean() < MIN_INFORMATIVE:
        informative = np.ones_like(informative)
    out = []
    for c in range(sample.shape[1]):
        values = sample[:, c]
        finite = np.isfinite(values)
        if not finite.any():
            raise ValueError(f"channel {c} of the image has no finite values (all NaN/inf)")
        chosen = values[finite & informative]
        out.append(chosen if chosen.size else values[finite])
    return out


def fit_normalizer(image: Any, method: str = "percentile", low: float = 1.0, high: float = 99.8,
                   softening: float = 3.0, max_samples: int = MAX_SAMPLES) -> Normalizer:
    """Normaliser for a channel-last array (``...YXC``), one range per channel.

    Parameters
    ----------
    method : ``"percentile"`` maps the ``low``/``high`` percentiles to 0/1 (microscopy);
        ``"asinh"`` subtracts the sigma-clipped sky level and applies an asinh stretch
        with ``softening`` noise sigmas (astronomy, where percentiles of a mostly-empty
        sky would amplify noise).

    Raises ``ValueError`` when a channel has no finite value at all.
    """
    channels = _finite_channels(image, max_samples)
    lo = np.empty(len(channels), np.float32)
    hi = np.empty(len(channels), np.float32)
    for c, values in enumerate(channels):
        if method == "asinh":
            from astropy.stats import sigma_clipped_stats

            _, median, std = sigma_clipped_stats(values, sigma=3.0, maxiters=5)
            lo[c], hi[c] = median, median + softening * max(float(std), 1e-12)
        elif method == "percentile":
            lo[c], hi[c] = np.percentile(values, [low, high])
        else:
            raise ValueError(f"unknown normalisation method '{method}' (percentile or asinh)")
        if hi[c] - lo[c] < 1e-12:  # constant channel: avoid dividing by zero
            hi[c] = lo[c] + max(abs(lo[c]), 1.0)
    return Normalizer(lo, hi, "asinh" if method == "asinh" else "linear")


def normalize(image: np.ndarray, **config: Any) -> np.ndarray:
    """Normalise a channel-last array in memory (``config`` as for :func:`fit_normalizer`)."""
    return fit_normalizer(image, **config)(image)


class NormalizedPlane:
    """Lazy ``YXC`` view that normalises only the blocks it is asked for (for tiling)."""

    def __init__(self, plane: Any, normalizer: Normalizer):
        self.plane = plane
        self.normalizer = normalizer
        self.shape = tuple(plane.shape)

    def __getitem__(self, key) -> np.ndarray:
        return self.normalizer(np.asarray(self.plane[key]))
