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
    """Per-channel affine map ``(x - lo) / (hi - lo)``; NaN/inf become 0 (the low value)."""

    lo: np.ndarray
    hi: np.ndarray

    def __call__(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        out = (block - self.lo) / (self.hi - self.lo)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def fit_normalizer(image: Any, low: float = 1.0, high: float = 99.8,
                   max_samples: int = MAX_SAMPLES) -> Normalizer:
    """Percentile normaliser for a channel-last array (``...YXC``), one range per channel.

    Raises ``ValueError`` when a channel has no finite value at all.
    """
    sample = _subsample(image, max_samples).astype(np.float32, copy=False)
    sample = sample.reshape(-1, sample.shape[-1])
    lo = np.empty(sample.shape[1], np.float32)
    hi = np.empty(sample.shape[1], np.float32)
    for c in range(sample.shape[1]):
        values = sample[:, c]
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError(f"channel {c} of the image has no finite values (all NaN/inf)")
        lo[c], hi[c] = np.percentile(values, [low, high])
        if hi[c] - lo[c] < 1e-12:  # constant channel: avoid dividing by zero
            hi[c] = lo[c] + max(abs(lo[c]), 1.0)
    return Normalizer(lo, hi)


def normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Normalise a channel-last array in memory (see :func:`fit_normalizer`)."""
    return fit_normalizer(image, low, high)(image)


class NormalizedPlane:
    """Lazy ``YXC`` view that normalises only the blocks it is asked for (for tiling)."""

    def __init__(self, plane: Any, normalizer: Normalizer):
        self.plane = plane
        self.normalizer = normalizer
        self.shape = tuple(plane.shape)

    def __getitem__(self, key) -> np.ndarray:
        return self.normalizer(np.asarray(self.plane[key]))
